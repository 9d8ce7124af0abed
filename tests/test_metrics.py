"""Evaluation metrics: Frechet distance, KID, Inception Score, precision/recall and the digits
feature network, each checked against an analytic expectation."""
import numpy as np
import pytest

from diffusion_jax.evaluation import frechet


# --- Frechet distance ------------------------------------------------------------------------

def test_frechet_distance_of_a_set_against_its_own_statistics_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    mu, sigma = frechet.feature_statistics(features)
    assert frechet.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a, b = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_symmetric_for_full_covariances():
    rng = np.random.default_rng(3)
    stats1 = frechet.feature_statistics(rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)))
    stats2 = frechet.feature_statistics(rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 1.0)
    assert frechet.frechet_distance(*stats1, *stats2) == pytest.approx(
        frechet.frechet_distance(*stats2, *stats1), rel=1e-8)


def test_frechet_distance_is_finite_for_rank_deficient_covariances():
    rng = np.random.default_rng(0)
    stats1 = frechet.feature_statistics(rng.normal(size=(10, 64)))
    stats2 = frechet.feature_statistics(rng.normal(size=(12, 64)) + 0.5)
    distance = frechet.frechet_distance(*stats1, *stats2)
    assert np.isfinite(distance) and distance > 0
    assert frechet.frechet_distance(*stats1, *stats1) == pytest.approx(0.0, abs=1e-8)


def test_running_statistics_over_batches_equal_one_shot_statistics():
    features = np.random.default_rng(0).normal(loc=100.0, size=(317, 12))
    running = frechet.RunningStatistics()
    for start in range(0, len(features), 50):
        running.update(features[start:start + 50])
    mu, sigma = running.statistics()
    mu_ref, sigma_ref = frechet.feature_statistics(features)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-9, atol=1e-12)


def test_statistics_npz_round_trip_uses_pytorch_fid_keys(tmp_path):
    mu, sigma = frechet.feature_statistics(np.random.default_rng(0).normal(size=(50, 5)))
    path = tmp_path / "stats.npz"
    frechet.save_statistics(path, mu, sigma)
    with np.load(path) as data:
        assert set(data.files) == {"mu", "sigma"}
    mu2, sigma2 = frechet.load_statistics(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)


# --- digits feature network ------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_features():
    from diffusion_jax.data.digits import load_digits_arrays
    from diffusion_jax.evaluation.digits_features import digits_feature_fn

    fn = digits_feature_fn()
    train_images, _ = load_digits_arrays("train")
    test_images, test_labels = load_digits_arrays("test")
    noise = np.random.default_rng(0).uniform(-1, 1, size=(300, 8, 8, 1)).astype(np.float32)
    return {"train": fn(train_images), "test": fn(test_images), "test_labels": test_labels,
            "noise": fn(noise)}


def test_digits_classifier_loads_and_classifies_the_test_split(digits_features):
    features, logits = digits_features["test"]
    assert features.shape == (297, 64) and logits.shape == (297, 10)
    assert np.mean(logits.argmax(-1) == digits_features["test_labels"]) > 0.9


def test_digits_frechet_distance_separates_real_digits_from_noise(digits_features):
    train_stats = frechet.feature_statistics(digits_features["train"][0])
    test_distance = frechet.frechet_distance(*frechet.feature_statistics(digits_features["test"][0]),
                                             *train_stats)
    noise_distance = frechet.frechet_distance(*frechet.feature_statistics(digits_features["noise"][0]),
                                              *train_stats)
    assert test_distance < 0.1 * noise_distance


def test_digits_feature_fn_is_independent_of_batching():
    from diffusion_jax.data.digits import load_digits_arrays
    from diffusion_jax.evaluation.digits_features import digits_feature_fn

    images, _ = load_digits_arrays("test")
    features, logits = digits_feature_fn(batch_size=512)(images[:37])
    features_small, logits_small = digits_feature_fn(batch_size=16)(images[:37])
    np.testing.assert_allclose(features, features_small, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, logits_small, rtol=1e-5, atol=1e-5)


# --- KID -------------------------------------------------------------------------------------

def test_kid_of_identical_distributions_is_zero_within_its_spread():
    from diffusion_jax.evaluation.kid import kernel_inception_distance

    rng = np.random.default_rng(0)
    mean, std = kernel_inception_distance(rng.normal(size=(600, 32)), rng.normal(size=(600, 32)),
                                          num_subsets=50, subset_size=300)
    assert abs(mean) < 3 * std


def test_kid_is_clearly_positive_for_shifted_distributions():
    from diffusion_jax.evaluation.kid import kernel_inception_distance

    rng = np.random.default_rng(0)
    mean, std = kernel_inception_distance(rng.normal(size=(600, 32)), rng.normal(size=(600, 32)) + 0.5,
                                          num_subsets=50, subset_size=300)
    assert mean > 10 * std and mean > 0


def test_kid_rejects_subsets_larger_than_the_sets():
    from diffusion_jax.evaluation.kid import kernel_inception_distance

    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(np.zeros((10, 4)), np.zeros((20, 4)), subset_size=11)


# --- Inception Score -------------------------------------------------------------------------

def test_inception_score_of_uniform_one_hot_predictions_is_the_number_of_classes():
    from diffusion_jax.evaluation.inception_score import inception_score

    probs = np.eye(10)[np.arange(1000) % 10]
    mean, std = inception_score(probs, splits=10, from_logits=False)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_identical_predictions_is_one():
    from diffusion_jax.evaluation.inception_score import inception_score

    logits = np.tile(np.random.default_rng(0).normal(size=(1, 10)), (200, 1))
    mean, _ = inception_score(logits, splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_from_logits_equals_score_from_softmax():
    from scipy.special import softmax

    from diffusion_jax.evaluation.inception_score import inception_score

    logits = np.random.default_rng(0).normal(scale=3.0, size=(300, 10))
    assert inception_score(logits, splits=3) == pytest.approx(
        inception_score(softmax(logits, axis=1), splits=3, from_logits=False), rel=1e-10)


# --- precision / recall ----------------------------------------------------------------------

def test_precision_recall_of_identical_sets_is_one_and_one():
    from diffusion_jax.evaluation.precision_recall import precision_recall

    features = np.random.default_rng(0).normal(size=(400, 16))
    assert precision_recall(features, features.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero_and_zero():
    from diffusion_jax.evaluation.precision_recall import precision_recall

    rng = np.random.default_rng(0)
    assert precision_recall(rng.normal(size=(300, 16)), rng.normal(size=(200, 16)) + 100.0) == (0.0, 0.0)


def test_precision_recall_of_a_collapsed_generator_has_high_precision_low_recall():
    from diffusion_jax.evaluation.precision_recall import precision_recall

    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 2))
    fake = 0.1 * rng.normal(size=(1000, 2))  # all inside the real bulk, covering little of it
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.9 and recall < 0.3


def test_knn_radius_excludes_the_point_itself():
    from diffusion_jax.evaluation.precision_recall import _knn_radii_squared

    points = np.array([[0.0], [1.0], [3.0], [6.0]])
    np.testing.assert_allclose(_knn_radii_squared(points, 1), [1.0, 1.0, 4.0, 9.0])
    np.testing.assert_allclose(_knn_radii_squared(points, 2), [9.0, 4.0, 9.0, 25.0])
