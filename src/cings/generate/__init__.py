"""``cings generate``: grounded records -> one prediction a line.

``engine`` owns the run (prompts, batches, resumable output); ``decoding`` owns the step rules
(greedy, CAD, AdaCAD) and the batched loop they share. The names other modules use are here.
"""

from .decoding import DECODINGS, Contrastive, adacad_alpha, decode, greedy_decode, jsd
from .engine import GenerationSettings, check_resumable, generate_records, settings_differences, written_ids

__all__ = ["DECODINGS", "Contrastive", "GenerationSettings", "adacad_alpha", "check_resumable", "decode", "settings_differences",
           "generate_records", "greedy_decode", "jsd", "written_ids"]
