"""GPUs by Dynamic Resource Allocation (resource.k8s.io/v1): the ResourceClaimTemplate a pod claims its GPUs
from, asking the NVIDIA DRA driver's DeviceClass for the plan's GPU count with at least the plan's memory on
each device. Pure.

The memory a device needs is what the engine will use on it at the plan's utilisation: the sizing checked
`weights + KV cache + overhead <= budget`, where `budget` is a fixed fraction of the card (vLLM's
`--gpu-memory-utilization`, TGI's and llama.cpp's usable share), so a device fits when that fraction of its
memory holds the same total.
"""

from __future__ import annotations

import hashlib
import json

from llama_operator.engines.engine import Manifest
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.gpu_classes import MIB

DRA_API = "resource.k8s.io/v1"
CLAIM_TEMPLATE_KIND = "ResourceClaimTemplate"
CLAIM_TEMPLATES = "resourceclaimtemplates.resource.k8s.io"  # what the operator must be able to watch
DRA_DRIVER = "gpu.nvidia.com"  # the NVIDIA DRA driver: its DeviceClass and its attribute domain
DEVICE_CLASS = "gpu.nvidia.com"
CLAIM_NAME = "gpus"  # the pod's claim, the container's claim and the template's request


def device_memory_mib(decision: SizingDecision) -> int:
    """The least memory (MiB) one device needs for the chosen plan; 0 for a CPU plan."""
    chosen = decision.chosen
    if chosen is None or chosen.gpu_class is None or chosen.memory.budget <= 0:
        return 0
    card = chosen.gpu_class.memory_bytes
    needed_bytes = -(-chosen.memory.total * card // chosen.memory.budget)
    return -(-needed_bytes // MIB)


def device_selectors(decision: SizingDecision, product_names: list[str]) -> list[str]:
    """CEL expressions every allocated device must satisfy (the product names are pattern-checked at
    admission: no quote can reach the literal)."""
    memory = f"device.capacity['{DRA_DRIVER}'].memory.compareTo(quantity('{device_memory_mib(decision)}Mi')) >= 0"
    selectors = [memory]
    if product_names:
        names = ", ".join(f"'{name}'" for name in product_names)
        selectors.append(f"device.attributes['{DRA_DRIVER}'].productName in [{names}]")
    return selectors


def claim_spec(gpus: int, selectors: list[str]) -> Manifest:
    """The ResourceClaim every pod gets: `gpus` devices of the GPU DeviceClass, each matching all selectors."""
    return {
        "devices": {
            "requests": [
                {
                    "name": CLAIM_NAME,
                    "exactly": {
                        "deviceClassName": DEVICE_CLASS,
                        "allocationMode": "ExactCount",
                        "count": gpus,
                        "selectors": [{"cel": {"expression": expression}} for expression in selectors],
                    },
                }
            ]
        }
    }


def claim_template_name(owner: str, spec: Manifest) -> str:
    """A template's spec cannot change: a different claim is a new template, named by its content, and the
    pods roll over to it."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]
    return f"{owner}-gpus-{digest}"


def pod_claims(template: str) -> list[Manifest]:
    return [{"name": CLAIM_NAME, "resourceClaimTemplateName": template}]


def container_claims() -> list[Manifest]:
    return [{"name": CLAIM_NAME}]
