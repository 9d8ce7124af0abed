"""The eval metrics selection (the resumable sampling is tested in test_launcher.py)."""
import numpy as np
import pytest

from configs.ddpm import cifar10, digits
from diffusion_jax.errors import ConfigError
from diffusion_jax.evaluation.metrics import dataset_metrics


def test_fid_without_inception_weights_names_the_config_key():
    with pytest.raises(ConfigError, match="eval.inception_weights"):
        dataset_metrics(cifar10.get_config(), np.zeros((4, 32, 32, 3), np.float32))


def test_digits_metrics_rank_real_digits_above_noise():
    from diffusion_jax.data.digits import load_digits_arrays

    config = digits.get_config()
    real, _ = load_digits_arrays("test")
    noise = np.random.default_rng(0).uniform(-1, 1, real.shape).astype(np.float32)
    good, bad = dataset_metrics(config, real), dataset_metrics(config, noise)
    assert good["digits_frechet_distance"] < 0.2 * bad["digits_frechet_distance"]
    assert good["digits_classifier_score"] > 2 * bad["digits_classifier_score"]
    assert good["recall"] > bad["recall"]


def test_reference_statistics_are_written_and_read_back(tmp_path):
    from diffusion_jax.data.digits import load_digits_arrays

    config = digits.get_config()
    config.eval.num_reference = 500
    samples, _ = load_digits_arrays("test")
    first = dataset_metrics(config, samples, str(tmp_path))
    path = tmp_path / "reference_stats.npz"
    with np.load(path) as stats:
        assert stats["mu"].shape == (stats["sigma"].shape[0],)
    config.eval.reference_stats = str(path)
    again = dataset_metrics(config, samples)
    assert again["digits_frechet_distance"] == pytest.approx(first["digits_frechet_distance"],
                                                             rel=1e-9)
    config.eval.reference_stats = str(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="eval.reference_stats"):
        dataset_metrics(config, samples)


def test_fid_uses_and_records_the_configured_inception_protocol(tmp_path, monkeypatch):
    """`eval.inception_protocol` reaches the feature network and is recorded beside the FID;
    an unknown protocol is a ConfigError listing the valid ones."""
    from diffusion_jax.evaluation import inception, metrics as sample_metrics

    seen = []

    def features(path, batch_size, mesh, protocol):
        seen.append(protocol)
        rng = np.random.default_rng(len(seen))
        return lambda images: (rng.normal(size=(len(images), 8)), rng.normal(size=(len(images), 10)))

    monkeypatch.setattr(inception, "inception_feature_fn", features)
    monkeypatch.setattr(sample_metrics, "_reference_images", lambda config, n, shape: np.zeros((16, 32, 32, 3)))
    weights = tmp_path / "inception.npz"
    weights.write_bytes(b"")
    config = cifar10.get_config()
    config.eval.inception_weights = str(weights)
    samples = np.zeros((16, 32, 32, 3), np.float32)
    for protocol in ("tensorflow", "pytorch_fid"):
        config.eval.inception_protocol = protocol
        metrics = dataset_metrics(config, samples)
        assert metrics["inception_protocol"] == protocol and "fid" in metrics
    assert seen == ["tensorflow", "pytorch_fid"]
    config.eval.inception_protocol = "clean_fid"
    with pytest.raises(ConfigError, match="pytorch_fid, tensorflow"):
        dataset_metrics(config, samples)
