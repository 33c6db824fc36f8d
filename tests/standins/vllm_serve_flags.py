"""The flags of the pinned ``vllm serve``, recorded from vLLM's own parser, so the stand-in refuses
what vLLM refuses.

``vllm-serve-flags.json`` beside this file is generated, never edited: run
``<vLLM runtime python> -m tests.standins.vllm_serve_flags > tests/standins/vllm-serve-flags.json``
(the runtime is ``hack/build-vllm-runtime.sh``'s venv). ``tests/unit/test_vllm_flags.py`` fails when
the file and the pinned parser disagree. Each option string maps to its arity as argparse reads it:
``0`` (a switch), ``1`` (one value), ``"?"`` (an optional value), ``"+"``/``"*"`` (a list).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FLAGS_FILE = Path(__file__).with_name("vllm-serve-flags.json")
Arity = int | str


def record() -> dict[str, Any]:
    """Run in the vLLM venv: the option strings of ``vllm serve`` and their arity."""
    import vllm  # noqa: PLC0415 - only the vLLM venv has it
    from vllm.entrypoints.cli.serve import ServeSubcommand  # noqa: PLC0415
    from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: PLC0415

    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(dest="subparser")
    serve = ServeSubcommand().subparser_init(subparsers)
    flags: dict[str, Arity] = {}
    for action in serve._actions:  # argparse keeps its actions there
        for option in action.option_strings:
            if not option.startswith("--"):
                continue
            nargs = action.nargs
            flags[option] = nargs if isinstance(nargs, str) else (1 if nargs is None else int(nargs))
    return {"version": vllm.__version__, "flags": dict(sorted(flags.items()))}


def load_flags(path: Path = FLAGS_FILE) -> tuple[str, dict[str, Arity]]:
    """(the vLLM version the flags were recorded from, option string -> arity)."""
    data = json.loads(path.read_text())
    return str(data["version"]), dict(data["flags"])


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=1)
    sys.stdout.write("\n")
