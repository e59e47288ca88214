"""Render an overlay with `kubectl kustomize` and put it in the chosen namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from offload_deploy.errors import DeployError

OVERLAYS = ("gpu", "cpu", "dev")
BASE_NAMESPACE = "offload"  # the namespace written in k8s/base; --namespace replaces it
PART_OF = ("app.kubernetes.io/part-of", "offload")

Obj = dict[str, Any]


def kubectl() -> str:
    """Path of kubectl (it bundles kustomize); a clear error when it is missing."""
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        raise DeployError(
            "kubectl not found on PATH; it renders the manifests (kubectl kustomize) and "
            "must be v1.27 or newer (kustomize v5). Install it from "
            "https://kubernetes.io/docs/tasks/tools/ or set KUBECTL=/path/to/kubectl")
    return found


def manifests_dir() -> Path:
    """Where the manifests are: the offload_deploy package itself (k8s/ in a checkout, its
    installed copy otherwise; package data). A real folder, since kubectl kustomize reads it."""
    root = files("offload_deploy")
    if not isinstance(root, Path):
        raise DeployError(f"offload_deploy is installed as {root}, not as a folder: "
                          "kubectl kustomize cannot read its manifests there")
    return root


def overlay_dir(overlay: str | os.PathLike[str], k8s_dir: Path | None = None) -> Path:
    """An overlay name (gpu, cpu, dev) or a path to any kustomization directory."""
    path = Path(overlay)
    if not path.is_dir():
        path = (k8s_dir or manifests_dir()) / "overlays" / str(overlay)
    if not (path / "kustomization.yaml").is_file():
        raise DeployError(f"no kustomization at {path}; overlays: {', '.join(OVERLAYS)}")
    return path


def render_yaml(overlay: str | os.PathLike[str], k8s_dir: Path | None = None) -> str:
    path = overlay_dir(overlay, k8s_dir)
    result = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise DeployError(f"kubectl kustomize {path} failed:\n{result.stderr.strip()}")
    return result.stdout


def render(overlay: str | os.PathLike[str] = "gpu", namespace: str | None = None,
           k8s_dir: Path | None = None) -> list[Obj]:
    """The overlay's objects, moved into `namespace` when one is given."""
    objects = [o for o in yaml.safe_load_all(render_yaml(overlay, k8s_dir)) if o]
    if namespace and namespace != BASE_NAMESPACE:
        objects = [set_namespace(o, namespace) for o in objects]
    return objects


def set_namespace(obj: Obj, namespace: str) -> Obj:
    """Move one object to `namespace`, PromQL label matchers included."""
    if obj["kind"] == "Namespace":
        obj["metadata"]["name"] = namespace
    elif "namespace" in obj.get("metadata", {}):
        obj["metadata"]["namespace"] = namespace
    return _replace_strings(obj, f'namespace="{BASE_NAMESPACE}"', f'namespace="{namespace}"',
                            selector_value=namespace)


def _replace_strings(value: Any, old: str, new: str, selector_value: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace_strings(v, old, new, selector_value) for v in value]
    if isinstance(value, dict):
        out = {k: _replace_strings(v, old, new, selector_value) for k, v in value.items()}
        # The HPA's external metric selector: matchLabels {namespace: offload}.
        labels = out.get("matchLabels")
        if isinstance(labels, dict) and labels.get("namespace") == BASE_NAMESPACE:
            out["matchLabels"] = {**labels, "namespace": selector_value}
        return out
    return value


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts, envoy.yaml, dashboards) as readable `|` blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in
                                               value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def to_yaml(objects: list[Obj]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=100)
