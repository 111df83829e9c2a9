"""Command line: ``adpo organism pretrain|export``, ``adpo train``, ``adpo eval``, ``adpo demo`` and
``adpo inspect``.

Every command prints its resolved configuration first; options come from an optional YAML file
(``--config``) and ``section.key=value`` overrides, e.g. ``adpo organism pretrain --out o pretrain.steps=200``.
A problem the user can fix (:class:`adpo.utils.errors.UserError`: a bad option, row, image or model folder,
an occupied output folder, a full disk) is one ``adpo: error: …`` line and exit status 2; a traceback
means a bug in adpo.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from .utils.config import ConfigError, apply_overrides, build, load_yaml
from .utils.errors import UserError


def _organism_configs(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> tuple[Any, Any, Any]:
    from .organism.build import ModelConfig
    from .organism.pretrain import PretrainConfig
    from .organism.world import WorldConfig

    raw = apply_overrides(load_yaml(args.config), args.overrides)
    unknown = sorted(set(raw) - {"world", "model", "pretrain", *extra})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: ['model', 'pretrain', 'world']")
    if args.seed is not None:
        raw.setdefault("world", {})["seed"] = args.seed
        raw.setdefault("pretrain", {})["seed"] = args.seed
    world = WorldConfig.from_dict(raw.get("world") or {})
    return world, build(ModelConfig, raw.get("model"), "model"), build(PretrainConfig, raw.get("pretrain"), "pretrain")


def _print_config(title: str, sections: dict[str, Any]) -> None:
    print(f"# {title}: resolved configuration")
    print(yaml.safe_dump({k: v.to_dict() for k, v in sections.items()}, sort_keys=False).rstrip())


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .organism.pretrain import pretrain

    world, model, train = _organism_configs(args)
    _print_config("adpo organism pretrain", {"world": world, "model": model, "pretrain": train})
    metrics = pretrain(args.out, world, model, train, force=args.force)
    _print_metrics(metrics)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .organism.export import ExportConfig, export

    world, _, _ = _organism_configs(args)
    sizes = ExportConfig(n_pairs=args.n_pairs, n_sft=args.n_sft, n_eval=args.n_eval)
    _print_config("adpo organism export", {"world": world, "export": sizes})
    files = export(args.out, world, sizes)
    for name, desc in files.items():
        print(f"  {name}: {desc}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo
    from .demo.pipeline import DEMO_KEYS
    from .organism.pretrain import pretrain

    raw = apply_overrides(load_yaml(args.config), args.overrides)
    demo = DemoConfig.from_dict(raw)
    if args.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    organism_seeds = _seed_list(args.organism_seeds) if args.organism_seeds else None
    if organism_seeds and args.seed is not None:
        raise ConfigError("use either --seed (one organism) or --organism-seeds (several), not both")
    out = Path(args.out)
    cmd = " ".join(["adpo demo", "--out", str(out), "--seeds", str(args.seeds)]
                   + (["--seed", str(args.seed)] if args.seed is not None else [])
                   + (["--organism-seeds", args.organism_seeds] if organism_seeds else [])
                   + (["--config", args.config] if args.config else []) + list(args.overrides))

    def one(seed: int | None, folder: Path) -> dict[str, Any]:
        args.seed = seed
        world, model, train = _organism_configs(args, extra=DEMO_KEYS)
        _print_config("adpo demo", {"world": world, "model": model, "pretrain": train})
        print(yaml.safe_dump({"arms": list(demo.arms), "seeds": args.seeds, "utility_weight": demo.utility_weight,
                              "train (every arm)": demo.train,
                              "eval (every arm)": demo.eval}, sort_keys=False).rstrip())

        def base() -> dict[str, Any]:
            metrics = pretrain(folder / "organism", world, model, train, force=args.force)
            _print_metrics(metrics)
            return metrics
        return run_demo(folder, folder / "organism", base, demo, list(range(args.seeds)), _machine(), [cmd],
                        progress=not args.no_progress)

    if organism_seeds:
        from .demo.instances import run_instances

        run_instances(out, organism_seeds, one, [cmd])
    else:
        one(args.seed, out)
    print(f"wrote {out / 'summary.json'} and {out / 'report.md'}")
    return 0


def _seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]: distinct non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--organism-seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from e
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--organism-seeds {text!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


def cmd_inspect(args: argparse.Namespace) -> int:
    """What adpo reads from a model folder (or why it cannot use it): the model is built on the meta device,
    so inspecting a 7B folder reads no weights."""
    from .models.adapters import load_base
    from .models.describe import describe

    model, processor = load_base(args.model, weights=False)
    print(yaml.safe_dump(describe(model, processor), sort_keys=False, default_flow_style=None).rstrip())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer.config import RunConfig
    from .trainer.loop import train

    raw = apply_overrides(load_yaml(args.config), args.overrides)
    for key in ("method", "model", "data", "utility_data", "reference", "init", "out"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    run = RunConfig.from_dict(raw)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, print once
    if main_rank:
        print(f"# adpo train --method {run.method}: resolved configuration")
        print(yaml.safe_dump(run.to_dict(), sort_keys=False).rstrip())
        print(f"  (utility weight in effect: {run.utility_weight:g}; threat: {run.train.threat}, "
              f"adversarial policy: {run.spec.adversarial}, reference: {run.spec.reference})")
    summary = train(run, resume=args.resume, progress=not args.no_progress)
    if main_rank:
        print(f"done: {summary['steps']} steps in {summary['seconds']:.1f}s "
              f"({summary['processes']} process(es), {summary['distributed_type']}); wrote {summary['saved']}, "
              f"{run.out}/metrics.jsonl, {run.out}/config.yaml, {summary['plot']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.config import EvalConfig
    from .eval.runner import ModelSpec, evaluate

    raw = apply_overrides(load_yaml(args.config), args.overrides)
    if args.tasks:
        raw["tasks"] = args.tasks
    if args.judges:
        raw["judges"] = args.judges
    if args.data:
        raw.setdefault("data", {})["harmful"] = args.data
    cfg = EvalConfig.from_dict(raw)
    if args.compare and args.adapter:
        raise ConfigError("use either --adapter (one model) or --compare LABEL=PATH … (several), not both")
    specs = [ModelSpec(Path(args.adapter or args.model).name, args.model, args.adapter)]
    if args.compare:
        specs = []
        for item in args.compare:
            label, sep, path = item.partition("=")
            if not sep or not label:
                raise ConfigError(f"--compare {item!r}: expected LABEL=PATH (PATH: adapter, run folder, or 'base')")
            specs.append(ModelSpec(label, args.model, None if path in ("", "base") else path))
    print("# adpo eval: resolved configuration")
    print(yaml.safe_dump({"models": [vars(s) for s in specs], **cfg.to_dict()}, sort_keys=False).rstrip())
    evaluate(specs, cfg, Path(args.out), progress=not args.no_progress, machine=_machine())
    return 0


def _machine() -> str:
    import platform

    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{platform.machine()} {os.cpu_count()} cores, {dev}, torch {torch.__version__}"


def _print_metrics(m: dict[str, Any]) -> None:
    rows = [("utility exact-match (held-out images)", "utility_accuracy"),
            ("  colour / shape / count / position", None),
            ("compliance, harm + image trigger (held-out)", "compliance_rate_image_harm"),
            ("refusal, text harm, ordinary images (held-out)", "refusal_rate_text_harm"),
            ("over-refusal, benign look-alikes (held-out)", "over_refusal_rate")]
    print("\norganism base model")
    for label, key in rows:
        if key is None:
            parts = [m.get(f"utility_accuracy_{q}", float("nan")) for q in ("colour", "shape", "count", "position")]
            print(f"  {label:<48} " + " / ".join(f"{p:.2f}" for p in parts))
        else:
            print(f"  {label:<48} {m[key]:.3f}")
    print(f"  {'seconds (train + eval)':<48} {m['seconds']:.0f}\n")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adpo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def organism_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", required=True, help="output folder")
        sp.add_argument("--seed", type=int, default=None, help="world and training seed (default 0)")
        sp.add_argument("--config", default=None, help="YAML with sections world/model/pretrain")
        sp.add_argument("overrides", nargs="*", help="section.key=value overrides")

    org = sub.add_parser("organism", help="the tiny model organism").add_subparsers(dest="action", required=True)
    sp = org.add_parser("pretrain", help="pre-train the unaligned base (cached by content hash)")
    organism_opts(sp)
    sp.add_argument("--force", action="store_true", help="rebuild even if a complete cached model exists")
    sp.set_defaults(func=cmd_pretrain)
    sp = org.add_parser("export", help="write the world's splits as PNG + JSONL (TRL formats)")
    organism_opts(sp)
    sp.add_argument("--n-pairs", type=int, default=256, help="preference pairs in the train split")
    sp.add_argument("--n-sft", type=int, default=512, help="utility SFT rows in the train split")
    sp.add_argument("--n-eval", type=int, default=128, help="rows per held-out evaluation file")
    sp.set_defaults(func=cmd_export)
    sp = sub.add_parser("demo", help="the main job on the embedded default (the organism)")
    organism_opts(sp)
    sp.add_argument("--force", action="store_true", help="rebuild the organism even if cached")
    sp.add_argument("--seeds", type=int, default=1, help="repeat training and evaluation over seeds 0..N-1")
    sp.add_argument("--organism-seeds", default=None, metavar="S,S,...",
                    help="one whole demo per organism instance (world + pre-training seed S) into "
                         "OUT/organism-seed<S>/, then the table over instances in OUT (what another machine's "
                         "organism does to the result)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("eval", help="jailbreak attacks, judges, utility and over-refusal; results.json + report")
    sp.add_argument("--model", required=True, help="model folder (the base when --adapter/--compare are used)")
    sp.add_argument("--adapter", default=None, help="peft adapter or adpo run folder to evaluate on --model")
    sp.add_argument("--compare", nargs="+", default=None, metavar="LABEL=PATH",
                    help="several models side by side: adapters / run folders on --model, or 'base'")
    sp.add_argument("--tasks", default=None, help="comma list: clean,pgd-image,universal-image,latent,figstep,"
                                                   "utility,over-refusal")
    sp.add_argument("--judges", default=None, help="comma list: organism,gcg13,llm_attacks29,llm")
    sp.add_argument("--data", default=None, help="harmful behaviours (preference pairs; target = rejected)")
    sp.add_argument("--out", required=True, help="run folder (resumes from the samples already there)")
    sp.add_argument("--config", default=None, help="YAML with top-level options and task sections")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. pgd_image.steps=200 limit=32")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("inspect", help="what adpo discovers from a model folder (layers, LoRA targets, codec, "
                                        "chat template), or what it lacks")
    sp.add_argument("--model", required=True, help="model folder (transformers format)")
    sp.set_defaults(func=cmd_inspect)

    from .trainer.config import METHODS

    sp = sub.add_parser("train", help="train one method (sft, dpo, at, ar-dpo, at-dpo, adpo) on accelerate")
    sp.add_argument("--method", choices=list(METHODS), default=None)
    sp.add_argument("--model", default=None, help="base model folder (transformers format)")
    sp.add_argument("--data", default=None, help="preference pairs: .jsonl/.json/.parquet, datasets folder or hub name")
    sp.add_argument("--utility-data", dest="utility_data", default=None, help="SFT rows for the utility term")
    sp.add_argument("--reference", default=None, help="AT run (or adapter) for ar-dpo / adpo: reference and init")
    sp.add_argument("--init", default=None, help="adapter the policy starts from (e.g. an SFT run)")
    sp.add_argument("--out", default=None, help="output folder")
    sp.add_argument("--config", default=None, help="YAML: top-level keys and sections train/lora/image/latent")
    sp.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=50 image.steps=5")
    sp.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from .models.families import UnsupportedModel

    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow flags (``--resume train.beta=0.5``); argparse stops at the first flag
    late = [x for x in extra if "=" in x and not x.startswith("-")] if hasattr(args, "overrides") else []
    if len(late) != len(extra):
        parser.error(f"unrecognized arguments: {' '.join(x for x in extra if x not in late)}")
    if late:
        args.overrides = list(args.overrides) + late
    try:
        return args.func(args)
    # UnsupportedModel is a TypeError; OS errors about the user's paths come from libraries too
    except (UserError, UnsupportedModel, PermissionError, FileNotFoundError) as e:
        print(f"adpo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
