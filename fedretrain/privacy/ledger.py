"""A site's privacy ledger: every DP-SGD run it ever did, kept on disk, and the ε they add up to.

Flower's Opacus example builds a new privacy engine every round and so reports the ε of one
round as if it were the total. Here the accountant's state is the site's whole composition
history, written atomically to a JSON file after every record, so ε accumulates across rounds,
retraining cycles and restarts, and a site can refuse training that would exceed its lifetime
budget before it starts. ε is computed from the history with :mod:`fedretrain.privacy.rdp`.

>>> from fedretrain.privacy.rdp import SampledGaussian
>>> ledger = PrivacyLedger(site="3")
>>> entry = ledger.record("v1/r1", SampledGaussian(1.5, 0.04, 1125), delta=1e-5)
>>> entry = ledger.record("v1/r2", SampledGaussian(1.5, 0.04, 1125), delta=1e-5)
>>> ledger.composition  # merged: one mechanism, 2,250 steps
(SampledGaussian(noise_multiplier=1.5, sample_rate=0.04, steps=2250),)
>>> round(ledger.epsilon(1e-5), 6)
7.329111
>>> decision = ledger.would_exceed([SampledGaussian(1.5, 0.04, 500)], budget=8.0, delta=1e-5)
>>> decision.allowed
False
>>> decision.reason
'site 3 declines: training would raise ε from 7.33 to 8.22 > budget 8.00 at δ=1e-05'
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedretrain.atomic import atomic_replace
from fedretrain.privacy.rdp import ORDERS, SampledGaussian, epsilon_from_rdp, merge, rdp_per_step

LEDGER_FORMAT = "fedretrain.privacy_ledger"
# Bump on any change to the file's layout; load() refuses newer versions. 2 adds a checksum.
LEDGER_VERSION = 2


class LedgerFormatError(ValueError):
    """A ledger file that cannot be read: not a ledger, a newer format, or inconsistent."""


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded training: what it ran and what it cost.

    ``epsilon`` is the site's cumulative ε at ``delta`` after this entry; ``epsilon_spent`` is
    how much this entry raised it (ε does not add up across entries; RDP does).
    """

    tag: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    epsilon_spent: float
    recorded_at: str  # UTC, ISO 8601

    @property
    def mechanism(self) -> SampledGaussian:
        return SampledGaussian(self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class Decision:
    """Whether a site may run planned training within its budget, and why."""

    allowed: bool
    epsilon_now: float
    epsilon_after: float
    budget: float | None
    delta: float
    reason: str


class PrivacyLedger:
    """The composition history of one site, optionally bound to a JSON file.

    Parameters
    ----------
    site : str or int
        The site's id, as messages and file names show it (stored as a string).
    path : Path or None
        Where :meth:`record` persists the ledger after every entry; None keeps it in memory
        (call :meth:`save` to write it). In simulation ``<run_dir>/privacy/site-<id>.json``,
        at a real site a file in its own state folder.
    """

    def __init__(self, site: str | int, path: Path | None = None) -> None:
        self.site = str(site)
        self.path = Path(path) if path is not None else None
        self._entries: list[LedgerEntry] = []
        self._rdp_cache: dict[tuple[float, float], np.ndarray] = {}
        self._rdp_total = np.zeros(len(ORDERS))

    # ------------------------------------------------------------------------- files

    @classmethod
    def open(cls, path: Path, site: str | int) -> PrivacyLedger:
        """The ledger at ``path`` if the file exists, else an empty one that will write there.

        Raises
        ------
        LedgerFormatError
            When the file is not a ledger this version can read, or belongs to another site.
        """
        path = Path(path)
        if not path.exists():
            return cls(site, path)
        ledger = cls.load(path)
        if ledger.site != str(site):
            raise LedgerFormatError(
                f"{path} is the ledger of site {ledger.site!r}, not {str(site)!r}: each site "
                "needs its own file"
            )
        return ledger

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        """Read a ledger written by :meth:`save`; later records go to the same file."""
        path = Path(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise LedgerFormatError(f"{path} is not valid JSON ({err})") from None
        try:
            return cls.from_state_dict(state, path)
        except LedgerFormatError as err:
            raise LedgerFormatError(f"{path}: {err}") from None

    def save(self, path: Path | None = None) -> None:
        """Write the ledger atomically (temporary file, fsync, rename, fsync of the folder)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("this ledger has no path: pass one to save() or to the constructor")
        _write_text(target, json.dumps(self.state_dict(), indent=1) + "\n")

    def state_dict(self) -> dict[str, Any]:
        """The ledger as plain JSON types: format, version, site, composition, entries and a
        checksum over the rest (:func:`_checksum`)."""
        state = {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "site": self.site,
            "accountant": "rdp",
            "composition": [asdict(m) for m in self.composition],
            "entries": [
                {
                    **asdict(e),
                    "epsilon": _number(e.epsilon),
                    "epsilon_spent": _number(e.epsilon_spent),
                }
                for e in self._entries
            ],
        }
        return {**state, "checksum": _checksum(state)}

    @classmethod
    def from_state_dict(cls, state: Any, path: Path | None = None) -> PrivacyLedger:
        """Rebuild a ledger from :meth:`state_dict`, checking its format and version."""
        if not isinstance(state, dict) or state.get("format") != LEDGER_FORMAT:
            raise LedgerFormatError(f"not a privacy ledger (no 'format': {LEDGER_FORMAT!r})")
        version = state.get("version")
        if not isinstance(version, int) or version < 1:
            raise LedgerFormatError(f"invalid ledger version {version!r}")
        if version > LEDGER_VERSION:
            raise LedgerFormatError(
                f"ledger format version {version} was written by a newer fedretrain; this one "
                f"reads versions up to {LEDGER_VERSION}: upgrade fedretrain (never delete the "
                "file: it is the site's privacy history)"
            )
        if state.get("accountant") != "rdp":
            raise LedgerFormatError(f"unknown accountant {state.get('accountant')!r}")
        if version >= 2:  # version 1 files have no checksum; the next save adds one
            body = {k: v for k, v in state.items() if k != "checksum"}
            if state.get("checksum") != _checksum(body):
                raise LedgerFormatError(
                    "its checksum does not match its contents: the file was damaged or edited. "
                    "Restore it from a backup; the site refuses to train on it, and the file is "
                    "left as it is (never delete it: it is the site's privacy history)"
                )
        ledger = cls(str(state.get("site")), path)
        try:
            for raw in state["entries"]:
                entry = LedgerEntry(
                    tag=str(raw["tag"]),
                    noise_multiplier=float(raw["noise_multiplier"]),
                    sample_rate=float(raw["sample_rate"]),
                    steps=int(raw["steps"]),
                    delta=float(raw["delta"]),
                    epsilon=float(raw["epsilon"]),
                    epsilon_spent=float(raw["epsilon_spent"]),
                    recorded_at=str(raw["recorded_at"]),
                )
                ledger._add(entry.mechanism)
                ledger._entries.append(entry)
            stored = tuple(SampledGaussian(**m) for m in state["composition"])
        except (KeyError, TypeError, ValueError) as err:
            raise LedgerFormatError(f"malformed ledger entry ({err!r})") from None
        if stored != ledger.composition:
            raise LedgerFormatError(
                "the stored composition does not equal the sum of the entries: the file was "
                "edited or corrupted"
            )
        return ledger

    # ------------------------------------------------------------------------- accounting

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every record, oldest first."""
        return tuple(self._entries)

    @property
    def composition(self) -> tuple[SampledGaussian, ...]:
        """The history as (σ, q, steps), entries with equal (σ, q) merged."""
        return merge(e.mechanism for e in self._entries)

    def epsilon(self, delta: float) -> float:
        """The site's cumulative ε at ``delta`` over everything recorded."""
        return _epsilon(self._rdp_total, delta)

    def epsilon_history(self, delta: float) -> list[tuple[str, float]]:
        """(tag, cumulative ε at ``delta``) after each entry: ε over time, for plots."""
        total = np.zeros(len(ORDERS))
        history = []
        for entry in self._entries:
            total = total + self._rdp_of(entry.mechanism)
            history.append((entry.tag, _epsilon(total, delta)))
        return history

    def record(self, tag: str, mechanism: SampledGaussian, delta: float) -> LedgerEntry:
        """Add a completed training to the history; persist it at once if bound to a file.

        Record *before* releasing the model the training produced: a crash then overstates ε
        (safe), never understates it.
        """
        before = self.epsilon(delta)
        self._add(mechanism)
        after = self.epsilon(delta)
        entry = LedgerEntry(
            tag=str(tag),
            noise_multiplier=float(mechanism.noise_multiplier),
            sample_rate=float(mechanism.sample_rate),
            steps=int(mechanism.steps),
            delta=float(delta),
            epsilon=after,
            epsilon_spent=after - before if math.isfinite(after) else math.inf,
            recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._entries.append(entry)
        if self.path is not None:
            self.save()
        return entry

    def would_exceed(
        self, planned: Iterable[SampledGaussian], budget: float | None, delta: float
    ) -> Decision:
        """Whether ``planned`` on top of the history keeps ε at ``delta`` within ``budget``.

        ``allowed`` is true exactly when the cumulative ε after the plan is at most the budget
        (always, for ``budget=None``). Nothing is recorded: the caller decides and logs.
        """
        now = self.epsilon(delta)
        total = self._rdp_total.copy()
        for mechanism in planned:
            total = total + self._rdp_of(mechanism)
        after = _epsilon(total, delta)
        rise = f"ε from {now:.2f} to {after:.2f}"
        if budget is None:
            reason = f"site {self.site} may train (no budget): {rise} at δ={delta:g}"
            return Decision(True, now, after, None, delta, reason)
        if after <= budget:
            reason = (
                f"site {self.site} may train: training would raise {rise} <= budget "
                f"{budget:.2f} at δ={delta:g}"
            )
            return Decision(True, now, after, budget, delta, reason)
        reason = (
            f"site {self.site} declines: training would raise {rise} > budget {budget:.2f} "
            f"at δ={delta:g}"
        )
        return Decision(False, now, after, budget, delta, reason)

    def _add(self, mechanism: SampledGaussian) -> None:
        self._rdp_total = self._rdp_total + self._rdp_of(mechanism)

    def _rdp_of(self, mechanism: SampledGaussian) -> np.ndarray:
        key = (float(mechanism.noise_multiplier), float(mechanism.sample_rate))
        if key not in self._rdp_cache:
            self._rdp_cache[key] = rdp_per_step(*key, orders=ORDERS)
        if mechanism.steps == 0:
            return np.zeros(len(ORDERS))
        return mechanism.steps * self._rdp_cache[key]

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(site={self.site!r}, path={self.path!r}, entries={len(self._entries)})"
        )


def _epsilon(total_rdp: np.ndarray, delta: float) -> float:
    # Nothing spent is ε = 0 exactly (the conversion alone would give a small positive value).
    return epsilon_from_rdp(total_rdp, delta, ORDERS)[0] if total_rdp.any() else 0.0


def _number(x: float) -> float | str:
    # JSON has no infinity; σ = 0 (no noise) makes ε infinite, written as the string "inf".
    return x if math.isfinite(x) else "inf"


def _write_text(path: Path, text: str) -> None:
    atomic_replace(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _checksum(state: dict[str, Any]) -> str:
    """sha256 over the ledger's JSON without the checksum (keys sorted). It catches accidental
    damage; a site's operator can always rewrite their own ledger consistently, which is why
    the server keeps its own account (:mod:`fedretrain.privacy.tracking`)."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
