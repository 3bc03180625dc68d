import argparse
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import MNIST

import checkpoint
import dataset
import gan
import method
import train_stylegan2
import utils
from conftest import cli_error, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_stylegan2.py")
MNIST5K = os.path.join(ROOT, "..", "shared", "data", "mnist5k")
TINY = ["--dataset", "synthetic", "--size", "8", "--style_dim", "8", "--n_mlp", "1", "--channel_max", "8",
        "--batch", "4", "--workers", "0", "--sample_every", "1000", "--n_sample", "4"]


def run(*args, check=True, **kwargs):
    done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(done.stderr[-3000:])
    return done


def test_tiny_run_writes_loadable_checkpoints(tmp_path):
    out = str(tmp_path / "run")
    run_main(train_stylegan2, *TINY, "--iter", "6", "--save_every", "3", "--out", out)
    assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == ["000003.pt"]
    assert os.path.exists(os.path.join(out, "args.json"))
    assert any(name.endswith(".png") for name in os.listdir(os.path.join(out, "sample")))
    nets, ckpt = checkpoint.load_gan(os.path.join(out, "pretrained.pt"))
    assert ckpt["step"] == 6 and ckpt["model_args"]["size"] == 8 and ckpt["args"]["iter"] == 6
    assert {"g_optim", "d_optim", "rng", "sources"} <= set(ckpt)
    images, _ = nets["g_ema"].eval()([torch.randn(2, 8)])
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    # g_ema is an average of g, not g itself
    assert any(not torch.equal(a, b) for a, b in zip(nets["g"].parameters(), nets["g_ema"].parameters()))


@pytest.mark.parametrize("start, samples, saves", [(0, [4, 8, 10], [4, 8]), (5, [8, 10], [8])])
def test_training_loop_samples_and_saves_on_completed_steps(start, samples, saves):
    """Sample grids and checkpoints are named by the steps done: every 4 here, and a grid after
    the last step, whose checkpoint the caller writes itself."""
    sampled, saved = [], []
    gan.run_gan_training(lambda batch, step: {"d": torch.tensor(1.0)}, lambda: None, start, 10,
                           sample=sampled.append, sample_every=4,
                           save=lambda done: saved.append(done) or f"{done}.pt", save_every=4, show=False)
    assert (sampled, saved) == (samples, saves)


def test_ckpt_starts_a_run_from_any_checkpoint(tmp_path, capsys):
    """--ckpt continues from a checkpoint file into a new --out (--resume, tested with kill -9 in
    test_runs.py, continues the run in its own --out)."""
    out = tmp_path / "run"
    run_main(train_stylegan2, *TINY, "--iter", "4", "--save_every", "2", "--out", out)
    last = str(out / "checkpoint" / "000002.pt")
    run_main(train_stylegan2, *TINY, "--ckpt", last, "--iter", "5", "--save_every", "1000", "--out", tmp_path / "resumed")
    assert f"resuming {last} at step 2" in capsys.readouterr().out
    resumed = checkpoint.load_checkpoint(str(tmp_path / "resumed" / "pretrained.pt"))
    assert resumed["step"] == 5 and resumed["sources"]["resumed_from"] == os.path.abspath(last)


def test_synthetic_exclude_counts():
    data, info = dataset.load_dataset("synthetic", None, 8, exclude="vertical", verbose=False)
    assert (info["kept"], info["dropped"]) == (256, 256)
    assert all(data[i][1] == 0 for i in range(0, 256, 37))


@pytest.mark.skipif(not os.path.isdir(MNIST5K), reason="../shared/data/mnist5k absent")
def test_mnist_exclude_keeps_exactly_the_other_digits():
    labels = MNIST(MNIST5K, train=True).targets
    data, info = dataset.load_dataset("mnist", MNIST5K, 32, exclude="8", verbose=False)
    assert info["kept"] == int((labels != 8).sum()) and info["dropped"] == int((labels == 8).sum())
    assert all(data[i][1] != 8 for i in range(len(data)))
    image, _ = data[0]
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert torch.equal(image[0], image[1])  # gray replicated to 3 channels


def test_celeba_attribute_table(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (20, 24), (i * 60, 0, 0)).save(images / f"{i}.jpg")
    table = tmp_path / "attr.txt"
    table.write_text("4\nBangs Eyeglasses\n0.jpg 1 -1\n1.jpg -1 -1\n2.jpg 1 1\n3.jpg -1 1\n")
    data, info = dataset.load_dataset("celeba", str(images), 16, attributes=str(table), exclude="Bangs",
                                       verbose=False)
    assert (info["kept"], info["dropped"]) == (2, 2) and info["attributes"] == ["Bangs", "Eyeglasses"]
    image, attributes = data[1]
    assert image.shape == (3, 16, 16) and attributes.tolist() == [0.0, 1.0]

    table.write_text("Bangs Eyeglasses\n0.jpg 1 -1\n9.jpg -1 -1\n")
    with pytest.raises(utils.UserError, match="do not match"):
        dataset.load_dataset("celeba", str(images), 16, attributes=str(table))
    with pytest.raises(utils.UserError, match="not an attribute"):
        table.write_text("Bangs Eyeglasses\n0.jpg 1 -1\n")
        dataset.load_dataset("celeba", str(images), 16, attributes=str(table), exclude="Hat")


def test_folder_dataset_and_exclude(tmp_path):
    for name, count in (("cat", 3), ("dog", 2)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (30, 20), (0, 99, 0)).save(tmp_path / name / f"{i}.png")
    data, info = dataset.load_dataset("folder", str(tmp_path), 16, exclude="cat", verbose=False)
    assert info["classes"] == ["cat", "dog"] and info["kept"] == 2
    assert data[0][0].shape == (3, 16, 16) and data[0][1] == 1


@pytest.mark.parametrize("extra, message", [
    (["--exclude", "diagonal"], "not a class"),
    (["--size", "12"], "power of two"),
    (["--batch", "3"], "not divisible"),  # under 2 processes, see WORLD_SIZE below
    (["--dataset", "folder", "--data", "no/such/folder"], "no such folder"),
    (["--dataset", "celeba", "--data", "."], "needs --attributes"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, extra, message):
    if "--batch" in extra:
        monkeypatch.setenv("WORLD_SIZE", "2")
    assert message in cli_error(train_stylegan2, *TINY, "--iter", "1", "--out", tmp_path / "x", *extra)


def test_cli_error_is_one_line_and_writes_nothing(tmp_path):
    """The CLI wiring: a process with an unusable --device exits 2 with one line naming the device
    and the fix (no machine here has 8 GPUs), before it makes --out."""
    done = run(*TINY, "--iter", "1", "--device", "cuda:7", "--out", str(tmp_path / "x"), check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "--device cuda:7: torch sees" in lines[0], done.stderr
    assert not (tmp_path / "x").exists()


def test_check_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for usable in ("cuda", "cuda:1", "cpu"):
        utils.check_device(usable)  # no error
    with pytest.raises(utils.UserError, match=r"torch sees 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)"):
        utils.check_device("cuda:2")
    with pytest.raises(utils.UserError, match="not a torch device"):
        utils.check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(utils.UserError, match="sees no CUDA GPU here; use --device cpu"):
        utils.check_device("cuda")


def test_more_processes_than_gpus_is_a_user_error(monkeypatch):
    """torchrun with 2 processes on a 1-GPU node: the second process gets a one-line error, not
    torch's 'invalid device ordinal' from inside set_device."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device reached"))
    with pytest.raises(utils.UserError, match=r"process 1 of this node has no GPU of its own \(1 visible\)"):
        train_stylegan2.setup_distributed("cuda")


def test_resume_with_other_architecture_is_one_line(tmp_path):
    out = str(tmp_path / "run")
    run_main(train_stylegan2, *TINY, "--iter", "1", "--out", out)
    last = cli_error(train_stylegan2, *TINY, "--iter", "3", "--ckpt", os.path.join(out, "pretrained.pt"),
                     "--channel_max", "16", "--out", out)
    assert "channel_max 8 in the file vs 16 asked for" in last


def test_unwritable_out_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write to --out" in cli_error(train_stylegan2, *TINY, "--iter", "1", "--out", blocker / "sub")


def test_exclude_writes_retrained_pt(tmp_path):
    run_main(train_stylegan2, *TINY, "--iter", "1", "--exclude", "vertical", "--out", tmp_path / "run")
    assert sorted(p.name for p in tmp_path.joinpath("run").glob("*.pt")) == ["retrained.pt"]


def test_two_process_ddp_on_cpu(tmp_path):
    out = str(tmp_path / "ddp")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
               SCRIPT, *TINY, "--device", "cpu", "--iter", "3", "--out", out]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "pretrained.pt"), "stylegan2")
    assert ckpt["step"] == 3


def test_same_seed_same_weights(tmp_path):
    """--seed fixes everything: initial weights, noise, mixing, batch order."""
    states = []
    for name in ("a", "b"):
        run_main(train_stylegan2, *TINY, "--iter", "3", "--out", tmp_path / name)
        states.append(checkpoint.load_checkpoint(str(tmp_path / name / "pretrained.pt"))["g_ema"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("batch", [4, 16, 32])
def test_ema_half_life_is_ema_kimg_thousand_images(batch):
    args = argparse.Namespace(batch=batch, ema_kimg=0.5, ema_rampup=0.0)
    steps = 500 / batch  # 500 images (a fixed 32 images a step would give 0.25 at batch 16)
    assert gan.ema_decay(args, 1) ** steps == pytest.approx(0.5, rel=1e-9)
    # the default is rosinality's 0.5 ** (32 / 10000) per step at the default batch of 16
    defaults = gan.add_gan_training_args(argparse.ArgumentParser()).parse_args([])
    assert defaults.batch == 16 and gan.ema_decay(defaults, 10 ** 6) == pytest.approx(0.5 ** (32 / 10000), rel=1e-12)
    # with the ramp-up the half-life is ema_rampup of the images seen, until ema_kimg caps it
    args.ema_rampup = 0.1
    assert gan.ema_decay(args, 100) == pytest.approx(0.5 ** (1 / 10), rel=1e-12)  # 10 steps
    assert gan.ema_decay(args, 10 ** 6) == pytest.approx(0.5 ** (batch / 500), rel=1e-12)


@pytest.mark.parametrize("iters", [20, 200, 1000, 5000])
@pytest.mark.parametrize("path", ["line", "random walk", "fast then slow"])
def test_the_fine_tuning_ema_keeps_at_most_5_percent_of_the_pull(iters, path):
    """s = ⟨g_ema − g, θ_G − g⟩ / ‖θ_G − g‖² at the end of a run, with the fine-tuning stages' EMA
    default, for trajectories of g that move steadily, at random, or mostly at the start."""
    args = argparse.Namespace(batch=16, ema_kimg=5, ema_rampup=gan.FINE_TUNE_EMA_RAMPUP)
    rng = torch.Generator().manual_seed(iters)
    steps = torch.randn(iters, 50, generator=rng, dtype=torch.float64)
    if path == "line":
        steps = torch.ones(iters, 50, dtype=torch.float64)
    elif path == "fast then slow":
        steps = steps + 1.0 / torch.arange(1, iters + 1, dtype=torch.float64)[:, None].sqrt() * 20
    theta_g = torch.zeros(50, dtype=torch.float64)
    g, g_ema = theta_g.clone(), theta_g.clone()
    for done in range(1, iters + 1):
        g = g + steps[done - 1]
        g_ema = torch.lerp(g_ema, g, 1 - gan.ema_decay(args, done))
    pull = method.ema_pull([g_ema], [g], [theta_g])
    assert 0 <= pull <= 0.05, pull
    # the pre-training default (no ramp-up) on the same 200-step line keeps most of the pull
    if path == "line" and iters == 200:
        args.ema_rampup = 0.0
        g_ema = theta_g.clone()
        g = theta_g.clone()
        for done in range(1, iters + 1):
            g = g + steps[done - 1]
            g_ema = torch.lerp(g_ema, g, 1 - gan.ema_decay(args, done))
        assert method.ema_pull([g_ema], [g], [theta_g]) > 0.5


def test_16_bit_palette_and_corrupt_images(tmp_path):
    """16-bit grayscale is scaled to 8 bits (not clipped to white), a palette image takes its
    palette's colours, and an undecodable file stops the run with its name (also from a worker)."""
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "a" / "gray16.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "a" / "palette.png")
    data, _ = dataset.load_dataset("folder", str(tmp_path), 8, verbose=False)
    gray, red = data[0][0], data[1][0]
    assert torch.allclose(gray, torch.full_like(gray, 128 / 255 * 2 - 1), atol=1e-6)
    assert torch.allclose(red[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(utils.UserError, match="broken.png: cannot be decoded as an image"):
        dataset.load_dataset("folder", str(tmp_path), 8, verbose=False)[0][0]
    line = cli_error(train_stylegan2, *TINY, "--dataset", "folder", "--data", tmp_path, "--batch", 3,
                     "--workers", 1, "--iter", 2, "--out", tmp_path.parent / f"{tmp_path.name}_run")
    assert "broken.png: cannot be decoded as an image" in line and "Traceback" not in line


def test_attribute_tables_must_match(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(images / f"{i}.jpg")
    for text, words in (("3\nA B\n0.jpg 1 -1\n1.jpg -1 1\n", "says 3 images, the table has 2 rows"),
                        ("A B\n0.jpg 1 2\n1.jpg -1 1\n", "row 1 (0.jpg) has the value '2'"),
                        ("A B\n0.jpg 1 x\n1.jpg -1 1\n", "has the value 'x'"),
                        ("A B\n0.jpg 1 1\n0.jpg -1 1\n", "0.jpg has more than one row")):
        (tmp_path / "attr.txt").write_text(text)
        with pytest.raises(utils.UserError, match=re.escape(words)):
            dataset.load_dataset("celeba", str(images), 8, attributes=str(tmp_path / "attr.txt"))


def test_a_failed_mnist_download_leaves_the_data_folder_as_it_was(tmp_path, monkeypatch):
    """A download that fails halfway (here: after writing one file, as a dropped connection
    would) leaves neither files in --data nor its temporary folder."""
    downloads = []

    class HalfDownload:
        def __init__(self, root, train, download):
            if not download:
                raise RuntimeError("Dataset not found")
            downloads.append(root)
            os.makedirs(os.path.join(root, "MNIST", "raw"))
            open(os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte.gz"), "wb").write(b"half")
            raise ConnectionError("connection reset")
    monkeypatch.setattr(dataset, "MNIST", HalfDownload)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(utils.UserError, match=r"could not be downloaded \(ConnectionError\)"):
        dataset.load_dataset("mnist", str(root), 32)
    assert os.listdir(root) == [] and len(downloads) == 1 and not os.path.exists(downloads[0])


class Scaled(torch.nn.Module):
    def __init__(self, d, factor):
        super().__init__()
        self.d, self.factor = d, factor

    def forward(self, images):
        return self.factor * self.d(images)


def test_ewc_fisher_is_normalised_and_anchors_the_synthesis_network():
    """F̂ = F / mean(F) over the anchored tensors: a discriminator whose output is 10x larger (raw
    Fisher 100x) gives the same penalty; `synthesis` leaves out the mapping network and the
    constant input; the penalty is λ·Σ F̂ (θ − θ_G)² by hand."""
    model_args = dict(size=8, style_dim=8, n_mlp=2, channel_max=8)
    nets = checkpoint.build_gan(model_args)
    args = argparse.Namespace(ewc_params="synthesis", fisher_samples=8, mixing=0.0, ewc_lambda=3.0)
    penalties = []
    for factor in (1.0, 10.0):
        torch.manual_seed(0)
        penalties.append(gan.EWCPenalty(nets["g"], Scaled(nets["d"], factor), args, "cpu"))
    small, large = penalties
    assert large.fisher_mean == pytest.approx(100 * small.fisher_mean, rel=1e-4)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(small.fisher, large.fisher))
    total = sum(float(f.sum()) for f in small.fisher)
    assert total / sum(f.numel() for f in small.fisher) == pytest.approx(1.0, rel=1e-6)
    assert small.names and not any(n.startswith("style.") or n.startswith("input.") for n in small.names)
    assert set(small.names) == {n for n, _ in nets["g"].named_parameters()} - {
        n for n, _ in nets["g"].named_parameters() if n.startswith(("style.", "input."))}

    moved = checkpoint.build_gan(model_args, ("g",))["g"]
    moved.load_state_dict(nets["g"].state_dict())
    assert float(small(moved).detach()) == 0
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(0.01 * torch.randn_like(p))
    named = {n: p.detach() for n, p in moved.named_parameters()}
    by_hand = 3.0 * sum(float((f * (named[n] - t).square()).sum()) for n, f, t in zip(small.names, small.fisher,
                                                                                        small.theta_g))
    assert float(small(moved).detach()) == pytest.approx(by_hand, rel=1e-5)
    args.ewc_params = "all"
    assert len(gan.EWCPenalty(nets["g"], nets["d"], args, "cpu").names) == len(list(nets["g"].parameters()))
