"""String rules of the spec (sources, Prometheus URLs), as regular expressions CEL and Python read alike.

No lookaround and no backreferences (RE2 has neither), and the whole string must match: `^...$` in a
CEL rule, `re.fullmatch` in `parse_spec`. Each rule is enforced twice from one expression, so the
apiserver and the operator refuse the same strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# A source whose path has an empty, `.` or `..` segment, or that starts with `/` after the scheme: it could
# name a claim `..` or a path outside the mount (`pvc://models/../../etc`, `pvc://models//etc`).
DOT_OR_EMPTY_SEGMENT = r"[a-z0-9]+://(/.*|.*//.*|(.*/)?\.\.?(/.*)?)"
# pvc://CLAIM[/path]: CLAIM is a PersistentVolumeClaim name (a DNS-1123 subdomain of at most 253 characters).
PVC_CLAIM = r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/.*)?"
PVC_CLAIM_LENGTH = r"pvc://[^/]{1,253}(/.*)?"
# hf://ORG/REPO[/path]: a hub repository id, as the hub allows them (at most 96 characters each).
HF_REPO = r"hf://[A-Za-z0-9][-A-Za-z0-9_.]{0,95}/[A-Za-z0-9][-A-Za-z0-9_.]{0,95}(/.*)?"
# A source that names a file: a path after the repository (hf://), the claim, bucket or host (the others).
NAMES_A_FILE = r"(hf://[^/]+/[^/]+|(pvc|s3|https)://[^/]+)/[^/].*"
# An http(s) URL of this host, of the node's link-local services (the cloud metadata endpoint) or of an
# IPv4 address in a short, hex or octal form the resolver reads as one of those. Case-insensitive.
LOCAL_URL = (
    r"https?://([^/?#@]*@)?("
    r"localhost|[^/?#@:]*\.localhost"
    r"|127(\.[0-9]+)*|0+(\.[0-9]+)*|169\.254(\.[0-9]+)*"
    r"|[0-9]+(\.[0-9]+){0,2}|[0-9.]*0x[0-9a-fx.]*|([0-9]+\.)*0[0-9]+(\.[0-9]+)*"
    r"|\[[0:]*1?\]|\[fe[89ab][0-9a-f]:[^\]]*\]|\[::ffff:[^\]]*\]"
    r")\.?(:[0-9]*)?([/?#].*)?"
)
# A name clients send and logs show: no spaces, no control characters (C0, C1) and none of the Unicode spaces,
# zero-width and bidirectional controls that make a name read as another ("Trojan Source"); not starting
# with '-', as it is an engine argument. Code points above 0xff as RE2 writes them, \x{...}.
INVISIBLE = r" \x00-\x1f\x7f-\xa0\x{1680}\x{2000}-\x{200f}\x{2028}-\x{202f}\x{205f}-\x{206f}\x{3000}\x{feff}"
VISIBLE_NAME = f"[^-{INVISIBLE}][^{INVISIBLE}]*"

# A label key, as a node selector names it: [DNS subdomain prefix/]name, the name at most 63 characters.
LABEL_KEY = (
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
RE2_CODE_POINT = re.compile(r"\\x\{([0-9a-fA-F]{1,8})\}")


def python_regex(regex: str) -> str:
    r"""`regex` as Python's re reads it: RE2's `\x{2028}` becomes `\U00002028`, the rest is the same."""
    return RE2_CODE_POINT.sub(lambda code: f"\\U{int(code.group(1), 16):08x}", regex)


def fully_matches(regex: str, value: str, *, ignore_case: bool = False) -> bool:
    """What CEL's `value.matches('^regex$')` answers (with `(?i)` when `ignore_case`)."""
    return re.fullmatch(python_regex(regex), value, re.IGNORECASE if ignore_case else 0) is not None


def cel_matches(field: str, regex: str, *, ignore_case: bool = False) -> str:
    """The CEL call `field.matches('^regex$')`, the regex written as a CEL string literal."""
    if "'" in regex:
        raise ValueError(f"a quote in {regex!r} would end the CEL string")
    flags = "(?i)" if ignore_case else ""
    return f"{field}.matches('{flags}^{regex.replace(chr(92), chr(92) * 2)}$')"


@dataclass(frozen=True)
class SourceCheck:
    """One check of a source string: `cel(variable)` for the CRD, `holds(value)` for `parse_spec`."""

    cel: Callable[[str], str]
    holds: Callable[[str], bool]
    message: str  # after the field's name


SOURCE_CHECKS = (
    SourceCheck(
        lambda v: "!" + cel_matches(v, DOT_OR_EMPTY_SEGMENT),
        lambda value: not fully_matches(DOT_OR_EMPTY_SEGMENT, value),
        " must not contain empty, '.' or '..' path segments; write the path from the root of the claim, bucket, "
        "repository or host, e.g. pvc://models/llama-3.1-8b",
    ),
    SourceCheck(
        lambda v: f"!{v}.startsWith('pvc://') || ({cel_matches(v, PVC_CLAIM)} && {cel_matches(v, PVC_CLAIM_LENGTH)})",
        lambda value: (
            not value.startswith("pvc://")
            or (fully_matches(PVC_CLAIM, value) and fully_matches(PVC_CLAIM_LENGTH, value))
        ),
        ": in pvc://CLAIM/path, CLAIM is a PersistentVolumeClaim name (lowercase letters, digits, '-' and '.', "
        "at most 253 characters), e.g. pvc://models/llama-3.1-8b",
    ),
    SourceCheck(
        lambda v: f"!{v}.startsWith('hf://') || {cel_matches(v, HF_REPO)}",
        lambda value: not value.startswith("hf://") or fully_matches(HF_REPO, value),
        ": hf:// takes a hub repository as org/repo (letters, digits, '-', '_' and '.', at most 96 each), then "
        "an optional /path in it, e.g. hf://meta-llama/Llama-3.1-8B-Instruct",
    ),
)
