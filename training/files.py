"""Small text files in and out: UTF-8 text read with a one-line error, JSON written atomically, and output
paths checked before a long run rather than after it."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (a UTF-8 byte-order mark is allowed).

    Raises:
        ValueError: one line naming the file and the line of the first byte that is not UTF-8.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        hint = " (it starts with a UTF-16 byte-order mark: it is UTF-16)" if data[:2] in _UTF16_BOMS else ""
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}){hint}; "
                         "save it as UTF-8") from None


def write_json(path: Path, value: Any, indent: int | None = None) -> None:
    """Write `value` as UTF-8 JSON atomically (a temporary file beside it, then a rename): a reader never
    sees half a file, and a run stopped while writing leaves the previous version."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_writable(path: Path, *, folder: bool, name: str) -> None:
    """Check that a file (or, with `folder`, files inside a folder) can be written at `path`, creating the
    folders on the way; a long run calls this before its work so that it cannot fail at the end.

    Args:
        name: what `path` is, for the message (e.g. the command-line option, "--json").
    Raises:
        ValueError: one line naming `name`, the path and the reason.
    """
    if not folder and path.is_dir():
        raise ValueError(f"{name} {path}: is a folder; give the path of a file")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path}: is a file; give the path of a folder")
    directory = path if folder else path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise ValueError(f"{name} {path}: cannot write there ({exc.strerror or exc}"
                         f"{f': {exc.filename}' if exc.filename else ''})") from None
