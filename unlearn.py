"""Stage 2 of Adapt-then-Unlearn, and the baselines of the paper's tables.

    python unlearn.py --ckpt runs/mnist/final.pt --feedback runs/adapt8/feedback.pt \\
        --adapted runs/adapt8/adapted_*.pt --repulsion el2 --out runs/unlearn8_el2
    python unlearn.py --ckpt runs/mnist/final.pt --feedback runs/adapt8/feedback.pt \\
        --method finetune --out runs/unlearn8_finetune

Every method starts from the pre-trained g_ema (θ_P ← θ_G) and D, and trains adversarially on the
positive samples of the feedback with the pre-training recipe; they differ in the generator's
extra loss and in which of its tensors train:

  repulsion  + a repulsion term pushing θ away from the adapted models θ_N (paper eq. 6):
             il2 = μ/d, nl2 = −μ·d, el2 = μ·exp(−α·d), with d = mean_j ‖θ − θ_N^j‖² / d_0 the
             distance relative to its value d_0 at θ_G (so α_paper = α / d_0)
  finetune   adversarial loss only (the paper's ablation, Table 5)
  ewc        + the EWC penalty of Stage 1 around θ_G (EWC adaptation to the positives)
  cf_k       only the last --last_k parameter tensors train (catastrophic forgetting-k)
  eu_k       the same tensors are re-initialised, then trained (exact unlearning-k)
  l1_sparse  + --l1 · Σ|θ| over all generator parameters (ℓ1-sparse fine-tuning)

Writes OUT/unlearned.pt (with a "method" block), sample grids of a fixed latent batch in
OUT/sample/, periodic checkpoints in OUT/checkpoint/ and OUT/args.json.
"""

import argparse
import math
import os

import torch

import utils

METHODS = ("repulsion", "finetune", "ewc", "cf_k", "eu_k", "l1_sparse")


def load_feedback(path, fingerprint):
    """The positives (uint8) of a feedback file made from this very generator."""
    feedback = utils.load_checkpoint(path, "feedback")
    if feedback.get("generator_fingerprint") != fingerprint:
        raise utils.UserError(f"--feedback {path} was made from another generator "
                              f"({feedback.get('sources', {}).get('ckpt', 'unknown')}), not from --ckpt")
    positives = feedback["images"][~feedback["negative"]]
    if len(positives) == 0:
        raise utils.UserError(f"--feedback {path} has no positive sample to train on")
    return positives


def load_adapted(paths, model_args, param_names, device):
    """θ_N^j: the g_ema parameters of each adapted checkpoint, as lists aligned with param_names."""
    if not paths:
        raise utils.UserError("--method repulsion needs --adapted FILE [FILE ...] (the outputs of negative_adapt.py)")
    theta_neg = []
    for path in paths:
        nets, _ = utils.load_stylegan2(path, which=("g_ema",), expect_model_args=model_args)
        state = dict(nets["g_ema"].named_parameters())
        theta_neg.append([state[name].detach().to(device) for name in param_names])
    return theta_neg


def last_k_names(g, k):
    """The last k parameter tensors of the generator, in registration order (as the official code)."""
    names = [name for name, _ in g.named_parameters()]
    if not 0 < k <= len(names):
        raise utils.UserError(f"--last_k must be between 1 and {len(names)}")
    return names[-k:]


def reinitialise(g, names, model_args, seed):
    """Give the tensors `names` of g the values of a freshly constructed generator (EU-k)."""
    torch.manual_seed(seed)
    fresh = dict(utils.build_stylegan2(model_args, ("g",))["g"].named_parameters())
    with torch.no_grad():
        for name, param in g.named_parameters():
            if name in names:
                param.copy_(fresh[name])


def generator_extra_loss(args, g, d, theta_g, adapted_paths, model_args, device):
    """(the extra generator loss for --method, the method block to record)."""
    params_of = lambda net: list(net.parameters())
    if args.method == "repulsion":
        names = [name for name, _ in g.named_parameters()]
        theta_neg = load_adapted(adapted_paths, model_args, names, device)
        adapted = utils.AdaptedParameters(theta_g, theta_neg)  # loaded once, kept on the device
        loss = lambda net: utils.repulsion_loss(args.repulsion, adapted.relative_distance(params_of(net)),
                                                args.mu, args.alpha)
        return loss, {"repulsion": args.repulsion, "mu": args.mu, "alpha": args.alpha, "d0": adapted.d0,
                      "adapted": [os.path.abspath(p) for p in adapted_paths]}
    if args.method == "ewc":
        fisher = [f.to(device) for f in utils.stylegan2_fisher(g, d, args.fisher_samples, device)]
        loss = lambda net: utils.ewc_penalty(params_of(net), theta_g, fisher, args.ewc_lambda)
        return loss, {"ewc_lambda": args.ewc_lambda, "fisher_samples": args.fisher_samples}
    if args.method == "l1_sparse":
        def loss(net):
            return args.l1 * torch.stack(torch._foreach_norm(params_of(net), 1)).sum()
        return loss, {"l1": args.l1}
    if args.method in ("cf_k", "eu_k"):
        return None, {"last_k": last_k_names(g, args.last_k)}
    return None, {}


def main(args):
    utils.prepare_out_dir(args.out)
    os.makedirs(os.path.join(args.out, "sample"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "checkpoint"), exist_ok=True)
    device = args.device
    nets, ckpt = utils.load_stylegan2(args.ckpt, device=device)
    model_args = ckpt["model_args"]
    positives = load_feedback(args.feedback, utils.state_fingerprint(ckpt["g_ema"]))
    utils.write_args_json(args.out, args)
    utils.seed_everything(args.seed)

    g, d, g_ema = nets["g"], nets["d"], nets["g_ema"].eval()
    g.load_state_dict(g_ema.state_dict())  # θ_P starts at θ_G (the EMA generator), as in the paper
    theta_g = [p.detach().clone() for p in g.parameters()]
    extra_loss, details = generator_extra_loss(args, g, d, theta_g, args.adapted, model_args, device)

    g_params = None
    if args.method in ("cf_k", "eu_k"):
        trained = set(details["last_k"])
        if args.method == "eu_k":
            reinitialise(g, trained, model_args, args.seed + 1)
            g_ema.load_state_dict(g.state_dict())
        g_params = [p for name, p in g.named_parameters() if name in trained]
    g_optim, d_optim = utils.make_optimizers(g, d, args, g_params=g_params)
    gan_step = utils.GANStep(g, d, g_ema, args, g_optim, d_optim, g_extra_loss=extra_loss,
                             mean_path_length=ckpt.get("mean_path_length", 0.0), device=device)

    method = {"stage": "unlearn", "method": args.method, **details, "iter": args.iter,
              "positives": len(positives), "feedback": os.path.abspath(args.feedback)}
    sources = {"ckpt": os.path.abspath(args.ckpt), "feedback": os.path.abspath(args.feedback)}
    sources.update({f"adapted_{j}": os.path.abspath(p) for j, p in enumerate(args.adapted or [])})
    sample_z = torch.randn(args.n_sample, model_args["style_dim"],
                           generator=torch.Generator().manual_seed(args.seed)).to(device)

    def sample(done):
        with torch.no_grad():
            images, _ = g_ema([sample_z], randomize_noise=False)
        utils.save_image_grid(images, os.path.join(args.out, "sample", f"{done:06d}.png"),
                              nrow=int(math.sqrt(args.n_sample)))

    def save(done, path=None):
        path = path or os.path.join(args.out, "checkpoint", f"{done:06d}.pt")
        utils.save_checkpoint(utils.stylegan2_checkpoint({"g": g, "d": d, "g_ema": g_ema}, model_args, args, done,
                                                         sources, method=dict(method, step=done),
                                                         mean_path_length=gan_step.mean_path_length), path)
        return path

    print(f"{args.method}{' ' + args.repulsion if args.method == 'repulsion' else ''}: "
          f"{len(positives)} positives, {args.iter} iterations")
    utils.run_gan_training(gan_step, utils.random_batches(positives, args.batch, device), 0, args.iter,
                           args.log_every, sample, args.sample_every, save, args.save_every)
    final = save(args.iter, os.path.join(args.out, "unlearned.pt"))
    print(f"wrote {final}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=utils.HelpFormatter)
    parser.add_argument("--ckpt", required=True, help="the pre-trained StyleGAN2 checkpoint (θ_G = its g_ema)")
    parser.add_argument("--feedback", required=True, help="feedback.pt written by negative_adapt.py from the same --ckpt")
    parser.add_argument("--adapted", nargs="*", default=None, help="adapted_*.pt of negative_adapt.py (θ_N^j = their g_ema)")
    parser.add_argument("--out", default="runs/unlearn", help="output folder")
    parser.add_argument("--method", choices=METHODS, default="repulsion", help="what to run (see above)")
    parser.add_argument("--repulsion", choices=sorted(utils.REPULSION_LOSSES), default="el2", help="repulsion loss")
    parser.add_argument("--mu", type=float, default=1.0, help="μ, the weight of the repulsion term")
    parser.add_argument("--alpha", type=float, default=1.0, help="α of el2 (on the relative distance d)")
    parser.add_argument("--ewc_lambda", type=float, default=5e8, help="ewc: λ of λ·Σ F (θ − θ_G)²")
    parser.add_argument("--fisher_samples", type=int, default=32, help="ewc: generated samples for the Fisher diagonal")
    parser.add_argument("--last_k", type=int, default=10, help="cf_k, eu_k: how many of the last parameter tensors train")
    parser.add_argument("--l1", type=float, default=5e-5, help="l1_sparse: weight of Σ|θ| (official code: 5e-5)")
    parser.add_argument("--iter", type=int, default=1000, help="Stage-2 iterations (official MNIST runs: 1000)")
    utils.add_gan_training_args(parser)
    parser.add_argument("--n_sample", type=int, default=64, help="images in each sample grid (fixed latents)")
    parser.add_argument("--sample_every", type=int, default=100, help="save a sample grid every this many steps")
    parser.add_argument("--save_every", type=int, default=500, help="save a checkpoint every this many steps")
    parser.add_argument("--log_every", type=int, default=10, help="progress bar update (and NaN check) every this many steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default=utils.default_device(), help="cuda or cpu")
    utils.run_cli(main, parser.parse_args())
