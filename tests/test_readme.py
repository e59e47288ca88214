"""The README's client example runs as written, against the embedded server serving the
repository's own jet_tagger."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from offload_server import LocalServer

ROOT = Path(__file__).resolve().parent.parent


def _client_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The client (`import offload`)"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_client_example_runs_as_written(tmp_path):
    code = _client_example()
    assert "mlp" not in code  # a model the repository has
    script = tmp_path / "example.py"
    script.write_text(code)
    with LocalServer(ROOT / "model_repository", models=["jet_tagger"]) as server:
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path,
                                env={**os.environ, "OFFLOAD_SERVERS": server.grpc_url})
    assert result.returncode == 0, result.stderr
    assert "ClientStats(calls=" in result.stdout
    scores = re.findall(r"\[([0-9.e-]+)\]", result.stdout)
    assert scores
    assert all(0 <= float(score) <= 1 for score in scores)
