"""Training data: the prepared dataset's tiles, their prompts and prompt ids, a resumable order, and the
randomness of each step.

Prompts are the manifest's ``prompt`` column (``"<class text>, <level>"``); prompt ids come from the
``PromptTable`` of ``dataset.json`` (classes x levels) and index the FEL memory bank. With
patho-align off the prompt is the class text alone and the table has one id per class; the tiles of
every selected level are kept (the ablation sees the same images, without the level in the prompt).

The order of the tiles is a pure function of (seed, epoch), so a resumed run reads exactly the
batches the uninterrupted run would have read, without saving any sampler state. Likewise the randomness
of a step (flips, crops, posterior sample, noise, timesteps, prompt dropout) comes from ``step_generator``
seeded by (seed, step, micro-batch, process).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pathup.data.dataset import TileDataset
from pathup.errors import PathUpError
from pathup.prompts import LEVELS, PromptTable


class TrainTiles(torch.utils.data.Dataset):
    """Tiles with their prompt and prompt id: items ``(image (3, R, R) in [-1, 1], prompt id, prompt)``.

    Args:
        root: prepared dataset folder.
        split: manifest split to use.
        levels: levels to keep (empty: all levels of the dataset).
        patho_align: prompts with the level (True) or class-only prompts (False).
        resolution: tile size fed to the model (tiles are resized when they differ).
        allow_empty_classes: accept classes of ``dataset.json`` that have no tile in ``split`` (at the kept
            levels). By default they are refused: the model would advertise (and be prompted with) a class
            it never saw.
    """

    def __init__(self, root: str | Path, split: str, levels: list[str], patho_align: bool, resolution: int,
                 *, allow_empty_classes: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise PathUpError(f"dataset folder not found: {root}")
        for lv in levels:
            if lv not in LEVELS:
                raise PathUpError(f"unknown level {lv!r} in --levels; allowed: {', '.join(LEVELS)}")
        try:
            self.tiles = TileDataset(root, split=split, level=None, size=resolution, hflip=False)
        except PathUpError as err:
            if "no tiles" in str(err):
                raise PathUpError(f"empty dataset: {err}") from None
            raise
        ds_levels = [lv for lv in self.tiles.levels if lv in LEVELS] or list(LEVELS)
        if levels:
            self.tiles.rows = [r for r in self.tiles.rows if r["level"] in levels]
            if not self.tiles.rows:
                raise PathUpError(f"empty dataset: {root / 'manifest.csv'} has no {split} tiles at level(s) "
                                  f"{', '.join(levels)}")
        bad = sorted({r["level"] for r in self.tiles.rows} - set(ds_levels))
        if bad:
            raise PathUpError(f"{root / 'manifest.csv'}: level(s) {bad} not in dataset.json levels {ds_levels}")
        present = {r["class"] for r in self.tiles.rows}
        empty = [c for c in self.tiles.classes if c not in present]
        if empty and not allow_empty_classes:
            at = f" at level(s) {', '.join(levels)}" if levels else ""
            raise PathUpError(f"{root / 'dataset.json'}: class(es) {', '.join(repr(c) for c in empty)} have no {split} "
                              f"tiles{at} (all background or bad files at prepare?); the model would offer a class "
                              f"it never saw: prepare again (e.g. a lower --min-tissue), or allow empty classes "
                              f"(--allow-empty-classes)")
        self.empty_classes = empty
        self.tiles.check_files()
        self.table = PromptTable(list(self.tiles.classes), ds_levels if patho_align else [],
                                 dict(self.tiles.descriptions))
        self.ids = [self.table.prompt_id(r["class"], r["level"]) for r in self.tiles.rows]
        if patho_align:
            self.prompts = [r["prompt"].strip() or self.table.prompt(r["class"], r["level"]) for r in self.tiles.rows]
        else:
            self.prompts = [self.table.prompt(r["class"], None) for r in self.tiles.rows]
        by_id: dict[int, set[str]] = {}
        for i, p in zip(self.ids, self.prompts):
            by_id.setdefault(i, set()).add(p)
        clash = {i: s for i, s in by_id.items() if len(s) > 1}
        if clash:
            i, s = next(iter(clash.items()))
            raise PathUpError(f"{root / 'manifest.csv'}: one class and level has several prompts {sorted(s)}; "
                              "a prompt id needs one prompt")

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        return self.tiles[i]["image"], self.ids[i], self.prompts[i]

    def unique_prompts(self) -> list[str]:
        """The distinct training prompts, ordered by prompt id."""
        seen: dict[int, str] = {}
        for i, p in zip(self.ids, self.prompts):
            seen.setdefault(i, p)
        return [seen[i] for i in sorted(seen)]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``n`` tiles used in ``epoch`` (a function of seed and epoch only)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


class StepBatches(torch.utils.data.Sampler):
    """Batches of tile indices for optimizer steps ``start_step .. max_steps - 1`` of this process.

    Each optimizer step consumes ``grad_accum`` micro-batches of ``batch_size * world`` tiles
    (``world`` processes each take their own share); epochs are consecutive permutations from
    ``epoch_order``, read as one endless stream, so the batches of step s do not depend on
    where a run started.
    """

    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int, start_step: int, max_steps: int,
                 rank: int = 0, world: int = 1) -> None:
        self.n, self.bs, self.acc, self.seed = n, batch_size, grad_accum, seed
        self.start, self.stop, self.rank, self.world = start_step, max_steps, rank, world

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.acc

    def _stream(self, pos: int):
        epoch, off = divmod(pos, self.n)
        order = epoch_order(self.n, self.seed, epoch)
        while True:
            yield int(order[off])
            off += 1
            if off == self.n:
                epoch, off = epoch + 1, 0
                order = epoch_order(self.n, self.seed, epoch)

    def __iter__(self):
        global_bs = self.bs * self.world
        stream = self._stream(self.start * self.acc * global_bs)
        for _ in range(len(self)):
            batch = [next(stream) for _ in range(global_bs)]
            yield batch[self.rank * self.bs:(self.rank + 1) * self.bs]


def collate(items: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images = torch.stack([it[0] for it in items])  # (B, 3, R, R)
    ids = torch.tensor([it[1] for it in items], dtype=torch.long)  # (B,)
    return images, ids, [it[2] for it in items]


def loader(dataset, sampler, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader reading the batches of ``sampler`` (a ``StepBatches``)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available())


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """The CPU generator of one micro-batch of one step on one process."""
    key = (((int(seed) * 1_000_003 + int(step)) * 131 + int(micro)) * 4099 + int(rank)) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(key)


def random_flips(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image of (B, 3, H, W) flipped left-right and/or up-down with probability 1/2 each."""
    flips = torch.rand(images.shape[0], 2, generator=g) < 0.5  # (B, 2)
    out = images.clone()
    for i, (fh, fv) in enumerate(flips.tolist()):
        if fh:
            out[i] = out[i].flip(-1)
        if fv:
            out[i] = out[i].flip(-2)
    return out


def random_crop(images: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` crop of each image of (B, 3, H, W) (the images when ``size`` is 0 or too big)."""
    b, _, h, w = images.shape
    if size <= 0 or size >= min(h, w):
        return images
    ys = torch.randint(0, h - size + 1, (b,), generator=g).tolist()
    xs = torch.randint(0, w - size + 1, (b,), generator=g).tolist()
    return torch.stack([im[:, y:y + size, x:x + size] for im, y, x in zip(images, ys, xs)])  # (B, 3, s, s)


def dataset_mpp(root: str | Path) -> dict[str, float | None]:
    """The physical scale of a prepared dataset's tiles for every level: ``{"patch": um/px, "overview":
    um/px}`` (``pathup.data.manifest.dataset_mpp``; None where ``dataset.json`` records none)."""
    from pathup.data.manifest import dataset_mpp as levels_mpp, read_dataset_info

    path = Path(root) / "dataset.json"
    try:
        info = read_dataset_info(root)
    except (OSError, ValueError) as err:
        raise PathUpError(f"cannot read {path}: {err}") from None
    return levels_mpp(info, str(path), LEVELS)
