"""JailbreakBench's artifact schema, vendored from ``jailbreakbench==1.0.0`` (``jailbreakbench/artifact.py`` and
``config.py``, MIT licence), because the package cannot be installed beside this project: it requires
``transformers<5`` (pip reports the conflict with adpo's transformers 5 pin). The models below are the
package's pydantic models field for field; only ``model`` differs: upstream it is an enum of the four
leaderboard LLMs (vicuna-13b-v1.5, llama-2-7b-chat-hf, gpt-3.5-turbo-1106, gpt-4-0125-preview), which no
vision-language model's artifact can name, so it is a plain ``str`` here.
"""

from __future__ import annotations

import datetime
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

VERSION = "1.0.0"


class AttackType(Enum):
    white_box = "white_box"
    black_box = "black_box"
    transfer = "transfer"
    manual = "manual"


class JailbreakInfo(BaseModel):
    index: int
    goal: str
    behavior: str
    category: str
    prompt: str | None
    response: str | None
    number_of_queries: int | None
    queries_to_jailbreak: int | None
    prompt_tokens: int | None
    response_tokens: int | None
    jailbroken: bool


class AttackParameters(BaseModel):
    model_config = ConfigDict(use_enum_values=True)
    method: str
    model: str  # upstream: jailbreakbench.config.Model (see the module docstring)
    attack_type: AttackType
    defense: str | None
    attack_success_rate: Annotated[float, Field(strict=True, ge=0, le=1)]
    total_number_of_jailbreaks: int
    number_of_submitted_prompts: int
    total_number_of_queries: int | None
    total_prompt_tokens: int | None
    total_response_tokens: int | None
    evaluation_date: datetime.date = Field(default_factory=datetime.date.today)
    evaluation_llm_provider: str
    method_parameters: dict[str, str | int | float]


class AttackArtifact(BaseModel):
    parameters: AttackParameters
    jailbreaks: list[JailbreakInfo]
