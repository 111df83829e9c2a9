"""Wall-clock seconds of `adpo eval` in 1 process and sharded over N processes (torchrun, gloo on CPU), and
whether the two wrote the same records (JSON lines).

Both runs evaluate the same pre-trained organism with the same options into fresh folders; the sharded
one splits each subtask's batches across processes (adpo.eval.shard). Each process uses one thread
(OMP_NUM_THREADS=1) in both modes, so the ratio measures the split, not thread oversubscription; on a
machine whose cores are busy with other work the ratio says so (the load average is printed with it).
Usage: python benchmarks/eval_sharding.py --organism runs/v1/organism [--procs 2] [--n 16] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(procs: int, out: Path, args: argparse.Namespace) -> float:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
               str(29500 + os.getpid() % 1000)] if procs > 1 else [sys.executable])
    cmd = launch + ["-m", "adpo.cli", "eval", "--model", str(args.organism / "model"), "--out", str(out),
                    "--no-progress", "tasks=[clean,pgd-image]", f"limit={args.n}", f"batch_size={args.batch}",
                    f"pgd_image.steps={args.steps}", "pgd_image.eps=[16/255]", "pgd_image.blank=false",
                    f"check_every={args.steps // 2}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def records(path: Path) -> list[dict]:
    """The records of a samples file, without what names the run's own folder: the organism's evaluation
    data is exported into each output folder, so each record's ``source`` (and the config hash over the
    sources) holds that folder's path."""
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("source", "config_hash")} for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organism", type=Path, required=True, help="an `adpo organism pretrain` / demo folder")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--n", type=int, default=16, help="behaviours")
    ap.add_argument("--batch", type=int, default=4, help="eval.batch_size (the unit the processes split)")
    ap.add_argument("--steps", type=int, default=20, help="pgd-image steps")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        t1 = run(1, one, args)
        tn = run(args.procs, many, args)
        same = all(records(one / p.name) == records(p) for p in many.glob("samples_*.jsonl"))
    print(json.dumps({"processes": args.procs, "behaviours": args.n, "batch_size": args.batch,
                      "pgd_steps": args.steps, "seconds_1": round(t1, 1), f"seconds_{args.procs}": round(tn, 1),
                      "speedup": round(t1 / tn, 2), "same_records": same, "cpus": os.cpu_count(),
                      "load_average": os.getloadavg(), "machine": platform.platform()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
