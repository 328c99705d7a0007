"""``cings generate``: grounded records -> one prediction a line.

``engine`` owns the run (prompts, batches, resumable output); ``decoding`` owns the step rules
(greedy, CAD, AdaCAD) and the batched loop they share; ``prefix_cache`` prefills the prompt head
every record shares once; ``vllm_engine`` hands the same prompts to vLLM on a GPU (an extra). The
names other modules use are here.
"""

from .decoding import DECODINGS, Contrastive, adacad_alpha, decode, greedy_decode, jsd
from .engine import ENGINES, GenerationSettings, check_resumable, generate_records, settings_differences, written_ids
from .prefix_cache import PrefixCache, shared_prefix_length

__all__ = ["DECODINGS", "ENGINES", "Contrastive", "GenerationSettings", "PrefixCache", "adacad_alpha", "check_resumable",
           "decode", "settings_differences", "generate_records", "greedy_decode", "jsd", "shared_prefix_length",
           "written_ids"]
