"""`calo_shower_generator`, end to end: GFlash reference data, VAE training, TorchScript
export into the Triton repository, checks through the server's own loading code, held-out
metrics, plots and the model card.

    python -m offload_training.showers.pipeline [--quick] [--workers N] [--seed S] [REPO]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from offload_perf.options import machine
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
    from offload_training.showers import card, gflash, plots
    from offload_training.showers import evaluate as ev
    from offload_training.showers import generator as gen

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
        "machine": machine(),
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
    card.write(model_dir, record, timings)  # model_card.md, configs/<target>.pbtxt
    return record


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
