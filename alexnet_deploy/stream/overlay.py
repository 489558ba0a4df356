"""Draw the classification (label, score) and the frame rate on a frame (Pillow ImageDraw)."""
from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

# Text height as a fraction of the frame height, bounded so 64-pixel and 4K frames both stay legible.
TEXT_FRACTION = 0.045
MIN_TEXT_PX, MAX_TEXT_PX = 8, 64
BANNER_ALPHA = 160  # 0..255: how dark the band behind the text is


@lru_cache(maxsize=16)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def annotate(image: Image.Image, top: list[dict], fps: float | None = None) -> Image.Image:
    """A copy of ``image`` (RGB) with ``label score`` of the best class, the runner-up and the FPS on top."""
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    w, h = out.size
    size = max(MIN_TEXT_PX, min(MAX_TEXT_PX, int(h * TEXT_FRACTION)))
    font = _font(size)
    parts = []
    if top:
        parts.append(f"{top[0]['label']} {top[0]['probability']:.2f}")
        if len(top) > 1:
            parts.append(f"({top[1]['label']} {top[1]['probability']:.2f})")
    if fps is not None:
        parts.append(f"{fps:.1f} FPS")
    pad = max(1, size // 4)
    draw = ImageDraw.Draw(out, "RGBA")
    text = "  ".join(parts)
    if draw.textlength(text, font=font) > w - 2 * pad:  # a small frame: best class and FPS on two lines
        text = "\n".join(p for p in (parts[0] if top else None, parts[-1] if fps is not None else None) if p)
    left, top_y, right, bottom = draw.multiline_textbbox((pad, pad), text, font=font, spacing=pad)
    draw.rectangle((0, 0, min(w, right + pad), min(h, bottom + pad)), fill=(0, 0, 0, BANNER_ALPHA))
    draw.multiline_text((pad, pad), text, font=font, fill=(255, 255, 255, 255), spacing=pad)
    return out
