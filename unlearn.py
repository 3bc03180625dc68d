"""Stage 2 of Adapt-then-Unlearn, and the baselines of the paper's tables.

    python unlearn.py --ckpt runs/mnist/pretrained.pt --feedback runs/adapt8/feedback.pt \\
        --adapted runs/adapt8/adapted_*.pt --repulsion el2 --out runs/unlearn8_el2
    python unlearn.py --ckpt runs/mnist/pretrained.pt --feedback runs/adapt8/feedback.pt \\
        --method finetune --out runs/unlearn8_finetune

Every method starts from the pre-trained g_ema (θ_P ← θ_G) and D, and trains adversarially on the
positive samples of the feedback with the pre-training recipe; they differ in the generator's
extra loss, in which of its tensors train, and for CDC and RSSA in the latents and the
discriminator each step uses (METHODS below; --method lists them). The
repulsion losses act on d = mean_j ‖θ − θ_N^j‖² / d_0, the distance relative to its value d_0
at θ_G (so α_paper = α / d_0): il2 = μ/d, nl2 = −μ·d, el2 = μ·exp(−α·d).

Writes OUT/unlearned.pt (with a "method" block), sample grids of a fixed latent batch in
OUT/sample/, periodic checkpoints in OUT/checkpoint/ and OUT/args.json.
"""

import copy
import os
from typing import Callable, NamedTuple, Optional

import torch

import checkpoint
import fewshot
import gan
import method
import utils

# μ per repulsion loss, chosen on MNIST digit 4 (docs/mnist_cpu.md, "How the defaults were chosen")
DEFAULT_MU = {"el2": 30.0, "nl2": 0.03, "il2": 10.0}
DEFAULT_ALPHA = 1.0

OUTPUTS = ["unlearned.pt", "checkpoint/*.pt", "sample/*.png", "args.json"]  # see utils.claim_out_dir
# the flags that make a run what it is: --resume refuses to change them (--iter may grow)
RUN_FLAGS = ("ckpt", "feedback", "adapted", "method", "repulsion", "mu", "alpha", "ewc_lambda", "ewc_params",
             "fisher_samples", "last_k", "l1", "dred_weight", "cua_beta", "n_anchors", "rssa_codes", "batch", "lr", "r1", "d_reg_every",
             "path_regularize", "path_batch_shrink", "g_reg_every", "mixing", "ema_kimg", "ema_rampup", "seed")


def load_adapted(paths, pretrained_ckpt, param_names, device):
    """θ_N^j: the g_ema parameters of each adapted checkpoint, as lists aligned with param_names."""
    if not paths:
        raise utils.UserError("--method repulsion needs --adapted FILE [FILE ...] (the outputs of negative_adapt.py)")
    theta_neg = []
    for g in checkpoint.load_adapted(paths, pretrained_ckpt, device):
        state = dict(g.named_parameters())
        theta_neg.append([state[name].detach() for name in param_names])
    return theta_neg


def last_k(g, k):
    """The names of the tensors CF-k and EU-k train: those of g's last k layers (model.Generator.layers)."""
    try:
        return method.last_k_layers(g.layers(), k)
    except ValueError as err:
        raise utils.UserError(f"--last_k {k}: {err}")


def freeze_statistics(g, trained):
    """Batch norms none of whose parameters train (the DC-GAN's, under CF-k and EU-k) normalise with
    their stored statistics and keep them: a frozen layer stays θ_G's, buffers included."""
    for name, module in g.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            if not any(f"{name}.{p}" in trained for p, _ in module.named_parameters()):
                module.eval()


def reinitialise(g, names, model_args, seed):
    """Give the tensors `names` of g the values of a freshly constructed generator (EU-k)."""
    torch.manual_seed(seed)
    fresh = dict(checkpoint.build_gan(model_args, ("g",))["g"].named_parameters())
    with torch.no_grad():
        for name, param in g.named_parameters():
            if name in names:
                param.copy_(fresh[name])


class Setup(NamedTuple):
    """What a method changes in the shared GAN step (gan.GANStep): extra loss terms g_loss(g, step)
    and d_loss(d, step), the names of the generator tensors that train (None: all), the details the
    checkpoint records; for CDC and RSSA also the module trained as D (D with a patch head), the
    latents and discriminate hooks, the extra networks the checkpoints keep (for --resume) and
    the model_args the generator now has."""
    g_loss: Optional[Callable] = None
    d_loss: Optional[Callable] = None
    trained: Optional[list] = None
    details: dict = {}
    discriminator: Optional[torch.nn.Module] = None
    latents: Optional[Callable] = None
    discriminate: Optional[Callable] = None
    nets: dict = {}
    model_args: Optional[dict] = None


# Each method: setup(args, nets, theta_g, ckpt = the pre-trained checkpoint, feedback, device) -> Setup.
# It may change nets["g"] and nets["g_ema"] before training starts.


def setup_repulsion(args, nets, theta_g, ckpt, feedback, device):
    names = [name for name, _ in nets["g"].named_parameters()]
    theta_neg = load_adapted(args.adapted, ckpt, names, device)
    adapted = method.AdaptedParameters(theta_g, theta_neg)  # loaded once, kept on the device

    def loss(g, step):
        return method.repulsion_loss(args.repulsion, adapted.relative_distance(list(g.parameters())),
                                     args.mu, args.alpha)
    return Setup(g_loss=loss, details={"repulsion": args.repulsion, "mu": args.mu, "alpha": args.alpha,
                                       "d0": adapted.d0, "adapted": [os.path.abspath(p) for p in args.adapted]})


def setup_finetune(args, nets, theta_g, ckpt, feedback, device):
    return Setup()


def setup_ewc(args, nets, theta_g, ckpt, feedback, device):
    ewc = gan.EWCPenalty(nets["g"], nets["d"], args, device)
    return Setup(g_loss=ewc, details={**ewc.record(), "ewc_params": args.ewc_params,
                                      "fisher_samples": args.fisher_samples})


def setup_cf_k(args, nets, theta_g, ckpt, feedback, device):
    names = last_k(nets["g"], args.last_k)
    return Setup(trained=names, details={"last_k": names})


def setup_eu_k(args, nets, theta_g, ckpt, feedback, device):
    names = last_k(nets["g"], args.last_k)
    reinitialise(nets["g"], set(names), ckpt["model_args"], args.seed + 1)
    nets["g_ema"].load_state_dict(nets["g"].state_dict())  # the re-initialised layers, in g and g_ema alike
    return Setup(trained=names, details={"last_k": names})


def setup_l1_sparse(args, nets, theta_g, ckpt, feedback, device):
    def loss(g, step):
        return method.l1_penalty(list(g.parameters()), args.l1)
    return Setup(g_loss=loss, details={"l1": args.l1})


def negatives_of(feedback):
    """The feedback's negatives (uint8 images), which DRed and CUA show to D as fake."""
    negatives = feedback["images"][feedback["negative"]]
    if len(negatives) == 0:
        raise utils.UserError("--feedback holds no negative sample for D to call fake")
    return negatives


def setup_dred(args, nets, theta_g, ckpt, feedback, device):
    next_negatives = gan.random_batches(negatives_of(feedback), args.batch, device)

    def d_loss(d, step):
        return method.redaction_loss(d(next_negatives()), args.dred_weight)
    return Setup(d_loss=d_loss, details={"dred_weight": args.dred_weight, "negatives": int(feedback["negative"].sum())})


class CUACascade:
    """CUA's cascade (Sun et al., 2023; the fake label 0, the pairing and the 1:1 alternation are
    our choices where the paper leaves them open): the steps
    alternate an unlearning step (D also calls a batch of negatives fake; G also draws, at a batch
    of the negatives' latents z⁻, the positives that substitute for them, pairs drawn once from
    --seed) and a learning step (the plain GAN step on the positives)."""

    def __init__(self, args, feedback, device):
        if feedback.get("z") is None:
            raise utils.UserError("--method cua needs the negatives' latents: feedback of generated samples, not "
                                  "of --negatives folders")
        negatives, positives = feedback["negative"], ~feedback["negative"]
        self.negatives = negatives_of(feedback).to(device)
        self.z = feedback["z"][negatives].to(device)
        pairing = torch.randint(int(positives.sum()), (len(self.z),), generator=torch.Generator().manual_seed(args.seed))
        self.substitutes = feedback["images"][positives][pairing].to(device)
        self.args, self.batch = args, None

    def d_loss(self, d, step):  # called before g_loss in each step: the batch is drawn here for both
        if step % 2:  # a learning step
            return torch.zeros((), device=self.z.device)
        self.batch = torch.randint(len(self.z), (self.args.batch,), device=self.z.device)
        return method.redaction_loss(d(utils.from_uint8(self.negatives[self.batch])), 1.0)

    def g_loss(self, g, step):
        if step % 2:
            return torch.zeros((), device=self.z.device)
        images, _ = g([self.z[self.batch]])
        return method.substitution_loss(images, utils.from_uint8(self.substitutes[self.batch]), self.args.cua_beta)


def setup_cua(args, nets, theta_g, ckpt, feedback, device):
    cascade = CUACascade(args, feedback, device)
    return Setup(g_loss=cascade.g_loss, d_loss=cascade.d_loss,
                 details={"cua_beta": args.cua_beta, "negatives": len(cascade.z)})


def require_stylegan2(g, name):
    if not g.has_mapping:
        raise utils.UserError(f"--method {name} compares the styled convolutions' features of a StyleGAN2; "
                              "--ckpt is a DC-GAN")


def frozen_source(g):
    """G_s of CDC and RSSA: a frozen copy of the generator as it is now (θ_G)."""
    return copy.deepcopy(g).requires_grad_(False).eval()


def anchored_adversary(args, nets, ckpt, device):
    """CDC's adversarial schedule (fewshot.AnchoredPatchAdversary) with --n_anchors anchors from
    --seed, and its patch-level head on D (fewshot.patch_resolution)."""
    size = ckpt["model_args"]["size"]
    anchors = torch.randn(args.n_anchors, nets["g"].style_dim, generator=torch.Generator().manual_seed(args.seed))
    adversary = fewshot.AnchoredPatchAdversary(anchors.to(device), args.mixing)
    patch_d = fewshot.PatchDiscriminator(nets["d"], size, fewshot.patch_resolution(size)).to(device)
    return dict(discriminator=patch_d, latents=adversary.latents, discriminate=adversary.discriminate,
                nets={"d_patch_head": patch_d.head})


def setup_cdc(args, nets, theta_g, ckpt, feedback, device):
    require_stylegan2(nets["g"], "cdc")
    term = fewshot.CDCTerm(frozen_source(nets["g"]))
    return Setup(g_loss=term, details={"cdc_weight": term.weight, "n_anchors": args.n_anchors},
                 **anchored_adversary(args, nets, ckpt, device))


def setup_rssa(args, nets, theta_g, ckpt, feedback, device):
    """RSSA's target codes are the W codes of --rssa_codes positives, drawn from --seed: exact, as
    the positives are the generator's own samples (RSSA inverts its target images)."""
    g = nets["g"]
    require_stylegan2(g, "rssa")
    if feedback.get("z") is None:
        raise utils.UserError("--method rssa needs the positives' latents: feedback of generated samples, not "
                              "of --positives folders")
    z = feedback["z"][~feedback["negative"]]
    pick = torch.randperm(len(z), generator=torch.Generator().manual_seed(args.seed))[:args.rssa_codes]
    with torch.no_grad():
        codes = g.style(z[pick].to(device))
    projector, strength = fewshot.compression_projector(codes), fewshot.compression_strengths(g.n_latent).to(device)
    for net in (g, nets["g_ema"]):
        net.compress_latents(projector, strength)
    return Setup(g_loss=fewshot.RSSATerm(frozen_source(g)),  # G_s samples the compressed space too, as RSSA's
                 details={"rssa_codes": len(pick), "n_anchors": args.n_anchors},
                 model_args={**ckpt["model_args"], "latent_compression": True},
                 **anchored_adversary(args, nets, ckpt, device))


class Method(NamedTuple):
    setup: Callable
    help: str


METHODS = {
    "repulsion": Method(setup_repulsion, "the method: + a repulsion term (--repulsion, --mu, --alpha) pushing θ "
                                         "away from the adapted models θ_N (paper eq. 6)"),
    "finetune": Method(setup_finetune, "adversarial loss only (the paper's ablation, Table 5)"),
    "ewc": Method(setup_ewc, "+ the EWC penalty of Stage 1 around θ_G (EWC adaptation to the positives)"),
    "cf_k": Method(setup_cf_k, "only the last --last_k layers train, the rest frozen at θ_G (catastrophic forgetting-k)"),
    "eu_k": Method(setup_eu_k, "the same layers are re-initialised (in g and g_ema), then trained, the rest frozen "
                               "(exact unlearning-k)"),
    "l1_sparse": Method(setup_l1_sparse, "+ --l1 · ‖θ‖₁ over all generator parameters (ℓ1-sparse fine-tuning)"),
    "dred": Method(setup_dred, "data redaction (Kong & Chaudhuri, 2023): D is also shown the negatives as fake, "
                               "--dred_weight · E softplus(D(x⁻))"),
    "cua": Method(setup_cua, "cascaded unlearning (Sun et al., 2023): unlearning steps (negatives shown to D as fake; "
                             "G pulled, at the negatives' latents, to substitute positives, --cua_beta) alternate "
                             "with plain learning steps on the positives"),
    "cdc": Method(setup_cdc, "few-shot adaptation by cross-domain correspondence (Ojha et al., 2021): + its distance "
                             "consistency to θ_G's features, anchored image-level / patch-level D steps (--n_anchors)"),
    "rssa": Method(setup_rssa, "few-shot adaptation by relaxed spatial structural alignment (Xiao et al., 2022): + its "
                               "self- and disturbance-correlation consistency to θ_G's features in a latent space "
                               "compressed toward --rssa_codes positives, CDC's anchored D steps"),
}


def create_argparser():
    parser = utils.make_parser(__doc__)
    parser.add_argument("--ckpt", required=True,
                        help="the pre-trained StyleGAN2: a .pt of ours or rosinality's, or an NVlabs .pkl (θ_G = its g_ema)")
    parser.add_argument("--feedback", required=True, help="feedback.pt written by negative_adapt.py from the same --ckpt")
    parser.add_argument("--adapted", nargs="*", default=None, help="adapted_*.pt of negative_adapt.py (θ_N^j = their g_ema)")
    utils.add_out_args(parser, "runs/unlearn")
    parser.add_argument("--method", choices=list(METHODS), default="repulsion",
                        help="what to run: " + "; ".join(f"{name}: {m.help}" for name, m in METHODS.items()))
    parser.add_argument("--repulsion", choices=list(method.REPULSION_LOSSES), default="el2",
                        help="repulsion: the loss on d (il2 = μ/d, nl2 = −μ·d, el2 = μ·exp(−α·d))")
    parser.add_argument("--mu", type=utils.nonnegative_float, default=None,
                        help="repulsion: μ, the weight of the repulsion term (default per loss: "
                             + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_MU.items()) + ")")
    parser.add_argument("--alpha", type=utils.positive_float, default=DEFAULT_ALPHA,
                        help="repulsion: α of el2 (on the relative distance d)")
    gan.add_ewc_args(parser, prefix="ewc: ")
    parser.add_argument("--last_k", type=utils.positive_int, default=10,
                        help="cf_k, eu_k: how many layers train, counted from the output end in forward order (the "
                             "paper's k = 10). A layer is a styled convolution with its modulation, noise strength "
                             "and bias, a ToRGB, the constant input, or a mapping linear; at 32 px the last 10 are "
                             "every synthesis layer but the first 4x4 convolution")
    parser.add_argument("--l1", type=utils.nonnegative_float, default=5e-5, help="l1_sparse: weight of Σ|θ| (official code: 5e-5)")
    parser.add_argument("--dred_weight", type=utils.positive_float, default=1.0,
                        help="dred: weight w of the negatives as fake beside the generated samples: D's fake "
                             "distribution is DRed's mixture λ·p_G + (1 − λ)·p⁻ with w = (1 − λ)/λ (1: λ = 0.5)")
    parser.add_argument("--cua_beta", type=utils.nonnegative_float, default=1.0,
                        help="cua: weight of the substitution term mean ‖G(z⁻) − x_s‖² (images in [-1, 1])")
    parser.add_argument("--n_anchors", type=utils.positive_int, default=10,
                        help="cdc, rssa: anchor latents whose neighbourhoods get the image-level D steps (CDC's "
                             "n_train at its 10-shot setting)")
    parser.add_argument("--rssa_codes", type=utils.positive_int, default=10,
                        help="rssa: positives whose latent codes span the compressed latent space (RSSA's 10 "
                             "target images); the unlearned generator samples from that space too")
    parser.add_argument("--iter", type=utils.positive_int, default=1000, help="Stage-2 iterations (official MNIST runs: 1000)")
    gan.add_gan_training_args(parser, ema_rampup=gan.FINE_TUNE_EMA_RAMPUP, mixing=0.0, mixing_help=(
        "; 0 here, unlike pre-training's 0.9: sampling and evaluation never mix, and on MNIST at CPU scale "
        "(EL2, two seeds) Stage 2 without mixing kept PUL (81.6 against 83.3%%) at a lower FID (44.3 against 53.5)"))
    parser.add_argument("--n_sample", type=utils.positive_int, default=64, help="images in each sample grid (fixed latents)")
    parser.add_argument("--sample_every", type=utils.nonnegative_int, default=100, help="save a sample grid every this many steps")
    parser.add_argument("--save_every", type=utils.nonnegative_int, default=500, help="save a checkpoint every this many steps")
    parser.add_argument("--log_every", type=utils.positive_int, default=10, help="progress bar update (and NaN check) every this many steps")
    parser.add_argument("--seed", type=utils.nonnegative_int, default=0, help="random seed")
    parser.add_argument("--device", default=utils.default_device(), help="cuda or cpu")
    return parser


def main(args):
    if args.mu is None:
        args.mu = DEFAULT_MU[args.repulsion]
    device = args.device
    nets, ckpt = checkpoint.load_gan(args.ckpt, device=device)
    model_args = ckpt["model_args"]
    feedback = checkpoint.load_feedback(args.feedback, checkpoint.state_fingerprint(ckpt["g_ema"]))
    positives = feedback["images"][~feedback["negative"]]
    if len(positives) == 0:
        raise utils.UserError(f"--feedback {args.feedback} has no positive sample to train on")
    folders = feedback["labelled_by"].get("folders")
    print(f"Stage 2 trains on {len(positives)} positives: "
          + (folders["positives"] if folders else "the generated feedback samples not called negative"))
    utils.seed_everything(args.seed)

    g, d, g_ema = nets["g"], nets["d"], nets["g_ema"].eval()
    g.load_state_dict(g_ema.state_dict())  # θ_P starts at θ_G (the EMA generator), as in the paper
    theta_g = [p.detach().clone() for p in g.parameters()]
    setup = METHODS[args.method].setup(args, nets, theta_g, ckpt, feedback, device)
    trained, details = setup.trained, dict(setup.details)
    model_args = setup.model_args or model_args
    d_trained = setup.discriminator or d  # the parameters D's optimiser updates
    run_nets = {"g": g, "d": d, "g_ema": g_ema, **setup.nets}
    # every input is read and checked: only now is --out made
    if args.resume:
        checkpoint.check_same_run(args, RUN_FLAGS)
    utils.claim_out_dir(args, OUTPUTS)
    os.makedirs(os.path.join(args.out, "sample"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "checkpoint"), exist_ok=True)
    utils.write_args_json(args.out, args)
    g_params = None if trained is None else [p for name, p in g.named_parameters() if name in set(trained)]
    if trained is not None:
        freeze_statistics(g, set(trained))
    g_optim, d_optim = gan.make_optimizers(g, d_trained, args, g_params=g_params)
    gan_step = gan.GANStep(g, d_trained, g_ema, args, g_optim, d_optim, g_extra_loss=setup.g_loss,
                           d_extra_loss=setup.d_loss, latents=setup.latents, discriminate=setup.discriminate,
                           mean_path_length=ckpt.get("mean_path_length", 0.0), device=device)
    start, resume_from = 0, checkpoint.last_checkpoint(args.out, "unlearned.pt") if args.resume else None
    if resume_from is not None:
        start = gan.resume_run(resume_from, run_nets, {"g_optim": g_optim, "d_optim": d_optim},
                               gan_step, args.iter)

    record = {"stage": "unlearn", "method": args.method, **details, "iter": args.iter,
              "positives": len(positives), "feedback": os.path.abspath(args.feedback)}
    sources = {"ckpt": os.path.abspath(args.ckpt), "feedback": os.path.abspath(args.feedback)}
    sources.update({f"adapted_{j}": os.path.abspath(p) for j, p in enumerate(args.adapted or [])})
    sample_z = torch.randn(args.n_sample, model_args["style_dim"],
                           generator=torch.Generator().manual_seed(args.seed)).to(device)

    def sample(done):
        gan.save_samples(g_ema, sample_z, os.path.join(args.out, "sample", f"{done:06d}.png"))

    def save(done, path=None):
        path = path or os.path.join(args.out, "checkpoint", f"{done:06d}.pt")
        return checkpoint.save_generator(path, run_nets, model_args, args, done, sources,
                                         {"g_optim": g_optim, "d_optim": d_optim}, dict(record, step=done),
                                         gan_step.mean_path_length, rng=utils.rng_state())

    print(f"{args.method}{' ' + args.repulsion if args.method == 'repulsion' else ''}: "
          f"{len(positives)} positives, {args.iter} iterations")
    gan.run_gan_training(gan_step, gan.random_batches(positives, args.batch, device), start, args.iter,
                         args.log_every, sample, args.sample_every, save, args.save_every, last_good=resume_from)
    pull = method.ema_pull(list(g_ema.parameters()), list(g.parameters()), theta_g)
    record["ema_pull"] = pull
    final = save(args.iter, os.path.join(args.out, "unlearned.pt"))
    print(f"wrote {final} (EMA pull toward θ_G: s = {pull:.3f})")


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
