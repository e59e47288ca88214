"""`jet_tagger`: train its versions, export them to ONNX side by side, measure them on the
same held-out jets, write the config that serves both, the metrics and the model card.

- version 1 (:mod:`.version1`): the compact tagger on the first 60,000 jets per sample;
- version 2 (:mod:`.version2`): the ParticleNet tagger on the version-2 jets (:mod:`.data`).

Both take the same inputs (`offload.physics.jets.tagger_inputs`) and give the same output,
and `config.pbtxt` serves both (`version_policy: { specific: { versions: [1, 2] } }`); a
request that names no version gets version 2, the highest. Both are measured on version 2's
test split, which neither trained on (version 1's jets are the first rows of version 2's
samples, split by the same event numbers).

`offload train --model jet_tagger` builds both; `--version 2` only version 2, keeping the
exported version 1 and its training record.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from offload_training import jet_samples
from offload_training.export import (
    BATCHES,
    configure_by_measurement,
    one_thread_cost,
    write_json,
)
from offload_training.metrics import tagging_metrics, tagging_metrics_with_errors
from offload_training.tagger import data, version1, version2
from offload_training.tagger.interface import INPUTS, NAME, OUTPUTS

__all__ = ["INPUTS", "NAME", "OUTPUTS", "build"]

#: The versions config.pbtxt serves; the highest is what a request naming none gets.
VERSIONS = (1, 2)
#: Jets kept in the committed validation sample (it must stay under 2 MB).
VALIDATION_JETS = 1000
QUICK_BATCHES = (1, 2, 4, 8, 16, 32, 64)
#: Batch sizes measured for max_batch_size: at most 256. Version 2's onnxruntime session
#: holds ~2.5 MB per row at large batches (its edge tensors: 64 constituents × 8 neighbours
#: × 64 channels), so 4096 rows (what the throughput rule picked on the loaded machine) took
#: ~10 GB per session and ran the training process out of memory; 256 rows is ~0.6 GB.
TAGGER_BATCHES = tuple(b for b in BATCHES if b <= 256)


def build(repository: Path, *, quick: bool = False, workers: int | None = None,
          seed: int = 0, versions: Sequence[int] = VERSIONS, ceiling: bool = False) -> dict:
    """Train the chosen versions (the others are taken as exported before), export into
    `repository/jet_tagger/<version>/model.onnx`, and write the config, metrics, plots,
    validation sample and model card of all of them. Returns the metrics.

    `ceiling`: also train version 2's network on the generator-level constituents of the
    same jets (:func:`.version2.ceiling`), a study recorded in the card. Otherwise an earlier
    study is kept if version 2's network and training settings are still the same."""
    started = time.perf_counter()
    unknown = sorted(set(versions) - set(VERSIONS))
    if unknown:
        raise ValueError(f"jet_tagger has versions {VERSIONS}, not {unknown}")
    model_dir = repository / NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    records = _previous_records(model_dir)
    if 1 in versions:
        print("== jet_tagger version 1", flush=True)
        records["1"], _, _ = version1.build(model_dir / "1" / "model.onnx", quick=quick,
                                            workers=workers, seed=seed)
    print("== jet_tagger version 2 data", flush=True)
    jets = data.load(quick=quick, workers=workers, truth=ceiling,
                     keep=jet_samples.tagging_window)
    test = jets.part("test")
    model2 = None
    if 2 in versions:
        print("== jet_tagger version 2", flush=True)
        records["2"], model2 = version2.build(model_dir / "2" / "model.onnx", jets,
                                              quick=quick, seed=seed)
    missing = [str(v) for v in VERSIONS if not (model_dir / str(v) / "model.onnx").is_file()
               or str(v) not in records]
    if missing:
        raise RuntimeError(f"{model_dir}: version(s) {', '.join(missing)} not built yet (no "
                           "model.onnx or no record in metrics.json): build them first")
    records["2"]["data"]["generation"] = data.generation_records(quick)
    if ceiling:
        print("== jet_tagger version 2's network on generator-level constituents", flush=True)
        records["2"]["ceiling"] = version2.ceiling(jets, quick=quick, seed=seed)
    elif model2 is not None:
        earlier = records["2"].get("ceiling") or _previous_records(model_dir).get(
            "2", {}).get("ceiling")
        if earlier and _same(earlier["architecture"],
                             records["2"]["architecture_parameters"]) \
                and _same(earlier["settings"], version2.ceiling_settings(quick, seed).as_dict()):
            records["2"]["ceiling"] = earlier
    jets.gen_constituents = None  # not needed further

    print("== jet_tagger: config, evaluation, cost", flush=True)
    test_inputs = version2.inputs(test.constituents, test.reco_jet)
    _, timings, max_batch = configure_by_measurement(
        model_dir, "onnxruntime", INPUTS, OUTPUTS, test_inputs, versions=VERSIONS,
        batches=QUICK_BATCHES if quick else TAGGER_BATCHES, min_seconds=0.05 if quick else 0.3)
    from offload_server.backends import load_in_process

    runners = {str(v): load_in_process(model_dir, v) for v in VERSIONS}
    scores = {v: _run(runner, test_inputs, max_batch) for v, runner in runners.items()}
    validation = test.select(_balanced(test.is_top, VALIDATION_JETS, seed))
    jet_samples.save_sample(model_dir / "validation.npz", validation, "constituents",
                            "reco_jet", "is_top")
    validation_inputs = version2.inputs(validation.constituents, validation.reco_jet)
    sample_rows = {k: v[:4096] for k, v in test_inputs.items()}
    for version, runner in runners.items():
        record = records[version]
        record["test"] = tagging_metrics_with_errors(test.is_top, scores[version],
                                                     resamples=20 if quick else 200, seed=seed)
        record["validation_sample"] = tagging_metrics(
            validation.is_top, _run(runner, validation_inputs, max_batch))
        record["artifact_bytes"] = (model_dir / version / "model.onnx").stat().st_size
        record["cost"] = [c.as_dict() for c in one_thread_cost(
            model_dir, version, sample_rows, (1, max_batch), 0.2 if quick else 2.0)]
    del runners  # their sessions' memory (onnxruntime keeps its arenas while loaded)
    if model2 is not None:  # the export against torch, on every test jet
        records["2"]["export_check"] = version2.compare_with_torch(model2, test_inputs,
                                                                   scores["2"])
    metrics = {
        "model": NAME,
        "quick": quick,
        "versions_served": list(VERSIONS),
        "default_version": max(VERSIONS),
        "test": {"description": "version 2's test split: events 8-9 (mod 10) of the tt̄ and "
                                "QCD samples, and all of the test-only QCD sample",
                 "selection": "reco jet pt in [500, 650] GeV, |eta| < 2",
                 "top": int(test.is_top.sum()), "qcd": int((test.is_top == 0).sum())},
        "versions": {v: records[v] for v in sorted(records, key=int)},
        "export": {"max_batch_size": max_batch, "timed_version": max(VERSIONS),
                   "timings": [{"batch": t.batch, "ms_per_batch": t.seconds_per_batch * 1e3}
                               for t in timings]},
        "machine": {"host": platform.node(), "processor": platform.processor() or "unknown",
                    "cores": _cores(), "torch_threads": torch.get_num_threads()},
        "seconds_total": time.perf_counter() - started,
    }
    write_json(model_dir / "metrics.json", metrics)
    from offload_training.tagger import card  # imported when used: a training of an hour
    # writes the card as its code is when the training ends
    card.write(model_dir, metrics, timings, test.is_top, scores)
    return metrics


def _run(runner, inputs: dict[str, np.ndarray], batch: int) -> np.ndarray:
    """Scores of the served artifact, as the server's runner computes them, in batches."""
    n = len(inputs["mask"])
    return np.concatenate(
        [runner.run({k: v[i:i + batch] for k, v in inputs.items()})["top_probability"][:, 0]
         for i in range(0, n, batch)] or [np.zeros(0, np.float32)])


def _previous_records(model_dir: Path) -> dict[str, dict]:
    """The versions' records of an earlier build (metrics.json), to keep the versions not
    rebuilt now. A metrics.json from before version 2 is version 1's record."""
    path = model_dir / "metrics.json"
    if not path.is_file():
        return {}
    recorded = json.loads(path.read_text())
    if "versions" in recorded:
        return {v: r for v, r in recorded["versions"].items() if (model_dir / v).is_dir()}
    if not (model_dir / "1").is_dir():
        return {}
    return {"1": {"architecture": "one EdgeConv block (k = 12 nearest neighbours in (Δη, Δφ), "
                                  "MLP 26→32→32 on (x_i, x_j − x_i), mean over neighbours, "
                                  "linear shortcut), a per-particle layer 32→64, a masked "
                                  "mean over particles, a 64→64→1 head; 64 constituents",
                  "data": recorded["data"] | {"samples": {
                      s: {"jets": jet_samples.FULL_JETS, "seed": seed}
                      for s, seed in jet_samples.SEEDS.items()}},
                  "training": recorded["training"] | {"batch_size": 256, "threads": 2,
                                                      "optimizer": "AdamW, one-cycle, max "
                                                                   "lr 3e-3"},
                  "own_test_split": recorded["test"]}}


def _same(a: object, b: object) -> bool:
    """Equal as stored in metrics.json (tuples become lists)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def _cores() -> int:
    from offload_training.jets.dataset import default_workers

    return default_workers()


def _balanced(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of up to n/2 signal and n/2 background entries, fixed by the seed."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == value))[: n // 2] for value in (1, 0)]
    return np.sort(np.concatenate(chosen))
