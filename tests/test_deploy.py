"""`offload deploy` without a cluster: the planner's order, CRD-less clusters, the
namespace move, the dry run through the real CLI, the upload command, clear errors."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from offload_deploy import DeployError, make_plan, render
from offload_deploy.cli import _wants_gpus
from offload_deploy.cluster import READY_MARKER, tar_repository, upload_command
from offload_deploy.plan import OPTIONAL_GROUPS, group_of

ROOT = Path(__file__).resolve().parent.parent
ALL_GROUPS = {"", "apps", "policy", "networking.k8s.io", "autoscaling", *OPTIONAL_GROUPS}


@pytest.fixture(scope="module")
def gpu_objects() -> list[dict]:
    return render("gpu")


def positions(plan) -> dict[str, int]:
    """'Kind/name' -> position in the order of application ('upload' for the upload)."""
    order = []
    for step in plan.steps:
        if step.action == "upload":
            order.append("upload")
        order.extend(f"{o['kind']}/{o['metadata']['name']}" for o in step.objects)
    return {name: i for i, name in enumerate(order)}


def test_plan_order(gpu_objects: list[dict]) -> None:
    plan = make_plan(gpu_objects, ALL_GROUPS)
    at = positions(plan)
    assert at["Namespace/offload"] == 0
    config_maps = [k for k in at if k.startswith("ConfigMap/")]
    assert len(config_maps) == 3
    for before in [*config_maps, "PersistentVolumeClaim/model-repository",
                   "Service/triton-headless"]:
        assert at[before] < at["Pod/model-loader"], before
    assert at["Pod/model-loader"] < at["upload"] < at["Deployment/triton"]
    assert at["Deployment/triton"] < at["PodDisruptionBudget/triton"]
    crd_backed = [k for k in at if k.split("/")[0] in
                  {"ScaledObject", "ServiceMonitor", "PodMonitor", "PrometheusRule"}]
    assert len(crd_backed) == 4
    assert min(at[k] for k in crd_backed) > max(
        at[k] for k in at if k not in crd_backed)
    assert [s.action for s in plan.steps][-1] == "wait"
    assert not plan.warnings
    assert not plan.skipped


def test_network_policies_come_before_any_pod(gpu_objects: list[dict]) -> None:
    """No pod of ours runs, even for a moment, before the policies that guard it."""
    at = positions(make_plan(gpu_objects, ALL_GROUPS))
    policies = [k for k in at if k.startswith("NetworkPolicy/")]
    assert "NetworkPolicy/default-deny-ingress" in policies
    assert len(policies) >= 5
    first_pod = min(at[k] for k in at if k.split("/")[0] in ("Pod", "Deployment"))
    assert max(at[k] for k in policies) < first_pod
    assert at["Namespace/offload"] < min(at[k] for k in policies)


@pytest.mark.parametrize("overlay", ["gpu", "cpu", "dev"])
def test_undeploy_deletes_every_kind_it_deploys(overlay: str) -> None:
    """`offload undeploy` deletes by label, kind by kind: every kind a render holds must be
    on its list, and the NetworkPolicies go after the pods they protect."""
    from types import SimpleNamespace

    from offload_deploy.cluster import Cluster

    objects = render(overlay)
    deleted_order: list[str] = []

    def resource(api_version: str, kind: str) -> SimpleNamespace:
        items = [SimpleNamespace(metadata=SimpleNamespace(name=o["metadata"]["name"]))
                 for o in objects if o["kind"] == kind and o["apiVersion"] == api_version]
        return SimpleNamespace(
            get=lambda namespace, label_selector: SimpleNamespace(items=items),  # noqa: ARG005
            delete=lambda name, namespace: deleted_order.append(  # noqa: ARG005
                f"{kind}/{name}"))

    cluster = object.__new__(Cluster)
    cluster.namespace = "offload"
    cluster.dynamic = SimpleNamespace(resources=SimpleNamespace(get=resource))
    deleted = cluster.delete_all(ALL_GROUPS, keep_namespace=True)
    expected = {f"{o['kind']}/{o['metadata']['name']}" for o in objects
                if o["kind"] != "Namespace"}
    assert set(deleted) == expected
    last_workload = max(i for i, k in enumerate(deleted_order)
                        if k.split("/")[0] in ("Pod", "Deployment"))
    assert min(i for i, k in enumerate(deleted_order)
               if k.startswith("NetworkPolicy/")) > last_workload


def test_plan_skips_addons_without_their_crds(gpu_objects: list[dict]) -> None:
    plan = make_plan(gpu_objects, {"", "apps", "policy", "networking.k8s.io"})
    skipped = {o["kind"] for o in plan.skipped}
    assert skipped == {"ScaledObject", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not any(group_of(o) in OPTIONAL_GROUPS for o in plan.objects)
    assert len(plan.warnings) == 2
    assert any("keda.sh" in w and "ScaledObject/triton" in w for w in plan.warnings)
    assert any("monitoring.coreos.com" in w and "PrometheusRule/offload" in w
               for w in plan.warnings)
    assert "Deployment" in {o["kind"] for o in plan.objects}
    only_keda = make_plan(gpu_objects, {"", "apps", "keda.sh"})
    assert {o["kind"] for o in only_keda.skipped} == \
        {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_plan_without_loader_has_no_upload(gpu_objects: list[dict]) -> None:
    without = [o for o in gpu_objects if o["kind"] not in ("Pod", "PersistentVolumeClaim")]
    assert "upload" not in [s.action for s in make_plan(without, ALL_GROUPS).steps]


def test_namespace_moves_everything_including_promql() -> None:
    objects = render("cpu", "physics")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} \
        == {"physics"}
    assert next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"] == "physics"
    text = yaml.safe_dump_all(objects)
    assert 'namespace="offload"' not in text
    assert 'namespace="physics"' in text


def test_gpu_check_only_for_gpu_overlay(gpu_objects: list[dict]) -> None:
    assert _wants_gpus(gpu_objects)
    assert not _wants_gpus(render("cpu"))


def test_require_gpu_nodes_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import kubernetes.client

    from offload_deploy.cluster import require_gpu_nodes

    def node(name: str, gpus: str | None) -> SimpleNamespace:
        allocatable = {"cpu": "16"} | ({"nvidia.com/gpu": gpus} if gpus else {})
        return SimpleNamespace(metadata=SimpleNamespace(name=name),
                               status=SimpleNamespace(allocatable=allocatable))

    nodes: list = [node("cpu-1", None), node("cpu-2", "0")]
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", lambda _api: SimpleNamespace(
        list_node=lambda: SimpleNamespace(items=nodes)))
    with pytest.raises(DeployError, match=r"no node .* advertises nvidia.com/gpu.*--overlay cpu"):
        require_gpu_nodes(None)
    nodes.append(node("gpu-1", "4"))
    require_gpu_nodes(None)  # no error once one node has GPUs


def test_upload_command_replaces_the_repository(tmp_path: Path) -> None:
    source = tmp_path / "repo"
    (source / "m" / "1").mkdir(parents=True)
    (source / "m" / "config.pbtxt").write_text('name: "m"\n')
    (source / "m" / "1" / "model.onnx").write_bytes(b"\x00onnx" * 1000)
    (source / "m" / "__pycache__").mkdir()
    (source / "m" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    payload = tar_repository(source)
    with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
        names = archive.getnames()
    assert "m/config.pbtxt" in names
    assert not any("__pycache__" in n for n in names)

    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "stale_model").mkdir()
    (volume / READY_MARKER).touch()
    # Extra bytes after the archive: `head -c` must stop at the archive's size.
    result = subprocess.run(["sh", "-c", upload_command(len(payload), str(volume))],
                            input=payload + b"trailing", capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert (volume / "m" / "1" / "model.onnx").read_bytes() == b"\x00onnx" * 1000
    assert not (volume / "stale_model").exists()
    assert (volume / READY_MARKER).exists()


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "offload.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def test_dry_run_through_the_cli() -> None:
    env = {**os.environ, "KUBECONFIG": "/nonexistent/kubeconfig"}  # no cluster is touched
    result = cli("deploy", "--dry-run", "--overlay", "cpu", "--namespace", "physics", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "upload model_repository" in out
    assert "wait for the rollout" in out
    plan_lines = [line for line in out.splitlines() if line.startswith("#   ")]
    first = next(i for i, line in enumerate(plan_lines) if "Namespace/physics" in line)
    triton = next(i for i, line in enumerate(plan_lines) if "Deployment/triton" in line)
    upload = next(i for i, line in enumerate(plan_lines) if "upload" in line)
    assert first < upload < triton
    objects = [o for o in yaml.safe_load_all(out) if o]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == \
        {"physics"}
    triton_obj = next(o for o in objects
                      if o["kind"] == "Deployment" and o["metadata"]["name"] == "triton")
    digest = triton_obj["spec"]["template"]["metadata"]["annotations"][
        "offload.dev/model-repository-digest"]
    assert len(digest) == 16
    assert "nvidia.com/gpu" not in out


def test_make_deploy_dry_run() -> None:
    """`make deploy DRY_RUN=1` runs `offload deploy --dry-run` (the recipe is taken with
    make -n, so that no install step runs here, then executed)."""
    recipe = subprocess.run(["make", "-n", "deploy", "DRY_RUN=1", "OVERLAY=dev", "NAMESPACE=t1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    line = next(x for x in recipe.stdout.splitlines() if "offload deploy" in x)
    args = line.split("offload deploy", 1)[1].split()
    assert args[:4] == ["--overlay", "dev", "--namespace", "t1"]
    assert "--dry-run" in args
    result = cli("deploy", *args)
    assert result.returncode == 0, result.stderr
    assert "kind: ScaledObject" in result.stdout
    assert "# plan:" in result.stdout
    assert "namespace: t1" in result.stdout


@pytest.mark.parametrize("kubeconfig", ["/nonexistent/kubeconfig", "empty"])
def test_no_cluster_is_a_clear_error(tmp_path: Path, kubeconfig: str) -> None:
    if kubeconfig == "empty":
        (tmp_path / "empty").touch()
        kubeconfig = str(tmp_path / "empty")
    env = {**os.environ, "KUBECONFIG": kubeconfig, "HOME": str(tmp_path)}
    for args in (["deploy", "--overlay", "cpu"], ["deploy", "status"], ["undeploy"]):
        result = cli(*args, env=env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "no Kubernetes cluster is configured" in result.stderr
        assert "Traceback" not in result.stderr


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the CLI connects
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "test"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    result = cli("deploy", "status", env={**os.environ, "KUBECONFIG": str(config)})
    assert result.returncode == 1
    assert f"cannot reach the Kubernetes API server at https://127.0.0.1:{port}" in \
        result.stderr
    assert "Traceback" not in result.stderr
    assert "Retrying" not in result.stderr
