"""Time per attack step vs one forward+backward of the model, on the organism (prints JSON lines).

An attack step is one forward and one backward to the perturbation (parameters frozen, so no weight
gradients); the reference is one training forward+backward (weight gradients) on the same batch.
Each kind of pass is timed in interleaved repetitions and the median is reported with its spread.
``latent-truncated`` rows run the same attack with ``truncate=True`` (layer 1 of 4, and the demo's
layer -2: the layers below run once, without grad).
Usage: python benchmarks/attack_step_cost.py --organism runs/organism [--batch 32] [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from adpo.objectives.logps import sft_loss
from adpo.organism.pretrain import encode_samples, load_organism
from adpo.threats import JointPGD, LatentPGD, model_inputs, targeted_nll
from adpo.threats.codecs import codec_for
from adpo.threats.image import ImagePGD


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organism", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; medians are reported")
    args = ap.parse_args()
    model, proc, world = load_organism(args.organism / "model")
    model.train()  # the training step it is compared with runs in train mode
    rng = world.rng("bench")
    batch = encode_samples(world, proc, [world.harm_sample("test", rng, 0.0, comply=True)
                                         for _ in range(args.batch)], rng)
    codec = codec_for(proc)
    model_kwargs = model_inputs(batch)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        sft_loss(model(**model_kwargs).logits, batch["labels"]).backward()

    threats = {"image": ImagePGD(eps=16 / 255, steps=args.steps),
               "latent": LatentPGD(eps=0.5, steps=args.steps, layers=(1,), relative=True),
               # the layers below the latent layer once, only those above per step (latent.truncate)
               "latent-truncated": LatentPGD(eps=0.5, steps=args.steps, layers=(1,), relative=True, truncate=True),
               "latent-top": LatentPGD(eps=0.5, steps=args.steps, layers=(-2,), relative=True),
               "latent-top-truncated": LatentPGD(eps=0.5, steps=args.steps, layers=(-2,), relative=True,
                                                 truncate=True),
               "joint": JointPGD(ImagePGD(eps=16 / 255), LatentPGD(eps=0.5, layers=(1,), relative=True),
                                 steps=args.steps)}

    def per_step(name: str) -> float:
        t0 = time.perf_counter()
        if name == "train":
            for _ in range(args.steps):
                train_step()
            return (time.perf_counter() - t0) / args.steps
        threats[name].run(model, batch, targeted_nll(batch), codec=codec)
        return (time.perf_counter() - t0) / (args.steps + 1)  # steps + the final evaluation forward

    names = ["train", *threats]
    for name in names:  # warm-up
        per_step(name)
    # interleaved repetitions and medians, so drift in the machine's speed hits every row alike
    samples = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            samples[name].append(per_step(name))
    med = {name: statistics.median(v) for name, v in samples.items()}
    model.zero_grad(set_to_none=True)
    print(json.dumps({"what": "train forward+backward", "ms": round(1000 * med["train"], 1), "batch": args.batch,
                      "spread_ms": [round(1000 * min(samples["train"]), 1), round(1000 * max(samples["train"]), 1)]}))
    for name in threats:
        print(json.dumps({"what": f"{name} attack step", "ms": round(1000 * med[name], 1),
                          "ratio_to_train_step": round(med[name] / med["train"], 2), "batch": args.batch,
                          "spread_ms": [round(1000 * min(samples[name]), 1), round(1000 * max(samples[name]), 1)]}))
    print(json.dumps({"machine": f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
