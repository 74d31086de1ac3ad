"""Turn DOT source into SVG, PNG or PDF with Graphviz's ``dot`` program."""

from __future__ import annotations

from pathlib import Path

FORMATS = ("svg", "png", "pdf", "dot", "mermaid")


class DotMissing(RuntimeError):
    """Graphviz's ``dot`` program is not installed."""


def render(dot_source: str, out: Path, fmt: str) -> Path:
    """Write ``out`` in ``fmt`` (svg, png, pdf or dot). Raises :class:`DotMissing`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        out.write_text(dot_source, encoding="utf-8")
        return out
    import graphviz

    source = graphviz.Source(dot_source)
    try:
        data = source.pipe(format=fmt, engine="dot")
    except graphviz.ExecutableNotFound as exc:
        raise DotMissing("the Graphviz program `dot` is not installed: "
                         "apt-get install graphviz (Debian/Ubuntu)") from exc
    out.write_bytes(data)
    return out
