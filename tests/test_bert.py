"""BERT: parity with transformers on a tiny random model and on the real MiniLM checkpoint."""

import torch
import transformers

from minitrain.bert import BertForSequenceClassification, BertModel
from minitrain.tokenizer import load_tokenizer

PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("Stocks fell sharply on Monday, analysts said.", "The weather was sunny."),
    ('He said "no" -- twice!', "Héllo wörld, naïve café."),
    ("short", "a much longer second sentence " * 20),
]


def _batch(vocab, B=3, T=11):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0  # padded rows
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 5:] = 1
    return ids, mask, types


def test_classifier_logits_match_transformers(tiny_bert_dir):
    ref = transformers.BertForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    ours = BertForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    assert not ours.head_is_new and ours.config.num_labels == 3
    ids, mask, types = _batch(99)
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        logits, loss = ours(ids, mask, types, labels)
    diff = (logits - r.logits).abs().max().item()
    print(f"BERT tiny parity: max |logits diff| = {diff:.2e}")
    assert diff <= 1e-5 and abs(loss.item() - r.loss.item()) <= 1e-5


def test_packed_encoder_gradients_match_transformers_padded_batch(tiny_bert_dir):
    """Our encoder runs the real tokens packed (no padding) outside attention; transformers runs
    the padded grid. Same loss and the same gradient for every parameter, in training mode
    (dropout 0 so both sides compute the same function)."""
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = transformers.BertForSequenceClassification.from_pretrained(tiny_bert_dir, **no_dropout)
    ours = BertForSequenceClassification.from_pretrained(tiny_bert_dir, **no_dropout)
    ref.train(), ours.train()
    ids, mask, types = _batch(99)
    labels = torch.tensor([0, 2, 1])
    ref(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss.backward()
    ours(ids, mask, types, labels)[1].backward()
    ref_grads = dict(ref.named_parameters())
    worst = max(
        (p.grad - ref_grads[name].grad).abs().max().item() for name, p in ours.named_parameters()
    )
    print(f"BERT tiny gradient parity (padded batch): max |grad diff| = {worst:.2e}")
    assert worst <= 1e-6


def test_pair_alone_and_inside_a_padded_batch_give_the_same_logits(minilm_dir):
    model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    tok = load_tokenizer(minilm_dir)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(PAIRS)
    ids, mask, types = (
        torch.tensor([getattr(e, k) for e in enc]) for k in ("ids", "attention_mask", "type_ids")
    )
    with torch.no_grad():
        batched = model(ids, mask, types)[0]
        for i, e in enumerate(enc):
            n = sum(e.attention_mask)
            alone = model(ids[i : i + 1, :n], None, types[i : i + 1, :n])[0]
            assert (alone - batched[i]).abs().max().item() <= 1e-5


def test_minilm_hidden_states_match_transformers(minilm_dir):
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ours = BertModel.from_pretrained(minilm_dir).eval()
    tok = load_tokenizer(minilm_dir)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(PAIRS[:3])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    types = torch.tensor([e.type_ids for e in enc])
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        h, pooled = ours(ids, mask, types)
    real = mask.bool()
    diff = (h - r.last_hidden_state)[real].abs().max().item()
    print(f"MiniLM parity: max |hidden diff| = {diff:.2e}")
    assert diff <= 1e-5
    assert (pooled - r.pooler_output).abs().max().item() <= 1e-5


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


def test_classifier_export_round_trip(minilm_dir, tmp_path):
    ours = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    assert ours.head_is_new
    ours.save_pretrained(tmp_path / "export")
    assert (tmp_path / "export" / "tokenizer.json").is_file()
    ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    ids, mask, types = _batch(30522)
    with torch.no_grad():
        diff = (
            (
                ours(ids, mask, types)[0]
                - ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            )
            .abs()
            .max()
        )
    assert diff.item() <= 1e-5


def test_gpt2_vocab_and_merges_give_the_same_tokens_as_tokenizer_json(tmp_path):
    from minitrain.tokenizer import train_bpe

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 30
    tok = train_bpe([text], 300, tmp_path / "json" / "tokenizer.json")
    (tmp_path / "files").mkdir()
    tok.model.save(str(tmp_path / "files"))  # vocab.json + merges.txt
    from_files = load_tokenizer(tmp_path / "files")
    from_json = load_tokenizer(tmp_path / "json")
    sample = "Whether 'tis nobler, to be or not: the question!"
    assert from_files.encode(sample).ids == from_json.encode(sample).ids
    assert from_files.decode(from_files.encode(sample).ids) == sample
