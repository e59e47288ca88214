"""A grid job's event loop that offloads its jet inference to Triton.

Each event's large-radius jets are tagged (`jet_tagger`) and their pt corrected
(`jet_energy_regression`) on the server instead of on this CPU. The job collects events
into blocks, computes the model inputs with the same numpy code that trained the models
(`offload.physics.jets`), sends both models' requests at once, and goes on with the answers.

Reconstructed jets here come from the tagger's validation sample (two per event), standing
in for what a real job's reconstruction would hand over.

    python examples/grid_job.py --events 2000 --server triton.example.org:8001
    python examples/grid_job.py --events 200 --local       # starts a server on this machine
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import offload
from offload.physics.jets import regression_inputs, tagger_inputs

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def events(n_events: int, jets_per_event: int = 2):
    """(constituents, reco jets) per event, cycling through the stand-in sample."""
    with np.load(REPOSITORY / "jet_tagger" / "validation.npz") as sample:
        constituents, jets = sample["constituents"], sample["reco_jet"]
    for event in range(n_events):
        index = (np.arange(jets_per_event) + event * jets_per_event) % len(jets)
        yield constituents[index], jets[index]


def run(client: offload.Client, n_events: int, block: int) -> dict:
    tagger = client.model("jet_tagger")
    regression = client.model("jet_energy_regression")
    tagged = jets_seen = 0
    corrected_pt: list[np.ndarray] = []
    started = time.perf_counter()
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    for event in events(n_events):
        pending.append(event)
        if len(pending) < block:
            continue
        tagged, jets_seen = _process(tagger, regression, pending, tagged, jets_seen,
                                     corrected_pt)
        pending = []
    if pending:
        tagged, jets_seen = _process(tagger, regression, pending, tagged, jets_seen,
                                     corrected_pt)
    seconds = time.perf_counter() - started
    return {"events": n_events, "jets": jets_seen, "seconds": seconds,
            "events_per_second": n_events / seconds, "top_tagged_fraction": tagged / jets_seen,
            "mean_corrected_pt": float(np.concatenate(corrected_pt).mean())}


def _process(tagger, regression, pending, tagged, jets_seen, corrected_pt):
    constituents = np.concatenate([c for c, _ in pending])
    jets = np.concatenate([j for _, j in pending])
    # Both models' requests in flight together; each future returns this block's rows.
    scores = tagger.submit(tagger_inputs(constituents, jets))
    correction = regression.submit(regression_inputs(constituents, jets))
    top = scores.result()["top_probability"][:, 0] > 0.5
    corrected_pt.append(jets[:, 0] * correction.result()["pt_correction"][:, 0])
    return tagged + int(top.sum()), jets_seen + len(jets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--block", type=int, default=64, help="events per request")
    parser.add_argument("--server", action="append", dest="servers",
                        help="host:port (repeatable; default $OFFLOAD_SERVERS or 127.0.0.1:8001)")
    parser.add_argument("--local", action="store_true",
                        help="no server: start one on this machine (needs offload[server])")
    args = parser.parse_args(argv)
    servers = args.servers or os.environ.get("OFFLOAD_SERVERS") or "127.0.0.1:8001"
    if args.local:
        servers = []
    with offload.Client(servers, fallback="local" if args.local else None,
                        repository=str(REPOSITORY), timeout=300) as client:
        result = run(client, args.events, args.block)
    print(f"{result['events']} events, {result['jets']} jets in {result['seconds']:.2f} s: "
          f"{result['events_per_second']:.0f} events/s; top-tagged fraction "
          f"{result['top_tagged_fraction']:.3f}; mean corrected jet pt "
          f"{result['mean_corrected_pt']:.1f} GeV")
    return 0


if __name__ == "__main__":
    sys.exit(main())
