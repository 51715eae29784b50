"""A gated (SwiGLU) MLP as one autograd function that keeps two activations per token instead of four.

Why: without activation checkpointing, what a layer saves for backward is most of the training
step's variable memory on CPU. Autograd through `down(silu(gate(x)) * up(x))` keeps the gate and up
projections, `silu(gate)` and the product that enters `down` (four intermediate-size vectors per
token and layer); `_GatedMLP` keeps the gate and up projections only and rebuilds the other two in
backward from them, which costs two elementwise passes and no matmul. The maths is the same
(float32 throughout, the same SiLU derivative as torch's `silu_backward`), so results agree with the
plain module to float rounding; `fused_mlps` checks that numerically per module class before use.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

_CHECKED: dict[type, bool] = {}
"""Per MLP class: does `_GatedMLP` reproduce its forward? (checked once per process)"""


class _GatedMLP(torch.autograd.Function):
    """`(silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T`, saving x, the gate and the up projection."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                w_down: torch.Tensor) -> torch.Tensor:
        gate, up = x @ w_gate.T, x @ w_up.T
        out = (F.silu(gate) * up) @ w_down.T
        ctx.save_for_backward(x, w_gate, w_up, w_down, gate, up)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w_gate, w_up, w_down, gate, up = ctx.saved_tensors
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad
        x2, g2 = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        gate2, up2 = gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1])
        sig = torch.sigmoid(gate2)
        silu = gate2 * sig
        grad_down = g2.T @ (silu * up2) if need_down else None
        d_prod = g2 @ w_down
        d_up = d_prod * silu
        # d silu(a) / da = sigmoid(a) * (1 + a * (1 - sigmoid(a))), as torch's silu_backward
        d_gate = d_prod.mul_(up2).mul_(sig.mul_(gate2.neg().mul_(sig).add_(gate2).add_(1)))
        grad_gate = d_gate.T @ x2 if need_gate else None
        grad_up = d_up.T @ x2 if need_up else None
        grad_x = torch.addmm(d_gate @ w_gate, d_up, w_up).view_as(x) if need_x else None
        return grad_x, grad_gate, grad_up, grad_down


def _fusable(module: torch.nn.Module) -> bool:
    """A gated MLP of plain, bias-free linear layers with plain parameters (not sharded, not adapters)."""
    parts = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not all(type(p) is torch.nn.Linear and p.bias is None and type(p.weight) is torch.nn.Parameter
               for p in parts) or not isinstance(getattr(module, "act_fn", None), torch.nn.Module) \
            or "forward" in vars(module):
        return False
    gate, up, down = (p.weight.shape for p in parts)  # FSDP's flattened parameters leave empty ones here
    return len(gate) == 2 and gate == up and tuple(down) == (gate[1], gate[0]) and gate.numel() > 0


def _fused_forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _GatedMLP.apply(x, module.gate_proj.weight, module.up_proj.weight, module.down_proj.weight)


def _reproduces(module: torch.nn.Module) -> bool:
    """Same output and input gradient as the module's own forward, on a small random input."""
    weight = module.gate_proj.weight
    probe = torch.Generator(device=weight.device).manual_seed(0)  # leaves the training RNG alone
    x = torch.randn(2, 3, weight.shape[1], dtype=weight.dtype, device=weight.device, generator=probe,
                    requires_grad=True)
    try:
        with torch.enable_grad():  # the first packed call may come from a no_grad check (`forward.packs`)
            plain = module(x)
            (grad_plain,) = torch.autograd.grad(plain.sum(), x)
            mine = _fused_forward(module, x)
            (grad_mine,) = torch.autograd.grad(mine.sum(), x)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return False
    return all(a.shape == b.shape and bool((a - b).abs().max() <= 1e-5 * (b.abs().max() + 1))
               for a, b in ((mine, plain), (grad_mine, grad_plain)))


@contextmanager
def fused_mlps(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, the gated MLPs of `model` that `_GatedMLP` reproduces run through it; yields
    how many. Nothing changes under autocast (backward would run the matmuls in another dtype) or for
    modules that fail `_fusable`; the modules are restored on exit, and a backward after the block
    still uses the saved tensors of the forward that ran inside it."""
    patched: list[torch.nn.Module] = []
    if not any(torch.is_autocast_enabled(t) for t in ("cpu", "cuda")):
        for module in model.modules():
            if not _fusable(module):
                continue
            ok = _CHECKED.get(type(module))
            if ok is None:
                ok = _CHECKED[type(module)] = _reproduces(module)
            if ok:
                module.forward = _fused_forward.__get__(module)
                patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
