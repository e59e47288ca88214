"""TorchScript on the CPU, with the native pytorch backend's naming conventions.

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

from offload.errors import ModelRepositoryError
from offload_server.backends.runner import ArtifactTensor, Signature
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
    def __init__(self, artifact: Path, spec: ModelSpec) -> None:
        import torch

        self._torch = torch
        # Native backend parameter names; threads are per process, i.e. per instance.
        intra = spec.int_parameter("INTRA_OP_THREAD_COUNT")
        inter = spec.int_parameter("INTER_OP_THREAD_COUNT")
        if intra is not None and intra > 0:
            torch.set_num_threads(intra)
        if inter is not None and inter > 0:
            # Settable once per process, before any inter-op work: true in a fresh stub.
            try:
                torch.set_num_interop_threads(inter)
            except RuntimeError as error:
                log.warning("model '%s': INTER_OP_THREAD_COUNT not applied: %s",
                            spec.name, error)
        try:
            self._module = torch.jit.load(str(artifact), map_location="cpu").eval()
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
        arguments = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self._order]
        with torch.inference_mode():
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
        return outputs


def load(artifact: Path, spec: ModelSpec) -> TorchScriptRunner:
    return TorchScriptRunner(artifact, spec)
