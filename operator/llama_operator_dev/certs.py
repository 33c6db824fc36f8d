"""Certificates of the local control plane, made with the ``openssl`` command (OpenSSL >= 3.0).

One throwaway CA signs a serving certificate for 127.0.0.1/localhost (shared by every
component), one client certificate per identity, and an RSA key pair signs service-account
tokens. The process-backed kubelet's log server has a serving certificate of its own
(``kubelet-serving``, 127.0.0.1), and the apiserver dials it with the ``apiserver-kubelet-client``
certificate, as kubeadm sets a cluster up; it proxies to aggregated APIs with the ``front-proxy-client``
certificate. Everything is regenerated on each start; nothing here is meant to leave the machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from llama_operator_dev.errors import OpensslError

VALIDITY_DAYS = 365
MINIMUM_OPENSSL_MAJOR = 3  # `openssl req -x509 -CA` (sign in one step) is new in 3.0
EC_KEY_OPTIONS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")

SERVING_SUBJECT_ALT_NAMES = (
    "IP:127.0.0.1",
    "DNS:localhost",
    # The in-cluster name and service IP of the API (first address of 10.96.0.0/16).
    "IP:10.96.0.1",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class CertificateFiles:
    """A PEM certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClientIdentity:
    """Who a client certificate authenticates as: CN is the user, O entries are groups."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


ADMIN = ClientIdentity("admin", "llama-operator-admin", ("system:masters",))
CONTROLLER_MANAGER = ClientIdentity("kube-controller-manager", "system:kube-controller-manager")
SCHEDULER = ClientIdentity("kube-scheduler", "system:kube-scheduler")
# The apiserver's identity towards kubelets (pods/log, exec ...); kubeadm's name and group.
KUBELET_CLIENT = ClientIdentity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
KUBELET_SERVING_SUBJECT_ALT_NAMES = ("IP:127.0.0.1", "DNS:localhost")
# The apiserver's identity towards aggregated APIs (KEDA's metrics adapter): the front proxy's client
# certificate, whose CN the apiserver's --requestheader-allowed-names lists.
FRONT_PROXY_CLIENT = ClientIdentity("front-proxy-client", "front-proxy-client")


@dataclass(frozen=True)
class ClusterCertificates:
    """Every file the control plane's TLS and token signing needs."""

    ca: CertificateFiles
    serving: CertificateFiles
    admin: CertificateFiles
    controller_manager: CertificateFiles
    scheduler: CertificateFiles
    kubelet_client: CertificateFiles
    kubelet_serving: CertificateFiles
    front_proxy_client: CertificateFiles
    service_account_private_key: Path
    service_account_public_key: Path


def run_openssl(*arguments: str) -> str:
    """Run ``openssl`` with ``arguments``; stdout on success, OpensslError with stderr otherwise."""
    executable = shutil.which("openssl")
    if executable is None:
        raise OpensslError("the openssl command is not on PATH; install it (Debian: apt-get install openssl)")
    completed = subprocess.run([executable, *arguments], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise OpensslError(f"openssl {arguments[0]} failed ({completed.returncode}): {completed.stderr.strip()}")
    return completed.stdout


def require_openssl() -> str:
    """Check that ``openssl`` exists and is new enough; returns its version line."""
    version_line = run_openssl("version").strip()
    match = re.match(r"OpenSSL (\d+)\.", version_line)
    if match is None or int(match.group(1)) < MINIMUM_OPENSSL_MAJOR:
        raise OpensslError(f"OpenSSL >= 3.0 is needed to make the dev cluster certificates, found {version_line!r}")
    return version_line


def subject_of(common_name: str, organizations: tuple[str, ...] = ()) -> str:
    """An openssl ``-subj`` string, e.g. ``/O=system:masters/CN=admin``."""
    for part in (common_name, *organizations):
        if "/" in part or "=" in part:
            raise ValueError(f"subject part {part!r} must not contain '/' or '='")
    return "".join(f"/O={organization}" for organization in organizations) + f"/CN={common_name}"


def make_certificate_authority(directory: Path) -> CertificateFiles:
    files = CertificateFiles(cert=directory / "ca.crt", key=directory / "ca.key")
    run_openssl(
        "req", "-x509", "-new", *EC_KEY_OPTIONS,
        "-keyout", str(files.key), "-out", str(files.cert),
        "-days", str(VALIDITY_DAYS), "-subj", subject_of("llama-operator-devcluster-ca"),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return files


def sign_certificate(
    authority: CertificateFiles,
    files: CertificateFiles,
    subject: str,
    extended_key_usage: str,
    subject_alt_names: tuple[str, ...] = (),
) -> CertificateFiles:
    """Make a new key and a certificate for it signed by ``authority``."""
    extensions = [
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext", f"extendedKeyUsage={extended_key_usage}",
    ]  # fmt: skip
    if subject_alt_names:
        extensions += ["-addext", "subjectAltName=" + ",".join(subject_alt_names)]
    run_openssl(
        "req", "-x509", "-new", *EC_KEY_OPTIONS,
        "-CA", str(authority.cert), "-CAkey", str(authority.key),
        "-keyout", str(files.key), "-out", str(files.cert),
        "-days", str(VALIDITY_DAYS), "-subj", subject, *extensions,
    )  # fmt: skip
    return files


def make_client_certificate(authority: CertificateFiles, directory: Path, identity: ClientIdentity) -> CertificateFiles:
    files = CertificateFiles(cert=directory / f"{identity.file_stem}.crt", key=directory / f"{identity.file_stem}.key")
    return sign_certificate(authority, files, subject_of(identity.user, identity.groups), "clientAuth")


def make_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """An RSA key pair: the apiserver signs service-account tokens with it, everyone verifies."""
    private_key = directory / "service-account.key"
    public_key = directory / "service-account.pub"
    run_openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(private_key))
    run_openssl("pkey", "-in", str(private_key), "-pubout", "-out", str(public_key))
    return private_key, public_key


def generate_cluster_certificates(directory: Path) -> ClusterCertificates:
    """Create a fresh CA and every certificate and key of the control plane in ``directory``."""
    require_openssl()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    authority = make_certificate_authority(directory)
    serving = sign_certificate(
        authority,
        CertificateFiles(cert=directory / "serving.crt", key=directory / "serving.key"),
        subject_of("llama-operator-devcluster"),
        "serverAuth",
        SERVING_SUBJECT_ALT_NAMES,
    )
    private_key, public_key = make_service_account_keys(directory)
    certificates = ClusterCertificates(
        ca=authority,
        serving=serving,
        admin=make_client_certificate(authority, directory, ADMIN),
        controller_manager=make_client_certificate(authority, directory, CONTROLLER_MANAGER),
        scheduler=make_client_certificate(authority, directory, SCHEDULER),
        kubelet_client=make_client_certificate(authority, directory, KUBELET_CLIENT),
        kubelet_serving=sign_certificate(
            authority,
            CertificateFiles(cert=directory / "kubelet-serving.crt", key=directory / "kubelet-serving.key"),
            subject_of("system:node:process-backed"),
            "serverAuth",
            KUBELET_SERVING_SUBJECT_ALT_NAMES,
        ),
        front_proxy_client=make_client_certificate(authority, directory, FRONT_PROXY_CLIENT),
        service_account_private_key=private_key,
        service_account_public_key=public_key,
    )
    for key_file in directory.glob("*.key"):
        key_file.chmod(0o600)
    return certificates
