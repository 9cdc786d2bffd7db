"""Per-sample gradient clipping in one backward pass, for models whose weights sit in Linear/Conv.

DP-SGD needs ``sum_i clip(g_i)``, with ``g_i`` the gradient of sample ``i``'s loss scaled down
to L2 norm at most ``C``: ``g_i * min(1, C / (||g_i|| + 1e-6))`` (Opacus's factor, exactly).
Opacus forms the ``g_i`` in full backward hooks on every layer, then clips them in its
optimizer; on a small model at batch 16 that Python machinery, not arithmetic, is most of the
cost (``benchmarks/README.md``). Here, the "book-keeping" arrangement of Bu et al. (2023,
*Differentially private optimization on large model at small cost*):

1. forward hooks keep each layer's input ``a`` and output;
2. one autograd pass computes the gradients ``b`` of the summed loss with respect to the layer
   *outputs* only (no parameter gradient is formed: that is the weight-gradient work of a plain
   backward pass, done below per sample instead);
3. layer by layer, each sample's squared gradient norm; then the clip factors; then the clipped
   sum, added into one flat buffer (views of which serve as the parameters' ``.grad``; the
   caller fills it with the noise first, so that no separate pass adds the two).

Per layer:

``Linear``
    ``ghost``: norms without forming per-sample gradients, ``||a_i||^2 ||b_i||^2`` for one
    position per sample (Goodfellow 2015), ``<a_i a_i^T, b_i b_i^T>`` for sequences (Li et al.
    2022); the clipped sum is one matrix product of clip-weighted ``b`` with ``a``.
    ``flat``: per-sample gradients ``b_i a_i^T`` formed (``bmm``), then weighted and summed.
    ``auto``: ghost, unless the layer sees a sequence so long that the Gram matrices cost more
    than the per-sample gradients, ``T (in + out) > in * out`` for ``T`` positions (the
    per-layer choice of Bu et al. 2022's mixed ghost clipping, by arithmetic).
``Conv1d/2d/3d``
    Per-sample gradients by one grouped convolution backward with the batch as the groups (as
    torch's expanded weights do), in both modes: at these sizes it costs what the plain weight
    gradient costs, where unfold + ``bmm`` (Opacus) costs several times more.

A layer called several times in one forward pass (shared weights) has its per-sample
gradients formed for each call and summed. Parameters must be used through their module's
forward only (as Opacus also assumes): a weight read elsewhere would have that part of its
gradient missed. :func:`unsupported` says why a model cannot take this path; the caller then
uses Opacus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedretrain.privacy.config import ClippingMode

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


def unsupported(model: nn.Module) -> list[str]:
    """Why :class:`PerSampleClipping` cannot train ``model``; empty when it can.

    >>> unsupported(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))
    []
    >>> unsupported(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    ['1 (LayerNorm): trainable parameters outside Linear/Conv layers']
    """
    problems = []
    for name, module in model.named_modules():
        label = f"{name or 'model'} ({type(module).__name__})"
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if type(module) in _LAYERS:
            if isinstance(module, nn.modules.conv._ConvNd) and isinstance(module.padding, str):
                problems.append(f"{label}: padding={module.padding!r} (needs numbers)")
            if set(module._parameters) - {"weight", "bias"}:
                problems.append(f"{label}: parameters other than weight and bias")
        elif own:
            problems.append(f"{label}: trainable parameters outside Linear/Conv layers")
        if getattr(module, "inplace", False):
            # An in-place op rewrites a layer's output before its gradient is taken.
            problems.append(f"{label}: inplace=True")
    return problems


class PerSampleClipping:
    """Clipped per-sample gradient sums of ``model``'s trainable parameters, one batch a call.

    Parameters
    ----------
    model : nn.Module
        Hooked until :meth:`close`; :func:`unsupported` must find nothing.
    params : list of nn.Parameter
        The trainable parameters, in the order of :attr:`views` (and of the flat buffer).
    max_grad_norm : float
        ``C``.
    mode : ClippingMode
        How Linear layers' norms are computed (convolutions always form per-sample gradients).
    loss_sum : callable
        ``loss_sum(output, target)``: the *sum* over the batch of per-sample losses.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        max_grad_norm: float,
        mode: ClippingMode,
        loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        problems = unsupported(model)
        if problems:
            raise ValueError("per-sample clipping cannot hook this model: " + "; ".join(problems))
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.loss_sum = loss_sum
        self.flat, self.views = flat_buffer(params)
        view_of = {id(p): v for p, v in zip(params, self.views, strict=True)}
        self._rules: list[_Rule] = []
        for module in model.modules():
            if type(module) in _LAYERS:
                w = view_of.pop(id(module.weight), None)
                b = view_of.pop(id(module.bias), None) if module.bias is not None else None
                if w is not None or b is not None:
                    self._rules.append(_Rule(module, w, b, mode))  # type: ignore[arg-type]
        if view_of:
            raise ValueError(f"{len(view_of)} trainable parameters belong to no Linear/Conv layer")
        self._handles = [rule.layer.register_forward_hook(rule.keep) for rule in self._rules]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Add ``scale * sum_i clip(g_i)`` to :attr:`flat`; return the summed loss (detached)."""
        rules = self._rules
        try:
            loss = self.loss_sum(self.model(x), y)
            outputs = [output for rule in rules for output in rule.outputs()]
            grads = torch.autograd.grad(loss, outputs)
            with torch.no_grad():
                n = len(y)
                sq_norms = self.flat.new_zeros(n)
                start = 0
                for rule in rules:
                    stop = start + len(rule.calls)
                    rule.norms(grads[start:stop], sq_norms)
                    start = stop
                # scale * min(1, C / (norm + 1e-6)), in two operations rather than three
                clip = (self.max_grad_norm * scale / sq_norms.sqrt_().add_(1e-6)).clamp_(max=scale)
                for rule in rules:
                    rule.add_sum(clip)
        finally:
            for rule in rules:  # release the activations now rather than at the next batch
                rule.clear()
        return loss.detach()

    def close(self) -> None:
        """Remove the hooks; the model is plain again."""
        for handle in self._handles:
            handle.remove()
        for rule in self._rules:
            rule.clear()


def flat_buffer(params: list[nn.Parameter]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A zero buffer as long as all ``params`` together, and a view of it shaped as each."""
    flat = torch.zeros(
        sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype
    )
    views, offset = [], 0
    for p in params:
        views.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return flat, views


class _Rule:
    """One layer: what its hook keeps, its per-sample squared norms, its clipped sum."""

    def __init__(
        self, layer: Layer, w: torch.Tensor | None, b: torch.Tensor | None, mode: ClippingMode
    ) -> None:
        self.layer, self.w, self.b = layer, w, b
        self.linear = isinstance(layer, nn.Linear)
        self.mode = mode if self.linear else ClippingMode.flat
        # Flattened views of the parameters' slots in the flat buffer, for addmv_.
        self._slots = [v.view(-1) for v in (w, b) if v is not None]
        self.calls: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # input, output, version
        self._ghost: tuple[torch.Tensor, torch.Tensor] | None = None  # (n, [T,] in), (n, [T,] out)
        self._formed: list[torch.Tensor] = []  # per-sample gradients, (n, numel) each
        self._scratch = torch.empty(0, device=layer.weight.device, dtype=layer.weight.dtype)
        self._spatial = tuple(range(2, layer.weight.dim()))  # a convolution's position dims

    def keep(self, _module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        # Inputs are read under no_grad only; the output's graph keeps them alive anyway.
        self.calls.append((args[0], output, output._version))

    def outputs(self) -> list[torch.Tensor]:
        if not self.calls:
            raise RuntimeError(
                f"{type(self.layer).__name__} layer was not called in the forward pass: its "
                "per-sample gradients are unknown (freeze its parameters if it is unused)"
            )
        for _, output, version in self.calls:
            if output._version != version:
                raise RuntimeError(
                    f"the output of a {type(self.layer).__name__} layer was modified in place "
                    "(e.g. F.relu(x, inplace=True)): per-sample gradients would be wrong"
                )
        return [output for _, output, _ in self.calls]

    def clear(self) -> None:
        self.calls.clear()
        self._ghost = None
        self._formed = []

    def norms(self, grads: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        """Add each sample's squared gradient norm over this layer's parameters to ``out``."""
        if self._ghost_norms():
            a, g = self.calls[0][0], grads[0]
            self._ghost = a, g
            if a.dim() == 2:  # ||g a^T||^2 = ||a||^2 ||g||^2, and the bias adds ||g||^2
                g_sq = torch.linalg.vecdot(g, g)
                if self.w is None:
                    out.add_(g_sq)
                    return
                a_sq = torch.linalg.vecdot(a, a)
                out.addcmul_(a_sq.add_(1.0) if self.b is not None else a_sq, g_sq)
                return
            a, g = a.flatten(1, -2), g.flatten(1, -2)  # (n, positions, features)
            if self.w is not None:  # ||sum_t g_t a_t^T||^2 = <a a^T, g g^T>
                out.add_((torch.bmm(a, a.mT) * torch.bmm(g, g.mT)).sum((1, 2)))
            if self.b is not None:
                out.add_(torch.linalg.vector_norm(g.sum(1), dim=1).square_())
            return
        if len(self.calls) == 1:
            self._formed = self._per_sample(self.calls[0][0], grads[0], self._scratch)
        else:  # shared weights: the per-sample gradients of all calls, summed
            per_call = [
                self._per_sample(a, g, None) for (a, _, _), g in zip(self.calls, grads, strict=True)
            ]
            self._formed = [torch.stack(ts).sum(0) for ts in zip(*per_call, strict=True)]
        for t in self._formed:
            out.add_(torch.linalg.vecdot(t, t))

    def _ghost_norms(self) -> bool:
        if self.mode is ClippingMode.flat or len(self.calls) != 1:
            return False
        a = self.calls[0][0]
        if self.mode is ClippingMode.ghost or a.dim() == 2:
            return True
        positions = a[0].numel() // a.shape[-1]
        inputs, outputs = self.layer.weight.shape[1], self.layer.weight.shape[0]
        return positions * (inputs + outputs) <= inputs * outputs

    def _per_sample(
        self, a: torch.Tensor, g: torch.Tensor, scratch: torch.Tensor | None
    ) -> list[torch.Tensor]:
        formed = []
        if self.w is not None:
            if not self.linear:
                formed.append(_conv_weight(self.layer, a, g))
            elif scratch is not None and a.dim() == 2:
                # Reuse one buffer across steps: a fresh (n, out*in) block every step
                # would be handed back to the kernel and faulted in again.
                n, shape = len(g), (g.shape[1], a.shape[1])
                if scratch.numel() < n * math.prod(shape):
                    self._scratch = scratch = scratch.new_empty(2 * n * math.prod(shape))
                block = scratch[: n * math.prod(shape)].view(n, *shape)
                formed.append(torch.mul(g[:, :, None], a[:, None, :], out=block).view(n, -1))
            else:
                formed.append(_linear_weight(a, g))
        if self.b is not None:
            if not self.linear:
                formed.append(g.sum(self._spatial))
            else:
                formed.append(g if g.dim() == 2 else g.flatten(1, -2).sum(1))
        return formed

    def add_sum(self, clip: torch.Tensor) -> None:
        """Add this layer's clipped sum to the parameters' slots."""
        if self._ghost is None:
            for t, slot in zip(self._formed, self._slots, strict=True):
                slot.addmv_(t.T, clip)
            return
        a, g = self._ghost
        if a.dim() == 2:
            if self.w is not None:
                self.w.addmm_((g * clip.unsqueeze(1)).T, a)
            if self.b is not None:
                self.b.addmv_(g.T, clip)
            return
        g = g * clip.view(-1, *([1] * (g.dim() - 1)))
        a, g = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
        if self.w is not None:
            self.w.addmm_(g.T, a)
        if self.b is not None:
            self.b.add_(g.sum(0))


def _linear_weight(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of a Linear weight, flattened: ``sum_t g_t a_t^T`` per sample."""
    n = len(g)
    if a.dim() == 2:
        return (g[:, :, None] * a[:, None, :]).view(n, -1)
    return torch.bmm(g.flatten(1, -2).mT, a.flatten(1, -2)).view(n, -1)


# Below this many unfolded values per sample (input channels per group x kernel x output
# positions), unfold + bmm beats the grouped convolution backward (measured on one CPU thread:
# 31 against 54 us for the first layer of the default CNN, 308 against 123 us for the second).
_UNFOLD_MAX = 1024


def _conv_weight(layer: Layer, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of a convolution's weight, flattened to ``(n, weight.numel())``.

    Sample ``i``'s weight gradient is the weight gradient of the same convolution applied to
    sample ``i`` alone; stacking the samples along channels, as ``(1, n*c, ...)``, and asking
    for ``n * groups`` groups computes all of them in one convolution backward. A small layer
    (few input channels) is cheaper as unfold + ``bmm``.
    """
    assert isinstance(layer, nn.modules.conv._ConvNd)
    n, c = a.shape[:2]
    shape = layer.weight.shape
    padding: tuple[int, ...] = layer.padding  # type: ignore[assignment]
    if layer.padding_mode != "zeros":
        a = nn.functional.pad(a, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = (0,) * (a.dim() - 2)
    if (
        isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and math.prod(shape[1:]) * math.prod(g.shape[2:]) <= _UNFOLD_MAX
    ):
        columns = nn.functional.unfold(a, layer.kernel_size, layer.dilation, padding, layer.stride)
        if g.permute(0, 2, 3, 1).is_contiguous():  # channels-last: (n, positions, out) is a view
            return torch.bmm(columns, g.permute(0, 2, 3, 1).flatten(1, 2)).mT.reshape(n, -1)
        return torch.bmm(g.flatten(2), columns.mT).view(n, -1)
    _, grad_weight, _ = torch.ops.aten.convolution_backward.default(
        g.reshape(1, n * g.shape[1], *g.shape[2:]),
        a.reshape(1, n * c, *a.shape[2:]),
        layer.weight.new_empty(()).expand(n * shape[0], *shape[1:]),  # only its shape is read
        None,
        layer.stride,
        padding,
        layer.dilation,
        False,
        (0,) * (a.dim() - 2),
        n * layer.groups,
        (False, True, False),
    )
    return grad_weight.view(n, -1)
