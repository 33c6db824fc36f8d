"""Where a pod's paths land on the host, and the command line and environment a container runs with.

A pod names paths inside its own filesystem; the harness maps them to host paths. Two sources
make up a container's path map: the static ``path_map`` of the harness config, and the pod's
volumes that ``volumeMounts`` place at their mount paths: each ``emptyDir`` volume is a host
folder under the pod's folder (``<pod_dir>/volumes/<volume>``), each ``persistentVolumeClaim``
volume the folder of the PV bound to the claim (``spec.hostPath.path`` or ``spec.local.path``,
``claim_volume_folder``), which a pod's removal never touches.

``readOnly`` (on the volume or on the mount) is not enforced: every pod process runs as the
harness' own user, which owns the PV folders too, and taking write access away from one process
but not another needs privileges (a read-only bind mount, another uid) the harness does not have.
A pod that writes into a read-only mount succeeds here where a real kubelet's pod gets EROFS. For any path the longest
matching entry wins; a static entry wins over a mount of the same path. Mapping applies to whole
arguments and to pod paths *inside* command/args strings and env values (a ``sh -c`` script,
``name=/adapters/a/v1``), at path boundaries only (see ``map_pod_text``). Host folders should not
contain whitespace or quotes: a mapped path lands inside shell scripts as plain text.

Pure rules, as in ``process_pods.py``: nothing here touches the API, the clock, a file or a
process; ``process_pod_worker.py`` makes the folders and starts the processes.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Manifest = dict[str, Any]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})  # noqa: S104 - recognised, then replaced by the pod IP
HOST_FLAGS = ("--host",)
VOLUMES_FOLDER = "volumes"  # <pod_dir>/volumes/<volume name>: the pod's emptyDir volumes
# A pod path inside text starts after one of these (or at the start of the text) ...
PATH_START_AFTER = frozenset(" \t\n\r'\"=:(<>;|&,")
# ... and ends before anything that cannot continue a file name (end, "/", whitespace, quotes, ...).
PATH_NAME_CHARACTER = re.compile(r"[\w.~+@%-]")


# -- from pod spec to command line ------------------------------------------------------------


def map_pod_path(value: str, path_map: Mapping[str, Path]) -> str:
    """A whole path inside the pod -> the host path the harness maps it to; anything else unchanged.

    An entry maps a file exactly (``/models/tiny.gguf``) or a folder and everything below it
    (``/adapters``); the longest matching entry wins.
    """
    if value in path_map:
        return str(path_map[value])
    best_folder, best_target = "", ""
    for prefix, target in path_map.items():
        folder = prefix.rstrip("/")
        if folder and value.startswith(folder + "/") and len(folder) > len(best_folder):
            best_folder, best_target = folder, str(target)
    if not best_folder:
        return value
    return best_target + value[len(best_folder) :]


def map_pod_text(text: str, path_map: Mapping[str, Path]) -> str:
    """Pod paths inside a string (an argument, a shell script, an env value) -> host paths.

    A text equal to an entry maps whole (that is how a bare command such as ``vllm`` maps).
    Otherwise every absolute entry maps where it appears at a path boundary: preceded by the start
    of the text, whitespace, a quote or one of ``= : ( < > ; | & ,``, and followed by the end,
    ``/`` or any character that cannot continue a file name (whitespace, quotes, ``:`` ...).
    Entries are tried longest first, and mapped text is never looked at again. So in
    ``local_dir='/models/model'`` and ``support=/adapters/support/v1`` the paths map, while
    ``/modelsX``, ``/models.bak``, ``/opt/models`` and ``hf://models/x`` stay as written.
    """
    if text in path_map:
        return str(path_map[text])
    entries = sorted(
        ((key.rstrip("/"), str(target)) for key, target in path_map.items() if key.startswith("/") and key.rstrip("/")),
        key=lambda entry: len(entry[0]),
        reverse=True,
    )
    out: list[str] = []
    copied = index = 0
    while index < len(text):
        if text[index] == "/" and (index == 0 or text[index - 1] in PATH_START_AFTER):
            match = next((entry for entry in entries if _path_at(text, index, entry[0])), None)
            if match is not None:
                out += [text[copied:index], match[1]]
                index = copied = index + len(match[0])
                continue
        index += 1
    out.append(text[copied:])
    return "".join(out)


def _path_at(text: str, index: int, path: str) -> bool:
    end = index + len(path)
    return text.startswith(path, index) and (end == len(text) or not PATH_NAME_CHARACTER.match(text[end]))


def expand_references(text: str, environment: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command and args: defined names are replaced,
    undefined ones stay as written, ``$$`` is a literal ``$``."""
    out: list[str] = []
    index = 0
    while index < len(text):
        if text.startswith("$$", index):
            out.append("$")
            index += 2
            continue
        match = re.match(r"\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)", text[index:])
        if match and match.group(1) in environment:
            out.append(environment[match.group(1)])
            index += match.end()
            continue
        out.append(text[index])
        index += 1
    return "".join(out)


def rewrite_args(args: Sequence[str], path_map: Mapping[str, Path], pod_ip: str) -> list[str]:
    """Map pod paths to host paths (``map_pod_text``) and a wildcard ``--host`` to the pod's own address.

    A ``--host`` that is not a wildcard (say 127.0.0.1) is kept: in a real pod it would bind the
    pod's loopback and be unreachable from the kubelet's probes, and so it is here.
    """
    rewritten: list[str] = []
    previous = ""
    for arg in args:
        if previous in HOST_FLAGS and arg in WILDCARD_HOSTS:
            rewritten.append(pod_ip)
        elif arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            if flag in HOST_FLAGS and value in WILDCARD_HOSTS:
                rewritten.append(f"{flag}={pod_ip}")
            else:
                rewritten.append(f"{flag}={map_pod_text(value, path_map)}")
        else:
            rewritten.append(map_pod_text(arg, path_map))
        previous = arg
    return rewritten


def container_environment(
    container: Manifest, field_values: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """(the container's ``env`` in order, as the pod sees it; names this kubelet cannot resolve).

    Plain values and ``fieldRef``s to the pod's own fields (``field_values``, e.g.
    ``status.podIP``) are resolved; Secrets and ConfigMaps are not. Paths are not mapped here:
    ``$(VAR)`` references expand to what the pod would see, and the result is mapped once.
    """
    fields = field_values or {}
    values: dict[str, str] = {}
    unresolved: list[str] = []
    for entry in container.get("env") or []:
        name = str(entry["name"])
        source = entry.get("valueFrom")
        if source is None:
            values[name] = expand_references(str(entry.get("value", "")), values)
            continue
        field_path = str((source.get("fieldRef") or {}).get("fieldPath", ""))
        if field_path in fields:
            values[name] = fields[field_path]
        else:
            unresolved.append(name)
    return values, unresolved


def process_environment(
    base: Mapping[str, str],
    node_extra: Mapping[str, str],
    container: Mapping[str, str],
    path_map: Mapping[str, Path] | None = None,
) -> dict[str, str]:
    """A pod process' environment: the kubelet's base (PATH, HOME, HOSTNAME), then what the harness
    adds on this node (``ProcessBackedConfig.extra_env``), then the container's own ``env``, which wins.

    The container's values name pod paths and are mapped with ``path_map``; the base and the
    node's values are host values already.
    """
    mapped = {name: map_pod_text(value, path_map) for name, value in container.items()} if path_map else container
    return {**base, **node_extra, **mapped}


def container_command(
    container: Manifest, path_map: Mapping[str, Path], pod_ip: str, environment: Mapping[str, str] | None = None
) -> list[str]:
    """The argv a container runs as a local process; empty when the pod names no command
    (the image's entrypoint cannot be known without the image).

    ``$(VAR)`` references expand first, with the pod's view of ``environment``; paths map after.
    """
    env = environment if environment is not None else container_environment(container)[0]
    command = [expand_references(part, env) for part in container.get("command") or []]
    args = [expand_references(part, env) for part in container.get("args") or []]
    if not command:
        return []
    return [map_pod_text(command[0], path_map), *rewrite_args([*command[1:], *args], path_map, pod_ip)]


# -- volumes ----------------------------------------------------------------------------------


def pod_volume_folders(spec: Manifest, pod_dir: Path) -> dict[str, Path]:
    """The pod's ``emptyDir`` volumes -> their host folders (``<pod_dir>/volumes/<name>``).

    Claims come from ``claim_volume_folder``; other kinds (configMap, secret, projected ...) are not backed.
    """
    return {
        str(volume["name"]): pod_dir / VOLUMES_FOLDER / str(volume["name"])
        for volume in spec.get("volumes") or []
        if "emptyDir" in volume
    }


def pod_claims(spec: Manifest) -> dict[str, str]:
    """The pod's ``persistentVolumeClaim`` volumes: volume name -> claim name."""
    return {
        str(volume["name"]): str(volume["persistentVolumeClaim"]["claimName"])
        for volume in spec.get("volumes") or []
        if "persistentVolumeClaim" in volume
    }


def claim_volume_folder(claim_name: str, claim: Manifest | None, volume: Manifest | None) -> Path | str:
    """The host folder of a claim's volume, or why the pod cannot start yet (a kubelet's wording).

    ``claim`` is the PVC as read (None: not found), ``volume`` the PV it is bound to (None: not
    read or not found). The folder is the PV's ``hostPath.path`` or ``local.path``.
    """
    if claim is None:
        return f'persistentvolumeclaim "{claim_name}" not found'
    if (claim.get("metadata") or {}).get("deletionTimestamp") is not None:
        return f'persistentvolumeclaim "{claim_name}" is being deleted'
    volume_name = str((claim.get("spec") or {}).get("volumeName") or "")
    if (claim.get("status") or {}).get("phase") != "Bound" or not volume_name:
        return f'persistentvolumeclaim "{claim_name}" is not bound'
    if volume is None:
        return f'persistentvolume "{volume_name}" of claim "{claim_name}" not found'
    spec = volume.get("spec") or {}
    path = (spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path")
    if not path or not str(path).startswith("/"):
        return (
            f'persistentvolume "{volume_name}" of claim "{claim_name}" has no hostPath or local path: '
            "the process-backed kubelet backs only those"
        )
    return Path(str(path))


def container_mount_folders(container: Manifest, volume_folders: Mapping[str, Path]) -> dict[str, Path]:
    """The container's mounts of backed volumes: mount path -> host folder (``subPath`` below the volume)."""
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        folder = volume_folders.get(str(mount["name"]))
        mount_path = str(mount["mountPath"]).rstrip("/")
        if folder is None or not mount_path:
            continue
        sub_path = posixpath.normpath(str(mount.get("subPath") or "."))
        if sub_path.startswith(("/", "..")):  # the API refuses these; never leave the volume
            continue
        mounts[mount_path] = folder if sub_path == "." else folder / sub_path
    return mounts


def container_path_map(static: Mapping[str, Path], mounts: Mapping[str, Path]) -> dict[str, Path]:
    """One container's path map: its volume mounts plus the harness' static entries.

    Lookups take the longest matching entry, so a static file (``/models/tiny.gguf``) still beats a
    ``/models`` mount; a static entry for the mount path itself replaces the mount.
    """
    static_paths = {key.rstrip("/") for key in static}
    return {**{path: folder for path, folder in mounts.items() if path not in static_paths}, **static}


def unbacked_volumes(spec: Manifest, static: Mapping[str, Path], volume_folders: Mapping[str, Path]) -> list[str]:
    """Volumes mounted into a container this kubelet runs (init containers and the first container)
    that have no host folder and no static entry at, above or below the mount path."""
    static_paths = [key.rstrip("/") for key in static if key.startswith("/")]
    names: set[str] = set()
    for container in [*(spec.get("initContainers") or []), *spec["containers"][:1]]:
        for mount in container.get("volumeMounts") or []:
            name, mount_path = str(mount["name"]), str(mount["mountPath"]).rstrip("/")
            covered = any(
                path == mount_path or mount_path.startswith(path + "/") or path.startswith(mount_path + "/")
                for path in static_paths
            )
            if name not in volume_folders and not covered:
                names.add(name)
    return sorted(names)
