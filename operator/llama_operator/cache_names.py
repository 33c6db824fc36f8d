"""Pure: the name of the shared model cache of a spec (`model.cache`), the same for every LlamaDeployment
of a namespace that downloads the same bytes."""

from __future__ import annotations

import hashlib
import posixpath
import re

from llama_operator.api.spec import LlamaDeploymentSpec

CACHE_LABEL = "llamaops.io/model-cache"
CACHE_SOURCE_ANNOTATION = "llamaops.io/model-source"
JOB_SUFFIX = "-fill"
_SLUG_CHARS = re.compile(r"[^a-z0-9]+")
SLUG_LENGTH = 30


def cache_key(source: str, model_format: str) -> str:
    """What makes two downloads the same: the source and how it is laid out (one GGUF file, or a folder)."""
    return f"{model_format}:{source}"


def cache_claim_name(source: str, model_format: str) -> str:
    """`model-<slug of the file or repo>-<10 hex of the key>`: readable in `kubectl get pvc`, at most 51
    characters, so the Job name (plus JOB_SUFFIX) stays a valid label value."""
    digest = hashlib.sha256(cache_key(source, model_format).encode()).hexdigest()[:10]
    slug = _SLUG_CHARS.sub("-", posixpath.basename(source.rstrip("/")).lower()).strip("-")[:SLUG_LENGTH].strip("-")
    return f"model-{slug}-{digest}" if slug else f"model-{digest}"


def cache_of(spec: LlamaDeploymentSpec) -> str | None:
    """The cache claim this spec mounts, or None without `model.cache`."""
    if spec.model.cache is None:
        return None
    return cache_claim_name(spec.model.source, spec.model.format)


def job_name(claim: str) -> str:
    return claim + JOB_SUFFIX
