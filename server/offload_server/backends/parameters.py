"""The `parameters` of config.pbtxt that each backend reads, under the native backends' names.

A config is served by NGC's native backends on GPUs and by the project's CPU backends here,
so the CPU backends read the native names (checked against the native backends' sources at
r24.10, the NGC 24.10 / Triton 2.51 release: `triton-inference-server/onnxruntime_backend`
`src/onnxruntime.cc`, `pytorch_backend` `src/libtorch.cc`, `tensorflow_backend`
`src/tensorflow.cc`). A key neither reads is ignored by both, silently: `offload repo
check` warns about it. The README's table ("CPU backends") is this one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Parameter:
    """A key of `parameters { key: ... }` that a native backend reads."""

    kind: str  # "int", "bool" or "string"
    native: str  # what the native backend does with it
    here: str  # what the CPU backend does with it ("" = the same)
    applied: bool = True  # whether the CPU backend acts on it (False: accepted, checked only)


#: backend -> key -> Parameter. Only model-config `parameters`; the native backends' other
#: settings (`--backend-config`, `optimization { ... }`) are not parameters.
NATIVE: dict[str, dict[str, Parameter]] = {
    "onnxruntime": {
        "intra_op_thread_count": Parameter("int", "threads within an operator (0: ORT's "
                                           "default, the cores)", ""),
        "inter_op_thread_count": Parameter("int", "threads across operators (parallel "
                                           "execution mode only)", ""),
        "execution_mode": Parameter("int", "0 sequential (default), 1 parallel", ""),
        "enable_mem_arena": Parameter("bool", "CPU memory arena on/off", ""),
        "enable_mem_pattern": Parameter("bool", "memory pattern optimisation on/off", ""),
        "memory.enable_memory_arena_shrinkage": Parameter(
            "string", "run option: shrink these arenas after each run",
            "accepted, not applied", applied=False),
        "cudnn_conv_algo_search": Parameter("int", "CUDA EP (deprecated form)",
                                            "accepted, CPU only here", applied=False),
        "gpu_mem_limit": Parameter("int", "CUDA EP memory limit (deprecated form)",
                                   "accepted, CPU only here", applied=False),
        "arena_extend_strategy": Parameter("int", "CUDA EP arena growth (deprecated form)",
                                           "accepted, CPU only here", applied=False),
        "do_copy_in_default_stream": Parameter("bool", "CUDA EP stream use (deprecated form)",
                                               "accepted, CPU only here", applied=False),
    },
    "pytorch": {
        "INTRA_OP_THREAD_COUNT": Parameter("int", "at::set_num_threads, for the whole "
                                           "process (all models)", "per instance (each "
                                           "instance is its own process)"),
        "INTER_OP_THREAD_COUNT": Parameter("int", "at::set_num_interop_threads, whole "
                                           "process", "per instance"),
        "INFERENCE_MODE": Parameter("bool", "run under InferenceMode (default true), else "
                                    "NoGradMode", ""),
        "DISABLE_OPTIMIZED_EXECUTION": Parameter("bool", "TorchScript optimised execution "
                                                 "off", ""),
        "DISABLE_CUDNN": Parameter("bool", "cuDNN off", ""),
        "ENABLE_CACHE_CLEANING": Parameter("bool", "empty the CUDA cache after each "
                                           "execution", "the same on a CUDA instance"),
        "ENABLE_WEIGHT_SHARING": Parameter("bool", "instances on one device share weights",
                                           "accepted; instances are processes here",
                                           applied=False),
        "ENABLE_JIT_EXECUTOR": Parameter("bool", "TorchScript executor mode", "accepted, "
                                         "not applied", applied=False),
        "ENABLE_JIT_PROFILING": Parameter("bool", "TorchScript profiling mode", "accepted, "
                                          "not applied", applied=False),
        "ENABLE_TENSOR_FUSER": Parameter("bool", "TorchScript tensor-expression fuser",
                                         "accepted, not applied", applied=False),
    },
    "tensorflow": {
        "TF_NUM_INTRA_THREADS": Parameter("int", "session intra-op threads (0: TF's "
                                          "default)", "per instance (its own process)"),
        "TF_NUM_INTER_THREADS": Parameter("int", "session inter-op threads (0: TF's "
                                          "default)", "per instance (its own process)"),
        "TF_USE_PER_SESSION_THREADS": Parameter("bool", "thread pools per session instead "
                                                "of shared by the process", "accepted; "
                                                "each instance is its own process, so its "
                                                "pools are its own anyway", applied=False),
        "TF_SIGNATURE_DEF": Parameter("string", "the signature to serve (default "
                                      "serving_default)", ""),
        "TF_GRAPH_TAG": Parameter("string", "the MetaGraph tag to load (default serve)", ""),
        "MAX_SESSION_SHARE_COUNT": Parameter("int", "instances sharing one session",
                                             "accepted; instances are processes here",
                                             applied=False),
        "TF_INIT_OPS_FILE": Parameter("string", "JSON file of initialisation ops to run",
                                      "accepted, not applied (a SavedModel initialises "
                                      "itself)", applied=False),
    },
}

#: Keys that earlier versions of the CPU backends read, which no native backend knows.
#: Still honoured here (with a warning), so that old configs keep their threads.
DEPRECATED: dict[str, dict[str, str]] = {
    "tensorflow": {"TF_INTRA_OP_PARALLELISM": "TF_NUM_INTRA_THREADS",
                   "TF_INTER_OP_PARALLELISM": "TF_NUM_INTER_THREADS"},
}

_TRUE = ("true", "on", "1")
_FALSE = ("false", "off", "0")


def parse_bool(value: str) -> bool | None:
    """The native backends' `ParseBoolValue`: true/on/1 and false/off/0, any case; None for
    anything else (the native backend then refuses to load the model)."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def problems(backend: str, parameters: dict[str, str]) -> tuple[list[str], list[str]]:
    """(errors, warnings) about a config's parameters for `backend`: values the native
    backend would refuse, deprecated offload keys, and keys it ignores."""
    known = NATIVE.get(backend)
    if known is None:
        return [], []
    errors, warnings = [], []
    deprecated = DEPRECATED.get(backend, {})
    for key, value in parameters.items():
        if key in deprecated:
            warnings.append(f"parameter {key} is offload's old name, which the native "
                            f"{backend} backend ignores: use {deprecated[key]}")
            continue
        parameter = known.get(key)
        if parameter is None:
            warnings.append(f"parameter {key} is read by neither the native {backend} backend "
                            f"nor the CPU one (they read: {', '.join(known)})")
            continue
        if parameter.kind == "bool" and parse_bool(value) is None:
            errors.append(f"parameter {key} must be a boolean (true/on/1 or false/off/0, as "
                          f"the native {backend} backend parses it), got {value!r}")
        elif parameter.kind == "int":
            try:
                number = int(value)
            except ValueError:
                errors.append(f"parameter {key} must be an integer, got {value!r}")
            else:
                if number < 0 and key.endswith(("THREADS", "thread_count", "THREAD_COUNT")):
                    errors.append(f"parameter {key} must be >= 0 (0: the framework's "
                                  f"default), got {number}")
    return errors, warnings


def markdown_table() -> str:
    """The README's table: which backend reads which parameter, natively and here."""
    rows = ["| backend | parameter | native backend (NGC) | CPU backend (here) |",
            "| --- | --- | --- | --- |"]
    for backend, keys in NATIVE.items():
        for key, parameter in keys.items():
            here = parameter.here or "the same"
            rows.append(f"| `{backend}` | `{key}` | {parameter.native} | {here} |")
    for backend, aliases in DEPRECATED.items():
        for old, new in aliases.items():
            rows.append(f"| `{backend}` | `{old}` | ignored | deprecated alias of `{new}` "
                        f"(warns) |")
    return "\n".join(rows)
