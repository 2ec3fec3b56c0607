"""FID and KID: the Frechet distance against closed forms, and the pipeline with a stand-in Inception."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import evaluate
import fid
from cli import InputError
from conftest import ROOT, make_dataset
from generator import Generator, init_weights


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    # Commuting covariances (same eigenvectors): tr sqrt(S1 S2) = sum sqrt(a_i b_i)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(expected)
    # Any 2x2 pair: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S1 S2 (positive eigenvalues)
    s1, s2 = np.array([[2.0, 0.7], [0.7, 1.0]]), np.array([[0.5, -0.2], [-0.2, 3.0]])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = 1 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert fid.frechet_distance(np.zeros(2), s1, np.array([1.0, 0.0]), s2) == pytest.approx(expected)
    # From samples: the estimate converges to the distance of the Gaussians they come from
    x = rng.multivariate_normal([0, 0], s1, 200_000)
    y = rng.multivariate_normal([1, 0], s2, 200_000)
    assert fid.fid_from_features(x, y) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("n, d", [(200, 16), (6, 2048)])  # well-conditioned, and singular like few images
def test_fid_of_a_set_with_itself_is_zero(n, d):
    f = np.random.default_rng(1).normal(size=(n, d))
    assert abs(fid.fid_from_features(f, f)) < 1e-6 * d
    assert fid.fid_from_features(f, f + 0.5) == pytest.approx(0.25 * d, rel=1e-6)  # only the means differ


def test_few_images_shortcut_equals_the_covariance_formula():
    rng = np.random.default_rng(3)
    f, g = rng.normal(size=(20, 64)), rng.normal(size=(30, 64)) * 1.5 + 0.2  # 20 x 30 < 64^2: shortcut
    by_covariance = fid.frechet_distance(f.mean(0), np.cov(f, rowvar=False), g.mean(0), np.cov(g, rowvar=False))
    assert fid.fid_from_features(f, g) == pytest.approx(by_covariance, rel=1e-9)


def test_kid_is_unbiased():
    rng = np.random.default_rng(2)
    f, g = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))  # two samples of one distribution
    same, shifted = fid.scores(f, g), fid.scores(f, g + 0.5)
    assert abs(same["kid"]) < 0.02 * shifted["kid"] and shifted["kid"] > 10 * shifted["kid_std"]
    with pytest.raises(InputError, match="KID needs at least 2 images"):
        fid.kid_from_features(f[:1], g)


def test_pipeline_with_random_inception_weights(tmp_path, inception_file):
    net = fid.load_inception(str(inception_file))
    images = torch.rand(3, 3, 256, 256) * 2 - 1
    f = fid.features(net, images)
    assert f.shape == (3, fid.FEATURES) and np.isfinite(f).all() and f.std() > 0
    assert np.array_equal(f, fid.features(net, images))  # no dropout, no batch statistics
    assert abs(fid.fid_from_features(f, f)) < 1e-6
    # evaluate.py --fid: generated maps against the targets of the split
    data = make_dataset(tmp_path / "data", n_train=1, n_val=3)
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    evaluate.main(["--weights", str(tmp_path / "G.pt"), "--data-root", str(data), "--out", str(tmp_path / "ev"),
                   "--fid", "--inception-weights", str(inception_file), "--device", "cpu"])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["fid"] > 0 and np.isfinite(metrics["kid"]) and metrics["images"] == 3


def test_fid_without_weights_is_one_clear_line(tmp_path, inception_file):
    data = make_dataset(tmp_path / "data", n_train=1, n_val=1)
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home")}  # an empty cache
    r = subprocess.run([sys.executable, "evaluate.py", "--weights", str(tmp_path / "G.pt"), "--data-root",
                        str(data), "--out", str(tmp_path / "ev"), "--fid"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fid.WEIGHTS_NAME in r.stderr and "--inception-weights" in r.stderr
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in r.stderr
    with pytest.raises(InputError, match="--inception-weights .*missing.pth: no such file"):
        fid.load_inception(str(tmp_path / "missing.pth"))
    (tmp_path / "other.pth").write_bytes(b"")
    with pytest.raises(InputError, match="other.pth: empty file"):
        fid.load_inception(str(tmp_path / "other.pth"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match=f"other.pth: not the FID Inception weights {fid.WEIGHTS_NAME}"):
        fid.load_inception(str(tmp_path / "other.pth"))
    # The torch hub cache is where pytorch-fid puts a download; a file there is found without the flag
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / fid.WEIGHTS_NAME
    cached.parent.mkdir(parents=True)
    os.symlink(inception_file, cached)
    os.environ["TORCH_HOME"], old = str(tmp_path / "torch_home"), os.environ.get("TORCH_HOME")
    try:
        assert fid.find_weights() == cached
    finally:
        os.environ.pop("TORCH_HOME") if old is None else os.environ.__setitem__("TORCH_HOME", old)
