"""DOT text and SVG from a ``graphviz.Digraph``, with one-line errors when Graphviz is missing."""

from __future__ import annotations

import textwrap

import graphviz

FORMATS = ("svg", "dot")


class PictureError(RuntimeError):
    """Graphviz could not draw the picture (not installed, or it failed)."""


def label(text: str, width: int = 0) -> str:
    """Text for a DOT label: backslashes kept literal, long lines wrapped (left-justified with ``\\l``)."""
    text = text.replace("\\", "\\\\")
    if not width:
        return "\\n".join(text.splitlines())
    lines: list[str] = []
    for line in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(line, width, break_long_words=True, break_on_hyphens=False) or [""])
    return "\\l".join(lines) + "\\l"


def render(graph: graphviz.Digraph, fmt: str) -> str:
    """``graph`` as DOT source or as an SVG document."""
    if fmt == "dot":
        return graph.source
    if fmt != "svg":
        raise PictureError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        return graph.pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        raise PictureError("graphviz's dot is not installed (Debian: apt-get install graphviz)") from None
    except graphviz.CalledProcessError as exc:
        raise PictureError(f"dot failed: {(exc.stderr or b'').decode(errors='replace').strip()}") from None


def inline_svg(svg: str) -> str:
    """An SVG document without its XML prolog and DOCTYPE, to embed in HTML."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg
