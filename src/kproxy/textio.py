"""Bytes in, bytes out: the tools' input and output as the real tools treat them, whatever the encoding.

The real tools read and write bytes; a comment or set name in Latin-1 is theirs to keep. Python decodes
argv with ``surrogateescape``; stdin and rule files are decoded the same way here, and output is encoded
back with it, so undecodable bytes pass through unchanged instead of raising UnicodeError.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO


def read_stdin() -> str:
    """All of stdin, undecodable bytes kept as surrogates."""
    stream = sys.stdin
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        return stream.read()
    return bytes(buffer.read()).decode("utf-8", "surrogateescape")


def read_text(path: str | Path) -> str:
    """A file's text, undecodable bytes kept as surrogates (OSError as usual)."""
    return Path(path).read_bytes().decode("utf-8", "surrogateescape")


def write_text(stream: IO[str], text: str) -> None:
    """Write ``text``, surrogates going out as the bytes they came in as."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        return
    stream.flush()
    buffer.write(text.encode(getattr(stream, "encoding", None) or "utf-8", "surrogateescape"))
    buffer.flush()


def utf8_text(path: str | Path, what: str) -> str:
    """A kproxy file (packets, node description) that must be UTF-8; a ValueError names the byte otherwise."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"{path}:{line}:{col}: {what} is not UTF-8 text") from None
