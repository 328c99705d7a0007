"""The one way cings opens and reads its input files: plain or compressed, line by line, with errors
that name ``FILE:LINE``.

Every command that reads JSON Lines (records, raw formats, predictions) goes through
:func:`iter_jsonl` (or :func:`iter_lines` / :func:`read_text` for other text), so a truncated
``.gz``, a non-UTF-8 byte or a broken JSON line reads the same everywhere. Stdlib only.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["RecordError", "file_sha256", "COMPRESSED", "compression_of", "open_binary", "open_text", "open_for_writing", "iter_lines", "iter_jsonl",
           "read_text", "json_error", "loads"]


class RecordError(ValueError):
    """An input that breaks its format. The message starts with ``FILE:LINE:`` when known."""


COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What a damaged compressed stream raises while it is read (BadGzipFile is an OSError; bz2 raises OSError).
_STREAM_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


def compression_of(path: str | Path) -> str:
    """'.gz', '.bz2', '.xz' or '' from the last suffix."""
    suffix = Path(path).suffix.lower()
    return suffix if suffix in COMPRESSED else ""


def _check(path: Path) -> None:
    if not path.exists():
        raise RecordError(f"{path}: no such file")
    if path.is_dir():
        raise RecordError(f"{path}: is a folder, not a file")


def open_binary(path: str | Path) -> IO[bytes]:
    """The file's bytes, decompressed by suffix; a missing file or a folder is a :class:`RecordError`."""
    path = Path(path)
    _check(path)
    try:
        compression = compression_of(path)
        return COMPRESSED[compression](path, "rb") if compression else open(path, "rb")
    except OSError as err:
        raise RecordError(f"{path}: cannot read ({err.strerror or err})") from None


def open_text(path: str | Path) -> IO[str]:
    """A UTF-8 text handle (decompressed by suffix). Reading it raises raw decode and stream errors;
    use :func:`iter_lines` or :func:`read_text` to have them named by ``FILE:LINE``."""
    path = Path(path)
    _check(path)
    try:
        compression = compression_of(path)
        if compression:
            return COMPRESSED[compression](path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    except OSError as err:
        raise RecordError(f"{path}: cannot read ({err.strerror or err})") from None


def open_for_writing(path: str | Path) -> IO[str]:
    """A UTF-8 text handle that writes ``path``, compressed by its suffix like :func:`open_text` reads it
    (an output named ``.jsonl.gz`` is gzip, not plain text under a misleading name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compression = compression_of(path)
    return COMPRESSED[compression](path, "wt", encoding="utf-8") if compression else open(path, "w", encoding="utf-8")


def _stream_error(path: Path, lineno: int, err: BaseException) -> RecordError:
    if isinstance(err, EOFError):
        what = f"the {compression_of(path) or 'compressed'} stream ends early: the file is truncated ({err})"
    else:
        what = f"cannot decompress ({err})"
    return RecordError(f"{path}:{lineno}: {what}")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(lineno, line)`` for every line (line ends kept), decoded as UTF-8 one line at a time, so that
    a bad byte or a damaged stream is reported at the line where it is."""
    path = Path(path)
    lineno = 0
    with open_binary(path) as handle:
        while True:
            try:
                raw = handle.readline()
            except _STREAM_ERRORS as err:
                raise _stream_error(path, lineno + 1, err) from None
            if not raw:
                return
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RecordError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at byte"
                                  f" {err.start + 1} of the line); save the file as UTF-8") from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a byte-order mark some editors write; JSON refuses it
            yield lineno, line


def read_text(path: str | Path) -> str:
    """The whole file as text, with the same errors as :func:`iter_lines`."""
    return "".join(line for _, line in iter_lines(path))


def json_error(where: str, err: json.JSONDecodeError) -> RecordError:
    """``WHERE: not valid JSON (MSG, column N)``.

    Two of json's messages ("Unterminated string starting at", "Invalid control character at") are
    written to be followed by the position (``str(err)`` adds ": line L column C"), so they take the
    column without a comma: "(Unterminated string starting at column 9)".
    """
    joint = " " if err.msg.endswith(" at") else ", "
    return RecordError(f"{where}: not valid JSON ({err.msg}{joint}column {err.colno})")


def loads(text: str, where: str) -> Any:
    """``json.loads`` whose error names ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise json_error(where, err) from None


def iter_jsonl(path: str | Path, *, bad_json: str = "raise") -> Iterator[tuple[str, int, Any]]:
    """``(where, lineno, value)`` for every non-blank line of a JSON Lines file; ``where`` is ``FILE:LINE``.

    Decode and stream errors always raise :class:`RecordError`. A line that is not JSON raises too,
    or with ``bad_json="yield"`` comes back as the :class:`RecordError` in place of the value, for
    readers that may skip a broken line and go on.
    """
    if bad_json not in ("raise", "yield"):
        raise ValueError(f"bad_json must be 'raise' or 'yield', not {bad_json!r}")
    path = Path(path)
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            # Without its line end, so that an error at the end of the line gets its column, not "column 1".
            value = loads(line.rstrip("\r\n"), where)
        except RecordError as err:
            if bad_json == "raise":
                raise
            value = err
        yield where, lineno, value


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (data files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
