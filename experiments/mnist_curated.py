"""Curated against generated feedback (the paper's appendix D, Table 6) at the CPU scale of
experiments/mnist_cpu.py: Stage 1 adapts to the real training images of the digit instead of to
the generated samples the oracle marked, Stage 2 (EL2 at its defaults) trains on the other real
training images instead of the generated positives; everything else is the same.

    python experiments/mnist_curated.py --digit 4 --data path/to/mnist --out runs/mnist_cpu

Runs after experiments/mnist_cpu.py in the same --out (it reuses OUT/gan, OUT/lenet and the
digit's generated-feedback runs). Writes OUT/digit{D}/curated/: the image folders, Stage 1 (adapt),
Stage 2 (el2/s{seed}), the evaluation (eval) and curated.md, the two rows side by side.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dataset  # noqa: E402
import mnist_cpu  # noqa: E402
import report  # noqa: E402
import utils  # noqa: E402
from stages import Runner, check_settings, write_lines  # noqa: E402


def write_digit_folders(data, digit, out):
    """The MNIST training images as PNG files: OUT/negatives (the digit) and OUT/positives (the rest)."""
    done = os.path.join(out, "done")
    if os.path.isfile(done):
        return
    mnist = dataset._load_mnist(data, train=True)
    for i, (image, label) in enumerate(mnist):
        folder = os.path.join(out, "negatives" if str(label) == digit else "positives")
        os.makedirs(folder, exist_ok=True)
        image.save(os.path.join(folder, f"{i:05d}.png"))
    open(done, "w").close()


def row(label, metrics_path):
    """One table row from an evaluation of one checkpoint."""
    (run,) = json.load(open(metrics_path))["checkpoints"]
    cells = [report.fmt(run.get(key)) for key in ("pul", "fid", "ret_fid")] + [report.fmt_kid(run.get("kid"))]
    cells += [report.fmt(run.get(key)) for key in ("precision", "recall")]
    return f"| {label} | {' | '.join(cells)} | {run['negatives']} |"


def create_argparser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digit", default="4", help="the digit to unlearn")
    parser.add_argument("--seed", type=utils.nonnegative_int, default=0, help="Stage-2 seed (one run, as the issue's protocol)")
    parser.add_argument("--data", default="data", help="MNIST root in torchvision's layout")
    parser.add_argument("--out", default="runs/mnist_cpu", help="experiments/mnist_cpu.py's output folder")
    parser.add_argument("--dry_run", action="store_true", help="print every command and check its flags; run nothing")
    return parser


def main(args):
    base = mnist_cpu.create_argparser().parse_args(["--digits", args.digit, "--data", args.data, "--out", args.out])
    base.data, base.out = os.path.abspath(base.data), os.path.abspath(base.out)
    check_settings(base.out, mnist_cpu.settings_of(base), args.dry_run)
    p = mnist_cpu.Paths(base, args.digit)
    curated = os.path.join(p.d, "curated")
    folders = os.path.join(curated, "images")
    if not args.dry_run:
        write_digit_folders(base.data, args.digit, folders)
    runner = Runner(args.dry_run)
    adapt = os.path.join(curated, "adapt")
    stage1 = mnist_cpu.stage1(base, p, adapt, base.n_models, ["--negatives", os.path.join(folders, "negatives"),
                                                             "--positives", os.path.join(folders, "positives")])
    stage1.name, stage1.log = "stage1 curated", p.log("stage1_curated")  # beside the generated run's
    runner.run([stage1], times=p.times)
    flags = ["--method", "repulsion", "--repulsion", "el2"]
    unlearned = os.path.join(curated, "el2", f"s{args.seed}")
    runner.run([mnist_cpu.stage2(base, p, adapt, unlearned, flags, args.seed)], times=p.times)
    generated = os.path.join(p.d, "el2", f"s{args.seed}", "unlearned.pt")  # needs mnist_cpu.py's Stage 2
    # both scored by the same call: the generated-feedback run is digit{D}/el2/s{seed} of mnist_cpu.py
    runner.run([mnist_cpu.score(base, p, [os.path.join(unlearned, "unlearned.pt")], os.path.join(curated, "eval"),
                                1, "curated EL2"),
                mnist_cpu.score(base, p, [generated], os.path.join(curated, "eval_generated"), 1, "generated EL2")],
               times=p.times)
    if runner.flag_errors:
        raise utils.UserError(f"{runner.flag_errors} command(s) have flags their script refuses ([FLAG] above)")
    if args.dry_run:
        return
    lines = [f"# Curated against generated feedback, digit {args.digit}, EL2, Stage-2 seed {args.seed}", "",
             "| feedback | PUL (↑) | FID (↓) | Ret-FID (↓) | KID (↓) | precision (↑) | recall (↑) | negatives |",
             "|---|---|---|---|---|---|---|---|",
             row("curated (real training images)", os.path.join(curated, "eval", "metrics.json")),
             row("generated (samples the oracle marked)", os.path.join(curated, "eval_generated", "metrics.json"))]
    write_lines(os.path.join(curated, "curated.md"), lines)


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
