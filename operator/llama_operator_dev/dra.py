"""GPUs of the fake node pools as Dynamic Resource Allocation devices (resource.k8s.io/v1).

No DRA driver runs here, so the harness publishes what the NVIDIA DRA driver's kubelet plugin would: one
ResourceSlice per GPU node (driver ``gpu.nvidia.com``, a pool named after the node) listing each GPU as a
device with the driver's attributes (``type: gpu``, ``productName``, ``architecture``, ``brand``, ``uuid``,
``index``, ``minor``) and its ``memory`` capacity, plus the driver's DeviceClass ``gpu.nvidia.com``. The real
scheduler then allocates ResourceClaims from them, and KWOK runs the pods it binds.

The device facts come from the pool's GPU Feature Discovery labels: ``nvidia.com/gpu.memory`` (MiB) becomes
the memory capacity, ``nvidia.com/gpu.product`` the product name (dashes as spaces, as the driver reports
it), ``nvidia.com/gpu.family`` the architecture, ``nvidia.com/gpu`` capacity the device count.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from llama_operator_dev.pools import NodePool

LOGGER = logging.getLogger(__name__)

DRIVER = "gpu.nvidia.com"
DEVICE_CLASS = "gpu.nvidia.com"
GROUP, VERSION = "resource.k8s.io", "v1"
HTTP_CONFLICT = 409
Manifest = dict[str, Any]


def device_class() -> Manifest:
    """The DeviceClass the NVIDIA DRA driver installs for whole GPUs."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DeviceClass",
        "metadata": {"name": DEVICE_CLASS},
        "spec": {
            "selectors": [
                {"cel": {"expression": f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'gpu'"}}
            ]
        },
    }


def _architecture(family: str) -> str:
    return " ".join(part.capitalize() for part in family.split("-")) if family else "Unknown"


def _device(node: str, index: int, product: str, architecture: str, memory_mib: int) -> Manifest:
    uuid = hashlib.sha256(f"{node}/{index}".encode()).hexdigest()
    return {
        "name": f"gpu-{index}",
        "attributes": {
            "type": {"string": "gpu"},
            "uuid": {"string": f"GPU-{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}"},
            "productName": {"string": product},
            "brand": {"string": "Nvidia"},
            "architecture": {"string": architecture},
            "index": {"int": index},
            "minor": {"int": index},
        },
        "capacity": {"memory": {"value": f"{memory_mib}Mi"}},
    }


def gpu_count(pool: NodePool) -> int:
    value = pool.capacity.get("nvidia.com/gpu", "0")
    return int(value) if value.isdigit() else 0


def resource_slices(pools: Iterable[NodePool]) -> list[Manifest]:
    """One slice per node of every pool with GPUs and a GPU memory label."""
    slices = []
    for pool in pools:
        count = gpu_count(pool)
        memory = pool.labels.get("nvidia.com/gpu.memory", "")
        if count == 0 or not memory.isdigit():
            continue
        product = pool.labels.get("nvidia.com/gpu.product", "NVIDIA-GPU").replace("-", " ")
        architecture = _architecture(pool.labels.get("nvidia.com/gpu.family", ""))
        for node in pool.node_names():
            slices.append({
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ResourceSlice",
                "metadata": {"name": f"{node}-{DRIVER}"},
                "spec": {
                    "driver": DRIVER,
                    "nodeName": node,
                    "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                    "devices": [_device(node, i, product, architecture, int(memory)) for i in range(count)],
                },
            })  # fmt: skip
    return slices


def publish_gpu_devices(api_client: ApiClient, pools: Iterable[NodePool]) -> int:
    """Create the DeviceClass and the slices (those that exist are kept); returns how many devices."""
    api = CustomObjectsApi(api_client)
    slices = resource_slices(pools)
    for body, plural in [(device_class(), "deviceclasses"), *((s, "resourceslices") for s in slices)]:
        try:
            api.create_cluster_custom_object(GROUP, VERSION, plural, body)
        except ApiException as error:
            if error.status != HTTP_CONFLICT:
                raise
            LOGGER.info("%s %s already exists; keeping it", body["kind"], body["metadata"]["name"])
    devices = sum(len(s["spec"]["devices"]) for s in slices)
    LOGGER.info("published %d GPU devices in %d ResourceSlices (driver %s)", devices, len(slices), DRIVER)
    return devices
