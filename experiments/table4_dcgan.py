"""The paper's Table 4 at CPU scale: a DC-GAN on MNIST, classes 1, 4 and 8, the method (EL2
repulsion) beside the two earlier GAN-unlearning methods, CUA and DRed, over three seeds.

    python experiments/table4_dcgan.py --data path/to/mnist --out runs/table4
    python experiments/table4_dcgan.py --digits 4 --dry_run        # print and check every command

The stages and their order are experiments/mnist_cpu.py's (pre-training and a retraining without
each digit, the LeNet ensemble, feedback and Stage 1, Stage 2 per method and seed, evaluation,
results.md), on `train_stylegan2.py --arch dcgan`; every method runs at its defaults. A stage
whose output file exists is skipped, and the trainers get --resume.

Writes OUT/gan, OUT/lenet, OUT/digit{D}/... with results.md, times.tsv and logs/, and
OUT/table4.md: the three digits side by side as in the paper.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mnist_cpu  # noqa: E402
from mnist_cpu import Paths, classifier_stage, mean_std, results_table, score, stage1, stage2  # noqa: E402
from stages import Runner, check_settings, write_lines  # noqa: E402

import utils  # noqa: E402  (the repository's root is on the path through mnist_cpu)

# a 32 px DC-GAN of latent 100, 32 channels at 16 px, batch 64, 3,000 iterations (about 7 minutes
# on one CPU thread)
GAN_FLAGS = ["--arch", "dcgan", "--channels", "32", "--size", "32", "--style_dim", "100", "--batch", "64",
             "--ema_kimg", "2", "--sample_every", "500", "--save_every", "1000", "--workers", "0"]
# label, folder, unlearn.py flags: the paper's rows, in its order
METHODS = [("CUA", "cua", ["--method", "cua"]), ("DRed", "dred", ["--method", "dred"]),
           ("Ours (EL2 repulsion)", "el2", ["--method", "repulsion", "--repulsion", "el2"])]


def digit_rows(args, runner, digit):
    """Stage 1, every method over the seeds, their evaluation; returns [(label, metrics.json)]."""
    p = Paths(args, digit)
    adapt = os.path.join(p.d, "adapt")
    runner.run([stage1(args, p, adapt, args.n_models)], times=p.times)
    runner.run([stage2(args, p, adapt, os.path.join(p.d, folder, f"s{seed}"), flags, seed)
                for _, folder, flags in METHODS for seed in args.seeds], jobs=args.train_jobs, times=p.times,
               group="Stage 2")
    rows = [("Retraining", "retraining", [p.retrained])]
    rows += [(label, folder, [os.path.join(p.d, folder, f"s{seed}", "unlearned.pt") for seed in args.seeds])
             for label, folder, _ in METHODS]
    runner.run([score(args, p, ckpts, os.path.join(p.d, "eval", folder), 1, label) for label, folder, ckpts in rows],
               jobs=args.jobs, times=p.times, group="evaluation")
    if args.dry_run:
        return None
    evaluations = [(label, json.load(open(os.path.join(p.d, "eval", folder, "metrics.json"))))
                   for label, folder, _ in rows]
    write_lines(os.path.join(p.d, "results.md"), results_table(digit, evaluations))
    return evaluations


def table4(digit_evaluations):
    """The paper's layout: one row per method and metric, one column per digit."""
    digits = list(digit_evaluations)
    lines = ["| Method | Metric | " + " | ".join(f"Class {d}" for d in digits) + " |",
             "|---|---|" + "---|" * len(digits)]
    labels = [label for label, _ in next(iter(digit_evaluations.values()))]
    for i, label in enumerate(labels):
        for key, name in (("pul", "PUL (↑)"), ("fid", "FID (↓)"), ("ret_fid", "Ret-FID (↓)")):
            cells = [mean_std(digit_evaluations[d][i][1]["summary"][key]) for d in digits]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return lines


def settings_of(args):
    keys = ("gan_iter", "stage1_iter", "stage2_iter", "n_feedback", "members", "n_models", "n_eval", "n_fid",
            "threads", "gan_threads")
    return {"arch": "dcgan", **{key: getattr(args, key) for key in keys}}


def create_argparser():
    parser = utils.make_parser(__doc__)
    mnist_cpu.add_run_args(parser, ["1", "4", "8"], "runs/table4", 3000)
    return parser


def main(args):
    args.data, args.out = os.path.abspath(args.data), os.path.abspath(args.out)
    check_settings(args.out, settings_of(args), args.dry_run)
    runner = Runner(args.dry_run)
    runner.run(mnist_cpu.gan_stages(args, args.digits, GAN_FLAGS), jobs=2, times=os.path.join(args.out, "times.tsv"), group="GANs")
    runner.run([classifier_stage(args)], times=os.path.join(args.out, "times.tsv"))
    evaluations = {digit: digit_rows(args, runner, digit) for digit in args.digits}
    if args.dry_run:
        if runner.flag_errors:
            raise utils.UserError(f"{runner.flag_errors} command(s) have flags their script refuses ([FLAG] above)")
        return
    write_lines(os.path.join(args.out, "table4.md"), table4(evaluations))


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
