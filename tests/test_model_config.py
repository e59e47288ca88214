"""config.pbtxt is written through Triton's ModelConfig and text_format
(`offload_server.model_config`): what the exporters write reads back as the same message,
and what the repository commits is the writer's own text."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from offload_server import model_config
from offload_server.model_spec import read_config
from offload_server.reference_models import write_config
from offload_training.export import Tensor, config_pbtxt, model_config_message

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
MODELS = ("calo_shower_generator", "jet_energy_regression", "jet_tagger")


@pytest.mark.parametrize("model", MODELS)
def test_committed_config_is_the_writers_text(model):
    path = REPOSITORY / model / "config.pbtxt"
    assert path.read_text() == model_config.text(read_config(path.parent)), (
        f"{path} is not what offload_server.model_config writes")


@pytest.mark.parametrize("queue", [None, 64])
def test_exported_config_reads_back_as_its_message(queue):
    inputs = [Tensor("energy", "TYPE_FP32", [1]), Tensor("hits", "TYPE_INT64", [-1, 4])]
    outputs = [Tensor("shower", "TYPE_FP32", [12, 8, 6])]
    text = config_pbtxt("m", "pytorch", 256, inputs, outputs, max_queue_size=queue,
                        parameters={"INTRA_OP_THREAD_COUNT": "1"})
    config = model_config.parse(text)
    assert config == model_config_message("m", "pytorch", 256, inputs, outputs,
                                          max_queue_size=queue,
                                          parameters={"INTRA_OP_THREAD_COUNT": "1"})
    assert [(t.name, list(t.dims)) for t in config.input] == [("energy", [1]),
                                                              ("hits", [-1, 4])]
    assert config.input[1].data_type == model_config_pb2.TYPE_INT64
    assert config.instance_group[0].count == 2
    assert config.parameters["INTRA_OP_THREAD_COUNT"].string_value == "1"
    assert config.dynamic_batching.HasField("default_queue_policy") == (queue is not None)
    if queue:
        policy = config.dynamic_batching.default_queue_policy
        assert (policy.max_queue_size, policy.allow_timeout_override) == (64, True)
    # what a reader looks for first comes first
    assert text.splitlines()[:3] == ['name: "m"', 'backend: "pytorch"', "max_batch_size: 256"]


def test_header_and_trailer_are_comments():
    config = model_config_pb2.ModelConfig(name="m", backend="onnxruntime", max_batch_size=4)
    text = model_config.text(config, header=["what this is", "", "why"],
                             trailer="\n# optimization { }\n")
    assert text.startswith("# what this is\n#\n# why\nname: \"m\"\n")
    assert text.endswith("\n# optimization { }\n")
    assert model_config.parse(text) == config
    with pytest.raises(ValueError, match="comments only"):
        model_config.text(config, trailer="# fine\noptimization { }\n")


def test_reference_models_write_their_config_through_the_message(tmp_path):
    folder = write_config(tmp_path, "mlp", 'backend: "onnxruntime"\nmax_batch_size: 8\n'
                          'input [ { name: "x" data_type: TYPE_FP32 dims: [4] } ]')
    config = read_config(folder)
    assert (config.name, config.backend, list(config.input[0].dims)) == ("mlp", "onnxruntime",
                                                                          [4])
    assert (folder / "config.pbtxt").read_text() == model_config.text(config)
    with pytest.raises(text_format.ParseError, match="inptu"):
        write_config(tmp_path, "typo", "max_batch_size: 8\ninptu []\n")
