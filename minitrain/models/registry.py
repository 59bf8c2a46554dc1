"""Which class reads a causal-LM folder: config.json's `model_type` -> the model class. The
training loop and the loaders never branch on the family; they ask here."""

import os
from pathlib import Path

from minitrain import UserError
from minitrain.models import hub
from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.models.llama import Llama, LlamaConfig

CAUSAL = {"gpt2": GPT2, "llama": Llama, "qwen2": Llama, "qwen3": Llama}


def model_class(model_type, where="the model") -> type:
    if "moe" in str(model_type) or model_type == "mixtral":
        raise UserError(f"{where} is a mixture-of-experts model ({model_type}), which minitrain does not implement.")
    if model_type not in CAUSAL:
        raise UserError(
            f"{where} holds a {model_type!r} model; minitrain trains {', '.join(CAUSAL)} (Hugging Face model_type)."
        )
    return CAUSAL[model_type]


def load_model_class(folder) -> type:
    """The class of a local Hugging Face folder's model, from its config.json."""
    return model_class(hub.read_config(folder).get("model_type"), folder)


def from_pretrained(name_or_dir, **overrides):
    """A causal LM from a local folder or hub id, whichever supported family it is."""
    folder = hub.resolve_model_dir(name_or_dir)
    return load_model_class(folder).from_pretrained(folder, **overrides)


def scratch(arch: str, vocab_size: int, block_size: int, dropout: float, eot: int, n_layer, n_head, n_kv_head, n_embd):
    """A new model of `arch` (gpt2 or llama) from train_gpt2's shape options, random weights
    (seed first: the same on every rank); end-of-text is its bos and eos."""
    if arch == "gpt2":
        drop = dict(embd_pdrop=dropout, attn_pdrop=dropout, resid_pdrop=dropout)
        shape = dict(n_positions=block_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
        return GPT2(GPT2Config(vocab_size=vocab_size, **shape, **drop, bos_token_id=eot, eos_token_id=eot))
    # SwiGLU's three matrices at 8/3 of the width hold as many weights as GPT-2's two at 4x
    # (Shazeer 2020), rounded up to a multiple of 64 for the matmuls
    hidden = (8 * n_embd // 3 + 63) // 64 * 64
    shape = dict(hidden_size=n_embd, intermediate_size=hidden, num_hidden_layers=n_layer)
    heads = dict(num_attention_heads=n_head, num_key_value_heads=n_kv_head or n_head)
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=block_size, **shape, **heads,
                         attention_dropout=dropout, bos_token_id=eot, eos_token_id=eot)  # fmt: skip
    return Llama(config)


def check_fits(model, block_size: int, n_tokens: int, init_from: str) -> None:
    """The model takes --block_size tokens at once and has a row for each of the tokenizer's
    `n_tokens` (only a checkpoint's model can have fewer rows than tokens)."""
    n_positions, vocab_size = model.config.n_positions, model.config.vocab_size
    if block_size > n_positions:
        raise UserError(
            f"--block_size={block_size} is larger than the model's {n_positions} positions; "
            f"use --block_size={n_positions} or less."
        )
    if n_tokens > vocab_size:
        raise UserError(
            f"the tokenizer has {n_tokens} tokens but the model only {vocab_size} (the vocab_size "
            f"of {hub.resolve_model_dir(init_from) / 'config.json'}): they do not belong together."
        )


def config_from_dict(d: dict):
    """A checkpoint's recorded architecture (asdict of the config) back as its config; checkpoints
    written before the family was recorded are GPT-2's."""
    cls = model_class(d.get("model_type", "gpt2"), "the checkpoint")
    return cls.config_class(**d)


def from_config_dict(d: dict):
    """A new model (random weights) of a checkpoint's recorded architecture."""
    config = config_from_dict(d)
    return model_class(config.model_type)(config)


def check_local(name_or_dir) -> None:
    """Before any heavy work: a local folder (a hub id is checked once downloaded) holds a family
    minitrain trains, with a config its class accepts (sliding windows, experts, unknown RoPE
    scaling are refused here, in one sentence)."""
    path = Path(os.path.expanduser(str(name_or_dir)))
    if str(name_or_dir).startswith((".", "/", "~")) or path.exists():
        folder = hub.resolve_model_dir(name_or_dir)
        config = hub.read_config(folder)
        model_class(config.get("model_type"), folder).config_class.from_hf(config, folder)
