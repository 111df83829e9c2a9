"""Hub ids where a model folder is expected, and the optional upload of a result.

``--model llava-hf/llava-1.5-7b-hf`` is resolved to a local snapshot (``huggingface_hub.snapshot_download``:
the cache when it holds the model, else a download of the config, tokenizer, processor and safetensors
files, never code), after which every step (inspection, the adapter's base record, loading) reads that
folder. adpo itself never switches the network off: the tests, ``make demo`` and CI set ``HF_HUB_OFFLINE=1``;
with it set, a hub id that is not cached is one line saying so.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..utils.config import ConfigError
from ..utils.errors import MissingInput, UserError
from ..utils.offline import offline

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells repo ids
PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]  # weights + processor, no code


def resolve_model(name: str | Path) -> Path:
    """A local model folder for ``name``: the folder itself, or the snapshot of hub id ``name``."""
    path = Path(name)
    if path.exists() or not HUB_ID.match(str(name)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name), allow_patterns=PATTERNS, local_files_only=offline()))
    except LocalEntryNotFoundError as e:
        if offline():
            raise MissingInput(f"model {name}: not a local folder, and HF_HUB_OFFLINE=1 forbids downloading the "
                               "hub id (it is not in the hub cache); unset HF_HUB_OFFLINE, or pass a local "
                               "folder") from e
        raise MissingInput(f"model {name}: not a local folder, and the hub could not be reached ({e})") from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise MissingInput(f"model {name}: not a local folder, and the hub refused the id "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e


def check_push(repo_id: str | None) -> None:
    """Refuse ``--push-to-hub`` before any work when it cannot succeed (not an owner/name id, offline, or no
    token to upload with)."""
    if repo_id is None:
        return
    if not HUB_ID.match(repo_id):
        raise ConfigError(f"--push-to-hub {repo_id!r}: expected a hub repo id, owner/name")
    if offline():
        raise ConfigError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE=1 is set, so nothing can be uploaded; unset "
                          "it (and log in with `hf auth login`) or drop --push-to-hub")
    from huggingface_hub import get_token

    if get_token() is None:
        raise ConfigError(f"--push-to-hub {repo_id}: no hub token (HF_TOKEN, or `hf auth login`), so nothing can "
                          "be uploaded; log in or drop --push-to-hub")


def push(folder: str | Path, repo_id: str) -> str:
    """Upload ``folder`` (an adapter or merged model with its README.md model card) to ``repo_id``.

    It runs after the work is saved, so a failed upload (network, permissions, a refused token) is one line that
    says the folder is complete and how to upload it by hand, not a traceback that hides where the result is."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="adpo: upload trained model")
    except Exception as e:  # whatever the remote side raises (httpx, HfHubHTTPError, OSError): the result is safe
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
        raise UserError(f"--push-to-hub {repo_id}: the upload failed ({reason}); {folder} is saved and complete, "
                        f"upload it later with `hf upload {repo_id} {folder}`") from e
    return f"https://huggingface.co/{repo_id}"
