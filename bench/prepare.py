"""`python -m minitrain.prepare`, measured: peak memory against corpus size, tokens/s against
processes, and the path it replaced (every document in memory, tokenized by datasets.map in one
process) on the same text; then training's loader over one epoch of 1 shard and of all shards.

    python -m bench.prepare                      # 25 MB, 250 MB and 1 GB of text; 1 and 2 processes
    python -m bench.prepare --sizes 25 250       # MB of text
    python -m bench.prepare --procs 1 2 4 8      # on a machine with more cores
    python -m bench.prepare --sizes 25 --dedup none exact near --no_baseline --rounds 3  # the dedup's cost
    python -m bench.prepare --index_docs 1000000 --sizes --no_baseline         # memory per document kept

--dedup runs each size and process count once per mode, the modes interleaved, --rounds times;
every row has the same quality filters (--filters: off by default, so `none` is the old pipeline
and the ratios are the deduplication's cost alone; on: every row, `none` too, filters). On the
plays at 25 MB (5 text files, fewer than 10) prepare turns the filters off itself (each file is
cut into a head and a validation tail). Rows give wall time and the CPU seconds of the process
tree (less moved by other work on a shared machine), and the median ratios to `none` are
printed. tokens/s counts the removed documents' tokens too.
--index_docs N feeds N synthetic documents (distinct, whole) to the main process's Cleaner and
reports what its indexes hold in memory per document (tracemalloc), for exact and near.

Two corpora, written under --work (default: a temporary folder) until the size is reached.
--corpus plays (the default without --dedup exact or near): Shakespeare's plays (the
`shakespeare` package) rotated into 5 MB .txt files, no two alike, but each a near copy of every
other, so useless for --dedup near. --corpus documents (the default with --dedup exact or near):
5 MB .jsonl files of distinct documents (40-80 lines drawn at random from the plays, ~2.5 KB)
and planted copies of earlier ones, as tests/test_clean.py plants them: 5 % exact copies (case
and whitespace changed), 5 % near copies (two words changed, a line added: Jaccard of the 5-gram
shingles ~0.95); the planted counts go into the JSON beside what each mode removed. Each prepare runs as its own
process; its memory is sampled every 20 ms from /proc as the sum of the RSS of the process and
its workers (the peak of the whole tree, not only of the main process). A 1-process run is pinned
to one core (RAYON_NUM_THREADS=1: tokenizers would otherwise use every core inside encode_batch).
Writes JSON (default bench/results/prepare-DATE.json).
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.train_step import environment, save_result

ROOT = Path(__file__).resolve().parent.parent


def make_corpus(folder: Path, megabytes: int) -> Path:
    from minitrain.data.sources import shakespeare_files

    text = "".join(f.read_text() for f in shakespeare_files())
    folder.mkdir(parents=True, exist_ok=True)
    size, i = 0, 0
    while size < megabytes * 1_000_000:
        piece = text[(i * 7919) % len(text) :] + text[: (i * 7919) % len(text)]  # rotated: no two files alike
        piece = piece[: min(5_000_000, megabytes * 1_000_000 - size)]
        (folder / f"part{i:05d}.txt").write_text(piece)
        size, i = size + len(piece.encode()), i + 1
    return folder


def make_documents(folder: Path, megabytes: int, seed: int = 0) -> dict:
    """Distinct documents of random lines of the plays, with planted exact and near copies of
    earlier documents (5 % each), in 5 MB .jsonl files; returns how many of each were written."""
    import json
    import random

    from minitrain.data.sources import shakespeare_files

    lines = [x for f in shakespeare_files() for x in f.read_text().splitlines() if len(x.split()) >= 3]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"documents": 0, "planted_exact": 0, "planted_near": 0}
    originals, records, size, written = [], [], 0, 0
    while size < megabytes * 1_000_000:
        r = rng.random()
        if originals and r < 0.05:  # an exact copy: other case, other whitespace
            text = "  " + rng.choice(originals).upper().replace(" ", " \t ").replace("\n", "\r\n\n")
            counts["planted_exact"] += 1
        elif originals and r < 0.10:  # a near copy: two words changed, a line added
            words = rng.choice(originals).split(" ")
            for i in rng.sample(range(len(words)), 2):
                words[i] = "changed"
            text = " ".join(words) + "an added line of a few new words here\n"
            counts["planted_near"] += 1
        else:
            text = "\n".join(rng.choices(lines, k=rng.randint(40, 80))) + "\n"
            originals.append(text)
            counts["documents"] += 1
        records.append(json.dumps({"text": text}) + "\n")
        size += len(records[-1].encode())
        if size // 5_000_000 > written or size >= megabytes * 1_000_000:  # a file every 5 MB
            (folder / f"part{written:05d}.jsonl").write_text("".join(records))
            records, written = [], written + 1
    return counts


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def run_prepare(corpus: Path, out: Path, tokenizer: Path, procs: int, dedup: str = "none", filters=False) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "minitrain.prepare", f"--data={corpus}", f"--out={out}"]
    cmd += [f"--tokenizer={tokenizer}", f"--num_proc={procs}", "--progress=false", f"--dedup={dedup}"]
    cmd += [f"--filters={str(filters).lower()}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if procs == 1:
        env["RAYON_NUM_THREADS"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the prepare's workers are reaped by it: counted
    t0, peak = time.perf_counter(), 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"prepare failed: {stderr}")
    import json

    meta = json.loads((out / "meta.json").read_text())
    tokens = meta["train"]["tokens"] + meta["val"]["tokens"]
    removed = (meta.get("clean") or {}).get("removed", {})
    return {
        "processes": procs,
        "dedup": dedup,
        "filters": (meta.get("clean") or {}).get("filters", False),  # as prepare applied them
        "removed_documents": sum(r[x]["documents"] for r in removed.values() for x in ("train", "val")),
        "removed_by_rule": {rule: r["train"]["documents"] + r["val"]["documents"] for rule, r in removed.items()},
        "tokens": tokens,
        "tokens_per_sec": meta["tokens_per_sec"],  # tokenizing and writing, as prepare reports it
        "wall_s": round(wall, 2),  # the whole command: interpreter start, imports, pool start
        "cpu_s": round(cpu, 2),  # user + system of the process and its workers
        "peak_rss_mb": round(peak / 2**20, 1),
        "shards": len(meta["train"]["shards"]) + len(meta["val"]["shards"]),
    }


def old_path(corpus: Path, tokenizer: Path) -> dict:
    """The path prepare replaced: every document in memory, then datasets.map(batched) calling
    encode_batch in one process (pinned to one core, like the 1-process prepare)."""
    code = f"""
import json, time, numpy as np, datasets, resource
from pathlib import Path
from tokenizers import Tokenizer
tok = Tokenizer.from_file("{tokenizer}/tokenizer.json")
eot = tok.token_to_id("<|endoftext|>")
t0 = time.perf_counter()
docs = [p.read_text() for p in sorted(Path("{corpus}").glob("*.txt"))]
docs += [json.loads(x)["text"] for p in sorted(Path("{corpus}").glob("*.jsonl")) for x in p.open()]
datasets.disable_progress_bars()
ds = datasets.Dataset.from_dict({{"text": docs}})
ids = ds.map(lambda b: {{"ids": [e.ids + [eot] for e in tok.encode_batch(b["text"])]}}, batched=True,
             batch_size=256, remove_columns=["text"])["ids"]
n = int(np.concatenate([np.asarray(x, dtype=np.uint16) for x in ids]).size)
print(n, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "HF_DATASETS_CACHE": tempfile.mkdtemp()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    n, seconds, maxrss_kb = out.stdout.split()
    return {
        "tokens": int(n),
        "tokens_per_sec": round(int(n) / float(seconds)),
        "peak_rss_mb": round(int(maxrss_kb) / 1024, 1),
    }


def index_memory(n: int) -> list[dict]:
    """Bytes per kept document of the Cleaner's indexes (tracemalloc: numpy arrays and dicts; the
    signatures of --dedup near go to a temporary file, counted apart), for n distinct documents."""
    import tracemalloc

    import numpy as np

    from minitrain.data import clean, dedup
    from minitrain.options import CleanOptions

    rows = []
    for mode in ("exact", "near"):
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as folder:
            opts = CleanOptions(dedup=mode, filters=False)
            bands, rows_per_band = clean.lsh_params(opts.near_threshold)
            tracemalloc.start()
            cleaner = dedup.Cleaner(opts, Path(folder))
            base = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                sig = rng.integers(0, 2**32, clean.NUM_PERM, dtype=np.uint32) if mode == "near" else None
                keys = clean.band_keys(sig[None], bands, rows_per_band)[0] if mode == "near" else None
                doc = dedup.Doc([100, 500, 450, 0, 500], int(rng.integers(0, 2**63)), sig, keys, "")
                assert cleaner.judge(doc, i)[0] is None
            now, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            on_disk = cleaner.sigs.n * clean.NUM_PERM * 2 if mode == "near" else 0
            cleaner.close()
        rows.append({"dedup": mode, "documents": n, "bytes_per_document": round((now - base) / n, 1),
                     "peak_bytes_per_document": round((peak - base) / n, 1),
                     "disk_bytes_per_document": on_disk / n})  # fmt: skip
        print("index:", rows[-1], flush=True)
    return rows


LOADER = """
import resource, sys, time
from minitrain.data.tokens import EpochOrder, Tokens
from minitrain.data.shards import find_shards
train, _ = find_shards(sys.argv[1])
tokens = Tokens(train[: int(sys.argv[2])])
order = EpochOrder(tokens, 1024, 0, 0)
t0 = time.perf_counter()
for a in range(0, len(order), 64):
    tokens.rows(order[a : a + 64], 1024)
print(len(order), time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def loader_rss(folder: Path) -> list[dict]:
    """Training's loader reading one whole epoch (batches of 64 x 1024 in the seeded order) of the
    first shard, then of all shards: its peak RSS (mapped shard pages that were read count)."""
    from minitrain.data.shards import find_shards

    rows, n = [], len(find_shards(folder)[0])
    for k in sorted({1, n}):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", LOADER, str(folder), str(k)], env=env, capture_output=True, text=True
        )
        blocks, seconds, maxrss_kb = out.stdout.split()
        rows.append({"train_shards": k, "blocks": int(blocks), "blocks_per_sec": round(int(blocks) / float(seconds)),
                     "peak_rss_mb": round(int(maxrss_kb) / 1024, 1)})  # fmt: skip
        print("loader:", rows[-1], flush=True)
    return rows


def dedup_ratios(rows: list[dict]) -> list[dict]:
    """Per size and process count, each mode's median wall and CPU seconds over the median of `none`."""
    out = []
    for mb, procs in sorted({(r["text_mb"], r["processes"]) for r in rows}):
        same = [r for r in rows if (r["text_mb"], r["processes"]) == (mb, procs)]
        med = {m: {k: statistics.median(r[k] for r in same if r["dedup"] == m) for k in ("wall_s", "cpu_s")}
               for m in {r["dedup"] for r in same}}  # fmt: skip
        for mode in ("exact", "near"):
            if "none" in med and mode in med:
                wall, cpu = (round(med[mode][k] / med["none"][k], 3) for k in ("wall_s", "cpu_s"))
                out.append({"text_mb": mb, "processes": procs, "dedup": mode, "wall_ratio": wall, "cpu_ratio": cpu})
                print("ratio to none:", out[-1], flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[25, 250, 1000], help="MB of text")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="--num_proc values")
    ap.add_argument("--dedup", nargs="+", default=["none"], choices=["none", "exact", "near"], help="cleaning modes")
    ap.add_argument("--filters", choices=["off", "on"], default="off", help="the quality filters, in every row")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each mode, interleaved")
    ap.add_argument("--corpus", choices=["plays", "documents"], help="default: documents with --dedup exact or near")
    ap.add_argument("--index_docs", type=int, default=0, help="measure the dedup indexes' memory per document")
    ap.add_argument("--no_baseline", action="store_true", help="skip the datasets.map path and the loader")
    ap.add_argument("--work", default="", help="where to write the corpora and shards (default: a temporary folder)")
    ap.add_argument("--out", default="", help="the JSON file to write")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prepare-"))
    from minitrain.data.prepare import bpe_sample
    from minitrain.data.tokenizer import save_for_transformers, train_bpe

    rows, before, loader, planted = [], None, None, {}
    kind = args.corpus or ("documents" if set(args.dedup) - {"none"} else "plays")

    def corpus_of(mb: int) -> Path:
        folder = work / f"{kind}{mb}"
        if kind == "plays":
            return make_corpus(folder, mb)
        planted[mb] = make_documents(folder, mb)
        print(f"corpus of {mb} MB:", planted[mb], flush=True)
        return folder

    if args.sizes:
        smallest = corpus_of(args.sizes[0])
        tok = train_bpe(bpe_sample(str(smallest), "text", 0.1, 0, 10_000_000), 2048)  # the default scratch vocabulary
        save_for_transformers(tok, work / "tok", 1024)
    for mb in args.sizes:
        corpus = smallest if mb == args.sizes[0] else corpus_of(mb)
        for procs in args.procs:
            for r in range(args.rounds):
                for mode in args.dedup:
                    row = run_prepare(corpus, work / "shards", work / "tok", procs, mode, args.filters == "on")
                    rows.append({"text_mb": mb, "round": r, **row})
                    print(rows[-1], flush=True)
    if args.sizes and not args.no_baseline:
        before = {"text_mb": args.sizes[0], **old_path(smallest, work / "tok")}
        print("before:", before, flush=True)
        loader = loader_rss(work / "shards")  # the largest corpus's shards
    ratios = dedup_ratios(rows)
    index = index_memory(args.index_docs) if args.index_docs else None
    shutil.rmtree(work, ignore_errors=True) if not args.work else None
    result = {
        "bench": "prepare",
        "command": " ".join(["python -m bench.prepare", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment(),
        "cores": len(os.sched_getaffinity(0)),
        "corpus": kind,
        "planted_per_text_mb": planted or None,
        "runs": rows,
        "dedup_ratios_to_none": ratios,
        "before_datasets_map_one_process": before,
        "loader_one_epoch": loader,
        "dedup_index_memory": index,
    }
    return save_result(result, args.out, "prepare")


if __name__ == "__main__":
    main()
