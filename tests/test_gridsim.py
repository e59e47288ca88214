"""The grid-job simulator (perf/offload_perf/gridsim/) runs end to end, tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import closed_address

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("jet_tagger", "jet_energy_regression")


@pytest.fixture(scope="module")
def jet_server():
    from offload_server import LocalServer

    with LocalServer(ROOT / "model_repository", models=list(MODELS)) as server:
        yield server


def _gridsim(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "offload_perf.gridsim", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_gridsim_both_modes_against_a_server(jet_server, tmp_path):
    result = _gridsim("--server", jet_server.grpc_url, "--workers", "1,2", "--duration", "1.5",
                      "--warmup", "0.3", "--cpu-ms", "1", "--output", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "gridsim.json").read_text())
    assert record["complete"]
    assert record["error"] is None
    assert record["machine"]["cores"]
    assert record["machine"]["cpu"]
    assert record["server"] == jet_server.grpc_url
    rows = {(r["workers"], r["mode"]): r for r in record["rows"]}
    assert set(rows) == {(k, m) for k in (1, 2) for m in ("in_process", "offloaded")}
    for (k, _mode), row in rows.items():
        assert row["events_per_second"] > 0
        assert len(row["per_worker"]) == k
        assert all(rate > 0 for rate in row["per_worker"])
        # the busy work is CPU time: at least the 1 ms asked for, per event
        assert row["reco_ms_per_event"] >= 1.0
        assert row["inference_ms_per_event"] > 0
    for k in (1, 2):
        served = rows[k, "offloaded"]
        assert set(served["server"]) == set(MODELS)
        for stats in served["server"].values():
            # every event's request reached the server within the window (+ nothing else;
            # at each window edge a worker's request in flight may land on either side)
            assert abs(stats["requests"] - served["events"]) <= k
            assert stats["queue_us_per_request"] >= 0
            assert stats["compute_us_per_request"] > 0
    assert [r["workers"] for r in record["ratios"]] == [1, 2]
    assert all(r["offloaded_over_in_process"] > 0 for r in record["ratios"])
    assert record["ratios"][0]["in_process_scaling"] == pytest.approx(1.0)
    assert record["ratios"][1]["offloaded_scaling"] > 0
    saturation = record["saturation"]
    assert saturation["baseline_queue_us"] == rows[1, "offloaded"]["queue_us_per_request"]
    assert saturation["sustained_workers"] in (1, 2)
    assert (tmp_path / "gridsim.png").stat().st_size > 10_000
    assert "offloaded / in-process" in result.stdout


def test_gridsim_reports_the_jobs_cpu_and_batches_across_events(jet_server, tmp_path):
    """The job's own CPU per event (getrusage), the server's (its process group), and the
    acquire/produce mode: one Batcher submit per event, requests carrying many events."""
    result = _gridsim("--server", jet_server.grpc_url, "--server-pgid", str(jet_server.pid),
                      "--workers", "1", "--modes", "in_process,offloaded_batched",
                      "--cpu-ms", "1", "--lag", "64", "--duration", "1.5", "--warmup", "0.3",
                      "--output", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "gridsim.json").read_text())
    rows = {r["mode"]: r for r in record["rows"]}
    for row in rows.values():
        assert row["job_cpu_ms_per_event"] >= 1.0  # the busy work, at least
        assert 0 < row["job_model_cpu_us_per_event"] < 1e3 * row["job_cpu_ms_per_event"]
    assert rows["in_process"]["server_cpu_ms_per_event"] is None
    batched = rows["offloaded_batched"]
    assert batched["server_cpu_ms_per_event"] > 0
    for name, stats in batched["server"].items():
        # 2 jets per event, 256 jets per preprocessing batch: far fewer requests than events
        assert 0 < stats["requests"] < batched["events"] / 4, (name, stats)
    ratio = record["ratios"][0]
    assert ratio["job_model_cpu_in_process_over_offloaded_batched"] > 0
    assert "less CPU per event offloaded batched than in-process" in result.stdout


def test_gridsim_unreachable_server_fails_clearly(tmp_path):
    closed = closed_address()
    started = time.monotonic()
    result = _gridsim("--server", closed, "--modes", "offloaded", "--workers", "1",
                      "--timeout", "3", "--output", str(tmp_path), timeout=120)
    assert result.returncode == 1
    assert f"cannot reach the server at {closed}" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "gridsim.json").exists()  # nothing was measured


def test_gridsim_unknown_model_is_a_usage_error(tmp_path):
    result = _gridsim("--models", "jet_tagger,nope", "--output", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "argument --models: unknown model(s) ['nope']" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--workers", "1,x"), "argument --workers: comma-separated integers are needed"),
    (("--workers", "0,2"), "argument --workers: counts >= 1 are needed"),
    (("--modes", "offloaded,sideways"), "argument --modes: unknown mode(s) ['sideways']"),
    (("--cpu-ms", "-1"), "argument --cpu-ms: a number >= 0 is needed"),
    (("--block", "0"), "argument --block: an integer >= 1 is needed"),
    (("--lag", "-1"), "argument --lag: an integer >= 0 is needed"),
    (("--duration", "0"), "argument --duration: a number > 0 is needed"),
])
def test_gridsim_bad_arguments_are_usage_errors(args, message, tmp_path):
    """Both entry points: argparse's usage and exit code 2, before anything starts."""
    for command in ([sys.executable, "-m", "offload_perf.gridsim"],
                    [sys.executable, "-m", "offload.cli", "gridsim"]):
        result = subprocess.run([*command, *args, "--output", str(tmp_path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "usage:" in result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_gridsim_model_missing_from_the_repository_fails_clearly(tmp_path):
    result = _gridsim("--repository", str(tmp_path), "--models", "jet_tagger",
                      "--output", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 1
    assert "model 'jet_tagger' is not in the repository" in result.stderr
    assert "Traceback" not in result.stderr


def test_gridsim_package_keeps_its_public_names():
    """The split package (one idea a module) still offers what its single module did."""
    from offload_perf import gridsim

    for name in ("main", "run", "add_arguments", "EventLoop", "Workers", "GridSimError",
                 "busy_work", "summarise", "saturation", "ratios", "plot",
                 "process_group_cpu", "MODELS", "MODES", "OFFLOADED"):
        assert hasattr(gridsim, name), name
    rows = [{"workers": k, "mode": "offloaded", "queue_us_per_request": q}
            for k, q in ((1, 50.0), (2, 90.0), (4, 400.0))]
    assert gridsim.saturation(rows)["sustained_workers"] == 2


def test_gridsim_is_an_offload_subcommand():
    result = subprocess.run([sys.executable, "-m", "offload.cli", "gridsim", "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--workers" in result.stdout
    assert "--server" in result.stdout


def test_gridsim_fast_simulation_job_with_its_own_server(tmp_path):
    result = _gridsim("--models", "calo_shower_generator", "--showers-per-event", "3",
                      "--workers", "1", "--duration", "1", "--warmup", "0.3", "--cpu-ms", "0.5",
                      "--output", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "gridsim.json").read_text())
    assert record["complete"]
    assert record["settings"]["showers_per_event"] == 3
    assert record["server"].startswith("embedded tritonserver")
    rows = {r["mode"]: r for r in record["rows"]}
    assert rows["in_process"]["events_per_second"] > 0
    served = rows["offloaded"]
    assert served["events_per_second"] > 0
    stats = served["server"]["calo_shower_generator"]
    assert abs(stats["requests"] - served["events"]) <= 1
