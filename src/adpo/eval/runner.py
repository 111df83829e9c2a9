"""``adpo eval``: run the tasks on one model (or several, side by side) and write the run folder.

One model: ``RUN/samples_<task>.jsonl``, ``RUN/results.json``, ``RUN/jailbreakbench/<subtask>.json``,
``RUN/report.md``, ``RUN/asr_vs_budget.png``. Several models (comparison mode): the same per model under
``RUN/<label>/`` and one ``RUN/report.md`` + plot comparing them.

``RUN`` must be new, empty or an earlier ``adpo eval`` output, and one process writes it at a time. The
judges, the adapters (against their recorded base) and every input row are checked before the folder's
marker is written; a start that fails before that leaves nothing behind, and a folder records which model
it evaluated only once that model has loaded (so a failed start never blocks a rerun).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..utils.config import ConfigError
from ..utils.io import Output, ensure_writable_dir, output_folder, read_marker, write_json
from .attacks import Target
from .config import EvalConfig, transfer_source
from .judges import Judge, make_judges
from .report import write_report
from .results import jbb_artifact, results_json
from .shard import Shard, batches, merge_parts, recover
from .store import SampleStore, config_hash
from .tasks import Data, Subtask, organism_defaults, subtasks

COMMAND = "adpo eval"
LEGACY = ("eval_model.json",)  # what evaluation folders held before output markers


@dataclass(frozen=True)
class ModelSpec:
    label: str
    model: str  # base model folder
    adapter: str | None = None  # peft adapter, adpo run folder, or full model folder replacing ``model``

    def identity(self) -> dict[str, str | None]:
        """What an evaluation folder records about the model it holds samples of."""
        return {"model": str(self.model), "adapter": None if self.adapter is None else str(self.adapter)}


def check_model(spec: ModelSpec) -> None:
    """Cheap checks before anything is written: the adapter exists and was trained on ``spec.model``."""
    from ..models.adapters import check_adapter_base, resolve_run

    if spec.adapter is not None:
        check_adapter_base(resolve_run(spec.adapter), spec.model)


def check_identity(folder: Path, spec: ModelSpec) -> None:
    """One model per evaluation folder: samples of another model must not be resumed as this one's."""
    recorded = read_marker(folder)
    if "model" not in recorded and (folder / LEGACY[0]).is_file():
        recorded = json.loads((folder / LEGACY[0]).read_text())
    recorded = {k: recorded.get(k) for k in ("model", "adapter")} if "model" in recorded else None
    if recorded is not None and recorded != spec.identity():
        raise ConfigError(f"{folder} holds an evaluation of {json.dumps(recorded)}; use another --out")


def load_model(spec: ModelSpec, dtype: str | None = None, template: str | None = None,
               device: str | None = None) -> tuple[Any, Any]:
    """The model (eval mode, LoRA merged for speed) on ``device`` and its processor, with the prompt template
    ``template`` (None: the one the adapter was trained with, :func:`trained_template`)."""
    from ..data.templates import use_template
    from ..models.adapters import is_adapter, load_adapter, load_base, resolve_run

    torch_dtype = getattr(torch, dtype) if dtype else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = None if spec.adapter is None else resolve_run(spec.adapter)
    if path is None or not is_adapter(path):
        model, processor = load_base(path or spec.model, torch_dtype)
        return model.to(device).eval(), use_template(processor, template or trained_template(spec))
    base, processor = load_base(spec.model, torch_dtype)
    processor = use_template(processor, template or trained_template(spec))
    return load_adapter(base, path, spec.model).merge_and_unload().to(device).eval(), processor


def trained_template(spec: ModelSpec) -> str | None:
    """The prompt template (``train.template``) the evaluated adapter was trained with; None when unknown."""
    return _trained(spec).get("train", {}).get("template")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("adpo", "torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_hash() -> str | None:
    """``git describe --always`` of adpo's source checkout (lmms-eval's ``git_hash``); None outside one."""
    import subprocess

    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def default_judges(data: Data) -> tuple[str, ...]:
    """The organism's exact judge first when the behaviours carry intents, then the two string lists."""
    try:
        organism = all("intent" in r.meta for r in data.harmful[:8])
    except ConfigError:
        organism = False
    return (("organism",) if organism else ()) + ("gcg13", "llm_attacks29")


def evaluate_model(spec: ModelSpec, cfg: EvalConfig, out: Path, *, data: Data | None = None, machine: str = "",
                   progress: bool = True, log: Callable[[str], None] = print,
                   judges: list[Judge] | None = None, shard: Shard | None = None) -> dict[str, Any]:
    """Evaluate one model into ``out``; resumes from the samples already there. Under ``accelerate launch``
    the processes split each subtask's batches (:mod:`adpo.eval.shard`); only the main one returns results."""
    shard = shard or Shard()
    with output_folder(out, COMMAND, legacy=LEGACY, writer=shard.main) as folder:
        return _evaluate_model(spec, cfg, Path(out), folder, data, judges, machine, progress, log, shard)


def _evaluate_model(spec: ModelSpec, cfg: EvalConfig, out: Path, folder: Output, data: Data | None,
                    judges: list[Judge] | None, machine: str, progress: bool,
                    log: Callable[[str], None], shard: Shard) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ..objectives.logps import resolve_chunk
    from ..threats.codecs import codec_for

    check_identity(out, spec)
    check_model(spec)
    data = data or Data(cfg, organism_defaults(spec.model, out))
    judges = judges or make_judges(cfg.judges or default_judges(data), cfg.judge_llm, cfg.judge_llm_model)
    subs = subtasks(cfg, data)  # every input row is read (and checked) here
    t0 = time.time()
    model, processor = load_model(spec, cfg.dtype, cfg.template, shard.device)
    folder.begin(**spec.identity())
    if shard.main:
        recover(out)
    shard.barrier()
    status = {j.name: j.status for j in judges}
    for name, st in status.items():
        if st != "ok":
            log(f"judge {name}: {st} (its metrics will be null)")
    primary = next((j for j in judges if j.status == "ok"), judges[0])
    torch.manual_seed(cfg.seed)
    sources = {label: load_model(ModelSpec(label, spec.model, path), cfg.dtype, cfg.template, shard.device)[0]
               for label, path in map(transfer_source, cfg.transfer_from)}
    target = Target(model, processor, codec_for(processor), primary, cfg.max_new_tokens, cfg.check_every,
                    cfg.restarts, resolve_chunk(model, cfg.logps_chunk), cfg.image_size, sources, progress)
    trained = training_attack_steps(spec)
    for sub in subs:
        if sub.attack_type == "white_box" and sub.params.get("steps", trained) < trained:
            log(f"warning: {sub.name} runs {sub.params['steps']} attack steps, fewer than the {trained} the model "
                "was trained against: not an adaptive evaluation")
    stores: dict[str, SampleStore] = {}
    current: dict[str, list[dict]] = {}
    for sub in subs:
        path = out / f"samples_{sub.task}.jsonl"
        store = stores.setdefault(sub.task, SampleStore(path))
        chash = config_hash({"params": sub.params, "seed": cfg.seed, "judges": list(status),
                             "gen": target.gen_kwargs, "kind": sub.kind, "rows": [r.source for r in sub.rows]})
        todo = batches(sub.rows, cfg.batch_size, [store.done(sub.name, r.doc_id, chash) for r in sub.rows])
        if 0 < len(todo) < shard.size:
            log(f"warning: {sub.name}: {len(todo)} batch(es) of up to {cfg.batch_size} behaviours for {shard.size} "
                "processes; lower eval.batch_size to keep every process busy")
        mine = shard.mine(todo)
        sink = store if shard.size == 1 else SampleStore(shard.part(path))
        bar = tqdm(total=sum(map(len, mine)), desc=f"{spec.label}: {sub.name}" + (
            f" [{shard.rank + 1}/{shard.size}]" if shard.size > 1 else ""), disable=not progress, leave=False)
        t_sub = time.time()
        for chunk in mine:
            sink.append(_records(sub, chunk, sub.run(target, chunk), judges, target, cfg.seed, chash))
            bar.update(len(chunk))
        bar.close()
        if mine:  # where the time goes (the robust arms' strong suite dominates a demo)
            log(f"{spec.label}: {sub.name}: {sum(map(len, mine))} rows in {time.time() - t_sub:.0f}s")
        if shard.size > 1:  # every process has written its part: the main one merges them in row order
            shard.barrier()
            if shard.main:
                merge_parts(path, store, {(sub.name, r.doc_id): i for i, r in enumerate(sub.rows)})
            shard.barrier()
        current[sub.name] = store.current(sub.name, chash, {r.doc_id for r in sub.rows})
    seconds = time.time() - t0
    if not shard.main:
        return {}
    res = results_json(spec.label, subs, current, status,
                       {**spec.identity(), "label": spec.label, "eval": cfg.to_dict(), "machine": machine}, seconds,
                       _versions(), git_hash())
    write_json(out / "results.json", res)
    lmms = ensure_writable_dir(out / res["model_name_sanitized"])  # where lmms-eval's EvaluationTracker writes
    write_json(lmms / f"{res['date_id']}_results.json", res)
    jbb = ensure_writable_dir(out / "jailbreakbench")
    for sub in subs:
        if sub.kind == "harmful":
            write_json(jbb / f"{_safe(sub.name)}.json", jbb_artifact(spec.label, sub, current[sub.name],
                                                                     primary.name, res["date"]))
    log(f"{spec.label}: {len(subs)} subtasks in {seconds:.0f}s -> {out / 'results.json'}")
    return res


def training_attack_steps(spec: ModelSpec) -> int:
    """The most attack steps the evaluated adapter saw in training (0 when unknown or untrained)."""
    saved = _trained(spec)
    return max(int((saved.get(k) or {}).get("steps", 0)) for k in ("image", "latent"))


def _trained(spec: ModelSpec) -> dict[str, Any]:
    """The training config recorded beside the evaluated adapter or model ({} when none)."""
    if spec.adapter is None:
        return {}
    from ..models.adapters import resolve_run

    try:
        return json.loads((resolve_run(spec.adapter) / "adpo_train.json").read_text()).get("config", {}) or {}
    except (OSError, ValueError):
        return {}


def _success_half(sub: Subtask, o: Any) -> bool | None:
    """Whether a success needed at most half the budget: the attack knows (``o.success_half``); without a
    search there is no budget to halve (True); a search that recorded no checkpoint (universal) is unknown."""
    if o.success_half is not None:
        return o.success_half
    return True if sub.attack_type != "white_box" else None


def _records(sub: Subtask, rows: list, outcomes: list, judges: list, target: Target, seed: int,
             chash: str) -> list[dict]:
    behaviours = [r.behavior or r.prompt for r in rows]
    responses = [o.response for o in outcomes]
    verdicts = ({} if sub.kind == "utility" else  # utility is scored against its answer, not judged
                {j.name: j(behaviours, responses, [r.meta for r in rows]) for j in judges})
    recs = []
    for i, (r, o) in enumerate(zip(rows, outcomes)):
        rec = {"task": sub.task, "subtask": sub.name, "doc_id": r.doc_id, "behavior_id": r.behavior_id,
               "behavior": behaviours[i], "category": r.category, "prompt": r.prompt, "source": r.source,
               "image_sha256": o.image_sha256, "response": o.response,
               "attack": {"name": sub.name, "type": sub.attack_type, "params": sub.params, "seed": seed},
               "judges": {n: v[i].to_dict() for n, v in verdicts.items()}, "gen_kwargs": target.gen_kwargs,
               "config_hash": chash}
        if sub.kind == "harmful":
            rec.update(target=r.target, margin=o.margin if r.target else None, attack_loss=o.loss,
                       success_step=o.step, restart=o.restart, norms=o.norms,
                       found_by=o.found_by if sub.attack_type == "white_box" else sub.name,
                       success_half=_success_half(sub, o))
        elif sub.kind == "utility":
            rec.update(answer=r.answer, score=float(sub.extra["scorer"](o.response, r.answer)))
        recs.append(rec)
    return recs


def evaluate(specs: list[ModelSpec], cfg: EvalConfig, out: Path, *, progress: bool = True, machine: str = "",
             log: Callable[[str], None] = print) -> dict[str, dict]:
    """Every model in ``specs`` (one: at ``out``; several: under ``out/<label>``) and the report."""
    out = Path(out)
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"model labels must be unique, got {labels}")
    where = {s.label: out if len(specs) == 1 else out / _safe(s.label) for s in specs}
    shard = Shard.current()
    log = log if shard.main else (lambda _: None)
    with ExitStack() as stack:
        def start() -> tuple[Data, list[Judge]]:
            folder = stack.enter_context(output_folder(out, COMMAND, legacy=LEGACY, writer=shard.main))
            for spec in specs:
                check_identity(where[spec.label], spec)
                check_model(spec)
            data = Data(cfg, organism_defaults(specs[0].model, out))
            subtasks(cfg, data)  # read and check every input row before the folder is marked
            judges = make_judges(cfg.judges or default_judges(data), cfg.judge_llm, cfg.judge_llm_model)
            folder.begin(models=[s.label for s in specs])
            return data, judges

        data, judges = shard.lead(start)  # the main process checks and claims the folder first
        results = {s.label: evaluate_model(s, cfg, where[s.label], data=data, machine=machine,
                                           progress=progress and shard.main, log=log, judges=judges, shard=shard)
                   for s in specs}
        if not shard.main:
            return {}
        paths = write_report(out, results)
    log(f"wrote {paths['report']}" + (f" and {paths['plot']}" if "plot" in paths else ""))
    return results
