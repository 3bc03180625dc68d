"""Train the classifier that labels generated images: the feedback oracle and the evaluator.

    python train_classifier.py --dataset mnist --data data --out runs/classifier_mnist

MNIST gives a LeNet-5 at 32 px (Adam 2e-3 as in paper A.2; batch 64 and 20 epochs with ±2 px shifts
and a cosine schedule instead of the paper's batch 256 / 12 epochs, so that the 5k-image subset
also reaches ~98 %: `--batch 256 --epochs 12 --translate 0` is the paper's recipe); a folder of classes
(e.g. AFHQ train/{cat,dog,wild}) a torchvision backbone; CelebA with --attributes a multi-label
network with one logit per attribute (paper: ResNeXt-50, Adamax). No pretrained weights: the
networks start from scratch, offline.

The datasets yield images as the generator makes them ([-1, 1], 3 channels, at --size); every batch
goes through metrics.to_classifier_input, the same conversion later stages apply to generated
images, so the classifier is tested on what it was trained on. Writes OUT/classifier.pt (kind
"classifier": weights, arch, classes or attributes, input size, channels, normalisation, test
accuracy) and OUT/args.json. The model kept is the last epoch's: the test split is never used
to choose it.

--members N trains N networks from seeds --seed .. --seed+N-1 and saves them as one ensemble that
decides by their mean probability (classifiers.ClassifierEnsemble; later stages load it like one
network). A single small network's calls on generated images that look like no digit depend on its
seed; the mean of several is a steadier oracle and evaluator (README, "MNIST at CPU scale").
"""

import argparse
import os

import torch
from torch.nn import functional as F
from tqdm import tqdm

import checkpoint
import dataset
import metrics
import utils
from classifiers import CLASSIFIERS, ClassifierEnsemble, build_classifier

OPTIMIZERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}

OUTPUTS = ["classifier.pt", "checkpoint/member_*.pt", "args.json"]  # see utils.claim_out_dir
# the flags that make a run what it is: --resume refuses to change them
RUN_FLAGS = ("dataset", "data", "attributes", "test_data", "test_fraction", "arch", "size", "image_size", "channels",
             "batch", "epochs", "optim", "lr", "hflip", "translate", "members", "seed")


def resolve_defaults(args):
    """A copy of args with the flags left at None filled from the dataset's registry entry
    (dataset.DATASETS[...].classifier) and the arch."""
    resolved = argparse.Namespace(**vars(args))
    for key, value in dataset.DATASETS[args.dataset].classifier.items():
        if getattr(resolved, key) is None:
            setattr(resolved, key, value)
    if resolved.image_size is None:
        resolved.image_size = CLASSIFIERS[resolved.arch][1]
    if resolved.channels is None:  # LeNet on grayscale data (MNIST) reads gray digits; everything else RGB
        resolved.channels = 1 if resolved.arch == "lenet" and dataset.DATASETS[args.dataset].channels == 1 else 3
    return resolved


def load_splits(args):
    """(train set, test set, dataset info); the test set is the dataset's own test split when it
    has one (mnist, synthetic), --test_data for folders, else a seeded --test_fraction hold-out."""
    train, info = dataset.load_dataset(args.dataset, args.data, args.size, train=True, attributes=args.attributes)
    test_split = dataset.DATASETS[args.dataset].test_split
    if test_split == "own":
        test, _ = dataset.load_dataset(args.dataset, args.data, args.size, train=False)
    elif args.test_data is not None:
        if test_split != "folder":
            raise utils.UserError(f"--test_data is for --dataset folder; --dataset {args.dataset} holds out "
                                  "--test_fraction")
        test, test_info = dataset.load_dataset(args.dataset, args.test_data, args.size, train=False)
        if test_info["classes"] != info["classes"]:
            raise utils.UserError(f"--test_data {args.test_data} has classes {test_info['classes']}, "
                                  f"--data has {info['classes']}")
    else:
        if not 0 < args.test_fraction < 1:
            raise utils.UserError("--test_fraction must be between 0 and 1")
        n_test = max(1, int(len(train) * args.test_fraction))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed)).tolist()
        train, test = (torch.utils.data.Subset(train, order[n_test:]),
                       torch.utils.data.Subset(train, order[:n_test]))
    return train, test, info


def in_memory(data, args, desc):
    """The whole dataset as uint8 tensors (exact: the images are 8-bit), decoded once instead of
    once per epoch; None when it would take more than --cache_gb."""
    n_bytes = len(data) * 3 * args.size * args.size
    if n_bytes > args.cache_gb * 2 ** 30:
        return None
    loader = torch.utils.data.DataLoader(data, batch_size=256, num_workers=args.workers)
    images, labels = [], []
    for x, y in tqdm(loader, desc=f"loading {desc} ({n_bytes / 2 ** 20:.0f} MB)", leave=False):
        images.append(utils.to_uint8(x))
        labels.append(torch.as_tensor(y))
    return torch.utils.data.TensorDataset(torch.cat(images), torch.cat(labels))


def generator_space(images):
    """Batches come as generator-space floats, or as uint8 from the in-memory copy."""
    return utils.from_uint8(images) if images.dtype == torch.uint8 else images


def classifier_meta(args, info):
    """The checkpoint fields that say how to feed the classifier (see metrics.to_classifier_input)."""
    return {"arch": args.arch, "classes": info["classes"], "attributes": info["attributes"],
            "multilabel": info["multilabel"], "image_size": args.image_size, "channels": args.channels,
            "normalization": metrics.CLASSIFIER_NORMALIZATION[args.channels], "data_size": args.size}


def augment(images, args):
    """Random horizontal flips (--hflip) and random translations by up to --translate pixels, the
    uncovered border filled with the image's corner value (the background)."""
    if args.hflip:
        flip = torch.rand(len(images), device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    t = args.translate
    if t > 0:
        n, _, h, w = images.shape
        fill = images[:, :, :1, :1]
        padded = fill.expand(-1, -1, h + 2 * t, w + 2 * t).clone()
        padded[:, :, t:t + h, t:t + w] = images
        dy, dx = torch.randint(0, 2 * t + 1, (2, n)).tolist()
        images = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return images


def loss_and_correct(logits, labels, multilabel):
    """(loss, number of correct decisions, number of decisions) for one batch."""
    if multilabel:
        labels = labels.float()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        correct = ((logits >= 0) == (labels > 0.5)).sum()
        return loss, correct, labels.numel()
    loss = F.cross_entropy(logits, labels)
    return loss, (logits.argmax(1) == labels).sum(), labels.numel()


@torch.no_grad()
def test_accuracy(model, loader, meta, device):
    """(accuracy in %, per class (recall) or per attribute accuracy in % as a dict)."""
    model.eval()
    names = checkpoint.class_names(meta)
    hits, totals = torch.zeros(len(names), dtype=torch.float64), torch.zeros(len(names), dtype=torch.float64)
    for images, labels in tqdm(loader, desc="test", leave=False):
        logits = model(metrics.to_classifier_input(generator_space(images.to(device)), meta)).cpu()
        if meta["multilabel"]:
            hits += ((logits >= 0) == (labels > 0.5)).sum(0)
            totals += len(labels)
        else:
            hits += torch.bincount(labels[logits.argmax(1) == labels], minlength=len(names))
            totals += torch.bincount(labels, minlength=len(names))
    per_name = {name: 100 * float(h / t) if t else float("nan") for name, h, t in zip(names, hits, totals)}
    # single-label: share of test images right; multi-label: mean accuracy over the attributes
    overall = 100 * float(hits.sum() / totals.sum()) if not meta["multilabel"] else \
        100 * float((hits / totals.clamp(min=1)).mean())
    return overall, per_name


def train(args, model, meta, train_loader, device, progress=None, save=None):
    """Train `model` for --epochs; `save(epochs_done, state)` runs after each epoch with what
    `progress` holds to continue from there (weights, optimiser, schedule, random states)."""
    optim = OPTIMIZERS[args.optim](model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    # cosine decay to 0 over the run (the paper gives no schedule; the end matters: no model selection)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, args.epochs * len(train_loader))
    start = 0
    if progress is not None:
        model.load_state_dict(progress["model"])
        optim.load_state_dict(progress["optim"])
        schedule.load_state_dict(progress["schedule"])
        train_loader.generator.set_state(progress["loader_rng"])
        utils.set_rng_state(progress["rng"])
        start = int(progress["epochs_done"])
    for epoch in range(start, args.epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}")
        seen = correct = 0
        for images, labels in bar:
            images, labels = generator_space(images.to(device)), labels.to(device)
            images = augment(images, args)
            logits = model(metrics.to_classifier_input(images, meta))
            loss, hits, count = loss_and_correct(logits, labels, meta["multilabel"])
            if not torch.isfinite(loss):
                raise utils.UserError(f"the loss became NaN or infinite in epoch {epoch + 1} ({loss.item():.3g}); "
                                      "nothing was saved; lower --lr")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            schedule.step()
            seen, correct = seen + count, correct + int(hits)
            bar.set_description(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f} "
                                f"train acc {100 * correct / seen:.2f}%")
        if save is not None:
            save(epoch + 1, {"model": model.state_dict(), "optim": optim.state_dict(), "schedule": schedule.state_dict(),
                             "loader_rng": train_loader.generator.get_state(), "rng": utils.rng_state()})
    return model.eval()


def create_argparser():
    archs = "; ".join(f"{name}: {desc}, {size} px" for name, (_, size, desc) in CLASSIFIERS.items())
    parser = utils.make_parser(__doc__)
    dataset.add_data_args(parser, exclude=False)
    parser.add_argument("--test_data", default=None,
                        help="folder: a separate folder of the same classes for the test (e.g. AFHQ val)")
    parser.add_argument("--test_fraction", type=utils.probability, default=0.1,
                        help="folder/celeba without --test_data: share of --data held out for the test")
    parser.add_argument("--arch", choices=list(CLASSIFIERS), default=None,
                        help=f"network ({archs}); default lenet for mnist, resnet50 for folder, "
                             f"resnext50_32x4d for celeba")
    parser.add_argument("--size", type=utils.positive_int, default=None,
                        help="resolution the data is loaded at: the generator's (default 32 mnist, 256 folder/celeba)")
    parser.add_argument("--image_size", type=utils.positive_int, default=None,
                        help="classifier input size (square); default the arch's; images are resized to it")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=None,
                        help="classifier input channels (1 = luma grayscale); default 1 for lenet on mnist, else 3")
    parser.add_argument("--batch", type=utils.positive_int, default=None, help="batch size (default 64)")
    parser.add_argument("--epochs", type=utils.positive_int, default=None, help="epochs (default 20 mnist, 10 folder/celeba)")
    parser.add_argument("--optim", choices=list(OPTIMIZERS), default=None,
                        help="optimizer (default adamax for celeba as in the paper, adam otherwise)")
    parser.add_argument("--lr", type=utils.positive_float, default=2e-3, help="learning rate (paper: 2e-3)")
    parser.add_argument("--hflip", action="store_true",
                        help="random horizontal flips (the paper's CelebA classifier used flips; not for digits)")
    parser.add_argument("--translate", type=utils.nonnegative_int, default=None,
                        help="random shifts by up to this many pixels of --size (default 2 for mnist, else 0)")
    parser.add_argument("--workers", type=utils.nonnegative_int, default=0, help="DataLoader worker processes")
    parser.add_argument("--cache_gb", type=utils.nonnegative_float, default=2,
                        help="keep the decoded data in memory (uint8) when it fits in this many GiB (0: never)")
    parser.add_argument("--members", type=utils.positive_int, default=1,
                        help="train this many networks (seeds --seed, --seed+1, ...) and save them as one ensemble "
                             "that decides by their mean probability; FID features are the first member's")
    parser.add_argument("--seed", type=utils.nonnegative_int, default=0, help="random seed (initialisation, shuffling, hold-out split)")
    parser.add_argument("--device", default=utils.default_device(), help="torch device")
    utils.add_out_args(parser, "runs/classifier")
    return parser


def main(args):
    args = resolve_defaults(args)
    utils.seed_everything(args.seed)

    train_set, test_set, info = load_splits(args)
    meta = classifier_meta(args, info)
    # the data is read and checked: only now is --out made
    finished = os.path.join(args.out, "classifier.pt")
    if args.resume:
        checkpoint.check_same_run(args, RUN_FLAGS)
        if os.path.isfile(finished):
            print(f"{finished} is finished: nothing to resume")
            return checkpoint.load_checkpoint(finished, "classifier")
    utils.claim_out_dir(args, OUTPUTS)
    os.makedirs(os.path.join(args.out, "checkpoint"), exist_ok=True)
    utils.write_args_json(args.out, args)
    names = checkpoint.class_names(meta)
    print(f"{args.arch} on {args.dataset}: {len(train_set)} train / {len(test_set)} test images, "
          f"{len(names)} {'attributes' if meta['multilabel'] else 'classes'}, input "
          f"{args.channels}x{args.image_size}x{args.image_size} from {args.size} px data"
          + (f", {args.members} members (seeds {args.seed}..{args.seed + args.members - 1})" if args.members > 1 else ""))

    cached = in_memory(train_set, args, "train set"), in_memory(test_set, args, "test set")
    train_set = train_set if cached[0] is None else cached[0]
    test_set = test_set if cached[1] is None else cached[1]
    loader_args = dict(batch_size=args.batch, num_workers=args.workers)
    test_loader = torch.utils.data.DataLoader(test_set, shuffle=False, **loader_args)
    members, member_accuracy = [], []
    for i in range(args.members):
        # seeded after the data is loaded: member i is the network --seed seed+i alone trains on this split
        seed = args.seed + i
        utils.seed_everything(seed)
        try:
            model = build_classifier(args.arch, len(names), args.channels).to(args.device)
        except ValueError as err:
            raise utils.UserError(f"--arch {args.arch} --channels {args.channels}: {err}")
        train_loader = torch.utils.data.DataLoader(train_set, shuffle=True, drop_last=False,
                                                   generator=torch.Generator().manual_seed(seed), **loader_args)
        progress_path = os.path.join(args.out, "checkpoint", f"member_{i}.pt")
        progress = None
        if args.resume and os.path.isfile(progress_path):
            progress = checkpoint.load_checkpoint(progress_path, "classifier_progress")
            print(f"resuming member {i} after epoch {progress['epochs_done']} ({progress_path})")

        def save(epochs_done, state, path=progress_path):
            checkpoint.save_checkpoint({"kind": "classifier_progress", "epochs_done": epochs_done, **state}, path)
        members.append(train(args, model, meta, train_loader, args.device, progress, save))
        if args.members > 1:
            member_accuracy.append(test_accuracy(members[-1], test_loader, meta, args.device)[0])
            print(f"member {i} (seed {seed}): test accuracy {member_accuracy[-1]:.2f}%")
    model = members[0] if args.members == 1 else ClassifierEnsemble(members, meta["multilabel"]).eval()

    accuracy, per_name = test_accuracy(model, test_loader, meta, args.device)
    per_key = "test_accuracy_per_attribute" if meta["multilabel"] else "test_accuracy_per_class"
    ensemble = {"members": args.members, "member_test_accuracy": member_accuracy} if args.members > 1 else {}
    fields = {**ensemble, "test_accuracy": accuracy, per_key: per_name, "test_count": len(test_set),
              "epochs": args.epochs, "args": checkpoint.plain_args(args),
              "sources": {"data": dataset.data_source(args.dataset, args.data), "test_data": args.test_data}}
    path = checkpoint.save_classifier(os.path.join(args.out, "classifier.pt"), model, meta, **fields)
    for i in range(args.members):  # the finished classifier replaces the members' progress
        os.remove(os.path.join(args.out, "checkpoint", f"member_{i}.pt"))
    print(f"test accuracy {accuracy:.2f}% on {len(test_set)} images"
          + (" (mean over attributes)" if meta["multilabel"] else ""))
    print("  " + ", ".join(f"{name} {value:.1f}%" for name, value in per_name.items()))
    print(f"saved {path}")
    return {"kind": "classifier", "model": model.state_dict(), **meta, **fields}


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
