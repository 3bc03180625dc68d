"""The whole pipeline through files, as a user runs it: tiny StyleGAN2 -> tiny classifier ->
negative_adapt (oracle, k = 2) -> unlearn (every method) -> extrapolate -> evaluate."""

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import evaluate
import extrapolate
import generate
import metrics
import negative_adapt
import train_classifier
import train_stylegan2
import unlearn
import utils
from conftest import cli_error, run_main
from nvlabs_format import discriminator, generator, write_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_CPU = os.path.join(ROOT, "mnist_cpu.sh")
GAN = ["--size", "8", "--style_dim", "8", "--n_mlp", "1", "--channel_max", "8"]
SHORT = ["--batch", "8", "--n_sample", "4"]
UNLEARN_METHODS = {
    "el2": ["--method", "repulsion", "--repulsion", "el2"],
    "nl2": ["--method", "repulsion", "--repulsion", "nl2"],
    "il2": ["--method", "repulsion", "--repulsion", "il2"],
    "finetune": ["--method", "finetune"],
    "ewc": ["--method", "ewc", "--fisher_samples", "8"],
    "cf_k": ["--method", "cf_k"],
    "eu_k": ["--method", "eu_k"],
    "l1_sparse": ["--method", "l1_sparse"],
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
    g, _ = checkpoint.load_generator(paths["gan"])
    classifier, meta = checkpoint.load_classifier(paths["clf"])
    images = torch.cat([b for _, b in metrics.generate_images(g, 200, 0, 100, "cpu")])
    counts = metrics.label_counts(metrics.classify(classifier, meta, utils.from_uint8(utils.to_uint8(images))), meta)
    assert counts.min() > 0, f"the tiny generator makes one class only: {counts.tolist()}"
    paths["negative"] = meta["classes"][int(counts.argmin())]
    paths["n_negative"] = int(counts.min())
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
        nets, ckpt = checkpoint.load_stylegan2(path)
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


def test_feedback_oracle_trained_at_another_size_is_flagged(chain, tmp_path, capsys):
    """The chain's classifier saw 8 px data; labelling a 16 px generator's samples with it warns."""
    model_args = dict(size=16, style_dim=8, n_mlp=1, channel_max=8)
    gan16 = str(tmp_path / "gan16.pt")
    checkpoint.save_generator(gan16, checkpoint.build_stylegan2(model_args), model_args, {}, 0, {})
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
                 *flags, "--iter", 3, *SHORT, "--out", root / f"unlearn_{name}")
    run_main(extrapolate, "--ckpt", chain["gan"], "--adapted", *adapted["adapted"], "--gamma", 0, 1,
             "--n_sample", 4, "--out", root / "extrapolate")

    theta_g = checkpoint.load_generator(chain["gan"])[0].state_dict()
    for name in UNLEARN_METHODS:
        nets, ckpt = checkpoint.load_stylegan2(str(root / f"unlearn_{name}" / "unlearned.pt"))
        assert ckpt["method"]["stage"] == "unlearn" and ckpt["step"] == 3
        assert ckpt["mean_path_length"] > 0.5 * checkpoint.load_checkpoint(chain["gan"])["mean_path_length"]
        changed = [k for k, v in nets["g_ema"].state_dict().items() if not torch.equal(v, theta_g[k])]
        if name == "cf_k":  # only the last 10 tensors train; EMA moves only those
            assert set(changed) <= set(ckpt["method"]["last_k"]) and changed
        else:
            assert changed
    # same seed, same batches: the runs with an extra generator loss differ from finetune by it alone
    finetune = checkpoint.load_checkpoint(str(root / "unlearn_finetune" / "unlearned.pt"))["g_ema"]
    for name in ("el2", "nl2", "il2", "l1_sparse"):
        state = checkpoint.load_checkpoint(str(root / f"unlearn_{name}" / "unlearned.pt"))["g_ema"]
        assert any(not torch.equal(state[k], finetune[k]) for k in finetune), name
    repulsion = checkpoint.load_checkpoint(str(root / "unlearn_el2" / "unlearned.pt"))["method"]
    assert repulsion["d0"] > 0 and len(repulsion["adapted"]) == 2

    # gamma 0 is the pre-trained generator itself
    extrapolated, ckpt = checkpoint.load_stylegan2(str(root / "extrapolate" / "extrapolated_0.pt"))
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
    nets, ckpt = checkpoint.load_stylegan2(chain["gan"])
    with torch.no_grad():
        nets["g_ema"].style[1].bias.add_(1.0)
    other = str(root / "other.pt")
    checkpoint.save_generator(other, nets, ckpt["model_args"], {}, 0, {})
    wide_args = dict(size=8, style_dim=8, n_mlp=1, channel_max=16)
    wide = str(root / "wide.pt")
    checkpoint.save_generator(wide, checkpoint.build_stylegan2(wide_args), wide_args, {}, 0, {})

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


def test_mnist_cpu_refuses_an_out_made_with_other_settings(tmp_path):
    # a missing MNIST folder makes both GAN stages fail at once, after the settings are recorded
    out = tmp_path / "out"

    def mnist_cpu(gan_iter):
        env = dict(os.environ, DATA=str(tmp_path / "no_mnist"), OUT=str(out), GAN_ITER=str(gan_iter))
        # the script calls the others by relative path
        return subprocess.run(["bash", MNIST_CPU, "8"], capture_output=True, text=True, env=env, cwd=ROOT)

    first = mnist_cpu(4)
    assert first.returncode == 1
    assert "[fail] pretrain" in first.stdout and "[fail] retrain" in first.stdout
    assert "MNIST is not under" in (out / "logs" / "pretrain.log").read_text()
    assert (out / "settings").read_text().startswith("GAN_ITER=4 ")
    other = mnist_cpu(5)
    assert other.returncode == 1
    assert "was made with other settings" in other.stderr and "[run ]" not in other.stdout
    same = mnist_cpu(4)
    assert same.returncode == 1 and "[run ] pretrain" in same.stdout


# the script's grids with made-up validation scores against a pre-trained FID of 40: el2 100
# (59 <= 1.5 x 40) is the highest PUL within the limit, 200 just above it; nl2 has none within,
# so its lowest FID (0.1) is chosen
MU_GRIDS = {"el2": {"30": (70.0, 40.0), "100": (80.0, 59.0), "200": (85.0, 60.01), "300": (95.0, 61.0),
                    "400": (96.0, 62.0)},
            "nl2": {"0.1": (60.0, 65.0), "0.3": (80.0, 68.0), "1": (90.0, 70.0)},
            "il2": {"3": (50.0, 41.0), "10": (60.0, 45.0)}}
MU_CHOSEN = {"el2": "100", "nl2": "0.1", "il2": "10"}


def mnist_cpu_outputs(out):
    """Every stage's output of `mnist_cpu.sh 8` under `out`, as files the script only checks for
    (the validation and evaluation metrics with made-up numbers); returns the digit folder."""
    digit = out / "digit8"
    done = [out / "gan" / "pretrained.pt", digit / "retrained" / "retrained.pt", out / "lenet" / "classifier.pt",
            digit / "adapt" / "adapted_4.pt", digit / "extrapolate" / "extrapolated_1.pt"]
    for loss, grid in MU_GRIDS.items():
        for mu, (pul, fid) in grid.items():
            done.append(digit / f"{loss}_mu{mu}" / "s0" / "unlearned.pt")
            record = {"checkpoints": [{"pul": pul, "fid": fid}], "reference": {"fid": 40.0}}
            (digit / "validation" / f"{loss}_mu{mu}").mkdir(parents=True)
            (digit / "validation" / f"{loss}_mu{mu}" / "metrics.json").write_text(json.dumps(record))
        done += [digit / f"{loss}_mu{MU_CHOSEN[loss]}" / f"s{seed}" / "unlearned.pt" for seed in (1, 2)]
    baselines = ["cf_k", "eu_k", "l1_sparse", "ewc", "finetune"]
    done += [digit / method / f"s{seed}" / "unlearned.pt" for method in baselines for seed in (0, 1, 2)]
    for path in done:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def stat(mean):
        return {"mean": mean, "std": 0.5, "n": 3}

    folders = {"retraining": "retraining", **{b: b for b in baselines},
               **{f"extrapolation_{g}": f"extrapolation γ={g}" for g in ("0.25", "0.5", "1")},
               **{loss: f"{loss} (mu {MU_CHOSEN[loss]})" for loss in MU_GRIDS}}
    for i, (folder, label) in enumerate(folders.items()):
        side_effects = {str(c): stat(float(c - i)) for c in range(10)}
        side_effects["3"] = None  # the pre-trained model drew no 3
        record = {"protocol": {"pul": {"n_eval": 15000}, "fid": {"n_fid": 5000}},
                   "reference": {"negatives": 1101, "fid": 37.7, "ret_fid": 50.0},
                   # evaluate.py gives the retrained model no Ret-FID against itself
                   "summary": {"pul": stat(10.0 + i), "fid": stat(40.0 + i),
                               "ret_fid": None if folder == "retraining" else stat(45.0 + i),
                               "side_effects": side_effects}}
        (digit / "eval" / folder).mkdir(parents=True)
        (digit / "eval" / folder / "metrics.json").write_text(json.dumps(record))
        (digit / "eval" / folder / "args.json").write_text(json.dumps({"args": {"label": label}}))
    for loss, grid in MU_GRIDS.items():  # the seed-0 run of every grid μ on the evaluation latents
        checkpoints = [{"path": str(digit / f"{loss}_mu{mu}" / "s0" / "unlearned.pt"), "pul": pul + 1.0,
                        "fid": 2 * fid, "ret_fid": fid + 3.0} for mu, (pul, fid) in grid.items()]
        (digit / "eval" / f"grid_{loss}").mkdir(parents=True)
        (digit / "eval" / f"grid_{loss}" / "metrics.json").write_text(json.dumps({"checkpoints": checkpoints}))
    return digit


def test_mnist_cpu_chooses_mu_on_validation_and_tabulates(tmp_path):
    """With every stage's output already on disk the script only chooses μ and writes the table:
    the highest validation PUL within 1.5× the pre-trained FID (the lowest FID when none is), and
    a digit the pre-trained model never drew (no % change) is left out of the side-effect column."""
    out = tmp_path / "out"
    digit = mnist_cpu_outputs(out)
    env = dict(os.environ, OUT=str(out), DATA=str(tmp_path / "unused"))
    run = subprocess.run(["bash", MNIST_CPU, "8"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "[run ]" not in run.stdout
    assert {loss: (digit / "validation" / f"{loss}.mu").read_text().strip() for loss in MU_GRIDS} == MU_CHOSEN
    rows = {line.split(" | ")[0].lstrip("| "): line for line in (digit / "results.md").read_text().splitlines()
            if line.startswith("| ")}
    assert rows["pre-trained"] == "| pre-trained | – | 37.70 | 50.00 | – |"
    assert rows["retraining"] == "| retraining | 10.00 ± 0.50 | 40.00 ± 0.50 | N/A | 9: +9.0% |"
    # el2 is folder i = 9: the largest |c − 9| among the digits but 8 and 3 is digit 0's
    assert rows["el2 (mu 100)"] == "| el2 (mu 100) | 19.00 ± 0.50 | 49.00 ± 0.50 | 54.00 ± 0.50 | 0: -9.0% |"
    # every grid μ's seed-0 run on the evaluation latents beside its validation scores; the FID
    # ratio is against the pre-trained model's evaluation FID (2 × 59 / 37.7)
    grid_rows = [line for line in (digit / "results.md").read_text().splitlines()
                 if line.split(" | ")[0].lstrip("| ").split(" ")[0] in MU_GRIDS and line.count(" | ") == 6]
    assert len(grid_rows) == sum(len(grid) for grid in MU_GRIDS.values())
    assert "| el2 (chosen) | 100 | 81.00 | 118.00 | 3.13× | 62.00 | 80.0 / 59.0 |" in grid_rows
    assert "| nl2 | 1 | 91.00 | 140.00 | 3.71× | 73.00 | 90.0 / 70.0 |" in grid_rows


def test_mnist_cpu_validates_at_the_evaluation_counts(tmp_path):
    """The command lines the script gives its stages: the pre-training runs the iterations and the
    EMA half-life of OUT/settings, the LeNet ensemble has the members of OUT/settings, Stage 1
    labels the feedback size of OUT/settings, Stage 2 trains
    with the style mixing of OUT/settings, and validation scores
    seed 2 with the evaluation's sample counts (a ratio on fewer FID samples came out lower than
    the evaluation's). A python3 on PATH records them."""
    out = tmp_path / "out"
    digit = mnist_cpu_outputs(out)
    (out / "gan" / "pretrained.pt").unlink()
    (out / "lenet" / "classifier.pt").unlink()
    (digit / "adapt" / "adapted_4.pt").unlink()
    (digit / "validation" / "il2_mu3" / "metrics.json").unlink()
    (digit / "finetune" / "s2" / "unlearned.pt").unlink()
    (digit / "eval" / "grid_il2" / "metrics.json").unlink()
    log, bin_dir = tmp_path / "commands.jsonl", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f"""#!{sys.executable}
import json, os, sys
if sys.argv[1:2] == ["-"]:  # the script's own table and μ-choice programs run for real
    os.execv({sys.executable!r}, [{sys.executable!r}] + sys.argv[1:])
args = sys.argv[1:] + ["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "")]
open({str(log)!r}, "a").write(json.dumps(args) + "\\n")
out = args[args.index("--out") + 1]
os.makedirs(out, exist_ok=True)
if args[0] == "negative_adapt.py":
    open(os.path.join(out, "adapted_4.pt"), "w").close()
elif args[0] == "evaluate.py":
    checkpoints = [{{"path": path, "pul": 50.0, "fid": 41.0, "ret_fid": 42.0}}
                   for path in args[1:args.index("--reference")]]
    metrics = {{"checkpoints": checkpoints, "reference": {{"fid": 40.0}}}}
    open(os.path.join(out, "metrics.json"), "w").write(json.dumps(metrics))
""")
    (bin_dir / "python3").chmod(0o755)
    env = dict(os.environ, OUT=str(out), DATA=str(tmp_path / "unused"), N_EVAL="600", N_FID="200",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["bash", MNIST_CPU, "8"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    # nothing else was missing
    assert [c[0] for c in commands] == ["train_stylegan2.py", "train_classifier.py", "negative_adapt.py",
                                        "evaluate.py", "unlearn.py", "evaluate.py"]

    def option(command, name):
        return command[command.index(name) + 1]

    pretrain, lenet, stage1, validate, finetune, grid = commands
    settings = (out / "settings").read_text()
    assert f" LENET_MEMBERS={option(lenet, '--members')} " in settings
    # the training thread counts are recorded and given: GAN_THREADS to the GANs, THREADS to the
    # LeNets, Stage 1 and Stage 2; scoring runs JOBS (2) at a time with THREADS / JOBS each
    assert f" GAN_THREADS={pretrain[-1].split('=')[1]} THREADS={lenet[-1].split('=')[1]} " in settings
    assert {c[-1] for c in (lenet, stage1, finetune)} == {"OMP_NUM_THREADS=2"}
    assert {c[-1] for c in (pretrain, validate, grid)} == {"OMP_NUM_THREADS=1"}
    assert settings.startswith(f"GAN_ITER={option(pretrain, '--iter')} GAN_EMA_KIMG={option(pretrain, '--ema_kimg')} ")
    assert "--exclude" not in pretrain
    assert f" N_FEEDBACK={option(stage1, '--n_feedback')} " in settings
    assert f" STAGE2_MIXING={option(finetune, '--mixing')} " in settings
    assert (option(finetune, "--method"), option(finetune, "--seed")) == ("finetune", "2")
    assert option(stage1, "--negative") == "8"
    assert validate[1] == str(digit / "il2_mu3" / "s0" / "unlearned.pt")
    assert (option(validate, "--seed"), option(validate, "--n_eval"), option(validate, "--n_fid")) == \
        ("2", "600", "200")
    # the recorded score of μ = 3 (50 / 41) is below μ = 10's PUL (60), so μ = 10 stays chosen
    assert (digit / "validation" / "il2.mu").read_text().strip() == "10"
    # every grid μ's seed-0 run is scored on the evaluation latents, in one call
    assert grid[1:grid.index("--reference")] == [str(digit / f"il2_mu{mu}" / "s0" / "unlearned.pt") for mu in ("3", "10")]
    assert (option(grid, "--seed"), option(grid, "--n_eval"), option(grid, "--out")) == \
        ("1", "600", str(digit / "eval" / "grid_il2"))


def scoring_run(tmp_path, fail_label=None):
    """`mnist_cpu.sh 8` with every output on disk but the 15 evaluation calls', and a python3 on
    PATH that stands in for evaluate.py: it takes 1 s, logs when it started and ended, and puts
    back the metrics that mnist_cpu_outputs made (or fails for the call labelled `fail_label`)."""
    out = tmp_path / "out"
    digit = mnist_cpu_outputs(out)
    stash = tmp_path / "stash"
    (digit / "eval").rename(stash)
    log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f"""#!{sys.executable}
import os, shutil, sys, time
if sys.argv[1:2] == ["-"]:  # the script's own table and μ-choice programs run for real
    os.execv({sys.executable!r}, [{sys.executable!r}] + sys.argv[1:])
args = sys.argv[1:]
out, label = args[args.index("--out") + 1], args[args.index("--label") + 1]
open({str(log)!r}, "a").write(f"start {{time.time()}} {{os.environ['OMP_NUM_THREADS']}} {{label}}\\n")
if label == {fail_label!r}:
    sys.exit("error: made to fail")
time.sleep(1)
shutil.copytree(os.path.join({str(stash)!r}, os.path.basename(out)), out)
open({str(log)!r}, "a").write(f"end {{time.time()}}\\n")
""")
    (bin_dir / "python3").chmod(0o755)
    env = dict(os.environ, OUT=str(out), DATA=str(tmp_path / "unused"), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["bash", MNIST_CPU, "8"], capture_output=True, text=True, env=env, cwd=ROOT)
    events = [line.split(" ", 3) for line in log.read_text().splitlines()]
    return run, digit, events


def test_mnist_cpu_scores_two_at_once(tmp_path):
    """Evaluation calls run two at a time with one thread each, never three; the group's wall
    time is recorded beside each call's own, and the table is written from their metrics."""
    run, digit, events = scoring_run(tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    starts = [e for e in events if e[0] == "start"]
    assert len(starts) == 15 and {e[2] for e in starts} == {"1"}
    running, most = 0, 0
    for event in sorted(events, key=lambda e: float(e[1])):
        running += 1 if event[0] == "start" else -1
        most = max(most, running)
    assert most == 2
    times = dict(line.split("\t") for line in (digit / "times.tsv").read_text().splitlines()[1:])
    wall = int(times.pop("evaluation, wall (2 at once)"))
    calls = [int(v) for k, v in times.items() if k.startswith("evaluate ")]
    assert len(calls) == 15 and wall < sum(calls)
    assert "total, wall (this invocation)" in times
    assert (digit / "results.md").is_file()


def test_mnist_cpu_stops_on_a_failed_scoring_call(tmp_path):
    """A failed evaluation call stops the script once the call beside it has finished: no call
    starts after the failure is seen, and no table is written."""
    run, digit, events = scoring_run(tmp_path, fail_label="cf_k")
    assert run.returncode == 1
    assert "[fail] evaluate cf_k" in run.stdout and "made to fail" in run.stdout
    # cf_k is the fifth call; at most one more starts before its failure is seen. Calls that start
    # together may log in either order, so the started calls are compared as a set.
    started = sorted(e[3].split(" (")[0] for e in events if e[0] == "start")  # "el2 (mu 200)" -> "el2"
    first_calls = ["retraining", "el2", "nl2", "il2", "cf_k", "eu_k"]
    assert started in (sorted(first_calls[:5]), sorted(first_calls)), started
    assert not (digit / "results.md").exists()
    assert "evaluation, wall" not in (digit / "times.tsv").read_text()


def test_an_nvlabs_snapshot_goes_through_the_chain(chain, adapted, tmp_path):
    """The chain's GAN as an NVlabs-format .pkl: the same generator (same fingerprint, same feedback),
    and every stage reads it: negative_adapt -> unlearn -> evaluate -> generate."""
    nets, _ = checkpoint.load_stylegan2(chain["gan"])
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
