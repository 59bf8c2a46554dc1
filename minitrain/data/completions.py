"""Prompt/completion examples for fine-tuning, with the prompt masked out of the loss.

Records (JSONL, JSONL.gz, parquet, or an hf: data set) hold either
    {"prompt": "...", "completion": "..."}
or a chat {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]} whose last
message is the assistant's. A record becomes texts that alternate context and learned text:
(prompt, completion), or for a chat (context, turn, context, turn, ...[, context]) where every
assistant turn is learned, as apply_chat_template(..., return_assistant_tokens_mask=True) marks them.
With a model whose tokenizer has a chat template (tokenizer_config.json), the chat is rendered by that
template exactly as transformers' apply_chat_template does, and a turn is the assistant's content and
its end-of-turn token (data/chat.py says how it is told apart). Without one, by this simple template
(plain text: no special tokens are added): "<|role|>\\ncontent\\n" for every message but the last,
then "<|assistant|>\\n" and the last message's content; a turn is an assistant message's content
(the plain text has no end-of-turn token; the end-of-text ends the last one).

An example is ids(text 1) + ids(text 2) + ... + [end-of-text], the texts tokenized separately
(special tokens such as Llama 3's <|begin_of_text|> added to the first only) and concatenated in
order, then cut to block_size + 1 ids (the end is dropped). Its inputs are all ids but the last,
its targets all ids but the first, with -100 where the target is a context token: the loss counts
only learned tokens and the end-of-text. An example with no learned token left after the cut is
dropped (and counted), and so is (counted) an example that was cut.

`batch` pads: each row is one example, padded at its end to the longest row of the batch (inputs
with end-of-text, targets with -100, so padding never counts). Causal attention means padding at
the end changes nothing before it. Evaluation always reads this way; training packs the examples
of a micro-batch into fewer rows with per-example attention (data/packing.py) unless
--packing=false.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch

from minitrain import UserError
from minitrain.data import sources
from minitrain.data.chat import ChatTemplate, template_of
from minitrain.data.tokenizer import prefix_ids, settings_of
from minitrain.data.tokens import to_device

IGNORE = -100  # the target value cross_entropy skips


def is_completions(spec: "str | sources.Source") -> bool:
    """Whether a source's records are prompt/completion pairs or chats (its first record says)."""
    src = sources.resolve(spec)
    if src.is_shards:
        return False
    if src.is_hf or sources.record_files(src):
        record = src.first_record()
        return record is not None and (("prompt" in record and "completion" in record) or "messages" in record)
    return False


def render(record: dict, where: str, chat: ChatTemplate | None = None) -> tuple[str, ...]:
    """The texts of a record, checked, alternating context and learned: (prompt, completion), or a
    chat that ends with the assistant (rendered by the model's `chat` template when it has one)."""
    if "messages" in record:
        messages = _messages(record, where)
        if messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last message must be the assistant's (the completion to learn).")
        if chat is not None:
            return tuple(chat.segments(messages, where))
        return render_plain(messages)
    for key in ("prompt", "completion"):
        if key not in record:
            raise UserError(f"{where} has no {key!r} field (records need 'prompt' and 'completion', or 'messages').")
        sources.check_text(record[key], where, key)
    return record["prompt"], record["completion"]


def _messages(record: dict, where: str) -> list[dict]:
    """A record's chat, checked: a non-empty list of {"role": str, "content": str} objects."""
    messages = record["messages"]
    ok = (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    )
    if not ok:
        raise UserError(f'{where}: \'messages\' must be a list of {{"role": str, "content": str}} objects.')
    for m in messages:
        sources.check_text(m["role"], where, "role")
        sources.check_text(m["content"], where, "content")
    return messages


def render_plain(messages: list[dict]) -> tuple[str, ...]:
    """The plain template's texts of a chat that ends with the assistant: its contents learned."""
    texts, context = [], ""
    for m in messages[:-1]:
        context += f"<|{m['role']}|>\n"
        if m["role"] == "assistant":
            texts += [context, m["content"]]
            context = ""
        context += ("" if m["role"] == "assistant" else m["content"]) + "\n"
    return (*texts, context + "<|assistant|>\n", messages[-1]["content"])


def prompt_text(texts: tuple[str, ...]) -> str:
    """The text before an example's last learned text: what the end-of-run samples continue."""
    return "".join(texts[: len(texts) - 1 - (len(texts) % 2 == 1)])


def render_prompt(messages: list[dict]) -> str:
    """The template's text for the messages before the assistant's answer."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


def prompt_of(record: dict, where: str, chat: ChatTemplate | None = None) -> str:
    """The prompt of a record for generation: its 'prompt', or its chat up to the answer, rendered by
    the model's `chat` template with the generation prompt when it has one."""
    if "messages" in record:
        messages = _messages(record, where)
        asked = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        if chat is not None:
            return chat.render(asked, add_generation_prompt=True, where=where)
        return render_prompt(asked)
    if "prompt" not in record:
        raise UserError(f"{where} has no 'prompt' field (a prompt file's records need 'prompt' or 'messages').")
    return sources.check_text(record["prompt"], where, "prompt")


def read(spec: "str | sources.Source", val_fraction: float, chat: ChatTemplate | None = None) -> tuple[list, list]:
    """(train, validation) lists of texts (`render`: (prompt, completion), or a chat's): a data set's own
    validation split, else records chosen by training's fixed hash of the record number (val_fraction 0: none)."""
    train, val, src = [], [], sources.resolve(spec)
    if src.is_hf:
        has_val = False
        for where, row, is_val in sources.hf_rows(src.spec):
            has_val = has_val or is_val
            pair = render(row, where, chat)
            split = (
                "val" if is_val else "train" if has_val else sources.split_of(len(train) + len(val), val_fraction, 0)
            )
            (val if split == "val" else train).append(pair)
        return train, val
    paths = sources.record_files(src)
    others = [p for p in src.files if p not in paths]
    if others:
        raise UserError(f"--data {src.spec!r} mixes prompt/completion records with other files, such as {others[0]}.")
    index = 0
    for path in paths:
        for where, record in sources.rows(path):
            pair = render(record, where, chat)
            (val if sources.split_of(index, val_fraction, 0) == "val" else train).append(pair)
            index += 1
    return train, val


class Examples:
    """Tokenized examples, read as blocks: block i is example i (a tokens.TokenSource, as the
    shards of text are)."""

    def __init__(
        self, seqs: list[np.ndarray], prompt_lens: list[int], prompts: list[str], eot: int, dropped=0, masks=None, cut=0
    ):
        self.seqs, self.prompt_lens, self.prompts, self.eot, self.dropped = seqs, prompt_lens, prompts, eot, dropped
        self.cut = cut  # examples longer than the block, their end dropped
        # masks[i]: None for prompt + completion (the targets are the ids from prompt_lens[i] on), else a
        # bool array as long as seqs[i], True where that id is a target (a chat's assistant turns)
        self.masks = masks if masks is not None else [None] * len(seqs)

    def target_mask(self, i: int) -> np.ndarray:
        """Which ids of example i the loss predicts (bool, len(seqs[i]); the first id never)."""
        if self.masks[i] is not None:
            return self.masks[i]
        return np.arange(len(self.seqs[i])) >= max(1, self.prompt_lens[i])

    def __len__(self) -> int:
        return int(sum(len(s) for s in self.seqs))

    def close(self) -> None:
        """Nothing to release: the examples are in memory, read from files already closed."""

    def num_blocks(self, T: int) -> int:
        return len(self.seqs)

    def blocks_per_shard(self, T: int) -> np.ndarray:
        return np.array([len(self.seqs)], dtype=np.int64)

    def first_block(self, T: int) -> np.ndarray:
        return np.array([0, len(self.seqs)], dtype=np.int64)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of example i: its ids but the last, its ids but the first, with -100
        where the target is context (a prompt, a user turn)."""
        s = self.seqs[int(i)]
        return s[:-1], np.where(self.target_mask(int(i))[1:], s[1:], IGNORE)  # context: no target

    def lengths(self, ids, T: int) -> np.ndarray:
        """The inputs of each example (at most T): what a row holds of it."""
        return np.array([len(self.seqs[int(i)]) - 1 for i in ids], dtype=np.int64)

    def rows(self, ids, T: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (len(ids), L) int64, L the longest example of these minus one."""
        L = int(self.lengths(ids, T).max())
        x = np.full((len(ids), L), self.eot, dtype=np.int64)
        y = np.full((len(ids), L), IGNORE, dtype=np.int64)
        for r, i in enumerate(ids):
            inputs, targets = self.example(i)
            x[r, : len(inputs)], y[r, : len(inputs)] = inputs, targets
        return x, y

    def batch(self, ids, T: int, device=None):
        x, y = self.rows(ids, T)
        return to_device(torch.from_numpy(x), device), to_device(torch.from_numpy(y), device)

    def identity(self) -> list[str]:
        """A checksum of every example's ids, prompt length and target mask (where it has one)."""
        h = hashlib.blake2b(digest_size=16)
        for s, n, m in zip(self.seqs, self.prompt_lens, self.masks):
            h.update(np.asarray(s, dtype=np.int64).tobytes())
            h.update(n.to_bytes(8, "little"))
            if m is not None:  # prompt/completion data keeps the checksum it had before masks
                h.update(np.packbits(m).tobytes())
        return [f"examples:{len(self.seqs)}:{h.hexdigest()}"]

    def unused(self, T: int) -> int:
        return 0  # an example is cut to the block, never split

    def sample_prompts(self, n: int) -> list[str]:
        return self.prompts[:n]  # the end-of-run samples continue the first validation prompts

    def targets(self, ids, T: int) -> int:
        """The learned tokens (and end-of-text ids) that these examples' loss counts."""
        return sum(int(self.target_mask(int(i)).sum()) for i in ids)

    def target_bytes(self, n_blocks: int, T: int, table: np.ndarray) -> int:
        return sum(int(table[self.seqs[i][self.target_mask(i)]].sum()) for i in range(n_blocks))


def tokenize(examples: list[tuple[str, ...]], tokenizer, eot: int, block_size: int) -> Examples:
    """ids(text 1) + ids(text 2) + ... + [eot], cut to block_size + 1, the odd texts (and eot)
    learned; examples with no learned token left are dropped. (prompt, completion) examples keep only
    their prompt length, others a target mask too."""
    first = [e.ids for e in tokenizer.encode_batch([ex[0] for ex in examples])] if examples else []
    # the other texts continue the first: the ids a tokenizer starts a text with (Llama 3's
    # <|begin_of_text|>) go before the first only
    rest = iter(e.ids for e in tokenizer.encode_batch([t for ex in examples for t in ex[1:]], add_special_tokens=False))
    seqs, lens, masks, kept, dropped, cut = [], [], [], [], 0, 0
    for texts, ids in zip(examples, first):
        parts = [ids, *(next(rest) for _ in texts[1:]), [eot]]
        whole = [t for part in parts for t in part]
        cut += len(whole) > block_size + 1
        s = np.asarray(whole[: block_size + 1], dtype=np.int64)
        learned = [k % 2 == 1 or k == len(texts) for k in range(len(parts))]  # the odd texts and eot
        mask = np.repeat(learned, [len(part) for part in parts])[: block_size + 1]
        mask[0] = False  # the first id is never predicted
        if not mask.any():  # no learned target left
            dropped += 1
            continue
        seqs.append(s)
        lens.append(int(mask.argmax()))
        masks.append(None if len(texts) == 2 else mask)
        kept.append(prompt_text(texts))
    return Examples(seqs, lens, kept, eot, dropped, masks=masks, cut=cut)


def load(spec, tokenizer, eot: int, block_size: int, val_fraction: float, val_spec=None):
    """(train Examples, validation Examples) of a prompt/completion source (and --val_data): specs
    or resolved sources.Source."""
    chat = template_of(settings_of(tokenizer))  # the model's own chat template, if it has one
    if val_spec:
        if not is_completions(val_spec):
            raise UserError(f"--val_data {str(val_spec)!r} is not prompt/completion data, but --data is.")
        train_pairs, _ = read(spec, 0.0, chat)
        val_pairs, _ = read(val_spec, 0.0, chat)
    else:
        train_pairs, val_pairs = read(spec, val_fraction, chat)
    if chat is not None:  # a template writes bos_token itself; the tokenizer adds it again when it encodes
        prefix = "".join(tokenizer.id_to_token(i) for i in prefix_ids(tokenizer))
        train_pairs, val_pairs = ([(t[0].removeprefix(prefix), *t[1:]) for t in ts] for ts in (train_pairs, val_pairs))
        if chat.unlearned:
            print(
                f"warning: {chat.unlearned} earlier assistant turns are rendered differently once later messages "
                f"follow, so they are context, not learned (only the last turn of those chats is)",
                flush=True,
            )
    empty = [t for t in train_pairs + val_pairs if not "".join(t[1::2]).strip()]
    if empty:
        print(f"warning: {len(empty)} examples have an empty completion: they teach only the end of text", flush=True)
    train = tokenize(train_pairs, tokenizer, eot, block_size)
    val = tokenize(val_pairs, tokenizer, eot, block_size)
    for name, ex, n in (("training", train, len(train_pairs)), ("validation", val, len(val_pairs))):
        if n and not ex.seqs:
            raise UserError(
                f"every one of the {n} {name} examples has a prompt of {block_size} tokens or more, so no "
                f"completion token is left to learn: raise --block_size or shorten the prompts."
            )
        if ex.dropped:
            print(
                f"warning: {ex.dropped} of {n} {name} examples dropped: their prompt fills --block_size={block_size}",
                flush=True,
            )
        if ex.cut:
            print(
                f"warning: {ex.cut} of {n} {name} examples are longer than --block_size={block_size} + 1 tokens: "
                f"their end is dropped",
                flush=True,
            )
    if not train.seqs:
        raise UserError(f"--data {str(spec)!r} has no training examples.")
    if val.seqs:
        return train, val
    if val_spec:
        raise UserError(f"--val_data {str(val_spec)!r} has no examples.")
    if val_fraction > 0:
        raise UserError(
            f"none of the {len(train_pairs)} examples of --data {str(spec)!r} fell into the validation split: "
            f"raise --val_fraction, or pass --val_data."
        )
    return train, None


def read_prompts(path, tokenizer=None) -> list[str]:
    """The prompts of a --prompt_file: each non-empty line of a text file, or each record of a
    JSONL file ('prompt', or a chat's messages rendered as training renders them: by the chat
    template of the `tokenizer`'s folder when it has one, else the plain one)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--prompt_file {path} is not a file.")
    if path.name.lower().endswith(sources.RECORD_SUFFIXES):
        chat = template_of(settings_of(tokenizer)) if tokenizer is not None else None
        prompts = [prompt_of(record, where, chat) for where, record in sources.rows(path)]
        if chat is not None:  # the template writes bos_token; the tokenizer adds it when it encodes
            prefix = "".join(tokenizer.id_to_token(i) for i in prefix_ids(tokenizer))
            prompts = [p.removeprefix(prefix) for p in prompts]
    else:
        prompts = [line for line in sources.read_text_file(path).splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompt_file {path} holds no prompt.")
    return prompts
