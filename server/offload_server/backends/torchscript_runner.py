"""TorchScript, with the native pytorch backend's naming conventions and parameters, on the
CPU or, for a KIND_GPU instance with a CUDA build of torch, on that GPU (`placement`).

Inputs named `<anything>__<index>` are passed by position; otherwise config names must be
`forward()` argument names. Outputs named `<anything>__<index>` pick that element of the
returned tuple; otherwise outputs are taken in the config's order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from offload_server.backends.runner import ArtifactTensor, Signature
from offload_server.errors import ModelRepositoryError
from offload_server.model_spec import ModelSpec

log = logging.getLogger(__name__)
_INDEXED = re.compile(r"^.+__(\d+)$")


def _indices(names: list[str]) -> list[int] | None:
    """Positions from `<name>__<index>` names, if every name follows that convention."""
    matches = [_INDEXED.match(n) for n in names]
    if names and all(matches):
        return [int(m.group(1)) for m in matches if m]
    return None


class TorchScriptRunner:
    def __init__(self, artifact: Path, spec: ModelSpec, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        # Native backend parameter names; threads are per process, i.e. per instance.
        intra = spec.thread_parameter("INTRA_OP_THREAD_COUNT")
        inter = spec.thread_parameter("INTER_OP_THREAD_COUNT")
        if intra:
            torch.set_num_threads(intra)
        if inter:
            # Settable once per process, before any inter-op work: true in a fresh stub.
            try:
                torch.set_num_interop_threads(inter)
            except RuntimeError as error:
                log.warning("model '%s': INTER_OP_THREAD_COUNT not applied: %s",
                            spec.name, error)
        # As the native backend: InferenceMode unless INFERENCE_MODE is false (then no_grad).
        self._inference_mode = spec.bool_parameter("INFERENCE_MODE", default=True)
        self._optimized = not spec.bool_parameter("DISABLE_OPTIMIZED_EXECUTION")
        if spec.bool_parameter("DISABLE_CUDNN"):
            torch.backends.cudnn.enabled = False
        self._clean_cache = (spec.bool_parameter("ENABLE_CACHE_CLEANING")
                             and self.device.type == "cuda")
        for accepted in ("ENABLE_WEIGHT_SHARING", "ENABLE_JIT_EXECUTOR", "ENABLE_JIT_PROFILING",
                         "ENABLE_TENSOR_FUSER"):
            spec.bool_parameter(accepted)  # checked as the native backend would; no effect
        try:
            self._module = torch.jit.load(str(artifact), map_location=self.device).eval()
        except Exception as error:
            raise ModelRepositoryError(
                f"model '{spec.name}': torch.jit.load cannot read {artifact} as TorchScript "
                f"(export with torch.jit.script or torch.jit.trace, then .save): {error}"
            ) from error
        arguments = [a.name for a in self._module.forward.schema.arguments][1:]  # drop self
        names = [t.name for t in spec.inputs]
        positions = _indices(names)
        if positions is None:
            unknown = [n for n in names if n not in arguments]
            if unknown:
                raise ModelRepositoryError(
                    f"model '{spec.name}': input(s) {', '.join(map(repr, unknown))} of "
                    f"config.pbtxt are neither forward() arguments of {artifact.name} "
                    f"(it takes: {', '.join(arguments)}) nor named <name>__<index>"
                )
            positions = [arguments.index(n) for n in names]
        if sorted(positions) != list(range(len(arguments))):
            raise ModelRepositoryError(
                f"model '{spec.name}': forward() of {artifact.name} takes {len(arguments)} "
                f"argument(s) ({', '.join(arguments)}), config.pbtxt supplies positions "
                f"{sorted(positions)}"
            )
        self._order = [name for _, name in sorted(zip(positions, names, strict=True))]
        outputs = [t.name for t in spec.outputs]
        self._output_index = dict(zip(outputs, _indices(outputs) or range(len(outputs)),
                                      strict=True))
        self.signature = Signature(
            inputs=tuple(ArtifactTensor(n) for n in names),  # TorchScript keeps no dtypes
            outputs=None,
        )
        self._name = spec.name

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        arguments = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device)
                     for n in self._order]
        grad_mode = torch.inference_mode() if self._inference_mode else torch.no_grad()
        with grad_mode, torch.jit.optimized_execution(self._optimized):
            result = self._module(*arguments)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if not isinstance(result, (tuple, list)):
            raise ModelRepositoryError(
                f"model '{self._name}': forward() returned {type(result).__name__}; "
                "expected a tensor or a tuple of tensors"
            )
        outputs = {}
        for name, index in self._output_index.items():
            if index >= len(result):
                raise ModelRepositoryError(
                    f"model '{self._name}': output '{name}' is element {index} of forward()'s "
                    f"result, which has {len(result)} element(s)"
                )
            outputs[name] = result[index].detach().cpu().numpy()
        if self._clean_cache:
            torch.cuda.empty_cache()
        return outputs


def load(artifact: Path, spec: ModelSpec, device: str = "cpu") -> TorchScriptRunner:
    return TorchScriptRunner(artifact, spec, device)
