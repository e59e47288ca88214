"""Performance tools that stand on the client: `offload perf` sweeps (more to come)."""
