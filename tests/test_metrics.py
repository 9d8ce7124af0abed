"""Evaluation metrics: Frechet distance, KID, Inception Score, precision/recall and the digits
feature network, each checked against a closed form or an analytic expectation."""
import jax
import numpy as np
import pytest

from diffusion_jax.evaluation import frechet
from diffusion_jax.evaluation.inception_score import inception_score
from diffusion_jax.evaluation.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from diffusion_jax.evaluation.precision_recall import knn_radii, precision_recall


# --- Frechet distance ------------------------------------------------------------------------

def _exact_frechet_distance(x, y):
    """Closed form for sample covariances S = A A^T: the nonzero eigenvalues of S_1 S_2 are the
    squared singular values of A_1^T A_2, so Tr (S_1 S_2)^(1/2) = ||A_1^T A_2||_* (nuclear norm)."""
    a1 = (x - x.mean(0)).T / np.sqrt(len(x) - 1)
    a2 = (y - y.mean(0)).T / np.sqrt(len(y) - 1)
    trace_sqrt = np.linalg.svd(a1.T @ a2, compute_uv=False).sum()
    return (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum(a1 * a1) + np.sum(a2 * a2)
            - 2.0 * trace_sqrt)


def test_frechet_distance_of_a_set_against_its_own_statistics_is_zero():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    mu, sigma = frechet.feature_statistics(features)
    assert frechet.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a, b = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_commuting_near_singular_covariances_is_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(32, 32)))  # shared eigenvectors, so S_1 S_2 = S_2 S_1
    a = np.concatenate([rng.uniform(0.5, 2.0, 16), np.zeros(8), np.full(8, 1e-13)])
    b = np.concatenate([rng.uniform(0.5, 2.0, 8), np.zeros(8), np.full(8, 1e-13), np.ones(8)])
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    distance = frechet.frechet_distance(np.zeros(32), (q * a) @ q.T, np.zeros(32), (q * b) @ q.T)
    assert distance == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n1, n2, dim", [(10, 12, 64), (40, 50, 256)])
def test_frechet_distance_with_fewer_samples_than_dimensions_matches_the_exact_value(n1, n2, dim):
    rng = np.random.default_rng(dim)
    x, y = rng.normal(size=(n1, dim)), rng.normal(size=(n2, dim)) + 0.1
    distance = frechet.frechet_distance(*frechet.feature_statistics(x), *frechet.feature_statistics(y))
    assert np.isfinite(distance) and distance > 0
    assert distance == pytest.approx(_exact_frechet_distance(x, y), rel=1e-6)
    stats = frechet.feature_statistics(x)
    assert frechet.frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_is_symmetric_for_full_covariances():
    rng = np.random.default_rng(3)
    stats1 = frechet.feature_statistics(rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)))
    stats2 = frechet.feature_statistics(rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 1.0)
    assert frechet.frechet_distance(*stats1, *stats2) == pytest.approx(
        frechet.frechet_distance(*stats2, *stats1), rel=1e-8)


def test_statistics_npz_round_trip_uses_pytorch_fid_keys(tmp_path):
    mu, sigma = frechet.feature_statistics(np.random.default_rng(0).normal(size=(50, 5)))
    path = tmp_path / "stats.npz"
    frechet.save_statistics(path, mu, sigma)
    with np.load(path) as data:
        assert set(data.files) == {"mu", "sigma"}
    mu2, sigma2 = frechet.load_statistics(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)


# --- KID -------------------------------------------------------------------------------------

def test_mmd2_unbiased_matches_its_definition_term_by_term():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1.0) ** 3  # noqa: E731
    m = len(x)
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    expected = within / (m * (m - 1)) - 2.0 * cross / m ** 2
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(polynomial_kernel(x, y)[1, 2], k(x[1], y[2]), rtol=1e-12)


def test_mmd2_is_unbiased_over_many_draws_of_identical_distributions():
    rng = np.random.default_rng(0)
    values = np.array([mmd2_unbiased(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)))
                       for _ in range(2000)])
    standard_error = values.std() / np.sqrt(len(values))
    assert abs(values.mean()) < 3 * standard_error


def test_kid_is_clearly_positive_for_shifted_distributions():
    rng = np.random.default_rng(0)
    mean, std = kernel_inception_distance(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) + 0.5,
                                          num_subsets=20, subset_size=150)
    assert mean > 10 * std and mean > 0


def test_kid_subset_size_is_capped_at_the_sample_count():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
    mean, std = kernel_inception_distance(x[:30], y, num_subsets=3)  # default size 1000 -> 30
    assert mean == pytest.approx(mmd2_unbiased(x[:30], y), rel=1e-10) and std < 1e-12


# --- Inception Score -------------------------------------------------------------------------

def test_inception_score_of_uniform_one_hot_predictions_is_the_number_of_classes():
    probs = np.eye(10)[np.arange(1000) % 10]
    mean, std = inception_score(probs, splits=10, from_logits=False)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_identical_predictions_is_one():
    logits = np.tile(np.random.default_rng(0).normal(size=(1, 10)), (200, 1))
    mean, _ = inception_score(logits, splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_from_logits_equals_score_from_softmax():
    from scipy.special import softmax

    logits = np.random.default_rng(0).normal(scale=3.0, size=(300, 10))
    assert inception_score(logits, splits=3) == pytest.approx(
        inception_score(softmax(logits, axis=1), splits=3, from_logits=False), rel=1e-10)


# --- precision / recall ----------------------------------------------------------------------

def test_precision_recall_of_identical_sets_is_one_and_one():
    features = np.random.default_rng(0).normal(size=(400, 16))
    assert precision_recall(features, features.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero_and_zero():
    rng = np.random.default_rng(0)
    assert precision_recall(rng.normal(size=(300, 16)), rng.normal(size=(200, 16)) + 100.0) == (0.0, 0.0)


def test_precision_recall_of_a_collapsed_generator_has_high_precision_low_recall():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 2))
    fake = 0.1 * rng.normal(size=(1000, 2))  # all inside the real bulk, covering little of it
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.9 and recall < 0.3


def test_knn_radius_is_the_kth_neighbour_distance_excluding_the_point_itself():
    points = np.array([[0.0], [1.0], [3.0], [6.0]])
    np.testing.assert_allclose(knn_radii(points, 1), [1.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(knn_radii(points, 2), [3.0, 2.0, 3.0, 5.0])


def test_blocked_precision_recall_equals_brute_force(monkeypatch):
    from diffusion_jax.evaluation import precision_recall as pr

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(120, 3)), 0.7 * rng.normal(size=(90, 3)) + 0.3

    def brute_force(manifold, queries, k=3):
        within = np.linalg.norm(manifold[:, None] - manifold[None], axis=-1)
        radii = np.sort(within, axis=1)[:, k]  # column 0 is the point itself
        across = np.linalg.norm(queries[:, None] - manifold[None], axis=-1)
        return np.mean(np.any(across <= radii[None], axis=1))

    expected = (brute_force(real, fake), brute_force(fake, real))
    monkeypatch.setattr(pr, "_BLOCK_ELEMENTS", 7 * 120)  # blocks of 7 rows, last one padded
    assert precision_recall(real, fake) == pytest.approx(expected, abs=1e-12)


# --- digits feature network ------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_features():
    from diffusion_jax.data.digits import load_digits_arrays
    from diffusion_jax.evaluation.digits_features import digits_feature_fn

    fn = digits_feature_fn()
    train_images, _ = load_digits_arrays("train")
    test_images, test_labels = load_digits_arrays("test")
    noise = np.random.default_rng(0).normal(size=(300, 8, 8, 1)).clip(-1, 1).astype(np.float32)
    return {"train": fn(train_images), "test": fn(test_images), "test_labels": test_labels,
            "noise": fn(noise)}


def test_digits_classifier_loads_from_the_package_and_classifies_the_test_split(digits_features):
    from diffusion_jax.evaluation.digits_features import WEIGHTS_PATH

    assert WEIGHTS_PATH.startswith(str(__import__("diffusion_jax").__path__[0]))
    features, logits = digits_features["test"]
    assert features.shape == (297, 64) and logits.shape == (297, 10)
    assert np.mean(logits.argmax(-1) == digits_features["test_labels"]) > 0.9


def test_digits_frechet_distance_of_test_split_is_much_smaller_than_of_noise(digits_features):
    train_stats = frechet.feature_statistics(digits_features["train"][0])
    test_distance = frechet.frechet_distance(*frechet.feature_statistics(digits_features["test"][0]),
                                             *train_stats)
    noise_distance = frechet.frechet_distance(*frechet.feature_statistics(digits_features["noise"][0]),
                                              *train_stats)
    assert test_distance < 0.1 * noise_distance


def test_digits_classifier_score_of_real_digits_is_near_the_number_of_classes(digits_features):
    score, _ = inception_score(digits_features["test"][1], splits=1)
    noise_score, _ = inception_score(digits_features["noise"][1], splits=1)
    assert score > 8.0 and noise_score < 0.5 * score


def test_digits_features_sharded_over_a_mesh_equal_unsharded():
    from diffusion_jax.data.digits import load_digits_arrays
    from diffusion_jax.evaluation.digits_features import digits_feature_fn
    from diffusion_jax.parallel import make_mesh

    images, _ = load_digits_arrays("test")
    devices = len(jax.devices())
    unsharded = digits_feature_fn(batch_size=512)(images[:37])
    sharded = digits_feature_fn(batch_size=2 * devices, mesh=make_mesh())(images[:37])
    for a, b in zip(unsharded, sharded):
        assert b.shape == a.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
