"""The Kubernetes manifests in k8s/: every overlay renders, every object validates against
the Kubernetes OpenAPI schema (kubernetes-validate, offline) or the vendored CRD schemas,
the site policies hold, Envoy is configured as a gRPC balancer, and the Triton preStop
drain does what it says (run with bash against a real HTTP metrics endpoint)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

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
    assert "nodeSelector" not in spec and "tolerations" not in spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_and_flags(overlay: str) -> None:
    triton = triton_container(render(overlay))
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    args = triton["args"]
    for flag in ("--exit-on-error=true", "--allow-metrics=true", "--model-control-mode=none",
                 "--metrics-port=8002"):
        assert flag in args
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
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


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned(target: str) -> None:
    for name, container in all_containers(render(target)):
        image = container["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"


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


CREDENTIAL_NAME = re.compile(r"(password|passwd|secret|token|api_?key|access_?key|credential)",
                             re.IGNORECASE)


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_values_in_manifests(target: str) -> None:
    objects = render(target)
    for obj in objects:
        if obj["kind"] == "Secret":
            assert not obj.get("data") and not obj.get("stringData"), \
                f"Secret/{obj['metadata']['name']} carries values"
    for name, container in all_containers(objects):
        for env in container.get("env", []):
            if CREDENTIAL_NAME.search(env["name"]):
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), \
                    f"{name}: {env['name']} must come from a Secret"
    text = render_text(target)
    assert "BEGIN PRIVATE KEY" not in text and "BEGIN RSA PRIVATE KEY" not in text


def test_s3_component_takes_credentials_from_a_secret() -> None:
    objects = render("gpu+s3-repository")
    env = {e["name"]: e for e in triton_container(objects)["env"]}
    assert env["MODEL_REPOSITORY"]["value"].startswith("s3://")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "offload-s3-credentials"
    kinds = {o["kind"] for o in objects}
    assert "PersistentVolumeClaim" not in kinds and "Pod" not in kinds
    spec = find(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    assert "initContainers" not in spec or not spec["initContainers"]


def test_services_and_exposure() -> None:
    objects = render("gpu")
    headless = find(objects, "Service", "triton-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in headless["ports"]} == \
        {"http": 8000, "grpc": 8001, "metrics": 8002}
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
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    query = " ".join(trigger["metadata"]["query"].split())
    assert "rate(nv_inference_queue_duration_us" in query
    assert "rate(nv_inference_exec_count" in query and "/" in query
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
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert "unavailable" in route["retry_policy"]["retry_on"].split(",")
    assert route["timeout"] not in ("0s", 0) and route["retry_policy"]["per_try_timeout"]
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


def test_jwt_component_adds_jwt_authn() -> None:
    config = envoy_config(render("gpu+jwt-auth"))
    listener = next(x for x in config["static_resources"]["listeners"] if x["name"] == "grpc")
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert filters[0]["name"] == "envoy.filters.http.jwt_authn"
    provider = next(iter(filters[0]["typed_config"]["providers"].values()))
    cluster = provider["remote_jwks"]["http_uri"]["cluster"]
    assert cluster in {c["name"] for c in config["static_resources"]["clusters"]}
    assert "jwt_authn" not in render_text("gpu")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def drain_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script exactly as rendered into the ConfigMap the preStop hook runs."""
    objects = render("gpu")
    triton = triton_container(objects)
    command = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/bash" and len(command) == 2
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
    assert code == 0 and 2 <= elapsed < 5, elapsed
    assert "drained after 2s" in log.read_text()


def test_prestop_is_bounded_by_its_maximum(drain_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.touch()
    with Metrics() as metrics:
        metrics.pending["jet_tagger"] = 7
        elapsed, code = run_drain(drain_script, metrics.port, log,
                                  DRAIN_MIN_SECONDS="1", DRAIN_MAX_SECONDS="3")
    assert code == 0 and 3 <= elapsed < 6, elapsed
    assert "gave up after 3s with 7 pending requests" in log.read_text()


def test_prestop_returns_when_triton_is_gone(drain_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.touch()
    elapsed, code = run_drain(drain_script, free_port(), log,
                              DRAIN_MIN_SECONDS="1", DRAIN_MAX_SECONDS="20")
    assert code == 0 and 1 <= elapsed < 4, elapsed
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
    assert result.returncode != 0 and "missing file operand" in result.stderr
    assert not marker.exists()
    command = triton_container(render("gpu"))["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] != ["/bin/sh", "-c"] or len(command) == 3
