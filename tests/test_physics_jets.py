"""The jet preprocessing of the thin client (`offload.physics.jets`), numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from offload.physics import jets as pj


def _jet(rng, n):
    pt = rng.exponential(20, n) + 1
    eta = rng.normal(0.3, 0.2, n)
    phi = rng.normal(3.1, 0.2, n)  # around +pi: delta phi must wrap
    energy = pt * np.cosh(eta)
    charge = rng.choice([-1, 0, 1], n)
    ptype = rng.integers(0, 5, n)
    return np.stack([pt, eta, np.arctan2(np.sin(phi), np.cos(phi)), energy, charge, ptype], 1)


def test_pad_constituents_sorts_pads_and_truncates():
    rng = np.random.default_rng(0)
    ragged = [_jet(rng, 5), _jet(rng, 200)]
    padded = pj.pad_constituents(ragged)
    assert padded.shape == (2, pj.MAX_CONSTITUENTS, 6)
    assert padded.dtype == np.float32
    assert np.all(np.diff(padded[0, :5, 0]) <= 0)
    assert np.all(padded[0, 5:] == 0)
    assert np.all(padded[1, :, 0] > 0)  # 200 cut to the 128 hardest
    np.testing.assert_allclose(padded[1, 0, 0], ragged[1][:, 0].max(), rtol=1e-6)


def test_pad_constituents_refuses_wrong_columns():
    with pytest.raises(ValueError, match=r"jet 0: constituents must have shape \[n, 6\]"):
        pj.pad_constituents([np.zeros((3, 4))])


def test_constituent_inputs():
    rng = np.random.default_rng(1)
    constituents = pj.pad_constituents([_jet(rng, 30), _jet(rng, 60)])
    jets = np.array([[500, 0.3, 3.1, 60], [600, 0.3, -3.13, 80]], np.float32)
    inputs = pj.tagger_inputs(constituents, jets)
    assert inputs["points"].shape == (2, 128, 2)
    assert inputs["features"].shape == (2, 128, len(pj.CONSTITUENT_FEATURES))
    assert inputs["mask"][:, :, 0].sum(1).tolist() == [30, 60]
    real = inputs["mask"][..., 0] > 0
    features = inputs["features"]
    assert np.all(features[~real] == 0)
    assert np.all(np.abs(features[..., 1][real]) < 1.0)  # delta phi wrapped around +-pi
    assert np.allclose(features[..., 8:][real].sum(-1), 1.0)  # one-hot type
    np.testing.assert_allclose(features[..., 2][real], np.log(constituents[..., 0][real]),
                               rtol=1e-6)
    np.testing.assert_allclose(features[..., 6], np.hypot(features[..., 0], features[..., 1]),
                               rtol=1e-5, atol=1e-6)


def test_jet_inputs_energy_fractions_sum_to_one():
    rng = np.random.default_rng(2)
    constituents = pj.pad_constituents([_jet(rng, 40)])
    jets = np.array([[550, 0.3, 3.1, 90]], np.float32)
    jet = pj.regression_inputs(constituents, jets)["jet"]
    assert jet.shape == (1, len(pj.JET_FEATURES))
    assert jet[0, 4:].sum() == pytest.approx(1.0, abs=1e-5)
    assert jet[0, 3] == pytest.approx(40 / 50)


def test_inputs_refuse_mismatched_jets():
    with pytest.raises(ValueError, match=r"jets must have shape \[2, 4\]"):
        pj.tagger_inputs(np.zeros((2, 10, 6)), np.zeros((3, 4)))
