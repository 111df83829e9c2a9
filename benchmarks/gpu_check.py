"""What DPO and ADPO cost on a LLaVA-1.5-7B-shaped model: seconds per step, peak GPU memory, ADPO/DPO ratio.

No download: the model is ``adpo.models.synthetic``'s LLaVA-1.5-7B shape (CLIP ViT-L/14-336 + a 32-layer,
4096-wide Llama, vocabulary 32064) with random weights, created in bf16 directly on the device, and the
processor is built offline. Every step is the training loop's own step function (``adpo.trainer.steps``)
with the recipe of ``configs/llava-1.5-7b.yaml`` (LoRA r128/α256 on all decoder linears, gradient
checkpointing, chunked fp32 log-probs, image PGD L∞ 0.2 keeping the lowest-loss iterate):

* ``dpo``: reference = the base with the adapter disabled; one optimizer step;
* ``adpo K=1`` and ``adpo K=5``: reference = a frozen adapter on the same base (saved and loaded, as an AT
  run's adapter would be), the policy attacked with K PGD steps first;
* ``pgd100``: a 100-step image PGD attack (evaluation's targeted objective) on the policy, per attack step.

Run on a GPU: ``bash scripts/gpu_check.sh`` (about 3 minutes on one H100). ``--device cpu --tiny`` runs
the same script on a tiny random LLaVA in seconds (what CI runs). Each phase prints a table row and, with
``--out FILE``, appends a JSON line as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, reps: int, device: str, warmup=None) -> tuple[float, float | None]:
    """(median seconds per call after one warm-up call of ``warmup`` (default ``fn``), peak GPU GiB over the
    timed calls)."""
    (warmup or fn)()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return float(np.median(times)), peak


def _batch(processor, n: int, response_words: int, device: str) -> dict[str, torch.Tensor]:
    """``n`` pairs on random images: a short prompt, a refusal and a compliance of ``response_words`` words."""
    from adpo.data.collate import collate_pairs

    rng = np.random.default_rng(0)
    size = processor.image_processor.crop_size["height"]
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    words = " ".join(["then follow the steps"] * (response_words // 4))
    b = collate_pairs(processor, images, ["how do i forge the passport?"] * n,
                      [f"sorry, i cannot help with that. {words}"] * n, [f"sure, here is how: {words}"] * n)
    return {k: v.to(device) for k, v in b.items()}


def run(args: argparse.Namespace) -> list[dict]:
    from adpo.models import synthetic
    from adpo.models.adapters import POLICY, LoraSettings, build_policy, enable_checkpointing
    from adpo.threats.codecs import codec_for
    from adpo.threats.image import ImagePGD
    from adpo.threats.objectives import targeted_nll
    from adpo.threats.protocol import optimise
    from adpo.trainer.config import RunConfig
    from adpo.trainer.steps import StepContext, dpo_step
    from adpo.utils.config import load_yaml

    device = args.device
    rank = _ddp_init(device) if args.ddp else 0
    if args.ddp and device.startswith("cuda"):
        device = f"cuda:{rank}"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    shape = synthetic.TINY if args.tiny else synthetic.LLAVA_7B
    t0 = time.perf_counter()
    base, processor = synthetic.build("llava", shape, dtype=dtype, device=device)
    enable_checkpointing(base)
    built = time.perf_counter() - t0
    recipe = load_yaml(ROOT / "configs" / "llava-1.5-7b.yaml")
    if args.tiny:
        recipe["lora"].update(r=8, alpha=16)
    batch = _batch(processor, args.batch, args.response_words, device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.startswith("cuda") else nullcontext
    n_params = sum(p.numel() for p in base.parameters())
    where = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    common = {"device": device, "gpu": where,
              "shape": "tiny" if args.tiny else "llava-1.5-7b", "params_b": round(n_params / 1e9, 3),
              "batch_pairs": args.batch, "seq_len": int(batch["input_ids"].shape[1]), "torch": torch.__version__}
    print(f"built {common['shape']} ({common['params_b']}B params, {dtype}) on {device} in {built:.1f}s; "
          f"{args.batch} pairs x {common['seq_len']} tokens")
    rows = []
    print(f"{'phase':<12} {'s/step':>9} {'peak GiB':>9} {'x DPO':>6}", flush=True)

    def report(row: dict) -> None:
        """Print and save each row as soon as it is measured: a run cut short keeps what it measured."""
        if args.ddp:
            row["phase"] = f"ddp{torch.distributed.get_world_size()} {row['phase']}"
        dpo = rows[0]["s_per_step"] if rows else None
        row["ratio_to_dpo"] = round(row["s_per_step"] / dpo, 2) if "adpo" in row["phase"] and dpo else None
        rows.append(row)
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        ratio = "-" if row["ratio_to_dpo"] is None else f"{row['ratio_to_dpo']:.2f}"
        print(f"{row['phase']:<12} {row['s_per_step']:>9.4f} {peak:>9} {ratio:>6}", flush=True)
        if args.out and rank == 0:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    def measure(name: str, method: str, k: int, policy, reps: int) -> None:
        raw = {**recipe, "method": method, "model": "synthetic", "data": "-", "out": "-",
               "reference": "-" if method == "adpo" else None}
        raw["image"] = {**raw["image"], "steps": k}
        cfg = RunConfig.from_dict(raw)
        params = [p for _, p in policy.trainable()]
        opt = torch.optim.AdamW(params, lr=cfg.train.lr)
        model = policy.model
        if args.ddp:  # the loop's layout: DDP for the training forward, attacks on the unwrapped model
            ids = [rank] if device.startswith("cuda") else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        ctx = StepContext(cfg, model, policy.model, policy, codec_for(processor),
                          torch.Generator().manual_seed(0), autocast, cfg.train.logps_chunk)
        policy.model.train()

        def step() -> None:
            loss, _ = dpo_step(ctx, batch, None, log=False)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        sec, peak = _timed(step, reps, device)
        report({**common, "phase": name, "attack_steps": k, "s_per_step": round(sec, 4),
                "peak_gib": None if peak is None else round(peak, 2)})

    lora = recipe["lora"]
    settings = LoraSettings(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"])
    policy = build_policy(base, settings, reference="init")  # DPO: the base (adapter disabled) is the reference
    measure("dpo", "dpo", 0, policy, args.reps)
    with tempfile.TemporaryDirectory() as tmp:  # ADPO: a saved adapter is both the reference and the start
        policy.model.save_pretrained(tmp, selected_adapters=[POLICY])
        base = policy.model.unload()
        policy = build_policy(base, settings, init=tmp, reference="init")
    for k in (1,) if args.ddp else (1, 5):
        measure(f"adpo K={k}", "adpo", k, policy, args.reps)
    if args.ddp:
        torch.distributed.destroy_process_group()
        return rows

    pgd = ImagePGD(eps=16 / 255, step_size=1 / 255, steps=args.pgd_steps, random_start=True)
    from adpo.data.collate import halves, image_keys

    _, rejected = halves(batch)
    inputs = {**image_keys(batch), "prompt_mask": rejected["prompt_mask"], "attention_mask": rejected["attention_mask"]}
    policy.model.eval()

    def attack(steps: int) -> None:
        with autocast():
            optimise(policy.model, inputs, targeted_nll(rejected, recipe["train"]["logps_chunk"]),
                     replace(pgd, steps=steps), codec=codec_for(processor), generator=torch.Generator().manual_seed(0))

    sec, peak = _timed(lambda: attack(pgd.steps), 1, device, warmup=lambda: attack(3))
    report({**common, "phase": f"pgd{args.pgd_steps}", "attack_steps": args.pgd_steps,
            "s_per_step": round(sec / args.pgd_steps, 4), "s_total": round(sec, 2),
            "peak_gib": None if peak is None else round(peak, 2)})
    return rows


def _ddp_init(device: str) -> int:
    """Join the torchrun process group (nccl on GPUs, gloo on CPU); returns this process's rank."""
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(rank)
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if torch.distributed.get_rank():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 prints the table
    return rank


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a tiny random LLaVA instead of the 7B shape")
    ap.add_argument("--batch", type=int, default=2, help="preference pairs per step (the official ADPO batch)")
    ap.add_argument("--response-words", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3, help="timed steps per phase, after one warm-up")
    ap.add_argument("--pgd-steps", type=int, default=100)
    ap.add_argument("--out", type=Path, help="append the rows as JSON lines")
    ap.add_argument("--ddp", action="store_true", help="under torchrun: DPO and ADPO K=1 steps with DDP on every "
                                                       "process (one GPU each), rows 'ddp<N> ...' from rank 0")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA device here; use --device cpu --tiny")
    return run(args)


if __name__ == "__main__":
    main()
