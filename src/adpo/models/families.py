"""What adpo needs to know about a vision-language model, discovered from the model and its processor.

Nothing here is a family's number: decoder layers come from ``get_decoder().layers``, the hidden size and
vocabulary from the text config, the LoRA targets from the ``nn.Linear`` leaves the decoder layers actually
have, the pixel codec from the image processor's statistics, the prompt format from the processor's chat
template (docs/method.md §8: the official code's bug B8 hard-coded 4096 dims, 32 layers and CLIP's mean).
:func:`inspect_model` either returns a :class:`ModelInfo` or raises :class:`UnsupportedModel` naming every
missing piece, so an unsupported family fails at start-up with a reason, not deep inside an attack.

Families exercised in CI (tiny random models, :mod:`adpo.models.synthetic`): LLaVA-1.5, LLaVA-NeXT,
Qwen2-VL, Qwen2.5-VL, Idefics3 (SmolVLM-256M/500M/2.2B use its classes). Others that pass the checks run
with a warning that they are untested.
"""

from __future__ import annotations

import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..utils.errors import UserError

TESTED = {"llava": "LLaVA-1.5", "llava_next": "LLaVA-NeXT", "qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL",
          "idefics3": "Idefics3 / SmolVLM"}  # SmolVLM2 (model_type smolvlm) shares Idefics3's design, untested


class UnsupportedModel(UserError, TypeError):
    """A model or processor lacks something adpo's threat models, losses or data path rely on (a user error:
    the CLI prints it as one line)."""


@dataclass(frozen=True)
class ModelInfo:
    """The facts the threat models, losses and LoRA need, with where each came from."""

    model_type: str
    family: str  # display name of a tested family, or "untested"
    logits_to_keep: bool  # forward takes logits_to_keep (chunked log-probs need it)
    decoder_path: str  # module path of the text decoder (``get_decoder()``), e.g. "model.language_model"
    n_layers: int
    hidden_size: int
    vocab_size: int
    linear_names: tuple[str, ...]  # nn.Linear leaf names inside the decoder layers (LoRA's "all linear")
    head_path: str  # module path of the output embedding (lm_head)
    image_token_id: int | None

    @property
    def lora_target(self) -> str:
        """peft ``target_modules`` regex: every linear layer of the decoder layers, nothing in the vision
        tower or projector (whose ``q_proj`` etc. share names with the LM's)."""
        names = "|".join(self.linear_names)
        return rf"{re.escape(self.decoder_path)}\.layers\.\d+\.(.*\.)?({names})"

    @property
    def full_train(self) -> str:
        """Parameter-name regex for full fine-tuning: the decoder and the output head."""
        return rf"({re.escape(self.decoder_path)}|{re.escape(self.head_path)})\..*"


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a DDP/DeepSpeed- and/or PEFT-wrapped one."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _leaf(name: str) -> str:
    """A linear layer's own name; peft's LoRA wrapper keeps the original as ``<name>.base_layer``."""
    return name.removesuffix(".base_layer").rsplit(".", 1)[-1]


def _path_of(model: nn.Module, module: nn.Module) -> str | None:
    return next((name for name, m in model.named_modules() if m is module), None)


def inspect_model(model: nn.Module, processor: Any = None, warn: bool = True) -> ModelInfo:
    """Discover a VLM's structure (and check its processor); :class:`UnsupportedModel` lists what is missing."""
    core = unwrap(model)
    cfg = getattr(core, "config", None)
    model_type = str(getattr(cfg, "model_type", "?"))
    name = f"{type(core).__name__} (model_type {model_type!r})"
    missing: list[str] = []
    decoder = core.get_decoder() if hasattr(core, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if decoder is None:
        missing.append("get_decoder() (the latent threat model hooks the text decoder's layers)")
    elif not isinstance(layers, nn.ModuleList) or not len(layers):
        missing.append(f"a non-empty `layers` ModuleList on its decoder {type(decoder).__name__}")
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    hidden = getattr(text, "hidden_size", None)
    if hidden is None:
        missing.append("text_config.hidden_size (the latent perturbation's width)")
    head = core.get_output_embeddings() if hasattr(core, "get_output_embeddings") else None
    head = getattr(head, "base_layer", head)  # a LoRA-wrapped head
    if not isinstance(head, nn.Linear):
        missing.append("a linear output embedding (get_output_embeddings(); chunked log-probs project through it)")
    if "pixel_values" not in inspect.signature(core.forward).parameters:
        missing.append("a `pixel_values` argument to forward (it is not an image-text model)")
    image_token = getattr(cfg, "image_token_id", None)
    if image_token is None:
        image_token = getattr(cfg, "image_token_index", None)
    if processor is not None:
        missing += processor_problems(processor)
        theirs = getattr(processor, "image_token_id", None)
        if image_token is not None and theirs is not None and int(theirs) != int(image_token):
            missing.append(f"a processor whose image token (id {theirs}) is the model's image_token_id "
                           f"({image_token}): the image features would land on the wrong positions")
    if missing:
        raise UnsupportedModel(f"{name} cannot be used by adpo; missing: " + "; ".join(missing)
                               + f". Tested families: {', '.join(sorted(set(TESTED.values())))}.")
    linear = sorted({_leaf(n) for n, m in layers.named_modules() if isinstance(m, nn.Linear) and "lora_" not in n})
    info = ModelInfo(model_type=model_type, family=TESTED.get(model_type, "untested"),
                     logits_to_keep="logits_to_keep" in inspect.signature(core.forward).parameters,
                     decoder_path=_path_of(core, decoder), n_layers=len(layers), hidden_size=int(hidden),
                     vocab_size=int(head.out_features), linear_names=tuple(linear),
                     head_path=_path_of(core, head).removesuffix(".base_layer"),
                     image_token_id=None if image_token is None else int(image_token))
    if warn and info.family == "untested":
        warnings.warn(f"{name} is not one of adpo's tested families ({', '.join(sorted(TESTED))}); it passed "
                      "the structural checks, but verify one attack and one training step before a long run",
                      stacklevel=2)
    return info


def processor_problems(processor: Any) -> list[str]:
    """What a processor lacks for adpo's data path (chat template, tokenizer, image statistics)."""
    problems = []
    tok = getattr(processor, "tokenizer", None)
    if tok is None:
        problems.append("processor.tokenizer")
    template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
    if not template:
        problems.append("a chat template on the processor (prompts and answers are formatted with "
                        "processor.apply_chat_template; set processor.chat_template)")
    ip = getattr(processor, "image_processor", None)
    if ip is None or getattr(ip, "image_mean", None) is None or getattr(ip, "image_std", None) is None:
        problems.append("processor.image_processor with image_mean/image_std (image attacks work in [0,1] "
                        "pixels before normalisation)")
    return problems
