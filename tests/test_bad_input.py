"""Bad files and folders, given to every path flag of every script: each ends in one line that
names the problem (and the file), status 2, and nothing written. Bad numbers are checked in
test_numbers_and_files.py."""

import os

import pytest
from PIL import Image

import evaluate
import extrapolate
import generate
import negative_adapt
import train_classifier
import train_stylegan2
import unlearn
from conftest import cli_error, run_main

TINY = ["--dataset", "synthetic", "--size", "8", "--style_dim", "8", "--n_mlp", "1", "--channel_max", "8",
        "--batch", "4", "--workers", "0", "--n_sample", "4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    run_main(train_stylegan2, *TINY, "--iter", 1, "--out", root / "gan")
    run_main(train_classifier, "--dataset", "synthetic", "--size", 8, "--epochs", 1, "--device", "cpu",
             "--out", root / "clf")
    gan, clf = str(root / "gan" / "pretrained.pt"), str(root / "clf" / "classifier.pt")
    run_main(negative_adapt, "--ckpt", gan, "--n_feedback", 8, "--marked", 0, 1, 2, "--n_models", 1, "--iter", 1,
             "--fisher_samples", 4, "--batch", 4, "--n_sample", 4, "--out", root / "adapt")
    # another generator of the same architecture, with its own feedback and adapted model, and
    # one of another size
    run_main(train_stylegan2, *TINY, "--iter", 1, "--seed", 1, "--out", root / "gan_b")
    run_main(negative_adapt, "--ckpt", root / "gan_b" / "pretrained.pt", "--n_feedback", 8, "--marked", 0, 1, 2,
             "--n_models", 1, "--iter", 1, "--fisher_samples", 4, "--batch", 4, "--n_sample", 4, "--out", root / "adapt_b")
    run_main(train_stylegan2, *TINY, "--size", 16, "--iter", 1, "--out", root / "gan16")
    real = open(gan, "rb").read()
    bad = {"missing": str(root / "no_such.pt"), "a folder": str(root / "gan"), "empty": str(root / "empty.pt"),
           "truncated": str(root / "truncated.pt"), "not a checkpoint": str(root / "garbage.pt")}
    open(bad["empty"], "wb").close()
    open(bad["truncated"], "wb").write(real[:len(real) // 2])
    open(bad["not a checkpoint"], "wb").write(b"this is not a checkpoint\n" * 10)
    other = {"feedback": str(root / "adapt_b" / "feedback.pt"), "adapted": str(root / "adapt_b" / "adapted_0.pt"),
             "gan16": str(root / "gan16" / "pretrained.pt")}
    return {"root": root, "gan": gan, "clf": clf, "feedback": str(root / "adapt" / "feedback.pt"),
            "adapted": str(root / "adapt" / "adapted_0.pt"), "bad": bad, "other": other}


WORDS = {"missing": "no such file", "a folder": "is a folder", "empty": "not a readable PyTorch checkpoint",
         "truncated": "not a readable PyTorch checkpoint", "not a checkpoint": "not a readable PyTorch checkpoint",
         "unreadable": "permission denied"}


def slots(f):
    """(script, the arguments with {} where the bad path goes, the kind that belongs there)."""
    eval_args = ["--classifier", f["clf"], "--negative", "vertical", "--dataset", "synthetic", "--features",
                 "classifier", "--n_eval", 10, "--n_fid", 0, "--n_sample", 0]
    adapt = ["--n_feedback", 8, "--marked", 0, 1, "--n_models", 1, "--iter", 1, "--fisher_samples", 4, "--batch", 4]
    return [
        (train_stylegan2, [*TINY, "--iter", 2, "--ckpt", "{}"], "stylegan2"),
        (negative_adapt, ["--ckpt", "{}", *adapt], "stylegan2"),
        (negative_adapt, ["--ckpt", f["gan"], "--classifier", "{}", "--negative", "vertical"], "classifier"),
        (unlearn, ["--ckpt", "{}", "--feedback", f["feedback"], "--adapted", f["adapted"]], "stylegan2"),
        (unlearn, ["--ckpt", f["gan"], "--feedback", "{}", "--adapted", f["adapted"]], "feedback"),
        (unlearn, ["--ckpt", f["gan"], "--feedback", f["feedback"], "--adapted", "{}"], "stylegan2"),
        (extrapolate, ["--ckpt", "{}", "--adapted", f["adapted"]], "stylegan2"),
        (extrapolate, ["--ckpt", f["gan"], "--adapted", "{}"], "stylegan2"),
        (evaluate, ["{}", "--reference", f["gan"], *eval_args], "stylegan2"),
        (evaluate, [f["gan"], "--reference", "{}", *eval_args], "stylegan2"),
        (evaluate, [f["gan"], "--reference", f["gan"], "--retrained", "{}", *eval_args], "stylegan2"),
        (evaluate, [f["gan"], "--reference", f["gan"], *eval_args[:1], "{}", *eval_args[2:]], "classifier"),
        (generate, ["--ckpt", "{}"], "stylegan2"),
        (generate, ["--ckpt", f["gan"], "--classifier", "{}", "--negative", "vertical"], "classifier"),
    ]


def other_kind(f, kind):
    """A real checkpoint of another kind than `kind`."""
    return {"stylegan2": f["clf"], "classifier": f["gan"], "feedback": f["gan"]}[kind]


def unreadable(f, kind, tmp_path, monkeypatch):
    """A copy of the right checkpoint with no read permission. The tests may run as root, which
    reads it anyway: os.access is made to answer from the mode bits, as it does for other users."""
    path = tmp_path / f"unreadable_{kind}.pt"
    path.write_bytes(open({"stylegan2": f["gan"], "classifier": f["clf"], "feedback": f["feedback"]}[kind], "rb").read())
    path.chmod(0)
    monkeypatch.setattr(os, "access", lambda p, mode: bool(os.stat(p).st_mode & 0o444))
    return str(path)


CASES = [(i, problem) for i in range(14) for problem in [*WORDS, "another kind"]]


@pytest.mark.parametrize("slot, problem", CASES, ids=[f"slot{i}-{p.replace(' ', '_')}" for i, p in CASES])
def test_a_bad_file_in_any_path_flag(files, slot, problem, tmp_path, monkeypatch):
    script, args, kind = slots(files)[slot]
    if problem == "unreadable":
        path = unreadable(files, kind, tmp_path, monkeypatch)
    else:
        path = other_kind(files, kind) if problem == "another kind" else files["bad"][problem]
    out = tmp_path / "out"
    line = cli_error(script, *[path if a == "{}" else a for a in args], "--out", out)
    words = f"but a {kind} checkpoint is expected" if problem == "another kind" else WORDS[problem]
    assert path in line and words in line, line
    assert not out.exists()


# a real file of the right kind that belongs to another generator: slot -> (file, words)
ANOTHER_GENERATOR = {4: ("feedback", "was made from another generator"),
                     5: ("adapted", "was adapted from another generator"),
                     7: ("adapted", "was adapted from another generator"),
                     8: ("gan16", "the same latents cannot be compared"),
                     10: ("gan16", "the same latents cannot be compared")}


@pytest.mark.parametrize("slot", list(ANOTHER_GENERATOR))
def test_another_generators_file_in_a_path_flag(files, slot, tmp_path):
    script, args, _ = slots(files)[slot]
    which, words = ANOTHER_GENERATOR[slot]
    path = files["other"][which]
    line = cli_error(script, *[path if a == "{}" else a for a in args], "--out", tmp_path / "out")
    assert path in line and words in line, line
    assert not (tmp_path / "out").exists()


def image_folder(root, kind):
    """A --data folder of one of the kinds a folder dataset refuses."""
    root.mkdir()
    if kind == "a file":
        root.rmdir()
        root.write_text("not a folder")
    elif kind == "no class folders":
        Image.new("RGB", (8, 8)).save(root / "loose.png")
    elif kind == "no images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("no image here")
    elif kind == "a corrupt image":
        (root / "cat").mkdir()
        Image.new("RGB", (8, 8)).save(root / "cat" / "good.png")
        (root / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    return root


FOLDERS = {"missing": "no such folder", "a file": "no such folder", "no class folders": "Couldn't find any class",
           "no images": "Found no valid file", "a corrupt image": "bad.png: cannot be decoded as an image"}


@pytest.mark.parametrize("script", [train_stylegan2, train_classifier], ids=["train_stylegan2", "train_classifier"])
@pytest.mark.parametrize("kind", list(FOLDERS))
def test_a_bad_data_folder(script, kind, tmp_path):
    data = tmp_path / "data"
    if kind != "missing":
        image_folder(data, kind)
    args = ["--size", 8, "--batch", 2, "--workers", 0] + (["--iter", 2, "--channel_max", 8, "--n_mlp", 1, "--style_dim", 8]
                                                          if script is train_stylegan2 else ["--epochs", 1,
                                                                                             "--test_fraction", 0.5])
    line = cli_error(script, "--dataset", "folder", "--data", data, *args, "--out", tmp_path / "out")
    assert FOLDERS[kind] in line, line
    assert not (tmp_path / "out").exists() or kind == "a corrupt image"  # found mid-run, by its name


def test_mixed_sizes_and_modes_are_fine(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir()
    Image.new("RGB", (20, 12)).save(tmp_path / "data" / "a" / "wide.png")
    Image.new("L", (9, 9)).save(tmp_path / "data" / "a" / "gray.png")
    Image.new("RGBA", (8, 30)).save(tmp_path / "data" / "b" / "tall.png")
    Image.new("P", (16, 16)).save(tmp_path / "data" / "b" / "palette.png")
    run_main(train_stylegan2, "--dataset", "folder", "--data", tmp_path / "data", "--size", 8, "--batch", 2,
             "--workers", 0, "--iter", 1, "--channel_max", 8, "--n_mlp", 1, "--style_dim", 8, "--n_sample", 4,
             "--out", tmp_path / "out")
    assert os.path.isfile(tmp_path / "out" / "pretrained.pt")


def test_bad_marked_files(files, tmp_path):
    for content, words in ((None, "no such file"), ("1 two 3", "must be integers"), ("0 99", "outside the contact")):
        marked = tmp_path / "marked.txt"
        if content is not None:
            marked.write_text(content)
        line = cli_error(negative_adapt, "--ckpt", files["gan"], "--n_feedback", 8, "--marked_file", marked,
                         "--out", tmp_path / "out")
        assert words in line, line
        assert not (tmp_path / "out").exists()
