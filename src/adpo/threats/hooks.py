"""Residual-stream hooks: add a perturbation to the hidden states after chosen decoder layers.

The mechanics shared by the latent threat model (:mod:`adpo.threats.latent`), its application in a
training forward (:meth:`adpo.threats.protocol.AttackResult.applied`) and generation under attack. Layers
are found through ``get_decoder().layers`` after unwrapping DDP/DeepSpeed (``.module``) and PEFT
(``get_base_model()``), so no family's module path or hidden size is hard-coded (docs/method.md, bugs B5
and B8).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..models.families import UnsupportedModel, unwrap


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    core = unwrap(model)
    if not hasattr(core, "get_decoder"):
        raise UnsupportedModel(f"{type(core).__name__} has no get_decoder(): cannot locate decoder layers")
    return core.get_decoder().layers


def _add(out, delta: torch.Tensor, mask: torch.Tensor):
    """Add ``delta`` (B, Tp, H) at the first Tp positions where ``mask`` (B, Tp) is set."""
    hidden = out[0] if isinstance(out, tuple) else out
    tp = delta.shape[1]
    if hidden.shape[0] == delta.shape[0] and hidden.shape[1] < tp:
        return out  # a cached decoding step after the prefill: the prompt positions are already in the cache
    if hidden.shape[0] != delta.shape[0]:
        raise ValueError(f"latent perturbation of shape {tuple(delta.shape)} does not fit hidden states "
                         f"{tuple(hidden.shape)}: the perturbed forward must start with the attacked prompts")
    add = (delta * mask[..., None]).to(hidden.dtype)
    pad = hidden.new_zeros(hidden.shape[0], hidden.shape[1] - tp, hidden.shape[2])
    hidden = hidden + torch.cat([add, pad], dim=1)
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


@contextmanager
def residual_perturbation(model: nn.Module, deltas: dict[int, torch.Tensor], mask: torch.Tensor,
                          norms: dict[int, torch.Tensor] | None = None) -> Iterator[None]:
    """Install forward hooks adding ``deltas[layer]`` after each decoder layer; removed on exit or error.

    ``norms``, if given, receives each hooked layer's clean hidden-state norms at the masked positions
    (for the ||delta|| / ||h|| diagnostic).
    """
    layers = decoder_layers(model)
    handles = []

    def hook_for(idx: int):
        def hook(_module, _args, out):
            if norms is not None:
                hidden = out[0] if isinstance(out, tuple) else out
                norms[idx] = hidden[:, : mask.shape[1]].detach().float().norm(dim=-1)[mask]
            return _add(out, deltas[idx], mask)
        return hook

    try:
        for idx in deltas:
            handles.append(layers[idx].register_forward_hook(hook_for(idx)))
        yield
    finally:
        for h in handles:
            h.remove()


class _Skip(nn.Module):
    """A decoder layer below the cached one: passes its input through (its output is never used)."""

    def __init__(self, tuples: bool):
        super().__init__()
        self.tuples = tuples

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        return (hidden_states,) if self.tuples else hidden_states


class _Replay(nn.Module):
    """The lowest perturbed layer, replaying its clean outputs (one per forward of the objective, in order)."""

    def __init__(self, outputs: list[Any]):
        super().__init__()
        self.outputs, self.calls = outputs, 0

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        cached = out[0] if isinstance(out, tuple) else out
        if hidden_states is not None and cached.shape != hidden_states.shape:
            raise RuntimeError(f"truncated latent attack: a forward of shape {tuple(hidden_states.shape)} where the "
                               f"clean pass cached {tuple(cached.shape)}; the objective must repeat its forwards")
        return out


@contextmanager
def truncated_below(model: nn.Module, layer: int, outputs: list[Any] | None) -> Iterator[None]:
    """With ``outputs`` (the clean outputs of decoder layer ``layer``, one per forward of the objective):
    layers ``0..layer`` are swapped for modules that replay them, so a forward computes only the layers
    above (and the cheap embedding and vision tower); restored on exit or error. ``None``: no change."""
    if outputs is None:
        yield
        return
    layers = decoder_layers(model)
    originals = [layers[i] for i in range(layer + 1)]
    tuples = isinstance(outputs[0], tuple)
    try:
        for i in range(layer):
            layers[i] = _Skip(tuples)
        layers[layer] = _Replay(outputs)
        yield
    finally:
        for i, m in enumerate(originals):
            layers[i] = m
