"""Response-token log-probabilities in fp32, the SFT loss built on them, and how a model is asked for them.

Log-probs are always taken in fp32 (bf16/fp16 log-softmax is a known source of NaNs and of
DPO-loss mismatches between implementations): the logits of a bf16 model are upcast and the
log-softmax runs in fp32, as in HF's own losses (the logits themselves carry bf16's rounding).

:func:`model_logps` is the one place a model's response log-probs are computed (training losses, attack
objectives, evaluation margins). With a large vocabulary the full logits are the biggest tensors of a
step: a (2B, T, V) fp32 copy for Qwen2-VL's 152k vocabulary is gigabytes, and most positions are prompt
or image tokens that are never scored. ``chunk > 0`` therefore takes the decoder's final hidden states
(a forward hook), asks the model for one position of logits only (``logits_to_keep=1``), and projects
just the response positions through the output embedding, ``chunk`` tokens at a time, each chunk
recomputed in the backward pass (activation checkpointing), so no (B, T, V) tensor ever exists.
The first chunked call on a model checks that its own last-position logits equal that projection.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
AUTO_CHUNK_VOCAB = 32_000  # vocabularies at least this large are scored in chunks by default
AUTO_CHUNK = 1024  # response tokens per chunk


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) for next-token prediction and the mask of scored positions.

    ``logits`` (B, T, V) and ``labels`` (B, T) are aligned as the model returns them; the shift happens here.
    Returns ``(logps, mask)``, both (B, T-1), with logps 0 where mask is False.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    lp = torch.gather(F.log_softmax(logits, dim=-1), 2, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return lp * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of response-token log-probs per row (what DPO compares), shape (B,)."""
    lp, _ = token_logps(logits, labels)
    return lp.sum(-1)


def response_nll(lp: torch.Tensor, mask: torch.Tensor, reduction: str = "sequence") -> torch.Tensor:
    """Cross-entropy of response tokens from :func:`token_logps`' output.

    ``reduction="sequence"`` averages tokens within a row and then rows, so a one-word answer weighs as
    much as a twenty-token one; ``"token"`` averages over all response tokens of the batch (HF's default).
    """
    if reduction == "token":
        return -lp.sum() / mask.sum().clamp_min(1)
    if reduction == "sequence":
        return (-(lp.sum(-1)) / mask.sum(-1).clamp_min(1)).mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sequence") -> torch.Tensor:
    """Cross-entropy on response tokens (see :func:`response_nll`)."""
    return response_nll(*token_logps(logits, labels), reduction)


def resolve_chunk(model: torch.nn.Module, chunk: int | None) -> int:
    """``chunk`` as given, or (None) :data:`AUTO_CHUNK` when the model's vocabulary is large, else 0.

    Chunking needs ``logits_to_keep`` in the model's forward: without it, auto is 0 and an explicit
    chunk is refused."""
    from ..models.families import UnsupportedModel, unwrap

    core = unwrap(model)
    supported = "logits_to_keep" in inspect.signature(core.forward).parameters
    if chunk is not None:
        if chunk and not supported:
            raise UnsupportedModel(f"{type(core).__name__}.forward has no logits_to_keep argument, which chunked "
                                   "log-probs need; set logps_chunk: 0")
        return int(chunk)
    head = core.get_output_embeddings()
    return AUTO_CHUNK if supported and head is not None and head.weight.shape[0] >= AUTO_CHUNK_VOCAB else 0


def model_logps(model: torch.nn.Module, inputs: dict[str, Any], labels: torch.Tensor, chunk: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(**inputs)``'s response log-probs of ``labels``: (logps, mask), both (B, T-1), fp32.

    ``chunk == 0`` scores the full logits; ``chunk > 0`` never materialises them (module docstring).
    """
    if not chunk:
        return token_logps(model(**inputs).logits, labels)
    from ..models.families import unwrap

    core = unwrap(model)
    head = core.get_output_embeddings()
    if hasattr(head, "base_layer"):
        raise ValueError("chunked log-probs project through the plain output head, but it carries a LoRA adapter; "
                         "set logps_chunk: 0 or keep lm_head out of lora.target")
    captured: list[torch.Tensor] = []

    def grab(_module, _args, out):
        captured.append(out[0] if isinstance(out, tuple) else out.last_hidden_state)

    handle = core.get_decoder().register_forward_hook(grab)
    try:
        kept = model(**inputs, logits_to_keep=1).logits[:, -1]
    finally:
        handle.remove()
    hidden = captured[-1]
    softcap = getattr(core.config.get_text_config(), "final_logit_softcapping", None)
    if core not in _CHECKED:
        with torch.no_grad():
            _check_head(kept, _project(hidden[:, -1], head.weight, head.bias, softcap))
        _CHECKED.add(core)
    target = labels[:, 1:]
    mask = target != IGNORE
    h, t = hidden[:, :-1][mask], target[mask]
    parts = [checkpoint(_chunk_logps, h[s: s + chunk], t[s: s + chunk], head.weight, head.bias, softcap,
                        use_reentrant=False) for s in range(0, h.shape[0], chunk)]
    flat = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    lp = torch.zeros(mask.shape, dtype=torch.float32, device=flat.device).masked_scatter(mask, flat)
    return lp, mask


_CHECKED: weakref.WeakSet = weakref.WeakSet()  # models whose output head passed _check_head


def _project(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
             ) -> torch.Tensor:
    logits = F.linear(h, weight, bias).float()
    return logits if not softcap else softcap * torch.tanh(logits / softcap)


def _chunk_logps(h: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 softcap: float | None) -> torch.Tensor:
    logits = _project(h, weight, bias, softcap)
    return logits.gather(1, target[:, None]).squeeze(1) - logits.logsumexp(-1)


def _check_head(model_logits: torch.Tensor, ours: torch.Tensor) -> None:
    """The model's own last-position logits must equal output-embedding(final hidden state): a family that
    rescales its logits some other way would otherwise be scored wrongly without a sound."""
    a, b = model_logits.detach().float(), ours.detach()
    tol = 2e-2 * float(a.abs().max().clamp_min(1.0))
    if not torch.allclose(a, b, atol=tol, rtol=0):
        raise RuntimeError(f"chunked log-probs: the model's logits differ from its output embedding applied to the "
                           f"decoder's final hidden state (max |diff| {float((a - b).abs().max()):.3g}); this family "
                           "post-processes logits, so set logps_chunk: 0")
