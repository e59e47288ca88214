"""Everything that talks to a cluster, through the `kubernetes` Python client and the
current kubeconfig context. Imported only by the commands that need a cluster."""

from __future__ import annotations

import io
import logging
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from offload_deploy.errors import DeployError
from offload_deploy.plan import OPTIONAL_GROUPS, group_of, label
from offload_deploy.render import PART_OF

FIELD_MANAGER = "offload"
GPU_RESOURCE = "nvidia.com/gpu"
READY_MARKER = ".offload-ready"
SELECTOR = f"{PART_OF[0]}={PART_OF[1]}"

Obj = dict[str, Any]


def connect(context: str | None = None):
    """An ApiClient for the current kubeconfig context (or in-cluster config), checked to
    answer. DeployError with what to do when there is no configuration or no cluster."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config(context=context)
    except (ConfigException, OSError, ValueError, TypeError) as error:
        try:
            config.load_incluster_config()
        except ConfigException:
            raise DeployError(
                f"no Kubernetes cluster is configured ({error}). Point KUBECONFIG at a "
                "kubeconfig file or select a context with `kubectl config use-context`; "
                "`--dry-run` shows the plan without a cluster") from None
    api = client.ApiClient()
    host = api.configuration.host
    quiet = logging.getLogger("urllib3.connectionpool")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its retry warnings would bury the one clear message
    try:
        client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as error:  # urllib3 connection errors, ApiException, TLS errors
        raise DeployError(f"cannot reach the Kubernetes API server at {host}: "
                          f"{_reason(error)}") from None
    finally:
        quiet.setLevel(level)
    return api


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)  # urllib3's MaxRetryError wraps the cause
    text = str(reason or error).strip().splitlines()
    return text[0] if text else type(error).__name__


def served_groups(api) -> set[str]:
    """API groups the cluster serves (CRDs included), "" for the core group."""
    from kubernetes import client

    return {"", *(g.name for g in client.ApisApi(api).get_api_versions().groups)}


def require_gpu_nodes(api) -> None:
    from kubernetes import client

    nodes = client.CoreV1Api(api).list_node().items
    with_gpus = [n.metadata.name for n in nodes
                 if int((n.status.allocatable or {}).get(GPU_RESOURCE, "0") or 0) > 0]
    if not with_gpus:
        raise DeployError(
            f"no node of this cluster advertises {GPU_RESOURCE} ({len(nodes)} nodes checked). "
            "Install the NVIDIA device plugin or GPU operator (k8s/README.md), or deploy "
            "without GPUs: --overlay cpu (make deploy OVERLAY=cpu)")


def check_optional_groups(groups: set[str]) -> list[str]:
    return [f"{what} is not installed" for group, what in OPTIONAL_GROUPS.items()
            if group not in groups]


class Cluster:
    """The operations of deploy / status / undeploy on one namespace."""

    def __init__(self, api, namespace: str, console=None):
        from kubernetes import client
        from kubernetes.dynamic import DynamicClient

        self.api = api
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.dynamic = DynamicClient(api)
        self.console = console

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    # ------------------------------------------------------------------ apply
    def apply(self, objects: list[Obj]) -> None:
        from kubernetes.client.exceptions import ApiException

        for obj in objects:
            if obj["kind"] == "Namespace" and self._foreign_namespace(obj["metadata"]["name"]):
                self.say(f"  namespace {obj['metadata']['name']} exists already: left as it is")
                continue
            resource = self.dynamic.resources.get(api_version=obj["apiVersion"],
                                                  kind=obj["kind"])
            try:
                self.dynamic.server_side_apply(
                    resource, body=obj, name=obj["metadata"]["name"],
                    namespace=obj["metadata"].get("namespace"),
                    field_manager=FIELD_MANAGER, force_conflicts=True)
            except ApiException as error:
                raise DeployError(f"applying {label(obj)} failed: "
                                  f"{error.status} {error.reason}: {_api_message(error)}") from None
            self.say(f"  applied {label(obj)}")

    def _foreign_namespace(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            namespace = self.core.read_namespace(name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        labels = namespace.metadata.labels or {}
        return labels.get(PART_OF[0]) != PART_OF[1]

    # ------------------------------------------------------------------ upload
    def upload(self, loader: Obj, payload: bytes, source: str, timeout: float = 300) -> None:
        """Stream `payload` (tar_repository()) into the loader pod's volume, then write the
        marker that lets Triton's init container go on."""
        from kubernetes.stream import stream

        name = loader["metadata"]["name"]
        self._wait_pod_running(name, timeout)
        command = ["sh", "-c", upload_command(len(payload))]
        response = stream(self.core.connect_get_namespaced_pod_exec, name, self.namespace,
                          command=command, stdin=True, stdout=True, stderr=True, tty=False,
                          _preload_content=False, binary=True)
        with _progress(self.console, f"uploading {source}", len(payload)) as advance:
            for chunk in iter_chunks(payload):
                response.write_stdin(chunk)
                advance(len(chunk))
                response.update(timeout=0)
        response.run_forever(timeout=timeout)
        errors = response.read_stderr()
        code = response.returncode
        response.close()
        if code != 0:
            if isinstance(errors, bytes):
                errors = errors.decode(errors="replace")
            raise DeployError(f"the upload into pod {name} failed (exit {code}): "
                              f"{errors.strip()}")

    def _wait_pod_running(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pod = self.core.read_namespaced_pod(name, self.namespace)
            if pod.status.phase == "Running":
                return
            if pod.status.phase in ("Failed", "Succeeded"):
                raise DeployError(f"pod {name} ended ({pod.status.phase}) before the upload")
            time.sleep(2)
        raise DeployError(f"pod {name} was not running after {timeout:.0f} s (the PVC "
                          "model-repository may not bind: kubectl describe pvc)")

    def delete_pod(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        except ApiException as error:
            if error.status != 404:
                raise

    # ------------------------------------------------------------------ rollout
    def wait_rollout(self, names: list[str], timeout: float = 1200) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        deadline = time.monotonic() + timeout
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} ready"), TimeElapsedColumn(),
                      console=self.console, transient=False) as progress:
            tasks = {n: progress.add_task(f"rollout {n}", total=None) for n in names}
            pending = set(names)
            while pending:
                for name in sorted(pending):
                    done, ready, wanted = self._rollout_state(name)
                    progress.update(tasks[name], completed=ready, total=wanted)
                    if done:
                        pending.discard(name)
                if pending and time.monotonic() > deadline:
                    raise DeployError(
                        f"rollout of {', '.join(sorted(pending))} not complete after "
                        f"{timeout:.0f} s; see kubectl -n {self.namespace} get pods,events")
                if pending:
                    time.sleep(3)

    def _rollout_state(self, name: str) -> tuple[bool, int, int]:
        deployment = self.apps.read_namespaced_deployment(name, self.namespace)
        spec, status = deployment.spec, deployment.status
        wanted = spec.replicas if spec.replicas is not None else 1
        ready = status.ready_replicas or 0
        done = ((status.observed_generation or 0) >= deployment.metadata.generation
                and (status.updated_replicas or 0) == wanted
                and (status.available_replicas or 0) == wanted
                and (status.replicas or 0) == wanted)
        return done, ready, wanted

    # ------------------------------------------------------------------ status
    def endpoint(self) -> tuple[str | None, bool]:
        """(host:port, tls) clients should use, or None when not exposed outside."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            ingresses = client.NetworkingV1Api(self.api).list_namespaced_ingress(
                self.namespace, label_selector=SELECTOR).items
        except ApiException:
            ingresses = []
        for ingress in ingresses:
            for rule in ingress.spec.rules or []:
                if rule.host:
                    return f"{rule.host}:443", bool(ingress.spec.tls)
        try:
            service = self.core.read_namespaced_service("offload", self.namespace)
        except ApiException:
            return None, False
        port = next((p.port for p in service.spec.ports if p.name == "grpc"), 8001)
        if service.spec.type == "LoadBalancer":
            for point in (service.status.load_balancer.ingress or []):
                address = point.hostname or point.ip
                if address:
                    return f"{address}:{port}", False
        return None, False

    def status_rows(self) -> list[tuple[str, str, str]]:
        rows = []
        for deployment in self.apps.list_namespaced_deployment(
                self.namespace, label_selector=SELECTOR).items:
            status = deployment.status
            rows.append((f"Deployment/{deployment.metadata.name}",
                         f"{status.ready_replicas or 0}/{deployment.spec.replicas} ready",
                         f"{status.updated_replicas or 0} up to date"))
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=SELECTOR).items:
            statuses = pod.status.container_statuses or []
            ready = sum(1 for s in statuses if s.ready)
            restarts = sum(s.restart_count for s in statuses)
            rows.append((f"Pod/{pod.metadata.name}", f"{pod.status.phase}, "
                         f"{ready}/{len(statuses)} containers ready", f"{restarts} restarts"))
        return rows

    # ------------------------------------------------------------------ delete
    def delete_all(self, groups: set[str], keep_namespace: bool = False) -> list[str]:
        """Delete every object of ours (by label) in the namespace; then the namespace
        itself when deploy created it. Returns what was deleted."""
        from kubernetes.client.exceptions import ApiException

        kinds = [("keda.sh/v1alpha1", "ScaledObject"),
                 ("monitoring.coreos.com/v1", "ServiceMonitor"),
                 ("monitoring.coreos.com/v1", "PodMonitor"),
                 ("monitoring.coreos.com/v1", "PrometheusRule"),
                 ("autoscaling/v2", "HorizontalPodAutoscaler"),
                 ("networking.k8s.io/v1", "Ingress"), ("policy/v1", "PodDisruptionBudget"),
                 ("apps/v1", "Deployment"), ("v1", "Pod"), ("v1", "Service"),
                 ("v1", "PersistentVolumeClaim"), ("v1", "ConfigMap"),
                 # last: the pods are gone before their protection is
                 ("networking.k8s.io/v1", "NetworkPolicy")]
        deleted = []
        for api_version, kind in kinds:
            if group_of({"apiVersion": api_version}) not in groups:
                continue
            resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
            items = resource.get(namespace=self.namespace, label_selector=SELECTOR).items
            for item in items:
                try:
                    resource.delete(name=item.metadata.name, namespace=self.namespace)
                except ApiException as error:
                    if error.status != 404:
                        raise
                deleted.append(f"{kind}/{item.metadata.name}")
        if not keep_namespace and not self._foreign_namespace(self.namespace):
            try:
                self.core.delete_namespace(self.namespace)
                deleted.append(f"Namespace/{self.namespace}")
            except ApiException as error:
                if error.status != 404:
                    raise
        return deleted


def _api_message(error) -> str:
    import json

    try:
        return json.loads(error.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(error.body or "")


# ---------------------------------------------------------------------- upload helpers
SKIPPED_NAMES = {"__pycache__", ".ipynb_checkpoints", ".DS_Store"}


def tar_repository(repository: Path) -> bytes:
    """A gzip'd tar of the repository (names relative to it), without caches."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if SKIPPED_NAMES.intersection(Path(info.name).parts):
            return None
        info.uid = info.gid = 1000
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for child in sorted(repository.iterdir()):
            archive.add(child, arcname=child.name, filter=keep)
    return buffer.getvalue()


def upload_command(size: int, root: str = "/models") -> str:
    """Shell run in the loader pod: replace the volume's content with the tar read from
    stdin. `head -c` reads exactly the archive, so no end-of-stdin signal is needed."""
    return ("set -e; "
            f"rm -f {root}/{READY_MARKER}; "
            f"find {root} -mindepth 1 -maxdepth 1 ! -name lost+found -exec rm -rf {{}} +; "
            f"head -c {size} | tar -xzof - -C {root}; "
            f"touch {root}/{READY_MARKER}")


class _progress:
    """A rich progress bar for the upload (or nothing when there is no console)."""

    def __init__(self, console, description: str, total: int):
        self.console, self.description, self.total = console, description, total

    def __enter__(self):
        if self.console is None:
            return lambda _n: None
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        self.progress = Progress(*Progress.get_default_columns(), DownloadColumn(),
                                 TransferSpeedColumn(), console=self.console)
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.console is not None:
            self.progress.__exit__(*exc)


def iter_chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]
