"""A small stdlib-only PNG line plot (zlib + struct) for the battery report.

Why not matplotlib: it is not a streamguard dependency, ``make chaos`` must work on a fresh machine with only
what ``pip install -e .[dev]`` brings (and no network), and the battery needs just two line panels with shaded
fault windows and a few labels. A 5x7 bitmap font covers digits, letters and a few signs.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Canvas", "Panel", "plot"]

Color = tuple[int, int, int]

_FONT_ROWS = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101", "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010", "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100", "Z": "11111 00001 00010 00100 01000 10000 11111",
    " ": "00000 00000 00000 00000 00000 00000 00000", "-": "00000 00000 00000 11111 00000 00000 00000",
    ".": "00000 00000 00000 00000 00000 01100 01100", "/": "00000 00001 00010 00100 01000 10000 00000",
    ":": "00000 01100 01100 00000 01100 01100 00000", "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000", "_": "00000 00000 00000 00000 00000 00000 11111",
    "%": "11000 11001 00010 00100 01000 10011 00011", "=": "00000 00000 11111 00000 11111 00000 00000",
    ",": "00000 00000 00000 00000 01100 00100 01000", "+": "00000 00100 00100 11111 00100 00100 00000",
}
_FONT = {ch: [int(r, 2) for r in rows.split()] for ch, rows in _FONT_ROWS.items()}


class Canvas:
    """An RGB raster with the few drawing primitives a plot needs."""

    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        x0, x1 = sorted((max(0, x0), min(self.width - 1, x1)))
        y0, y1 = sorted((max(0, y0), min(self.height - 1, y1)))
        row = bytes(color) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            i = 3 * (y * self.width + x0)
            self.pixels[i:i + len(row)] = row

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.set(x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = (0, 0, 0), scale: int = 2) -> int:
        """Draw ``text`` with its top-left at (x, y); returns the x after the last glyph."""
        for ch in text.upper():
            rows = _FONT.get(ch, _FONT[" "])
            for r, bits in enumerate(rows):
                for c in range(5):
                    if bits & (1 << (4 - c)):
                        self.rect(x + c * scale, y + r * scale, x + c * scale + scale - 1, y + r * scale + scale - 1,
                                  color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.pixels[3 * y * self.width:3 * (y + 1) * self.width])
                       for y in range(self.height))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                + chunk(b"IEND", b""))


class Panel:
    """One line series over time with a title."""

    def __init__(self, title: str, values: Sequence[float], color: Color) -> None:
        self.title, self.values, self.color = title, values, color


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for step in (1, 2, 5, 10):
        if v <= step * mag:
            return float(step * mag)
    return float(v)


def plot(path: Path, title: str, panels: Sequence[Panel], windows: Sequence[tuple[float, float, Color]],
         legend: Sequence[tuple[str, Color]], seconds: float, markers: Sequence[tuple[float, str]] = ()) -> None:
    """Stack ``panels`` (one value per second from 0 to ``seconds``), shade ``windows`` (t0, t1 in seconds)."""
    width, left, right = 1400, 100, 30
    panel_h, gap, top = 230, 70, 70
    height = top + len(panels) * (panel_h + gap) + 60
    c = Canvas(width, height)
    c.text(left, 20, title, scale=2)
    plot_w = width - left - right
    span = max(seconds, 1.0)

    def xpos(t: float) -> int:
        return left + int(plot_w * min(max(t, 0.0), span) / span)

    for i, panel in enumerate(panels):
        y0 = top + i * (panel_h + gap) + 24
        y1 = y0 + panel_h
        c.text(left, y0 - 22, panel.title, scale=2)
        for t0, t1, color in windows:
            c.rect(xpos(t0), y0, max(xpos(t0), xpos(t1)), y1, color)
        for t, label in markers:
            for y in range(y0, y1, 4):
                c.set(xpos(t), y, (150, 150, 150))
            if i == 0:
                c.text(xpos(t) + 3, y0 + 3, label, (90, 90, 90), scale=1)
        vmax = _nice_max(max(panel.values, default=0.0))
        for k in range(5):
            v = vmax * k / 4
            y = y1 - int(panel_h * k / 4)
            for x in range(left, left + plot_w, 3):
                c.set(x, y, (215, 215, 215))
            label = f"{v:.0f}"
            c.text(left - 8 - 12 * len(label), y - 7, label, (60, 60, 60))
        c.line(left, y0, left, y1, (0, 0, 0))
        c.line(left, y1, left + plot_w, y1, (0, 0, 0))
        prev: tuple[int, int] | None = None
        for s, v in enumerate(panel.values):
            pt = (xpos(float(s)), y1 - int(panel_h * min(v, vmax) / vmax))
            if prev is not None:
                c.line(prev[0], prev[1], pt[0], pt[1], panel.color)
            prev = pt
        step = _nice_max(span / 10)
        t = 0.0
        while t <= span:
            x = xpos(t)
            c.line(x, y1, x, y1 + 5, (0, 0, 0))
            label = f"{t:.0f}"
            c.text(x - 6 * len(label), y1 + 9, label, (60, 60, 60))
            t += step
    y = height - 34
    x = left
    c.text(x, y, "SECONDS SINCE START.  SHADED: FAULT WINDOWS", (60, 60, 60))
    x += 12 * 44 + 20
    for label, color in legend:
        c.rect(x, y, x + 14, y + 14, color)
        x = c.text(x + 20, y, label, (60, 60, 60)) + 18
    path.write_bytes(c.png())
