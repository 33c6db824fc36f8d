"""Children the apiserver did not take, per child and in memory: what status says, and when to try again.

A child the apiserver refuses as invalid (400 Bad Request, 422 Invalid: a field, a name, an admission
check) will be refused again as long as the same body is sent: that body is held back for a back-off of
10 s after the first refusal, doubling up to 10 minutes, and the status says so (`ChildRejected`). A
changed spec renders a different body, which is applied at once. Other failures (RBAC, an unavailable
webhook, no answer) are not held back: any pass tries again, and a recheck comes after 5 s, doubling up to
5 minutes. An operator restart forgets all of it and tries each child once more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_operator.kube import KubeError, RejectedError

ChildKey = tuple[str, str, str, str]  # (apiVersion, kind, namespace, name)
REJECTED_FIRST_RETRY_SECONDS = 10.0
REJECTED_MAX_RETRY_SECONDS = 600.0
FAILED_FIRST_RETRY_SECONDS = 5.0
FAILED_MAX_RETRY_SECONDS = 300.0


def body_digest(child: Mapping[str, Any]) -> str:
    """Which desired body an apply sent: a refusal holds back this body only."""
    return hashlib.sha256(json.dumps(child, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ApplyFailure:
    """A child the apiserver did not take: `rejected` when it refused the body itself (400/422)."""

    child: str  # Kind/name
    digest: str  # the body that failed
    message: str  # for status: the apiserver's words and what to do next
    rejected: bool
    attempts: int  # failed applies of this child in a row
    retry_at: float  # monotonic seconds: no apply of the same rejected body before then

    def retry_in(self, now: float) -> float:
        return max(0.0, self.retry_at - now)


def failure_message(child: str, error: KubeError) -> str:
    if isinstance(error, RejectedError):
        return (f"the apiserver refused {child}: {error.message}; fix the field it names in the spec (an unchanged "
                f"spec is tried again after a growing pause of up to {REJECTED_MAX_RETRY_SECONDS / 60:.0f} minutes)")  # fmt: skip
    return f"could not apply {child}: {error}; check the operator's RBAC, admission webhooks and its access to the API"


@dataclass
class ChildFailures:
    """Failed applies per child: what holds a refused body back, and how long until the next try."""

    _failures: dict[ChildKey, ApplyFailure] = field(default_factory=dict)

    def held(self, key: ChildKey, digest: str, now: float) -> ApplyFailure | None:
        """The refusal of exactly this body whose back-off is not over: do not send it again yet."""
        failure = self._failures.get(key)
        if failure is not None and failure.rejected and failure.digest == digest and now < failure.retry_at:
            return failure
        return None

    def record(self, key: ChildKey, digest: str, error: KubeError, now: float) -> ApplyFailure:
        rejected = isinstance(error, RejectedError)
        before = self._failures.get(key)
        again = before is not None and before.rejected == rejected and before.digest == digest
        attempts = before.attempts + 1 if before is not None and again else 1
        first, most = ((REJECTED_FIRST_RETRY_SECONDS, REJECTED_MAX_RETRY_SECONDS) if rejected
                       else (FAILED_FIRST_RETRY_SECONDS, FAILED_MAX_RETRY_SECONDS))  # fmt: skip
        delay = min(most, first * 2 ** min(attempts - 1, 20))
        child = f"{key[1]}/{key[3]}"
        failure = ApplyFailure(child, digest, failure_message(child, error), rejected, attempts, now + delay)
        self._failures[key] = failure
        return failure

    def clear(self, key: ChildKey) -> None:
        self._failures.pop(key, None)

    def keep_only(self, namespace: str, name: str, keys: set[ChildKey]) -> None:
        """Drop failures of children no longer rendered (the spec or the optional APIs changed)."""
        for key in [k for k in self._failures if k[2:] == (namespace, name) and k not in keys]:
            del self._failures[key]

    def forget(self, namespace: str, name: str) -> None:
        self.keep_only(namespace, name, set())
