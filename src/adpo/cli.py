"""Command line: ``adpo organism pretrain|export``, ``adpo train``, ``adpo eval``, ``adpo demo``,
``adpo inspect``, ``adpo export`` (a merged model with its card) and ``adpo config`` (every option as YAML).

Every command prints its resolved configuration first; options come from an optional YAML file
(``--config``) and ``section.key=value`` overrides, e.g. ``adpo organism pretrain --out o pretrain.steps=200``;
``train`` and ``eval`` also take every option as a flag (``--train.lr``, TRL's ``--learning_rate``:
:mod:`adpo.utils.flags`). Messages go through the ``adpo`` logger (``--quiet`` / ``--verbose``).
A problem the user can fix (:class:`adpo.utils.errors.UserError`: a bad option, row, image or model folder,
an occupied output folder, a full disk) is one ``adpo: error: …`` line and exit status 2; a traceback
means a bug in adpo.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from .utils import flags
from .utils.config import ConfigError, apply_overrides, build, help_of, load_yaml
from .utils.errors import UserError

log = logging.getLogger("adpo")


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
    log.info(f"# {title}: resolved configuration")
    log.info(yaml.safe_dump({k: v.to_dict() for k, v in sections.items()}, sort_keys=False).rstrip())


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
    sizes = ExportConfig(n_pairs=args.n_pairs, n_sft=args.n_sft, n_eval=args.n_eval,
                         n_benign_pairs=args.n_benign_pairs, n_blank_pairs=args.n_blank_pairs)
    _print_config("adpo organism export", {"world": world, "export": sizes})
    files = export(args.out, world, sizes)
    for name, desc in files.items():
        log.info(f"  {name}: {desc}")
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
        log.info(yaml.safe_dump({"arms": list(demo.arms), "seeds": args.seeds, "utility_weight": demo.utility_weight,
                              "data": demo.export_config().to_dict(), "train (every arm)": demo.train,
                              "eval (every arm)": demo.eval}, sort_keys=False).rstrip())

        def base() -> dict[str, Any]:
            metrics = pretrain(folder / "organism", world, model, train, force=args.force)
            _print_metrics(metrics)
            return metrics
        return run_demo(folder, folder / "organism", base, demo, list(range(args.seeds)), _machine(), [cmd],
                        progress=args.progress)

    if organism_seeds:
        from .demo.instances import run_instances

        run_instances(out, organism_seeds, one, [cmd])
    else:
        one(args.seed, out)
    log.info(f"wrote {out / 'summary.json'} and {out / 'report.md'}")
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


TOP_KEYS = ("method", "model", "data", "utility_data", "reference", "init", "out", "eval_data")


def _run_config(args: argparse.Namespace, complete: bool = True) -> Any:
    """The training run the config file, the overrides and the flags describe (flags win)."""
    from .trainer.config import RunConfig

    raw = apply_overrides(load_yaml(args.config), list(args.overrides) + flags.overrides(args))
    for key in TOP_KEYS:
        if getattr(args, key, None) is not None:
            raw[key] = getattr(args, key)
    return RunConfig.from_dict(raw, complete=complete)


def cmd_train(args: argparse.Namespace) -> int:
    from .models.hub import check_push
    from .trainer.loop import train

    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides, args.resume = [*args.overrides, args.resume], True  # an override after the bare flag
    run = _run_config(args)
    check_push(args.push_to_hub)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, print once
    if main_rank:
        log.info(f"# adpo train --method {run.method}: resolved configuration")
        log.info(yaml.safe_dump(run.to_dict(), sort_keys=False).rstrip())
        log.info(f"  (utility weight in effect: {run.utility_weight:g}; threat: {run.train.threat}, "
                 f"adversarial policy: {run.spec.adversarial}, reference: {run.spec.reference})")
    resume = args.resume if args.resume in (None, True) else Path(args.resume)
    summary = train(run, resume=resume or False, progress=args.progress)
    if main_rank:
        log.info(f"done: {summary['steps']} steps in {summary['seconds']:.1f}s "
                 f"({summary['processes']} process(es), {summary['distributed_type']}); wrote {summary['saved']}, "
                 f"{run.out}/metrics.jsonl, {run.out}/config.yaml, {summary['plot']}")
        if args.push_to_hub:
            from .models.hub import push

            log.info(f"pushed {summary['saved']} to {push(summary['saved'], args.push_to_hub)}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``adpo export``: a merged model folder with its model card (optionally pushed to the hub)."""
    import json

    from .eval.results import card_rows
    from .models.adapters import export_merged
    from .models.hub import check_push, push

    check_push(args.push_to_hub)
    table = None
    if args.results:
        try:
            table = card_rows(json.loads(Path(args.results).read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"--results {args.results}: not an adpo eval results.json ({e})") from e
    out = export_merged(args.model, args.adapter, args.out, table)
    log.info(f"wrote {out} (merged safetensors, processor, README.md model card)")
    if args.push_to_hub:
        log.info(f"pushed {out} to {push(out, args.push_to_hub)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The resolved configuration as YAML, every default filled in: a starting point for ``--config``."""
    if args.eval:
        from .eval.config import EvalConfig

        raw = apply_overrides(load_yaml(args.config), list(args.overrides))
        print(yaml.safe_dump(EvalConfig.from_dict(raw).to_dict(), sort_keys=False).rstrip())
        return 0
    args.method = args.method or "adpo"
    run = _run_config(args, complete=False)
    print(f"# adpo train --method {run.method}: every option with its default (utility weight in effect: "
          f"{run.utility_weight:g}); fill in model, data, out{', reference' if run.spec.reference == 'at' else ''}")
    print(yaml.safe_dump(run.to_dict(), sort_keys=False).rstrip())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.config import EvalConfig
    from .eval.runner import ModelSpec, evaluate

    raw = apply_overrides(load_yaml(args.config), list(args.overrides) + flags.overrides(args))
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
    log.info("# adpo eval: resolved configuration")
    log.info(yaml.safe_dump({"models": [vars(s) for s in specs], **cfg.to_dict()}, sort_keys=False).rstrip())
    evaluate(specs, cfg, Path(args.out), progress=args.progress, machine=_machine(), log=log.info)
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
    log.info("\norganism base model")
    for label, key in rows:
        if key is None:
            parts = [m.get(f"utility_accuracy_{q}", float("nan")) for q in ("colour", "shape", "count", "position")]
            log.info(f"  {label:<48} " + " / ".join(f"{p:.2f}" for p in parts))
        else:
            log.info(f"  {label:<48} {m[key]:.3f}")
    if "remedial_rounds" in m:
        log.info(f"  {'remedial rounds (validation below target)':<48} {m['remedial_rounds']}")
    log.info(f"  {'seconds (train + eval)':<48} {m['seconds']:.0f}\n")


def make_parser() -> argparse.ArgumentParser:
    from .demo.pipeline import DEMO_KEYS, DemoConfig
    from .organism.export import ExportConfig

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
    sizes = ExportConfig()
    sp.add_argument("--n-pairs", type=int, default=sizes.n_pairs, help="preference pairs in the train split")
    sp.add_argument("--n-sft", type=int, default=sizes.n_sft, help="utility SFT rows in the train split")
    sp.add_argument("--n-eval", type=int, default=sizes.n_eval, help="rows per held-out evaluation file")
    sp.add_argument("--n-benign-pairs", type=int, default=sizes.n_benign_pairs,
                    help="benign look-alike pairs added to the training pairs (chosen helpful, rejected refusal)")
    sp.add_argument("--n-blank-pairs", type=int, default=sizes.n_blank_pairs,
                    help="harmful pairs on the blank mid-grey image added to the training pairs")
    sp.set_defaults(func=cmd_export)
    demo = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
    sp = sub.add_parser("demo", help="the main job on the embedded default (the organism)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="demo options (key=value overrides, defaults shown):\n"
                               + "".join(f"  {k}=[{','.join(demo[k])}]\n" if isinstance(demo[k], tuple)
                                         else f"  {k}={demo[k]}\n" for k in DEMO_KEYS if k not in ("train", "eval"))
                               + "  train.<section>.<key>=...  the training recipe (configs/organism.yaml; "
                                 "adpo train --help)\n"
                               + "  eval.<key>=...  the evaluation (adpo eval --help)")
    organism_opts(sp)
    sp.add_argument("--force", action="store_true", help="rebuild the organism even if cached")
    sp.add_argument("--seeds", type=int, default=1, help="repeat training and evaluation over seeds 0..N-1")
    sp.add_argument("--organism-seeds", default=None, metavar="S,S,...",
                    help="one whole demo per organism instance (world + pre-training seed S) into "
                         "OUT/organism-seed<S>/, then the table over instances in OUT (what another machine's "
                         "organism does to the result)")
    _verbosity(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("eval", help="jailbreak attacks, judges, utility and over-refusal; results.json + report",
                        description="Every option is a flag (--limit 32, --pgd_image.steps 200) or a key=value "
                                    "override (limit=32 pgd_image.steps=200); its default is shown.",
                        allow_abbrev=False)
    sp.add_argument("--model", required=True, help="model folder or hub id (the base when --adapter/--compare "
                                                   "are used)")
    sp.add_argument("--adapter", default=None, help="peft adapter or adpo run folder to evaluate on --model")
    sp.add_argument("--compare", nargs="+", default=None, metavar="LABEL=PATH",
                    help="several models side by side: adapters / run folders on --model, or 'base'")
    sp.add_argument("--tasks", default=None, help="comma list: clean,pgd-image,universal-image,latent,figstep,"
                                                   "utility,over-refusal")
    sp.add_argument("--judges", default=None, help="comma list: organism,gcg13,llm_attacks29,llm")
    sp.add_argument("--data", default=None, help="harmful behaviours (preference pairs; target = rejected)")
    sp.add_argument("--out", required=True, help="run folder (resumes from the samples already there)")
    sp.add_argument("--config", default=None, help="YAML with top-level options and task sections")
    sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. pgd_image.steps=200 limit=32")
    _verbosity(sp)
    sp.set_defaults(func=cmd_eval)
    _eval_flags(sp)

    sp = sub.add_parser("inspect", help="what adpo discovers from a model folder (layers, LoRA targets, codec, "
                                        "chat template), or what it lacks")
    sp.add_argument("--model", required=True, help="model folder (transformers format)")
    sp.set_defaults(func=cmd_inspect)


    sp = sub.add_parser("train", help="train one method (sft, dpo, at, ar-dpo, at-dpo, adpo) on accelerate",
                        description="Every option is a flag (--train.lr 1e-4, or TRL's --learning_rate 1e-4) or a "
                                    "section.key=value override (train.lr=1e-4); its default is shown. "
                                    "`adpo config --method M` prints them all as YAML.",
                        allow_abbrev=False)
    _run_flags(sp)
    sp.add_argument("--config", default=None, help="YAML: top-level keys and sections train/lora/image/latent")
    sp.add_argument("--resume", action="store_const", const=True, default=None,
                    help="continue from the latest checkpoint in --out")
    sp.add_argument("--resume_from_checkpoint", dest="resume", nargs="?", const=True, metavar="CHECKPOINT",
                    help="TRL's name: --resume, or continue from the given OUT/checkpoints/step-N folder")
    sp.add_argument("--push-to-hub", "--hub_model_id", dest="push_to_hub", default=None, metavar="REPO_ID",
                    help="after training, upload the adapter (with its model card) to this hub repo "
                         "(needs the network and a token; off by default)")
    sp.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=50 image.steps=5")
    _verbosity(sp)
    sp.set_defaults(func=cmd_train)
    _train_flags(sp)

    sp = sub.add_parser("export", help="merge a trained adapter into its base: a plain transformers folder "
                                       "(safetensors) with a model card, for serving and evaluation tools")
    sp.add_argument("--model", required=True, help="the base model (folder or hub id) the adapter was trained on")
    sp.add_argument("--adapter", required=True, help="peft adapter or adpo run folder")
    sp.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export)")
    sp.add_argument("--results", default=None, help="an adpo eval results.json for the card's evaluation table")
    sp.add_argument("--push-to-hub", dest="push_to_hub", default=None, metavar="REPO_ID",
                    help="upload the folder to this hub repo (needs the network and a token; off by default)")
    _verbosity(sp)
    sp.set_defaults(func=cmd_merge)

    sp = sub.add_parser("config", help="print a training (or evaluation) configuration with every default, as "
                                       "YAML for --config", allow_abbrev=False)
    _run_flags(sp)
    sp.add_argument("--eval", action="store_true", help="the evaluation configuration instead")
    sp.add_argument("--config", default=None, help="a YAML file to resolve")
    sp.add_argument("overrides", nargs="*", help="section.key=value overrides")
    sp.set_defaults(func=cmd_config)
    _train_flags(sp)
    return p


# TRL / transformers TrainingArguments names of our fields (a user's DPOConfig flags work unchanged)
TRL_TRAIN = {"lr": ["learning_rate"], "beta": ["beta"], "batch_size": ["per_device_train_batch_size"],
             "grad_accum": ["gradient_accumulation_steps"], "epochs": ["num_train_epochs"], "steps": ["max_steps"],
             "seed": ["seed"], "warmup_ratio": ["warmup_ratio"], "weight_decay": ["weight_decay"],
             "max_grad_norm": ["max_grad_norm"], "scheduler": ["lr_scheduler_type"], "loss_type": ["loss_type"],
             "label_smoothing": ["label_smoothing"], "rpo_alpha": ["rpo_alpha"], "log_every": ["logging_steps"],
             "save_every": ["save_steps"], "keep_checkpoints": ["save_total_limit"], "report_to": ["report_to"],
             "max_length": ["max_length"], "gradient_checkpointing": ["gradient_checkpointing"],
             "eval_every": ["eval_steps"]}
TRL_LORA = {"enabled": ["use_peft"], "r": ["lora_r"], "alpha": ["lora_alpha"], "dropout": ["lora_dropout"],
            "target": ["lora_target_modules"]}


TRL_TOP = {"model": ["model_name_or_path"], "data": ["dataset_name"], "eval_data": ["eval_dataset"],
           "out": ["output_dir"]}


def _run_flags(sp: argparse.ArgumentParser) -> None:
    """The run's top-level keys (--method, --model …), help from :class:`~adpo.trainer.config.RunConfig`."""
    import dataclasses

    from .trainer.config import METHODS, RunConfig

    for f in dataclasses.fields(RunConfig):
        if f.name in ("train", "lora", "threats"):
            continue
        names = [f"--{f.name.replace('_', '-')}", *(f"--{a}" for a in TRL_TOP.get(f.name, ()))]
        sp.add_argument(*names, dest=f.name, default=None, help=help_of(f),
                        **({"choices": list(METHODS)} if f.name == "method" else {}))


def _train_flags(sp: argparse.ArgumentParser) -> None:
    """A flag per training option, grouped by section, with TRL's names as aliases."""
    from .models.adapters import LoraSettings
    from .threats import registry
    from .trainer.config import TrainConfig

    flags.add_section(sp, TrainConfig, "train", "train: the loop, the preference loss, the adversary's use",
                      aliases=TRL_TRAIN)
    flags.add_section(sp, LoraSettings, "lora", "lora: the adapter (peft)", aliases=TRL_LORA)
    for name in registry.sectioned():
        cls = registry.THREATS[name]
        flags.add_section(sp, cls, name, f"{name}: the training adversary's {name} threat (its training defaults)",
                          defaults=cls.training_defaults)


def _eval_flags(sp: argparse.ArgumentParser) -> None:
    from .eval.config import EvalConfig

    flags.add_section(sp, EvalConfig, None, "evaluation options", skip=("tasks", "judges", *EvalConfig.SECTIONS))
    for name, cls in EvalConfig.SECTIONS.items():
        flags.add_section(sp, cls, name, f"{name}: " + help_of(EvalConfig.__dataclass_fields__[name]))


def _verbosity(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    sp.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (no progress bars)")
    sp.add_argument("-v", "--verbose", action="store_true", help="debug messages too")


class _Console(logging.Handler):
    """Messages to the *current* stdout (warnings and errors to stderr), as the plain text they are."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)


def setup_logging(args: argparse.Namespace) -> None:
    """``adpo``'s logger: info by default, warnings only with --quiet (which also hides progress bars),
    debug with --verbose. Libraries keep their own levels."""
    level = (logging.WARNING if getattr(args, "quiet", False) else
             logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    if not any(isinstance(h, _Console) for h in log.handlers):
        log.addHandler(_Console())
    log.setLevel(level)
    log.propagate = False
    if getattr(args, "quiet", False):
        args.progress = False
    if not getattr(args, "progress", True):  # transformers' own bars too ("Loading weights")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    # offline is the tests', the demo's and CI's choice (they set HF_HUB_OFFLINE=1), not the CLI's: a hub id
    # downloads when the network is there (adpo.models.hub)
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
    setup_logging(args)
    try:
        return args.func(args)
    # UnsupportedModel is a TypeError; OS errors about the user's paths come from libraries too
    except (UserError, UnsupportedModel, PermissionError, FileNotFoundError) as e:
        print(f"adpo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
