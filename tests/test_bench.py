"""`make bench` runs end to end (one tiny step per case; the timings themselves are not tested)."""

import json


def test_bench_runs_and_counts_real_tokens(tmp_path):
    from bench.run import main

    argv = ["--cases", "gpt2-cpu", "bert-cpu", "--vs", "hf", "--steps", "1", "--warmup", "1"]
    result = main(argv + ["--rounds", "1", "--batch_size", "2", "--out", str(tmp_path)])
    rows = {(r["case"], r["impl"]): r for r in result["rows"]}
    assert set(rows) == {(c, i) for c in ("gpt2-cpu", "bert-cpu") for i in ("minitrain", "hf")}
    for r in rows.values():
        assert r["tokens_per_sec"] > 0 and r["examples_per_sec"] > 0
        tokens_per_step = r["tokens_per_sec"] * r["step_ms_median"] / 1e3
        # GPT-2 blocks are all real tokens; the BERT batch is half padded: 1 of 2 rows at T/2
        real = r["batch"] * r["seq"] if r["case"] == "gpt2-cpu" else r["seq"] + r["seq"] // 2
        assert abs(tokens_per_step - real) <= 0.01 * real
    assert set(result["vs_hf"]) == {"gpt2-cpu", "bert-cpu"}
    (saved,) = tmp_path.glob("bench-*.json")
    assert json.loads(saved.read_text())["rows"] == json.loads(json.dumps(result["rows"]))


def test_bench_runs_on_a_bare_interpreter_with_torch_only(tmp_path):
    """What a bare GPU image has: torch and the project, no numpy/tokenizers/datasets/tqdm
    (tests/bare/sitecustomize.py hides them)."""
    import subprocess

    from tests.helpers import PY, ROOT, script_env

    cmd = [PY, "-m", "bench.run", "--cases", "gpt2-cpu", "--steps", "1", "--warmup", "1", "--rounds", "1"]
    env = script_env(PYTHONPATH=f"{ROOT / 'tests' / 'bare'}:{ROOT}")
    proc = subprocess.run(
        cmd + ["--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    assert result["rows"][0]["tokens_per_sec"] > 0 and "numpy is not installed" in result["pipeline"]["loader"]
    assert {"device", "torch", "cuda", "cudnn", "commit", "config"} <= result.keys()


def test_train_step_case_and_profile_run_the_real_script(tmp_path):
    from bench import profile, train_step

    r = train_step.main(["--preset", "cpu", "--steps", "3", "--skip", "1", "--out", str(tmp_path / "step.json")])
    assert r["timed_steps"] == 3 and r["tokens_per_sec_min"] <= r["tokens_per_sec_median"] <= r["tokens_per_sec_max"]
    assert r["accumulation"] == 4 and r["warmup_s"] > 0 and json.loads((tmp_path / "step.json").read_text()) == r
    p = profile.main(["--preset", "cpu", "--warmup", "2", "--active", "1", "--out", str(tmp_path / "prof.json")])
    assert p["ms_by_category"]["matmul"] > 0 and abs(sum(p["share_by_category"].values()) - 1) < 0.01
    assert any("attention" in k for k in p["attention_kernels"])


def test_memory_bench_smoke_fsdp_holds_less_per_rank(tmp_path):
    """`python -m bench.memory --smoke`: 2 processes of DDP and FSDP on a tiny Llama, and loading
    it from a Hugging Face folder sharded and not. FSDP's ranks each hold less model state than a
    DDP rank, and their shards add up to the whole model (nothing dropped, nothing duplicated)."""
    import subprocess

    from tests.helpers import PY, ROOT, script_env

    out = tmp_path / "memory.json"
    cmd = [PY, "-m", "bench.memory", "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    keys = "command date environment machine shape params state ratios tokens_per_sec loading meaning"
    assert set(keys.split()) <= r.keys()
    runs = {(s["procs"], s["kind"]): s["per_rank"] for s in r["state"]}
    assert set(runs) == {(2, "ddp"), (2, "fsdp")}
    full = 4 * r["params"]
    for d in runs[2, "ddp"]:
        assert d["param_bytes"] == d["grad_bytes"] == full and d["optimizer_bytes"] >= 2 * full
    for f in runs[2, "fsdp"]:
        assert 0 < f["state_bytes"] < min(d["state_bytes"] for d in runs[2, "ddp"])
        assert f["peak_rss_mb"] > 0 and f["peak_rss_training_mb"] > 0
    assert sum(f["param_bytes"] for f in runs[2, "fsdp"]) == full
    assert r["ratios"]["2"]["state_fsdp_over_ddp"] <= 0.55
    assert r["tokens_per_sec"]["best"]["ddp"] > 0 and r["tokens_per_sec"]["best"]["fsdp"] > 0
    loads = {run["sharded"]: run["per_rank"] for run in r["loading"]}
    assert sum(row["local_param_bytes"] for row in loads[True]) == full
    assert all(row["local_param_bytes"] == full for row in loads[False])
    assert all(row["tied"] for rows in loads.values() for row in rows)
    assert all({"rss_anon_peak_increase_mb", "rss_file_peak_increase_mb"} <= row.keys() for row in loads[True])


def test_prepare_bench_corpus_of_documents_and_its_planted_copies(tmp_path):
    """bench.prepare's corpus for --dedup: distinct documents and planted copies; exact removes
    exactly the planted exact copies, near every planted copy, and none removes anything."""
    from bench.prepare import main

    argv = ["--sizes", "1", "--procs", "1", "--dedup", "none", "exact", "near", "--no_baseline"]
    result = main(argv + ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "prepare.json")])
    planted = result["planted_per_text_mb"][1]
    assert result["corpus"] == "documents" and planted["planted_exact"] > 5 and planted["planted_near"] > 5
    removed = {r["dedup"]: r["removed_documents"] for r in result["runs"]}
    assert removed == {
        "none": 0,
        "exact": planted["planted_exact"],
        "near": planted["planted_exact"] + planted["planted_near"],
    }
    assert {r["dedup"] for r in result["dedup_ratios_to_none"]} == {"exact", "near"}
