"""The benchmark of perf/ runs end to end (tiny settings: its figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import closed_address

ROOT = Path(__file__).resolve().parent.parent


def test_bench_backends_smoke(tmp_path):
    command = [sys.executable, "perf/bench_backends.py", "--backend", "onnxruntime",
               "--batch", "1", "--batch", "4", "--concurrency", "2", "--window", "0.1",
               "--max-windows", "3", "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "bench_backends.json").read_text())
    assert record["machine"]["cores"]
    modes = {(r["mode"], r["batch"]) for r in record["results"]}
    assert modes == {(m, b) for m in ("in-process", "served c2") for b in (1, 4)}
    assert all(r["throughput"] > 0 for r in record["results"])
    served = [r for r in record["results"] if r["mode"] != "in-process"]
    assert all(r["server_us_per_request"] > 0 for r in served)
    assert (tmp_path / "bench_backends.png").stat().st_size > 10_000
    assert "ratio c2" in result.stdout


def test_bench_client_smoke(tmp_path):
    command = [sys.executable, "perf/bench_client.py", "--sizes", "16 B", "--seconds", "0.1",
               "--depths", "1", "4", "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "bench_client.json").read_text())
    (row,) = record["per_call"]
    for name in ("wire floor", "floor", "floor built", "offload", "offload shm",
                 "tritonclient"):
        assert row[name] > 0, name
    assert [r["depth"] for r in record["pipelined"]] == [1, 4]
    assert all(r["offload_futures"] > 0 and r["offload_asyncio"] > 0
               for r in record["pipelined"])
    assert (tmp_path / "bench_client.png").stat().st_size > 10_000
    assert "offload / floor built" in result.stdout
    assert "offload / wire floor" in result.stdout


@pytest.fixture(scope="module")
def sweep_server(tmp_path_factory):
    import tiny_models as tm

    from offload_server import LocalServer

    repo = tmp_path_factory.mktemp("sweep-repo")
    tm.export_onnx_mlp(repo, "mlp", extra="dynamic_batching { }")
    with LocalServer(repo) as server:
        yield server


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "offload.cli", "perf", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_offload_perf_sweep_writes_csv_json_png(sweep_server, tmp_path):
    result = _sweep("mlp", "--server", sweep_server.grpc_url, "--concurrency", "1", "2",
                    "--batch", "1", "4", "--window", "0.2", "--stability", "50",
                    "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr
    import csv

    with (tmp_path / "mlp.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["Batch"], r["Concurrency"]) for r in rows] == [
        ("1", "1"), ("1", "2"), ("4", "1"), ("4", "2")]
    assert all(float(r["Inferences/Second"]) > 0 and float(r["p99 latency"]) > 0 for r in rows)
    assert all(float(r["Server Compute Infer"]) > 0 for r in rows)
    record = json.loads((tmp_path / "mlp.json").read_text())
    assert len(record["points"]) == 4
    assert (tmp_path / "mlp.png").stat().st_size > 10_000


def test_offload_perf_reports_instability_and_keeps_what_it_measured(sweep_server, tmp_path):
    result = _sweep("mlp", "--server", sweep_server.grpc_url, "--concurrency", "2",
                    "--window", "0.1", "--stability", "0", "--max-trials", "3",
                    "--output", str(tmp_path))
    assert result.returncode == 1
    assert "did not reach stability within 3 windows" in result.stderr
    assert (tmp_path / "mlp.csv").read_text().count("\n") == 2  # header + the point


def test_offload_perf_bad_targets(sweep_server, tmp_path):
    unknown = _sweep("nope", "--server", sweep_server.grpc_url, "--output", str(tmp_path))
    assert unknown.returncode == 1
    assert "model 'nope'" in unknown.stderr
    # Arguments the model refuses are usage errors (argparse: usage, exit code 2), found
    # once the server has described the model.
    too_big = _sweep("mlp", "--server", sweep_server.grpc_url, "--batch", "5000",
                     "--output", str(tmp_path))
    assert too_big.returncode == 2
    assert "usage: offload perf" in too_big.stderr
    assert "argument --batch: batch size(s) [5000] exceed model 'mlp''s max_batch_size 1024" \
        in too_big.stderr
    import numpy as np

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, y=np.zeros((4, 4), np.float32))
    no_inputs = _sweep("mlp", "--server", sweep_server.grpc_url, "--input-data", str(wrong),
                       "--output", str(tmp_path))
    assert no_inputs.returncode == 2
    assert f"argument --input-data: {wrong} lacks input(s) x of model 'mlp'" in no_inputs.stderr
    assert "Traceback" not in too_big.stderr + no_inputs.stderr
    assert not (tmp_path / "mlp.csv").exists()  # nothing was measured
    closed = closed_address()
    dead = _sweep("mlp", "--server", closed, "--timeout", "5", "--output", str(tmp_path))
    assert dead.returncode == 1
    assert "unavailable" in dead.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--concurrency", "0"), "argument --concurrency: an integer >= 1 is needed, got '0'"),
    (("--batch", "two"), "argument --batch: an integer >= 1 is needed, got 'two'"),
    (("--window", "0"), "argument --window: a number > 0 is needed, got '0'"),
    (("--max-trials", "0"), "argument --max-trials: an integer >= 1 is needed, got '0'"),
])
def test_offload_perf_bad_arguments_are_usage_errors(args, message, tmp_path):
    result = _sweep("mlp", "--server", "127.0.0.1:1", *args, "--output", str(tmp_path))
    assert result.returncode == 2
    assert "usage: offload perf" in result.stderr
    assert message in result.stderr


def test_overlap_bad_arguments_are_usage_errors(tmp_path):
    def overlap(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "offload_perf.overlap", *args,
                               "--output", str(tmp_path / "out")], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    trials = overlap("--trials", "0")
    unknown = overlap("--model", "nope")
    nowhere = overlap("--repository", str(tmp_path / "none"))
    for result in (trials, unknown, nowhere):
        assert result.returncode == 2, result.stderr
        assert "usage:" in result.stderr
        assert "Traceback" not in result.stderr
    assert "argument --trials: an integer >= 1 is needed, got '0'" in trials.stderr
    assert "argument --model: model(s) nope not in the repository" in unknown.stderr
    assert f"argument --repository: no folder {tmp_path / 'none'}" in nowhere.stderr
    assert not (tmp_path / "out").exists()


def test_dynamic_batching_comparison_smoke(tmp_path):
    import tiny_models as tm

    repo = tmp_path / "repo"
    tm.export_onnx_mlp(repo, "mlp", extra="dynamic_batching { max_queue_delay_microseconds: 500 }")
    result = subprocess.run([sys.executable, "-m", "offload_perf.batching", "--repository",
                             str(repo), "--clients", "4", "--window", "0.2", "--stability",
                             "50", "--output", str(tmp_path / "out")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((tmp_path / "out" / "dynamic_batching.json").read_text())
    assert row["model"] == "mlp"
    assert row["ratio"] > 0
    assert row["batched"]["throughput"] > 0
    assert row["unbatched"]["throughput"] > 0
    assert row["unbatched"]["mean_batch"] == 1.0  # without the batcher nothing is merged
    assert "ratio" in result.stdout


def test_service_efficiency_smoke(tmp_path):
    import tiny_models as tm

    repo = tmp_path / "repo"
    tm.export_onnx_mlp(repo, "mlp", config_body=tm.mlp_config("onnxruntime", "x", "y",
                                                               max_batch_size=16))
    result = subprocess.run([sys.executable, "-m", "offload_perf.service", "--repository",
                             str(repo), "--window", "0.2", "--stability", "60",
                             "--output", str(tmp_path / "out")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "out" / "service_efficiency.json").read_text())
    assert [(r["model"], r["batch"]) for r in rows] == [("mlp", 1), ("mlp", 16)]
    for row in rows:
        assert row["in_process"] > 0
        assert row["served_c1"] > 0
        assert row["served_c4"] > 0
        assert row["ratio_c1"] == row["served_c1"] / row["in_process"]


@pytest.mark.slow
def test_make_perf_quick_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "offload_perf.run_all", "--quick",
                             "--output", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr  # 1: a point flagged unstable
    assert "== done" in result.stdout, result.stdout + result.stderr
    for model in ("jet_tagger", "jet_energy_regression", "calo_shower_generator"):
        assert (tmp_path / "sweeps" / f"{model}.csv").is_file()
    for name in ("service_efficiency.json", "dynamic_batching.json", "overlap.json"):
        assert json.loads((tmp_path / name).read_text())


def test_overlap_benchmark_smoke(tmp_path):
    import tiny_models as tm

    repo = tmp_path / "repo"
    tm.export_onnx_mlp(repo, "mlp", extra="""dynamic_batching {
  default_queue_policy { max_queue_size: 8 } }
instance_group [ { count: 2 } ]""")
    result = subprocess.run([sys.executable, "-m", "offload_perf.overlap", "--repository",
                             str(repo), "--trials", "3", "--patterns", "pair", "triple",
                             "--output", str(tmp_path / "out")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "overlap.json").read_text())
    assert record["machine"]["cores"]
    assert record["stall_ms"] == 400
    rows = {(r["configuration"], r["pattern"]): r for r in record["rows"]}
    before, single = "before: 1 instance + queue policy", "1 instance, no policy"
    assert set(rows) == {(c, p) for c in ("as committed", before, single)
                         for p in ("pair", "triple")}
    assert rows["as committed", "pair"]["sizes"] == [1024, 176]
    assert rows[before, "triple"]["sizes"] == [1024, 1024, 176]
    assert rows["as committed", "pair"]["instances"] == 2
    assert rows[before, "pair"]["instances"] == rows[single, "pair"]["instances"] == 1
    for row in rows.values():
        assert row["trials"] == 3
        assert row["worst_ms"] >= row["median_trial_ms"] > 0
        assert row["mean_executions"] >= 2  # the pieces did not merge (> max_batch_size)
        assert 0 <= row["stalls"] <= 3


@pytest.mark.slow
def test_plan_validation_quick_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "offload_perf.validate_plan", "--quick",
                             "--output", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "plan_validation.json").read_text())
    assert [r["workers"] for r in record["gridsim"]["rows"]] == [1, 2]
    assert record["workload"]["events_per_second_per_job"] > 0
    assert record["prediction"]["jobs_per_replica_at_saturation"] > 0
    assert record["machine"]["cpu"]
    for model in ("jet_tagger", "jet_energy_regression"):
        sweep = json.loads((tmp_path / "sweeps" / f"{model}.json").read_text())
        assert sweep["machine"]["cores"]
        assert all(p["batch"] == 2 and p["server_executions_per_request"] > 0
                   for p in sweep["points"])
    assert "predicted jobs per server" in result.stdout


def test_gpu_run_quick_mode_runs_here_and_notes_what_it_skips(tmp_path):
    """The prepared GPU run (perf/gpu_run.sh) in its QUICK mode; without a GPU every GPU part
    is skipped with a note and the rest still runs and writes its files."""
    import shutil as _shutil

    result = subprocess.run([str(ROOT / "perf" / "gpu_run.sh"), "--quick", "--output",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ,
                                              "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert summary["quick"] is True
    assert summary["elapsed_s"] < 300
    torch_step = summary["steps"]["baseline torch"]["result"]
    devices = {row["device"] for row in torch_step["timings"]}
    assert "cpu" in devices
    assert all(row["rows_per_s"] > 0 for row in torch_step["timings"])
    server = summary["steps"]["server"]["result"]
    assert server["sweeps"]["calo_shower_generator"]
    assert server["overlap"]
    assert server["overlap"][0]["trials"] == 2
    assert server["served_vs_in_process_cpu"]["showers"] == 256
    assert (tmp_path / "sweeps" / "calo_shower_generator.json").is_file()
    assert (tmp_path / "tritonserver.log").stat().st_size > 0
    assert "# GPU run" in (tmp_path / "summary.md").read_text()
    if not environment["gpu"]:
        assert any("no CUDA device visible to torch" in n for n in summary["notes"])
        assert server["config_variant"] is None
        assert devices == {"cpu"}
        if _shutil.which("nvidia-smi") is None:
            assert any("the CPU configs (config.pbtxt)" in n for n in summary["notes"])
    else:  # on a GPU machine the same test checks the GPU path
        assert "cuda:0" in devices
        assert torch_step["agreement_cpu_vs_gpu"]["showers"] == 256
