"""BERT: parity with transformers on a tiny random model and on the real MiniLM checkpoint."""

import torch
import transformers

from minitrain.data.tokenizer import load_tokenizer
from minitrain.models.bert import BertForSequenceClassification, BertModel

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
    worst = max((p.grad - ref_grads[name].grad).abs().max().item() for name, p in ours.named_parameters())
    print(f"BERT tiny gradient parity (padded batch): max |grad diff| = {worst:.2e}")
    assert worst <= 1e-6


def test_pair_alone_and_inside_a_padded_batch_give_the_same_logits(minilm_dir):
    model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    tok = load_tokenizer(minilm_dir)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(PAIRS)
    ids, mask, types = (torch.tensor([getattr(e, k) for e in enc]) for k in ("ids", "attention_mask", "type_ids"))
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


def test_classifier_export_round_trip(minilm_dir, tmp_path):
    ours = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    assert ours.head_is_new
    ours.save_pretrained(tmp_path / "export", tokenizer_dir=minilm_dir)  # the tokenizer travels with the model
    assert (tmp_path / "export" / "tokenizer.json").is_file()
    ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    ids, mask, types = _batch(30522)
    with torch.no_grad():
        diff = (
            (ours(ids, mask, types)[0] - ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits)
            .abs()
            .max()
        )
    assert diff.item() <= 1e-5
