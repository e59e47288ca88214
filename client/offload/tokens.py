"""Where a token travels, shared by the client and `offload serve` (no gRPC import here:
the server side reads these without the client's dependencies)."""

#: Environment variable with the token (kept off command lines and out of job scripts).
TOKEN_VARIABLE = "OFFLOAD_TOKEN"
#: A restricted-protocol key for Triton (`--grpc-restricted-protocol=…:offload-token=…`):
#: Triton checks the gRPC header `triton-grpc-protocol-<key>` and the HTTP header `<key>`.
#: The client sends it beside `authorization: Bearer`; offload's front accepts either.
TOKEN_KEY = "offload-token"
TOKEN_HEADER = f"triton-grpc-protocol-{TOKEN_KEY}"
