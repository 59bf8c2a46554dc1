"""minitrain/tokenizer.py: loading every tokenizer layout, the BPE cache, the export for transformers."""

import pytest
import transformers

from minitrain.data.tokenizer import load_tokenizer

PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("Stocks fell sharply on Monday, analysts said.", "The weather was sunny."),
    ('He said "no" -- twice!', "Héllo wörld, naïve café."),
    ("short", "a much longer second sentence " * 20),
]


def test_minilm_pair_tokenization_matches_transformers(minilm_dir):
    ref = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    tok = load_tokenizer(minilm_dir)
    tok.enable_truncation(32, strategy="longest_first")
    for a, b in PAIRS:
        e = tok.encode(a, b)
        r = ref(a, b, truncation="longest_first", max_length=32)
        assert e.ids == r["input_ids"], (a, b)
        assert e.type_ids == r["token_type_ids"]
        assert e.attention_mask == r["attention_mask"]


def test_wordpiece_from_vocab_txt_matches_tokenizer_json(minilm_dir, tmp_path):
    import shutil

    for name in ("vocab.txt", "tokenizer_config.json", "config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    from_vocab = load_tokenizer(tmp_path)
    from_json = load_tokenizer(minilm_dir)
    for a, b in PAIRS:
        assert from_vocab.encode(a, b).ids == from_json.encode(a, b).ids
        assert from_vocab.encode(a, b).type_ids == from_json.encode(a, b).type_ids


def test_gpt2_vocab_and_merges_give_the_same_tokens_as_tokenizer_json(tmp_path):
    from minitrain.data.tokenizer import train_bpe

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 30
    tok = train_bpe([text], 300, tmp_path / "json" / "tokenizer.json")
    (tmp_path / "files").mkdir()
    tok.model.save(str(tmp_path / "files"))  # vocab.json + merges.txt
    from_files = load_tokenizer(tmp_path / "files")
    from_json = load_tokenizer(tmp_path / "json")
    sample = "Whether 'tis nobler, to be or not: the question!"
    assert from_files.encode(sample).ids == from_json.encode(sample).ids
    assert from_files.decode(from_files.encode(sample).ids) == sample


def test_cached_bpe_trains_once_and_loads_the_same_tokenizer(tmp_path, monkeypatch):
    from minitrain.data import tokenizer

    texts = ["To be, or not to be, that is the question. " * 40, "Whether 'tis nobler in the mind. " * 40]
    first = tokenizer.cached_bpe(texts, 280, tmp_path, key="k")
    assert len(list(tmp_path.glob("bpe-280-*.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(tokenizer, "train_bpe", boom)
    again = tokenizer.cached_bpe(texts, 280, tmp_path, key="k")
    assert again.to_str() == first.to_str()
    with pytest.raises(AssertionError, match="trained again"):  # another size: another key
        tokenizer.cached_bpe(texts, 290, tmp_path, key="k")


def test_export_for_transformers_gives_the_same_ids(tmp_path):
    from minitrain.data.tokenizer import EOT, save_for_transformers, train_bpe

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 30
    tok = train_bpe([text], 300)
    save_for_transformers(tok, tmp_path, max_len=64)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    sample = "Whether 'tis nobler, to be or not: the question!" + EOT
    assert ref(sample)["input_ids"] == tok.encode(sample).ids
    assert ref.eos_token == EOT and ref.model_max_length == 64
