"""evaluate.py and the helpers of metrics.py: Fréchet distance, PUL, sampling, Inception pipeline."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import matplotlib.axes
import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

import checkpoint
import evaluate
import report
import scoring
import generate
import metrics
import utils
from conftest import cli_error, run_main
from classifiers import LeNet5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_ARGS = dict(size=16, style_dim=16, n_mlp=1, channel_max=16)


# --- Fréchet distance ----------------------------------------------------------------------


def random_rotation(dim, rng):
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def random_spd(dim, rng):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_closed_form_commuting_non_diagonal():
    rng = np.random.default_rng(0)
    dim = 12
    q = random_rotation(dim, rng)
    a, b = rng.uniform(0.1, 3, dim), rng.uniform(0.1, 3, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    sigma1, sigma2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # non-diagonal, same eigenvectors
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_closed_form_non_commuting():
    """Σ1 = c·I and a general Σ2: tr (Σ1 Σ2)^½ = √c · Σ √eig(Σ2)."""
    rng = np.random.default_rng(1)
    dim, c = 10, 2.5
    sigma2 = random_spd(dim, rng)
    mu1, mu2 = rng.standard_normal(dim), np.zeros(dim)
    expected = (np.sum(mu1 ** 2) + c * dim + np.trace(sigma2)
                - 2 * np.sqrt(c) * np.sum(np.sqrt(np.linalg.eigvalsh(sigma2))))
    assert metrics.frechet_distance(mu1, c * np.eye(dim), mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(2)
    for dim in (2, 64):
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        sigma1, sigma2 = random_spd(dim, rng), random_spd(dim, rng)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
        reference = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
        assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.from_numpy(np.random.default_rng(3).standard_normal((500, 32)) @ random_spd(32, np.random.default_rng(4)))
    mu, sigma = metrics.feature_statistics(features)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(utils.UserError, match="do not match"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_is_the_unbiased_cubic_kernel_mmd_by_hand():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), rng.normal(0.5, 1.0, size=(30, 5))
    x, y = torch.from_numpy(x).float(), torch.from_numpy(y).float()  # KID runs in float32
    kernel = lambda a, b: (a.double() @ b.double().T / 5 + 1) ** 3
    m = 30
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    by_hand = ((kxx.sum() - kxx.trace()) + (kyy.sum() - kyy.trace())) / (m * (m - 1)) - 2 * kxy.mean()
    # one subset of all 30 samples: a permutation of each set, which the estimate does not see
    kid, kid_std, size = metrics.kernel_inception_distance(x, y, subset_size=100, subsets=1)
    assert size == 30 and kid_std == 0
    assert kid == pytest.approx(float(by_hand), rel=1e-5)
    # equal distributions: about 0 (unbiased), far below a shifted pair
    same = metrics.kernel_inception_distance(torch.randn(400, 5), torch.randn(400, 5), 200, 20)[0]
    shifted = metrics.kernel_inception_distance(torch.randn(400, 5), torch.randn(400, 5) + 0.5, 200, 20)[0]
    assert abs(same) < 0.05 * shifted


def test_precision_recall_on_points_of_a_line():
    """real = 0..9, generated = 0..4 on a line, k = 3: every generated point is a real one
    (precision 1); the generated balls have radius 3 (the 3rd neighbour), so they cover real
    points 0..7 but not 8 and 9 (recall 0.8)."""
    real = torch.arange(10.0).view(-1, 1)
    generated = torch.arange(5.0).view(-1, 1)
    assert metrics.precision_recall(generated, real, k=3) == (1.0, pytest.approx(0.8))
    # the roles swapped swap the two numbers
    precision, recall = metrics.precision_recall(real, generated, k=3)
    assert (precision, recall) == (pytest.approx(0.8), 1.0)
    with pytest.raises(utils.UserError, match="needs more than 3 samples"):
        metrics.precision_recall(generated[:3], real, k=3)


def test_too_few_samples_warn_or_refuse(capsys):
    metrics.feature_statistics(torch.randn(5, 8), "tiny")
    assert "rank <= 4 < 8" in capsys.readouterr().err
    with pytest.raises(utils.UserError, match="at least 2"):
        metrics.feature_statistics(torch.randn(1, 8), "tiny")


def test_npz_round_trip_and_fid_command(tmp_path, capsys):
    rng = np.random.default_rng(5)
    mu1, mu2, sigma1, sigma2 = rng.standard_normal(6), rng.standard_normal(6), random_spd(6, rng), random_spd(6, rng)
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    metrics.save_statistics(a, mu1, sigma1, features="test")
    np.savez(b, mu=mu2, sigma=sigma2)  # pytorch-fid's own format: just mu and sigma
    mu, sigma, fields = metrics.load_statistics(a)
    assert np.array_equal(mu, mu1) and np.array_equal(sigma, sigma1) and fields == {"features": "test"}
    value = evaluate.main(argparse.Namespace(fid=[a, b]))
    assert value == pytest.approx(metrics.frechet_distance(mu1, sigma1, mu2, sigma2), rel=1e-12)
    assert f"{value:.10g}" in capsys.readouterr().out
    np.savez(tmp_path / "bad.npz", mean=mu1)
    with pytest.raises(utils.UserError, match="no 'mu' and 'sigma'"):
        metrics.load_statistics(str(tmp_path / "bad.npz"))


# --- sampling and PUL ----------------------------------------------------------------------


class ThresholdGenerator(nn.Module):
    """Generator-like: a bright image when z[0] > threshold, a dark one otherwise."""

    def __init__(self, threshold, style_dim=4, size=4):
        super().__init__()
        self.threshold, self.style_dim, self.size = threshold, style_dim, size
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, styles, **kwargs):
        bright = (styles[0][:, 0] > self.threshold).float()
        return (bright - 0.5).view(-1, 1, 1, 1).expand(-1, 3, self.size, self.size), None


class BrightnessClassifier(nn.Module):
    """Class 0 ("bright") when the mean input is positive."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([m, -m], 1)


IDENTITY_META = {"multilabel": False, "classes": ["bright", "dark"], "attributes": None, "channels": 3,
                 "image_size": 4, "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}}


def pass_args(n_eval, seed=0, batch=97):
    return argparse.Namespace(n_eval=n_eval, n_fid=0, seed=seed, batch=batch, device="cpu")


def test_pul_on_generators_with_known_negative_rates():
    n = 4000
    args = pass_args(n)
    clf = BrightnessClassifier()
    before = scoring.generator_pass(ThresholdGenerator(0.0), args, clf, IDENTITY_META, 0, None, None)
    after = scoring.generator_pass(ThresholdGenerator(1.0), args, clf, IDENTITY_META, 0, None, None)
    z, _ = metrics.seeded_inputs(ThresholdGenerator(0.0), range(n), 0)
    assert int(before["negative_mask"].sum()) == int((z[:, 0] > 0).sum())  # exactly the latents' count
    assert int(after["negative_mask"].sum()) == int((z[:, 0] > 1).sum())
    assert before["counts"] == [int((z[:, 0] > 0).sum()), int((z[:, 0] <= 0).sum())]
    pul = metrics.percentage_unlearned(int(before["negative_mask"].sum()), int(after["negative_mask"].sum()))
    # P(z > 1) / P(z > 0) = 0.3173: PUL = 68.3 %, up to sampling noise (std ~1.2 % at n = 4000)
    assert pul == pytest.approx(100 * (1 - 2 * 0.158655), abs=4)
    assert metrics.percentage_unlearned(10, 10) == 0 and metrics.percentage_unlearned(10, 0) == 100
    assert np.isnan(metrics.percentage_unlearned(0, 0))


def tiny_generator(seed):
    """A tiny StyleGAN2 whose output depends visibly on z and on the noise (a fresh one barely
    does: noise weights start at 0 and the modulation near 1)."""
    torch.manual_seed(seed)
    g = checkpoint.build_gan(MODEL_ARGS, ("g_ema",))["g_ema"].eval()
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return g


def test_seeded_samples_do_not_depend_on_batch_size():
    g = tiny_generator(0)
    one = torch.cat([x for _, x in metrics.generate_images(g, 7, seed=3, batch=7, device="cpu")])
    many = torch.cat([x for _, x in metrics.generate_images(g, 7, seed=3, batch=2, device="cpu")])
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)
    other = torch.cat([x for _, x in metrics.generate_images(g, 7, seed=4, batch=7, device="cpu")])
    assert (one - other).abs().mean() > 0.01
    # the noise maps count: with other noise the same latents give other images
    z, noise = metrics.seeded_inputs(g, range(7), 3)
    torch.testing.assert_close(g([z], noise=noise)[0], one, atol=1e-5, rtol=0)
    assert (g([z])[0] - one).abs().mean() > 1e-3
    # the first samples are the same whatever the number drawn
    first = next(iter(metrics.generate_images(g, 3, seed=3, batch=3, device="cpu")))[1]
    torch.testing.assert_close(first, one[:3], atol=1e-5, rtol=0)


def test_inversion_recovers_an_image_the_generator_makes():
    """Targets the generator itself made (from W+ latents away from the mean, with the same seeded
    noise) are reconstructed far better than the mean latent's image; g is left untouched."""
    g = tiny_generator(0)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    z, noise = metrics.seeded_inputs(g, range(4), 5)
    with torch.no_grad():
        w = g.style(z).unsqueeze(1).repeat(1, g.n_latent, 1)
        targets, _ = g([w], input_is_latent=True, noise=metrics.seeded_inputs(g, range(4), 0)[1])
    targets = targets.clamp(-1, 1)  # as images are
    _, start = metrics.invert(g, targets, steps=1, lr=1e-9, seed=0)
    images, error = metrics.invert(g, targets, steps=150, lr=0.05, seed=0)
    assert error.shape == (4,) and (error < 0.3 * start).all(), (start, error)
    # one W latent for every layer, though the targets were made from one, fits less closely
    _, error_w = metrics.invert(g, targets, steps=150, lr=0.05, seed=0, w_plus=False)
    assert (error_w < start).all() and error_w.mean() < 0.6 * start.mean() and error_w.mean() > error.mean()
    torch.testing.assert_close(error, (images - targets).pow(2).mean((1, 2, 3)))
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert all(p.requires_grad for p in g.parameters())


# --- end to end ----------------------------------------------------------------------------


def save_generator(path, seed):
    nets = {"g_ema": tiny_generator(seed)}
    checkpoint.save_checkpoint(checkpoint.gan_checkpoint(nets, MODEL_ARGS, {}, 0, {}), path)
    return path


def save_half_split_classifier(path, reference_path):
    """A LeNet over the two synthetic classes whose decision splits the reference's samples about
    half and half (so PUL is defined), built without training."""
    meta = {"arch": "lenet", "classes": ["horizontal", "vertical"], "attributes": None, "multilabel": False,
            "image_size": 32, "channels": 3, "normalization": metrics.CLASSIFIER_NORMALIZATION[3], "data_size": 16}
    torch.manual_seed(0)
    net = LeNet5(2, 3).eval()
    g, _ = checkpoint.load_generator(reference_path)
    images = next(iter(metrics.generate_images(g, 64, 0, 64, "cpu")))[1]
    w = torch.randn(84, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # logit 0 = w·features − median, logit 1 = 0
        score = net.features(metrics.to_classifier_input(images, meta)) @ w
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.weight[0] = w
        net.head.bias[0] = -score.median()
    checkpoint.save_checkpoint({"kind": "classifier", "model": net.state_dict(), **meta, "test_accuracy": 50.0,
                           "args": {}, "sources": {}}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ref = save_generator(str(root / "pretrained.pt"), 0)
    return {"root": root, "reference": ref, "retrained": save_generator(str(root / "retrained.pt"), 1),
            "classifier": save_half_split_classifier(str(root / "classifier.pt"), ref)}


def eval_args(files, out, ckpts, **overrides):
    args = evaluate.create_argparser().parse_args([
        *ckpts, "--reference", files["reference"], "--classifier", files["classifier"], "--negative", "horizontal",
        "--retrained", files["retrained"], "--dataset", "synthetic", "--data", "unused", "--features", "classifier",
        "--n_eval", "96", "--n_fid", "100", "--n_sample", "6", "--batch", "50", "--seed", "0", "--device", "cpu",
        "--out", str(out)])
    for key, value in overrides.items():
        assert hasattr(args, key), key
        setattr(args, key, value)
    return args


def test_evaluate_reference_against_itself(files, tmp_path, capsys):
    out = tmp_path / "out"
    ckpts = [files["reference"], files["reference"]]
    record = evaluate.main(eval_args(files, out, ckpts))
    printed = capsys.readouterr().out
    ref = record["reference"]
    assert 0 < ref["negatives"] < 96
    for c in record["checkpoints"]:
        assert c["pul"] == 0 and c["negatives"] == ref["negatives"]
        assert c["fid"] == pytest.approx(ref["fid"]) and c["fid"] > 0
        assert all(abs(v["change"]) < 1e-12 for v in c["side_effects"].values())
    assert record["summary"]["pul"] == {"mean": 0.0, "std": 0.0, "n": 2}
    assert record["retrained"]["ret_fid"] is None and record["checkpoints"][0]["ret_fid"] > 0

    protocol = record["protocol"]
    assert protocol["pul"]["n_eval"] == 96 and protocol["pul"]["negative"] == "horizontal"
    assert protocol["sampling"]["seed"] == 0 and protocol["sampling"]["truncation"] == 1.0
    assert protocol["fid"]["name"] == "classifier-feature FID" and protocol["fid"]["n_fid"] == 100
    real = protocol["fid"]["reference_set"]
    assert real["excluded"] == "horizontal" and real["split"] == "test" and real["n_images"] == 256
    assert "classifier-feature FID" in printed and "| pre-trained (reference) | 0.00 |" in printed
    assert "the generators make 3x16 px: images are resized" in printed  # 16 px into a 32 px LeNet
    for name in ("metrics.json", "table.md", "comparison.png", "side_effects.png", "real_stats.npz", "args.json"):
        assert os.path.isfile(out / name), name
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["summary"]["pul"]["mean"] == 0.0

    # the real statistics are read back from the .npz and give the same FIDs
    again = evaluate.main(eval_args(files, tmp_path / "again", ckpts[:1], retrained=None, n_sample=0,
                                    real_stats=str(out / "real_stats.npz")))
    assert again["protocol"]["fid"]["reference_set"]["loaded_from_file"]
    assert again["checkpoints"][0]["fid"] == pytest.approx(ref["fid"], rel=1e-9)
    # KID and precision/recall: the real features kept in the .npz give the same values
    for key in ("kid", "precision", "recall"):
        assert record["checkpoints"][0][key] == ref[key] and again["checkpoints"][0][key] == ref[key], key
    assert 0 <= ref["precision"] <= 1 and 0 <= ref["recall"] <= 1 and ref["kid"] is not None
    assert protocol["kid"]["subset_size"] == 100 and protocol["precision_recall"]["k"] == 3
    assert protocol["kid"]["n_real"] == 256 and protocol["precision_recall"]["n_real"] == 100
    assert "| KID (↓) | precision (↑) | recall (↑) |" in printed


def test_side_effects_chart_draws_each_generators_change(files, tmp_path, monkeypatch):
    """One bar group per class but the negative, one bar per generator (retrained first), at the
    % change metrics.json records."""
    drawn = []
    bar = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, x, height, *rest, label=None, **kw:
                        drawn.append((label, list(height))) or bar(self, x, height, *rest, label=label, **kw))
    record = evaluate.main(eval_args(files, tmp_path / "out", [files["retrained"], files["reference"]], n_sample=0))
    expected = [(e["label"], [e["side_effects"]["vertical"]["change"]])
                for e in [record["retrained"], *record["checkpoints"]]]
    assert drawn == expected and expected[0][1][0] != 0 and expected[2][1] == [0.0]
    with open(tmp_path / "out" / "side_effects.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_recoverability_inverts_held_out_images_into_each_generator(files, tmp_path, capsys):
    record = evaluate.main(eval_args(files, tmp_path / "out", [files["reference"]], n_sample=0, recover=3,
                                     recover_steps=5))
    recover = record["recoverability"]
    assert [e["role"] for e in recover["generators"]] == ["reference", "evaluated", "retrained"]
    reference, same, retrained = recover["generators"]
    assert reference["negatives"] == same["negatives"] and reference["positives"] == same["positives"]
    assert retrained["negatives"]["mse"] != reference["negatives"]["mse"]
    for e in recover["generators"]:
        for group in ("negatives", "positives"):
            assert e[group]["mse"] > 0 and e[group]["called_negative"] in (0.0, 100 / 3, 200 / 3, 100.0)
    assert recover["protocol"]["n_each"] == 3 and recover["protocol"]["steps"] == 5
    # the reference's numbers are those of inverting the same seeded held-out images by hand
    args = eval_args(files, tmp_path / "unused", [], recover=3, recover_steps=5)
    negatives, positives = scoring.held_out_images(args, "horizontal", 16)
    g, _ = checkpoint.load_generator(files["reference"])
    _, error = metrics.invert(g, torch.cat([negatives, positives]), 5, args.recover_lr, args.seed)
    assert reference["negatives"]["mse"] == pytest.approx(float(error[:3].mean()), rel=1e-5)
    assert reference["positives"]["mse"] == pytest.approx(float(error[3:].mean()), rel=1e-5)
    assert "| Recoverability | 'horizontal' images: MSE" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "recover.png") as grid:
        assert grid.size[1] > 4 * 64  # the targets and three generators
    # the held-out images are checked before --out is made
    with pytest.raises(utils.UserError, match="--recover 1000: the held-out images hold"):
        evaluate.main(eval_args(files, tmp_path / "refused", [files["reference"]], recover=1000))
    assert not (tmp_path / "refused").exists()


def test_real_statistics_follow_the_classifier_weights_not_its_path(files, tmp_path):
    """A run folder moved or copied elsewhere keeps its statistics file valid; statistics made with
    another classifier's features are refused."""
    stats = str(tmp_path / "real_stats.npz")
    first = evaluate.main(eval_args(files, tmp_path / "a", [files["reference"]], retrained=None, n_sample=0,
                                    real_stats=stats))
    assert not first["protocol"]["fid"]["reference_set"]["loaded_from_file"]

    moved = tmp_path / "moved" / "classifier.pt"
    moved.parent.mkdir()
    moved.write_bytes(open(files["classifier"], "rb").read())
    again = evaluate.main(eval_args(files, tmp_path / "b", [files["reference"]], classifier=str(moved),
                                    retrained=None, n_sample=0, real_stats=stats))
    assert again["protocol"]["fid"]["reference_set"]["loaded_from_file"]
    assert again["reference"]["fid"] == pytest.approx(first["reference"]["fid"], rel=1e-9)

    other = torch.load(files["classifier"], weights_only=True)
    other["model"]["head.bias"] = other["model"]["head.bias"] + 1.0
    checkpoint.save_checkpoint(other, str(tmp_path / "other.pt"))
    with pytest.raises(utils.UserError, match="was made with weights_sha256"):
        evaluate.main(eval_args(files, tmp_path / "c", [files["reference"]], classifier=str(tmp_path / "other.pt"),
                                retrained=None, n_sample=0, real_stats=stats))


def scores(record):
    """What a generator pass decides, per entry: negatives, PUL, FID, Ret-FID and side effects."""
    entries = [record["reference"], record["retrained"], *record["checkpoints"]]
    return [(e["negatives"], e["pul"], e["fid"], e["ret_fid"], e["kid"], e["precision"], e["recall"],
             e["side_effects"]) for e in entries]


def test_cache_reuses_generator_passes_with_the_same_results(files, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    plain = evaluate.main(eval_args(files, tmp_path / "plain", [files["retrained"]], n_sample=0))
    first = evaluate.main(eval_args(files, tmp_path / "first", [files["retrained"]], n_sample=0, cache=cache))
    assert scores(first) == scores(plain)
    assert len(os.listdir(cache)) == 2  # the reference and the retrained model, once each
    # the retrained model evaluated as a checkpoint: no Ret-FID against itself, no summary of one
    assert plain["checkpoints"][0]["ret_fid"] is None and plain["summary"]["ret_fid"] is None
    assert plain["checkpoints"][0]["fid"] == plain["retrained"]["fid"]

    passes = []
    generator_pass = scoring.generator_pass
    monkeypatch.setattr(scoring, "generator_pass", lambda g, args, *rest: passes.append(args.seed) or
                        generator_pass(g, args, *rest))
    # the reference, evaluated as a checkpoint too, and the retrained model: all three from the cache
    second = evaluate.main(eval_args(files, tmp_path / "second", [files["reference"]], n_sample=0, cache=cache))
    assert passes == []
    assert scores(second)[0] == scores(first)[0] and scores(second)[1] == scores(first)[1]
    assert second["checkpoints"][0]["pul"] == 0 and second["checkpoints"][0]["fid"] == second["reference"]["fid"]

    # other latents are other passes; a generator met twice in one call is computed once
    other_seed = evaluate.main(eval_args(files, tmp_path / "seed1", [files["reference"]], n_sample=0, seed=1,
                                         cache=cache))
    assert passes == [1, 1] and len(os.listdir(cache)) == 4
    assert other_seed["reference"]["negatives"] != first["reference"]["negatives"] or \
        other_seed["reference"]["fid"] != first["reference"]["fid"]
    fewer = evaluate.main(eval_args(files, tmp_path / "fewer", [files["reference"]], n_sample=0, n_eval=48,
                                    cache=cache))
    assert passes == [1, 1, 0, 0] and fewer["reference"]["negatives"] < first["reference"]["negatives"]

    # a damaged cache file is computed again, with the same result
    for name in os.listdir(cache):
        with open(os.path.join(cache, name), "wb") as f:
            f.write(b"not an npz")
    passes.clear()
    third = evaluate.main(eval_args(files, tmp_path / "third", [files["retrained"]], n_sample=0, cache=cache))
    assert passes == [0, 0] and scores(third) == scores(plain)


def test_evaluate_user_errors(files, tmp_path):
    with pytest.raises(utils.UserError, match="not a class of the classifier"):
        evaluate.main(eval_args(files, tmp_path, [files["reference"]], negative="diagonal"))
    with pytest.raises(utils.UserError, match="is a classifier checkpoint"):
        evaluate.main(eval_args(files, tmp_path, [files["classifier"]]))
    with pytest.raises(utils.UserError, match="is a stylegan2 checkpoint"):
        evaluate.main(eval_args(files, tmp_path, [files["reference"]], classifier=files["reference"]))
    with pytest.raises(utils.UserError, match="pytorch-fid/releases"):
        evaluate.main(eval_args(files, tmp_path, [files["reference"]], features="inception"))
    with pytest.raises(utils.UserError, match="pytorch-fid/releases"):
        evaluate.main(eval_args(files, tmp_path, [files["reference"]], features="inception",
                                inception=str(tmp_path / "missing.pth")))


def test_cli_error_is_one_line(files, tmp_path):
    out = subprocess.run([sys.executable, "evaluate.py", files["classifier"], "--reference", files["reference"],
                          "--classifier", files["classifier"], "--negative", "horizontal", "--features", "classifier",
                          "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "is a classifier checkpoint" in out.stderr


# --- the Inception pipeline on a randomly initialised network of the exact architecture --------


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """torch-fidelity's FID Inception with its default random initialisation (no download),
    saved as a weights file: the same keys and shapes as pt_inception-2015-12-05."""
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = str(tmp_path_factory.mktemp("inception") / "random_inception.pth")
    torch.save(net.state_dict(), path)
    return path


def test_inception_weights_are_checked(random_inception, tmp_path, capsys):
    net, info = metrics.load_fid_inception(random_inception)
    assert info["weights_sha256"] == metrics.file_sha256(random_inception)
    assert not info["standard_fid_weights"] and "not comparable" in capsys.readouterr().err
    features = metrics.inception_features(net, torch.rand(2, 3, 16, 16) * 2 - 1)
    assert features.shape == (2, 2048) and features.dtype == torch.float64 and torch.isfinite(features).all()

    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(utils.UserError, match="not the FID Inception weights"):
        metrics.load_fid_inception(str(tmp_path / "other.pth"))
    torch.save({"a": argparse.Namespace()}, tmp_path / "pickle.pth")
    with pytest.raises(utils.UserError, match="not a PyTorch state dict"):
        metrics.load_fid_inception(str(tmp_path / "pickle.pth"))


def test_evaluate_with_inception_features(files, random_inception, tmp_path):
    """The whole FID path with the Inception network (random weights). The 2048-d Fréchet distance
    itself is replaced by a cheap stand-in here (it is tested above on exact cases)."""
    seen = []

    def cheap_distance(mu1, sigma1, mu2, sigma2):
        seen.append((mu1.shape, sigma1.shape, mu2.shape, sigma2.shape))
        return float(np.sum((mu1 - mu2) ** 2))

    out = tmp_path / "out"
    with mock.patch.object(metrics, "frechet_distance", cheap_distance):
        record = evaluate.main(eval_args(files, out, [files["reference"]], features="inception",
                                          inception=random_inception, retrained=None, n_eval=4,
                                          n_fid=2, n_real=2, n_sample=0, batch=4))
    assert seen and all(shape == ((2048,), (2048, 2048)) * 2 for shape in seen)
    fid = record["protocol"]["fid"]
    assert fid["name"] == "FID" and fid["weights_sha256"] == metrics.file_sha256(random_inception)
    assert fid["reference_set"]["n_images"] == 2 and "torch-fidelity" in fid["library"]
    mu, sigma, fields = metrics.load_statistics(str(out / "real_stats.npz"))
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and fields["n_images"] == "2"
    assert record["checkpoints"][0]["fid"] == pytest.approx(record["reference"]["fid"])


# --- generate.py ---------------------------------------------------------------------------


def test_parse_seeds():
    assert generate.parse_seeds("0-3,42") == [0, 1, 2, 3, 42]
    assert generate.parse_seeds("5, 2-3 ,5") == [5, 2, 3]
    for bad, words in (("a", "not a seed"), ("3-1", "runs backwards"), ("1,,2", "not a seed"), ("-1", "not a seed")):
        with pytest.raises(utils.UserError, match=words):
            generate.parse_seeds(bad)


def png(path):
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("noise", ["const", "random"])
def test_generate_a_seed_gives_its_image_whatever_else_is_asked(files, tmp_path, noise):
    run_main(generate, "--ckpt", files["reference"], "--seeds", "0-5", "--batch", 2, "--noise", noise,
             "--device", "cpu", "--out", tmp_path / "a")
    run_main(generate, "--ckpt", files["reference"], "--seeds", "3,1", "--batch", 16, "--noise", noise,
             "--device", "cpu", "--out", tmp_path / "b")
    folder = generate.folder_name(0, files["reference"])
    for seed in (1, 3):
        a, b = (png(tmp_path / run / folder / f"seed{seed:04d}.png") for run in ("a", "b"))
        assert a.shape == (16, 16, 3) and np.array_equal(a, b), seed
    assert not np.array_equal(png(tmp_path / "a" / folder / "seed0001.png"), png(tmp_path / "a" / folder / "seed0003.png"))
    # the seed's image is sample 0 of that seed in the evaluation's stream (with its noise maps)
    if noise == "random":
        g, _ = checkpoint.load_generator(files["reference"])
        z, maps = metrics.seeded_inputs(g, [0], 3)
        expected = utils.to_uint8(g([z], noise=maps)[0])[0].permute(1, 2, 0).numpy()
        assert np.array_equal(png(tmp_path / "a" / folder / "seed0003.png"), expected)


def test_generate_truncation_zero_gives_the_mean_latent_image(files, tmp_path):
    rows = run_main(generate, "--ckpt", files["reference"], files["retrained"], "--seeds", "0-3", "--trunc", 0,
                    "--device", "cpu", "--out", tmp_path)
    assert [label for label, _, _ in rows] == [report.short_name(files["reference"]), report.short_name(files["retrained"])]
    for _, tiles, _ in rows:  # ψ = 0: every seed maps to w_avg, and the noise is the fixed one
        assert all(np.array_equal(tile, tiles[0]) for tile in tiles)
    assert not np.array_equal(rows[0][1][0], rows[1][1][0])
    assert Image.open(tmp_path / "grid.png").size[1] > 2 * 64


def test_generate_frames_and_counts_the_negatives(files, tmp_path, capsys):
    rows = run_main(generate, "--ckpt", files["reference"], "--seeds", "0-11", "--classifier", files["classifier"],
                    "--negative", "horizontal", "--device", "cpu", "--out", tmp_path)
    _, tiles, flags = rows[0]
    clf, meta = checkpoint.load_classifier(files["classifier"])
    images = utils.from_uint8(torch.from_numpy(tiles).permute(0, 3, 1, 2))
    expected = metrics.negative_mask(metrics.classify(clf, meta, images), meta, 0).tolist()
    assert flags == expected and 0 < sum(flags) < 12
    assert f"{sum(flags)} of 12 samples" in capsys.readouterr().out


def test_generate_labels_rows_with_as_many_folders_as_tell_them_apart(files, tmp_path):
    for name in ("el2", "cdc"):
        os.makedirs(tmp_path / name / "s0")
        shutil.copy(files["reference"], tmp_path / name / "s0" / "unlearned.pt")
    rows = run_main(generate, "--ckpt", tmp_path / "el2" / "s0" / "unlearned.pt", tmp_path / "cdc" / "s0" / "unlearned.pt",
                    "--seeds", "0-1", "--device", "cpu", "--out", tmp_path / "out")
    assert [label for label, _, _ in rows] == ["el2/s0/unlearned.pt", "cdc/s0/unlearned.pt"]


def test_generate_user_errors(files, tmp_path):
    cases = [(["--seeds", "7-2"], "runs backwards"), (["--trunc", "1.5"], "--trunc: must be a number from 0 to 1"),
             (["--classifier", files["classifier"]], "go together"),
             (["--classifier", files["classifier"], "--negative", "diagonal"], "not a class"),
             (["--batch", "0"], "--batch: must be a whole number of at least 1")]
    for flags, words in cases:
        assert words in cli_error(generate, "--ckpt", files["reference"], *flags, "--out", tmp_path / "x")
    assert "is a classifier checkpoint" in cli_error(generate, "--ckpt", files["classifier"], "--out", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_short_names_tell_different_files_apart():
    paths = ["runs/el2/s0/unlearned.pt", "runs/finetune/s0/unlearned.pt", "runs/el2/s1/unlearned.pt"]
    assert report.short_names(paths) == ["el2/s0/unlearned.pt", "finetune/s0/unlearned.pt", "el2/s1/unlearned.pt"]
    assert report.short_names(["a/s0/x.pt", "b/s1/x.pt"]) == ["s0/x.pt", "s1/x.pt"]
    assert report.short_names(["a/s0/x.pt", "a/s0/x.pt"]) == ["s0/x.pt", "s0/x.pt"]  # one file twice
