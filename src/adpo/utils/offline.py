"""Whether downloads from the Hugging Face hub are switched off (``HF_HUB_OFFLINE``).

Read from the environment at call time (``huggingface_hub`` reads it once, at import), so a message can
say why a hub id or a hub dataset name did not load.
"""

from __future__ import annotations

import os


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
