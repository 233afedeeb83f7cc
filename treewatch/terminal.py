"""Output that suits where it goes: on a terminal, tables fit its width, states are coloured and long
work shows a progress line; piped into a file or another program, the same lines come out whole,
without escape codes and without progress, so what a script reads never depends on a window's size.

Colour follows https://no-color.org: never when ``NO_COLOR`` is set to anything but the empty
string, nor when ``TERM=dumb``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

RED, GREEN, YELLOW = "31", "32", "33"
_RESET = "\033[0m"
# Cut text ends with this, so a shortened cell is never mistaken for the whole value.
ELLIPSIS = "…"
# Narrowest a shrinkable column gets, however narrow the terminal: a few characters still identify a name.
MIN_COLUMN_WIDTH = 8


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def colour_enabled(stream: TextIO) -> bool:
    return is_terminal(stream) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def paint(text: str, colour: str | None, stream: TextIO | None = None) -> str:
    """``text`` in ``colour`` (RED, GREEN, YELLOW) when ``stream`` (stdout by default) shows colour."""
    if colour is None or not colour_enabled(sys.stdout if stream is None else stream):
        return text
    return f"\033[{colour}m{text}{_RESET}"


@dataclass(frozen=True)
class Cell:
    """A table cell with a colour (shown only where colour_enabled)."""

    text: str
    colour: str | None = None


@dataclass(frozen=True)
class Column:
    heading: str = ""
    right: bool = False  # numbers are right-aligned
    shrink: bool = False  # may be cut to fit a terminal (names, messages), never a number


def table(columns: Sequence[Column], rows: Sequence[Sequence[str | Cell | None]], *, indent: str = "  ",
          stream: TextIO | None = None) -> list[str]:
    """The rows as aligned lines, each column as wide as its widest cell (None prints as "-").

    On a terminal a table wider than the window has its shrinkable columns cut, the widest first,
    each cut cell ending in ELLIPSIS; elsewhere nothing is ever cut. Headings are printed when any
    column has one.
    """
    stream = sys.stdout if stream is None else stream
    cells = [[c if isinstance(c, Cell) else Cell("-" if c is None else str(c)) for c in row] for row in rows]
    headed = any(c.heading for c in columns)
    widths = [max([len(c.heading) if headed else 0, *(len(row[i].text) for row in cells)])
              for i, c in enumerate(columns)]
    if is_terminal(stream):
        widths = _fitted(columns, widths, shutil.get_terminal_size().columns - len(indent))
    lines = []
    if headed:
        lines.append(indent + _line([Cell(c.heading) for c in columns], columns, widths, stream))
    lines += [indent + _line(row, columns, widths, stream) for row in cells]
    return lines


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str | Cell | None]], *,
                indent: str = "  ") -> None:
    for line in table(columns, rows, indent=indent):
        print(line)


def _fitted(columns: Sequence[Column], widths: list[int], room: int) -> list[int]:
    widths = list(widths)
    total = sum(widths) + 2 * (len(widths) - 1)
    while total > room:
        shrinkable = [i for i, c in enumerate(columns) if c.shrink and widths[i] > MIN_COLUMN_WIDTH]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        others = [widths[i] for i in shrinkable if i != widest]
        # Down to the next widest (or as far as needed), so the cut is shared among the widest columns.
        target = max(MIN_COLUMN_WIDTH, widths[widest] - (total - room), max(others, default=0))
        if target == widths[widest]:
            target -= 1
        total -= widths[widest] - target
        widths[widest] = target
    return widths


def _line(row: Sequence[Cell], columns: Sequence[Column], widths: list[int], stream: TextIO) -> str:
    parts = []
    for cell, column, width in zip(row, columns, widths, strict=True):
        text = cell.text if len(cell.text) <= width else cell.text[:width - 1] + ELLIPSIS
        padded = text.rjust(width) if column.right else text.ljust(width)
        parts.append(paint(padded, cell.colour, stream))
    return "  ".join(parts).rstrip()


class ProgressLine:
    """One line of progress on stderr, rewritten in place, only when stderr is a terminal: a file or
    a pipe receives none of it. ``clear()`` removes it before the results are printed."""

    def __init__(self, *, every_seconds: float = 0.5, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = is_terminal(self.stream)
        self.every_seconds = every_seconds
        self.shown: str | None = None
        self.shown_at = float("-inf")

    def show(self, text: str, *, now: bool = False) -> None:
        if not self.enabled or text == self.shown:
            return
        moment = time.monotonic()
        if not now and moment - self.shown_at < self.every_seconds:
            return
        width = shutil.get_terminal_size().columns - 1
        if len(text) > width:
            text = text[:max(0, width - 1)] + ELLIPSIS
        self.stream.write(f"\r\033[K{text}")
        self.stream.flush()
        self.shown, self.shown_at = text, moment

    def clear(self) -> None:
        if self.enabled and self.shown is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = None
