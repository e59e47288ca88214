"""A model's configuration as the backends and the repository checker see it.

Triton hands a Python backend its configuration as JSON; the repository checker parses
`config.pbtxt` with Triton's own protobuf (`model_config_pb2`). Both become a
:class:`ModelSpec`, so that the checks at load time and in `offload repo check` are the
same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offload import dtypes
from offload_server.errors import ModelRepositoryError

#: Triton data types that the CPU backends carry, with their numpy equivalents: the
#: client's table in the model config's spelling. (TYPE_BF16 has no numpy dtype of its own
#: and TYPE_STRING is not used by the physics models.)
TRITON_TO_NUMPY: dict[str, np.dtype] = {
    f"TYPE_{name}": dtype for name, dtype in dtypes.TRITON_TO_NUMPY.items()
    if name not in ("BYTES", "BF16")}

#: Where each backend looks for its artifact inside a version folder, as the native
#: backends do (`default_model_filename` in the config overrides it).
DEFAULT_ARTIFACT = {
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorflow": "model.savedmodel",
}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the config declares it: dims exclude the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return TRITON_TO_NUMPY[self.data_type]

    def describe(self) -> str:
        return f"{self.data_type.removeprefix('TYPE_')}{list(self.dims)}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    default_model_filename: str = ""
    instance_count: int = 1

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def artifact_name(self) -> str:
        return self.default_model_filename or DEFAULT_ARTIFACT.get(self.backend, "")

    def artifact_path(self, model_dir: Path, version: str) -> Path:
        return model_dir / version / self.artifact_name

    def full_shape(self, tensor: TensorSpec) -> tuple[int, ...]:
        """The shape the artifact sees: a leading -1 for the batch when batching."""
        return (-1, *tensor.dims) if self.batched else tensor.dims

    def int_parameter(self, *names: str) -> int | None:
        """The first of `names` present in the config's parameters, as an integer."""
        for name in names:
            if name in self.parameters:
                raw = self.parameters[name]
                try:
                    return int(raw)
                except ValueError:
                    raise ModelRepositoryError(
                        f"model '{self.name}': parameter {name} must be an integer, "
                        f"got {raw!r}"
                    ) from None
        return None

    def bool_parameter(self, name: str, default: bool = False) -> bool:
        """A boolean parameter as the native backends parse it (true/on/1, false/off/0)."""
        from offload_server.backends.parameters import parse_bool

        if name not in self.parameters:
            return default
        value = parse_bool(self.parameters[name])
        if value is None:
            raise ModelRepositoryError(
                f"model '{self.name}': parameter {name} must be true/on/1 or false/off/0 "
                f"(as Triton's native backends parse it), got {self.parameters[name]!r}")
        return value

    def thread_parameter(self, name: str) -> int | None:
        """A thread count: an integer >= 0 (0: the framework's default), or None if unset."""
        value = self.int_parameter(name)
        if value is not None and value < 0:
            raise ModelRepositoryError(
                f"model '{self.name}': parameter {name} must be >= 0 (0: the framework's "
                f"default), got {value}")
        return value

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelSpec:
        """From Triton's JSON form of the config (what a Python backend receives) or from
        `google.protobuf.json_format.MessageToDict(..., preserving_proto_field_name=True)`.
        """
        name = config.get("name", "?")

        def tensors(key: str) -> tuple[TensorSpec, ...]:
            specs = []
            for entry in config.get(key, []):
                data_type = entry.get("data_type", "TYPE_INVALID")
                if data_type not in TRITON_TO_NUMPY:
                    raise ModelRepositoryError(
                        f"model '{name}': {key} '{entry.get('name')}' has data_type "
                        f"{data_type}; the CPU backends carry "
                        f"{', '.join(t.removeprefix('TYPE_') for t in TRITON_TO_NUMPY)}"
                    )
                dims = entry.get("reshape", {}).get("shape") or entry.get("dims", [])
                specs.append(TensorSpec(entry["name"], data_type, tuple(int(d) for d in dims)))
            return tuple(specs)

        parameters = {
            key: str(value.get("string_value", "")) if isinstance(value, Mapping) else str(value)
            for key, value in config.get("parameters", {}).items()
        }
        instance_count = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        return cls(
            name=name,
            backend=config.get("backend", ""),
            max_batch_size=int(config.get("max_batch_size", 0)),
            inputs=tensors("input"),
            outputs=tensors("output"),
            parameters=parameters,
            default_model_filename=config.get("default_model_filename", ""),
            instance_count=instance_count,
        )


#: Where Triton (2.51+, `--model-config-name NAME`) looks for a model's config variants.
VARIANTS_FOLDER = "configs"


def config_path(model_dir: Path, variant: str | None = None) -> Path:
    """`config.pbtxt`, or the variant `configs/<variant>.pbtxt` that
    `tritonserver --model-config-name <variant>` loads instead."""
    if variant is None:
        return Path(model_dir) / "config.pbtxt"
    return Path(model_dir) / VARIANTS_FOLDER / f"{variant}.pbtxt"


def config_variants(model_dir: Path) -> list[str]:
    """The names of a model's config variants (`configs/*.pbtxt`), sorted."""
    folder = Path(model_dir) / VARIANTS_FOLDER
    return sorted(p.stem for p in folder.glob("*.pbtxt")) if folder.is_dir() else []


def read_config(model_dir: Path, variant: str | None = None):  # -> model_config_pb2.ModelConfig
    """Parse `config.pbtxt` (or a variant) with Triton's protobuf; errors carry line and
    column."""
    path = config_path(model_dir, variant)
    if not path.is_file():
        if variant is not None:
            raise ModelRepositoryError(f"{path} is missing: model '{Path(model_dir).name}' has "
                                       f"no config variant '{variant}'")
        raise ModelRepositoryError(f"{path} is missing; with auto-complete off (the default) "
                                   "every model needs a complete config.pbtxt")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as error:
        raise ModelRepositoryError(f"{path}:{error}") from None
    return config


def spec_from_proto(config, folder_name: str) -> ModelSpec:
    """A `model_config_pb2.ModelConfig` as a spec, named after its folder as Triton names it."""
    from google.protobuf import json_format

    as_dict = json_format.MessageToDict(config, preserving_proto_field_name=True)
    as_dict["name"] = folder_name
    return ModelSpec.from_config(as_dict)


def spec_from_folder(model_dir: Path, variant: str | None = None) -> ModelSpec:
    """The spec of a model folder's `config.pbtxt`, or of its config variant."""
    return spec_from_proto(read_config(model_dir, variant), Path(model_dir).name)


def shapes_compatible(declared: tuple[int, ...], found: tuple[int, ...]) -> bool:
    """Same rank, and every dimension equal where neither side is variable (-1)."""
    return len(declared) == len(found) and all(
        a == b or a < 0 or b < 0 for a, b in zip(declared, found, strict=True)
    )


def version_folders(model_dir: Path) -> list[int]:
    """The version folders of a model as Triton counts them (integral names without a
    leading zero), ascending."""
    return sorted(int(p.name) for p in Path(model_dir).iterdir()
                  if p.is_dir() and p.name.isdigit() and (p.name == "0" or p.name[0] != "0"))


def served_versions(model_dir: Path, variant: str | None = None) -> list[int]:
    """The versions Triton loads from a model folder under its config's `version_policy`,
    ascending (:func:`policy_versions`)."""
    return policy_versions(read_config(model_dir, variant), version_folders(model_dir))


def policy_versions(config, existing: list[int]) -> list[int]:
    """The versions a `model_config_pb2.ModelConfig`'s `version_policy` loads out of the
    version folders `existing`, as triton-inference-server/core's VersionsToLoad (r24.10):
    `latest { num_versions: N }` the N highest (the default, N = 1), `all` every one,
    `specific` the listed ones that have a folder. Ascending."""
    existing = sorted(existing)
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        return sorted(set(policy.specific.versions) & set(existing))
    if kind == "all":
        return existing
    count = policy.latest.num_versions if kind == "latest" else 1
    return existing[::-1][:count][::-1]


def default_version(model_dir: Path, variant: str | None = None) -> str:
    """The version a request that names none gets: Triton serves the highest-numbered
    version in READY state (core's ModelLifeCycle::GetModel with version -1), i.e. the
    highest one its policy loads, while that one is ready."""
    versions = served_versions(model_dir, variant)
    if not versions:
        raise ModelRepositoryError(f"model '{Path(model_dir).name}': no version folder is "
                                   "served under its version_policy")
    return str(versions[-1])
