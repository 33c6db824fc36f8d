"""Errors of the local dev cluster; each message says what to do next."""

from __future__ import annotations


class DevClusterError(Exception):
    """Base of every error raised while building, starting or stopping the dev cluster."""


class BinariesMissingError(DevClusterError):
    """The control-plane binaries for the pinned versions have not been built."""


class OpensslError(DevClusterError):
    """The openssl command is missing, too old, or failed to produce a certificate."""


class ProcessExitedError(DevClusterError):
    """A control-plane process exited while we were waiting for it to become ready."""


class ReadinessTimeoutError(DevClusterError):
    """A control-plane component did not report ready before its deadline."""


class NodePoolsError(DevClusterError):
    """The node pools file is malformed."""
