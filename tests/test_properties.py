"""Property-based tests (hypothesis) of the request builder, the response decoder, the input
checks and the CPU backends: for any input the code either does the right thing or raises
the documented offload exception, never anything else.

The request builder is checked against the generated protobuf classes (an independent
serialiser), the backends against numpy references, served by the real embedded server.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tiny_models as tm
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import offload
from offload import codec, dtypes, inputs, protocol
from offload.schema import ModelInfo, TensorInfo

pb = protocol.service_pb2
NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64"]
BF16_TINY = 2.0**-133  # bfloat16's smallest subnormal: float32 values below it round to 0
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ strategies
@st.composite
def models_and_inputs(draw) -> tuple[ModelInfo, str, dict[str, np.ndarray]]:
    """A model of 1-3 inputs of any Triton type, and arrays that fit it: sometimes
    non-contiguous, sometimes big-endian."""
    batched = draw(st.booleans())
    batch = draw(st.integers(1, 5))
    names = draw(st.lists(st.text("abcdefgh_", min_size=1, max_size=6), min_size=1,
                          max_size=3, unique=True))
    infos, arrays = [], {}
    for name in names:
        datatype = draw(st.sampled_from([*NUMERIC, "BF16", "BYTES"]))
        dims = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
        shape = ((batch,) if batched else ()) + dims
        if datatype == "BYTES":
            items = draw(st.lists(st.one_of(st.binary(max_size=8), st.text(max_size=4)),
                                  min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
            value = np.empty(len(items), dtype=np.object_)
            value[:] = items
            value = value.reshape(shape)
        else:
            dtype = dtypes.TRITON_TO_NUMPY[datatype]
            elements = (hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False)
                        if dtype.kind == "f" else None)
            if datatype == "BF16":  # beyond its range the input checks refuse (tested below)
                elements = st.floats(-dtypes.BF16_MAX, dtypes.BF16_MAX, width=32)
            if draw(st.booleans()) and shape:  # a strided view of a larger array
                wide = draw(hnp.arrays(dtype, (*shape[:-1], 2 * shape[-1]), elements=elements))
                value = wide[..., ::2]
            else:
                value = draw(hnp.arrays(dtype, shape, elements=elements))
            if dtype.itemsize > 1 and datatype != "BF16" and draw(st.booleans()):
                value = value.astype(dtype.newbyteorder(">"))
        infos.append(TensorInfo(name, datatype, ((-1,) if batched else ()) + dims))
        arrays[name] = value
    info = ModelInfo(name=draw(st.sampled_from(["m", "jet_tagger"])), version="",
                     platform="p", max_batch_size=8 if batched else 0, inputs=tuple(infos),
                     outputs=())
    return info, draw(st.sampled_from(["", "1", "12"])), arrays


def triton_bytes(value: np.ndarray) -> bytes:
    """Triton's BYTES encoding, written out independently of offload.dtypes."""
    out = b""
    for item in value.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        out += struct.pack("<I", len(data)) + data
    return out


# ------------------------------------------------------------------ request builder
@FAST
@given(models_and_inputs())
def test_request_equals_the_protobuf_message_for_any_model_and_arrays(case):
    info, version, arrays = case
    prepared = inputs.prepare(info, arrays)
    built = codec.build_request(pb, info, prepared, version)
    again = codec.build_request(pb, info, prepared, version)  # from the framing cache
    assert again == built
    message = pb.ModelInferRequest.FromString(built)
    assert (message.model_name, message.model_version) == (info.name, version)
    assert [(t.name, t.datatype, tuple(t.shape)) for t in message.inputs] == [
        (t.name, t.datatype, arrays[t.name].shape) for t in info.inputs]
    assert len(message.raw_input_contents) == len(info.inputs)
    for tensor, raw in zip(info.inputs, message.raw_input_contents, strict=True):
        value = arrays[tensor.name]
        if tensor.datatype == "BYTES":
            assert raw == triton_bytes(value)
        elif tensor.datatype == "BF16":  # bfloat16 keeps 8 bits of mantissa
            back = dtypes.bf16_bytes_to_float32(raw).reshape(value.shape)
            np.testing.assert_allclose(back, value, rtol=2**-8, atol=BF16_TINY)
        else:
            little = value.astype(value.dtype.newbyteorder("<"))
            assert raw == np.ascontiguousarray(little).tobytes()
    # The request with an id goes through the message classes: the same tensors.
    with_id = pb.ModelInferRequest.FromString(
        codec.build_request(pb, info, prepared, version, request_id="r-1"))
    assert with_id.id == "r-1"
    assert list(with_id.raw_input_contents) == list(message.raw_input_contents)


@FAST
@given(models_and_inputs(), st.integers(0, 3), st.sampled_from(["rank", "dim", "dtype",
                                                                  "name", "empty"]))
def test_input_checks_refuse_every_mismatch_with_an_offload_error(case, which, how):
    """Spoil one input in one way: prepare() raises InvalidInputError naming the model and
    the tensor, never another exception, and never lets it through."""
    info, _, arrays = case
    name = info.inputs[which % len(info.inputs)].name
    value = arrays[name]
    spoiled = dict(arrays)
    if how == "rank":
        spoiled[name] = value[..., None]
    elif how == "dim":
        assume(value.ndim > (1 if info.batched else 0))
        spoiled[name] = np.concatenate([value, value], axis=-1)
    elif how == "dtype":
        spoiled[name] = np.zeros(value.shape, np.int16 if value.dtype.kind in "fbO"
                                 else np.float32)
        assume(not dtypes.accepts(info.inputs[which % len(info.inputs)].datatype,
                                  spoiled[name]))
    elif how == "name":
        spoiled[name + "_x"] = spoiled.pop(name)
    else:
        spoiled[name] = value[:0] if info.batched else value.reshape(-1)[:0]
    with pytest.raises(offload.InvalidInputError) as refused:
        inputs.prepare(info, spoiled)
    assert f"model '{info.name}'" in str(refused.value)
    assert name in str(refused.value)


# ------------------------------------------------------------------ response decoder
def _response(name: str, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> bytes:
    message = pb.ModelInferResponse(model_name=name)
    for tensor_name, value in arrays.items():
        datatype = datatypes[tensor_name]
        message.outputs.add(name=tensor_name, datatype=datatype, shape=value.shape)
        message.raw_output_contents.append(
            triton_bytes(value) if datatype == "BYTES" else
            dtypes.float32_to_bf16_bytes(value) if datatype == "BF16" else
            np.ascontiguousarray(value.astype(value.dtype.newbyteorder("<"))).tobytes())
    return message.SerializeToString()


def _assert_decoded(decoded: dict, arrays: dict, datatypes: dict) -> None:
    for name, value in arrays.items():
        if datatypes[name] == "BYTES":
            expected = [v.encode() if isinstance(v, str) else v for v in value.reshape(-1)]
            assert list(decoded[name].reshape(-1)) == expected
        elif datatypes[name] == "BF16":
            np.testing.assert_allclose(decoded[name], value, rtol=2**-8, atol=BF16_TINY)
        else:
            np.testing.assert_array_equal(decoded[name], value)


@FAST
@given(models_and_inputs())
def test_any_response_decodes_to_its_arrays(case):
    """A model's responses (its inputs' values echoed as outputs) decode right: parsed in
    full, then learnt and recognised by their head bytes (the second and third responses
    take the fast path), and a response of other shapes after them is still read right."""
    info, _, arrays = case
    datatypes = {t.name: t.datatype for t in info.inputs}
    payload = _response(info.name, arrays, datatypes)
    learner = ModelInfo(info.name, "", "p", 0, (), tuple(
        TensorInfo(t.name, t.datatype, tuple(-1 for _ in t.shape)) for t in info.inputs))
    flat = {name: value.reshape(-1) if value.ndim != 1 else np.concatenate([value, value])
            for name, value in arrays.items()}
    for index, info_or_none in enumerate((None, learner, learner, learner)):
        _assert_decoded(codec.decode_response(pb, payload, info_or_none), arrays, datatypes)
        if index == 2:
            assert learner.responses, "nothing learnt from the response"
            other = codec.decode_response(pb, _response(info.name, flat, datatypes), learner)
            _assert_decoded(other, flat, datatypes)
    stranger = dict(arrays, unexpected_output=np.zeros(2, np.int8))
    with pytest.raises(offload.ProtocolError, match="the model declares"):
        codec.decode_response(pb, _response(info.name, stranger, {
            **datatypes, "unexpected_output": "INT8"}), learner)


@FAST
@given(st.binary(max_size=200))
def test_garbage_responses_raise_protocol_error_or_decode(payload):
    try:
        codec.decode_response(pb, payload)
    except offload.ProtocolError as error:
        message = str(error)
    else:
        return  # (bytes that happen to be a valid response)
    assert any(words in message for words in (
        "malformed", "cannot be decoded", "raw tensors", "has no outputs"))


def test_float32_beyond_bfloat16_range_is_refused():
    info = ModelInfo("m", "", "p", 0, (TensorInfo("x", "BF16", (-1,)),), ())
    for value in (3.4e38, -3.3962e38, np.finfo(np.float32).max):
        with pytest.raises(offload.InvalidInputError, match="exceed bfloat16's largest"):
            inputs.prepare(info, {"x": np.array([1.0, value], np.float32)})
    edge = np.array([dtypes.BF16_MAX, -dtypes.BF16_MAX], np.float32)  # the largest: fine
    raw = codec.build_request(pb, info, inputs.prepare(info, {"x": edge}), "")
    sent = pb.ModelInferRequest.FromString(raw).raw_input_contents[0]
    np.testing.assert_array_equal(dtypes.bf16_bytes_to_float32(sent), edge)


def test_truncated_bytes_output_is_a_protocol_error():
    message = pb.ModelInferResponse(model_name="m")
    message.outputs.add(name="text", datatype="BYTES", shape=[1])
    message.raw_output_contents.append(struct.pack("<I", 100) + b"short")
    with pytest.raises(offload.ProtocolError, match=r"model 'm', output 'text'.*overruns"):
        codec.decode_response(pb, message.SerializeToString())


# ------------------------------------------------------------------ the CPU backends
@pytest.mark.parametrize("backend", sorted(tm.DTYPE_MODELS))
def test_served_dtype_models_match_numpy_for_any_values_and_batch(server, backend):
    """Over real gRPC, for any batch size (1-40; the model takes 16, so larger ones are
    split) and any values of five types, each backend computes what numpy does."""
    name = tm.DTYPE_MODELS[backend][0]
    # TensorFlow flushes subnormal floats to zero in arithmetic (as on GPUs), so a*2 is
    # checked on normal numbers; every other value, identity b included, is free.
    finite32 = {"allow_nan": False, "allow_infinity": False, "width": 32,
                "min_value": -2.0**100, "max_value": 2.0**100, "allow_subnormal": False}

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(1, 40).flatmap(lambda n: st.tuples(
        hnp.arrays(np.float32, (n, 3), elements=st.floats(**finite32)),
        hnp.arrays(np.float16, (n, 3), elements=st.floats(allow_nan=False,
                                                          allow_infinity=False, width=16)),
        hnp.arrays(np.int32, (n, 3), elements=st.integers(-2**31, 2**31 - 2)),
        hnp.arrays(np.int64, (n, 3), elements=st.integers(-2**61, 2**61)),
        hnp.arrays(np.bool_, (n, 3)))))
    def check(values):
        served = model.infer(**dict(zip("abcde", values, strict=True)))
        for key, expected in tm.dtype_reference(*values).items():
            assert served[key].dtype == expected.dtype, key
            np.testing.assert_array_equal(served[key], expected, err_msg=key)

    with offload.Client(server.grpc_url) as client:
        model = client.model(name)
        check()


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_runner_gives_the_same_rows_merged_or_alone(tmp_path_factory, backend):
    """What the backends' request merging relies on: a merged batch gives, row for row,
    what each request gives alone."""
    from offload_server.backends import load_in_process

    repo = tmp_path_factory.mktemp(f"merge-{backend}")
    name, export, input_name, output_name = tm.MLPS[backend]
    export(repo, name)
    runner = load_in_process(repo / name)

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(0, 2**32 - 1))
    def check(sizes, seed):
        rng = np.random.default_rng(seed)
        parts = [rng.normal(size=(n, tm.N_FEATURES)).astype(np.float32) for n in sizes]
        merged = runner.run({input_name: np.concatenate(parts)})[output_name]
        alone = np.concatenate([runner.run({input_name: p})[output_name] for p in parts])
        np.testing.assert_allclose(merged, alone, rtol=1e-5, atol=1e-6)

    check()
