"""train_gpt2.py with the Llama family: from scratch (--arch llama), fine-tuning a Llama-3-style
folder (no <|endoftext|>: its eos separates documents, <|begin_of_text|> starts them), LoRA on
the family's projections, accumulation == one big batch, exact resume, loaders, bad inputs."""

import json

import numpy as np
import pytest
import torch
import transformers

from minitrain.models.llama import Llama, LlamaConfig
from tests.helpers import final_params, max_param_diff, metrics, run_main

LLAMA = dict(arch="llama", n_head=4, n_kv_head=2)  # 4 query heads sharing 2 key/value heads


@pytest.fixture(scope="module")
def llama3_folder(corpus, tmp_path_factory):
    """A small random Llama as a Hugging Face folder with a Llama-3-style tokenizer: a byte-level
    BPE whose post-processor starts every text with <|begin_of_text|>, eos <|end_of_text|> (named
    by tokenizer_config.json), and no <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder = tmp_path_factory.mktemp("llama3")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([corpus.read_text()[:40000]], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[(specials[0], 0)])
    tok.save(str(folder / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0], "eos_token": specials[1]}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64, bos_token_id=0,
                      eos_token_id=1, rope_theta=500000.0)  # fmt: skip
    Llama(cfg).save_pretrained(folder)
    return folder


def test_scratch_llama_trains_exports_and_loads_everywhere(corpus, cache, tmp_path):
    out = tmp_path / "run"
    result = run_main(corpus, out, cache, max_steps=30, eval_interval=15, num_samples=1, max_new_tokens=5, **LLAMA)
    assert result["val_loss"] < result["first_val_loss"] - 0.5
    ckpt = torch.load(out / "ckpt-0000030.pt", weights_only=True)
    assert ckpt["model_config"]["model_type"] == "llama" and ckpt["model_config"]["num_key_value_heads"] == 2
    ref = transformers.AutoModelForCausalLM.from_pretrained(out / "final").eval()
    assert type(ref).__name__ == "LlamaForCausalLM"
    from minitrain.tools import generate
    from minitrain.training.loader import load_model

    ids = torch.tensor([[1, 5, 9, 200, 17]])
    for source in (out / "final", out / "best.pt"):  # an export and a checkpoint: the same model
        ours, _ = load_model(str(source), "causal")
        with torch.no_grad():
            assert (ours.eval()(ids)[0] - ref(ids).logits).abs().max().item() <= 1e-5
    texts = generate.main(generate.GenerateConfig(model=str(out / "final"), prompt="KING:", max_new_tokens=6))
    assert texts[0].startswith("KING:")


def test_llama_accumulation_equals_big_batch_and_resume_is_exact(corpus, cache, tmp_path):
    from tests.helpers import EQ_LR  # Adam scales summation-order rounding up to ~lr: keep it under the bar

    eq = dict(max_steps=3, lr=EQ_LR, **LLAMA)
    run_main(corpus, tmp_path / "acc", cache, batch_size=2, grad_accum_steps=4, **eq)
    run_main(corpus, tmp_path / "big", cache, batch_size=8, grad_accum_steps=1, **eq)
    assert max_param_diff(final_params(tmp_path / "acc"), final_params(tmp_path / "big")) <= 1e-6
    kw = dict(max_steps=6, save_interval=3, dropout=0.1, **LLAMA)
    run_main(corpus, tmp_path / "full", cache, **kw)
    run_main(corpus, tmp_path / "resumed", cache, resume=str(tmp_path / "full/ckpt-0000003.pt"), **kw)
    full, resumed = metrics(tmp_path / "full", "train_loss"), metrics(tmp_path / "resumed", "train_loss")
    assert sorted(resumed) == [4, 5, 6] and all(full[s] == resumed[s] for s in resumed)  # bit for bit
    a, b = final_params(tmp_path / "full"), final_params(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_equal_one_process_with_double_batch(corpus, cache, tmp_path):
    """The hand-written DDP under torchrun on a tiny Llama (GQA, RMSNorm, RoPE): 2 x 2 == 1 x 4."""
    from tests.helpers import EQ_LR, run_script, tiny_gpt2_args

    kw = dict(max_steps=4, lr=EQ_LR, dtype="fp32", **LLAMA)
    run_script("train_gpt2.py", tiny_gpt2_args(corpus, tmp_path / "one", cache, batch_size=4, **kw))
    run_script("train_gpt2.py", tiny_gpt2_args(corpus, tmp_path / "two", cache, batch_size=2, **kw), nproc=2)
    assert max_param_diff(final_params(tmp_path / "one"), final_params(tmp_path / "two")) <= 1e-6
    for key in ("train_loss", "val_loss"):
        one, two = metrics(tmp_path / "one", key), metrics(tmp_path / "two", key)
        assert one.keys() == two.keys() and all(abs(one[s] - two[s]) < 1e-5 for s in one)


def test_prepare_with_a_vocabulary_over_65536_writes_uint32_shards_that_train_reads(corpus, cache, tmp_path):
    """python -m minitrain.prepare --tokenizer FOLDER with Llama 3's 128,256 tokens: ids above 65,535
    need llm.c's uint32 shards; train_gpt2.py --data SHARDS trains a Llama on them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from minitrain.data.shards import find_shards, read_shard
    from minitrain.tools import prepare

    words = sorted(set(corpus.read_text()[:20000].split()))
    vocab = {f"<|reserved_{i}|>": i for i in range(128_256 - len(words) - 1)}  # filler: the corpus's words last
    vocab |= {w: len(vocab) + k for k, w in enumerate(words)} | {"<|end_of_text|>": 128_255}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|end_of_text|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "tok"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end_of_text|>"}))
    (tmp_path / "text.txt").write_text(corpus.read_text()[:20000])
    cfg = prepare.PrepareConfig(data=str(tmp_path / "text.txt"), out=str(tmp_path / "shards"), tokenizer=str(folder),
                                val_fraction=0.1, num_proc=1, progress=False)  # fmt: skip
    prepare.main(cfg)
    train, val = find_shards(tmp_path / "shards")
    ids = np.concatenate([read_shard(p) for p in train])
    assert ids.dtype == np.uint32 and ids.min() >= 128_255 - len(words) and ids.max() == 128_255
    assert np.fromfile(train[0], dtype="<i4", count=2).tolist() == [20240801, 7]  # llm.c's uint32 magic, version
    # the shard folder keeps the tokenizer's settings too: training on it alone finds the eos
    assert json.loads((tmp_path / "shards" / "tokenizer_config.json").read_text()) == {"eos_token": "<|end_of_text|>"}
    out = tmp_path / "run"
    kw = dict(data=str(tmp_path / "shards"), max_steps=2, eval_interval=2, **LLAMA)
    result = run_main(None, out, cache, **kw)
    assert np.isfinite(result["val_loss"])
    ckpt = torch.load(out / "ckpt-0000002.pt", weights_only=True)
    assert ckpt["model_config"]["vocab_size"] == 128_256


def test_a_llama3_style_tokenizer_separates_documents_with_its_eos_and_starts_them_with_bos(llama3_folder, tmp_path):
    from minitrain.data import prepare
    from minitrain.data.shards import find_shards, read_shard
    from minitrain.data.tokenizer import eot_id, load_tokenizer, prefix_ids

    tok = load_tokenizer(llama3_folder)
    assert tok.token_to_id("<|endoftext|>") is None
    assert eot_id(tok) == 1 and prefix_ids(tok) == [0]
    docs = [{"text": f"Document number {i}, " * (i + 1)} for i in range(6)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    prepare.prepare(str(tmp_path / "docs.jsonl"), tmp_path / "shards", tok, val_fraction=0.0)
    train, _ = find_shards(tmp_path / "shards")
    ids = np.concatenate([read_shard(p) for p in train]).tolist()
    assert ids.count(0) == 6 and ids.count(1) == 6 and ids[0] == 0 and ids[-1] == 1
    bare = [tok.encode(d["text"], add_special_tokens=False).ids for d in docs]
    assert ids == [t for b in bare for t in [0, *b, 1]]  # <|begin_of_text|> doc <|end_of_text|>, as Meta's data


def test_fine_tune_a_llama3_folder_with_lora_keeps_its_tokenizer(corpus, cache, tmp_path, llama3_folder, sft_data):
    out = tmp_path / "ft"
    result = run_main(corpus, out, cache, init_from=str(llama3_folder), lora_rank=4, max_steps=3, block_size=32)
    assert result["step"] == 3
    ckpt = torch.load(out / "ckpt-0000003.pt", weights_only=True)
    assert ckpt["lora"]["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    saved = json.loads((out / "final/tokenizer_config.json").read_text())
    assert saved["eos_token"] == "<|end_of_text|>" and saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((out / "final/config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    # prompt/completion data: <|begin_of_text|> before the prompt only, the eos after the completion
    from minitrain.data import completions
    from minitrain.data.tokenizer import load_tokenizer

    tok = load_tokenizer(out)
    ex = completions.tokenize([("Hello", " world")], tok, 1, 32)
    assert ex.seqs[0].tolist() == [0, *tok.encode("Hello", add_special_tokens=False).ids,
                                   *tok.encode(" world", add_special_tokens=False).ids, 1]  # fmt: skip
    # the merged export (W + alpha/r B A) gives the LoRA model's logits: the base with the
    # checkpoint's adapters, unmerged
    from minitrain.models import hub, lora

    final, base = hub.load_state_dict(out / "final"), hub.load_state_dict(llama3_folder)
    assert (
        final["model.layers.0.self_attn.q_proj.weight"] - base["model.layers.0.self_attn.q_proj.weight"]
    ).abs().max() > 0
    model = Llama.from_pretrained(llama3_folder)
    lora.add(model, ckpt["lora"]["targets"], 4, ckpt["lora"]["alpha"], 0.0)
    lora.load_state(model, ckpt["model"])
    ref = transformers.AutoModelForCausalLM.from_pretrained(out / "final").eval()
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.eval()(x)[0] - ref(x).logits).abs().max().item() <= 1e-5


def test_bad_llama_inputs_fail_in_one_sentence(corpus, cache, tmp_path, capsys, llama3_folder):
    import shutil

    from tests.test_faults import cli_fails, tiny_argv

    moe = tmp_path / "moe"
    shutil.copytree(llama3_folder, moe)
    config = json.loads((moe / "config.json").read_text())
    (moe / "config.json").write_text(json.dumps({**config, "model_type": "qwen3_moe", "num_experts": 8}))
    line = cli_fails(tiny_argv(corpus, tmp_path / "o1", cache, init_from=str(moe)), capsys)
    assert "mixture-of-experts" in line and not (tmp_path / "o1").exists()
    small = tmp_path / "small"
    shutil.copytree(llama3_folder, small)
    cfg = LlamaConfig.from_hf(config)
    cfg.vocab_size = 100  # fewer rows than the tokenizer has tokens
    Llama(cfg).save_pretrained(small)
    line = cli_fails(tiny_argv(corpus, tmp_path / "o2", cache, init_from=str(small)), capsys)
    assert "tokens but the model only 100" in line
    line = cli_fails(tiny_argv(corpus, tmp_path / "o3", cache, arch="llama", n_head=4, n_kv_head=3), capsys)
    assert "--n_head=4 is not a multiple of --n_kv_head=3" in line
