"""RFC 3339 timestamps as Kubernetes writes them (UTC, seconds, `Z`), from and to Unix seconds."""

from __future__ import annotations

import datetime


def rfc3339(epoch_seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def epoch_seconds(text: str | None) -> float | None:
    """Unix seconds of an RFC 3339 time; None for an empty or missing one."""
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
