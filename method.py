"""Adapt-then-Unlearn in parameter space (paper eqs. 3 and 6), on plain tensors.

Nothing here knows what network it is given: the same functions run the 2-D toy MLP of
mog_toy.py and StyleGAN2. Imports torch only.

All functions take `params`, a list of tensors (e.g. `list(generator.parameters())`), and
anchors given as lists of tensors in the same order. The per-step functions (`ewc_penalty`,
`AdaptedParameters.relative_distance`, `l1_penalty`) issue a fixed number of `torch._foreach_*`
calls for the whole list, not a Python loop over the tensors, and compute θ − anchor directly
(never the ‖θ‖² − 2θ·a + ‖a‖² expansion, which cancels catastrophically when θ is close to the
anchor). Misuse raises ValueError; the scripts turn the user's mistakes into one-line errors
before they get here.
"""

import torch
from torch.nn import functional as F


def select_parameters(state_dict, names):
    """The tensors of `state_dict` named `names`, in that order: turns a checkpoint's `g_ema` into
    a list that lines up with `[p for _, p in generator.named_parameters()]`."""
    missing = [name for name in names if name not in state_dict]
    if missing:
        raise ValueError(f"the state dict lacks parameter {missing[0]!r} ({len(missing)} missing)")
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
    """Same number of tensors, same shapes (foreach ops would broadcast a misaligned list)."""
    if [p.shape for p in params] == [a.shape for a in anchors]:
        return
    if len(params) != len(anchors):
        raise ValueError(f"{what}: {len(anchors)} tensors for {len(params)} parameters")
    index = next(i for i, (p, a) in enumerate(zip(params, anchors)) if p.shape != a.shape)
    raise ValueError(f"{what}: tensor {index} has shape {tuple(anchors[index].shape)}, "
                     f"parameter has {tuple(params[index].shape)}")


def normalise_fisher(fisher):
    """F / mean(F) over every entry of the list: the EWC weight λ then means the same for any
    width, image size and parameter count (a parameter of average Fisher costs λ·Δθ²). Returns
    the normalised list and the mean it was divided by (the paper's λ is about 2λ / mean)."""
    total = sum(float(f.double().sum()) for f in fisher)
    count = sum(f.numel() for f in fisher)
    if count == 0 or not total > 0:
        raise ValueError("the Fisher diagonal is zero everywhere: the discriminator's output does not "
                         "depend on these parameters")
    mean = total / count
    return [f / mean for f in fisher], mean


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
    device); the StyleGAN2 stages pass a Fisher of mean 1 (`normalise_fisher`). The official code
    uses (weight / 2) · Σ F (θ − θ_G)² with its raw Fisher: its λ is our weight · 2 / mean(F).
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
        raise ValueError(f"unknown repulsion loss {kind!r}; choose one of {', '.join(REPULSION_LOSSES)}")
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
                raise ValueError(f"adapted model {j} lacks {name!r}: it is not the same architecture")
        if not torch.is_floating_point(value):
            out[name] = value.clone()
            continue
        theta_neg_mean = torch.stack([theta[name].to(value) for theta in theta_neg]).mean(0)
        out[name] = value + gamma * (value - theta_neg_mean)
    return out


def redaction_loss(d_negatives, weight):
    """DRed's extra discriminator term (Kong & Chaudhuri, 2023): the samples to redact shown to D as
    fake, weight · E softplus(D(x⁻)). Beside the usual E softplus(−D(x⁺)) + E softplus(D(G(z))) it
    makes D's fake distribution the mixture λ·p_G + (1 − λ)·p⁻ of their objective, with
    weight = (1 − λ)/λ (the real term scaled by 1/λ: the same optimum for G)."""
    return weight * F.softplus(d_negatives).mean()


def substitution_loss(images, substitutes, weight):
    """CUA's substitution term on the generator (Sun et al., 2023, our reading): the images G draws
    at the latents of the unlearned samples are pulled to the retained samples that substitute for
    them, weight · mean ‖G(z⁻) − x_s‖² (per pixel, images in [−1, 1])."""
    return weight * (images - substitutes).square().mean()


def l1_penalty(params, weight):
    """ℓ1-sparse fine-tuning's penalty: weight · Σ_p ‖θ_p‖₁ over the list of tensors."""
    return weight * torch.stack(torch._foreach_norm(params, 1)).sum()


def last_k_layers(layers, k):
    """The parameters CF-k and EU-k train: those of the last `k` of `layers`, a list of
    (layer name, [parameter names]) in forward order (the output end last), in that order."""
    layers = list(layers)
    if not 0 < k <= len(layers):
        raise ValueError(f"k must be between 1 and {len(layers)} (the generator's layers)")
    return [name for _, names in layers[-k:] for name in names]


def squared_distance(params, anchors):
    """‖θ − a‖² over aligned lists of tensors, in float64 (a number, not differentiable)."""
    _check_aligned(params, anchors, "squared_distance")
    return sum(float((p.detach().double() - a.detach().double().to(p.device)).square().sum())
               for p, a in zip(params, anchors))


def ema_pull(g_ema, g, theta_g):
    """s = ⟨g_ema − g, θ_G − g⟩ / ‖θ_G − g‖²: how much of the way back from the trained g to θ_G
    the averaged generator still sits (0: no pull, 1: all the way), on aligned lists of tensors.
    Computed in float64; 0 when g = θ_G."""
    _check_aligned(g, g_ema, "ema_pull g_ema")
    _check_aligned(g, theta_g, "ema_pull theta_g")
    inner = norm = 0.0
    for e, p, t in zip(g_ema, g, theta_g):
        p = p.detach().double()
        back = t.detach().double().to(p.device) - p
        inner += float((e.detach().double().to(p.device) - p).mul(back).sum())
        norm += float(back.square().sum())
    return inner / norm if norm > 0 else 0.0
