"""Every settings field as a command-line flag, its help and default read from the dataclass.

``adpo train --help`` and ``adpo eval --help`` list each section's fields in their own group
(``--train.lr``, ``--lora.r``, ``--pgd_image.steps`` …) with the field's ``metadata["help"]`` and its
default (:func:`adpo.utils.config.option`). A flag is the same as the ``section.key=value`` override it
stands for: it is turned into one (:func:`overrides`) and parsed as YAML like the others, so
``--train.lr 1e-4``, ``--learning_rate 1e-4`` and ``train.lr=1e-4`` mean the same thing. ``aliases`` add
TRL / transformers names (``--learning_rate``) to a field's flag.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .config import help_of

PREFIX = "override:"  # argparse dest of a generated flag: PREFIX + "section.key"
BOOLS = ("true", "false", "1", "0", "yes", "no", "on", "off")


def boolean(text: str) -> str:
    """A boolean flag's optional value (``--train.keep_best`` alone means true); anything else, e.g. an override
    that followed the bare flag, is an argparse error rather than a silently truthy string."""
    if text.lower() not in BOOLS:
        raise argparse.ArgumentTypeError(f"expected one of {'/'.join(BOOLS)}, got {text!r} (write "
                                         "--flag true before key=value overrides)")
    return text.lower()


def _default(f: dataclasses.Field, defaults: Mapping[str, Any]) -> Any:
    if f.name in defaults:
        return defaults[f.name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return None


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def add_section(parser: argparse.ArgumentParser, cls: type, section: str | None, title: str,
                defaults: Mapping[str, Any] | None = None, aliases: Mapping[str, Sequence[str]] | None = None,
                skip: Sequence[str] = ()) -> None:
    """One argument group: a flag per field of ``cls`` but those in ``skip``. ``section``: the key prefix (None:
    top-level keys); ``defaults`` override the dataclass defaults shown (a threat's training defaults)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        key = f"{section}.{f.name}" if section else f.name
        flags = [f"--{key}", *(f"--{a}" for a in (aliases or {}).get(f.name, ()))]
        default = _default(f, defaults or {})
        text = help_of(f) or "(see the section's docs)"
        is_bool = isinstance(default, bool)
        kw: dict[str, Any] = {"nargs": "?", "const": "true", "metavar": "BOOL", "type": boolean} if is_bool else {
            "metavar": type(default).__name__.upper() if default is not None and not isinstance(default, tuple)
            else "VALUE"}
        group.add_argument(*flags, dest=PREFIX + key, default=argparse.SUPPRESS,
                           help=f"{text} (default: {_shown(default)})".replace("%", "%%"), **kw)


def overrides(args: argparse.Namespace) -> list[str]:
    """The generated flags given on the command line, as ``section.key=value`` overrides."""
    return [f"{dest[len(PREFIX):]}={value}" for dest, value in vars(args).items() if dest.startswith(PREFIX)]
