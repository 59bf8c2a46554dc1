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
