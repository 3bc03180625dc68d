"""The whole pipeline through files, as a user runs it: tiny StyleGAN2 -> tiny classifier ->
negative_adapt (oracle, k = 2) -> unlearn (every method) -> extrapolate -> evaluate."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

import checkpoint
import evaluate
import extrapolate
import generate
import method
import negative_adapt
import train_classifier
import train_stylegan2
import unlearn
import utils
from conftest import cli_error, rarer_class, run_main
from nvlabs_format import discriminator, generator, write_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAN = ["--size", "8", "--style_dim", "8", "--n_mlp", "1", "--channel_max", "8"]
SHORT = ["--batch", "8", "--n_sample", "4"]
UNLEARN_METHODS = {
    "el2": ["--method", "repulsion", "--repulsion", "el2"],
    "nl2": ["--method", "repulsion", "--repulsion", "nl2"],
    "il2": ["--method", "repulsion", "--repulsion", "il2"],
    "finetune": ["--method", "finetune"],
    "ewc": ["--method", "ewc", "--fisher_samples", "8"],
    "cf_k": ["--method", "cf_k", "--last_k", "3"],
    "eu_k": ["--method", "eu_k", "--last_k", "3"],
    "l1_sparse": ["--method", "l1_sparse"],
    "cdc": ["--method", "cdc"],
    "rssa": ["--method", "rssa", "--rssa_codes", "3"],
}


def command(script, *args):
    return [sys.executable, os.path.join(ROOT, script), *map(str, args)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Pre-trained GAN, classifier and Stage 1 outputs, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("chain")
    paths = {"gan": str(root / "gan" / "pretrained.pt"), "clf": str(root / "clf" / "classifier.pt"),
             "adapt": str(root / "adapt"), "root": root}
    run_main(train_stylegan2, "--dataset", "synthetic", *GAN, "--batch", 8, "--workers", 0, "--iter", 40,
             "--out", root / "gan")
    run_main(train_classifier, "--dataset", "synthetic", "--size", 8, "--arch", "lenet", "--epochs", 1,
             "--workers", 0, "--out", root / "clf")

    # the class the tiny generator makes less often plays the undesired one
    paths["negative"], paths["n_negative"] = rarer_class(paths["gan"], paths["clf"])
    return paths


@pytest.fixture(scope="module")
def adapted(chain):
    """negative_adapt.py with the classifier as the user, k = 2: its printed lines and files."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run_main(negative_adapt, "--ckpt", chain["gan"], "--classifier", chain["clf"], "--negative", chain["negative"],
                 "--n_feedback", 200, "--n_models", 2, "--iter", 4, "--fisher_samples", 8, "--n_eval", 40, *SHORT,
                 "--out", chain["adapt"])
    return {"stdout": stdout.getvalue(), "feedback": os.path.join(chain["adapt"], "feedback.pt"),
            "adapted": [os.path.join(chain["adapt"], f"adapted_{j}.pt") for j in range(2)]}


def test_feedback_and_stage1(chain, adapted):
    feedback = checkpoint.load_checkpoint(adapted["feedback"], "feedback")
    assert feedback["images"].dtype == torch.uint8 and feedback["images"].shape == (200, 3, 8, 8)
    assert feedback["z"].shape == (200, 8)
    # the oracle's labels are those of the same seeded samples classified above
    assert int(feedback["negative"].sum()) == chain["n_negative"]
    assert feedback["labelled_by"]["negative"] == chain["negative"]
    for j, path in enumerate(adapted["adapted"]):
        nets, ckpt = checkpoint.load_gan(path)
        assert ckpt["method"]["stage"] == "negative_adapt" and ckpt["method"]["model_index"] == j
        assert ckpt["method"]["n_negatives"] == chain["n_negative"]
    # Stage 1 continues from the pre-trained running path length (from 0 the path penalty would
    # shrink the generator); a few steps move it by at most a few per cent
    pretrained_path_length = checkpoint.load_checkpoint(chain["gan"])["mean_path_length"]
    assert pretrained_path_length > 0
    for path in adapted["adapted"]:
        assert checkpoint.load_checkpoint(path)["mean_path_length"] > 0.5 * pretrained_path_length
    assert adapted["stdout"].count(f"samples are '{chain['negative']}'") == 2
    assert os.path.exists(os.path.join(chain["adapt"], "feedback.png"))


def test_stage1_shift_and_ema_pull(chain, adapted, tmp_path, capsys):
    """--report_shift: at λ = 0 the shadow run repeats adapted model 0 exactly (r = 1); a large λ
    holds Stage 1 nearer θ_G (r < 1). After 20 steps the saved g_ema keeps ≤ 5% of the pull."""
    common = ["--ckpt", chain["gan"], "--classifier", chain["clf"], "--negative", chain["negative"],
              "--n_feedback", 200, "--n_models", 1, "--iter", 20, "--fisher_samples", 8, "--n_eval", 20,
              "--report_shift", *SHORT]
    shifts = {}
    for lam in ("0", "1000"):
        run_main(negative_adapt, *common, "--ewc_lambda", lam, "--out", tmp_path / lam)
        line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("shift of adapted model 0")][-1]
        shifts[lam] = float(re.search(r"= ([0-9.]+) \(λ = ", line).group(1))
        nets, ckpt = checkpoint.load_gan(str(tmp_path / lam / "adapted_0.pt"))
        theta_g = list(checkpoint.load_generator(chain["gan"])[0].parameters())
        pull = method.ema_pull(list(nets["g_ema"].parameters()), list(nets["g"].parameters()), theta_g)
        assert abs(pull) <= 0.05 and pull == pytest.approx(ckpt["method"]["ema_pull"])
    assert shifts["0"] == 1.0 and 0 < shifts["1000"] < 0.9, shifts
    assert ckpt["method"]["fisher_mean"] > 0 and ckpt["method"]["ewc_params"] == "synthesis"


def write_pngs(images, folder):
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(os.path.join(folder, f"{i:04d}.png"))


def test_curated_feedback_from_image_folders(chain, adapted, tmp_path, capsys):
    """Folders holding exactly the oracle's negatives give the same feedback images and the same
    adapted model as the generated feedback; positives come from a folder or, without one, from
    the generated samples the oracle calls positive; unlearn.py says which."""
    feedback = checkpoint.load_checkpoint(adapted["feedback"], "feedback")
    negatives, positives = feedback["images"][feedback["negative"]], feedback["images"][~feedback["negative"]]
    write_pngs(negatives, tmp_path / "neg")
    write_pngs(positives[:10], tmp_path / "pos" / "a")  # searched recursively
    write_pngs(positives[10:20], tmp_path / "pos" / "b")
    stage1 = ["--ckpt", chain["gan"], "--n_models", 1, "--iter", 4, "--fisher_samples", 8, *SHORT]
    run_main(negative_adapt, *stage1, "--negatives", tmp_path / "neg", "--positives", tmp_path / "pos",
             "--out", tmp_path / "curated")
    curated = checkpoint.load_checkpoint(str(tmp_path / "curated" / "feedback.pt"), "feedback")
    assert torch.equal(curated["images"], torch.cat([negatives, positives[:20]])) and "z" not in curated
    assert curated["negative"].tolist() == [True] * len(negatives) + [False] * 20
    assert curated["labelled_by"]["folders"]["positives"] == str(tmp_path / "pos")
    ours, _ = checkpoint.load_gan(str(tmp_path / "curated" / "adapted_0.pt"))
    theirs, _ = checkpoint.load_gan(adapted["adapted"][0])
    for a, b in zip(ours["g_ema"].state_dict().values(), theirs["g_ema"].state_dict().values()):
        assert torch.equal(a, b)

    run_main(negative_adapt, *stage1, "--negatives", tmp_path / "neg", "--classifier", chain["clf"],
             "--negative", chain["negative"], "--n_feedback", 200, "--n_eval", 20, "--out", tmp_path / "mixed")
    mixed = checkpoint.load_checkpoint(str(tmp_path / "mixed" / "feedback.pt"), "feedback")
    assert torch.equal(mixed["images"], torch.cat([negatives, positives]))  # the pool's positives
    assert f"generated samples called positive ({len(positives)} of 200" in mixed["labelled_by"]["folders"]["positives"]
    capsys.readouterr()
    run_main(unlearn, "--ckpt", chain["gan"], "--feedback", tmp_path / "curated" / "feedback.pt", "--adapted",
             tmp_path / "curated" / "adapted_0.pt", "--iter", 2, *SHORT, "--out", tmp_path / "unlearned")
    assert f"Stage 2 trains on 20 positives: {tmp_path / 'pos'}" in capsys.readouterr().out

    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    for flags, message in [(["--positives", tmp_path / "pos"], "--positives needs --negatives"),
                           (["--negatives", tmp_path / "empty", "--positives", tmp_path / "pos"],
                            "--negatives .*empty: no image files"),
                           (["--negatives", tmp_path / "broken", "--positives", tmp_path / "pos"],
                            "x.png: cannot be decoded as an image"),
                           (["--negatives", tmp_path / "nowhere", "--positives", tmp_path / "pos"],
                            "--negatives .*nowhere: no such folder"),
                           (["--negatives", tmp_path / "neg"], "say who labels the samples")]:
        with pytest.raises(utils.UserError, match=message):
            run_main(negative_adapt, *stage1, *flags, "--out", tmp_path / "refused")
        assert not (tmp_path / "refused").exists()


def test_feedback_oracle_trained_at_another_size_is_flagged(chain, tmp_path, capsys):
    """The chain's classifier saw 8 px data; labelling a 16 px generator's samples with it warns."""
    model_args = dict(size=16, style_dim=8, n_mlp=1, channel_max=8)
    gan16 = str(tmp_path / "gan16.pt")
    checkpoint.save_generator(gan16, checkpoint.build_gan(model_args), model_args, {}, 0, {})
    try:
        run_main(negative_adapt, "--ckpt", gan16, "--classifier", chain["clf"], "--negative", chain["negative"],
                 "--n_feedback", 20, "--n_models", 1, "--iter", 1, "--fisher_samples", 4, "--n_eval", 4, *SHORT,
                 "--out", tmp_path / "adapt16")
    except utils.UserError:
        pass  # an untrained generator may draw one class only; the warning comes first
    stderr = capsys.readouterr().err
    assert "the classifier was trained on 8 px data" in stderr and "--size 16" in stderr


def test_unlearn_every_method_extrapolate_and_evaluate(chain, adapted):
    root = chain["root"]
    for name, flags in UNLEARN_METHODS.items():
        run_main(unlearn, "--ckpt", chain["gan"], "--feedback", adapted["feedback"], "--adapted", *adapted["adapted"],
                 *flags, "--iter", 20, *SHORT, "--out", root / f"unlearn_{name}")
    run_main(extrapolate, "--ckpt", chain["gan"], "--adapted", *adapted["adapted"], "--gamma", 0, 1,
             "--n_sample", 4, "--out", root / "extrapolate")

    pretrained = checkpoint.load_generator(chain["gan"])[0]
    theta_g = pretrained.state_dict()
    last_3 = [name for _, names in pretrained.layers()[-3:] for name in names]  # to_rgbs.0, convs.0, convs.1 at 8 px
    assert last_3[0].startswith("convs.0.") and last_3[-1].startswith("to_rgbs.0.")
    for name in UNLEARN_METHODS:
        nets, ckpt = checkpoint.load_gan(str(root / f"unlearn_{name}" / "unlearned.pt"))
        assert ckpt["method"]["stage"] == "unlearn" and ckpt["step"] == 20
        assert ckpt["mean_path_length"] > 0.5 * checkpoint.load_checkpoint(chain["gan"])["mean_path_length"]
        g_ema = nets["g_ema"].state_dict()
        changed = [k for k, v in g_ema.items() if k in theta_g and not torch.equal(v, theta_g[k])]
        assert ckpt["model_args"]["latent_compression"] == (name == "rssa")
        assert ("d_patch_head" in ckpt) == (name in ("cdc", "rssa"))
        if name in ("cf_k", "eu_k"):
            # the last 3 layers train (EU-k's from a fresh initialisation); every other tensor of the
            # saved g_ema is θ_G's exactly, and so is g's
            assert ckpt["method"]["last_k"] == last_3 and set(changed) == set(last_3)
            g = nets["g"].state_dict()
            assert all(torch.equal(g[k], theta_g[k]) for k in theta_g if k not in last_3)
        else:
            assert changed
        # the saved g_ema keeps at most 5% of the pull toward θ_G (the EMA ramp-up); from the files
        pull = method.ema_pull(list(nets["g_ema"].parameters()), list(nets["g"].parameters()),
                               list(pretrained.parameters()))
        assert -0.05 <= pull <= 0.05 and pull == pytest.approx(ckpt["method"]["ema_pull"]), name
    # same seed, same batches: the runs with an extra generator loss differ from finetune by it alone
    finetune = checkpoint.load_checkpoint(str(root / "unlearn_finetune" / "unlearned.pt"))["g_ema"]
    for name in ("el2", "nl2", "il2", "l1_sparse"):
        state = checkpoint.load_checkpoint(str(root / f"unlearn_{name}" / "unlearned.pt"))["g_ema"]
        assert any(not torch.equal(state[k], finetune[k]) for k in finetune), name
    repulsion = checkpoint.load_checkpoint(str(root / "unlearn_el2" / "unlearned.pt"))["method"]
    assert repulsion["d0"] > 0 and len(repulsion["adapted"]) == 2

    # gamma 0 is the pre-trained generator itself
    extrapolated, ckpt = checkpoint.load_gan(str(root / "extrapolate" / "extrapolated_0.pt"))
    assert all(torch.equal(v, theta_g[k]) for k, v in extrapolated["g_ema"].state_dict().items())
    assert ckpt["method"]["gamma"] == 0

    out = root / "eval"
    run_main(evaluate, root / "unlearn_el2" / "unlearned.pt", root / "unlearn_finetune" / "unlearned.pt",
             "--reference", chain["gan"], "--classifier", chain["clf"], "--negative", chain["negative"],
             "--retrained", root / "extrapolate" / "extrapolated_1.pt", "--dataset", "synthetic",
             "--features", "classifier", "--n_eval", 200, "--n_fid", 100, "--n_sample", 4, "--out", out)
    record = json.load(open(out / "metrics.json"))
    assert record["reference"]["pul"] == 0 and record["reference"]["negatives"] > 0
    assert len(record["checkpoints"]) == 2 and record["summary"]["pul"]["n"] == 2
    for row in record["checkpoints"]:
        expected = 100 * (record["reference"]["negatives"] - row["negatives"]) / record["reference"]["negatives"]
        assert abs(row["pul"] - expected) < 1e-9 and row["fid"] >= 0 and row["ret_fid"] >= 0
    assert record["protocol"]["fid"]["name"] == "classifier-feature FID"
    assert os.path.exists(out / "comparison.png")


def test_rssa_resumes_exactly_and_its_file_samples_the_compressed_space(chain, adapted, tmp_path):
    """Interrupted at step 4 and resumed to 8, RSSA (the patch head, the anchors, the compressed
    latent space) ends where the run of 8 does; the file's generator is the run's, compression included."""
    flags = ["--ckpt", chain["gan"], "--feedback", adapted["feedback"], "--method", "rssa", "--rssa_codes", 3, *SHORT]
    run_main(unlearn, *flags, "--iter", 8, "--out", tmp_path / "whole")
    run_main(unlearn, *flags, "--iter", 4, "--out", tmp_path / "part")
    run_main(unlearn, *flags, "--iter", 8, "--resume", "--out", tmp_path / "part")
    whole = checkpoint.load_checkpoint(str(tmp_path / "whole" / "unlearned.pt"))
    part = checkpoint.load_checkpoint(str(tmp_path / "part" / "unlearned.pt"))
    for key in ("g_ema", "d", "d_patch_head"):
        assert all(torch.equal(v, part[key][k]) for k, v in whole[key].items()), key
    g_ema = checkpoint.load_gan(str(tmp_path / "whole" / "unlearned.pt"), which=("g_ema",))[0]["g_ema"]
    assert g_ema.latent_compression and float(g_ema.compression_strength.max()) > 0
    z = torch.randn(4, g_ema.style_dim)
    _, latents = g_ema([z], return_latents=True)
    w = g_ema.style(z)
    assert not torch.allclose(latents[:, -1], w) and torch.allclose(latents[:, 0], w)  # s_0 = 0, s_last > 0

    feedback = checkpoint.load_checkpoint(adapted["feedback"], "feedback")
    no_z = checkpoint.save_feedback(str(tmp_path / "curated.pt"), feedback["images"], feedback["negative"],
                                    {"folders": {"negatives": "n", "positives": "p"}}, feedback["generator_fingerprint"])
    line = cli_error(unlearn, "--ckpt", chain["gan"], "--feedback", no_z, "--method", "rssa", "--out", tmp_path / "c")
    assert "--method rssa needs the positives' latents" in line and not (tmp_path / "c").exists()


def test_the_stages_run_from_the_command_line(chain, adapted):
    """The CLI wiring the in-process tests skip: each stage as a process, exit status 0 and its output."""
    root = chain["root"]
    unlearned = root / "cli_unlearn" / "unlearned.pt"
    done = subprocess.run(command("unlearn.py", "--ckpt", chain["gan"], "--feedback", adapted["feedback"],
                                  "--adapted", *adapted["adapted"], "--iter", 1, *SHORT, "--out", unlearned.parent),
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and f"wrote {unlearned}" in done.stdout, done.stderr[-3000:]
    assert checkpoint.load_checkpoint(str(unlearned), "stylegan2")["step"] == 1
    done = subprocess.run(command("generate.py", "--ckpt", chain["gan"], unlearned, "--seeds", "0-3",
                                  "--classifier", chain["clf"], "--negative", chain["negative"], "--out", root / "cli_samples"),
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and done.stdout.count(f"are '{chain['negative']}'") == 2, done.stderr[-3000:]
    assert (root / "cli_samples" / "grid.png").is_file()


def test_bad_input(chain, adapted):
    root = chain["root"]
    feedback = adapted["feedback"]
    # another generator of the same architecture, and one of another architecture
    nets, ckpt = checkpoint.load_gan(chain["gan"])
    with torch.no_grad():
        nets["g_ema"].style[1].bias.add_(1.0)
    other = str(root / "other.pt")
    checkpoint.save_generator(other, nets, ckpt["model_args"], {}, 0, {})
    wide_args = dict(size=8, style_dim=8, n_mlp=1, channel_max=16)
    wide = str(root / "wide.pt")
    checkpoint.save_generator(wide, checkpoint.build_gan(wide_args), wide_args, {}, 0, {})

    cases = [  # (expected words in the error, script, arguments)
        (["no positive", "--n_feedback"], negative_adapt,
         ["--ckpt", chain["gan"], "--n_feedback", 20, "--marked", *range(20)]),
        (["outside the contact sheets"], negative_adapt,
         ["--ckpt", chain["gan"], "--n_feedback", 20, "--marked", 3, 20]),
        (["not a class"], negative_adapt,
         ["--ckpt", chain["gan"], "--classifier", chain["clf"], "--negative", "diagonal"]),
        (["needs --adapted"], unlearn, ["--ckpt", chain["gan"], "--feedback", feedback]),
        (["multiple of 4"], unlearn, ["--ckpt", chain["gan"], "--feedback", feedback, "--method", "ewc",
                                      "--fisher_samples", 6]),
        (["another generator"], unlearn, ["--ckpt", other, "--feedback", feedback, "--method", "finetune"]),
        (["architecture differs"], unlearn, ["--ckpt", chain["gan"], "--feedback", feedback, "--adapted", wide]),
        (["is a classifier checkpoint"], unlearn, ["--ckpt", chain["clf"], "--feedback", feedback]),
        (["--last_k 1000", "between 1 and"], unlearn, ["--ckpt", chain["gan"], "--feedback", feedback,
                                                       "--method", "cf_k", "--last_k", 1000]),
        (["is the pre-trained generator itself"], unlearn, ["--ckpt", chain["gan"], "--feedback", feedback, "--adapted",
                                                            chain["gan"]]),
        (["is the same model as"], unlearn, ["--ckpt", chain["gan"], "--feedback", feedback, "--adapted",
                                             adapted["adapted"][0], adapted["adapted"][0]]),
        (["adapted from another generator"], extrapolate, ["--ckpt", other, "--adapted", adapted["adapted"][0]]),
        (["--adapted: expected at least one argument"], extrapolate, ["--ckpt", chain["gan"], "--adapted"]),
        (["NaN", "last good checkpoint"], unlearn,
         ["--ckpt", chain["gan"], "--feedback", feedback, "--method", "finetune", "--lr", "1e30", "--iter", 20,
          "--log_every", 1, "--save_every", 1, *SHORT]),
    ]
    for i, (words, script, args) in enumerate(cases):
        last = cli_error(script, *args, "--out", root / f"bad{i}")
        assert all(word in last for word in words), (script.__name__, args, last)
    # every input is checked before the output folder is made (the NaN run trains first)
    assert [i for i in range(len(cases)) if (root / f"bad{i}").exists()] == [len(cases) - 1]


def test_adapted_models_without_provenance_warn(chain, adapted, tmp_path, capsys):
    """adapted_*.pt record the generator they came from; a file made before that was recorded is
    used with a warning."""
    ckpt = checkpoint.load_checkpoint(adapted["adapted"][0])
    assert ckpt["generator_fingerprint"] == checkpoint.state_fingerprint(checkpoint.load_checkpoint(chain["gan"])["g_ema"])
    del ckpt["generator_fingerprint"]
    old = str(tmp_path / "adapted_old.pt")
    checkpoint.save_checkpoint(ckpt, old)
    run_main(extrapolate, "--ckpt", chain["gan"], "--adapted", old, "--gamma", 0.5, "--n_sample", 4,
             "--out", tmp_path / "extrapolate")
    assert "does not record which generator" in capsys.readouterr().err


def test_an_nvlabs_snapshot_goes_through_the_chain(chain, adapted, tmp_path):
    """The chain's GAN as an NVlabs-format .pkl: the same generator (same fingerprint, same feedback),
    and every stage reads it: negative_adapt -> unlearn -> evaluate -> generate."""
    nets, _ = checkpoint.load_gan(chain["gan"])
    w_avg = nets["g_ema"].mean_latent(64)[0].detach()
    pkl = write_snapshot(str(tmp_path / "network-snapshot-000040.pkl"), generator(nets["g"], w_avg),
                         discriminator(nets["d"], 8), generator(nets["g_ema"], w_avg))
    run_main(negative_adapt, "--ckpt", pkl, "--classifier", chain["clf"], "--negative", chain["negative"],
             "--n_feedback", 200, "--n_models", 1, "--iter", 2, "--fisher_samples", 8, "--n_eval", 20, *SHORT,
             "--out", tmp_path / "adapt")
    ours, theirs = (checkpoint.load_checkpoint(str(p), "feedback")
                    for p in (adapted["feedback"], tmp_path / "adapt" / "feedback.pt"))
    assert torch.equal(ours["images"], theirs["images"]) and torch.equal(ours["negative"], theirs["negative"])
    assert ours["generator_fingerprint"] == theirs["generator_fingerprint"]
    run_main(unlearn, "--ckpt", pkl, "--feedback", tmp_path / "adapt" / "feedback.pt", "--adapted",
             tmp_path / "adapt" / "adapted_0.pt", "--iter", 2, *SHORT, "--out", tmp_path / "unlearn")
    record = run_main(evaluate, tmp_path / "unlearn" / "unlearned.pt", "--reference", pkl, "--classifier", chain["clf"],
                      "--negative", chain["negative"], "--dataset", "synthetic", "--features", "classifier",
                      "--n_eval", 100, "--n_fid", 50, "--n_sample", 0, "--out", tmp_path / "eval")
    assert record["reference"]["negatives"] > 0 and record["checkpoints"][0]["fid"] >= 0
    rows = run_main(generate, "--ckpt", pkl, tmp_path / "unlearn" / "unlearned.pt", "--seeds", "0-3",
                    "--out", tmp_path / "samples")
    assert len(rows) == 2 and (tmp_path / "samples" / "grid.png").is_file()
