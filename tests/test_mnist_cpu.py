"""experiments/mnist_cpu.py and stages.py: its choices, its table, its dry run, and its stage runner (with a
stand-in for the subprocess that writes each stage's output)."""

import io
import json
import os
import sys
import threading
import time
import contextlib

import pytest
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import mnist_cpu  # noqa: E402
import mnist_curated  # noqa: E402
import stages  # noqa: E402
import utils  # noqa: E402


def test_choose_lambda_takes_the_smallest_shift_that_keeps_the_premise():
    rows = [{"lambda": lam, "share": share, "shift": shift}
            for lam, share, shift in [("0.01", 99.0, 0.8), ("0.1", 95.0, 0.5), ("0.3", 90.0, 0.3), ("1", 85.0, 0.1)]]
    assert mnist_cpu.choose_lambda(rows)["lambda"] == "0.3"  # 90% is enough; 1 holds the model too close
    assert mnist_cpu.choose_lambda(rows, min_share=99.5)["lambda"] == "0.01"  # none reaches it: the highest share


def test_choose_mu_within_the_fid_limit_else_the_lowest_fid():
    # against a pre-trained FID of 40 (limit 60): el2 100 is the highest PUL within, 200 just above it
    el2 = [{"value": mu, "pul": pul, "fid": fid} for mu, pul, fid in
           [("30", 70.0, 40.0), ("100", 80.0, 59.0), ("200", 85.0, 60.01), ("300", 95.0, 61.0)]]
    assert mnist_cpu.choose_mu(el2, 40.0)["value"] == "100"
    nl2 = [{"value": mu, "pul": pul, "fid": fid} for mu, pul, fid in [("0.1", 60.0, 65.0), ("0.3", 80.0, 68.0)]]
    assert mnist_cpu.choose_mu(nl2, 40.0)["value"] == "0.1"
    ties = [{"value": "a", "pul": 80.0, "fid": 50.0}, {"value": "b", "pul": 80.0, "fid": 45.0}]
    assert mnist_cpu.choose_mu(ties, 40.0)["value"] == "b"


def stat(mean):
    return {"mean": mean, "std": 0.5, "n": 3}


def metrics(i, ret_fid=True):
    side_effects = {str(c): stat(float(c - i)) for c in range(10)}
    side_effects["3"] = None  # the pre-trained model drew no 3
    return {"protocol": {"pul": {"n_eval": 15000}, "fid": {"n_fid": 5000}},
            "reference": {"negatives": 1101, "fid": 37.7, "ret_fid": 50.0, "kid": 0.0021, "recall": 0.5},
            "summary": {"pul": stat(10.0 + i), "fid": stat(40.0 + i), "ret_fid": stat(45.0 + i) if ret_fid else None,
                        "kid": {"mean": 0.001 * i, "std": 0.0005, "n": 3}, "recall": stat(0.1 * i), "side_effects": side_effects}}


def test_results_table_rows():
    lines = mnist_cpu.results_table(8, [("Retraining", metrics(0, ret_fid=False)), ("EL2 repulsion", metrics(9))])
    assert lines[0].startswith("Digit 8: PUL on 15000 latents (seed 1), classifier-feature FID on 5000; "
                               "pre-trained: 1101 negatives, FID 37.70.")
    assert lines[4] == "| pre-trained | – | 37.70 | 1.00× | 50.00 | 0.0021 | 0.50 | – |"
    # the retrained model has no Ret-FID against itself; its largest other change is 9's (+9)
    assert lines[5] == "| Retraining | 10.00 ± 0.50 | 40.00 ± 0.50 | 1.06× | N/A | 0 ± 0.0005 | 0.00 ± 0.50 | 9: +9.0% |"
    # for i = 9 the largest |c − 9| among the digits but 8 (the negative) and 3 (never drawn) is 0's
    assert lines[6] == ("| EL2 repulsion | 19.00 ± 0.50 | 49.00 ± 0.50 | 1.30× | 54.00 ± 0.50 | 0.009 ± 0.0005 "
                        "| 0.90 ± 0.50 | 0: -9.0% |")


def run(argv, capsys=None):
    args = mnist_cpu.create_argparser().parse_args([str(a) for a in argv])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        mnist_cpu.main(args)
    return stdout.getvalue()


def test_dry_run_prints_and_checks_every_command(tmp_path, monkeypatch):
    out = tmp_path / "out"
    printed = run(["--digits", 8, 1, "--dry_run", "--out", out]).splitlines()
    commands = [line for line in printed if line.startswith("OMP_NUM_THREADS=")]
    # 3 GANs and the LeNets, then per digit Stage 1, 10 methods x 3 seeds, extrapolation, 14 scoring calls
    assert len(commands) == 4 + 2 * (1 + 30 + 1 + 14)
    assert not any(line.startswith("[FLAG]") for line in printed) and not out.exists()
    stage1 = next(c for c in commands if "negative_adapt.py" in c)
    assert "--ewc_lambda" not in stage1 and "--n_feedback 3000" in stage1  # the methods run at their defaults
    assert not any("--mu" in c or "--ema_kimg" in c for c in commands if "unlearn.py" in c)
    assert sum("--exclude" in c for c in commands) == 2
    # a flag a script does not know fails the dry run, naming it
    monkeypatch.setattr(mnist_cpu, "BASELINES", ("cf_k", "no_such_method"))
    with pytest.raises(utils.UserError, match="3 command"):
        run(["--digits", 8, "--dry_run", "--out", out])
    grid = run(["--digits", 4, "--grid", "--dry_run", "--out", out]).splitlines()
    assert sum(line.startswith("OMP_NUM_THREADS=") for line in grid) == 2 + 11 + 1 + 15 * 2 + 2 * 2


@pytest.fixture
def fake_stages(monkeypatch):
    """run_command stands in for the subprocess: it writes the stage's output (a metrics.json that
    results_table reads, an empty file otherwise) unless the stage is named in `fail`, and records
    what ran and how many ran at once."""
    state = {"ran": [], "fail": set(), "running": 0, "most": 0}
    lock = threading.Lock()

    def run_command(stage):
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
        time.sleep(0.02)
        os.makedirs(os.path.dirname(stage.log), exist_ok=True)
        with lock:
            state["running"] -= 1
            state["ran"].append(stage.name)
        if stage.name in state["fail"]:
            open(stage.log, "w").write("progress\rerror: made to fail\n")
            return 1
        os.makedirs(os.path.dirname(stage.done), exist_ok=True)
        with open(stage.done, "w") as f:
            f.write(json.dumps(metrics(0)) if stage.done.endswith(".json") else "")
        return 0

    monkeypatch.setattr(stages, "run_command", run_command)
    monkeypatch.setattr(mnist_cpu, "read_method", lambda path: {
        "negative_share": 91.0, "ema_pull": 0.01, "ewc_lambda": 1.0, "ewc_params": "synthesis", "n_eval": 500})
    return state


def test_a_run_resumes_at_the_first_missing_output_and_refuses_other_settings(tmp_path, fake_stages):
    out = tmp_path / "out"
    argv = ["--digits", 8, "--out", out, "--data", tmp_path / "mnist"]
    run(argv)
    assert len(fake_stages["ran"]) == 2 + 1 + 1 + 30 + 1 + 14
    results = (out / "digit8" / "results.md").read_text()
    assert "| Retraining | 10.00 ± 0.50 |" in results and "91.0–91.0% negatives" in results
    times = (out / "digit8" / "times.tsv").read_text().splitlines()
    assert times[0] == "stage\tseconds" and any(line.startswith("evaluation, wall (2 at once)") for line in times)
    assert fake_stages["most"] == 2  # the GANs and the scoring calls, two at a time, never more

    fake_stages["ran"].clear()
    os.remove(out / "digit8" / "ewc" / "s1" / "unlearned.pt")
    printed = run(argv)
    assert fake_stages["ran"] == ["stage2 ewc/s1"] and "[skip] pretrain" in printed
    with pytest.raises(utils.UserError, match=r"other settings \(--n_eval 15000 -> 100\)"):
        run(argv + ["--n_eval", 100])


def test_a_failed_stage_stops_the_run_with_its_log(tmp_path, fake_stages):
    fake_stages["fail"].add("stage1 adapt")
    out = tmp_path / "out"
    stdout = io.StringIO()
    with pytest.raises(utils.UserError, match="1 stage"), contextlib.redirect_stdout(stdout):
        mnist_cpu.main(mnist_cpu.create_argparser().parse_args(["--digits", "8", "--out", str(out)]))
    assert "[fail] stage1 adapt (1)" in stdout.getvalue() and "error: made to fail" in stdout.getvalue()
    assert not any(name.startswith("stage2") for name in fake_stages["ran"])
    # the same command again runs only what is missing
    fake_stages["fail"].clear()
    fake_stages["ran"].clear()
    run(["--digits", 8, "--out", out])
    assert fake_stages["ran"][0] == "stage1 adapt"


def test_every_flag_is_explained():
    for action in mnist_cpu.create_argparser()._actions:
        if action.option_strings != ["-h", "--help"]:
            assert action.help and len(action.help.split()) >= 2, action.option_strings


def test_the_grid_chooses_by_its_rules_and_writes_grid_md(tmp_path, fake_stages, monkeypatch):
    """--grid with made-up scores: λ 0.1 on `all` is the smallest shift with ≥ 90% negatives; per
    loss the highest validation PUL within 1.5× the pre-trained FID (40); EL2's α likewise."""
    shares = {"0": 99.0, "0.01": 98.0, "0.03": 96.0, "0.1": 93.0, "0.3": 80.0, "1": 60.0}
    monkeypatch.setattr(mnist_cpu, "read_method", lambda path: {
        "negative_share": shares[path.split("lambda")[1].split(os.sep)[0]] - ("synthesis" in path)
        if "lambda" in path else 91.0, "ema_pull": 0.02, "fisher_mean": 1e-4})
    monkeypatch.setattr(mnist_cpu, "shift", lambda path, free, pretrained: float(
        [1.0, 0.8, 0.6, 0.4, 0.2, 0.1][list(shares).index(path.split("lambda")[1].split(os.sep)[0])]))
    scores = {"el2_mu10": (80, 41), "el2_mu30": (90, 59), "el2_mu100": (95, 61), "nl2_mu0.01": (70, 65),
              "nl2_mu0.03": (75, 66), "nl2_mu0.1": (80, 70), "nl2_mu0.3": (85, 75), "nl2_mu1": (90, 80), "el2_mu30_alpha0.3": (85, 50), "el2_mu30_alpha3": (93, 58)}
    original = stages.run_command

    def run_command(stage):
        code = original(stage)
        if stage.script == "evaluate.py":
            name = os.path.basename(os.path.dirname(stage.done))
            pul, fid = scores.get(name, (50, 45))
            json.dump({"checkpoints": [{"pul": pul, "fid": fid}], "reference": {"fid": 40.0}}, open(stage.done, "w"))
        return code

    monkeypatch.setattr(stages, "run_command", run_command)
    out = tmp_path / "out"
    printed = run(["--digits", 4, "--grid", "--out", out])
    grid = (out / "digit4" / "grid" / "grid.md").read_text()
    assert "| 0.1 (chosen) | all | 93.0 | 0.400 | 0.020 | 0.0001 |" in grid
    assert "| 30 (chosen) | 90.0 | 59.00 | 1.48× | 0.020 |" in grid  # 100 is over the limit
    assert "| 0.01 (chosen) | 70.0 | 65.00 |" in grid  # none within: the lowest FID
    assert "| 3 (chosen) | 93.0 | 58.00 | 1.45× |" in grid
    assert "Chosen: λ = 0.1 on all, μ = el2 30, nl2 0.01, il2 3, EL2 α = 3." in printed
    # Stage 1 at the chosen λ is the digit's Stage 1 (where the run at the defaults finds it)
    stage1 = [name for name in fake_stages["ran"] if name == "stage1 adapt"]
    assert stage1 == ["stage1 adapt"] and (out / "digit4" / "adapt" / "adapted_4.pt").exists()


def test_curated_driver_writes_the_folders_and_compares_the_two_feedbacks(tmp_path, monkeypatch):
    """experiments/mnist_curated.py: the training images split into the digit's folder and the
    rest, Stage 1 on the folders, Stage 2 EL2, both runs scored, curated.md with both rows."""
    digits = [(Image.new("L", (28, 28), 10 * label), label) for label in (4, 1, 4, 7)]
    monkeypatch.setattr(mnist_curated.dataset, "_load_mnist", lambda root, train: digits)
    ran = []

    def run_command(stage):
        ran.append(stage)
        os.makedirs(os.path.dirname(stage.done), exist_ok=True)
        pul = 80.0 if "eval_generated" in stage.done else 90.0
        run = {"pul": pul, "fid": 20.0, "ret_fid": 5.0, "kid": 0.0012, "precision": 0.7, "recall": 0.6,
               "negatives": 100}
        with open(stage.done, "w") as f:
            f.write(json.dumps({"checkpoints": [run]}) if stage.done.endswith(".json") else "")
        return 0

    monkeypatch.setattr(stages, "run_command", run_command)
    out = tmp_path / "out"
    mnist_curated.main(mnist_curated.create_argparser().parse_args(
        ["--digit", "4", "--data", str(tmp_path / "mnist"), "--out", str(out)]))
    images = out / "digit4" / "curated" / "images"
    assert sorted(os.listdir(images / "negatives")) == ["00000.png", "00002.png"]
    assert sorted(os.listdir(images / "positives")) == ["00001.png", "00003.png"]
    stage1 = ran[0].command()
    assert "negative_adapt.py" in stage1[1] and stage1[stage1.index("--negatives") + 1] == str(images / "negatives")
    assert ["unlearn.py" in s.script for s in ran] == [False, True, False, False]
    lines = (out / "digit4" / "curated" / "curated.md").read_text().splitlines()
    assert lines[4] == "| curated (real training images) | 90.00 | 20.00 | 5.00 | 0.0012 | 0.70 | 0.60 | 100 |"
    assert lines[5].startswith("| generated (samples the oracle marked) | 80.00 |")
