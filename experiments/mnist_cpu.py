"""The paper's MNIST experiment (Table 1) at a size two CPU cores train in about two hours a digit:
pre-training, the retrained gold standard, a LeNet ensemble, feedback and Stage 1, Stage 2 with the
three repulsion losses and every baseline over --seeds, extrapolation, evaluation, results.md.

    python experiments/mnist_cpu.py --digits 8 --data path/to/mnist      # one digit, at the defaults
    python experiments/mnist_cpu.py --digits 8 1 --dry_run               # print and check every command
    python experiments/mnist_cpu.py --digits 4 --grid                    # the protocol that chose the defaults

Every stage is one of the repository's scripts, run as a subprocess with its output in a log;
the methods run at their defaults (no method flag: only the CPU-scale sizes below). A stage whose
output file exists is skipped, and the trainers get --resume, so an interrupted run goes on where
it stopped. --dry_run prints every command and parses each with its script's create_argparser(),
so a stale flag fails the dry run instead of the second hour.

Writes OUT/gan and OUT/lenet (shared by every digit), OUT/digit{D}/... with results.md (the table),
times.tsv (each stage's wall time) and logs/, and OUT/settings.json (the configuration: an OUT
made with another one is refused). --grid writes OUT/digit{D}/grid/grid.md instead: a λ grid for
Stage 1 (both EWC parameter sets), a μ grid per repulsion loss and an α grid for EL2, each scored
on validation latents (seed 2; the evaluation uses seed 1, the feedback seed 0) and the choices
by the rules of choose_lambda and choose_mu.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoint  # noqa: E402  (the repository's modules, for the grid's shifts)
import method  # noqa: E402
import report  # noqa: E402
import utils  # noqa: E402
from stages import Runner, Stage, check_settings, log_tail, write_lines  # noqa: E402

# the CPU-scale configuration (docs/mnist_cpu.md): a 32 px GAN of latent 128 with channels capped,
# trained 7,000 iterations with an EMA half-life of 2 kimg
GAN_FLAGS = ["--size", "32", "--style_dim", "128", "--ema_kimg", "2", "--sample_every", "500",
             "--save_every", "1000", "--workers", "1"]
LOSSES = ("el2", "nl2", "il2")
BASELINES = ("cf_k", "eu_k", "l1_sparse", "ewc", "finetune", "cdc", "rssa")
GAMMAS = ("0.25", "0.5", "1")
# --grid: the values tried (λ 0 is plain fine-tuning, the shift's reference)
LAMBDA_GRID = ("0.01", "0.03", "0.1", "0.3", "1")
EWC_PARAMS = ("synthesis", "all")
MU_GRID = {"el2": ("10", "30", "100", "300", "1000"), "nl2": ("0.01", "0.03", "0.1", "0.3", "1"),
           "il2": ("3", "10", "30", "100", "300")}
ALPHA_GRID = ("0.3", "3")  # EL2's α beside the default 1, at the chosen μ
MIN_SHARE = 90.0  # Stage 1: the adapted models' negative share the paper's premise needs
FID_LIMIT = 1.5  # Stage 2: FID at most this times the pre-trained model's


def choose_lambda(rows, min_share=MIN_SHARE):
    """The Stage-1 row (dicts with lambda, params, share, shift) with the smallest shift among those
    whose adapted model makes ≥ min_share % negatives; when none does, the highest share."""
    within = [r for r in rows if r["share"] >= min_share]
    if within:
        return min(within, key=lambda r: (r["shift"], -r["share"]))
    return max(rows, key=lambda r: (r["share"], -r["shift"]))


def choose_mu(rows, reference_fid, limit=FID_LIMIT):
    """The Stage-2 row (dicts with value, pul, fid on the validation latents) of highest PUL among
    those with FID ≤ limit × the pre-trained model's (ties: the lower FID); when none is within,
    the lowest FID."""
    within = [r for r in rows if r["fid"] <= limit * reference_fid]
    if within:
        return max(within, key=lambda r: (r["pul"], -r["fid"]))
    return min(rows, key=lambda r: r["fid"])


def mean_std(summary):
    return "N/A" if summary is None else f"{summary['mean']:.2f} ± {summary['std']:.2f}"


def number(value):
    return "N/A" if value is None else f"{value:.2f}"


def results_table(digit, evaluations):
    """results.md's lines from [(label, metrics.json dict)] in table order: PUL, FID, Ret-FID, KID,
    recall and the other digit whose share changed most (digits the pre-trained model never drew
    are left out)."""
    first = evaluations[0][1]
    ref = first["reference"]
    lines = [f"Digit {digit}: PUL on {first['protocol']['pul']['n_eval']} latents (seed 1), classifier-feature FID on "
             f"{first['protocol']['fid']['n_fid']}; pre-trained: {ref['negatives']} negatives, FID {ref['fid']:.2f}.",
             "", "| Method | PUL (↑) | FID (↓) | FID / pre-trained | Ret-FID (↓) | KID (↓) | recall (↑) "
                 "| largest other change |",
             "|---|---|---|---|---|---|---|---|",
             f"| pre-trained | – | {ref['fid']:.2f} | 1.00× | {ref['ret_fid']:.2f} | {report.fmt_kid(ref.get('kid'))} "
             f"| {number(ref.get('recall'))} | – |"]
    for label, metrics in evaluations:
        summary = metrics["summary"]
        others = {c: v for c, v in summary["side_effects"].items() if c != str(digit) and v is not None}
        worst = max(others, key=lambda c: abs(others[c]["mean"])) if others else None
        change = f"{worst}: {others[worst]['mean']:+.1f}%" if worst else "–"
        ratio = summary["fid"]["mean"] / ref["fid"]
        lines.append(f"| {label} | {mean_std(summary['pul'])} | {mean_std(summary['fid'])} | {ratio:.2f}× | "
                     f"{mean_std(summary['ret_fid'])} | {report.fmt_kid(summary.get('kid'))} | "
                     f"{mean_std(summary.get('recall'))} | {change} |")
    return lines


def settings_of(args):
    keys = ("gan_iter", "stage1_iter", "stage2_iter", "n_feedback", "members", "n_models", "n_eval", "n_fid",
            "channel_max", "threads", "gan_threads")
    return {key: getattr(args, key) for key in keys}


class Paths:
    def __init__(self, args, digit):
        self.out, self.digit = args.out, digit
        self.pretrained = os.path.join(args.out, "gan", "pretrained.pt")
        self.classifier = os.path.join(args.out, "lenet", "classifier.pt")
        self.d = os.path.join(args.out, f"digit{digit}")
        self.retrained = os.path.join(self.d, "retrained", "retrained.pt")
        self.times = os.path.join(self.d, "times.tsv")

    def log(self, name):
        return os.path.join(self.d, "logs", name.replace(" ", "_") + ".log")


def gan_stages(args, digits, gan_flags=None, retrain=True):
    """The pre-training (shared) and, with `retrain`, a retraining without each digit, one thread
    each; `gan_flags` (default: this driver's StyleGAN2) are the network's and its recipe's."""
    gan_flags = gan_flags or [*GAN_FLAGS, "--channel_max", args.channel_max]
    flags = ["--dataset", "mnist", "--data", args.data, *gan_flags, "--iter", args.gan_iter, "--device", args.device,
             "--resume"]
    shared = os.path.join(args.out, "gan")
    stages = [Stage("pretrain", "train_stylegan2.py", [*flags, "--out", shared], os.path.join(shared, "pretrained.pt"),
                    args.gan_threads, os.path.join(args.out, "logs", "pretrain.log"))]
    if retrain:
        for digit in digits:
            p = Paths(args, digit)
            stages.append(Stage(f"retrain without {digit}", "train_stylegan2.py",
                                [*flags, "--exclude", digit, "--out", os.path.dirname(p.retrained)], p.retrained,
                                args.gan_threads, p.log("retrain")))
    return stages


def classifier_stage(args):
    out = os.path.join(args.out, "lenet")
    return Stage("classifier", "train_classifier.py",
                 ["--dataset", "mnist", "--data", args.data, "--members", args.members, "--workers", "1",
                  "--device", args.device, "--resume", "--out", out],
                 os.path.join(out, "classifier.pt"), args.threads, os.path.join(args.out, "logs", "classifier.log"))


def stage1(args, p, out, n_models, extra=()):
    return Stage(f"stage1 {os.path.basename(out)}", "negative_adapt.py",
                 ["--ckpt", p.pretrained, "--classifier", p.classifier, "--negative", p.digit,
                  "--n_feedback", args.n_feedback, "--n_models", n_models, "--iter", args.stage1_iter,
                  *extra, "--device", args.device, "--resume", "--out", out],
                 os.path.join(out, f"adapted_{n_models - 1}.pt"), args.threads, p.log(f"stage1_{os.path.basename(out)}"))


def stage2(args, p, adapt, out, flags, seed):
    adapted = [os.path.join(adapt, f"adapted_{j}.pt") for j in range(args.n_models)]
    name = os.path.relpath(out, p.d)
    return Stage(f"stage2 {name}", "unlearn.py",
                 ["--ckpt", p.pretrained, "--feedback", os.path.join(adapt, "feedback.pt"), "--adapted", *adapted,
                  *flags, "--iter", args.stage2_iter, "--seed", seed, "--device", args.device, "--resume",
                  "--out", out],
                 os.path.join(out, "unlearned.pt"), args.threads, p.log("stage2_" + name.replace(os.sep, "_")))


def score(args, p, checkpoints, out, seed, label, retrained=True):
    """evaluate.py on `checkpoints`: seed 1 for the evaluation, seed 2 for validation."""
    flags = ["--reference", p.pretrained, "--classifier", p.classifier, "--negative", p.digit, "--dataset", "mnist",
             "--data", args.data, "--real_split", "train", "--features", "classifier",
             "--cache", os.path.join(p.d, "eval_cache"), "--real_stats", os.path.join(p.d, "real_stats_classifier.npz"),
             "--seed", seed, "--n_eval", args.n_eval, "--n_fid", args.n_fid, "--label", label,
             "--device", args.device, "--overwrite", "--out", out]
    if retrained:
        flags += ["--retrained", p.retrained]
    else:
        flags += ["--n_sample", "0"]
    name = os.path.relpath(out, p.d)
    return Stage(f"score {name}", "evaluate.py", [*checkpoints, *flags], os.path.join(out, "metrics.json"),
                 max(1, args.threads // args.jobs), p.log("score_" + name.replace(os.sep, "_")))


def digit_at_defaults(args, runner, digit):
    """Stage 1, Stage 2 for every method and seed, extrapolation, evaluation and results.md."""
    p = Paths(args, digit)
    adapt = os.path.join(p.d, "adapt")
    runner.run([stage1(args, p, adapt, args.n_models, ["--report_shift"])], times=p.times)
    methods = {loss: ["--method", "repulsion", "--repulsion", loss] for loss in LOSSES}
    methods.update({name: ["--method", name] for name in BASELINES})
    runner.run([stage2(args, p, adapt, os.path.join(p.d, name, f"s{seed}"), flags, seed)
                for name, flags in methods.items() for seed in args.seeds], jobs=args.train_jobs, times=p.times,
               group="Stage 2")
    adapted = [os.path.join(adapt, f"adapted_{j}.pt") for j in range(args.n_models)]
    extrapolated = os.path.join(p.d, "extrapolate")
    runner.run([Stage("extrapolate", "extrapolate.py",
                      ["--ckpt", p.pretrained, "--adapted", *adapted, "--gamma", *GAMMAS, "--overwrite",
                       "--out", extrapolated], os.path.join(extrapolated, "extrapolated_1.pt"), args.threads,
                      p.log("extrapolate"))], times=p.times)
    rows = [("Retraining", "retraining", [p.retrained])]
    rows += [(name, name, [os.path.join(p.d, name, f"s{seed}", "unlearned.pt") for seed in args.seeds])
             for name in BASELINES]
    rows += [(f"Extrapolation γ = {g}", f"extrapolation_{g}", [os.path.join(extrapolated, f"extrapolated_{g}.pt")])
             for g in GAMMAS]
    rows += [(f"{loss.upper()} repulsion", loss, [os.path.join(p.d, loss, f"s{seed}", "unlearned.pt")
                                                  for seed in args.seeds]) for loss in LOSSES]
    runner.run([score(args, p, ckpts, os.path.join(p.d, "eval", folder), 1, label) for label, folder, ckpts in rows],
               jobs=args.jobs, times=p.times, group="evaluation")
    if args.dry_run:
        return
    evaluations = [(label, json.load(open(os.path.join(p.d, "eval", folder, "metrics.json"))))
                   for label, folder, _ in rows]
    lines = results_table(digit, evaluations) + [""] + stage_summary(args, p, adapt)
    write_lines(os.path.join(p.d, "results.md"), lines)


def stage_summary(args, p, adapt):
    """What the table's runs did: Stage 1's negative shares, shift r and EMA pull s, Stage 2's s."""
    stage1 = [read_method(os.path.join(adapt, f"adapted_{j}.pt")) for j in range(args.n_models)]
    shares = [m["negative_share"] for m in stage1]
    pulls = [m["ema_pull"] for m in stage1]
    shift_line = [line for line in log_tail(p.log("stage1_adapt"), 50) if line.startswith("shift of adapted model 0")]
    stage2 = [read_method(os.path.join(p.d, name, f"s{seed}", "unlearned.pt"))["ema_pull"]
              for name in (*LOSSES, *BASELINES) for seed in args.seeds]
    return [f"Stage 1: {len(stage1)} adapted models at λ = {stage1[0]['ewc_lambda']:g} ({stage1[0]['ewc_params']}), "
            f"{min(shares):.1f}–{max(shares):.1f}% negatives on {stage1[0]['n_eval']} samples each, EMA pull s "
            f"{min(pulls):.3f}–{max(pulls):.3f}; {shift_line[-1] if shift_line else 'shift not found in the log'}.",
            f"Stage 2: EMA pull s {min(stage2):.3f}–{max(stage2):.3f} over the {len(stage2)} runs."]


def read_method(path):
    return checkpoint.load_checkpoint(path)["method"]


def shift(adapted_path, free_path, pretrained_path):
    """r = ‖θ_N(λ) − θ_G‖² / ‖θ_N(0) − θ_G‖² from the files (their g_ema)."""
    theta_g = list(checkpoint.load_checkpoint(pretrained_path)["g_ema"].values())
    distance = [method.squared_distance(list(checkpoint.load_checkpoint(path)["g_ema"].values()), theta_g)
                for path in (adapted_path, free_path)]
    return distance[0] / distance[1]


def grid(args, runner, digit):
    """The protocol that chose the defaults, on one digit; writes grid/grid.md."""
    p = Paths(args, digit)
    root = os.path.join(p.d, "grid")
    times = os.path.join(root, "times.tsv")
    lines = [f"# Digit {digit}: the defaults' grids (validation latents, seed 2)", ""]
    # 1. Stage 1: one adapted model (seed 0) per λ and parameter set, and λ = 0
    free = os.path.join(root, "stage1", "lambda0")
    runs = {("0", "-"): free}
    runs.update({(lam, params): os.path.join(root, "stage1", f"{params}_lambda{lam}")
                 for params in EWC_PARAMS for lam in LAMBDA_GRID})
    runner.run([stage1(args, p, out, 1, ["--ewc_lambda", lam] + (["--ewc_params", params] if params != "-" else [])
                       + ["--n_eval", 1000])
                for (lam, params), out in runs.items()], jobs=args.train_jobs, times=times, group="Stage 1 grid")
    chosen = {"lambda": "1", "params": "synthesis", "mu": {}, "alpha": "1"}  # what --dry_run shows
    if not args.dry_run:
        rows = []
        for (lam, params), out in runs.items():
            record = read_method(os.path.join(out, "adapted_0.pt"))
            rows.append({"lambda": lam, "params": params, "share": record["negative_share"], "pull": record["ema_pull"],
                         "shift": shift(os.path.join(out, "adapted_0.pt"), os.path.join(free, "adapted_0.pt"),
                                        p.pretrained), "fisher_mean": record["fisher_mean"]})
        best = choose_lambda([r for r in rows if r["lambda"] != "0"])
        chosen["lambda"], chosen["params"] = best["lambda"], best["params"]
        lines += ["## Stage 1: λ (one adapted model, seed 0)", "",
                  f"Rule: the smallest shift r with ≥ {MIN_SHARE:g}% negatives; r against λ = 0.", "",
                  "| λ | parameters | negatives (%) | r | s (EMA pull) | mean raw Fisher |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['lambda']}{' (chosen)' if r is best else ''} | {r['params']} | {r['share']:.1f} | "
                  f"{r['shift']:.3f} | {r['pull']:.3f} | {r['fisher_mean'] or 0:.3g} |" for r in rows]
        if args.grid == "stage1":
            write_lines(os.path.join(root, "grid.md"), lines)
    if args.grid == "stage1":
        return
    # 2. Stage 1 at the chosen λ with every model, then a μ grid per loss (seed 0), validated. It is
    # the run at the defaults once they are the chosen values, so it goes where that one goes
    adapt = os.path.join(p.d, "adapt")
    runner.run([stage1(args, p, adapt, args.n_models, ["--report_shift", "--ewc_lambda", chosen["lambda"],
                                                       "--ewc_params", chosen["params"]])], times=times)
    runs = {(loss, mu): os.path.join(root, f"{loss}_mu{mu}") for loss in LOSSES for mu in MU_GRID[loss]}

    def repulsion(loss, mu, alpha=None):
        flags = ["--method", "repulsion", "--repulsion", loss, "--mu", mu]
        return flags + (["--alpha", alpha] if alpha else [])

    def validate(out):
        return score(args, p, [os.path.join(out, "unlearned.pt")], os.path.join(root, "validation",
                     os.path.basename(out)), 2, os.path.basename(out), retrained=False)

    runner.run([stage2(args, p, adapt, out, repulsion(loss, mu), 0) for (loss, mu), out in runs.items()],
               jobs=args.train_jobs, times=times, group="μ grid")
    runner.run([validate(out) for out in runs.values()], jobs=args.jobs, times=times, group="validation")
    if not args.dry_run:
        lines += ["", "## Stage 2: μ per loss (seed 0)", "",
                  f"Rule: the highest PUL with FID ≤ {FID_LIMIT:g}× the pre-trained model's; none within: the lowest FID.",
                  ""]
        for loss in LOSSES:
            rows = []
            for mu in MU_GRID[loss]:
                metrics = json.load(open(os.path.join(root, "validation", f"{loss}_mu{mu}", "metrics.json")))
                row = metrics["checkpoints"][0]
                rows.append({"value": mu, "pul": row["pul"], "fid": row["fid"], "reference": metrics["reference"]["fid"],
                             "pull": read_method(os.path.join(root, f"{loss}_mu{mu}", "unlearned.pt"))["ema_pull"]})
            best = choose_mu(rows, rows[0]["reference"])
            chosen["mu"][loss] = best["value"]
            lines += [f"| {loss} μ | PUL (%) | FID | FID / pre-trained ({rows[0]['reference']:.2f}) | s (EMA pull) |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r['value']}{' (chosen)' if r is best else ''} | {r['pul']:.1f} | {r['fid']:.2f} | "
                      f"{r['fid'] / r['reference']:.2f}× | {r['pull']:.3f} |" for r in rows] + [""]
    # 3. EL2's α at its chosen μ
    mu = chosen["mu"].get("el2", MU_GRID["el2"][2])
    runs = {alpha: os.path.join(root, f"el2_mu{mu}_alpha{alpha}") for alpha in ALPHA_GRID}
    runner.run([stage2(args, p, adapt, out, repulsion("el2", mu, alpha), 0) for alpha, out in runs.items()],
               jobs=args.train_jobs, times=times, group="α grid")
    runner.run([validate(out) for out in runs.values()], jobs=args.jobs, times=times, group="validation α")
    if args.dry_run:
        return
    rows = []
    for alpha, folder in [("1", f"el2_mu{mu}"), *((a, os.path.basename(out)) for a, out in runs.items())]:
        metrics = json.load(open(os.path.join(root, "validation", folder, "metrics.json")))
        rows.append({"value": alpha, "pul": metrics["checkpoints"][0]["pul"], "fid": metrics["checkpoints"][0]["fid"],
                     "reference": metrics["reference"]["fid"]})
    best = choose_mu(rows, rows[0]["reference"])
    chosen["alpha"] = best["value"]
    lines += [f"| el2 α at μ = {mu} | PUL (%) | FID | FID / pre-trained |", "|---|---|---|---|"]
    lines += [f"| {r['value']}{' (chosen)' if r is best else ''} | {r['pul']:.1f} | {r['fid']:.2f} | "
              f"{r['fid'] / r['reference']:.2f}× |" for r in rows]
    lines += ["", f"Chosen: λ = {chosen['lambda']} on {chosen['params']}, μ = "
              + ", ".join(f"{loss} {chosen['mu'][loss]}" for loss in LOSSES) + f", EL2 α = {chosen['alpha']}."]
    write_lines(os.path.join(root, "grid.md"), lines)


def add_run_args(parser, digits, out, gan_iter):
    """The flags every CPU-scale driver shares (this one and table4_dcgan.py)."""
    parser.add_argument("--digits", nargs="+", default=digits, help="the digits to unlearn, one after the other "
                        "(the pre-trained GAN and the LeNets are shared)")
    parser.add_argument("--seeds", type=utils.nonnegative_int, nargs="+", default=[0, 1, 2],
                        help="Stage-2 seeds of every method (the table gives mean ± std over them)")
    parser.add_argument("--data", default="data", help="MNIST root in torchvision's layout (downloaded when missing "
                        "and online); a subset such as a 5,000-image one works")
    parser.add_argument("--out", default=out, help="output folder (an interrupted run continues in it)")
    parser.add_argument("--dry_run", action="store_true", help="print every command and check its flags; run nothing")
    parser.add_argument("--device", default="cpu", help="cuda or cpu (the tables are from cpu)")
    size = parser.add_argument_group("the configuration (the defaults are the published run; small values give a smoke run)")
    size.add_argument("--gan_iter", type=utils.positive_int, default=gan_iter, help="GAN iterations")
    size.add_argument("--stage1_iter", type=utils.positive_int, default=200, help="Stage-1 iterations per model")
    size.add_argument("--stage2_iter", type=utils.positive_int, default=200, help="Stage-2 and baseline iterations")
    size.add_argument("--n_feedback", type=utils.positive_int, default=3000, help="generated samples the oracle labels")
    size.add_argument("--n_models", type=utils.positive_int, default=5, help="k, the adapted models of Stage 1")
    size.add_argument("--members", type=utils.positive_int, default=5, help="LeNets in the oracle's ensemble")
    size.add_argument("--n_eval", type=utils.positive_int, default=15000, help="samples for PUL and the shares")
    size.add_argument("--n_fid", type=utils.positive_int, default=5000, help="samples for the FIDs")
    threads = parser.add_argument_group("threads (part of the result: another count sums in another order)")
    threads.add_argument("--gan_threads", type=utils.positive_int, default=1, help="threads of each GAN (two train "
                         "side by side)")
    threads.add_argument("--threads", type=utils.positive_int, default=1, help="threads of every other training stage")
    threads.add_argument("--jobs", type=utils.positive_int, default=2, help="scoring calls at once, with "
                         "threads / jobs threads each (scores do not depend on it)")
    threads.add_argument("--train_jobs", type=utils.positive_int, default=2, help="Stage-1 and Stage-2 runs at once "
                         "(with --threads 1 on 2 cores, 2 runs at once keep both busy; a run's result does not "
                         "depend on it)")
    return size


def create_argparser():
    parser = utils.make_parser(__doc__)
    size = add_run_args(parser, ["8"], "runs/mnist_cpu", 7000)
    size.add_argument("--channel_max", type=utils.positive_int, default=64, help="the GAN's channel cap (its width)")
    parser.add_argument("--grid", choices=["all", "stage1"], nargs="?", const="all", default=None,
                        help="run the protocol that chose the defaults instead (grid/grid.md), on one digit; "
                             "--grid stage1 stops after the λ grid (the shift r at another --channel_max)")
    return parser


def main(args):
    if args.grid and len(args.digits) != 1:
        raise utils.UserError("--grid runs on one digit: give one --digits value")
    # the stages run from the repository's root: paths are made absolute first
    args.data, args.out = os.path.abspath(args.data), os.path.abspath(args.out)
    check_settings(args.out, settings_of(args), args.dry_run)
    runner = Runner(args.dry_run)
    digits = list(args.digits)
    # the GANs first, two at a time with one thread each, then the LeNets
    runner.run(gan_stages(args, digits, retrain=not args.grid), jobs=2, times=os.path.join(args.out, "times.tsv"), group="GANs")
    runner.run([classifier_stage(args)], times=os.path.join(args.out, "times.tsv"))
    for digit in digits:
        (grid if args.grid else digit_at_defaults)(args, runner, digit)
    if args.dry_run and runner.flag_errors:
        raise utils.UserError(f"{runner.flag_errors} command(s) have flags their script refuses ([FLAG] above)")


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
