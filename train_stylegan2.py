"""Train StyleGAN2 on MNIST, a folder of class subfolders, or CelebA(-HQ) with attributes.

    python train_stylegan2.py --dataset mnist --data data --size 32 --style_dim 128 --out runs/mnist
    python train_stylegan2.py --dataset mnist --data data --exclude 8 --out runs/mnist_no8   # "Retraining"
    torchrun --nproc_per_node=4 train_stylegan2.py --dataset celeba --data celeba_hq/images \\
        --attributes CelebAMask-HQ-attribute-anno.txt --size 256 --style_dim 512 --out runs/celeba

Writes OUT/checkpoint/{step:06d}.pt every --save_every steps and, at the end, OUT/pretrained.pt
(OUT/retrained.pt with --exclude: the model trained without the class, the gold standard), all
with rosinality's keys g, d, g_ema, g_optim, d_optim plus kind, model_args, step, args, sources
(later stages read the architecture from model_args); sample grids of a fixed latent batch to
OUT/sample/{step:06d}.png, and OUT/args.json. `--ckpt` resumes a run from any of its checkpoints
(models, optimisers, EMA, step, random state).
"""

import os

import torch
import torch.distributed as dist

import checkpoint
import dataset
import gan
import utils
from model import GAN_ARCHS

# the architecture flags (model.GAN_ARCHS: each arch takes its own; given ones must fit --ckpt)
MODEL_FLAGS = ("arch", "size", "style_dim", "n_mlp", "channel_multiplier", "channel_max", "channels")

OUTPUTS = ["pretrained.pt", "retrained.pt", "checkpoint/*.pt", "sample/*.png", "args.json"]  # see utils.claim_out_dir
# the flags that make a run what it is: --resume refuses to change them (--iter may grow)
RUN_FLAGS = ("dataset", "data", "attributes", "exclude", *MODEL_FLAGS, "batch", "lr", "r1", "d_reg_every", "path_regularize", "path_batch_shrink", "g_reg_every",
             "mixing", "ema_kimg", "ema_rampup", "seed")


def setup_distributed(device):
    """(rank, world size, device) under torchrun; (0, 1, device) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise utils.UserError(f"process {local_rank} of this node has no GPU of its own "
                                  f"({torch.cuda.device_count()} visible): start at most that many "
                                  "processes per node (torchrun --nproc_per_node) or use --device cpu")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def build_or_resume(args, path):
    """(networks on the CPU, model_args, the resumed checkpoint or None). Resuming reads the
    architecture from the checkpoint; architecture flags that are given must agree with it."""
    given = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None}
    if path:
        nets, resumed = checkpoint.load_gan(path, expect_model_args=given)
        return nets, resumed["model_args"], resumed
    arch = given.setdefault("arch", "stylegan2")
    foreign = [f"--{k}" for k in given if k != "arch" and k not in GAN_ARCHS[arch].defaults]
    if foreign:
        raise utils.UserError(f"{', '.join(foreign)}: not a setting of --arch {arch} "
                              f"(it takes {', '.join('--' + k for k in GAN_ARCHS[arch].defaults)})")
    model_args = {**GAN_ARCHS[arch].defaults, **given}
    try:
        return checkpoint.build_gan(model_args), model_args, None
    except ValueError as err:
        raise utils.UserError(f"--size: {err}")


def final_name(args):
    """pretrained.pt, or retrained.pt for a run without a class (--exclude)."""
    return "pretrained.pt" if args.exclude is None else "retrained.pt"


def make_loader(images, batch, workers, rank, world):
    sampler = (torch.utils.data.distributed.DistributedSampler(images, world, rank, shuffle=True, drop_last=True)
               if world > 1 else torch.utils.data.RandomSampler(images))
    loader = torch.utils.data.DataLoader(images, batch_size=batch, sampler=sampler, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    if len(loader) == 0:
        raise utils.UserError(f"{len(images)} images cannot fill one batch of {batch} per process; lower --batch")
    return dataset.infinite_loader(loader, sampler)


def save(path, nets, optimizers, model_args, args, step, sources, gan_step):
    return checkpoint.save_generator(path, nets, model_args, args, step, sources, optimizers,
                                     mean_path_length=gan_step.mean_path_length, rng=utils.rng_state())


def train(args, nets, optimizers, model_args, data, start, mean_path_length, sample_z, rank, world, device,
          sources):
    g, d, g_ema = nets["g"], nets["d"], nets["g_ema"]
    if world > 1:  # same starting weights everywhere; GANStep then averages the gradients
        for tensor in list(g.state_dict().values()) + list(d.state_dict().values()) + list(g_ema.state_dict().values()):
            dist.broadcast(tensor, 0)
    gan_step = gan.GANStep(g, d, g_ema, args, optimizers["g_optim"], optimizers["d_optim"],
                             mean_path_length=mean_path_length, device=device)

    def next_batch():
        real, _ = next(data)
        return real.to(device, non_blocking=True)

    def sample(done):
        gan.save_samples(g_ema, sample_z, os.path.join(args.out, "sample", f"{done:06d}.png"))

    def save_checkpoint(done):
        path = os.path.join(args.out, "checkpoint", f"{done:06d}.pt")
        return save(path, nets, optimizers, model_args, args, done, sources, gan_step)

    gan.run_gan_training(gan_step, next_batch, start, args.iter, args.log_every,
                         sample if rank == 0 else None, args.sample_every,
                         save_checkpoint if rank == 0 else None, args.save_every,
                         last_good=sources.get("resumed_from"), show=rank == 0)
    if rank == 0:
        final = os.path.join(args.out, final_name(args))
        save(final, nets, optimizers, model_args, args, args.iter, sources, gan_step)
        print(f"wrote {final}")


def create_argparser():
    parser = utils.make_parser(__doc__)
    dataset.add_data_args(parser)
    utils.add_out_args(parser, "runs/stylegan2")
    parser.add_argument("--iter", type=utils.positive_int, default=200000, help="total training iterations (paper, MNIST: 200k)")
    parser.add_argument("--ckpt", default=None,
                        help="resume from this checkpoint of a run, or fine-tune from a rosinality .pt or an NVlabs "
                             ".pkl (the architecture is read from it)")
    parser.add_argument("--arch", choices=list(GAN_ARCHS), default=None,
                        help="the network (default stylegan2): stylegan2 (Karras et al.) or dcgan (Radford et al.: "
                             "transposed convolutions with batch norm, the paper's Table 4 comparison; no mapping "
                             "network, so no path-length regularisation or style mixing)")
    parser.add_argument("--size", type=utils.positive_int, default=None, help="image size, a power of two (default 32)")
    parser.add_argument("--style_dim", type=utils.positive_int, default=None,
                        help="latent/style dimension (default 128, dcgan 100; 512 for AFHQ, CelebA-HQ)")
    parser.add_argument("--n_mlp", type=utils.positive_int, default=None, help="mapping network layers (default 8)")
    parser.add_argument("--channel_multiplier", type=utils.positive_int, default=None, help="channel multiplier (default 2, config-f)")
    parser.add_argument("--channel_max", type=utils.positive_int, default=None,
                        help="cap on every layer's width (default 512 = rosinality's networks; e.g. 64 on a CPU)")
    parser.add_argument("--channels", type=utils.positive_int, default=None,
                        help="dcgan: the width at half the image size, doubling toward 4 px (default 64)")
    gan.add_gan_training_args(parser)
    parser.add_argument("--n_sample", type=utils.positive_int, default=64, help="images in each sample grid (fixed latents)")
    parser.add_argument("--sample_every", type=utils.nonnegative_int, default=1000, help="save a sample grid every this many steps")
    parser.add_argument("--save_every", type=utils.nonnegative_int, default=10000, help="save a checkpoint every this many steps")
    parser.add_argument("--log_every", type=utils.positive_int, default=10, help="update the progress bar (and check for NaN) every this many steps")
    parser.add_argument("--workers", type=utils.nonnegative_int, default=2, help="data loading processes")
    parser.add_argument("--seed", type=utils.nonnegative_int, default=0, help="random seed")
    parser.add_argument("--device", default=utils.default_device(), help="cuda or cpu (default: cuda when available)")
    return parser


def main(args):
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.batch % world:
        raise utils.UserError(f"--batch {args.batch} is not divisible by the {world} processes")
    rank, world, device = setup_distributed(args.device)

    utils.seed_everything(args.seed)  # the initial weights too
    resume_from = args.ckpt
    if args.resume:
        if args.ckpt:
            raise utils.UserError("--resume continues the run in --out, --ckpt starts one from a file: give one of them")
        checkpoint.check_same_run(args, RUN_FLAGS)
        resume_from = checkpoint.last_checkpoint(args.out, final_name(args))
    nets, model_args, resumed = build_or_resume(args, resume_from)
    for net in nets.values():
        net.to(device)
    nets["g_ema"].eval()
    optimizers = dict(zip(("g_optim", "d_optim"), gan.make_optimizers(nets["g"], nets["d"], args)))

    start, mean_path_length = 0, 0.0
    if resumed is not None:
        for name, optim in optimizers.items():
            if name in resumed:
                optim.load_state_dict(resumed[name])
        start = int(resumed.get("step", 0))
        mean_path_length = resumed.get("mean_path_length", 0.0)
        if start >= args.iter:
            raise utils.UserError(f"{resume_from} is at step {start}; raise --iter above it to train on")
        if rank == 0:
            print(f"resuming {resume_from} at step {start}")

    utils.seed_everything(args.seed)
    sample_z = torch.randn(args.n_sample, model_args["style_dim"], device=device)
    if resumed is not None and "rng" in resumed:
        utils.set_rng_state(resumed["rng"])
    else:
        utils.seed_everything(args.seed + rank + 1)  # different noise per process

    images, info = dataset.load_dataset(args.dataset, args.data, model_args["size"], train=True,
                                        attributes=args.attributes, exclude=args.exclude, verbose=rank == 0)
    if rank == 0:  # the data and --ckpt are read and checked: only now is --out made
        utils.claim_out_dir(args, OUTPUTS)
        for sub in ("checkpoint", "sample"):
            os.makedirs(os.path.join(args.out, sub), exist_ok=True)
        print(f"{args.dataset}: {info['kept']} training images at {model_args['size']} px; "
              f"model {checkpoint.describe_model_args(model_args)}")
        utils.write_args_json(args.out, args)
    data = make_loader(images, args.batch // world, args.workers, rank, world)
    sources = {"data": dataset.data_source(args.dataset, args.data)}
    if args.attributes:
        sources["attributes"] = os.path.abspath(args.attributes)
    if resume_from:
        sources["resumed_from"] = os.path.abspath(resume_from)

    try:
        train(args, nets, optimizers, model_args, data, start, mean_path_length, sample_z, rank, world, device,
              sources)
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
