"""Contact sheet: a few frames of one clip per activity, cropped around the person and labelled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from llavidal.sim.activities import ACTIVITIES
from llavidal.utils.io import atomic_path
from llavidal.utils.optional import require

TILE = 128
FRAMES_PER_ROW = 5
LABEL_WIDTH = 210
COLUMNS = 2


def _crop_box(pixels: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """A square around all skeleton pixels of the clip (with margin), inside the frame."""
    valid = pixels[np.isfinite(pixels).all(axis=-1)].reshape(-1, 2)
    low, high = valid.min(axis=0), valid.max(axis=0)
    centre = (low + high) / 2.0
    side = float(max(high - low) * 1.3 + 16)
    side = min(max(side, 64.0), float(min(width, height)))
    x0 = int(round(min(max(centre[0] - side / 2, 0), width - side)))
    y0 = int(round(min(max(centre[1] - side / 2, 0), height - side)))
    return x0, y0, x0 + int(side), y0 + int(side)


def _clip_strip(root: Path, meta: dict) -> np.ndarray:
    from PIL import Image

    from llavidal.features.pose.ntu import read_skeleton
    from llavidal.sim.video import read_mp4

    frames = read_mp4(root / meta["files"]["video"])
    sequence = read_skeleton(root / meta["files"]["skeleton"])
    colour = sequence.to_array(max_bodies=1, field_slice=slice(5, 7))[:, 0]  # (T, 25, 2)
    scale = meta["height"] / 1080.0
    pixels = np.stack([(colour[..., 0] - 420.0) * scale, colour[..., 1] * scale], axis=-1)
    box = _crop_box(pixels, meta["width"], meta["height"])
    picks = np.linspace(0, len(frames) - 1, FRAMES_PER_ROW).round().astype(int)
    tiles = [np.asarray(Image.fromarray(frames[i]).crop(box).resize((TILE, TILE), Image.BILINEAR)) for i in picks]
    return np.concatenate(tiles, axis=1)


def contact_sheet(root: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write a PNG with one labelled row per activity (and two routines) of the world at ``root``."""
    image_module = require("PIL.Image", "the world preview", extra="world")
    from PIL import ImageDraw, ImageFont

    root = Path(root)
    metas = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((root / "meta").glob("*.json"))]
    rows: list[tuple[str, dict]] = []
    for activity in ACTIVITIES:
        found = [m for m in metas if m["kind"] == "single" and m["activity"] == activity.name]
        if found:
            rows.append((activity.label, found[0]))
    for meta in [m for m in metas if m["kind"] == "routine"][:2]:
        rows.append(("routine: " + " > ".join(s["activity"] for s in meta["segments"]), meta))
    if not rows:
        raise FileNotFoundError(f"{root}: no clips to preview (run llavidal synth first)")
    per_column = (len(rows) + COLUMNS - 1) // COLUMNS
    cell_width = LABEL_WIDTH + FRAMES_PER_ROW * TILE
    sheet = image_module.new("RGB", (COLUMNS * cell_width, per_column * (TILE + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for index, (label, meta) in enumerate(rows):
        column, row = divmod(index, per_column)
        x, y = column * cell_width, row * (TILE + 4)
        strip = _clip_strip(root, meta)
        sheet.paste(image_module.fromarray(strip), (x + LABEL_WIDTH, y))
        words, lines = label.split(" "), [""]
        for word in words:  # wrap the label into the label column
            if len(lines[-1]) + len(word) + 1 > 24:
                lines.append(word)
            else:
                lines[-1] = f"{lines[-1]} {word}".strip()
        for k, line in enumerate(lines):
            draw.text((x + 6, y + 10 + 18 * k), line, fill=(0, 0, 0), font=font)
        draw.text((x + 6, y + TILE - 22), meta["clip_id"], fill=(110, 110, 110), font=font)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path
