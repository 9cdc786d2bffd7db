"""A numpy federation behind the retraining port, and a controller built on it.

Each site's concept in a period is a number θ (a sites × periods matrix); a model is a number
``w``. A site scores a model with accuracy ``max(0, 1 - |w - θ|)`` on its ``n`` examples, so
who wins where follows from the matrix by hand. A training round moves ``w`` towards the mean θ
of the sites: a fresh model (``age`` 0) jumps there at once, a trained one by at most
``step`` per round, so unlearning a far concept from warm weights is slow, as it is for a
flipped label, and a re-initialisation pays off.
"""

from __future__ import annotations

import functools
import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from safetensors.numpy import save_file

from fedretrain.config import (
    AdaptationConfig,
    ReleaseConfig,
    RetrainConfig,
    RunConfig,
    ScenarioConfig,
)
from fedretrain.metrics import EvalResult
from fedretrain.monitor.base import Detector
from fedretrain.monitor.monitor import Monitor
from fedretrain.monitor.stats import HistogramEdges, PeriodStats, WindowStats
from fedretrain.monitor.trigger import TriggerConfig, TriggerPolicy
from fedretrain.registry import Event, ModelVersion, Registry
from fedretrain.report import RunReport
from fedretrain.retraining.clustered import ClusteredController
from fedretrain.retraining.controller import Controller
from fedretrain.retraining.drift_watch import DriftWatch
from fedretrain.retraining.port import (
    CanaryRequest,
    CollectedStats,
    Evaluation,
    Serving,
    TrainedRound,
    Weights,
)


@pytest.fixture(autouse=True)
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules are under test here, not matplotlib: drawing timeline.png and metrics.png
    took most of each fake run's time. The plots are checked by the report tests."""
    monkeypatch.setattr("fedretrain.timeline.plot_timeline", lambda *args: None)
    monkeypatch.setattr("fedretrain.report.plot_metrics", lambda *args: None)


class Crash(Exception):
    """The server dies (SIGKILL, in spirit) in the middle of a request."""


def accuracy(w: float, theta: float) -> float:
    return max(0.0, 1.0 - abs(w - theta))


@dataclass
class FakeFederation:
    """Sites with a concept θ per period; see the module docstring."""

    concepts: np.ndarray  # (sites, periods)
    n: int = 100  # holdout examples per site
    train_n: int = 400  # training examples per site
    step: float = 0.1
    skip_rounds: bool = False  # every training round fails its quorum: weights come back unsent
    budget_rounds: int | None = None  # after this many trained rounds every site declines
    crash_after: int | None = None  # raise Crash at this request (counted over all requests)
    calls: list[tuple[str, int]] = field(default_factory=list)  # (request, period)
    canaries: dict[int, tuple[int, ...]] = field(default_factory=dict)  # period -> canary sites
    trained_rounds: int = 0
    drifted: dict[int, frozenset[int]] = field(default_factory=dict)  # round -> drifted sites
    trained_sites: list[tuple[int, ...] | None] = field(default_factory=list)  # each round's
    since: list[dict[int, int]] = field(default_factory=list)  # each round's buffer starts
    served: dict[int, dict[int, float]] = field(default_factory=dict)  # period -> site -> w
    memories: list[tuple[int, ...]] = field(default_factory=list)  # each evaluation's memory
    trainables: list[frozenset[str] | None] = field(default_factory=list)  # each round's
    anchors: list[float | None] = field(default_factory=list)  # each round's anchor w, if any
    # The proximal term's weight: a round with an anchor a moves towards the minimiser of
    # (w - θ)^2 + anchor_mu (w - a)^2, that is (θ + anchor_mu a) / (1 + anchor_mu).
    anchor_mu: float = 0.0

    @property
    def num_sites(self) -> int:
        return int(self.concepts.shape[0])

    def _called(self, what: str, period: int) -> None:
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise Crash(f"killed at request {len(self.calls)} ({what}, period {period})")
        self.calls.append((what, period))

    def train_round(
        self,
        server_round: int,
        weights: Weights,
        period: int,
        drifted: frozenset[int] = frozenset(),
        sites: frozenset[int] | None = None,
        evaluate_incoming: bool = False,
        since: dict[int, int] | None = None,
        trainable: frozenset[str] | None = None,
        anchor: Weights | None = None,
    ) -> TrainedRound:
        self._called("train", period)
        incoming = self._evaluation(weights, period) if evaluate_incoming else None
        self.drifted[self.trained_rounds] = drifted
        self.trained_sites.append(None if sites is None else tuple(sorted(sites)))
        self.since.append(dict(since or {}))
        self.trainables.append(trainable)
        self.anchors.append(None if anchor is None else float(anchor["w"][0]))
        spent = self.budget_rounds is not None and self.trained_rounds >= self.budget_rounds
        if self.skip_rounds or spent:
            return TrainedRound(weights, float("nan"), 0, incoming=incoming)
        self.trained_rounds += 1
        w, age = float(weights["w"][0]), int(weights["age"][0])
        training = sorted(sites) if sites is not None else list(range(self.num_sites))
        # Each site trains on its windows from its buffer's start: the mean θ of all of them.
        starts = {s: (since or {}).get(s, period) for s in training}
        windows = [self.concepts[s, p] for s in training for p in range(starts[s], period + 1)]
        target = float(np.mean(windows))
        if anchor is not None and self.anchor_mu > 0:
            a = float(anchor["w"][0])
            target = (target + self.anchor_mu * a) / (1 + self.anchor_mu)
        move = target - w if age == 0 else float(np.clip(target - w, -self.step, self.step))
        new = {"w": np.array([w + move]), "age": np.array([age + 1])}
        if trainable is not None:  # the other arrays stay as they were sent
            new = {k: (v if k in trainable else np.asarray(weights[k])) for k, v in new.items()}
        examples = {s: self.train_n * (period + 1 - starts[s]) for s in training}
        return TrainedRound(new, abs(target - w), len(training), examples, incoming)

    def scores(self, w: float, period: int) -> dict[int, tuple[int, int]]:
        return {
            s: (round(self.n * accuracy(w, float(self.concepts[s, period]))), self.n)
            for s in range(self.num_sites)
        }

    def evaluate(
        self, server_round: int, weights: Weights, period: int, memory: tuple[int, ...] = ()
    ) -> Evaluation:
        self._called("evaluate", period)
        self.memories.append(memory)
        if not memory:
            return self._evaluation(weights, period)
        w = float(weights["w"][0])  # the holdouts of the earlier periods, together
        scores = {s: (0, 0) for s in range(self.num_sites)}
        for p in memory:
            for s, (c, n) in self.scores(w, p).items():
                scores[s] = (scores[s][0] + c, scores[s][1] + n)
        correct = sum(c for c, _ in scores.values())
        total = sum(n for _, n in scores.values())
        confusion = np.array([[correct, total - correct], [0, 0]])
        return Evaluation(EvalResult(total, float(total - correct), confusion), len(scores), scores)

    def _evaluation(self, weights: Weights, period: int) -> Evaluation:
        scores = self.scores(float(weights["w"][0]), period)
        correct = sum(c for c, _ in scores.values())
        total = sum(n for _, n in scores.values())
        confusion = np.array([[correct, total - correct], [0, 0]])
        return Evaluation(EvalResult(total, float(total - correct), confusion), len(scores), scores)

    def collect_stats(
        self,
        server_round: int,
        weights: Weights,
        period: int,
        edges: HistogramEdges,
        canary: CanaryRequest | None = None,
        serving: Serving | None = None,
    ) -> CollectedStats:
        self._called("stats", period)
        if canary is not None:
            self.canaries[period] = canary.sites
        sites = {}
        model_scores: dict[int, dict[int, tuple[int, int]]] = {}
        for s in range(self.num_sites):
            served = canary.weights if canary is not None and s in canary.sites else weights
            theta = float(self.concepts[s, period])
            if serving is not None:
                served = serving.models[serving.assignment.get(s, serving.default)]
                model_scores[s] = {
                    c: (round(self.n * accuracy(float(m["w"][0]), theta)), self.n)
                    for c, m in serving.models.items()
                }
            self.served.setdefault(period, {})[s] = float(served["w"][0])
            correct = round(self.n * accuracy(float(served["w"][0]), theta))
            sites[s] = WindowStats(
                n=self.n,
                x_sum=np.array([self.n * theta]),
                x_sq_sum=np.array([self.n * (theta**2 + 1.0)]),
                hist=np.zeros((1, edges.bins)),
                label_counts=np.array([self.n, 0]),
                pred_counts=np.array([correct, self.n - correct]),
                confusion=np.array([[correct, self.n - correct], [0, 0]]),
                loss_sum=float(self.n - correct),
                maxprob_sum=0.9 * self.n,
            )
        return CollectedStats(PeriodStats(period, sites), 0, model_scores)


class FakeModels:
    """Fresh models start at w = 0 with age 0; the final model is a safetensors file."""

    trained: tuple[str, ...] | None = None  # every array trains
    head: tuple[str, ...] = ("w",)  # the transfer strategy re-initialises and trains w alone

    def fresh(self, seed: int) -> dict[str, np.ndarray]:
        return {"w": np.array([0.0]), "age": np.array([0])}

    def save(self, weights: Weights, path: Path) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path))


def config(
    num_periods: int,
    num_sites: int,
    retrain: dict[str, Any] | None = None,
    release: dict[str, Any] | None = None,
    adaptation: dict[str, Any] | None = None,
    policy: TriggerConfig | None = None,
) -> RunConfig:
    """A run config for the fake: the oracle policy (retrain at the true change points)."""
    cfg = RunConfig(
        # One period: a static run, whose config has no scenario.
        scenario=ScenarioConfig(name="fake", num_periods=num_periods)
        if num_periods > 1
        else ScenarioConfig(),
        policy=policy or TriggerConfig(name="oracle", on_drift=False, on_change_points=True),
        retrain=RetrainConfig(**{"max_rounds": 10, "patience": 2, **(retrain or {})}),
        release=ReleaseConfig(**{"site_margin": 1.0, **(release or {})}),
        strategy=OmegaConf.create({"_target_": "fake.FedAvg"}),
        adaptation=AdaptationConfig(**(adaptation or {})),
    )
    cfg.runtime.num_clients = num_sites
    return cfg


def change_points(concepts: np.ndarray) -> list[int]:
    """Periods where any site's concept differs from the period before."""
    return [t for t in range(1, concepts.shape[1]) if (concepts[:, t] != concepts[:, t - 1]).any()]


MakeController = Callable[..., tuple[Controller, FakeFederation]]


def build_controller(
    base: Path,
    concepts: np.ndarray,
    *,
    retrain: dict[str, Any] | None = None,
    release: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    federation: FakeFederation | None = None,
    points: list[int] | None = None,
    fixed_rounds: int | None = None,
    detectors: list[Detector] | None = None,
    site_changes: dict[int, list[tuple[int, int]]] | None = None,
    adaptation: dict[str, Any] | None = None,
    policy: TriggerConfig | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[Controller, FakeFederation]:
    concepts = np.asarray(concepts, dtype=np.float64)
    cfg = config(concepts.shape[1], concepts.shape[0], retrain, release, adaptation, policy)
    run_dir = run_dir or base / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    federation = federation or FakeFederation(concepts)
    points = change_points(concepts) if points is None else points
    out = io.StringIO()
    kind = ClusteredController if cfg.adaptation.clustered else Controller
    controller = kind(
        cfg,
        federation,
        DriftWatch(Monitor(detectors or []), TriggerPolicy(cfg.policy, points)),
        FakeModels(),
        run_dir,
        RunReport(run_dir, 0, out),
        num_features=1,
        change_points=points,
        site_changes=site_changes,
        config_hash="fake",
        fixed_rounds=fixed_rounds,
        out=out,
        resume=resume,
        **({"truth": concepts.astype(np.int64)} if cfg.adaptation.oracle else {}),
        **({"clock": clock} if clock is not None else {}),
    )
    return controller, federation


@pytest.fixture
def make_controller(tmp_path: Path) -> MakeController:
    """``make_controller(concepts, retrain=..., release=..., run_dir=..., resume=...,
    federation=..., points=..., fixed_rounds=..., detectors=..., site_changes=...)``: a
    controller on a fake federation writing to ``tmp_path/run``; the oracle policy retrains
    at ``points``, by default the concepts' change points."""
    return functools.partial(build_controller, tmp_path)


def run_killed(
    life: Callable[[bool, int], Controller], lives: Sequence[int], limit: int = 300
) -> int:
    """Run a controller to its end, each life killed at the next of ``lives`` requests
    (cycled) and resumed from the folder by the next; the number of kills.
    ``life(resume, crash_after)`` builds one life's controller."""
    crashes = 0
    for n, crash_after in enumerate(itertools.cycle(lives)):
        assert n < limit, "the resumed run makes no progress"
        controller = life(n > 0, crash_after)
        try:
            controller.run()
            return crashes
        except Crash:
            crashes += 1
            controller.registry.close()
    raise AssertionError("unreachable: itertools.cycle is endless")


def versions(run_dir: Path) -> list[ModelVersion]:
    """The run's registry after it closed it."""
    with Registry(run_dir) as registry:
        return registry.versions()


def events(run_dir: Path, kind: str | None = None) -> list[Event]:
    with Registry(run_dir) as registry:
        return registry.events(kind=kind)


def champion(run_dir: Path) -> tuple[int, dict[str, np.ndarray]]:
    """The serving version and its weights."""
    with Registry(run_dir) as registry:
        version = registry.champion()
        assert version is not None
        return version.version, registry.load(version.version)
