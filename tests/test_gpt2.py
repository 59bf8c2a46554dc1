"""GPT-2: parity with transformers' GPT2LMHeadModel, export round-trip, generation."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from minitrain.models.gpt2 import GPT2, GPT2Config


def _ids(vocab, B=3, T=17, seed=1):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_logits_and_loss_match_transformers(tiny_gpt2_dir):
    ref = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()
    ours = GPT2.from_pretrained(tiny_gpt2_dir).eval()
    assert ours.config.padded_vocab_size == 128 and ours.config.vocab_size == 101
    x = _ids(101)
    with torch.no_grad():
        r = ref(x, labels=x)
        # our labels are the next-token targets: x shifted left, the last position ignored
        targets = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)
        logits, (no_logits, loss) = ours(x)[0], ours(x, targets)
    assert no_logits is None  # with targets, the loss is computed without materialising logits
    diff = (logits - r.logits).abs().max().item()
    print(f"GPT-2 parity: max |logits diff| = {diff:.2e}, loss diff = {abs(loss - r.loss):.2e}")
    assert diff <= 1e-5
    assert abs(loss.item() - r.loss.item()) <= 1e-5


def test_export_round_trip(tiny_gpt2_dir, tmp_path):
    ours = GPT2.from_pretrained(tiny_gpt2_dir).eval()
    with torch.no_grad():  # change the weights so the round trip is not just the input file
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ours.save_pretrained(tmp_path / "export")
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    x = _ids(101)
    with torch.no_grad():
        diff = (ours(x)[0] - ref(x).logits).abs().max().item()
    assert diff <= 1e-5
    again = GPT2.from_pretrained(tmp_path / "export")
    for (n, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        if n in ("transformer.wte.weight", "lm_head.weight"):  # padded rows are not exported
            a, b = a[:101], b[:101]
        assert torch.equal(a, b), n


def test_from_scratch_loss_ignores_masked_targets():
    model = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    x = _ids(50, B=2, T=8)
    y = x.clone()
    y[0, :5] = -100
    _, mean = model(x, y)
    _, total = model(x, y, reduction="sum")
    assert torch.allclose(mean * (y != -100).sum(), total, atol=1e-4)


def test_kv_cache_greedy_matches_recompute_and_transformers(tiny_gpt2_dir):
    ours = GPT2.from_pretrained(tiny_gpt2_dir)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()
    prompt = _ids(101, B=2, T=5)
    cached = ours.generate(prompt, 20, temperature=0)
    full = ours.generate(prompt, 20, temperature=0, use_cache=False)
    ref.generation_config.eos_token_id = None  # generate exactly 20 tokens, as ours does here
    hf = ref.generate(
        prompt,
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=100,
        attention_mask=torch.ones_like(prompt),
    )
    assert torch.equal(cached, full)
    assert torch.equal(cached, hf)


def test_generation_past_the_context_window(tiny_gpt2_dir):
    ours = GPT2.from_pretrained(tiny_gpt2_dir)
    out = ours.generate(_ids(101, B=1, T=30), 10, temperature=0)
    assert out.shape == (1, 40)


def test_sampling_is_reproducible_with_a_seed(tiny_gpt2_dir):
    ours = GPT2.from_pretrained(tiny_gpt2_dir)
    prompt = _ids(101, B=2, T=4)

    def run(seed, **kw):
        return ours.generate(prompt, 12, temperature=0.9, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(3, top_k=5), run(3, top_k=5))
    assert torch.equal(run(3, top_p=0.8), run(3, top_p=0.8))
    assert not torch.equal(run(3, top_k=50), run(4, top_k=50))


def test_top_k_and_top_p_restrict_the_choice():
    from minitrain.models.gpt2 import sample_next

    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert picks == {0, 1}
    # softmax of the logits: p0 = 0.71, p1 = 0.26: top_p=0.5 keeps only the first token
    picks = {sample_next(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(50)}
    assert picks == {0}


def test_eos_stops_generation(tiny_gpt2_dir):
    ours = GPT2.from_pretrained(tiny_gpt2_dir)
    prompt = _ids(101, B=1, T=4)
    first = ours.generate(prompt, 1, temperature=0)[0, -1].item()
    out = ours.generate(prompt, 10, temperature=0, eos_token_id=first)
    assert out.shape[1] == 5 and out[0, -1].item() == first


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=3, n_head=2)
    a, b = GPT2(cfg), GPT2(cfg)
    b.load_state_dict(a.state_dict())
    b.activation_checkpointing = True
    x = _ids(50, B=2, T=16)
    a(x, x)[1].backward()
    b(x, x)[1].backward()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7)


def test_generate_entry_point_checks_its_options_before_loading(tmp_path):
    from minitrain import UserError
    from minitrain.tools import generate

    for bad, message in (
        (dict(top_p=1.5), r"--top_p=1.5 must be in \(0, 1\]"),
        (dict(top_k=-1), "--top_k=-1 must not"),
    ):
        with pytest.raises(UserError, match=message):
            generate.main(generate.GenerateConfig(model=str(tmp_path / "nothing"), **bad))


@pytest.mark.parametrize("padded_vocab", [False, True])
def test_chunked_cross_entropy_equals_the_plain_loss_and_its_gradients(padded_vocab):
    """The loss over chunks of rows, gradients computed in the forward pass, equals
    F.cross_entropy on the full logits (fp32): value and the gradients of the hidden states and
    of the (tied) weight, with ignored targets, in chunks that do not divide the rows."""
    from minitrain.models.gpt2 import chunked_cross_entropy

    torch.manual_seed(0)
    N, C, V = 37, 16, 50
    h = torch.randn(N, C, requires_grad=True)
    w = torch.randn(V + 14 if padded_vocab else V, C, requires_grad=True)
    bias = torch.cat([torch.zeros(V), torch.full((14,), float("-inf"))]) if padded_vocab else None
    t = torch.randint(0, V, (N,))
    t[::5] = -100
    want = F.cross_entropy(F.linear(h, w, bias), t, ignore_index=-100, reduction="sum")
    gh, gw = torch.autograd.grad(want * 0.7, (h, w))
    # 8 rows a chunk; the softmax 8 rows at a time (one block a chunk) or 3 (CPU blocks)
    for block_rows in (8, 3):
        got = chunked_cross_entropy(h, w, bias, t, chunk_elements=8 * w.size(0), block_elements=block_rows * w.size(0))
        h2, w2 = torch.autograd.grad(got * 0.7, (h, w))
        assert abs(got.item() - want.item()) <= 1e-6 * abs(want.item())
        for a, b in ((h2, gh), (w2, gw)):  # fp32 rounding: within 1e-6 of the largest entry (~5 here)
            assert (a - b).abs().max().item() <= 1e-6 * max(1.0, b.abs().max().item())
    with torch.no_grad():  # evaluation: the loss alone, chunked
        assert abs(chunked_cross_entropy(h, w, bias, t, chunk_elements=8 * w.size(0)).item() - want.item()) <= 1e-4


def test_chunked_cross_entropy_in_bf16_blocks_equals_one_block_and_the_plain_loss():
    """Under bf16 autocast (the CPU default where bf16 is native): the softmax's fp32 passes a few
    rows at a time (CPU blocks) give the gradients of one pass over the chunk bit for bit (each row
    is computed alone), and both stay within bf16 rounding of autocast's plain logits path."""
    from minitrain.models.gpt2 import chunked_cross_entropy

    torch.manual_seed(0)
    N, C, V = 37, 16, 50
    h = torch.randn(N, C, requires_grad=True)
    w = torch.randn(V, C, requires_grad=True)
    t = torch.randint(0, V, (N,))
    t[::5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(F.linear(h, w).float(), t, ignore_index=-100, reduction="sum")
        got = {rows: chunked_cross_entropy(h, w, None, t, 16 * V, rows * V) for rows in (16, 3)}
    gh, gw = torch.autograd.grad(want, (h, w))
    grads = {rows: torch.autograd.grad(loss, (h, w)) for rows, loss in got.items()}
    assert abs(got[3].item() - got[16].item()) <= 1e-6 * abs(got[16].item())
    assert all(torch.equal(a, b) for a, b in zip(grads[3], grads[16]))
    assert abs(got[3].item() - want.item()) <= 1e-2 * abs(want.item())
    for a, b in zip(grads[3], (gh, gw)):  # bf16 products: within 2 % of the largest entry
        assert (a - b).abs().max().item() <= 2e-2 * b.abs().max().item()


def test_model_loss_and_gradients_equal_the_logits_path(tiny_gpt2_dir):
    ours = GPT2.from_pretrained(tiny_gpt2_dir).eval()  # no dropout: two passes, the same function
    x = _ids(101)
    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)
    logits, _ = ours.decode(x, padded=True)
    want = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    want_grads = torch.autograd.grad(want, list(ours.parameters()))
    got = ours(x, y)[1]
    got_grads = torch.autograd.grad(got, list(ours.parameters()))
    assert abs(got.item() - want.item()) <= 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(got_grads, want_grads)) <= 1e-6


def test_compiled_blocks_and_compiled_model_equal_eager():
    """--compile_scope blocks (each block compiled in place, state_dict keys unchanged) and model
    (torch.compile of the whole module) give eager's loss and gradients, chunked loss included."""
    import copy

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, embd_pdrop=0, attn_pdrop=0, resid_pdrop=0
    )
    eager = GPT2(cfg)
    blocks, whole = copy.deepcopy(eager), copy.deepcopy(eager)
    keys = list(blocks.state_dict())
    blocks.compile_blocks()
    assert list(blocks.state_dict()) == keys  # no _orig_mod. prefixes in checkpoints
    x, y = _ids(64, B=2, T=16), _ids(64, B=2, T=16, seed=2)
    results = []
    for model, call in ((eager, eager), (blocks, blocks), (whole, torch.compile(whole))):
        loss = call(x, y)[1]
        loss.backward()
        results.append((loss.item(), [p.grad for p in model.parameters()]))
    for loss, grads in results[1:]:
        assert abs(loss - results[0][0]) <= 1e-5
        assert max((a - b).abs().max().item() for a, b in zip(grads, results[0][1])) <= 1e-5
