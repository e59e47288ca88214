"""Where a model instance computes: the instance group's kind and device, and what the
framework here can do.

Triton hands each instance its kind (`KIND_CPU`, `KIND_GPU`, `KIND_MODEL`; KIND_AUTO is
resolved before) and device id. The `pytorch` CPU backend runs a `KIND_GPU` instance on
`cuda:<device id>` when the installed torch sees that device; the `onnxruntime` and
`tensorflow` CPU backends always compute on the CPU (ONNX Runtime's CPU build, TensorFlow
without its CUDA libraries), as does `pytorch` with a CPU build of torch. Those fall back to
the CPU with a warning in Triton's log rather than refuse the model, so that one config runs
everywhere; NGC's native backends use the GPU. Triton itself refuses `KIND_GPU` on a machine
where it sees no GPU at all (checked with tritonserver 2.51: "instance group ... has kind
KIND_GPU but no GPUs are available"), before any backend code runs.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Backends here that can compute on a GPU, and what they need for it.
GPU_CAPABLE = {"pytorch": "a CUDA build of torch that sees the device"}


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda:<n>"
    warning: str | None = None  # why a KIND_GPU instance computes on the CPU


def choose(model: str, backend: str, kind: str, device_id: int, cuda_devices: int) -> Placement:
    """The device of one instance. `kind` as Triton passes it ("CPU", "GPU", "MODEL"),
    `cuda_devices` as the framework counts them (0 when it has no CUDA)."""
    if kind.upper().removeprefix("KIND_") != "GPU":
        return Placement("cpu")
    where = f"model '{model}': a KIND_GPU instance (device {device_id})"
    if backend not in GPU_CAPABLE:
        return Placement("cpu", f"{where} computes on the CPU: the CPU {backend} backend has "
                                "no GPU support (NGC's native backend uses the GPU)")
    if cuda_devices == 0:
        return Placement("cpu", f"{where} computes on the CPU: this torch sees no CUDA device "
                                "(a CPU build of torch, or no driver); install a CUDA build "
                                "of torch to use the GPU")
    if not 0 <= device_id < cuda_devices:
        return Placement("cpu", f"{where} computes on the CPU: torch sees {cuda_devices} CUDA "
                                f"device(s), not device {device_id} (CUDA_VISIBLE_DEVICES "
                                "differs between Triton and its stub?)")
    return Placement(f"cuda:{device_id}")


def cuda_devices(backend: str) -> int:
    """How many CUDA devices the backend's framework sees (0 for the CPU-only ones)."""
    if backend != "pytorch":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
