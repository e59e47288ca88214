"""calo_shower_generator: the GFlash reference's physics, the pipeline end to end (quick
build), and the committed model served by a real Triton server, compared with the same
model in process and with the validation metrics recorded at build time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from scipy.integrate import quad

from offload_server import LocalServer
from offload_server.backends import load_in_process
from offload_server.repo_check import check_repository
from offload_training.showers import evaluate as ev
from offload_training.showers import geometry as geo
from offload_training.showers import gflash
from offload_training.showers import observables as obs
from offload_training.showers.generator import draw_noise
from offload_training.showers.pipeline import MODEL_NAME, build, read_validation_sample

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
MODEL_DIR = REPOSITORY / MODEL_NAME


# --- (a) the reference simulation's physics ---


def _containment(energy: float) -> float:
    """Expected E_dep/E_inc of the mean shower, by quadrature of the GFlash profiles:
    ∫_0^24X0 dt f(t) [p F_C(5 R_M) + (1 − p) F_T(5 R_M)], F(r) = r²/(r² + R²)."""
    m = gflash.longitudinal_model(np.array([energy]))
    t_max, alpha = math.exp(m.mean_log_t[0]), math.exp(m.mean_log_alpha[0])
    beta = (alpha - 1) / t_max

    def integrand(t: float) -> float:
        profile = beta**alpha * t ** (alpha - 1) * math.exp(-beta * t) / math.gamma(alpha)
        r_core, r_tail, p = gflash.radial_parameters(np.array(energy), np.array(t / t_max))
        inside = geo.RADIUS_RM**2
        return profile * float(p * inside / (inside + r_core**2)
                               + (1 - p) * inside / (inside + r_tail**2))

    return quad(integrand, 0.0, geo.DEPTH_X0, limit=200)[0]


@pytest.mark.parametrize("energy", [2.0, 10.0, 50.0])
def test_reference_response_and_resolution(energy):
    n = 3000
    rng = np.random.default_rng(int(energy))
    incident = np.full(n, energy)
    showers = gflash.simulate(incident, rng)
    assert showers.shape == (n, *geo.SHAPE)
    assert showers.dtype == np.float32
    response = obs.response(showers, incident)
    # mean: the containment of the mean profile (24 X0, 5 R_M), within 1 %
    expected = _containment(energy)
    assert 0.95 < expected < 1.0
    assert abs(response.mean() - expected) < 0.01, (response.mean(), expected)
    # spread: Poisson spots (10 %/√E) ⊕ shower-to-shower leakage fluctuations. The law of
    # total variance gives it exactly: Var = E_SPOT·⟨E_dep⟩ + Var(expected E_dep | T, α).
    t_max, alpha = gflash.sample_longitudinal(incident, rng)
    mean_deposit = gflash.expected_spots(incident, t_max, alpha).sum((1, 2)) * gflash.E_SPOT_GEV
    predicted = math.sqrt(gflash.E_SPOT_GEV * mean_deposit.mean() + mean_deposit.var()) / energy
    sigma = response.std() / response.mean()
    assert abs(sigma / predicted - 1) < 0.08, (sigma, predicted)  # stat. error ~1.3 %
    sampling = 0.10 / math.sqrt(energy)
    assert 0.95 * sampling < sigma < 1.4 * sampling, (sigma, sampling)


def test_reference_depth_grows_with_log_energy():
    energies = np.array([1.0, 3.0, 10.0, 30.0, 100.0])
    rng = np.random.default_rng(3)
    depth = [np.nanmean(obs.longitudinal_centroid(gflash.simulate(np.full(2000, e), rng)))
             for e in energies]
    assert np.all(np.diff(depth) > 0), depth
    slope = np.polyfit(np.log(energies), depth, 1)[0]
    # ⟨t⟩ ≈ T + T/(α − 1) with T = ln(E/Ec) − 0.858: about one X0 per e-fold of energy
    assert 0.7 < slope < 1.2, slope


def test_spot_and_voxel_samplers_agree():
    """The explicit spot placement and the voxel-level Poisson shortcut are the same
    distribution: per-(layer, ring) means and the total's spread agree within errors."""
    n, energy = 3000, 5.0
    incident = np.full(n, energy)
    spots = gflash.simulate(incident, np.random.default_rng(1), method="spots")
    voxel = gflash.simulate(incident, np.random.default_rng(2), method="voxel")
    rings = [s.sum(axis=3).reshape(n, -1) for s in (spots, voxel)]
    error = np.sqrt((rings[0].var(0) + rings[1].var(0)) / n) + 1e-9
    pull = (rings[0].mean(0) - rings[1].mean(0)) / error
    assert np.abs(pull).max() < 4.5, np.abs(pull).max()  # 96 comparisons
    totals = [obs.deposited_energy(s) for s in (spots, voxel)]
    assert abs(totals[0].std() / totals[1].std() - 1) < 0.08
    # azimuth: uniform, so the 6 sectors share the energy equally in both
    sectors = spots.sum(axis=(0, 1, 2))
    assert np.allclose(sectors / sectors.sum(), 1 / geo.ANGULAR, atol=0.003)


def test_dataset_generation_is_seeded_and_independent_of_workers():
    one = gflash.generate(1200, 7, workers=1, progress=False, chunk=300)
    two = gflash.generate(1200, 7, workers=2, progress=False, chunk=300)  # a process pool
    other = gflash.generate(1200, 8, workers=1, progress=False, chunk=300)
    np.testing.assert_array_equal(one[1], two[1])
    np.testing.assert_array_equal(one[0], two[0])
    assert not np.array_equal(one[0], other[0])
    assert one[0].min() >= 1.0
    assert one[0].max() <= 100.0


# --- (b) the pipeline, end to end ---


@pytest.mark.slow
def test_quick_pipeline_builds_a_valid_model(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFLOAD_DATA", str(tmp_path / "data"))  # generate, not read a cache
    repository = tmp_path / "repository"
    record = build(repository, quick=True, workers=1)
    report = check_repository(repository)
    assert report.ok, [m.errors for m in report.models]
    model_dir = repository / MODEL_NAME
    for name in ("config.pbtxt", "1/model.pt", "metrics.json", "model_card.md",
                 "validation.npz", "observables.png", "energy_dependence.png", "training.png"):
        assert (model_dir / name).is_file(), name
    stored = json.loads((model_dir / "metrics.json").read_text())
    assert {"test", "validation_sample", "speed", "machine", "data"} <= stored.keys()
    assert stored["test"]["classifier_low_level"]["auc"] == record["test"][
        "classifier_low_level"]["auc"]
    assert 1 <= stored["speed"]["generator_batch"] <= 4096
    assert "QUICK BUILD" in (model_dir / "model_card.md").read_text()
    assert (model_dir / "validation.npz").stat().st_size < 2_000_000


# --- (c, d) the committed model: served = in process = recorded ---


@pytest.fixture(scope="module")
def sample() -> dict:
    data = read_validation_sample(MODEL_DIR)
    latent, uniform = draw_noise(len(data["energy"]), data["noise_seed"], data["latent_dim"])
    # the stored checksums guard the noise regeneration (numpy's PCG64 streams)
    assert latent.sum(dtype=np.float64) == data["latent_sum"]
    assert uniform.sum(dtype=np.float64) == data["uniform_sum"]
    return {**data, "latent": latent, "uniform": uniform,
            "energy_column": data["energy"].reshape(-1, 1)}


@pytest.fixture(scope="module")
def triton():
    with LocalServer(REPOSITORY, models=[MODEL_NAME], startup_timeout=240) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield client
        client.close()


def _chunks(sample: dict):
    step = sample["request_batch"]
    for start in range(0, len(sample["energy"]), step):
        part = slice(start, start + step)
        yield {"energy": sample["energy_column"][part], "latent": sample["latent"][part],
               "uniform": sample["uniform"][part]}


@pytest.fixture(scope="module")
def served(triton, sample) -> np.ndarray:
    """The validation sample's showers from the server, in the build's request sizes."""
    outputs = []
    for inputs in _chunks(sample):
        request = []
        for name, value in inputs.items():
            tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(value, np.float32))
            request.append(tensor)
        result = triton.infer(MODEL_NAME, request,
                              outputs=[grpcclient.InferRequestedOutput("shower")])
        outputs.append(result.as_numpy("shower"))
    return np.concatenate(outputs)


def test_served_config_matches_the_model_card_contract(triton, sample):
    config = triton.get_model_config(MODEL_NAME, as_json=True)["config"]
    assert config["backend"] == "pytorch"
    inputs = {t["name"]: (t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]}
    assert inputs == {"energy": ("TYPE_FP32", [1]),
                      "latent": ("TYPE_FP32", [sample["latent_dim"]]),
                      "uniform": ("TYPE_FP32", [geo.VOXELS])}
    [output] = config["output"]
    assert (output["name"], [int(d) for d in output["dims"]]) == ("shower", list(geo.SHAPE))


def test_served_equals_in_process(served, sample):
    """Tolerance: none. The model is a deterministic function of its inputs (the Poisson
    draw inverts the given uniforms), and the server runs the same TorchScript file with
    the same batches, so every voxel must agree exactly."""
    runner = load_in_process(MODEL_DIR)
    in_process = np.concatenate([runner.run(inputs)["shower"] for inputs in _chunks(sample)])
    assert served.shape == (len(sample["energy"]), *geo.SHAPE)
    assert served.dtype == np.float32
    np.testing.assert_array_equal(served, in_process)
    # and they are showers: multiples of 10 MeV, most of the incident energy deposited
    spots = served / gflash.E_SPOT_GEV
    np.testing.assert_allclose(spots, np.rint(spots), atol=1e-3)
    response = obs.response(served, sample["energy"])
    assert 0.9 < response.mean() < 1.02


def test_recorded_validation_metrics_recomputed_from_served_outputs(served, sample):
    """Tolerance: relative 1e-9 (the same float64 numpy arithmetic on identical showers;
    anything looser would hide a changed model or changed code)."""
    recorded = json.loads((MODEL_DIR / "metrics.json").read_text())["validation_sample"]
    recomputed = ev.validation_metrics(sample["reference"], served, sample["energy"])
    assert recomputed["n"] == recorded["n"] == len(sample["energy"])
    for group in ("generated", "reference", "separation_power"):
        assert recomputed[group].keys() == recorded[group].keys(), group
        for key, value in recomputed[group].items():
            assert value == pytest.approx(recorded[group][key], rel=1e-9, abs=1e-12), \
                f"{group}.{key}"
