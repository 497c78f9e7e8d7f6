"""The demo report's figures: loss and validation curves, image grids and the latent patch-grid overlay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines history (empty when there is none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(run_dir: Path, dest: Path) -> Path | None:
    """The training losses of ``run_dir/losses.jsonl`` on a log scale (None without a loss history)."""
    rows = _records(run_dir / "losses.jsonl")
    if not rows:
        return None
    plt = _pyplot()
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


def validation_plot(run_dir: Path, dest: Path) -> Path | None:
    """Class-consistency of the validation images vs step, per feature set, with the real ceilings."""
    recs = _records(run_dir / "validation.jsonl")
    if not recs:
        return None
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for spec in recs[0]["features"]:
        name = Path(spec).name if "/" in spec else spec
        line, = ax.plot([r["step"] for r in recs], [r["features"][spec]["accuracy"] for r in recs], "o-",
                        label=f"generated ({name})")
        ax.axhline(recs[0]["features"][spec]["ceiling"], ls="--", color=line.get_color(), label=f"real ceiling ({name})")
    ax.set_xlabel("step"), ax.set_ylabel("class-consistency"), ax.set_ylim(0, 1), ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest
