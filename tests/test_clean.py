"""Cleaning while preparing (minitrain/data/clean.py, dedup.py): planted exact and near copies are
removed and nothing else, train copies of validation documents go, the filters at each side of
their thresholds, 1 process == 2 and a rerun byte for byte, bad options refused."""

import json

import numpy as np
import pytest

from minitrain import UserError
from minitrain.data import cache, clean, dedup, prepare, sources
from minitrain.data.shards import find_shards
from minitrain.data.tokenizer import train_bpe
from minitrain.options import CleanOptions
from minitrain.tools import prepare as prepare_tool
from tests.test_faults import cli_fails, snapshot
from tests.test_prepare import PREPARE

VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprstvz" for b in "aeiou" for c in "lmnrst"]  # 450 made-up words


@pytest.fixture(scope="module")
def tok():
    return train_bpe([" ".join(VOCAB) * 3], 400)


def distinct(n: int, words: int = 600, seed: int = 0) -> list[str]:
    """n documents of random words (Zipf-like, so common words recur), 12 words a line."""
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, len(VOCAB) + 1)
    out = []
    for _ in range(n):
        w = rng.choice(VOCAB, size=words, p=p / p.sum())
        out.append("\n".join(" ".join(w[i : i + 12]) for i in range(0, words, 12)) + "\n")
    return out


def exact_copy(text: str) -> str:
    """The same words: other case, other whitespace (runs, tabs, CRLF, indentation)."""
    return "  " + text.upper().replace(" ", " \t ").replace("\n", "\r\n\n")


def near_copy(text: str, seed: int) -> str:
    """Two words changed and a line added: Jaccard of the 5-gram shingles ~0.95."""
    rng = np.random.default_rng(seed)
    words = text.split(" ")
    for i in rng.choice(len(words), 2, replace=False):
        words[i] = "changed"
    return " ".join(words) + "an added line of a few new words here\n"


def planted(tmp_path, val_fraction=0.0):
    """40 distinct documents, then 8 exact copies and 8 near copies of some of them, as JSONL."""
    docs = distinct(40)
    records = list(docs)
    exact = [exact_copy(docs[i]) for i in range(0, 40, 5)]
    near = [near_copy(docs[i], i) for i in range(2, 40, 5)]
    records += exact + near
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in records))
    return str(path), len(docs), len(exact), len(near)


def removed_texts(folder) -> dict:
    out = {}
    for line in (folder / "removed.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["rule"], []).append(row)
    return out


@pytest.mark.parametrize("mode", ["exact", "near"])
def test_planted_copies_are_removed_and_nothing_else(tmp_path, tok, mode):
    spec, n, n_exact, n_near = planted(tmp_path)
    opts = CleanOptions(dedup=mode, filters=False)
    meta = prepare.prepare(spec, tmp_path / "out", tok, val_fraction=0, clean=opts, keep_removed=100)
    removed = meta["clean"]["removed"]
    rows = removed_texts(tmp_path / "out")
    assert removed["exact"]["train"]["documents"] == n_exact  # the planted exact copies, and only they
    assert sorted(r["document"] for r in rows["exact"]) == list(range(n, n + n_exact))
    assert [r["copy_of"]["document"] for r in rows["exact"]] == list(range(0, 40, 5))
    if mode == "near":  # every planted near copy, each found as a copy of its original, and no distinct document
        assert removed["near"]["train"]["documents"] == n_near
        assert [r["copy_of"]["document"] for r in rows["near"]] == list(range(2, 40, 5))
        assert all(r["similarity"] >= 0.8 for r in rows["near"])
    else:
        assert removed["near"]["train"]["documents"] == 0
    kept = meta["train"]["documents"]
    assert kept == n + (n_near if mode == "exact" else 0)
    none = prepare.prepare(spec, tmp_path / "none", tok, val_fraction=0)  # kept + removed tokens = all tokens
    gone = sum(r["train"]["tokens"] for r in removed.values())
    assert meta["train"]["tokens"] + gone == none["train"]["tokens"]


def test_near_copies_below_the_threshold_stay(tmp_path, tok):
    """A document whose second half is another text (Jaccard ~1/3) is no copy at 0.8; at 0.2 it is."""
    a, other = distinct(2, seed=3)
    b = a[: len(a) // 2] + other[len(other) // 2 :]
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": a}) + "\n" + json.dumps({"text": b}) + "\n")
    opts = CleanOptions(dedup="near", filters=False)
    meta = prepare.prepare(str(tmp_path / "d.jsonl"), tmp_path / "o1", tok, val_fraction=0, clean=opts)
    assert meta["clean"]["removed"]["near"]["train"]["documents"] == 0
    opts.near_threshold = 0.2
    meta = prepare.prepare(str(tmp_path / "d.jsonl"), tmp_path / "o2", tok, val_fraction=0, clean=opts)
    assert meta["clean"]["removed"]["near"]["train"]["documents"] == 1


def test_false_positives_on_distinct_documents(tmp_path, tok):
    """2,000 distinct documents drawn from one small vocabulary: none is a near copy (measured: 0)."""
    docs = distinct(2000, words=120, seed=7)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    opts = CleanOptions(dedup="near", filters=False)
    meta = prepare.prepare(str(tmp_path / "d.jsonl"), tmp_path / "out", tok, val_fraction=0, clean=opts)
    assert meta["clean"]["removed"]["near"]["train"]["documents"] == 0
    assert meta["train"]["documents"] == 2000


def test_a_training_copy_of_a_later_validation_document_leaves_training(tmp_path, tok):
    """Records go to validation by a hash of their number, so a validation document can come after a
    training copy of it: the first pass over validation documents removes the training one."""
    docs = distinct(30, seed=1)
    val = [i for i in range(30) if sources.split_of(i, 0.2, 0) == "val"]
    first_train = next(i for i in range(30) if sources.split_of(i, 0.2, 0) == "train")
    target = next(i for i in val if i > first_train)  # a validation document after a training one
    docs[first_train] = exact_copy(docs[target])
    spec = tmp_path / "d.jsonl"
    spec.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    for mode in ("exact", "near"):
        opts = CleanOptions(dedup=mode, filters=False)
        meta = prepare.prepare(str(spec), tmp_path / mode, tok, val_fraction=0.2, clean=opts, keep_removed=5)
        r = meta["clean"]["removed"]["exact"]
        assert r["train"]["documents"] == 1 and r["train_copies_of_val"] == 1 and r["val"]["documents"] == 0
        assert meta["val"]["documents"] == len(val) and meta["clean"]["validation_first"]
        (row,) = removed_texts(tmp_path / mode)["exact"]
        assert row["split"] == "train" and row["copy_of"] == {"split": "val", "document": val.index(target)}


def test_a_source_that_changes_between_its_two_reads_is_refused(tmp_path, tok, monkeypatch):
    """With copies removed the source is read twice (validation, then training): a file that grows
    in between could put a document in both splits or in neither, so the run stops in one sentence
    and leaves no output."""
    spec = tmp_path / "d.jsonl"
    spec.write_text("".join(json.dumps({"text": t}) + "\n" for t in distinct(30, seed=2)))
    real = sources.pieces

    def pieces(*args, only="", **kw):
        yield from real(*args, only=only, **kw)
        if only == "val":  # between the two reads: a writer appends a record
            with open(spec, "a") as f:
                f.write(json.dumps({"text": "one more document arrives while the source is read"}) + "\n")

    monkeypatch.setattr(sources, "pieces", pieces)
    opts = CleanOptions(dedup="exact", filters=False)
    with pytest.raises(UserError, match="changed while it was read"):
        prepare.prepare(str(spec), tmp_path / "out", tok, val_fraction=0.2, clean=opts)
    assert not (tmp_path / "out").exists()


def test_one_process_equals_two_and_a_rerun_byte_for_byte(tmp_path, tok, monkeypatch):
    spec, *_ = planted(tmp_path)
    long = distinct(1, words=3000, seed=9)[0]  # a document of many pieces, and its copy
    with open(spec, "a") as f:
        f.write(json.dumps({"text": long}) + "\n" + json.dumps({"text": exact_copy(long)}) + "\n")
    monkeypatch.setattr(prepare, "SMALL_SOURCE", 0)
    monkeypatch.setattr(prepare, "BATCH_CHARS", 5000)
    opts = CleanOptions(dedup="near", filters=False)
    kw = dict(shard_tokens=5000, val_fraction=0.2, clean=opts, keep_removed=50, piece_bytes=1000)
    one = prepare.prepare(spec, tmp_path / "one", tok, num_proc=1, **kw)
    two = prepare.prepare(spec, tmp_path / "two", tok, num_proc=2, **kw)
    again = prepare.prepare(spec, tmp_path / "again", tok, num_proc=1, **kw)
    assert two["num_proc"] == 2 and one["clean"]["removed"]["exact"]["train"]["documents"] >= 1
    for other in ("two", "again"):
        names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.name != "meta.json")
        assert names == sorted(p.name for p in (tmp_path / other).iterdir() if p.name != "meta.json")
        for name in names:
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / other / name).read_bytes(), name
    assert one["clean"] == two["clean"] == again["clean"]


def judge(text: str, **options) -> str | None:
    """The rule that removes `text` as a whole document (filters only unless options say more)."""
    opts = CleanOptions(**{"dedup": "none", **options})
    feats = clean.analyse([text], [True], opts)
    return dedup.Cleaner(opts, None).judge(dedup.whole(feats, 0, text), 0)[0]


def test_each_filter_at_each_side_of_its_threshold():
    off = dict(min_words=0, max_non_alpha=1.0, max_dup_lines=1.0, max_word_length=0.0)
    # min_words: 50 words stay, 49 go
    assert judge("word " * 50, **{**off, "min_words": 50}) is None
    assert judge("word " * 49, **{**off, "min_words": 50}) == "min_words"
    # max_non_alpha: 30 % of the non-space characters not letters stays, 31 % goes (spaces do not count)
    assert judge("abcdefg 123 " * 10, **{**off, "max_non_alpha": 0.3}) is None
    assert judge("abcdefg 123 " * 9 + "abcdef 1234", **{**off, "max_non_alpha": 0.3}) == "non_alpha"
    # max_dup_lines: characters of lines that repeat an earlier line (normalised), over all lines'
    lines = ["line number %02d" % i for i in range(8)]  # 14 characters each
    assert judge("\n".join(lines + ["LINE  number 00", "line number 01"]), **{**off, "max_dup_lines": 0.2}) is None
    assert judge("\n".join(lines + ["line number 00"] * 3), **{**off, "max_dup_lines": 0.2}) == "dup_lines"
    # max_word_length: a mean of 10 characters stays, 10.1 goes
    assert judge("abcdefghij " * 10, **{**off, "max_word_length": 10}) is None
    assert judge("abcdefghij " * 9 + "abcdefghijk", **{**off, "max_word_length": 10}) == "word_length"
    # the defaults are Gopher-like and keep ordinary prose
    assert judge(distinct(1)[0].lower()) is None and CleanOptions().min_words == 50


def test_a_document_in_pieces_measures_as_the_whole(tmp_path):
    """A long document analysed in pieces cut at safe line breaks (in other batches, other processes)
    and assembled gives the counts, digest and signature of the document analysed whole."""
    text = distinct(1, words=2000, seed=5)[0] + "\n".join(["a repeated line"] * 20) + "\ncaf\u00e9 \uff21\uff22 end\n"
    opts = CleanOptions(dedup="near")
    whole = dedup.whole(clean.analyse([text], [True], opts), 0, text)
    cleaner = dedup.Cleaner(opts, tmp_path)
    pieces = [p for p, _ in sources._split_text(text, 700)]
    assert len(pieces) > 10
    for k, piece in enumerate(pieces):
        feats = clean.analyse(["x y z\n", piece], [True, False], opts)  # not alone in its batch
        if k < len(pieces) - 1:
            cleaner.piece(feats, 1, piece)
    assembled = cleaner.doc(feats, 1, piece, False)
    assert assembled.counts == whole.counts and assembled.digest == whole.digest
    assert (assembled.sig == whole.sig).all() and (assembled.bands == whole.bands).all()
    assert whole.counts[3] > 0 and whole.digest == clean.digest(" ".join(text.casefold().split()).replace("ａｂ", "ab"))
    cleaner.close()


def test_a_document_cut_anywhere_between_lines_has_the_whole_documents_digest(tmp_path):
    """The exact rule on a document in pieces (each piece's normalised words from a worker, fed in
    order to one BLAKE2b by the main process) is the whole-document rule, digest(joined(text)), for a
    cut after every line break and for many sets of cuts, with and without the line filter (another
    path in the worker): cuts before ligatures, full-width letters, a combining accent, a sharp s,
    the Kelvin and Angstrom signs, inside whitespace runs NFKC collapses (no-break and ideographic
    spaces), in CRLF pairs and blank lines. A cut is never inside a composing sequence ("e" | U+0301):
    pieces end right after a line break (minitrain.data.sources)."""
    lines = [
        "\ufb01ne \ufb00 STRASSE Stra\u00dfe",
        "\u0301e\u0301 caf\u00e9\r",
        "\u00a0 \u3000\uff26\uff55\uff4c\uff4c  width",
        "",
        "   ",
        "\u212a\u212b \u0130 \u03a3\u03c3\u03c2 \u00bd",
        "\u3000trailing\u00a0\t ",
        "plain words",
        " ascii\tvt\x0bff\x0cfs\x1cgs\x1drs\x1eus\x1f end  ",
        "\r",
        "END",
    ]
    text = "\n".join(lines * 4) + "\n"
    want = clean.digest(clean.joined(text))
    assert want != clean.digest(" ".join(text.split()))  # normalisation matters here
    breaks = [i + 1 for i, c in enumerate(text[:-1]) if c == "\n"]
    rng = np.random.default_rng(0)
    for _ in range(500):  # the numpy path of an ASCII piece == str.split and join
        ascii_text = "".join(rng.choice(list("ab. \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"), rng.integers(0, 30)))
        assert clean.words_of(ascii_text) == clean.joined(ascii_text).encode(), repr(ascii_text)
    cut_sets = [[b] for b in breaks] + [
        sorted(rng.choice(breaks, k, replace=False)) for k in (2, 5, 20) for _ in range(8)
    ]
    cut_sets.append(breaks)  # every line its own piece
    for opts in (CleanOptions(dedup="exact", filters=False), CleanOptions(dedup="exact"), CleanOptions(dedup="near")):
        assert dedup.whole(clean.analyse([text], [True], opts), 0, text).digest == want
        cleaner = dedup.Cleaner(opts, tmp_path)
        for cuts in cut_sets:
            bounds = [0, *cuts, len(text)]
            pieces = [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            feats = clean.analyse(pieces, [False] * len(pieces), opts)  # one batch; a batch each in the next loop
            for k in range(len(pieces) - 1):
                cleaner.piece(feats, k, pieces[k])
            assert cleaner.doc(feats, len(pieces) - 1, pieces[-1], False).digest == want, cuts
            for k, piece in enumerate(pieces):
                feats = clean.analyse([piece], [False], opts)
                doc = cleaner.doc(feats, 0, piece, False) if k == len(pieces) - 1 else cleaner.piece(feats, 0, piece)
            assert doc.digest == want, cuts
        cleaner.close()


def test_copies_at_jaccard_0_9_are_all_found(tmp_path, tok):
    """30 near copies with 6 of 600 words changed (Jaccard of the shingles ~0.9): each found (the
    bands make a pair at 0.9 a candidate with probability 0.999; equal weights' 0.93 would miss
    about 2 of 30), and nothing else removed."""
    docs = distinct(30, seed=5)
    copies = []
    for i, text in enumerate(docs):
        words = text.split(" ")
        for k in np.random.default_rng(i).choice(len(words), 6, replace=False):
            words[k] = "changed"
        copies.append(" ".join(words))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs + copies))
    opts = CleanOptions(dedup="near", filters=False)
    meta = prepare.prepare(
        str(tmp_path / "d.jsonl"), tmp_path / "out", tok, val_fraction=0, clean=opts, keep_removed=30
    )
    assert meta["clean"]["removed"]["near"]["train"]["documents"] == 30 and meta["train"]["documents"] == 30
    assert sorted(r["copy_of"]["document"] for r in removed_texts(tmp_path / "out")["near"]) == list(range(30))


def test_the_lsh_parameters_and_the_index():
    bands, rows = clean.lsh_params(0.8)
    assert (bands, rows) == (14, 9) and clean.lsh_params(0.5)[0] > bands  # a lower threshold: more bands
    found = lambda j: 1 - (1 - j**rows) ** bands  # noqa: E731  the chance a pair at Jaccard j is a candidate
    assert found(0.85) >= 0.97 and found(0.9) >= 0.998 and found(0.5) <= 0.03
    index = dedup.KeyIndex()
    for i in range(100_000):
        index.add((i * 2654435761) % 2**64, i)
    index.add(2**64 - 1, -1)
    index.add(5, 7)
    assert index.get(2**64 - 1) == [-1] and index.get((77 * 2654435761) % 2**64) == [77] and index.get(3) == []
    assert index.get(5) == [7] and len(index) == 100_002 and len(index.recent) < 100_000


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--near_threshold=0"], "--near_threshold=0.0 must be in (0, 1]"),
        (["--near_threshold=1.5"], "--near_threshold=1.5 must be in (0, 1]"),
        (["--max_non_alpha=2"], "--max_non_alpha=2.0 must be in [0, 1]"),
        (["--min_words=-1"], "--min_words=-1 must not be negative"),
        (["--dedup=fuzzy"], "--dedup='fuzzy' is not one of none, exact, near"),
        (["--dedup=near", "completions"], "holds prompt/completion records: train_gpt2.py reads them directly"),
    ],
)
def test_bad_cleaning_options_one_sentence_exit_2_nothing_written(tmp_path, capsys, tok, argv, words):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a fine line"}\n' * 3)
    if argv[-1] == "completions":
        argv = argv[:-1]
        data.write_text('{"prompt": "a", "completion": "b"}\n' * 3)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text(tok.to_str())
    before = snapshot(tmp_path)
    common = [f"--data={data}", f"--out={tmp_path / 'out'}", f"--tokenizer={tmp_path / 'tok'}", "--progress=false"]
    line = cli_fails([*common, *argv], capsys, script=PREPARE)
    assert words in line, line
    assert snapshot(tmp_path) == before


def test_the_command_reports_and_overwrite_removes_removed_jsonl(tmp_path, tok, capsys):
    spec, *_ = planted(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text(tok.to_str())
    cfg = prepare_tool.PrepareConfig(data=spec, out=str(tmp_path / "out"), tokenizer=str(tmp_path / "tok"))
    cfg.progress, cfg.keep_removed, cfg.val_fraction = False, 3, 0.2
    meta = prepare_tool.main(cfg)
    out = capsys.readouterr().out
    assert "removed exact 8 documents" in out and meta["clean"]["removed"]["exact"]["train"]["documents"] > 0
    rows = removed_texts(tmp_path / "out")
    assert len(rows["exact"]) == 3 and all(len(v) <= 3 for v in rows.values())
    cfg.overwrite, cfg.keep_removed = True, 0  # removed.jsonl is the old prepare's: it goes with it
    prepare_tool.main(cfg)
    assert not (tmp_path / "out/removed.jsonl").exists()


def test_the_training_cache_is_cleaned_and_keyed_by_the_options(tmp_path, tok):
    spec, n, n_exact, _ = planted(tmp_path)
    plain = cache.cached(spec, tok, 0.2, tmp_path / "cache", num_proc=1, progress=False)
    cleaned = cache.cached(spec, tok, 0.2, tmp_path / "cache", num_proc=1, progress=False, clean=CleanOptions())
    assert plain != cleaned
    train, _ = find_shards(cleaned)
    meta = json.loads((cleaned / "meta.json").read_text())
    assert meta["clean"]["removed"]["exact"]["train"]["documents"] + meta["clean"]["removed"]["exact"]["val"][
        "documents"] == n_exact  # fmt: skip
    assert json.loads((plain / "meta.json").read_text())["clean"] is None and train
