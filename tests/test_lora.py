"""minitrain/lora.py and --lora_rank in both scripts: adapters only train, checkpoints hold only
them, the export is merged (W + alpha/r B A) and loads in transformers with the same logits."""

import pytest
import torch
import transformers

import train_mrpc
from minitrain import UserError
from minitrain.models import hub, lora
from minitrain.models.gpt2 import GPT2, GPT2Config
from tests.helpers import metrics, run_main
from tests.mrpc_data import make_pairs, write_glue
from tests.test_completions import sft_args

TARGET_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


def test_a_fresh_adapter_changes_nothing_and_merging_keeps_the_outputs():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)).eval()
    x = torch.randint(0, 50, (2, 10))
    before = model(x)[0]
    info = lora.add(model, lora.targets_of("auto", "gpt2"), 4, 8.0, 0.0)
    assert info["layers"] == 8 and info["trainable"] == 2 * 4 * (16 + 48 + 16 + 16 + 16 + 64 + 64 + 16)
    assert torch.equal(model(x)[0], before)  # B starts at zero
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B"))
    }
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.1)
    adapted = model(x)[0]
    lora.merge(model)
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert (model(x)[0] - adapted).abs().max().item() <= 1e-5
    with pytest.raises(UserError, match="--lora_rank=17 is larger than the smallest adapted dimension, 16"):
        lora.add(GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)), ["c_attn"], 17, 8, 0)
    with pytest.raises(UserError, match="--lora_targets=q_proj names no linear layer of the model .it has c_attn"):
        lora.add(GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)), ["q_proj"], 2, 8, 0)


def test_gpt2_lora_checkpoints_adapters_resumes_exactly_and_exports_merged(sft_model, sft_data, cache, tmp_path):
    kw = sft_args(sft_model, sft_data, max_steps=6, save_interval=3, eval_interval=3, dropout=0.1)
    kw.update(lora_rank=2, lora_dropout=0.1, lora_export="adapters", export="final")
    run_main(None, tmp_path / "full", cache, **kw)
    run_main(None, tmp_path / "resumed", cache, resume=str(tmp_path / "full/ckpt-0000003.pt"), **kw)
    a, b = metrics(tmp_path / "full", "train_loss"), metrics(tmp_path / "resumed", "train_loss")
    assert sorted(b) == [4, 5, 6] and all(a[s] == b[s] for s in b)  # bit for bit
    ckpt = torch.load(tmp_path / "full/ckpt-0000006.pt", weights_only=True)
    again = torch.load(tmp_path / "resumed/ckpt-0000006.pt", weights_only=True)
    assert all(torch.equal(ckpt["model"][k], again["model"][k]) for k in ckpt["model"])
    # the checkpoint and the optimizer hold the 2 x 4 adapted layers' A and B only
    assert len(ckpt["model"]) == 16 and all(k.endswith(("lora_A", "lora_B")) for k in ckpt["model"])
    assert len(ckpt["optimizer"]["state"]) == 16
    # the export: every targeted weight moved by a matrix of rank <= 2, everything else unchanged
    base, final = hub.load_state_dict(sft_model), hub.load_state_dict(tmp_path / "full/final")
    assert base.keys() == final.keys()
    for k in base:
        if k.endswith(TARGET_WEIGHTS):
            delta = (final[k] - base[k]).double()
            assert 1 <= torch.linalg.matrix_rank(delta, atol=1e-6).item() <= 2, k
        else:
            assert torch.equal(final[k], base[k]), k
    # transformers loads it and gives the LoRA model's logits
    model = GPT2.from_pretrained(sft_model)
    lora.add(model, lora.targets_of("auto", "gpt2"), 2, 16.0, 0.1)
    lora.load_state(model, ckpt["model"])
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "full/final").eval()
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.eval()(x)[0][..., :300] - ref(x).logits).abs().max().item() <= 1e-5
    adapters = hub.read_safetensors(tmp_path / "full/final/adapters/adapter_model.safetensors")
    assert adapters.keys() == ckpt["model"].keys()
    resume = dict(kw, resume=str(tmp_path / "full/ckpt-0000003.pt"))
    with pytest.raises(UserError, match="the checkpoint's adapters have --lora_rank=2, not 4"):
        run_main(None, tmp_path / "other", cache, **dict(resume, lora_rank=4))
    with pytest.raises(UserError, match="trained with LoRA and this run is not"):
        run_main(None, tmp_path / "other", cache, **dict(resume, lora_rank=0))


def test_bert_lora_trains_adapters_and_the_head(minilm_dir, tmp_path):
    data = write_glue(tmp_path / "glue", make_pairs(64, 0), make_pairs(32, 1))
    cfg = train_mrpc.Config(
        model=str(minilm_dir), data_dir=str(data), out_dir=str(tmp_path / "run"), batch_size=16, lr=1e-3,
        epochs=1, progress=False, lora_rank=4,
    )  # fmt: skip
    train_mrpc.main(cfg)
    ckpt = torch.load(next((tmp_path / "run").glob("ckpt-*.pt")), weights_only=True)
    assert {k for k in ckpt["model"] if not k.endswith(("lora_A", "lora_B"))} == {
        "classifier.weight",
        "classifier.bias",
    }
    base = {k.removeprefix("bert."): v for k, v in hub.load_state_dict(minilm_dir).items()}
    final = {k.removeprefix("bert."): v for k, v in hub.load_state_dict(tmp_path / "run/final").items()}
    assert sum(1 for k in base if k in final) >= 100  # the encoder's tensors are compared below
    adapted = ("query.weight", "key.weight", "value.weight", "dense.weight")
    for k in base:
        if "encoder" in k and k.endswith(adapted):
            assert 1 <= torch.linalg.matrix_rank((final[k] - base[k]).double(), atol=1e-6).item() <= 4, k
        elif k in final and not k.startswith("classifier"):
            assert torch.equal(final[k], base[k]), k
    assert "classifier.weight" in final


@pytest.mark.parametrize(
    "extra,words",
    [
        (dict(lora_rank=40), "--lora_rank=40 is larger than the smallest adapted dimension, 32"),
        (dict(lora_rank=2, lora_targets="q_proj,v_proj"), "--lora_targets=q_proj,v_proj names no linear layer"),
    ],
)
def test_bad_lora_options_one_sentence_exit_2(sft_model, sft_data, cache, tmp_path, capsys, extra, words):
    from tests.test_faults import cli_fails, tiny_argv

    argv = tiny_argv(None, tmp_path / "out", cache, **sft_args(sft_model, sft_data, **extra))
    assert words in cli_fails(argv, capsys)
    assert not (tmp_path / "out").exists()
