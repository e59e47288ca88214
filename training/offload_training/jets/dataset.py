"""The jet data set: generation in parallel chunks, and its on-disk cache.

One sample (``"ttbar"`` or ``"qcd"``) is a dict of numpy arrays, one row per jet:

==================  ======================  ==================================================
key                 dtype, shape            meaning
==================  ======================  ==================================================
``constituents``    float32 [n, 128, 6]     (pt [GeV], eta, phi, energy [GeV], charge, ptype)
                                            of the reco jet's constituents, pt descending,
                                            zero-padded (pt = 0), truncated at 128
``n_constituents``  int16 [n]               constituents before truncation
``reco_jet``        float32 [n, 4]          (pt, eta, phi, mass) of the reco jet
``gen_jet``         float32 [n, 4]          same for the matched generator-level jet
``is_top``          int8 [n]                1 for the tt̄ sample, 0 for QCD
``event``           int64 [n]               event number within the sample (split by event)
==================  ======================  ==================================================

With ``truth=True`` (:func:`generate`, :func:`load_or_generate`) two more keys hold the
matched generator-level jet's own constituents, the stable visible particles FastJet put in
it, in the same layout: ``gen_constituents`` float32 [n, 128, 6] (pt, eta, phi, energy,
charge, ptype, with ptype from the PDG id: :func:`generator_ptypes`) and
``n_gen_constituents`` int16 [n]. They cost no random numbers, so the other keys are the
same with or without them; a model trained on them shows what the detector model costs.

φ is in (−π, π]; ptype is 0 charged hadron, 1 electron, 2 muon, 3 photon, 4 neutral hadron
(see :mod:`.detector`).

Selection: anti-kT R = 0.8 reco jets (from :mod:`.detector` objects) with pT > 400 GeV and
|η| < 2.0, matched to the closest generator-level jet (stable visible particles) within
ΔR < 0.4, unmatched ones dropped. tt̄: only jets within ΔR < 0.8 of a hadronically decaying
top whose b and both W-daughter quarks all lie within ΔR < 0.8 of the jet axis.

Reproducibility: events come in chunks of ``events_per_chunk``; chunk ``k`` gets its own
Pythia and detector random streams derived from ``(seed, sample, k)``, and chunks are
concatenated in order of ``k`` until ``n_jets`` jets are collected. The result therefore
depends on (sample, n_jets, seed, events_per_chunk) only, never on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import time
from pathlib import Path

import numpy as np

from . import detector, pythia
from .clustering import cluster, delta_r, kinematics
from .pythia import pseudorapidity

VERSION = "v1"  # bump when anything changes what a given (sample, n_jets, seed) produces

MAX_CONSTITUENTS = 128
N_FEATURES = 6  # pt, eta, phi, energy, charge, ptype
RECO_JET_PT_MIN = 400.0  # GeV
RECO_JET_ETA_MAX = 2.0
GEN_JET_PT_MIN = 100.0  # GeV; gen jets considered for the match
GEN_MATCH_DR = 0.4
TOP_MATCH_DR = 0.8  # jet–top and jet–(b, q, q̄') distance for a contained top
EVENTS_PER_CHUNK = 500  # ~4 s of one core; Pythia's initialisation costs ~0.25 s of it
EVENTS_PER_BATCH = 100  # events read out and clustered at a time inside a chunk

SAMPLE_KEYS = {"ttbar": 1, "qcd": 2}  # so that the two samples never share random streams

FIELDS: dict[str, tuple[type, tuple[int, ...]]] = {
    "constituents": (np.float32, (MAX_CONSTITUENTS, N_FEATURES)),
    "n_constituents": (np.int16, ()),
    "reco_jet": (np.float32, (4,)),
    "gen_jet": (np.float32, (4,)),
    "is_top": (np.int8, ()),
    "event": (np.int64, ()),
}


#: The generator-level constituents of the matched gen jet (``truth=True``).
TRUTH_FIELDS: dict[str, tuple[type, tuple[int, ...]]] = {
    "gen_constituents": (np.float32, (MAX_CONSTITUENTS, N_FEATURES)),
    "n_gen_constituents": (np.int16, ()),
}


def fields(truth: bool = False) -> dict[str, tuple[type, tuple[int, ...]]]:
    """The keys of a data set (with the generator-level constituents if `truth`)."""
    return {**FIELDS, **TRUTH_FIELDS} if truth else dict(FIELDS)


def empty(n_jets: int = 0, truth: bool = False) -> dict[str, np.ndarray]:
    """A zero-filled data set of `n_jets` rows in the exact output format."""
    return {key: np.zeros((n_jets, *shape), dtype=dtype)
            for key, (dtype, shape) in fields(truth).items()}


def generator_ptypes(pid: np.ndarray, charge: np.ndarray) -> np.ndarray:
    """Constituent type of generator-level particles, as an ideal particle flow would call
    them: charged ones by their PDG id (electron, muon, else charged hadron), neutral ones
    photon or neutral hadron."""
    abs_id = np.abs(pid)
    ptype = np.where(charge != 0, detector.CHARGED_HADRON, detector.NEUTRAL_HADRON)
    ptype = np.where((charge != 0) & (abs_id == 11), detector.ELECTRON, ptype)
    ptype = np.where((charge != 0) & (abs_id == 13), detector.MUON, ptype)
    ptype = np.where((charge == 0) & (abs_id == 22), detector.PHOTON, ptype)
    return ptype.astype(np.int8)


def chunk_seeds(sample: str, seed: int, chunk: int) -> tuple[int, np.random.Generator]:
    """The Pythia seed and the detector's random generator of one chunk."""
    key = (SAMPLE_KEYS[sample], chunk)
    pythia_seed = int(np.random.SeedSequence(seed, spawn_key=(*key, 0)).generate_state(1)[0])
    pythia_seed = pythia_seed % pythia.PYTHIA_SEED_MAX + 1
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(*key, 1)))
    return pythia_seed, rng


def run_chunk(sample: str, seed: int, chunk: int, events_per_chunk: int = EVENTS_PER_CHUNK,
              truth: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """Generate, simulate and select the jets of chunk `chunk`; also the number of events."""
    pythia_seed, rng = chunk_seeds(sample, seed, chunk)
    generator = pythia.make_pythia(sample, pythia_seed)
    parts = []
    requested = generated = 0
    while requested < events_per_chunk:
        n = min(EVENTS_PER_BATCH, events_per_chunk - requested)
        batch = pythia.generate_batch(generator, n)  # fewer if Pythia failed an event
        first_event = chunk * events_per_chunk + requested
        parts.append(select_jets(batch, rng, sample, first_event, truth))
        requested += n
        generated += batch.n_events
    return {key: np.concatenate([p[key] for p in parts]) for key in fields(truth)}, generated


def select_jets(batch: pythia.EventBatch, rng: np.random.Generator, sample: str,
                first_event: int, truth: bool = False) -> dict[str, np.ndarray]:
    """Detector simulation, jets, matching and the output rows of one batch of events."""
    reco = detector.simulate(batch.visible, rng)
    reco_jets = cluster(reco.px, reco.py, reco.pz, reco.e, reco.offsets, RECO_JET_PT_MIN)
    candidates = []  # (event, jet index, reco kinematics)
    for k, jets in enumerate(reco_jets):
        kin = kinematics(jets.p4)
        candidates += [(k, j, kin[j]) for j in np.flatnonzero(np.abs(kin[:, 1]) < RECO_JET_ETA_MAX)]
    if not candidates:
        return empty(truth=truth)

    # Generator-level jets, only in the events that have a candidate.
    events = sorted({k for k, _, _ in candidates})
    visible = batch.visible
    subset = visible.take_events(np.array(events))
    gen_jets = dict(zip(events, cluster(subset.px, subset.py, subset.pz, subset.e,
                                        subset.offsets, GEN_JET_PT_MIN), strict=True))
    gen_first = dict(zip(events, subset.offsets[:-1], strict=True))  # k -> its first particle
    tops = batch.tops

    rows = []
    for k, j, kin in candidates:
        gen = kinematics(gen_jets[k].p4)
        if len(gen) == 0:
            continue
        dr = delta_r(kin[1], kin[2], gen[:, 1], gen[:, 2])
        best = int(np.argmin(dr))
        if dr[best] >= GEN_MATCH_DR:
            continue
        if sample == "ttbar" and not _contains_top(kin, tops, k):
            continue
        rows.append((k, j, kin, gen[best], best))

    out = empty(len(rows), truth)
    if truth:
        gen_pt = np.hypot(subset.px, subset.py)
        gen_columns = np.stack([gen_pt, pseudorapidity(subset.px, subset.py, subset.pz),
                                np.arctan2(subset.py, subset.px), subset.e, subset.charge,
                                generator_ptypes(subset.pid, subset.charge)], axis=1)
    for r, (k, j, kin, gen, best) in enumerate(rows):
        index = reco.offsets[k] + reco_jets[k].constituents[j]
        order = np.argsort(-reco.pt[index], kind="stable")[:MAX_CONSTITUENTS]
        index = index[order]
        out["constituents"][r, : len(index)] = np.stack(
            [reco.pt[index], reco.eta[index], reco.phi[index], reco.e[index],
             reco.charge[index], reco.ptype[index]], axis=1)
        out["n_constituents"][r] = len(reco_jets[k].constituents[j])
        out["reco_jet"][r] = kin
        out["gen_jet"][r] = gen
        out["event"][r] = first_event + k
        if truth:
            index = gen_first[k] + gen_jets[k].constituents[best]
            order = np.argsort(-gen_pt[index], kind="stable")[:MAX_CONSTITUENTS]
            out["gen_constituents"][r, : len(order)] = gen_columns[index[order]]
            out["n_gen_constituents"][r] = len(index)
    out["is_top"][:] = 1 if sample == "ttbar" else 0
    return out


def _contains_top(jet: np.ndarray, tops: pythia.TopQuarks, event: int) -> bool:
    """Whether a hadronic top of the event and its b, q, q̄' all lie within ΔR < 0.8."""
    mine = tops.event == event
    if not mine.any():
        return False
    near = np.ones(int(mine.sum()), dtype=bool)
    for direction in (tops.top, tops.b, tops.q1, tops.q2):
        near &= delta_r(jet[1], jet[2], direction[mine, 0], direction[mine, 1]) < TOP_MATCH_DR
    return bool(near.any())


def _run_chunk_task(args: tuple[str, int, int, int, bool]
                    ) -> tuple[int, dict[str, np.ndarray], int]:
    sample, seed, chunk, events_per_chunk, truth = args
    data, n_events = run_chunk(sample, seed, chunk, events_per_chunk, truth)
    return chunk, data, n_events


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def generate(sample: str, n_jets: int, *, seed: int = 0, workers: int | None = None,
             events_per_chunk: int | None = None, progress: bool = True,
             stats: dict | None = None, truth: bool = False) -> dict[str, np.ndarray]:
    """Generate `n_jets` jets of `sample` (``"ttbar"`` or ``"qcd"``), see the module doc
    (`truth`: with the generator-level constituents).

    `workers` processes (default: the CPUs this process may use; 0 or 1 = in this process)
    each run whole chunks. The result depends on (sample, n_jets, seed, events_per_chunk)
    only (`events_per_chunk` defaults to :data:`EVENTS_PER_CHUNK`). If `stats` is given it
    receives ``n_events``, ``n_chunks`` and ``wall_s``."""
    if sample not in pythia.SAMPLES:
        raise ValueError(f"unknown sample {sample!r}; expected one of {sorted(pythia.SAMPLES)}")
    events_per_chunk = EVENTS_PER_CHUNK if events_per_chunk is None else events_per_chunk
    if n_jets < 0 or events_per_chunk < 1:
        raise ValueError("n_jets must be ≥ 0 and events_per_chunk ≥ 1")
    workers = default_workers() if workers is None else workers
    start = time.perf_counter()
    out = empty(n_jets, truth)
    filled = 0
    n_events = 0
    n_chunks = 0

    def take(data: dict[str, np.ndarray], events: int) -> None:
        nonlocal filled, n_events, n_chunks
        n = min(len(data["event"]), n_jets - filled)
        for key in out:
            out[key][filled:filled + n] = data[key][:n]
        filled += n
        n_events += events
        n_chunks += 1

    from tqdm.auto import tqdm

    with tqdm(total=n_jets, unit="jet", desc=f"{sample} jets", disable=not progress,
              smoothing=0.05) as bar:
        if workers <= 1:
            chunk = 0
            while filled < n_jets:
                data, events = run_chunk(sample, seed, chunk, events_per_chunk, truth)
                before = filled
                take(data, events)
                bar.update(filled - before)
                chunk += 1
        else:
            _generate_parallel(sample, seed, n_jets, workers, events_per_chunk, take,
                               lambda: filled, bar, truth)
    if stats is not None:
        stats.update(n_events=n_events, n_chunks=n_chunks, wall_s=time.perf_counter() - start)
    return out


def _generate_parallel(sample, seed, n_jets, workers, events_per_chunk, take, filled, bar,
                       truth=False):
    """Keep 2 chunks per worker in flight (and at most 4 per worker ahead of the output),
    consume the results strictly in chunk order, and stop the workers once enough jets
    are in (chunks still running then are thrown away)."""
    # spawn: no fork of a process that may hold threads (tqdm's monitor, BLAS, torch).
    context = multiprocessing.get_context("spawn")
    results: queue.Queue = queue.Queue()
    finished: dict[int, tuple[dict[str, np.ndarray], int]] = {}
    in_flight = 0
    next_chunk = 0  # next to submit
    next_taken = 0  # next to append to the output
    shown = 0  # jets shown on the bar (counted as chunks finish, in any order)
    pool = context.Pool(workers)
    try:
        while filled() < n_jets:
            while in_flight < 2 * workers and next_chunk - next_taken < 4 * workers:
                pool.apply_async(_run_chunk_task,
                                 ((sample, seed, next_chunk, events_per_chunk, truth),),
                                 callback=results.put, error_callback=results.put)
                next_chunk += 1
                in_flight += 1
            result = results.get()
            in_flight -= 1
            if isinstance(result, BaseException):
                raise RuntimeError(f"generating {sample} jets failed in a worker") from result
            chunk, data, events = result
            finished[chunk] = (data, events)
            step = min(len(data["event"]), n_jets - shown)
            bar.update(step)
            shown += step
            while next_taken in finished and filled() < n_jets:
                take(*finished.pop(next_taken))
                next_taken += 1
    finally:
        pool.terminate()
        pool.join()
    if shown < n_jets:  # chunks finished out of order may have been under-counted
        bar.update(n_jets - shown)


def cache_path(sample: str, n_jets: int, seed: int = 0, truth: bool = False) -> Path:
    from offload_training.paths import data_dir

    suffix = "-truth" if truth else ""
    return data_dir() / "jets" / f"{sample}-{n_jets}-{seed}-{VERSION}{suffix}.npz"


def _larger_cache(sample: str, n_jets: int, seed: int, truth: bool) -> Path | None:
    """The smallest other cached data set of the same sample, seed and version with as many
    jets or more (and the generator-level constituents if `truth`), made with the default
    chunk size: its first `n_jets` rows are the data set asked for, since chunk k depends
    only on (seed, sample, k) and chunks are concatenated in order."""
    folder = cache_path(sample, n_jets, seed).parent
    found = []
    for path in folder.glob(f"{sample}-*-{seed}-{VERSION}*.npz"):
        parts = path.stem.split("-")
        if len(parts) not in (4, 5) or not parts[1].isdigit() or \
                (len(parts) == 5 and parts[4] != "truth") or (truth and len(parts) == 4):
            continue
        record = path.with_suffix(".json")
        if not record.is_file() or \
                json.loads(record.read_text()).get("events_per_chunk") != EVENTS_PER_CHUNK:
            continue
        if int(parts[1]) >= n_jets and path != cache_path(sample, n_jets, seed, truth):
            found.append((int(parts[1]), path))
    return min(found)[1] if found else None


def load_or_generate(sample: str, n_jets: int, *, seed: int = 0, workers: int | None = None,
                     truth: bool = False, keys: tuple[str, ...] | None = None
                     ) -> dict[str, np.ndarray]:
    """The data set from the cache (:func:`cache_path`), or the first rows of a larger cached
    one of the same seed, generating and saving it if neither exists (`truth`: with the
    generator-level constituents; `keys`: only these keys are returned).

    Beside the ``.npz`` a ``.json`` records how it was made (events, time, settings)."""
    path = cache_path(sample, n_jets, seed, truth)
    wanted = tuple(fields(truth)) if keys is None else keys
    if path.exists():
        with np.load(path) as stored:
            return {key: stored[key] for key in wanted}
    larger = _larger_cache(sample, n_jets, seed, truth)
    if larger is not None:  # the same jets are its first rows (see the module doc)
        with np.load(larger) as stored:
            return {key: stored[key][:n_jets] for key in wanted}
    stats: dict = {}
    data = generate(sample, n_jets, seed=seed, workers=workers, stats=stats, truth=truth)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with Path(partial).open("wb") as f:
        np.savez_compressed(f, **data)
    partial.replace(path)
    record = {
        "sample": sample, "n_jets": n_jets, "seed": seed, "version": VERSION, "truth": truth,
        "workers": workers if workers is not None else default_workers(),
        "events_per_chunk": EVENTS_PER_CHUNK, **stats,
        "jets_per_s": n_jets / stats["wall_s"] if stats["wall_s"] > 0 else None,
        "pythia": [*pythia.COMMON_SETTINGS, *pythia.SAMPLES[sample]],
        "detector": {name: getattr(detector, name) for name in dir(detector)
                     if name.isupper() and isinstance(getattr(detector, name), (int, float))},
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return {key: data[key] for key in wanted}
