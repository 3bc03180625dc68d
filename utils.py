"""What several stages share: errors, seeding, checkpoint I/O, images, and the method's
parameter-space functions (Fisher diagonal, EWC penalty, repulsion, extrapolation).

Everything here is plain functions on tensors, state dicts and paths; the scripts hold the loops.
"""

import argparse
import json
import os
import pickle
import random
import re
import sys
import tempfile

import numpy as np
import torch


# --------------------------------------------------------------------------------------------
# Errors and run bookkeeping
# --------------------------------------------------------------------------------------------


class UserError(Exception):
    """A problem with the user's input: printed as one line by `run_cli`, never as a traceback."""


def run_cli(main, args):
    """Call `main(args)`; a UserError ends the process with a one-line message and status 2."""
    try:
        return main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_out_dir(out):
    """Create `out` and fail early (not after an hour of training) when it is not writable."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"cannot write to --out {out}: {err.strerror}; choose another folder")
    return out


def write_args_json(out, args):
    """Write the resolved options and the command line beside a stage's outputs."""
    record = {"args": vars(args), "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    text = json.dumps(record, indent=2, default=str)
    atomic_write(os.path.join(out, "args.json"), lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def atomic_write(path, write):
    """Call `write(file)` on a temporary file beside `path`, then move it into place: readers
    (and a run killed mid-write) see the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(obj, path):
    """torch.save a checkpoint dict atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, kind=None):
    """Load a checkpoint dict with weights_only=True; `kind` ("stylegan2", "classifier",
    "feedback") is checked. rosinality's train.py files (no "kind", an argparse.Namespace as
    "args") are read as "stylegan2", with "args" turned into a dict and "model_args" inferred.
    Every failure is a one-line UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: refused to unpickle it (only tensors and plain values are loaded): {first_line}")
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as err:
        raise UserError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict")

    if "kind" not in ckpt and ("g_ema" in ckpt or "g" in ckpt):  # rosinality/stylegan2-pytorch
        ckpt["kind"] = "stylegan2"
        if isinstance(ckpt.get("args"), argparse.Namespace):
            ckpt["args"] = vars(ckpt["args"])
    found = ckpt.get("kind", "unknown")
    if kind is not None and found != kind:
        raise UserError(f"{path} is a {found} checkpoint, but a {kind} checkpoint is expected here")
    if found == "stylegan2" and "model_args" not in ckpt:
        ckpt["model_args"] = infer_model_args(ckpt, path)
    return ckpt


# --------------------------------------------------------------------------------------------
# StyleGAN2 checkpoints
# --------------------------------------------------------------------------------------------

MODEL_ARG_NAMES = ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_max")


def infer_model_args(ckpt, path):
    """Constructor arguments of a checkpoint without "model_args": from rosinality's training
    options when present, else from the generator's tensor shapes."""
    args = ckpt.get("args") or {}
    state = ckpt.get("g_ema", ckpt.get("g"))
    if state is None:
        raise UserError(f"{path}: a StyleGAN2 checkpoint needs a 'g_ema' or 'g' state dict")
    try:
        n_mlp = sum(1 for key in state if key.startswith("style.") and key.endswith(".weight"))
        style_dim = state["style.1.weight"].shape[0]
        size = 2 ** (sum(1 for key in state if re.fullmatch(r"to_rgbs\.\d+\.bias", key)) + 2)
        base_width = state["input.input"].shape[1]
    except KeyError as err:
        raise UserError(f"{path}: not a StyleGAN2 generator state dict (no {err.args[0]})")
    channel_multiplier = 2
    if size >= 64:  # width at 64 px is 256 * channel_multiplier unless capped
        width64 = state[f"convs.{2 * (6 - 3)}.conv.weight"].shape[1]
        if width64 < base_width or base_width == 512:
            channel_multiplier = max(1, width64 // 256)
    return {
        "size": int(args.get("size", size)),
        "style_dim": int(args.get("latent", style_dim)),
        "n_mlp": int(args.get("n_mlp", n_mlp)),
        "channel_multiplier": int(args.get("channel_multiplier", channel_multiplier)),
        "channel_max": int(base_width) if base_width < 512 else 512,
    }


def complete_model_args(model_args):
    """model_args with the constructor defaults filled in, so files always record all five."""
    return {"channel_multiplier": 2, "channel_max": 512,
            **{k: v for k, v in model_args.items() if k in MODEL_ARG_NAMES}}


def describe_model_args(model_args):
    return ", ".join(f"{k}={model_args[k]}" for k in MODEL_ARG_NAMES if k in model_args)


def load_state_strict(module, state, path, key):
    """load_state_dict(strict=True), with a mismatch reported as one line naming what differs."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            what = f"'{k}' has shape {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)}"
        elif missing:
            what = f"{len(missing)} tensors missing, e.g. '{missing[0]}'"
        else:
            what = f"{len(unexpected)} unexpected tensors, e.g. '{unexpected[0]}'"
        raise UserError(f"{path}: '{key}' does not fit {type(module).__name__}: {what}")
    module.load_state_dict(state, strict=True)


def build_stylegan2(model_args, which=("g", "d", "g_ema")):
    """Fresh networks from model_args: a dict name -> module for the names in `which`."""
    from model import Discriminator, Generator

    gen_args = complete_model_args(model_args)
    disc_args = {k: gen_args[k] for k in ("size", "channel_multiplier", "channel_max")}
    return {name: Discriminator(**disc_args) if name == "d" else Generator(**gen_args) for name in which}


def load_stylegan2(path, which=("g", "d", "g_ema"), device="cpu", expect_model_args=None):
    """Networks from a StyleGAN2 checkpoint (ours or rosinality's), loaded strictly.

    Returns (dict name -> module on `device`, the checkpoint dict). With `expect_model_args`,
    any constructor argument given there that differs from the file's is a one-line error.
    """
    ckpt = load_checkpoint(path, "stylegan2")
    model_args = ckpt["model_args"] = complete_model_args(ckpt["model_args"])
    if expect_model_args:
        diff = [f"{k} {model_args.get(k)} in the file vs {v} asked for" for k, v in expect_model_args.items()
                if k in MODEL_ARG_NAMES and model_args.get(k, v) != v]
        if diff:
            raise UserError(f"{path}: architecture differs: " + "; ".join(diff))
    try:
        nets = build_stylegan2(model_args, which)
    except ValueError as err:
        raise UserError(f"{path}: bad model_args ({describe_model_args(model_args)}): {err}")
    for name, net in nets.items():
        if name not in ckpt:
            raise UserError(f"{path}: has no '{name}' state dict")
        load_state_strict(net, ckpt[name], path, name)
        net.to(device)
    return nets, ckpt


def load_generator(path, device="cpu"):
    """The generator to sample from: `g_ema` of a StyleGAN2 checkpoint (else `g`), in eval mode."""
    ckpt = load_checkpoint(path, "stylegan2")
    which = "g_ema" if "g_ema" in ckpt else "g"
    nets, ckpt = load_stylegan2(path, (which,), device)
    return nets[which].eval().requires_grad_(False), ckpt


def stylegan2_checkpoint(nets, model_args, args, step, sources, optimizers=None, method=None):
    """The design.md checkpoint dict: rosinality's keys + kind, model_args, step, args, sources."""
    ckpt = {name: net.state_dict() for name, net in nets.items()}
    for name, optim in (optimizers or {}).items():
        ckpt[name] = optim.state_dict()
    ckpt.update(kind="stylegan2", model_args=complete_model_args(model_args), step=int(step),
                args=plain_args(args), sources=dict(sources))
    if method is not None:
        ckpt["method"] = method
    return ckpt


def plain_args(args):
    """vars(args) with only JSON-able values, so the checkpoint loads with weights_only=True."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return json.loads(json.dumps(values, default=str))


# --------------------------------------------------------------------------------------------
# Adapt-then-Unlearn in parameter space (paper eqs. 3 and 6)
# --------------------------------------------------------------------------------------------
#
# All functions take `params`, a list of tensors (e.g. `list(generator.parameters())`), and
# anchors given as lists of tensors in the same order. The per-step functions (`ewc_penalty`,
# `AdaptedParameters.relative_distance`) issue a fixed number of `torch._foreach_*` calls for the
# whole list, not a Python loop over the tensors, and compute θ − anchor directly (never the
# ‖θ‖² − 2θ·a + ‖a‖² expansion, which cancels catastrophically when θ is close to the anchor).


def select_parameters(state_dict, names):
    """The tensors of `state_dict` named `names`, in that order: turns a checkpoint's `g_ema` into
    a list that lines up with `[p for _, p in generator.named_parameters()]`."""
    missing = [name for name in names if name not in state_dict]
    if missing:
        raise UserError(f"checkpoint lacks generator parameter {missing[0]!r} ({len(missing)} missing)")
    return [state_dict[name] for name in names]


class _SquaredDistance(torch.autograd.Function):
    """Σ_p Σ_i w_p,i (θ_p,i − a_p,i)² over a list of tensors, in a few foreach calls.

    The gradient 2·w·(θ − a) is formed from the difference kept from the forward pass, so it is
    exact however close θ is to a. `weights` is None for the plain squared distance.
    """

    @staticmethod
    def forward(ctx, anchors, weights, *params):
        diffs = torch._foreach_sub(params, anchors)
        if weights is None:
            total = torch.stack(torch._foreach_norm(diffs)).square().sum()
        else:
            weighted = torch._foreach_mul(diffs, diffs)
            torch._foreach_mul_(weighted, weights)
            total = torch.stack(torch._foreach_norm(weighted, 1)).sum()  # entries are >= 0
            torch._foreach_mul_(diffs, weights)
        ctx.scaled_diffs = diffs  # w·(θ − a): the gradient up to the factor 2·grad_output
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grads = ctx.scaled_diffs
        del ctx.scaled_diffs
        torch._foreach_mul_(grads, 2 * grad_output)
        return (None, None, *grads)


def _check_aligned(params, anchors, what):
    if len(params) != len(anchors):
        raise ValueError(f"{what}: {len(anchors)} tensors for {len(params)} parameters")
    for index, (param, anchor) in enumerate(zip(params, anchors)):
        if param.shape != anchor.shape:
            raise ValueError(f"{what}: tensor {index} has shape {tuple(anchor.shape)}, "
                             f"parameter has {tuple(param.shape)}")


def fisher_diagonal(params, per_sample_loglik):
    """Diagonal empirical Fisher: F = mean over samples of (∂ loglik_s / ∂θ)², element-wise.

    Args:
        params: list of tensors requiring grad (all of them, or the subset to anchor).
        per_sample_loglik: 1-D tensor [N], one value per sample, built from `params` by autograd.
            For the GANs of this repo: the discriminator's raw output on N generated samples
            (as the official code does; the paper speaks of a log-likelihood estimated with D).
            Samples may interact (minibatch-stddev): each value's full gradient is taken.
    Returns:
        list of detached tensors shaped like `params`. Parameters that a value does not reach get
        zero Fisher. One backward pass per sample: per-sample gradients are what is squared.
    """
    values = per_sample_loglik.reshape(-1)
    if len(values) == 0:
        raise ValueError("fisher_diagonal needs at least one sample")
    fisher = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
    for index, value in enumerate(values):
        grads = torch.autograd.grad(value, params, retain_graph=index < len(values) - 1,
                                    allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        torch._foreach_addcmul_(fisher, grads, grads)
    torch._foreach_div_(fisher, len(values))
    return fisher


def ewc_penalty(params, theta_g, fisher, weight):
    """EWC penalty of Stage 1 (paper eq. 3): weight · Σ_i F_i (θ_i − θ_G,i)².

    `theta_g` and `fisher` are lists of tensors aligned with `params` (detached, on their
    device). The official code uses (weight / 2) · Σ F (θ − θ_G)²: its λ = 5e8 is our weight 2.5e8.
    Zero, with zero gradient, at θ = θ_G.
    """
    _check_aligned(params, theta_g, "ewc_penalty theta_g")
    _check_aligned(params, fisher, "ewc_penalty fisher")
    return weight * _SquaredDistance.apply(list(theta_g), list(fisher), *params)


class AdaptedParameters:
    """The k adapted generators θ_N^1..θ_N^k of Stage 1, reduced once to what Stage 2 needs.

    The repulsion (paper eq. 6) is applied to the relative distance

        d(θ) = mean_j ‖θ − θ_N^j‖² / d_0,     d_0 = mean_j ‖θ_G − θ_N^j‖²,

    so d(θ_G) = 1 and μ, α mean the same for a 2-D toy MLP and a 17M-parameter StyleGAN2. In the
    paper's raw units (one model, ‖θ − θ_N‖²) our α corresponds to α_paper = α / d_0.

    It uses mean_j ‖θ − θ_N^j‖² = ‖θ − θ̄_N‖² + s,  θ̄_N = mean_j θ_N^j,  s = mean_j ‖θ_N^j − θ̄_N‖²
    (exact, no cancellation: both terms are sums of squared differences). So only θ̄_N is kept,
    whatever k, and a step costs one difference and one norm per tensor, in foreach calls.

    Args:
        theta_g: list of tensors (the pre-trained generator, same order as the `params` later).
        theta_neg: list of k such lists (the adapted generators).
        device: where to keep θ̄_N (default: the device of theta_g).
    """

    def __init__(self, theta_g, theta_neg, device=None):
        if len(theta_neg) == 0:
            raise ValueError("AdaptedParameters needs at least one adapted model")
        for j, theta in enumerate(theta_neg):
            _check_aligned(theta_g, theta, f"adapted model {j}")
        device = device if device is not None else theta_g[0].device
        self.k = len(theta_neg)
        # float64 for the one-off reductions; the per-step work stays in the parameters' dtype
        theta_mean64 = [torch.stack([theta[i].detach().to(device, torch.float64) for theta in theta_neg]).mean(0)
                        for i in range(len(theta_g))]
        spread = sum(float((theta[i].detach().to(device, torch.float64) - theta_mean64[i]).square().sum())
                     for theta in theta_neg for i in range(len(theta_g))) / self.k
        gap = sum(float((t.detach().to(device, torch.float64) - m).square().sum())
                  for t, m in zip(theta_g, theta_mean64))
        self.theta_neg_mean = [m.to(t.dtype) for m, t in zip(theta_mean64, theta_g)]
        self.spread = spread          # s = mean_j ‖θ_N^j − θ̄_N‖²
        self.d0 = gap + spread        # mean_j ‖θ_G − θ_N^j‖²
        if self.d0 == 0:
            raise ValueError("the adapted models equal the pre-trained one: the distance is undefined")

    def raw_distance(self, params):
        """mean_j ‖θ − θ_N^j‖² (tensor, differentiable w.r.t. params)."""
        _check_aligned(params, self.theta_neg_mean, "relative_distance")
        return _SquaredDistance.apply(self.theta_neg_mean, None, *params) + self.spread

    def relative_distance(self, params):
        """d(θ) = mean_j ‖θ − θ_N^j‖² / d_0; 1 at θ_G. Gradient 2(θ − θ̄_N)/d_0."""
        return self.raw_distance(params) / self.d0


def repulsion_il2(distance, mu, alpha=None):
    """Inverse ℓ2 (IL2): μ / d."""
    return mu / distance


def repulsion_nl2(distance, mu, alpha=None):
    """Negative ℓ2 (NL2): −μ · d (unbounded below: the adversarial loss must hold it)."""
    return -mu * distance


def repulsion_el2(distance, mu, alpha):
    """Exponential negative ℓ2 (EL2): μ · exp(−α · d). With d relative, α_paper = α / d_0."""
    return mu * torch.exp(-alpha * distance)


REPULSION_LOSSES = {"il2": repulsion_il2, "nl2": repulsion_nl2, "el2": repulsion_el2}


def repulsion_loss(kind, distance, mu, alpha=1.0):
    """The Stage-2 repulsion term (paper eq. 6) of `kind` in REPULSION_LOSSES on the relative
    distance d (from `AdaptedParameters.relative_distance`). Every kind decreases as d grows, so
    minimising it pushes θ away from the adapted models."""
    if kind not in REPULSION_LOSSES:
        raise UserError(f"unknown repulsion loss {kind!r}; choose one of {', '.join(REPULSION_LOSSES)}")
    return REPULSION_LOSSES[kind](distance, mu, alpha)


def extrapolate(theta_g, theta_neg, gamma):
    """Parameter extrapolation baseline: θ_G + γ·(θ_G − mean_j θ_N^j), on state dicts.

    Positive γ moves away from the adapted (negative) models, γ = 0 gives θ_G and γ = −1 gives
    their mean. The official code writes θ_G + γ·mean_j(θ_N^j − θ_G): the opposite sign (its
    "γ = −1.0" is our γ = 1.0). Non-floating entries are copied from theta_g.
    """
    if len(theta_neg) == 0:
        raise ValueError("extrapolate needs at least one adapted model")
    out = {}
    for name, value in theta_g.items():
        for j, theta in enumerate(theta_neg):
            if name not in theta:
                raise UserError(f"adapted model {j} lacks {name!r}: it is not the same architecture")
        if not torch.is_floating_point(value):
            out[name] = value.clone()
            continue
        theta_neg_mean = torch.stack([theta[name].to(value) for theta in theta_neg]).mean(0)
        out[name] = value + gamma * (value - theta_neg_mean)
    return out
