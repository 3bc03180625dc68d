"""Speed of the StyleGAN2 networks and of one training iteration, with the FLOPs they do.

    python bench.py                                   # the paper's MNIST configuration, batch 16
    python bench.py --size 256 --style_dim 512 --batch 4 --device cuda
    python bench.py --compare ../stylegan2-pytorch    # same run, also time another checkout's model.py

It prints: generator forward time and images/s without grad, one training iteration (G + D) without
and with the lazy regularisers (R1 and path length) and their amortised mean over a schedule, the
FLOPs of each, and the achieved GFLOP/s as a fraction of a float32 matmul timed in the same run.
The training iteration is `gan.GANStep`, the step every training script of this repo runs.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import gan
import utils


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn, device, repeats, warmup):
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


class FlopCount(TorchDispatchMode):
    """Adds up torch's FLOP formulas (matmuls and convolutions, forward and backward) over every
    op that runs. torch's own FlopCounterMode also tracks modules, which breaks on the
    autograd.grad calls of the regularisers."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn):
    with FlopCount() as counter:
        fn()
    return counter.total


def matmul_gflops(device, n=2048, repeats=10):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    ms = time_ms(lambda: a @ b, device, repeats, 2)
    return 2 * n ** 3 / ms / 1e6


def build_networks(args):
    """G, D, G_ema from the `model` module on sys.path (this repo's, or --model_dir's)."""
    model = importlib.import_module("model")
    gen_kwargs = dict(size=args.size, style_dim=args.style_dim, n_mlp=args.n_mlp,
                      channel_multiplier=args.channel_multiplier)
    disc_kwargs = dict(size=args.size, channel_multiplier=args.channel_multiplier)
    if args.channel_max != 512:  # only this repo's networks have the option
        gen_kwargs["channel_max"] = disc_kwargs["channel_max"] = args.channel_max
    g = model.Generator(**gen_kwargs).to(args.device)
    d = model.Discriminator(**disc_kwargs).to(args.device)
    g_ema = model.Generator(**gen_kwargs).to(args.device).eval()
    g_ema.load_state_dict(g.state_dict())
    return g, d, g_ema, os.path.dirname(os.path.abspath(model.__file__))


def measure(args):
    torch.manual_seed(args.seed)
    g, d, g_ema, model_dir = build_networks(args)
    z = torch.randn(args.batch, args.style_dim, device=args.device)
    real = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    g_optim, d_optim = gan.make_optimizers(g, d, args)
    step = gan.GANStep(g, d, g_ema, args, g_optim, d_optim, device=args.device)

    def generate():
        with torch.no_grad():
            g_ema([z])

    # which regularisers run depends on the step number: step 0 runs both, step 1 neither, and
    # step g_reg_every only the path-length pass (when it is no multiple of d_reg_every)
    runs = {"plain": lambda: step(real, 1), "both": lambda: step(real, 0)}
    if args.g_reg_every % args.d_reg_every:
        runs["path"] = lambda: step(real, args.g_reg_every)

    results = {"model_dir": model_dir, "threads": torch.get_num_threads(),
               "g_params": sum(p.numel() for p in g.parameters()),
               "d_params": sum(p.numel() for p in d.parameters())}
    results["matmul_gflops"] = matmul_gflops(args.device)
    results["forward_ms"] = time_ms(generate, args.device, args.repeats, args.warmup)
    results["images_per_s"] = args.batch / results["forward_ms"] * 1000
    results["forward_flops"] = count_flops(generate)
    for name, run in runs.items():
        repeats = args.repeats if name == "plain" else max(1, args.repeats // 2)
        results[f"train_{name}_ms"] = time_ms(run, args.device, repeats, 1)
        results[f"train_{name}_flops"] = count_flops(run)
    # the mean cost of an iteration over the lazy schedule
    plain, both = results["train_plain_ms"], results["train_both_ms"]
    path = results.get("train_path_ms", plain + (both - plain) / 2)
    results["train_amortised_ms"] = (plain + (path - plain) / args.g_reg_every
                                     + (both - path) / args.d_reg_every)
    return results


def report(results, label):
    peak = results["matmul_gflops"]
    print(f"== {label}: model.py from {results['model_dir']}, {results['threads']} threads")
    print(f"G {results['g_params'] / 1e6:.2f}M params, D {results['d_params'] / 1e6:.2f}M params; "
          f"float32 matmul reference: {peak:.1f} GFLOP/s")
    rows = [("generator forward (no grad)", results["forward_ms"], results["forward_flops"]),
            ("train iteration, no regulariser", results["train_plain_ms"], results["train_plain_flops"])]
    if "train_path_ms" in results:
        rows.append(("train iteration + path length", results["train_path_ms"], results["train_path_flops"]))
    rows.append(("train iteration + R1 + path length", results["train_both_ms"], results["train_both_flops"]))
    print(f"{'':36s} {'ms':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'of matmul':>9s}")
    for name, ms, flops in rows:
        gflops = flops / ms / 1e6
        print(f"{name:36s} {ms:9.1f} {flops / 1e9:8.2f} {gflops:8.1f} {gflops / peak:8.1%}")
    print(f"generation: {results['images_per_s']:.1f} images/s; "
          f"train iteration amortised over the lazy schedule: {results['train_amortised_ms']:.1f} ms")


def create_argparser():
    parser = utils.make_parser(__doc__)
    parser.add_argument("--size", type=int, default=32, help="image size")
    parser.add_argument("--style_dim", type=int, default=128, help="latent / style dimension")
    parser.add_argument("--n_mlp", type=int, default=8, help="mapping network depth")
    parser.add_argument("--channel_multiplier", type=int, default=2, help="channel multiplier (config-f: 2)")
    parser.add_argument("--channel_max", type=int, default=512, help="width cap (512 = rosinality's networks)")
    parser.add_argument("--device", default=utils.default_device(), help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--compare", default=None,
                        help="folder of another StyleGAN2 checkout (rosinality's layout: model.py + op/) to time in the same run")
    parser.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the raw figures as one JSON line")
    gan.add_gan_training_args(parser)
    return parser


def main(args):
    if args.model_dir:
        sys.path.insert(0, os.path.abspath(args.model_dir))
    if args.threads:
        torch.set_num_threads(args.threads)
    results = measure(args)
    if args.json:
        print(json.dumps(results))
        return
    report(results, "this repo" if not args.model_dir else args.model_dir)
    if args.compare:
        command = [sys.executable, os.path.abspath(__file__), "--json", "--model_dir", args.compare]
        command += [f"--{k}={v}" for k, v in vars(args).items()
                    if k not in ("compare", "json", "model_dir") and v is not None and v is not False]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise utils.UserError(f"--compare {args.compare} failed: {done.stderr.strip().splitlines()[-1]}")
        other = json.loads(done.stdout.strip().splitlines()[-1])
        report(other, args.compare)
        print(f"== ratio this repo / {args.compare}: train iteration (amortised) "
              f"{results['train_amortised_ms'] / other['train_amortised_ms']:.2f}x the time, "
              f"generation {results['images_per_s'] / other['images_per_s']:.2f}x the images/s")


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
