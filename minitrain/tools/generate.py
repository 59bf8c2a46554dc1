"""python -m minitrain.generate: sample text from a causal-LM folder (an export of train_gpt2.py, any HF
GPT-2, Llama, Qwen2 or Qwen3 folder), a hub id, or a train_gpt2.py checkpoint.

python -m minitrain.generate --model out/gpt2/final --prompt "ROMEO:" --max_new_tokens 80
python -m minitrain.generate --model out/sft/final --prompt_file prompts.jsonl --out answers.jsonl
"""

import json
from dataclasses import dataclass

from minitrain.atomic import atomic_write
from minitrain.cli import run_cli
from minitrain.config import NonNegativeInt, check
from minitrain.data import completions
from minitrain.data.tokenizer import eot_id
from minitrain.options import SamplingOptions
from minitrain.training import dist
from minitrain.training.loader import load_model
from minitrain.training.sampling import sample_texts


@dataclass
class GenerateConfig(SamplingOptions):
    """Generate text with a causal LM (GPT-2, Llama, Qwen) and a KV cache."""

    model: str = "out/gpt2/final"  # an exported Hugging Face folder (GPT-2, Llama, Qwen), a hub id, or a checkpoint
    prompt: str = "\n"  # the text to continue
    prompt_file: str = (
        ""  # many prompts: .txt (one per line) or .jsonl ('prompt', or 'messages': the model's chat template)
    )
    out: str = ""  # also write {"prompt": ..., "completion": ...} JSON lines to this file
    num_samples: NonNegativeInt = 1  # samples of each prompt
    seed: int = 1337  # the sampling seed
    device: str = "auto"  # auto, cpu or cuda


def main(cfg: GenerateConfig) -> list[str]:
    check(cfg)
    if cfg.prompt_file:  # a bad prompt file is refused before the model is loaded
        completions.read_prompts(cfg.prompt_file)
    device = dist.pick_device(cfg.device)
    model, tok = load_model(cfg.model, "causal")
    # a chat is rendered with the model's own template and its generation prompt, as training renders it
    prompts = completions.read_prompts(cfg.prompt_file, tok) if cfg.prompt_file else [cfg.prompt]
    model.to(device).eval()
    each = [p for p in prompts for _ in range(cfg.num_samples)]  # --num_samples for every prompt
    texts = sample_texts(model, tok, cfg, cfg.seed, empty_prompt_id=eot_id(tok), prompts=each)
    for i, text in enumerate(texts, 1):
        print(f"--- sample {i} ---\n{text}", flush=True)
    if cfg.out:
        with atomic_write(cfg.out, "w") as f:
            for prompt, text in zip(each, texts):
                # the text is decoded without special tokens (a template's <|im_start|>): so is the prompt
                shown = tok.decode(tok.encode(prompt).ids)
                completion = text[len(shown) :] if text.startswith(shown) else text
                f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return texts


if __name__ == "__main__":
    run_cli(main, GenerateConfig)
