"""Time per attack step vs one forward+backward of the model, on the organism (prints JSON lines).

An attack step is one forward and one backward to the perturbation (parameters frozen, so no weight
gradients); the reference is one training forward+backward (weight gradients) on the same batch.
Usage: python benchmarks/attack_step_cost.py --organism runs/organism [--batch 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from adpo.objectives.logps import sft_loss
from adpo.organism.pretrain import encode_samples
from adpo.organism.world import World, WorldConfig
from adpo.threats.codecs import codec_for
from adpo.threats.engine import JointPGD, LatentPGD, model_inputs, targeted_nll
from adpo.threats.image import ImagePGD


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organism", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(args.organism / "model")
    proc = AutoProcessor.from_pretrained(args.organism / "model")
    marker = json.loads((args.organism / "model" / "adpo_organism.json").read_text())
    world = World(WorldConfig.from_dict(marker["world"]))
    rng = world.rng("bench")
    batch = encode_samples(world, proc, [world.harm_sample("test", rng, 0.0, comply=True)
                                         for _ in range(args.batch)], rng)
    codec = codec_for(proc)
    model_kwargs = model_inputs(batch)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        sft_loss(model(**model_kwargs).logits, batch["labels"]).backward()

    train_step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    floor = (time.perf_counter() - t0) / args.steps
    model.zero_grad(set_to_none=True)
    print(json.dumps({"what": "train forward+backward", "ms": round(1000 * floor, 1), "batch": args.batch}))
    threats = {"image": ImagePGD(eps=16 / 255, steps=args.steps),
               "latent": LatentPGD(eps=0.5, steps=args.steps, layers=(1,), relative=True),
               "joint": JointPGD(ImagePGD(eps=16 / 255), LatentPGD(eps=0.5, layers=(1,), relative=True),
                                 steps=args.steps)}
    for name, threat in threats.items():
        threat.run(model, batch, targeted_nll(batch), codec=codec)  # warm-up
        t0 = time.perf_counter()
        threat.run(model, batch, targeted_nll(batch), codec=codec)
        per_step = (time.perf_counter() - t0) / (args.steps + 1)  # steps + the final evaluation forward
        print(json.dumps({"what": f"{name} attack step", "ms": round(1000 * per_step, 1),
                          "ratio_to_train_step": round(per_step / floor, 2), "batch": args.batch}))
    print(json.dumps({"machine": f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
