"""Draw the classification on a frame (Pillow ImageDraw): one line per top-k entry, ``66.0% label``, then the
frame rate (and the stream id), white on a filled dark box in the top-left corner.

The text height follows the frame height (:data:`TEXT_FRACTION`, within :data:`MIN_TEXT_PX`..:data:`MAX_TEXT_PX`),
so a 480p camera and a 4K file read alike. Pillow's scalable built-in font needs FreeType (Pillow >= 10.1 has
it in its wheels); without FreeType the small bitmap font is drawn at its own size and scaled up, never left at
8 pixels. Lines that do not fit the frame are left out from the bottom of the list (the best classes stay);
labels too wide for the frame are cut with an ellipsis.
"""
from __future__ import annotations

import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

# Text height as a fraction of the frame height, bounded so 64-pixel and 4K frames both stay legible.
TEXT_FRACTION = 0.045
MIN_TEXT_PX, MAX_TEXT_PX = 10, 72
BOX_RGBA = (0, 0, 0, 200)  # the filled box behind the text
TEXT_RGB = (255, 255, 255)
INFO_RGB = (200, 200, 200)  # the FPS / stream line
MAX_BOX_HEIGHT = 0.75  # the box never covers more than this fraction of the frame height
_BITMAP_PX = 11  # the height Pillow's bitmap default font draws at


def _is_scalable(font) -> bool:
    return isinstance(font, ImageFont.FreeTypeFont)


@lru_cache(maxsize=16)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def format_entry(entry: dict) -> str:
    """``66.0% label`` (``n/a`` for a probability that is not a finite number)."""
    p = entry.get("probability")
    score = f"{100 * p:.1f}%" if isinstance(p, (int, float)) and math.isfinite(p) else "n/a"
    return f"{score} {entry.get('label', entry.get('index', '?'))}"


def overlay_lines(top: list[dict], fps: float | None = None, stream: str | int | None = None) -> list[str]:
    """The text :func:`annotate` draws, line by line."""
    lines = [format_entry(t) for t in top]
    info = []
    if stream is not None:
        info.append(f"stream {stream}")
    if fps is not None:
        info.append(f"{fps:.1f} FPS")
    if info:
        lines.append("  ".join(info))
    return lines


def text_size(frame_height: int) -> int:
    """Pixel height of the overlay text on a frame of this height."""
    return max(MIN_TEXT_PX, min(MAX_TEXT_PX, round(frame_height * TEXT_FRACTION)))


def annotate(image: Image.Image, top: list[dict], fps: float | None = None, *,
             stream: str | int | None = None) -> Image.Image:
    """A copy of ``image`` (RGB) with one ``66.0% label`` line per entry of ``top`` (best first), the frame
    rate and the stream id, on a filled box."""
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    w, h = out.size
    size = text_size(h)
    lines = overlay_lines(top, fps, stream)
    if not lines:
        return out
    info_line = fps is not None or stream is not None
    font = _font(size)
    scale = 1 if _is_scalable(font) else max(1, round(size / _BITMAP_PX))
    pad = max(2, size // 4)
    step = size + pad  # line pitch
    fit = max(1, int((min(h * MAX_BOX_HEIGHT, h - 2 * pad) - pad) // step))
    if len(lines) > fit:  # keep the best classes, then the info line if there is room for it
        keep_info = info_line and fit >= 2
        lines = lines[: fit - 1] + [lines[-1]] if keep_info else lines[:fit]
        info_line = keep_info
    measure = ImageDraw.Draw(out)
    max_w = max(1, (w - 2 * pad) // scale)
    lines = [_fit(measure, line, font, max_w) for line in lines]
    widths = [measure.textlength(line, font=font) * scale for line in lines]
    box_w = min(w, int(max(widths)) + 2 * pad)
    box_h = min(h, len(lines) * step + pad)
    draw = ImageDraw.Draw(out, "RGBA")
    draw.rectangle((0, 0, box_w - 1, box_h - 1), fill=BOX_RGBA)
    colors = [TEXT_RGB] * len(lines)
    if info_line:
        colors[-1] = INFO_RGB
    for i, (line, color) in enumerate(zip(lines, colors)):
        y = pad + i * step
        if scale == 1:
            draw.text((pad, y), line, font=font, fill=color)
        else:  # bitmap font: draw at its size, scale up (nearest neighbour keeps it crisp), paste with its mask
            tw = max(1, math.ceil(measure.textlength(line, font=font)))
            mask = Image.new("L", (tw, _BITMAP_PX + 2))
            ImageDraw.Draw(mask).text((0, 0), line, font=font, fill=255)
            mask = mask.resize((tw * scale, (_BITMAP_PX + 2) * scale), Image.NEAREST)
            out.paste(Image.new("RGB", mask.size, color), (pad, y), mask)
    return out


def _fit(draw: ImageDraw.ImageDraw, text: str, font, max_width: float) -> str:
    """``text`` cut with an ellipsis so it is at most ``max_width`` pixels wide."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while len(text) > 1 and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text.rstrip() + "..."
