"""lmms-eval's writer of aggregate results, vendored from ``lmms-eval==0.7.3`` (MIT licence, (c) 2025 LMMs-Lab):
``lmms_eval/loggers/evaluation_tracker.py`` (``GeneralConfigTracker``, ``EvaluationTracker.save_results_aggregated``)
and the helpers it calls from ``lmms_eval/utils.py`` (``hash_string``, ``handle_non_serializable``,
``sanitize_model_name``), with the filter lmms-eval's tools use to find results files in a folder
(``get_results_filenames``) and the ``datetime_str`` format of ``get_datetime_str``.

Vendored because the package cannot be a dev dependency: ``pip install lmms-eval==0.7.3`` with adpo's pins
pulls about 70 packages (torchvision, opencv, scikit-learn, sentence-transformers, timm, yt-dlp, pre-commit, …),
pins ``wandb==0.25.0`` (a downgrade of the dev extra's wandb) and had not finished resolving after 8 minutes.
The code is upstream's line for line, less the logger calls, the hub upload (``push_results_to_hub``) and the
``try/except`` that logs and swallows a failed write (here it raises, so a test sees it).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

VERSION = "0.7.3"
DATETIME_FORMAT = "%Y%m%d_%H%M%S"  # utils.get_datetime_str: local_time.strftime("%Y%m%d_%H%M%S")


def hash_string(string: str) -> str:
    return hashlib.sha256(string.encode("utf-8")).hexdigest()


def handle_non_serializable(o):
    if isinstance(o, np.int64) or isinstance(o, np.int32):
        return int(o)
    elif isinstance(o, set):
        return list(o)
    else:
        return str(o)


def sanitize_model_name(model_name: str, full_path: bool = False) -> str:
    if full_path:
        return re.sub(r"[\"<>:/\|\\?\*\[\]]+", "__", model_name)
    else:
        parts = model_name.split("/")
        last_two = "/".join(parts[-2:]) if len(parts) > 1 else parts[-1]
        return re.sub(r"[\"<>:/\|\\?\*\[\]]+", "__", last_two)


def get_results_filenames(filenames: list[str]) -> list[str]:
    return [f for f in filenames if "results" in f and ".json" in f]


@dataclass(init=False)
class GeneralConfigTracker:
    model_source: str = None
    model_name: str = None
    model_name_sanitized: str = None
    system_instruction: str = None
    system_instruction_sha: str = None
    fewshot_as_multiturn: bool = None
    chat_template: str = None
    chat_template_sha: str = None
    start_time: float = None
    end_time: float = None
    total_evaluation_time_seconds: str = None

    def __init__(self) -> None:
        self.start_time = time.perf_counter()

    def log_end_time(self) -> None:
        self.end_time = time.perf_counter()
        self.total_evaluation_time_seconds = str(self.end_time - self.start_time)


class EvaluationTracker:
    def __init__(self, output_path: str = None) -> None:
        self.general_config_tracker = GeneralConfigTracker()
        self.output_path = output_path

    def save_results_aggregated(self, results: dict, samples: dict, datetime_str: str) -> None:
        self.general_config_tracker.log_end_time()

        if self.output_path:
            task_hashes = {}
            if samples:
                for task_name, task_samples in samples.items():
                    sample_hashes = [f"sample_{index}" + s["doc_hash"] for index, s in enumerate(task_samples)]
                    task_hashes[task_name] = hash_string("".join(sample_hashes))

            results.update({"task_hashes": task_hashes})
            results.update(asdict(self.general_config_tracker))
            dumped = json.dumps(
                results,
                indent=2,
                default=handle_non_serializable,
                ensure_ascii=False,
            )

            path = Path(self.output_path if self.output_path else Path.cwd())
            path = path.joinpath(self.general_config_tracker.model_name_sanitized)
            path.mkdir(parents=True, exist_ok=True)

            self.date_id = datetime_str.replace(":", "-")
            file_results_aggregated = path.joinpath(f"{self.date_id}_results.json")
            file_results_aggregated.open("w", encoding="utf-8").write(dumped)
