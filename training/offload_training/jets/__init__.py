"""The jet data set of the top tagger and the jet-energy regression.

Pythia 8 events (:mod:`.pythia`) → a parametric detector (:mod:`.detector`) → anti-kT
R = 0.8 jets, matching and selection (:mod:`.clustering`, :mod:`.dataset`). Use
:func:`load_or_generate`; the array format is documented in :mod:`.dataset`.
Importing this package is cheap: Pythia, FastJet and awkward load only when generating.
"""

from .dataset import VERSION, cache_path, generate, load_or_generate

__all__ = ["VERSION", "cache_path", "generate", "load_or_generate"]
