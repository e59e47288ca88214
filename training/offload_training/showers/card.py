"""The model card of `calo_shower_generator`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from offload_training.export import MAX_BATCH_RULE, BatchTiming, markdown_table, timing_table
from offload_training.showers import geometry as geo


def write(model_dir: Path, metrics: dict, timings: Sequence[BatchTiming]) -> None:
    """model_card.md from the build's record (also written as metrics.json), and the config
    variants with the card's section on them."""
    (model_dir / "model_card.md").write_text(text(metrics, timings))
    from offload_training.targets import write_variants

    write_variants(model_dir)  # configs/<target>.pbtxt and the card's "Config variants"


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def text(m: dict, timings: Sequence[BatchTiming]) -> str:
    """The card's Markdown, from the build's record (metrics.json) and its timings."""
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
({machine['cores']} logical CPUs, shared; load average {float(machine['load_average_1min']):.1f}
at the end of the run):

{timing_table(timings)}

`max_batch_size` = {speed['generator_batch']}: {MAX_BATCH_RULE}
(`offload_training.export.choose_max_batch_size`).

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
