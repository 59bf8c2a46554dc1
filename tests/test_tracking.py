"""minitrain/training/tracking.py: --report_to W&B and MLflow next to TensorBoard, offline.

Each tracked run is read back with its library's own reader (MlflowClient; W&B's protobuf records
in the offline run's .wandb file) and compared with metrics.jsonl: the same steps, the same values.
"""

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import train_mrpc
from minitrain import UserError
from minitrain.config import parse_args
from minitrain.tools import sweep
from minitrain.tools.sweep import SweepConfig
from minitrain.training import report, tracking
from minitrain.training.logger import Logger
from minitrain.training.rundir import list_checkpoints
from minitrain.training.state import TrainState
from tests.helpers import PY, ROOT, run_main, script_env, tiny_gpt2_args
from tests.mrpc_data import make_pairs, write_glue

pytest.importorskip("wandb")
pytest.importorskip("mlflow")


def offline(mp, root: Path) -> None:
    """No W&B credentials (and none from ~/.netrc), W&B's own folders under `root`."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_RUN_GROUP", "MLFLOW_TRACKING_URI"):
        mp.delenv(name, raising=False)
    mp.setenv("NETRC", str(root / "no-netrc"))
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        mp.setenv(name, str(root / name.lower()))


def jsonl(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def histories(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as {metric: [(step, value), ...]}, in the order written."""
    out = {}
    for row in rows:
        for k, v in row.items():
            if k != "step":
                out.setdefault(k, []).append((row["step"], v))
    return out


def wandb_records(path: Path) -> list:
    """The records of a .wandb file, parsed with W&B's own protobuf (wandb_internal_pb2.Record).
    The file is a LevelDB-style log: a 7-byte header (':W&B', magic 0xBEE1, version), then 32 KiB
    blocks of chunks (crc32 of type + data, length, type: FULL 1, FIRST 2, MIDDLE 3, LAST 4)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    pos, chunk, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding at the end of a block
            pos += 32768 - pos % 32768
            continue
        body = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) == crc, f"bad checksum in {path}"
        pos, chunk = pos + 7 + length, chunk + body
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_runs(out_dir) -> list[list]:
    """The records of each offline run (part) under OUT_DIR/wandb, oldest first."""
    files = sorted((Path(out_dir) / "wandb").glob("offline-run-*/run-*.wandb"))
    return [wandb_records(f) for f in files]


def of_kind(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


@pytest.fixture(scope="module")
def tracked(corpus, cache, tmp_path_factory):
    """A run to W&B (offline) and MLflow (a temporary sqlite store) with --log_model: 3 steps, then
    resumed (--resume=auto) to 6."""
    root = tmp_path_factory.mktemp("tracked")
    out, store = root / "run", root / "store"
    with pytest.MonkeyPatch.context() as mp:
        offline(mp, root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
        kw = dict(report_to="tensorboard,wandb,mlflow", log_model=True, num_samples=1, max_new_tokens=8)
        run_main(corpus, out, cache, max_steps=3, **kw)
        first = torch.load(list_checkpoints(out)[-1], weights_only=True)
        run_main(corpus, out, cache, max_steps=6, resume="auto", **kw)
        last = torch.load(list_checkpoints(out)[-1], weights_only=True)
    return out, f"sqlite:///{store}/mlflow.db", first, last


def test_mlflow_run_holds_every_metric_the_config_and_the_artifacts_and_a_resume_appends(tracked):
    from mlflow import MlflowClient

    out, uri, first, last = tracked
    run_id = first["tracking"]["mlflow"]["run_id"]
    assert last["tracking"]["mlflow"]["run_id"] == run_id  # the resumed run continued the same MLflow run
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.info.artifact_uri.startswith((Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri())
    assert not (ROOT / "mlruns").exists()  # not MLflow's default, ./mlruns in the working directory
    assert client.get_experiment(run.info.experiment_id).name == "minitrain"
    expected = histories(jsonl(out))
    assert {r["step"] for r in jsonl(out)} == set(range(7))
    assert set(run.data.metrics) == set(expected)
    for key, series in expected.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert got == sorted(series), key
    # the whole config as parameters (as the first part ran); what the resume changed, as tags
    assert run.data.params == {k: str(v) for k, v in first["config"].items()}
    assert run.data.tags["config.max_steps"] == "6" and run.data.tags["config.resume"] == "auto"

    def files(path=None):
        found = []
        for info in client.list_artifacts(run_id, path):
            found += files(info.path) if info.is_dir else [info.path]
        return found

    arts = set(files())
    assert {"report.png", "report.md", "final/README.md", "final/model.safetensors", "final/config.json"} <= arts
    assert {"text/step-3/sample_1.txt", "text/step-6/sample_1.txt"} <= arts
    readme = Path(client.download_artifacts(run_id, "final/README.md", str(out.parent / "dl")))
    assert readme.read_text() == (out / "final/README.md").read_text()
    assert (out / "tensorboard").is_dir()  # TensorBoard as before
    assert len(report.write_report([out], out.parent / "again.png")) == 6  # minitrain.report reads local files


def test_wandb_offline_run_holds_every_metric_and_a_resume_keeps_its_id(tracked):
    out, _, first, last = tracked
    run_id = first["tracking"]["wandb"]["id"]
    assert last["tracking"]["wandb"]["id"] == run_id
    parts = wandb_runs(out)
    assert len(parts) == 2  # the run, and its resumed part: the same id (`wandb sync` uploads them in order)
    assert [of_kind(p, "run")[0].run_id for p in parts] == [run_id, run_id]
    assert of_kind(parts[0], "run")[0].display_name == "run" and of_kind(parts[0], "run")[0].project == "minitrain"
    got = {}
    for part in parts:
        for history in of_kind(part, "history"):
            for item in history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_") and "/" not in key and not key.startswith("sample_"):
                    got.setdefault(key, []).append((history.step.num, json.loads(item.value_json)))
    assert got == histories(jsonl(out))
    config = {}
    for update in of_kind(parts[0], "config"):
        config |= {item.key: json.loads(item.value_json) for item in update.update if item.key != "_wandb"}
    assert {k: config[k] for k in first["config"]} == first["config"]
    for part in parts:  # the report and the model at the end of each part
        artifacts = {a.type: {e.path for e in a.manifest.contents} for a in of_kind(part, "artifact")}
        assert artifacts["report"] == {"report.png", "report.md", "final/README.md"}
        assert {"model.safetensors", "config.json", "README.md"} <= artifacts["model"]
    tables = {}  # the samples as tables: {step: the table's W&B type}
    for history in (h for p in parts for h in of_kind(p, "history")):
        for item in history.item:
            if list(item.nested_key) == ["sample_1", "_type"]:
                tables[history.step.num] = json.loads(item.value_json)
    assert tables == {3: "table-file", 6: "table-file"}


def test_tensorboard_alone_needs_neither_package_and_a_missing_one_is_refused(corpus, cache, tmp_path, monkeypatch):
    for name in ("wandb", "mlflow"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: any import fails
    run_main(corpus, tmp_path / "tb", cache, max_steps=2, eval_interval=2, save_interval=2)
    assert (tmp_path / "tb/tensorboard").is_dir()
    assert not {"wandb", "mlflow.db", "mlartifacts"} & {p.name for p in (tmp_path / "tb").iterdir()}
    assert torch.load(list_checkpoints(tmp_path / "tb")[-1], weights_only=True)["tracking"] is None
    for report_to in ("wandb", "tensorboard,mlflow"):
        with pytest.raises(UserError, match=r"needs the (wandb|mlflow) package, which is not installed: pip install"):
            run_main(corpus, tmp_path / "never", cache, report_to=report_to)
    assert not (tmp_path / "never").exists()
    # the command line: one sentence, exit 2, before any work
    code = (
        "import runpy, sys; sys.modules['wandb'] = None; "
        f"sys.argv = ['train_gpt2.py', '--report_to=wandb', '--out_dir={tmp_path / 'cli'}']; "
        "runpy.run_path('train_gpt2.py', run_name='__main__')"
    )
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, env=script_env(), capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --report_to=wandb needs the wandb package, which is not installed: "
        "pip install -r requirements-tracking.txt (or, in the checkout, pip install -e '.[tracking]')."
    ]
    assert not (tmp_path / "cli").exists()


def test_bad_tracking_input_is_one_sentence_and_writes_nothing(corpus, cache, tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    (tmp_path / "a-file").write_text("")
    cases = [
        (dict(report_to="tensorbord"), "'tensorbord' is not one of tensorboard, wandb, mlflow, none (did you mean"),
        (dict(report_to="none,wandb"), "'none' cannot be combined"),
        (dict(report_to="wandb", project="team/run"), "--project='team/run' is not a W&B project name: cannot"),
        (dict(report_to="mlflow", project=" "), "--project is empty"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            run_main(corpus, tmp_path / "out", cache, **kw)
    for uri, message in [
        (f"sqlite:///{tmp_path}/a-file/mlflow.db", "cannot be written: .*a-file is a file, not a folder"),
        ("http://127.0.0.1:9", "cannot be reached"),
    ]:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(UserError, match=f"MLFLOW_TRACKING_URI=.*{message}"):
            run_main(corpus, tmp_path / "out", cache, report_to="mlflow")
    assert not (tmp_path / "out").exists()


def test_wandb_goes_online_only_with_credentials_and_a_server(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    assert tracking.wandb_mode()[0] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")  # asked for, but no key: W&B would prompt
    assert tracking.wandb_mode() == ("offline", tracking.wandb_mode()[1]) and "credentials" in tracking.wandb_mode()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    assert tracking.wandb_mode() == ("offline", "127.0.0.1 cannot be reached")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode()[0] == "disabled"


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_warning(tracked, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    _, uri, _, _ = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # a store that exists already: quicker to open
    real, calls = MlflowClient.log_batch, []

    def gone_after_two(self, run_id, metrics=(), **kw):
        if metrics:
            calls.append(len(metrics))
            if len(calls) > 2:
                raise MlflowException("API request to http://tracking/api failed: Connection refused")
        return real(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", gone_after_two)
    state = TrainState("train_gpt2", {"report_to": "tensorboard,mlflow", "project": "failing", "run_name": "f"})
    with Logger(tmp_path / "run", progress=False, state=state) as log:
        for step in range(1, 6):
            log.log(step, train_loss=1.0 / step)
        assert [t.name for t in log.trackers] == ["tensorboard"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: mlflow failed (API request to http://tracking/api failed: Connection refused); "
                   "logging goes on to metrics.jsonl without it"]  # fmt: skip
    assert [r["step"] for r in jsonl(tmp_path / "run")] == [1, 2, 3, 4, 5]
    history = MlflowClient(uri).get_metric_history(state.tracking["mlflow"]["run_id"], "train_loss")
    assert [m.step for m in history] == [1, 2]


def test_sweep_groups_its_runs(corpus, cache, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    offline(monkeypatch, tmp_path)
    args = tiny_gpt2_args(corpus, "unused", cache, eval_interval=2, save_interval=2)
    passthrough = [f"--{k}={v}" for k, v in args.items() if k not in ("out_dir", "max_steps", "lr")]
    out = tmp_path / "sweep"
    argv = ["--lr", "1e-3,4e-3", "--max_steps", "2", "--out_dir", str(out), "--report_to", "wandb,mlflow"]
    results = sweep.main(parse_args(SweepConfig, [*argv, "--", *passthrough]))
    assert [r["exit"] for r in results] == [0, 0]
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")  # the sweep's store, shared by its runs
    runs = client.search_runs([client.get_experiment_by_name("minitrain").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "sweep")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"lr-0.001", "lr-0.004"} and len(runs) == 3
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep.png", "sweep.md", "sweep.json"}
    for name, run in children.items():
        assert run.data.metrics["val_loss"] == jsonl(out / name)[-1]["val_loss"]
        (part,) = wandb_runs(out / name)
        assert of_kind(part, "run")[0].run_group == "sweep"
    with pytest.raises(UserError, match="is a sweep option"):
        sweep.main(parse_args(SweepConfig, ["--lr", "1e-3", "--out_dir", str(tmp_path / "x"), "--", "--project=p"]))


def test_mrpc_run_goes_to_the_default_mlflow_store_under_out_dir(minilm_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    offline(monkeypatch, tmp_path)
    data = write_glue(tmp_path / "glue", make_pairs(32, 0), make_pairs(8, 1), make_pairs(8, 2))
    out = tmp_path / "mrpc"
    cfg = dict(model=str(minilm_dir), data_dir=str(data), out_dir=str(out), batch_size=16, epochs=1, progress=False)
    train_mrpc.main(train_mrpc.Config(**cfg, log_interval=1, report_to="mlflow", run_name="pairs", project="mrpc"))
    assert not (out / "tensorboard").exists()  # --report_to names every tracker: TensorBoard was not asked for
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mrpc").experiment_id])
    assert run.info.run_name == "pairs" and run.info.artifact_uri.startswith((out / "mlartifacts").as_uri())
    for key, series in histories(jsonl(out)).items():  # per-step losses, the epoch's row, the test scores
        assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)) == sorted(series)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.png", "report.md"}


def test_mlflow_resume_from_before_the_last_logged_step_continues_in_a_new_run(corpus, cache, tmp_path, monkeypatch):
    """Resumed from step 2 of a run that logged to step 4 (a crash after the last checkpoint): a
    metric's history cannot be cut back, so the continuation is a new MLflow run tagged with where
    it resumed from, and no run holds a step twice."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store'}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out, kw = tmp_path / "run", dict(report_to="mlflow", save_interval=2)
    run_main(corpus, out, cache, max_steps=4, **kw)
    first = torch.load(out / "ckpt-0000002.pt", weights_only=True)["tracking"]["mlflow"]["run_id"]
    (out / "ckpt-0000004.pt").unlink()  # the crash came before step 4's checkpoint was written
    run_main(corpus, out, cache, max_steps=4, resume=str(out / "ckpt-0000002.pt"), **kw)
    second = torch.load(out / "ckpt-0000004.pt", weights_only=True)["tracking"]["mlflow"]["run_id"]
    client = MlflowClient(uri)
    assert second != first and client.get_run(second).data.tags["minitrain.resumed_from"] == f"{first}@2"
    for run_id in (first, second):
        steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
        assert len(steps) == len(set(steps)), (run_id, steps)
