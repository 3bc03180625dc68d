"""The StyleGAN2 training recipe (rosinality's), shared unchanged by pre-training, Stage 1,
Stage 2 and every baseline: the non-saturating loss, lazy R1 and path-length regularisation,
style mixing, the EMA generator, optimisers, one G/D step, the loop, and sample grids at
fixed latents. What differs between the stages is only the generator's extra loss (EWC,
repulsion, ℓ1) and which tensors train.
"""

import math
import random

import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.utils import make_grid
from tqdm import tqdm

from checkpoint import load_checkpoint, load_state_strict
from method import ewc_penalty, fisher_diagonal, normalise_fisher
from utils import (UserError, from_uint8, nonnegative_float, nonnegative_int, positive_float, positive_int, probability,
                   atomic_write, set_rng_state)


# the EWC defaults, chosen on MNIST digit 4 (docs/mnist_cpu.md, "How the defaults were chosen")
EWC_LAMBDA = 0.01
EWC_DEFAULT_PARAMS = "synthesis"
# the EMA ramp-up of the fine-tuning stages (Stage 1, Stage 2, baselines): see ema_decay
FINE_TUNE_EMA_RAMPUP = 0.025


def add_gan_training_args(parser, ema_rampup=0.0, mixing=0.9, mixing_help=""):
    """The flags of the StyleGAN2 training recipe, with rosinality's defaults; the stages that
    fine-tune for a few hundred steps pass an `ema_rampup` default (see ema_decay), Stage 2 its
    `mixing` default."""
    parser.add_argument("--batch", type=positive_int, default=16, help="batch size (over all processes)")
    parser.add_argument("--lr", type=positive_float, default=0.002, help="Adam learning rate (before the lazy-regularisation ratio)")
    parser.add_argument("--r1", type=nonnegative_float, default=10, help="R1 penalty weight gamma on real images")
    parser.add_argument("--d_reg_every", type=nonnegative_int, default=16, help="lazy R1: apply every this many steps (0 = never)")
    parser.add_argument("--path_regularize", type=nonnegative_float, default=2, help="path-length regularisation weight (StyleGAN2; a DC-GAN has no mapping network to regularise)")
    parser.add_argument("--path_batch_shrink", type=positive_int, default=2, help="batch divisor for the path-length pass")
    parser.add_argument("--g_reg_every", type=nonnegative_int, default=4, help="lazy path-length regularisation every this many steps (0 = never)")
    parser.add_argument("--mixing", type=probability, default=mixing,
                        help="probability of style mixing (two latents)" + mixing_help)
    parser.add_argument("--ema_kimg", type=positive_float, default=5,
                        help="EMA half-life in thousands of images: decay per step = 0.5 ** (batch / (ema_kimg * 1000)); "
                             "5 at batch 16 is rosinality's 312.5 iterations (its 0.5 ** (32 / 10000) per step)")
    parser.add_argument("--ema_rampup", type=nonnegative_float, default=ema_rampup,
                        help="cap the EMA half-life at this fraction of the images seen so far (NVlabs' ema_rampup; "
                             "0 = no cap). A short fine-tuning run needs it: with a fixed half-life the saved g_ema "
                             "would still hold part of the model it started from")
    return parser


def make_optimizers(g, d, args, g_params=None):
    """Adam for G and D with the lazy-regularisation ratio c = k / (k + 1) on lr and betas."""
    def adam(params, reg_every):
        ratio = reg_every / (reg_every + 1) if reg_every > 0 else 1
        return torch.optim.Adam(params, lr=args.lr * ratio, betas=(0.0, 0.99 ** ratio))
    g_params = list(g.parameters()) if g_params is None else g_params
    return adam(g_params, args.g_reg_every), adam(d.parameters(), args.d_reg_every)


def ema_decay(args, done):
    """The EMA decay of the step that makes `done` steps: a half-life of ema_kimg thousand images
    at any batch size (rosinality's 32 in place of the batch is this formula at batch 32), capped
    at ema_rampup · the images seen. With the cap, half-life ≤ ema_rampup · done steps, so the
    averaged generator lags the trained one by about ema_rampup / ln 2 of the run: at 0.025 it
    keeps ≤ 4% of the pull toward the starting model at the end of any run (method.ema_pull)."""
    half_life = args.ema_kimg * 1000
    if args.ema_rampup > 0:
        half_life = min(half_life, args.ema_rampup * done * args.batch)
    return 0.5 ** (args.batch / half_life)


@torch.no_grad()
def accumulate(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, on all parameters at once; batch-norm running
    statistics (the DC-GAN's) are copied, as NVlabs copies buffers."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(ema_params, params, 1 - decay)
    if model.has_batch_norm:  # its only buffers are the running statistics
        torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


def mixing_noise(batch, latent_dim, prob, device):
    """One latent batch, or two (for style mixing) with probability `prob`."""
    if prob > 0 and random.random() < prob:
        return list(torch.randn(2, batch, latent_dim, device=device).unbind(0))
    return [torch.randn(batch, latent_dim, device=device)]


def d_logistic_loss(real_pred, fake_pred):
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def d_r1_loss(real_pred, real_img):
    """R1: the squared norm of D's gradient at the real images, averaged over the batch (of the
    mean logit per image, when D gives one per patch, as CDC)."""
    (grad_real,) = torch.autograd.grad(real_pred.reshape(len(real_pred), -1).mean(1).sum(), real_img, create_graph=True)
    return grad_real.square().reshape(grad_real.shape[0], -1).sum(1).mean()


def g_nonsaturating_loss(fake_pred):
    return F.softplus(-fake_pred).mean()


def g_path_regularize(fake_img, latents, mean_path_length, decay=0.01):
    """Path-length penalty: deviation of |J_w^T y| (y random image-space noise) from its running mean."""
    noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = torch.autograd.grad((fake_img * noise).sum(), latents, create_graph=True)
    path_lengths = grad.square().sum(2).mean(1).sqrt()
    path_mean = mean_path_length + decay * (path_lengths.mean().detach() - mean_path_length)
    return (path_lengths - path_mean).square().mean(), path_mean.detach(), path_lengths


def all_reduce_gradients(module):
    """Average the gradients of `module` over all processes (a no-op without torch.distributed).

    Used instead of DistributedDataParallel: the regularisers differentiate through D and G with
    autograd.grad, which DDP's gradient hooks do not support."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    torch._foreach_copy_(grads, [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)])


class GANStep:
    """One iteration of the StyleGAN2 recipe (non-saturating loss, lazy R1 and path-length
    regularisation, EMA), used unchanged by every stage that trains a GAN.

    `g_extra_loss(g, step)`, if given, returns a term added to the generator's loss (EWC,
    repulsion, l1, CDC), `d_extra_loss(d, step)` one added to the discriminator's (DRed's negatives
    shown as fake); `latents(batch, step)` replaces the latent batches of both steps (default:
    mixing_noise) and `discriminate(d, images, step)` D's logits, [N, 1] or one per patch [N, P]
    (default: d(images); CDC's anchored patch-level schedule). The optimizers decide which tensors
    are updated (CF-k and EU-k give G's a subset).
    Under torch.distributed every process runs it on its own batch and gradients are averaged.
    """

    def __init__(self, g, d, g_ema, args, g_optim, d_optim, g_extra_loss=None, mean_path_length=0.0, device="cpu",
                 d_extra_loss=None, latents=None, discriminate=None):
        self.g, self.d, self.g_ema, self.args = g, d, g_ema, args
        self.g_optim, self.d_optim = g_optim, d_optim
        self.g_extra_loss, self.d_extra_loss = g_extra_loss, d_extra_loss
        self.latents = latents or (lambda batch, step: mixing_noise(batch, g.style_dim, args.mixing, device))
        self.discriminate = discriminate or (lambda d, images, step: d(images))
        self.device = device
        # fine-tuning must start from the checkpoint's running path length: from 0 the path-length
        # penalty would pull G's Jacobian towards zero for hundreds of steps and blur the samples
        self.mean_path_length = torch.tensor(float(mean_path_length), device=device)

    def _update(self, loss, module, optim):
        module.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(module)
        optim.step()

    def __call__(self, real_img, step):
        """Train on one batch of real images; returns a dict of detached scalar losses."""
        args, g, d, judge = self.args, self.g, self.d, self.discriminate
        batch, style_dim = real_img.shape[0], g.style_dim
        losses = {}

        # discriminator
        g.requires_grad_(False)
        d.requires_grad_(True)
        fake_img, _ = g(self.latents(batch, step))
        d_loss = d_logistic_loss(judge(d, real_img, step), judge(d, fake_img, step))
        losses["d"] = d_loss.detach()
        if self.d_extra_loss is not None:
            extra = self.d_extra_loss(d, step)
            d_loss = d_loss + extra
            losses["d_extra"] = extra.detach()
        self._update(d_loss, d, self.d_optim)

        if args.d_reg_every > 0 and step % args.d_reg_every == 0:
            real_img = real_img.detach().requires_grad_(True)
            r1 = d_r1_loss(judge(d, real_img, step), real_img)
            # applied every d_reg_every steps, so scaled up by as much
            self._update(args.r1 / 2 * r1 * args.d_reg_every, d, self.d_optim)
            losses["r1"] = r1.detach()

        # generator
        g.requires_grad_(True)
        d.requires_grad_(False)
        fake_img, _ = g(self.latents(batch, step))
        g_loss = g_nonsaturating_loss(judge(d, fake_img, step))
        losses["g"] = g_loss.detach()
        if self.g_extra_loss is not None:
            extra = self.g_extra_loss(g, step)
            g_loss = g_loss + extra
            losses["extra"] = extra.detach()
        self._update(g_loss, g, self.g_optim)

        if args.g_reg_every > 0 and args.path_regularize > 0 and g.has_mapping and step % args.g_reg_every == 0:
            path_batch = max(1, batch // args.path_batch_shrink)
            fake_img, latents = g(mixing_noise(path_batch, style_dim, args.mixing, self.device),
                                  return_latents=True)
            path_loss, self.mean_path_length, _ = g_path_regularize(fake_img, latents, self.mean_path_length)
            self._update(args.path_regularize * args.g_reg_every * path_loss, g, self.g_optim)
            losses["path"] = path_loss.detach()

        accumulate(self.g_ema, g, ema_decay(args, step + 1))
        return losses


def run_gan_training(gan_step, next_batch, start, iters, log_every=10, sample=None, sample_every=0,
                     save=None, save_every=0, last_good=None, show=True, desc=""):
    """Run steps start..iters-1 of `gan_step` on batches from `next_batch()`, with a progress bar.

    `sample(done)` runs every `sample_every` steps and after the last one; `save(done)` runs
    every `save_every` steps before the last one and returns the path it wrote (the caller
    writes its own final file). Every step's losses are checked for NaN and infinity on their
    device (no host sync per step on a GPU); the flag is read at each progress update, before
    each sample grid or save and after the last step, and a bad step stops the run with a
    one-line UserError naming it and the last checkpoint written (or `last_good`).
    """
    bar = tqdm(range(start, iters), initial=start, total=iters, disable=not show, dynamic_ncols=True,
               smoothing=0.1)
    first_bad = None  # on the losses' device: the first step with a non-finite loss, else -1
    for step in bar:
        losses = gan_step(next_batch(), step)
        finite = torch.stack([torch.isfinite(v).all() for v in losses.values()]).all()
        if first_bad is None:
            first_bad = torch.full((), -1, dtype=torch.long, device=finite.device)
        first_bad = torch.where(finite | (first_bad >= 0), first_bad, torch.full_like(first_bad, step))
        done = step + 1
        due_sample = sample is not None and sample_every and (done % sample_every == 0 or done == iters)
        due_save = save is not None and save_every and done % save_every == 0 and done < iters
        if step % log_every == 0 or done == iters or due_sample or due_save:
            values = {k: float(v) for k, v in losses.items()}
            if int(first_bad) >= 0:
                raise UserError(f"a loss became NaN or infinite at step {int(first_bad)} (now "
                                f"{', '.join(f'{k} {v:.3g}' for k, v in values.items())}); last good "
                                f"checkpoint: {last_good or 'none'}; lower --lr, or resume from it")
            bar.set_description(desc + " ".join(f"{k} {v:.3f}" for k, v in values.items()))
        if due_sample:
            sample(done)
        if due_save:
            try:
                last_good = save(done)
            except UserError as err:  # a checkpoint holding NaN is refused, not written
                raise UserError(f"{err}; last good checkpoint: {last_good or 'none'}")


def random_batches(images_uint8, batch, device):
    """`next_batch()` for training on a small fixed set of uint8 images (the feedback samples):
    the set moves to `device` once, as uint8; each call draws `batch` images uniformly with
    replacement (so a set smaller than a batch works too) and returns them in [-1, 1]."""
    images_uint8 = images_uint8.to(device)

    def next_batch():
        index = torch.randint(len(images_uint8), (batch,), device=device)
        return from_uint8(images_uint8[index])
    return next_batch


def stylegan2_fisher(g, d, n_samples, device, mixing, names):
    """Fisher diagonal of `g`'s parameters `names` at their current values: the mean squared
    gradient of D's raw output on `n_samples` generated images, drawn with style mixing `mixing` as
    in training (paper eq. 3; as the official code, the raw logit stands for the log-likelihood).
    Returns a list aligned with `names`."""
    if n_samples < 4 or n_samples % 4:
        raise UserError(f"--fisher_samples {n_samples}: must be a positive multiple of 4 "
                        "(the discriminator's minibatch-stddev groups)")
    named = dict(g.named_parameters())
    params = [named[name] for name in names]
    was_training = g.training
    g.requires_grad_(True)
    d.requires_grad_(False)
    batches = []
    for start in range(0, n_samples, 16):  # D's minibatch-stddev groups stay those of training
        size = min(16, n_samples - start)
        images, _ = g(mixing_noise(size, g.style_dim, mixing, device))
        batches.append(d(images).reshape(-1))
    fisher = fisher_diagonal(params, torch.cat(batches))
    g.train(was_training)
    return fisher


# which generator tensors the EWC penalty anchors (--ewc_params): name -> (help, layers -> kept?)
EWC_PARAMS = {
    "synthesis": ("the synthesis network: every styled convolution and ToRGB (weights, modulations, noise "
                  "strengths, biases), not the mapping network or the constant input",
                  lambda layer: not (layer.startswith("style.") or layer == "input")),
    "all": ("every generator parameter, the mapping network and the constant input included", lambda layer: True),
}


def add_ewc_args(parser, prefix=""):
    """--ewc_lambda, --ewc_params, --fisher_samples (Stage 1, and the ewc baseline of unlearn.py)."""
    parser.add_argument("--ewc_lambda", type=nonnegative_float, default=EWC_LAMBDA,
                        help=prefix + "λ of the EWC penalty λ·Σ F̂ (θ − θ_G)², with the Fisher F̂ divided by its mean "
                             "over the anchored tensors, so that λ means the same at any width and size (0: plain "
                             "fine-tuning). The paper's 5e8 on its raw Fisher F is our λ ≈ 2.5e8 · mean(F): the run "
                             "prints mean(F)")
    parser.add_argument("--ewc_params", choices=list(EWC_PARAMS), default=EWC_DEFAULT_PARAMS,
                        help=prefix + "which tensors the penalty anchors: "
                             + "; ".join(f"{name}: {text}" for name, (text, _) in EWC_PARAMS.items()))
    parser.add_argument("--fisher_samples", type=positive_int, default=32,
                        help=prefix + "generated samples for the Fisher diagonal (a multiple of 4)")


class EWCPenalty:
    """λ·Σ F̂ (θ − θ_G)² over the tensors --ewc_params of a generator whose current parameters are
    θ_G; F̂ is the Fisher diagonal (stylegan2_fisher) divided by its mean. Call it on any
    generator of the same architecture."""

    def __init__(self, g, d, args, device):
        keep = EWC_PARAMS[args.ewc_params][1]
        self.names = [name for layer, names in g.layers() if keep(layer) for name in names]
        fisher = stylegan2_fisher(g, d, args.fisher_samples, device, args.mixing, self.names)
        try:
            self.fisher, self.fisher_mean = normalise_fisher(fisher)
        except ValueError as err:
            raise UserError(f"--ewc_params {args.ewc_params}: {err}")
        named = dict(g.named_parameters())
        self.theta_g = [named[name].detach().clone() for name in self.names]
        self.weight = args.ewc_lambda

    def record(self):
        return {"ewc_lambda": self.weight, "fisher_mean": self.fisher_mean, "ewc_params": len(self.names)}

    def __call__(self, g, step=None):
        named = dict(g.named_parameters())
        return ewc_penalty([named[name] for name in self.names], self.theta_g, self.fisher, self.weight)


def resume_run(path, nets, optimizers, gan_step, iters):
    """Load a run's state from its checkpoint `path` into `nets`, `optimizers`, the running path
    length of `gan_step` and the random generators; returns the step to continue from."""
    state = load_checkpoint(path, "stylegan2")
    if any(name not in state for name in optimizers) or "rng" not in state:
        raise UserError(f"{path} keeps no optimiser or random state (written before runs could resume); "
                        "start again with --overwrite")
    for name, net in nets.items():
        load_state_strict(net, state[name], path, name)
    for name, optim in optimizers.items():
        optim.load_state_dict(state[name])
    gan_step.mean_path_length.fill_(float(state.get("mean_path_length", 0.0)))
    set_rng_state(state["rng"])
    start = int(state["step"])
    if start >= iters:
        raise UserError(f"{path} is at step {start}; raise --iter above it to train on")
    print(f"resuming {path} at step {start}")
    return start


@torch.no_grad()
def save_samples(g_ema, sample_z, path):
    """The sample grid of a run: `g_ema` on the fixed latents `sample_z` [N, style_dim] with its
    constant noise, √N images a row, as PNG."""
    images, _ = g_ema([sample_z], randomize_noise=False)
    save_image_grid(images, path, nrow=int(math.sqrt(len(sample_z))))


def save_image_grid(images, path, nrow=8):
    """Save images in [-1, 1] as one PNG grid (atomically)."""
    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, normalize=True,
                     value_range=(-1, 1), padding=1)
    array = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))
