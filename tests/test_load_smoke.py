"""The locustfile (k8s/locust/locustfile.py) against a real embedded server, headless, a few
seconds; `make load`'s wrapper; and the Kubernetes manifest that runs locust in a cluster."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, settled_count

# Locust runs: `make test`, not test-fast.
pytestmark = pytest.mark.slow

LOCUSTFILE = ROOT / "k8s" / "locust" / "locustfile.py"


@pytest.fixture(scope="module")
def tagger_server():
    from offload_server import LocalServer

    with LocalServer(ROOT / "model_repository", models=["jet_tagger"]) as server:
        yield server


def _locust(host: str, prefix: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "--host", host, "-u", "2", "-r", "2", "-t", "3s", "--csv", str(prefix),
               "--exit-code-on-error", "3", "--stop-timeout", "5", "--only-summary", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _stats(prefix: Path) -> dict[str, dict]:
    with Path(f"{prefix}_stats.csv").open(newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def test_locust_grpc_user_reports_each_inference(tagger_server, tmp_path):
    prefix = tmp_path / "ok"
    result = _locust(f"grpc://{tagger_server.grpc_url}", prefix, "--models", "jet_tagger",
                     "--shape", "step", "--steps", "2", "--batch", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    row = _stats(prefix)["jet_tagger"]
    assert row["Type"] == "grpc"
    assert int(row["Request Count"]) > 0
    assert int(row["Failure Count"]) == 0
    assert float(row["Average Content Size"]) == 4 * 4  # batch 4 x one float32 score
    # Triton saw those requests (at least as many as locust wrote down before its CSV)
    import offload

    with offload.Client(tagger_server.grpc_url) as client:
        # a row per served version of a model named without one (jet_tagger serves two)
        tagger = client.model("jet_tagger")
        served = settled_count(lambda: sum(r.requests for r in tagger.server_stats()),
                               int(row["Request Count"]))
    assert served >= int(row["Request Count"])


def test_locust_unknown_model_is_a_failure_and_a_nonzero_exit(tagger_server, tmp_path,
                                                             monkeypatch):
    prefix = tmp_path / "bad"
    # the address from the environment variable this time (no --host)
    monkeypatch.setenv("OFFLOAD_SERVERS", tagger_server.grpc_url)
    monkeypatch.setenv("OFFLOAD_LOAD_MODELS", "jet_tagger,no_such_model")
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "-u", "1", "-r", "1", "-t", "2s", "--csv", str(prefix),
               "--exit-code-on-error", "3", "--stop-timeout", "5", "--only-summary"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    stats = _stats(prefix)
    assert int(stats["no_such_model"]["Failure Count"]) > 0
    assert int(stats["jet_tagger"]["Request Count"]) > 0
    assert int(stats["jet_tagger"]["Failure Count"]) == 0
    with Path(f"{prefix}_failures.csv").open(newline="") as handle:
        errors = " ".join(row["Error"] for row in csv.DictReader(handle))
    assert "no_such_model" in errors


def test_the_wrapper_runs_the_one_locustfile_of_the_package():
    from offload_perf import load

    assert load.locustfile() == LOCUSTFILE  # offload_deploy's package data (k8s/ here)
    assert not (ROOT / "perf" / "locustfile.py").exists()  # no second copy to drift
    printed = subprocess.run([sys.executable, "-m", "offload_perf.load", "--locustfile"],
                             capture_output=True, text=True, timeout=60, check=True)
    assert Path(printed.stdout.strip()) == LOCUSTFILE


def test_make_load_wrapper_against_a_running_server(tagger_server, tmp_path):
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "offload_perf.load", "--host", tagger_server.grpc_url,
         "--models", "jet_tagger", "--users", "2", "--run-time", "3s", "--shape", "spike",
         "--output", str(tmp_path / "load"), "--summary", str(summary)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(summary.read_text())
    assert record["exit_code"] == 0
    assert record["machine"]["cores"]
    (tagger,) = [r for r in record["stats"] if r["name"] == "jet_tagger"]
    assert tagger["requests"] > 0
    assert tagger["failures"] == 0
    assert tagger["p99_ms"] > 0
    assert (tmp_path / "load" / "load.html").stat().st_size > 10_000


@pytest.mark.slow
def test_make_load_starts_and_stops_the_embedded_server(tmp_path):
    """`make load` = this command with the default models and a longer run."""
    result = subprocess.run(
        [sys.executable, "-m", "offload_perf.load", "--models", "jet_tagger", "--users", "2",
         "--run-time", "3s", "--output", str(tmp_path / "load"),
         "--summary", str(tmp_path / "summary.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["server"].startswith("embedded tritonserver at 127.0.0.1:")
    (tagger,) = [r for r in record["stats"] if r["name"] == "jet_tagger"]
    assert tagger["requests"] > 0
    assert tagger["failures"] == 0
    # the server it started is gone: nothing listens on its port any more
    import socket

    port = int(record["server"].rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(not Path("/usr/bin/kubectl").exists() and not shutil.which("kubectl"),
                    reason="kubectl (with kustomize) is not installed")
def test_locust_kubernetes_manifest_renders_and_validates():
    import kubernetes_validate
    import yaml

    kubectl = shutil.which("kubectl") or "/usr/bin/kubectl"
    rendered = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "locust")],
                              capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents)
    assert [k for k, _ in kinds] == ["ConfigMap", "Deployment", "Deployment", "Service"]
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    # the locustfile travels as the repository's own file, the one `make load` runs
    assert config_map["data"]["locustfile.py"] == LOCUSTFILE.read_text()
    master = by_name["Deployment", "locust-master"]["spec"]["template"]["spec"]
    worker = by_name["Deployment", "locust-worker"]["spec"]["template"]["spec"]
    for pod in (master, worker):
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["image"].split(":")[-1] not in ("", "latest")
            assert container["resources"]["limits"]
            assert container["resources"]["requests"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "--master" in master["containers"][0]["args"]
    worker_args = worker["containers"][0]["args"]
    assert "--worker" in worker_args
    service = by_name["Service", "locust-master"]
    assert {p["port"] for p in service["spec"]["ports"]} >= {5557, 8089}
    assert worker_args[worker_args.index("--master-host") + 1] == "locust-master"
