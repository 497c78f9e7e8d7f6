"""``pathup demo``: the whole pipeline on the real sample images shipped with PathUp, with a report.

Stages (each resumable: a finished stage is reused on rerun when its settings are unchanged):

1. prepare: a shipped sample (Kather 2016 colorectal tiles by default, or BreakHis) -> patch tiles (full
   resolution) and overview tiles, with the sample's held-out split (by slide or patient);
2. train: the ``tiny`` latent diffusion model from scratch with ``pathup train``'s defaults
   (autoencoder first, then the UNet and its text encoder with patho-align prompts and the feature
   entropy loss);
3. generate: overviews per class, the same seeds of one class at several guidance scales, then
   patch-wise timestep tracking to a large image per class, one image upscaled with uniform weights
   (the paper's Table 4 ablation) from the same overview, and one mixed-tissue image from a random
   class map (``pathup compose``);
4. evaluate: IP / IR / FID / KID at the overview and patch levels with an offline feature extractor
   (its numbers are not comparable with the literature's Inception numbers), class-consistency beside
   its real ceiling with per-class colour, and seam scores with and without the weight map;
5. report: ``OUT/report.html`` (class x seed grid beside real tiles, class-consistency and colour,
   guidance strip, the large image with a patch-grid overlay, the composed image with its mask, loss
   curves, metrics, settings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pathup.errors import PathUpError
from pathup.io import atomic_write_text

log = logging.getLogger(__name__)

STAGES = ("prepare", "train", "generate", "evaluate", "report")


@dataclass
class DemoConfig:
    """Options of ``pathup demo``; the defaults finish in about 10 minutes on 2 CPU cores."""

    out: str = field(default="pathup-demo", metadata={"help": "output folder", "metavar": "DIR"})
    sample: Literal["kather", "breakhis"] = field(default="kather", metadata={
        "help": "shipped sample: kather (8 visibly distinct colorectal classes) or breakhis (4 breast classes)"})
    classes: list[str] = field(default_factory=list, metadata={
        "help": "classes of the shipped sample to use (default: all of them)", "metavar": "NAME"})
    tile_size: int = field(default=128, metadata={"help": "tile size in pixels (the tiny model's resolution)"})
    vae_steps: Optional[int] = field(default=None, metadata={
        "help": "autoencoder training steps (default: pathup train's for the tiny model, 600)"})
    train_steps: Optional[int] = field(default=None, metadata={
        "help": "UNet training steps (default: pathup train's for the tiny model, 1000)"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    fel_beta: float = field(default=0.1, metadata={"help": "feature entropy loss weight (0 = off)"})
    steps: int = field(default=20, metadata={"help": "sampling steps"})
    guidance: float = field(default=3.0, metadata={"help": "classifier-free guidance scale"})
    compose_classes: int = field(default=3, metadata={
        "help": "classes in the demo's composed mixed-tissue image (pathup compose; 0: none)", "min": 0})
    guidance_compare: list[float] = field(default_factory=lambda: [1.0, 3.0, 7.5], metadata={
        "help": "guidance scales shown side by side for one class in the report", "metavar": "G"})
    overviews_per_class: int = field(default=6, metadata={"help": "generated overviews per class (for metrics)"})
    size: int = field(default=768, metadata={"help": "size of the large images in pixels"})
    latent_patch: int = field(default=32, metadata={"help": "latent patch size p of the upscaler"})
    latent_overlap: int = field(default=16, metadata={"help": "latent patch overlap o"})
    strength: float = field(default=0.8, metadata={"help": "upscaling strength"})
    features: str = field(default="random-cnn", metadata={
        "help": "feature extractor for the metrics (offline by default; 'inception' needs its weights)"})
    repeats: int = field(default=3, metadata={"help": "metric repeats over seeds (mean +- std)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def _fingerprint(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Stages:
    """Runs stages in order; a stage whose marker matches its settings is skipped."""

    def __init__(self, out: Path) -> None:
        self.dir = out / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ran: list[str] = []

    def run(self, name: str, settings: dict[str, Any], fn: Callable[[], Any]) -> Any:
        marker = self.dir / f"{name}.json"
        fp = _fingerprint(settings)
        i = STAGES.index(name) + 1
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == fp and not any(s in self.ran for s in STAGES[:i - 1]):
                print(f"[{i}/{len(STAGES)}] {name}: done earlier, reused ({done['seconds']:.0f} s then)", flush=True)
                return done.get("result")
        print(f"[{i}/{len(STAGES)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        atomic_write_text(marker, json.dumps({"fingerprint": fp, "seconds": dt, "result": result}, default=str))
        self.ran.append(name)
        print(f"[{i}/{len(STAGES)}] {name}: {dt:.0f} s", flush=True)
        return result


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo; returns the path of ``report.html``."""
    from pathup.progress import library_bars

    with library_bars(cfg.progress):
        return _run_demo(cfg)


def _run_demo(cfg: DemoConfig) -> Path:
    from pathup.config import save_config, to_dict

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    stages = _Stages(out)
    s = to_dict(cfg)

    def pick(*names: str) -> dict[str, Any]:
        return {k: s[k] for k in names}

    dataset = out / "dataset"
    stages.run("prepare", pick("sample", "classes", "tile_size", "seed"),
               lambda: prepare_sample(cfg.sample, dataset, classes=cfg.classes, tile_size=cfg.tile_size,
                                      seed=cfg.seed, progress=cfg.progress))
    run_dir = out / "run"
    stages.run("train", pick("vae_steps", "train_steps", "batch_size", "fel_beta", "seed", "device"),
               lambda: _train(cfg, dataset, run_dir))
    gen = out / "generated"
    stages.run("generate", pick("steps", "guidance", "overviews_per_class", "size", "latent_patch", "compose_classes",
                                "guidance_compare",
                                "latent_overlap", "strength", "seed", "device"),
               lambda: _generate(cfg, run_dir, gen))
    metrics = stages.run("evaluate", pick("features", "repeats", "seed", "tile_size", "device"),
                         lambda: _evaluate(cfg, dataset, gen, out / "metrics"))
    report = stages.run("report", {"t": time.time()}, lambda: str(_report(cfg, out, dataset, run_dir, gen, metrics)))
    return Path(report)


# ------------------------------------------------------------------------------------------- stages
# How each shipped sample is tiled (both are small images: a patch tile is a crop at full resolution,
# an overview tile the whole image or a large part of it, resized to the model's resolution).
SAMPLE_TILING = {
    # Kather 2016: 150 px tiles at 20x; empty glass (08_EMPTY) and fat (07_ADIPOSE) are classes, so no
    # tissue filter; the shipped MANIFEST.csv gives the split (held-out slide CRC-Prim-HE-05, and 10
    # 08_EMPTY tiles split by tile because that class comes from one slide only).
    "kather": dict(patch_size=128, overview_size=150, min_tissue=0.0),
    # BreakHis: 700x460 images at 100X; the last patient of each class is held out (split by patient).
    "breakhis": dict(patch_size=128, overview_size=460),
}


SAMPLE_CREDIT = {
    "kather": "Kather 2016 colorectal cancer tiles (CC BY 4.0, Kather et al., Sci Rep 2016)",
    "breakhis": "BreakHis breast biopsy images (CC BY 4.0, Spanhol et al., IEEE TBME 2016)",
}


def prepare_sample(sample: str, dataset: Path, *, classes: list[str] | None = None, tile_size: int = 128,
                   seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Prepare a shipped sample (``kather`` or ``breakhis``) as a dataset with a held-out test split.

    Args:
        sample: the sample's name (``pathup.sample_data.SAMPLES``).
        dataset: output folder (replaced).
        classes: classes to keep (default: all).
        tile_size: tile size in pixels (the model's resolution).
        seed: seed of the tiling.
        progress: show progress bars.
    """
    import csv

    from pathup.data.prepare import PrepareConfig, prepare
    from pathup.sample_data import sample_manifest

    manifest = sample_manifest(sample)
    rows = list(csv.DictReader(manifest.open()))
    known = sorted({r["class"] for r in rows})
    bad = [c for c in (classes or []) if c not in known]
    if bad:
        raise PathUpError(f"--classes: unknown {', '.join(bad)}; the {sample} sample has: {', '.join(known)}")
    rows = [r for r in rows if not classes or r["class"] in classes]
    if "split" not in rows[0]:  # hold out the last patient of each class
        last = {r["class"]: r["patient"] for r in rows}
        for r in rows:
            r["split"] = "test" if r["patient"] == last[r["class"]] else "train"
    source = dataset.parent / f"{sample}_manifest.csv"
    cols = [c for c in ("path", "class", "patient", "slide", "split") if c in rows[0]]
    source.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(source, "\n".join([",".join(cols)] + [
        ",".join(str(manifest.parent / r[c]) if c == "path" else r[c] for c in cols) for r in rows]) + "\n")
    pcfg = PrepareConfig(out=str(dataset), sources=[str(source)], layout="csv", patch_overlap=0,
                         overview_overlap=0, tile_size=tile_size, val_fraction=0.0, test_fraction=0.0, seed=seed,
                         overwrite=True, **SAMPLE_TILING[sample])
    summary = prepare(pcfg, progress=progress)
    print(summary.table(), flush=True)
    return {"tiles": summary.n_tiles}


def _train(cfg: DemoConfig, dataset: Path, run_dir: Path) -> dict[str, Any]:
    from pathup.train import TrainConfig, train

    resume = (run_dir / "checkpoints").is_dir()
    tcfg = TrainConfig(dataset=dataset, out=run_dir, model="tiny", max_steps=cfg.train_steps,
                       vae_steps=cfg.vae_steps, batch_size=cfg.batch_size, fel_beta=cfg.fel_beta,
                       seed=cfg.seed, checkpoint_every=250, keep_checkpoints=1,
                       sample_every=500, num_workers=0, resume=resume,
                       cpu=cfg.device == "cpu", guidance_scale=cfg.guidance, progress=cfg.progress)
    train(tcfg)
    return {"model": str(run_dir / "model")}


def _generate(cfg: DemoConfig, run_dir: Path, gen: Path) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from pathup.sample.config import SampleConfig
    from pathup.sample.generate import class_dirname
    from pathup.sample.pipeline import PathUpPipeline
    from pathup.sample.writers import save_png, sidecar_path

    pipe = PathUpPipeline.from_pretrained(str(run_dir / "model"), device=cfg.device, dtype="fp32",
                                          progress=False)
    classes = pipe.ldm.prompts.classes
    scfg = SampleConfig(steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed, size=str(cfg.size),
                        patch_size=cfg.latent_patch, overlap=cfg.latent_overlap, strength=cfg.strength,
                        device=cfg.device, dtype="fp32")
    written: dict[str, Any] = {"overviews": {}, "large": {}, "uniform": None}
    jobs = [(c, i) for c in classes for i in range(cfg.overviews_per_class)]
    for c, i in tqdm(jobs, desc="overviews", unit="img", disable=not cfg.progress):
        seed = cfg.seed + i
        prompts = pipe.prompts_for(c)
        ov = pipe.overview(c, seed=seed, steps=cfg.steps, guidance=cfg.guidance)
        path = gen / "overviews" / class_dirname(c) / f"s{seed}.png"
        save_png(ov, path, {**pipe.settings(c, scfg, seed=seed, prompts=prompts), "level": "overview"})
        written["overviews"].setdefault(c, []).append(str(path))
    # The same seeds of one class at several guidance scales (does the prompt matter?).
    show = classes[0]
    for g in cfg.guidance_compare:
        for i in range(4):
            seed = cfg.seed + i
            path = gen / "guidance" / f"g{g:g}" / class_dirname(show) / f"s{seed}.png"
            done = gen / "overviews" / class_dirname(show) / f"s{seed}.png"
            if g == cfg.guidance and done.is_file():  # the same image as the class's overview: reuse it
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(done, path)
                shutil.copyfile(sidecar_path(done), sidecar_path(path))
            else:
                ov = pipe.overview(show, seed=seed, steps=cfg.steps, guidance=g)
                save_png(ov, path, {**pipe.settings(show, dataclasses.replace(scfg, guidance=g), seed=seed,
                                                    prompts=pipe.prompts_for(show)), "level": "overview"})
            written.setdefault("guidance", {}).setdefault(f"{g:g}", []).append(str(path))
    for c in tqdm(classes, desc="large images", unit="img", disable=not cfg.progress):
        written["large"][c] = str(_upscale(pipe, scfg, c, gen / "large", weight_map="pyramid"))
    # Table 4 ablation on one class: the same overview and noise, uniform weights.
    written["uniform"] = str(_upscale(pipe, scfg, classes[0], gen / "uniform", weight_map="uniform"))
    # A mixed-tissue image from a random class map (pathup compose), with its label mask.
    if cfg.compose_classes >= 2:
        from pathup.sample.compose import ComposeConfig, compose_to_folder

        ccfg = ComposeConfig(**{**dataclasses.asdict(scfg), "random_layout": min(cfg.compose_classes, len(classes)),
                                "region_size": max(64, cfg.size // 2), "layout_shape": "blob"})
        res = compose_to_folder(pipe, gen / "composed", ccfg, progress=False)
        written["composed"] = [str(p) for p in res.written + res.skipped]
    return written


def _upscale(pipe: Any, scfg: Any, class_name: str, folder: Path, *, weight_map: str) -> Path:
    from PIL import Image

    from pathup.sample.generate import class_dirname
    from pathup.sample.writers import save_image

    seed = scfg.seed
    prompts = pipe.prompts_for(class_name)
    overview = Image.open(Path(folder).parent / "overviews" / class_dirname(class_name) / f"s{seed}.png").convert("RGB")
    img = pipe.upscale(overview, class_name, size=scfg.size, seed=seed, steps=scfg.steps, guidance=scfg.guidance,
                       strength=scfg.strength, patch_size=scfg.patch_size, overlap=scfg.overlap,
                       weight_map=weight_map, output_type="np")
    settings = pipe.settings(class_name, dataclasses.replace(scfg, weight_map=weight_map), seed=seed,
                             prompts=prompts, source="generated")
    path = folder / class_dirname(class_name) / f"s{seed}.png"
    save_image(img, path, {**settings, "level": "upscaled"})
    return path


def _evaluate(cfg: DemoConfig, dataset: Path, gen: Path, mdir: Path) -> dict[str, Any]:
    from pathup.metrics.evaluate import EvaluateConfig, evaluate, seam_scores

    common = dict(real=str(dataset), split="all", features=cfg.features, repeats=cfg.repeats, seed=cfg.seed,
                  num_samples=0, device=cfg.device, progress=cfg.progress, cache=False,
                  overview_size=cfg.tile_size, patch_size=cfg.tile_size)
    overview = evaluate(EvaluateConfig(fake=str(gen / "overviews"), out=str(mdir / "overview.json"),
                                       level="overview", **common))
    crops = max(1, (cfg.size // cfg.tile_size) ** 2 // 2)
    patch = evaluate(EvaluateConfig(fake=str(gen / "large"), out=str(mdir / "patch.json"), level="patch",
                                    crops_per_image=crops, **common))
    # The uniform-weight image and its pyramid twin (same class, overview and noise).
    uniform = sorted((gen / "uniform").rglob("*.png"))[0]
    pyramid = gen / "large" / uniform.relative_to(gen / "uniform")
    seam = {"pyramid": seam_scores([pyramid], None, None, progress=False)[0], "pyramid_image": str(pyramid),
            "uniform": seam_scores([uniform], None, None, progress=False)[0], "uniform_image": str(uniform)}
    return {"overview": overview["summary"], "patch": patch["summary"], "seam": seam,
            "features": overview["features"], "class_consistency": overview.get("class_consistency")}


# ------------------------------------------------------------------------------------------- report
def _loss_plot(run_dir: Path, dest: Path) -> Path | None:
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


def _grid(rows: list[tuple[str, list[Path]]], dest: Path, thumb: int = 128) -> Path:
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


def _grid_overlay(image: Path, dest: Path, settings: dict[str, Any], factor: int) -> Path:
    """A transparent PNG with the latent patch grid's outlines (pixels) for the report's overlay."""
    from PIL import Image, ImageDraw

    from pathup.sample.grid import patch_grid

    with Image.open(image) as im:
        w, h = im.size
    opts = settings["options"]
    boxes = patch_grid(-(-h // factor), -(-w // factor), opts["patch_size"], opts["overlap"])
    over = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    for b in boxes:
        y0, x0 = b.top * factor, b.left * factor
        draw.rectangle([x0, y0, x0 + b.width * factor - 1, y0 + b.height * factor - 1],
                       outline=(255, 230, 0, 200), width=2)
    over.save(dest)
    return dest


def _consistency_html(cc: dict[str, Any] | None, rel: Callable[[Path], str]) -> list[str]:
    """The report's class-consistency and colour tables (see ``pathup.metrics.consistency``)."""
    if not cc:
        return ["<p class=note>Class-consistency was not measured (no held-out real split).</p>"]
    r = next(iter(cc["sets"].values()))
    classes = r["classes"]
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    out = ["<h2>Does the model follow its class? Class-consistency beside its real ceiling</h2>",
           f"<p>A classifier ({esc(cc['features'])} features, logistic regression) trained on "
           f"{cc['real_tiles']['train']} real training tiles predicts the class of every generated overview. Its "
           f"accuracy on {cc['real_tiles']['heldout']} real tiles of held-out slides or patients is the ceiling; "
           f"chance is {r['chance']:.3f}.</p>",
           f"<table><tr><th>images</th><th>accuracy</th><th>of ceiling</th>{head}</tr>",
           f"<tr><td>generated</td><td>{r['generated']['accuracy']:.3f}</td><td>{r['ratio']:.0%}</td>"
           + "".join(f"<td>{r['generated']['per_class'][c]:.2f}</td>" for c in classes) + "</tr>",
           f"<tr><td>real, held out (ceiling)</td><td>{r['real_heldout']['accuracy']:.3f}</td><td>100%</td>"
           + "".join(f"<td>{r['real_heldout']['per_class'][c]:.2f}</td>" for c in classes) + "</tr></table>",
           f"<p>{len(r['above_3x_chance'])} of {len(classes)} classes are recognised above 3x chance. Per-class mean "
           f"colour, generated vs real: Pearson r = {r['colour_r']:.3f} (classes x RGB).</p>",
           "<h3>Colour per class (0-255; each image's mean colour, averaged over the images of the class)</h3>",
           "<table><tr><th>class</th><th>set</th><th>R</th><th>G</th><th>B</th><th>H</th><th>S</th><th>V</th>"
           "<th>images</th></tr>"]
    for c in classes:
        for label, table in (("real", cc["real_colour"]), ("generated", r["colour"])):
            if c in table:
                t = table[c]
                out.append(f"<tr><td>{esc(c)}</td><td>{label}</td>" + "".join(
                    f"<td>{t[f'{k}_mean']:.0f}</td>" for k in ("R", "G", "B", "H", "S", "V")) + f"<td>{int(t['n'])}</td></tr>")
    out.append("</table>")
    if cc.get("plot") and Path(cc["plot"]).is_file():
        out.append(f"<img src='{rel(Path(cc['plot']))}' alt='colour per class'>")
    return out


def _fmt(summary: dict[str, Any], key: str, digits: int = 3) -> str:
    m = summary.get(key)
    if not m:
        return "-"
    return f"{m['mean']:.{digits}f} &plusmn; {m['std']:.{digits}f}"


def _report(cfg: DemoConfig, out: Path, dataset: Path, run_dir: Path, gen: Path, metrics: dict[str, Any]) -> Path:
    from pathup.config import to_dict
    from pathup.sample.writers import read_settings

    assets = out / "report_files"
    assets.mkdir(exist_ok=True)
    from pathup.sample.generate import class_dirname

    ov_root = gen / "overviews"
    classes = json.loads((run_dir / "model" / "pathup.json").read_text())["prompts"]["classes"]
    grid = _grid([(c, sorted((ov_root / class_dirname(c)).glob("*.png"))) for c in classes], assets / "overviews.png")
    g_root = gen / "guidance"
    g_rows = [(f"guidance {g:g}", sorted((g_root / f"g{g:g}" / class_dirname(classes[0])).glob("*.png")))
              for g in cfg.guidance_compare]
    g_grid = _grid([r for r in g_rows if r[1]], assets / "guidance.png") if any(r[1] for r in g_rows) else None
    cc = metrics.get("class_consistency")
    import yaml

    steps = yaml.safe_load((run_dir / "config.yaml").read_text()).get("max_steps")
    real_rows = []
    from pathup.data.manifest import read_manifest

    rows = read_manifest(dataset)
    for c in classes:
        paths = [dataset / r["path"] for r in rows if r["class"] == c and r["level"] == "overview"][:cfg.overviews_per_class]
        real_rows.append((c, paths))
    real_grid = _grid(real_rows, assets / "real_overviews.png")
    loss = _loss_plot(run_dir, assets / "losses.png")
    big = sorted((gen / "large").rglob("*.png"))[0]
    settings = read_settings(big)
    vae_cfg = json.loads((run_dir / "model" / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    overlay = _grid_overlay(big, assets / "grid_overlay.png", settings, factor)
    seam = metrics["seam"]

    def rel(p: Path) -> str:
        return html.escape(str(Path(p).resolve().relative_to(out.resolve())))

    ov, pa = metrics["overview"], metrics["patch"]
    feats = metrics["features"]
    note = ("" if feats.get("comparable_with_literature") else
            f"<p class=note>Features: <code>{html.escape(str(feats.get('extractor')))}</code>, an offline extractor: "
            "these numbers compare runs of this demo with each other, not with published Inception numbers.</p>")
    samples_dir = run_dir / "samples"
    sample_grids = sorted(samples_dir.glob("*.png")) if samples_dir.is_dir() else []
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>PathUp demo report</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "img{max-width:100%;border:1px solid #ccc} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
        "padding:4px 10px;text-align:right} th:first-child,td:first-child{text-align:left} .note{color:#555}",
        ".stack{position:relative;display:inline-block} .stack img.ov{position:absolute;left:0;top:0;border:0}",
        "</style></head><body>",
        "<h1>PathUp demo report</h1>",
        f"<p>Real {SAMPLE_CREDIT[cfg.sample]}, classes: {', '.join(map(html.escape, classes))}. "
        f"Tiny latent diffusion model trained from scratch by <code>pathup train</code> for {steps} steps on "
        f"{html.escape(str(dataset))}.</p>",
        "<h2>Generated overviews: one row per class, one column per seed</h2>",
        f"<img src='{rel(grid)}' alt='generated overviews'>",
        "<h2>Real overview tiles of the same classes</h2>", f"<img src='{rel(real_grid)}' alt='real overview tiles'>",
        *_consistency_html(cc, rel),
    ]
    if g_grid is not None:
        parts += [f"<h2>Guidance {', '.join(f'{g:g}' for g in cfg.guidance_compare)} for one class "
                  f"({html.escape(classes[0])}), same seeds</h2>", f"<img src='{rel(g_grid)}' alt='guidance'>",
                  "<p class=note>Guidance 1 is the conditional model alone; higher scales push the image further "
                  "from the unconditional one, toward the class.</p>"]
    parts += [
        f"<h2>A large image ({cfg.size}x{cfg.size}) by patch-wise timestep tracking</h2>",
        "<label><input type=checkbox id=gridbox onchange=\"document.getElementById('ovl').style.display="
        "this.checked?'block':'none'\"> show the latent patch grid</label><br>",
        f"<div class=stack><img src='{rel(big)}' alt='large image'>"
        f"<img class=ov id=ovl style='display:none' src='{rel(overlay)}' alt='patch grid'></div>",
        f"<p>Class <b>{html.escape(str(settings.get('class')))}</b>, prompt <code>{html.escape(str(settings.get('prompt')))}</code>, "
        f"seed {settings.get('seed')}. Overview: <a href='{rel(Path(str(big).replace('/large/', '/overviews/')))}'>png</a>.</p>",
    ]
    composed = sorted((gen / "composed").glob("*_overlay.png")) if (gen / "composed").is_dir() else []
    if composed:
        image = composed[0].with_name(composed[0].name.replace("_overlay.png", ".png"))
        side = json.loads(image.with_suffix(".json").read_text())
        legend = ", ".join(html.escape(str(c)) for c in side.get("classes", []))
        parts += ["<h2>A mixed-tissue image from a class map (pathup compose)</h2>",
                  "<p>Every region of a random class map gets its own prompt inside patch-wise timestep tracking; "
                  f"the label mask comes with the image (classes: {legend}).</p>",
                  f"<img src='{rel(image)}' alt='composed image' style='max-width:49%'> "
                  f"<img src='{rel(composed[0])}' alt='mask overlay' style='max-width:49%'>",
                  f"<p>Files: <a href='{rel(image.with_name(image.stem + '_mask.png'))}'>label mask</a>, "
                  f"<a href='{rel(image.with_suffix('.geojson'))}'>regions (GeoJSON, QuPath)</a>, "
                  f"<a href='{rel(image.with_suffix('.json'))}'>settings</a>.</p>"]
    if loss:
        parts += ["<h2>Training losses</h2>", f"<img src='{rel(loss)}' alt='loss curves'>"]
    if sample_grids:
        parts += ["<h2>Training sample grid (class x level)</h2>", f"<img src='{rel(sample_grids[-1])}' alt='samples'>"]
    parts += [
        "<h2>Metrics (mean &plusmn; std over seeds)</h2>", note,
        "<table><tr><th>level</th><th>IP</th><th>IR</th><th>FID</th><th>KID x1000</th><th>real</th><th>fake</th></tr>",
    ]
    for name, sm in (("overview", ov), ("patch", pa)):
        parts.append(f"<tr><td>{name}</td><td>{_fmt(sm, 'precision')}</td><td>{_fmt(sm, 'recall')}</td>"
                     f"<td>{_fmt(sm, 'fid', 2)}</td><td>{_fmt(sm, 'kid_x1000', 2)}</td>"
                     f"<td>{int(sm['n_real']['mean'])}</td><td>{int(sm['n_fake']['mean'])}</td></tr>")
    parts.append("</table>")
    parts += ["<h3>Seam score (1.0 = no seam), same overview and noise</h3>",
              "<table><tr><th>weight map</th><th>seam score</th><th>image</th></tr>",
              f"<tr><td>pyramid (Eq. 6)</td><td>{seam['pyramid']:.3f}</td>"
              f"<td><a href='{rel(Path(seam['pyramid_image']))}'>png</a></td></tr>",
              f"<tr><td>uniform</td><td>{seam['uniform']:.3f}</td>"
              f"<td><a href='{rel(Path(seam['uniform_image']))}'>png</a></td></tr>",
              "</table>"]
    parts += ["<h2>Settings</h2>", f"<pre>{html.escape(json.dumps(to_dict(cfg), indent=2))}</pre>",
              "<p>Files: <a href='dataset/manifest.csv'>dataset manifest</a>, <a href='run/model/model_index.json'>model "
              "(diffusers format)</a>, <a href='metrics/overview.json'>overview metrics</a>, "
              "<a href='metrics/patch.json'>patch metrics</a>.</p>", "</body></html>"]
    page = "\n".join(parts)
    missing = check_links(page, out)
    if missing:
        raise PathUpError(f"report links missing files: {', '.join(missing)}")
    report = out / "report.html"
    atomic_write_text(report, page)
    return report


def check_links(page: str, root: Path) -> list[str]:
    """Relative ``src``/``href`` targets of ``page`` that do not exist under ``root``."""
    import re

    targets = re.findall(r"(?:src|href)='([^'#:]+)'", page)
    return [t for t in targets if not (root / html.unescape(t)).is_file()]
