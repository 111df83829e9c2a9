"""Prompt formats by name: the model's own chat template, or LLaMA-Factory's ``llava`` / ``vicuna``.

The official ADPO scripts train and attack LLaVA-1.5 with LLaMA-Factory's ``llava`` template
(``src/llamafactory/data/template.py`` there): the Vicuna system prompt glued to the first turn, then
``USER: {content} ASSISTANT:`` per user turn and ``{content}</s>`` per answer, every piece tokenised on its
own. llava-hf's chat template differs: no system prompt, a newline after ``<image>``, no ``</s>`` between
turns. A named template here is a Jinja chat template installed on the processor
(:func:`use_template`), so every path that formats a prompt (training collation, the attacks, generation
at evaluation) renders the same text, and a trained adapter's saved processor carries it.

LLaMA-Factory tokenises each answer apart, so a SentencePiece tokenizer's dummy prefix gives the answer a
leading ``▁``: the model sees ``ASSISTANT:`` then ``▁Sorry``. adpo tokenises answers with the text before
them (:func:`adpo.data.collate.joined_ids`), so the template writes that space, ``ASSISTANT: Sorry</s>``,
and gets the same ids. The image goes first in the first user turn (``USER: <image>{text} ASSISTANT:``);
LLaMA-Factory keeps ``<image>`` where the row's text had it (before or after the question).
"""

from __future__ import annotations

from typing import Any

MODEL = "model"  # the processor's own chat template
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def _vicuna(image: str, eos: str) -> str:
    """LLaMA-Factory's vicuna turn format as a Jinja chat template (list-of-parts or string content)."""
    def content(role_text: str) -> str:
        return ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + role_text
                + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}")

    return ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
            "{{ messages[0]['content'] if messages[0]['content'] is string else "
            "messages[0]['content'][0]['text'] }}"
            "{% else %}{% set loop_messages = messages %}{{ '" + VICUNA_SYSTEM.replace("'", "\\'") + "' }}{% endif %}"
            "{% for message in loop_messages %}{% if message['role'] == 'user' %}USER: " + content(image)
            + " ASSISTANT:{% elif message['role'] == 'assistant' %} " + content("")
            + eos + "{% endif %}{% endfor %}")


TEMPLATES = {
    "llava": "LLaMA-Factory's llava (LLaVA-1.5, the official ADPO scripts): Vicuna system prompt, USER:/ASSISTANT:",
    "vicuna": "LLaMA-Factory's vicuna: the same turn format (the text template llava copies)",
}


def render_template(name: str, processor: Any) -> str:
    """The Jinja chat template of ``name`` for ``processor`` (its image and end-of-sequence tokens)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {[MODEL, *TEMPLATES]}")
    tok = getattr(processor, "tokenizer", processor)
    image = getattr(processor, "image_token", None) or "<image>"
    return _vicuna(image, tok.eos_token or "")


def use_template(processor: Any, name: str | None) -> Any:
    """Install template ``name`` on ``processor`` (and its tokenizer); ``model`` / None keep its own."""
    if name in (None, MODEL):
        return processor
    template = render_template(name, processor)
    processor.chat_template = template
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.chat_template = template
    return processor
