"""Tag the fat jets of PFNano ROOT files on a Dask cluster: dask-awkward over uproot, the
models offloaded to Triton from the workers.

    python examples/dask_jets.py data/pfnano_sample.root --server 127.0.0.1:8001 --workers 2
    python examples/dask_jets.py nano_*.root --server gpu1:8001 --scheduler tcp://sched:8786

Each partition of `uproot.dask` (a range of entries of one file) goes through
`offload.dask.JetScorer` in a worker process: the candidates of each jet are gathered from
the PFNano link table, the models' inputs computed, and both models' requests sent from
that worker on its own cached client. The result is per event, one record per fat jet
(`top_probability`, `pt_correction`), aligned with `FatJet`; here it is reduced to a few
numbers, as an analysis would (fill histograms, select events, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import awkward as ak
import dask
import dask_awkward as dak
import numpy as np
import uproot
from distributed import Client, LocalCluster

from offload.dask import JetScorer


def top_candidates(files: list[str], server: str, *, step_size: int = 500) -> dak.Array:
    """The lazy per-event scores, and the events with a top-like fat jet."""
    events = uproot.dask(dict.fromkeys(files, "Events"), filter_name=[*JetScorer.branches],
                         step_size=step_size)
    scorer = JetScorer(["jet_tagger", "jet_energy_regression"], servers=server)
    scores = dak.map_partitions(scorer, events, label="offload-jets")
    corrected_pt = events.FatJet_pt * scores.pt_correction
    tagged = (scores.top_probability > 0.5) & (corrected_pt > 400)
    return scores, dak.sum(tagged, axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--server", default="127.0.0.1:8001")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--scheduler", help="an existing Dask scheduler instead")
    parser.add_argument("--step-size", type=int, default=500, help="entries per partition")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.scheduler:
            stack.enter_context(Client(args.scheduler))
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=args.workers, threads_per_worker=1, dashboard_address=None,
                host="127.0.0.1"))
            stack.enter_context(Client(cluster))
        scores, n_tagged = top_candidates(args.files, args.server, step_size=args.step_size)
        scores, n_tagged = dask.compute(scores, n_tagged)
    probabilities = ak.to_numpy(ak.flatten(scores.top_probability))
    print(f"{len(scores)} events, {len(probabilities)} fat jets; "
          f"{int(np.sum(n_tagged > 0))} events with a top-tagged jet "
          f"(score > 0.5, corrected pt > 400 GeV); mean score "
          f"{probabilities.mean() if len(probabilities) else float('nan'):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
