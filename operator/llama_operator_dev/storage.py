"""Dynamic provisioning in the dev cluster: the real PV controller's hostPath provisioner.

The controller-manager runs with ``--enable-hostpath-provisioner`` (see ``components.py``), and
``ControlPlane.start()`` creates the default StorageClass ``local-hostpath`` (provisioner
``kubernetes.io/host-path``, reclaim Delete, binding Immediate). A claim without a
``storageClassName`` gets that class from the DefaultStorageClass admission plugin; the PV
controller then makes a folder ``/tmp/hostpath_pv/<uuid>`` (mode 0750) and a hostPath PV with the
claim's own access modes (ReadWriteOnce, ReadWriteMany and ReadOnlyMany alike: the provisioner
copies them, nothing checks them) and binds the two. Deleting the claim deletes the PV, and the
PV controller's deleter removes the folder (it removes folders under ``/tmp/`` only, which this
always is). The folder is where the process-backed kubelet maps the claim's mounts.

The folder is made by the controller-manager itself, on this machine: the provisioner is for
one-host test clusters only, which this is. ``ControlPlane.stop()`` removes the folders of PVs
left behind when a plane stops with claims still in it (``leftover_volume_folders``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, StorageV1Api, V1ObjectMeta, V1StorageClass
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

LOGGER = logging.getLogger(__name__)

Manifest = dict[str, Any]

DEFAULT_STORAGE_CLASS = "local-hostpath"
HOSTPATH_PROVISIONER = "kubernetes.io/host-path"
# Where the provisioner puts every volume: fmt.Sprintf("/tmp/%s/%s", "hostpath_pv", uuid) in
# pkg/volume/hostpath/host_path.go, whatever TMPDIR says.
HOSTPATH_PV_ROOT = Path("/tmp/hostpath_pv")  # noqa: S108 - the provisioner's fixed root, not ours to choose
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
PROVISIONED_BY_ANNOTATION = "pv.kubernetes.io/provisioned-by"
HTTP_CONFLICT = 409


def default_storage_class(name: str = DEFAULT_STORAGE_CLASS) -> Manifest:
    """The dev cluster's default StorageClass: hostPath volumes provisioned by the controller-manager."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": HOSTPATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def create_default_storage_class(api_client: ApiClient, name: str = DEFAULT_STORAGE_CLASS) -> None:
    """Create the default StorageClass (kept as it is when it exists already)."""
    try:
        manifest = default_storage_class(name)
        body = V1StorageClass(
            metadata=V1ObjectMeta(name=name, annotations=manifest["metadata"]["annotations"]),
            provisioner=manifest["provisioner"],
            reclaim_policy=manifest["reclaimPolicy"],
            volume_binding_mode=manifest["volumeBindingMode"],
        )
        StorageV1Api(api_client).create_storage_class(body)
    except ApiException as error:
        if error.status != HTTP_CONFLICT:
            raise


def leftover_volume_folders(volumes: Iterable[tuple[str, str]], root: Path = HOSTPATH_PV_ROOT) -> list[Path]:
    """Of the PVs as (``provisioned-by`` annotation, hostPath path): the folders the hostPath
    provisioner made, directly under ``root``."""
    folders: list[Path] = []
    for provisioned_by, path in volumes:
        if provisioned_by != HOSTPATH_PROVISIONER or not path:
            continue
        folder = Path(path)
        if folder.parent == root and folder.name not in ("", ".", ".."):
            folders.append(folder)
    return sorted(folders)


def remove_leftover_volume_folders(api_client: ApiClient) -> None:
    """Remove the folders of the provisioned PVs that still exist (the plane is about to stop)."""
    try:
        listed = CoreV1Api(api_client).list_persistent_volume(_request_timeout=5).items
    except (ApiException, HTTPError, OSError) as error:
        LOGGER.warning("listing PVs to remove their folders failed: %s", error)
        return
    pairs: list[tuple[str, str]] = []
    for volume in listed:
        annotations = (volume.metadata.annotations if volume.metadata is not None else None) or {}
        host_path = volume.spec.host_path if volume.spec is not None else None
        pairs.append((str(annotations.get(PROVISIONED_BY_ANNOTATION, "")), str(host_path.path if host_path else "")))
    for folder in leftover_volume_folders(pairs):
        shutil.rmtree(folder, ignore_errors=True)
        LOGGER.info("removed the folder %s of a PV left in the stopped plane", folder)
