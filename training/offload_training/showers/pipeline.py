"""`calo_shower_generator`, end to end: GFlash reference data, VAE training, TorchScript
export into the Triton repository, checks through the server's own loading code, held-out
metrics, plots and the model card.

    python -m offload_training.showers.pipeline [--quick] [--workers N] [--seed S] [REPO]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from offload_training.showers import geometry as geo
from offload_training.showers import observables as obs

if TYPE_CHECKING:
    from offload_training.showers.train import TrainConfig, TrainResult

MODEL_NAME = "calo_shower_generator"
VALIDATION_FILE = "validation.npz"
BATCHES = [2**i for i in range(13)]  # 1 … 4096
#: torch intra-op threads per model instance, in the config and in every in-process
#: measurement: the Poisson inverse-CDF loop is a chain of small tensor operations, and
#: extra threads only add synchronisation (on a shared CPU they stall at every barrier);
#: scale with instance_group count instead.
SERVING_THREADS = 1
OBSERVABLE_KEYS = ("response", "depth", "width", "hits", "layer_energy", "layer_width")


@dataclass(frozen=True)
class Sizes:
    train: int
    test: int
    validation: int  # the served-check sample: the first showers of the test set
    epochs: int
    time_budget_s: float | None
    timing_seconds: float  # per batch size when choosing max_batch_size
    reference_timing: tuple[int, int]  # showers timed: voxel sampler, spot sampler
    classifier_iterations: int


FULL = Sizes(train=200_000, test=50_000, validation=4000, epochs=40, time_budget_s=540.0,
             timing_seconds=0.3, reference_timing=(20_000, 2000), classifier_iterations=300)
QUICK = Sizes(train=3000, test=2000, validation=400, epochs=2, time_budget_s=None,
              timing_seconds=0.02, reference_timing=(1000, 100), classifier_iterations=50)


def _noise_seeds(seed: int) -> tuple[int, int, int]:
    """Noise for the test-set generation, the validation sample and the timing inputs."""
    return 1_000_003 * (seed + 1) + 1, 1_000_003 * (seed + 1) + 2, 1_000_003 * (seed + 1) + 3


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build(repository: Path, *, quick: bool = False, workers: int | None = None,
          seed: int = 0) -> dict:
    """Generate, train, export, check and evaluate; returns what `metrics.json` holds.
    Training uses torch's threads as set by the caller; everything after it runs with
    the served config's INTRA_OP_THREAD_COUNT (`SERVING_THREADS`)."""
    started = time.perf_counter()
    sizes = QUICK if quick else FULL
    from offload_training.showers import gflash
    from offload_training.showers.train import TrainConfig, train

    # 1. reference data (cached)
    t0 = time.perf_counter()
    e_train, s_train = gflash.load_or_generate(sizes.train, seed, split="train", workers=workers)
    e_test, s_test = gflash.load_or_generate(sizes.test, seed, split="test", workers=workers)
    data_seconds = time.perf_counter() - t0

    # 2. training
    config = TrainConfig(epochs=sizes.epochs, seed=seed, time_budget_s=sizes.time_budget_s)
    trained = train(e_train, s_train, config)
    del s_train
    with _torch_threads(SERVING_THREADS):
        return _export_and_evaluate(Path(repository), sizes, quick, workers, seed, config,
                                    trained, e_test, s_test, data_seconds, started)


def _export_and_evaluate(repository: Path, sizes: Sizes, quick: bool, workers: int | None,
                         seed: int, config: TrainConfig, trained: TrainResult,
                         e_test: np.ndarray, s_test: np.ndarray, data_seconds: float,
                         started: float) -> dict:
    import torch

    from offload_server.backends import load_in_process
    from offload_training.export import (
        Tensor,
        choose_max_batch_size,
        config_pbtxt,
        model_folder,
        time_batches,
        write_json,
    )
    from offload_training.showers import evaluate as ev
    from offload_training.showers import generator as gen
    from offload_training.showers import gflash, plots

    test_seed, validation_seed, timing_seed = _noise_seeds(seed)
    decoder = trained.model.decoder

    # 3. export: TorchScript serving module, batch size by measurement, config
    version_dir = model_folder(repository, MODEL_NAME)
    model_dir = version_dir.parent
    artifact = version_dir / "model.pt"
    gen.script(decoder, trained.calibration).save(str(artifact))
    module = torch.jit.load(str(artifact)).eval()  # measure and evaluate the exported file

    z_time, u_time = gen.draw_noise(max(BATCHES), timing_seed, config.latent)
    e_time = torch.from_numpy(np.resize(e_test, max(BATCHES)).astype(np.float32)[:, None])
    z_time_t, u_time_t = torch.from_numpy(z_time), torch.from_numpy(u_time)

    def run(batch: int) -> None:
        with torch.inference_mode():
            module(e_time[:batch], z_time_t[:batch], u_time_t[:batch])

    timings = time_batches(run, BATCHES, min_seconds=sizes.timing_seconds)
    max_batch_size = choose_max_batch_size(timings)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(
        MODEL_NAME, "pytorch", max_batch_size,
        inputs=[Tensor("energy", "TYPE_FP32", [1]),
                Tensor("latent", "TYPE_FP32", [config.latent]),
                Tensor("uniform", "TYPE_FP32", [geo.VOXELS])],
        outputs=[Tensor("shower", "TYPE_FP32", list(geo.SHAPE))],
        parameters={"INTRA_OP_THREAD_COUNT": str(SERVING_THREADS)}))

    # 4. the export through the server's loading code (raises if config and artifact
    # disagree), on the validation sample, against the module in this process
    runner = load_in_process(model_dir)
    n_val = min(sizes.validation, len(e_test))
    e_val = e_test[:n_val]
    z_val, u_val = gen.draw_noise(n_val, validation_seed, config.latent)
    request_batch = min(500, max_batch_size)
    served_val = np.concatenate([
        runner.run({"energy": e_val[i:i + request_batch, None],
                    "latent": z_val[i:i + request_batch],
                    "uniform": u_val[i:i + request_batch]})["shower"]
        for i in range(0, n_val, request_batch)])
    in_process_val = ev.generate(module, e_val, validation_seed, latent=config.latent,
                                 batch=request_batch)
    if not np.array_equal(served_val, in_process_val):
        raise RuntimeError(f"model '{MODEL_NAME}': the exported model loaded by the backend "
                           "code disagrees with the TorchScript module in this process")

    # 5. held-out metrics
    generated = ev.generate(module, e_test, test_seed, latent=config.latent)
    comparison, ref_obs, gen_obs = ev.compare(s_test, generated, e_test)
    # the floor: an independent reference sample against the reference, and the same with
    # its incident energies mislabelled by +1 % (what a 1 % energy-scale error looks like)
    e_base, s_base = gflash.load_or_generate(sizes.test, seed, split="baseline",
                                             workers=workers)
    floor = obs.separation_powers(ref_obs, obs.observables(s_base, e_base))
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: scikit-learn's spinning workers crawl on a shared, loaded machine
    with threadpool_limits(1):
        iterations = sizes.classifier_iterations
        classifier = ev.classifier_tests(s_test, e_test, generated, e_test, seed, iterations)
        baseline = ev.classifier_tests(s_test, e_test, s_base, e_base, seed, iterations)
        miscalibrated = ev.classifier_tests(s_test, e_test, s_base, e_base * 1.01, seed,
                                            iterations)
    del s_base
    energy_edges = np.array([1, 2, 5, 10, 20, 50, 100.0])
    test_metrics = {
        "n": len(e_test), "noise_seed": test_seed, **comparison,
        "classifier_low_level": classifier["low_level"],
        "classifier_high_level": classifier["high_level"],
        "separation_power_floor": floor,
        "classifier_floor": {
            "independent_reference": baseline,
            "independent_reference_energy_labels_plus_1_percent": miscalibrated,
        },
        "energy_bins": ev.energy_bins_summary(ref_obs, gen_obs, e_test, energy_edges),
    }

    # 6. the validation sample: inputs by seed, reference observables, served-side metrics
    ref_val = {k: v[:n_val] for k, v in ref_obs.items()}
    validation = ev.validation_metrics(ref_val, served_val, e_val)
    validation.update(noise_seed=validation_seed, request_batch=request_batch,
                      file=VALIDATION_FILE)
    np.savez_compressed(
        model_dir / VALIDATION_FILE, energy=e_val, noise_seed=np.int64(validation_seed),
        latent_dim=np.int64(config.latent), request_batch=np.int64(request_batch),
        latent_sum=np.float64(z_val.sum(dtype=np.float64)),
        uniform_sum=np.float64(u_val.sum(dtype=np.float64)),
        **{f"reference_{k}": ref_val[k] for k in OBSERVABLE_KEYS})

    # 7. speed: reference simulation vs the exported generator, same process and machine
    n_voxel, n_spots = sizes.reference_timing
    voxel_s = ev.time_reference(e_test[:n_voxel].astype(np.float64), "voxel", seed)
    spots_s = ev.time_reference(e_test[:n_spots].astype(np.float64), "spots", seed)
    chosen = next(t for t in timings if t.batch == max_batch_size)
    noise_start = time.perf_counter()
    gen.draw_noise(max(BATCHES), timing_seed + 1, config.latent)
    noise_us = (time.perf_counter() - noise_start) / max(BATCHES) * 1e6
    speed = {
        "generator_batch": max_batch_size,
        "generator_us_per_shower": chosen.per_item_us,
        "reference_spots_us_per_shower": spots_s * 1e6,
        "reference_voxel_us_per_shower": voxel_s * 1e6,
        "speedup_vs_reference_spots": spots_s * 1e6 / chosen.per_item_us,
        "speedup_vs_reference_voxel": voxel_s * 1e6 / chosen.per_item_us,
        "client_noise_us_per_shower": noise_us,
        "reference_showers_timed": {"voxel": n_voxel, "spots": n_spots},
        "torch_threads": torch.get_num_threads(),
        "batch_timings": [{"batch": t.batch, "ms_per_batch": t.seconds_per_batch * 1e3,
                           "us_per_shower": t.per_item_us, "showers_per_s": t.throughput}
                          for t in timings],
    }

    # 8. plots, metrics, card
    plots.observables_figure(model_dir / "observables.png", s_test, generated, ref_obs, gen_obs,
                             comparison["separation_power"], e_test)
    plots.energy_dependence_figure(model_dir / "energy_dependence.png",
                                   test_metrics["energy_bins"])
    plots.training_figure(model_dir / "training.png", trained.history, trained.best_epoch)
    record = {
        "model": MODEL_NAME,
        "quick": quick,
        "test": test_metrics,
        "validation_sample": validation,
        "speed": speed,
        "machine": _machine(),
        "data": {
            "simulator": gflash.VERSION, "sampler": "voxel",
            "e_spot_GeV": gflash.E_SPOT_GEV, "substeps_per_layer": gflash.SUBSTEPS_PER_LAYER,
            "geometry": geo.Geometry().describe(),
            "energy_range_GeV": list(geo.ENERGY_RANGE_GEV), "energy_spectrum": "log-uniform",
            "train": trained.n_fit, "monitor": trained.n_monitor, "test": len(e_test),
            "baseline_reference": len(e_base), "validation_sample": n_val, "seed": seed,
            "seconds_generate_or_load": data_seconds,
        },
        "training": {
            **config.describe(), "epochs_run": len(trained.history),
            "best_epoch": trained.best_epoch, "seconds": trained.seconds,
            "torch_threads": trained.threads,
            "latent_calibration": trained.calibration.describe(),
            "parameters_decoder": gen.parameter_count(decoder),
            "parameters_total": gen.parameter_count(trained.model),
            "history": trained.history,
        },
        "export": {
            "max_batch_size": max_batch_size, "artifact": "1/model.pt",
            "artifact_bytes": artifact.stat().st_size,
            "backend_check": "load_in_process output == in-process TorchScript output "
                             f"(exact, {n_val} showers)",
        },
        "seconds_total": time.perf_counter() - started,
    }
    write_json(model_dir / "metrics.json", record)
    (model_dir / "model_card.md").write_text(model_card(record, timings))
    from offload_training.targets import write_variants

    write_variants(model_dir)  # configs/<target>.pbtxt and the card's "Config variants"
    return record


def _machine() -> dict:
    import sklearn
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__, "scikit_learn": sklearn.__version__,
        "load_average_1min": os.getloadavg()[0],
    }


def read_validation_sample(model_dir: Path) -> dict:
    """validation.npz as a dict: energy, noise_seed, latent_dim, request_batch, checksums,
    and `reference` observables."""
    with np.load(Path(model_dir) / VALIDATION_FILE) as stored:
        data = {k: stored[k] for k in stored.files}
    sample = {k: v for k, v in data.items() if not k.startswith("reference_")}
    for k in ("noise_seed", "latent_dim", "request_batch"):
        sample[k] = int(sample[k])
    sample["reference"] = {k: data[f"reference_{k}"] for k in OBSERVABLE_KEYS}
    return sample


# --- model card ---


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def model_card(m: dict, timings: list) -> str:
    from offload_training.export import markdown_table, timing_table
    from offload_training.showers.generator import SMALL_LAMBDA

    test, val, speed, data, tr = m["test"], m["validation_sample"], m["speed"], m["data"], \
        m["training"]
    g = data["geometry"]
    cal = tr["latent_calibration"]
    sp_test, sp_val = test["separation_power"], val["separation_power"]
    rows = []
    for key, label in (("response_mean", "mean E_dep/E_inc"), ("response_rms", "RMS E_dep/E_inc"),
                       ("depth_mean_X0", "mean depth [X0]"), ("width_mean_RM", "mean width [R_M]"),
                       ("hits_mean", "mean hit voxels")):
        rows.append([label, test["reference"][key], test["generated"][key],
                     val["reference"][key], val["generated"][key]])
    summary_table = markdown_table(
        ["observable", "test: reference", "test: generated", "validation sample: reference",
         "validation sample: generated (served)"], rows)
    floor = test["separation_power_floor"]
    sp_rows = [[name, sp_test[name], floor[name], sp_val[name]] for name in
               ("response", "depth", "width", "hits", "layer_energy_mean", "layer_width_mean")]
    sp_table = markdown_table(["observable", "⟨S²⟩ test: generated vs reference",
                               "⟨S²⟩ floor: reference vs independent reference",
                               "⟨S²⟩ validation sample (served)"], sp_rows)
    worst = max(range(geo.LAYERS), key=lambda i: sp_test[f"layer_energy_{i:02d}"])
    worst_sp = sp_test[f"layer_energy_{worst:02d}"]
    worst_floor = floor[f"layer_energy_{worst:02d}"]
    layers = range(geo.LAYERS)
    layer_table = markdown_table(["layer", *[str(i) for i in layers]], [
        ["⟨S²⟩ E_layer", *[sp_test[f"layer_energy_{i:02d}"] for i in layers]],
        ["floor", *[floor[f"layer_energy_{i:02d}"] for i in layers]],
        ["⟨S²⟩ width", *[sp_test[f"layer_width_{i:02d}"] for i in layers]],
        ["floor", *[floor[f"layer_width_{i:02d}"] for i in layers]]])
    bins_table = markdown_table(
        ["E_inc [GeV]", "n", "ref ⟨E_dep/E_inc⟩", "gen ⟨E_dep/E_inc⟩", "ref σ/E", "gen σ/E"],
        [[f"{r['E_low_GeV']:g}–{r['E_high_GeV']:g}", r["n"], r["reference_response_mean"],
          r["generated_response_mean"], r["reference_resolution"], r["generated_resolution"]]
         for r in test["energy_bins"]])
    low, high = test["classifier_low_level"], test["classifier_high_level"]
    same = test["classifier_floor"]["independent_reference"]
    shifted = test["classifier_floor"]["independent_reference_energy_labels_plus_1_percent"]
    quick_note = ("\n> **QUICK BUILD** (`make models QUICK=1`): tiny data set and 1–2 epochs, "
                  "for checking the pipeline only. The numbers below are not the model's.\n"
                  if m["quick"] else "")
    machine = m["machine"]
    low_e, high_e = data["energy_range_GeV"]
    io_table = markdown_table(["tensor", "shape (per row)", "type", "meaning"], [
        ["`energy` (input)", "[1]", "FP32", "incident energy in GeV; trained for 1–100 GeV"],
        ["`latent` (input)", f"[{tr['latent']}]", "FP32",
         "latent noise, independent standard normal N(0, 1)"],
        ["`uniform` (input)", f"[{geo.VOXELS}]", "FP32",
         "one uniform U[0, 1) number per voxel, drives the Poisson draw"],
        ["`shower` (output)", f"[{geo.LAYERS}, {geo.RADIAL}, {geo.ANGULAR}]", "FP32",
         "deposited energy per voxel in GeV, layout [layer, radial, angular]"]])
    auc_table = markdown_table(
        ["features", "**generated vs reference**", "independent reference vs reference",
         "the same with E_inc labels +1 %"], [
            [f"low level: log10(E_voxel/E_inc + 10⁻⁵) of all {geo.VOXELS} voxels, "
             "log10 E_inc", f"**{_fmt(low['auc'])}**", _fmt(same["low_level"]["auc"]),
             _fmt(shifted["low_level"]["auc"])],
            ["high level: E_inc, E_dep/E_inc, 12 layer fractions, depth, width, "
             "12 layer widths, hits", f"**{_fmt(high['auc'])}**",
             _fmt(same["high_level"]["auc"]), _fmt(shifted["high_level"]["auc"])]])
    speed_table = markdown_table(["per shower, same machine and run", "µs / shower"], [
        [f"generator (exported TorchScript), batch {speed['generator_batch']}",
         f"{speed['generator_us_per_shower']:.1f}"],
        ["reference, spot by spot (the GFlash algorithm as described)",
         f"{speed['reference_spots_us_per_shower']:.1f}"],
        ["reference, voxel-level Poisson sampler (the data-set shortcut)",
         f"{speed['reference_voxel_us_per_shower']:.1f}"],
        ["**speed-up vs spot-by-spot reference**",
         f"**{speed['speedup_vs_reference_spots']:.1f}×**"],
        ["speed-up vs voxel-level sampler", f"{speed['speedup_vs_reference_voxel']:.2f}×"]])
    return f"""# calo_shower_generator
{quick_note}
Fast simulation of electromagnetic showers: a conditional variational autoencoder (VAE)
whose decoder gives the expected number of 10 MeV energy spots in every voxel of a
PbWO4 calorimeter, and a TorchScript sampler that turns those means into Poisson spot
counts. It stands in for a GFlash-style parametrised simulation of electrons and photons
of 1–100 GeV at normal incidence, and returns one shower per request row.

Served by the `pytorch` backend from `1/model.pt` (TorchScript, `torch.jit.script`).

## Inputs and outputs

{io_table}

`max_batch_size: {m['export']['max_batch_size']}` (rows per request; the dynamic batcher
merges requests up to it; chosen by measurement, see below). `INTRA_OP_THREAD_COUNT: 1`
per instance: the Poisson draw is a chain of small tensor operations that extra threads
only slow down (they wait at every barrier, badly so on a shared CPU); add instances
(`instance_group {{ count: N }}`) to use more cores.

Voxels: {g['layers']} layers of {g['layer_depth_X0']:g} X0 (0–24 X0 from the front face),
{geo.RADIAL} radial bins with edges {g['radial_edges_R_M']} Molière radii around the shower
axis, {g['angular_bins']} azimuthal bins of 60°. The `uniform` vector is indexed in the
same order, flattened: index = (layer · 8 + radial) · 6 + angular. Energy beyond 24 X0 or
5 R_M is not recorded (leakage). Every voxel energy is a multiple of 10 MeV.
Material: {g['material']} (Z_eff = {g['z_eff']}, Ec = {g['critical_energy_MeV']:g} MeV,
X0 = {g['X0_cm']} cm, R_M = {g['R_M_cm']} cm).

### Noise contract

The model is deterministic: the same inputs give the same shower, on the server and in
process. Draw a new shower by drawing new noise: `latent` ~ N(0, 1) and `uniform` ~
U[0, 1), independently per row. Inside, each voxel's count is the inverse Poisson CDF of
its `uniform` entry at the decoded mean λ: exact (pmf recursion, float64) for
λ ≤ {SMALL_LAMBDA:g}, and max(0, ⌊λ + √λ Φ⁻¹(u) + ½⌋) above. Values are clamped into
[0, 1 − 2⁻²⁴]. The tests and the validation sample use

```python
rng = np.random.default_rng(seed)
latent = rng.standard_normal((n, {tr['latent']}), dtype=np.float32)
uniform = rng.random((n, {geo.VOXELS}), dtype=np.float32)
```

(`offload_training.showers.generator.draw_noise`). Correlated or reused noise gives
correlated showers.

## Training data

Reference: `offload_training.showers.gflash` ({data['simulator']}), the GFlash
parametrisation for homogeneous media (Grindhammer & Peters, NIM A290 (1990) 469;
hep-ex/0001020; coefficients as in Geant4's `GVFlashHomoShowerTuning`): per shower,
correlated Gaussian (ln T, ln α) of the Gamma longitudinal profile; radial profile
p·f_C + (1 − p)·f_T with f(r) = 2rR²/(r² + R²)² and R_C, R_T, p functions of τ = t/T;
spots of E_SPOT = {data['e_spot_GeV'] * 1e3:g} MeV (σ/E = 10 %/√E), Poisson number per
layer, each placed at a depth, radius and uniform azimuth drawn from the profiles
(sub-steps of {geo.LAYER_DEPTH_X0 / data['substeps_per_layer']:g} X0). The data sets use
the exactly equivalent voxel-level sampler (independent Poisson counts per voxel with the
integrated means).

Incident energies log-uniform in {low_e:g}–{high_e:g} GeV.
Sizes: {data['train']:,} showers fitted, {data['monitor']:,} for choosing the epoch (both
from the training set, seed {data['seed']}), {data['test']:,} held-out test showers (a
separate seed stream) for every metric below; the validation sample is the first
{data['validation_sample']:,} of them. A further {data['baseline_reference']:,} reference
showers (a third seed stream) measure the statistical floor of the metrics.

## Architecture

- Decoder (served): MLP [{tr['latent']} latent + log10(E/10 GeV)] → 3 × {tr['hidden']} (SiLU)
  → {geo.LAYERS * geo.RADIAL + 1} logits → softmax over the {geo.LAYERS * geo.RADIAL}
  (layer, radial) rings and one leakage class; λ_voxel = (E/E_SPOT) · fraction / 6.
  Energy scaling is built in, containment is learned. Azimuthal symmetry is built in
  (normal incidence), fluctuations per voxel come from the Poisson draw.
- Latent calibration (served, before the decoder): z = m(c) + L(c) ε with ε the `latent`
  input, a Gaussian fitted after training to the aggregate posterior of the training
  showers on a grid of {cal['grid_points']} conditions, interpolated linearly (ex-post
  density estimation; the KL term alone left a ~0.15 σ shift in one latent direction at
  50–100 GeV). Here max |m| = {cal['max_abs_mean']:.3f}, diag L in
  [{cal['diagonal_range'][0]:.3f}, {cal['diagonal_range'][1]:.3f}].
- Encoder (training only): MLP on the standardised log(1 + ring counts) and the condition
  → 2 × {tr['hidden']} → mean and log-variance of q(z | x, E).
- Loss: Poisson negative log-likelihood of the ring counts (the voxel likelihood up to a
  constant for azimuthally symmetric means) + KL(q ‖ N(0, 1)).
- Parameters: {tr['parameters_decoder']:,} in the served decoder, {tr['parameters_total']:,}
  with the encoder; `1/model.pt` is {m['export']['artifact_bytes'] / 1e6:.2f} MB.
- Training: Adam, learning rate {tr['learning_rate']:g} with warm-up and cosine decay,
  batch {tr['batch_size']}, {tr['epochs_run']} epoch(s) run, epoch {tr['best_epoch']} kept
  (best ELBO on the monitoring split); {tr['seconds']:.0f} s on this machine
  ({tr['torch_threads']} torch thread(s)).

![training](training.png)

## Metrics

All computed by `offload_training.showers.evaluate` on held-out showers: the generated
showers use the held-out incident energies and fresh noise (test: seed
{test['noise_seed']}; validation sample: seed {val['noise_seed']}, generated by the exported
model through the server's backend code).

{summary_table}

Separation power ⟨S²⟩ = ½ Σ (h_gen − h_ref)² / (h_gen + h_ref) on unit-normalised
histograms with 40 bins over the reference's central 99 % (CaloChallenge definition;
0 = identical, 1 = disjoint). The floor column compares the reference with an independent
reference sample of the same size: finite statistics alone give values of that order (the
validation sample has {val['n']:,} showers, hence its larger values):

{sp_table}

Per layer (test, with the reference-vs-reference floor):

{layer_table}

Classifier two-sample test (scikit-learn HistGradientBoostingClassifier, trained on half
of {test['n']:,} reference + {test['n']:,} generated showers, ROC AUC on the other half;
0.5 = indistinguishable). For scale, the same test between the reference and an
independent reference sample of the same size (the statistical floor), and between them
when the second sample's incident energies are mislabelled by +1 % (what a 1 %
energy-scale error in a generator would look like):

{auc_table}

Response and resolution in bins of incident energy (test):

{bins_table}

![observables](observables.png)

![energy dependence](energy_dependence.png)

## Batch size and speed

In-process time of the exported TorchScript module per batch (including the Poisson
draw), {speed['torch_threads']} torch thread(s), CPU: {machine['cpu']}
({machine['logical_cpus']} logical CPUs, shared; load average {machine['load_average_1min']:.1f}
at the end of the run):

{timing_table(timings)}

`max_batch_size` = {speed['generator_batch']}: the smallest batch reaching 90 % of the best
throughput, doubled for headroom (`offload_training.export.choose_max_batch_size`).

{speed_table}

Drawing the noise for one shower with numpy (`draw_noise`, on the client) takes
{speed['client_noise_us_per_shower']:.1f} µs more. The reference is itself a fast
parametrised simulation, so the gain is modest; against a
full Geant4 simulation of the same showers (seconds per shower) it would be orders of
magnitude. The point of serving it is that reconstruction jobs can send the work to a GPU
server with the same interface.

## Limitations

- Electrons/photons at normal incidence through the centre of the voxel grid only; no
  position, angle or particle-type conditioning. The azimuthal symmetry is built in.
- Trained for 1–100 GeV; outside that range the energy scaling is built in but the shape
  is an extrapolation and is not validated.
- The reference is a parametrisation (GFlash, homogeneous PbWO4, fixed 10 MeV spots), not
  a full simulation; the generator can only be as good as it.
- The largest per-layer difference is the energy in layer {worst} (⟨S²⟩ = {worst_sp:.4f},
  against {worst_floor:.4f} for two reference samples): the shower start, where the profile
  is steepest in α, is the hardest part to reproduce.
- The lateral width uses radial bin centres; the last radial bin (2.5–5 R_M) is coarse.
- Poisson counts with λ > {SMALL_LAMBDA:g} use the normal approximation (skewness below 0.2).

## Reproduce

```bash
make models                                    # every model, full size, into model_repository/
make models QUICK=1                            # smoke run into build/models-quick/
.venv/bin/offload train --model calo_shower_generator           # this model only
.venv/bin/python -m offload_training.showers.pipeline [--quick] [--workers N] [REPO]
```

Data are cached under `$OFFLOAD_DATA/showers` (default `data/showers`); the run is
seeded (seed {data['seed']}). Whole build: {m['seconds_total']:.0f} s.
`metrics.json` holds every number above; `validation.npz` holds the validation sample
(incident energies, noise seed and checksums, reference observables), from which
`tests/test_calo_shower_generator.py` regenerates the inputs, queries a real server and
recomputes `metrics.json["validation_sample"]`.
"""


def main(argv: list[str] | None = None) -> int:
    from offload_training.paths import model_repository

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", nargs="?", type=Path, default=model_repository())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    record = build(args.repository, quick=args.quick, workers=args.workers, seed=args.seed)
    test = record["test"]
    print(f"{MODEL_NAME}: classifier AUC {test['classifier_low_level']['auc']:.3f} (low level), "
          f"{test['classifier_high_level']['auc']:.3f} (high level); "
          f"speed-up {record['speed']['speedup_vs_reference_spots']:.1f}× "
          f"at batch {record['speed']['generator_batch']}; {record['seconds_total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
