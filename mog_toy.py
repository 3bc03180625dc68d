"""Adapt-then-Unlearn on a 2-D mixture of Gaussians (paper Figure 1c), in one process on CPU.

Pre-trains a small MLP GAN on a ring of Gaussians, asks a nearest-mode "user" to label n samples
of it, adapts k copies to the negatives (Stage 1, EWC), unlearns from the pre-trained G and D on
the positives with a repulsion loss (Stage 2), and scores every generator on fixed latents.

    python mog_toy.py --out runs/mog_toy
    python mog_toy.py --out runs/mog_toy_all --method all --repulsion all --seed 1

Writes OUT/mog_toy.png (one row per result: data + pre-trained samples | negatives + adapted
samples | positives + unlearned samples), OUT/metrics.json and OUT/args.json. The data, the
networks, the scores and the figure are in mog.py; the method is method.py's, as for StyleGAN2.
"""

import json
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import method
import mog
import utils

METHODS = ("repulsion", "finetune", "extrapolation")  # what runs after Stage 1, in this order
# μ of each repulsion loss when --mu is not given (nl2 is unbounded below: it wants a small μ)
DEFAULT_MU = {"el2": 1.0, "nl2": 0.01, "il2": 1.0}
OUTPUTS = ["mog_toy.png", "metrics.json", "args.json"]  # see utils.claim_out_dir


def make_generator(args):
    """z [copies, N, z_dim] -> points [copies, N, 2]. ReLU: in our runs it gave sharper modes
    (fewer samples on the bridges between modes) than LeakyReLU, at equal cost."""
    return mog.MLPCopies([args.z_dim] + [args.g_width] * args.g_layers + [2], negative_slope=0.0)


def make_discriminator(args):
    """points [copies, N, 2] -> logits [copies, N, 1]; LeakyReLU(0.2) (ReLU D collapsed at times)."""
    return mog.MLPCopies([2] + [args.d_width] * args.d_layers + [1], negative_slope=0.2)


# ----------------------------------------------------------------------------------- training


def d_step(d, d_optim, real, fake, r1_weight):
    """Non-saturating logistic D loss, plus the R1 gradient penalty on real points when
    r1_weight > 0 (lazy regularisation: the caller passes it every few steps, scaled up)."""
    real = real.detach().requires_grad_(r1_weight > 0)
    real_pred = d(real)
    fake_pred = d(fake.detach())
    # sums over copies of per-copy means: each copy gets its own gradient
    d_loss = (F.softplus(-real_pred).mean(dim=(1, 2)) + F.softplus(fake_pred).mean(dim=(1, 2))).sum()
    loss = d_loss
    if r1_weight > 0:
        (grad_real,) = torch.autograd.grad(real_pred.sum(), real, create_graph=True)
        loss = loss + r1_weight / 2 * grad_real.square().sum(dim=2).mean(dim=1).sum()
    d_optim.zero_grad(set_to_none=True)
    loss.backward()
    d_optim.step()
    return d_loss.detach()


def g_step(g_optim, d, fake, penalty):
    """Non-saturating G loss on `fake` (after the D step) plus `penalty`."""
    d.requires_grad_(False)  # no D parameter gradients from the G loss
    g_adv = F.softplus(-d(fake)).mean(dim=(1, 2)).sum()
    d.requires_grad_(True)
    g_optim.zero_grad(set_to_none=True)
    (g_adv + penalty).backward()
    g_optim.step()
    return g_adv.detach()


def train_gan(args, g, d, real_batch, iters, lr, desc, g_penalty=None):
    """`iters` alternating D and G steps; `real_batch()` gives [copies, batch, 2] real points and
    `g_penalty(g)` an extra generator loss (EWC in Stage 1, repulsion in Stage 2)."""
    copies = g.weights[0].shape[0]
    g_optim = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.99), foreach=True)
    d_optim = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.99), foreach=True)
    # linear decay of the learning rate to 0: the last steps sharpen the modes
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / iters) for opt in (g_optim, d_optim)]
    pbar = tqdm(range(iters), desc=desc, disable=args.quiet, mininterval=1.0, leave=False)
    for step in pbar:
        real = real_batch()
        fake = g(torch.randn(copies, real.shape[1], args.z_dim))  # one fake batch for both steps
        r1_weight = args.r1 * args.r1_every if step % args.r1_every == 0 else 0.0
        d_loss = d_step(d, d_optim, real, fake, r1_weight)
        penalty = g_penalty(g) if g_penalty is not None else torch.zeros(())
        g_adv = g_step(g_optim, d, fake, penalty)
        for schedule in schedules:
            schedule.step()
        if step % 100 == 0:
            pbar.set_description(f"{desc}: d {d_loss.item() / copies:.3f} g {g_adv.item() / copies:.3f} "
                                 f"extra {penalty.item():.4g}")
    return g, d


def points_batch(points, copies, batch):
    """A sampler of [copies, batch, 2] minibatches drawn with replacement from `points` [N, 2]."""
    return lambda: points[torch.randint(len(points), (copies, batch))]


def pretrain(args, centers):
    g, d = make_generator(args), make_discriminator(args)
    real_batch = lambda: mog.sample_mixture(args.batch, centers, args.std).unsqueeze(0)
    return train_gan(args, g, d, real_batch, args.pretrain_iter, args.lr, "pre-train")


def collect_feedback(args, g, centers, negative_modes):
    """The user's labels: n samples of G, negative when their nearest mode is a negative mode."""
    with torch.no_grad():
        samples = g(torch.randn(1, args.n_feedback, args.z_dim))[0]
    is_negative = negative_modes[mog.nearest_mode(samples, centers)[0]]
    if is_negative.all() or not is_negative.any():
        kind = "positive" if is_negative.all() else "negative"
        raise utils.UserError(f"the {args.n_feedback} feedback samples contain no {kind} sample; "
                              f"raise --n_feedback or --pretrain_iter")
    return samples[is_negative], samples[~is_negative]


def adapt(args, g, d, negatives):
    """Stage 1: k copies of (G, D) trained on the negatives with the EWC penalty of eq. 3."""
    fake_pred = d(g(torch.randn(1, args.fisher_samples, args.z_dim)))  # D's raw output, [1, N, 1]
    fisher, fisher_mean = method.normalise_fisher(method.fisher_diagonal(list(g.parameters()), fake_pred.reshape(-1)))
    print(f"EWC: λ = {args.ewc_lambda:g} on the Fisher over its mean ({fisher_mean:.4g})")
    # EWC anchors with the copy axis of the k adapted generators
    theta_g = [p.detach().expand(args.n_models, *p.shape[1:]).contiguous() for p in g.parameters()]
    fisher = [f.expand(args.n_models, *f.shape[1:]).contiguous() for f in fisher]
    ewc = lambda g_adapted: method.ewc_penalty(list(g_adapted.parameters()), theta_g, fisher, args.ewc_lambda)
    k = args.n_models
    return train_gan(args, g.replicate(k), d.replicate(k), points_batch(negatives, k, args.batch),
                     args.adapt_iter, args.stage_lr, "adapt (k copies)", g_penalty=ewc)[0]


def repulsion_mu(args, loss):
    return DEFAULT_MU[loss] if args.mu is None else args.mu


def unlearn(args, g, d, positives, adapted, run):
    """Stage 2: the pre-trained G and D trained on the positives with the repulsion loss `run`
    of eq. 6 (run "finetune": without it, the paper's ablation). Returns the generator."""
    g_penalty = None
    if run != "finetune":
        mu = repulsion_mu(args, run)
        g_penalty = lambda g_: method.repulsion_loss(run, adapted.relative_distance(list(g_.parameters())),
                                                     mu=mu, alpha=args.alpha)
    g, d = g.replicate(1), d.replicate(1)  # fresh copies of the pre-trained networks
    return train_gan(args, g, d, points_batch(positives, 1, args.batch), args.unlearn_iter,
                     args.stage_lr, f"unlearn {run}", g_penalty=g_penalty)[0]


# ----------------------------------------------------------------------------------- main


def check_args(args):
    if args.n_modes < 2:
        raise utils.UserError(f"--n_modes must be at least 2, got {args.n_modes}")
    outside = [mode for mode in args.negative if not 0 <= mode < args.n_modes]
    if outside:
        raise utils.UserError(f"--negative mode {outside[0]} is out of range: modes are 0..{args.n_modes - 1}")
    if len(set(args.negative)) == args.n_modes:
        raise utils.UserError("--negative lists every mode: nothing would be left to generate")
    if args.n_eval < 2:
        raise utils.UserError("--n_eval must be at least 2")


def selected_runs(args):
    """What runs after Stage 1, in the figure's order without duplicates: each --repulsion loss
    (for --method repulsion), then finetune, then extrapolation; "all" selects every one."""
    methods = METHODS if "all" in args.method else [m for m in METHODS if m in args.method]
    losses = list(DEFAULT_MU) if "all" in args.repulsion else [r for r in DEFAULT_MU if r in args.repulsion]
    runs = []
    for name in methods:
        runs += losses if name == "repulsion" else [name]
    return runs


def samples_of(g, z):
    """Copy 0 of g on the latents z [1, N, z_dim] -> points [N, 2]."""
    with torch.no_grad():
        return g(z.expand(g.weights[0].shape[0], -1, -1))[0]


def print_table(rows):
    columns = [("pul", "pul"), ("pul_hq", "pul_hq"), ("hq", "hq"), ("modes_covered", "pos.modes"),
               ("negative_modes_covered", "neg.modes"), ("mmd2", "mmd2"), ("distance", "d"),
               ("seconds", "seconds")]
    def show(key, value):
        if value is None:
            return "-"
        return f"{value:.4f}" if key == "mmd2" else f"{value:.2f}" if isinstance(value, float) else str(value)

    print(f"{'model':<21}" + "".join(f"{head:>10}" for _, head in columns))
    for name, metrics in rows:
        print(f"{name:<21}" + "".join(f"{show(key, metrics.get(key)):>10}" for key, _ in columns))


def create_argparser():
    parser = utils.make_parser(__doc__)
    utils.add_out_args(parser, "runs/mog_toy", resume=False)
    parser.add_argument("--seed", type=utils.nonnegative_int, default=0, help="seed of everything (networks, feedback, evaluation latents)")
    parser.add_argument("--method", nargs="+", default=["repulsion"], choices=list(METHODS) + ["all"],
                        help="what to run after Stage 1: repulsion (Stage 2 with each --repulsion loss), finetune "
                             "(Stage 2 without repulsion, the paper's ablation), extrapolation (each --gamma); all")
    parser.add_argument("--n_modes", type=utils.positive_int, default=8, help="Gaussians on the circle")
    parser.add_argument("--radius", type=utils.positive_float, default=2.0, help="radius of the circle of modes")
    parser.add_argument("--std", type=utils.positive_float, default=0.05, help="standard deviation of each Gaussian")
    parser.add_argument("--negative", type=int, nargs="+", default=[0, 1], help="modes the user marks negative")
    parser.add_argument("--n_feedback", type=utils.positive_int, default=1000, help="samples of the pre-trained G the user labels")
    parser.add_argument("--n_models", type=utils.positive_int, default=5, help="k, the adapted generators of Stage 1")
    parser.add_argument("--z_dim", type=utils.positive_int, default=8, help="latent dimension")
    parser.add_argument("--g_width", type=utils.positive_int, default=64, help="hidden width of G")
    parser.add_argument("--g_layers", type=utils.positive_int, default=4, help="hidden layers of G")
    parser.add_argument("--d_width", type=utils.positive_int, default=128, help="hidden width of D")
    parser.add_argument("--d_layers", type=utils.positive_int, default=3, help="hidden layers of D")
    parser.add_argument("--batch", type=utils.positive_int, default=256, help="batch size (per copy)")
    parser.add_argument("--lr", type=utils.positive_float, default=5e-3, help="Adam learning rate of G and D in pre-training")
    parser.add_argument("--stage_lr", type=utils.positive_float, default=1e-3, help="Adam learning rate in Stages 1 and 2")
    parser.add_argument("--r1", type=utils.nonnegative_float, default=0.1, help="R1 gradient penalty weight on D (real points), all stages")
    parser.add_argument("--r1_every", type=utils.positive_int, default=4, help="apply R1 every this many D steps (lazy)")
    parser.add_argument("--pretrain_iter", type=utils.positive_int, default=5000, help="pre-training iterations")
    parser.add_argument("--adapt_iter", type=utils.positive_int, default=300, help="Stage-1 iterations")
    parser.add_argument("--unlearn_iter", type=utils.positive_int, default=1000, help="Stage-2 iterations")
    parser.add_argument("--fisher_samples", type=utils.positive_int, default=256, help="generated samples for the Fisher")
    parser.add_argument("--ewc_lambda", type=utils.nonnegative_float, default=100,
                        help="λ of the EWC penalty λ·Σ F̂ (θ − θ_G)² (Stage 1), the Fisher F̂ over its mean as in negative_adapt.py")
    parser.add_argument("--repulsion", nargs="+", default=["el2"], choices=list(DEFAULT_MU) + ["all"],
                        help="repulsion losses on d (relative: 1 at θ_G): el2 = μ·exp(−α·d), nl2 = −μ·d, il2 = μ/d")
    parser.add_argument("--mu", type=utils.nonnegative_float, default=None,
                        help="μ of every repulsion loss (default: " +
                             ", ".join(f"{loss} {mu:g}" for loss, mu in DEFAULT_MU.items()) + ")")
    parser.add_argument("--alpha", type=utils.positive_float, default=1.0, help="α of el2 = μ·exp(−α·d)")
    parser.add_argument("--gamma", type=utils.finite_float, nargs="+", default=[0.25, 0.5, 1.0, 2.0],
                        help="extrapolation factors γ in θ_G + γ(θ_G − mean θ_N); γ > 0 moves away")
    parser.add_argument("--n_eval", type=utils.positive_int, default=10_000, help="fixed latents (and reference points) for the metrics")
    parser.add_argument("--threads", type=utils.positive_int, default=1, help="torch CPU threads (small nets: 1 is fastest)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(args):
    check_args(args)
    runs = selected_runs(args)
    utils.claim_out_dir(args, OUTPUTS)
    utils.write_args_json(args.out, args)
    torch.set_num_threads(args.threads)
    utils.seed_everything(args.seed)

    centers = mog.mode_centers(args.n_modes, args.radius)
    negative_modes = torch.zeros(args.n_modes, dtype=torch.bool)
    negative_modes[args.negative] = True
    # the same evaluation latents for every generator, and the reference points, from their own stream
    eval_rng = torch.Generator().manual_seed(args.seed + 10_000)
    z_eval = torch.randn(1, args.n_eval, args.z_dim, generator=eval_rng)
    positive_mixture = mog.sample_mixture(args.n_eval, centers[~negative_modes], args.std, eval_rng)
    data = mog.sample_mixture(args.n_eval, centers, args.std, eval_rng)

    def score(samples, before=None):
        return mog.sample_metrics(samples, centers, negative_modes, args.std, positive_mixture, before)

    start = time.perf_counter()
    g, d = pretrain(args, centers)
    pretrained_seconds = time.perf_counter() - start
    pretrained_samples = samples_of(g, z_eval)
    pretrained = dict(score(pretrained_samples), seconds=pretrained_seconds)
    negatives, positives = collect_feedback(args, g, centers, negative_modes)

    start = time.perf_counter()
    g_adapted = adapt(args, g, d, negatives)
    adapted_seconds = time.perf_counter() - start
    names = [name for name, _ in g.named_parameters()]
    theta_g = method.select_parameters(g.state_dict(), names)
    theta_neg_states = [g_adapted.copy_state(j) for j in range(args.n_models)]
    adapted = method.AdaptedParameters(theta_g, [method.select_parameters(s, names) for s in theta_neg_states])
    with torch.no_grad():
        adapted_samples = g_adapted(z_eval.expand(args.n_models, -1, -1)).reshape(-1, 2)
    adapted_negative = negative_modes[mog.nearest_mode(adapted_samples, centers)[0]]
    stage1 = {"negative_share": 100.0 * adapted_negative.float().mean().item(), "d0": adapted.d0,
              "spread": adapted.spread, "seconds": adapted_seconds}

    results, rows = {}, []  # rows: (label, samples, metrics), one per figure row
    for run in runs:
        if run == "extrapolation":
            results[run] = {}
            for gamma in args.gamma:
                start = time.perf_counter()
                g_extrapolated = make_generator(args)
                g_extrapolated.load_state_dict(method.extrapolate(g.state_dict(), theta_neg_states, gamma))
                seconds = time.perf_counter() - start
                samples = samples_of(g_extrapolated, z_eval)
                metrics = dict(score(samples, pretrained), seconds=seconds)
                metrics["distance"] = adapted.relative_distance(list(g_extrapolated.parameters())).item()
                results[run][f"{gamma:g}"] = metrics
                rows.append((f"extrap. gamma={gamma:g}", samples, metrics))
            continue
        utils.seed_everything(args.seed + 1)  # every Stage-2 run sees the same noise: paired comparisons
        start = time.perf_counter()
        g_unlearned = unlearn(args, g, d, positives, adapted, run)
        seconds = time.perf_counter() - start
        samples = samples_of(g_unlearned, z_eval)
        metrics = dict(score(samples, pretrained), seconds=seconds,
                       distance=adapted.relative_distance(list(g_unlearned.parameters())).item())
        results[run] = metrics
        rows.append((run if run != "finetune" else "finetune (ablation)", samples, metrics))

    config = dict(vars(args), runs=runs, mu={loss: repulsion_mu(args, loss) for loss in runs if loss in DEFAULT_MU},
                  n_negative_feedback=len(negatives),
                  n_positive_feedback=len(positives), mmd_bandwidths=[b * args.std for b in mog.MMD_BANDWIDTHS])
    record = {"config": config, "pretrained": pretrained, "adapted": stage1, "methods": results}
    text = json.dumps(record, indent=2)
    utils.atomic_write(os.path.join(args.out, "metrics.json"), lambda f: f.write(text.encode()))

    print(f"feedback: {len(negatives)} negatives, {len(positives)} positives; stage 1: "
          f"{stage1['negative_share']:.1f}% of the adapted samples negative, d0 {adapted.d0:.3g}, "
          f"{adapted_seconds:.1f}s")
    print_table([("pre-trained", pretrained)] + [(label, metrics) for label, _, metrics in rows])

    shuffled_adapted = adapted_samples[torch.randperm(len(adapted_samples))]
    # reference points as larger light dots, generated samples as small dark dots on top
    data_panel = [(data, mog.COLORS["data"], 3), (pretrained_samples, mog.COLORS["samples"], 1)]
    adapted_panel = [(negatives, mog.COLORS["negative"], 3), (shuffled_adapted, mog.COLORS["adapted"], 1)]
    figure_rows = [(label, [data_panel, adapted_panel, [(positives, mog.COLORS["positive"], 3),
                                                         (samples, mog.COLORS["samples"], 1)]],
                    f"pul {metrics['pul'] or 0:.1f}  hq {metrics['hq']:.1f}  modes {metrics['modes_covered']}")
                   for label, samples, metrics in rows]
    mog.make_figure(figure_rows, extent=args.radius + 8 * args.std).save(os.path.join(args.out, "mog_toy.png"))
    return record


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
