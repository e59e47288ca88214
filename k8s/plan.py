"""The order in which rendered objects reach a cluster, and what the cluster can take.

Namespace first, then its NetworkPolicies (no pod of ours ever runs unprotected); what pods
mount or read (ConfigMaps, PVC) before the pods; the loader pod,
then the model upload, then Triton (its init container waits for the upload's marker);
the objects of optional CRDs (KEDA, Prometheus operator) last, and skipped with a warning
when the cluster does not serve their API group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

# API groups that come from add-ons: their objects are skipped when the CRDs are missing.
OPTIONAL_GROUPS = {
    "keda.sh": "KEDA (autoscaling)",
    "monitoring.coreos.com": "the Prometheus operator (monitoring)",
}
# Kinds in apply order; anything else goes after the Deployments, before the CRD kinds.
KIND_ORDER = [
    "Namespace", "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap",
    "PersistentVolumeClaim", "Service", "Pod", "Deployment", "StatefulSet",
    "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress",
]
LOADER_COMPONENT = "model-loader"


def group_of(obj: Obj) -> str:
    """The API group of an object ("" for the core group)."""
    api_version = obj["apiVersion"]
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def is_loader(obj: Obj) -> bool:
    labels = obj.get("metadata", {}).get("labels", {})
    return obj["kind"] == "Pod" and labels.get("app.kubernetes.io/component") == LOADER_COMPONENT


def rank(obj: Obj) -> tuple[int, int, str]:
    optional = group_of(obj) in OPTIONAL_GROUPS
    kind = obj["kind"]
    position = KIND_ORDER.index(kind) if kind in KIND_ORDER else KIND_ORDER.index("Deployment") + 1
    # Within Deployments, Envoy (no state) before Triton does not matter; keep names stable.
    return (1 if optional else 0, position, obj["metadata"]["name"])


def label(obj: Obj) -> str:
    namespace = obj["metadata"].get("namespace")
    where = f" -n {namespace}" if namespace else ""
    return f"{obj['kind']}/{obj['metadata']['name']}{where} ({obj['apiVersion']})"


@dataclass
class Step:
    action: str  # "apply", "upload", "delete-loader", "wait"
    description: str
    objects: list[Obj] = field(default_factory=list)


@dataclass
class Plan:
    steps: list[Step]
    skipped: list[Obj]
    warnings: list[str]

    @property
    def objects(self) -> list[Obj]:
        return [o for step in self.steps if step.action == "apply" for o in step.objects]

    def describe(self) -> str:
        lines = []
        for number, step in enumerate(self.steps, 1):
            lines.append(f"{number:2d}. {step.description}")
            lines.extend(f"      {label(o)}" for o in step.objects)
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)


def make_plan(objects: list[Obj], served_groups: set[str] | None = None,
              repository: Path | None = None) -> Plan:
    """Order `objects` into steps. `served_groups`: the cluster's API groups (None: no
    cluster, as in --dry-run, where every object is planned)."""
    warnings: list[str] = []
    skipped: list[Obj] = []
    kept: list[Obj] = []
    for obj in objects:
        group = group_of(obj)
        if served_groups is not None and group in OPTIONAL_GROUPS and group not in served_groups:
            skipped.append(obj)
        else:
            kept.append(obj)
    for group, what in OPTIONAL_GROUPS.items():
        missing = [o for o in skipped if group_of(o) == group]
        if missing:
            names = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in missing)
            warnings.append(f"the cluster has no {group} CRDs: {what} is not installed, so "
                            f"{names} {'is' if len(missing) == 1 else 'are'} skipped")
    kept.sort(key=rank)

    before_pods = [o for o in kept if rank(o)[:2] < (0, KIND_ORDER.index("Pod"))]
    loaders = [o for o in kept if is_loader(o)]
    rest = [o for o in kept if o not in before_pods and o not in loaders]
    workloads = [o for o in rest if group_of(o) not in OPTIONAL_GROUPS]
    optional = [o for o in rest if group_of(o) in OPTIONAL_GROUPS]

    steps = [Step("apply", "apply the namespace, network policies, configuration, storage "
                           "and services",
                  before_pods)]
    if loaders:
        source = repository if repository is not None else "model_repository/"
        steps.append(Step("apply", "start the model-loader pod", loaders))
        steps.append(Step("upload", f"upload {source} into the model-repository volume "
                                    "(tar over exec), then write the .offload-ready marker"))
        steps.append(Step("delete-loader", "delete the model-loader pod"))
    steps.append(Step("apply", "apply the workloads (Triton, Envoy) and their exposure",
                      workloads))
    if optional:
        steps.append(Step("apply", "apply the add-on objects (KEDA, Prometheus operator)",
                          optional))
    deployments = [o for o in workloads if o["kind"] == "Deployment"]
    steps.append(Step("wait", "wait for the rollout of "
                      + ", ".join(o["metadata"]["name"] for o in deployments)))
    return Plan([s for s in steps if s.objects or s.action != "apply"], skipped, warnings)
