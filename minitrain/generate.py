"""Sample text from a GPT-2 folder (an export of train_gpt2.py, any HF GPT-2 folder) or hub id.

python -m minitrain.generate --model out/gpt2/final --prompt "ROMEO:" --max_new_tokens 80
"""

from dataclasses import dataclass

import torch

from minitrain import dist
from minitrain.config import run_cli
from minitrain.gpt2 import GPT2
from minitrain.tokenizer import load_tokenizer


@dataclass
class GenerateConfig:
    """Generate text with GPT-2 and a KV cache."""

    model: str = "out/gpt2/final"  # a Hugging Face GPT-2 folder or hub id
    prompt: str = "\n"  # the text to continue
    num_samples: int = 1  # how many samples
    max_new_tokens: int = 100  # tokens to generate per sample
    temperature: float = 0.8  # sampling temperature (0: greedy)
    top_k: int = 50  # sample among the k most likely tokens (0: all)
    top_p: float = 1.0  # nucleus sampling: the smallest set with this much probability
    seed: int = 1337  # the sampling seed
    device: str = "auto"  # auto, cpu or cuda


def sample_texts(
    model: GPT2,
    tokenizer,
    prompt: str,
    num_samples: int,
    max_new_tokens: int,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    empty_prompt_id: int,
) -> list[str]:
    """Decoded continuations of `prompt` (an empty prompt starts from `empty_prompt_id`), drawn
    one after another from one generator seeded by `seed`; top_k 0 samples among all tokens."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt).ids or [empty_prompt_id]
    g = torch.Generator(device=device).manual_seed(seed)
    texts = []
    for _ in range(num_samples):
        out = model.generate(
            torch.tensor([ids], device=device),
            max_new_tokens,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p,
            generator=g,
        )
        texts.append(tokenizer.decode(out[0].tolist()))
    return texts


def main(cfg: GenerateConfig) -> list[str]:
    device = dist.pick_device(cfg.device)
    model = GPT2.from_pretrained(cfg.model).to(device).eval()
    tok = load_tokenizer(model.source_dir)
    texts = sample_texts(
        model,
        tok,
        cfg.prompt,
        cfg.num_samples,
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seed=cfg.seed,
        empty_prompt_id=model.config.eos_token_id,
    )
    for i, text in enumerate(texts, 1):
        print(f"--- sample {i} ---\n{text}", flush=True)
    return texts


if __name__ == "__main__":
    run_cli(main, GenerateConfig)
