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


def main(cfg: GenerateConfig) -> list[str]:
    device = dist.pick_device(cfg.device)
    model = GPT2.from_pretrained(cfg.model).to(device).eval()
    tok = load_tokenizer(model.source_dir)
    ids = tok.encode(cfg.prompt).ids or [model.config.eos_token_id]
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    texts = []
    for i in range(cfg.num_samples):
        out = model.generate(
            torch.tensor([ids], device=device),
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k or None,
            top_p=cfg.top_p,
            generator=g,
        )
        texts.append(tok.decode(out[0].tolist()))
        print(f"--- sample {i + 1} ---\n{texts[-1]}", flush=True)
    return texts


if __name__ == "__main__":
    run_cli(main, GenerateConfig)
