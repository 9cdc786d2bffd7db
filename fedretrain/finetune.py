"""Fine-tuning: a pretrained start, frozen parameters and per-group learning rates.

Plain PyTorch, no Flower. Every process of a run (the server, each site) builds the task's
model, then :func:`load_pretrained` reads ``task.model.pretrained`` into it and :func:`freeze`
turns off the gradients of the parameters ``train.freeze`` names; :func:`lr_scales` gives each
trainable parameter its ``train.lr_groups`` multiplier. A pattern is a parameter name, a module
prefix (``features`` covers ``features.0.weight``) or an ``fnmatch`` pattern
(``classifier.*.bias``).

Frozen parameters are constants of the run, like the data: they never travel
(:class:`Frozen` drops them from every message), so neither aggregation, reply validation nor
DP-SGD's clipping and noise ever see them. A site checks that its frozen arrays are the
server's by their digest.

>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
>>> freeze(net, ["0"])
('0.weight', '0.bias')
>>> trainable_names(net)
('2.weight', '2.bias')
>>> lr_scales(net, {"2.bias": 0.5})
[1.0, 0.5]
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedretrain.errors import ConfigError
from fedretrain.retraining.port import Weights, digest

TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def matches(name: str, pattern: str) -> bool:
    """Whether parameter ``name`` falls under ``pattern``: the name itself, a module prefix,
    or an ``fnmatch`` pattern.

    >>> matches("features.0.weight", "features"), matches("features.0.weight", "feat")
    (True, False)
    >>> matches("classifier.2.bias", "classifier.*.bias")
    True
    """
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did: the arrays loaded from the file, the model's arrays
    left at their initialisation (absent from the file, or shaped otherwise), and the file's
    arrays the model has no place for."""

    path: Path
    loaded: tuple[str, ...]
    kept: tuple[str, ...]
    ignored: tuple[str, ...]

    @property
    def partial(self) -> bool:
        return bool(self.kept or self.ignored)

    def line(self) -> str:
        """One line for the run's output."""
        text = f"task.model.pretrained: loaded {len(self.loaded)} arrays from {self.path}"
        if self.kept:
            text += f"; kept {len(self.kept)} at their initialisation ({', '.join(self.kept)})"
        if self.ignored:
            text += f"; ignored {len(self.ignored)} of the file's ({', '.join(self.ignored)})"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "loaded": list(self.loaded),
            "kept": list(self.kept),
            "ignored": list(self.ignored),
        }


def read_state(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or of a PyTorch state dict read with
    ``torch.load(weights_only=True)`` (``.pt``, ``.pth``, ``.bin``; never unpickled). A
    checkpoint that keeps its state dict under ``"state_dict"`` or ``"model"`` is read from
    there."""
    file = Path(path).expanduser()
    key = f"task.model.pretrained={path}"
    if not file.is_file():
        raise ConfigError([f"{key}: no such file; give the path of a .safetensors or .pt file"])
    if file.suffix in TORCH_SUFFIXES:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # pickles of anything but tensors, or a damaged file
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch's colour codes
            first = text.splitlines()[0] if text else type(err).__name__
            raise ConfigError(
                [
                    f"{key}: not a PyTorch state dict torch.load(weights_only=True) can read "
                    f"({first}); save one with torch.save(model.state_dict(), path), or as "
                    "safetensors"
                ]
            ) from None
        for nested in ("state_dict", "model"):
            if isinstance(state, Mapping) and isinstance(state.get(nested), Mapping):
                state = state[nested]
        bad = [] if isinstance(state, Mapping) else [type(state).__name__]
        bad += [str(k) for k, v in getattr(state, "items", dict)() if not torch.is_tensor(v)]
        if bad:
            raise ConfigError([f"{key}: not a state dict of tensors (found {', '.join(bad[:5])})"])
        return {str(k): v for k, v in state.items()}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(
            [
                f"{key}: not a readable safetensors file ({err}); a PyTorch state dict must "
                f"end in one of {', '.join(TORCH_SUFFIXES)}"
            ]
        ) from None


def load_pretrained(model: nn.Module, path: Path | str, strict: bool = True) -> LoadReport:
    """Load ``path``'s arrays into ``model`` in place, by name.

    With ``strict`` every array of the model must be in the file with its shape, and nothing
    else; otherwise the arrays that fit are loaded and the rest kept at their initialisation
    (a new head for another number of classes), which the report lists. Raises
    :class:`ConfigError` listing every mismatch.
    """
    state = read_state(path)
    own = model.state_dict()
    loaded, kept, mismatched = [], [], []
    for name, target in own.items():
        if name not in state:
            kept.append(name)
        elif tuple(state[name].shape) != tuple(target.shape):
            kept.append(name)
            file_shape, model_shape = tuple(state[name].shape), tuple(target.shape)
            mismatched.append(f"{name}: file {file_shape}, model {model_shape}")
        else:
            loaded.append(name)
    ignored = [name for name in state if name not in own]
    key = f"task.model.pretrained={path}"
    if strict and (kept or ignored):
        missing = [n for n in kept if n not in state]
        problems = [f"{key}: shape differs, {m}" for m in mismatched]
        problems += [f"{key}: {n} is missing from the file" for n in missing]
        problems += [f"{key}: the file's {n} is not in the model" for n in ignored]
        problems.append(
            "task.model.strict=true: the file must fit the model exactly; load only what fits "
            "(e.g. a new head) with task.model.strict=false, or give this model's file"
        )
        raise ConfigError(problems)
    if not loaded:
        raise ConfigError(
            [f"{key}: none of the file's {len(state)} arrays fits the model: wrong file?"]
        )
    with torch.no_grad():
        for name in loaded:
            own[name].copy_(state[name].to(own[name].dtype))
    return LoadReport(Path(path), tuple(loaded), tuple(kept), tuple(ignored))


def _unmatched(patterns: Iterable[str], names: Sequence[str], key: str) -> list[str]:
    return [
        f"{key}: {pattern!r} matches no parameter of the model; its parameters are "
        f"{', '.join(names)}"
        for pattern in patterns
        if not any(matches(n, pattern) for n in names)
    ]


def freeze(model: nn.Module, patterns: Sequence[str]) -> tuple[str, ...]:
    """Turn off the gradient of every parameter ``patterns`` name; their names.

    Raises :class:`ConfigError` for a pattern that matches no parameter, or when nothing is
    left to train."""
    names = [n for n, _ in model.named_parameters()]
    problems = _unmatched(patterns, names, "train.freeze")
    frozen = tuple(n for n in names if any(matches(n, p) for p in patterns))
    if frozen and len(frozen) == len(names):
        problems.append(
            f"train.freeze={list(patterns)}: freezes every parameter, so nothing would train; "
            "leave the head out (e.g. train.freeze=[features])"
        )
    if problems:
        raise ConfigError(problems)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return frozen


def frozen_names(model: nn.Module) -> tuple[str, ...]:
    """The parameters that do not train (their gradient is off)."""
    return tuple(n for n, p in model.named_parameters() if not p.requires_grad)


def trainable_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, p in model.named_parameters() if p.requires_grad)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The parameters of ``model``'s last layer (the module that owns its last parameter):
    what the transfer strategy re-initialises and trains alone."""
    names = [n for n, _ in model.named_parameters()]
    if not names:
        return ()
    layer = names[-1].rpartition(".")[0]
    return tuple(n for n in names if n.rpartition(".")[0] == layer)


@contextmanager
def training_only(model: nn.Module, names: Iterable[str] | None) -> Iterator[None]:
    """Within the block, only the parameters ``names`` lists train (their gradient stays as
    it was, the others' is off); afterwards every parameter is as before. None: no change.

    Raises ValueError for a name that is not one of the model's trainable parameters."""
    if names is None:
        yield
        return
    wanted = set(names)
    trainable = set(trainable_names(model))
    unknown = sorted(wanted - trainable)
    if unknown or not wanted:
        raise ValueError(
            f"asked to train {sorted(wanted)} alone, but {unknown or 'nothing'} is not among "
            f"the model's trainable parameters ({', '.join(sorted(trainable))})"
        )
    held = [p for n, p in model.named_parameters() if n in trainable and n not in wanted]
    for param in held:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in held:
            param.requires_grad_(True)


def anchor_tensors(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """``state``'s tensors for ``model``'s trainable parameters, in their order (a proximal
    term's anchor). Raises ValueError when one is missing."""
    missing = [n for n in trainable_names(model) if n not in state]
    if missing:
        raise ValueError(f"the proximal anchor sent lacks {', '.join(missing)}")
    return [state[n] for n in trainable_names(model)]


def lr_scales(model: nn.Module, groups: Mapping[str, float]) -> list[float]:
    """Each trainable parameter's learning-rate multiplier, in ``model.parameters()`` order:
    the first of ``groups`` (pattern: multiplier) that names it, else 1.

    Raises :class:`ConfigError` for a pattern that names no trainable parameter."""
    trainable = trainable_names(model)
    problems = _unmatched(groups, trainable, "train.lr_groups")
    if problems:
        problems.append("(frozen parameters do not train: train.freeze leaves them out)")
        raise ConfigError(problems)
    return [
        next((float(s) for p, s in groups.items() if matches(name, p)), 1.0) for name in trainable
    ]


def param_groups(
    params: Sequence[nn.Parameter], scales: Sequence[float] | None, lr: float
) -> list[dict[str, object]]:
    """Optimizer parameter groups: each run of consecutive parameters with one multiplier a
    group at ``lr`` times it (one group without multipliers)."""
    if scales is None or all(s == 1.0 for s in scales):
        return [{"params": list(params), "lr": lr}]
    groups: list[dict[str, object]] = []
    for param, scale in zip(params, scales, strict=True):
        if groups and groups[-1]["scale"] == scale:
            groups[-1]["params"].append(param)  # type: ignore[attr-defined]
        else:
            groups.append({"params": [param], "lr": lr * scale, "scale": scale})
    for group in groups:
        del group["scale"]
    return groups


@dataclass(frozen=True)
class Frozen:
    """The frozen arrays of a run: left out of every message, checked by digest at the site.

    ``names`` are the frozen parameters; ``digest`` fingerprints their values on the server.
    """

    names: frozenset[str]
    digest: str

    @classmethod
    def of(cls, model: nn.Module) -> Frozen:
        names = frozen_names(model)
        state = model.state_dict()
        values = {n: state[n].detach().cpu().numpy() for n in names}
        return cls(frozenset(names), digest(values))

    def outgoing(self, weights: Weights) -> dict[str, np.ndarray]:
        """The arrays of ``weights`` that travel: all but the frozen ones."""
        return {k: v for k, v in weights.items() if k not in self.names}

    def merged(self, weights: Weights, update: Weights) -> dict[str, np.ndarray]:
        """``weights`` with the travelling arrays replaced by ``update``'s, in their order."""
        return {k: update.get(k, v) for k, v in weights.items()}


def travelling_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict without its frozen parameters: what a site sends."""
    frozen = set(frozen_names(model))
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_travelling(
    model: nn.Module, state: Mapping[str, torch.Tensor], expected_digest: str | None
) -> None:
    """Load the arrays a message carries into ``model``. Without frozen parameters that is
    the whole state dict; with them, every other array, and the model keeps its own frozen
    ones, which must be the sender's: ``expected_digest`` (:attr:`Frozen.digest`).

    Raises ValueError when the arrays sent are not the model's travelling arrays, or its
    frozen arrays are not the sender's."""
    frozen = frozen_names(model)
    if not frozen and expected_digest is None:
        model.load_state_dict(state)
        return
    own = Frozen.of(model).digest  # a hash of the frozen bytes: cheap beside a training step
    if own != expected_digest:
        raise ValueError(
            "this site's frozen arrays (train.freeze) are not the server's "
            f"(digest {own[:12]} here, {str(expected_digest)[:12]} there): every site must "
            "build the model from the same task.model.pretrained file and seed as the server"
        )
    expected = {k for k in model.state_dict() if k not in frozen}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"the message's arrays are not the model's trainable ones: missing {missing}, "
            f"unexpected {extra}"
        )
    model.load_state_dict(state, strict=False)
