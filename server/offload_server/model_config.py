"""Writing `config.pbtxt`: through Triton's own protobuf (`model_config_pb2.ModelConfig`)
and `google.protobuf.text_format`, never through string templates, so that what is written
is a valid config by construction, and reads back (`model_spec.read_config`) as the same
message.

text_format writes no comments: a file's explanatory comments are a header the writer puts
before the message (and, for commented-out options, a trailer of comment lines after it).
The message's fields come in the order a reader expects (name, backend, batch size, inputs,
outputs), then in Triton's field order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

#: Top-level fields written first, in this order; the others follow in field-number order.
FIRST = ("name", "platform", "backend", "max_batch_size", "input", "output")


def tensor(name: str, data_type: str, dims: Iterable[int]) -> dict[str, Any]:
    """The fields of one input or output (`data_type` as Triton spells it: "TYPE_FP32"),
    for `add_tensors` or a ModelInput/ModelOutput constructor."""
    return {"name": name, "data_type": model_config_pb2.DataType.Value(data_type),
            "dims": [int(d) for d in dims]}


def parse(text: str) -> model_config_pb2.ModelConfig:
    """A config's text as the message (raises text_format.ParseError, with line:column)."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def text(config: model_config_pb2.ModelConfig, *, header: Sequence[str] = (),
         trailer: str = "") -> str:
    """The file's text: `header` lines as `# ` comments, the message, then `trailer` (comment
    lines only: it must not change what the file means)."""
    fields = [field.name for field, _ in config.ListFields()]
    ordered = ([f for f in FIRST if f in fields] + [f for f in fields if f not in FIRST])
    parts = []
    for name in ordered:
        part = model_config_pb2.ModelConfig()
        part.CopyFrom(config)
        for other in fields:
            if other != name:
                part.ClearField(other)
        parts.append(text_format.MessageToString(part, use_short_repeated_primitives=True))
    body = "".join(parts)
    if trailer and any(line.strip() and not line.lstrip().startswith("#")
                       for line in trailer.splitlines()):
        raise ValueError("a config's trailer carries comments only")
    lines = [f"# {line}".rstrip() for line in header]
    return "".join(f"{line}\n" for line in lines) + body + trailer


def write(path: Path, config: model_config_pb2.ModelConfig, *, header: Sequence[str] = (),
          trailer: str = "") -> Path:
    """Write `config` to `path` (its folder created), as `text` makes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text(config, header=header, trailer=trailer))
    return path
