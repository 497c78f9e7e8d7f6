"""Weight maps (Eq. 6), the patch grid and the patch combination: hand-computed references."""

import pytest
import torch

from pathup.errors import PathUpError
from pathup.sample.grid import axis_starts, patch_grid
from pathup.sample.tracking import combine_patches
from pathup.sample.weights import patch_weights, pyramid_weights, ramp_weights, uniform_weights


def test_pyramid_hand_computed_5x5():
    # d = min(i, 4 - i) = [0, 1, 2, 1, 0], normalised by the half-width 2.
    a = [0.5, 0.75, 1.0, 0.75, 0.5]
    expected = torch.tensor([[0.5 + 0.5 * min(2 * (x - 0.5), 2 * (y - 0.5)) for y in a] for x in a])
    assert torch.allclose(pyramid_weights(5), expected)
    assert pyramid_weights(5)[2, 2] == 1.0
    assert pyramid_weights(5)[1].tolist() == [0.5, 0.75, 0.75, 0.75, 0.5]


def test_pyramid_hand_computed_4x4():
    w = pyramid_weights(4)
    expected = torch.tensor([[0.5] * 4, [0.5, 1, 1, 0.5], [0.5, 1, 1, 0.5], [0.5] * 4])
    assert torch.equal(w, expected)


def test_pyramid_64_border_centre_and_formula():
    p = 64
    w = pyramid_weights(p).double()
    border = torch.cat([w[0], w[-1], w[:, 0], w[:, -1]])
    assert torch.all(border == 0.5)
    assert w[31, 31] == 1.0 and w[32, 32] == 1.0 and w.max() == 1.0 and w.min() == 0.5
    i = torch.arange(p, dtype=torch.float64)
    d = torch.minimum(i, p - 1 - i)
    ref = 0.5 + 0.5 * torch.minimum(d[:, None], d[None, :]) / ((p - 1) // 2)
    assert torch.allclose(w, ref)
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))


def test_pyramid_non_square_and_tiny():
    w = pyramid_weights(3, 7)
    assert w.shape == (3, 7)
    assert w[1, 3] == 1.0 and torch.all(w[0] == 0.5) and torch.all(w[:, 0] == 0.5)
    assert torch.all(pyramid_weights(2) == 0.5) and torch.all(pyramid_weights(1) == 0.5)


def test_uniform_and_unknown_map():
    assert torch.equal(uniform_weights(3, 4), torch.ones(3, 4))
    assert torch.equal(patch_weights("uniform", 4), torch.ones(4, 4))
    with pytest.raises(PathUpError, match="pyramid, uniform"):
        patch_weights("gaussian", 4)


def test_ramp_weights_only_on_shared_edges():
    w = ramp_weights(6, 6, 2, top=False, left=False)
    assert torch.all(w[:, 0][:-2] == 1) and torch.all(w[0][:-2] == 1)
    assert torch.allclose(w[2, -3:], torch.tensor([1.0, 2 / 3, 1 / 3]))
    assert torch.all(w > 0)


def test_grid_2048_has_49_patches():
    boxes = patch_grid(256, 256, 64, 32)
    assert len(boxes) == 49
    assert {b.top for b in boxes} == {0, 32, 64, 96, 128, 160, 192}


@pytest.mark.parametrize("h,w,p,o", [(37, 23, 16, 8), (23, 37, 16, 5), (17, 17, 16, 0), (101, 64, 64, 32),
                                      (9, 130, 64, 32), (5, 3, 64, 32), (64, 64, 64, 32), (65, 40, 8, 7)])
def test_grid_covers_odd_canvases(h, w, p, o):
    boxes = patch_grid(h, w, p, o)
    cover = torch.zeros(h, w, dtype=torch.int32)
    for b in boxes:
        assert b.height == min(p, h) and b.width == min(p, w)
        assert b.top >= 0 and b.left >= 0 and b.top + b.height <= h and b.left + b.width <= w
        cover[b.slices] += 1
    assert torch.all(cover >= 1)
    # The last row and column are aligned to the border.
    assert max(b.top + b.height for b in boxes) == h and max(b.left + b.width for b in boxes) == w
    # Strides are p - o except for the last, border-aligned start.
    tops = sorted({b.top for b in boxes})
    assert all(b - a == p - o for a, b in zip(tops[:-2], tops[1:-1]))
    assert len(boxes) == len(set(boxes))


def test_patch_larger_than_canvas_is_one_patch():
    (box,) = patch_grid(10, 12, 64, 32)
    assert (box.top, box.left, box.height, box.width) == (0, 0, 10, 12)


def test_axis_starts_and_bad_overlap():
    assert axis_starts(10, 4, 2) == [0, 2, 4, 6]
    assert axis_starts(11, 4, 2) == [0, 2, 4, 6, 7]
    for bad, name in [((10, 4, 4), "latent_overlap"), ((10, 4, -1), "latent_overlap"), ((10, 0, 0), "latent_patch")]:
        with pytest.raises(PathUpError, match=name) as err:
            axis_starts(*bad)
        assert "patch_size" not in str(err.value)  # the option's older name


def test_one_grid_rule_for_tiles_latent_patches_and_seam_lines():
    from pathup.data.tiling import grid_starts
    from pathup.metrics.seam import patch_starts

    for length in (1, 7, 63, 64, 65, 126, 700):
        for patch, overlap in ((64, 32), (8, 0), (5, 4), (256, 32)):
            want = axis_starts(length, patch, overlap)
            assert grid_starts(length, patch, overlap) == want == patch_starts(length, patch, patch - overlap)
            assert want[0] == 0 and want[-1] == max(0, length - patch)  # the last start aligned to the edge


def test_combine_hand_computed():
    # A 4x6 canvas, two 4x4 patches at columns 0 and 2 with constant values 1 and 3.
    boxes = patch_grid(4, 6, 4, 2)
    assert [(b.top, b.left) for b in boxes] == [(0, 0), (0, 2)]
    patches = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 3.0)])
    out = combine_patches(patches, boxes, pyramid_weights(4), (4, 6))[0, 0]
    # Row 1: patch A weights (.5, 1, 1, .5) at cols 0-3, patch B (.5, 1, 1, .5) at cols 2-5.
    row1 = [1.0, 1.0, (1 * 1 + 3 * 0.5) / 1.5, (1 * 0.5 + 3 * 1) / 1.5, 3.0, 3.0]
    assert torch.allclose(out[1], torch.tensor(row1))
    assert torch.allclose(out[0], torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))  # border: equal weights
    uni = combine_patches(patches, boxes, uniform_weights(4), (4, 6))[0, 0]
    assert torch.allclose(uni[1], torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))
