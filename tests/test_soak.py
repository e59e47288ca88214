"""The soak test (perf/offload_perf/soak.py): a short run at a low rate against the embedded
server, its memory fit, and its refusal of a server that is not there."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_soak_smoke_run_samples_memory_latency_and_stops_everything(tmp_path):
    output = tmp_path / "soak"
    result = subprocess.run(
        [sys.executable, "-m", "offload_perf.soak", "--duration", "15", "--rate", "20",
         "--users", "2", "--models", "jet_tagger", "--interval", "2", "--warmup", "4",
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((output / "soak.json").read_text())
    for key in ("machine", "command", "settings", "rate_achieved", "p50_ms", "p99_ms",
                "error_rate", "per_model", "memory", "samples"):
        assert key in record, key
    assert record["machine"]["cores"]
    assert record["failures"] == 0
    assert record["error_rate"] == 0
    assert record["requests"] > 0
    assert record["p99_ms"] > 0
    assert 10 <= record["rate_achieved"] <= 25
    samples = record["samples"]
    assert len(samples) > 2
    assert all(s["server_rss_mb"] > 0 and s["client_rss_mb"] > 0 for s in samples)
    assert max(s["server_processes"] for s in samples) >= 2  # tritonserver + a stub
    assert any(s.get("p99_ms") for s in samples)
    for side in ("server", "client"):
        fit = record["memory"][side]
        assert fit["start_mb"] > 0
        assert fit["end_mb"] > 0
        assert fit["slope_mb_per_hour"] is not None
        assert fit["verdict"] in ("no growth", "growth")
    assert (output / "soak.png").stat().st_size > 10_000
    assert (output / "raw" / "soak_stats.csv").is_file()
    # the embedded server is gone: nothing listens on its port any more
    assert record["server"].startswith("embedded tritonserver at 127.0.0.1:")
    port = int(record["server"].rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_soak_refuses_an_unreachable_server(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "offload_perf.soak", "--duration", "5", "--rate", "5",
         "--host", f"127.0.0.1:{free_port()}", "--output", str(tmp_path / "soak")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no ready server" in result.stderr
    assert not (tmp_path / "soak" / "soak.json").exists()


def test_soak_bad_arguments_are_usage_errors(tmp_path):
    for args, message in ((("--duration", "0"), "argument --duration: a number > 0"),
                          (("--rate", "-5"), "argument --rate: a number > 0"),
                          (("--users", "0"), "argument --users: an integer >= 1")):
        result = subprocess.run(
            [sys.executable, "-m", "offload_perf.soak", *args,
             "--output", str(tmp_path / "soak")],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "usage:" in result.stderr
        assert message in result.stderr
    assert not (tmp_path / "soak").exists()


def test_memory_fit_flags_growth_and_tolerates_noise():
    from offload_perf.soak import fitted_growth

    times = [float(t) for t in range(0, 600, 5)]
    flat = [500.0 + (1.0 if i % 2 else -1.0) for i in range(len(times))]
    leak = [500.0 + 0.1 * t for t in times]  # 6 MB a minute
    fit = fitted_growth(times, flat, warmup_s=60)
    assert fit["verdict"] == "no growth"
    assert abs(fit["slope_mb_per_hour"]) < 5
    fit = fitted_growth(times, leak, warmup_s=60)
    assert fit["verdict"] == "growth"
    assert fit["slope_mb_per_hour"] == pytest.approx(360)
    assert fit["threshold_mb"] == pytest.approx(max(5.0, 0.02 * 506.0), rel=0.01)
    assert fitted_growth(times[:2], flat[:2], warmup_s=0)["verdict"] == "not enough samples"
