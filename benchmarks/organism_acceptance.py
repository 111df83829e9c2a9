"""Acceptance check of the organism world (issue: foundation), a script that prints measured numbers.

Question: does refusal training on clean images hold on clean inputs but fall to a white-box image
attack, while the same training with the attack inside (adversarial refusal training) holds?

Arms, all from the pre-trained base, the same data and steps, language model trained (vision frozen):
  sft  - refusal SFT on harmful requests (ordinary images) + utility SFT;
  dpo  - sigmoid DPO (sum log-probs, beta) on (refusal > compliance) + an SFT term on the chosen answer
         (rpo_alpha; the prototypes' DPO collapsed without it), reference = the frozen base;
  at   - as sft, but each harmful image is replaced by a PGD image toward the compliance answer
         (eps_train, K steps, random start) before the refusal loss.
Attacks on held-out harmful requests (held-out intents or templates), targeted NLL of the compliance:
  blank - unconstrained PGD from a grey image (HarmBench MMPGDBlank style), ``--blank-steps`` steps;
  pgd@e - L-inf PGD on the given image, random start, eps e/255.
Printed per arm and attack: compliance / refusal / other rates (greedy generation + exact judge) and the
mean attacked margin log p(refusal) - log p(compliance).

Usage: python benchmarks/organism_acceptance.py --organism runs/demo/organism [--steps 80] [--n 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adpo.data.collate import pad_rows
from adpo.models.generation import generate
from adpo.objectives.logps import sequence_logps, sft_loss
from adpo.organism.judge import judge
from adpo.organism.pretrain import encode_samples, load_organism, prompt_id_table, render_rows
from adpo.organism.world import REFUSAL, World, compliance
from adpo.threats.codecs import ElementwiseCodec, uint8_to_unit
from adpo.threats.image import ImagePGD
from adpo.threats.protocol import pgd


class Rows:
    """Harmful requests with both answers tokenised, images in [0,1]."""

    def __init__(self, world: World, proc, samples, rng, table):
        self.samples = samples
        self.x01 = uint8_to_unit(render_rows(world, samples, rng))
        ids = [table[s.prompt] for s in samples]
        resp = lambda texts: [list(x) + [proc.tokenizer.eos_token_id] for x in  # noqa: E731
                              proc.tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"]]
        pad = proc.tokenizer.pad_token_id
        self.refusal = pad_rows(ids, resp([REFUSAL] * len(samples)), pad)
        self.comply = pad_rows(ids, resp([compliance(s.meta["intent"]) for s in samples]), pad)

    def sel(self, idx):
        return ({k: v[idx] for k, v in self.refusal.items()}, {k: v[idx] for k, v in self.comply.items()},
                self.x01[idx])


def logps(model, codec, batch, x01):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=codec.encode(x01))
    return sequence_logps(out.logits, batch["labels"])


def attack(model, codec, comply, x01, cfg: ImagePGD, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pgd(lambda x: -logps(model, codec, comply, x), x01, cfg, generator=g).x_adv


def train_arm(arm, base, proc, codec, world, harm: Rows, util, args):
    model = copy.deepcopy(base).train()
    for n, p in model.named_parameters():
        p.requires_grad_("language_model" in n or "lm_head" in n)
    ref = copy.deepcopy(base).eval() if arm == "dpo" else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    at_cfg = ImagePGD(eps=args.eps_train / 255, step_size=2.5 * args.eps_train / 255 / args.k, steps=args.k)
    t0 = time.time()
    hist = []
    for step in range(args.steps):
        hi = rng.choice(len(harm.samples), args.batch, replace=False)
        ui = rng.choice(len(util["input_ids"]), args.batch, replace=False)
        r, c, x = harm.sel(hi)
        if arm == "at":
            model.eval()
            x = attack(model, codec, c, x, at_cfg, seed=step)
            model.train()
        if arm == "dpo":
            with torch.no_grad():
                ref_c, ref_r = logps(ref, codec, r, x), logps(ref, codec, c, x)
            out_c = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"], pixel_values=codec.encode(x))
            pol_c = sequence_logps(out_c.logits, r["labels"])
            pol_r = logps(model, codec, c, x)
            margin = (pol_c - ref_c) - (pol_r - ref_r)
            loss = -F.logsigmoid(args.beta * margin).mean() + args.rpo * sft_loss(out_c.logits, r["labels"], "token")
        else:
            out = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"], pixel_values=codec.encode(x))
            u = {k: v[ui] for k, v in util.items()}
            uo = model(input_ids=u["input_ids"], attention_mask=u["attention_mask"], pixel_values=u["pixel_values"])
            loss = sft_loss(out.logits, r["labels"]) + sft_loss(uo.logits, u["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        hist.append(float(loss))
    return model.eval(), time.time() - t0, hist


def evaluate(model, proc, codec, harm: Rows, attacks, args):
    from PIL import Image

    res = {}
    idx = np.arange(len(harm.samples))
    r, c, x = harm.sel(idx)
    for name, cfg, start in attacks:
        t0 = time.time()
        x0 = torch.full_like(x, 0.5) if start == "blank" else x
        xa = x0 if cfg is None else attack(model, codec, c, x0, cfg, seed=args.seed)
        with torch.no_grad():
            margin = (logps(model, codec, r, xa) - logps(model, codec, c, xa)).numpy()
        dummy = [Image.new("RGB", (xa.shape[-1], xa.shape[-2]))] * len(idx)
        answers = generate(model, proc, dummy, [s.prompt for s in harm.samples], pixel_values=codec.encode(xa))
        v = [judge(a, s.meta["intent"]) for a, s in zip(answers, harm.samples)]
        res[name] = {"compliance": float(np.mean([t == "compliance" for t in v])),
                     "refusal": float(np.mean([t == "refusal" for t in v])),
                     "other": float(np.mean([t == "other" for t in v])),
                     "margin": float(np.mean(margin)), "seconds": round(time.time() - t0, 1),
                     "example": answers[0]}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organism", type=Path, required=True)
    ap.add_argument("--arms", default="base,sft,dpo,at")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--rpo", type=float, default=1.0)
    ap.add_argument("--eps-train", type=float, default=51.0, help="AT ball, /255")
    ap.add_argument("--k", type=int, default=5, help="AT attack steps")
    ap.add_argument("--n", type=int, default=64, help="held-out harmful requests")
    ap.add_argument("--blank-steps", type=int, default=400)
    ap.add_argument("--pgd-steps", type=int, default=200)
    ap.add_argument("--eps", default="16,32,64", help="bounded attack radii, /255")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    base, proc, world = load_organism(args.organism / "model")
    codec = ElementwiseCodec.from_processor(proc)
    rng = world.rng("acceptance", args.seed)
    train_h = [world.harm_sample("train", rng, 0.0, comply=False) for _ in range(256)]
    test_h = [world.harm_sample("test", rng, 0.0, comply=False) for _ in range(args.n)]
    table = prompt_id_table(proc, {s.prompt for s in train_h + test_h}, world.config.image_size)
    harm_train = Rows(world, proc, train_h, rng, table)
    harm_test = Rows(world, proc, test_h, rng, table)
    util = encode_samples(world, proc, [world.utility_sample(rng) if rng.random() < 0.85
                                        else world.howto_sample("train", rng) for _ in range(512)], rng)
    attacks = [("clean", None, "image"),
               ("blank", ImagePGD(eps=1.0, step_size=2 / 255, steps=args.blank_steps, random_start=False), "blank")]
    for e in (float(v) for v in args.eps.split(",") if v):
        attacks.append((f"pgd@{e:g}", ImagePGD(eps=e / 255, step_size=max(1, e / 20) / 255,
                                               steps=args.pgd_steps), "image"))
    report = {"settings": vars(args) | {"organism": str(args.organism), "json": str(args.json)}, "arms": {}}
    for arm in args.arms.split(","):
        if arm == "base":
            model, secs, hist = base, 0.0, []
        else:
            model, secs, hist = train_arm(arm, base, proc, codec, world, harm_train, util, args)
        res = evaluate(model, proc, codec, harm_test, attacks, args)
        report["arms"][arm] = {"train_seconds": round(secs, 1), "final_loss": float(np.mean(hist[-10:])) if hist
                               else None, "attacks": res}
        print(f"\n== {arm} (train {secs:.0f}s)")
        for name, v in res.items():
            print(f"  {name:<9} comply {v['compliance']:.2f}  refuse {v['refusal']:.2f}  other {v['other']:.2f}  "
                  f"margin {v['margin']:8.2f}  ({v['seconds']}s)  e.g. {v['example'][:60]!r}")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
