"""`offload repo check`: a model-repository linter with precise messages.

Parses every `config.pbtxt`, and every config variant `configs/<name>.pbtxt` (what
`tritonserver --model-config-name <name>` loads instead), with Triton's own protobuf, checks
each the way Triton will, and loads each artifact with the same code the CPU backends use to
compare it with each config. A variant must keep config.pbtxt's backend, inputs and outputs.
Triton's own load errors are terse; these say which model, which tensor, what was expected
and what was found.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from offload.errors import OffloadError
from offload_server.backends import LOADERS
from offload_server.backends import parameters as backend_parameters
from offload_server.backends.triton_model import load_checked
from offload_server.errors import ModelRepositoryError
from offload_server.model_spec import (
    DEFAULT_ARTIFACT,
    VARIANTS_FOLDER,
    config_variants,
    policy_versions,
    read_config,
    spec_from_proto,
)

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
    served: list[str] = field(default_factory=list)  # under config.pbtxt's version_policy
    variants: list[str] = field(default_factory=list)  # configs/<name>.pbtxt
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
    """config.pbtxt and every config variant (`configs/<name>.pbtxt`, what
    `tritonserver --model-config-name <name>` loads instead), each against the artifact."""
    report = ModelReport(model_dir.name)
    try:
        config = read_config(model_dir)
    except OffloadError as error:
        report.errors.append(str(error))
        return report
    report.variants = config_variants(model_dir)
    backend = config.backend or PLATFORMS.get(config.platform, "")
    report.backend = backend or "?"
    report.versions = sorted((p.name for p in model_dir.iterdir()
                              if p.is_dir() and p.name.isdigit()), key=int)
    where = f"model '{model_dir.name}'"
    others = [p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.isdigit()
              and not p.name.startswith(".") and p.name != VARIANTS_FOLDER]
    if others:
        report.warnings.append(f"{where}: Triton ignores non-numeric folders: {', '.join(others)}")
    if not report.versions:
        report.errors.append(f"{where}: no version folder; put the artifact in "
                             f"{model_dir.name}/1/{DEFAULT_ARTIFACT.get(backend, '...')}")
    else:
        report.served = [str(v) for v in _served(config, report.versions)]
        _check_version_policy(report, where, "config.pbtxt", config)
    _check_config(report, model_dir, config, None, None, load_artifacts)
    for variant in report.variants:
        try:
            variant_config = read_config(model_dir, variant)
        except OffloadError as error:
            report.errors.append(str(error))
            continue
        _check_config(report, model_dir, variant_config, variant, config, load_artifacts)
    return report


def _check_config(report: ModelReport, model_dir: Path, config: model_config_pb2.ModelConfig,
                  variant: str | None, default: model_config_pb2.ModelConfig | None,
                  load_artifacts: bool) -> None:
    """One config (`variant` None: config.pbtxt) into `report`."""
    file = "config.pbtxt" if variant is None else f"{VARIANTS_FOLDER}/{variant}.pbtxt"
    where = f"model '{model_dir.name}'" + ("" if variant is None else f" ({file})")
    errors: list[str] = []
    if config.name and config.name != model_dir.name:
        errors.append(f"{where}: {file} says name \"{config.name}\"; it must match the "
                      f"folder name \"{model_dir.name}\"")
    backend = config.backend or PLATFORMS.get(config.platform, "")
    if not backend:
        errors.append(f"{where}: {file} sets no backend; add e.g. backend: \"onnxruntime\" "
                      f"(known: {', '.join(KNOWN_BACKENDS)})")
    elif backend not in KNOWN_BACKENDS:
        errors.append(f"{where}: unknown backend \"{backend}\"; this server has "
                      f"{', '.join(KNOWN_BACKENDS)}")
    errors += _structure_problems(where, config)
    if default is not None:
        errors += _variant_problems(where, config, default, report.versions)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    parameter_errors, parameter_warnings = backend_parameters.problems(backend, parameters)
    errors += [f"{where}: {problem}" for problem in parameter_errors]
    report.warnings += [f"{where}: {problem}" for problem in parameter_warnings]
    report.warnings += _stall_warnings(where, config)
    if variant is None:
        report.warnings += _placement_warnings(where, config)
    report.errors += errors
    if errors or report.errors or backend not in LOADERS or not load_artifacts:
        if backend == "python" and variant is None:
            report.errors += [f"{where}: version {v} has no model.py" for v in report.versions
                              if not (model_dir / v / "model.py").is_file()]
        return
    try:
        spec = spec_from_proto(config, model_dir.name)
    except OffloadError as error:
        report.errors.append(f"{error}" + ("" if variant is None else f" ({file})"))
        return
    spec = dataclasses.replace(spec, backend=backend)  # platform-only configs name no backend
    label = "" if variant is None else f", {file}"
    for version in report.versions:
        try:
            load_checked(model_dir, version, spec)
        except ModelRepositoryError as error:
            report.errors += [f"{p} (version {version}{label})" for p in error.problems]
        except OffloadError as error:
            report.errors.append(f"{error} (version {version}{label})")


def _served(config: model_config_pb2.ModelConfig, folders: list[str]) -> list[int]:
    return policy_versions(config, [int(v) for v in folders])


def _check_version_policy(report: ModelReport, where: str, file: str,
                          config: model_config_pb2.ModelConfig) -> None:
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        missing = sorted(set(policy.specific.versions) - {int(v) for v in report.versions})
        if missing:
            report.errors.append(
                f"{where}: {file}'s version_policy lists version(s) "
                f"{', '.join(map(str, missing))} with no folder (Triton logs an error and "
                f"serves only {', '.join(report.served) or 'nothing'})")
    if kind == "latest" and policy.latest.num_versions < 1:
        report.errors.append(f"{where}: {file}'s version_policy latest {{ num_versions: "
                             f"{policy.latest.num_versions} }} serves nothing; use 1 or more")
    unserved = [v for v in report.versions if v not in report.served]
    if unserved and report.served:
        report.warnings.append(
            f"{where}: version folder(s) {', '.join(unserved)} are not served under "
            f"{file}'s version_policy (it serves {', '.join(report.served)}); Triton ignores "
            "them")


def _variant_problems(where: str, config: model_config_pb2.ModelConfig,
                      default: model_config_pb2.ModelConfig,
                      folders: list[str] | None = None) -> list[str]:
    """A variant serves the same artifact to the same clients: backend, inputs and outputs
    as in config.pbtxt, and the same versions (batch size, instances, batching and
    parameters may differ)."""
    problems = []
    if folders and _served(config, folders) != _served(default, folders):
        theirs = ", ".join(map(str, _served(config, folders))) or "none"
        default_versions = ", ".join(map(str, _served(default, folders))) or "none"
        problems.append(f"{where}: serves version(s) {theirs}, config.pbtxt "
                        f"{default_versions}: a client "
                        "that pins a version (or names none and gets the highest) must find "
                        "the same versions on every target; copy config.pbtxt's "
                        "version_policy")
    if (config.backend, config.platform) != (default.backend, default.platform):
        problems.append(f"{where}: backend \"{config.backend or config.platform}\" differs from "
                        f"config.pbtxt's \"{default.backend or default.platform}\"; a variant "
                        "serves the same artifact")
    for kind, mine, theirs in (("input", config.input, default.input),
                               ("output", config.output, default.output)):
        ours, base = _tensors(mine), _tensors(theirs)
        if ours != base:
            problems.append(f"{where}: its {kind}s ({'; '.join(ours)}) differ from "
                            f"config.pbtxt's ({'; '.join(base)}); clients must see one "
                            "interface on every target")
    if (config.max_batch_size > 0) != (default.max_batch_size > 0):
        problems.append(f"{where}: max_batch_size {config.max_batch_size} and config.pbtxt's "
                        f"{default.max_batch_size} disagree on whether the model batches")
    return problems


def _tensors(tensors) -> list[str]:
    return [f"{t.name} {model_config_pb2.DataType.Name(t.data_type)}{list(t.dims)}"
            for t in tensors]


def _stall_warnings(where: str, config: model_config_pb2.ModelConfig) -> list[str]:
    """A queue policy disables Triton's prefetching; with one instance the dynamic batcher
    can then sleep 500 ms with work queued (README, "CPU backends")."""
    batching = config.dynamic_batching
    if not config.HasField("dynamic_batching") or not batching.HasField("default_queue_policy"):
        return []
    instances = sum(g.count or 1 for g in config.instance_group) or 1
    if instances >= 2:
        return []
    return [f"{where}: a queue policy with a single instance: Triton 2.51's dynamic batcher "
            "can then hold a request ~500 ms while the instance is idle; use "
            "instance_group [ { count: 2 } ] or more"]


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
    problems += _warmup_problems(where, config)
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


def _warmup_problems(where: str, config: model_config_pb2.ModelConfig) -> list[str]:
    """Triton runs `model_warmup` at load and refuses the model if a sample does not fit."""
    problems = []
    inputs = {t.name: t for t in config.input}
    for warmup in config.model_warmup:
        label = f"{where}: model_warmup '{warmup.name}'"
        if config.max_batch_size > 0 and not 1 <= warmup.batch_size <= config.max_batch_size:
            problems.append(f"{label}: batch_size {warmup.batch_size} is outside 1.."
                            f"{config.max_batch_size} (max_batch_size)")
        missing = sorted(set(inputs) - set(warmup.inputs))
        if missing:
            problems.append(f"{label} lacks input(s) {', '.join(missing)}")
        for name, sample in warmup.inputs.items():
            declared = inputs.get(name)
            if declared is None:
                problems.append(f"{label}: '{name}' is not an input (inputs: "
                                f"{', '.join(inputs)})")
                continue
            if sample.data_type != declared.data_type:
                problems.append(f"{label}: '{name}' is "
                                f"{model_config_pb2.DataType.Name(sample.data_type)}, the input "
                                f"{model_config_pb2.DataType.Name(declared.data_type)}")
            fixed = list(declared.dims)
            if len(sample.dims) != len(fixed) or any(
                    d != s for d, s in zip(fixed, sample.dims, strict=False) if d >= 0):
                problems.append(f"{label}: '{name}' has dims {list(sample.dims)}, the input "
                                f"{fixed}")
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
        if len(model.served) > 1:
            versions += f" (default {model.served[-1]})"
        status = "ok" if model.ok else f"{len(model.errors)} error(s)"
        variants = f", variants {','.join(model.variants)}" if model.variants else ""
        print(f"{model.name} ({model.backend}, versions {versions}{variants}): {status}")
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
