"""Feedback and Stage 1 of Adapt-then-Unlearn: label generated samples, then adapt the generator
to the negatives k times with an EWC penalty (paper section 3.2, eq. 3).

With a classifier as the user (the paper's protocol):

    python negative_adapt.py --ckpt runs/mnist/final.pt --classifier runs/lenet/classifier.pt \\
        --negative 8 --out runs/adapt8

With a person as the user: write numbered contact sheets, look at them, list the undesired ones:

    python negative_adapt.py --ckpt runs/mnist/final.pt --contact_sheet --out runs/adapt8
    python negative_adapt.py --ckpt runs/mnist/final.pt --marked_file marked.txt --out runs/adapt8

With image folders the user already holds (paper appendix D): Stage 1 adapts to --negatives, and
Stage 2 trains on --positives (or, without it, on the generated samples --classifier or the marks
call positive):

    python negative_adapt.py --ckpt runs/mnist/final.pt --negatives eights/ --positives others/ --out runs/adapt8

Writes OUT/feedback.pt (the n samples as the user saw them, their latents and labels),
OUT/feedback.png (negatives framed in red), OUT/adapted_{j}.pt for j = 0..k-1 (θ_N^j is their
g_ema), a sample grid per adapted model and OUT/args.json.
"""

import argparse
import glob
import math
import os
import re

import torch
from PIL import Image, ImageDraw

import checkpoint
import dataset
import gan
import method
import metrics
import utils

SHEET_COLUMNS = 10
SHEET_ROWS = 10

# what this script writes in --out (see utils.claim_out_dir); the contact sheets a person marks
# stay beside the feedback made from them
OUTPUTS = ["feedback.pt", "feedback.png", "adapted_*.pt", "adapted_*.png", "checkpoint/adapted_*.pt", "args.json"]
CONTACT_SHEET_OUTPUTS = ["contact_sheet_*.png", "contact_sheet_args.json"]
# the flags that make a run what it is: --resume refuses to change them
RUN_FLAGS = ("ckpt", "classifier", "negative", "marked", "marked_file", "negatives", "positives", "n_feedback",
             "feedback_seed", "n_models", "iter", "ewc_lambda", "ewc_params", "fisher_samples", "batch", "lr", "r1", "d_reg_every",
             "path_regularize", "path_batch_shrink", "g_reg_every", "mixing", "ema_kimg", "ema_rampup", "seed")


def read_marked(args, n):
    """The indices a person marked, from --marked or --marked_file, checked against 0..n-1."""
    if args.marked_file is not None:
        if not os.path.isfile(args.marked_file):
            raise utils.UserError(f"--marked_file {args.marked_file}: no such file")
        words = re.split(r"[\s,]+", open(args.marked_file).read().strip())
    else:
        words = [str(w) for w in args.marked]
    try:
        indices = sorted({int(word) for word in words if word})
    except ValueError as err:
        raise utils.UserError(f"marked indices must be integers: {err}")
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise utils.UserError(f"marked index {bad[0]} is outside the contact sheets (0..{n - 1})")
    return indices


def write_contact_sheets(images, out):
    """Numbered pages of SHEET_ROWS x SHEET_COLUMNS samples (index under each), as PNG files."""
    tiles = utils.to_uint8(images).permute(0, 2, 3, 1).numpy()
    size = tiles.shape[1]
    scale = max(1, 64 // size)  # small images are enlarged so the digits of the index fit
    cell, label = size * scale, 12
    per_page = SHEET_COLUMNS * SHEET_ROWS
    paths = []
    for page, first in enumerate(range(0, len(tiles), per_page)):
        sheet = Image.new("RGB", (SHEET_COLUMNS * (cell + 2), SHEET_ROWS * (cell + label + 2)), "white")
        draw = ImageDraw.Draw(sheet)
        for k, tile in enumerate(tiles[first:first + per_page]):
            x, y = (k % SHEET_COLUMNS) * (cell + 2), (k // SHEET_COLUMNS) * (cell + label + 2)
            sheet.paste(Image.fromarray(tile).resize((cell, cell), Image.NEAREST), (x + 1, y + 1))
            draw.text((x + 2, y + cell + 1), str(first + k), fill="black")
        path = os.path.join(out, f"contact_sheet_{page:02d}.png")
        utils.atomic_write(path, lambda f: sheet.save(f, format="PNG"))
        paths.append(path)
    return paths


def save_feedback_grid(images, negative, path, n_show=64):
    """The first samples of the pool, negatives framed in red."""
    shown = images[:n_show].clone()
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
    for i in torch.nonzero(negative[:n_show]).flatten():
        shown[i, :, [0, -1], :] = red[:, :, :1].expand(3, 2, shown.shape[3])
        shown[i, :, :, [0, -1]] = red.expand(3, shown.shape[2], 2)
    gan.save_image_grid(shown, path, nrow=int(math.ceil(math.sqrt(len(shown)))))


def generated_pool(args, g_ema, device):
    """(z, uint8 images) of the --n_feedback samples the user is shown."""
    zs, images = [], []
    for z, batch in metrics.generate_images(g_ema, args.n_feedback, args.feedback_seed, args.batch_eval, device,
                                          desc="feedback samples"):
        zs.append(z)
        images.append(batch.cpu())
    return torch.cat(zs), utils.to_uint8(torch.cat(images))  # what the user sees, and what Stage 1 and 2 train on


def label_pool(args, images_uint8, marked, oracle):
    """(negative mask, how it was labelled) of the pool, by the oracle or by the marks."""
    if oracle is not None:
        classifier, meta, index, name = oracle
        logits = torch.cat([metrics.classify(classifier, meta, utils.from_uint8(images_uint8[i:i + args.batch_eval]))
                            for i in range(0, len(images_uint8), args.batch_eval)])
        negative = metrics.negative_mask(logits, meta, index).cpu()
        labelled_by = {"oracle": os.path.abspath(args.classifier), "negative": name}
    else:
        negative = torch.zeros(len(images_uint8), dtype=torch.bool)
        negative[marked] = True
        labelled_by = {"human": os.path.abspath(args.marked_file) if args.marked_file else "--marked",
                       "marked": torch.nonzero(negative).flatten().tolist()}
    return negative, labelled_by


def collect_feedback(args, g_ema, fingerprint, marked, oracle, device):
    """Generate the pool of --n_feedback samples and label it; returns checkpoint.save_feedback's
    arguments as a dict."""
    z, images_uint8 = generated_pool(args, g_ema, device)
    negative, labelled_by = label_pool(args, images_uint8, marked, oracle)
    n_neg = int(negative.sum())
    if n_neg == 0 or n_neg == len(negative):
        which = "no negative" if n_neg == 0 else "no positive"
        raise utils.UserError(f"the feedback has {which} sample ({n_neg} negatives, {len(negative) - n_neg} "
                              f"positives of {len(negative)}); the method needs both: raise --n_feedback"
                              + (" or check --negative" if args.classifier else " or mark differently"))
    return {"images": images_uint8, "z": z, "negative": negative, "labelled_by": labelled_by,
            "fingerprint": fingerprint, "feedback_seed": args.feedback_seed, "args": checkpoint.plain_args(args),
            "sources": {"ckpt": os.path.abspath(args.ckpt)}}


def curated_feedback(args, g_ema, fingerprint, marked, oracle, device):
    """Feedback from image folders (paper appendix D): --negatives, and --positives or else the
    generated samples the oracle or the marks call positive. No latents: the images are not the
    generator's."""
    size = g_ema.size
    negatives, negative_paths = dataset.load_image_folder(args.negatives, size, "--negatives")
    folders = {"negatives": os.path.abspath(args.negatives), "n_negatives": len(negative_paths)}
    if args.positives is not None:
        positives, positive_paths = dataset.load_image_folder(args.positives, size, "--positives")
        folders.update(positives=os.path.abspath(args.positives), n_positives=len(positive_paths))
    else:
        _, pool = generated_pool(args, g_ema, device)
        pool_negative, pool_labels = label_pool(args, pool, marked, oracle)
        positives = pool[~pool_negative]
        if len(positives) == 0:
            raise utils.UserError(f"every one of the {len(pool)} generated samples is called negative: no positive "
                                  f"to train Stage 2 on; give --positives DIR")
        folders.update(positives=f"the generated samples called positive ({len(positives)} of {len(pool)}, "
                                 f"--feedback_seed {args.feedback_seed})", positives_labelled_by=pool_labels)
    images = torch.cat([negatives, positives])
    negative = torch.arange(len(images)) < len(negatives)
    sources = {"ckpt": os.path.abspath(args.ckpt), "negatives": folders["negatives"]}
    if args.positives is not None:
        sources["positives"] = folders["positives"]
    return {"images": images, "negative": negative, "labelled_by": {"folders": folders},
            "fingerprint": fingerprint, "feedback_seed": args.feedback_seed, "args": checkpoint.plain_args(args),
            "sources": sources}


def adapt_one(j, args, pretrained, negatives, ewc, model_args, mean_path_length, device, save=None):
    """Stage 1 for adapted model j: from θ_G (g_ema) and D, train on the negatives with the
    adversarial loss + `ewc` (None: plain fine-tuning); `save(j, done, nets, optimizers, gan_step)`
    writes the model in progress every --save_every steps, and with --resume its newest one is
    continued. Returns its networks and running path length."""
    utils.seed_everything(args.seed + j)
    nets = checkpoint.build_gan(model_args)
    nets["g"].load_state_dict(pretrained["g_ema"].state_dict())
    nets["g_ema"].load_state_dict(pretrained["g_ema"].state_dict())
    nets["d"].load_state_dict(pretrained["d"].state_dict())
    for net in nets.values():
        net.to(device)
    nets["g_ema"].eval()
    g_optim, d_optim = gan.make_optimizers(nets["g"], nets["d"], args)

    gan_step = gan.GANStep(nets["g"], nets["d"], nets["g_ema"], args, g_optim, d_optim, g_extra_loss=ewc,
                             mean_path_length=mean_path_length, device=device)
    optimizers = {"g_optim": g_optim, "d_optim": d_optim}
    start, resume_from = 0, None
    if args.resume and save is not None:
        progress = sorted(glob.glob(os.path.join(args.out, "checkpoint", f"adapted_{j}_*.pt")))  # the newest only
        resume_from = progress[-1] if progress else None
        if resume_from is not None:
            start = gan.resume_run(resume_from, nets, optimizers, gan_step, args.iter)
    gan.run_gan_training(gan_step, gan.random_batches(negatives, args.batch, device), start, args.iter,
                         args.log_every, desc=f"adapted {j}: ",
                         save=None if save is None else lambda done: save(j, done, nets, optimizers, gan_step),
                         save_every=args.save_every, last_good=resume_from)
    return nets, float(gan_step.mean_path_length)


def negative_share(g, classifier, meta, index, n, seed, batch, device):
    """% of n samples of g that the oracle calls negative."""
    count = 0
    for _, images in metrics.generate_images(g, n, seed, batch, device):
        count += int(metrics.negative_mask(metrics.classify(classifier, meta, images), meta, index).sum())
    return 100.0 * count / n


def report_shift(args, pretrained, negatives, model_args, mean_path_length, theta_g, device):
    """Print r = ‖θ_N(λ) − θ_G‖² / ‖θ_N(0) − θ_G‖² for adapted model 0 (its file against a λ = 0
    shadow run of the same seed and iterations)."""
    adapted, _ = checkpoint.load_gan(os.path.join(args.out, "adapted_0.pt"), device=device)
    shadow = argparse.Namespace(**vars(args))
    shadow.resume = False
    nets, _ = adapt_one(0, shadow, pretrained, negatives, None, model_args, mean_path_length, device)
    shift = method.squared_distance(list(adapted["g_ema"].parameters()), theta_g)
    free = method.squared_distance(list(nets["g_ema"].parameters()), theta_g)
    print(f"shift of adapted model 0: r = ‖θ_N(λ) − θ_G‖² / ‖θ_N(0) − θ_G‖² = {shift:.4g} / {free:.4g} = "
          f"{shift / free:.3f} (λ = {args.ewc_lambda:g})")



def create_argparser():
    parser = utils.make_parser(__doc__)
    parser.add_argument("--ckpt", required=True,
                        help="the pre-trained StyleGAN2: a .pt of ours or rosinality's, or an NVlabs .pkl (θ_G = its g_ema)")
    utils.add_out_args(parser, "runs/adapt")
    parser.add_argument("--n_feedback", type=utils.positive_int, default=1000, help="samples shown to the user (the paper: 1000)")
    parser.add_argument("--feedback_seed", type=utils.nonnegative_int, default=0, help="seed of the feedback samples' latents and noise")
    who = parser.add_argument_group("who labels the samples")
    who.add_argument("--classifier", default=None, help="classifier checkpoint simulating the user (the oracle)")
    who.add_argument("--negative", default=None, help="with --classifier: the undesired class (name or index) or attribute")
    who.add_argument("--contact_sheet", action="store_true", help="write numbered contact sheets of the samples and stop")
    who.add_argument("--marked", type=int, nargs="+", default=None, help="indices (on the contact sheets) of undesired samples")
    who.add_argument("--marked_file", default=None, help="text file with those indices (whitespace or comma separated)")
    who.add_argument("--negatives", default=None,
                     help="curated feedback: a folder of images that show the undesired class or feature (any "
                          "common format, searched recursively; resized and centre-cropped to the generator's size); "
                          "Stage 1 adapts to them instead of to marked samples")
    who.add_argument("--positives", default=None,
                     help="with --negatives: a folder of images without it, which Stage 2 trains on; without this "
                          "flag Stage 2 trains on the --n_feedback generated samples that --classifier or the marks "
                          "call positive")
    parser.add_argument("--n_models", type=utils.positive_int, default=5, help="k, the number of adapted models (different seeds)")
    parser.add_argument("--iter", type=utils.positive_int, default=2000, help="Stage-1 iterations per adapted model (official MNIST run: 2000)")
    gan.add_ewc_args(parser)
    parser.add_argument("--report_shift", action="store_true",
                        help="also train adapted model 0 again with λ = 0 (same seed and iterations; not saved) and "
                             "print r = ‖θ_N(λ) − θ_G‖² / ‖θ_N(0) − θ_G‖²: how far the EWC penalty lets Stage 1 move "
                             "(0: pinned at θ_G, 1: as far as plain fine-tuning)")
    gan.add_gan_training_args(parser, ema_rampup=gan.FINE_TUNE_EMA_RAMPUP)
    parser.add_argument("--n_eval", type=utils.positive_int, default=500,
                        help="with --classifier: samples per adapted model whose negative share is printed")
    parser.add_argument("--n_sample", type=utils.positive_int, default=64, help="images in each adapted model's sample grid")
    parser.add_argument("--batch_eval", type=utils.positive_int, default=100, help="batch size for generating and classifying")
    parser.add_argument("--save_every", type=utils.positive_int, default=500,
                        help="save the adapted model in progress every this many steps (OUT/checkpoint), for --resume")
    parser.add_argument("--log_every", type=utils.positive_int, default=10, help="progress bar update (and NaN check) every this many steps")
    parser.add_argument("--seed", type=utils.nonnegative_int, default=0, help="random seed (adapted model j uses seed + j)")
    parser.add_argument("--device", default=utils.default_device(), help="cuda or cpu")
    return parser


def check_labelling(args):
    """Who labels what: the flags must name exactly one source of negatives and of positives."""
    if args.positives is not None and args.negatives is None:
        raise utils.UserError("--positives needs --negatives (the folder of undesired images)")
    folders_only = args.negatives is not None and args.positives is not None
    if folders_only and args.contact_sheet:
        raise utils.UserError("--contact_sheet shows generated samples to mark, but --negatives and --positives "
                              "already give both; drop one of them")
    if not folders_only and args.classifier is None and not args.contact_sheet and args.marked is None \
            and args.marked_file is None:
        raise utils.UserError("say who labels the samples: --classifier with --negative, or --contact_sheet "
                              "and then --marked / --marked_file, or --negatives DIR --positives DIR")


def main(args):
    check_labelling(args)
    if args.classifier is not None and args.negative is None:
        raise utils.UserError("--classifier needs --negative (the class or attribute to unlearn)")
    device = args.device
    # the oracle and --negative are checked before anything is generated or written
    oracle = None
    if args.classifier is not None:
        classifier, meta = checkpoint.load_classifier(args.classifier, device)
        oracle = (classifier, meta, *metrics.resolve_negative(meta, args.negative))
    pretrained, ckpt = checkpoint.load_gan(args.ckpt, device=device)
    model_args = ckpt["model_args"]
    if oracle is not None:
        metrics.check_classifier_fits(meta, model_args["size"])
    g_ema = pretrained["g_ema"].eval()
    fingerprint = checkpoint.state_fingerprint(ckpt["g_ema"])

    if args.resume:
        checkpoint.check_same_run(args, RUN_FLAGS)
    if args.contact_sheet:
        images = utils.from_uint8(generated_pool(args, g_ema, device)[1])  # the feedback pool, exactly
        utils.claim_out_dir(args, CONTACT_SHEET_OUTPUTS)
        utils.write_args_json(args.out, args, "contact_sheet_args.json")
        paths = write_contact_sheets(images, args.out)
        print(f"wrote {len(paths)} contact sheets ({paths[0]} ...). Note the numbers of the undesired samples, "
              f"then rerun with --marked N N ... or --marked_file FILE (same --ckpt, --n_feedback, --feedback_seed)")
        return

    folders_only = args.negatives is not None and args.positives is not None
    marked = read_marked(args, args.n_feedback) if args.classifier is None and not folders_only else None
    # the Fisher depends on θ_G and D only: computed once, before the feedback is written
    utils.seed_everything(args.seed)
    g_for_fisher = pretrained["g"]
    g_for_fisher.load_state_dict(g_ema.state_dict())  # θ_G is the EMA generator
    ewc = gan.EWCPenalty(g_for_fisher, pretrained["d"], args, device) if args.ewc_lambda > 0 else None
    theta_g = [p.detach().clone() for p in g_ema.parameters()]
    if ewc is not None:
        print(f"EWC: λ = {args.ewc_lambda:g} on {args.ewc_params} ({len(ewc.names)} tensors); mean raw Fisher "
              f"{ewc.fisher_mean:.3g}, so the paper's λ ≈ {2 * args.ewc_lambda / ewc.fisher_mean:.3g}")

    if args.negatives is not None:
        feedback = curated_feedback(args, g_ema, fingerprint, marked, oracle, device)
    else:
        feedback = collect_feedback(args, g_ema, fingerprint, marked, oracle, device)
    # the inputs, the labels and the feedback's two classes are checked: only now is --out made
    utils.claim_out_dir(args, OUTPUTS)
    utils.write_args_json(args.out, args)
    feedback_path = checkpoint.save_feedback(os.path.join(args.out, "feedback.pt"), **feedback)
    negative = feedback["negative"]
    shown = torch.arange(len(negative))
    if args.negatives is not None:  # negatives come first: show half of each
        shown = torch.cat([shown[negative][:32], shown[~negative][:32]])
    save_feedback_grid(utils.from_uint8(feedback["images"][shown]), negative[shown],
                       os.path.join(args.out, "feedback.png"))
    source = f" (from {args.negatives}" + (f" and {args.positives})" if args.positives else
                                          ", positives generated)") if args.negatives else ""
    print(f"feedback: {int(negative.sum())} negatives, {int((~negative).sum())} positives of {len(negative)}"
          f"{source} -> {feedback_path}")
    negatives = feedback["images"][negative]  # uint8, as the user saw them

    sources = {"ckpt": os.path.abspath(args.ckpt), "feedback": os.path.abspath(feedback_path)}

    def progress_files(j):
        return sorted(glob.glob(os.path.join(args.out, "checkpoint", f"adapted_{j}_*.pt")))

    def save_progress(j, done, nets, optimizers, gan_step):
        """The adapted model in progress; only the newest is kept (one model's worth of disk)."""
        os.makedirs(os.path.join(args.out, "checkpoint"), exist_ok=True)
        older = progress_files(j)
        path = checkpoint.save_generator(os.path.join(args.out, "checkpoint", f"adapted_{j}_{done:06d}.pt"), nets,
                                         model_args, args, done, sources, optimizers,
                                         mean_path_length=gan_step.mean_path_length, rng=utils.rng_state())
        for old in older:
            os.remove(old)
        return path

    sample_z = torch.randn(args.n_sample, model_args["style_dim"], generator=torch.Generator().manual_seed(args.seed))
    for j in range(args.n_models):
        path = os.path.join(args.out, f"adapted_{j}.pt")
        if args.resume and os.path.isfile(path):
            print(f"kept {path} (finished)")
            continue
        nets, mean_path_length = adapt_one(j, args, pretrained, negatives, ewc, model_args,
                                           ckpt.get("mean_path_length", 0.0), device, save_progress)
        pull = method.ema_pull(list(nets["g_ema"].parameters()), list(nets["g"].parameters()), theta_g)
        share = None
        if oracle is not None:
            classifier, meta, index, name = oracle
            share = negative_share(nets["g_ema"], classifier, meta, index, args.n_eval, args.seed + 1000,
                                   args.batch_eval, device)
        record = {"stage": "negative_adapt", "model_index": j, "ewc_lambda": args.ewc_lambda,
                  "ewc_params": args.ewc_params, "fisher_mean": ewc.fisher_mean if ewc else None,
                  "fisher_samples": args.fisher_samples, "iter": args.iter, "seed": args.seed + j,
                  "ema_pull": pull, "negative_share": share, "n_eval": args.n_eval,
                  "n_negatives": len(negatives), "feedback": os.path.abspath(feedback_path)}
        checkpoint.save_generator(path, nets, model_args, args, args.iter, sources, method=record,
                                  mean_path_length=mean_path_length, generator_fingerprint=fingerprint)
        for done in progress_files(j):  # the finished model replaces its progress checkpoint
            os.remove(done)
        gan.save_samples(nets["g_ema"], sample_z.to(device), os.path.join(args.out, f"adapted_{j}.png"))
        line = f"wrote {path} (EMA pull toward θ_G: s = {pull:.3f})"
        if share is not None:
            line += f"; {share:.1f}% of {args.n_eval} samples are '{oracle[3]}'"
            if args.negatives is None:  # the pool is the pre-trained model's samples
                line += f" (the pre-trained model: {100.0 * float(negative.float().mean()):.1f}% of the feedback pool)"
        print(line)
    if args.report_shift:
        report_shift(args, pretrained, negatives, model_args, ckpt.get("mean_path_length", 0.0), theta_g, device)


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
