"""Broken models: the server refuses them with a message that says what is wrong, and
`offload repo check` says the same without starting a server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tiny_models as tm
from helpers import group_alive

from offload_server import LocalServer
from offload_server.errors import ServerStartError
from offload_server.repo_check import check_repository


def _missing_artifact(repo: Path) -> None:
    tm.export_onnx_mlp(repo, "broken")
    (repo / "broken" / "1" / "model.onnx").unlink()


def _wrong_dims(repo: Path) -> None:
    tm.export_onnx_mlp(repo, "broken", config_features=tm.N_FEATURES + 2)


def _wrong_dtype(repo: Path) -> None:
    tm.export_onnx_mlp(repo, "broken", config_body=tm.mlp_config("onnxruntime", "x", "y")
                       .replace("TYPE_FP32", "TYPE_FP64", 1))


def _wrong_input_name(repo: Path) -> None:
    tm.export_onnx_mlp(repo, "broken", config_body=tm.mlp_config("onnxruntime", "features", "y"))


def _no_batch_dimension(repo: Path) -> None:
    tm.export_onnx_mlp(repo, "broken", config_body=tm.mlp_config(
        "onnxruntime", "x", "y", max_batch_size=0))


def _torchscript_unknown_argument(repo: Path) -> None:
    tm.export_torchscript_mlp(repo, "broken", input_name="features")


def _unknown_backend(repo: Path) -> None:
    tm.export_onnx_mlp(repo, "broken", config_body=tm.mlp_config("tensorrt_llm", "x", "y"))


def _not_an_onnx_file(repo: Path) -> None:
    tm.export_onnx_mlp(repo, "broken")
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not a protobuf")


# case -> (builder, what the server's error must contain, what repo check must contain)
CASES = {
    "missing artifact": (_missing_artifact, "model.onnx, which does not exist",
                         "model.onnx, which does not exist"),
    "wrong dims": (_wrong_dims, f"input 'x': config.pbtxt implies shape [-1, {tm.N_FEATURES + 2}]",
                   f"model.onnx has [-1, {tm.N_FEATURES}]"),
    "wrong dtype": (_wrong_dtype, "declares TYPE_FP64 (float64), model.onnx has float32",
                    "declares TYPE_FP64 (float64), model.onnx has float32"),
    "wrong input name": (_wrong_input_name, "input 'features' is declared in config.pbtxt but "
                         "model.onnx has no such input (it has: x)", "needs input 'x'"),
    "no batch dimension": (_no_batch_dimension, "set max_batch_size > 0",
                           "set max_batch_size > 0"),
    "torchscript argument": (_torchscript_unknown_argument,
                             "'features' of config.pbtxt are neither forward() arguments",
                             "(it takes: input) nor named <name>__<index>"),
    "unknown backend": (_unknown_backend, "tensorrt_llm", 'unknown backend "tensorrt_llm"'),
    "not an onnx file": (_not_an_onnx_file, "onnxruntime cannot load", "onnxruntime cannot load"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_server_refuses_broken_model_with_clear_message(tmp_path, case):
    build, server_message, _ = CASES[case]
    build(tmp_path)
    server = LocalServer(tmp_path, startup_timeout=120)
    with pytest.raises(ServerStartError) as raised:
        server.start()
    message = str(raised.value)
    assert "model 'broken'" in message or "'broken'" in message
    assert server_message in message, message
    # A refused start leaves nothing running.
    assert server.pid is not None
    assert not group_alive(server.pid)


@pytest.mark.parametrize("case", list(CASES))
def test_repo_check_reports_broken_model(tmp_path, case):
    build, _, check_message = CASES[case]
    build(tmp_path)
    report = check_repository(tmp_path)
    assert not report.ok
    (model,) = report.models
    assert model.name == "broken"
    assert any(check_message in error for error in model.errors), model.errors


def test_repo_check_accepts_good_repository(repository):
    report = check_repository(repository)
    problems = {m.name: m.errors for m in report.models if m.errors}
    assert report.ok, problems
    assert {m.name for m in report.models} == {p.name for p in repository.iterdir() if p.is_dir()}


def test_repo_check_layout_errors(tmp_path):
    tm.export_onnx_mlp(tmp_path, "renamed")
    config = tmp_path / "renamed" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "renamed"', 'name: "other"'))
    tm.export_onnx_mlp(tmp_path, "unversioned")
    shutil.move(tmp_path / "unversioned" / "1", tmp_path / "unversioned" / "latest")
    (tmp_path / "no_config").mkdir()
    tm.export_onnx_mlp(tmp_path, "typo")
    (tmp_path / "typo" / "config.pbtxt").write_text('name: "typo"\nmax_batch_size: 8\ninptu []\n')
    tm.export_onnx_mlp(tmp_path, "batcher", config_body=tm.mlp_config(
        "onnxruntime", "x", "y", max_batch_size=8,
        extra="dynamic_batching { preferred_batch_size: [ 4, 16 ] }"))
    report = {m.name: m for m in check_repository(tmp_path).models}
    assert any('must match the folder name "renamed"' in e for e in report["renamed"].errors)
    assert any("no version folder" in e for e in report["unversioned"].errors)
    assert any("ignores non-numeric folders: latest" in e for e in report["unversioned"].warnings)
    assert any("config.pbtxt is missing" in e for e in report["no_config"].errors)
    assert any("config.pbtxt:3:1" in e and "inptu" in e for e in report["typo"].errors)
    assert any("preferred_batch_size [16] exceeds max_batch_size 8" in e
               for e in report["batcher"].errors)


def test_repo_check_of_missing_folder(tmp_path):
    report = check_repository(tmp_path / "nowhere")
    assert not report.ok
    assert "is not a folder" in report.errors[0]
