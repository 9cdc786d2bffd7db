"""Crash-safe checkpoints of a drift run, so that a killed run resumes where it was.

After every completed training round and every completed period the controller saves its
position: the period, the server round, Python's ``random`` state (Flower samples sites with
it), the histogram edges, the lifecycle state (canary, watch) and, inside a retrain, the
plateau search's counters and arrays. Arrays go to safetensors files named by server round and
the state to ``state.json``, each replaced atomically; ``state.json`` is written last and names
its files, so a crash at any moment leaves the previous complete checkpoint. Each period's
statistics are kept as well, and the holdout scores of each model promoted (the monitor's seed):
the monitor and the trigger policy are rebuilt on resume by replaying them, which needs no
pickled objects.

The logs a run appends to (``metrics.csv``, ``rejections.csv``, ``timeline.csv``,
``decisions.jsonl``, ``privacy.csv``) may hold rows written after the last checkpoint; resume
cuts them back to it (:mod:`fedretrain.run_logs`) before going on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fedretrain.atomic import atomic_replace
from fedretrain.monitor.stats import PeriodStats, WindowStats
from fedretrain.retraining.release_state import ReleaseState

STATE_FILE = "state.json"
FORMAT = "fedretrain.checkpoint"
VERSION = 2  # 2: the lifecycle's state as a typed ReleaseState; 1: canary/watch dicts

Arrays = dict[str, np.ndarray]
T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: missing, unreadable, or from a newer fedretrain."""


@dataclass
class Plateau:
    """A retrain's plateau search between two rounds (:mod:`fedretrain.retraining.controller`)."""

    period: int
    action: str  # initial, warm, reinit, or "reuse vN" while a reuse is being released
    rounds: int = 0
    since_best: int = 0
    best_acc: float = -1.0
    best_action: str = ""
    baseline: float = -1.0
    target: float | None = None
    epsilon_mark: dict[str, float] | None = None
    reused: int | None = None  # the former champion chosen for reuse, released before training
    trained: int = 0  # rounds that aggregated some site's update (``rounds`` counts them all)
    samples: dict[str, int] = field(default_factory=dict)  # site -> training examples in them
    # A static run's round whose evaluation is still to come (one message wave per round):
    # [round, train loss or None, sites that trained, seconds]; its metrics.csv row waits.
    pending: list[Any] | None = None
    key: str | None = None  # adaptation=clustered: the registry key of the training under way


@dataclass
class RunState:
    """Where a drift run is: everything besides the registry and the per-period statistics."""

    completed_period: int = -1  # -1: period 0 (initial training) not finished yet
    server_round: int = 0
    # One wave per round: site-rounds of retrain rounds trained ahead of a decision that
    # stopped or re-initialised the search, and dropped (they cost what a kept round costs).
    ahead_site_rounds: int = 0
    random_state: list[Any] = field(default_factory=list)
    edges: list[list[float]] | None = None
    release: ReleaseState = field(default_factory=ReleaseState)  # canary, watch
    plateau: Plateau | None = None  # a retrain under way
    period_started: list[float] | None = None  # [period, Unix time] of the latest period's start
    # False for a run begun under checkpoint format 1, whose monitor started afresh after every
    # retrain, even one the gate rejected: its replay, and its later periods, keep that rule.
    keep_reference_on_reject: bool = True
    clusters: dict[str, Any] | None = None  # adaptation=clustered: its state at period end
    # adaptation=clustered: the trainings of the period under way that are done, by registry
    # key (what each produced), so a resumed period does not train them again.
    trainings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # policy.windows / policy.max_rounds_per_day: the trigger that waits ([period, cause]), and
    # the rounds trained on the latest day that trained ([ISO date, rounds]).
    waiting: list[Any] | None = None
    day_rounds: list[Any] | None = None

    def capture_random(self) -> None:
        version, internal, gauss = random.getstate()
        self.random_state = [version, list(internal), gauss]

    def restore_random(self) -> None:
        if self.random_state:
            version, internal, gauss = self.random_state
            random.setstate((version, tuple(internal), gauss))


class CheckpointStore:
    """The ``checkpoint/`` folder of a run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "stats").mkdir(parents=True, exist_ok=True)

    @property
    def exists(self) -> bool:
        return (self.folder / STATE_FILE).exists()

    def save(self, state: RunState, arrays: Mapping[str, Arrays]) -> None:
        """Write ``arrays`` (name → state dict) and then ``state`` naming them."""
        names = {}
        for name, tensors in arrays.items():
            file = f"{name}-r{state.server_round}.safetensors"
            contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
            _save_arrays(self.folder / file, contiguous)
            names[name] = file
        # Field by field: asdict would deep-copy the random state's 625 numbers on every save.
        values = {f.name: getattr(state, f.name) for f in fields(state)}
        values["release"] = state.release.to_dict()
        values["plateau"] = None if state.plateau is None else asdict(state.plateau)
        record = {"format": FORMAT, "version": VERSION, "state": values, "arrays": names}
        # No indent: json's C encoder, several times faster (a checkpoint is saved every round).
        text = json.dumps(record, default=_json_default, allow_nan=True)
        atomic_replace(self.folder / STATE_FILE, lambda tmp: tmp.write_text(text))
        keep = set(names.values()) | {STATE_FILE, "stats"}
        for path in self.folder.iterdir():
            if path.name not in keep and path.suffix == ".safetensors":
                path.unlink(missing_ok=True)

    def load(self) -> tuple[RunState, dict[str, Arrays]]:
        return read_checkpoint(self.folder)

    def save_stats(self, stats: PeriodStats) -> None:
        """Keep a period's statistics (every site's) for replay on resume."""
        tensors = {
            f"{site}/{name}": np.ascontiguousarray(value)
            for site, window in stats.sites.items()
            for name, value in window.to_arrays().items()
        }
        _save_arrays(self._stats_path(stats.period), tensors)

    def load_stats(self, period: int) -> PeriodStats | None:
        path = self._stats_path(period)
        if not path.exists():
            return None
        by_site: dict[int, dict[str, np.ndarray]] = {}
        for key, value in load_file(path).items():
            site, name = key.split("/", 1)
            by_site.setdefault(int(site), {})[name] = value
        return PeriodStats(period, {s: WindowStats.from_arrays(a) for s, a in by_site.items()})

    def save_model_scores(
        self, period: int, scores: Mapping[int, Mapping[int, tuple[int, int]]]
    ) -> None:
        """Keep a period's per-model scores (``adaptation=clustered``: site -> cluster ->
        (correct, examples)) beside its statistics. Saved before them: kept statistics
        without their scores do not happen."""
        rows = [
            [s, c, n, k] for s, by in sorted(scores.items()) for c, (n, k) in sorted(by.items())
        ]
        text = json.dumps(rows)
        atomic_replace(self._scores_path(period), lambda tmp: tmp.write_text(text))

    def load_model_scores(self, period: int) -> dict[int, dict[int, tuple[int, int]]] | None:
        """:meth:`save_model_scores`'s scores; None if none were kept for ``period``."""
        path = self._scores_path(period)
        if not path.exists():
            return None
        out: dict[int, dict[int, tuple[int, int]]] = {}
        for site, cluster, correct, examples in json.loads(path.read_text()):
            out.setdefault(int(site), {})[int(cluster)] = (int(correct), int(examples))
        return out

    def save_seed(self, period: int, scores: Mapping[int, tuple[int, int]]) -> None:
        """Keep the holdout scores of the model promoted at ``period``, the monitor's new
        reference (:class:`~fedretrain.monitor.base.Seed`), for replay on resume."""
        text = json.dumps([[site, c, n] for site, (c, n) in sorted(scores.items())])
        atomic_replace(self._seed_path(period), lambda tmp: tmp.write_text(text))

    def load_seed(self, period: int) -> dict[int, tuple[int, int]] | None:
        """:meth:`save_seed`'s scores; None if no model was promoted at ``period`` (or the run
        predates seeds)."""
        path = self._seed_path(period)
        if not path.exists():
            return None
        return {int(site): (int(c), int(n)) for site, c, n in json.loads(path.read_text())}

    def drop_seeds_after(self, period: int) -> None:
        """Forget the seeds of periods after ``period`` (resume runs them again)."""
        for path in (self.folder / "stats").glob("p*.seed.json"):
            if int(path.name[1:].split(".", 1)[0]) > period:
                path.unlink()

    def _stats_path(self, period: int) -> Path:
        return self.folder / "stats" / f"p{period}.safetensors"

    def _scores_path(self, period: int) -> Path:
        return self.folder / "stats" / f"p{period}.scores.json"

    def _seed_path(self, period: int) -> Path:
        return self.folder / "stats" / f"p{period}.seed.json"


def read_checkpoint(folder: Path) -> tuple[RunState, dict[str, Arrays]]:
    """The checkpoint in ``folder`` (written by :meth:`CheckpointStore.save`), read without
    creating or changing anything; a :class:`CheckpointError` naming what is wrong."""
    path = folder / STATE_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: nothing to resume") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fedretrain checkpoint")
    version = record.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer fedretrain (checkpoint version {version!r} > "
            f"{VERSION}); upgrade fedretrain to resume it"
        )
    try:
        state = _state(dict(record["state"]))
        files = dict(record["arrays"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path} is damaged: {err!r}; it is left as it is") from None
    arrays = {}
    for name, file in files.items():
        try:
            arrays[name] = load_file(folder / file)
        except (FileNotFoundError, OSError, SafetensorError) as err:
            raise CheckpointError(f"checkpoint file {folder / file}: {err}") from None
    return state, arrays


def _state(raw: dict[str, Any]) -> RunState:
    plateau = raw.pop("plateau")
    if "release" in raw:
        release = ReleaseState.from_dict(raw.pop("release"))
    else:  # format 1
        release = ReleaseState.from_dict({"canary": raw.pop("canary"), "watch": raw.pop("watch")})
        raw["keep_reference_on_reject"] = False
    return RunState(**raw, release=release, plateau=None if plateau is None else Plateau(**plateau))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _save_arrays(path: Path, arrays: Arrays) -> None:
    atomic_replace(path, lambda tmp: save_file(arrays, tmp))
