"""Adapt-then-Unlearn on a 2-D mixture of Gaussians (paper Figure 1c), in one process on CPU.

Pre-trains a small MLP GAN on a ring of Gaussians, asks a nearest-mode "user" to label n samples
of it, adapts k copies to the negatives (Stage 1, EWC), unlearns from the pre-trained G and D on
the positives with a repulsion loss (Stage 2), and scores every generator on fixed latents.

    python mog_toy.py --out runs/mog_toy
    python mog_toy.py --out runs/mog_toy_all --method all --repulsion all --seed 1

Writes OUT/mog_toy.png (one row per result: data + pre-trained samples | negatives + adapted
samples | positives + unlearned samples), OUT/metrics.json and OUT/args.json.
"""

import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import method
import utils

METHODS = ("repulsion", "finetune", "extrapolation")  # what runs after Stage 1, in this order
# μ of each repulsion loss when --mu is not given (nl2 is unbounded below: it wants a small μ)
DEFAULT_MU = {"el2": 1.0, "nl2": 0.01, "il2": 1.0}
MMD_BANDWIDTHS = (1.0, 4.0, 20.0)  # Gaussian kernel widths, in units of --std


# ----------------------------------------------------------------------------------- data

OUTPUTS = ["mog_toy.png", "metrics.json", "args.json"]  # what this script writes in --out (see utils.claim_out_dir)


def mode_centers(n_modes, radius):
    angles = torch.arange(n_modes, dtype=torch.float32) * (2 * math.pi / n_modes)
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # [M, 2]


def sample_mixture(n, centers, std, generator=None):
    """n points from the equal-weight mixture of isotropic Gaussians at `centers`."""
    modes = torch.randint(len(centers), (n,), generator=generator)
    return centers[modes] + std * torch.randn(n, 2, generator=generator)


def nearest_mode(points, centers):
    """Index of the nearest centre and the distance to it, for points [N, 2]."""
    dist = torch.cdist(points, centers)  # [N, M]
    distance, index = dist.min(dim=1)
    return index, distance


# ----------------------------------------------------------------------------------- networks


class MLPCopies(torch.nn.Module):
    """`copies` independent MLPs, run together with one batched matmul per layer.

    Parameters have a leading copy axis ([copies, fan_in, fan_out]); copies never interact, so k
    adapted generators (or k discriminators) train in one loop, each with its own Adam moments.
    """

    def __init__(self, sizes, negative_slope, copies=1):
        super().__init__()
        self.sizes = list(sizes)
        self.negative_slope = negative_slope
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation range
            self.weights.append(torch.nn.Parameter(torch.empty(copies, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(torch.nn.Parameter(torch.empty(copies, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, x):  # [copies, N, in] -> [copies, N, out]
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if layer < len(self.weights) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        return x

    def replicate(self, copies):
        """A new MLPCopies with `copies` copies of copy 0 of this one."""
        clone = MLPCopies(self.sizes, self.negative_slope, copies)
        with torch.no_grad():
            for target, source in zip(clone.parameters(), self.parameters()):
                target.copy_(source[:1].expand_as(target))
        return clone

    def copy_state(self, index):
        """Copy `index` as a one-copy state dict."""
        return {name: value[index:index + 1].detach().clone() for name, value in self.state_dict().items()}


def make_generator(args):
    """z [copies, N, z_dim] -> points [copies, N, 2]. ReLU: in our runs it gave sharper modes
    (fewer samples on the bridges between modes) than LeakyReLU, at equal cost."""
    return MLPCopies([args.z_dim] + [args.g_width] * args.g_layers + [2], negative_slope=0.0)


def make_discriminator(args):
    """points [copies, N, 2] -> logits [copies, N, 1]; LeakyReLU(0.2) (ReLU D collapsed at times)."""
    return MLPCopies([2] + [args.d_width] * args.d_layers + [1], negative_slope=0.2)


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
    real_batch = lambda: sample_mixture(args.batch, centers, args.std).unsqueeze(0)
    return train_gan(args, g, d, real_batch, args.pretrain_iter, args.lr, "pre-train")


def collect_feedback(args, g, centers, negative_modes):
    """The user's labels: n samples of G, negative when their nearest mode is a negative mode."""
    with torch.no_grad():
        samples = g(torch.randn(1, args.n_feedback, args.z_dim))[0]
    is_negative = negative_modes[nearest_mode(samples, centers)[0]]
    if is_negative.all() or not is_negative.any():
        kind = "positive" if is_negative.all() else "negative"
        raise utils.UserError(f"the {args.n_feedback} feedback samples contain no {kind} sample; "
                              f"raise --n_feedback or --pretrain_iter")
    return samples[is_negative], samples[~is_negative]


def adapt(args, g, d, negatives):
    """Stage 1: k copies of (G, D) trained on the negatives with the EWC penalty of eq. 3."""
    fake_pred = d(g(torch.randn(1, args.fisher_samples, args.z_dim)))  # D's raw output, [1, N, 1]
    fisher = method.fisher_diagonal(list(g.parameters()), fake_pred.reshape(-1))
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


# ----------------------------------------------------------------------------------- metrics


def mmd2_unbiased(x, y, bandwidths, block=1000):
    """Unbiased MMD² between point sets x and y [N, 2], with the mean of the Gaussian kernels
    exp(−‖a − b‖² / (2σ²)) over `bandwidths` σ (so k(a, a) = 1).

    The pairs are taken within disjoint blocks of `block` points of x and of y (an incomplete
    U-statistic): still unbiased and using every point, at a tenth of the cost of all pairs for
    10,000 points. Blocks of a smaller x or y are cut to the smaller size.
    """
    def kernel_mean(a, b, same):
        sq = torch.cdist(a, b).square_()  # [block, block]
        total = sum(torch.exp(sq * (-0.5 / (s * s))).sum(dtype=torch.float64) for s in bandwidths)
        total = total / len(bandwidths)
        return (total - len(a)) / (len(a) * (len(a) - 1)) if same else total / (len(a) * len(b))

    size = min(block, len(x), len(y))
    estimates = []
    for start in range(0, min(len(x), len(y)) - size + 1, size):
        a, b = x[start:start + size], y[start:start + size]
        estimates.append(kernel_mean(a, a, True) + kernel_mean(b, b, True) - 2 * kernel_mean(a, b, False))
    return float(torch.stack(estimates).mean())


def sample_metrics(samples, centers, negative_modes, std, reference, negatives_before=None):
    """Scores of one generator's samples [N, 2] (all in %, except counts and mmd2).

    A sample is negative when its nearest mode is negative, and high-quality (HQ) when it lies
    within 3·std of its nearest mode. pul = 100·(neg_before − neg_after)/neg_before, pul_hq the
    same counting only HQ negatives (before = `negatives_before`, else these samples: 0);
    modes_covered = positive modes holding >= 2% of all samples as HQ samples (and
    negative_modes_covered the same for the negative modes); mmd2 to `reference`.
    """
    n = len(samples)
    index, distance = nearest_mode(samples, centers)
    high_quality = distance <= 3 * std
    is_negative = negative_modes[index]
    negatives = int(is_negative.sum())
    negatives_hq = int((is_negative & high_quality).sum())
    before = negatives_before or {"negatives": negatives, "negatives_hq": negatives_hq}
    hq_per_mode = torch.bincount(index[high_quality], minlength=len(centers))
    covered = hq_per_mode >= 0.02 * n
    pul = lambda before_, after: 100.0 * (before_ - after) / before_ if before_ > 0 else None
    return {
        "pul": pul(before["negatives"], negatives),
        "pul_hq": pul(before["negatives_hq"], negatives_hq),
        "hq": 100.0 * high_quality.float().mean().item(),
        "modes_covered": int(covered[~negative_modes].sum()),
        "negative_modes_covered": int(covered[negative_modes].sum()),
        "mmd2": mmd2_unbiased(samples, reference, [b * std for b in MMD_BANDWIDTHS]),
        "negatives": negatives,
        "negatives_hq": negatives_hq,
    }


# ----------------------------------------------------------------------------------- figure

COLORS = {"data": (175, 175, 175), "negative": (240, 140, 140), "positive": (140, 205, 140),
          "samples": (25, 60, 200), "adapted": (140, 30, 10)}


def scatter_panel(layers, extent, size):
    """A square scatter plot over [−extent, extent]² of layers [(points [N, 2], rgb, dot size)],
    drawn in order (later layers on top)."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    canvas[[0, -1], :] = canvas[:, [0, -1]] = 120  # frame
    for points, color, dot in layers:
        centre = np.rint((points.numpy() / extent + 1) / 2 * (size - 1)).astype(int)  # [N, (x, y)]
        corner = centre - dot // 2
        corner = corner[((corner >= 0) & (corner <= size - dot)).all(axis=1)]
        for dx in range(dot):
            for dy in range(dot):
                canvas[size - 1 - corner[:, 1] - dy, corner[:, 0] + dx] = color
    return Image.fromarray(canvas)


def make_figure(rows, extent, size=240, n_points=1500):
    """Figure 1c's layout, one row per result: rows = [(label, [layers] * 3, caption)]."""
    font = ImageFont.load_default()
    label_w, head_h, caption_h = 130, 36, 18
    titles = [("data (grey)", "+ pre-trained G (blue)"), ("negatives (red)", "+ adapted G, k copies (brown)"),
              ("positives (green)", "+ result (blue)")]
    figure = Image.new("RGB", (label_w + 3 * size, head_h + len(rows) * (size + caption_h)), "white")
    draw = ImageDraw.Draw(figure)
    for column, lines in enumerate(titles):
        for line_index, line in enumerate(lines):
            draw.text((label_w + column * size + 6, 4 + 14 * line_index), line, fill="black", font=font)
    for row, (label, panels, caption) in enumerate(rows):
        top = head_h + row * (size + caption_h)
        draw.text((6, top + size // 2), label, fill="black", font=font)
        for column, layers in enumerate(panels):
            layers = [(points[:n_points], color, dot) for points, color, dot in layers]
            figure.paste(scatter_panel(layers, extent, size), (label_w + column * size, top))
        draw.text((label_w + 2 * size + 6, top + size + 3), caption, fill="black", font=font)
    return figure


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
    parser.add_argument("--ewc_lambda", type=utils.nonnegative_float, default=1e3, help="λ of the EWC penalty (Stage 1)")
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

    centers = mode_centers(args.n_modes, args.radius)
    negative_modes = torch.zeros(args.n_modes, dtype=torch.bool)
    negative_modes[args.negative] = True
    # the same evaluation latents for every generator, and the reference points, from their own stream
    eval_rng = torch.Generator().manual_seed(args.seed + 10_000)
    z_eval = torch.randn(1, args.n_eval, args.z_dim, generator=eval_rng)
    positive_mixture = sample_mixture(args.n_eval, centers[~negative_modes], args.std, eval_rng)
    data = sample_mixture(args.n_eval, centers, args.std, eval_rng)

    def score(samples, before=None):
        return sample_metrics(samples, centers, negative_modes, args.std, positive_mixture, before)

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
    adapted_negative = negative_modes[nearest_mode(adapted_samples, centers)[0]]
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
                  n_positive_feedback=len(positives), mmd_bandwidths=[b * args.std for b in MMD_BANDWIDTHS])
    record = {"config": config, "pretrained": pretrained, "adapted": stage1, "methods": results}
    text = json.dumps(record, indent=2)
    utils.atomic_write(os.path.join(args.out, "metrics.json"), lambda f: f.write(text.encode()))

    print(f"feedback: {len(negatives)} negatives, {len(positives)} positives; stage 1: "
          f"{stage1['negative_share']:.1f}% of the adapted samples negative, d0 {adapted.d0:.3g}, "
          f"{adapted_seconds:.1f}s")
    print_table([("pre-trained", pretrained)] + [(label, metrics) for label, _, metrics in rows])

    shuffled_adapted = adapted_samples[torch.randperm(len(adapted_samples))]
    # reference points as larger light dots, generated samples as small dark dots on top
    data_panel = [(data, COLORS["data"], 3), (pretrained_samples, COLORS["samples"], 1)]
    adapted_panel = [(negatives, COLORS["negative"], 3), (shuffled_adapted, COLORS["adapted"], 1)]
    figure_rows = [(label, [data_panel, adapted_panel, [(positives, COLORS["positive"], 3),
                                                         (samples, COLORS["samples"], 1)]],
                    f"pul {metrics['pul'] or 0:.1f}  hq {metrics['hq']:.1f}  modes {metrics['modes_covered']}")
                   for label, samples, metrics in rows]
    make_figure(figure_rows, extent=args.radius + 8 * args.std).save(os.path.join(args.out, "mog_toy.png"))
    return record


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
