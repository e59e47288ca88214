"""The prepared GPU run: what a machine with an NVIDIA GPU does for the service, in one bounded
command that needs no network (`perf/gpu_run.sh`, perf/README.md).

    perf/gpu_run.sh --output results-gpu          # <= 10 minutes on a GPU machine
    perf/gpu_run.sh --quick --output /tmp/smoke   # seconds; on a CPU machine too

Steps, each skipped with a note in summary.json when its needs are missing or the time
budget (--budget-s) runs short:

1. environment: GPU (nvidia-smi, torch.cuda), versions, which frameworks can use the GPU;
2. in-process baselines, on the GPU and on the CPU: the shower generator's TorchScript
   module (torch, batches 1..4096, with and without the host copies) and its agreement
   between CPU and GPU on the same noise; the tagger with onnxruntime's CUDA provider and the
   regression with TensorFlow on the GPU where those builds are installed;
3. the embedded server (nvidia-pytriton's tritonserver) with the GPU config variants
   (`--model-config-name gpu`) where Triton sees a GPU: the pytorch backend runs the shower
   generator on CUDA, onnxruntime and tensorflow stay on the CPU (CPU builds); without a
   GPU the CPU configs. Then `offload perf` sweeps per model, the overlapping-request
   benchmark, and served GPU output against the in-process CPU module.

Results go to --output as files: summary.json (everything, with the notes), summary.md,
environment.json, sweeps/<model>.{json,csv,png}, tritonserver.log.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

MODELS = ("calo_shower_generator", "jet_tagger", "jet_energy_regression")
FRAMEWORK = {"calo_shower_generator": "torch", "jet_tagger": "onnxruntime",
             "jet_energy_regression": "tensorflow"}


class Run:
    """Shared state: the output folder, the deadline, the notes, the summary."""

    def __init__(self, output: Path, budget_s: float, quick: bool,
                 repository: Path = Path("model_repository")) -> None:
        self.output = output
        self.repository = repository
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.quick = quick
        self.summary: dict = {"quick": quick, "date": time.strftime("%Y-%m-%d %H:%M"),
                              "budget_s": budget_s, "notes": [], "steps": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.summary["notes"].append(text)

    def step(self, name: str, needs_s: float, function, *args):
        """Run one step if the budget allows; its result, or None (with a note)."""
        if self.left() < needs_s:
            self.note(f"{name}: skipped, {self.left():.0f} s of the budget left and it needs "
                      f"~{needs_s:.0f} s")
            return None
        print(f"== {name} ({self.left():.0f} s of the budget left)", flush=True)
        began = time.monotonic()
        try:
            result = function(self, *args)
        except Exception as error:  # one failed step must not lose the others' results
            self.note(f"{name}: failed: {type(error).__name__}: {error}")
            self.summary["steps"][name] = {"error": traceback.format_exc(limit=8)}
            return None
        self.summary["steps"][name] = {"seconds": round(time.monotonic() - began, 1),
                                       "result": result}
        self.save()
        return result

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.started, 1)
        (self.output / "summary.json").write_text(json.dumps(self.summary, indent=2,
                                                             default=_plain))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------ 1. environment
def environment(run: Run) -> dict:
    from offload_perf.options import machine

    env: dict = {"machine": machine(), "python": sys.version.split()[0],
                 "modules": {m: _installed(m) for m in (
                     "torch", "onnxruntime", "tensorflow", "pytriton", "grpc", "tritonclient",
                     "google.protobuf", "matplotlib")}}
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
    if env["modules"]["torch"]:
        import torch

        env["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                        "cuda_available": torch.cuda.is_available(),
                        "devices": [torch.cuda.get_device_name(i)
                                    for i in range(torch.cuda.device_count())]
                        if torch.cuda.is_available() else []}
    if env["modules"]["onnxruntime"]:
        import onnxruntime

        env["onnxruntime"] = {"version": onnxruntime.__version__,
                              "providers": onnxruntime.get_available_providers()}
    env["gpu"] = bool(env.get("torch", {}).get("cuda_available"))
    # What Triton needs for KIND_GPU: a GPU and driver (the wheel brings its CUDA runtime).
    env["triton_gpu"] = "GPU" in env.get("nvidia_smi", "") or "NVIDIA" in env.get(
        "nvidia_smi", "") or env["gpu"]
    (run.output / "environment.json").write_text(json.dumps(env, indent=2))
    if not env["gpu"]:
        run.note("no CUDA device visible to torch: every GPU part is skipped; the CPU "
                 "figures below only show that the run works")
    return env


# ------------------------------------------------------------------- 2. in-process baselines
def _shower_inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"energy": np.exp(rng.uniform(np.log(1.0), np.log(100.0), (rows, 1))).astype(
                np.float32),
            "latent": rng.standard_normal((rows, 8), np.float32),
            "uniform": rng.random((rows, 576), np.float32)}


def _time(call, min_seconds: float, sync=lambda: None) -> float:
    """Best seconds per call over repeats lasting at least `min_seconds`, after a warm-up."""
    call()
    sync()
    best, spent, repeats = float("inf"), 0.0, 0
    while spent < min_seconds or repeats < 3:
        start = time.perf_counter()
        call()
        sync()
        elapsed = time.perf_counter() - start
        best, spent, repeats = min(best, elapsed), spent + elapsed, repeats + 1
    return best


def torch_baseline(run: Run, gpu: bool) -> dict:
    import torch

    artifact = run.repository / "calo_shower_generator" / "1" / "model.pt"
    batches = [1, 64] if run.quick else [1, 64, 256, 1024, 4096]
    seconds = 0.05 if run.quick else 0.3
    devices = ["cpu"] + (["cuda:0"] if gpu else [])
    rows: list[dict] = []
    outputs = {}
    for device in devices:
        module = torch.jit.load(str(artifact), map_location=device).eval()
        sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
        for batch in batches:
            arrays = _shower_inputs(batch)
            on_device = [torch.from_numpy(arrays[k]).to(device)
                         for k in ("energy", "latent", "uniform")]

            def end_to_end(arrays=arrays, module=module, device=device):
                with torch.inference_mode():
                    args = [torch.from_numpy(arrays[k]).to(device)
                            for k in ("energy", "latent", "uniform")]
                    return module(*args).cpu().numpy()

            def compute(on_device=on_device, module=module):
                with torch.inference_mode():
                    return module(*on_device)

            total = _time(end_to_end, seconds, sync)
            only = _time(compute, seconds, sync)
            rows.append({"device": device, "batch": batch,
                         "ms_per_batch": total * 1e3, "rows_per_s": batch / total,
                         "compute_ms_per_batch": only * 1e3})
            print(f"  torch {device:6s} batch {batch:5d}: {total * 1e3:8.3f} ms "
                  f"({batch / total:,.0f} showers/s; compute {only * 1e3:.3f} ms)", flush=True)
        agreement_rows = 256 if run.quick else 4096
        outputs[device] = end_to_end(_shower_inputs(agreement_rows, seed=7))
    result: dict = {"model": "calo_shower_generator", "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "timings": rows}
    if gpu:
        cpu, cuda = outputs["cpu"], outputs["cuda:0"]
        result["agreement_cpu_vs_gpu"] = _agreement(cpu, cuda)
    else:
        run.note("torch baseline: CPU only (no CUDA device)")
    return result


def _agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """How far two shower batches from the same noise differ (GeV; counts of 10 MeV spots)."""
    same = float(np.mean(reference == other))
    sums = reference.reshape(len(reference), -1).sum(1)
    other_sums = other.reshape(len(other), -1).sum(1)
    return {"showers": len(reference), "voxels_identical": same,
            "max_abs_diff_gev": float(np.abs(reference - other).max()),
            "mean_energy_relative_diff": float(np.mean(other_sums - sums) / np.mean(sums))}


def onnx_baseline(run: Run, gpu: bool) -> dict | None:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if not gpu or "CUDAExecutionProvider" not in providers:
        run.note(f"onnxruntime GPU baseline skipped: providers {providers} (a CUDA build, "
                 "onnxruntime-gpu, is needed)")
        return None
    rng = np.random.default_rng(0)
    rows = []
    folder = run.repository / "jet_tagger"
    versions = sorted((p.name for p in folder.iterdir()
                       if p.is_dir() and p.name.isdigit() and (p / "model.onnx").is_file()),
                      key=int)
    for version in versions:  # every exported version (1: compact; 2: ParticleNet)
        for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
            session = ort.InferenceSession(str(folder / version / "model.onnx"),
                                           providers=[provider])
            for batch in [1, 64] if run.quick else [1, 64, 256, 1024]:
                feed = {"points": rng.normal(size=(batch, 128, 2)).astype(np.float32),
                        "features": rng.normal(size=(batch, 128, 13)).astype(np.float32),
                        "mask": np.ones((batch, 128, 1), np.float32)}
                best = _time(lambda s=session, f=feed: s.run(None, f),
                             0.05 if run.quick else 0.3)
                rows.append({"version": version, "provider": provider, "batch": batch,
                             "ms_per_batch": best * 1e3, "rows_per_s": batch / best})
    return {"model": "jet_tagger", "onnxruntime": ort.__version__, "timings": rows}


def tensorflow_baseline(run: Run, gpu: bool) -> dict | None:
    import tensorflow as tf

    devices = tf.config.list_physical_devices("GPU")
    if not gpu or not devices:
        run.note("tensorflow GPU baseline skipped: TensorFlow sees no GPU (a CPU build, or "
                 "no CUDA libraries for it)")
        return None
    loaded = tf.saved_model.load(str(run.repository / "jet_energy_regression" / "1"
                                     / "model.savedmodel"))
    function = loaded.signatures["serving_default"]
    rng = np.random.default_rng(0)
    rows = []
    for device in ("/CPU:0", "/GPU:0"):
        for batch in [1, 64] if run.quick else [1, 64, 256, 1024]:
            feed = {"jet": rng.normal(size=(batch, 9)).astype(np.float32),
                    "features": rng.normal(size=(batch, 128, 13)).astype(np.float32),
                    "mask": np.ones((batch, 128, 1), np.float32)}

            def call(feed=feed, device=device):
                with tf.device(device):
                    return function(**{k: tf.constant(v) for k, v in feed.items()})[
                        "output_0"].numpy()

            best = _time(call, 0.05 if run.quick else 0.3)
            rows.append({"device": device, "batch": batch, "ms_per_batch": best * 1e3,
                         "rows_per_s": batch / best})
    return {"model": "jet_energy_regression", "tensorflow": tf.__version__, "timings": rows}


# ---------------------------------------------------------------------- 3. embedded server
def served(run: Run, gpu: bool, models: list[str]) -> dict:
    import offload
    from offload_perf import overlap, sweep
    from offload_server import LocalServer

    loadable = [m for m in models if _installed(FRAMEWORK[m])]
    for model in sorted(set(models) - set(loadable)):
        run.note(f"server: {model} not loaded ({FRAMEWORK[model]} is not installed)")
    if not loadable:
        raise RuntimeError("no model whose framework is installed")
    variant = "gpu" if gpu else None
    if not gpu:
        run.note("server: Triton would see no GPU, so the CPU configs (config.pbtxt) instead "
                 "of configs/gpu.pbtxt")
    result: dict = {"models": loadable, "config_variant": variant, "sweeps": {}, "overlap": []}
    with tempfile.TemporaryDirectory(prefix="offload-gpu-run-") as scratch:
        repository = Path(scratch)
        for model in loadable:
            shutil.copytree(run.repository / model, repository / model,
                            ignore=shutil.ignore_patterns("*.png", "*.md", "metrics.json"))
        lines: list[str] = []
        started = time.monotonic()
        server = LocalServer(repository, models=loadable, model_config_name=variant,
                             startup_timeout=min(300.0, max(60.0, run.left() - 60)),
                             on_log_line=lines.append)
        try:
            server.start()
        finally:
            (run.output / "tritonserver.log").write_text("\n".join(lines) + "\n")
        with contextlib.closing(_Stopper(server)), \
                offload.Client(server.grpc_url, timeout=120, retries=1) as client:
            result["startup_s"] = round(time.monotonic() - started, 1)
            result["placement"] = [line.split("] ", 1)[-1] for line in lines
                                   if "instance" in line and (" on cuda:" in line
                                                              or "computes on the CPU" in line)]
            result["served_max_batch_size"] = {m.name: m.max_batch_size for m in server.models()}
            plans = {"calo_shower_generator": ([256, 1024, 4096], [1, 4, 16]),
                     "jet_tagger": ([64, 1024], [1, 4]),
                     "jet_energy_regression": ([64, 1024], [1, 4])}
            for model in loadable:
                batches, concurrency = plans[model]
                limit = result["served_max_batch_size"][model]
                batches = [b for b in batches if b <= limit] or [limit]
                if run.quick:
                    batches, concurrency = [min(64, limit)], [1, 2]
                needs = 5 + len(batches) * len(concurrency) * (1.5 if run.quick else 6)
                if run.left() < needs + 30:
                    run.note(f"sweep of {model} skipped: {run.left():.0f} s left")
                    continue
                parser = argparse.ArgumentParser()
                sweep.add_arguments(parser)
                options = parser.parse_args([
                    model, "--server", server.grpc_url,
                    "--batch", *map(str, batches), "--concurrency", *map(str, concurrency),
                    "--window", "0.2" if run.quick else "1", "--max-trials",
                    "2" if run.quick else "5", "--stability", "50" if run.quick else "10",
                    "--output", str(run.output / "sweeps")])
                print(f"  offload perf {model} batches {batches} concurrency {concurrency}",
                      flush=True)
                try:
                    sweep.run(options)
                except sweep.UnstableError as error:
                    run.note(f"sweep of {model}: {error}")
                record = json.loads((run.output / "sweeps" / f"{model}.json").read_text())
                result["sweeps"][model] = [
                    {k: p[k] for k in ("batch", "concurrency", "throughput", "p50_us", "p99_us",
                                       "server_queue_us", "server_compute_infer_us", "stable")}
                    for p in record["points"]]
            for model in loadable:
                if run.left() < 40:
                    run.note("overlap benchmark skipped: budget")
                    break
                handle = client.model(model)
                for pattern in ("pair",) if run.quick else ("pair", "triple"):
                    row = overlap.measure(handle, pattern, 2 if run.quick else 20,
                                          run.repository, "as served",
                                          2, model)
                    result["overlap"].append(dataclasses.asdict(row))
                    print(f"  overlap {model} {pattern}: worst {row.worst_ms:.1f} ms, stalls "
                          f"{row.stalls}/{row.trials}", flush=True)
            if "calo_shower_generator" in loadable:
                result["served_vs_in_process_cpu"] = _served_agreement(
                    run, client.model("calo_shower_generator"), 256 if run.quick else 1024)
    return result


class _Stopper:
    """`contextlib.closing` for a started LocalServer (its own `with` would start it)."""

    def __init__(self, server) -> None:
        self.server = server

    def close(self) -> None:
        self.server.stop()


def _served_agreement(run: Run, model, rows: int) -> dict:
    import torch

    inputs = _shower_inputs(rows, seed=11)
    served_output = model.infer(inputs)["shower"]
    artifact = run.repository / "calo_shower_generator" / "1" / "model.pt"
    module = torch.jit.load(str(artifact), map_location="cpu").eval()
    with torch.inference_mode():
        local = module(*[torch.from_numpy(inputs[k]) for k in ("energy", "latent",
                                                               "uniform")]).numpy()
    return _agreement(local, served_output)


# ------------------------------------------------------------------------------- report
def markdown(summary: dict) -> str:
    env = summary["steps"].get("environment", {}).get("result") or {}
    lines = ["# GPU run", "", f"- date: {summary['date']}, quick: {summary['quick']}, "
             f"elapsed {summary.get('elapsed_s')} s",
             f"- machine: {env.get('machine', {}).get('cpu')} "
             f"({env.get('machine', {}).get('cores')} cores), GPU: "
             f"{env.get('machine', {}).get('gpu')}", ""]
    torch_result = (summary["steps"].get("baseline torch") or {}).get("result")
    if torch_result:
        lines += ["## In-process TorchScript (calo_shower_generator)", "",
                  "| device | batch | ms / batch (with copies) | showers / s | compute ms |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['device']} | {r['batch']} | {r['ms_per_batch']:.3f} | "
                  f"{r['rows_per_s']:,.0f} | {r['compute_ms_per_batch']:.3f} |"
                  for r in torch_result["timings"]]
        if "agreement_cpu_vs_gpu" in torch_result:
            lines += ["", f"CPU vs GPU, same noise: {torch_result['agreement_cpu_vs_gpu']}"]
        lines.append("")
    server = (summary["steps"].get("server") or {}).get("result")
    if server:
        lines += [f"## Embedded server (config variant: {server['config_variant']})", "",
                  f"placement: {server.get('placement')}", "",
                  "| model | batch | concurrency | rows / s | p50 ms | p99 ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for model, points in server["sweeps"].items():
            lines += [f"| {model} | {p['batch']} | {p['concurrency']} | "
                      f"{p['throughput']:,.0f} | {p['p50_us'] / 1e3:.2f} | "
                      f"{p['p99_us'] / 1e3:.2f} |" for p in points]
        if server.get("overlap"):
            lines += ["", "| model | pattern | worst ms | median ms | stalls |",
                      "| --- | --- | ---: | ---: | ---: |"]
            lines += [f"| {r['model']} | {r['pattern']} | {r['worst_ms']:.1f} | "
                      f"{r['median_trial_ms']:.1f} | {r['stalls']}/{r['trials']} |"
                      for r in server["overlap"]]
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny timings: a smoke run")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the models (default model_repository, in the current directory; "
                             "perf/gpu_run.sh runs from the checkout's root)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="stop starting steps after this (default %(default)s s)")
    parser.add_argument("--model", action="append", choices=MODELS,
                        help="served models (default: all; --quick: the shower generator)")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    run = Run(args.output, args.budget_s, args.quick, args.repository)
    env = run.step("environment", 1, environment) or {"gpu": False, "modules": {}}
    gpu = bool(env.get("gpu"))
    modules = env.get("modules", {})
    if modules.get("torch"):
        run.step("baseline torch", 20 if run.quick else 60, torch_baseline, gpu)
    else:
        run.note("torch is not installed: no in-process baseline")
    if modules.get("onnxruntime"):
        run.step("baseline onnxruntime", 10 if run.quick else 40, onnx_baseline, gpu)
    if modules.get("tensorflow") and gpu:
        run.step("baseline tensorflow", 60, tensorflow_baseline, gpu)
    elif not gpu:
        run.note("tensorflow GPU baseline skipped: no GPU")
    needs = ("pytriton", "grpc", "tritonclient", "google.protobuf")
    missing = [m for m in needs if not modules.get(m)]
    if missing:
        run.note(f"embedded server skipped: {', '.join(missing)} not installed (pip install "
                 "'offload[server]' brings them)")
    else:
        models = args.model or (["calo_shower_generator"] if args.quick else list(MODELS))
        run.step("server", 30 if run.quick else 120, served, bool(env.get("triton_gpu")),
                 models)
    run.save()
    (run.output / "summary.md").write_text(markdown(run.summary))
    print(f"wrote {run.output / 'summary.json'} and summary.md "
          f"({run.summary['elapsed_s']} s, {len(run.summary['notes'])} note(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
