"""A run is never lost: a used --out is refused without --resume or --overwrite, --resume finishes
a run killed with kill -9 at any moment with the step count of an uninterrupted one and refuses
flags that would change it, and Ctrl-C ends in one line."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import torch

import checkpoint
import negative_adapt
import train_classifier
import train_stylegan2
import unlearn
from conftest import cli_error, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "synthetic", "--size", "8", "--style_dim", "8", "--n_mlp", "1", "--channel_max", "8",
        "--batch", "4", "--workers", "0", "--sample_every", "1000", "--n_sample", "4"]


def hashes(folder):
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files}


def test_a_used_out_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "run"
    run_main(train_stylegan2, *TINY, "--iter", 2, "--save_every", 1, "--out", out)
    before = hashes(out)
    line = cli_error(train_stylegan2, *TINY, "--iter", 3, "--out", out)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert hashes(out) == before
    (out / "notes.txt").write_text("the user's own file")
    run_main(train_stylegan2, *TINY, "--iter", 1, "--overwrite", "--out", out)
    assert sorted(hashes(out)) == ["args.json", "notes.txt", "pretrained.pt", "sample/000001.png"]
    assert checkpoint.load_checkpoint(str(out / "pretrained.pt"))["step"] == 1


def test_negative_adapt_never_mixes_two_runs(tmp_path):
    """A second run with fewer adapted models would have left the first run's adapted_2.pt beside
    the new ones; it is refused, and --overwrite removes the old files first."""
    gan = tmp_path / "gan"
    run_main(train_stylegan2, *TINY, "--iter", 1, "--out", gan)
    args = ["--ckpt", gan / "pretrained.pt", "--n_feedback", 8, "--marked", 0, 1, 2, "--iter", 1, "--fisher_samples",
            4, "--batch", 4, "--n_sample", 4, "--out", tmp_path / "adapt"]
    run_main(negative_adapt, *args, "--n_models", 3)
    assert "already holds a run" in cli_error(negative_adapt, *args, "--n_models", 2)
    run_main(negative_adapt, *args, "--n_models", 2, "--overwrite")
    assert sorted(p.name for p in (tmp_path / "adapt").glob("adapted_*.pt")) == ["adapted_0.pt", "adapted_1.pt"]
    # contact sheets, then the marks made on them, in the same folder
    sheets = ["--ckpt", gan / "pretrained.pt", "--n_feedback", 8, "--out", tmp_path / "person"]
    run_main(negative_adapt, *sheets, "--contact_sheet")
    run_main(negative_adapt, *sheets, "--marked", 0, 1, "--n_models", 1, "--iter", 1, "--fisher_samples", 4,
             "--batch", 4, "--n_sample", 4)
    assert (tmp_path / "person" / "contact_sheet_00.png").is_file() and (tmp_path / "person" / "adapted_0.pt").is_file()


def written(out):
    """(name, mtime) of the run's checkpoints; one pruned between listing and stat is skipped."""
    found = set()
    for path in (out / "checkpoint").glob("*.pt"):
        try:
            found.add((path.name, path.stat().st_mtime_ns))
        except FileNotFoundError:
            pass
    return found


def kill_at_random_moments(command, out, kills, seed):
    """Start `command` (with --resume), kill -9 it at a random moment after it has written its
    first checkpoint, `kills` times over. Returns how many kills hit a running process and how
    many of the restarts resumed a checkpoint (so a test can tell they really happened)."""
    rng = random.Random(seed)
    hits = resumed = 0
    for _ in range(kills):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))  # what it printed survives the kill
        before = written(out)
        deadline = time.time() + 120
        while time.time() < deadline and written(out) <= before and process.poll() is None:
            time.sleep(0.05)  # until this process has written a checkpoint of its own
        time.sleep(rng.uniform(0.0, 0.3))  # anywhere in the next few steps or saves
        process.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate()
        assert process.returncode in (-signal.SIGKILL, 0), stderr[-2000:]
        hits += process.returncode == -signal.SIGKILL
        resumed += "resuming" in stdout
    return hits, resumed


def test_train_stylegan2_resumes_after_kill_9(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "train_stylegan2.py", *TINY, "--iter", "100", "--save_every", "2", "--resume",
               "--out", str(out)]
    hits, resumed = kill_at_random_moments(command, out, 3, seed=0)
    assert hits == 3 and resumed >= 2
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert checkpoint.load_checkpoint(str(out / "pretrained.pt"))["step"] == 100
    assert not [name for _, _, files in os.walk(out) for name in files if name.endswith(".tmp")]
    # a flag that would change the run is refused; --iter may grow
    assert "--lr 0.002 -> 0.01" in cli_error(train_stylegan2, *TINY, "--iter", 101, "--lr", 0.01, "--resume",
                                             "--out", out)
    run_main(train_stylegan2, *TINY, "--iter", 101, "--resume", "--out", out)
    assert checkpoint.load_checkpoint(str(out / "pretrained.pt"))["step"] == 101
    assert "raise --iter" in cli_error(train_stylegan2, *TINY, "--iter", 101, "--resume", "--out", out)


def test_unlearn_resumes_after_kill_9(tmp_path):
    gan = tmp_path / "gan"
    run_main(train_stylegan2, *TINY, "--iter", 1, "--out", gan)
    run_main(negative_adapt, "--ckpt", gan / "pretrained.pt", "--n_feedback", 8, "--marked", 0, 1, 2, "--n_models", 1,
             "--iter", 1, "--fisher_samples", 4, "--batch", 4, "--n_sample", 4, "--out", tmp_path / "adapt")
    out = tmp_path / "unlearn"
    stage2 = ["--ckpt", str(gan / "pretrained.pt"), "--feedback", str(tmp_path / "adapt" / "feedback.pt"), "--adapted",
              str(tmp_path / "adapt" / "adapted_0.pt"), "--batch", "4", "--n_sample", "4", "--save_every", "2"]
    command = [sys.executable, "unlearn.py", *stage2, "--iter", "60", "--resume", "--out", str(out)]
    hits, resumed = kill_at_random_moments(command, out, 3, seed=1)
    assert hits == 3 and resumed >= 2
    run_main(unlearn, *stage2, "--iter", 60, "--resume", "--out", out)
    final = checkpoint.load_checkpoint(str(out / "unlearned.pt"))
    assert final["step"] == 60 and {"g_optim", "d_optim", "rng"} <= set(final)
    assert f"--mu {unlearn.DEFAULT_MU['el2']} -> 3.0" in cli_error(unlearn, *stage2, "--iter", 61, "--mu", 3, "--resume", "--out", out)


def test_ctrl_c_ends_in_one_line_with_status_130(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train_stylegan2.py", *TINY, "--iter", "100000", "--save_every", "5",
                                "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "checkpoint").glob("*.pt")):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    try:
        stderr = process.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:  # a user presses Ctrl-C again; the second one always ends the run
        process.send_signal(signal.SIGINT)
        stderr = process.communicate(timeout=30)[1]
    assert process.returncode == 130 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted:") and last.endswith(f"--out {out} --resume"), last
    newest = max((out / "checkpoint").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    assert f"; newest checkpoint {newest};" in last  # the one --resume continues
    assert torch.load(newest, weights_only=True)["step"] % 5 == 0


def test_negative_adapt_resumes_after_kill_9(tmp_path):
    """Finished adapted models are kept, the one in progress continues from its checkpoint."""
    gan = tmp_path / "gan"
    run_main(train_stylegan2, *TINY, "--iter", 1, "--out", gan)
    out = tmp_path / "adapt"
    flags = ["--ckpt", str(gan / "pretrained.pt"), "--n_feedback", "8", "--marked", "0", "1", "2", "--n_models", "3",
             "--iter", "40", "--fisher_samples", "4", "--batch", "4", "--n_sample", "4", "--save_every", "2"]
    command = [sys.executable, "negative_adapt.py", *flags, "--resume", "--out", str(out)]
    hits, resumed = kill_at_random_moments(command, out, 3, seed=2)
    assert hits == 3 and resumed >= 2
    run_main(negative_adapt, *flags, "--resume", "--out", out)
    for j in range(3):
        assert checkpoint.load_checkpoint(str(out / f"adapted_{j}.pt"))["step"] == 40
    assert not list((out / "checkpoint").glob("*.pt"))  # progress checkpoints go once a model is done
    assert not [name for _, _, files in os.walk(out) for name in files if name.endswith(".tmp")]


def test_train_classifier_resumes_after_kill_9(tmp_path):
    """Members finished and the one in progress continue from their last epoch; the result has the
    epochs of an uninterrupted run."""
    out = tmp_path / "clf"
    flags = ["--dataset", "synthetic", "--epochs", "12", "--members", "2", "--device", "cpu"]
    command = [sys.executable, "train_classifier.py", *flags, "--resume", "--out", str(out)]
    hits, resumed = kill_at_random_moments(command, out, 3, seed=3)
    assert hits == 3 and resumed >= 2
    run_main(train_classifier, *flags, "--resume", "--out", out)
    ckpt = checkpoint.load_checkpoint(str(out / "classifier.pt"), "classifier")
    assert ckpt["epochs"] == 12 and ckpt["members"] == 2 and ckpt["test_accuracy"] > 50
    assert not list((out / "checkpoint").glob("*.pt"))
    assert "--epochs 12 -> 13" in cli_error(train_classifier, *flags[:2], "--epochs", 13, "--members", 2, "--resume",
                                          "--out", out)


def test_train_classifier_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """Interrupted after its first epoch and resumed, the classifier is bit for bit the one an
    uninterrupted run trains (weights, optimiser, schedule and random streams all continue)."""
    flags = ["--dataset", "synthetic", "--epochs", "3", "--device", "cpu"]
    whole = run_main(train_classifier, *flags, "--out", tmp_path / "whole")
    save = checkpoint.save_checkpoint

    def save_then_stop(obj, path):
        save(obj, path)
        if obj.get("kind") == "classifier_progress" and obj["epochs_done"] == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_stop)
    try:
        run_main(train_classifier, *flags, "--out", tmp_path / "cut")
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    resumed = run_main(train_classifier, *flags, "--resume", "--out", tmp_path / "cut")
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())
