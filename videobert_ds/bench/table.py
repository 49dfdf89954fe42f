"""The benchmarks' shared printing: a Markdown table of string rows, the (label, A, B, A / B) row of a side-by-side
comparison, and the machine line printed above a table."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence

Row = tuple[str, str, str, str]  # (label, A, B, A / B)


def ratio_row(label: str, a: float, b: float, fmt: str = "{:.1f}", ratio: str = "{:.2f}x") -> Row:
    """A side-by-side row: both values in `fmt`, and their ratio in `ratio` (blank where B is 0)."""
    return label, fmt.format(a), fmt.format(b), ratio.format(a / b) if b else ""


def machine_line(*details: str) -> str:
    """ "machine: ARCH, N CPUs, torch X, [details, ...] DATE": what a table's figures were measured on."""
    import torch

    parts = [platform.machine(), f"{os.cpu_count()} CPUs", f"torch {torch.__version__}", *details]
    return f"machine: {', '.join(parts)}, {time.strftime('%Y-%m-%d')}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, padded to line up in a terminal: the first column left-aligned, the others right-aligned.
    A "|" inside a cell is escaped, so the table pastes into docs/benchmarks.md as it is."""
    cells = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rule = ["-" * (widths[0] + 2), *("-" * (w + 1) + ":" for w in widths[1:])]  # right-aligned numbers
    lines = []
    for row in cells:
        padded = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]
        lines.append("| " + " | ".join(padded) + " |")
    lines.insert(1, "|" + "|".join(rule) + "|")
    return "\n".join(lines)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print(markdown_table(header, rows))
