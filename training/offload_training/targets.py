"""Per-target config variants: `configs/<target>.pbtxt` beside each model's `config.pbtxt`,
with the reason for every number written into the model card.

Triton 2.51 (NGC 24.10) started with `--model-config-name=gpu` loads
`<model>/configs/gpu.pbtxt` instead of `config.pbtxt` (a model without that file keeps its
`config.pbtxt`). `config.pbtxt` stays tuned for the CPU (the embedded server, CPU-only
clusters); `gpu.pbtxt` is what the Kubernetes `gpu` overlay serves. A variant keeps the
model's backend, inputs and outputs (they are copied from config.pbtxt here, and `offload
repo check` refuses a variant that changes them) and sets instances, batch sizes, batching,
queue and parameters for its target.

    python -m offload_training.targets [REPOSITORY]    # (re)write every known model's variants

The pipelines call `write_variants` after exporting, so `make models` regenerates these too;
`tests/test_config_variants.py` checks that the committed files are what this module writes.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: The largest request Envoy forwards (k8s/base/envoy/envoy.yaml, buffer filter).
PROXY_LIMIT_BYTES = 16 * 2**20
#: Requests one client call keeps in flight (`offload.Client(pipeline=16)`, the default).
CLIENT_IN_FLIGHT = 16
#: Jobs a GPU replica is sized for: SONIC measured one GPU per 68 CPU threads (ProtoDUNE);
#: `offload plan` computes the figure for a site's own workload.
JOBS_PER_REPLICA = 64

_CARD_BEGIN = "<!-- config-variants: written by offload_training.targets; do not edit -->"
_CARD_END = "<!-- /config-variants -->"


@dataclass(frozen=True)
class Setting:
    """One line of the variant, and why it has that value."""

    name: str
    value: str
    why: str


@dataclass(frozen=True)
class Target:
    """A model's config for one target (here: GPUs served by NGC 24.10's native backends)."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    # The GPU targets share these (their reasons: _common_reasons and _queue_reasons).
    target: str = "gpu"
    kind: str = "KIND_GPU"  # instance_group kind
    instances: int = 2
    max_queue_delay_us: int = 1000
    max_queue_size: int = 1024
    queue_timeout_us: int = 10_000_000
    parameters: dict[str, str] = field(default_factory=dict)
    warmup: bool = True
    options: str = ""  # commented-out alternatives, appended verbatim
    reasons: dict[str, str] = field(default_factory=dict)  # setting -> why

    def settings(self) -> list[Setting]:
        rows = [
            Setting("instance_group", f"{self.instances} × {self.kind}",
                    self.reasons["instance_group"]),
            Setting("max_batch_size", str(self.max_batch_size), self.reasons["max_batch_size"]),
            Setting("preferred_batch_size", str(list(self.preferred_batch_sizes)),
                    self.reasons["preferred_batch_size"]),
            Setting("max_queue_delay_microseconds", str(self.max_queue_delay_us),
                    self.reasons["max_queue_delay_microseconds"]),
            Setting("max_queue_size", str(self.max_queue_size), self.reasons["max_queue_size"]),
            Setting("default_timeout_microseconds", str(self.queue_timeout_us),
                    self.reasons["default_timeout_microseconds"]),
        ]
        rows += [Setting(f"parameters {key}", value, self.reasons[key])
                 for key, value in self.parameters.items()]
        if self.warmup:
            rows.append(Setting("model_warmup", f"batch 1 and {self.max_batch_size}, zeros",
                                self.reasons["model_warmup"]))
        return rows


def _queue_reasons(max_batch_size: int, max_queue_size: int = JOBS_PER_REPLICA
                   * CLIENT_IN_FLIGHT, timeout_s: float = 10.0) -> dict[str, str]:
    drain = max_queue_size * max_batch_size / timeout_s
    return {
        "max_queue_delay_microseconds":
            "at low load a lone request waits at most 1 ms for company (well inside an "
            "HLT budget); under load batches form anyway while both instances are busy, so "
            "the delay only merges sparse requests, saving a GPU launch each",
        "max_queue_size":
            f"{JOBS_PER_REPLICA} jobs per replica (SONIC: one GPU per 68 CPU threads) × "
            f"{CLIENT_IN_FLIGHT} requests each client call keeps in flight = "
            f"{JOBS_PER_REPLICA * CLIENT_IN_FLIGHT}: a replica that far behind is overloaded, "
            "so further requests are refused at once (the client retries elsewhere with "
            "backoff, KEDA adds replicas on queue time) instead of waiting",
        "default_timeout_microseconds":
            "10 s, as on the CPU: a request still queued after that is refused rather than "
            "run late (clients may ask for less: allow_timeout_override). A full queue of "
            f"full requests ({max_queue_size} × {max_batch_size} rows) drains within it only "
            f"above {drain:,.0f} rows/s; check that against the GPU's sweep (perf/gpu_run.sh) "
            "and lower max_queue_size if the GPU is slower, so that the queue refuses before "
            "the timeout has to",
    }


def _common_reasons(max_batch_size: int, row_bytes: int, per_row: str) -> dict[str, str]:
    request_mb = max_batch_size * row_bytes / 1e6
    return {
        "instance_group":
            "two instances on the pod's GPU: one copies its inputs or launches kernels while "
            "the other computes, and a request that cannot join the running batch finds an "
            "idle instance. With a queue policy Triton 2.51's batcher cannot prefetch and, "
            "with a single instance, can sleep 500 ms with work queued (README, \"CPU "
            "backends\"); more instances only add memory for models this small",
        "max_batch_size":
            f"{per_row}; a request of {max_batch_size} rows is {request_mb:.1f} MB "
            f"({row_bytes:,} B a row), under the 16 MiB Envoy forwards "
            "(k8s/base/envoy/envoy.yaml) — twice the rows would not always be. On a GPU the "
            "cost per row typically keeps falling up to batches of hundreds to thousands "
            "(kernel launches and copies are per batch), unlike on the 2-core CPU that sized "
            "config.pbtxt",
        "preferred_batch_size":
            "when queued requests add up to one of these, the batch goes at once instead of "
            "waiting out the queue delay (batch-1 HLT traffic reaches them); powers of two "
            "are the shapes cuBLAS/cuDNN kernels and TensorRT profiles are tuned for",
        "model_warmup":
            "one batch of 1 and one of max_batch_size at load, so that CUDA context, kernel "
            "selection (and a TensorRT engine build, if enabled) happen before the pod "
            "reports ready, not on the first jobs' requests",
        **_queue_reasons(max_batch_size),
    }


#: model -> its GPU target. Row sizes are the input bytes of one row (FP32).
GPU: dict[str, Target] = {
    "jet_tagger": Target(
        max_batch_size=1024, preferred_batch_sizes=(256, 1024),
        parameters={"intra_op_thread_count": "1"},
        reasons={
            **_common_reasons(1024, 128 * 16 * 4,
                              "version 2's two EdgeConv blocks over 64 constituents (k = 8, "
                              "up to 64 channels per edge: 64 × 8 × 64 floats, 131 kB, per "
                              "edge tensor) keep of the order of 1 MB of activations per jet, "
                              "~1 GB at 1024 jets (version 1 less): any data-centre GPU "
                              "holds it"),
            "intra_op_thread_count":
                "ONNX Runtime's CPU threads for a GPU session only run ops without a CUDA "
                "kernel and default to every core the container sees (the node's, not the "
                "pod's 4): one per session keeps two instances of three models within the "
                "pod's CPU request",
        },
        options='''
# --- option: TensorRT, FP16 (onnxruntime's TensorRT execution provider) ---------------
# Without an `optimization` block the native onnxruntime backend runs KIND_GPU instances
# with the CUDA execution provider (FP32). To let TensorRT build FP16 engines instead
# (fused kernels at half precision; measure the gain with `offload perf`), uncomment the block,
# validate the tagger's ROC AUC on validation.npz through the server (tests/
# test_jet_models.py does it for the CPU) and keep the engine cache on a volume, since a
# build takes minutes at the first load. `offload repo check` checks the block.
# optimization { execution_accelerators {
#   gpu_execution_accelerator: [ {
#     name: "tensorrt"
#     parameters { key: "precision_mode" value: "FP16" }
#     parameters { key: "max_workspace_size_bytes" value: "1073741824" }
#     parameters { key: "trt_engine_cache_enable" value: "1" }
#     parameters { key: "trt_engine_cache_path" value: "/tmp/trt-engines" }
#   } ]
# } }
''',
    ),
    "jet_energy_regression": Target(
        max_batch_size=1024, preferred_batch_sizes=(256, 1024),
        parameters={"TF_NUM_INTRA_THREADS": "2", "TF_NUM_INTER_THREADS": "2"},
        reasons={
            **_common_reasons(1024, (9 + 128 * 13 + 128) * 4,
                              "the per-constituent MLP (13→64→64 over 128 constituents) "
                              "keeps ~0.1 MB of activations per jet, ~0.1 GB at 1024"),
            "TF_NUM_INTRA_THREADS":
                "TensorFlow's CPU pools default to every core the container sees (the "
                "node's); 2 bounds the process-wide pool (one per process unless "
                "TF_USE_PER_SESSION_THREADS) to half the pod's 4 CPUs, enough for the few "
                "CPU ops around the GPU graph",
            "TF_NUM_INTER_THREADS": "as TF_NUM_INTRA_THREADS: 2 graphs in flight at once, one "
                                    "per instance",
        },
    ),
    "calo_shower_generator": Target(
        max_batch_size=4096, preferred_batch_sizes=(1024, 4096),
        parameters={"INTRA_OP_THREAD_COUNT": "1"},
        reasons={
            **_common_reasons(4096, (1 + 8 + 576) * 4,
                              "the decoder MLP (3 × 256) and the float64 Poisson draw keep "
                              "~50 kB per shower, ~0.2 GB at 4096; the draw is a loop of "
                              "small kernels with a host sync per step, which only large "
                              "batches amortise (float64: use a data-centre GPU, consumer "
                              "GPUs run it at 1/32-1/64 rate); the answer is as large as "
                              "the request (576 floats a shower)"),
            "INTRA_OP_THREAD_COUNT":
                "the native backend applies it to the whole Triton process; a GPU "
                "instance's CPU work is launching kernels, which more threads only slow "
                "(as measured on the CPU, model card above)",
        },
    ),
}
TARGETS: dict[str, dict[str, Target]] = {"gpu": GPU}


def variant_config(model_dir: Path, target: Target):  # -> model_config_pb2.ModelConfig
    """The variant as a message: backend, inputs and outputs from the model's config.pbtxt,
    the rest from the target."""
    from tritonclient.grpc import model_config_pb2

    from offload_server.model_spec import read_config

    base = read_config(model_dir)
    config = model_config_pb2.ModelConfig(name=model_dir.name, backend=base.backend,
                                          max_batch_size=target.max_batch_size)
    config.input.extend(base.input)
    config.output.extend(base.output)
    config.instance_group.add(
        count=target.instances,
        kind=model_config_pb2.ModelInstanceGroup.Kind.Value(target.kind))
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend(target.preferred_batch_sizes)
    batching.max_queue_delay_microseconds = target.max_queue_delay_us
    policy = batching.default_queue_policy
    policy.max_queue_size = target.max_queue_size
    policy.timeout_action = model_config_pb2.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = target.queue_timeout_us
    policy.allow_timeout_override = True
    if base.HasField("version_policy"):  # a variant serves the same versions: clients that
        config.version_policy.CopyFrom(base.version_policy)  # pin one see one interface
    for key, value in target.parameters.items():
        config.parameters[key].string_value = value
    if target.warmup:
        for label, batch in (("one", 1), ("full", target.max_batch_size)):
            warmup = config.model_warmup.add(name=label, batch_size=batch)
            for t in base.input:
                sample = warmup.inputs[t.name]
                sample.data_type = t.data_type
                sample.dims.extend(t.dims)
                sample.zero_data = True
    return config


def variant_pbtxt(model_dir: Path, target: Target) -> str:
    """The variant's text: `variant_config` with a header saying what the file is, and the
    target's commented-out options after it."""
    from offload_server import model_config

    header = [
        f"{model_dir.name}, target '{target.target}': tritonserver "
        f"--model-config-name={target.target}",
        "loads this file instead of ../config.pbtxt (the CPU config). Why each number:",
        "../model_card.md, \"Config variants\". Written by offload_training.targets.",
    ]
    return model_config.text(variant_config(model_dir, target), header=header,
                             trailer=target.options)


def card_section(targets: dict[str, Target]) -> str:
    """The model card's "Config variants" section, between markers (rewritten in place)."""
    lines = [_CARD_BEGIN, "## Config variants", "",
             "`config.pbtxt` is tuned for the CPU (the embedded server and CPU-only clusters). "
             "Each target below has `configs/<target>.pbtxt`, which Triton loads instead when "
             "started with `--model-config-name=<target>` (the Kubernetes `gpu` overlay does; "
             "`offload serve --model-config-name <target>` likewise). Inputs, outputs and "
             "backend are those of `config.pbtxt`; `offload repo check` validates every "
             "variant against the artifact. The figures are reasoned, not yet measured on a "
             "GPU: `perf/gpu_run.sh` measures them wherever a GPU is available. "
             "`config.pbtxt` itself has two instances for the reason given for "
             "`instance_group` below (the batcher's 500 ms sleep with a single instance).", ""]
    for name, target in targets.items():
        lines += [f"### `configs/{name}.pbtxt` ({target.kind}, NGC 24.10's native backend)", "",
                  "| setting | value | why |", "| --- | --- | --- |"]
        lines += [f"| `{s.name}` | {s.value} | {s.why} |" for s in target.settings()]
        if target.options:
            lines += ["", "The file also carries, commented out, an option: TensorRT FP16 "
                      "through onnxruntime's TensorRT execution provider (see the file)."]
        lines.append("")
    lines += ["A site adds its own target (e.g. `h100`) by copying `configs/gpu.pbtxt` to "
              "`configs/h100.pbtxt` in every model, changing the numbers, checking with "
              "`offload repo check`, and starting Triton with `--model-config-name=h100` "
              "(README, \"GPUs\").", _CARD_END]
    return "\n".join(lines)


def _update_card(card: Path, section: str) -> None:
    text = card.read_text() if card.is_file() else ""
    pattern = re.compile(re.escape(_CARD_BEGIN) + ".*?" + re.escape(_CARD_END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        anchor = text.find("\n## Reproduce")
        text = (text[:anchor] + "\n" + section + "\n" + text[anchor:] if anchor >= 0
                else text.rstrip("\n") + "\n\n" + section + "\n")
    card.write_text(text)


def write_variants(model_dir: Path) -> list[Path]:
    """Write every known target's variant of this model and its card section; the paths
    written (none for a model no target knows)."""
    targets = {name: table[model_dir.name] for name, table in TARGETS.items()
               if model_dir.name in table}
    written = []
    for name, target in targets.items():
        path = model_dir / "configs" / f"{name}.pbtxt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(variant_pbtxt(model_dir, target))
        written.append(path)
    if targets:
        _update_card(model_dir / "model_card.md", card_section(targets))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", nargs="?", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    for model_dir in sorted(p for p in args.repository.iterdir()
                            if (p / "config.pbtxt").is_file()):
        for path in write_variants(model_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
