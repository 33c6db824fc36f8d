# syntax=docker/dockerfile:1
# The llama-operator image: `docker build -t llama-operator .` at the repository root.
# Stage 1 builds the operator wheel and the wheels of its runtime dependencies, pinned by
# requirements.lock; stage 2 installs them from those wheels alone, with no compiler, no
# network and no pip left behind, and runs as a non-root user.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml requirements.lock ./
# operator/ without the dev harness (.dockerignore); the wheel holds llama_operator only either way.
COPY operator ./operator
# Runtime dependencies only: the lock pins their versions, test tools are not pulled in.
RUN pip wheel --wheel-dir /wheels --constraint requirements.lock .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The wheels come only from the build stage (--no-index), so pinning here would repeat the lock.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels llama-operator \
    && pip uninstall --yes pip setuptools wheel \
    && groupadd --gid 65532 llama-operator \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin llama-operator
USER 65532:65532
# 8080: kopf's liveness endpoint; 9090: the operator's /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["llama-operator"]
CMD ["run"]
