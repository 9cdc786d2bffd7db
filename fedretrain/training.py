"""Local training and evaluation of a model on a site's arrays: plain PyTorch, no Flower."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedretrain.augment import augment_batch
from fedretrain.finetune import lr_scales, param_groups
from fedretrain.metrics import EvalResult, confusion_matrix, group_confusion
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.train_config import LrSchedule, Optimizer, TrainConfig


def lr_at(cfg: TrainConfig, server_round: int, num_rounds: int) -> float:
    """The client learning rate for ``server_round`` (1-based) of ``num_rounds``.

    >>> cfg = TrainConfig(lr=0.1, lr_schedule=LrSchedule.cosine, lr_min=0.0)
    >>> lr_at(cfg, 1, 5), round(lr_at(cfg, 5, 5), 6)
    (0.1, 0.0)
    """
    step = max(server_round - 1, 0)
    if cfg.lr_schedule is LrSchedule.exponential:
        return cfg.lr * cfg.lr_gamma**step
    if cfg.lr_schedule is LrSchedule.cosine:
        progress = step / max(num_rounds - 1, 1)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))
    return cfg.lr


def make_optimizer(
    cfg: TrainConfig,
    params: list[nn.Parameter],
    lr: float,
    fused: bool = False,
    scales: list[float] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names; ``fused``: torch's one-kernel step (CPU and CUDA only);
    ``scales``: each parameter's learning-rate multiplier (``train.lr_groups``,
    :func:`fedretrain.finetune.lr_scales`)."""
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": cfg.weight_decay}
    if fused:
        kwargs["fused"] = True
    groups = param_groups(params, scales, lr)
    if cfg.optimizer is Optimizer.sgd:
        return torch.optim.SGD(groups, momentum=cfg.momentum, **kwargs)
    if cfg.optimizer is Optimizer.adam:
        return torch.optim.Adam(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    mean_loss: float
    steps: int


def train(
    model: nn.Module,
    data: ArrayDataset,
    cfg: TrainConfig,
    lr: float,
    device: torch.device,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
    anchor: Sequence[torch.Tensor] | None = None,
) -> TrainResult:
    """Run ``cfg.local_epochs`` epochs of minibatch training in place.

    With ``proximal_mu > 0`` the loss gains FedProx's ``mu/2 * ||w - w_global||^2``, where
    ``w_global`` are the weights the model held on entry, or ``anchor`` (one tensor per
    trainable parameter, in order: the serving model, ``retrain.anchor_mu``). With
    ``cfg.augment`` each batch of images is shifted and rotated at random first
    (:mod:`fedretrain.augment`). Only the parameters whose gradient is on train
    (:func:`fedretrain.finetune.freeze`), each at ``lr`` times its ``cfg.lr_groups``
    multiplier.
    """
    model.train()
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params, lr, scales=lr_scales(model, cfg.lr_multipliers))
    anchor = proximal_anchor(params, anchor) if proximal_mu > 0 else []
    loss_fn = nn.CrossEntropyLoss()
    total_loss, steps = 0.0, 0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(len(data), generator=generator).to(device)
        for start in range(0, len(data), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            inputs = x[batch]
            if cfg.augment:
                inputs = augment_batch(inputs, cfg.augment_shift, cfg.augment_degrees, generator)
            loss = loss_fn(model(inputs), y[batch])
            if anchor:
                drift = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * proximal_mu * drift
            loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            total_loss += float(loss.detach())
            steps += 1
    return TrainResult(len(data), total_loss / max(steps, 1), steps)


def proximal_anchor(
    params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor] | None
) -> list[torch.Tensor]:
    """The weights a proximal term pulls ``params`` towards: ``anchor`` (on the parameters'
    device and dtype) or, without one, the parameters' own values now."""
    if anchor is None:
        return [p.detach().clone() for p in params]
    if len(anchor) != len(params):
        raise ValueError(f"an anchor of {len(anchor)} tensors for {len(params)} parameters")
    out = []
    for p, a in zip(params, anchor, strict=True):
        if a.shape != p.shape:
            raise ValueError(f"an anchor tensor of shape {tuple(a.shape)} for {tuple(p.shape)}")
        out.append(a.detach().to(device=p.device, dtype=p.dtype).clone())
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    device: torch.device,
    batch_size: int = 512,
    groups: tuple[np.ndarray, int] | None = None,
) -> EvalResult:
    """Loss and confusion of ``model`` on ``data``; with ``groups`` (each sample's group and
    the number of groups, :func:`fedretrain.groups.group_ids`) one confusion per group too."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = 0.0
    predictions = []
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data.x[start : start + batch_size]).to(device)
        y = torch.from_numpy(data.y[start : start + batch_size]).to(device)
        logits = model(x)
        loss_sum += float(loss_fn(logits, y))
        predictions.append(logits.argmax(dim=1).cpu().numpy())
    y_pred = np.concatenate(predictions) if predictions else np.empty(0, dtype=np.int64)
    k = data.num_classes
    by_group = None
    if groups is not None:
        ids, count = groups
        by_group = group_confusion(data.y, y_pred, ids, count, k)
    return EvalResult(len(data), loss_sum, confusion_matrix(data.y, y_pred, k), by_group)


@torch.no_grad()
def predict(
    model: nn.Module, data: ArrayDataset, device: torch.device, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(n, num_classes)`` and per-sample losses ``(n,)`` on ``data``."""
    model.eval()
    probs, losses = [], []
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data.x[start : start + batch_size]).to(device)
        y = torch.from_numpy(data.y[start : start + batch_size]).to(device)
        logits = model(x)
        losses.append(nn.functional.cross_entropy(logits, y, reduction="none").cpu().numpy())
        probs.append(torch.softmax(logits, dim=1).cpu().numpy())
    if not probs:
        return np.empty((0, data.num_classes)), np.empty(0)
    return np.concatenate(probs), np.concatenate(losses)
