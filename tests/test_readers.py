"""Issue 22, class 3: every file a tool reads gets one sentence, whatever is inside it. One table
per reader family: the reader function refuses each bad file with a UserError naming the file
(and line where there is one); one case per tool goes through its real command line (exit 2,
one `error:` line, no traceback, the file system unchanged)."""

import json
import types

import numpy as np
import pytest
import torch

import train_gpt2
from minitrain import UserError
from minitrain.data import cache, completions, hellaswag, pairs, prepare, prepared, sources
from minitrain.data.shards import write_shard
from minitrain.data.tokenizer import cached_bpe, load_tokenizer, train_bpe
from minitrain.tools import evaluate as evaluate_tool
from minitrain.tools import generate as generate_tool
from minitrain.tools import prepare as prepare_tool
from minitrain.tools import report as report_tool
from minitrain.training import logger, state
from tests.test_faults import cli_fails, snapshot


def tool(module, config):
    return types.SimpleNamespace(__file__=module.__name__, main=module.main, Config=config)


REPORT = tool(report_tool, report_tool.ReportConfig)
EVALUATE = tool(evaluate_tool, evaluate_tool.EvalConfig)
GENERATE = tool(generate_tool, generate_tool.GenerateConfig)
PREPARE = tool(prepare_tool, prepare_tool.PrepareConfig)


@pytest.fixture(scope="module")
def tok():
    return train_bpe(["To be, or not to be, that is the question. " * 40], 300)


def refused(tmp_path, capsys, script, argv, words) -> None:
    """The tool's command line fails in one sentence containing `words` and changes nothing."""
    before = snapshot(tmp_path)
    line = cli_fails(argv, capsys, script=script)
    assert words in line, line
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# metrics.jsonl (python -m minitrain.report, the sweep, a resumed run's Logger)

GOOD = b'{"step": 0, "val_loss": 7.5}\n{"step": 1, "train_loss": 7.0, "lr": "nan"}\n'


@pytest.mark.parametrize(
    "content, words",
    [
        (GOOD + b'{"step": 2, "train_loss": 6\xff.0}\n' + GOOD, "metrics.jsonl:3 is not UTF-8 text"),
        (GOOD + b'{"step": "2", "train_loss": 6.0}\n', "metrics.jsonl:3: step is '2'; minitrain logs it as a whole"),
        (GOOD + b'{"step": true, "train_loss": 6.0}\n', "metrics.jsonl:3: step is True"),
        (GOOD + b'{"step": 2.5, "train_loss": 6.0}\n', "metrics.jsonl:3: step is 2.5"),
        (GOOD + b'{"train_loss": 6.0}\n', "metrics.jsonl:3: step is None"),
        (GOOD + b'{"step": 2, "epoch": "one"}\n', "metrics.jsonl:3: epoch is 'one'"),
        (GOOD + b'{"step": 2, "val_loss": "low"}\n', "metrics.jsonl:3: val_loss is 'low', not a number"),
        (GOOD + b'{"step": 2, "val_loss": false}\n', "metrics.jsonl:3: val_loss is False, not a number"),
        (GOOD + b"[1, 2]\n", "metrics.jsonl:3 is not a JSON object"),
        (GOOD + b"{oops\n" + GOOD, "metrics.jsonl:3 is not valid JSON"),
    ],
)
def test_metrics_jsonl(tmp_path, content, words):
    (tmp_path / "metrics.jsonl").write_bytes(content)
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        logger.read_rows(tmp_path / "metrics.jsonl")


def test_metrics_jsonl_torn_last_line_is_dropped_and_report_refuses_in_one_sentence(tmp_path, capsys):
    for torn in (b'{"step": 2, "train_lo', b'{"step": 2, "x": "\xe2\x80'):  # cut mid-line, mid-character
        (tmp_path / "metrics.jsonl").write_bytes(GOOD + torn)
        rows = logger.read_rows(tmp_path / "metrics.jsonl")
        assert [r["step"] for r in rows] == [0, 1] and np.isnan(rows[1]["lr"])
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 0, "val_loss": 1\xff}\n' + GOOD)
    refused(tmp_path, capsys, REPORT, [str(tmp_path)], "metrics.jsonl:1 is not UTF-8 text")


# ----------------------------------------------------------------------------------------------
# HellaSwag files (python -m minitrain.evaluate --task hellaswag)

HS = {"ctx": "A man", "endings": ["runs.", "sits.", "eats.", "flies."], "label": 1}


@pytest.mark.parametrize(
    "content, words",
    [
        (json.dumps(HS).encode() + b"\n" + b'{"ctx": "\xff"}\n', "hs.jsonl:2 is not UTF-8 text"),
        (json.dumps(HS | {"label": True}).encode(), "hs.jsonl:1: needs ctx (text), endings"),
        (json.dumps(HS | {"label": "1"}).encode(), "hs.jsonl:1: needs ctx (text), endings"),
        (json.dumps(HS | {"label": 1.0}).encode(), "hs.jsonl:1: needs ctx (text), endings"),
        (json.dumps(HS | {"label": 4}).encode(), "hs.jsonl:1: needs ctx (text), endings"),
        (json.dumps(HS | {"endings": "runs."}).encode(), "hs.jsonl:1: needs ctx (text), endings"),
        (json.dumps(HS | {"ctx": 5}).encode(), "hs.jsonl:1: needs ctx (text), endings"),
        (b"[1]", "hs.jsonl:1: needs ctx (text), endings"),
        (b"{", "hs.jsonl:1: not a JSON object"),
        (b"\n\n", "hs.jsonl has no examples"),
    ],
)
def test_hellaswag_files(tmp_path, capsys, content, words):
    (tmp_path / "hs.jsonl").write_bytes(content)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        hellaswag.read_hellaswag(tmp_path / "hs.jsonl")
    if content.startswith(json.dumps(HS).encode()):  # the tool refuses it before loading a model
        argv = ["--task=hellaswag", f"--model={tmp_path / 'no_model'}", f"--data={tmp_path / 'hs.jsonl'}"]
        refused(tmp_path, capsys, EVALUATE, argv, words)


# ----------------------------------------------------------------------------------------------
# sentence-pair files: MRPC TSV, CSV, JSONL (train_mrpc.py --data_dir, evaluate --task mrpc)

TSV_HEAD = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("train.tsv", TSV_HEAD.encode() + b"1\t1\t2\tA caf\xe9.\tB.\n", "train.tsv:2 is not UTF-8 text"),
        ("train.tsv", (TSV_HEAD + "\u00b2\t1\t2\tA.\tB.\n").encode(), "train.tsv:2: the label '\u00b2' is not an"),
        ("train.tsv", (TSV_HEAD + "\u0661\t1\t2\tA.\tB.\n").encode(), "train.tsv:2: the label '\u0661' is not an"),
        ("train.csv", b"sentence1,sentence2,label\nA.,B.,1\nC.,D.,\xff\n", "train.csv:3 is not UTF-8 text"),
        ("train.csv", "sentence1,sentence2,label\nA.,B.,\u0661\n".encode(), "train.csv:2: the label '\u0661' is not"),
        ("train.csv", b"sentence1,sentence2,label\nA.,B\x00.,1\n", "train.csv:2 holds a NUL byte"),
        ("train.csv", b'sentence1,sentence2,label\nA.,"' + b"B" * 200_000 + b'",1\n', "train.csv: not a CSV file"),
        ("train.jsonl", b'{"sentence1": "A.", "sentence2": "B.", "label": true}\n', "train.jsonl:1: the label True"),
        ("train.jsonl", b'{"sentence1": "A.", "sentence2": "B.", "label": "1"}\n', "train.jsonl:1: the label '1'"),
        ("train.jsonl", b'{"sentence1": "A.", "sentence2": "B.", "label": 1.0}\n', "train.jsonl:1: the label 1.0"),
        ("train.jsonl", b'{"sentence1": 5, "sentence2": "B.", "label": 1}\n', "the 'sentence1' field is int"),
        ("train.jsonl", b'{"sentence1": "\\ud800", "sentence2": "B.", "label": 1}\n', "holds a lone surrogate"),
        ("train.jsonl", b'{"sentence1": "A."}\n', "train.jsonl:1: needs the columns sentence1, sentence2"),
        ("train.jsonl", b"\xff\xfe{}\n", "train.jsonl:1 is not UTF-8 text"),
    ],
)
def test_pairs_files(tmp_path, capsys, name, content, words):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        pairs.read_pairs_file(tmp_path / name)
    if name == "train.csv":  # evaluate --task mrpc reads the file before it loads the model
        argv = ["--task=mrpc", f"--model={tmp_path / 'no_model'}", f"--data={tmp_path / name}"]
        refused(tmp_path, capsys, EVALUATE, argv, words)


# ----------------------------------------------------------------------------------------------
# prompt files (python -m minitrain.generate --prompt_file)


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("p.txt", b"one prompt\n\xff\n", "p.txt is not UTF-8 text"),
        ("p.txt", b"one\x00prompt\n", "p.txt looks like a binary file"),
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff"}\n', "p.jsonl is not UTF-8 text"),
        ("p.jsonl", b'{"prompt": 5}\n', "p.jsonl:1: the 'prompt' field is int, not a string"),
        ("p.jsonl", b'{"prompt": "\\udc80"}\n', "p.jsonl:1: the 'prompt' field holds a lone surrogate"),
        ("p.jsonl", b'{"question": "a"}\n', "p.jsonl:1 has no 'prompt' field"),
        ("p.jsonl", b'{"messages": "hello"}\n', "p.jsonl:1: 'messages' must be a list"),
        ("p.jsonl", b'{"messages": {"role": "user"}}\n', "p.jsonl:1: 'messages' must be a list"),
        ("p.jsonl", b'{"messages": []}\n', "p.jsonl:1: 'messages' must be a list"),
        ("p.jsonl", b'{"messages": [{"role": "user", "content": 1}]}\n', "p.jsonl:1: 'messages' must be a list"),
        ("p.jsonl", b'["a"]\n', "p.jsonl:1 is not a JSON object"),
        ("p.jsonl.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", "p.jsonl.gz cannot be read"),
    ],
)
def test_prompt_files(tmp_path, capsys, name, content, words):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=words):
        completions.read_prompts(tmp_path / name)
    if name == "p.jsonl" and "field" in words:
        refused(tmp_path, capsys, GENERATE, [f"--model={tmp_path}", f"--prompt_file={tmp_path / name}"], words)


# ----------------------------------------------------------------------------------------------
# TOML configs and command-line values (every script and tool: config.parse_args)


@pytest.mark.parametrize(
    "toml, words",
    [
        ('lr = "1e-3"\n', "config.toml:1: lr = '1e-3' is text in quotes, but --lr takes a number"),
        ('\nbatch_size = "\u0661\u0662"\n', "config.toml:2: batch_size = '\u0661\u0662' is text in quotes, but"),
        ('batch_size = "8"\n', "batch_size = '8' is text in quotes, but --batch_size takes an integer"),
        ("progress = 1\n", "progress = 1 is an integer, but --progress takes true or false"),
        ('progress = "false"\n', "progress = 'false' is text in quotes, but --progress takes true or false"),
        ("out_dir = 5\n", "out_dir = 5 is an integer, but --out_dir takes text in quotes"),
        ("lr = true\n", "lr = True is a boolean, but --lr takes a number"),
        ("batch_size = 2.5\n", "batch_size = 2.5 is a number, but --batch_size takes an integer"),
        ("[data]\nx = 1\n", "data = {'x': 1} is a table, but --data takes text in quotes"),
        ('schedule = ["cosine"]\n', "schedule = ['cosine'] is a list, but --schedule takes text in quotes"),
        ('data = "a"\ndata = "b"\n', "is not valid TOML"),
        ("lr = 1e-3\n\xff = 1\n", "is not UTF-8 text"),
    ],
)
def test_toml_configs(tmp_path, capsys, toml, words):
    (tmp_path / "config.toml").write_bytes(toml.encode() if "\xff" not in toml else b"lr = 1e-3\n\xff = 1\n")
    refused(tmp_path, capsys, train_gpt2, ["--config", str(tmp_path / "config.toml")], words)


@pytest.mark.parametrize(
    "flag, words",
    [
        ("--batch_size=\u0661\u0662", "--batch_size='\u0661\u0662' is not a valid int"),
        ("--lr=\u0661e-3", "--lr='\u0661e-3' is not a valid float"),
        ("--max_steps=\uff11\uff10", "--max_steps='\uff11\uff10' is not a valid int"),
    ],
)
def test_digits_are_ascii_digits_on_the_command_line(tmp_path, capsys, flag, words):
    refused(tmp_path, capsys, train_gpt2, [flag], words)


def test_toml_named_values_and_numbers_still_pass(tmp_path):
    from minitrain.config import read_toml

    (tmp_path / "c.toml").write_text('lr = 1\ncompile = "auto"\nbatch_size = "auto"\ndata = "x.txt"\n')
    assert read_toml(train_gpt2.Config, tmp_path / "c.toml") == dict(
        lr=1.0, compile=None, batch_size="auto", data="x.txt"
    )


# ----------------------------------------------------------------------------------------------
# JSONL / parquet records of --data (python -m minitrain.prepare, train_gpt2.py)


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("d.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "d.jsonl is not UTF-8 text"),
        ("d.jsonl", b'{"text": "fine"}\n{"text": ["a"]}\n', "d.jsonl:2: the 'text' field is list, not a string"),
        ("d.jsonl", b'{"text": "fine"}\n{"text": null}\n', "d.jsonl:2: the 'text' field is NoneType"),
        ("d.jsonl", b'{"text": "a \\ud800 b"}\n', "d.jsonl:1: the 'text' field holds a lone surrogate"),
        ("d.jsonl", b'{"text": "fine"}\n"text"\n', "d.jsonl:2 is not a JSON object"),
        ("d.jsonl", b'{"text": "fine"}\n{"text": \n', "d.jsonl:2 is not valid JSON"),
        ("d.jsonl.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", "d.jsonl.gz cannot be read"),
        ("d.jsonl.gz", b"not gzip at all", "d.jsonl.gz cannot be read"),
        ("d.parquet", b"PAR1 not really parquet PAR1", "d.parquet is not a readable parquet file"),
    ],
)
def test_data_records(tmp_path, capsys, tok, name, content, words):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=words):
        list(sources.pieces(str(tmp_path / name), val_fraction=0))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text(tok.to_str())
    argv = [f"--data={tmp_path / name}", f"--out={tmp_path / 'out'}", f"--tokenizer={tmp_path / 'tok'}"]
    refused(tmp_path, capsys, PREPARE, [*argv, "--progress=false", "--val_fraction=0"], words)


def test_a_damaged_parquet_page_is_one_sentence(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": [f"row {i} " * 50 for i in range(3000)]}), tmp_path / "d.parquet")
    raw = bytearray((tmp_path / "d.parquet").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64  # the data pages, not the footer
    (tmp_path / "d.parquet").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="d.parquet is damaged after row|d.parquet is not a readable parquet"):
        list(sources.pieces(str(tmp_path / "d.parquet"), val_fraction=0))


# ----------------------------------------------------------------------------------------------
# meta.json of shard folders and the shards themselves (prepare --overwrite, the training cache, --data DIR


@pytest.fixture
def folder(tmp_path, tok):
    (tmp_path / "a.txt").write_text("To be, or not to be.\n" * 50)
    prepare.prepare(str(tmp_path / "a.txt"), tmp_path / "shards", tok)
    return tmp_path / "shards"


def _edit_meta(meta, case):
    if case == "not a JSON object":
        return ["format"]
    if case == "version is text":
        return meta | {"version": "1"}
    if case == "version is true":
        return meta | {"version": True}
    if case == "shards not a list":
        return meta | {"train": meta["train"] | {"shards": "a.bin"}}
    if case == "a shard name with a path":
        return meta | {"val": meta["val"] | {"shards": [meta["val"]["shards"][0] | {"file": "/etc/x_val_000000.bin"}]}}
    if case == "a val shard listed under train":
        return meta | {"train": meta["train"] | {"shards": meta["val"]["shards"]}}
    if case == "tokens as text":
        return meta | {"train": meta["train"] | {"tokens": "12"}}
    if case == "vocab_size as a float":
        return meta | {"vocab_size": 300.0}
    if case == "no format":
        return {k: v for k, v in meta.items() if k != "format"}
    raise AssertionError(case)


META_CASES = [
    ("not a JSON object", "is not the meta.json python -m minitrain.prepare writes"),
    ("version is text", "has format version '1'"),
    ("version is true", "has format version True"),
    ("shards not a list", "'train' must hold tokens, documents and a list of shards"),
    ("a shard name with a path", "'val' must hold tokens, documents and a list of shards"),
    ("a val shard listed under train", "'train' must hold tokens, documents and a list of shards"),
    ("tokens as text", "'train' must hold tokens, documents and a list of shards"),
    ("vocab_size as a float", "vocab_size and eot_id must be integers"),
    ("no format", "is not the meta.json python -m minitrain.prepare writes"),
]


@pytest.mark.parametrize("case, words", META_CASES)
def test_meta_json_of_shard_folders(folder, case, words):
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(_edit_meta(meta, case)))
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        prepared.read_meta(folder)
    assert cache._check_cached(folder) == "has an unreadable meta.json"  # the training cache rebuilds it


def test_meta_json_through_prepare_overwrite(folder, tmp_path, capsys):
    (folder / "meta.json").write_text('{"format": 1}')
    argv = [f"--data={tmp_path / 'a.txt'}", f"--out={folder}", f"--tokenizer={folder}", "--overwrite"]
    refused(tmp_path, capsys, PREPARE, argv, "is not the meta.json python -m minitrain.prepare writes")


def test_shards_whose_ids_the_tokenizer_does_not_have(tmp_path, tok, capsys):
    """A shard of the right format but the wrong meaning: ids past the tokenizer's vocabulary."""
    (tmp_path / "d").mkdir()
    write_shard(tmp_path / "d/x_train_000000.bin", np.arange(0, 400, dtype=np.uint16))
    write_shard(tmp_path / "d/x_val_000000.bin", np.arange(0, 100, dtype=np.uint16))
    train, _ = cache.open_folder(tmp_path / "d", tok)
    words = f"x_train_000000.bin holds token id 399, but the tokenizer has {tok.get_vocab_size()} tokens"
    with pytest.raises(UserError, match=words):
        train.batch([0], 8)
    (tmp_path / "d/tokenizer.json").write_text(tok.to_str())
    argv = [f"--data={tmp_path / 'd'}", f"--out_dir={tmp_path / 'run'}", "--n_layer=1", "--n_head=1", "--n_embd=8"]
    argv += ["--block_size=8", "--batch_size=2", "--max_steps=2", "--progress=false", "--num_samples=0"]
    line = cli_fails(argv, capsys)
    assert words in line


# ----------------------------------------------------------------------------------------------
# tokenizer files (--tokenizer, a model folder's, the BPE cache)


@pytest.mark.parametrize(
    "files, words",
    [
        ({"tokenizer.json": b"not json"}, "tokenizer.json is not a tokenizer file (expected"),
        ({"tokenizer.json": b'{"a": 1}'}, "tokenizer.json is not a tokenizer file"),
        ({"tokenizer.json": b"\xff\xfe"}, "tokenizer.json is not a tokenizer file"),
        ({"vocab.json": b"[1]", "merges.txt": b"a b\n"}, "vocab.json + merges.txt is not a tokenizer file"),
        ({"vocab.txt": b"[CLS]\n[SEP]\n", "tokenizer_config.json": b"{"}, "tokenizer_config.json is not a tokenizer"),
        ({"vocab.txt": b"[CLS]\n[SEP]\n", "tokenizer_config.json": b"[]"}, "must be a JSON object whose do_lower"),
        ({"vocab.txt": b"[CLS]\n", "tokenizer_config.json": b'{"do_lower_case": "no"}'}, "must be a JSON object"),
    ],
)
def test_tokenizer_files(tmp_path, capsys, files, words):
    (tmp_path / "tok").mkdir()
    for name, content in files.items():
        (tmp_path / "tok" / name).write_bytes(content)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace("+", r"\+")):
        load_tokenizer(tmp_path / "tok")
    (tmp_path / "a.txt").write_text("To be.\n" * 20)
    argv = [f"--data={tmp_path / 'a.txt'}", f"--out={tmp_path / 'out'}", f"--tokenizer={tmp_path / 'tok'}"]
    refused(tmp_path, capsys, PREPARE, argv, words)


def test_a_bpe_cache_with_a_damaged_checksum_file_is_retrained(tmp_path, capsys):
    first = cached_bpe(["to be or not to be " * 20], 270, tmp_path, "k")
    (sidecar,) = tmp_path.glob("*.blake2b")
    sidecar.write_bytes(b"\xff\xfe not a checksum")
    again = cached_bpe(["to be or not to be " * 20], 270, tmp_path, "k")
    assert again.to_str() == first.to_str() and "does not match its checksum" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# checkpoints (--resume, evaluate/generate --model X.pt, the sweep)


def _checkpoint(**fields):
    raw = dict(script="train_gpt2", config={}, step=3, model={"w": torch.zeros(2)}, format=state.FORMAT)
    return raw | fields


@pytest.mark.parametrize(
    "raw, words",
    [
        (_checkpoint(step="3"), "its step is str"),
        (_checkpoint(step=True), "its step is bool"),
        (_checkpoint(step=3.0), "its step is float"),
        (_checkpoint(config=["lr"]), "its config is list"),
        (_checkpoint(evals="none"), "its evals is str"),
        (_checkpoint(evals=[1.5]), "its evaluations or rng are not lists of dicts"),
        (_checkpoint(best=[]), "its best is list"),
        (_checkpoint(model=[torch.zeros(2)]), "its model is list"),
        (_checkpoint(model={"w": [0.0, 1.0]}), "its model holds something besides tensors"),
        (_checkpoint(optimizer=None), "its optimizer is NoneType"),
        (_checkpoint(epoch_loss_sum="0"), "its epoch_loss_sum is str"),
        ({k: v for k, v in _checkpoint(step="3").items() if k != "format"}, "its step is str"),  # format 1
    ],
)
def test_checkpoints_with_fields_of_the_wrong_type(tmp_path, capsys, raw, words):
    torch.save(raw, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=words):
        state.load(tmp_path / "ckpt.pt")
    if raw.get("step") == "3" and "format" in raw:
        refused(tmp_path, capsys, GENERATE, [f"--model={tmp_path / 'ckpt.pt'}", "--prompt=hi"], words)


def test_a_resumed_logger_keeps_earlier_rows_as_logged_and_refuses_a_bad_middle_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(GOOD + b'{"step": 2, "train_loss": 6.0}\n{"step": 3, "tr')
    logger.Logger(tmp_path, initial=1, progress=False).close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == GOOD  # "nan" stays the string Logger.log writes
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": "0"}\n' + GOOD)
    with pytest.raises(UserError, match="metrics.jsonl:1: step is '0'"):
        logger.Logger(tmp_path, initial=1, progress=False)
