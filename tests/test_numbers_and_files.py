"""Numbers and files: every numeric flag is range-checked when parsed, a NaN loss is caught at the
step it happens, a checkpoint holding NaN is never written, and outputs follow the umask."""

import os

import pytest
import torch

import checkpoint
import evaluate
import extrapolate
import gan
import generate
import mog_toy
import negative_adapt
import train_classifier
import train_stylegan2
import unlearn
import utils
from conftest import cli_error

SCRIPTS = [train_stylegan2, train_classifier, negative_adapt, unlearn, extrapolate, evaluate, generate, mog_toy]
BAD_VALUES = {utils.positive_int: ["0", "-1", "1.5", "nan"], utils.nonnegative_int: ["-1", "2.5", "inf"],
              utils.positive_float: ["0", "-1", "nan", "inf"], utils.nonnegative_float: ["-1", "nan", "-inf"],
              utils.finite_float: ["nan", "inf", "ten"], utils.probability: ["-0.1", "1.5", "nan"]}
CASES = [(script, option, action.type, value)
         for script in SCRIPTS for action in script.create_argparser()._actions if action.type in BAD_VALUES
         for option in action.option_strings[:1] for value in BAD_VALUES[action.type]]


def test_every_numeric_flag_has_a_range():
    for script in SCRIPTS:
        untyped = [a.option_strings[0] for a in script.create_argparser()._actions
                   if a.type in (int, float) and a.option_strings and a.choices is None]
        assert untyped in ([], ["--negative"], ["--marked"]), (script.__name__, untyped)  # mode/sample indices
    assert len(CASES) > 250


@pytest.mark.parametrize("script, option, kind, value", CASES,
                         ids=[f"{s.__name__}{o}={v}" for s, o, _, v in CASES])
def test_bad_numbers_are_refused_when_parsed(script, option, kind, value, tmp_path):
    line = cli_error(script, f"{option}={value}")  # "=": argparse would take -1 for a flag
    assert line.startswith(f"error: argument {option}: must be {kind.__name__}, got '{value}'"), line


def test_a_nan_between_progress_updates_is_caught_at_its_step():
    def gan_step(batch, step):
        return {"d": torch.tensor(float("nan") if step == 3 else 1.0), "g": torch.tensor(0.5)}
    with pytest.raises(utils.UserError, match=r"NaN or infinite at step 3 .*last good checkpoint: none"):
        gan.run_gan_training(gan_step, lambda: None, 0, 10, log_every=100, show=False)
    saved = []
    with pytest.raises(utils.UserError, match="at step 3 .*last good checkpoint: 2.pt"):  # caught before saving 4
        gan.run_gan_training(gan_step, lambda: None, 0, 10, log_every=100, save_every=2, show=False,
                             save=lambda done: saved.append(done) or f"{done}.pt")
    assert saved == [2]


def test_a_checkpoint_holding_nan_is_never_written(tmp_path):
    path = tmp_path / "x.pt"
    state = {"kind": "feedback", "g": {"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])},
             "g_optim": {"state": {0: {"exp_avg": torch.zeros(1)}}}, "step": 3}
    with pytest.raises(utils.UserError, match=r"refused to write .*x.pt: 'g.b' holds NaN"):
        checkpoint.save_checkpoint(state, str(path))
    state["g"]["b"] = torch.ones(2)
    state["g_optim"]["state"][0]["exp_avg"] = torch.tensor([float("nan")])
    with pytest.raises(utils.UserError, match="'g_optim.state.0.exp_avg' holds NaN"):
        checkpoint.save_checkpoint(state, str(path))
    assert not os.listdir(tmp_path)
    state["g_optim"]["state"][0]["exp_avg"] = torch.zeros(1)
    checkpoint.save_checkpoint(state, str(path))  # integer and finite tensors pass
    assert checkpoint.load_checkpoint(str(path))["step"] == 3


def test_a_failed_save_in_the_loop_names_the_last_good_checkpoint():
    def save(done):
        if done == 4:
            raise utils.UserError("refused to write 4.pt: 'g.w' holds NaN or infinite values")
        return f"{done}.pt"
    with pytest.raises(utils.UserError, match="refused to write 4.pt.*; last good checkpoint: 2.pt"):
        gan.run_gan_training(lambda batch, step: {"d": torch.tensor(1.0)}, lambda: None, 0, 10, save=save,
                             save_every=2, show=False)


def test_outputs_follow_the_umask_and_stale_temporary_files_go(tmp_path):
    old = os.umask(0o027)
    try:
        utils.FILE_MODE = utils._file_mode()
        utils.atomic_write(str(tmp_path / "a.json"), lambda f: f.write(b"{}"))
        assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
        utils.FILE_MODE = utils._file_mode()
    utils.atomic_write(str(tmp_path / "b.json"), lambda f: f.write(b"{}"))
    assert os.stat(tmp_path / "b.json").st_mode & 0o777 == 0o666 & ~old
    (tmp_path / "checkpoint").mkdir()
    for stale in (tmp_path / ".pretrained.pt.k2j4_a9z.tmp", tmp_path / "checkpoint" / ".000010.pt.abcdefgh.tmp"):
        stale.write_bytes(b"cut short by kill -9")
    (tmp_path / "notes.tmp").write_text("not ours")
    utils.prepare_out_dir(str(tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.json", "b.json", "notes.tmp"]


def test_train_classifier_stops_on_a_nan_loss(tmp_path):
    line = cli_error(train_classifier, "--dataset", "synthetic", "--epochs", 1, "--lr", "1e30", "--device", "cpu",
                     "--out", tmp_path / "clf")
    assert "NaN or infinite in epoch 1" in line and "nothing was saved" in line
    assert not (tmp_path / "clf" / "classifier.pt").exists()


@pytest.mark.parametrize("script, args", [
    (train_stylegan2, ["--dataset", "synthetic", "--size", "8", "--n_sample", str(10 ** 11)]),
    (train_stylegan2, ["--dataset", "synthetic", "--size", "8", "--style_dim", str(10 ** 9)]),
    (mog_toy, ["--n_eval", str(10 ** 12), "--quiet"]),
])
def test_absurdly_large_numbers_end_in_one_line(script, args, tmp_path):
    line = cli_error(script, *args, "--device", "cpu", "--out", tmp_path / "out") if script is train_stylegan2 \
        else cli_error(script, *args, "--out", tmp_path / "out")
    assert "out of memory" in line and "lower the sizes" in line, line
    if script is train_stylegan2:
        assert not (tmp_path / "out").exists()
