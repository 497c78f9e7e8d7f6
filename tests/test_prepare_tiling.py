"""Pure parts of ``pathup prepare``: tile grid, level resize, tissue mask, cap and splits."""

import math

import numpy as np
import pytest
from PIL import Image

from pathup.data.prepare import cap_tiles
from pathup.data.sources import SourceItem, breakhis_ids
from pathup.data.splits import assign_splits, group_key
from pathup.data.tiling import LevelSpec, coverage, grid_starts, region_to_tile, tile_grid
from pathup.data.tissue import TissueMap, tissue_mask
from pathup.errors import PathUpError


@pytest.mark.parametrize("length,size,overlap,expected", [
    (700, 256, 32, [0, 224, 444]),          # BreakHis width, benchmark patch level
    (460, 256, 32, [0, 204]),               # BreakHis height
    (460, 460, 0, [0]),                     # exactly one tile
    (700, 460, 0, [0, 240]),                # last tile aligned to the border
    (300, 512, 64, [0]),                    # smaller than a tile: used whole
    (3840, 2048, 256, [0, 1792]),           # exact multiple of the stride
    (3841, 2048, 256, [0, 1792, 1793]),     # one pixel more: one more tile, aligned to the border
    (1000, 512, 64, [0, 448, 488]),
])
def test_grid_starts_hand_computed(length, size, overlap, expected):
    assert grid_starts(length, size, overlap) == expected


def test_grid_covers_every_pixel_with_the_expected_count():
    rng = np.random.default_rng(0)
    for _ in range(60):
        size = int(rng.integers(8, 64))
        overlap = int(rng.integers(0, size))
        width, height = (int(v) for v in rng.integers(1, 200, size=2))
        regions = tile_grid(width, height, size, overlap)
        stride = size - overlap
        nx = 1 if width <= size else math.ceil((width - size) / stride) + 1
        ny = 1 if height <= size else math.ceil((height - size) / stride) + 1
        assert len(regions) == nx * ny
        assert len(set(regions)) == len(regions)
        assert coverage(width, height, regions).min() >= 1
        for x, y, w, h in regions:
            assert (w, h) == (min(size, width), min(size, height))
            assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
        xs = sorted({r[0] for r in regions})
        assert xs[-1] + min(size, width) == width  # last column ends on the border
        # neighbours share at least `overlap` pixels and never leave a gap
        assert all(0 < b - a <= stride for a, b in zip(xs, xs[1:]))


def test_grid_rejects_bad_overlap():
    with pytest.raises(PathUpError, match="overlap"):
        grid_starts(100, 32, 32)
    with pytest.raises(PathUpError, match="overlap"):
        LevelSpec("patch", 64, -1, 32)


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_level_resize_is_area_average():
    """An overview region of 64 px written at 16 px equals the 4 x 4 block mean of the region."""
    img = _noise(64, 64)
    tile = region_to_tile(img, LevelSpec("overview", 64, 8, 16))
    ref = np.asarray(img, dtype=np.float64).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    assert tile.size == (16, 16) and tile.mode == "RGB"
    assert np.abs(np.asarray(tile, dtype=np.float64) - ref).max() <= 1.0
    # patch level at full resolution: the tile is the region itself
    assert np.array_equal(np.asarray(region_to_tile(img, LevelSpec("patch", 64, 8, 64))), np.asarray(img))


def test_small_region_resize_or_pad():
    """A 64 x 40 region (image shorter than the 64 px tile) becomes a square tile either way."""
    img = _noise(64, 40, seed=1)
    spec = LevelSpec("overview", 64, 0, 16)
    stretched = region_to_tile(img, spec, "resize")
    assert stretched.size == (16, 16)
    padded = np.asarray(region_to_tile(img, spec, "pad"), dtype=np.float64)
    ref = np.asarray(img, dtype=np.float64).reshape(10, 4, 16, 4, 3).mean(axis=(1, 3))
    assert padded.shape == (16, 16, 3)
    assert np.abs(padded[:10] - ref).max() <= 1.0   # content keeps the level's 4x scale, top-left
    assert (padded[10:] == 255).all()              # the rest is white glass


def test_tissue_mask_hand_computed():
    px = np.array([[[255, 255, 255], [220, 150, 200], [200, 195, 198], [10, 0, 5], [120, 60, 140]]], np.uint8)
    # saturations: 0, 70/220, 5/200, (black), 80/140
    assert tissue_mask(px, 0.08).tolist() == [[False, True, False, False, True]]
    assert tissue_mask(px, 0.5).tolist() == [[False, False, False, False, True]]


def test_tissue_fraction_blank_vs_tissue():
    a = np.full((64, 96, 3), 245, np.uint8)
    a[:, :40] = (200, 110, 170)  # tissue on the left 40 columns
    img = Image.fromarray(a)
    for factor in (1, 4):
        tm = TissueMap.from_image(img, 0.08, factor)
        assert tm.fraction(0, 0, 32, 32) == 1.0
        assert tm.fraction(64, 0, 32, 32) == 0.0
        assert tm.fraction(0, 0, 96, 64) == pytest.approx(40 / 96)
    exact = TissueMap.from_image(img, 0.08, 1)
    mask = tissue_mask(a, 0.08)
    for x, y, w, h in tile_grid(96, 64, 24, 4):
        assert exact.fraction(x, y, w, h) == pytest.approx(mask[y:y + h, x:x + w].mean())


def test_cap_is_seeded_and_per_group():
    cands = list(range(100))
    a, left = cap_tiles(cands, 10, 0, "DCIS", "patch", "train")
    assert len(a) == 10 and left == 90 and set(a) <= set(cands) and a == sorted(a)
    assert cap_tiles(cands, 10, 0, "DCIS", "patch", "train")[0] == a
    assert cap_tiles(cands, 10, 1, "DCIS", "patch", "train")[0] != a
    assert cap_tiles(cands, 10, 0, "IC", "patch", "train")[0] != a
    assert cap_tiles(cands, 100, 0, "x") == (cands, 0)
    assert cap_tiles(cands, 0, 0, "x") == (cands, 0)


def _items(n_patients=40, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for p in range(n_patients):
        cls = "a" if p % 2 else "b"
        for j in range(int(rng.integers(1, 5))):
            items.append(SourceItem(path=f"/x/{p}_{j}.png", class_name=cls, patient=str(p), slide=f"{p}-{j % 2}"))
    return items


@pytest.mark.parametrize("split_by", ["patient", "slide"])
def test_no_group_on_two_sides_of_a_split(split_by):
    items = _items()
    splits = assign_splits(items, split_by, 0.2, 0.2, seed=3)
    sides = {}
    for it, s in zip(items, splits):
        sides.setdefault(group_key(it, split_by), set()).add(s)
    assert all(len(v) == 1 for v in sides.values())
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.45 < share["train"] < 0.75 and share["val"] > 0.1 and share["test"] > 0.1
    assert assign_splits(items, split_by, 0.2, 0.2, seed=3) == splits
    assert assign_splits(items, split_by, 0.2, 0.2, seed=4) != splits


def test_given_splits_are_kept_and_followed():
    items = _items(10)
    p0 = [i for i, it in enumerate(items) if it.patient == "0"]
    items[p0[0]] = SourceItem(path=items[p0[0]].path, class_name="b", patient="0", split="test")
    items.append(SourceItem(path="/y/given.png", class_name="a", split="val"))
    splits = assign_splits(items, "patient", 0.1, 0.1)
    assert all(splits[i] == "test" for i in p0)  # the whole patient follows its given split
    assert splits[-1] == "val"
    assert assign_splits(items, "none")[:-1] == ["test" if i == p0[0] else "train" for i in range(len(items) - 1)]
    with pytest.raises(PathUpError, match="fractions"):
        assign_splits(items, "patient", 0.6, 0.5)


def test_breakhis_names():
    assert breakhis_ids("SOB_B_F-14-21998AB-100-001.jpg") == ("21998", "14-21998AB")
    assert breakhis_ids("SOB_M_DC-14-10926-100-001.png") == ("10926", "14-10926")
    assert breakhis_ids("slide_01.png") is None
