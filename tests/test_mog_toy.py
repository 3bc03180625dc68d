"""mog_toy.py: its metrics on constructed samples, its errors, and a short end-to-end run."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import mog
import mog_toy
from conftest import cli_error, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STD = 0.05
CENTERS = mog.mode_centers(8, 2.0)
NEGATIVE = torch.zeros(8, dtype=torch.bool)
NEGATIVE[[0, 1]] = True
REFERENCE = CENTERS[2:].repeat(50, 1)  # 300 points on the positive modes


def on_modes(modes, per_mode):
    return CENTERS[list(modes)].repeat_interleave(per_mode, dim=0)


def score(samples, before=None):
    return mog.sample_metrics(samples, CENTERS, NEGATIVE, STD, REFERENCE, before)


def test_mode_centers_on_the_circle():
    assert CENTERS[0].tolist() == pytest.approx([2.0, 0.0])
    assert CENTERS[2].tolist() == pytest.approx([0.0, 2.0], abs=1e-6)
    assert CENTERS.norm(dim=1).tolist() == pytest.approx([2.0] * 8)


def test_pul_of_removing_the_negative_modes_is_100():
    before = score(on_modes(range(8), 100))  # 200 negatives, all HQ
    assert (before["negatives"], before["negatives_hq"]) == (200, 200)
    assert before["pul"] == 0.0 and before["hq"] == 100.0
    assert (before["modes_covered"], before["negative_modes_covered"]) == (6, 2)

    after = score(on_modes(range(2, 8), 100), before)
    assert after["pul"] == 100.0 and after["pul_hq"] == 100.0
    assert (after["modes_covered"], after["negative_modes_covered"]) == (6, 0)

    # keep half of the negatives (one negative mode) -> 50%
    half = score(on_modes([0] + list(range(2, 8)), 100), before)
    assert half["pul"] == 50.0 and half["negative_modes_covered"] == 1


def test_hq_threshold_and_pul_hq():
    # Points 2.9 std and 3.1 std from mode 0 (a negative mode): both negative, one HQ.
    near = CENTERS[0] + torch.tensor([2.9 * STD, 0.0])
    far = CENTERS[0] + torch.tensor([3.1 * STD, 0.0])
    positives = on_modes(range(2, 8), 10)
    before = score(torch.cat([near[None].repeat(10, 1), positives]))
    assert (before["negatives"], before["negatives_hq"]) == (10, 10)
    after = score(torch.cat([far[None].repeat(10, 1), positives]), before)
    assert (after["negatives"], after["negatives_hq"]) == (10, 0)
    assert after["pul"] == 0.0 and after["pul_hq"] == 100.0
    assert after["hq"] == pytest.approx(100 * 60 / 70)


def test_modes_covered_needs_two_percent_of_all_samples_as_hq():
    # mode 2 holds 1% of the samples (HQ), mode 3 holds 3% but off by 4 std (not HQ)
    samples = torch.cat([on_modes([4], 960), on_modes([2], 10),
                         on_modes([3], 30) + torch.tensor([0.0, 4 * STD])])
    assert score(samples)["modes_covered"] == 1


def test_mmd2_unbiased_by_hand():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    # xx and yy: one distinct pair at distance 1 -> e^{-1/2}; xy: mean of (1, e^{-1/2}, e^{-1/2}, 1)
    e = math.exp(-0.5)
    assert mog.mmd2_unbiased(x, x.clone(), [1.0]) == pytest.approx(2 * e - 2 * (2 + 2 * e) / 4)
    gen = torch.Generator().manual_seed(0)
    a = mog.sample_mixture(3000, CENTERS, STD, gen)
    b = mog.sample_mixture(3000, CENTERS, STD, gen)
    same = mog.mmd2_unbiased(a, b, [STD, 4 * STD])
    shifted = mog.mmd2_unbiased(a, b + 0.5, [STD, 4 * STD])
    assert abs(same) < 2e-3 and shifted > 0.1


def run_toy(tmp_path, *flags):
    command = [sys.executable, os.path.join(ROOT, "mog_toy.py"), "--out", str(tmp_path), "--quiet", *flags]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("flags, message", [
    (["--negative", "8"], "--negative mode 8 is out of range"),
    (["--negative", "0", "1", "2", "3", "4", "5", "6", "7"], "--negative lists every mode"),
    (["--n_models", "0"], "--n_models: must be a whole number of at least 1"),
])
def test_bad_arguments_give_one_line_errors(tmp_path, flags, message):
    assert message in cli_error(mog_toy, "--out", tmp_path, "--quiet", *flags)


def test_cli_error_is_one_line(tmp_path):
    result = run_toy(tmp_path, "--negative", "8")
    assert result.returncode == 2
    assert "--negative mode 8 is out of range" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("method, repulsion, runs", [
    (["repulsion"], ["el2"], ["el2"]),
    (["all"], ["el2"], ["el2", "finetune", "extrapolation"]),
    (["extrapolation", "repulsion"], ["il2", "el2"], ["el2", "il2", "extrapolation"]),
    (["all"], ["all"], ["el2", "nl2", "il2", "finetune", "extrapolation"]),
])
def test_selected_runs_follow_the_figure_order(method, repulsion, runs):
    args = mog_toy.create_argparser().parse_args(["--method", *method, "--repulsion", *repulsion])
    assert mog_toy.selected_runs(args) == runs


def test_short_run_writes_metrics_and_figure(tmp_path, capsys):
    tiny = ["--quiet", "--pretrain_iter", "300", "--adapt_iter", "10", "--unlearn_iter", "10", "--n_models", "2",
            "--n_eval", "500", "--fisher_samples", "8"]
    record = run_main(mog_toy, "--out", tmp_path, *tiny, "--method", "all", "--repulsion", "all", "--gamma", "0", "1")
    stdout = capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(record))
    assert set(record) >= {"config", "pretrained", "methods"}
    assert set(record["methods"]) == {"el2", "nl2", "il2", "finetune", "extrapolation"}
    assert set(record["methods"]["extrapolation"]) == {"0", "1"}
    assert record["config"]["mu"] == mog_toy.DEFAULT_MU
    keys = {"pul", "pul_hq", "hq", "modes_covered", "mmd2", "seconds"}
    for metrics in [record["pretrained"], record["methods"]["el2"], record["methods"]["extrapolation"]["1"]]:
        assert keys <= set(metrics)
    assert record["config"]["n_negative_feedback"] + record["config"]["n_positive_feedback"] == 1000
    # gamma = 0 is the pre-trained generator itself: same samples, same scores
    pretrained, gamma0 = record["pretrained"], record["methods"]["extrapolation"]["0"]
    assert gamma0["pul"] == 0.0 and gamma0["hq"] == pretrained["hq"] and gamma0["mmd2"] == pretrained["mmd2"]
    assert gamma0["distance"] == pytest.approx(1.0, rel=1e-4)  # d(theta_G) = 1
    assert (tmp_path / "mog_toy.png").stat().st_size > 0 and (tmp_path / "args.json").exists()
    assert "extrap. gamma=1" in stdout and "finetune (ablation)" in stdout

    # reproducible with --seed: the same numbers again (wall times aside), also when el2 runs alone
    again = run_main(mog_toy, "--out", tmp_path / "again", *tiny)
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
    assert strip(again["methods"]["el2"]) == strip(record["methods"]["el2"])
    assert strip(again["pretrained"]) == strip(record["pretrained"])
    # --mu applies to every repulsion loss run
    mu = run_main(mog_toy, "--out", tmp_path / "mu", *tiny, "--repulsion", "nl2", "--mu", "0.5")
    assert mu["config"]["mu"] == {"nl2": 0.5}
