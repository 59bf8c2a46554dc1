"""Sample text from a GPT-2 folder (an export of train_gpt2.py, any HF GPT-2 folder) or hub id.

python -m minitrain.generate --model out/gpt2/final --prompt "ROMEO:" --max_new_tokens 80
python -m minitrain.generate --model out/sft/final --prompt_file prompts.jsonl --out answers.jsonl
"""

import json
from dataclasses import dataclass
from typing import Annotated

import torch

from minitrain import UserError
from minitrain.atomic import atomic_write
from minitrain.config import NonNegativeFloat, NonNegativeInt, Range, check, run_cli
from minitrain.data.tokenizer import load_tokenizer
from minitrain.models.gpt2 import GPT2
from minitrain.training import dist


@dataclass
class GenerateConfig:
    """Generate text with GPT-2 and a KV cache."""

    model: str = "out/gpt2/final"  # a Hugging Face GPT-2 folder or hub id
    prompt: str = "\n"  # the text to continue
    prompt_file: str = ""  # many prompts: a .txt (one per line) or .jsonl ('prompt', or 'messages' as in training)
    out: str = ""  # also write {"prompt": ..., "completion": ...} JSON lines to this file
    num_samples: NonNegativeInt = 1  # how many samples
    max_new_tokens: NonNegativeInt = 100  # tokens to generate per sample
    temperature: NonNegativeFloat = 0.8  # sampling temperature (0: greedy)
    top_k: NonNegativeInt = 50  # sample among the k most likely tokens (0: all)
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0  # nucleus sampling: the smallest set with this much probability
    seed: int = 1337  # the sampling seed
    device: str = "auto"  # auto, cpu or cuda


def sample_texts(model: GPT2, tokenizer, cfg, empty_prompt_id: int, prompts=None) -> list[str]:
    """Decoded continuations drawn one after another from one generator seeded by `cfg.seed`:
    `cfg.num_samples` of `cfg.prompt`, or one of each of `prompts` (an empty prompt starts from
    `empty_prompt_id`). `cfg` is GenerateConfig or a training script's Config: the same option
    names (max_new_tokens, temperature, top_k with 0 for all tokens, top_p)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(cfg.seed)
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


def read_prompts(path) -> list[str]:
    """The prompts of a --prompt_file: each non-empty line of a text file, or each record of a
    JSONL file ('prompt', or a chat's messages rendered with training's template)."""
    from pathlib import Path

    from minitrain.data import completions, sources

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--prompt_file {path} is not a file.")
    if path.name.lower().endswith(sources.RECORD_SUFFIXES):
        prompts = [completions.prompt_of(record, where) for where, record in sources.rows(path)]
    else:
        prompts = [line for line in sources.read_text_file(path).splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompt_file {path} holds no prompt.")
    return prompts


def main(cfg: GenerateConfig) -> list[str]:
    check(cfg)
    prompts = read_prompts(cfg.prompt_file) if cfg.prompt_file else [cfg.prompt]
    device = dist.pick_device(cfg.device)
    model = GPT2.from_pretrained(cfg.model).to(device).eval()
    tok = load_tokenizer(model.source_dir)
    each = [p for p in prompts for _ in range(cfg.num_samples)]  # --num_samples for every prompt
    texts = sample_texts(model, tok, cfg, empty_prompt_id=model.config.eos_token_id, prompts=each)
    for i, text in enumerate(texts, 1):
        print(f"--- sample {i} ---\n{text}", flush=True)
    if cfg.out:
        with atomic_write(cfg.out, "w") as f:
            for prompt, text in zip(each, texts):
                completion = text[len(prompt) :] if text.startswith(prompt) else text
                f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return texts


if __name__ == "__main__":
    run_cli(main, GenerateConfig)
