"""Metric maths against independent references: scipy, sklearn, torchmetrics, torch-fidelity, hand values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from pathup.errors import PathUpError
from pathup.metrics.fid import feature_statistics, fid, frechet_distance
from pathup.metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from pathup.metrics.prdc import knn_radii, pairwise_distances_chunked, precision_recall


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _closed_form(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def _with_exact_moments(rng, n, mu, sigma):
    """n samples whose sample mean is exactly mu and sample covariance (ddof=1) exactly sigma."""
    z = rng.normal(size=(n, len(mu)))
    z -= z.mean(0)
    c = np.cov(z, rowvar=False)
    white = z @ np.linalg.inv(np.linalg.cholesky(c)).T  # sample cov = I
    return white @ np.linalg.cholesky(sigma).T + mu


def test_frechet_distance_matches_scipy_closed_form():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_closed_form(mu1, s1, mu2, s2), rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # Isotropic case by hand: |mu1 - mu2|^2 + d (a - b)^2 for N(mu, a^2 I), N(mu', b^2 I).
    assert frechet_distance(np.zeros(3), 4 * np.eye(3), np.ones(3), np.eye(3)) == pytest.approx(3 + 3 * 1.0)


def test_fid_of_features_with_known_gaussian_moments():
    rng = np.random.default_rng(1)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) + 1
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    x = _with_exact_moments(rng, 200, mu1, s1)
    y = _with_exact_moments(rng, 150, mu2, s2)
    m, s = feature_statistics(x)
    np.testing.assert_allclose(m, mu1, atol=1e-10)
    np.testing.assert_allclose(s, s1, atol=1e-10)
    assert fid(x, y) == pytest.approx(_closed_form(mu1, s1, mu2, s2), rel=1e-8)
    assert fid(x, y) == pytest.approx(fid(y, x), rel=1e-10)


def test_fid_low_rank_path_matches_scipy_closed_form():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(20, 50)), rng.normal(size=(30, 50)) * 1.3 + 0.2  # fewer samples than dimensions
    ref = _closed_form(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fid(x, y) == pytest.approx(ref, rel=1e-6)
    assert fid(x, y) == pytest.approx(frechet_distance(*feature_statistics(x), *feature_statistics(y)), rel=1e-6)


def test_kid_hand_computed_example():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # gamma = 1/2, coef0 = 1, degree 3: k(x1, x1) = 1.5^3 = 3.375, k(x1, x2) = 1.
    kxx = polynomial_kernel(x, x)
    np.testing.assert_allclose(kxx.numpy(), [[3.375, 1.0], [1.0, 3.375]])
    kyy = polynomial_kernel(y, y)
    np.testing.assert_allclose(kyy.numpy(), [[8.0, 1.0], [1.0, 1.0]])
    kxy = polynomial_kernel(x, y)
    np.testing.assert_allclose(kxy.numpy(), [[3.375, 1.0], [3.375, 1.0]])
    # (2 / 2) + (2 / 2) - 2 * 8.75 / 4 = -2.375
    assert mmd2_unbiased(kxx, kyy, kxy) == pytest.approx(-2.375)
    mean, std, m = kid(x, y, subsets=3, subset_size=2)
    assert (mean, std, m) == (pytest.approx(-2.375), pytest.approx(0.0), 2)


def test_kid_subset_size_adapts_to_small_sets():
    rng = np.random.default_rng(2)
    mean, _std, m = kid(rng.normal(size=(5, 4)), rng.normal(size=(8, 4)), subsets=4, subset_size=1000)
    assert m == 5 and np.isfinite(mean)
    with pytest.raises(PathUpError, match="at least 2"):
        kid(rng.normal(size=(1, 4)), rng.normal(size=(8, 4)))


def test_fid_and_kid_agree_with_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 32

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(3)
    real = torch.randn(120, 32, generator=g) * 2
    fake = torch.randn(100, 32, generator=g) * 1.5 + 0.3
    tm_fid = FrechetInceptionDistance(feature=Identity())
    tm_fid.update(real, real=True)
    tm_fid.update(fake, real=False)
    assert fid(real, fake) == pytest.approx(float(tm_fid.compute()), abs=1e-3)
    # KID on full sets (one subset of all samples: the estimate does not depend on the draw).
    tm_kid = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=100)
    tm_kid.update(real[:100], real=True)
    tm_kid.update(fake, real=False)
    tm_mean, _ = tm_kid.compute()
    mean, _, _ = kid(real[:100], fake, subsets=1, subset_size=100)
    assert 1000 * mean == pytest.approx(1000 * float(tm_mean), abs=1e-3)


def test_fid_kid_prc_agree_with_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(4)
    real = torch.randn(300, 24, generator=g)
    fake = torch.randn(250, 24, generator=g) * 1.2 + 0.2
    ref = fid_statistics_to_metric(fid_features_to_statistics(real.double()),
                                   fid_features_to_statistics(fake.double()), False)["frechet_inception_distance"]
    assert fid(real, fake) == pytest.approx(ref, abs=1e-3)
    ref_kid = kid_features_to_metric(real, fake, kid_subsets=20, kid_subset_size=50, rng_seed=7, verbose=False,
                                     kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                     kid_kernel_poly_coef0=1)
    mean, std, _ = kid(real, fake, subsets=20, subset_size=50, seed=7)
    assert 1000 * mean == pytest.approx(1000 * ref_kid["kernel_inception_distance_mean"], abs=1e-3)
    assert 1000 * std == pytest.approx(1000 * ref_kid["kernel_inception_distance_std"], abs=1e-3)
    # torch-fidelity's convention: features_1 = generated, features_2 = real.
    ref_prc = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False,
                                     verbose=False)
    p, r = precision_recall(real, fake, k=3, chunk_size=64)
    assert p == pytest.approx(ref_prc["precision"], abs=1e-3)
    assert r == pytest.approx(ref_prc["recall"], abs=1e-3)
    assert 0.05 < p < 0.999 and 0.05 < r < 0.999  # a non-trivial case


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 16))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)
    far = rng.normal(size=(200, 16)) + 100.0
    p, r = precision_recall(x, far)
    assert p < 0.01 and r < 0.01
    # Half of the fake samples on the real manifold, half far away: precision about 0.5, recall lower.
    mixed = np.concatenate([x[:100] + 1e-3, far[:100]])
    p, r = precision_recall(x, mixed)
    assert p == pytest.approx(0.5, abs=0.02)


def test_chunked_distances_equal_unchunked_and_sklearn():
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(6)
    a = torch.randn(53, 10, generator=g)
    b = torch.randn(41, 10, generator=g)
    full = torch.cdist(a, b)
    for chunk in (1, 7, 41, 1000):
        torch.testing.assert_close(pairwise_distances_chunked(a, b, chunk), full)
    nn = NearestNeighbors(n_neighbors=4).fit(a.numpy())
    ref = nn.kneighbors(a.numpy())[0][:, 3]  # the 3rd neighbour besides the point itself
    for chunk in (5, 17, 100):
        np.testing.assert_allclose(knn_radii(a, 3, chunk).numpy(), ref, rtol=1e-5, atol=1e-5)
    x, y = torch.randn(97, 10, generator=g), torch.randn(89, 10, generator=g) + 0.3
    assert precision_recall(x, y, chunk_size=13) == precision_recall(x, y, chunk_size=10_000)


def test_bad_feature_input_messages():
    rng = np.random.default_rng(7)
    with pytest.raises(PathUpError, match="more than 3"):
        precision_recall(rng.normal(size=(3, 4)), rng.normal(size=(10, 4)))
    with pytest.raises(PathUpError, match="differ in dimension"):
        fid(rng.normal(size=(10, 4)), rng.normal(size=(10, 5)))
    with pytest.raises(PathUpError, match="NaN"):
        fid(np.full((10, 4), np.nan), rng.normal(size=(10, 4)))
    with pytest.raises(PathUpError, match="empty"):
        kid(np.zeros((0, 4)), rng.normal(size=(10, 4)))
