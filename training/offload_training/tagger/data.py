"""The jets of `jet_tagger` version 2: the version-1 samples, longer, and a large test sample.

Version 1 learnt from the first 60,000 jets (pt > 400 GeV) of each Pythia sample
(:mod:`offload_training.jet_samples`). Version 2 takes the same two samples further —
the same seeds, so version 1's jets are their first 60,000 rows (the data set's chunks
depend only on the seed and the chunk number) — and one more QCD sample, with its own seed,
that is all test data:

=========  ======  ========  ============================  ================================
sample     seed    jets      in the tagging window          split
=========  ======  ========  ============================  ================================
tt̄         1       390,000   ~150,000 (38.6 %)              by event: 70 / 10 / 20 %
QCD        2       470,000   ~150,000 (31.9 %)              by event: 70 / 10 / 20 %
QCD        3       320,000   ~102,000                      all test
=========  ======  ========  ============================  ================================

The split by event number (modulo 10: 0–6 train, 7 validation, 8–9 test) is version 1's, so
every jet version 1 trained or chose its epoch on is a training or validation jet here too:
the test jets are held out from both versions, and both are measured on them. A background
rejection near 1000 at ε_S = 0.3 leaves a few tens of QCD jets above the cut in the split's
~30,000; the third sample adds ~100,000 QCD jets so that the rejection's statistical
uncertainty is ~10 % (background is what the rejection counts; ~30,000 top jets fix ε_S).

Every sample is generated with the generator-level constituents as well (``truth=True``):
the same network trained on them shows how much the detector model costs.

    python -m offload_training.tagger.data [--quick] [--workers N]   # generate or check

prints, per sample, the jets, events and generation time recorded beside the cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np

from offload_training.jet_samples import JetSample
from offload_training.jets.dataset import cache_path, load_or_generate


@dataclass(frozen=True)
class Sample:
    sample: str  # "ttbar" or "qcd"
    jets: int  # jets with pt > 400 GeV generated
    seed: int
    test_only: bool = False


SAMPLES = (Sample("ttbar", 390_000, 1), Sample("qcd", 470_000, 2),
           Sample("qcd", 320_000, 3, test_only=True))
QUICK_SAMPLES = (Sample("ttbar", 400, 1), Sample("qcd", 400, 2),
                 Sample("qcd", 300, 3, test_only=True))
#: Distinct event numbers per sample (events are numbered within a sample).
_EVENT_OFFSET = 1 << 40


def samples(quick: bool = False) -> tuple[Sample, ...]:
    return QUICK_SAMPLES if quick else SAMPLES


def load(*, quick: bool = False, workers: int | None = None, truth: bool = True,
         keep=None) -> JetSample:
    """All version-2 jets (generated once, then cached), with their split labels.

    `keep(sample_arrays) -> mask` selects jets as each sample is read (the tagging window),
    so that the full samples are never held in memory together. `truth`: also the
    generator-level constituents (`JetSample.gen_constituents`)."""
    parts = []
    keys = ("constituents", "reco_jet", "gen_jet", "is_top", "event",
            *(("gen_constituents",) if truth else ()))
    for number, spec in enumerate(samples(quick)):
        arrays = load_or_generate(spec.sample, spec.jets, seed=spec.seed, workers=workers,
                                  truth=True, keys=keys)
        mask = np.ones(len(arrays["event"]), bool) if keep is None else keep(arrays)
        arrays = {key: value[mask] for key, value in arrays.items()}
        if spec.test_only:
            split = np.full(len(arrays["event"]), "test")
        else:
            bucket = arrays["event"] % 10
            split = np.where(bucket <= 6, "train", np.where(bucket == 7, "validation", "test"))
        arrays["event"] = arrays["event"].astype(np.int64) + number * _EVENT_OFFSET
        parts.append((arrays, split))
        del arrays
    joined = {key: np.concatenate([a[key] for a, _ in parts]) for key in keys}
    return JetSample(
        constituents=joined["constituents"], reco_jet=joined["reco_jet"],
        gen_jet=joined["gen_jet"], is_top=joined["is_top"].astype(np.int8),
        split=np.concatenate([s for _, s in parts]),
        gen_constituents=joined.get("gen_constituents"), event=joined["event"])


def generation_records(quick: bool = False) -> list[dict]:
    """What the cache recorded about each sample's generation (jets, events, wall time,
    workers), for the model card; samples not generated yet are missing."""
    records = []
    for spec in samples(quick):
        path = cache_path(spec.sample, spec.jets, spec.seed, truth=True).with_suffix(".json")
        if path.is_file():
            record = json.loads(path.read_text())
            records.append({key: record.get(key) for key in
                            ("sample", "n_jets", "seed", "n_events", "wall_s", "workers",
                             "jets_per_s", "truth")} | {"test_only": spec.test_only})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smoke run's small samples")
    parser.add_argument("--workers", type=int, default=None,
                        help="generation processes (default: one per core); the result does "
                             "not depend on it")
    args = parser.parse_args(argv)
    for spec in samples(args.quick):
        data = load_or_generate(spec.sample, spec.jets, seed=spec.seed, workers=args.workers,
                                truth=True, keys=("event",))
        print(f"{spec.sample} seed {spec.seed}: {len(data['event'])} jets -> "
              f"{cache_path(spec.sample, spec.jets, spec.seed, truth=True)}", flush=True)
    for record in generation_records(args.quick):
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
