"""Load a VLM, put a LoRA policy on its language model, and give DPO a reference without a second base.

* LoRA (peft) on every linear layer of the text decoder's layers only, found per model by
  :func:`adpo.models.families.inspect_model` (``target: auto``; so CLIP's or SigLIP's ``q_proj`` is not
  hit); vision tower and projector stay frozen unless an explicit regex says otherwise.
* The reference is a frozen *named adapter* on the same base (e.g. the AT adapter; the policy adapter
  starts as a copy of it), or the base itself with the adapter disabled: one base model in memory.
* Full fine-tuning is supported too; its reference is an explicit frozen copy (never a reload from disk,
  TRL's surprise in ecosystem.md §3.3).

Switching to the reference adapter is a context manager that restores the active adapter and every
``requires_grad`` flag (peft's ``set_adapter`` silently makes the chosen adapter trainable).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.config import ConfigError, option
from ..utils.errors import MissingInput

AUTO = "auto"  # LoRA targets / full-training parameters discovered from the model (families.ModelInfo)
POLICY, REFERENCE = "default", "ref"  # "default" so save_pretrained writes a plain, top-level adapter


@dataclass(frozen=True)
class LoraSettings:
    """``enabled=False`` is full fine-tuning of the modules ``full_train`` names (a regex on parameter names).

    ``target`` / ``full_train``: regexes, or "auto" for the decoder layers' linear layers / the decoder and
    output head of the model at hand."""

    enabled: bool = option(True, "train a LoRA adapter; false: full fine-tuning of lora.full_train")
    r: int = option(8, "LoRA rank")
    alpha: int = option(16, "LoRA alpha (scale = alpha / r)")
    dropout: float = option(0.0, "LoRA dropout")
    target: str = option(AUTO, "modules LoRA wraps: a regex, or auto (every linear layer of the text decoder)")
    full_train: str = option(AUTO, "parameters full fine-tuning trains: a regex, or auto (decoder + output head)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QWEN_PROCESSORS = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")


def image_only(cls: type) -> type:
    """``cls`` (a Qwen-VL processor class) without its video-processor attribute.

    transformers builds a Qwen-VL processor only with a video processor, whose class needs torchvision;
    adpo never passes videos, so where torchvision is missing the image-only class is built, saved and
    loaded instead. Saved folders name the real class, so ``AutoProcessor`` loads them wherever
    torchvision is installed."""
    class ImageOnly(cls):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return [a for a in super().get_attributes() if a != "video_processor"]

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly


def load_processor(path: str | Path) -> Any:
    """``AutoProcessor.from_pretrained(path)``; a Qwen-VL processor without torchvision loads image-only."""
    import importlib.util

    import transformers

    config = Path(path) / "processor_config.json"
    name = json.loads(config.read_text()).get("processor_class", "") if config.is_file() else ""
    if name in QWEN_PROCESSORS and importlib.util.find_spec("torchvision") is None:
        return image_only(getattr(transformers, name)).from_pretrained(path)
    return transformers.AutoProcessor.from_pretrained(path)


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of the decoder layers. Non-reentrant matters: gradients then
    reach tensors a layer's forward hook closes over (the latent attack's δ) whether the checkpoint wraps the
    layer's ``__call__`` (hooks re-fire on recomputation, transformers 5.1x) or its ``forward`` (hooks stay
    outside, 5.2x); both are tested to give the plain step. transformers renamed the method in 5.2x; both
    names are served."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_base(path: str | Path, dtype: torch.dtype | None = None, weights: bool = True) -> tuple[nn.Module, Any]:
    """A transformers image-text model and its processor from a local folder or hub id, checked by
    :func:`~adpo.models.families.inspect_model` (an unsupported family fails here, saying what it lacks).

    ``weights=False`` builds the model from its config on the meta device (no memory, no weights read),
    which is all an inspection needs."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .families import UnsupportedModel, inspect_model
    from .hub import resolve_model

    path = resolve_model(path)
    if not (path / "config.json").exists():
        raise MissingInput(f"model folder {path} has no config.json (expected a saved transformers model)")
    try:
        if weights:
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        else:
            with torch.device("meta"):
                model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path))
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        raise UnsupportedModel(f"{path}: model_type {model_type!r} has no image-text-to-text class in transformers "
                               "(AutoModelForImageTextToText): not a vision-language model adpo can load") from None
    processor = load_processor(path)
    inspect_model(model, processor)
    return model, processor


TRAIN_RECORD = "adpo_train.json"  # beside a trained adapter / model: the run's summary, config and base
SAMPLES, SAMPLE_BYTES = 16, 64 * 1024


def weights_fingerprint(model_dir: str | Path) -> str:
    """A cheap identity of a model folder's weights: each weight file's name and size and 16 evenly spaced
    64 KiB samples of its bytes (header included). A copied or moved base matches; a differently trained
    model of the same shape does not; a 7B folder costs a few MiB of reads, not 14 GB."""
    from .hub import resolve_model

    h = hashlib.sha256()
    for p in sorted(resolve_model(model_dir).iterdir()):
        if p.suffix not in (".safetensors", ".bin", ".pt", ".pth") or not p.is_file():
            continue
        size = p.stat().st_size
        h.update(f"{p.name}:{size};".encode())
        with open(p, "rb") as f:
            for i in range(SAMPLES):
                f.seek(i * size // SAMPLES)
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def architecture(model_dir: str | Path) -> str:
    """``llava (text: 2 layers x 32, vocab 512)``: what an adapter's tensors must fit (read from config.json)."""
    from transformers import AutoConfig

    from .hub import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(model_dir))
    text = cfg.get_text_config()
    return (f"{cfg.model_type} (text: {text.num_hidden_layers} layers x {text.hidden_size}, "
            f"vocab {text.vocab_size})")


def base_record(model_dir: str | Path) -> dict[str, str]:
    """What a trained adapter records about its base, so it is never applied to another one."""
    return {"path": str(model_dir), "architecture": architecture(model_dir), "weights": weights_fingerprint(model_dir)}


class AdapterMismatch(ConfigError):
    """An adapter is applied to a base model other than the one it was trained on."""


def check_adapter_base(adapter: str | Path, base: str | Path) -> None:
    """Refuse an adapter whose recorded base (``adpo_train.json``) is not ``base``: another architecture, or
    the same architecture with other weights (silently meaningless results otherwise). Plain peft adapters
    and full models carry no record; a plain adapter's shape mismatch surfaces when peft loads it (see
    :func:`load_adapter`)."""
    try:
        rec = json.loads((Path(adapter) / TRAIN_RECORD).read_text()).get("base")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(rec, dict):
        return
    arch = architecture(base)
    if rec.get("architecture") != arch:
        raise AdapterMismatch(f"adapter {adapter} was trained on {rec.get('path')}, a {rec.get('architecture')}; "
                              f"--model {base} is a {arch}: a different architecture; pass the base it was trained on")
    fp = weights_fingerprint(base)
    if rec.get("weights") != fp:
        raise AdapterMismatch(f"adapter {adapter} was trained on base {rec.get('path')} (weights "
                              f"{rec.get('weights')}); --model {base} has other weights ({fp}); pass the base it was "
                              "trained on")


def load_adapter(base: nn.Module, adapter: str | Path, base_path: str | Path, **kwargs: Any) -> nn.Module:
    """``PeftModel.from_pretrained`` after :func:`check_adapter_base`; peft's error on tensors that do not fit
    becomes one line naming both folders."""
    from peft import PeftModel

    check_adapter_base(adapter, base_path)
    try:
        return PeftModel.from_pretrained(base, str(adapter), **kwargs)
    except (RuntimeError, ValueError, KeyError) as e:
        raise AdapterMismatch(f"adapter {adapter} does not fit --model {base_path}: "
                              f"{str(e).strip().splitlines()[0][:200]}") from e


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def resolve_run(path: str | Path) -> Path:
    """A training run folder's adapter (``OUT/adapter``) or full model (``OUT/model``), or ``path`` itself."""
    path = Path(path)
    for sub in ("adapter", "model"):
        if (path / sub / "adapter_config.json").exists() or (path / sub / "config.json").exists():
            return path / sub
    if is_adapter(path) or (path / "config.json").exists():
        return path
    raise MissingInput(f"{path} is neither a peft adapter, a model folder, nor an adpo run folder")


@dataclass
class Policy:
    """The trainable model and how to score the reference."""

    model: nn.Module
    reference: str  # "adapter" | "disabled-adapter" | "copy" | "none"
    ref_copy: nn.Module | None = None
    merged: Path | None = None  # an adapter merged into the base before the policy's fresh LoRA (save stacks it)

    @contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The reference, ready to be called (under the caller's ``no_grad``); state restored on exit."""
        if self.reference == "copy":
            yield self.ref_copy
        elif self.reference == "disabled-adapter":
            with self.model.disable_adapter():
                yield self.model
        elif self.reference == "adapter":
            flags = [(p, p.requires_grad) for p in self.model.parameters()]
            self.model.set_adapter(REFERENCE, inference_mode=True)
            try:
                yield self.model
            finally:
                self.model.set_adapter(POLICY)
                for p, f in flags:
                    p.requires_grad_(f)
        else:
            raise RuntimeError("this method has no reference model")

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


def build_policy(base: nn.Module, lora: LoraSettings, init: str | Path | None = None,
                 reference: str = "none", merge: bool = False) -> Policy:
    """The policy (and its reference) for a method.

    ``init``: a peft adapter the policy starts from (e.g. the AT adapter), or None (a fresh LoRA, which
    equals the base at step 0). ``reference``: "init" (the model the policy starts from) or "none".
    ``merge``: merge ``init`` into the base and train a fresh LoRA on top (the official ADPO run), the
    reference being the merged model; :func:`save_trained` then writes both as one adapter.
    Full fine-tuning takes its starting weights from ``base`` (load the AT model as the base).
    """
    if merge and init is not None and lora.enabled:
        from peft import PeftModel

        init = Path(init)
        if not is_adapter(init):
            raise MissingInput(f"{init} is not a peft adapter folder (no adapter_config.json)")
        merged = PeftModel.from_pretrained(base, init).merge_and_unload()
        policy = build_policy(merged, lora, None, reference)
        policy.merged = init
        return policy
    import re

    from .families import inspect_model

    if reference not in ("init", "none"):
        raise ValueError(f"reference must be 'init' or 'none', got {reference!r}")
    info = inspect_model(base, warn=False) if AUTO in (lora.target, lora.full_train) else None
    if not lora.enabled:
        if init is not None:
            raise ValueError("full fine-tuning starts from the model folder itself; pass the AT model as --model")
        pattern = re.compile(info.full_train if lora.full_train == AUTO else lora.full_train)
        for n, p in base.named_parameters():
            p.requires_grad_(bool(pattern.fullmatch(n)))
        ref = None
        if reference == "init":
            ref = copy.deepcopy(base).eval()
            ref.requires_grad_(False)
        return Policy(base, "copy" if ref is not None else "none", ref)

    from peft import LoraConfig, PeftModel, get_peft_model

    base.requires_grad_(False)
    if init is None:
        target = info.lora_target if lora.target == AUTO else lora.target
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target)
        model = get_peft_model(base, cfg, adapter_name=POLICY)
        return Policy(model, "disabled-adapter" if reference == "init" else "none")
    init = Path(init)
    if not is_adapter(init):
        raise MissingInput(f"{init} is not a peft adapter folder (no adapter_config.json)")
    model = PeftModel.from_pretrained(base, init, adapter_name=POLICY, is_trainable=True)
    if reference == "init":
        model.load_adapter(init, adapter_name=REFERENCE, is_trainable=False)
        model.set_adapter(POLICY)
        return Policy(model, "adapter")
    return Policy(model, "none")


def save_trained(policy: Policy, processor: Any, out: Path, extra: dict[str, Any] | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None, base: str | Path | None = None) -> Path:
    """Write the policy as a plain peft adapter (``out/adapter``) or a full model (``out/model``), with the
    processor and, for a run (``extra["config"]``), its model card (README.md), so
    ``PeftModel.from_pretrained`` / ``from_pretrained`` load it directly. An adapter records
    its ``base`` folder (:func:`base_record`), so it is never applied to another one."""
    from ..utils.io import atomic_dir

    name = "adapter" if hasattr(policy.model, "peft_config") else "model"
    if name == "adapter" and base is not None:
        extra = {**(extra or {}), "base": base_record(base)}
    target = out / name
    with atomic_dir(target, own=(TRAIN_RECORD,)) as tmp:
        if name == "adapter" and policy.merged is not None:
            from safetensors.torch import save_file

            weights, config = stacked_adapter(policy.merged, policy.model, state_dict)
            config.save_pretrained(tmp)
            save_file(weights, tmp / "adapter_model.safetensors")
        elif name == "adapter":
            policy.model.save_pretrained(tmp, selected_adapters=[POLICY], state_dict=state_dict)
        else:
            policy.model.save_pretrained(tmp, state_dict=state_dict)
        processor.save_pretrained(tmp)
        (tmp / TRAIN_RECORD).write_text(json.dumps(extra or {}, indent=2, default=str) + "\n")
        if (extra or {}).get("config"):
            from .card import eval_rows, model_card

            (tmp / "README.md").write_text(model_card(extra, eval_rows(extra.get("eval") or {})))
    return target


def stacked_adapter(first: str | Path, model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None):
    """(weights, LoraConfig) of one plain LoRA adapter equal to adapter ``first`` merged into the base plus
    ``model``'s trained adapter on top: ``s1·B1A1 + s2·B2A2 = [s1·B1 | s2·B2][A1; A2]``, rank r1 + r2 at
    scale 1. Both must wrap the same modules (the same ``lora.target`` on the same base)."""
    import dataclasses as dc

    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import load_file

    first = Path(first)
    c1, c2 = LoraConfig.from_pretrained(str(first)), model.peft_config[POLICY]
    if getattr(c1, "use_dora", False) or getattr(c2, "use_dora", False):
        raise ConfigError("merge-then-fresh-LoRA (train.policy_init=merge) cannot stack DoRA adapters")
    s1, s2 = (c.lora_alpha / (c.r ** 0.5 if c.use_rslora else c.r) for c in (c1, c2))
    w1 = load_file(str(first / "adapter_model.safetensors"))
    w2 = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=POLICY)
    if set(w1) != set(w2):
        diff = sorted(set(w1) ^ set(w2))[:3]
        raise ConfigError(f"adapter {first} and the policy's LoRA wrap different modules (e.g. {diff}); "
                          "train.policy_init=merge needs the same lora.target as the AT run")
    out: dict[str, torch.Tensor] = {}
    for key, a2 in w2.items():
        if ".lora_A." not in key:
            continue
        kb = key.replace(".lora_A.", ".lora_B.")
        a1, b1, b2 = w1[key], w1[kb], w2[kb]
        out[key] = torch.cat([a1.to(a2.dtype), a2]).contiguous()
        out[kb] = torch.cat([b1.to(b2.dtype) * s1, b2 * s2], dim=1).contiguous()
    r = c1.r + c2.r
    return out, dc.replace(c2, r=r, lora_alpha=r, use_rslora=False, rank_pattern={}, alpha_pattern={})


EXPORT_RECORD = "adpo_export.json"  # beside a merged export: its base and adapter


def export_merged(base: str | Path, adapter: str | Path, out: str | Path,
                  table: list[dict[str, Any]] | None = None) -> Path:
    """The adapter (or run folder) merged into its base, saved as a plain transformers folder (safetensors,
    processor, model card) that ``AutoModelForImageTextToText.from_pretrained`` loads with no peft: what
    serving and evaluation tools take. ``out`` must be new, empty or an earlier export (never overwritten
    otherwise); ``table``: evaluation rows for the card."""
    from ..utils.io import atomic_dir
    from .card import model_card

    path = resolve_run(adapter)
    if not is_adapter(path):
        raise ConfigError(f"{adapter} is a full model already (no adapter to merge); use it as it is")
    model, processor = load_base(base)
    merged = load_adapter(model, path, base).merge_and_unload()
    try:
        record = json.loads((path / TRAIN_RECORD).read_text())
    except (OSError, ValueError):
        record = {"config": {"model": str(base)}}
    with atomic_dir(Path(out), own=(EXPORT_RECORD,)) as tmp:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card({**record, "name": Path(out).name}, table or [], merged=True))
        (tmp / EXPORT_RECORD).write_text(json.dumps({"base": base_record(base), "adapter": str(path)}, indent=2)
                                         + "\n")
    return Path(out)
