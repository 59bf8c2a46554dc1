"""minitrain/completions.py and train_gpt2.py on prompt/completion data: the prompt masked out of
the loss, the loss normalised by completion tokens, --val_data, generate --prompt_file."""

import json

import pytest
import torch

from minitrain import UserError
from minitrain.data import completions
from minitrain.data.tokenizer import load_tokenizer
from tests.helpers import final_params, max_param_diff, metrics, run_main, run_script, split_key_bias, tiny_gpt2_args


def sft_args(sft_model, sft_data, **kw) -> dict:
    args = dict(init_from=str(sft_model), data=str(sft_data / "train.jsonl"), val_data=str(sft_data / "val.jsonl"))
    args.update(block_size=48, lr=1e-3, warmup_steps=0, eval_batches=0)
    args.update(kw)
    return args


def test_examples_mask_the_prompt_and_are_cut_to_the_block(sft_model):
    tok = load_tokenizer(sft_model)
    eot = tok.token_to_id("<|endoftext|>")
    pairs = [("To be, or", " not to be"), ("x" * 400, "never seen"), ("", "no prompt")]
    ex = completions.tokenize(pairs, tok, eot, block_size=12)
    assert ex.dropped == 1 and len(ex.seqs) == 2  # the long prompt fills the block
    p, c = tok.encode("To be, or").ids, tok.encode(" not to be").ids
    assert ex.seqs[0].tolist() == (p + c + [eot])[:13]
    x, y = ex.rows([0, 1], 12)
    n0 = len(ex.seqs[0]) - 1
    assert x[0, :n0].tolist() == ex.seqs[0][:-1].tolist()
    assert y[0].tolist() == [-100] * (len(p) - 1) + (p + c + [eot])[len(p) : 13] + [-100] * (x.shape[1] - n0)
    assert ex.targets([0, 1], 12) == (y != -100).sum() == (13 - len(p)) + len(ex.seqs[1]) - 1
    assert completions.render(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, ""
    ) == (
        "<|user|>\nhi\n<|assistant|>\n",
        "yo",
    )


@pytest.mark.parametrize(
    "content,words",
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": \n', "data.jsonl:2 is not valid JSON"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', "data.jsonl:2 has no 'completion' field"),
        ('{"prompt": "a", "completion": 3}\n', "data.jsonl:1: the 'completion' field is int, not a string"),
        (
            '{"messages": [{"role": "user", "content": "a"}]}\n',
            "data.jsonl:1: the last message must be the assistant's",
        ),
        (('{"prompt": "' + "word " * 80 + '", "completion": "b"}\n') * 3, "every one of the 3 training examples"),
    ],
)
def test_bad_records_are_refused_in_one_sentence(sft_model, tmp_path, content, words):
    (tmp_path / "data.jsonl").write_text(content)
    tok = load_tokenizer(sft_model)
    with pytest.raises(UserError, match=words):
        completions.load(str(tmp_path / "data.jsonl"), tok, 0, 16, 0.1, val_spec=str(tmp_path / "data.jsonl"))


def test_a_local_hf_data_set_of_prompts_and_completions(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    assert completions.is_completions(f"hf:{folder}")
    assert completions.read(f"hf:{folder}", 0.1) == (
        [("q0", "a0"), ("q1", "a1"), ("q2", "a2"), ("q3", "a3")],
        [("q4", "a4"), ("q5", "a5")],
    )


def test_step0_validation_loss_counts_completion_tokens_only(sft_model, sft_data, cache, tmp_path):
    import transformers

    out = tmp_path / "run"
    run_main(None, out, cache, **sft_args(sft_model, sft_data, max_steps=1, eval_interval=1))
    got = metrics(out, "val_loss")[0]
    # by hand, with transformers on the same folder: every validation example, its completion
    # tokens and end-of-text as targets
    tok = load_tokenizer(sft_model)
    eot = tok.token_to_id("<|endoftext|>")
    ref = transformers.GPT2LMHeadModel.from_pretrained(sft_model).eval()
    total, count = 0.0, 0
    for line in (sft_data / "val.jsonl").read_text().splitlines():
        r = json.loads(line)
        p = tok.encode(r["prompt"]).ids
        s = (p + tok.encode(r["completion"]).ids + [eot])[:49]
        with torch.no_grad():
            logits = ref(torch.tensor([s[:-1]])).logits[0]
        losses = torch.nn.functional.cross_entropy(logits, torch.tensor(s[1:]), reduction="none")
        total += losses[len(p) - 1 :].sum().item()
        count += len(s) - len(p)
    assert abs(got - total / count) <= 1e-5, (got, total / count)


def test_accumulation_equals_one_big_batch_on_prompt_completion_data(sft_model, sft_data, cache, tmp_path):
    kw = sft_args(sft_model, sft_data, max_steps=3, eval_interval=3, dropout=0.0)
    run_main(None, tmp_path / "big", cache, batch_size=8, **kw)
    run_main(None, tmp_path / "acc", cache, batch_size=2, grad_accum_steps=4, **kw)
    a, b = metrics(tmp_path / "acc", "train_loss"), metrics(tmp_path / "big", "train_loss")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-5 for s in b)
    (acc, acc_keys), (big, big_keys) = (split_key_bias(final_params(tmp_path / n)) for n in ("acc", "big"))
    assert max_param_diff(acc, big) <= 1e-6 and max_param_diff(acc_keys, big_keys) <= 3 * 1e-3


def test_text_val_data_is_scored_as_evaluate_scores_that_file(sft_model, corpus, cache, tmp_path):
    from minitrain.tools import evaluate

    held_out = tmp_path / "held_out.txt"
    held_out.write_text(corpus.read_text()[60000:66000])
    kw = dict(init_from=str(sft_model), data=str(corpus), val_data=str(held_out), block_size=32, eval_batches=0)
    run_main(corpus, tmp_path / "run", cache, max_steps=1, **kw)
    cfg = evaluate.EvalConfig(
        dtype="fp32", model=str(sft_model), data=str(held_out), block_size=32, cache_dir=str(cache)
    )
    cfg.progress = False
    assert abs(metrics(tmp_path / "run", "val_loss")[0] - evaluate.main(cfg)["loss"]) <= 1e-6


def test_accumulation_and_two_processes_equal_one_big_batch_with_lora(sft_model, sft_data, cache, tmp_path):
    """Examples of different lengths in every micro-batch: 4 x 2 accumulated, 2 processes x 4, and
    one batch of 8 give the same training, with and without LoRA adapters."""
    kw = sft_args(sft_model, sft_data, max_steps=3, eval_interval=3, lora_rank=4, dropout=0.0)
    run_main(None, tmp_path / "big", cache, batch_size=8, **kw)
    run_main(None, tmp_path / "acc", cache, batch_size=2, grad_accum_steps=4, **kw)
    args = tiny_gpt2_args(None, tmp_path / "two", cache, batch_size=4, **kw)
    run_script("train_gpt2.py", args, nproc=2)
    big = metrics(tmp_path / "big", "train_loss")
    for other in ("acc", "two"):
        got = metrics(tmp_path / other, "train_loss")
        assert all(abs(got[s] - big[s]) < 1e-5 for s in big), (other, got, big)
        assert max_param_diff(final_params(tmp_path / other), final_params(tmp_path / "big")) <= 1e-6


def test_generate_answers_every_prompt_of_a_file(sft_model, sft_data, tmp_path):
    from minitrain.models.gpt2 import GPT2
    from minitrain.tools import generate

    (tmp_path / "prompts.txt").write_text("ROMEO:\n\nJULIET:\n")
    cfg = generate.GenerateConfig(
        model=str(sft_model), prompt_file=str(sft_data / "chat.jsonl"), num_samples=2, max_new_tokens=5,
        temperature=0.0, out=str(tmp_path / "answers.jsonl"), device="cpu",
    )  # fmt: skip
    texts = generate.main(cfg)
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(texts) == len(rows) == 2 * 16
    first = json.loads((sft_data / "chat.jsonl").read_text().splitlines()[0])
    assert rows[0]["prompt"] == completions.prompt_of(first, "") == rows[1]["prompt"]
    model, tok = GPT2.from_pretrained(sft_model).eval(), load_tokenizer(sft_model)
    ids = tok.encode(rows[0]["prompt"]).ids
    want = model.generate(torch.tensor([ids]), 5, temperature=0.0)[0, len(ids) :].tolist()
    assert rows[0]["completion"] == tok.decode(want)  # greedy: the model's own continuation
    cfg.prompt_file, cfg.out = str(tmp_path / "prompts.txt"), ""
    assert len(generate.main(cfg)) == 2 * 2  # a text file: one prompt per non-empty line
