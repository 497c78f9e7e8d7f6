"""The demo report's figures: loss curves, image grids and the latent patch-grid overlay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def loss_plot(run_dir: Path, dest: Path) -> Path | None:
    """The training losses of ``run_dir/losses.jsonl`` on a log scale (None without a loss history)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = run_dir / "losses.jsonl"
    if not hist.is_file():
        return None
    rows = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    keys = [k for k in rows[0] if k not in ("step", "lr", "time", "stage") and isinstance(rows[0][k], (int, float))]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r and isinstance(r[k], (int, float))]
        if pts:
            ax.plot(*zip(*pts), label=k)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


def image_grid(rows: list[tuple[str, list[Path]]], dest: Path, thumb: int = 128) -> Path:
    """One labelled row of ``thumb``-pixel thumbnails per ``(label, images)``."""
    from PIL import Image, ImageDraw

    label_w = 170
    cols = max(len(paths) for _, paths in rows)
    canvas = Image.new("RGB", (label_w + cols * (thumb + 4), len(rows) * (thumb + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, paths) in enumerate(rows):
        draw.text((6, r * (thumb + 4) + thumb // 2 - 6), name.replace("_", " "), fill="black")
        for c, p in enumerate(paths):
            img = Image.open(p).convert("RGB").resize((thumb, thumb), Image.BICUBIC)
            canvas.paste(img, (label_w + c * (thumb + 4), r * (thumb + 4)))
    canvas.save(dest)
    return dest


def grid_overlay(image: Path, dest: Path, settings: dict[str, Any], factor: int) -> Path:
    """A transparent PNG with the latent patch grid's outlines (pixels) for the report's overlay."""
    from PIL import Image, ImageDraw

    from pathup.metrics.seam import grid_from_sidecar
    from pathup.sample.grid import patch_grid

    with Image.open(image) as im:
        w, h = im.size
    patch_px, stride_px, f = grid_from_sidecar(settings)  # the latent grid, older option names accepted
    patch, overlap = patch_px // f, (patch_px - stride_px) // f
    boxes = patch_grid(-(-h // factor), -(-w // factor), patch, overlap)
    over = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    for b in boxes:
        y0, x0 = b.top * factor, b.left * factor
        draw.rectangle([x0, y0, x0 + b.width * factor - 1, y0 + b.height * factor - 1],
                       outline=(255, 230, 0, 200), width=2)
    over.save(dest)
    return dest
