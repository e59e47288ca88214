"""The jet data set (offload_training.jets): real Pythia, small samples.

Format and layout of the arrays, reproducibility independent of the worker count, physics
sanity of the jets, and the detector model's behaviour on hand-made particles."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from offload_training.jets import dataset, detector
from offload_training.jets.clustering import (
    cluster,
    cluster_pseudojets,
    delta_r,
    kinematics,
)
from offload_training.jets.pythia import Particles, generate_batch, make_pythia

N_JETS = 200
SMALL_CHUNK = 100  # events per chunk in these tests (the default is larger)


@pytest.fixture(scope="module")
def ttbar() -> dict[str, np.ndarray]:
    return dataset.generate("ttbar", N_JETS, seed=11, workers=1,
                            events_per_chunk=SMALL_CHUNK, progress=False)


@pytest.fixture(scope="module")
def qcd() -> dict[str, np.ndarray]:
    return dataset.generate("qcd", N_JETS, seed=12, workers=1,
                            events_per_chunk=SMALL_CHUNK, progress=False)


@pytest.fixture(params=["ttbar", "qcd"])
def sample(request: pytest.FixtureRequest, ttbar, qcd) -> dict[str, np.ndarray]:
    return {"ttbar": ttbar, "qcd": qcd}[request.param]


# --- format -----------------------------------------------------------------------------

def test_format_dtypes_and_shapes(sample: dict[str, np.ndarray]) -> None:
    expected = {
        "constituents": (np.float32, (N_JETS, 128, 6)),
        "n_constituents": (np.int16, (N_JETS,)),
        "reco_jet": (np.float32, (N_JETS, 4)),
        "gen_jet": (np.float32, (N_JETS, 4)),
        "is_top": (np.int8, (N_JETS,)),
        "event": (np.int64, (N_JETS,)),
    }
    assert set(sample) == set(expected)
    for key, (dtype, shape) in expected.items():
        assert sample[key].dtype == dtype, key
        assert sample[key].shape == shape, key
    assert np.all(np.diff(sample["event"]) >= 0)  # chunks in order, events in order


def test_is_top_labels(ttbar, qcd) -> None:
    assert np.all(ttbar["is_top"] == 1)
    assert np.all(qcd["is_top"] == 0)


def test_padding_and_truncation(sample: dict[str, np.ndarray]) -> None:
    constituents, n = sample["constituents"], sample["n_constituents"].astype(int)
    real = constituents[..., 0] > 0
    assert np.all(n > 0)
    assert np.array_equal(real.sum(axis=1), np.minimum(n, 128))
    # Real constituents first, then padding that is zero in every column.
    assert np.array_equal(real, np.arange(128)[None, :] < np.minimum(n, 128)[:, None])
    assert np.all(constituents[~real] == 0)


def test_constituents_sorted_by_pt(sample: dict[str, np.ndarray]) -> None:
    pt = sample["constituents"][..., 0]
    assert np.all(np.diff(pt, axis=1) <= 0)


def test_columns_ranges(sample: dict[str, np.ndarray]) -> None:
    constituents = sample["constituents"]
    real = constituents[..., 0] > 0
    eta, phi, energy, charge, ptype = (constituents[..., c][real] for c in range(1, 6))
    for angle in (phi, sample["reco_jet"][:, 2], sample["gen_jet"][:, 2]):
        assert np.all((angle > -np.pi) & (angle <= np.pi))
    assert np.all(np.abs(eta) < 3.1)
    assert np.all(energy >= constituents[..., 0][real] * 0.999)  # E ≥ pT
    assert set(np.unique(ptype)) <= {0, 1, 2, 3, 4}
    assert set(np.unique(charge)) <= {-1, 0, 1}
    # Only tracks carry charge: calorimeter objects are neutral, tracks charged.
    assert np.all((charge != 0) == (ptype <= detector.MUON))


def test_jet_selection(sample: dict[str, np.ndarray]) -> None:
    reco, gen = sample["reco_jet"], sample["gen_jet"]
    assert np.all(reco[:, 0] > dataset.RECO_JET_PT_MIN)
    assert np.all(np.abs(reco[:, 1]) < dataset.RECO_JET_ETA_MAX)
    assert np.all(delta_r(reco[:, 1], reco[:, 2], gen[:, 1], gen[:, 2]) < dataset.GEN_MATCH_DR)
    assert np.all(reco[:, 3] >= 0)
    assert np.all(gen[:, 3] >= 0)


def test_constituents_add_up_to_the_jet(sample: dict[str, np.ndarray]) -> None:
    complete = sample["n_constituents"] <= 128
    c = sample["constituents"][complete].astype(np.float64)
    pt, eta, phi, energy = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    p4 = np.stack([(pt * np.cos(phi)).sum(1), (pt * np.sin(phi)).sum(1),
                   (pt * np.sinh(eta)).sum(1), energy.sum(1)], axis=1)
    summed = kinematics(p4)
    reco = sample["reco_jet"][complete]
    np.testing.assert_allclose(summed[:, 0], reco[:, 0], rtol=1e-4)
    np.testing.assert_allclose(summed[:, 3], reco[:, 3], rtol=1e-3, atol=0.05)


# --- reproducibility --------------------------------------------------------------------

def test_reproducible_and_independent_of_workers() -> None:
    kwargs = {"seed": 3, "events_per_chunk": 20, "progress": False}
    serial = dataset.generate("qcd", 60, workers=1, **kwargs)
    parallel = dataset.generate("qcd", 60, workers=2, **kwargs)
    assert len(np.unique(serial["event"] // 20)) >= 2  # spans several chunks
    for key in serial:
        np.testing.assert_array_equal(serial[key], parallel[key], err_msg=key)
    other = dataset.generate("qcd", 60, workers=1, **{**kwargs, "seed": 4})
    assert not np.array_equal(other["reco_jet"], serial["reco_jet"])


def test_load_or_generate_caches(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_DATA", str(tmp_path))
    monkeypatch.setattr(dataset, "EVENTS_PER_CHUNK", 20)
    path = dataset.cache_path("qcd", 10, seed=5)
    assert path == tmp_path / "jets" / f"qcd-10-5-{dataset.VERSION}.npz"
    first = dataset.load_or_generate("qcd", 10, seed=5, workers=1)
    assert path.exists()
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["n_jets"] == 10
    assert record["n_events"] >= 5

    def refuse(*_args, **_kwargs):
        raise AssertionError("generated again although cached")

    monkeypatch.setattr(dataset, "generate", refuse)
    again = dataset.load_or_generate("qcd", 10, seed=5)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        assert again[key].dtype == first[key].dtype


def test_unknown_sample() -> None:
    with pytest.raises(ValueError, match="unknown sample"):
        dataset.generate("zprime", 1)


# --- physics sanity ---------------------------------------------------------------------

def test_top_jet_mass(ttbar, qcd) -> None:
    top_mass = np.median(ttbar["reco_jet"][:, 3])
    qcd_mass = np.median(qcd["reco_jet"][:, 3])
    assert 150 < top_mass < 200
    assert qcd_mass < 110


def test_energy_response(sample: dict[str, np.ndarray]) -> None:
    response = sample["reco_jet"][:, 0] / sample["gen_jet"][:, 0]
    assert 0.85 < np.median(response) < 1.0
    assert 0.002 < np.std(response) < 0.2  # smeared, but not wildly


def test_all_constituent_types_present(ttbar, qcd) -> None:
    types = np.concatenate([s["constituents"][..., 5][s["constituents"][..., 0] > 0]
                            for s in (ttbar, qcd)])
    counts = np.bincount(types.astype(int), minlength=5)
    assert np.all(counts > 0), dict(zip(detector.PTYPE_NAMES, counts, strict=True))
    # Charged hadrons and photons dominate, as in real jets.
    assert counts[detector.CHARGED_HADRON] > counts[detector.NEUTRAL_HADRON]
    assert counts[detector.PHOTON] > counts[detector.NEUTRAL_HADRON]


def test_multiplicity(ttbar, qcd) -> None:
    # Three-prong top jets have more constituents than (mostly one-prong) QCD jets.
    assert 20 < qcd["n_constituents"].mean() < ttbar["n_constituents"].mean() < 128


# --- clustering and truth ----------------------------------------------------------------

def test_vectorised_clustering_equals_pseudojets() -> None:
    batch = generate_batch(make_pythia("qcd", 77), 4)
    v = batch.visible
    jets = cluster(v.px, v.py, v.pz, v.e, v.offsets, 20.0)
    assert len(jets) == 4
    for k in range(4):
        lo, hi = v.offsets[k], v.offsets[k + 1]
        reference = cluster_pseudojets(v.px[lo:hi], v.py[lo:hi], v.pz[lo:hi], v.e[lo:hi], 20.0)
        order = np.argsort(-kinematics(jets[k].p4)[:, 0])
        assert len(jets[k]) == len(reference) > 0
        np.testing.assert_allclose(jets[k].p4[order], reference.p4, rtol=1e-9)
        for j, ref in zip(order, reference.constituents, strict=True):
            np.testing.assert_array_equal(np.sort(jets[k].constituents[j]), ref)


def test_hadronic_tops_found() -> None:
    batch = generate_batch(make_pythia("ttbar", 78), 10)
    per_event = np.bincount(batch.tops.event, minlength=batch.n_events)
    assert np.all(per_event == 2)  # t and t̄, both hadronic (W → q q̄')
    # The decay products are near the top's direction.
    near = delta_r(batch.tops.top[:, 0], batch.tops.top[:, 1],
                   batch.tops.b[:, 0], batch.tops.b[:, 1])
    assert np.median(near) < 1.0


# --- the detector model on hand-made particles ----------------------------------------------

MASSES = {211: 0.13957, 2112: 0.93957, 22: 0.0, 11: 0.000511, 13: 0.10566, 14: 0.0}
CHARGES = {211: 1.0, 2112: 0.0, 22: 0.0, 11: -1.0, 13: -1.0, 14: 0.0}


def particles(pid: int, pt: float, eta: float, n: int = 1) -> Particles:
    """`n` identical particles, each in its own event, at φ = 0.3."""
    mass = MASSES[pid]
    px, py, pz = pt * np.cos(0.3), pt * np.sin(0.3), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    full = np.full
    return Particles(full(n, px), full(n, py), full(n, pz), full(n, e), full(n, mass),
                     full(n, pid), full(n, CHARGES[pid]), np.arange(n + 1))


def simulate(pid: int, pt: float, eta: float, n: int = 1, seed: int = 0):
    return detector.simulate(particles(pid, pt, eta, n), np.random.default_rng(seed))


def test_tracks_and_identification() -> None:
    for pid, ptype in ((211, detector.CHARGED_HADRON), (11, detector.ELECTRON),
                       (13, detector.MUON)):
        reco = simulate(pid, 20.0, 0.5, n=200)
        tracked = reco.charge != 0
        assert np.all(reco.ptype[tracked] == ptype)
        assert tracked.mean() > 0.85
        np.testing.assert_allclose(reco.eta[tracked], 0.5)  # tracks keep their direction
        np.testing.assert_allclose(reco.phi[tracked], 0.3)


def test_track_pt_threshold() -> None:
    soft = simulate(211, 0.4, 0.0, n=100)  # untracked; E ≈ 0.42 GeV < HCAL threshold
    assert len(soft.pt) == 0
    hard = simulate(211, 0.6, 0.0, n=100)
    assert np.all(hard.ptype == detector.CHARGED_HADRON)


def test_track_efficiency_within_binomial_tolerance() -> None:
    n = 20000
    reco = simulate(211, 10.0, 0.0, n=n, seed=1)
    assert len(reco.pt) == n  # a lost track still reaches the HCAL (10 GeV > threshold)
    tracked = (reco.ptype == detector.CHARGED_HADRON).mean()
    sigma = np.sqrt(detector.TRACK_EFFICIENCY * (1 - detector.TRACK_EFFICIENCY) / n)
    assert abs(tracked - detector.TRACK_EFFICIENCY) < 4 * sigma
    lost = reco.ptype == detector.NEUTRAL_HADRON
    assert np.all(reco.charge[lost] == 0)
    assert lost.sum() + (reco.ptype == detector.CHARGED_HADRON).sum() == n


def test_track_resolution() -> None:
    reco = simulate(211, 100.0, 0.0, n=20000, seed=2)
    ratio = reco.pt[reco.ptype == detector.CHARGED_HADRON] / 100.0
    expected = np.hypot(detector.TRACK_RESOLUTION_CURVATURE * 100,
                        detector.TRACK_RESOLUTION_CONSTANT)
    assert abs(np.mean(ratio) - 1) < 5e-4
    assert abs(np.std(ratio) / expected - 1) < 0.05


def test_acceptance() -> None:
    # Outside the tracker but inside the calorimeters: a charged pion becomes a neutral
    # hadron, an electron a photon; a muon without a track is lost.
    forward_pion = simulate(211, 10.0, 2.7, n=50)
    assert len(forward_pion.pt) == 50
    assert np.all(forward_pion.ptype == detector.NEUTRAL_HADRON)
    assert np.all(forward_pion.charge == 0)
    forward_electron = simulate(11, 10.0, 2.7, n=50)
    assert np.all(forward_electron.ptype == detector.PHOTON)
    assert len(simulate(13, 10.0, 2.7, n=50).pt) == 0
    # Outside everything: lost.
    for pid in (211, 22, 2112, 11):
        assert len(simulate(pid, 10.0, 3.3, n=50).pt) == 0
    # Neutrinos are invisible anywhere.
    assert len(simulate(14, 50.0, 0.0, n=50).pt) == 0


def test_calorimeter_thresholds() -> None:
    # The thresholds apply to the measured energy: far below them nothing survives, near
    # them only what fluctuated above, far above them everything.
    assert len(simulate(22, 0.2, 0.0, n=1000).pt) == 0
    near = simulate(22, 0.6, 0.0, n=1000)
    assert 0 < len(near.pt) < 1000
    assert np.all(near.e > detector.ECAL_E_MIN)
    assert len(simulate(22, 5.0, 0.0, n=1000).pt) == 1000
    near = simulate(2112, 1.0, 0.0, n=1000)  # E ≈ 1.37 GeV, R_h·E ≈ 1.1 GeV
    assert 0 < len(near.pt) < 1000
    assert np.all(near.e > detector.HCAL_E_MIN)
    assert len(simulate(2112, 30.0, 0.0, n=1000).pt) == 1000


def test_ecal_response_and_resolution() -> None:
    e = 50.0
    reco = simulate(22, e, 0.0, n=20000, seed=3)
    ratio = reco.e / e
    expected = np.hypot(detector.ECAL_STOCHASTIC / np.sqrt(e), detector.ECAL_CONSTANT)
    assert abs(np.mean(ratio) - detector.ECAL_RESPONSE) < 1e-3
    assert abs(np.std(ratio) / expected - 1) < 0.05
    assert np.all(reco.ptype == detector.PHOTON)
    assert abs(np.std(reco.eta) / detector.CALO_ANGULAR_SIGMA - 1) < 0.05
    np.testing.assert_allclose(reco.e, reco.pt * np.cosh(reco.eta), rtol=1e-9)  # massless


@pytest.mark.parametrize("energy", [10.0, 100.0, 2000.0])
def test_hcal_response(energy: float) -> None:
    expected = min(0.80 + 0.05 * np.log10(energy), 0.95)
    assert detector.hcal_response(energy) == pytest.approx(expected)
    reco = simulate(2112, energy, 0.0, n=20000, seed=4)  # η = 0: pT = p ≈ E
    e_true = np.sqrt(energy**2 + MASSES[2112] ** 2)
    ratio = reco.e / e_true
    sigma = np.hypot(detector.HCAL_STOCHASTIC / np.sqrt(e_true), detector.HCAL_CONSTANT)
    assert abs(np.mean(ratio) - detector.hcal_response(e_true)) < 4 * sigma / np.sqrt(len(ratio))
    assert abs(np.std(ratio) / (detector.hcal_response(e_true) * sigma) - 1) < 0.05
    assert np.all(reco.ptype == detector.NEUTRAL_HADRON)


def test_phi_wrapping() -> None:
    phi = detector.wrap_phi(np.array([-np.pi, np.pi, 3 * np.pi / 2, -3 * np.pi / 2, 0.0]))
    np.testing.assert_allclose(phi, [np.pi, np.pi, -np.pi / 2, np.pi / 2, 0.0])
    # A calorimeter object near φ = π, smeared across it, stays in (−π, π].
    p = particles(22, 20.0, 0.0, n=1000)
    p.px[:], p.py[:] = -20.0, 1e-6
    reco = detector.simulate(p, np.random.default_rng(5))
    assert np.all((reco.phi > -np.pi) & (reco.phi <= np.pi))
    assert (reco.phi < 0).any()
    assert (reco.phi > 0).any()


# --- generator-level constituents and the cache -----------------------------------------

def test_truth_constituents_leave_the_rest_unchanged() -> None:
    kwargs = {"seed": 21, "workers": 1, "events_per_chunk": 40, "progress": False}
    plain = dataset.generate("ttbar", 40, **kwargs)
    truth = dataset.generate("ttbar", 40, truth=True, **kwargs)
    assert set(truth) == set(plain) | {"gen_constituents", "n_gen_constituents"}
    for key in plain:  # no random number is drawn for them
        np.testing.assert_array_equal(plain[key], truth[key], err_msg=key)
    gen, n = truth["gen_constituents"], truth["n_gen_constituents"].astype(int)
    assert gen.shape == (40, 128, 6)
    assert gen.dtype == np.float32
    real = gen[..., 0] > 0
    assert np.array_equal(real.sum(axis=1), np.minimum(n, 128))
    assert np.all(gen[~real] == 0)
    assert np.all(np.diff(gen[..., 0], axis=1) <= 0)  # pt descending
    # Stable visible particles: more of them than reconstructed objects, every type present,
    # the charge of a charged one kept (the detector only keeps tracked charges).
    assert n.mean() > truth["n_constituents"].mean()
    ptype, charge = gen[..., 5][real].astype(int), gen[..., 4][real]
    assert set(np.unique(ptype)) >= {detector.CHARGED_HADRON, detector.PHOTON,
                                     detector.NEUTRAL_HADRON}
    assert np.all((charge != 0) == (ptype <= detector.MUON))
    # They add up to the matched generator-level jet.
    complete = n <= 128
    c = gen[complete].astype(np.float64)
    pt, eta, phi, energy = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    p4 = np.stack([(pt * np.cos(phi)).sum(1), (pt * np.sin(phi)).sum(1),
                   (pt * np.sinh(eta)).sum(1), energy.sum(1)], axis=1)
    summed = kinematics(p4)
    np.testing.assert_allclose(summed[:, 0], truth["gen_jet"][complete, 0], rtol=1e-4)
    np.testing.assert_allclose(summed[:, 3], truth["gen_jet"][complete, 3], rtol=1e-3,
                               atol=0.05)


def test_generator_ptypes() -> None:
    pid = np.array([211, -211, 11, -13, 22, 130, 2112, 321, 11])
    charge = np.array([1, -1, -1, 1, 0, 0, 0, 1, 0])  # the last: an impossible neutral e
    assert dataset.generator_ptypes(pid, charge).tolist() == [
        detector.CHARGED_HADRON, detector.CHARGED_HADRON, detector.ELECTRON, detector.MUON,
        detector.PHOTON, detector.NEUTRAL_HADRON, detector.NEUTRAL_HADRON,
        detector.CHARGED_HADRON, detector.NEUTRAL_HADRON]


def test_a_smaller_sample_is_the_start_of_a_cached_larger_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OFFLOAD_DATA", str(tmp_path))
    monkeypatch.setattr(dataset, "EVENTS_PER_CHUNK", 20)
    large = dataset.load_or_generate("qcd", 30, seed=6, workers=1, truth=True)

    def refuse(*_args, **_kwargs):
        raise AssertionError("generated although a larger sample is cached")

    monkeypatch.setattr(dataset, "generate", refuse)
    small = dataset.load_or_generate("qcd", 12, seed=6)  # without truth: its first rows
    assert set(small) == set(dataset.FIELDS)
    for key in small:
        np.testing.assert_array_equal(small[key], large[key][:12], err_msg=key)
    assert not dataset.cache_path("qcd", 12, seed=6).exists()  # nothing written
    with pytest.raises(AssertionError, match="generated although"):
        dataset.load_or_generate("qcd", 12, seed=7)  # another seed is another sample
    # and the first rows are what generating the small sample gives
    monkeypatch.undo()
    monkeypatch.setenv("OFFLOAD_DATA", str(tmp_path / "fresh"))
    monkeypatch.setattr(dataset, "EVENTS_PER_CHUNK", 20)
    fresh = dataset.load_or_generate("qcd", 12, seed=6, workers=1)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], small[key], err_msg=key)
