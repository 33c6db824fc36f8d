"""Kubeconfig files for the dev cluster, with the certificates embedded.

Embedding (``*-data`` fields) keeps each file self-contained, so kubectl, the Python
``kubernetes`` client and kopf read it the same way wherever it is copied.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from llama_operator_dev.certs import CertificateFiles

CLUSTER_NAME = "llama-operator-dev"


def pem_data(path: Path) -> str:
    """A PEM file as the base64 string a kubeconfig ``*-data`` field holds."""
    return base64.b64encode(path.read_bytes()).decode("ascii")


def kubeconfig_document(server_url: str, ca_file: Path, user: str, client: CertificateFiles) -> dict[str, Any]:
    """One cluster, one user authenticated by a client certificate, one current context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server_url, "certificate-authority-data": pem_data(ca_file)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": pem_data(client.cert),
                    "client-key-data": pem_data(client.key),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }


def write_kubeconfig(path: Path, server_url: str, ca_file: Path, user: str, client: CertificateFiles) -> Path:
    """Write the kubeconfig readable by its owner only (it holds a private key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    document = kubeconfig_document(server_url, ca_file, user, client)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
