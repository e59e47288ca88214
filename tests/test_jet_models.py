"""The committed jet models: served = in-process on their validation samples, the recorded
metrics recomputed from served outputs, and the quick training pipeline end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from offload.physics.jets import regression_inputs, tagger_inputs
from offload_server import LocalServer
from offload_server.backends import load_in_process
from offload_server.repo_check import check_repository
from offload_training.card_sections import raw_jet_inputs
from offload_training.metrics import regression_metrics, tagging_metrics

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
MODELS = ("jet_tagger", "jet_energy_regression")
# Served and in-process run the same artifact with the same code; only the batch
# composition differs, which moves float32 results by rounding at most.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def server():
    with LocalServer(REPOSITORY, models=list(MODELS)) as running:
        yield running


def _served(server: LocalServer, model: str, inputs: dict[str, np.ndarray], output: str,
            max_batch: int) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    pieces = []
    n = len(next(iter(inputs.values())))
    for start in range(0, n, max_batch):
        request = []
        for name, value in inputs.items():
            chunk = np.ascontiguousarray(value[start:start + max_batch])
            tensor = grpcclient.InferInput(name, list(chunk.shape), "FP32")
            tensor.set_data_from_numpy(chunk)
            request.append(tensor)
        pieces.append(client.infer(model, request).as_numpy(output))
    client.close()
    return np.concatenate(pieces)


def _metrics(model: str) -> dict:
    return json.loads((REPOSITORY / model / "metrics.json").read_text())


def test_tagger_served_matches_in_process_and_its_card(server):
    """The default version (a plain NVIDIA client names none); both versions, pinned, in
    tests/test_jet_tagger_versions.py."""
    sample = np.load(REPOSITORY / "jet_tagger" / "validation.npz")
    inputs = tagger_inputs(sample["constituents"], sample["reco_jet"])
    recorded = _metrics("jet_tagger")
    served = _served(server, "jet_tagger", inputs, "top_probability",
                     recorded["export"]["max_batch_size"])
    in_process = load_in_process(REPOSITORY / "jet_tagger").run(inputs)["top_probability"]
    np.testing.assert_allclose(served, in_process, **TOLERANCE)
    again = tagging_metrics(sample["is_top"], served[:, 0])
    default = recorded["versions"][str(recorded["default_version"])]
    expected = default["validation_sample"]
    assert again["auc"] == pytest.approx(expected["auc"], abs=1e-4)
    assert again["rejection_at_30"] == pytest.approx(expected["rejection_at_30"], rel=0.02)
    card = (REPOSITORY / "jet_tagger" / "model_card.md").read_text()
    assert f"{expected['auc']:.4f}" in card
    assert f"{default['test']['auc']:.4f}" in card
    assert raw_jet_inputs("tagger_inputs") in card  # the raw layout the client takes


def test_regression_served_matches_in_process_and_its_card(server):
    sample = np.load(REPOSITORY / "jet_energy_regression" / "validation.npz")
    inputs = regression_inputs(sample["constituents"], sample["reco_jet"])
    recorded = _metrics("jet_energy_regression")
    served = _served(server, "jet_energy_regression", inputs, "pt_correction",
                     recorded["export"]["max_batch_size"])
    runner = load_in_process(REPOSITORY / "jet_energy_regression")
    np.testing.assert_allclose(served, runner.run(inputs)["pt_correction"], **TOLERANCE)
    reco, gen = sample["reco_jet"], sample["gen_jet"]
    again = regression_metrics(reco[:, 0], reco[:, 0] * served[:, 0], gen[:, 0],
                               gen[:, 1])["inclusive"]
    expected = recorded["validation_sample"]
    for kind in ("uncorrected", "corrected"):
        for key in ("response", "resolution"):
            assert again[kind][key] == pytest.approx(expected[kind][key], rel=1e-3), (kind, key)
    card = (REPOSITORY / "jet_energy_regression" / "model_card.md").read_text()
    assert f"{expected['corrected']['resolution']:.4f}" in card
    assert raw_jet_inputs("regression_inputs") in card  # the raw layout the client takes


def test_validation_samples_stay_small():
    for model in MODELS:
        assert (REPOSITORY / model / "validation.npz").stat().st_size <= 2 * 1024 * 1024


@pytest.mark.slow
def test_quick_training_pipeline_end_to_end(tmp_path):
    from offload_training.regression.pipeline import build as build_regression
    from offload_training.tagger.pipeline import build as build_tagger

    tagger = build_tagger(tmp_path, quick=True)
    regression = build_regression(tmp_path, quick=True)
    assert tagger["quick"]
    assert sorted(tagger["versions"]) == ["1", "2"]
    assert all(0.0 <= v["test"]["auc"] <= 1.0 for v in tagger["versions"].values())
    assert regression["test"]["inclusive"]["corrected"]["n"] > 0
    report = check_repository(tmp_path)
    assert report.ok, {m.name: m.errors for m in report.models}
    for model in MODELS:
        for name in ("config.pbtxt", "model_card.md", "metrics.json", "validation.npz"):
            assert (tmp_path / model / name).is_file(), (model, name)
        assert "QUICK smoke run" in (tmp_path / model / "model_card.md").read_text()


def test_grid_job_example_runs_against_the_server(server):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "examples/grid_job.py", "--events", "150",
                             "--block", "32", "--server", server.grpc_url],
                            cwd=REPOSITORY.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "150 events, 300 jets" in result.stdout
    assert "events/s" in result.stdout
