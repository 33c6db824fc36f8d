"""Named steps where a test may kill the operator, to prove it resumes from any of them.

`LLAMA_OPERATOR_KILL_AT=NAME` (or `NAME#K`, the K-th time the step is reached) makes the process SIGKILL
itself at that step; `LLAMA_OPERATOR_KILL_POINTS_LOG=FILE` appends the name of every step reached to FILE.
Both are read once, at import: with neither set, `kill_point` returns at once.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_KILL_AT = os.environ.get("LLAMA_OPERATOR_KILL_AT") or None
_LOG = os.environ.get("LLAMA_OPERATOR_KILL_POINTS_LOG") or None
_ENABLED = _KILL_AT is not None or _LOG is not None
_target_name, _, _target_count = (_KILL_AT or "").partition("#")
_TARGET_OCCURRENCE = int(_target_count) if _target_count else 1
_reached: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """The process reached the step `name`: log it, and die here when told to."""
    if not _ENABLED:
        return
    _reached[name] += 1
    if _LOG is not None:
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"{name}\n")
            log.flush()
    if name == _target_name and _reached[name] == _TARGET_OCCURRENCE:
        os.kill(os.getpid(), signal.SIGKILL)
