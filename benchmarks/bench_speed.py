"""A large image in fewer UNet evaluations at the same quality, measured (issue 19).

Generates large images of a trained PathUp model (overview + patch-wise timestep tracking, ``pathup generate``'s
pipeline) under several settings, all in one run, and measures for each:

* cost: UNet evaluations (batch items, per stage), wall seconds per stage (overview, encode, tracking,
  decode), and the outside-UNet share of a tracking step (tracking time not spent in the UNet's forward,
  timed by hooks with ``torch.cuda.synchronize`` on CUDA, over the tracking time);
* quality against the real held-out tiles of the model's dataset (``split == test``): the images are cut into
  non-overlapping tiles of the model's training resolution at their own pixels (the patch level of
  ``pathup evaluate``), then class-consistency (a classifier on the texture-aware domain encoder's features of
  the real training tiles, ``pathup.metrics.judge.Judge``) and the Frechet distance of those features to the
  held-out tiles; and the seam score of the whole images on their patch grid (``pathup.metrics.seam``).

Settings: (a) the reference, the paper's setting (DDIM 50 steps, guidance 7.5 at every step, pathup's default
before this benchmark chose UniPC); (b) the sweep,
``--schedulers`` x ``--sweep-steps``; (c) each lever alone and all together against the reference: the solver
and step count (``--solver-lever``, default: the cheapest sweep point that meets the quality targets), the
guidance interval (``--interval LO HI``, guidance only where lo < sigma <= hi), DeepCache
(``--cache-interval``) and token merging (``--token-merging``; needs ``tomesd``). Ratios are against the
reference of the same run. The targets of the issue: <= 1/3 of the reference's UNet evaluations and wall time,
class-consistency within 0.02, FD within 5 %, seam score within 0.05, outside-UNet share <= 3 % of a step.

Quality numbers on few images are noisy: the report gives the number of tiles, the real-vs-real ceiling
(the classifier on held-out real tiles) and the FD of as many held-out real tiles as there are generated ones
to all held-out tiles (the FD floor at that sample size).

Usage (2 CPU cores, about 12 minutes; tiny model, 512 px, 3 classes x 2 seeds, 9 latent patches)::

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --model runs/k1200/model --dataset data/k1200 \\
        --out runs/bench_speed

The README's "How fast" numbers (1024 px, 225 latent patches per image): the levers against the chosen solver
(about 15 minutes on 1 CPU thread), and the sweep that chose it (about 40 minutes)::

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --model runs/k1200/model --dataset data/k1200 \\
        --size 1024 --latent-patch 16 --latent-overlap 8 --classes 3 --seeds 1 --threads 1 \\
        --schedulers unipc --sweep-steps 10 --out runs/bench_speed_1024
    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --model runs/k1200/model --dataset data/k1200 \\
        --size 1024 --latent-patch 16 --latent-overlap 8 --classes 3 --seeds 1 --threads 1 \\
        --schedulers ddim unipc dpm++-karras euler --sweep-steps 10 15 20 30 --out runs/bench_speed_sweep

On a GPU (the issue's sweep at 2048 px, the paper's 64/32 latent patches)::

    python benchmarks/bench_speed.py --model MODEL --dataset DATA --device cuda --size 2048 \\
        --latent-patch 64 --latent-overlap 32 --classes all --seeds 4 --sweep-steps 10 15 20 30 50 \\
        --schedulers ddim dpm++-karras unipc euler --out runs/bench_speed_gpu

Writes OUT/speed.json, OUT/speed.md, OUT/curve.png (quality and UNet evaluations vs steps per solver) and
OUT/examples.png (the centre of each setting's first image at full resolution).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TARGETS = {"evaluations": 1 / 3, "wall": 1 / 3, "consistency": 0.02, "fd": 0.05, "seam": 0.05, "outside": 0.03}
OPTIONAL_LEVERS = {"cache_interval": "cache_interval", "token_merging": "token_merging"}


class UnetClock:
    """Seconds spent in the UNet: its forward (hooks) and DeepCache's shallow branch (``--cache-interval``:
    ``pathup.sample.deepcache.shallow_unet``, wrapped); CUDA synchronised before each clock read."""

    def __init__(self, unet: torch.nn.Module, device: torch.device) -> None:
        from pathup.sample import deepcache
        from pathup.sample.costs import synchronize

        self.seconds, self._start, self._sync = 0.0, 0.0, lambda: synchronize(device)
        self._handles = [unet.register_forward_pre_hook(self._pre), unet.register_forward_hook(self._post)]
        self._shallow = deepcache.shallow_unet

        def timed_shallow(*args: Any, **kwargs: Any) -> Any:
            self._pre()
            try:
                return self._shallow(*args, **kwargs)
            finally:
                self._post()

        deepcache.shallow_unet = timed_shallow

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start

    def close(self) -> None:
        from pathup.sample import deepcache

        for h in self._handles:
            h.remove()
        deepcache.shallow_unet = self._shallow


def tiles_of(image: np.ndarray, size: int) -> list[np.ndarray]:
    """Non-overlapping ``size`` x ``size`` tiles of an (H, W, 3) image (the remainder dropped)."""
    h, w = image.shape[:2]
    return [image[y:y + size, x:x + size] for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]


def run_setting(pipe: Any, cfg: Any, classes: list[str], seeds: list[int], clock: UnetClock) -> dict[str, Any]:
    """Generate every (class, seed) image with ``cfg``; cost numbers summed over the images, and the images."""
    from pathup.sample.costs import Costs

    total, unet_tracking, images, labels = Costs(), 0.0, [], []
    for cls in classes:
        prompts = pipe.prompts_for(cls)
        for seed in seeds:
            costs = Costs()
            ov = pipe.overview_with(prompts["overview"], cfg, seed, costs=costs)
            before = clock.seconds
            img = pipe.upscale_with(ov, prompts["patch"], cfg, seed, output_type="np", costs=costs)
            unet_tracking += clock.seconds - before  # the upscale's UNet time is all tracking (not encode/decode)
            total.add(costs)
            images.append(img)
            labels.append(cls)
    track = total.seconds.get("tracking", 0.0)
    return {"costs": total.to_dict(), "evaluations": total.total_evaluations,
            "cached_evaluations": sum(total.cached_evaluations.values()), "wall": total.total_seconds,
            "outside_unet": (track - unet_tracking) / track if track > 0 else float("nan"),
            "images": images, "labels": labels}


def quality(judge: Any, spec: str, images: list[np.ndarray], labels: list[str], tile: int, grid: tuple[int, int, int]
            ) -> dict[str, Any]:
    """Class-consistency and FD of the images' tiles; mean seam score of the images."""
    from pathup.metrics.seam import seam_score

    tiles, tile_labels = [], []
    for img, lab in zip(images, labels):
        t = tiles_of(img, tile)
        tiles += t
        tile_labels += [lab] * len(t)
    res = judge.judge(np.stack(tiles), tile_labels)[spec]
    patch_px, stride_px, factor = grid
    seams = [seam_score(img, patch_px, stride_px, factor=factor) for img in images]
    seams = [s for s in seams if s == s]
    return {"consistency": res["accuracy"], "fd": res["fd"], "per_class": res["per_class"],
            "seam": float(np.mean(seams)) if seams else float("nan"), "tiles": len(tiles)}


def real_floor(judge: Any, spec: str, n: int, seed: int) -> float:
    """FD of ``n`` held-out real tiles (drawn at random) to all held-out tiles: the FD floor at that size."""
    from pathup.metrics.consistency import extract
    from pathup.metrics.fid import feature_statistics, frechet_distance

    held = judge.real.held_images
    n = min(n, len(held))
    idx = np.random.default_rng(seed).choice(len(held), n, replace=False)
    f = extract(held[np.sort(idx)], judge.extractors[spec])
    return frechet_distance(*feature_statistics(f), *judge.stats[spec])


def compare(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Ratios and differences against the reference, with pass/fail per target."""
    ratios = {"evaluations": row["evaluations"] / ref["evaluations"], "wall": row["wall"] / ref["wall"],
              "consistency_diff": row["consistency"] - ref["consistency"],
              "fd_ratio": row["fd"] / ref["fd"] if ref["fd"] > 0 else float("nan"),
              "seam_diff": row["seam"] - ref["seam"]}
    passes = {"evaluations": ratios["evaluations"] <= TARGETS["evaluations"],
              "wall": ratios["wall"] <= TARGETS["wall"],
              "consistency": ratios["consistency_diff"] >= -TARGETS["consistency"],
              "fd": ratios["fd_ratio"] <= 1 + TARGETS["fd"],
              "seam": abs(ratios["seam_diff"]) <= TARGETS["seam"] if ratios["seam_diff"] == ratios["seam_diff"]
              else True,
              "outside": row["outside_unet"] <= TARGETS["outside"]}
    return {**ratios, "pass": passes}


def quality_ok(c: dict[str, Any]) -> bool:
    return all(c["pass"][k] for k in ("consistency", "fd", "seam"))


def _plain(opts: dict[str, Any]) -> dict[str, Any]:
    """Options as JSON stores them (tuples as lists), sorted, so equal settings compare equal."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(opts.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a trained PathUp model folder")
    ap.add_argument("--dataset", type=Path, default=None, help="its prepared dataset (manifest.csv with a test split); "
                                                               "default: the 'data' of the run's config.yaml")
    ap.add_argument("--encoder", default=None, help="texture-aware features (default: RUN/encoder beside the model)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (1024 on CPU is acceptable, 2048 on GPU)")
    ap.add_argument("--latent-patch", type=int, default=32)
    ap.add_argument("--latent-overlap", type=int, default=16)
    ap.add_argument("--classes", nargs="+", default=["3"], help="class names, 'all', or one number N: the first N")
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1 per class")
    ap.add_argument("--schedulers", nargs="+", default=["ddim", "dpm++-karras", "unipc", "euler"])
    ap.add_argument("--sweep-steps", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--solver-lever", default="auto", metavar="SCHEDULER:STEPS",
                    help="the solver lever (auto: the cheapest sweep point within the quality targets)")
    ap.add_argument("--interval", type=float, nargs=2, default=[0.28, 5.42], metavar=("LO", "HI"),
                    help="the guidance interval lever (Kynkaanniemi et al. 2024's EDM2 interval by default)")
    ap.add_argument("--cache-interval", type=int, default=2, help="the cache lever's value (when available)")
    ap.add_argument("--token-merging", type=float, default=0.5, help="the token-merging lever's ratio (when available)")
    ap.add_argument("--step-mode", default="per-canvas", choices=["per-patch", "per-chunk", "per-canvas"],
                    help="scheduler steps on all patches at once (the default, as pathup generate), per UNet chunk or "
                         "per patch, for every setting")
    ap.add_argument("--crop", type=int, default=256,
                    help="side of the centre crop of each setting's first image in OUT/examples.png (full resolution)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_speed"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import yaml

    from pathup.metrics.judge import Judge, RealSet
    from pathup.sample import PathUpPipeline, SampleConfig
    from pathup.sample.config import validate

    t_start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_dir = args.model.parent
    dataset = args.dataset
    if dataset is None:
        dataset = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"])
    spec = str(args.encoder or run_dir / "encoder")
    pipe = PathUpPipeline.from_pretrained(str(args.model), device=args.device, dtype="fp32", progress=False)
    device = pipe._execution_device
    all_classes = list(pipe.ldm.prompts.classes)
    if args.classes == ["all"]:
        classes = all_classes
    elif len(args.classes) == 1 and args.classes[0].isdigit():
        classes = all_classes[:int(args.classes[0])]
    else:
        classes = args.classes
    seeds = list(range(args.seeds))
    res = int(pipe.ldm.resolution)
    f = pipe.ldm.vae_scale_factor
    grid = (args.latent_patch * f, (args.latent_patch - args.latent_overlap) * f, f)

    t0 = time.perf_counter()
    real = RealSet.load(dataset, split="train", val_split="test", level="patch", resolution=res)
    judge = Judge(real, [spec], device=device)
    judge_s = time.perf_counter() - t0
    base = SampleConfig(size=args.size, latent_patch=args.latent_patch, latent_overlap=args.latent_overlap,
                        step_mode=args.step_mode, device=args.device, dtype="fp32")
    names = {fl.name for fl in dataclasses.fields(SampleConfig)}
    clock = UnetClock(pipe.ldm.unet, device)
    rows: dict[str, dict[str, Any]] = {}
    examples: dict[str, np.ndarray] = {}  # the first image of each setting, its centre at full resolution

    def measure(name: str, **opts: Any) -> dict[str, Any]:
        same = next((key for key, row in rows.items() if row["options"] == _plain(opts)), None)
        if same is not None:  # the same options already measured in this run (a lever that is a sweep point)
            rows[name], examples[name] = rows[same], examples[same]
            return rows[name]
        cfg = validate(dataclasses.replace(base, **opts))
        t = time.perf_counter()
        r = run_setting(pipe, cfg, classes, seeds, clock)
        examples[name] = centre_crop(r["images"][0], args.crop)
        q = quality(judge, spec, r.pop("images"), r.pop("labels"), res, grid)
        rows[name] = {"options": _plain(opts), **r, **q}
        print(f"{name:>28}: {r['evaluations']:6d} evals, {r['wall']:7.1f} s, outside-UNet "
              f"{r['outside_unet']:.1%}, consistency {q['consistency']:.3f}, FD {q['fd']:.2f}, seam {q['seam']:.3f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        return rows[name]

    ref = measure("reference ddim 50", scheduler="ddim", steps=50, guidance=7.5)
    sweep = {}
    for sched in args.schedulers:
        for steps in args.sweep_steps:
            name = "reference ddim 50" if (sched, steps) == ("ddim", 50) else f"{sched} {steps}"
            sweep[(sched, steps)] = measure(name, scheduler=sched, steps=steps, guidance=7.5)
    comps = {name: compare(row, ref) for name, row in rows.items()}

    # (c) the levers, each alone and all together
    if args.solver_lever == "auto":
        ok = [(row["evaluations"], key) for key, row in sweep.items()
              if quality_ok(comps["reference ddim 50" if key == ("ddim", 50) else f"{key[0]} {key[1]}"])]
        solver = min(ok)[1] if ok else min((row["evaluations"], key) for key, row in sweep.items())[1]
        solver_note = "cheapest sweep point within the quality targets" if ok else \
            "no sweep point met the quality targets: the cheapest one"
    else:
        s, _, n = args.solver_lever.partition(":")
        solver, solver_note = (s, int(n)), "given"
    levers: dict[str, dict[str, Any]] = {"solver": {"scheduler": solver[0], "steps": solver[1]},
                                         "guidance_interval": {"guidance_interval": tuple(args.interval)}}
    unavailable = []
    for lever, field in OPTIONAL_LEVERS.items():
        if field in names:
            levers[lever] = {field: args.cache_interval if lever == "cache_interval" else args.token_merging}
        else:
            unavailable.append(lever)
    lever_rows = {}
    for lever, opts in levers.items():
        lever_rows[lever] = measure(f"lever {lever}", **{"scheduler": "ddim", "steps": 50, "guidance": 7.5, **opts})
    combined: dict[str, Any] = {"guidance": 7.5}
    for opts in levers.values():
        combined.update(opts)
    lever_rows["combined"] = measure("levers combined", **combined)
    comps = {name: compare(row, ref) for name, row in rows.items()}

    floor = real_floor(judge, spec, ref["tiles"], seed=0)
    result = {"model": str(args.model), "dataset": str(dataset), "encoder": spec, "device": str(device),
              "size": args.size, "latent_patch": args.latent_patch, "latent_overlap": args.latent_overlap,
              "classes": classes, "seeds": seeds, "targets": TARGETS,
              "ceiling": {"consistency": judge.ceiling[spec]["accuracy"], "held_out_tiles": len(real.held_images),
                          "train_tiles": len(real.train_images), "fd_real_vs_real": floor,
                          "fd_real_vs_real_tiles": min(ref["tiles"], len(real.held_images))},
              "solver_lever": {"scheduler": solver[0], "steps": solver[1], "how": solver_note},
              "levers_not_available": unavailable, "levers": list(lever_rows),
              "runs": rows, "vs_reference": comps, "judge_seconds": judge_s,
              "bench_seconds": time.perf_counter() - t_start}
    clock.close()
    curve(result, args, out / "curve.png")
    example_grid(examples, result, args, out / "examples.png")
    text = report(result, args)
    (out / "speed.md").write_text(text)
    (out / "speed.json").write_text(json.dumps(result, indent=2, default=float))
    print(text)


def curve(result: dict[str, Any], args: argparse.Namespace, png: Path) -> None:
    """Class-consistency, FD and UNet evaluations vs steps, one line per solver; the reference as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    ref = runs["reference ddim 50"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [("consistency", "class-consistency (texture-aware)"), ("fd", "Frechet distance to held-out"),
              ("seam", "seam score (1 = none)"), ("evaluations", "UNet evaluations (all images)")]
    for ax, (key, label) in zip(axes, panels):
        for sched in args.schedulers:
            pts = [(s, runs["reference ddim 50" if (sched, s) == ("ddim", 50) else f"{sched} {s}"][key])
                   for s in args.sweep_steps]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=sched)
        ax.axhline(ref[key], color="k", ls="--", lw=1, label="reference (DDIM 50)")
        if key == "consistency":
            ax.axhline(result["ceiling"]["consistency"], color="g", ls=":", lw=1, label="real ceiling")
        ax.set_xlabel("steps"), ax.set_ylabel(label), ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{Path(result['model']).parent.name}: {result['size']} px, {len(result['classes'])} classes x "
                 f"{len(result['seeds'])} seeds, {ref['tiles']} tiles per setting", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` pixels of an (H, W, 3) image in [0, 1] (or all of it when smaller), uint8."""
    h, w = image.shape[:2]
    side_h, side_w = min(side, h), min(side, w)
    y, x = (h - side_h) // 2, (w - side_w) // 2
    crop = image[y:y + side_h, x:x + side_w]
    return crop if crop.dtype == np.uint8 else (np.clip(crop, 0, 1) * 255).round().astype(np.uint8)


def example_grid(examples: dict[str, np.ndarray], result: dict[str, Any], args: argparse.Namespace, png: Path) -> None:
    """Centre crops of each setting's first image at full resolution: a row per solver over the swept steps,
    then the reference and the levers; each titled with its UNet evaluations and consistency vs the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, comps = result["runs"], result["vs_reference"]
    sweep_name = lambda sched, s: "reference ddim 50" if (sched, s) == ("ddim", 50) else f"{sched} {s}"
    grid_rows = [[sweep_name(sched, s) for s in args.sweep_steps] for sched in args.schedulers]
    levers = ["reference ddim 50"] + [("levers combined" if lv == "combined" else f"lever {lv}")
                                      for lv in result["levers"]]
    grid_rows.append(levers)
    ncols = max(len(r) for r in grid_rows)
    fig, axes = plt.subplots(len(grid_rows), ncols, figsize=(2.4 * ncols, 2.6 * len(grid_rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, names in enumerate(grid_rows):
        for j, name in enumerate(names):
            if name not in examples:
                continue
            axes[i, j].imshow(examples[name])
            axes[i, j].set_title(f"{name}\n{comps[name]['evaluations']:.2f}x evals, cons {runs[name]['consistency']:.2f}",
                                 fontsize=7)
    fig.suptitle(f"centre {args.crop} px of the first image ({result['classes'][0]}, seed {result['seeds'][0]}) "
                 f"at full resolution, {result['size']} px images", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _mark(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    runs, comps, c = result["runs"], result["vs_reference"], result["ceiling"]
    ref = runs["reference ddim 50"]
    lines = [f"# Speed and quality: {result['model']} ({result['device']})", "",
             f"{result['size']} px images, latent patch {result['latent_patch']} / overlap {result['latent_overlap']}, "
             f"classes {', '.join(result['classes'])} x seeds {result['seeds']}: {ref['tiles']} tiles of the model's "
             f"resolution per setting. Real ceiling: class-consistency {c['consistency']:.3f} on {c['held_out_tiles']} "
             f"held-out tiles (classifier on {c['train_tiles']} training tiles); FD of {c['fd_real_vs_real_tiles']} "
             f"held-out tiles to all held-out tiles {c['fd_real_vs_real']:.2f} (the noise floor at this size).", "",
             "| setting | UNet evals | x ref | wall s | x ref | outside-UNet | consistency | d | FD | x ref | seam | d |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in runs.items():
        k = comps[name]
        evals = str(row["evaluations"]) + (f" + {row['cached_evaluations']} cached" if row.get("cached_evaluations")
                                           else "")
        lines.append(f"| {name} | {evals} | {k['evaluations']:.2f} | {row['wall']:.1f} | {k['wall']:.2f} | "
                     f"{row['outside_unet']:.1%} | {row['consistency']:.3f} | {k['consistency_diff']:+.3f} | "
                     f"{row['fd']:.2f} | {k['fd_ratio']:.2f} | {row['seam']:.3f} | {k['seam_diff']:+.3f} |")
    sl = result["solver_lever"]
    lines += ["", "UNet evals are full evaluations (batch items); `cached` ones (--cache-interval) run only the "
              "UNet's shallowest skip branch and are paid for in the wall time, not in the evals ratio. Outside-UNet: "
              "the share of tracking time spent neither in the UNet nor in that branch.", "",
              f"Solver lever: {sl['scheduler']} {sl['steps']} ({sl['how']}). Levers not available: "
              f"{', '.join(result['levers_not_available']) or 'none'}.", "",
              "## Targets (vs the reference of this run)", "",
              "| setting | evals <= 1/3 | wall <= 1/3 | consistency within 0.02 | FD within 5 % | seam within 0.05 | "
              "outside-UNet <= 3 % |", "|---|---|---|---|---|---|---|"]
    for lever in result["levers"]:
        name = "levers combined" if lever == "combined" else f"lever {lever}"
        p = comps[name]["pass"]
        lines.append(f"| {name} | " + " | ".join(_mark(p[k]) for k in ("evaluations", "wall", "consistency", "fd",
                                                                        "seam", "outside")) + " |")
    lines += ["", f"Bench time {result['bench_seconds'] / 60:.1f} min (features of the real tiles "
              f"{result['judge_seconds']:.0f} s). Quality differences of a few images are noisy: compare them with "
              "the real-vs-real numbers above before reading a pass or a fail.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
