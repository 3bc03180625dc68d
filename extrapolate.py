"""Parameter extrapolation baseline: θ_G + γ·(θ_G − mean_j θ_N^j) on the generator's weights.

    python extrapolate.py --ckpt runs/mnist/pretrained.pt --adapted runs/adapt8/adapted_*.pt \\
        --gamma 0.5 1 --out runs/extrapolate8

Positive γ moves away from the adapted (negative) models; γ = 0 is θ_G. (The official code
writes θ_G + γ·mean_j(θ_N^j − θ_G), so its γ = −1 is γ = 1 here.) Each γ gives
OUT/extrapolated_{γ}.pt (g_ema = g = the extrapolated generator; D is the pre-trained one) and a
sample grid of fixed latents, OUT/extrapolated_{γ}.png.
"""

import os

import torch

import checkpoint
import gan
import method
import utils

OUTPUTS = ["extrapolated_*.pt", "extrapolated_*.png", "args.json"]  # what this script writes in --out (see utils.claim_out_dir)


def create_argparser():
    parser = utils.make_parser(__doc__)
    parser.add_argument("--ckpt", required=True,
                        help="the pre-trained StyleGAN2: a .pt of ours or rosinality's, or an NVlabs .pkl (θ_G = its g_ema)")
    parser.add_argument("--adapted", nargs="+", required=True, help="adapted_*.pt of negative_adapt.py (θ_N^j = their g_ema)")
    parser.add_argument("--gamma", type=utils.finite_float, nargs="+", default=[1.0], help="one or more extrapolation factors γ")
    utils.add_out_args(parser, "runs/extrapolate", resume=False)
    parser.add_argument("--n_sample", type=utils.positive_int, default=64, help="images in each sample grid (fixed latents)")
    parser.add_argument("--seed", type=utils.nonnegative_int, default=0, help="seed of the sample grid's latents")
    return parser


def main(args):
    nets, ckpt = checkpoint.load_gan(args.ckpt)
    model_args = ckpt["model_args"]
    theta_g = {name: tensor.clone() for name, tensor in nets["g_ema"].state_dict().items()}
    theta_neg = [g.state_dict() for g in checkpoint.load_adapted(args.adapted, ckpt)]
    utils.claim_out_dir(args, OUTPUTS)
    utils.write_args_json(args.out, args)
    sample_z = torch.randn(args.n_sample, model_args["style_dim"], generator=torch.Generator().manual_seed(args.seed))
    sources = {"ckpt": os.path.abspath(args.ckpt)}
    sources.update({f"adapted_{j}": os.path.abspath(p) for j, p in enumerate(args.adapted)})

    for gamma in args.gamma:
        generator = nets["g_ema"]
        generator.load_state_dict(method.extrapolate(theta_g, theta_neg, gamma))
        record = {"stage": "extrapolate", "gamma": gamma, "adapted": [os.path.abspath(p) for p in args.adapted]}
        path = checkpoint.save_generator(os.path.join(args.out, f"extrapolated_{gamma:g}.pt"),
                                         {"g": generator, "d": nets["d"], "g_ema": generator}, model_args, args,
                                         ckpt.get("step", 0), sources, method=record)
        gan.save_samples(generator.eval(), sample_z, os.path.join(args.out, f"extrapolated_{gamma:g}.png"))
        print(f"wrote {path}")


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
