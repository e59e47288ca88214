"""The `TritonPythonModel` behind each CPU backend.

Triton hands `execute()` the list of requests its scheduler (the dynamic batcher, if the
config has one) gathered. They are merged into one batch per distinct input shape, run in
one framework call, and the outputs are split back in request order. Anything wrong with a
request, or with what the model returned, becomes that request's error response with a
message naming the model, the tensor, what was expected and what was found.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from offload_server.backends import placement
from offload_server.backends.runner import Runner, signature_problems
from offload_server.errors import ModelRepositoryError
from offload_server.model_spec import ModelSpec, TensorSpec, shapes_compatible

Loader = Callable[..., Runner]  # (artifact, spec[, device]) -> Runner
log = logging.getLogger(__name__)


def load_checked(model_dir: Path, version: str, spec: ModelSpec,
                 loader: Loader | None = None, device: str = "cpu") -> Runner:
    """Load a model's artifact and refuse it if it disagrees with its config.
    Without `loader`, the one registered for the spec's backend. `device` other than
    "cpu" only for a backend that can use it (`placement.GPU_CAPABLE`)."""
    artifact = spec.artifact_path(model_dir, version)
    if not artifact.exists():
        folder = artifact.parent
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ModelRepositoryError(
            f"model '{spec.name}': backend '{spec.backend}' expects its artifact at "
            f"{artifact}, which does not exist (version folder holds: "
            f"{', '.join(present) or 'nothing'}); export it there or set "
            f"default_model_filename"
        )
    if loader is None:
        from offload_server.backends import LOADERS

        if spec.backend not in LOADERS:
            raise ModelRepositoryError(
                f"model '{spec.name}': no CPU backend named '{spec.backend}' "
                f"(there are: {', '.join(LOADERS)})")
        loader = importlib.import_module(LOADERS[spec.backend]).load
    runner = loader(artifact, spec) if device == "cpu" else loader(artifact, spec, device)
    problems = signature_problems(spec, runner.signature, artifact.name)
    if problems:
        raise ModelRepositoryError(
            "config.pbtxt and artifact disagree:\n  " + "\n  ".join(problems), problems)
    return runner


def _triton_log(pb_utils: Any, level: str, message: str) -> None:
    """A line in Triton's own log (W/I lines, shown by `offload serve`), else Python's."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        getattr(logger, f"log_{level}")(message)
    else:
        getattr(log, "warning" if level == "warn" else level)(message)


class BatchingTritonModel:
    """Subclasses name their framework's loader; Triton instantiates one per instance."""

    loader: Loader

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils  # only exists inside the stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        self.spec = ModelSpec.from_config(config)
        model_dir = Path(args["model_repository"])
        where = placement.choose(self.spec.name, self.spec.backend,
                                 args.get("model_instance_kind", "CPU"),
                                 int(args.get("model_instance_device_id", 0) or 0),
                                 placement.cuda_devices(self.spec.backend)
                                 if args.get("model_instance_kind") == "GPU" else 0)
        if where.warning:
            _triton_log(pb_utils, "warn", where.warning)
        elif where.device != "cpu":
            instance = args.get("model_instance_name", "")
            _triton_log(pb_utils, "info",
                        f"model '{self.spec.name}': instance {instance} on {where.device}")
        self.device = where.device
        self.runner = load_checked(model_dir, args["model_version"], self.spec,
                                   type(self).loader, device=where.device)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                inputs = self._read_inputs(request)
            except ModelRepositoryError as error:
                responses[index] = pb.InferenceResponse(error=pb.TritonError(str(error)))
                continue
            if not self.spec.batched:  # no batch dimension: nothing to merge
                key: tuple = ("request", index)
            else:
                key = tuple(value.shape[1:] for value in inputs.values())
            groups.setdefault(key, []).append((index, inputs))
        for members in groups.values():
            self._run_group(members, responses)
        return responses

    def finalize(self) -> None:
        self.runner = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ internals
    def _read_inputs(self, request: Any) -> dict[str, np.ndarray]:
        inputs = {}
        sizes = set()
        for tensor in self.spec.inputs:
            found = self._pb.get_input_tensor_by_name(request, tensor.name)
            if found is None:
                raise ModelRepositoryError(
                    f"model '{self.spec.name}': request lacks input '{tensor.name}' "
                    f"({tensor.describe()})"
                )
            value = found.as_numpy()
            inputs[tensor.name] = value
            if self.spec.batched:
                sizes.add(value.shape[0] if value.ndim else -1)
        if len(sizes) > 1:
            shapes = ", ".join(f"{name} {list(v.shape)}" for name, v in inputs.items())
            raise ModelRepositoryError(
                f"model '{self.spec.name}': inputs disagree on the batch size ({shapes}); "
                "every input needs the same first dimension"
            )
        return inputs

    def _run_group(self, members: list[tuple[int, dict[str, np.ndarray]]],
                   responses: list[Any]) -> None:
        pb = self._pb
        if len(members) == 1:
            merged = members[0][1]
        else:
            merged = {name: np.concatenate([inputs[name] for _, inputs in members])
                      for name in members[0][1]}
        sizes = [next(iter(inputs.values())).shape[0] if self.spec.batched else 0
                 for _, inputs in members]
        try:
            outputs = self.runner.run(merged)
            self._check_outputs(outputs, sum(sizes))
        except Exception as error:
            if len(members) > 1:
                # One request's bad data must not fail the others merged with it: run each
                # on its own, so that only the culprit gets the error.
                for member in members:
                    self._run_group([member], responses)
                return
            message = str(error)
            if not isinstance(error, ModelRepositoryError):
                message = (f"model '{self.spec.name}' ({self.spec.backend}) failed on a batch "
                           f"of {sum(sizes)}: {type(error).__name__}: {error}")
            log.error(message)
            for index, _ in members:
                responses[index] = pb.InferenceResponse(error=pb.TritonError(message))
            return
        if len(members) == 1:
            pieces = [outputs]
        else:
            bounds = np.cumsum(sizes)[:-1]
            split = {name: np.split(value, bounds) for name, value in outputs.items()}
            pieces = [{name: parts[i] for name, parts in split.items()}
                      for i in range(len(members))]
        for (index, _), piece in zip(members, pieces, strict=True):
            tensors = [pb.Tensor(name, np.ascontiguousarray(piece[name]))
                       for name in (t.name for t in self.spec.outputs)]
            responses[index] = pb.InferenceResponse(output_tensors=tensors)

    def _check_outputs(self, outputs: dict[str, np.ndarray], batch: int) -> None:
        for tensor in self.spec.outputs:
            value = outputs[tensor.name]
            self._check_output(tensor, value, batch)

    def _check_output(self, tensor: TensorSpec, value: np.ndarray, batch: int) -> None:
        where = f"model '{self.spec.name}': output '{tensor.name}'"
        if value.dtype != tensor.numpy_dtype:
            raise ModelRepositoryError(
                f"{where}: config.pbtxt declares {tensor.data_type} ({tensor.numpy_dtype.name}), "
                f"the model returned {value.dtype.name}"
            )
        expected = (batch, *tensor.dims) if self.spec.batched else tensor.dims
        if not shapes_compatible(expected, value.shape):
            raise ModelRepositoryError(
                f"{where}: config.pbtxt implies shape {list(expected)}, the model returned "
                f"{list(value.shape)}"
            )
