"""Sample generator checkpoints: one PNG per seed per checkpoint, and a grid with one labelled row
per checkpoint and the same latent in every column -- the picture before and after unlearning.

    python generate.py --ckpt runs/mnist/pretrained.pt --seeds 0-15 --out runs/samples
    python generate.py --ckpt runs/mnist/pretrained.pt runs/unlearn8_el2/unlearned.pt --seeds 0-7,42 \\
        --classifier runs/lenet/classifier.pt --negative 8 --out runs/samples8

The image of seed s is drawn from its own random stream (numpy's default_rng([s, 0]), the stream
of sample 0 of seed s in evaluate.py): the same seed gives the same image whatever --batch and
whichever other seeds are asked. --noise const uses each generator's fixed noise maps, --noise
random draws them from the seed's stream too. --trunc ψ < 1 pulls w towards the checkpoint's
mean latent (its `latent_avg` when it has one, else the mean w of 4096 latents of seed 0).

Writes OUT/{row}_{name}/seed{s:04d}.png for every checkpoint and seed, OUT/grid.png and
OUT/args.json. With --classifier and --negative, a red frame marks each tile the classifier
calls --negative and the share of such tiles is printed per checkpoint.
"""

import os
import re

import numpy as np
import torch
from PIL import Image

import checkpoint
import metrics
import report
import utils

OUTPUTS = ["grid.png", "*/seed*.png", "args.json"]  # what this script writes in --out (see utils.claim_out_dir)


def parse_seeds(text):
    """'0-3,42' -> [0, 1, 2, 3, 42] (ranges inclusive, order kept, duplicates dropped)."""
    seeds = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise utils.UserError(f"--seeds {text}: {part!r} is not a seed or a range A-B of seeds (e.g. 0-7,42)")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise utils.UserError(f"--seeds {text}: the range {part.strip()} runs backwards")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    return seeds


def mean_w(g, ckpt):
    """The latent that truncation pulls towards: the file's `latent_avg` (rosinality's name for
    NVlabs' w_avg), else the mean mapped w of 4096 latents from seed 0 (like rosinality's
    generate.py, but reproducible)."""
    if ckpt.get("latent_avg") is not None:
        return torch.as_tensor(ckpt["latent_avg"]).reshape(1, -1).to(next(g.parameters()).device)
    z = torch.randn(4096, g.style_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return g.style(z.to(next(g.parameters()).device)).mean(0, keepdim=True)


@torch.no_grad()
def sample(g, seeds, args, truncation_latent):
    """uint8 images [len(seeds), 3, H, W] of `g` for `seeds`, --batch at a time."""
    out = []
    for start in range(0, len(seeds), args.batch):
        inputs = [metrics.seeded_inputs(g, [0], seed) for seed in seeds[start:start + args.batch]]
        z = torch.cat([z for z, _ in inputs]).to(args.device)
        kwargs = {"randomize_noise": False}
        if args.noise == "random" and inputs[0][1]:
            kwargs = {"noise": [torch.cat(maps).to(args.device) for maps in zip(*(noise for _, noise in inputs))]}
        images, _ = g([z], truncation=args.trunc, truncation_latent=truncation_latent, **kwargs)
        out.append(utils.to_uint8(images).cpu())
    return torch.cat(out)


def folder_name(row, path):
    """`runs/unlearn8_el2/unlearned.pt`, row 1 -> `1_unlearn8_el2_unlearned`."""
    name = os.path.splitext(report.short_name(path))[0]
    return f"{row}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def create_argparser():
    parser = utils.make_parser(__doc__)
    parser.add_argument("--ckpt", nargs="+", required=True,
                        help="generator checkpoints (.pt of ours or rosinality's, NVlabs .pkl): one grid row each")
    parser.add_argument("--seeds", default="0-7", help="seeds to draw, e.g. 0-7,42 (ranges inclusive): one grid column each")
    parser.add_argument("--trunc", type=utils.probability, default=1.0, help="truncation ψ (1 = none; 0.7 is common for pictures)")
    parser.add_argument("--noise", choices=["const", "random"], default="const",
                        help="noise maps: each generator's fixed ones, or drawn from each seed's stream")
    parser.add_argument("--classifier", default=None, help="classifier checkpoint: frame the tiles it calls --negative")
    parser.add_argument("--negative", default=None, help="with --classifier: the class (name or index) or attribute")
    parser.add_argument("--batch", type=utils.positive_int, default=16, help="images generated at once (does not change them)")
    utils.add_out_args(parser, "runs/samples", resume=False)
    parser.add_argument("--device", default=utils.default_device(), help="cuda or cpu")
    return parser


def main(args):
    seeds = parse_seeds(args.seeds)
    if (args.classifier is None) != (args.negative is None):
        raise utils.UserError("--classifier and --negative go together: the classifier frames the tiles of --negative")
    oracle = None
    if args.classifier is not None:
        classifier, meta = checkpoint.load_classifier(args.classifier, args.device)
        oracle = (classifier, meta, *metrics.resolve_negative(meta, args.negative))
    generators = [(path, *checkpoint.load_generator(path, args.device)) for path in args.ckpt]
    style_dims = {g.style_dim for _, g, _ in generators}
    if len(style_dims) > 1:
        raise utils.UserError(f"the checkpoints draw latents of different sizes ({sorted(style_dims)}): "
                              "the same seed cannot give them the same latent")
    if oracle is not None:
        for size in sorted({g.size for _, g, _ in generators}):
            metrics.check_classifier_fits(oracle[1], size)
    utils.claim_out_dir(args, OUTPUTS)
    utils.write_args_json(args.out, args)

    rows = []
    labels = report.short_names([path for path, _, _ in generators])  # as many folders as tell them apart
    for row, ((path, g, ckpt), label) in enumerate(zip(generators, labels)):
        images = sample(g, seeds, args, mean_w(g, ckpt) if args.trunc < 1 else None)
        folder = os.path.join(args.out, folder_name(row, path))
        os.makedirs(folder, exist_ok=True)
        tiles = images.permute(0, 2, 3, 1).numpy()
        for seed, tile in zip(seeds, tiles):
            utils.atomic_write(os.path.join(folder, f"seed{seed:04d}.png"),
                               lambda f, tile=tile: Image.fromarray(np.ascontiguousarray(tile)).save(f, format="PNG"))
        flags = [False] * len(seeds)
        if oracle is not None:
            classifier, meta, index, name = oracle
            logits = metrics.classify(classifier, meta, utils.from_uint8(images))
            flags = metrics.negative_mask(logits, meta, index).cpu().tolist()
            print(f"{label}: {sum(flags)} of {len(seeds)} samples ({100.0 * sum(flags) / len(seeds):.1f}%) are '{name}'")
        rows.append((label, tiles, flags))
    title = f"seeds {args.seeds}, truncation {args.trunc:g}, noise {args.noise}; the same latent in every column"
    if oracle is not None:
        title += f"; red frame: classified '{oracle[3]}'"
    grid = os.path.join(args.out, "grid.png")
    report.save_labelled_rows(rows, grid, title)
    print(f"wrote {len(rows)} x {len(seeds)} images and {grid}")
    return rows


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
