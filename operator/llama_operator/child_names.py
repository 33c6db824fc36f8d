"""Pure: whether a LlamaDeployment's name can name its children, checked before anything is applied.

The object's own name is a DNS-1123 subdomain (up to 253 characters, dots allowed). Its children take the
same name, and stricter rules apply there: the Service's name is a DNS-1035 label (up to 63 characters of
lowercase letters, digits and '-', starting with a letter and ending with a letter or digit), and the name is
the value of every child's `llamaops.io/deployment` label (up to 63 characters). Without this check the
apiserver refuses the child and the user reads the refusal only after the first apply.
"""

from __future__ import annotations

import re

MAX_LABEL_CHARACTERS = 63
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def suggested_name(name: str) -> str:
    """A name close to `name` that can name every child: dots and other characters become '-'."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    if not cleaned[:1].isalpha():
        cleaned = "ld-" + cleaned
    return cleaned[:MAX_LABEL_CHARACTERS].strip("-") or "llama"


def child_name_problem(name: str) -> str | None:
    """Why `name` cannot name this LlamaDeployment's Service and label its children, or None."""
    if DNS_1035_LABEL.match(name) and len(name) <= MAX_LABEL_CHARACTERS:
        return None
    rules = (
        "its Service takes the same name, which must be a DNS-1035 label: at most 63 characters of lowercase "
        "letters, digits and '-', starting with a letter (no dots)"
    )
    if len(name) > MAX_LABEL_CHARACTERS:
        found = f"has {len(name)} characters"
    elif "." in name:
        found = "contains dots"
    else:
        found = "does not start with a letter" if not name[:1].isalpha() else "has characters a Service name cannot"
    return (
        f"metadata.name {name!r} {found}; {rules}. A name cannot be changed: create the LlamaDeployment again "
        f"under a name such as {suggested_name(name)!r} and delete this one"
    )
