"""``evaluate(cfg)``: IP, IR, FID, KID (and a seam score) between a real and a synthetic image set.

PathUp paper sections 4.3 - 4.7. Two levels:

* ``overview``: every image is resized to ``overview_size`` (512) - synthetic 512 overviews against real
  2048 tiles resized to 512 (non-square images are resized on their short side and centre-cropped);
* ``patch``: random ``crop_px`` (512) crops of the large synthetic images against real 512 patches
  (an image exactly ``crop_px`` is used whole; a smaller one is an error).

At most ``num_samples`` samples per set are used (drawn per seed). With ``repeats`` seeds
(``seed``, ``seed + 1``, ...), the crops, the subsample and the KID subsets change, and the result is mean +-
std over the seeds. Features are cached per file set under ``cache_dir``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from pathup.config import accepts_aliases, option
from pathup.errors import OptionError, PathUpError
from pathup.metrics.samples import build_samples, default_cache_dir, extract_features, resolve_images

log = logging.getLogger(__name__)


@accepts_aliases
@dataclass
class EvaluateConfig:
    """Options of ``pathup evaluate`` (and of ``evaluate(cfg)``)."""

    data: str = option(help="real images: a prepared dataset (folder with manifest.csv, or the CSV itself) or a "
                            "folder (searched recursively)", metavar="DATASET", aliases=("real",))
    fake: str | None = option(None, "synthetic images: a folder or a prepared dataset/manifest", metavar="FAKE")
    out: str = option("metrics.json", "output JSON; a Markdown table (.md) and the resolved config (.config.yaml) "
                                      "go beside it")
    level: Literal["overview", "patch"] = option("overview", "overview: resize whole images to --overview-size; "
                                                             "patch: random --crop-px crops (also filters manifests "
                                                             "by their level column)")
    split: str = option("test", "manifest split to use (train, val, test; 'all' for every split); ignored for "
                                "folders")
    features: str = option("inception", "feature extractor: inception (FID Inception-v3, downloaded on first use), "
                                        "timm:NAME, a TorchScript file, a domain encoder folder ('pathup features "
                                        "train'), a foundation preset with weights on disk (uni2-h, virchow2, "
                                        "h-optimus-0, phikon-v2), or the offline, non-comparable random-cnn / "
                                        "color-stats")
    features_weights: str | None = option(None, "local weights for the extractor (offline use), e.g. the FID "
                                                "Inception .pth, or a foundation preset's folder or file",
                                          metavar="PATH")
    consistency_features: list[str] = option(
        help="feature sets of class-consistency, side by side (default: --features and color-stats: texture-aware "
             "and colour-only); --features-weights applies to --features", default_factory=list, metavar="SPEC")
    features_size: int = option(224, "input size for a TorchScript extractor", min=1)
    overview_size: int = option(512, "overview level: images are resized to this", min=1)
    crop_px: int = option(512, "patch level: crop size in pixels", min=1, metavar="PX", aliases=("patch_size",))
    crops_per_image: int = option(1, "patch level: random crops per image larger than --crop-px", min=1)
    num_samples: int = option(10000, "at most this many samples per set (drawn per seed; 0 = all)", min=0)
    repeats: int = option(5, "seeds to repeat over (mean +- std)", min=1)
    seed: int = option(0, "first seed", min=0)
    k: int = option(3, "nearest neighbours for precision/recall", min=1)
    kid_subsets: int = option(100, "KID: number of random subsets", min=1)
    kid_subset_size: int = option(1000, "KID: subset size (shrinks to the smaller set)", min=2)
    chunk_size: int = option(2048, "rows per pairwise-distance block", min=1)
    batch_size: int = option(32, "images per feature-extraction batch", min=1)
    num_workers: int = option(0, "image-loading worker processes", min=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    cache_dir: str | None = option(None, "feature cache folder (default: $XDG_CACHE_HOME/pathup/features)",
                                   metavar="DIR")
    cache: bool = option(True, "cache features per file set")
    seam: bool = option(False, "also compute the seam score of the synthetic images")
    seam_patch: int | None = option(None, "seam grid patch size in pixels (default: from each image's sidecar "
                                          ".json)", metavar="PX", min=1)
    seam_stride: int | None = option(None, "seam grid stride in pixels (default: from each image's sidecar .json)",
                                     metavar="PX", min=1)
    seam_band: int = option(1, "seam score: half-width of the band around a line", min=0)
    class_consistency: bool | None = option(
        None, "class-consistency: a classifier trained on DATASET's 'train' tiles (per --consistency-features set) predicts each "
              "synthetic image's class, beside its accuracy on DATASET's held-out --split (the ceiling), plus "
              "per-class colour (default: on when DATASET is a prepared dataset with a held-out split and FAKE "
              "has class folders)")
    progress: bool = option(True, "show progress bars")
    reconstruction: bool = option(False, "measure --model's autoencoder instead of synthetic images: encode and decode "
                                         "DATASET's --split tiles (every level) at their own size: PSNR, SSIM, CIEDE2000, border error, class-consistency "
                                         "of the reconstructions beside the real tiles; writes OUT, its .md and a "
                                         "real | reconstruction strip OUT.png")
    model: str | None = option(None, "with --reconstruction: a model folder (diffusers, e.g. RUN/model), a VAE folder "
                                     "or a hub id whose autoencoder is measured", metavar="MODEL")
    max_tiles: int = option(256, "with --reconstruction: at most this many tiles", min=1)


# --------------------------------------------------------------------------------------------- metrics
def compute_metrics(real: np.ndarray, fake: np.ndarray, *, k: int = 3, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, chunk_size: int = 2048, seed: int = 0) -> dict[str, float]:
    """IP, IR, FID and KID (x 1000) between two feature matrices (a pure function)."""
    from pathup.metrics.fid import fid
    from pathup.metrics.kid import kid
    from pathup.metrics.prdc import precision_recall

    precision, recall = precision_recall(real, fake, k=k, chunk_size=chunk_size)
    kid_mean, kid_std, m = kid(real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    return {"precision": precision, "recall": recall, "fid": fid(real, fake),
            "kid_x1000": 1000.0 * kid_mean, "kid_std_x1000": 1000.0 * kid_std, "kid_subset_size": m,
            "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0])}


def seam_grids(paths: Sequence[Path], patch: int | None, stride: int | None) -> list[tuple[int, int, int]]:
    """``(patch_px, stride_px, factor)`` of each image, from ``patch``/``stride`` or from ``<image>.json``
    (read before any work, so that a missing or bad sidecar stops ``evaluate`` at once)."""
    from pathup.metrics.seam import grid_from_sidecar, grid_lines

    if (patch is None) != (stride is None):
        raise PathUpError("give both --seam-patch and --seam-stride, or neither (then the sidecar .json is read)")
    grids = []
    for p in paths:
        if patch is None:
            meta_file = p.with_suffix(".json")
            if not meta_file.is_file():
                raise PathUpError(f"{p}: no sidecar {meta_file.name} with the patch grid; "
                                  "give --seam-patch and --seam-stride")
            try:
                meta = json.loads(meta_file.read_text())
            except json.JSONDecodeError as err:
                raise PathUpError(f"{meta_file}: not valid JSON ({err})") from None
            if not isinstance(meta, dict):
                raise PathUpError(f"{meta_file}: expected a JSON object with the patch grid")
            grid = grid_from_sidecar(meta)
        else:
            grid = (patch, stride, 1)
        grid_lines(grid[0], grid[0], grid[1], 0, grid[2])  # checks the units of the grid (PathUpError)
        grids.append(grid)
    return grids


def seam_scores(paths: Sequence[Path], patch: int | None, stride: int | None, band: int = 1,
                progress: bool = True, grids: Sequence[tuple[int, int, int]] | None = None) -> list[float]:
    """Seam score of each image; the grid comes from ``patch``/``stride`` or from ``<image>.json``
    (or ``grids`` from ``seam_grids``). An undefined score (flat image) is NaN, with a warning."""
    import math

    from tqdm.auto import tqdm

    from pathup.io import load_rgb
    from pathup.metrics.seam import seam_score

    grids = seam_grids(paths, patch, stride) if grids is None else grids
    scores = []
    for p, (pp, ss, fac) in tqdm(list(zip(paths, grids)), desc="seam", unit="img", disable=not progress):
        score = seam_score(np.asarray(load_rgb(p)), pp, ss, band=band, factor=fac)
        if math.isnan(score):
            log.warning("%s: no seam score (flat image or no interior grid line); left out of the mean", p)
        scores.append(score)
    return scores


def _write_result(cfg: EvaluateConfig, out: Path, result: dict[str, Any]) -> None:
    """``OUT`` (JSON), the Markdown table beside it and the resolved config."""
    from pathup.config import save_config
    from pathup.io import atomic_write_text

    atomic_write_text(out, json.dumps(result, indent=2, allow_nan=True) + "\n")
    atomic_write_text(out.with_suffix(".md"), metrics_markdown(result))
    save_config(cfg, out.with_suffix(".config.yaml"))


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run the evaluation and write ``cfg.out`` (JSON), the Markdown table and the resolved config.

    Returns:
        The JSON content: ``runs`` (per seed: precision, recall, fid, kid_x1000, ...), ``summary`` (mean,
        std, n per metric), ``real``/``fake`` (source, kind, n_images), ``features``, ``seam`` (optional).
    """
    from pathup.config import to_dict, validate
    from pathup.device import resolve_device
    from pathup.metrics.features import make_extractor
    from pathup.metrics.report import mean_std, summarize_runs

    validate(cfg)  # every option in its range (the fields' metadata), before any work
    if cfg.reconstruction:
        return _reconstruction(cfg)
    if cfg.fake is None:
        raise OptionError("fake", "is required: the synthetic images (or --reconstruction with --model)")
    if cfg.num_samples and cfg.num_samples <= cfg.k:
        raise OptionError("num_samples", f"{cfg.num_samples} must exceed --k {cfg.k} (or be 0 for all)")
    out = Path(cfg.out)
    if out.suffix.lower() != ".json":
        raise OptionError("out", f"{out}: expected a .json file name")
    real_set = resolve_images(cfg.data, cfg.level, cfg.split, "data")
    fake_set = resolve_images(cfg.fake, cfg.level, cfg.split, "fake")
    for s in (real_set, fake_set):
        role = "data" if s is real_set else "fake"
        if len(s.paths) <= cfg.k and not (cfg.level == "patch" and cfg.crops_per_image * len(s.paths) > cfg.k):
            raise PathUpError(f"--{role} {s.source}: {len(s.paths)} image(s); precision/recall with k = {cfg.k} "
                              f"needs at least {cfg.k + 1} samples per set")
    grids = seam_grids(fake_set.paths, cfg.seam_patch, cfg.seam_stride) if cfg.seam else None

    device = str(resolve_device(cfg.device))
    extractor = make_extractor(cfg.features, cfg.features_weights, cfg.features_size, device)
    if not extractor.comparable:
        log.warning("features '%s' are not Inception features: the numbers are not comparable with the "
                    "literature", cfg.features)
    cache_dir = (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()) if cfg.cache else None
    runs = []
    for r in range(cfg.repeats):
        seed = cfg.seed + r
        feats = {}
        for role, flag, s in (("real", "data", real_set), ("fake", "fake", fake_set)):
            samples = build_samples(s.paths, cfg.level, overview_size=cfg.overview_size, crop_px=cfg.crop_px,
                                    crops_per_image=cfg.crops_per_image, num_samples=cfg.num_samples,
                                    seed=seed * 2 + (role == "fake"))
            if len(samples) <= cfg.k:
                raise PathUpError(f"--{flag} {s.source}: {len(samples)} sample(s); precision/recall with "
                                  f"k = {cfg.k} needs at least {cfg.k + 1}")
            feats[role] = extract_features(samples, extractor, batch_size=cfg.batch_size,
                                           num_workers=cfg.num_workers, cache_dir=cache_dir,
                                           desc=f"{role} features (seed {seed})", progress=cfg.progress)
        run = {"seed": seed, **compute_metrics(feats["real"], feats["fake"], k=cfg.k, kid_subsets=cfg.kid_subsets,
                                               kid_subset_size=cfg.kid_subset_size, chunk_size=cfg.chunk_size,
                                               seed=seed)}
        log.info("seed %d: IP %.3f IR %.3f FID %.2f KIDx1000 %.2f", seed, run["precision"], run["recall"],
                 run["fid"], run["kid_x1000"])
        runs.append(run)

    result: dict[str, Any] = {
        "level": cfg.level,
        "real": {"source": real_set.source, "kind": real_set.kind, "n_images": len(real_set.paths),
                 **({"classes": dict(real_set.classes)} if real_set.classes else {})},
        "fake": {"source": fake_set.source, "kind": fake_set.kind, "n_images": len(fake_set.paths),
                 **({"classes": dict(fake_set.classes)} if fake_set.classes else {})},
        "features": {"extractor": cfg.features, "id": extractor.cache_id, "dim": extractor.dim,
                     "comparable_with_literature": extractor.comparable},
        "runs": runs,
        "summary": summarize_runs(runs, ["precision", "recall", "fid", "kid_x1000", "n_real", "n_fake"]),
        "config": to_dict(cfg),
    }
    if cfg.seam:
        try:
            scores = seam_scores(fake_set.paths, cfg.seam_patch, cfg.seam_stride, cfg.seam_band, cfg.progress,
                                 grids=grids)
        except PathUpError as err:  # keep the metrics computed so far
            _write_result(cfg, out, result)
            raise PathUpError(f"{err} (the other metrics were written to {out})") from None
        result["seam"] = {"fake": mean_std(scores),  # NaN (undefined) -> null: the JSON stays valid
                          "per_image": {str(p): None if s != s else s for p, s in zip(fake_set.paths, scores)}}
    try:
        cc = _class_consistency(cfg, device, out)
    except PathUpError as err:  # keep the metrics computed so far
        _write_result(cfg, out, result)
        raise PathUpError(f"{err} (the other metrics were written to {out})") from None
    if cc is not None:
        result["class_consistency"] = cc
    _write_result(cfg, out, result)
    return result


def _reconstruction(cfg: EvaluateConfig) -> dict[str, Any]:
    """``--reconstruction``: ``pathup.metrics.judge.evaluate_reconstruction`` of ``--model`` on ``--data``."""
    from pathup.config import save_config, to_dict
    from pathup.device import resolve_device
    from pathup.io import atomic_write_text
    from pathup.metrics.judge import evaluate_reconstruction, reconstruction_markdown, save_png

    if cfg.model is None:
        raise OptionError("model", "is required with --reconstruction: the model (or VAE) whose autoencoder is measured")
    out = Path(cfg.out)
    if out.suffix.lower() != ".json":
        raise OptionError("out", f"{out}: expected a .json file name")
    features = [] if cfg.class_consistency is False else consistency_specs(cfg)
    report, picture = evaluate_reconstruction(cfg.model, cfg.data, split=cfg.split, level=None,
                                              features=features, features_weights=cfg.features_weights,
                                              max_tiles=cfg.max_tiles, device=str(resolve_device(cfg.device)),
                                              seed=cfg.seed)
    report["config"] = to_dict(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2, allow_nan=True, default=float) + "\n")
    atomic_write_text(out.with_suffix(".md"), reconstruction_markdown(report))
    save_png(picture, out.with_suffix(".png"))
    save_config(cfg, out.with_suffix(".config.yaml"))
    return report


def consistency_specs(cfg: EvaluateConfig) -> list[str]:
    """The feature sets of class-consistency: ``--consistency-features``, else ``--features`` and color-stats
    (the first one fills the single-feature keys of the result)."""
    from pathup.metrics.consistency import feature_specs
    from pathup.metrics.features import COLOUR_ONLY

    return feature_specs(cfg.consistency_features or [cfg.features, *COLOUR_ONLY])


def _class_consistency(cfg: EvaluateConfig, device: str, out: Path) -> dict[str, Any] | None:
    """``pathup.metrics.consistency.measure`` when asked for or possible (see ``--class-consistency``)."""
    from pathup.metrics import consistency

    if cfg.class_consistency is False:
        return None
    try:
        _, classes, splits = consistency.labelled_real(cfg.data, cfg.level)
        _, fake_classes = consistency.labelled_fake(cfg.fake, cfg.level)
        held = cfg.split if cfg.split in ("test", "val") else None
        if len(set(classes)) < 2 or "train" not in splits or not ({held} if held else {"test", "val"}) & set(splits):
            raise OptionError("data", f"{cfg.data}: class-consistency needs a prepared dataset with 'train' tiles of "
                              "at least 2 classes and a held-out 'test' or 'val' split")
        trained = {c for c, s in zip(classes, splits) if s == "train"}
        unknown = sorted(set(fake_classes) - trained)
        if unknown:
            raise OptionError("fake", f"{cfg.fake}: class(es) {unknown} have no real 'train' tiles in --data "
                              f"{cfg.data} (it has {sorted(trained)}) for class-consistency")
    except PathUpError as err:
        if cfg.class_consistency:
            raise
        log.info("class-consistency skipped: %s", err)
        return None
    res = consistency.measure(cfg.data, cfg.fake, level=cfg.level, features=consistency_specs(cfg),
                              features_weights={cfg.features: cfg.features_weights}, size=cfg.overview_size,
                              heldout_split=held, device=device, seed=cfg.seed)
    res["plot"] = str(consistency.colour_plot(res, out.with_suffix(".colour.png"), {str(cfg.fake): "generated"}))
    return res


def metrics_markdown(result: dict[str, Any]) -> str:
    """The Markdown table of an ``evaluate`` result (one row; mean +- std over the seeds)."""
    from pathup.io import markdown_text
    from pathup.metrics.report import METRIC_COLUMNS, format_mean_std, markdown_table, metrics_row

    header = ["level", "real", "fake", "seeds", *[t for _k, t, _d in METRIC_COLUMNS]]
    row = [result["level"], result["summary"]["n_real"]["mean"], result["summary"]["n_fake"]["mean"],
           len(result["runs"]), *metrics_row(result["summary"])]
    row[1], row[2] = int(row[1]), int(row[2])
    if "seam" in result:
        header.append("seam")
        row.append(format_mean_std(result["seam"]["fake"], 3))
    note = ("" if result["features"]["comparable_with_literature"] else
            f"\nFeatures: {markdown_text(result['features']['extractor'])} (not Inception: not comparable with the "
            "literature).\n")
    fake, real = markdown_text(result["fake"]["source"]), markdown_text(result["real"]["source"])
    text = f"# Evaluation: {fake} vs {real}\n\n" + markdown_table(header, [row]) + note
    if "class_consistency" in result:
        from pathup.metrics.consistency import markdown

        cc = result["class_consistency"]
        text += "\n" + markdown(cc, {k: "generated" for k in cc["sets"]}) + "\n"
    return text
