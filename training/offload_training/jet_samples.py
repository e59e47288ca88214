"""The jets both jet models learn from: the two generated samples, selected and split.

Splits are by event (event number modulo 10: 0–6 train, 7 validation, 8–9 test), so that
two jets of one event never sit on both sides of a split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offload_training.jets.dataset import load_or_generate

#: Jets per sample: full training, and the quick smoke run.
FULL_JETS = 60_000
QUICK_JETS = 400
SEEDS = {"ttbar": 1, "qcd": 2}


@dataclass
class JetSample:
    constituents: np.ndarray  # [n, 128, 6] (pt, eta, phi, energy, charge, ptype)
    reco_jet: np.ndarray  # [n, 4] (pt, eta, phi, mass)
    gen_jet: np.ndarray  # [n, 4]
    is_top: np.ndarray  # [n] int8
    split: np.ndarray  # [n] "train" / "validation" / "test"
    #: [n, 128, 6] the matched generator-level jet's constituents, where generated
    gen_constituents: np.ndarray | None = None
    event: np.ndarray | None = None  # [n] event numbers, distinct across samples

    def __len__(self) -> int:
        return len(self.is_top)

    def select(self, keep: np.ndarray) -> JetSample:
        def pick(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[keep]

        return JetSample(self.constituents[keep], self.reco_jet[keep], self.gen_jet[keep],
                         self.is_top[keep], self.split[keep], pick(self.gen_constituents),
                         pick(self.event))

    def part(self, name: str) -> JetSample:
        return self.select(self.split == name)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {"top": int(((self.split == name) & (self.is_top == 1)).sum()),
                       "qcd": int(((self.split == name) & (self.is_top == 0)).sum())}
                for name in ("train", "validation", "test")}


def load(*, quick: bool = False, workers: int | None = None) -> JetSample:
    """Both samples (generated once, then cached), with their split labels."""
    n_jets = QUICK_JETS if quick else FULL_JETS
    parts = []
    for sample, seed in SEEDS.items():
        arrays = load_or_generate(sample, n_jets, seed=seed, workers=workers)
        # Events of the two samples are numbered independently; offset keeps them apart.
        event = arrays["event"].astype(np.int64) + (0 if sample == "ttbar" else 1 << 40)
        parts.append((arrays, event))
    constituents = np.concatenate([a["constituents"] for a, _ in parts])
    event = np.concatenate([e for _, e in parts])
    bucket = event % 10
    split = np.where(bucket <= 6, "train", np.where(bucket == 7, "validation", "test"))
    return JetSample(
        constituents=constituents,
        reco_jet=np.concatenate([a["reco_jet"] for a, _ in parts]),
        gen_jet=np.concatenate([a["gen_jet"] for a, _ in parts]),
        is_top=np.concatenate([a["is_top"] for a, _ in parts]).astype(np.int8),
        split=split, event=event,
    )


def tagging_window(jets: JetSample | dict[str, np.ndarray]) -> np.ndarray:
    """The top-tagging selection: reconstructed jet pt in [500, 650] GeV, |eta| < 2."""
    reco_jet = jets["reco_jet"] if isinstance(jets, dict) else jets.reco_jet
    pt, eta = reco_jet[:, 0], reco_jet[:, 1]
    return (pt >= 500) & (pt <= 650) & (np.abs(eta) < 2)


#: The committed validation samples must stay below this size.
MAX_SAMPLE_BYTES = 2 * 1024 * 1024


def save_sample(path, jets: JetSample, *fields: str) -> None:
    """Write the named fields of `jets` (compressed, constituents cut after the last
    non-padding slot, which the preprocessing pads back) and check the size limit."""
    arrays = {name: getattr(jets, name) for name in fields}
    if "constituents" in arrays:
        used = int((arrays["constituents"][..., 0] > 0).sum(axis=1).max(initial=1))
        arrays["constituents"] = arrays["constituents"][:, :used]
    np.savez_compressed(path, **arrays)
    size = path.stat().st_size
    if size > MAX_SAMPLE_BYTES:
        raise RuntimeError(f"{path} is {size / 2**20:.1f} MiB; validation samples must stay "
                           f"under {MAX_SAMPLE_BYTES / 2**20:.0f} MiB: keep fewer jets")
