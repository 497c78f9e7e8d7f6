"""Class-consistency: does a generated image look like the class it was asked for?

In the spirit of the classification accuracy score (Ravuri & Vinyals, NeurIPS 2019), read the other
way: a classifier is trained on features of the *real* training tiles; it then predicts the class of
every generated image. Its accuracy on generated images is reported beside its accuracy on held-out
real tiles (other patients or slides), which is the ceiling the generated images can reach, and
beside chance (1 / classes). A model that follows its prompt approaches the ceiling, and its
accuracy rises with the guidance scale.

Everything here is a pure function of feature matrices and labels (as FID/KID in this package), plus
per-class colour statistics of images (mean and std in RGB and HSV).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pathup.errors import OptionError, PathUpError


@dataclass
class ClassifierReport:
    """Accuracy of the real-trained classifier on one labelled set."""

    accuracy: float  # overall, in [0, 1]
    per_class: dict[str, float]  # class -> accuracy (NaN where the set has no image of it)
    counts: dict[str, int]  # class -> images
    confusion: list[list[int]]  # rows: true class, columns: predicted class (order of ``classes``)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "per_class": self.per_class, "counts": self.counts,
                "confusion": self.confusion}


def _check(feats: np.ndarray, labels: Sequence[str], what: str) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise PathUpError(f"{what}: features must be a (N, D) matrix, got shape {feats.shape}")
    if feats.shape[0] != len(labels):
        raise PathUpError(f"{what}: {feats.shape[0]} feature rows but {len(labels)} labels")
    if not np.isfinite(feats).all():
        raise PathUpError(f"{what}: features contain NaN or infinity")
    return feats


def fit_classifier(feats: np.ndarray, labels: Sequence[str], *, seed: int = 0, c: float = 1.0):
    """A standardised multinomial logistic regression (scikit-learn) on real features.

    Args:
        feats: (N, D) features of real tiles.
        labels: N class names.
        seed: the solver's random state.
        c: inverse L2 regularisation strength.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = _check(feats, labels, "real training set")
    if len(set(labels)) < 2:
        raise PathUpError(f"class-consistency needs real tiles of at least 2 classes, got {sorted(set(labels))}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
    clf.fit(feats, np.asarray(labels))
    return clf


def score(clf, feats: np.ndarray, labels: Sequence[str], classes: Sequence[str], what: str) -> ClassifierReport:
    """Accuracy overall and per class of ``clf`` on a labelled set (the classes in ``classes`` order)."""
    feats = _check(feats, labels, what)
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise PathUpError(f"{what}: no images")
    pred = clf.predict(feats)
    index = {c: i for i, c in enumerate(classes)}
    conf = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(labels, pred):
        if t in index and p in index:
            conf[index[t], index[p]] += 1
    per_class, counts = {}, {}
    for c in classes:
        m = labels == c
        counts[c] = int(m.sum())
        per_class[c] = float((pred[m] == c).mean()) if m.any() else float("nan")
    return ClassifierReport(accuracy=float((pred == labels).mean()), per_class=per_class, counts=counts,
                            confusion=conf.tolist())


def class_consistency(train_feats: np.ndarray, train_labels: Sequence[str], held_feats: np.ndarray,
                      held_labels: Sequence[str], fake_feats: np.ndarray, fake_labels: Sequence[str], *,
                      seed: int = 0) -> dict[str, Any]:
    """Class-consistency of generated images beside its real ceiling.

    Args:
        train_feats: (N, D) features of the real tiles the classifier is trained on.
        train_labels: their N classes.
        held_feats: (M, D) features of held-out real tiles (other patients or slides than the training tiles).
        held_labels: their M classes.
        fake_feats: (K, D) features of generated images.
        fake_labels: the K classes they were generated for.
        seed: the classifier's random state.

    Returns:
        ``{"classes", "chance", "generated": ClassifierReport dict, "real_heldout": ClassifierReport dict,
        "ratio": generated / real accuracy, "above_3x_chance": classes whose generated accuracy > 3 x chance,
        "real_above_3x_chance": the same for the held-out real tiles (what the target "every class above
        3 x chance" can reach with these features)}``.
    """
    classes = sorted(set(train_labels))
    unknown = sorted(set(fake_labels) - set(classes))
    if unknown:
        raise PathUpError(f"generated images of class(es) {unknown} have no real training tiles; "
                          f"the real classes are {classes}")
    clf = fit_classifier(train_feats, train_labels, seed=seed)
    gen = score(clf, fake_feats, fake_labels, classes, "generated set")
    real = score(clf, held_feats, held_labels, classes, "held-out real set")
    chance = 1.0 / len(classes)
    return {
        "classes": classes, "chance": chance,
        "generated": gen.to_dict(), "real_heldout": real.to_dict(),
        "ratio": gen.accuracy / real.accuracy if real.accuracy > 0 else float("nan"),
        "above_3x_chance": _above(gen.per_class, classes, 3 * chance),
        "real_above_3x_chance": _above(real.per_class, classes, 3 * chance),
    }


def _above(per_class: dict[str, float], classes: Sequence[str], level: float) -> list[str]:
    """The classes whose accuracy is above ``level`` (a class without images, NaN, is not)."""
    return [c for c in classes if per_class[c] == per_class[c] and per_class[c] > level]


def same_seed_distance(images: dict[str, dict[int, np.ndarray]]) -> dict[str, Any]:
    """How much the prompt changes a picture drawn from one seed.

    ``images[class][seed]`` is an image (any array shape, the same for all) generated from ``seed`` under
    the class's prompt, with the same seeds for every class. For two classes, the mean absolute pixel
    difference between their images of the same seed is divided by the *seed distance*: the mean absolute
    difference between two images of one class from consecutive seeds (over all classes). 0: the prompt
    does not change the picture (the two classes are drawn alike); 1: it changes it as much as another
    seed does. A class pair far below the others is one the model draws as a single class whatever the
    classifier says.

    Returns ``{"seed_distance", "classes", "seeds", "matrix"}`` (the matrix row-major over ``classes``)
    and ``"closest"``: the pairs sorted by their ratio, each ``[class_a, class_b, ratio]``.
    """
    classes = list(images)
    if len(classes) < 2:
        raise PathUpError("same-seed distance needs images of at least two classes")
    seeds = sorted(set.intersection(*(set(images[c]) for c in classes)))
    if len(seeds) < 2:
        raise PathUpError("same-seed distance needs at least two seeds shared by every class, got "
                          f"{len(seeds)}")

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())

    seed_d = float(np.mean([dist(images[c][a], images[c][b]) for c in classes for a, b in zip(seeds, seeds[1:])]))
    if seed_d == 0:
        raise PathUpError("same-seed distance: images of different seeds are identical (seed distance 0)")
    n = len(classes)
    mat = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            mat[i, j] = mat[j, i] = np.mean([dist(images[classes[i]][s], images[classes[j]][s])
                                             for s in seeds]) / seed_d
    pairs = sorted(([classes[i], classes[j], float(mat[i, j])] for i in range(n) for j in range(i + 1, n)),
                   key=lambda p: p[2])
    return {"seed_distance": seed_d, "classes": classes, "seeds": seeds, "matrix": mat.tolist(), "closest": pairs}


def same_seed_of(images: np.ndarray, classes: Sequence[str], seeds: Sequence[int | None]) -> dict[str, Any] | None:
    """``same_seed_distance`` of a generated set given as parallel sequences (image, class, seed), over the
    classes that share at least two seeds; None when fewer than two classes do (e.g. images without seeds)
    or when it is undefined (images of different seeds identical). Of two images of one class and seed (a
    folder holding several runs), the first counts."""
    by_class: dict[str, dict[int, np.ndarray]] = {}
    for im, c, s in zip(images, classes, seeds):
        if s is not None:
            by_class.setdefault(str(c), {}).setdefault(int(s), im)
    by_class = {c: v for c, v in by_class.items() if len(v) >= 2}
    if len(by_class) < 2 or len(set.intersection(*(set(v) for v in by_class.values()))) < 2:
        return None
    try:
        return same_seed_distance(by_class)
    except PathUpError:  # seed distance 0: an auxiliary measure must not fail the evaluation
        return None


def same_seed_summary(res: dict[str, Any], n: int = 3) -> tuple[str, str]:
    """The ``n`` closest pairs of a ``same_seed_distance`` result as text ("A~B 0.28, ...") and the median pair's
    distance, for reports."""
    pairs = res["closest"]
    return (", ".join(f"{a}~{b} {r:.2f}" for a, b, r in pairs[:n]),
            f"{np.median([r for _, _, r in pairs]):.2f}")


# ---------------------------------------------------------------------------------------- colour
COLOUR_KEYS = ("R", "G", "B", "H", "S", "V")


def colour_stats(image: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation of one image in RGB and HSV (each channel scaled to [0, 255]).

    Hue is circular: its mean and std are the circular mean and circular std (radians mapped back to
    [0, 255)). Args: ``image`` (H, W, 3) uint8.
    """
    from matplotlib.colors import rgb_to_hsv

    rgb = np.asarray(image, dtype=np.float64)[..., :3] / 255.0  # (H, W, 3)
    hsv = rgb_to_hsv(rgb)  # (H, W, 3) in [0, 1]
    out: dict[str, float] = {}
    for i, k in enumerate("RGB"):
        out[f"{k}_mean"] = float(rgb[..., i].mean() * 255)
        out[f"{k}_std"] = float(rgb[..., i].std() * 255)
    ang = hsv[..., 0].ravel() * 2 * np.pi
    s, c = np.sin(ang).mean(), np.cos(ang).mean()
    r = min(1.0, float(np.hypot(s, c)))
    out["H_mean"] = float((np.arctan2(s, c) % (2 * np.pi)) / (2 * np.pi) * 255)
    out["H_std"] = float(np.sqrt(max(0.0, -2 * np.log(max(r, 1e-12)))) / (2 * np.pi) * 255)
    for i, k in ((1, "S"), (2, "V")):
        out[f"{k}_mean"] = float(hsv[..., i].mean() * 255)
        out[f"{k}_std"] = float(hsv[..., i].std() * 255)
    return out


def per_class_colour(stats: Sequence[dict[str, float]], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Average of ``colour_stats`` rows per class: ``{class: {"R_mean": ..., ..., "n": count}}``."""
    out: dict[str, dict[str, float]] = {}
    for c in sorted(set(labels)):
        rows = [s for s, lab in zip(stats, labels) if lab == c]
        out[c] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        out[c]["n"] = len(rows)
    return out


def colour_correlation(real: dict[str, dict[str, float]], fake: dict[str, dict[str, float]],
                       channels: Sequence[str] = ("R", "G", "B")) -> float:
    """Pearson r between real and generated per-class mean colours over classes x channels.

    Only classes present in both are used; NaN when fewer than 2 values or no variance.
    """
    common = [c for c in real if c in fake]
    x = [real[c][f"{k}_mean"] for c in common for k in channels]
    y = [fake[c][f"{k}_mean"] for c in common for k in channels]
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# ----------------------------------------------------------------------------------- labelled sets
def labelled_real(spec: str | Path, level: str | None) -> tuple[list[Path], list[str], list[str]]:
    """The real tiles of a prepared dataset (folder with ``manifest.csv`` or the CSV): paths, classes, splits.

    ``level`` filters the manifest's level column (``None``: every level).
    """
    from pathup.data.manifest import read_manifest

    path = Path(spec)
    csv = path if path.is_file() else path / "manifest.csv"
    if not csv.is_file():
        raise OptionError("real", f"{path}: class-consistency needs a prepared dataset (manifest.csv with class "
                          "and split columns)")
    rows = [r for r in read_manifest(csv) if level is None or r["level"] == level]
    if not rows:
        raise OptionError("real", f"{csv}: no tiles at level {level}")
    root = csv.parent
    return [root / r["path"] for r in rows], [r["class"] for r in rows], [r["split"] for r in rows]


def labelled_fake(spec: str | Path, level: str | None = None) -> tuple[list[Path], list[str]]:
    """Generated images and the class each was generated for (``seeded_fake`` without the seeds)."""
    paths, classes, _ = seeded_fake(spec, level)
    return paths, classes


def seeded_fake(spec: str | Path, level: str | None = None) -> tuple[list[Path], list[str], list[int | None]]:
    """Generated images, the class each was generated for and its seed (None where unknown).

    Class, level and seed come from ``pathup.sample.generate.read_generated`` (the sidecars and the layout of a
    ``generate`` folder); an image it cannot place takes its class from its first folder under ``spec``
    (``FAKE/<class>/...``). With ``level`` (``overview`` or ``patch``), images known to be of the other
    level (a generate folder's overviews vs its final images) are left out, unless none would remain.
    """
    from pathup.data.generated import read_generated

    root = Path(spec)
    if not root.is_dir():
        raise OptionError("fake", f"{root}: class-consistency needs a folder with one sub-folder per class")
    items = read_generated(root)
    want = {"overview": "overview", "patch": "upscaled"}.get(level or "")
    if want and any(it.level == want for it in items):
        items = [it for it in items if it.level in (want, None)]
    out_p, out_c, out_s = [], [], []
    for it in items:
        cls = it.class_name
        rel = it.path.relative_to(root).parts
        if cls is None and len(rel) > 1:
            cls = rel[0]
        if cls is None:
            raise OptionError("fake", f"{root}: {it.path.name} has no class (no sidecar .json and not in a class "
                              "folder)")
        out_p.append(it.path)
        out_c.append(str(cls))
        out_s.append(it.seed)
    if not out_p:
        raise OptionError("fake", f"{root}: no images found")
    return out_p, out_c, out_s


def load_rgb(paths: Sequence[Path], size: int) -> np.ndarray:
    """Images as (N, size, size, 3) uint8: resized on the short side to ``size`` and centre-cropped (the
    same pixels as ``evaluate``'s overview samples, ``pathup.metrics.samples.load_sample``)."""
    from pathup.metrics.samples import Sample, load_sample

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        out[i] = load_sample(Sample(Path(p), None, size))
    return out


def extract(images: np.ndarray, extractor, batch_size: int = 64) -> np.ndarray:
    """Features (N, D) of (N, H, W, 3) uint8 images with a ``pathup.metrics.features`` extractor."""
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2)  # (B, 3, H, W)
            feats.append(extractor(x.to(extractor.device)).float().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def feature_specs(features: str | Sequence[str]) -> list[str]:
    """``features`` as a list of distinct specs, in order (a single spec -> one item)."""
    specs = [features] if isinstance(features, (str, Path)) else list(features)
    out: list[str] = []
    for f in specs:
        if str(f) not in out:
            out.append(str(f))
    if not out:
        raise OptionError("features", ": no feature extractor given for class-consistency")
    return out


def feature_label(spec: str) -> str:
    """A short name of a feature spec for tables: a folder's or file's name, else the spec itself."""
    p = Path(spec)
    return p.name if (p.is_dir() or p.is_file()) and p.name else spec


def measure(real: str | Path, fake: str | Path | Sequence[str | Path], *, level: str | None = "overview",
            features: str | Sequence[str] = "color-stats",
            features_weights: str | None | dict[str, str | None] = None, size: int = 128,
            train_split: str = "train", heldout_split: str | None = None, device: str = "cpu",
            seed: int = 0) -> dict[str, Any]:
    """Class-consistency and per-class colour of one or several generated sets against a prepared dataset.

    The classifier trains on the real ``train_split`` tiles of ``level`` and is scored on the held-out
    split (``heldout_split``; default: ``test``, else ``val``), whose patients or slides the training
    tiles do not share (``pathup prepare`` splits by patient or slide), and on each generated set. With
    several feature specs (e.g. ``["color-stats", "runs/encoder"]``: colour-only and texture-aware), one
    classifier per feature space, side by side.

    Args:
        features: one extractor spec (``pathup.metrics.features.make_extractor``) or several.
        features_weights: the weights of the extractor (one spec), or ``{spec: weights}`` (several).

    Returns:
        ``{"features": the first spec, "feature_sets": [specs], "level", "train_split", "heldout_split",
        "real_tiles", "real_colour", "sets": {fake: class_consistency(...) + colour} (first spec),
        "by_features": {spec: {"id", "dim", "label", "sets": {fake: class_consistency(...)}}}}``. The keys of
        the single-spec result keep their meaning (they hold the first spec's results). Each set also has
        ``"same_seed"``: ``same_seed_of`` its images (classes drawn from shared seeds), or None.
    """
    from pathup.metrics.features import make_extractor

    specs = feature_specs(features)
    if isinstance(features_weights, dict):
        weights = {s: features_weights.get(s) for s in specs}
    elif features_weights is not None and len(specs) > 1:
        raise OptionError("features_weights", "must map each feature spec to its weights ({spec: path}) when "
                          "class-consistency uses several extractors")
    else:
        weights = {specs[0]: features_weights}
    paths, classes, splits = labelled_real(real, level)
    held = heldout_split or next((s for s in ("test", "val") if s in splits), None)
    if held is None or held not in splits:
        raise OptionError("real", f"{real}: class-consistency needs held-out real tiles (a 'test' or 'val' split by "
                          "patient or slide) for its ceiling; prepare with --test-fraction > 0")
    tr = [i for i, s in enumerate(splits) if s == train_split]
    he = [i for i, s in enumerate(splits) if s == held]
    if not tr:
        raise OptionError("real", f"{real}: no '{train_split}' tiles to train the classifier on")
    extractors = {s: make_extractor(s, weights.get(s), device=device) for s in specs}  # all checked before work
    real_img = load_rgb(paths, size)
    real_colour = per_class_colour([colour_stats(im) for im in real_img], classes)
    fakes = [fake] if isinstance(fake, (str, Path)) else list(fake)
    fake_sets, fake_seeds = [], {}
    for fk in fakes:
        fp, fc, fake_seeds[str(fk)] = seeded_fake(fk, level)
        fake_sets.append((str(fk), fp, fc, load_rgb(fp, size)))
    by_features: dict[str, Any] = {}
    for spec, ext in extractors.items():
        real_f = extract(real_img, ext)
        per_set = {}
        for key, fp, fc, f_img in fake_sets:
            res = class_consistency(real_f[tr], [classes[i] for i in tr], real_f[he], [classes[i] for i in he],
                                    extract(f_img, ext), fc, seed=seed)
            res["images"] = len(fp)
            per_set[key] = res
        by_features[spec] = {"id": ext.cache_id, "dim": ext.dim, "label": feature_label(spec), "sets": per_set}
    sets: dict[str, Any] = {}
    for key, fp, fc, f_img in fake_sets:
        fake_colour = per_class_colour([colour_stats(im) for im in f_img], fc)
        sets[key] = {**by_features[specs[0]]["sets"][key], "colour": fake_colour,
                     "colour_r": colour_correlation(real_colour, fake_colour),
                     "same_seed": same_seed_of(f_img, fc, fake_seeds[key])}
    return {"features": specs[0], "feature_sets": specs, "level": level, "train_split": train_split,
            "heldout_split": held, "real_tiles": {"train": len(tr), "heldout": len(he)}, "real_colour": real_colour,
            "sets": sets, "by_features": by_features}


# ------------------------------------------------------------------------------------------ report
def markdown(res: dict[str, Any], names: dict[str, str] | None = None) -> str:
    """Markdown tables of a ``measure`` result: class-consistency beside its ceiling, one row per feature set
    and generated set (colour-only and texture-aware side by side), and per-class colour.

    ``names`` maps a generated set's key to the label of its row (default: the key).
    """
    from pathup.io import markdown_text
    from pathup.metrics.report import markdown_table

    sets = res["sets"]
    first = next(iter(sets.values()))
    classes = first["classes"]
    by_features = res.get("by_features") or {res["features"]: {"label": res["features"], "sets": sets}}
    head = ["features", "set", "accuracy", "ceiling (real held-out)", "ratio", "> 3x chance", "colour r", *classes]
    rows = []
    for spec, fr in by_features.items():
        label = fr.get("label", spec)
        for key, r in fr["sets"].items():
            rows.append([label, (names or {}).get(key, key), f"{r['generated']['accuracy']:.3f}",
                         f"{r['real_heldout']['accuracy']:.3f}", f"{r['ratio']:.2f}",
                         f"{len(r['above_3x_chance'])}/{len(classes)}", f"{sets[key]['colour_r']:.3f}",
                         *[f"{r['generated']['per_class'][c]:.2f}" for c in classes]])
        first_set = next(iter(fr["sets"].values()))
        ceiling, real_above = first_set["real_heldout"], first_set.get("real_above_3x_chance")
        rows.append([label, "real held-out", f"{ceiling['accuracy']:.3f}", "", "",
                     "" if real_above is None else f"{len(real_above)}/{len(classes)}", "",
                     *[f"{ceiling['per_class'][c]:.2f}" for c in classes]])
    labels = ", ".join(fr.get("label", spec) for spec, fr in by_features.items())
    text = (f"## Class-consistency ({markdown_text(labels)} features; chance {first['chance']:.3f})\n\n"
            f"A classifier trained on {res['real_tiles']['train']} real '{res['train_split']}' tiles (one per feature "
            f"set) predicts each generated image's class; its ceiling is its accuracy on {res['real_tiles']['heldout']} "
            f"held-out real '{res['heldout_split']}' tiles. Colour-only features (color-stats) cannot see blur; a "
            "texture-aware feature set (a domain encoder, a foundation encoder) can.\n\n" + markdown_table(head, rows))
    chead = ["class", "images", *[f"{k} mean" for k in COLOUR_KEYS], *[f"{k} std" for k in COLOUR_KEYS]]
    crows = []
    for c in classes:
        for label, table in [("real", res["real_colour"])] + [((names or {}).get(k, k), v["colour"])
                                                              for k, v in sets.items()]:
            if c in table:
                t = table[c]
                crows.append([f"{c} ({label})", int(t["n"]), *[f"{t[f'{k}_mean']:.1f}" for k in COLOUR_KEYS],
                              *[f"{t[f'{k}_std']:.1f}" for k in COLOUR_KEYS]])
    seeded = [(k, v["same_seed"]) for k, v in sets.items() if v.get("same_seed")]
    if seeded:
        text += ("\n\n## Same-seed distance between classes\n\nThe mean pixel difference between two classes' images "
                 "drawn from the same seed, relative to that between two seeds of one class: 0, the prompt does not "
                 "change the picture (the model draws the two classes alike); 1, it changes it as much as a new seed.\n\n"
                 + markdown_table(["set", "seeds", "closest pairs", "median pair"],
                                  [[(names or {}).get(k, k), len(d["seeds"]), *same_seed_summary(d)]
                                   for k, d in seeded]))
    return text + "\n\n## Colour per class (RGB and HSV, 0-255; hue circular)\n\n" + markdown_table(chead, crows)


def colour_plot(res: dict[str, Any], path: str | Path, names: dict[str, str] | None = None) -> Path:
    """A figure of per-class mean colour: real (filled) vs each generated set (hollow), one panel per RGB channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathup.io import atomic_path

    real = res["real_colour"]
    classes = list(real)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    x = np.arange(len(classes))
    for ax, ch, col in zip(axes, "RGB", ("tab:red", "tab:green", "tab:blue")):
        ax.errorbar(x, [real[c][f"{ch}_mean"] for c in classes], yerr=[real[c][f"{ch}_std"] for c in classes],
                    fmt="o", color=col, label="real", capsize=2)
        for j, (key, r) in enumerate(res["sets"].items()):
            cols = [c for c in classes if c in r["colour"]]
            ax.plot([classes.index(c) + 0.15 * (j + 1) for c in cols], [r["colour"][c][f"{ch}_mean"] for c in cols],
                    "D", mfc="none", color="k", alpha=0.4 + 0.6 * (j + 1) / len(res["sets"]),
                    label=(names or {}).get(key, Path(key).name))
        ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{ch} mean per class")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("0-255")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
