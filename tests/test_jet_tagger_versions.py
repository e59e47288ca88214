"""`jet_tagger` versions 1 and 2 (issue 17): both served by the real embedded server from
one config, pinned through the offload client, the highest the default; the card's figures
recomputed from each version's served outputs; Triton's version policies as `offload repo
check`, `load_in_process` and the config writers see them; and the QUICK smoke run of the
two-version pipeline, including a rebuild of version 2 alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from helpers import ROOT, settled_count

import offload
from offload.physics.jets import tagger_inputs
from offload_server import LocalServer, model_config
from offload_server.backends import load_in_process
from offload_server.model_spec import default_version, read_config, served_versions
from offload_server.repo_check import check_repository
from offload_training.metrics import tagging_metrics

REPOSITORY = ROOT / "model_repository"
TAGGER = REPOSITORY / "jet_tagger"
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def tagger_server():
    with LocalServer(REPOSITORY, models=["jet_tagger"]) as running:
        yield running


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((TAGGER / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    with np.load(TAGGER / "validation.npz") as data:
        return {key: data[key] for key in data.files}


def _inferences(model: offload.Model) -> int:
    (row,) = model.server_stats()  # a pinned handle: its version's row only
    return row.inferences


def test_each_version_is_served_pinned_and_the_default_is_the_highest(tagger_server,
                                                                      recorded, sample):
    inputs = tagger_inputs(sample["constituents"], sample["reco_jet"])
    n = len(sample["is_top"])
    with offload.Client(tagger_server.grpc_url, token=tagger_server.token,
                        timeout=120) as client:  # the token: the repository index
        index = {(m["name"], m["version"]): m["state"] for m in client.models()}
        assert index[("jet_tagger", "1")] == "READY"
        assert index[("jet_tagger", "2")] == "READY"
        pinned = {v: client.model("jet_tagger", version=v) for v in (1, 2)}
        default = client.model("jet_tagger")
        assert pinned[1].version == "1"
        assert pinned[2].version == "2"
        assert default.version == ""
        assert [t.name for t in pinned[1].inputs] == [t.name for t in pinned[2].inputs] == \
            ["points", "features", "mask"]
        assert pinned[1].max_batch_size == pinned[2].max_batch_size == \
            recorded["export"]["max_batch_size"]

        served = {}
        for version in (1, 2):
            before = {v: _inferences(pinned[v]) for v in (1, 2)}
            served[version] = pinned[version].infer(inputs)["top_probability"].copy()
            # Triton's own counters: the rows went to the pinned version, none to the other
            assert settled_count(lambda v=version: _inferences(pinned[v]),
                                 before[version] + n) - before[version] == n
            assert _inferences(pinned[3 - version]) == before[3 - version]
        before = {v: _inferences(pinned[v]) for v in (1, 2)}
        unpinned = default.infer(inputs)["top_probability"]
        # no version named: version 2
        assert settled_count(lambda: _inferences(pinned[2]), before[2] + n) - before[2] == n
        assert _inferences(pinned[1]) == before[1]
        assert recorded["default_version"] == 2
        assert default_version(TAGGER) == "2"
        np.testing.assert_allclose(unpinned, served[2], **TOLERANCE)
        # also per call: Model.infer(version=...) on the unpinned handle
        np.testing.assert_allclose(default.infer(inputs, version=1)["top_probability"],
                                   served[1], **TOLERANCE)

    # The two versions are different networks ...
    assert np.abs(served[1] - served[2]).max() > 0.05
    for version in (1, 2):
        # ... each served as it runs in-process from its own folder ...
        in_process = load_in_process(TAGGER, version).run(inputs)["top_probability"]
        np.testing.assert_allclose(served[version], in_process, **TOLERANCE)
        # ... and the card's validation-sample figures come back from the served outputs.
        again = tagging_metrics(sample["is_top"], served[version][:, 0])
        expected = recorded["versions"][str(version)]["validation_sample"]
        assert again["auc"] == pytest.approx(expected["auc"], abs=1e-4)
        for key in ("rejection_at_30", "rejection_at_50"):
            assert again[key] == pytest.approx(expected[key], rel=0.02), (version, key)
    np.testing.assert_allclose(load_in_process(TAGGER).run(inputs)["top_probability"],
                               served[2], **TOLERANCE)


def test_a_version_that_is_not_served_is_refused(tagger_server):
    with offload.Client(tagger_server.grpc_url, timeout=60) as client, \
            pytest.raises(offload.ModelNotFoundError) as raised:
        client.model("jet_tagger", version=3)
    assert "jet_tagger" in str(raised.value)


def test_metrics_and_card_cover_both_versions(recorded):
    card = (TAGGER / "model_card.md").read_text()
    assert recorded["versions_served"] == [1, 2]
    config = read_config(TAGGER)
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert list(read_config(TAGGER, "gpu").version_policy.specific.versions) == [1, 2]
    assert served_versions(TAGGER) == served_versions(TAGGER, "gpu") == [1, 2]
    for version in ("1", "2"):
        record = recorded["versions"][version]
        test = record["test"]
        assert test["n_signal"] == recorded["test"]["top"] > 10_000
        assert test["n_background"] == recorded["test"]["qcd"] > 10_000
        for key in ("auc", "rejection_at_30", "rejection_at_50"):
            assert np.isfinite(test[key]), (version, key)
            assert test[f"{key}_error"] > 0, (version, key)
        assert f"{test['auc']:.4f} ± {test['auc_error']:.4f}" in card
        assert f"{test['rejection_at_30']:.0f} ± {test['rejection_at_30_error']:.0f}" in card
        assert f"{test['rejection_at_50']:.0f} ± {test['rejection_at_50_error']:.0f}" in card
        assert [c["batch"] for c in record["cost"]] == [1, recorded["export"]["max_batch_size"]]
        assert all(c["cpu_us_per_item"] > 0 for c in record["cost"])
        assert (TAGGER / version / "model.onnx").stat().st_size == record["artifact_bytes"]
    v1, v2 = recorded["versions"]["1"], recorded["versions"]["2"]
    assert v2["artifact_bytes"] < 5 * 2**20  # "a few MB at most"
    # The export is what torch computes, on every test jet.
    check = v2["export_check"]
    assert check["jets"] == recorded["test"]["top"] + recorded["test"]["qcd"]
    # A handful of jets may differ more: a near-tie between two neighbours in the learnt
    # feature space (the second block's graph) that torch and onnxruntime, summing in
    # different orders, break differently. One swapped neighbour of k = 8 moves that jet's
    # score by a few 1e-3 to 1e-2 (3 epochs: 5 of 161,248 jets above 1e-4, at most 4e-3;
    # 6 epochs: 1, 1.2e-2); what must hold is that such jets stay rare and the rest agree.
    assert check["above_1e-4"] <= check["jets"] * 1e-4
    assert check["max_abs"] < 0.05
    assert check["mean_abs"] < 1e-6
    # Version 2 is the better tagger on the same held-out jets, beyond the uncertainties.
    assert v2["test"]["auc"] - v1["test"]["auc"] > 3 * np.hypot(v1["test"]["auc_error"],
                                                                v2["test"]["auc_error"])
    assert v2["test"]["rejection_at_30"] > v1["test"]["rejection_at_30"]
    for name in ("roc.png", "scores.png", "training.png"):
        assert (TAGGER / name).stat().st_size > 10_000


# ------------------------------------------------------------------ version policies
def _versions(repo: Path, name: str, versions: tuple[int, ...], policy: str = "") -> Path:
    tm.export_onnx_mlp(repo, name, extra=policy)
    folder = repo / name
    for version in versions:
        if version != 1:
            (folder / str(version)).mkdir()
            (folder / str(version) / "model.onnx").write_bytes(
                (folder / "1" / "model.onnx").read_bytes())
    return folder


def test_served_versions_follow_tritons_policies(tmp_path):
    cases = {
        "default": ("", [3]),
        "latest_two": ("version_policy: { latest: { num_versions: 2 } }", [2, 3]),
        "all": ("version_policy: { all: {} }", [1, 2, 3]),
        "specific": ("version_policy: { specific: { versions: [1, 3] } }", [1, 3]),
    }
    for name, (policy, expected) in cases.items():
        folder = _versions(tmp_path, name, (1, 2, 3), policy)
        assert served_versions(folder) == expected, name
        assert default_version(folder) == str(expected[-1]), name
    # load_in_process with no version loads what a request naming none gets
    folder = tmp_path / "specific"
    (folder / "3" / "model.onnx").unlink()  # now only version 1 has an artifact under [1, 3]
    (folder / "3").rmdir()
    assert default_version(folder) == "1"
    runner = load_in_process(folder)
    x = np.ones((2, tm.N_FEATURES), np.float32)
    assert runner.run({"x": x})["y"].shape == (2, tm.N_OUT)


def test_repo_check_reads_version_policies(tmp_path):
    _versions(tmp_path, "missing", (1, 2), "version_policy: { specific: { versions: [1, 2, 5] } }")
    _versions(tmp_path, "unserved", (1, 2, 3), "version_policy: { specific: { versions: [2, 3] } }")
    variant = _versions(tmp_path, "variant", (1, 2), "version_policy: { all: {} }")
    (variant / "configs").mkdir()
    gpu = read_config(variant)
    gpu.ClearField("version_policy")  # a variant that forgot config.pbtxt's policy
    model_config.write(variant / "configs" / "gpu.pbtxt", gpu)
    report = {m.name: m for m in check_repository(tmp_path).models}
    assert any("lists version(s) 5 with no folder" in e for e in report["missing"].errors)
    assert report["unserved"].ok
    assert report["unserved"].served == ["2", "3"]
    assert any("version folder(s) 1 are not served" in w for w in report["unserved"].warnings)
    assert any("serves version(s) 2, config.pbtxt 1, 2" in e and "configs/gpu.pbtxt" in e
               for e in report["variant"].errors)


def test_config_writers_carry_the_version_policy(tmp_path):
    from offload_training.export import Tensor, config_pbtxt
    from offload_training.targets import GPU, variant_config

    text = config_pbtxt("m", "onnxruntime", 32, [Tensor("x", "TYPE_FP32", [4])],
                        [Tensor("y", "TYPE_FP32", [1])], versions=[2, 1])
    assert list(model_config.parse(text).version_policy.specific.versions) == [1, 2]
    plain = config_pbtxt("m", "onnxruntime", 32, [Tensor("x", "TYPE_FP32", [4])],
                         [Tensor("y", "TYPE_FP32", [1])])
    assert not model_config.parse(plain).HasField("version_policy")  # Triton's default
    # a variant serves what config.pbtxt serves
    folder = _versions(tmp_path, "jet_tagger", (1, 2),
                       "version_policy: { specific: { versions: [1, 2] } }")
    variant = variant_config(folder, GPU["jet_tagger"])
    assert list(variant.version_policy.specific.versions) == [1, 2]


def test_model_cost_times_each_version_on_one_thread(tmp_path):
    """`python -m offload_perf.model_cost`: each served version, timed in-process with one
    thread on the validation sample's jets, per batch size; written with the machine."""
    from offload_perf import model_cost

    assert model_cost.main(["--repository", str(REPOSITORY), "--batches", "1,3",
                            "--seconds", "0.05", "--output", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "model_cost.json").read_text())
    assert record["model"] == "jet_tagger"
    assert int(record["machine"]["cores"]) >= 1
    assert [(r["version"], r["batch"]) for r in record["rows"]] == \
        [("1", 1), ("1", 3), ("2", 1), ("2", 3)]
    for row in record["rows"]:
        assert row["repeats"] >= 5
        assert 0 < row["wall_us_per_row"] <= row["median_wall_us_per_row"]
        assert row["cpu_us_per_row"] > 0
    # version 2 is the costlier network (per row, at batch 1, in the thread's CPU time)
    cpu = {(r["version"], r["batch"]): r["cpu_us_per_row"] for r in record["rows"]}
    assert cpu[("2", 1)] > cpu[("1", 1)]
    assert model_cost.main(["--repository", str(tmp_path), "--output", str(tmp_path)]) == 1


# ------------------------------------------------------------------ the QUICK pipeline
@pytest.mark.slow
def test_quick_two_version_pipeline_and_a_rebuild_of_version_2_alone(tmp_path):
    from offload_training.tagger.pipeline import build

    first = build(tmp_path, quick=True, ceiling=True)
    folder = tmp_path / "jet_tagger"
    assert first["quick"]
    assert first["versions_served"] == [1, 2]
    assert served_versions(folder) == served_versions(folder, "gpu") == [1, 2]
    report = check_repository(tmp_path)
    assert report.ok, {m.name: m.errors for m in report.models}
    check = first["versions"]["2"]["export_check"]
    assert check["jets"] == first["test"]["top"] + first["test"]["qcd"]
    assert check["jets"] > 0
    assert check["max_abs"] < 1e-4
    card = (folder / "model_card.md").read_text()
    assert "QUICK smoke run" in card
    assert "version 2 (default)" in card
    # the generator-level study: its own (shorter) training, its test figures in the card
    study = first["versions"]["2"]["ceiling"]
    assert 0.0 <= study["generator_level"]["auc"] <= 1.0
    assert "generator-level constituents" in card
    assert f"{study['generator_level']['auc']:.4f}" in card
    v1_bytes = (folder / "1" / "model.onnx").read_bytes()
    v1_training = first["versions"]["1"]["training"]

    again = build(tmp_path, quick=True, versions=(2,), seed=1)  # version 1 is kept
    assert "ceiling" not in again["versions"]["2"]  # another seed: the study is not its own
    assert (folder / "1" / "model.onnx").read_bytes() == v1_bytes
    assert again["versions"]["1"]["training"] == v1_training
    assert again["versions"]["2"]["training"]["settings"]["seed"] == 1
    assert json.loads((folder / "metrics.json").read_text())["versions"]["2"]["training"][
        "settings"]["seed"] == 1
    assert check_repository(tmp_path).ok
