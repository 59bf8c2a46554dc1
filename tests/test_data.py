"""minitrain/data.py: text sources, the document split, the token cache."""

from minitrain import data


def test_data_folder_glob_and_local_hf_dataset(tmp_path):

    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first document\n" * 50)
    (folder / "sub" / "b.txt").write_text("second document\n" * 50)
    (folder / "ignored.md").write_text("not text data")
    train, val = data.read_documents(str(folder), 0.1)
    assert len(train) == len(val) == 2  # < 10 documents: each one's tail is validation
    assert train[0].startswith("first") and val[1].startswith("second")
    g_train, g_val = data.read_documents(str(folder / "**" / "*.txt"), 0.1)
    assert (g_train, g_val) == (train, val)
    # hf:PATH goes through datasets.load_dataset, which also reads a local data set folder
    hf = tmp_path / "hfdata"
    hf.mkdir()
    (hf / "train.txt").write_text("".join(f"line {i} of the training text\n" for i in range(40)))
    (hf / "validation.txt").write_text("a validation line\n" * 5)
    h_train, h_val = data.read_documents(f"hf:{hf}", 0.1)
    assert len(h_train) == 40 and h_val == ["a validation line"] * 5


def test_token_cache_is_reused(corpus, cache, tmp_path, monkeypatch):
    from minitrain.tokenizer import train_bpe

    docs = [corpus.read_text()[:20000]]
    tok = train_bpe(docs, 300)
    first = data.tokenize_cached(docs, tok, 0, tmp_path, "train")
    assert first.dtype == "uint16"

    def boom(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data, "tokenize", boom)
    again = data.tokenize_cached(docs, tok, 0, tmp_path, "train")
    assert (first == again).all()


def test_tokenize_without_datasets_gives_the_same_ids(corpus, monkeypatch):
    import sys

    from minitrain.tokenizer import train_bpe

    docs = [corpus.read_text()[:20000], "a second document", corpus.read_text()[30000:31000]]
    tok = train_bpe(docs, 300)
    with_datasets = data.tokenize(docs, tok, 0)
    monkeypatch.setitem(sys.modules, "datasets", None)  # a machine without the package
    without = data.tokenize(docs, tok, 0)
    assert (with_datasets == without).all() and len(without) > 1000 and (without == 0).sum() >= 3
