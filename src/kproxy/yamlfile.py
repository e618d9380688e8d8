"""YAML files read with errors that name the file, line and column, as every kproxy input reports them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def load_yaml(path: str | os.PathLike[str], error: type[Exception] = ValueError, all_documents: bool = False) -> Any:
    """The parsed document (or documents); a syntax error raises ``error("file:line:col: problem")``."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise error(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = text_line(exc.object, exc.start)
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    try:
        return _fast(text, all_documents)
    except yaml.YAMLError:
        pass                     # said as the pure-Python parser says it (its words, line and column)
    try:
        return list(yaml.safe_load_all(text)) if all_documents else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise error(f"{where}: {getattr(exc, 'problem', None) or exc}") from None


def _fast(text: str, all_documents: bool) -> Any:
    """The documents through libyaml where PyYAML has it (the same safe constructor, ten times faster
    on a cluster's manifests); a YAMLError is parsed again by the caller for its message."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return list(yaml.load_all(text, Loader=loader)) if all_documents else yaml.load(text, Loader=loader)


def text_line(data: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1
