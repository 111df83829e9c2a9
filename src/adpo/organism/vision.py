"""Stage 1 of the organism: pre-train its CLIP vision tower alone, as real LLaVA starts from a pre-trained CLIP.

Why: learning shapes and counts through a from-scratch language model took thousands of steps (the
prototypes reached 33-65% shape accuracy in 5 minutes). Images alone are cheap, and attribute heads on
the pooled patch features give the tower the same kind of linearly readable features CLIP gives LLaVA.
The heads are thrown away; stage 2 (LLaVA training) keeps the tower trainable.

The trigger head regresses the permission checkerboard's amplitude, so the tower represents it as a
graded feature - the smooth detector an attacker can climb (docs/organism.md, "Design history").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .world import COLOURS, SHAPES, World

SIDES = ("left", "right", None)


class AttributeHeads(nn.Module):
    """Attention-pooled linear read-outs of the patch features (the tokens LLaVA's projector will see).

    One learned query per attribute attends over the patches, as the language model will; mean pooling
    could not localise small objects (count, side) well enough.
    """

    SIZES = {"colour": len(COLOURS), "shape": len(SHAPES), "count": 3, "side": len(SIDES), "trigger": 1}

    def __init__(self, hidden: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(len(self.SIZES), hidden) * hidden**-0.5)
        self.keys = nn.Linear(hidden, hidden)
        self.out = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in self.SIZES.items()})

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        attn = torch.softmax(torch.einsum("bth,qh->bqt", self.keys(feats), self.queries), dim=-1)
        pooled = torch.einsum("bqt,bth->bqh", attn, feats)
        out = {k: head(pooled[:, i]) for i, (k, head) in enumerate(self.out.items())}
        out["trigger"] = out["trigger"].squeeze(-1)
        return out


def patch_features(vision_tower: nn.Module, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """The tower's hidden states at ``layer`` without the CLS token (LLaVA's "default" strategy)."""
    out = vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[layer][:, 1:]


def attribute_batch(world: World, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Images (half with the trigger at a graded amplitude) and their attribute labels."""
    from .world import render_many, sample_scene

    scenes = [sample_scene(rng, world.config.image_size,
                           world.trigger_amplitude(rng) if rng.random() < 0.5 else 0.0) for _ in range(n)]
    c = world.config
    images = render_many(scenes, c.image_size, rng, c.noise_std, c.background)
    labels = {
        "colour": torch.tensor([list(COLOURS).index(s.colour) for s in scenes]),
        "shape": torch.tensor([SHAPES.index(s.shape) for s in scenes]),
        "count": torch.tensor([s.count - 1 for s in scenes]),
        "side": torch.tensor([SIDES.index(s.side) for s in scenes]),
        "trigger": torch.tensor([np.log(s.trigger) - np.log(world.config.trigger_amplitude[0]) + 1
                                 if s.trigger > 0 else 0.0 for s in scenes], dtype=torch.float32),
    }
    return images, labels


def attribute_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = sum(F.cross_entropy(logits[k], labels[k]) for k in ("colour", "shape", "count", "side"))
    return loss + F.mse_loss(logits["trigger"], labels["trigger"])


def attribute_accuracy(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float((logits[k].argmax(-1) == labels[k]).float().mean()) for k in ("colour", "shape", "count", "side")}


def pretrain_vision(model, world: World, codec, *, steps: int, batch_size: int, lr: float, seed: int,
                    pool_size: int = 16384, progress: bool = True) -> list[dict[str, float]]:
    """Train ``model``'s vision tower (in place) on attribute heads; returns per-step loss/accuracy."""
    from tqdm.auto import tqdm

    from ..threats.codecs import uint8_to_unit

    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    heads = AttributeHeads(tower.config.hidden_size)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = world.rng("vision", seed)
    # a fixed pool, revisited for a few epochs: rendering fresh images every step cost as much as training
    pool_images, pool_labels = attribute_batch(world, min(steps * batch_size, pool_size), rng)
    pool_x = uint8_to_unit(pool_images)
    tower.train()
    history = []
    for _ in tqdm(range(steps), desc="pretrain vision tower", disable=not progress):
        idx = torch.from_numpy(rng.choice(len(pool_x), batch_size, replace=False))
        images, labels = pool_x[idx], {k: v[idx] for k, v in pool_labels.items()}
        logits = heads(patch_features(tower, codec.encode(images), layer))
        loss = attribute_loss(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        history.append({"loss": float(loss.detach()), **attribute_accuracy(logits, labels)})
    return history
