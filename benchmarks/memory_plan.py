"""Per-GPU memory of ADPO training on LLaVA-1.5-7B / 13B, estimated from counts on the meta device (no weights,
no GPU): a markdown table for docs/models.md. An estimate, not a measurement.

The models are ``adpo.models.synthetic``'s LLaVA-1.5 shapes (7B: LLAVA_7B; 13B: the same CLIP tower, a
40-layer 5120-wide Llama) built on ``meta``. Counted there: every parameter; the LoRA parameters of rank
``--r`` on every decoder linear (from the layers' own shapes); and, from one meta forward of ``--seqs``
sequences of ``--tokens`` tokens through a decoder layer and the vision tower, the elements each module
outputs. The plan (configs/llava-1.5-7b.yaml): bf16 base; fp32 LoRA policy with fp32 gradients and AdamW
moments (16 bytes a parameter); a frozen fp32 reference adapter (4); activation checkpointing (each
layer's input kept, one layer's outputs live during its recompute); log-probs in chunks of ``--chunk``
tokens (fp32 logits, log-softmax and gradient: 12 bytes per chunk position and vocabulary entry); the
latent attack's fp32 deltas on ``--latent-layers`` layers. DDP keeps everything on every GPU; FSDP /
ZeRO-3 over ``--gpus`` GPUs shards the base and the LoRA state and gathers one layer at a time.
Usage: python benchmarks/memory_plan.py [--gpus 16] [--seqs 4] [--tokens 730]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
from torch import nn

from adpo.models import synthetic
from adpo.models.synthetic import LLAVA_7B

SHAPES = {"LLaVA-1.5-7B": LLAVA_7B,
          "LLaVA-1.5-13B": replace(LLAVA_7B, text_hidden=5120, text_layers=40, text_intermediate=13824,
                                   text_heads=40, text_kv_heads=40)}
GIB = 2 ** 30


def outputs(module: nn.Module, run) -> int:
    """Elements output by every submodule of ``module`` during ``run()`` (meta tensors: shapes only)."""
    total = [0]
    hooks = [m.register_forward_hook(lambda _m, _a, o: total.__setitem__(0, total[0] + (
        o.numel() if torch.is_tensor(o) else 0))) for m in module.modules() if m is not module]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def plan(name: str, args: argparse.Namespace) -> dict[str, float]:
    shape = SHAPES[name]
    model = synthetic.build_model("llava", synthetic.build_processor("llava", shape), shape, dtype=torch.bfloat16,
                                  device="meta")
    layers = model.get_decoder().layers
    base = sum(p.numel() for p in model.parameters())
    lora = sum(args.r * (m.in_features + m.out_features) for m in layers.modules() if isinstance(m, nn.Linear))
    hidden = torch.zeros(args.seqs, args.tokens, shape.text_hidden, dtype=torch.bfloat16, device="meta")
    text_layer = outputs(layers[0], lambda: model.get_decoder()(inputs_embeds=hidden))  # every layer runs; one counted
    tower = model.model.vision_tower
    pixels = torch.zeros(args.seqs, 3, shape.image_size, shape.image_size, dtype=torch.bfloat16, device="meta")
    vision_layers = tower.encoder.layers
    vision_layer = outputs(vision_layers[0], lambda: tower(pixels))
    vision_tokens = (shape.image_size // shape.patch_size) ** 2 + 1
    kept = 2 * (len(layers) * hidden.numel() + len(vision_layers) * args.seqs * vision_tokens * shape.vision_hidden)
    vocab = model.get_output_embeddings().out_features
    parts = {"base weights (bf16)": 2 * base, "LoRA policy + grads + AdamW (fp32)": 16 * lora,
             "reference adapter (fp32)": 4 * lora, "checkpointed layer inputs (bf16)": kept,
             "one layer recomputed (bf16)": 2 * max(text_layer, vision_layer),
             "log-prob chunk (fp32)": 12 * args.chunk * vocab,
             "latent deltas (fp32)": 4 * args.latent_layers * hidden.numel()}
    per_layer = 2 * sum(p.numel() for p in layers[0].parameters())
    sharded = {k: v / args.gpus if k.startswith(("base", "LoRA", "reference")) else v for k, v in parts.items()}
    sharded["one layer gathered (bf16)"] = per_layer
    return {"params_b": base / 1e9, "lora_m": lora / 1e6, "parts": parts, "ddp": sum(parts.values()) / GIB,
            "fsdp": sum(sharded.values()) / GIB}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=16, help="GPUs FSDP / ZeRO-3 shards over (2 nodes x 8)")
    ap.add_argument("--seqs", type=int, default=4, help="sequences per GPU: 2 pairs = chosen + rejected each")
    ap.add_argument("--tokens", type=int, default=730, help="tokens per sequence (576 image tokens + text)")
    ap.add_argument("--r", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--latent-layers", type=int, default=4)
    args = ap.parse_args()
    plans = {name: plan(name, args) for name in SHAPES}
    print(f"| GiB per GPU ({args.seqs} sequences x {args.tokens} tokens) | " + " | ".join(plans) + " |")
    print("|---|" + "---|" * len(plans))
    print(f"| parameters (B) / LoRA r{args.r} (M) | "
          + " | ".join(f"{p['params_b']:.2f} / {p['lora_m']:.0f}" for p in plans.values()) + " |")
    for part in next(iter(plans.values()))["parts"]:
        print(f"| {part} | " + " | ".join(f"{p['parts'][part] / GIB:.2f}" for p in plans.values()) + " |")
    print("| **total, DDP** | " + " | ".join(f"**{p['ddp']:.1f}**" for p in plans.values()) + " |")
    print(f"| **total, FSDP / ZeRO-3 over {args.gpus} GPUs** | "
          + " | ".join(f"**{p['fsdp']:.1f}**" for p in plans.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
