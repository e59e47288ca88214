"""Where a token travels, shared by the client and `offload serve` (no gRPC import here:
the server side reads these without the client's dependencies)."""

#: Environment variable with the token (kept off command lines and out of job scripts).
TOKEN_VARIABLE = "OFFLOAD_TOKEN"
#: The key of Triton's restricted protocol that `offload serve --token-file` sets; Triton
#: checks the gRPC header `triton-grpc-protocol-<key>`, and the HTTP header `<key>`.
TOKEN_KEY = "offload-token"
TOKEN_HEADER = f"triton-grpc-protocol-{TOKEN_KEY}"
