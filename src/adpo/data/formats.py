"""Read preference and SFT datasets in the layouts people already have, into two plain row types.

Supported layouts (detected per row from its keys, so one loader reads them all):

* TRL: ``images``/``image`` + ``prompt`` + ``chosen`` + ``rejected`` as plain strings ("standard": the
  prompt already formatted, image token included) or conversational message lists; SFT ``messages`` or
  ``prompt`` + ``completion``;
* LLaMA-Factory sharegpt (the official ADPO data): ``conversations`` [{from, value}] with ``<image>`` in
  the human turn, ``chosen``/``rejected`` {from, value} for ranking data, ``images``; and a LLaMA-Factory
  data folder by name, ``DIR:name``, read through its ``dataset_info.json`` (file, formatting, columns, tags:
  :func:`dataset_info_records`);
* SPA-VL / RLAIF-V (``image, question, chosen, rejected``), RLHF-V (``image, text`` = JSON with
  ``question, chosen, rejected``), BeaverTails-V (``question, image, response_1, response_2,
  safer_response_id``), VLGuard (``image, safe, instr-resp``: SFT rows).

Multi-turn rows keep their earlier turns as ``history`` ((user, assistant) pairs before the last user turn):
an SFT row trains every assistant turn (LLaMA-Factory's multi-turn SFT), a preference row ranks the answers
to its last turn with the history in the prompt. A row without an image (LLaMA-Factory's text-only rows)
gets a blank mid-grey image (:data:`BLANK`), as HarmBench's text behaviours are attacked on a blank image,
and the count is printed when the file is read. The image goes before the first user turn's text, where
LLaVA's data puts ``<image>`` (the placeholder is removed from the text wherever it stood).

Every problem is reported as ``file: row N: field 'f': what is wrong`` before training starts: images
are opened and fully decoded when the rows are loaded (a truncated file, bytes that are no image, a mode
that cannot become RGB fail there, not at batch N), and 16-bit images are scaled to 8 bits, not clipped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..utils.errors import UserError

IMAGE_PLACEHOLDER = "<image>"
Kind = Literal["pairs", "sft"]


class DataError(UserError):
    """A dataset file or row cannot be read; the message names the file, the row and the field."""


@dataclass(frozen=True)
class PairRow:
    """One preference pair on one image. ``formatted``: the prompt is already chat-formatted (TRL standard)."""

    image: Any  # PIL image, or a path / {"bytes"|"path"} opened lazily by :func:`open_image`
    prompt: str
    chosen: str
    rejected: str
    source: str  # "file: row N", for error messages downstream
    formatted: bool = False
    meta: dict = dataclasses.field(default_factory=dict, compare=False)  # behaviour id, category, … (evaluation)
    history: tuple[tuple[str, str], ...] = ()  # earlier (user, assistant) turns, in the prompt


@dataclass(frozen=True)
class SFTRow:
    """One SFT conversation: ``history`` turns, then ``prompt`` → ``response``; every answer is trained."""

    image: Any
    prompt: str
    response: str
    source: str
    formatted: bool = False
    meta: dict = dataclasses.field(default_factory=dict, compare=False)
    history: tuple[tuple[str, str], ...] = ()


# ---- reading files ---------------------------------------------------------------------------------

def read_records(source: str | Path, split: str = "train", name: str | None = None) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for a .jsonl / .json / .parquet file, a saved ``datasets`` folder, or a hub name."""
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {i}: not valid JSON ({e.msg})") from e
                yield f"{path}: row {i}", rec
        return
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json dataset must be a list of rows, got {type(data).__name__}")
        for i, rec in enumerate(data, 1):
            yield f"{path}: row {i}", rec
        return
    import datasets

    if path.is_file() and path.suffix == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    elif path.suffix in (".jsonl", ".json", ".parquet"):
        raise DataError(f"{path}: file not found")
    else:
        try:
            ds = datasets.load_dataset(str(source), name=name, split=split)
        except Exception as e:  # offline, unknown name, gated: all end the same way for the user
            from ..utils.offline import offline

            if offline():
                raise DataError(f"{source}: not a file or folder here, and HF_HUB_OFFLINE=1 forbids loading it as a "
                                "hub dataset (it is not in the datasets cache); unset HF_HUB_OFFLINE, or pass a "
                                "local file") from e
            raise DataError(f"{source}: not a file or folder here, and datasets.load_dataset could not load it "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    for i, rec in enumerate(ds, 1):
        yield f"{source}: row {i}", rec


def load_rows(source: str | Path, kind: Kind, split: str = "train", name: str | None = None,
              image_root: str | Path | None = None, log=print) -> list[PairRow] | list[SFTRow]:
    """All rows of ``source`` as :class:`PairRow` (``kind="pairs"``) or :class:`SFTRow`, validated.

    ``source`` may be ``DIR:name``, a dataset of a LLaMA-Factory data folder (:func:`dataset_info_records`).
    Relative image paths are resolved against ``image_root`` (default: the file's folder).
    """
    info = split_dataset_info(source)
    if info is not None:
        records = dataset_info_records(*info, kind)
        root = Path(image_root) if image_root else info[0]
    else:
        records = read_records(source, split, name)
        root = Path(image_root) if image_root else (Path(source).parent if Path(source).exists() else None)
    rows: list = []
    for where, rec in records:
        if not isinstance(rec, dict):
            raise DataError(f"{where}: a row must be a JSON object, got {type(rec).__name__}")
        made = pair_rows(rec, where, root) if kind == "pairs" else sft_rows(rec, where, root)
        rows.extend(dataclasses.replace(r, meta=row_meta(rec)) for r in made)
    if not rows:
        raise DataError(f"{source}: no {kind} rows")
    blank = sum(r.image is BLANK for r in rows)
    if blank:
        log(f"note: {blank} of {len(rows)} rows of {source} have no image; they get a blank mid-grey "
            f"{BLANK_SIZE}x{BLANK_SIZE} image (docs/training.md, 'Data')")
    return rows


# ---- LLaMA-Factory data folders (dataset_info.json) ------------------------------------------------

DATASET_INFO = "dataset_info.json"
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"}  # LLaMA-Factory's defaults (data/README.md there)


def split_dataset_info(source: str | Path) -> tuple[Path, str] | None:
    """(folder, name) for ``DIR:name`` where ``DIR/dataset_info.json`` exists, else None."""
    folder, sep, name = str(source).rpartition(":")
    if not sep or not name or not folder or not (Path(folder) / DATASET_INFO).is_file():
        return None
    return Path(folder), name


def dataset_info_records(folder: Path, name: str, kind: Kind) -> Iterator[tuple[str, dict]]:
    """The records of dataset ``name`` of a LLaMA-Factory data folder, in this module's sharegpt layout.

    ``dataset_info.json``'s ``file_name``, ``formatting`` (sharegpt | alpaca), ``ranking``, ``columns``
    and ``tags`` are honoured as LLaMA-Factory reads them; a ranking dataset gives pairs, another SFT rows.
    """
    where = folder / DATASET_INFO
    try:
        info = json.loads(where.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}, line {e.lineno})") from e
    entry = info.get(name) if isinstance(info, dict) else None
    if not isinstance(entry, dict):
        known = sorted(info) if isinstance(info, dict) else []
        raise DataError(f"{where}: no dataset named {name!r}; known: {known}")
    if "file_name" not in entry:
        raise DataError(f"{where}: dataset {name!r}: only local 'file_name' entries are supported "
                        f"(got keys {sorted(entry)})")
    ranking = bool(entry.get("ranking", False))
    if ranking != (kind == "pairs"):
        want = "preference pairs (ranking: true)" if kind == "pairs" else "SFT rows (no ranking)"
        raise DataError(f"{where}: dataset {name!r}: expected {want} here, got ranking: {ranking}")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("sharegpt", "alpaca"):
        raise DataError(f"{where}: dataset {name!r}: formatting {formatting!r} is not supported (sharegpt, alpaca)")
    columns = dict(entry.get("columns") or {})
    tags = {**SHAREGPT_TAGS, **(entry.get("tags") or {})}
    convert = _from_sharegpt if formatting == "sharegpt" else _from_alpaca
    for at, rec in read_records(folder / entry["file_name"]):
        yield at, (convert(rec, columns, tags, ranking, at) if isinstance(rec, dict) else rec)


def _from_sharegpt(rec: dict, columns: dict, tags: dict, ranking: bool, where: str) -> dict:
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system"}

    def message(m: Any, field: str) -> Any:
        if not isinstance(m, dict):
            return m
        role = m.get(tags["role_tag"])
        if role not in roles:
            raise DataError(f"{where}: field '{field}': unknown role {role!r} (tags: {sorted(roles)})")
        return {"role": roles[role], "content": m.get(tags["content_tag"])}

    col = columns.get("messages", "conversations")
    if col not in rec:
        raise DataError(f"{where}: field '{col}': missing (dataset_info columns.messages)")
    msgs = rec[col]
    out: dict[str, Any] = {"conversations": [message(m, col) for m in msgs] if isinstance(msgs, list) else msgs}
    system = rec.get(columns.get("system", "system"))
    if isinstance(system, str) and system and isinstance(msgs, list):
        out["conversations"] = [{"role": "system", "content": system}, *out["conversations"]]
    if ranking:
        for f in ("chosen", "rejected"):
            c = columns.get(f, f)
            out[f] = message(rec.get(c), c)
    out["images"] = rec.get(columns.get("images", "images"))
    return out


def _from_alpaca(rec: dict, columns: dict, tags: dict, ranking: bool, where: str) -> dict:
    def get(key: str, default: Any = None) -> Any:
        return rec.get(columns.get(key, {"prompt": "instruction", "query": "input", "response": "output"}
                                   .get(key, key)), default)

    msgs: list[dict] = []
    for j, turn in enumerate(get("history") or []):
        if not (isinstance(turn, list) and len(turn) == 2):
            raise DataError(f"{where}: field 'history[{j}]': expected [instruction, response]")
        msgs += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt = "\n".join(p for p in (get("prompt"), get("query")) if isinstance(p, str) and p)
    msgs.append({"role": "user", "content": prompt})
    out: dict[str, Any] = {"conversations": msgs, "images": get("images")}
    if ranking:
        out.update(chosen=get("chosen"), rejected=get("rejected"))
    else:
        msgs.append({"role": "assistant", "content": get("response")})
    return out


META_KEYS = ("behavior_id", "BehaviorID", "category", "category_name", "id", "index")


def row_meta(rec: dict) -> dict:
    """Evaluation metadata of a record: its ``meta`` object plus the id/category columns peers use."""
    meta = dict(rec["meta"]) if isinstance(rec.get("meta"), dict) else {}
    meta.update({k: rec[k] for k in META_KEYS if k in rec and isinstance(rec[k], (str, int))})
    return meta


# ---- one record -> rows ----------------------------------------------------------------------------

def pair_rows(rec: dict, where: str, root: Path | None = None) -> list[PairRow]:
    keys = set(rec)
    if "conversations" in keys:
        history, prompt, _ = _sharegpt(rec, where, need_answer=False)
        chosen, rejected = (_sharegpt_answer(rec, f, where) for f in ("chosen", "rejected"))
        return [PairRow(_image(rec, where, root), prompt, chosen, rejected, where, history=history)]
    if {"prompt", "chosen", "rejected"} <= keys:
        history, prompt, formatted = _prompt(rec["prompt"], where, "prompt")
        return [PairRow(_image(rec, where, root), prompt, _answer(rec["chosen"], where, "chosen"),
                        _answer(rec["rejected"], where, "rejected"), where, formatted, history=history)]
    if {"question", "chosen", "rejected"} <= keys:  # SPA-VL, RLAIF-V
        return [PairRow(_image(rec, where, root), _text(rec["question"], where, "question"),
                        _text(rec["chosen"], where, "chosen"), _text(rec["rejected"], where, "rejected"), where)]
    if "text" in keys and "image" in keys:  # RLHF-V: text is a JSON string
        try:
            inner = json.loads(rec["text"]) if isinstance(rec["text"], str) else rec["text"]
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: field 'text': not a JSON string ({e.msg})") from e
        if not isinstance(inner, dict):
            raise DataError(f"{where}: field 'text': expected a JSON object with question/chosen/rejected")
        return pair_rows({"image": rec["image"], **inner}, where, root)
    if {"response_1", "response_2", "question"} <= keys:  # BeaverTails-V: ids name response_1 / response_2
        field = "safer_response_id" if "safer_response_id" in keys else "more_helpful_response_id"
        pick = rec.get(field)
        if str(pick) not in ("1", "2"):
            raise DataError(f"{where}: field '{field}': expected 1 or 2 (response_1 / response_2), got {pick!r}")
        a, b = _text(rec["response_1"], where, "response_1"), _text(rec["response_2"], where, "response_2")
        first = str(pick) == "1"
        return [PairRow(_image(rec, where, root), _text(rec["question"], where, "question"),
                        a if first else b, b if first else a, where)]
    raise DataError(f"{where}: unknown preference layout (keys {sorted(keys)}); expected TRL "
                    "(prompt/chosen/rejected), LLaMA-Factory (conversations/chosen/rejected), SPA-VL "
                    "(question/chosen/rejected), RLHF-V (image/text) or BeaverTails-V (response_1/response_2)")


def sft_rows(rec: dict, where: str, root: Path | None = None) -> list[SFTRow]:
    keys = set(rec)
    if "messages" in keys or "conversations" in keys:
        field = "messages" if "messages" in keys else "conversations"
        history, prompt, answer = _sharegpt({**rec, "conversations": rec[field]}, where, need_answer=True,
                                            field=field)
        return [SFTRow(_image(rec, where, root), prompt, answer, where, history=history)]
    if {"prompt", "completion"} <= keys:
        history, prompt, formatted = _prompt(rec["prompt"], where, "prompt")
        return [SFTRow(_image(rec, where, root), prompt, _answer(rec["completion"], where, "completion"), where,
                       formatted, history=history)]
    if "instr-resp" in keys:  # VLGuard
        items = rec["instr-resp"]
        if not isinstance(items, list) or not items:
            raise DataError(f"{where}: field 'instr-resp': expected a non-empty list")
        out = []
        for j, item in enumerate(items):
            instr = next((item[k] for k in ("instruction", "safe_instruction", "unsafe_instruction")
                          if isinstance(item, dict) and k in item), None)
            if instr is None or "response" not in item:
                raise DataError(f"{where}: field 'instr-resp[{j}]': needs an instruction and a response")
            out.append(SFTRow(_image(rec, where, root), _text(instr, where, f"instr-resp[{j}]"),
                              _text(item["response"], where, f"instr-resp[{j}].response"), where))
        return out
    raise DataError(f"{where}: unknown SFT layout (keys {sorted(keys)}); expected messages, conversations, "
                    "prompt/completion or VLGuard instr-resp")


# ---- fields ------------------------------------------------------------------------------------------

def _text(value: Any, where: str, field: str) -> str:
    text = value.replace(IMAGE_PLACEHOLDER, "").strip() if isinstance(value, str) else ""
    if not text:
        raise DataError(f"{where}: field '{field}': expected a non-empty string, got {value!r:.60}")
    return text


def _content(content: Any, where: str, field: str) -> str:
    """The text of a message's content: a string, or parts [{type: text|image}]."""
    if isinstance(content, str):
        return _text(content, where, field)
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return _text(" ".join(parts), where, field)
    raise DataError(f"{where}: field '{field}': content must be a string or a list of parts")


def _messages(value: Any, where: str, field: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}': expected a non-empty list of messages")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(f"{where}: field '{field}[{j}]': a message must be an object")
        role = m.get("role", m.get("from"))
        role = {"human": "user", "gpt": "assistant"}.get(role, role)
        if role not in ("user", "assistant", "system"):
            raise DataError(f"{where}: field '{field}[{j}]': unknown role {role!r}")
        out.append((role, _content(m.get("content", m.get("value")), where, f"{field}[{j}]")))
    return out


def _prompt(value: Any, where: str, field: str) -> tuple[tuple[tuple[str, str], ...], str, bool]:
    """(history, text, formatted): a plain-string prompt is TRL's standard form, already chat-formatted; a
    message list alternates user and assistant turns and ends with the user turn that is answered."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field '{field}': empty prompt")
        return (), value, True
    history, prompt, _ = _turns(_messages(value, where, field), where, field, need_answer=False)
    return history, prompt, False


def _answer(value: Any, where: str, field: str) -> str:
    if isinstance(value, str):
        return _text(value, where, field)
    turns = _messages(value, where, field)
    if len(turns) != 1 or turns[0][0] != "assistant":
        raise DataError(f"{where}: field '{field}': expected one assistant message")
    return turns[0][1]


def _sharegpt(rec: dict, where: str, need_answer: bool,
              field: str = "conversations") -> tuple[tuple[tuple[str, str], ...], str, str | None]:
    return _turns(_messages(rec[field], where, field), where, field, need_answer)


def _turns(messages: list[tuple[str, str]], where: str, field: str,
           need_answer: bool) -> tuple[tuple[tuple[str, str], ...], str, str | None]:
    """(history, last user turn, its answer or None) of alternating user/assistant turns (system dropped)."""
    turns = [t for t in messages if t[0] != "system"]
    roles = [r for r, _ in turns]
    last = "assistant" if need_answer else "user"
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if not turns or roles != expected[: len(turns)] or roles[-1] != last:
        raise DataError(f"{where}: field '{field}': expected alternating user/assistant turns starting with user "
                        f"and ending with {last}, got roles {roles}")
    body = turns if need_answer else turns + [("assistant", "")]
    pairs = [(body[i][1], body[i + 1][1]) for i in range(0, len(body), 2)]
    *history, (prompt, answer) = pairs
    return tuple(history), prompt, (answer if need_answer else None)


def _sharegpt_answer(rec: dict, field: str, where: str) -> str:
    value = rec.get(field)
    if isinstance(value, dict):
        return _content(value.get("value", value.get("content")), where, field)
    return _answer(value, where, field)


def _image(rec: dict, where: str, root: Path | None) -> Any:
    field = "images" if "images" in rec else "image"
    value = rec.get(field)
    if value is None or (isinstance(value, list) and not value):
        return BLANK  # a text-only row (LLaMA-Factory) is seen on a blank image, as HarmBench's text behaviours
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(f"{where}: field '{field}': exactly one image per row is supported, got {len(value)}")
        value = value[0]
    if isinstance(value, dict) and value.get("bytes") is None:
        value = value.get("path")  # a datasets Image record without bytes
    if value is None:
        raise DataError(f"{where}: field '{field}': an image record with neither bytes nor a path")
    if isinstance(value, str):
        path = Path(value)
        if not path.is_absolute() and root is not None:
            path = root / path
        if not path.exists():
            raise DataError(f"{where}: field '{field}': image file {path} not found")
        value = path
    elif not isinstance(value, (Image.Image, dict)):
        raise DataError(f"{where}: field '{field}': expected an image path, {{\"bytes\": …}} or an image, "
                        f"got {type(value).__name__}")
    try:
        open_image(value)  # decoded once now, so a broken image is named here, not at batch N
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as e:
        what = f"image file {value}" if isinstance(value, Path) else "image"
        raise DataError(f"{where}: field '{field}': {what} cannot be read as an RGB image "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    return value


BLANK_SIZE = 336  # LLaVA-1.5's input side; the processor resizes it for other models
BLANK_GREY = (128, 128, 128)  # the same mid-grey as the evaluation's "blank" attack source (eval/data.py)


class _Blank:
    """The image of a text-only row (one shared instance: ``row.image is BLANK``)."""

    def __repr__(self) -> str:
        return "BLANK"


BLANK = _Blank()


def blank_image(width: int = BLANK_SIZE, height: int = BLANK_SIZE) -> Image.Image:
    return Image.new("RGB", (width, height), BLANK_GREY)


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit PNGs open as I;16 (or I in older Pillow)


def _rgb(im):
    """RGB from any PIL mode; 16-bit greyscale is scaled to 8 bits (PIL's own convert would clip it to 255)."""
    from PIL import Image

    if im.mode in SIXTEEN_BIT:
        import numpy as np

        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"mode {im.mode} with values outside 0..65535; save it as 8-bit RGB")
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        raise ValueError("a floating-point image (mode F); save it as 8-bit RGB")
    return im.convert("RGB")


def open_image(value: Any, size: int | None = None):
    """A PIL RGB image from a PIL image, a path, or a ``{"bytes": ...}`` record; resized to ``size``×``size``
    when given (dynamic-resolution families such as Qwen2-VL need one patch grid per attacked batch)."""
    import io

    if value is BLANK:
        image = blank_image()
    elif isinstance(value, Image.Image):
        image = _rgb(value)
    elif isinstance(value, dict) and value.get("bytes") is not None:
        image = _rgb(Image.open(io.BytesIO(bytes(value["bytes"]))))  # JSON spells bytes as a list of ints
    else:
        with Image.open(value) as im:
            image = _rgb(im)
    if size and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def image_dims(value: Any, size: int | None = None) -> tuple[int, int]:
    """(width, height) the model will see for a row's image, read from the header only."""
    import io

    if size:
        return size, size
    if value is BLANK:
        return BLANK_SIZE, BLANK_SIZE
    if isinstance(value, Image.Image):
        return value.size
    with Image.open(io.BytesIO(bytes(value["bytes"])) if isinstance(value, dict) else value) as im:
        return im.size
