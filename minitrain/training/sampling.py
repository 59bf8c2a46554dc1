"""Samples from a causal language model (the end of a training run, and minitrain.generate)."""

import torch

from minitrain.options import SamplingOptions


def sample_texts(model, tokenizer, cfg: SamplingOptions, seed: int, empty_prompt_id: int, prompts=None) -> list[str]:
    """Decoded continuations drawn one after another from one generator seeded by `seed`:
    `cfg.num_samples` of `cfg.prompt`, or one of each of `prompts` (an empty prompt starts from
    `empty_prompt_id`); top_k 0 means all tokens."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    texts = []
    for prompt in prompts if prompts is not None else [cfg.prompt] * cfg.num_samples:
        ids = tokenizer.encode(prompt).ids or [empty_prompt_id]
        out = model.generate(
            torch.tensor([ids], device=device),
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k or None,
            top_p=cfg.top_p,
            generator=g,
        )
        texts.append(tokenizer.decode(out[0].tolist()))
    return texts
