"""`offload repo check`: a model-repository linter with precise messages.

Parses every `config.pbtxt` with Triton's own protobuf, checks it the way Triton will, and
loads each artifact with the same code the CPU backends use to compare it with the config.
Triton's own load errors are terse; these say which model, which tensor, what was expected
and what was found.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from offload.errors import ModelRepositoryError, OffloadError
from offload_server.backends import LOADERS
from offload_server.backends.triton_model import load_checked
from offload_server.model_spec import DEFAULT_ARTIFACT, read_config, spec_from_proto

# Triton's legacy `platform` names for the backends the project serves.
PLATFORMS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
}
KNOWN_BACKENDS = (*LOADERS, "python")


@dataclass
class ModelReport:
    name: str
    backend: str = "?"
    versions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class RepositoryReport:
    path: Path
    models: list[ModelReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(m.ok for m in self.models)


def check_repository(path: str | Path, *, load_artifacts: bool = True) -> RepositoryReport:
    root = Path(path)
    report = RepositoryReport(root)
    if not root.is_dir():
        report.errors.append(f"{root} is not a folder; a model repository is a folder with "
                             "one sub-folder per model")
        return report
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        report.models.append(check_model(model_dir, load_artifacts=load_artifacts))
    return report


def check_model(model_dir: Path, *, load_artifacts: bool = True) -> ModelReport:
    report = ModelReport(model_dir.name)
    try:
        config = read_config(model_dir)
    except OffloadError as error:
        report.errors.append(str(error))
        return report
    where = f"model '{model_dir.name}'"
    if config.name and config.name != model_dir.name:
        report.errors.append(f"{where}: config.pbtxt says name \"{config.name}\"; it must match "
                             f"the folder name \"{model_dir.name}\"")
    backend = config.backend or PLATFORMS.get(config.platform, "")
    report.backend = backend or "?"
    if not backend:
        report.errors.append(f"{where}: config.pbtxt sets no backend; add e.g. "
                             f"backend: \"onnxruntime\" (known: {', '.join(KNOWN_BACKENDS)})")
    elif backend not in KNOWN_BACKENDS:
        report.errors.append(f"{where}: unknown backend \"{backend}\"; this server has "
                             f"{', '.join(KNOWN_BACKENDS)}")
    report.errors += _structure_problems(where, config)
    report.warnings += _placement_warnings(where, config)
    report.versions = sorted((p.name for p in model_dir.iterdir()
                              if p.is_dir() and p.name.isdigit()), key=int)
    others = [p.name for p in model_dir.iterdir()
              if p.is_dir() and not p.name.isdigit() and not p.name.startswith(".")]
    if others:
        report.warnings.append(f"{where}: Triton ignores non-numeric folders: {', '.join(others)}")
    if not report.versions:
        report.errors.append(f"{where}: no version folder; put the artifact in "
                             f"{model_dir.name}/1/{DEFAULT_ARTIFACT.get(backend, '...')}")
    if report.errors or backend not in LOADERS or not load_artifacts:
        if backend == "python":
            report.errors += [f"{where}: version {v} has no model.py" for v in report.versions
                              if not (model_dir / v / "model.py").is_file()]
        return report
    try:
        spec = spec_from_proto(config, model_dir.name)
    except OffloadError as error:
        report.errors.append(str(error))
        return report
    spec = dataclasses.replace(spec, backend=backend)  # platform-only configs name no backend
    for version in report.versions:
        try:
            load_checked(model_dir, version, spec)
        except ModelRepositoryError as error:
            report.errors += [f"{p} (version {version})" for p in error.problems]
        except OffloadError as error:
            report.errors.append(f"{error} (version {version})")
    return report


def _structure_problems(where: str, config: model_config_pb2.ModelConfig) -> list[str]:
    problems = []
    if config.max_batch_size < 0:
        problems.append(f"{where}: max_batch_size is {config.max_batch_size}; use 0 (no "
                        "batching) or a positive batch size")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            problems.append(f"{where}: dynamic_batching needs max_batch_size > 0")
        too_big = [s for s in config.dynamic_batching.preferred_batch_size
                   if s > config.max_batch_size]
        if too_big and config.max_batch_size > 0:
            problems.append(f"{where}: preferred_batch_size {too_big} exceeds max_batch_size "
                            f"{config.max_batch_size}")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        if not tensors:
            problems.append(f"{where}: config.pbtxt declares no {kind}")
        seen: set[str] = set()
        for tensor in tensors:
            label = f"{where}: {kind} '{tensor.name}'"
            if tensor.name in seen:
                problems.append(f"{label} is declared twice")
            seen.add(tensor.name)
            if tensor.data_type == model_config_pb2.TYPE_INVALID:
                problems.append(f"{label} has no data_type (e.g. data_type: TYPE_FP32)")
            bad = [d for d in tensor.dims if d == 0 or d < -1]
            if bad:
                problems.append(f"{label}: dims {list(tensor.dims)} may hold only -1 "
                                "(variable) or positive sizes")
            if not tensor.dims and config.max_batch_size == 0:
                problems.append(f"{label} has no dims; a scalar per request needs dims: [ 1 ]")
    return problems


def _placement_warnings(where: str, config: model_config_pb2.ModelConfig) -> list[str]:
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    if any(group.kind == gpu for group in config.instance_group):
        return [f"{where}: instance_group kind KIND_GPU cannot be placed on a CPU-only server; "
                "leave kind unset (KIND_AUTO) so the same config runs on GPUs and CPUs"]
    return []


def print_report(report: RepositoryReport) -> None:
    for error in report.errors:
        print(f"ERROR {error}")
    for model in report.models:
        versions = ",".join(model.versions) or "-"
        status = "ok" if model.ok else f"{len(model.errors)} error(s)"
        print(f"{model.name} ({model.backend}, versions {versions}): {status}")
        for error in model.errors:
            print(f"  ERROR {error}")
        for warning in model.warnings:
            print(f"  warning {warning}")
    if not report.models and not report.errors:
        print(f"{report.path}: no models (an empty repository is valid)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="repo_action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="check every model's config against its artifact")
    check.add_argument("path", nargs="?", default="model_repository",
                       help="the model repository (default: %(default)s)")
    check.add_argument("--no-load", action="store_true",
                       help="check configs and layout only, without loading artifacts")


def run(args: argparse.Namespace) -> int:
    report = check_repository(args.path, load_artifacts=not args.no_load)
    print_report(report)
    return 0 if report.ok else 1
