"""Per-target config variants (`configs/<target>.pbtxt`, Triton's --model-config-name):
what the repository commits, what `offload repo check` says about variants, the TensorRT
option, and the variants served by a real tritonserver (issue 15, items 1 and 4)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from helpers import ROOT, settled_count

from offload_server.errors import ServerStartError
from offload_server.model_spec import config_variants, read_config
from offload_server.repo_check import check_repository
from offload_training import targets

REPOSITORY = ROOT / "model_repository"
MODELS = ("calo_shower_generator", "jet_energy_regression", "jet_tagger")


def _copy_models(target: Path, models=MODELS) -> None:
    """Configs, variants and version folders (no cards, plots or samples)."""
    for name in models:
        source = REPOSITORY / name
        shutil.copytree(source, target / name, ignore=shutil.ignore_patterns(
            "*.png", "*.npz", "*.md", "metrics.json"))


def _gpu_too_visible() -> bool:
    """Whether Triton could see a GPU here (then KIND_GPU loads and the no-GPU case is moot)."""
    if shutil.which("nvidia-smi") is None:
        return False
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "GPU" in result.stdout


# ------------------------------------------------------------------ what is committed
@pytest.mark.parametrize("model", MODELS)
def test_committed_gpu_variant_is_what_the_exporter_writes(model):
    folder = REPOSITORY / model
    assert config_variants(folder) == ["gpu"]
    written = targets.variant_pbtxt(folder, targets.GPU[model])
    assert (folder / "configs" / "gpu.pbtxt").read_text() == written, (
        "configs/gpu.pbtxt differs from offload_training.targets: run "
        "`python -m offload_training.targets model_repository`")
    card = (folder / "model_card.md").read_text()
    assert targets.card_section({"gpu": targets.GPU[model]}) in card


@pytest.mark.parametrize("model", MODELS)
def test_gpu_variant_is_gpu_sized_and_keeps_the_interface(model):
    folder = REPOSITORY / model
    cpu, gpu = read_config(folder), read_config(folder, "gpu")
    assert [(t.name, t.data_type, list(t.dims)) for t in gpu.input] == \
        [(t.name, t.data_type, list(t.dims)) for t in cpu.input]
    assert [(t.name, t.data_type, list(t.dims)) for t in gpu.output] == \
        [(t.name, t.data_type, list(t.dims)) for t in cpu.output]
    assert gpu.backend == cpu.backend
    (group,) = gpu.instance_group
    assert group.kind == group.KIND_GPU
    assert group.count >= 2
    assert gpu.max_batch_size >= cpu.max_batch_size
    assert max(gpu.dynamic_batching.preferred_batch_size) <= gpu.max_batch_size
    policy = gpu.dynamic_batching.default_queue_policy
    assert policy.max_queue_size >= targets.CLIENT_IN_FLIGHT
    # A full request must pass Envoy's request limit (k8s/base/envoy/envoy.yaml).
    row_bytes = sum(int(np.prod(t.dims)) * 4 for t in gpu.input)
    assert gpu.max_batch_size * row_bytes < targets.PROXY_LIMIT_BYTES
    envoy = (ROOT / "k8s" / "base" / "envoy" / "envoy.yaml").read_text()
    assert f"max_request_bytes: {targets.PROXY_LIMIT_BYTES}" in envoy
    # Every number of the variant has its reason in the card.
    card = (folder / "model_card.md").read_text()
    for setting in targets.GPU[model].settings():
        assert f"| `{setting.name}` | {setting.value} |" in card


def test_repo_check_validates_every_variant_of_the_repository():
    report = check_repository(REPOSITORY)
    assert report.ok, {m.name: m.errors for m in report.models}
    for model in report.models:
        assert model.variants == ["gpu"], model.name
        assert not [w for w in model.warnings if "gpu.pbtxt" in w], model.warnings


def test_offload_repo_check_names_the_variants():
    result = subprocess.run([sys.executable, "-m", "offload.cli", "repo", "check",
                             str(REPOSITORY), "--no-load"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jet_tagger (onnxruntime, versions 1,2 (default 2), variants gpu): ok" in result.stdout


# ------------------------------------------------------------ repo check on variants
def _variant(folder: Path, text: str, name: str = "gpu") -> None:
    (folder / "configs").mkdir(exist_ok=True)
    (folder / "configs" / f"{name}.pbtxt").write_text(text)


def test_repo_check_refuses_broken_variants(tmp_path):
    base = tm.mlp_config("onnxruntime", "x", "y")
    for name in ("dims", "backend", "param", "named", "warm", "queue"):
        tm.export_onnx_mlp(tmp_path, name)
    assert 'name: "x" data_type: TYPE_FP32 dims: [8]' in base
    _variant(tmp_path / "dims", base.replace('name: "x" data_type: TYPE_FP32 dims: [8]',
                                             'name: "x" data_type: TYPE_FP32 dims: [9]'))
    _variant(tmp_path / "backend", base.replace('"onnxruntime"', '"pytorch"'))
    _variant(tmp_path / "param", base + 'parameters { key: "execution_mode" value: '
                                         '{ string_value: "3" } }\n')
    _variant(tmp_path / "named", base.replace("max_batch_size", 'name: "other"\nmax_batch_size'))
    _variant(tmp_path / "warm", base + 'model_warmup [ { name: "w" batch_size: 4096 inputs { '
                                       'key: "x" value: { data_type: TYPE_FP32 dims: [ 7 ] '
                                       'zero_data: true } } } ]\n')
    _variant(tmp_path / "queue", base + "dynamic_batching { default_queue_policy { "
                                        "max_queue_size: 8 } }\n")
    report = {m.name: m for m in check_repository(tmp_path).models}
    assert "x TYPE_FP32[9]" in " ".join(report["dims"].errors)
    assert any("clients must see one interface" in e and "configs/gpu.pbtxt" in e
               for e in report["dims"].errors)
    assert any('differs from config.pbtxt\'s "onnxruntime"' in e
               for e in report["backend"].errors)
    assert any("execution_mode" in e for e in report["param"].errors)
    assert any('says name "other"' in e for e in report["named"].errors)
    warm = " ".join(report["warm"].errors)
    assert "batch_size 4096 is outside 1..1024" in warm
    assert "has dims [7], the input [8]" in warm
    assert report["queue"].ok
    assert any("queue policy with a single instance" in w and "configs/gpu.pbtxt" in w
               for w in report["queue"].warnings)


def test_repo_check_warns_about_parameters_no_backend_reads(tmp_path):
    tm.export_savedmodel_mlp(tmp_path, "tf", extra='parameters { key: "TF_INTRA_OP_PARALLELISM" '
                                                   'value: { string_value: "1" } }\n'
                                                   'parameters { key: "INTRA_OP_THREAD_COUNT" '
                                                   'value: { string_value: "1" } }')
    (model,) = check_repository(tmp_path).models
    assert model.ok, model.errors
    warnings = " ".join(model.warnings)
    assert "TF_INTRA_OP_PARALLELISM is offload's old name" in warnings
    assert "use TF_NUM_INTRA_THREADS" in warnings
    assert "INTRA_OP_THREAD_COUNT is read by neither the native tensorflow backend" in warnings


def test_the_tensorrt_option_of_the_tagger_checks_when_uncommented(tmp_path):
    _copy_models(tmp_path, ["jet_tagger"])
    variant = tmp_path / "jet_tagger" / "configs" / "gpu.pbtxt"
    text = variant.read_text()
    block = text[text.index("# optimization {"):]
    enabled = text.replace(block, re.sub(r"(?m)^# ?", "", block))
    variant.write_text(enabled)
    config = read_config(tmp_path / "jet_tagger", "gpu")
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    report = check_repository(tmp_path)
    assert report.ok, report.models[0].errors


# --------------------------------------------------------- served by a real tritonserver
@pytest.mark.slow
def test_gpu_variants_serve_with_their_settings_when_the_kind_is_cpu(tmp_path):
    """Everything of the gpu variants but the device, through Triton itself: batch sizes,
    preferred sizes, queue policy, parameters and the warm-up batches (Triton refuses
    KIND_GPU on this machine, so the copy asks for KIND_CPU)."""
    import tritonclient.grpc as grpcclient

    import offload
    from offload_perf.sweep import generated_inputs
    from offload_server import LocalServer

    _copy_models(tmp_path)
    for model in MODELS:
        variant = tmp_path / model / "configs" / "gpu.pbtxt"
        variant.write_text(variant.read_text().replace("KIND_GPU", "KIND_CPU"))
    with LocalServer(tmp_path, model_config_name="gpu", startup_timeout=600) as server, \
            offload.Client(server.grpc_url, timeout=120) as client:
        served = {m.name: m for m in server.models()}
        triton = grpcclient.InferenceServerClient(server.grpc_url)
        for model in MODELS:
            gpu = read_config(tmp_path / model, "gpu")
            assert served[model].state == "READY"
            assert served[model].max_batch_size == gpu.max_batch_size
            config = triton.get_model_config(model, as_json=True)["config"]
            assert config["instance_group"][0]["count"] == 2
            assert [int(s) for s in config["dynamic_batching"]["preferred_batch_size"]] == \
                list(gpu.dynamic_batching.preferred_batch_size)
        calo = client.model("calo_shower_generator")
        inputs = generated_inputs(calo, 4096)
        inputs["uniform"] = np.random.default_rng(0).random((4096, 576), np.float32)
        inputs["energy"] = np.full((4096, 1), 10.0, np.float32)
        shower = calo.infer(inputs)["shower"]
        assert shower.shape == (4096, 12, 8, 6)
        assert np.isfinite(shower).all()
        # every version's row of a model named without one (jet_tagger serves two)
        executions = {m: settled_count(lambda m=m: sum(r.executions for r in
                                                       client.model(m).server_stats()), 1)
                      for m in MODELS}
        assert all(executions[m] >= 1 for m in MODELS)
        triton.close()


@pytest.mark.skipif(_gpu_too_visible(), reason="a GPU is visible: KIND_GPU loads here")
def test_gpu_variant_without_a_gpu_is_a_clear_error(tmp_path):
    from offload_server import LocalServer

    _copy_models(tmp_path, ["jet_tagger"])
    server = LocalServer(tmp_path, model_config_name="gpu", startup_timeout=120)
    with pytest.raises(ServerStartError) as raised:
        server.start()
    message = str(raised.value)
    assert "has kind KIND_GPU but no GPUs are available" in message
    assert "Triton sees no GPU on this machine and configs/gpu.pbtxt asks for KIND_GPU" in message
    assert "without --model-config-name" in message
    assert not server.running


def test_model_config_name_is_a_plain_file_name():
    from offload_server import LocalServer

    for bad in ("../gpu", "gpu/x", "", "gpu.pbtxt/"):
        with pytest.raises(ValueError, match="model_config_name must be a file name"):
            LocalServer(REPOSITORY, model_config_name=bad)
    named, plain = LocalServer(REPOSITORY, model_config_name="h100"), LocalServer(REPOSITORY)
    for server in (named, plain):
        server._workdir = Path("/nonexistent-workdir")  # (arguments name its sockets)
    assert "--model-config-name=h100" in named._arguments(Path("/backends"))
    assert not any(a.startswith("--model-config-name")
                   for a in plain._arguments(Path("/backends")))


def test_offload_serve_refuses_a_bad_config_name():
    result = subprocess.run([sys.executable, "-m", "offload.cli", "serve",
                             "--model-config-name", "../x"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "a config name is a file name under configs/" in result.stderr
