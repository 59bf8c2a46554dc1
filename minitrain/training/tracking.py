"""Experiment tracking where people already look (--report_to): TensorBoard, Weights & Biases and
MLflow, each through its library's own client, next to metrics.jsonl (which is always written).

The Logger (rank 0) starts the trackers and forwards to them every row it writes to metrics.jsonl
(at its step), the end-of-run samples as text and, at the end, report.png, report.md and
final/README.md as artifacts (final/, the exported model, only with --log_model). The whole config
goes in as hyper-parameters. The tracked runs' ids are kept in the training state, so a resumed run
continues the same W&B / MLflow run. A sweep groups its runs: W&B's own WANDB_RUN_GROUP, and an
MLflow parent run named by PARENT_ENV in a store the sweep shares with its runs.

Offline first: W&B goes online only with credentials and a reachable server (otherwise offline, one
line saying where the run is and how to `wandb sync` it; never a prompt); MLflow writes to
sqlite:///OUT_DIR/mlflow.db unless MLFLOW_TRACKING_URI says otherwise. wandb and mlflow are
optional packages (requirements-tracking.txt): a missing one is refused before any work. A tracker
that fails mid-run (a server gone) is dropped with one warning line; training goes on.
"""

import difflib
import logging
import netrc
import os
import socket
import sys
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from minitrain import UserError, first_line
from minitrain.atomic import check_writable_folder

NAMES = ("tensorboard", "wandb", "mlflow", "none")  # --report_to's choices, as in the Hugging Face Trainer
INSTALL = "pip install -r requirements-tracking.txt (or, in the checkout, pip install -e '.[tracking]')"
PARENT_ENV = "MINITRAIN_MLFLOW_PARENT_RUN_ID"  # set by minitrain.sweep: the MLflow run its runs are children of
FILES = ("tensorboard", "wandb", "mlflow.db", "mlartifacts")  # what the trackers may write into out_dir
ARTIFACTS = ("report.png", "report.md", "final/README.md")  # uploaded at the end of a run, where they exist
WANDB_HOST = "https://api.wandb.ai"


def parse(report_to: str) -> list[str]:
    """--report_to as a list of tracker names ('none': no tracker; metrics.jsonl is written anyway)."""
    names = [n.strip().lower() for n in report_to.split(",") if n.strip()]
    for name in names:
        if name not in NAMES:
            close = difflib.get_close_matches(name, NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"--report_to={report_to!r}: {name!r} is not one of {', '.join(NAMES)}{hint}.")
    if "none" in names and len(names) > 1:
        raise UserError(f"--report_to={report_to!r}: 'none' cannot be combined with a tracker.")
    if not names:
        raise UserError("--report_to is empty; name the trackers (tensorboard, wandb, mlflow) or 'none'.")
    return [n for n in dict.fromkeys(names) if n != "none"]


def check(report_to: str, project: str) -> list[str]:
    """Before any work (right after the options are parsed, before the run folder is touched): the
    names are known, their packages installed, the W&B project name one W&B accepts, and MLflow's
    tracking URI one that can be written. Returns the tracker names."""
    names = parse(report_to)
    if {"wandb", "mlflow"} & set(names) and not project.strip():
        raise UserError("--project is empty; name the W&B project / MLflow experiment (default: minitrain).")
    if "wandb" in names:
        wandb = _import("wandb", "--report_to=wandb")
        try:
            wandb.Settings(project=project)
        except Exception as e:  # wandb's UsageError (a pydantic ValidationError around it in some versions)
            raise UserError(f"--project={project!r} is not a W&B project name: {_wandb_reason(e)}.") from None
    if "mlflow" in names:
        _import("mlflow", "--report_to=mlflow")
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri or uri.startswith("sqlite:"):  # the default store is sqlite, which needs these two
            _import("sqlalchemy", "MLflow's sqlite store")
            _import("alembic", "MLflow's sqlite store")
        if uri:
            check_tracking_uri(uri)
    return names


def _import(name: str, what: str):
    try:
        return __import__(name)
    except ImportError:
        raise UserError(f"{what} needs the {name} package, which is not installed: {INSTALL}.") from None


def _wandb_reason(e: Exception) -> str:
    text = first_line(e)
    return text.split(": ", 1)[1].rstrip(".") if text.startswith("Invalid project name") else text.rstrip(".")


def check_tracking_uri(uri: str) -> None:
    """A local MLFLOW_TRACKING_URI (sqlite:, file: or a path) must name a place that can be written;
    an http(s) one a server that answers. Nothing is created."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if not _reachable(parsed.hostname or "", port, timeout=5):
            raise UserError(f"MLFLOW_TRACKING_URI={uri} cannot be reached; start the server or unset it.")
        return
    if parsed.scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is None:
            return  # sqlite:// (in memory): nothing to write
        _writable(path.parent, uri)
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(f"MLFLOW_TRACKING_URI={uri} cannot be written: {path} is read-only.")
    elif parsed.scheme in ("", "file"):
        _writable(Path(parsed.path if parsed.scheme else uri), uri)


def _writable(folder: Path, uri: str) -> None:
    try:
        check_writable_folder(folder, "MLFLOW_TRACKING_URI")
    except UserError as e:  # "MLFLOW_TRACKING_URI=FOLDER is a file, ..." -> said of the URI itself
        raise UserError(f"MLFLOW_TRACKING_URI={uri} cannot be written: {str(e).split('=', 1)[1]}") from None


def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class Tracker(Protocol):
    """What the Logger calls; each call that raises drops the tracker (see `forward`)."""

    name: str
    ids: dict | None  # what a resumed run needs to continue the tracked run (None: nothing)

    def log(self, step: int, scalars: dict) -> None: ...  # one metrics.jsonl row, at its step
    def text(self, step: int, tag: str, text: str) -> None: ...  # a sample
    def close(self, ok: bool, log_model: bool) -> None: ...  # end-of-run artifacts (when ok), then finish


def start(out_dir, config: dict, ids: dict | None, initial: int = 0) -> tuple[list[Tracker], dict]:
    """The trackers --report_to names, started (a resumed run's `ids` continue its tracked runs from
    step `initial`), and the ids to keep in the training state. A tracker that cannot start is left
    out with one warning line."""
    out_dir = Path(out_dir)
    names = parse(config.get("report_to", "tensorboard"))
    name = config.get("run_name") or out_dir.resolve().name
    project = config.get("project", "minitrain")
    ids = dict(ids or {})
    trackers = []
    for kind in names:
        try:
            if kind == "tensorboard":
                tracker = TensorBoard(out_dir)
            elif kind == "wandb":
                tracker = WandB(out_dir, name, project, config, ids.get("wandb"))
            else:
                tracker = MLflow(out_dir, name, project, config, ids.get("mlflow"), initial)
        except ImportError:  # tensorboard is in requirements.txt (wandb and mlflow were checked before)
            warn(f"{kind} is not installed: no {kind} logs")
            continue
        except Exception as e:
            warn(f"{kind} could not start ({first_line(e)}); logging goes on to metrics.jsonl without it")
            continue
        trackers.append(tracker)
        if tracker.ids is not None:
            ids[kind] = tracker.ids
    return trackers, ids


def forward(trackers: list[Tracker], method: str, *args) -> None:
    """Call `method` on every tracker; one that fails (a server gone) is dropped with one warning
    line, and training goes on with the others and metrics.jsonl."""
    for tracker in list(trackers):
        try:
            getattr(tracker, method)(*args)
        except Exception as e:
            trackers.remove(tracker)
            warn(f"{tracker.name} failed ({first_line(e)}); logging goes on to metrics.jsonl without it")


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def numbers(scalars: dict) -> dict[str, float]:
    """The numeric values of a row (what a tracker can plot)."""
    return {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float))}


def end_files(out_dir: Path, log_model: bool) -> tuple[list[Path], Path | None]:
    """(the report files that exist, final/ when --log_model and it exists) at the end of a run."""
    files = [out_dir / name for name in ARTIFACTS if (out_dir / name).is_file()]
    model = out_dir / "final" if log_model and (out_dir / "final").is_dir() else None
    return files, model


# ----------------------------------------------------------------------------------------------
# the trackers (see Tracker)


class TensorBoard:
    name, ids = "tensorboard", None  # nothing to continue: a resumed run appends to the same folder

    def __init__(self, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, scalars: dict) -> None:
        for k, v in numbers(scalars).items():
            self.writer.add_scalar(k, v, step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def close(self, ok: bool, log_model: bool) -> None:
        self.writer.close()


class WandB:
    """A W&B run in OUT_DIR/wandb: online with credentials and a reachable server, else offline."""

    name = "wandb"

    def __init__(self, out_dir: Path, name: str, project: str, config: dict, ids: dict | None):
        import wandb

        self.wandb, self.out_dir = wandb, out_dir
        self.mode, self.why = wandb_mode()
        settings = wandb.Settings(silent=True, console="off")  # no prompt, no banner, stdout left alone
        resume = dict(id=ids["id"], resume="allow") if ids else {}  # the same run id: W&B appends to it
        # the group: W&B's own WANDB_RUN_GROUP, which minitrain.sweep sets for its runs
        run = dict(project=project, name=name, dir=str(out_dir), mode=self.mode, settings=settings, **resume)
        self.run = wandb.init(**run, reinit="create_new")
        self.run.config.update(config, allow_val_change=True)  # a resumed run may change options
        self.ids = {"id": self.run.id, "project": project}

    def log(self, step: int, scalars: dict) -> None:
        self.run.log(numbers(scalars), step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: self.wandb.Table(columns=["step", "text"], data=[[step, text]])}, step=step)

    def close(self, ok: bool, log_model: bool) -> None:
        files, model = end_files(self.out_dir, log_model)
        if ok and files:
            report = self.wandb.Artifact(f"report-{self.run.id}", type="report")
            for path in files:
                report.add_file(str(path), name=str(path.relative_to(self.out_dir)))
            self.run.log_artifact(report)
        if ok and model:
            artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_dir(str(model))
            self.run.log_artifact(artifact)
        sync_dir = self.run.settings.sync_dir
        self.run.finish(exit_code=0 if ok else 1)
        if self.mode == "offline":
            print(
                f"W&B is offline ({self.why}): the run is in {sync_dir}; upload it with "
                f"`wandb sync {self.out_dir / 'wandb'}`",
                flush=True,
            )


def wandb_mode() -> tuple[str, str]:
    """(W&B's mode, why offline). The user's WANDB_MODE is kept, except that online needs
    credentials (WANDB_API_KEY or `wandb login`'s ~/.netrc entry) and a server that answers within
    3 s: W&B would prompt for a key, or wait for the network, and a run in CI has no one to answer."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun", "disabled"):
        return ("offline" if mode == "dryrun" else mode), "WANDB_MODE"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or WANDB_HOST)
    if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or _netrc_has(host)):
        return "offline", "no W&B credentials: WANDB_API_KEY is not set and `wandb login` was not run"
    if not _reachable(host.hostname or "", host.port or (443 if host.scheme == "https" else 80), timeout=3):
        return "offline", f"{host.hostname} cannot be reached"
    return "online", ""


def _netrc_has(host) -> bool:
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host.hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class MLflow:
    """An MLflow run in MLFLOW_TRACKING_URI's store, by default sqlite:///OUT_DIR/mlflow.db (the
    artifacts in OUT_DIR/mlartifacts), through MlflowClient."""

    name = "mlflow"

    def __init__(self, out_dir: Path, name: str, project: str, config: dict, ids: dict | None, initial: int = 0):
        from mlflow.entities import Param

        self.out_dir = out_dir
        self.uri = tracking_uri(out_dir)
        if _sqlite_path(self.uri):  # sqlite creates the file, not its folder
            _sqlite_path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = client = mlflow_client(self.uri)
        run = None
        if ids and ids.get("run_id"):
            try:
                run = client.get_run(ids["run_id"])
            except Exception:
                warn(f"MLflow run {ids['run_id']} is not in {self.uri}; a new MLflow run starts")
        resumed_from = None
        if run is not None and _last_step(client, run) > initial:
            # a crash after the last checkpoint: the run holds steps the resume trains again, and a
            # metric's history cannot be cut back, so the continuation is a new run that says so
            resumed_from = f"{run.info.run_id}@{initial}"
            warn(f"MLflow run {run.info.run_id} holds steps past step {initial}; a new MLflow run continues it")
            run = None
        if run is None:
            parent = os.environ.get(PARENT_ENV)
            tags = {"mlflow.parentRunId": parent} if parent else {}
            tags = (tags | {"minitrain.resumed_from": resumed_from} if resumed_from else tags) or None
            run = client.create_run(experiment(client, project, self.uri), run_name=name, tags=tags)
            before = {}
        else:
            client.update_run(run.info.run_id, status="RUNNING")
            before = run.data.params
        self.run_id = run.info.run_id
        params = {k: str(v)[:6000] for k, v in config.items()}  # MLflow's longest parameter value
        new = [Param(k, v) for k, v in params.items() if k not in before]
        for i in range(0, len(new), 100):  # log_batch takes at most 100 parameters
            client.log_batch(self.run_id, params=new[i : i + 100])
        for k, v in params.items():  # parameters cannot change: a resume's new values become tags
            if k in before and before[k] != v:
                client.set_tag(self.run_id, f"config.{k}", v)
        self.ids = {"run_id": self.run_id}

    def log(self, step: int, scalars: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numbers(scalars).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def text(self, step: int, tag: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"text/step-{step}/{tag}.txt")

    def close(self, ok: bool, log_model: bool) -> None:
        files, model = end_files(self.out_dir, log_model)
        if ok:
            for path in files:
                folder = str(path.parent.relative_to(self.out_dir))
                self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
            if model:
                self.client.log_artifacts(self.run_id, str(model), "final")
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
        print(f"MLflow: run {self.run_id} in {self.uri}", flush=True)


def _last_step(client, run) -> int:
    """The last step any metric of an MLflow run was logged at (-1: none)."""
    steps = [m.step for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
    return max(steps, default=-1)


def tracking_uri(out_dir) -> str:
    """MLflow's tracking URI: MLFLOW_TRACKING_URI, else sqlite:///OUT_DIR/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    for noisy in ("mlflow.store.db.utils", "alembic"):  # a new database's tables: a dozen INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return MlflowClient(uri)


def experiment(client, project: str, uri: str) -> str:
    """The id of the MLflow experiment named --project, created when new. In a local sqlite store
    (the default one too) its artifacts go beside the database, in mlartifacts/: MLflow's own
    default, ./mlruns, would be relative to wherever the command was started."""
    found = client.get_experiment_by_name(project)
    if found is not None:
        return found.experiment_id
    path = _sqlite_path(uri)
    return client.create_experiment(project, (path.resolve().parent / "mlartifacts").as_uri() if path else None)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:///PATH URI (None for any other store, or sqlite in memory)."""
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    return Path(path) if path else None


def mlflow_parent(out_dir, name: str, project: str, config: dict) -> tuple[object, str, dict]:
    """For minitrain.sweep: (client, the parent run's id, the environment of the sweep's runs). The
    runs log into the same store (the sweep's sqlite:///OUT_DIR/mlflow.db unless MLFLOW_TRACKING_URI
    is set) as children of one parent run."""
    from mlflow.entities import Param

    out_dir = Path(out_dir)
    uri = tracking_uri(out_dir)
    client = mlflow_client(uri)
    run_id = client.create_run(experiment(client, project, uri), run_name=name).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in config.items()])
    return client, run_id, {"MLFLOW_TRACKING_URI": uri, PARENT_ENV: run_id}
