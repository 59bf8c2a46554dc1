"""bench.gpu, the one command of a GPU session (#29), rehearsed on CPU: every item runs (tiny), in a
Python where `datasets` cannot be imported, as on the GPU image; what the GPU run fills is there."""

import json
import subprocess
import sys

from bench import gpu
from tests.helpers import PY, ROOT, script_env


def test_smoke_run_writes_every_item_and_the_summary(tmp_path):
    out = tmp_path / "out"
    env = script_env(OUT=str(out), PYTHONPATH=f"{ROOT / 'tests' / 'gpu_image'}:{ROOT}")
    proc = subprocess.run(
        [PY, "-m", "bench.gpu", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # three files: the device tool brings back at most eight
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "gpu.log", "summary.md"]
    saved = json.loads((out / "gpu.json").read_text())
    assert {"device", "torch", "cuda", "cudnn", "commit", "peak_tflops", "settings", "date"} <= saved.keys()
    items = saved["items"]
    names = ["tests", "gpt2-mb4", "variant-flash", "hf-gpt2", "llama-smollm2-tiny", "bert", "packing", "profile"]
    assert list(items) == names
    bad = {k: v.get("error") for k, v in items.items() if v["status"] != "ok"}
    assert not bad, bad
    r = {k: v["result"] for k, v in items.items()}
    assert r["tests"]["tests"] == r["tests"]["skipped"] + r["tests"]["passed"] > 0  # CPU: the GPU tests skip
    for step in ("gpt2-mb4", "variant-flash"):
        want = {"tokens_per_sec_min", "tokens_per_sec_median", "tokens_per_sec_max", "mfu_median", "peak_mem_GiB"}
        assert want <= r[step].keys() and r[step]["timed_steps"] >= 1 and r[step]["tokens_per_sec_median"] > 0
        assert r[step]["micro_batch"] == 4 and any("flash" in k for k in r[step]["attention_kernels"])
    assert r["variant-flash"]["sdpa"] == "flash" and r["gpt2-mb4"]["timed_steps"] == 2
    for name, case in (("hf-gpt2", "gpt2-tiny"), ("llama-smollm2-tiny", "smollm2-tiny"), ("bert", "bert-tiny")):
        assert {(x["case"], x["impl"]) for x in r[name]["rows"]} == {(case, "minitrain"), (case, "hf")}
        assert r[name]["vs_hf"][case] > 0 and all("mfu" in x and "peak_mem_GiB" in x for x in r[name]["rows"])
        assert {x["attention"] for x in r[name]["rows"]} == {"sdpa"}
    assert r["packing"]["speedup"] > 0 and r["packing"]["best"]["packed"]["packing_efficiency"] > 0
    assert r["profile"]["share_by_category"] and "gpu_busy_percent" in r["profile"]
    summary = (out / "summary.md").read_text()
    assert all(f"| {name} | ok |" in summary for name in names) and "Targets" in summary
    assert summary in proc.stdout  # printed at the end as well
    log = (out / "gpu.log").read_text()
    assert all(f"===== {name}:" in log for name in names)


def test_an_item_is_classified_by_how_it_ended(tmp_path):
    log = tmp_path / "gpu.log"
    oom = "print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'); raise SystemExit(1)"
    assert gpu.spawn([sys.executable, "-c", oom], 30, log, "a")["status"] == "oom"
    failed = gpu.spawn([sys.executable, "-c", "raise SystemExit('a clear sentence')"], 30, log, "b")
    assert failed["status"] == "failed" and failed["error"] == "a clear sentence"
    slow = gpu.spawn([sys.executable, "-c", "import time; time.sleep(60)"], 1, log, "c")
    assert slow["status"] == "timeout" and slow["seconds"] < 20
    assert gpu.spawn([sys.executable, "-c", "print('fine')"], 30, log, "d")["status"] == "ok"
    assert log.read_text().count("=====") == 4 and "a clear sentence" in log.read_text()


def test_no_time_left_skips_the_item_and_the_sweep_picks_its_fastest_micro_batch(tmp_path):
    header = {
        "device": "x",
        "torch": "t",
        "cuda": None,
        "commit": "c",
        "date": "d",
        "peak_tflops": None,
        "smoke": False,
    }
    session = gpu.Session(tmp_path, budget=0, header=header)
    rec = session.run("tests", [sys.executable, "-c", "raise SystemExit(3)"], (60, 20), None)
    assert rec["status"] == "skipped" and "budget left, 20 needed" in rec["error"]
    assert json.loads((tmp_path / "gpu.json").read_text())["items"]["tests"]["status"] == "skipped"

    def step(mb, median, status="ok"):
        return {"status": status, "result": {"micro_batch": mb, "tokens_per_sec_median": median}}

    items = {"gpt2-mb16": step(16, 5.0), "gpt2-mb32": step(32, 7.0), "gpt2-mb64": step(64, 9.0, "oom")}
    assert gpu.best_micro_batch(items, 16) == 32 and gpu.best_micro_batch({}, 16) == 16
    items["hf-gpt2"] = {"status": "ok", "result": {"vs_hf": {"gpt2-124m": 1.3}, "rows": []}}
    text = gpu.summary(header, items)
    assert "GPT-2 124M training tokens/s >= 600,000: 7 MISSED" in text and "transformers >= 1.2: 1.30 met" in text
    items |= {"variant-cudnn": {"status": "timeout"}, "llama-llama3.2-1b": {"status": "skipped"}}
    assert gpu.rerun_command(items, 32) == "python3 -m bench.gpu --only variants llama --micro_batches 32"
