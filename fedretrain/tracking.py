"""Experiment tracking: the run, as it goes, recorded in MLflow or TensorBoard as well as in its
folder.

The run folder stays the record (every table, plot, decision and model is there); a tracker
mirrors it for the tools people compare runs with. :class:`MlflowTracker` writes one MLflow run
per fedretrain run: the config as params, each round's and period's numbers as metrics with
their step (``round/...`` at the server round, ``period/...`` at the period), the folder's
tables, plots and summary as artifacts at the end, and each registry version as a version of one
registered model, with the aliases ``champion`` and ``challenger`` (MLflow's stages are
deprecated) and the lineage as tags.

A resumed run goes on in the same MLflow run (``tracking.json`` in the run folder holds its id
and the versions mirrored so far).

:class:`TensorboardTracker` writes the same numbers as TensorBoard scalars in the run folder's
``tensorboard/``: ``rounds/`` at the server round, ``periods/`` at the period (two TensorBoard
runs, since the two steps count different things), so ``tensorboard --logdir outputs`` shows
every run by its folder. A resumed run hides what the crashed process logged past the point it
resumes from (TensorBoard's purge step), so each chart reads as the uninterrupted run's.

Both log ε per site at each round of a DP-SGD run (``epsilon/site_<id>``, for up to
:data:`SITE_SERIES` sites; ``epsilon/max`` and ``epsilon/median`` always). A tracking failure (a
server down, a bad URI, a folder that cannot be written) is one warning, and tracking stops for
the rest of the run; the run goes on, and nothing is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedretrain.atomic import atomic_replace

if TYPE_CHECKING:
    from fedretrain.config import RunConfig, TrackingConfig
    from fedretrain.registry import Registry
    from fedretrain.report import RoundRow
    from fedretrain.timeline import PeriodRow

log = logging.getLogger(__name__)

STATE_FILE = "tracking.json"
PARENT_ENV = "FEDRETRAIN_MLFLOW_PARENT_RUN"  # set by fedretrain compare and -m sweeps
DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS = (
    "summary.json",
    "config.yaml",
    "metrics.csv",
    "timeline.csv",
    "decisions.jsonl",
    "rejections.csv",
    "privacy.csv",
    "metrics.png",
    "timeline.png",
    "privacy.png",
    "simulate.log",
    "report.html",
)
PARAM_LIMIT = 6000  # MLflow's longest param value
SITE_SERIES = 64  # sites logged one by one; a larger federation logs ε's max and median only
TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    """What the retraining controller tells a tracker, as the run goes."""

    def round(self, row: RoundRow, epsilon: Mapping[int, float]) -> None: ...

    def period(self, row: PeriodRow, registry: Registry) -> None: ...

    def finish(self, summary: Mapping[str, object], registry: Registry) -> None: ...


class NoTracking:
    """The default: the run folder alone."""

    def round(self, row: RoundRow, epsilon: Mapping[int, float]) -> None:
        pass

    def period(self, row: PeriodRow, registry: Registry) -> None:
        pass

    def finish(self, summary: Mapping[str, object], registry: Registry) -> None:
        pass


def build_tracker(cfg: RunConfig, run_dir: Path, config_yaml: str) -> Tracker:
    """The tracker ``cfg.tracking`` asks for (:class:`NoTracking` for ``backend=none``)."""
    backend = cfg.tracking.backend.value
    if backend == "none":
        return NoTracking()
    if backend == "tensorboard":
        return TensorboardTracker(run_dir)
    return MlflowTracker(cfg, run_dir, config_yaml)


class _Guarded:
    """A tracker whose first failure is one warning and ends its tracking, never the run."""

    run_dir: Path
    failed = False

    def _where(self) -> str:
        raise NotImplementedError

    def _safely(self, call: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            call()
        except Exception as err:  # a tracking problem must never stop the federation
            self.failed = True
            log.warning(
                "tracking to %s failed (%s: %s); the run goes on without it, and its folder %s "
                "holds everything",
                self._where(),
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
                self.run_dir,
            )


class TensorboardTracker(_Guarded):
    """TensorBoard scalars in ``run_dir/tensorboard`` (see the module's text)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.logdir = run_dir / TENSORBOARD_DIR
        self._writers: dict[str, Any] = {}

    def round(self, row: RoundRow, epsilon: Mapping[int, float]) -> None:
        def log_round() -> None:
            step = int(row.round)
            writer = self._writer("rounds", step)
            for key, value in _numbers("round", asdict(row)).items():
                writer.add_scalar(key, value, step)
            for key, value in epsilon_series(epsilon).items():
                writer.add_scalar(key, value, step)
            writer.flush()

        self._safely(log_round)

    def period(self, row: PeriodRow, registry: Registry) -> None:
        def log_period() -> None:
            step = int(row.period)
            writer = self._writer("periods", step)
            for key, value in _numbers("period", asdict(row)).items():
                writer.add_scalar(key, value, step)
            writer.flush()

        self._safely(log_period)

    def finish(self, summary: Mapping[str, object], registry: Registry) -> None:
        def close() -> None:
            for writer in self._writers.values():
                writer.close()

        self._safely(close)

    def _where(self) -> str:
        return f"TensorBoard in {self.logdir}"

    def _writer(self, series: str, step: int) -> Any:
        """The writer of ``series``, made at its first step; a resumed run purges from there."""
        if series not in self._writers:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            folder = self.logdir / series
            resumed = folder.is_dir() and any(folder.glob("events.out.tfevents.*"))
            self._writers[series] = SummaryWriter(str(folder), purge_step=step if resumed else None)
        return self._writers[series]


class MlflowTracker(_Guarded):
    """One MLflow run for the fedretrain run in ``run_dir`` (see the module's text)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, config_yaml: str) -> None:
        t = cfg.tracking
        self.uri = absolute(t.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)
        self.model_name = t.model_name or f"fedretrain-{cfg.task.name}"
        self.register_models = t.register_models
        self.run_dir = run_dir
        self.client: Any = None
        self.run_id = ""
        self.mirrored: dict[str, str] = {}  # fedretrain version -> MLflow model version
        self._statuses: dict[str, str] = {}  # the status tag last set on each version
        # A server that does not answer should cost seconds, not MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._safely(lambda: self._start(cfg, t.experiment, config_yaml))

    # ------------------------------------------------------------------ the Tracker calls

    def round(self, row: RoundRow, epsilon: Mapping[int, float]) -> None:
        numbers = {**_numbers("round", asdict(row)), **epsilon_series(epsilon)}
        self._safely(lambda: self._metrics(numbers, int(row.round)))

    def period(self, row: PeriodRow, registry: Registry) -> None:
        def log_period() -> None:
            self._metrics(_numbers("period", asdict(row)), int(row.period))
            self._mirror(registry)

        self._safely(log_period)

    def finish(self, summary: Mapping[str, object], registry: Registry) -> None:
        def log_end() -> None:
            self._metrics(_numbers("summary", summary), 0)
            for name in ARTIFACTS:
                if (self.run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            self._mirror(registry)
            self.client.set_terminated(self.run_id)

        self._safely(log_end)

    # ------------------------------------------------------------------ internals

    def _start(self, cfg: RunConfig, experiment: str, config_yaml: str) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient  # mlflow-skinny: only when asked for

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its schema migrations
        self.client = MlflowClient(tracking_uri=self.uri)
        state = self._state()
        if state.get("uri") == self.uri and state.get("run_id"):  # a resumed run
            self.run_id = str(state["run_id"])
            self.mirrored = {str(k): str(v) for k, v in state.get("versions", {}).items()}
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        tags = {
            "fedretrain.run_dir": str(self.run_dir.resolve()),
            "fedretrain.scenario": cfg.scenario.name,
            "fedretrain.policy": cfg.policy.name,
            "fedretrain.task": cfg.task.name,
        }
        parent = os.environ.get(PARENT_ENV)
        if parent:  # one of the runs of a `fedretrain compare`
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        self._save_state()
        params = [Param(k, v[:PARAM_LIMIT]) for k, v in flat_params(config_yaml).items()]
        for start in range(0, len(params), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _metrics(self, numbers: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, number, now, step) for key, number in numbers.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def _mirror(self, registry: Registry) -> None:
        """New registry versions as MLflow model versions; the aliases as the registry's."""
        if not self.register_models:
            return
        from mlflow.exceptions import MlflowException

        versions = registry.versions()
        if not versions:
            return
        if not self.mirrored:
            try:
                self.client.create_registered_model(
                    self.model_name, description="fedretrain model versions, mirrored"
                )
            except MlflowException as err:
                if "already exists" not in str(err).lower():
                    raise
        new = [v for v in versions if str(v.version) not in self.mirrored]
        artifact_uri = self.client.get_run(self.run_id).info.artifact_uri if new else ""
        for version in new:
            key = str(version.version)
            path = registry.model_path(version.version)
            self.client.log_artifact(self.run_id, str(path), artifact_path="models")
            tags = {
                "fedretrain.version": key,
                "fedretrain.parent": "" if version.parent is None else str(version.parent),
                "fedretrain.trigger": version.trigger,
                "fedretrain.reason": version.reason[:5000],
                "fedretrain.period": str(version.period),
                "fedretrain.rounds": str(version.rounds),
                "fedretrain.sha256": version.sha256,
            }
            created = self.client.create_model_version(
                self.model_name,
                source=f"{artifact_uri}/models/{path.name}",
                run_id=self.run_id,
                tags=tags,
            )
            self.mirrored[key] = str(created.version)
            self._save_state()
        for version in versions:  # statuses change: promoted, rejected, rolled back
            key, status = str(version.version), version.status.value
            if self._statuses.get(key) != status:
                self.client.set_model_version_tag(
                    self.model_name, self.mirrored[key], "fedretrain.status", status
                )
                self._statuses[key] = status
        aliases = registry.aliases()
        for ours, theirs in (("champion", "champion"), ("candidate", "challenger")):
            if ours in aliases:
                mlflow_version = self.mirrored[str(aliases[ours])]
                self.client.set_registered_model_alias(self.model_name, theirs, mlflow_version)
            else:
                with contextlib.suppress(MlflowException):  # it was never set
                    self.client.delete_registered_model_alias(self.model_name, theirs)

    def _where(self) -> str:
        return f"MLflow at {self.uri}"

    def _state(self) -> dict[str, Any]:
        path = self.run_dir / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        text = json.dumps({"uri": self.uri, "run_id": self.run_id, "versions": self.mirrored})
        atomic_replace(self.run_dir / STATE_FILE, lambda tmp: tmp.write_text(text))


class ParentRun:
    """The MLflow run of a ``fedretrain compare`` or a ``-m`` sweep: each run nests under it,
    and it keeps their table. Tracking failures cost a warning, as for a run."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @property
    def env(self) -> dict[str, str]:
        """What the child runs need to nest under this one."""
        return {PARENT_ENV: self.run_id}

    @classmethod
    def open(
        cls, tracking: TrackingConfig, scenario: str, out: Path, name: str
    ) -> ParentRun | None:
        """The parent run ``name`` for the runs in ``out``; None without ``tracking=mlflow``
        or when MLflow cannot be reached (then each run tracks on its own, or warns)."""
        if tracking.backend.value == "none":
            return None
        uri = absolute(tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)
        try:
            from mlflow.tracking import MlflowClient

            logging.getLogger("mlflow").setLevel(logging.WARNING)
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(tracking.experiment)
            experiment_id = (
                found.experiment_id if found else client.create_experiment(tracking.experiment)
            )
            tags = {"fedretrain.runs": str(out.resolve()), "fedretrain.scenario": scenario}
            run = client.create_run(experiment_id, run_name=name, tags=tags)
        except Exception as err:  # the runs go on, each tracked on its own
            log.warning("tracking the runs of %s at %s failed (%s); they go on", out, uri, err)
            return None
        return cls(client, run.info.run_id)

    def close(self, out: Path, complete: bool, files: Sequence[str]) -> None:
        """Keep ``files`` of ``out`` and end the run (KILLED when interrupted)."""
        try:
            for name in files:
                if (out / name).is_file():
                    self.client.log_artifact(self.run_id, str(out / name))
            self.client.set_terminated(self.run_id, status="FINISHED" if complete else "KILLED")
        except Exception as err:
            log.warning("tracking the comparison failed (%s); its folder %s holds it", err, out)


def absolute(uri: str) -> str:
    """A relative SQLite store made absolute, so that a resume from another folder finds it.

    >>> absolute("sqlite:////data/mlflow.db"), absolute("http://mlflow:5000")
    ('sqlite:////data/mlflow.db', 'http://mlflow:5000')
    >>> absolute("sqlite:///mlflow.db") == "sqlite:///" + str(Path("mlflow.db").resolve())
    True
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def flat_params(config_yaml: str) -> dict[str, str]:
    """The run's config as MLflow params: dotted keys, values as text.

    >>> flat_params("train:\\n  lr: 0.1\\n  optimizer: sgd\\nmonitor:\\n  detectors: [a, b]\\n")
    {'train.lr': '0.1', 'train.optimizer': 'sgd', 'monitor.detectors': "['a', 'b']"}
    """
    import yaml

    out: dict[str, str] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = str(node)

    walk(yaml.safe_load(config_yaml), "")
    return out


def epsilon_series(epsilon: Mapping[int, float]) -> dict[str, float]:
    """ε's series at a round: each site's up to :data:`SITE_SERIES` sites, max and median.

    >>> epsilon_series({2: 1.5, 0: 0.5, 1: 1.0})
    {'epsilon/max': 1.5, 'epsilon/median': 1.0, 'epsilon/site_0': 0.5, 'epsilon/site_1': 1.0, \
'epsilon/site_2': 1.5}
    >>> epsilon_series({})
    {}
    """
    if not epsilon:
        return {}
    values = sorted(epsilon.values())
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    out = {"epsilon/max": values[-1], "epsilon/median": median}
    if len(epsilon) <= SITE_SERIES:
        out.update({f"epsilon/site_{site}": epsilon[site] for site in sorted(epsilon)})
    return out


def _numbers(prefix: str, values: Mapping[str, object]) -> dict[str, float]:
    """The finite numbers of ``values``, keyed ``prefix/key``."""
    return {
        f"{prefix}/{key}": number
        for key, value in values.items()
        if (number := _number(value)) is not None
    }


def _number(value: object) -> float | None:
    """A finite number to log, or None (text, lists, NaN and bools are left out)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
