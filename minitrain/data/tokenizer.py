"""Tokenizers through the `tokenizers` library: load a model folder's, or train a byte-level BPE.

`load_tokenizer(name_or_dir)` returns a `tokenizers.Tokenizer`:
- `tokenizer.json` when the folder has one (padding and truncation settings in it are cleared:
  the data pipeline decides those);
- else GPT-2's `vocab.json` + `merges.txt` (byte-level BPE);
- else BERT's `vocab.txt` (WordPiece, lower-cased when tokenizer_config.json says so), whose
  `encode(a, b)` gives `[CLS] a [SEP] b [SEP]` with token-type ids 0...0 1...1.
"""

import json
import os
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from minitrain import UserError, first_line
from minitrain.atomic import atomic_write, digest, file_digest
from minitrain.models import hub

EOT = "<|endoftext|>"  # GPT-2's end-of-text token, placed between documents
SETTINGS = "folder_settings"  # the Tokenizer attribute that holds its folder's tokenizer_config.json (see below)


def load_tokenizer(name_or_dir) -> Tokenizer:
    folder = hub.resolve_model_dir(name_or_dir, allow_patterns=list(hub.TOKENIZER_FILES) + ["config.json"])
    if (folder / "tokenizer.json").is_file():
        tok = _read(folder / "tokenizer.json", lambda: Tokenizer.from_file(str(folder / "tokenizer.json")))
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        files = str(folder / "vocab.json"), str(folder / "merges.txt")
        tok = Tokenizer(_read(folder / "vocab.json", lambda: models.BPE.from_file(*files), "+ merges.txt"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    elif (folder / "vocab.txt").is_file():
        tok = _wordpiece(folder)
    else:
        raise UserError(f"{folder} has no tokenizer (tokenizer.json, vocab.json + merges.txt, or vocab.txt).")
    tok.no_padding()
    tok.no_truncation()
    # A tokenizers.Tokenizer knows its vocabulary but not which token ends a text or the chat
    # template: Hugging Face keeps those in tokenizer_config.json. They travel with the object
    # (every consumer gets the tokenizer, not its folder) and are written back by save_for_transformers.
    setattr(tok, SETTINGS, read_settings(folder, tok))
    return tok


def _read(path: Path, load, also: str = ""):
    """`load()` of a tokenizer file, its failure (not JSON, not UTF-8, not a tokenizer: the
    `tokenizers` library raises a bare Exception) as one sentence naming the file."""
    try:
        return load()
    except Exception as e:
        raise UserError(f"{path}{' ' + also if also else ''} is not a tokenizer file ({first_line(e)}).") from None


def read_settings(folder: Path, tok: Tokenizer) -> dict:
    """A folder's tokenizer_config.json without its added-token table (tokenizer.json has the
    tokens), with the chat template of chat_template.jinja (where transformers 5 saves it) and,
    when it names no eos_token, the one config.json's eos_token_id gives."""
    settings = {}
    if (folder / "tokenizer_config.json").is_file():
        try:
            settings = json.loads((folder / "tokenizer_config.json").read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{folder / 'tokenizer_config.json'} is not valid JSON ({e}).") from None
    settings.pop("added_tokens_decoder", None)
    if (folder / "chat_template.jinja").is_file():
        settings["chat_template"] = (folder / "chat_template.jinja").read_text()
    for key in ("eos_token", "bos_token"):  # an AddedToken serialised as a dict in older files
        if isinstance(settings.get(key), dict):
            settings[key] = settings[key].get("content")
    if not settings.get("eos_token") and (folder / "config.json").is_file():
        eos = json.loads((folder / "config.json").read_text()).get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        if isinstance(eos, int) and tok.id_to_token(eos) is not None:
            settings["eos_token"] = tok.id_to_token(eos)
    return settings


def settings_of(tok: Tokenizer) -> dict:
    """The tokenizer_config.json settings of a tokenizer loaded from a folder ({} for one trained here)."""
    return getattr(tok, SETTINGS, None) or {}


def _wordpiece(folder: Path) -> Tokenizer:
    settings, path = {}, folder / "tokenizer_config.json"
    if path.is_file():
        settings = _read(path, lambda: json.loads(path.read_bytes().decode("utf-8")))
        kinds = {"do_lower_case": bool, "tokenize_chinese_chars": bool, "strip_accents": (bool, type(None))}
        if not isinstance(settings, dict) or any(not isinstance(settings.get(k, False), t) for k, t in kinds.items()):
            raise UserError(
                f"{path} must be a JSON object whose do_lower_case and tokenize_chinese_chars are true or false."
            )
    lower = settings.get("do_lower_case", True)
    vocab = folder / "vocab.txt"
    tok = Tokenizer(_read(vocab, lambda: models.WordPiece.from_file(str(vocab), unk_token="[UNK]")))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"),
        lowercase=lower,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise UserError(f"{folder / 'vocab.txt'} has no [CLS] or [SEP] token.")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return tok


def train_bpe(texts, vocab_size: int, path=None) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE on an iterable of strings; save as tokenizer.json."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is unknown
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if path is not None:
        with atomic_write(path, "w") as f:
            f.write(tok.to_str())
    return tok


def cached_bpe(texts, vocab_size: int, cache_dir, key: str = "") -> Tokenizer:
    """`train_bpe` once per `key` (what identifies the texts) and vocab_size: the result is cached
    under `cache_dir`, so a second run, or another rank, loads it instead of training again.
    Without a cache_dir it is simply trained."""
    if cache_dir is None:
        print(f"training a byte-level BPE with {vocab_size} tokens on the training text", flush=True)
        return train_bpe(texts, vocab_size)
    path = Path(os.path.expanduser(str(cache_dir))) / f"bpe-{vocab_size}-{key}.json"
    digest_path = path.with_suffix(".blake2b")  # the checksum recorded when it was written
    if path.is_file():  # the sidecar read as bytes: a damaged one is a mismatch, not a traceback
        if digest_path.is_file() and digest_path.read_bytes().strip() == file_digest(path).encode():
            return _read(path, lambda: Tokenizer.from_file(str(path)))
        print(f"warning: the tokenizer cache {path} does not match its checksum; training again", flush=True)
    print(f"training a byte-level BPE with {vocab_size} tokens on the training text", flush=True)
    tok = train_bpe(texts, vocab_size, path)
    with atomic_write(digest_path, "w") as f:
        f.write(digest(tok.to_str().encode()))  # what train_bpe wrote, without reading it back
    return tok


def save_for_transformers(tok: Tokenizer, folder, max_len: int) -> None:
    """tokenizer.json plus the tokenizer_config.json that lets transformers' AutoTokenizer load it:
    a GPT-2-style tokenizer as GPT2TokenizerFast (end-of-text as bos/eos/unk); one loaded from a
    folder keeps that folder's settings (its class, eos and bos tokens, chat template)."""
    folder = Path(folder)
    with atomic_write(folder / "tokenizer.json", "w") as f:
        f.write(tok.to_str())
    config = {}
    if tok.token_to_id(EOT) is not None:
        config = {"tokenizer_class": "GPT2TokenizerFast", "bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    config |= {"model_max_length": max_len, "add_prefix_space": False} | settings_of(tok)
    with atomic_write(folder / "tokenizer_config.json", "w") as f:
        json.dump(config, f, indent=2)
    (folder / "chat_template.jinja").unlink(missing_ok=True)  # the template, if any, is in the config now


def token_bytes(tok: Tokenizer):
    """How many bytes of UTF-8 text each token id stands for (0 for special tokens such as the
    end-of-text separator), as a numpy array: bits per byte divides a loss by these counts, which
    makes models with different vocabularies comparable. Byte-level BPE tokens (GPT-2's) map each
    character of their string to one byte; other vocabularies are measured by decoding."""
    import numpy as np

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = set(tok.get_added_tokens_decoder())
    counts = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for token, i in tok.get_vocab().items():
        if i in special:
            continue
        counts[i] = len(token) if set(token) <= alphabet else len(tok.decode([i]).encode("utf-8"))
    return counts


def find_eot(tok: Tokenizer) -> int | None:
    """The id that ends a document: GPT-2's <|endoftext|> (also SmolLM's and Qwen's), else the
    eos token of the tokenizer's folder (Llama 3's <|end_of_text|>); None when it has neither."""
    i = tok.token_to_id(EOT)
    if i is None and settings_of(tok).get("eos_token"):
        i = tok.token_to_id(settings_of(tok)["eos_token"])
    return i


def eot_id(tok: Tokenizer) -> int:
    """find_eot's id, or one sentence saying the tokenizer has none."""
    i = find_eot(tok)
    if i is None:
        raise UserError(
            f"the tokenizer has no {EOT} token and its folder names no eos_token (tokenizer_config.json) "
            f"to separate documents."
        )
    return i


def prefix_ids(tok: Tokenizer) -> list[int]:
    """The ids the tokenizer itself puts before every text (Llama 3's <|begin_of_text|>; none for
    GPT-2, SmolLM or Qwen): its post-processor adds them when special tokens are added."""
    full, bare = tok.encode("a").ids, tok.encode("a", add_special_tokens=False).ids
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k]
    return []
