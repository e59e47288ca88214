"""The network front of the embedded server.

`tritonserver` listens only on unix sockets in a private folder (mode 0700) that only the
user who started it can reach. This package is what the network sees instead: a gRPC
relay that checks credentials per API and bounds request sizes before anything reaches
Triton, and optional HTTP and metrics fronts. It runs as its own process, started by
:class:`offload_server.LocalServer` (``python -m offload_server.front``).
"""
