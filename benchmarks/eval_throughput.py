"""Behaviours per second of the pgd-image evaluation attack, batched vs one behaviour at a time (JSON lines).

Both modes run the same attack (adpo.eval.attacks.attack: PGD toward the target, generation and the judge
at every checkpoint) on the same held-out behaviours of the pre-trained organism; only the batch differs.
Usage: python benchmarks/eval_throughput.py --organism runs/organism [--n 32] [--steps 50] [--eps 16/255]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from adpo.eval.attacks import Target, attack
from adpo.eval.config import parse_eps
from adpo.eval.data import load_harmful
from adpo.eval.judges import OrganismJudge
from adpo.organism.export import ExportConfig, export
from adpo.organism.pretrain import load_organism
from adpo.threats.codecs import codec_for
from adpo.threats.image import ImagePGD


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organism", type=Path, required=True)
    ap.add_argument("--n", type=int, default=32, help="behaviours")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eps", default="16/255")
    ap.add_argument("--check-every", type=int, default=10)
    args = ap.parse_args()
    model, proc, world = load_organism(args.organism / "model")
    with tempfile.TemporaryDirectory() as tmp:
        export(Path(tmp) / "d", world.config, ExportConfig(n_pairs=1, n_sft=1, n_eval=args.n))
        rows = load_harmful(Path(tmp) / "d" / "harmful_test.jsonl", args.n)
    t = Target(model, proc, codec_for(proc), OrganismJudge(), check_every=args.check_every)
    pgd = ImagePGD(eps=parse_eps(args.eps), step_size=max(1 / 255, parse_eps(args.eps) / 10), steps=args.steps)
    common = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads", "torch": torch.__version__,
              "n": args.n, "steps": args.steps, "eps": args.eps, "check_every": args.check_every}
    rates = {}
    for mode, size in (("batched", args.n), ("one_at_a_time", 1)):
        t0 = time.perf_counter()
        outs = []
        for s in range(0, args.n, size):
            chunk = rows[s: s + size]
            outs += attack(t, chunk, [r.image for r in chunk], seed=0, threat=pgd)
        dt = time.perf_counter() - t0
        rates[mode] = args.n / dt
        asr = sum(o.step is not None for o in outs) / len(outs)
        print(json.dumps({**common, "mode": mode, "seconds": round(dt, 2), "behaviours_per_s": round(rates[mode], 3),
                          "asr": asr}), flush=True)
    print(json.dumps({**common, "speedup": round(rates["batched"] / rates["one_at_a_time"], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
