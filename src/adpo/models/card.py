"""The model card (``README.md`` with YAML front matter) written beside every trained adapter and export.

As TRL's trainers do: the hub reads ``base_model``, ``library_name``, ``pipeline_tag``, ``tags`` and
``datasets`` from the front matter; the body says what the model is (method, base, recipe, data) and, when
known, how it scored: the last ``eval/*`` metrics of training, or an ``adpo eval`` results table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from .hub import HUB_ID

METHODS = {"sft": "supervised fine-tuning on the safe answers",
           "dpo": "DPO (Rafailov et al. 2023) against the initial model",
           "at": "adversarial training (the AT reference of ADPO)",
           "ar-dpo": "DPO against an adversarially trained reference",
           "at-dpo": "DPO with the policy under a worst-case perturbation",
           "adpo": "Adversary-Aware DPO (Weng et al. 2025, arXiv 2502.11455): DPO with an adversarially trained "
                   "reference and the policy under a worst-case perturbation"}


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def model_card(record: dict[str, Any], table: Sequence[dict[str, Any]] = (), merged: bool = False) -> str:
    """The card of a model trained by ``adpo train`` (``record``: its ``adpo_train.json``). ``table``: rows
    of an evaluation (each a mapping of column -> value); ``merged``: the LoRA is merged into the base."""
    config = record.get("config") or {}
    method, base = config.get("method", "?"), config.get("model", "?")
    data = [d for d in (config.get("data"), config.get("utility_data")) if d]
    front = {"base_model": str(base), "library_name": "transformers" if merged else "peft",
             "pipeline_tag": "image-text-to-text", "model_name": record.get("name", f"adpo-{method}"),
             "tags": ["adpo", method, "vision-language", "adversarial-robustness", "safety"]
             + ([] if merged else ["lora"]),
             "datasets": [d for d in data if HUB_ID.match(str(d))] or None}
    lines = ["---", yaml.safe_dump({k: v for k, v in front.items() if v is not None}, sort_keys=False).rstrip(),
             "---", "", f"# {front['model_name']}", "",
             f"`{method}`: {METHODS.get(method, method)}, on `{base}`"
             + (", the LoRA adapter merged into the base weights." if merged else ", as a LoRA adapter (peft)."),
             f"Trained with adpo for {record.get('steps', '?')} steps "
             f"({record.get('epochs', '?')} epochs over {record.get('pairs', '?')} preference pairs).", "",
             "## Data", ""]
    lines += [f"- preference pairs: `{config.get('data')}`"] + (
        [f"- utility SFT rows: `{config['utility_data']}`"] if config.get("utility_data") else []) + (
        [f"- reference (AT run): `{config['reference']}`"] if config.get("reference") else [])
    if table:
        cols = list(dict.fromkeys(k for row in table for k in row))
        lines += ["", "## Evaluation", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in cols) + " |" for row in table]
    load = ("AutoModelForImageTextToText.from_pretrained(\"<this folder>\")" if merged else
            f"PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(\"{base}\"), \"<this folder>\")")
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForImageTextToText, AutoProcessor",
              *([] if merged else ["from peft import PeftModel"]), f"model = {load}", "```", "",
              "## Recipe", "", "The resolved `adpo train` configuration (`adpo train --config` takes it back):", "",
              "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def eval_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Training's last ``eval/*`` / ``eval_rewards/*`` metrics as card rows."""
    return [{"metric (held-out pairs, during training)": k, "value": v} for k, v in sorted(metrics.items())
            if k.startswith("eval")]
