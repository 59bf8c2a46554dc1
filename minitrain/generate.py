"""Sample text from a GPT-2 folder (an export of train_gpt2.py, any HF GPT-2 folder) or hub id.

python -m minitrain.generate --model out/gpt2/final --prompt "ROMEO:" --max_new_tokens 80
"""

from dataclasses import dataclass
from typing import Annotated

import torch

from minitrain import dist
from minitrain.config import NonNegativeFloat, NonNegativeInt, Range, check, run_cli
from minitrain.gpt2 import GPT2
from minitrain.tokenizer import load_tokenizer


@dataclass
class GenerateConfig:
    """Generate text with GPT-2 and a KV cache."""

    model: str = "out/gpt2/final"  # a Hugging Face GPT-2 folder or hub id
    prompt: str = "\n"  # the text to continue
    num_samples: NonNegativeInt = 1  # how many samples
    max_new_tokens: NonNegativeInt = 100  # tokens to generate per sample
    temperature: NonNegativeFloat = 0.8  # sampling temperature (0: greedy)
    top_k: NonNegativeInt = 50  # sample among the k most likely tokens (0: all)
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0  # nucleus sampling: the smallest set with this much probability
    seed: int = 1337  # the sampling seed
    device: str = "auto"  # auto, cpu or cuda


def sample_texts(model: GPT2, tokenizer, cfg, empty_prompt_id: int) -> list[str]:
    """`cfg.num_samples` decoded continuations of `cfg.prompt` (an empty prompt starts from
    `empty_prompt_id`), drawn one after another from one generator seeded by `cfg.seed`. `cfg` is
    GenerateConfig or a training script's Config: the same option names (max_new_tokens,
    temperature, top_k with 0 for all tokens, top_p)."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(cfg.prompt).ids or [empty_prompt_id]
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    texts = []
    for _ in range(cfg.num_samples):
        out = model.generate(
            torch.tensor([ids], device=device),
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k or None,
            top_p=cfg.top_p,
            generator=g,
            vocab_size=tokenizer.get_vocab_size(),  # never a padding id of a padded vocabulary
        )
        texts.append(tokenizer.decode(out[0].tolist()))
    return texts


def main(cfg: GenerateConfig) -> list[str]:
    check(cfg)
    device = dist.pick_device(cfg.device)
    model = GPT2.from_pretrained(cfg.model).to(device).eval()
    tok = load_tokenizer(model.source_dir)
    texts = sample_texts(model, tok, cfg, empty_prompt_id=model.config.eos_token_id)
    for i, text in enumerate(texts, 1):
        print(f"--- sample {i} ---\n{text}", flush=True)
    return texts


if __name__ == "__main__":
    run_cli(main, GenerateConfig)
