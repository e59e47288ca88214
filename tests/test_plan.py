"""`offload plan` (offload_perf.plan): the arithmetic against hand-computed cases, and the
command line's errors. The sweeps are written here as `offload perf` writes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from offload_perf import plan

ROOT = Path(__file__).resolve().parent.parent


def _point(concurrency, batch, throughput, p99_ms, queue_us, executions=None, stable=True):
    return {"concurrency": concurrency, "batch": batch, "throughput": throughput,
            "p50_us": p99_ms * 500, "p90_us": p99_ms * 900, "p95_us": p99_ms * 950,
            "p99_us": p99_ms * 1e3, "avg_us": p99_ms * 600, "server_queue_us": queue_us,
            "server_compute_input_us": 1.0, "server_compute_infer_us": 1.0,
            "server_compute_output_us": 1.0, "client_us": 1.0, "stable": stable,
            "windows": 3, "server_executions_per_request": executions}


@pytest.fixture
def sweeps(tmp_path) -> dict[str, Path]:
    a = {"model": "a", "machine": {"cpu": "Test CPU", "cores": "8", "gpu": "Test GPU"},
         "points": [_point(1, 1, 900, 1, 10, 1.0),
                    _point(1, 4, 1000, 5, 100, 1.0), _point(4, 4, 3000, 15, 400, 0.5),
                    _point(16, 4, 4000, 60, 2000, 0.25)]}
    b = {"model": "b", "points": [_point(1, 2, 500, 2, 50), _point(8, 2, 2000, 30, 1000)]}
    paths = {}
    for record in (a, b):
        path = tmp_path / f"{record['model']}.json"
        path.write_text(json.dumps(record))
        paths[record["model"]] = path
    return paths


def _workload(jobs=100, rate=10.0) -> plan.Workload:
    return plan.Workload(jobs, rate, {"a": plan.ModelLoad(4, 4, 1000.0),
                                      "b": plan.ModelLoad(2, 2, 500.0)})


def test_the_arithmetic_of_a_hand_computed_case(sweeps):
    loaded = {name: plan.load_sweep(path) for name, path in sweeps.items()}
    result = plan.make_plan(_workload(), loaded, p99_ms=20)
    a, b = result.models
    # a: 10 events/s x 4 rows = 40 rows/s per job; within 20 ms: 1000 and 3000 rows/s at
    # batch 4 -> 3000; saturation 4000. b: 20 rows/s per job; within 20 ms only 500 rows/s.
    assert (a.demand_per_job, a.capacity.batch, a.capacity.at_target, a.capacity.saturation) \
        == (40, 4, 3000, 4000)
    assert (b.demand_per_job, b.capacity.at_target, b.capacity.saturation) == (20, 500, 2000)
    assert a.demand_total == 4000
    assert result.share_per_job == pytest.approx(40 / 3000 + 20 / 500)  # 0.053333
    assert result.jobs_per_replica == pytest.approx(18.75)
    assert result.jobs_per_replica_at_saturation == pytest.approx(50)  # 1 / (0.01 + 0.01)
    assert result.replicas == 6  # ceil(100 x 0.053333) = ceil(5.33)
    assert result.planned_jobs_per_replica == pytest.approx(100 / 6)
    # bytes per job: 40 x 1000 + 20 x 500 = 50,000 B/s
    assert result.bandwidth_per_replica_at_capacity == pytest.approx(18.75 * 50_000)
    assert result.bandwidth_per_replica_planned == pytest.approx(100 / 6 * 50_000)
    # KEDA: 187.5 requests/s of each model at capacity (18.75 x 40 / 4, 18.75 x 20 / 2);
    # queue 400 us (a, 0.5 executions per request) and 50 us (b, executions unknown: 1):
    # (187.5 x 400 + 187.5 x 50) / (187.5 x 0.5 + 187.5 x 1) = 300 us per execution.
    assert a.request_rate_at_capacity == pytest.approx(187.5)
    assert result.keda_queue_us_per_execution == pytest.approx(300)
    assert any("executions per request not in" in n for n in result.notes)


def test_replicas_round_up_and_a_single_job_needs_one(sweeps):
    loaded = {name: plan.load_sweep(path) for name, path in sweeps.items()}
    assert plan.make_plan(_workload(jobs=1), loaded, 20).replicas == 1
    # 75 jobs x 0.053333 = 4.0 exactly: four replicas, not five
    assert plan.make_plan(_workload(jobs=75), loaded, 20).replicas == 4
    assert plan.make_plan(_workload(jobs=76), loaded, 20).replicas == 5


def test_a_looser_target_allows_more_jobs(sweeps):
    loaded = {name: plan.load_sweep(path) for name, path in sweeps.items()}
    tight = plan.make_plan(_workload(), loaded, 20)
    loose = plan.make_plan(_workload(), loaded, 100)  # every point qualifies: saturation
    assert loose.jobs_per_replica == pytest.approx(loose.jobs_per_replica_at_saturation)
    assert loose.jobs_per_replica > tight.jobs_per_replica


def test_the_batch_nearest_the_request_size_is_used(sweeps):
    sweep = plan.load_sweep(sweeps["a"])
    assert plan.capacity(sweep, 3, 1e9).batch == 4  # log2 3 is nearer 2 than 0
    assert "measured at batch 4, the workload sends 3 rows" in plan.capacity(sweep, 3, 1e9).note
    assert plan.capacity(sweep, 2, 1e9).batch == 1  # equally near: the smaller, safer one
    assert plan.capacity(sweep, 4, 1e9).note == ""


def test_an_unreachable_target_is_a_clear_error(sweeps):
    loaded = {name: plan.load_sweep(path) for name, path in sweeps.items()}
    with pytest.raises(plan.PlanError, match=r"no point of the 'a' sweep .* at batch 4 meets "
                                             r"p99 <= 1 ms: the best is 5.00 ms \(concurrency 1\)"):
        plan.make_plan(_workload(), loaded, p99_ms=1)
    with pytest.raises(plan.PlanError, match=r"'b' sweep .* at batch 2 meets p99 <= 1.5 ms: "
                                             r"the best is 2.00 ms"):
        plan.make_plan(plan.Workload(1, 1.0, {"b": plan.ModelLoad(2, 2, 0)}), loaded, 1.5)


@pytest.mark.parametrize(("workload", "message"), [
    ((0, 1.0, {"a": plan.ModelLoad(1, 1, 0)}), "jobs must be at least 1"),
    ((1, 0.0, {"a": plan.ModelLoad(1, 1, 0)}), "events per second must be > 0"),
    ((1, 1.0, {}), "the workload names no model"),
    ((1, 1.0, {"a": plan.ModelLoad(0, 1, 0)}), "inferences per event of 'a' must be > 0"),
    ((1, 1.0, {"a": plan.ModelLoad(1, 0, 0)}), "rows per request of 'a' must be at least 1"),
])
def test_bad_workloads_are_refused(workload, message):
    with pytest.raises(plan.PlanError, match=message):
        plan.Workload(*workload)


# ------------------------------------------------------------------------- command line
def _cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = plan.main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_prints_the_plan_and_writes_json(sweeps, tmp_path):
    code, out, err = _cli(str(sweeps["a"]), str(sweeps["b"]), "--jobs", "100",
                          "--events-per-second", "10", "--inferences", "a=4", "--inferences",
                          "b=2", "--bytes", "a=1000", "--bytes", "b=500", "--p99-ms", "20",
                          "--output", str(tmp_path / "plan.json"))
    assert code == 0, err
    assert "replicas needed:            6" in out
    assert "jobs per replica:           18.8 at p99 <= 20 ms (50.0 at saturation)" in out
    assert "KEDA threshold:             300 us" in out
    assert "Test CPU (8 cores), GPU Test GPU" in out
    assert "0.007 Gbit/s at capacity" in out  # 937,500 B/s
    record = json.loads((tmp_path / "plan.json").read_text())
    assert record["replicas"] == 6
    assert record["models"][0]["capacity"]["at_target"] == 3000


def test_cli_workload_file_and_bytes_from_the_repository(sweeps, tmp_path):
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps({"jobs": 10, "events_per_second": 10, "models": {
        "jet_tagger": {"inferences_per_event": 4, "rows_per_request": 4}}}))
    tagger = json.loads(sweeps["a"].read_text())
    tagger["model"] = "jet_tagger"
    (tmp_path / "tagger.json").write_text(json.dumps(tagger))
    code, _, err = _cli(str(tmp_path / "tagger.json"), "--workload", str(workload),
                          "--p99-ms", "20", "--output", str(tmp_path / "p.json"),
                          "--repository", str(ROOT / "model_repository"))
    assert code == 0, err
    (model,) = json.loads((tmp_path / "p.json").read_text())["models"]
    assert model["model"] == "jet_tagger"
    assert model["demand_per_job"] == 40
    # 128 x (2 + 13 + 1) FP32 in, 1 FP32 out: 8,196 bytes a jet; 40 jets/s a job, 75 jobs.
    assert json.loads((tmp_path / "p.json").read_text())[
        "bandwidth_per_replica_at_capacity"] == pytest.approx(75 * 40 * 8196)


@pytest.mark.parametrize(("extra", "message"), [
    (["--inferences", "a=1", "--inferences", "c=1", "--bytes", "c=1"],
     "no sweep for model(s) c (sweeps given for: a, b)"),
    (["--inferences", "a"], "--inferences takes MODEL=VALUE, got 'a'"),
    (["--inferences", "a=x"], "--inferences 'a=x': 'x' is not a number"),
    (["--inferences", "a=1", "--bytes", "z=1"], "name model(s) z that have no --inferences"),
    (["--inferences", "a=1", "--p99-ms", "0"], "the p99 target must be > 0 ms"),
    (["--inferences", "a=1", "--p99-ms", "0.5"], "no point of the 'a' sweep"),
])
def test_cli_errors(sweeps, extra, message):
    code, out, err = _cli(str(sweeps["a"]), str(sweeps["b"]), "--jobs", "1",
                          "--events-per-second", "1", "--bytes", "a=1", *extra)
    assert code == 1
    assert out == ""
    assert err.startswith("offload plan: error: "), err
    assert message in err, err


def test_cli_errors_about_the_inputs(sweeps, tmp_path):
    common = ["--jobs", "1", "--events-per-second", "1", "--inferences", "a=1", "--bytes", "a=1"]
    code, _, err = _cli(str(sweeps["a"]), "--events-per-second", "1", "--inferences", "a=1")
    assert code == 1
    assert "the workload needs --jobs and --events-per-second" in err
    code, _, err = _cli(str(tmp_path / "missing.json"), *common)
    assert code == 1
    assert "cannot read the sweep" in err
    assert "missing.json" in err
    (tmp_path / "a.csv").write_text("Concurrency,Batch\n1,1\n")
    code, _, err = _cli(str(tmp_path / "a.csv"), *common)
    assert code == 1
    assert "is not JSON" in err
    assert "not its .csv" in err
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    code, _, err = _cli(str(tmp_path / "other.json"), *common)
    assert code == 1
    assert "is not an `offload perf` sweep" in err
    code, _, err = _cli(str(sweeps["a"]), str(sweeps["a"]), *common)
    assert code == 1
    assert "two sweeps for 'a'" in err
    code, _, err = _cli(str(sweeps["a"]), "--jobs", "1", "--events-per-second", "1",
                        "--inferences", "a=1", "--repository", str(tmp_path))
    assert code == 1
    assert "to size 'a''s rows; give --bytes a=B" in err


def test_module_runs_as_a_command(sweeps):
    result = subprocess.run([sys.executable, "-m", "offload_perf.plan", str(sweeps["a"]),
                             "--jobs", "10", "--events-per-second", "10", "--inferences",
                             "a=4", "--bytes", "a=100", "--p99-ms", "20"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "replicas needed:" in result.stdout
