"""The benchmark of perf/ runs end to end (tiny settings: its figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
