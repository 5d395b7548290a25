"""Plain-text tables for the admin CLI and the benchmark reports."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[object]],
          fmt: Callable[[object], str] = str) -> str:
    """Left-aligned columns, two spaces apart; every cell through `fmt`."""
    cells = [list(map(str, headers))] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
