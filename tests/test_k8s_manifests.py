"""The Kubernetes manifests in k8s/: every overlay renders, every object validates against
the Kubernetes OpenAPI schema (kubernetes-validate, offline) or the vendored CRD schemas,
the site policies hold, Envoy is configured as a gRPC balancer, and the Triton preStop
drain does what it says (run with bash against a real HTTP metrics endpoint).

The security model (k8s/README.md) is checked on every rendered overlay and component:
who may connect to which port (the NetworkPolicies, evaluated here by their rules),
read-only root filesystems, images by digest, Triton without its HTTP front end, Envoy
refusing Triton's administrative RPCs (its route table walked as Envoy walks it) and the
Ingress body limit. Each check returns what it finds wrong, and each is shown to find a
deliberately broken copy of the rendered manifests."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import posixpath
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers import free_port
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.32.0"  # validated against; the kubectl on the machines is 1.32
OVERLAYS = ["gpu", "cpu", "dev"]
COMPONENTS = ["jwt-auth", "hpa", "s3-repository", "loadbalancer"]
# Every overlay, every component on top of the default overlay, and the locust workers
# when that folder exists.
TARGETS = OVERLAYS + [f"gpu+{c}" for c in COMPONENTS] + (
    ["locust"] if (K8S / "locust" / "kustomization.yaml").is_file() else [])
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl (v1.27+, it bundles kustomize v5) is not on PATH: the k8s tests "
                    "render the overlays with `kubectl kustomize`. Install it "
                    "(https://kubernetes.io/docs/tasks/tools/), see k8s/README.md")
    return path


@cache
def render_text(target: str) -> str:
    if target == "locust":
        directory = K8S / "locust"
    elif "+" in target:
        overlay, component = target.split("+")
        # A throw-away kustomization beside the overlays (kustomize wants relative paths).
        directory = K8S / "overlays" / f".test-{overlay}-{component}"
        directory.mkdir(exist_ok=True)
        (directory / "kustomization.yaml").write_text(
            f"resources: [../{overlay}]\ncomponents: [../../components/{component}]\n")
    else:
        directory = K8S / "overlays" / target
    try:
        result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                                text=True, timeout=60, check=False)
    finally:
        if "+" in target:
            shutil.rmtree(directory)
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return result.stdout


def render(target: str) -> list[dict]:
    return [o for o in yaml.safe_load_all(render_text(target)) if o]


def render_kustomization(text: str, name: str) -> list[dict]:
    """Render a kustomization.yaml written beside the overlays (as a site overlay would be)."""
    directory = K8S / "overlays" / f".test-{name}"
    directory.mkdir(exist_ok=True)
    try:
        (directory / "kustomization.yaml").write_text(text)
        result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                                text=True, timeout=60, check=False)
    finally:
        shutil.rmtree(directory)
    assert result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}"
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects
               if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "Pod":
            specs.append((obj["metadata"]["name"], obj["spec"]))
    return specs


def all_containers(objects: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{name}/{c['name']}", c) for name, spec in pod_specs(objects)
            for c in spec.get("initContainers", []) + spec["containers"]]


def triton_container(objects: list[dict]) -> dict:
    spec = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "triton")


def envoy_config(objects: list[dict]) -> dict:
    config_maps = [o for o in objects if o["kind"] == "ConfigMap"
                   and o["metadata"]["name"].startswith("envoy-config")]
    assert len(config_maps) == 1
    return yaml.safe_load(config_maps[0]["data"]["envoy.yaml"])


# ---------------------------------------------------------------------- schema validation
def strict(schema: object) -> object:
    """The CRD schema with unknown fields refused, as the API server's strict field
    validation (kubectl's default) does; `metadata` and preserve-unknown parts stay open."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k == "metadata" else strict(v)) for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: (v if k == "metadata" else strict(v))
                             for k, v in schema["properties"].items()}
        if ("additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    return out


@cache
def crd_validator(schema_file: str) -> jsonschema.protocols.Validator:
    # OpenAPI v3 schemas (a JSON-schema draft-4/7 subset). Not check_schema(): Go-style
    # patterns like ^(?i)(abort|warn)?$ are valid for the API server, not for Python's re.
    return jsonschema.Draft7Validator(
        strict(json.loads((K8S / "schemas" / schema_file).read_text())))


def validate(obj: dict) -> None:
    """Raise if `obj` is not valid for its kind (strict: unknown fields are errors)."""
    schema_file = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if schema_file is not None:
        crd_validator(schema_file).validate(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates(target: str) -> None:
    objects = render(target)
    assert len(objects) >= 3
    failures = []
    for obj in objects:
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {error}")
    assert not failures, "\n".join(failures)


def test_crd_kinds_all_have_vendored_schemas() -> None:
    seen = {(o["apiVersion"], o["kind"]) for o in render("gpu")}
    for key in [k for k in seen if "." in k[0].split("/")[0]
                and not k[0].startswith(("apps/", "policy/", "networking.k8s.io/",
                                         "autoscaling/"))]:
        assert key in CRD_SCHEMAS, f"{key} has no vendored schema in k8s/schemas"
    assert set(CRD_SCHEMAS) <= seen


def test_validator_rejects_broken_objects() -> None:
    objects = render("gpu")
    deployment = json.loads(json.dumps(find(objects, "Deployment", "triton")))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    typo = json.loads(json.dumps(find(objects, "Deployment", "triton")))
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)
    scaled = json.loads(json.dumps(find(objects, "ScaledObject", "triton")))
    del scaled["spec"]["triggers"]
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    monitor = json.loads(json.dumps(find(objects, "ServiceMonitor", "triton")))
    monitor["spec"]["endpoints"][0]["interval"] = "every minute"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    rule = json.loads(json.dumps(find(objects, "PrometheusRule", "offload")))
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up == 0"  # misspelt field
    with pytest.raises(jsonschema.ValidationError):
        validate(rule)


# ---------------------------------------------------------------------- policies
def gpu_count(container: dict, where: str) -> str | None:
    return container.get("resources", {}).get(where, {}).get("nvidia.com/gpu")


def test_gpu_overlay_requests_gpus_on_gpu_nodes() -> None:
    objects = render("gpu")
    triton = triton_container(objects)
    assert gpu_count(triton, "limits") == "1"
    spec = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]


def test_gpu_overlay_serves_the_gpu_config_variants() -> None:
    """Triton on GPUs loads model_repository/<model>/configs/gpu.pbtxt (issue 15); the CPU
    overlays keep config.pbtxt. Every model has the variant, so none silently falls back."""
    for target in ("gpu", *(f"gpu+{c}" for c in COMPONENTS)):
        args = triton_container(render(target))["args"]
        assert args.count("--model-config-name=gpu") == 1, (target, args)
    for overlay in ("cpu", "dev"):
        assert not any(a.startswith("--model-config-name")
                       for a in triton_container(render(overlay))["args"]), overlay
    models = [p for p in (ROOT / "model_repository").iterdir() if (p / "config.pbtxt").is_file()]
    assert models
    for model in models:
        assert (model / "configs" / "gpu.pbtxt").is_file(), model.name


@pytest.mark.parametrize("overlay", ["cpu", "dev"])
def test_cpu_overlays_request_no_gpu(overlay: str) -> None:
    objects = render(overlay)
    for name, container in all_containers(objects):
        assert gpu_count(container, "limits") is None, name
        assert gpu_count(container, "requests") is None, name
    spec = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_and_flags(overlay: str) -> None:
    triton = triton_container(render(overlay))
    grpc_port = next(p["containerPort"] for p in triton["ports"] if p["name"] == "grpc")
    # Kubelet's gRPC probes (grpc.health.v1.Health/Check, SERVING = ready) on the gRPC port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert triton[probe]["grpc"]["port"] == grpc_port, probe
    startup, liveness = triton["startupProbe"], triton["livenessProbe"]
    # Loading may take 10 minutes; liveness tolerates 2 minutes of silence, more than a
    # drain's not-ready window (--exit-timeout-secs).
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    _, _, exit_timeout = grace_budget(render(overlay))
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 4 * exit_timeout
    args = triton["args"]
    for flag in ("--exit-on-error=true", "--allow-metrics=true", "--model-control-mode=none",
                 "--metrics-port=8002"):
        assert flag in args
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver")
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    spec = find(render(overlay), "Deployment", "triton")["spec"]["template"]["spec"]
    shm = next(v for v in spec["volumes"] if v["name"] == mounts["/dev/shm"])
    assert shm["emptyDir"]["medium"] == "Memory"


def grace_budget(objects: list[dict]) -> tuple[int, int, int]:
    """(terminationGracePeriodSeconds, preStop bound, --exit-timeout-secs) of Triton."""
    spec = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    triton = triton_container(objects)
    env = {e["name"]: e.get("value") for e in triton["env"]}
    exit_timeout = next(int(a.split("=", 1)[1]) for a in triton["args"]
                        if a.startswith("--exit-timeout-secs="))
    return spec["terminationGracePeriodSeconds"], int(env["DRAIN_MAX_SECONDS"]), exit_timeout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_drain_and_exit_timeout(overlay: str) -> None:
    grace, drain_max, exit_timeout = grace_budget(render(overlay))
    assert grace > drain_max + exit_timeout, (grace, drain_max, exit_timeout)


# Images that may stay pinned by tag, and why (k8s/README.md, "Images"). Nothing else.
TAG_ONLY_IMAGES = {
    # No digest of this exact tag could be found in public material; another Triton version
    # would break the promise that the pods run the same server as `offload serve`.
    "nvcr.io/nvidia/tritonserver:24.10-py3",
}
DIGEST = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")


def image_violations(objects: list[dict]) -> list[str]:
    """Containers whose image is not `repository@sha256:<64 hex>` (tag-only exceptions aside)."""
    return [f"{name}: image {c['image']} is not pinned by digest"
            for name, c in all_containers(objects)
            if not DIGEST.match(c["image"]) and c["image"] not in TAG_ONLY_IMAGES]


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned_by_digest(target: str) -> None:
    assert image_violations(render(target)) == []


def test_image_check_finds_tags() -> None:
    objects = render("gpu")
    envoy = next(c for name, c in all_containers(objects) if name == "envoy/envoy")
    envoy["image"] = "envoyproxy/envoy:v1.31.10"
    loader = next(c for name, c in all_containers(objects) if name.startswith("model-loader"))
    loader["image"] = "busybox@sha256:1234"  # not a digest
    assert sorted(image_violations(objects)) == [
        "envoy/envoy: image envoyproxy/envoy:v1.31.10 is not pinned by digest",
        "model-loader/loader: image busybox@sha256:1234 is not pinned by digest"]
    # The exceptions are exact: another tag of Triton is refused.
    triton_container(objects)["image"] = "nvcr.io/nvidia/tritonserver:24.11-py3"
    assert len(image_violations(objects)) == 3
    # The exceptions are all still used somewhere (a stale one would hide nothing, but lies).
    used = {c["image"] for t in TARGETS for _, c in all_containers(render(t))}
    assert used >= TAG_ONLY_IMAGES


# Containers that may keep a writable root filesystem, and why. None today.
WRITABLE_ROOT = {}


def read_only_violations(objects: list[dict]) -> list[str]:
    return [f"{name}: root filesystem is writable" for name, c in all_containers(objects)
            if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True
            and name not in WRITABLE_ROOT]


@pytest.mark.parametrize("target", TARGETS)
def test_root_filesystems_are_read_only(target: str) -> None:
    objects = render(target)
    assert read_only_violations(objects) == []
    # Where they must write, they write to a volume: /tmp for the ones with an image that
    # needs one, /dev/shm in memory for Triton.
    for name, spec in pod_specs(objects):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            if container["name"] in ("triton", "envoy", "locust"):
                assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}/{container['name']}"
            if container["name"] == "triton":
                assert volumes[mounts["/tmp"]]["emptyDir"].get("sizeLimit"), name
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["HOME"] == "/tmp"


def test_read_only_check_finds_a_writable_root() -> None:
    objects = render("gpu")
    del triton_container(objects)["securityContext"]["readOnlyRootFilesystem"]
    next(c for name, c in all_containers(objects)
         if name == "triton/wait-for-models")["securityContext"]["readOnlyRootFilesystem"] = False
    assert sorted(read_only_violations(objects)) == [
        "triton/triton: root filesystem is writable",
        "triton/wait-for-models: root filesystem is writable"]


@pytest.mark.parametrize("target", TARGETS)
def test_resources_on_every_container(target: str) -> None:
    for name, container in all_containers(render(target)):
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
        assert "memory" in resources.get("limits", {}), name


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_as_non_root(target: str) -> None:
    for name, spec in pod_specs(render(target)):
        pod = spec.get("securityContext", {})
        for container in spec.get("initContainers", []) + spec["containers"]:
            own = container.get("securityContext", {})
            assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            assert own.get("runAsUser", pod.get("runAsUser", 1)) != 0, name
            assert own.get("allowPrivilegeEscalation") is False, name
            assert own.get("capabilities", {}).get("drop") == ["ALL"], name
            seccomp = own.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", name


CREDENTIAL_NAME = re.compile(r"(password|passwd|secret|token|api_?key|access_?key|credential)",
                             re.IGNORECASE)


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_values_in_manifests(target: str) -> None:
    objects = render(target)
    for obj in objects:
        if obj["kind"] == "Secret":
            assert not obj.get("data"), f"Secret/{obj['metadata']['name']} carries values"
            assert not obj.get("stringData"), f"Secret/{obj['metadata']['name']} carries values"
    for name, container in all_containers(objects):
        for env in container.get("env", []):
            if CREDENTIAL_NAME.search(env["name"]):
                assert "value" not in env, f"{name}: {env['name']} must come from a Secret"
                assert "secretKeyRef" in env.get("valueFrom", {}), \
                    f"{name}: {env['name']} must come from a Secret"
    text = render_text(target)
    assert "BEGIN PRIVATE KEY" not in text
    assert "BEGIN RSA PRIVATE KEY" not in text


def test_s3_component_takes_credentials_from_a_secret() -> None:
    objects = render("gpu+s3-repository")
    env = {e["name"]: e for e in triton_container(objects)["env"]}
    assert env["MODEL_REPOSITORY"]["value"].startswith("s3://")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "offload-s3-credentials"
    kinds = {o["kind"] for o in objects}
    assert "PersistentVolumeClaim" not in kinds
    assert "Pod" not in kinds
    spec = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    assert "initContainers" not in spec or not spec["initContainers"]


def test_services_and_exposure() -> None:
    objects = render("gpu")
    headless = find(objects, "Service", "triton-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in headless["ports"]} == {"grpc": 8001, "metrics": 8002}
    # The client-facing Service publishes Envoy's gRPC listener only (a LoadBalancer
    # publishes every port of its Service).
    assert [p["name"] for p in find(objects, "Service", "offload")["spec"]["ports"]] == \
        ["grpc"]
    ingress = find(objects, "Ingress", "offload")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] \
        == "GRPC"
    assert ingress["spec"]["tls"][0]["secretName"] == "offload-tls"
    assert find(render("gpu+loadbalancer"), "Service", "offload")["spec"]["type"] \
        == "LoadBalancer"
    assert find(objects, "PodDisruptionBudget", "triton")["spec"]["maxUnavailable"] == 1


def test_autoscaling_keda_and_hpa() -> None:
    scaled = find(render("gpu"), "ScaledObject", "triton")["spec"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "Value"
    query = " ".join(trigger["metadata"]["query"].split())
    assert "rate(nv_inference_queue_duration_us" in query
    assert "rate(nv_inference_exec_count" in query
    assert "/" in query
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    assert scaled["cooldownPeriod"] > 0
    with_hpa = render("gpu+hpa")
    assert not [o for o in with_hpa if o["kind"] == "ScaledObject"]
    hpa = find(with_hpa, "HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    adapter = yaml.safe_load((K8S / "components/hpa/prometheus-adapter-values.yaml").read_text())
    assert adapter["rules"]["external"][0]["name"]["as"] == \
        hpa["spec"]["metrics"][0]["external"]["metric"]["name"]


def test_monitoring_objects_and_dashboard() -> None:
    objects = render("gpu")
    rule = find(objects, "PrometheusRule", "offload")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"OffloadTritonDown", "OffloadQueueTimeHigh", "OffloadInferenceFailureRate"} <= \
        set(alerts)
    assert "nv_inference_request_failure" in alerts["OffloadInferenceFailureRate"]
    assert find(objects, "ServiceMonitor", "triton")["spec"]["endpoints"][0]["port"] == "metrics"
    assert find(objects, "PodMonitor", "envoy")["spec"]["podMetricsEndpoints"][0]["path"] == \
        "/stats/prometheus"
    dashboard_map = next(o for o in objects if o["kind"] == "ConfigMap"
                         and o["metadata"]["name"].startswith("offload-grafana-dashboard"))
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(next(iter(dashboard_map["data"].values())))
    expressions = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ("nv_inference_count", "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us", "nv_gpu_utilization",
                   "nv_inference_request_failure", 'service="triton-headless"'):
        assert metric in expressions, metric


# ---------------------------------------------------------------------- HTTP off
def http_violations(objects: list[dict]) -> list[str]:
    """Anything that serves or uses Triton's HTTP/JSON front end."""
    found = []
    for obj in objects:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "triton":
            triton = next(c for c in obj["spec"]["template"]["spec"]["containers"]
                          if c["name"] == "triton")
            args = triton["args"]
            if "--allow-http=false" not in args:
                found.append("triton: --allow-http=false missing")
            found += [f"triton: {a}" for a in args
                      if a.startswith(("--http-", "--allow-http=t", "--allow-http=1"))]
            found += [f"triton: {probe} uses HTTP" for probe in
                      ("startupProbe", "readinessProbe", "livenessProbe")
                      if "httpGet" in triton.get(probe, {})]
            found += [f"triton: container port {p['containerPort']} ({p.get('name')})"
                      for p in triton["ports"] if p["containerPort"] == 8000
                      or p.get("name") == "http"]
        elif obj["kind"] == "Service":
            found += [f"Service/{obj['metadata']['name']}: port {p['port']} -> {p['targetPort']}"
                      for p in obj["spec"]["ports"] if p.get("targetPort") in ("http", 8000)]
        elif obj["kind"] == "ServiceMonitor":
            found += [f"ServiceMonitor/{obj['metadata']['name']}: scrapes port http"
                      for e in obj["spec"]["endpoints"] if e.get("port") == "http"]
    return found


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "locust"])
def test_triton_http_front_end_is_off(target: str) -> None:
    objects = render(target)
    assert http_violations(objects) == []
    # Envoy sends to the gRPC port, and the drain script reads the metrics port, which
    # --allow-http=false leaves on (checked with tritonserver 2.51: k8s/README.md).
    clusters = {c["name"]: c for c in envoy_config(objects)["static_resources"]["clusters"]}
    address = clusters["triton_grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"]
    assert address["port_value"] == 8001
    triton = triton_container(objects)
    assert {"name": "metrics", "containerPort": 8002} in triton["ports"]


def test_http_check_finds_http() -> None:
    objects = render("gpu")
    triton = triton_container(objects)
    triton["args"] = [a.replace("--allow-http=false", "--allow-http=true")
                      for a in triton["args"]]
    triton["readinessProbe"] = {"httpGet": {"path": "/v2/health/ready", "port": 8000}}
    triton["ports"].append({"name": "http", "containerPort": 8000})
    find(objects, "Service", "triton-headless")["spec"]["ports"].append(
        {"name": "http", "port": 8000, "targetPort": "http"})
    assert sorted(http_violations(objects)) == [
        "Service/triton-headless: port 8000 -> http", "triton: --allow-http=false missing",
        "triton: --allow-http=true", "triton: container port 8000 (http)",
        "triton: readinessProbe uses HTTP"]


# ---------------------------------------------------------------------- selectors
def selector_violations(objects: list[dict]) -> list[str]:
    """Deployments whose selector misses their own pods (the API server refuses them), and
    Services that select no pod."""
    found = []
    pods = [labels_of(obj) for obj in objects if obj["kind"] in ("Deployment", "Pod")]
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Deployment" and not selects(obj["spec"]["selector"],
                                                       labels_of(obj)):
            found.append(f"{name}: selector does not match its pod template")
        elif (obj["kind"] == "Service" and obj["spec"].get("selector") and not any(
                selects({"matchLabels": obj["spec"]["selector"]}, p) for p in pods)):
            found.append(f"{name}: selects no pod")
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_match_their_pods(target: str) -> None:
    assert selector_violations(render(target)) == []


def test_selector_check_finds_a_mismatch() -> None:
    # What k8s/locust once rendered: a common label overwrote the pods' component.
    objects = render("locust")
    for obj in objects:
        if obj["kind"] == "Deployment":
            obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = \
                "load-test"
    assert selector_violations(objects) == [
        "Service/locust-master: selects no pod",
        "Deployment/locust-master: selector does not match its pod template",
        "Deployment/locust-worker: selector does not match its pod template"]


# ---------------------------------------------------------------------- NetworkPolicies
NAMESPACE = "offload"


def labels_of(obj: dict) -> dict:
    """The labels of a Pod, or of the pods of a Deployment."""
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (namespace, its labels, its named ports), or an
    address outside the cluster (namespace None)."""

    name: str
    namespace: str | None
    labels: dict = field(default_factory=dict, hash=False)
    namespace_labels: dict = field(default_factory=dict, hash=False)
    ports: dict = field(default_factory=dict, hash=False)  # name -> (number, protocol)
    address: str = "10.0.0.1"


def pod_peers(objects: list[dict]) -> list[Peer]:
    """The pods of the rendered objects (one per Deployment), in namespace offload."""
    peers = []
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Pod"):
            continue
        spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
        ports = {p["name"]: (p["containerPort"], p.get("protocol", "TCP"))
                 for c in spec["containers"] for p in c.get("ports", []) if "name" in p}
        labels = labels_of(obj)
        name = labels.get("app.kubernetes.io/name", obj["metadata"]["name"])
        if name == "locust":
            name = f"locust-{labels['app.kubernetes.io/component']}"
        peers.append(Peer(name, NAMESPACE, labels,
                          {"kubernetes.io/metadata.name": NAMESPACE}, ports))
    return peers


def namespace_peer(name: str, namespace: str, **namespace_labels: str) -> Peer:
    return Peer(name, namespace, {"app": name},
                {"kubernetes.io/metadata.name": namespace, **namespace_labels})


# Who else tries to connect, besides the pods of the rendered objects and of k8s/locust.
OTHER_PEERS = [
    Peer("debug-pod", NAMESPACE, {"app": "debug"}, {"kubernetes.io/metadata.name": NAMESPACE}),
    namespace_peer("prometheus", "monitoring"),
    namespace_peer("ingress-controller", "ingress-nginx"),
    namespace_peer("hlt-job", "hlt", **{"offload-client": "true"}),
    namespace_peer("other-namespace", "default"),
    namespace_peer("kube-dns", "kube-system"),
    Peer("internet", None, address="203.0.113.7"),
]
PROBE_PORTS = [(53, "UDP"), (53, "TCP"), (443, "TCP"), (5557, "TCP"), (8000, "TCP"),
               (8001, "TCP"), (8002, "TCP"), (8080, "TCP"), (8089, "TCP"), (9901, "TCP"),
               (9902, "TCP")]


def policy_types(policy: dict) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def port_allowed(rule: dict, port: int, protocol: str, target: Peer) -> bool:
    """Whether a rule's `ports` admit port/protocol of `target` (named ports resolve on it)."""
    if "ports" not in rule or not rule["ports"]:
        return True
    for entry in rule["ports"]:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            if target.ports.get(wanted) == (port, protocol):
                return True
        elif wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def peer_allowed(rule_peers: list[dict] | None, policy_namespace: str, peer: Peer) -> bool:
    if rule_peers is None or rule_peers == []:
        return rule_peers is None  # no `from`/`to`: everyone; an empty list: no one
    for entry in rule_peers:
        if "ipBlock" in entry:
            block = entry["ipBlock"]
            address = ipaddress.ip_address(peer.address)
            if address in ipaddress.ip_network(block["cidr"]) and not any(
                    address in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
            continue
        if peer.namespace is None:
            continue  # selectors only ever match pods
        if "namespaceSelector" in entry:
            namespace_ok = selects(entry["namespaceSelector"], peer.namespace_labels)
        else:
            namespace_ok = peer.namespace == policy_namespace
        if namespace_ok and selects(entry.get("podSelector", {}), peer.labels):
            return True
    return False


def direction_allowed(policies: list[dict], pod: Peer, other: Peer, port: int,
                      protocol: str, direction: str) -> bool:
    """Whether `pod`'s policies let a connection in from (Ingress) or out to (Egress)
    `other` on port/protocol (of the destination)."""
    if pod.namespace != NAMESPACE:
        return True  # another namespace's pods are under their own policies: none here
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    target = pod if direction == "Ingress" else other
    applying = [p for p in policies if p["metadata"].get("namespace", NAMESPACE) == NAMESPACE
                and direction in policy_types(p) and selects(p["spec"]["podSelector"],
                                                             pod.labels)]
    if not applying:
        return True  # not isolated in that direction
    return any(port_allowed(rule, port, protocol, target)
               and peer_allowed(rule.get(peers_key), NAMESPACE, other)
               for policy in applying for rule in policy["spec"].get(key, []))


def connection_allowed(policies: list[dict], source: Peer, destination: Peer, port: int,
                       protocol: str) -> bool:
    return (direction_allowed(policies, source, destination, port, protocol, "Egress")
            and direction_allowed(policies, destination, source, port, protocol, "Ingress"))


def expected_connection(target: str, source: Peer, destination: Peer, port: int,
                        protocol: str) -> bool:
    """The security model of k8s/README.md, written out: who reaches which port."""
    components = set(target.split("+")[1:])
    # What may leave the source (pods of ours only; other namespaces decide for theirs).
    egress = {
        "triton": "s3-repository" in components and port in (53, 443),
        "envoy": (destination.name == "triton" and (port, protocol) == (8001, "TCP"))
        or port == 53 or ("jwt-auth" in components and (port, protocol) == (443, "TCP")),
        "model-loader": False,
    }.get(source.name, True)
    if destination.namespace != NAMESPACE:
        return egress
    # What may enter the destination, by (pod, port).
    anywhere = {p.name for p in OTHER_PEERS} | {"triton", "envoy", "model-loader",
                                                "locust-master", "locust-worker"}
    ingress = {
        ("triton", 8001): {"envoy"},
        ("triton", 8002): {"prometheus"},
        ("envoy", 8080): {"ingress-controller", "hlt-job", "locust-worker"}
        | (anywhere if "loadbalancer" in components else set()),
        ("envoy", 9902): {"prometheus"},
        ("locust-master", 5557): {"locust-worker"},
    }.get((destination.name, port), set())
    return egress and protocol == "TCP" and source.name in ingress


def network_violations(objects: list[dict], target: str) -> list[str]:
    """Every connection between the pods of `objects` (plus the load test's), the
    namespaces around them and the outside, on the ports that matter, whose fate under the
    rendered NetworkPolicies differs from the security model."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = pod_peers(objects) + pod_peers(render("locust"))
    found = []
    for source in pods + OTHER_PEERS:
        for destination in pods + OTHER_PEERS:
            if source is destination or (source.namespace != NAMESPACE
                                         and destination.namespace != NAMESPACE):
                continue
            for port, protocol in PROBE_PORTS:
                allowed = connection_allowed(policies, source, destination, port, protocol)
                if allowed != expected_connection(target, source, destination, port,
                                                  protocol):
                    found.append(f"{source.name} -> {destination.name}:{port}/{protocol} "
                                 f"{'allowed' if allowed else 'refused'}")
    return found


NETWORK_TARGETS = [t for t in TARGETS if t != "locust"]


@pytest.mark.parametrize("target", NETWORK_TARGETS)
def test_network_policies_allow_exactly_the_security_model(target: str) -> None:
    objects = render(target)
    assert network_violations(objects, target) == []
    # Every pod is isolated for ingress (the default deny selects them all), and Triton,
    # Envoy and the loader for egress too.
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for pod in pod_peers(objects) + pod_peers(render("locust")):
        types = {t for p in policies if selects(p["spec"]["podSelector"], pod.labels)
                 for t in policy_types(p)}
        assert "Ingress" in types, pod.name
        if pod.name in ("triton", "envoy", "model-loader"):
            assert "Egress" in types, pod.name


def test_network_check_finds_holes() -> None:
    objects = render("gpu")
    policy = find(objects, "NetworkPolicy", "triton-grpc-from-envoy")
    del policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]  # any pod here
    assert network_violations(objects, "gpu") == [
        f"{name} -> triton:8001/TCP allowed"
        for name in ("locust-master", "locust-worker", "debug-pod")]

    objects = render("gpu")
    objects.remove(find(objects, "NetworkPolicy", "default-deny-ingress"))
    holes = network_violations(objects, "gpu")
    assert "other-namespace -> locust-worker:8000/TCP allowed" in holes
    assert "internet -> debug-pod:8000/TCP allowed" in holes
    # Triton, Envoy and the loader keep their own policies.
    assert not [h for h in holes if re.search(r"-> (triton|envoy|model-loader):", h)]

    objects = render("gpu")
    policy = find(objects, "NetworkPolicy", "metrics-from-monitoring")
    policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"] = {}  # every namespace
    holes = network_violations(objects, "gpu")
    assert "other-namespace -> triton:8002/TCP allowed" in holes
    assert "ingress-controller -> envoy:9902/TCP allowed" in holes

    objects = render("gpu")
    find(objects, "NetworkPolicy", "envoy-egress")["spec"]["egress"].append({})  # anything
    assert "envoy -> internet:443/TCP allowed" in network_violations(objects, "gpu")

    objects = render("gpu+loadbalancer")
    objects.remove(find(objects, "NetworkPolicy", "envoy-grpc-from-anywhere"))
    assert "internet -> envoy:8080/TCP refused" in network_violations(
        objects, "gpu+loadbalancer")


def test_monitoring_and_ingress_namespaces_are_a_site_patch() -> None:
    """The overlay of k8s/README.md ("Network policies"), as written there, moves the
    metrics and the gRPC entrance to other namespaces."""
    readme = (K8S / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(# k8s/overlays/my-site/kustomization.yaml\n.*?)```",
                        readme, re.DOTALL)
    assert len(blocks) == 1, "the site overlay example is missing from k8s/README.md"
    objects = render_kustomization(blocks[0], "my-site")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = {p.name: p for p in pod_peers(objects)}
    prometheus = namespace_peer("prometheus", "prometheus")
    traefik = namespace_peer("traefik", "traefik")
    old_monitoring = namespace_peer("prometheus", "monitoring")
    old_ingress = namespace_peer("ingress-controller", "ingress-nginx")
    assert connection_allowed(policies, prometheus, pods["triton"], 8002, "TCP")
    assert connection_allowed(policies, prometheus, pods["envoy"], 9902, "TCP")
    assert not connection_allowed(policies, old_monitoring, pods["triton"], 8002, "TCP")
    assert connection_allowed(policies, traefik, pods["envoy"], 8080, "TCP")
    assert not connection_allowed(policies, old_ingress, pods["envoy"], 8080, "TCP")
    assert not connection_allowed(policies, traefik, pods["triton"], 8001, "TCP")


# ---------------------------------------------------------------------- Envoy
@pytest.mark.parametrize("target", ["gpu", "dev", "gpu+jwt-auth"])
def test_envoy_is_a_grpc_balancer(target: str) -> None:
    config = envoy_config(render(target))
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    triton = clusters["triton_grpc"]
    assert triton["type"] == "STRICT_DNS"
    assert triton["lb_policy"] == "LEAST_REQUEST"
    options = triton["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    address = triton["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"]["socket_address"]
    headless = find(render(target), "Service", "triton-headless")
    assert address["address"] == headless["metadata"]["name"]
    assert address["port_value"] == 8001
    listeners = {x["name"]: x for x in config["static_resources"]["listeners"]}
    manager = listeners["grpc"]["filter_chains"][0]["filters"][0]["typed_config"]
    route = next(r for r in manager["route_config"]["virtual_hosts"][0]["routes"]
                 if "route" in r)["route"]
    assert "unavailable" in route["retry_policy"]["retry_on"].split(",")
    assert route["timeout"] not in ("0s", 0)
    assert route["retry_policy"]["per_try_timeout"]
    assert manager["stream_idle_timeout"]
    filters = [f["name"] for f in manager["http_filters"]]
    assert filters[-1] == "envoy.filters.http.router"
    assert "envoy.filters.http.local_ratelimit" in filters
    # The admin interface (it can stop Envoy) listens on localhost only; Prometheus gets
    # /stats/prometheus through a read-only listener.
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    metric_routes = listeners["metrics"]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"]
    forwarded = [r["match"].get("path") for r in metric_routes if "route" in r]
    assert forwarded == ["/stats/prometheus", "/ready"]
    # The Service port the Ingress uses reaches the grpc listener.
    ports = {p["name"]: p for p in find(render("gpu"), "Service", "offload")["spec"]["ports"]}
    container = next(c for _, c in all_containers(render(target)) if c["name"] == "envoy")
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[ports["grpc"]["targetPort"]] == \
        listeners["grpc"]["address"]["socket_address"]["port_value"]


@cache
def envoy_api() -> type:
    """Envoy's Bootstrap message, with every message type of Envoy's API registered (so that
    the `typed_config` of each filter is parsed as its own type, not skipped)."""
    import importlib
    import pkgutil

    import envoy  # xds-protos: Envoy's data-plane API, generated for Python
    for module in pkgutil.walk_packages(envoy.__path__, "envoy."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)
    from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
    return Bootstrap


def parse_as_envoy(config: dict) -> None:
    """Raise if Envoy's API refuses the config: an unknown field or enum value anywhere, or a
    `@type` Envoy does not know (protobuf's strict JSON parsing; what Envoy's own loader
    adds on top, the validation rules of each field, is not checked here)."""
    from google.protobuf import json_format

    json_format.ParseDict(config, envoy_api()())


@pytest.mark.parametrize("target", ["gpu", "cpu", "dev", "gpu+jwt-auth"])
def test_envoy_config_is_valid_for_envoys_api(target: str) -> None:
    parse_as_envoy(envoy_config(render(target)))


def test_envoy_api_check_refuses_typos() -> None:
    from google.protobuf.json_format import ParseError

    config = envoy_config(render("gpu"))
    broken = copy.deepcopy(config)
    grpc_routes(broken)[1][0]["match"]["case_sensitiv"] = False
    with pytest.raises(ParseError, match="case_sensitiv"):
        parse_as_envoy(broken)
    broken = copy.deepcopy(config)
    grpc_routes(broken)[0]["path_with_escaped_slashes_action"] = "REJECT"
    with pytest.raises(ParseError, match="REJECT"):
        parse_as_envoy(broken)
    broken = copy.deepcopy(config)
    grpc_routes(broken)[0]["http_filters"][1]["typed_config"]["@type"] += "x"
    with pytest.raises(ParseError, match="type_url"):
        parse_as_envoy(broken)


def test_jwt_component_adds_jwt_authn() -> None:
    config = envoy_config(render("gpu+jwt-auth"))
    listener = next(x for x in config["static_resources"]["listeners"] if x["name"] == "grpc")
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert filters[0]["name"] == "envoy.filters.http.jwt_authn"
    provider = next(iter(filters[0]["typed_config"]["providers"].values()))
    cluster = provider["remote_jwks"]["http_uri"]["cluster"]
    assert cluster in {c["name"] for c in config["static_resources"]["clusters"]}
    assert "jwt_authn" not in render_text("gpu")


# Triton's gRPC API, every method (tritonclient's service descriptor: the same list as
# 2.51's grpc_service.proto), sorted into what Envoy forwards and what it refuses.
TRITON_SERVICE = "/inference.GRPCInferenceService/"
SERVED_RPCS = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
               "ModelConfig", "ModelStatistics", "ModelInfer", "ModelStreamInfer",
               "RepositoryIndex"]
ADMIN_RPCS = ["RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
              "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
              "CudaSharedMemoryStatus", "CudaSharedMemoryRegister",
              "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings"]


def grpc_routes(config: dict) -> tuple[dict, list[dict]]:
    listener = next(x for x in config["static_resources"]["listeners"] if x["name"] == "grpc")
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager, manager["route_config"]["virtual_hosts"][0]["routes"]


def envoy_path(manager: dict, path: str) -> str | None:
    """The path the routes see: Envoy's normalize_path / merge_slashes as configured; None
    when Envoy rejects the request (escaped slashes with REJECT_REQUEST)."""
    if (manager.get("path_with_escaped_slashes_action") == "REJECT_REQUEST"
            and re.search(r"%2f|%5c", path, re.IGNORECASE)):
        return None
    if manager.get("merge_slashes"):
        path = re.sub("/+", "/", path)
    if manager.get("normalize_path"):
        path = posixpath.normpath(path) if path != "/" else path
    return path


def first_route(routes: list[dict], path: str, grpc: bool = True) -> dict | None:
    """The route Envoy picks: the first whose match accepts the request."""
    for route in routes:
        match = route["match"]
        if "grpc" in match and not grpc:
            continue
        if set(match) - {"prefix", "path", "safe_regex", "grpc", "case_sensitive"}:
            raise AssertionError(f"this test cannot read the match {match}")
        fold = (lambda x: x.lower()) if match.get("case_sensitive") is False else (lambda x: x)
        if "prefix" in match:
            hit = fold(path).startswith(fold(match["prefix"]))
        elif "path" in match:
            hit = fold(path) == fold(match["path"])
        else:  # RE2, matched against the whole path
            hit = re.fullmatch(match["safe_regex"]["regex"], path) is not None
        if hit:
            return route
    return None


def route_violations(config: dict) -> list[str]:
    """Requests whose fate at Envoy's gRPC listener differs from the security model: the
    administrative RPCs refused (PERMISSION_DENIED), in any spelling; the inference API
    forwarded to Triton; anything else not forwarded."""
    manager, routes = grpc_routes(config)
    found = []

    def fate(path: str, grpc: bool = True) -> str:
        seen = envoy_path(manager, path)
        route = None if seen is None else first_route(routes, seen, grpc)
        if route is None:
            return "rejected"
        if "route" in route:
            return f"forwarded to {route['route']['cluster']}"
        return f"answered {route['direct_response']['status']}"

    for rpc in ADMIN_RPCS:
        canonical = TRITON_SERVICE + rpc
        if fate(canonical) != "answered 403":
            found.append(f"{canonical}: {fate(canonical)}, not refused with 403")
        for spelling in (canonical.lower(), canonical.replace("/inference.", "//inference."),
                         canonical.replace(f"/{rpc}", f"/./{rpc}"),
                         canonical.replace(f"/{rpc}", f"%2F{rpc}"), "/x/.." + canonical):
            for grpc in (True, False):
                if fate(spelling, grpc).startswith("forwarded"):
                    found.append(f"{spelling} (grpc={grpc}): {fate(spelling, grpc)}")
    for rpc in SERVED_RPCS:
        if fate(TRITON_SERVICE + rpc) != "forwarded to triton_grpc":
            found.append(f"{TRITON_SERVICE + rpc}: {fate(TRITON_SERVICE + rpc)}")
    if fate("/grpc.health.v1.Health/Check") != "forwarded to triton_grpc":
        found.append("/grpc.health.v1.Health/Check is not forwarded")
    for other in (TRITON_SERVICE + "SomethingNew", "/grpc.reflection.v1.ServerReflection/"
                  "ServerReflectionInfo", "/v2/models/jet_tagger/infer"):
        for grpc in (True, False):
            if fate(other, grpc).startswith("forwarded"):
                found.append(f"{other} (grpc={grpc}): {fate(other, grpc)}")
    return found


def test_every_triton_rpc_has_a_decision() -> None:
    methods = [m.name for m in
               service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    assert sorted(methods) == sorted(SERVED_RPCS + ADMIN_RPCS)


@pytest.mark.parametrize("target", ["gpu", "cpu", "dev", "gpu+jwt-auth"])
def test_envoy_refuses_triton_admin_rpcs(target: str) -> None:
    config = envoy_config(render(target))
    assert route_violations(config) == []
    # The refusals come before any route that forwards (routes match in order).
    _, routes = grpc_routes(config)
    kinds = ["forward" if "route" in r else "deny" if r["direct_response"]["status"] == 403
             else "other" for r in routes]
    assert kinds.index("forward") > max(i for i, k in enumerate(kinds) if k == "deny")


def test_route_check_finds_forwarded_admin_rpcs() -> None:
    base = envoy_config(render("gpu"))
    # A forward-everything route put first: every refusal is dead.
    config = copy.deepcopy(base)
    _, routes = grpc_routes(config)
    forward = next(r for r in routes if "route" in r)
    routes.insert(0, {**forward, "match": {"prefix": "/", "grpc": {}}})
    found = route_violations(config)
    assert f"{TRITON_SERVICE}RepositoryModelLoad: forwarded to triton_grpc, not refused " \
           "with 403" in found
    assert f"{TRITON_SERVICE}SomethingNew (grpc=True): forwarded to triton_grpc" in found
    # The forwarding route turned into a catch-all where it stands: the refusals before it
    # still hold, but an RPC nobody has decided on goes through.
    config = copy.deepcopy(base)
    _, routes = grpc_routes(config)
    next(r for r in routes if "route" in r)["match"] = {"prefix": "/", "grpc": {}}
    assert route_violations(config) == [
        f"{TRITON_SERVICE}SomethingNew (grpc=True): forwarded to triton_grpc",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo (grpc=True): "
        "forwarded to triton_grpc",
        "/v2/models/jet_tagger/infer (grpc=True): forwarded to triton_grpc"]
    # One refusal missing: that RPC is only "unknown" (404), and the check says so.
    config = copy.deepcopy(base)
    _, routes = grpc_routes(config)
    routes[:] = [r for r in routes if r.get("name") != "deny-trace-setting"]
    assert route_violations(config) == [
        f"{TRITON_SERVICE}TraceSetting: answered 404, not refused with 403"]
    # The refusals gone and an admin RPC added to the forwarded list.
    config = copy.deepcopy(base)
    _, routes = grpc_routes(config)
    routes[:] = [r for r in routes if not r.get("name", "").startswith("deny-")]
    forward = next(r for r in routes if "route" in r)
    forward["match"]["safe_regex"]["regex"] = forward["match"]["safe_regex"]["regex"].replace(
        "RepositoryIndex", "RepositoryIndex|RepositoryModelLoad")
    found = route_violations(config)
    assert f"{TRITON_SERVICE}RepositoryModelLoad: forwarded to triton_grpc, not refused " \
           "with 403" in found
    assert f"{TRITON_SERVICE}LogSettings: answered 404, not refused with 403" in found


def without_jwt(config: dict) -> dict:
    """The jwt-auth component's Envoy config less its jwt_authn filter and jwks cluster."""
    config = copy.deepcopy(config)
    manager, _ = grpc_routes(config)
    manager["http_filters"] = [f for f in manager["http_filters"]
                               if f["name"] != "envoy.filters.http.jwt_authn"]
    clusters = config["static_resources"]["clusters"]
    clusters[:] = [c for c in clusters if c["name"] != "jwks"]
    return config


def test_jwt_component_is_the_base_config_plus_jwt() -> None:
    """components/jwt-auth/envoy.yaml is a copy (kustomize cannot patch inside a file of a
    ConfigMap): it must be the base file plus the JWT filter and its cluster, nothing else,
    so that a change to the base (a refused RPC, a limit) cannot be forgotten there."""
    base = yaml.safe_load((K8S / "base/envoy/envoy.yaml").read_text())
    jwt = yaml.safe_load((K8S / "components/jwt-auth/envoy.yaml").read_text())
    assert jwt != base
    assert without_jwt(jwt) == base
    assert envoy_config(render("gpu+jwt-auth")) == jwt  # and it is what the component ships
    drifted = copy.deepcopy(jwt)
    grpc_routes(drifted)[1].pop(0)  # a refusal lost in the copy only
    assert without_jwt(drifted) != base


# ---------------------------------------------------------------------- Ingress
def nginx_bytes(size: str) -> int:
    """nginx's size syntax (client_max_body_size): bytes, k, m or g (powers of 1024)."""
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", size).groups()
    return int(number) * 1024 ** " kmg".index(unit.lower() or " ")


def ingress_violations(objects: list[dict]) -> list[str]:
    found = []
    limit = next(f for f in grpc_routes(envoy_config(objects))[0]["http_filters"]
                 if f["name"] == "envoy.filters.http.buffer")["typed_config"][
                     "max_request_bytes"]
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        annotations = ingress["metadata"].get("annotations", {})
        size = annotations.get("nginx.ingress.kubernetes.io/proxy-body-size")
        name = f"Ingress/{ingress['metadata']['name']}"
        if size is None or nginx_bytes(size) == 0:
            found.append(f"{name}: no body size limit")
        elif nginx_bytes(size) != limit:
            found.append(f"{name}: body limit {size} is not Envoy's {limit} bytes")
        if annotations.get("nginx.ingress.kubernetes.io/backend-protocol") != "GRPC":
            found.append(f"{name}: backend protocol is not GRPC")
        if not ingress["spec"].get("tls"):
            found.append(f"{name}: no TLS")
    return found


@pytest.mark.parametrize("target", NETWORK_TARGETS)
def test_ingress_limits_the_body_like_envoy(target: str) -> None:
    objects = render(target)
    assert ingress_violations(objects) == []
    assert ("Ingress" in {o["kind"] for o in objects}) == (target != "dev")


def test_ingress_check_finds_no_limit() -> None:
    assert nginx_bytes("16m") == 16777216
    assert nginx_bytes("0") == 0
    objects = render("gpu")
    annotations = find(objects, "Ingress", "offload")["metadata"]["annotations"]
    annotations["nginx.ingress.kubernetes.io/proxy-body-size"] = "0"
    assert ingress_violations(objects) == ["Ingress/offload: no body size limit"]
    annotations["nginx.ingress.kubernetes.io/proxy-body-size"] = "100m"
    assert ingress_violations(objects) == [
        "Ingress/offload: body limit 100m is not Envoy's 16777216 bytes"]


# ---------------------------------------------------------------------- preStop drain
class Metrics:
    """A real HTTP server on 127.0.0.1 serving Triton-style metrics text that changes."""

    def __init__(self) -> None:
        self.pending = {"jet_tagger": 0, "calo_shower_generator": 0}
        self.requests = 0
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                metrics.requests += 1
                body = "".join(
                    "# HELP nv_inference_pending_request_count Instantaneous number\n"
                    f'nv_inference_pending_request_count{{model="{m}",version="1"}} {n}\n'
                    for m, n in metrics.pending.items()) + "nv_gpu_utilization 0.5\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Metrics:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def drain_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script exactly as rendered into the ConfigMap the preStop hook runs."""
    objects = render("gpu")
    triton = triton_container(objects)
    command = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/bash"
    assert len(command) == 2
    mount = next(m for m in triton["volumeMounts"] if command[1].startswith(m["mountPath"]))
    spec = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
    key = command[1][len(mount["mountPath"]):].lstrip("/")
    path = tmp_path_factory.mktemp("prestop") / key
    path.write_text(config_map["data"][key])
    return path


def run_drain(script: Path, port: int, log: Path, **env: str) -> tuple[float, int]:
    environment = {"PATH": os.environ["PATH"], "DRAIN_METRICS_PORT": str(port),
                   "DRAIN_LOG": str(log), "DRAIN_POLL_SECONDS": "0.2", **env}
    started = time.monotonic()
    result = subprocess.run(["/bin/bash", str(script)], env=environment, timeout=30,
                            capture_output=True, text=True, check=False)
    return time.monotonic() - started, result.returncode


def test_prestop_waits_for_pending_requests(drain_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.touch()
    with Metrics() as metrics:
        metrics.pending["jet_tagger"] = 3
        metrics.pending["calo_shower_generator"] = 2
        threading.Timer(2.5, lambda: metrics.pending.update(jet_tagger=0)).start()
        threading.Timer(3.5, lambda: metrics.pending.update(calo_shower_generator=0)).start()
        elapsed, code = run_drain(drain_script, metrics.port, log,
                                  DRAIN_MIN_SECONDS="1", DRAIN_MAX_SECONDS="20")
        polls = metrics.requests
    assert code == 0
    assert 3.4 <= elapsed < 8, elapsed  # waited for both models, then stopped promptly
    assert polls >= 5  # it polled the endpoint repeatedly, not once
    assert "drained after" in log.read_text()


def test_prestop_serves_for_the_minimum_even_when_idle(drain_script: Path,
                                                       tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.touch()
    with Metrics() as metrics:
        elapsed, code = run_drain(drain_script, metrics.port, log,
                                  DRAIN_MIN_SECONDS="2", DRAIN_MAX_SECONDS="20")
    assert code == 0
    assert 2 <= elapsed < 5, elapsed
    assert "drained after 2s" in log.read_text()


def test_prestop_is_bounded_by_its_maximum(drain_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.touch()
    with Metrics() as metrics:
        metrics.pending["jet_tagger"] = 7
        elapsed, code = run_drain(drain_script, metrics.port, log,
                                  DRAIN_MIN_SECONDS="1", DRAIN_MAX_SECONDS="3")
    assert code == 0
    assert 3 <= elapsed < 6, elapsed
    assert "gave up after 3s with 7 pending requests" in log.read_text()


def test_prestop_returns_when_triton_is_gone(drain_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.touch()
    elapsed, code = run_drain(drain_script, free_port(), log,
                              DRAIN_MIN_SECONDS="1", DRAIN_MAX_SECONDS="20")
    assert code == 0
    assert 1 <= elapsed < 4, elapsed
    assert "not answering" in log.read_text()


def test_supersonic_prestop_never_sleeps(tmp_path: Path) -> None:
    """SuperSONIC's hook, verbatim: ["/bin/sh", "-c", "touch", "/tmp/shutdown;", "sleep 60"].
    `sh -c` runs only the next word ("touch", with no operand); the rest become $0 and $1.
    So it fails at once, never creates the file its readiness probe looks for, and never
    sleeps. Ours is an argv that runs the drain script (tests above)."""
    marker = tmp_path / "shutdown"
    started = time.monotonic()
    result = subprocess.run(["/bin/sh", "-c", "touch", f"{marker};", "sleep 60"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert time.monotonic() - started < 5
    assert result.returncode != 0
    assert "missing file operand" in result.stderr
    assert not marker.exists()
    command = triton_container(render("gpu"))["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] != ["/bin/sh", "-c"] or len(command) == 3
