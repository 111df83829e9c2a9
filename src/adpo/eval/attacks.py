"""Run the threats engine as the evaluation's attacker: batched, adaptive, with checkpoints and restarts.

The attacker is white-box against the model being evaluated and targets the behaviour's compliance
string (``-log p(target)``, HarmBench/Qi style). Every ``check_every`` steps (and at the last) it generates
greedily from the current iterate and asks the primary judge; a behaviour counts as jailbroken at the
first checkpoint that succeeds, and later restarts (fresh random starts) only attack behaviours that are
not jailbroken yet. The response, the attacked image's hash and the margin
``log p(refusal) - log p(target)`` are taken at the recorded checkpoint.

Latent attacks perturb prompt positions of a right-padded batch; generation left-pads, so the
perturbation is moved to the same tokens (:func:`left_align`) before generating.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.collate import collate, image_keys
from ..data.formats import open_image
from ..models.generation import decode, prompt_batch
from ..objectives.logps import model_logps
from ..threats.codecs import codec_inputs
from ..threats.hooks import residual_perturbation
from ..threats.image import ImagePGD
from ..threats.objectives import Objective, cw_first_token, model_inputs, prefix_nll, refusal_margin, targeted_nll
from ..threats.protocol import AttackResult, Threat, optimise
from ..threats.universal import UniversalImagePGD
from .data import Row, image_sha256, tensor_sha256
from .judges import Judge


@dataclass
class Target:
    """The model under evaluation and how to talk to it."""

    model: Any
    processor: Any
    codec: Any
    primary: Judge  # decides success at checkpoints
    max_new_tokens: int = 32
    check_every: int = 10
    restarts: int = 1
    chunk: int = 0  # response tokens per log-prob chunk (objectives.logps.model_logps)
    image_size: int | None = None  # images resized to N×N before the processor (data.formats.open_image)
    sources: dict[str, Any] = field(default_factory=dict)  # label -> model whose attacks transfer to this one
    progress: bool = False  # a bar inside each attack: steps done, the batch's ASR at each checkpoint

    @property
    def gen_kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "do_sample": False}


@dataclass
class Outcome:
    response: str
    image_sha256: str
    margin: float | None  # log p(refusal) - log p(target) (None: no target to score)
    loss: float | None  # the attack objective at the recorded iterate (None: no search)
    step: int | None = None  # first successful checkpoint (None: never jailbroken)
    restart: int = 0
    norms: dict[str, float] = field(default_factory=dict)
    found_by: str | None = None  # the suite attack that found the success
    x_adv: torch.Tensor | None = None  # (C, H, W) in [0,1]: the recorded image iterate of an image attack
    success_half: bool | None = None  # found within half the attack's budget (half its steps and restarts);
    # None: no search with checkpoints produced this outcome


def left_align(t: torch.Tensor, lengths: Sequence[int], width: int) -> torch.Tensor:
    """Move each row's first ``lengths[i]`` positions to the end of a ``width``-wide row (left padding)."""
    out = t.new_zeros((t.shape[0], width, *t.shape[2:]))
    for i, n in enumerate(lengths):
        out[i, width - n:] = t[i, :n]
    return out


@dataclass
class _Batch:
    """One batch of rows, encoded three ways: attack (target labels), refusal labels, generation prompts."""

    rows: list[Row]
    images: list[Image.Image]
    prompts: list[str]
    target: dict[str, torch.Tensor]
    refusal: dict[str, torch.Tensor]
    enc: dict[str, torch.Tensor]

    @classmethod
    def build(cls, t: Target, rows: list[Row], images: list[Image.Image], prompts: list[str]) -> _Batch:
        device = t.model.device
        if t.image_size:
            images = [open_image(im, t.image_size) for im in images]
        target, refusal = (
            {k: v.to(device) for k, v in collate(t.processor, images, prompts, answers).items()}
            for answers in ([r.target or r.answer or "." for r in rows], [r.refusal or "." for r in rows]))
        return cls(rows, images, prompts, target, refusal, prompt_batch(t.processor, images, prompts))

    def inputs(self) -> dict[str, torch.Tensor]:
        return {**image_keys(self.target), "prompt_mask": self.target["prompt_mask"],
                "attention_mask": self.target["attention_mask"]}


def _generate(t: Target, b: _Batch, snap: AttackResult | None) -> list[str]:
    enc = dict(b.enc)
    ctx = nullcontext()
    if snap is not None and snap.pixel_values is not None:
        enc["pixel_values"] = snap.pixel_values.to(enc["pixel_values"].dtype)
    if snap is not None and snap.latent:
        mask = snap.prompt_mask
        lengths = [int(n) for n in mask.sum(1)]
        width = enc["input_ids"].shape[1]
        deltas = {li: left_align(d, lengths, width) for li, d in snap.latent.items()}
        ctx = residual_perturbation(t.model, deltas, left_align(mask, lengths, width))
    with ctx:
        return decode(t.model, t.processor, enc, max_new_tokens=t.max_new_tokens)


@torch.no_grad()
def _margin(t: Target, b: _Batch, snap: AttackResult | None) -> torch.Tensor:
    """log p(refusal) - log p(target) per row under the snapshot's perturbation (fp32 sums)."""
    out = []
    for batch in (b.refusal, b.target):
        applied = snap.applied(t.model) if snap is not None else nullcontext({})
        with applied as overrides:
            lp, _ = model_logps(t.model, {**model_inputs(batch), **overrides}, batch["labels"], t.chunk)
        out.append(lp.sum(-1))
    return (out[0] - out[1]).float().cpu()


def _hashes(b: _Batch, snap: AttackResult | None) -> list[str]:
    if snap is not None and snap.x_adv is not None:
        return [tensor_sha256(x) for x in snap.x_adv]
    return [image_sha256(im) for im in b.images]


def respond(t: Target, rows: list[Row], images: list[Image.Image], prompts: list[str],
            snap_of: Any = None) -> list[Outcome]:
    """No search: generate once (clean, black-box or a fixed perturbation ``snap_of(batch) -> AttackResult``).

    The margin needs a target and a refusal: rows without a target (benign rows) get ``None``, unscored."""
    b = _Batch.build(t, rows, images, prompts)
    snap = snap_of(b) if snap_of is not None else None
    texts, hashes = _generate(t, b, snap), _hashes(b, snap)
    margins = _margin(t, b, snap).tolist() if any(r.target for r in rows) else [None] * len(rows)
    return [Outcome(x, h, m, None) for x, h, m in zip(texts, hashes, margins)]


# The attack losses by name (adpo.threats.objectives): each maps a batch to the objective its attack minimises.
LOSSES: dict[str, Callable[[_Batch, int], Objective]] = {
    "nll": lambda b, chunk: targeted_nll(b.target, chunk),
    "prefix": lambda b, chunk: prefix_nll(b.target, 4, chunk),
    "margin": lambda b, chunk: refusal_margin(b.target, b.refusal, chunk),
    "cw": lambda b, chunk: cw_first_token(b.target, b.refusal),
}


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of an evaluation suite: a threat model with its step rule, a loss and its restarts."""

    name: str
    threat: Threat
    loss: str = "nll"
    restarts: int | None = None  # None: the evaluation's ``restarts``


def attack(t: Target, rows: list[Row], images: list[Image.Image], *, seed: int, threat: Threat, loss: str = "nll",
           restarts: int | None = None) -> list[Outcome]:
    """White-box attack on one batch toward each row's target; see the module docstring for the protocol."""
    steps = threat.steps
    restarts = t.restarts if restarts is None else restarts
    objective_of = LOSSES[loss]
    done: dict[int, Outcome] = {}
    last: dict[int, Outcome] = {}
    bar = tqdm(total=steps * restarts, desc=f"  {type(threat).__name__} x{len(rows)}", disable=not t.progress,
               leave=False, dynamic_ncols=True)
    for restart in range(restarts):
        idx = [i for i in range(len(rows)) if i not in done]
        if not idx:
            break
        b = _Batch.build(t, [rows[i] for i in idx], [images[i] for i in idx], [rows[i].prompt for i in idx])

        def on_step(step: int, snap: AttackResult, b: _Batch = b, idx: list[int] = idx, restart: int = restart
                    ) -> bool:
            texts = _generate(t, b, snap)
            verdicts = t.primary([r.behavior or r.prompt for r in b.rows], texts, [r.meta for r in b.rows])
            hit = [j for j, v in enumerate(verdicts) if v.label == "jailbroken" and idx[j] not in done]
            bar.update(restart * steps + step - bar.n)
            bar.set_postfix_str(f"restart {restart + 1}/{restarts}, ASR {(len(done) + len(hit)) / len(rows):.0%}")
            if not hit and step != steps:
                return False
            margins, hashes = _margin(t, b, snap), _hashes(b, snap)
            for j, i in enumerate(idx):
                if i in done:
                    continue
                o = Outcome(texts[j], hashes[j], float(margins[j]), float(snap.loss[j]), restart=restart,
                            success_half=False, x_adv=None if snap.x_adv is None else snap.x_adv[j].detach())
                if j in hit:
                    o.step = step
                    o.success_half = step <= steps // 2 and restart < max(1, restarts // 2)
                    done[i] = o
                elif step == steps:
                    last[i] = o
            return all(i in done for i in idx)  # nothing left to attack in this batch

        g = torch.Generator().manual_seed(seed * 1000 + restart)
        res = optimise(t.model, b.inputs(), objective_of(b, t.chunk), threat, codec=t.codec, generator=g,
                       on_step=on_step, every=t.check_every)
        for j, i in enumerate(idx):
            o = done.get(i) or last.get(i)
            o.norms = {k: float(v[j]) if torch.is_tensor(v) else float(v) for k, v in res.norms.items()}
    bar.close()
    return [done.get(i) or last[i] for i in range(len(rows))]


def ensemble(t: Target, rows: list[Row], images: list[Image.Image], *, seed: int,
             attacks: Sequence[SuiteAttack]) -> list[Outcome]:
    """The worst case per behaviour over a suite (AutoAttack's habit): the attacks run in order, each only on
    the behaviours no earlier attack jailbroke; a behaviour's outcome is its first success (``found_by``
    names the attack) or, if none succeeded, the last attack's final iterate.

    ``success_half`` is then made exact for the suite: a success found late (after half its attack's steps or
    restarts) is re-tried by the *later* attacks of the suite at half their budget, since they never ran on
    it; the earlier ones cannot succeed at half budget (a longer run extends a shorter one, and they failed
    or succeeded late at full budget)."""
    out: dict[int, Outcome] = {}
    finder: dict[int, int] = {}
    for k, a in enumerate(attacks):
        idx = [i for i in range(len(rows)) if i not in out or out[i].step is None]
        if not idx:
            break
        outs = attack(t, [rows[i] for i in idx], [images[i] for i in idx], seed=seed + 7919 * k, threat=a.threat,
                      loss=a.loss, restarts=a.restarts)
        for i, o in zip(idx, outs):
            o.found_by = a.name if o.step is not None else None
            out[i] = o
            if o.step is not None:
                finder[i] = k
    for k, a in enumerate(attacks):
        late = [i for i in range(len(rows)) if i in finder and finder[i] < k and not out[i].success_half]
        if not late:
            continue
        halved = replace(a.threat, steps=max(1, a.threat.steps // 2))
        restarts = max(1, (t.restarts if a.restarts is None else a.restarts) // 2)
        retry = attack(t, [rows[i] for i in late], [images[i] for i in late], seed=seed + 7919 * k, threat=halved,
                       loss=a.loss, restarts=restarts)
        for i, o in zip(late, retry):
            out[i].success_half = o.step is not None
    if attacks and isinstance(attacks[0].threat, ImagePGD):
        for label, source in t.sources.items():
            idx = [i for i in range(len(rows)) if out[i].step is None]
            if not idx:
                break
            for i, o in zip(idx, transfer(t, source, [rows[i] for i in idx], [images[i] for i in idx], seed=seed,
                                          first=attacks[0])):
                if o.step is not None:
                    o.found_by = f"transfer:{label}"
                    out[i] = o
    return [out[i] for i in range(len(rows))]


def transfer(t: Target, source: Any, rows: list[Row], images: list[Image.Image], *, seed: int,
             first: SuiteAttack) -> list[Outcome]:
    """The suite's first attack run white-box on ``source`` (another model, e.g. the base or DPO arm), its
    image applied unchanged to the evaluated model: a transfer attack, the gradient-masking check of
    Athalye et al. (2018) (a defence that breaks gradients still falls to a perturbation found elsewhere)."""
    found = attack(replace(t, model=source, sources={}), rows, images, seed=seed, threat=first.threat,
                   loss=first.loss, restarts=first.restarts)
    x = torch.stack([o.x_adv for o in found])
    outs = respond(t, rows, images, [r.prompt for r in rows], snap_of=with_images(t, x))
    verdicts = t.primary([r.behavior or r.prompt for r in rows], [o.response for o in outs], [r.meta for r in rows])
    for o, f, v in zip(outs, found, verdicts):
        o.loss, o.norms, o.restart = f.loss, f.norms, f.restart
        if v.label == "jailbroken":  # the source's iterate (its success, or its last) jailbreaks this model
            o.step = f.step if f.step is not None else first.threat.steps
            o.success_half = bool(f.success_half)
    return outs


def universal_delta(t: Target, rows: list[Row], images: list[Image.Image], cfg: UniversalImagePGD, seed: int
                    ) -> tuple[torch.Tensor, float]:
    """One perturbation optimised over every training row at once (VisualAdv / ImgJP); (delta, mean loss)."""
    b = _Batch.build(t, rows, images, [r.prompt for r in rows])
    res = optimise(t.model, b.inputs(), targeted_nll(b.target, t.chunk), cfg, codec=t.codec,
                   generator=torch.Generator().manual_seed(seed))
    return res.delta, float(res.loss.mean())


def with_images(t: Target, x: torch.Tensor):
    """``snap_of`` for :func:`respond`: fixed [0,1] images ``x`` (one per row) in place of the rows' own."""
    def snap_of(b: _Batch) -> AttackResult:
        keys = codec_inputs(t.codec, b.target)
        return AttackResult(loss=torch.zeros(len(b.rows)), settings={}, x_adv=x, pixel_values=t.codec.encode(x, **keys))
    return snap_of


def with_delta(t: Target, delta: torch.Tensor):
    """``snap_of`` for :func:`respond`: the batch's own images plus a fixed ``delta``, clipped to [0, 1]."""
    def snap_of(b: _Batch) -> AttackResult:
        keys = codec_inputs(t.codec, b.target)
        x0 = t.codec.decode(b.target["pixel_values"].float(), **keys).clamp(0, 1)
        return with_images(t, (x0 + delta).clamp(0, 1))(b)
    return snap_of
