"""GPU checks: they run where CUDA is available and skip elsewhere (timings live in bench/)."""

import pytest
import torch

from minitrain.models.gpt2 import GPT2, GPT2Config
from tests.helpers import small_corpus, tiny_gpt2_args

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
]


def test_bf16_step_with_fused_adamw_is_finite_and_matches_fp32_loosely():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=1000, n_positions=128, n_embd=128, n_layer=2, n_head=4)
    model = GPT2(cfg).cuda()
    x = torch.randint(0, 1000, (4, 128), device="cuda")
    with torch.no_grad():
        ref = model(x, x)[1].item()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, x)[1]
    assert abs(loss.item() - ref) < 0.05
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_kv_cache_matches_recompute_on_gpu():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=500, n_positions=64, n_embd=64, n_layer=2, n_head=4)).cuda()
    prompt = torch.randint(0, 500, (2, 5), device="cuda")
    assert torch.equal(
        model.generate(prompt, 20, temperature=0),
        model.generate(prompt, 20, temperature=0, use_cache=False),
    )


def test_train_script_on_gpu_bf16_compiled(tmp_path):
    import train_gpt2

    corpus = small_corpus(tmp_path / "plays.txt")
    cfg = train_gpt2.Config(
        **tiny_gpt2_args(
            corpus,
            tmp_path / "out",
            tmp_path / "cache",
            device="cuda",
            dtype="bf16",
            compile=True,
            max_steps=20,
            eval_interval=10,
        )
    )
    result = train_gpt2.main(cfg)
    assert result["val_loss"] < result["first_val_loss"]


def test_packed_bert_on_gpu_matches_cpu_and_trains_in_bf16():
    from minitrain.models.bert import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    model = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 500, (4, 24))
    mask = torch.ones(4, 24, dtype=torch.long)
    mask[1, 10:] = 0
    mask[3, 3:] = 0
    with torch.no_grad():
        cpu = model(ids, mask)[0]
        gpu = model.cuda()(ids.cuda(), mask.cuda())[0].cpu()
    assert (cpu - gpu).abs().max().item() < 1e-4
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(ids.cuda(), mask.cuda(), labels=torch.tensor([0, 1, 1, 0]).cuda())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_chunked_loss_on_gpu_in_bf16_matches_fp32_logits_loosely():
    import torch.nn.functional as F

    from minitrain.models.gpt2 import chunked_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(4096, 256, device="cuda", requires_grad=True)
    w = torch.randn(50304, 256, device="cuda", requires_grad=True) * 0.02
    w.retain_grad()
    t = torch.randint(0, 50257, (4096,), device="cuda")
    want = F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = chunked_cross_entropy(h, w, None, t)
    assert abs(got.item() - want.item()) <= 1e-2 * abs(want.item())
    got.backward()
    assert torch.isfinite(h.grad).all()


def test_batch_size_auto_finds_a_micro_batch(tmp_path):
    import train_gpt2

    corpus = small_corpus(tmp_path / "plays.txt")
    args = tiny_gpt2_args(corpus, tmp_path / "out", tmp_path / "cache", device="cuda", batch_size="auto")
    result = train_gpt2.main(train_gpt2.Config(**dict(args, tokens_per_step=32 * 64, max_steps=3)))
    assert result["step"] == 3


def test_fsdp_cpu_offload_on_gpu_equals_fsdp_without(tmp_path):
    """--cpu_offload (shards, gradients and AdamW on the host, each block copied to the GPU for
    its forward and backward) changes where the numbers live, not the numbers: the same run
    without it, in fp32 on one GPU (a world of one)."""
    from tests.helpers import final_params, metrics, run_script

    corpus = small_corpus(tmp_path / "plays.txt")
    runs = {}
    for offload in (False, True):
        out = tmp_path / f"offload{offload}"
        args = tiny_gpt2_args(corpus, out, tmp_path / "cache", device="cuda", parallel="fsdp", cpu_offload=offload)
        run_script("train_gpt2.py", args)
        runs[offload] = metrics(out, "train_loss"), final_params(out)
    (loss_a, params_a), (loss_b, params_b) = runs[False], runs[True]
    assert all(abs(loss_a[s] - loss_b[s]) <= 1e-5 for s in loss_a)
    assert max((params_a[k] - params_b[k]).abs().max().item() for k in params_a) <= 1e-5
