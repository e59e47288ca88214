"""A server of the Open Inference Protocol that is not Triton, for the tests: KServe's own
gRPC servicer (from the `kserve` package) on 127.0.0.1 only, serving `affine`
(y = 2x + 1, FP32 [-1, 4]) and `tagged` (FP32 in, FP64 and BYTES out). KServe has no
ModelConfig RPC and answers in the typed `contents` fields, not raw bytes.

    python tests/servers/kserve_affine.py      # prints the bound port, serves until killed
"""

from __future__ import annotations

import asyncio
import sys
from concurrent import futures

import numpy as np
from grpc import aio
from kserve import Model
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.model_repository_extension import ModelRepositoryExtension


class Affine(Model):
    def __init__(self) -> None:
        super().__init__("affine")
        self.ready = True

    def get_input_types(self) -> list[dict]:
        return [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]

    async def predict(self, payload: InferRequest, headers=None,  # noqa: ARG002
                      response_headers=None):  # noqa: ARG002  (KServe's signature)
        x = payload.inputs[0].as_numpy()
        y = InferOutput(name="y", shape=list(x.shape), datatype="FP32")
        y.set_data_from_numpy((2 * x + 1).astype(np.float32), binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[y], response_id=payload.id)


class Tagged(Model):
    def __init__(self) -> None:
        super().__init__("tagged")
        self.ready = True

    def get_input_types(self) -> list[dict]:
        return [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "total", "datatype": "FP64", "shape": [-1]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]}]

    async def predict(self, payload: InferRequest, headers=None,  # noqa: ARG002
                      response_headers=None):  # noqa: ARG002  (KServe's signature)
        x = payload.inputs[0].as_numpy()
        total = InferOutput(name="total", shape=[x.shape[0]], datatype="FP64")
        total.set_data_from_numpy(x.sum(axis=1).astype(np.float64), binary_data=False)
        label = InferOutput(name="label", shape=[x.shape[0]], datatype="BYTES")
        label.set_data_from_numpy(np.array([b"big" if v > 1 else b"small"
                                            for v in x.sum(axis=1)], dtype=np.object_),
                                  binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[total, label],
                             response_id=payload.id)


async def serve() -> None:
    repository = ModelRepository()
    for model in (Affine(), Tagged()):
        repository.update(model)
    servicer = InferenceServicer(DataPlane(model_registry=repository),
                                 ModelRepositoryExtension(model_registry=repository))
    server = aio.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(asyncio.run(serve()))
