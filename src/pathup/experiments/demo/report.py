"""The demo's ``report.html``: figures and numbers of the finished stages, rendered from the Jinja2
template ``pathup/experiments/templates/demo.html`` (autoescaped), with every linked file checked."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

from pathup.errors import PathUpError
from pathup.experiments.demo.config import SAMPLE_CREDIT, DemoConfig
from pathup.experiments.demo.figures import grid_overlay, image_grid, loss_plot, validation_plot
from pathup.io import atomic_write_text


def check_links(page: str, root: Path) -> list[str]:
    """Relative ``src``/``href`` targets of ``page`` that do not exist under ``root``."""
    import re

    targets = re.findall(r"(?:src|href)='([^'#:]+)'", page)
    return [t for t in targets if not (root / html.unescape(t)).is_file()]


def render(context: dict[str, Any]) -> str:
    """The report page from its template (values are escaped: the context holds plain text)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("pathup.experiments", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("demo.html").render(**context)


def _mean_std(summary: dict[str, Any], key: str, digits: int = 3) -> tuple[str, str] | None:
    m = summary.get(key)
    return (f"{m['mean']:.{digits}f}", f"{m['std']:.{digits}f}") if m else None


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per level: IP, IR, FID, KID x1000 (mean, std strings; None when absent) and the set sizes."""
    return [{"level": name, "precision": _mean_std(sm, "precision"), "recall": _mean_std(sm, "recall"),
             "fid": _mean_std(sm, "fid", 2), "kid": _mean_std(sm, "kid_x1000", 2),
             "real": int(sm["n_real"]["mean"]), "fake": int(sm["n_fake"]["mean"])}
            for name, sm in (("overview", metrics["overview"]), ("patch", metrics["patch"]))]


def consistency_view(cc: dict[str, Any] | None, rel: Callable[[Path], str]) -> dict[str, Any] | None:
    """The class-consistency and colour tables' cells (see ``pathup.metrics.consistency``); None if not
    measured."""
    if not cc:
        return None
    r = next(iter(cc["sets"].values()))
    classes = r["classes"]
    colour = [{"cls": c, "set": label, "values": [f"{t[c][f'{k}_mean']:.0f}" for k in ("R", "G", "B", "H", "S", "V")],
               "n": int(t[c]["n"])}
              for c in classes for label, t in (("real", cc["real_colour"]), ("generated", r["colour"])) if c in t]
    plot = cc.get("plot")
    return {"features": cc["features"], "train": cc["real_tiles"]["train"], "heldout": cc["real_tiles"]["heldout"],
            "chance": f"{r['chance']:.3f}", "classes": classes, "generated": f"{r['generated']['accuracy']:.3f}",
            "ratio": f"{r['ratio']:.0%}", "generated_per_class": [f"{r['generated']['per_class'][c]:.2f}" for c in classes],
            "real": f"{r['real_heldout']['accuracy']:.3f}",
            "real_per_class": [f"{r['real_heldout']['per_class'][c]:.2f}" for c in classes],
            "above": len(r["above_3x_chance"]),
            "real_above": len(r["real_above_3x_chance"]) if "real_above_3x_chance" in r else None,
            "colour_r": f"{r['colour_r']:.3f}", "colour": colour,
            "plot": rel(Path(plot)) if plot and Path(plot).is_file() else None}


def side_by_side(cc: dict[str, Any] | None) -> list[dict[str, str]] | None:
    """Class-consistency of the generated overviews with each feature set (texture-aware and colour-only)."""
    if not cc or not cc.get("by_features"):
        return None
    rows = []
    for spec, fr in cc["by_features"].items():
        r = next(iter(fr["sets"].values()))
        rows.append({"features": str(fr.get("label", spec)), "generated": f"{r['generated']['accuracy']:.3f}",
                     "ceiling": f"{r['real_heldout']['accuracy']:.3f}", "ratio": f"{r['ratio']:.0%}",
                     "above": f"{len(r['above_3x_chance'])}/{len(r['classes'])}",
                     "real_above": (f"{len(r['real_above_3x_chance'])}/{len(r['classes'])}"
                                    if "real_above_3x_chance" in r else "-")})
    return rows


def autoencoder_view(run_dir: Path, rel: Callable[[Path], str]) -> dict[str, Any] | None:
    """The autoencoder's report of the training run (``RUN/autoencoder.json``) and its real | reconstruction strip."""
    report, strip = run_dir / "autoencoder.json", run_dir / "samples" / "autoencoder.png"
    if not report.is_file():
        return None
    ae = json.loads(report.read_text())
    return {"images": ae["images"], "split": ae["split"], "psnr": f"{ae['psnr']:.1f}", "ssim": f"{ae['ssim']:.3f}",
            "ciede2000": f"{ae['ciede2000']:.2f}", "border": f"{ae['border_ratio']:.2f}",
            "strip": rel(strip) if strip.is_file() else None,
            "consistency": [{"features": Path(k).name if "/" in k else k, "real": f"{v['real']:.3f}",
                             "reconstructed": f"{v['reconstructed']:.3f}", "ratio": f"{v['ratio']:.0%}"}
                            for k, v in ae.get("consistency", {}).items()]}


def _composed(gen: Path, rel: Callable[[Path], str]) -> dict[str, Any] | None:
    composed = sorted((gen / "composed").glob("*_overlay.png")) if (gen / "composed").is_dir() else []
    if not composed:
        return None
    image = composed[0].with_name(composed[0].name.replace("_overlay.png", ".png"))
    side = json.loads(image.with_suffix(".json").read_text())
    return {"classes": [str(c) for c in side.get("classes", [])], "image": rel(image), "overlay": rel(composed[0]),
            "mask": rel(image.with_name(image.stem + "_mask.png")), "geojson": rel(image.with_suffix(".geojson")),
            "settings": rel(image.with_suffix(".json"))}


def write_report(cfg: DemoConfig, out: Path, dataset: Path, run_dir: Path, gen: Path, metrics: dict[str, Any]) -> Path:
    """Draw the figures into ``OUT/report_files`` and write ``OUT/report.html``; PathUpError if a link of
    the page has no file."""
    import yaml

    from pathup.config import to_dict
    from pathup.data.generated import class_dirname
    from pathup.data.manifest import read_manifest
    from pathup.sample.writers import read_settings

    assets = out / "report_files"
    assets.mkdir(exist_ok=True)

    def rel(p: Path) -> str:
        return str(Path(p).resolve().relative_to(out.resolve()))

    classes = json.loads((run_dir / "model" / "pathup.json").read_text())["prompts"]["classes"]
    ov_root, g_root = gen / "overviews", gen / "guidance"
    grid = image_grid([(c, sorted((ov_root / class_dirname(c)).glob("*.png"))) for c in classes],
                      assets / "overviews.png")
    g_rows = [(f"guidance {g:g}", sorted((g_root / f"g{g:g}" / class_dirname(classes[0])).glob("*.png")))
              for g in cfg.guidance_compare]
    g_grid = image_grid([r for r in g_rows if r[1]], assets / "guidance.png") if any(r[1] for r in g_rows) else None
    rows = read_manifest(dataset)
    real_rows = [(c, [dataset / r["path"] for r in rows if r["class"] == c and r["level"] == "overview"]
                  [:cfg.overviews_per_class]) for c in classes]
    real_grid = image_grid(real_rows, assets / "real_overviews.png")
    loss = loss_plot(run_dir, assets / "losses.png")
    big = sorted((gen / "large").rglob("*.png"))[0]
    settings = read_settings(big)
    size = int(settings["size"][0]) if isinstance(settings.get("size"), list) else cfg.tile_px
    curve = validation_plot(run_dir, assets / "validation.png")
    # real patch tiles of the large image's class, shown at their own scale (the patch level's) beside it
    patch_rows = [(str(settings.get("class")), [dataset / r["path"] for r in rows if r["class"] == settings.get("class")
                                                and r["level"] == "patch"][:3])]
    real_patches = image_grid(patch_rows, assets / "real_patches.png") if patch_rows[0][1] else None
    levels_mpp = json.loads((run_dir / "model" / "pathup.json").read_text()).get("mpp") or {}
    vae_cfg = json.loads((run_dir / "model" / "vae" / "config.json").read_text())
    overlay = grid_overlay(big, assets / "grid_overlay.png", settings, 2 ** (len(vae_cfg["block_out_channels"]) - 1))
    seam, feats = metrics["seam"], metrics["features"]
    samples_dir = run_dir / "samples"
    sample_grids = sorted(samples_dir.glob("*.png")) if samples_dir.is_dir() else []
    page = render({
        "credit": SAMPLE_CREDIT[cfg.sample], "classes": classes,
        "steps": yaml.safe_load((run_dir / "config.yaml").read_text()).get("max_steps"), "dataset": str(dataset),
        "overviews": rel(grid), "real_overviews": rel(real_grid),
        "cc": consistency_view(metrics.get("class_consistency"), rel),
        "guidance": None if g_grid is None else {"scales": ", ".join(f"{g:g}" for g in cfg.guidance_compare),
                                                 "cls": classes[0], "image": rel(g_grid)},
        "autoencoder": autoencoder_view(run_dir, rel), "curve": rel(curve) if curve else None,
        "cc_side": side_by_side(metrics.get("class_consistency")),
        "overview_mpp": None if levels_mpp.get("overview") is None else f"{float(levels_mpp['overview']):.3g}",
        "real_patches": rel(real_patches) if real_patches else None,
        "large": {"size": size, "image": rel(big), "strength": (settings.get("options") or {}).get("strength"),
                  "overlay": rel(overlay), "cls": str(settings.get("class")),
                  "prompt": str(settings.get("prompt")), "seed": settings.get("seed"),
                  "overview": rel(Path(str(big).replace("/large/", "/overviews/"))),
                  "mpp": None if settings.get("mpp") is None else f"{float(settings['mpp']):.3g}",
                  "fov": None if settings.get("mpp") is None else f"{float(settings['mpp']) * size:.0f}"},
        "composed": _composed(gen, rel), "loss": rel(loss) if loss else None,
        "samples": rel(sample_grids[-1]) if sample_grids else None,
        "extractor": None if feats.get("comparable_with_literature") else str(feats.get("extractor")),
        "metrics": metrics_rows(metrics),
        "seam": {"pyramid": f"{seam['pyramid']:.3f}", "uniform": f"{seam['uniform']:.3f}",
                 "pyramid_image": rel(Path(seam["pyramid_image"])), "uniform_image": rel(Path(seam["uniform_image"]))},
        "settings": json.dumps(to_dict(cfg), indent=2),
    })
    missing = check_links(page, out)
    if missing:
        raise PathUpError(f"report links missing files: {', '.join(missing)}")
    report = out / "report.html"
    atomic_write_text(report, page)
    return report
