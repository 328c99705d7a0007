"""``cings generate --engine vllm``: the same prompts, decoded greedily by vLLM on a GPU.

cings renders and tokenizes every prompt (:class:`cings.prompts.PromptBuilder`, as for the default
engine) and hands vLLM the token ids (``{"prompt_token_ids": ...}``): vLLM's tokenizer and chat
template never see the records, so both engines answer exactly the same prompts. vLLM returns token
ids; :func:`cings.generate.engine.generate_records` cuts them at the first stop id and decodes them
with cings' tokenizer, as it does the default engine's, and writes the same rows.

Sampling: temperature 0 (greedy), ``max_tokens`` = ``--max-new-tokens``, ``stop_token_ids`` = the
template's end of turn (``PromptBuilder.stop_token_ids``) and ``ignore_eos``, because vLLM would
otherwise also stop at the model's own EOS and at its generation config's, which the default engine
does not. The tokenizer is not loaded by vLLM at all (``skip_tokenizer_init``, ``detokenize=False``).

What it refuses, and why (:func:`refusal`): CAD and AdaCAD combine two prompts' logits at every
step, which vLLM's scheduler cannot (each request is sampled on its own); sampling, whose
distribution would differ from the default engine's; and a LoRA adapter. vLLM has its own LoRA
path, but it computes base and adapter apart with its own kernels and needs its rank and target
modules declared up front, while the default engine merges the adapter into the weights; an
exported run (``cings export RUN --output DIR``: merged, verified against the run) is those same
merged weights, which vLLM loads as any model folder.

vLLM 0.30.0 is the one release whose requirements fit torch 2.13 and transformers 5.23 (the extra
``pip install 'cings[vllm]'``); it needs a CUDA GPU. Greedy outputs can differ from the default
engine's where two tokens' logits are nearly tied (other kernels, other summation order), so the
engine is part of what a prediction file means: a resume with the other engine is refused.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..loading import LoadError

__all__ = ["EXTRA", "DEFAULT_BATCH", "VllmEngine", "check_available", "refusal"]

EXTRA = "pip install 'cings[vllm]'"
# Records per llm.generate call when --batch-size is not given: vLLM schedules a call's requests
# itself (continuous batching), so a call should hold many; a kill loses at most one call's rows.
DEFAULT_BATCH = 256
VLLM_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def refusal(decoding: str, greedy: bool, adapter: str | None) -> str | None:
    """Why ``--engine vllm`` cannot honour these settings, or None when it can."""
    if decoding != "greedy":
        return (f"--decoding {decoding} combines the logits of two prompts (with and without documents) at every"
                " token, which vLLM's engine cannot: use --engine hf")
    if not greedy:
        return "--engine vllm decodes greedily (temperature 0); sampling goes with --engine hf"
    if adapter:
        return (f"--engine vllm reads merged weights, not a LoRA adapter: `cings export {adapter} --output DIR`"
                " merges it (and checks the result), then `cings generate --engine vllm --model DIR`")
    return None


def check_available() -> None:
    """Refuse, naming everything missing, where vLLM cannot run: it is an explicit choice, so there is no
    silent fall-back to the default engine."""
    import torch

    missing = []
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        missing.append(f"vLLM is not installed ({err}): {EXTRA}")
    if not torch.cuda.is_available():
        missing.append("it runs on a CUDA GPU, and torch sees none")
    if missing:
        raise LoadError(f"--engine vllm: {'; '.join(missing)}. The default --engine hf needs neither")


class VllmEngine:
    """A vLLM model that answers prompt token ids greedily; what ``generate_records`` hands the prompts to."""

    def __init__(self, model: str, *, dtype: str = "float32", prefix_cache: bool = True, seed: int = 0,
                 **llm_options: Any):
        check_available()
        from vllm import LLM

        if dtype not in VLLM_DTYPES:
            raise ValueError(f"--engine vllm: dtype must be one of {', '.join(VLLM_DTYPES)}, not {dtype!r}")
        self.model, self.dtype = model, dtype
        self.llm = LLM(model=model, dtype=VLLM_DTYPES[dtype], seed=seed, skip_tokenizer_init=True,
                       enable_prefix_caching=prefix_cache, **llm_options)

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop_ids: Sequence[int]) -> list[list[int]]:
        """Each prompt's new token ids, in the order given (a stop token included where one ended it)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=list(stop_ids),
                                ignore_eos=True, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM answered {len(outputs)} of {len(prompts)} prompts")
        return [[int(t) for t in out.outputs[0].token_ids] for out in outputs]
