"""ROOT files to scores: offload.physics (awkward input, PFNano link table), `offload apply`
(serial and on a real Dask LocalCluster), offload.dask, and the Batcher's acquire/produce
mode, against the real embedded server with the repository's jet models.

The PFNano files are written here with uproot from the tagger's validation jets, grouped
into events (some without jets), with unlinked candidates, candidates and link table
shuffled within each event, and one jet of 150 candidates.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from helpers import closed_address

import offload
from offload.physics import jets as pj
from offload.physics import pfnano

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("jet_tagger", "jet_energy_regression")
OFFLOAD = [sys.executable, "-m", "offload.cli"]
JETS_PER_EVENT = (2, 0, 3, 1, 2, 2, 0, 1)  # cycled: events without jets included
# pdgIds written independently of offload.physics.jets (type, charge sign -> id)
PDG = {0: (211, -211), 1: (-11, 11), 2: (-13, 13), 3: (22, 22), 4: (130, 130)}


# ---------------------------------------------------------------------------- test data
def validation_jets(n: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-jet candidate rows (pt, eta, phi, mass, charge, ptype) and jets (pt, eta, phi,
    mass) from the tagger's validation sample, plus one jet of 150 candidates."""
    with np.load(ROOT / "model_repository/jet_tagger/validation.npz") as data:
        constituents, jets = data["constituents"], data["reco_jet"].astype(np.float32)
    if n is not None:
        constituents, jets = constituents[:n], jets[:n]
    per_jet = []
    for row in constituents:
        real = row[row[:, 0] > 0].astype(np.float64)
        pt, eta, phi, energy, charge, ptype = real.T
        mass = np.sqrt(np.maximum(energy**2 - (pt * np.cosh(eta)) ** 2, 0.0))
        per_jet.append(np.stack([pt, eta, phi, mass, charge, ptype], 1).astype(np.float32))
    # A jet of 150 candidates: the first jet's, and softer copies slightly moved.
    base = per_jet[0]
    extra = np.repeat(base, int(np.ceil(150 / len(base))), axis=0)[: 150 - len(base)].copy()
    extra[:, 0] *= 0.01
    extra[:, 1] += 0.01
    per_jet[0] = np.concatenate([base, extra])
    return per_jet, jets


def numpy_constituents(per_jet: list[np.ndarray]) -> np.ndarray:
    """The numpy path: energy from (pt, eta, mass), then pad_constituents."""
    rows = []
    for c in per_jet:
        pt, eta, phi, mass, charge, ptype = c.astype(np.float64).T
        energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
        rows.append(np.stack([pt, eta, phi, energy, charge, ptype], 1).astype(np.float32))
    return pj.pad_constituents(rows)


def pfnano_events(per_jet: list[np.ndarray], jets: np.ndarray, seed: int = 0,
                  bad_pdg: int | None = None) -> dict[str, ak.Array]:
    """PFNano branches (jagged per event), candidates and links shuffled per event."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {}
    next_jet, k = 0, 0
    while next_jet < len(jets):
        n = min(JETS_PER_EVENT[k % len(JETS_PER_EVENT)], len(jets) - next_jet)
        k += 1
        mine = range(next_jet, next_jet + n)
        next_jet += n
        cands = [per_jet[j] for j in mine]
        noise = np.column_stack([rng.uniform(1, 3, 4), rng.uniform(-2, 2, 4),
                                 rng.uniform(-3, 3, 4), np.zeros(4), np.zeros(4),
                                 np.full(4, 3.0)]).astype(np.float32)  # unlinked photons
        everything = np.concatenate([*cands, noise]) if cands else noise
        owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(cands)]
                               + [np.full(len(noise), -1)]).astype(np.int32)
        order = rng.permutation(len(everything))  # candidates in any order
        everything, owner = everything[order], owner[order]
        linked = np.flatnonzero(owner >= 0)
        links = rng.permutation(linked)  # the link table in any order
        pdg = np.array([PDG[int(t)][0 if q >= 0 else 1] for t, q in
                        zip(everything[:, 5], everything[:, 4], strict=True)], np.int32)
        if bad_pdg is not None and k == 3:
            pdg[linked[0]] = bad_pdg
        for name, value in (
                ("FatJet_pt", jets[mine.start:mine.stop, 0]),
                ("FatJet_eta", jets[mine.start:mine.stop, 1]),
                ("FatJet_phi", jets[mine.start:mine.stop, 2]),
                ("FatJet_mass", jets[mine.start:mine.stop, 3]),
                ("PFCands_pt", everything[:, 0]), ("PFCands_eta", everything[:, 1]),
                ("PFCands_phi", everything[:, 2]), ("PFCands_mass", everything[:, 3]),
                ("PFCands_charge", everything[:, 4]), ("PFCands_pdgId", pdg),
                ("FatJetPFCands_jetIdx", owner[links]),
                ("FatJetPFCands_pFCandsIdx", links.astype(np.int32))):
            columns.setdefault(name, []).append(value)
    return {name: ak.Array(values) for name, values in columns.items()}


def write_pfnano(path: Path, events: dict[str, ak.Array], tree: str = "Events") -> Path:
    """A NanoAOD-style TTree (counters nFatJet, nPFCands, nFatJetPFCands) with uproot."""
    groups: dict[str, dict[str, ak.Array]] = {}
    for name, values in events.items():
        collection, field = name.split("_", 1)
        groups.setdefault(collection, {})[field] = values
    arrays = {collection: ak.zip(fields) for collection, fields in groups.items()}
    with uproot.recreate(path) as file:
        file.mktree(tree, {k: v.type.content for k, v in arrays.items()}).extend(arrays)
    return path


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def jet_server():
    from offload_server import LocalServer

    with LocalServer(ROOT / "model_repository", models=list(MODELS)) as server:
        yield server


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    """Two PFNano files (600 and 400 jets) and their jets, for the whole module."""
    folder = tmp_path_factory.mktemp("pfnano")
    per_jet, jets = validation_jets(1000)
    files = []
    for name, part, seed in (("a.root", slice(0, 600), 1), ("b.root", slice(600, 1000), 2)):
        events = pfnano_events(per_jet[part], jets[part], seed=seed)
        files.append(write_pfnano(folder / name, events))
    return {"files": files, "per_jet": per_jet, "jets": jets, "folder": folder}


@pytest.fixture(scope="module")
def reference(jet_server, sample) -> dict[str, np.ndarray]:
    """The numpy path on the same jets, through the client: what apply must write."""
    constituents = numpy_constituents(sample["per_jet"])
    with offload.Client(jet_server.grpc_url) as client:
        tagger, regression = (client.model(m) for m in MODELS)
        return {
            "top_probability": tagger.infer(pj.tagger_inputs(constituents, sample["jets"]))[
                "top_probability"][:, 0],
            "pt_correction": regression.infer(pj.regression_inputs(
                constituents, sample["jets"]))["pt_correction"][:, 0]}


def run_apply(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*OFFLOAD, "apply", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def read_output(path: Path) -> ak.Array:
    with uproot.open(path) as file:
        return file["Events"].arrays()


def assert_matches(outputs: list[Path], sample: dict, reference: dict) -> None:
    """Each output is aligned with its input's FatJet collection, and the per-jet values
    are the numpy path's."""
    values: dict[str, list] = {"top_probability": [], "pt_correction": []}
    for output, source in zip(outputs, sample["files"], strict=True):
        got = read_output(output)
        with uproot.open(source) as file:
            n_fatjet = file["Events"]["nFatJet"].array(library="np")
        np.testing.assert_array_equal(ak.to_numpy(got["nFatJet"]), n_fatjet)
        np.testing.assert_array_equal(ak.to_numpy(ak.num(got["FatJet_top_probability"])),
                                      n_fatjet)
        for name in values:
            values[name].append(ak.to_numpy(ak.flatten(got[f"FatJet_{name}"])))
    for name, expected in reference.items():
        np.testing.assert_allclose(np.concatenate(values[name]), expected, rtol=1e-5,
                                   atol=1e-6)


# ---------------------------------------------------------------------------- physics
def test_pdg_id_mapping_is_one_definition_and_refuses_unknown_ids():
    ptypes = np.array([0, 0, 1, 1, 2, 2, 3, 4])
    charges = np.array([1, -1, -1, 1, -1, 1, 0, 0])
    ids = pj.pdg_ids_from_ptypes(ptypes, charges)
    assert ids.tolist() == [211, -211, 11, -11, 13, -13, 22, 130]
    assert pj.ptypes_from_pdg_ids(ids).tolist() == ptypes.tolist()
    assert pj.ptypes_from_pdg_ids([1, 2]).tolist() == [pj.NEUTRAL_HADRON, pj.PHOTON]  # HF
    with pytest.raises(offload.InvalidInputError,
                       match=r"unknown particle-flow candidate pdgId 321 \(2x\), 2212 \(1x\)"):
        pj.ptypes_from_pdg_ids([211, 321, 2212, 321])
    # the training pipeline's detector uses the same type codes
    from offload_training.jets import detector

    assert (detector.CHARGED_HADRON, detector.PHOTON) == (pj.CHARGED_HADRON, pj.PHOTON)
    assert tuple(n.replace("_", " ") for n in pj.PTYPES) == detector.PTYPE_NAMES


def test_awkward_records_give_the_numpy_inputs():
    per_jet, jets = validation_jets(50)
    records = ak.Array([{"pt": c[:, 0], "eta": c[:, 1], "phi": c[:, 2], "mass": c[:, 3],
                         "charge": c[:, 4],
                         "pdgId": [PDG[int(t)][0 if q >= 0 else 1]
                                   for t, q in zip(c[:, 5], c[:, 4], strict=True)]}
                        for c in per_jet])
    candidates = ak.zip({f: records[f] for f in pj.CANDIDATE_FIELDS})
    jet_records = ak.zip({f: jets[:, i] for i, f in enumerate(pj.JET_FIELDS)})
    expected = numpy_constituents(per_jet)
    np.testing.assert_array_equal(pj.constituents_from_candidates(candidates), expected)
    assert len(per_jet[0]) == 150
    assert np.all(expected[0, :, 0] > 0)
    np.testing.assert_allclose(expected[0, 0, 0], per_jet[0][:, 0].max(), rtol=1e-6)
    for name, fn in pj.MODEL_INPUTS.items():
        got, want = fn(candidates, jet_records), fn(expected, jets)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name} {key}")
    with pytest.raises(offload.InvalidInputError, match=r"lack the field\(s\) \['pdgId'\]"):
        pj.tagger_inputs(ak.zip({f: records[f] for f in pj.CANDIDATE_FIELDS[:-1]}),
                         jet_records)
    with pytest.raises(offload.InvalidInputError, match="flatten the event axis"):
        pj.tagger_inputs(ak.unflatten(candidates, [25, 25]), jet_records)


def test_pfnano_link_table_in_any_order_gives_the_same_jets():
    per_jet, jets = validation_jets(60)
    gathered = [pfnano.gather(pfnano_events(per_jet, jets, seed=s)) for s in (3, 4)]
    assert gathered[0].jets_per_event.tolist()[:8] == list(JETS_PER_EVENT)
    for g in gathered:
        np.testing.assert_array_equal(g.jets, jets)
        np.testing.assert_array_equal(g.constituents(), numpy_constituents(per_jet))
        assert g.truncated == 1
        assert g.candidates_per_jet[0] == 150
    records = gathered[0].candidate_records()
    assert ak.num(records).tolist() == [len(c) for c in per_jet]


def test_pfnano_bad_links_and_ids_are_refused_with_the_entry():
    per_jet, jets = validation_jets(20)
    events = pfnano_events(per_jet, jets)
    broken = dict(events)
    idx = ak.to_list(events["FatJetPFCands_pFCandsIdx"])
    idx[2][0] = 10_000
    broken["FatJetPFCands_pFCandsIdx"] = ak.Array(idx)
    with pytest.raises(offload.InvalidInputError,
                       match=r"entry 102: the link table .* points at candidate 10000"):
        pfnano.gather(broken, first_entry=100)
    twice = dict(events)
    jet_idx = ak.to_list(events["FatJetPFCands_jetIdx"])
    cand_idx = ak.to_list(events["FatJetPFCands_pFCandsIdx"])
    jet_idx[0].append(jet_idx[0][0])
    cand_idx[0].append(cand_idx[0][0])
    twice["FatJetPFCands_jetIdx"], twice["FatJetPFCands_pFCandsIdx"] = (
        ak.Array(jet_idx), ak.Array(cand_idx))
    with pytest.raises(offload.InvalidInputError, match=r"lists candidate .* twice for jet"):
        pfnano.gather(twice)
    with pytest.raises(offload.InvalidInputError,
                       match=r"entries 0-\d+: unknown particle-flow candidate pdgId 321"):
        pfnano.gather(pfnano_events(per_jet, jets, bad_pdg=321))


# ---------------------------------------------------------------------------- offload apply
def test_apply_serial_writes_friend_trees_with_the_numpy_paths_scores(jet_server, sample,
                                                                     reference, tmp_path):
    out = tmp_path / "out"
    result = run_apply(*map(str, sample["files"]), "--server", jet_server.grpc_url,
                       "--output", str(out), "--step-size", "37")
    assert result.returncode == 0, result.stderr
    assert "2 file(s) written" in result.stdout
    assert "1000 jets" in result.stdout
    assert "1 jet(s) had more than 128 candidates" in result.stdout
    assert "Traceback" not in result.stderr
    outputs = [out / "a.root", out / "b.root"]
    assert sorted(p.name for p in out.iterdir()) == ["a.root", "b.root"]  # no leftovers
    assert_matches(outputs, sample, reference)
    with uproot.open(outputs[0]) as file:
        assert file["Events"].keys() == ["nFatJet", "FatJet_top_probability",
                                         "FatJet_pt_correction"]
        assert '"models": ["jet_energy_regression", "jet_tagger"]' in str(
            file["offload_provenance"])
        # events without fat jets have empty entries
        assert 0 in ak.to_numpy(file["Events"]["nFatJet"].array())
    # A rerun finds both outputs complete and rewrites nothing.
    stamps = [p.stat().st_mtime_ns for p in outputs]
    again = run_apply(*map(str, sample["files"]), "--server", jet_server.grpc_url,
                      "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert "0 file(s) written, 2 already complete" in again.stdout
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
    # Other models into the same folder: refused, the output left alone.
    other = run_apply(str(sample["files"][0]), "--server", jet_server.grpc_url,
                      "--output", str(out), "--models", "jet_tagger")
    assert other.returncode == 1
    assert "exists and it was made from" in other.stderr
    assert "differs in models" in other.stderr
    assert outputs[0].stat().st_mtime_ns == stamps[0]


@pytest.mark.slow
def test_apply_on_two_dask_workers_equals_serial(jet_server, sample, reference, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    for out, extra in ((serial, []), (parallel, ["--workers", "2"])):
        result = run_apply(*map(str, sample["files"]), "--server", jet_server.grpc_url,
                           "--output", str(out), "--step-size", "29", *extra)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    for name in ("a.root", "b.root"):
        a, b = read_output(serial / name), read_output(parallel / name)
        assert a.fields == b.fields
        for field in a.fields:
            # the same jets in the same requests; the server may batch requests differently
            # (float32 rounding at most)
            assert ak.all(ak.num(a[field], axis=-1) == ak.num(b[field], axis=-1)) \
                if a[field].ndim > 1 else ak.all(a[field] == b[field])
            np.testing.assert_allclose(ak.to_numpy(ak.flatten(a[field], axis=None)),
                                       ak.to_numpy(ak.flatten(b[field], axis=None)),
                                       rtol=1e-6, atol=1e-7)
    assert_matches([parallel / "a.root", parallel / "b.root"], sample, reference)


def test_bad_input_fails_clearly_and_leaves_no_output(jet_server, sample, tmp_path):
    server = jet_server.grpc_url
    good = str(sample["files"][0])
    per_jet, jets = validation_jets(40)
    not_root = tmp_path / "notes.root"
    not_root.write_text("these are not events\n")
    other_tree = write_pfnano(tmp_path / "other_tree.root", pfnano_events(per_jet, jets),
                              tree="Jets")
    no_links = {k: v for k, v in pfnano_events(per_jet, jets).items()
                if not k.startswith("FatJetPFCands")}
    missing = write_pfnano(tmp_path / "missing.root", no_links)
    unknown_id = write_pfnano(tmp_path / "unknown_id.root",
                              pfnano_events(per_jet, jets, bad_pdg=2212))
    cases = [
        ([str(tmp_path / "absent.root")], [], "absent.root: no such file"),
        ([str(not_root)], [], "notes.root: not a ROOT file"),
        ([str(other_tree)], [], "no tree 'Events' (trees: Jets; choose one with --tree)"),
        ([str(missing)], [], "lacks the PFNano branch(es) FatJetPFCands_jetIdx, "
                             "FatJetPFCands_pFCandsIdx"),
        ([str(unknown_id)], ["--step-size", "7"], "unknown_id.root: entries 0-6: unknown "
                                                   "particle-flow candidate pdgId 2212"),
        ([good], ["--models", "calo_shower_generator"], "it cannot feed calo_shower_generator"),
        ([good], ["--models", "nope"], "it cannot feed nope"),
        ([good], ["--step-size", "lots"], "--step-size takes a number of entries"),
        ([good, str(sample["folder"] / "a.root")], [], "inputs with the same file name"),
    ]
    for inputs, extra, message in cases:
        out = tmp_path / "out"
        result = run_apply(*inputs, "--server", server, "--output", str(out), *extra)
        assert result.returncode == 1, (inputs, result.stdout, result.stderr)
        assert message in result.stderr, (message, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    # the tree option reaches the other tree
    ok = run_apply(str(other_tree), "--server", server, "--output", str(tmp_path / "t"),
                   "--tree", "Jets")
    assert ok.returncode == 0, ok.stderr
    assert read_output_tree(tmp_path / "t" / "other_tree.root", "Jets") == len(
        pfnano.gather(pfnano_events(per_jet, jets)).jets_per_event)
    started = time.monotonic()
    closed = closed_address()
    result = run_apply(good, "--server", closed, "--output", str(tmp_path / "u"),
                       "--timeout", "5")
    assert result.returncode == 1
    assert f"cannot reach the server at {closed}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "u").exists()
    assert time.monotonic() - started < 90


def read_output_tree(path: Path, tree: str) -> int:
    with uproot.open(path) as file:
        return file[tree].num_entries


@pytest.mark.slow
@pytest.mark.usefixtures("sample")
def test_server_stopped_mid_run_leaves_only_complete_outputs_and_a_rerun_finishes(tmp_path):
    from offload_server import LocalServer

    per_jet, jets = validation_jets()
    inputs = [write_pfnano(tmp_path / f"part{k}.root",
                           pfnano_events(per_jet[k * 250:(k + 1) * 250],
                                         jets[k * 250:(k + 1) * 250], seed=k))
              for k in range(4)]
    out = tmp_path / "out"
    server = LocalServer(ROOT / "model_repository", models=list(MODELS)).start()
    try:
        process = subprocess.Popen(
            [*OFFLOAD, "apply", *map(str, inputs), "--server", server.grpc_url,
             "--output", str(out), "--step-size", "5", "--timeout", "10"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while not (out / "part0.root").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.02)
        server.stop()  # mid-run: the first file is done, the others are not
        stdout, stderr = process.communicate(timeout=180)
    finally:
        server.stop()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, (stdout, stderr)
    assert "offload apply: error: " in stderr
    assert "Traceback" not in stderr
    assert "part" in stderr
    assert "entries" in stderr
    left = sorted(p.name for p in out.iterdir())
    assert "part0.root" in left
    assert "part3.root" not in left
    assert not [name for name in left if name.startswith(".")], left  # no partial files
    for name in left:  # what is there is complete
        assert read_output_tree(out / name, "Events") == read_output_tree(
            tmp_path / name, "Events")
    # A rerun against a new server skips what is complete and finishes the rest.
    with LocalServer(ROOT / "model_repository", models=list(MODELS)) as again:
        result = run_apply(*map(str, inputs), "--server", again.grpc_url, "--output",
                           str(out))
    assert result.returncode == 0, result.stderr
    assert f"{4 - len(left)} file(s) written, {len(left)} already complete" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in inputs]


# ---------------------------------------------------------------------------- Dask
@pytest.fixture
def cluster():
    """A real LocalCluster: 2 worker processes, 1 thread each, stopped by the test."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None, host="127.0.0.1") as running, \
            Client(running) as client:
        yield running, client


@pytest.mark.slow
def test_dask_awkward_example_on_a_local_cluster(jet_server, sample, reference, cluster):
    spec = importlib.util.spec_from_file_location("dask_jets", ROOT / "examples/dask_jets.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    import dask

    scores, n_tagged = example.top_candidates([str(f) for f in sample["files"]],
                                              jet_server.grpc_url, step_size=53)
    assert scores.npartitions > 4
    scores, n_tagged = dask.compute(scores, n_tagged)
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(scores.top_probability)),
                               reference["top_probability"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(scores.pt_correction)),
                               reference["pt_correction"], rtol=1e-5, atol=1e-6)
    assert len(n_tagged) == len(scores)
    assert int(np.sum(n_tagged)) > 0
    # the tasks ran on the workers, each with its own cached client
    client = cluster[1]
    pids = client.run(os.getpid)
    assert len(pids) == 2
    assert os.getpid() not in pids.values()


@pytest.mark.slow
def test_apply_fails_clearly_when_a_dask_worker_dies(jet_server, sample, cluster, tmp_path):
    from offload.apply import ApplyError, Settings, apply_files, model_outputs

    running, client = cluster
    servers = (jet_server.grpc_url,)
    settings = Settings(servers, MODELS, model_outputs(servers, MODELS, {}))
    pids = list(client.run(os.getpid).values())
    failure: list[BaseException] = []

    def work() -> None:
        try:
            apply_files(sample["files"], tmp_path / "out", settings, step=2,
                        scheduler=running.scheduler_address)
        except BaseException as error:  # handed to the test thread
            failure.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(2)
    for pid in pids:  # the workers die (the scheduler allows no retry)
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive()
    assert failure
    assert isinstance(failure[0], ApplyError), failure
    assert "a Dask worker died while running it" in str(failure[0])
    out = tmp_path / "out"
    for name in (p.name for p in out.iterdir()):  # complete outputs only, no partials
        assert not name.startswith(".")
        assert read_output_tree(out / name, "Events") == read_output_tree(
            sample["folder"] / name, "Events")


# ---------------------------------------------------------------------------- Batcher
def test_single_threaded_event_loop_batches_across_events(jet_server, sample, reference):
    """Acquire/produce: one submit per event, results collected later; requests carry many
    events' jets, and each event gets exactly its own jets' results."""
    constituents = numpy_constituents(sample["per_jet"])
    jets = sample["jets"]
    with offload.Client(jet_server.grpc_url) as client:
        models = [client.model(m) for m in MODELS]
        before = [m.stats().requests for m in models]
        batcher = offload.Batcher(
            models, max_delay=None, max_batch_size=256,
            prepare=lambda raw: pj.inputs_for(MODELS, raw["constituents"], raw["jets"]))
        pending, results, start = [], [], 0
        with batcher:
            for k in range(400):  # events of 1-3 jets
                n = 1 + k % 3
                rows = slice(start, start + n)
                start += n
                pending.append((rows, batcher.submit(constituents=constituents[rows],
                                                     jets=jets[rows])))
                if len(pending) > 64:
                    rows, future = pending.pop(0)
                    results.append((rows, future.result()))
            results += [(rows, future.result()) for rows, future in pending]
        sent = [m.stats().requests - b for m, b in zip(models, before, strict=True)]
    for rows, result in results:
        np.testing.assert_allclose(result["jet_tagger"]["top_probability"][:, 0],
                                   reference["top_probability"][rows], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result["jet_energy_regression"]["pt_correction"][:, 0],
                                   reference["pt_correction"][rows], rtol=1e-5, atol=1e-6)
    # 800 jets: a few hundred-jet batches, split into the tagger's max_batch_size requests
    assert sent[0] <= 800 / models[0].max_batch_size + 8, sent
    assert sent[1] <= 8, sent


def test_batcher_errors_reach_every_call_of_the_batch(jet_server):
    with offload.Client(jet_server.grpc_url) as client:
        tagger = client.model("jet_tagger")
        batcher = offload.Batcher(tagger, max_delay=None,
                                  prepare=lambda raw: {"points": raw["x"]})
        futures = [batcher.submit(x=np.zeros((1, 128, 2), np.float32)) for _ in range(3)]
        with pytest.raises(offload.InvalidInputError, match="features"):
            futures[-1].result(timeout=30)
        assert all(isinstance(f.exception(timeout=5), offload.InvalidInputError)
                   for f in futures)
        with pytest.raises(offload.InvalidInputError, match="share their first dimension"):
            batcher.submit(x=np.zeros((2, 1)), y=np.zeros((3, 1)))
        batcher.close()
        with pytest.raises(offload.OffloadError, match="closed"):
            batcher.submit(x=np.zeros((1, 128, 2), np.float32))


# ---------------------------------------------------------------------------- make data
@pytest.mark.slow
def test_sample_file_from_the_event_pipeline(jet_server, tmp_path):
    """`make data`'s writer (Pythia + detector + FastJet), small: a PFNano layout that
    `offload apply` reads, pdgIds the models know, links inside their events."""
    from offload_training.jets.pfnano_sample import write_sample

    path = tmp_path / "pfnano_sample.root"
    counts = write_sample(path, 60, progress=False)
    assert counts["events"] == 60
    assert counts["jets"] > 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pfnano_sample.root"]
    with uproot.open(path) as file:
        events = file["Events"].arrays()
    assert set(pfnano.BRANCHES) <= set(events.fields)
    pj.ptypes_from_pdg_ids(ak.flatten(events.PFCands_pdgId))  # every id is known
    assert ak.all(events.FatJetPFCands_pFCandsIdx < ak.num(events.PFCands_pt))
    assert ak.all(events.FatJetPFCands_jetIdx < ak.num(events.FatJet_pt))
    assert ak.all(ak.sort(events.FatJet_pt, ascending=False) == events.FatJet_pt)
    assert ak.all(events.FatJet_pt > 200)
    gathered = pfnano.gather(events)
    # a jet's candidates carry (close to) its momentum: the constituents' pt sum
    flat = gathered.candidates
    starts = np.concatenate([[0], np.cumsum(gathered.candidates_per_jet)[:-1]])
    px = np.add.reduceat(flat["pt"] * np.cos(flat["phi"]), starts)
    py = np.add.reduceat(flat["pt"] * np.sin(flat["phi"]), starts)
    np.testing.assert_allclose(np.hypot(px, py), gathered.jets[:, 0], rtol=0.02)
    result = run_apply(str(path), "--server", jet_server.grpc_url, "--output",
                       str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    scores = read_output(tmp_path / "out" / "pfnano_sample.root")
    assert ak.all(ak.num(scores.FatJet_top_probability) == ak.num(events.FatJet_pt))
    probabilities = ak.to_numpy(ak.flatten(scores.FatJet_top_probability))
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    is_top = ak.to_numpy(ak.flatten(events.FatJet_isTop)).astype(bool)
    assert is_top.any()
    assert (~is_top).any()
