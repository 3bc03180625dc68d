"""What several stages share: errors, seeding, checkpoint I/O, images, and the method's
parameter-space functions (Fisher diagonal, EWC penalty, repulsion, extrapolation).

Everything here is plain functions on tensors, state dicts and paths; the scripts hold the loops.
"""

import argparse
import hashlib
import json
import math
import os
import pickle
import random
import re
import sys
import tempfile

import numpy as np
import torch
from torch.nn import functional as F


# --------------------------------------------------------------------------------------------
# Errors and run bookkeeping
# --------------------------------------------------------------------------------------------


class UserError(Exception):
    """A problem with the user's input: printed as one line by `run_cli`, never as a traceback."""


def check_device(device):
    """Raise a UserError naming the fix when torch cannot use `device`.

    Without this a wrong --device fails deep inside torch at the first tensor moved to it."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"--device {device}: torch sees {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")


def run_cli(main, args):
    """Call `main(args)` after checking `args.device` (when the script has one); a UserError
    ends the process with a one-line message and status 2."""
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)
        return main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's layout and shows each flag's default (unless it is None:
    such flags say in their help what they default to)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
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


def stylegan2_checkpoint(nets, model_args, args, step, sources, optimizers=None, method=None, mean_path_length=None):
    """A StyleGAN2 checkpoint dict: rosinality's keys + kind, model_args, step, args, sources, and the
    running path length that a later fine-tuning starts from."""
    ckpt = {name: net.state_dict() for name, net in nets.items()}
    for name, optim in (optimizers or {}).items():
        ckpt[name] = optim.state_dict()
    ckpt.update(kind="stylegan2", model_args=complete_model_args(model_args), step=int(step),
                args=plain_args(args), sources=dict(sources))
    if method is not None:
        ckpt["method"] = method
    if mean_path_length is not None:
        ckpt["mean_path_length"] = float(mean_path_length)
    return ckpt


def plain_args(args):
    """vars(args) with only JSON-able values, so the checkpoint loads with weights_only=True."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return json.loads(json.dumps(values, default=str))


# --------------------------------------------------------------------------------------------
# Data: every dataset yields (image in [-1, 1] with 3 channels, label), the generator's space
# --------------------------------------------------------------------------------------------

DATASETS = ("mnist", "folder", "celeba", "synthetic")


def add_data_args(parser, exclude=True):
    parser.add_argument("--dataset", choices=DATASETS, default="mnist",
                        help="mnist: torchvision MNIST under --data (downloaded when missing and online); "
                             "folder: one subfolder of images per class (e.g. AFHQ train/{cat,dog,wild}); "
                             "celeba: images in --data plus an attribute table --attributes; "
                             "synthetic: generated two-class bar images for smoke tests (no files)")
    parser.add_argument("--data", default="data", help="dataset root folder")
    parser.add_argument("--attributes", default=None,
                        help="celeba: attribute table (list_attr_celeba.txt or CelebAMask-HQ-attribute-anno.txt)")
    if exclude:
        parser.add_argument("--exclude", default=None,
                            help="drop this class (digit, folder name) or attribute (images where it is +1)")
    return parser


def to_generator_space(size, channels_in):
    """torchvision transform: resize + centre-crop to `size`, 3 channels, values in [-1, 1]."""
    from torchvision import transforms

    steps = [transforms.Resize(size), transforms.CenterCrop(size)]
    if channels_in == 1:
        steps.append(transforms.Grayscale(3))
    else:
        steps.append(transforms.Lambda(lambda image: image.convert("RGB")))
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    return transforms.Compose(steps)


class SyntheticBars(torch.utils.data.Dataset):
    """Two classes of tiny images, "horizontal" and "vertical" (a bright bar on a dark, noisy
    background), deterministic per index: a stand-in dataset for smoke and chain tests."""

    classes = ["horizontal", "vertical"]

    def __init__(self, size, n=512, seed=0):
        self.size, self.n, self.seed = size, n, seed
        self.targets = [i % 2 for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        gen = torch.Generator().manual_seed(self.seed * 100003 + index)
        image = -1 + 0.2 * torch.rand(3, self.size, self.size, generator=gen)
        width = max(1, self.size // 4)
        start = int(torch.randint(0, self.size - width + 1, (1,), generator=gen))
        if self.targets[index] == 0:
            image[:, start:start + width, :] = 0.9
        else:
            image[:, :, start:start + width] = 0.9
        return image, self.targets[index]


def read_attribute_table(path):
    """CelebA attribute table: optional count line, a line of attribute names, then rows
    `filename v1 ... vK` with v in {-1, 1}. Returns (names, filenames, tensor [N, K] of 0/1)."""
    if not os.path.isfile(path):
        raise UserError(f"--attributes {path}: no such file")
    with open(path) as f:
        lines = [line.split() for line in f if line.strip()]
    if lines and len(lines[0]) == 1 and lines[0][0].isdigit():
        lines = lines[1:]
    if len(lines) < 2:
        raise UserError(f"--attributes {path}: expected a header of attribute names and one row per image")
    names, rows = lines[0], lines[1:]
    bad = next((i for i, row in enumerate(rows) if len(row) != len(names) + 1), None)
    if bad is not None:
        raise UserError(f"--attributes {path}: row {bad + 1} has {len(rows[bad]) - 1} values for "
                        f"{len(names)} attributes")
    values = torch.tensor([[int(v) for v in row[1:]] for row in rows])
    return names, [row[0] for row in rows], (values > 0).to(torch.float32)


class AttributeImages(torch.utils.data.Dataset):
    """Images named by an attribute table; the label is the 0/1 attribute vector."""

    def __init__(self, root, filenames, attributes, transform):
        self.root, self.filenames, self.attributes, self.transform = root, filenames, attributes, transform
        self.classes = None

    def __len__(self):
        return len(self.filenames)

    def __getitem__(self, index):
        from PIL import Image

        with Image.open(os.path.join(self.root, self.filenames[index])) as image:
            return self.transform(image), self.attributes[index]


def _load_mnist(root, train):
    from torchvision.datasets import MNIST

    try:
        return MNIST(root, train=train, download=False)
    except RuntimeError:
        pass
    try:
        return MNIST(root, train=train, download=True)
    except Exception as err:  # no network, proxy, a partial download: all end the same way
        raise UserError(f"MNIST is not under {os.path.join(root, 'MNIST', 'raw')} and could not be downloaded "
                        f"({type(err).__name__}); put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                        f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (or their .gz) there")


def load_dataset(kind, root, size, train=True, attributes=None, exclude=None, verbose=True):
    """The dataset `kind` at `size` px in the generator's space, optionally without a class or
    attribute. Returns (dataset, info) with info = {classes, attributes, multilabel, kept, dropped}."""
    info = {"classes": None, "attributes": None, "multilabel": kind == "celeba"}
    if kind == "synthetic":
        dataset = SyntheticBars(size, seed=0 if train else 1)
        labels, info["classes"] = dataset.targets, SyntheticBars.classes
    elif kind == "mnist":
        mnist = _load_mnist(root, train)
        transform = to_generator_space(size, 1)
        dataset = _Transformed(mnist, transform)
        labels, info["classes"] = mnist.targets.tolist(), [str(i) for i in range(10)]
    elif kind == "folder":
        from torchvision.datasets import ImageFolder

        if not os.path.isdir(root):
            raise UserError(f"--data {root}: no such folder")
        try:
            dataset = ImageFolder(root, transform=to_generator_space(size, 3))
        except (FileNotFoundError, RuntimeError) as err:
            raise UserError(f"--data {root}: {str(err).splitlines()[0]}")
        labels, info["classes"] = dataset.targets, dataset.classes
    elif kind == "celeba":
        if not os.path.isdir(root):
            raise UserError(f"--data {root}: no such folder")
        if attributes is None:
            raise UserError("--dataset celeba needs --attributes FILE (the attribute table)")
        names, filenames, values = read_attribute_table(attributes)
        missing = [name for name in filenames if not os.path.isfile(os.path.join(root, name))]
        if missing:
            raise UserError(f"--attributes {attributes}: {len(missing)} of its {len(filenames)} rows name images "
                            f"not in --data {root} (e.g. {missing[0]}); the table and the folder do not match")
        dataset = AttributeImages(root, filenames, values, to_generator_space(size, 3))
        info["attributes"] = names
        labels = values
    else:
        raise UserError(f"unknown dataset {kind}; choose one of {', '.join(DATASETS)}")

    if exclude is not None:
        keep = _keep_mask(labels, info, exclude)
        indices = [i for i, k in enumerate(keep) if k]
        info["dropped"] = len(keep) - len(indices)
        dataset = torch.utils.data.Subset(dataset, indices)
        if verbose:
            print(f"--exclude {exclude}: kept {len(indices)} images, dropped {info['dropped']}")
    else:
        info["dropped"] = 0
    info["kept"] = len(dataset)
    if len(dataset) == 0:
        raise UserError(f"no images left in {kind} dataset at {root}")
    return dataset, info


def _keep_mask(labels, info, exclude):
    if info["attributes"] is not None:
        if exclude not in info["attributes"]:
            raise UserError(f"--exclude {exclude}: not an attribute of the table "
                            f"(e.g. {', '.join(info['attributes'][:5])}, ...)")
        return (labels[:, info["attributes"].index(exclude)] == 0).tolist()
    if exclude not in info["classes"]:
        raise UserError(f"--exclude {exclude}: not a class of this dataset ({', '.join(info['classes'])})")
    target = info["classes"].index(exclude)
    return [label != target for label in labels]


class _Transformed(torch.utils.data.Dataset):
    """A torchvision dataset with our transform, without touching its own."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return self.transform(image), label


def infinite_loader(loader, sampler=None):
    """Batches forever, reshuffling each epoch (DistributedSampler needs set_epoch)."""
    epoch = 0
    while True:
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch in loader:
            yield batch
        epoch += 1


def save_image_grid(images, path, nrow=8):
    """Save images in [-1, 1] as one PNG grid (atomically)."""
    from torchvision.utils import make_grid
    from PIL import Image

    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, normalize=True,
                     value_range=(-1, 1), padding=1)
    array = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


# --------------------------------------------------------------------------------------------
# Sampling, classifiers and metrics (shared by train_classifier, negative_adapt and evaluate)
# --------------------------------------------------------------------------------------------


# Classifier input: generator space ([-1, 1], 3 channels, any size) is converted in ONE place,
# `to_classifier_input`, used both to train the classifier (the datasets yield generator-space
# images) and to classify generated images, so the classifier sees at test time what it was
# trained on. The official code fed [-1, 1] to networks trained on [0, 1].

# Pixel statistics in [0, 1] used to normalise a new classifier's input: MNIST's for one
# channel, ImageNet's for three (the usual choices for these inputs; recorded in the checkpoint).
CLASSIFIER_NORMALIZATION = {1: {"mean": [0.1307], "std": [0.3081]},
                            3: {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert("L"); sums to 1


def to_classifier_input(images, meta):
    """Generator-space images -> the input of the classifier described by `meta`.

    Args:
        images: [N, 3, H, W] in [-1, 1] (clamped, as a saved image would be), any H = W.
        meta: a classifier checkpoint's fields: `channels` (1 or 3), `image_size` S and
            `normalization` {mean, std} (per channel, on [0, 1] pixels).
    Returns:
        [N, channels, S, S]: [0, 1], luma grayscale when channels == 1, bilinear (antialiased)
        resize to S, then (x - mean) / std.
    """
    x = (images.float().clamp(-1, 1) + 1) / 2
    if meta["channels"] == 1:
        x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    size = int(meta["image_size"])
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(meta["normalization"]["mean"]).view(1, -1, 1, 1)
    std = x.new_tensor(meta["normalization"]["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


def class_names(meta):
    """The names of a classifier's outputs: its classes, or its attributes when multi-label."""
    return list(meta["attributes"] if meta["multilabel"] else meta["classes"])


def load_classifier(path, device="cpu"):
    """A classifier checkpoint -> (model on `device` in eval mode, meta = the checkpoint's other
    fields plus "path"). A checkpoint with "members" > 1 holds an ensemble (model.ClassifierEnsemble,
    keys "members.{i}.*"); it is used like one network. Always eval(): BatchNorm must not use the
    statistics of a generated batch (the official AFHQ code forgot it)."""
    from model import CLASSIFIERS, ClassifierEnsemble, build_classifier

    ckpt = load_checkpoint(path, "classifier")
    missing = [k for k in ("model", "arch", "multilabel", "image_size", "channels", "normalization")
               if k not in ckpt]
    if missing:
        raise UserError(f"{path}: classifier checkpoint lacks {', '.join(missing)}")
    if ckpt["arch"] not in CLASSIFIERS:
        raise UserError(f"{path}: unknown classifier arch {ckpt['arch']!r} (known: {', '.join(CLASSIFIERS)})")
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    meta["path"] = path
    n_members = int(ckpt.get("members", 1))
    try:
        members = [build_classifier(ckpt["arch"], len(class_names(meta)), ckpt["channels"]) for _ in range(n_members)]
    except ValueError as err:
        raise UserError(f"{path}: {err}")
    model = members[0] if n_members == 1 else ClassifierEnsemble(members, ckpt["multilabel"])
    load_state_strict(model, ckpt["model"], path, "model")
    return model.to(device).eval().requires_grad_(False), meta


def resolve_negative(meta, negative):
    """`--negative` (a class name, a class index, or an attribute name) -> (index, name), checked
    against the classifier's own classes/attributes."""
    names = class_names(meta)
    negative = str(negative)
    if negative in names:
        return names.index(negative), negative
    if not meta["multilabel"] and negative.isdigit() and int(negative) < len(names):
        return int(negative), names[int(negative)]
    what = "an attribute" if meta["multilabel"] else "a class"
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise UserError(f"--negative {negative}: not {what} of the classifier {meta.get('path', '')} ({shown})")


def check_classifier_fits(meta, size):
    """Generators make 3-channel images at `size` px; to_classifier_input resizes and converts them.
    Say so when the classifier was trained at another resolution or takes another size."""
    if meta["image_size"] != size:
        print(f"note: the classifier takes {meta['channels']}x{meta['image_size']} px, the generators make "
              f"3x{size} px: images are resized (bilinear, antialiased) as in its training")
    trained_at = meta.get("data_size")
    if trained_at is not None and trained_at != size:
        print(f"warning: the classifier was trained on {trained_at} px data, the generators make {size} px images; "
              f"its decisions may not transfer (retrain it with --size {size})", file=sys.stderr)


@torch.no_grad()
def classify(model, meta, images):
    """Logits of generator-space `images` ([N, 3, H, W] in [-1, 1]) on the model's device."""
    device = next(model.parameters()).device
    return model(to_classifier_input(images.to(device), meta)).float()


@torch.no_grad()
def classifier_features(model, meta, images):
    """Penultimate features of the classifier, [N, D] (for the classifier-feature FID)."""
    device = next(model.parameters()).device
    return model.features(to_classifier_input(images.to(device), meta)).float()


def negative_mask(logits, meta, index):
    """Which samples are negative (show the unwanted class/feature), bool [N]: argmax == class
    for single-label classifiers, logit >= 0 (probability >= 0.5) for an attribute."""
    if meta["multilabel"]:
        return logits[:, index] >= 0
    return logits.argmax(1) == index


def label_counts(logits, meta):
    """How many samples fall in each class (argmax), or show each attribute (logit >= 0): [K]."""
    if meta["multilabel"]:
        return (logits >= 0).sum(0).cpu()
    return torch.bincount(logits.argmax(1).cpu(), minlength=logits.shape[1])


# Sampling: each sample i under a seed has its own random stream, numpy's default_rng([seed, i])
# (PCG64 keyed by both numbers; torch's CPU generator keeps only 32 bits of a seed), so its latent
# and its noise maps are the same whatever the batch size, the number of samples or the device.


def seeded_inputs(g, indices, seed):
    """Latents z ~ N(0, I) [B, style_dim] and, when `g` has noise buffers, one noise map per layer
    [B, 1, h, w], for the samples `indices` under `seed` (float32, on the CPU)."""
    if seed < 0:
        raise ValueError("the seed must be >= 0")
    shapes = [tuple(buf.shape[-2:]) for buf in g.noises.buffers()] if hasattr(g, "noises") else []
    zs, noises = [], [[] for _ in shapes]
    for index in indices:
        rng = np.random.default_rng([seed, index])
        zs.append(torch.from_numpy(rng.standard_normal(g.style_dim, dtype=np.float32)))
        for maps, shape in zip(noises, shapes):
            maps.append(torch.from_numpy(rng.standard_normal((1, *shape), dtype=np.float32)))
    return torch.stack(zs), [torch.stack(maps) for maps in noises]


@torch.no_grad()
def generate_images(g, n, seed, batch, device, desc=None):
    """Yield (z [B, style_dim] on the CPU, images [B, 3, H, W] on `device`) for samples 0..n-1:
    one z per image (no style mixing), truncation ψ = 1, randomised noise drawn from the seed
    too, so the same seed gives the same images (the evaluation protocol; also the feedback pool).
    `desc` shows a tqdm bar."""
    from tqdm import tqdm

    with tqdm(total=n, desc=desc, disable=desc is None, leave=False) as bar:
        for start in range(0, n, batch):
            z, noise = seeded_inputs(g, range(start, min(n, start + batch)), seed)
            kwargs = {"noise": [maps.to(device) for maps in noise]} if noise else {}
            images, _ = g([z.to(device)], **kwargs)
            bar.update(len(z))
            yield z, images


def to_uint8(images):
    """Images in [-1, 1] -> uint8 [0, 255], rounded exactly as `save_image_grid` saves them."""
    return ((images.detach().float().clamp(-1, 1) + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def from_uint8(images):
    """uint8 [0, 255] -> float images in [-1, 1] (the inverse of `to_uint8` on its values)."""
    return images.float() / 127.5 - 1


# Metrics


def percentage_unlearned(neg_before, neg_after):
    """PUL = 100 · (S_n(θ_G) − S_n(θ_P)) / S_n(θ_G) (paper §5.3); NaN when θ_G makes no negatives."""
    return float("nan") if neg_before == 0 else 100.0 * (neg_before - neg_after) / neg_before


FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub's hash prefix in the file name


def file_sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_fid_inception(path, device="cpu"):
    """The FID Inception-v3 with the standard TF-FID weights from the local file `path`.

    The network is torch-fidelity's "inception-v3-compat" (a port of the TensorFlow FID graph:
    TF1-style bilinear resize to 299 px, uint8 input, 2048-d pool3 features); the weights file is
    pytorch-fid's pt_inception-2015-12-05 (the same tensors under the same names). Returns
    (network in eval mode, info for the protocol). A missing file or other weights: UserError.
    """
    if path is None:
        raise UserError(f"FID needs --inception PATH, the FID Inception weights {FID_WEIGHTS_NAME} "
                        f"(download {FID_WEIGHTS_URL}); or use --features classifier")
    if not os.path.isfile(path):
        raise UserError(f"--inception {path}: no such file; download the FID Inception weights from "
                        f"{FID_WEIGHTS_URL} and pass its path")
    try:  # weights_only first: the library's own torch.load is not restricted to tensors
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"--inception {path}: not a PyTorch state dict ({type(err).__name__}); "
                        f"expected {FID_WEIGHTS_NAME}")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"--inception {path}: not a state dict of tensors; expected {FID_WEIGHTS_NAME}")
    del state
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:160]
        raise UserError(f"--inception {path}: not the FID Inception weights {FID_WEIGHTS_NAME} ({detail})")
    sha256 = file_sha256(path)
    standard = sha256.startswith(FID_WEIGHTS_SHA256_PREFIX)
    if not standard:
        print(f"warning: --inception {path} fits the network but is not {FID_WEIGHTS_NAME} "
              f"(sha256 {sha256[:12]}...): its FIDs are not comparable to published ones", file=sys.stderr)
    info = {"feature_extractor": "Inception-v3 pool3 (2048-d), TF-FID graph",
            "library": f"torch-fidelity {torch_fidelity.__version__} (inception-v3-compat: TF1 bilinear "
                       f"resize to 299 px, uint8 input)",
            "weights": os.path.abspath(path), "weights_sha256": sha256, "standard_fid_weights": standard}
    return net.to(device).eval(), info


@torch.no_grad()
def inception_features(net, images):
    """2048-d pool3 features [N, 2048] (CPU, float64) of images in [-1, 1], quantised to uint8 first."""
    device = next(net.parameters()).device
    return net(to_uint8(images).to(device))[0].double().cpu()


def feature_statistics(features, what="FID"):
    """(mu [D], sigma [D, D]) in float64 of features [N, D], by torch-fidelity (np.mean, np.cov).
    Fewer samples than dimensions: a warning (rank-deficient covariance); fewer than 2: UserError."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    n, dim = features.shape
    if n < 2:
        raise UserError(f"{what}: {n} sample(s): a covariance needs at least 2")
    if n < dim:
        print(f"warning: {what} from {n} samples of {dim}-d features: the covariance has rank <= {n - 1} < {dim}, "
              f"so the value is biased upwards and unstable; use at least {dim} samples (the paper: 10,000)",
              file=sys.stderr)
    stats = fid_features_to_statistics(torch.as_tensor(features, dtype=torch.float64).cpu())
    return stats["mu"], stats["sigma"]


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) in float64, by torch-fidelity's implementation
    (tr (Σ1 Σ2)^½ from the eigenvalues of Σ1 Σ2; equal to scipy.linalg.sqrtm's to ~1e-9)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    dim = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise UserError(f"Fréchet distance of statistics that do not match: mu {mu1.shape} vs {mu2.shape}, "
                        f"sigma {sigma1.shape} vs {sigma2.shape}")
    value = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, False)
    return float(value[KEY_METRIC_FID])


def save_statistics(path, mu, sigma, **protocol):
    """Feature statistics as pytorch-fid's .npz (keys mu, sigma), plus string fields describing
    how they were made (ignored by pytorch-fid), written atomically."""
    extra = {k: np.asarray(str(v)) for k, v in protocol.items()}
    atomic_write(path, lambda f: np.savez(f, mu=np.asarray(mu, dtype=np.float64),
                                          sigma=np.asarray(sigma, dtype=np.float64), **extra))


def load_statistics(path):
    """(mu, sigma, the other string fields as a dict) from a .npz with keys mu and sigma."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path}: not a readable .npz file ({type(err).__name__})")
    if "mu" not in fields or "sigma" not in fields:
        raise UserError(f"{path}: has no 'mu' and 'sigma' arrays (found: {', '.join(fields) or 'nothing'}); "
                        f"expected feature statistics in pytorch-fid's .npz format")
    mu, sigma = fields.pop("mu"), fields.pop("sigma")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a [D] mean and a [D, D] covariance")
    return mu.astype(np.float64), sigma.astype(np.float64), {k: str(v) for k, v in fields.items()}


# --------------------------------------------------------------------------------------------
# GAN training: rosinality's recipe, shared by pre-training, Stage 1, Stage 2 and the baselines
# --------------------------------------------------------------------------------------------


def add_gan_training_args(parser):
    """The flags of the StyleGAN2 training recipe, with rosinality's defaults."""
    parser.add_argument("--batch", type=int, default=16, help="batch size (over all processes)")
    parser.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (before the lazy-regularisation ratio)")
    parser.add_argument("--r1", type=float, default=10, help="R1 penalty weight gamma on real images")
    parser.add_argument("--d_reg_every", type=int, default=16, help="lazy R1: apply every this many steps (0 = never)")
    parser.add_argument("--path_regularize", type=float, default=2, help="path-length regularisation weight")
    parser.add_argument("--path_batch_shrink", type=int, default=2, help="batch divisor for the path-length pass")
    parser.add_argument("--g_reg_every", type=int, default=4, help="lazy path-length regularisation every this many steps (0 = never)")
    parser.add_argument("--mixing", type=float, default=0.9, help="probability of style mixing (two latents)")
    parser.add_argument("--ema_kimg", type=float, default=10,
                        help="EMA half-life in thousands of images: decay per step = 0.5 ** (batch / (ema_kimg * 1000))")
    return parser


def make_optimizers(g, d, args, g_params=None):
    """Adam for G and D with the lazy-regularisation ratio c = k / (k + 1) on lr and betas."""
    def adam(params, reg_every):
        ratio = reg_every / (reg_every + 1) if reg_every > 0 else 1
        return torch.optim.Adam(params, lr=args.lr * ratio, betas=(0.0, 0.99 ** ratio))
    g_params = list(g.parameters()) if g_params is None else g_params
    return adam(g_params, args.g_reg_every), adam(d.parameters(), args.d_reg_every)


def ema_decay(args):
    # per step, so that the half-life is ema_kimg thousand images at any batch size (rosinality's
    # 32 in place of the batch is this formula at batch 32)
    return 0.5 ** (args.batch / (args.ema_kimg * 1000))


@torch.no_grad()
def accumulate(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, on all parameters at once."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(ema_params, params, 1 - decay)


def mixing_noise(batch, latent_dim, prob, device):
    """One latent batch, or two (for style mixing) with probability `prob`."""
    if prob > 0 and random.random() < prob:
        return list(torch.randn(2, batch, latent_dim, device=device).unbind(0))
    return [torch.randn(batch, latent_dim, device=device)]


def d_logistic_loss(real_pred, fake_pred):
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def d_r1_loss(real_pred, real_img):
    """R1: the squared norm of D's gradient at the real images, averaged over the batch."""
    (grad_real,) = torch.autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad_real.square().reshape(grad_real.shape[0], -1).sum(1).mean()


def g_nonsaturating_loss(fake_pred):
    return F.softplus(-fake_pred).mean()


def g_path_regularize(fake_img, latents, mean_path_length, decay=0.01):
    """Path-length penalty: deviation of |J_w^T y| (y random image-space noise) from its running mean."""
    noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = torch.autograd.grad((fake_img * noise).sum(), latents, create_graph=True)
    path_lengths = grad.square().sum(2).mean(1).sqrt()
    path_mean = mean_path_length + decay * (path_lengths.mean().detach() - mean_path_length)
    return (path_lengths - path_mean).square().mean(), path_mean.detach(), path_lengths


def all_reduce_gradients(module):
    """Average the gradients of `module` over all processes (a no-op without torch.distributed).

    Used instead of DistributedDataParallel: the regularisers differentiate through D and G with
    autograd.grad, which DDP's gradient hooks do not support."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    torch._foreach_copy_(grads, [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)])


class GANStep:
    """One iteration of the StyleGAN2 recipe (non-saturating loss, lazy R1 and path-length
    regularisation, EMA), used unchanged by every stage that trains a GAN.

    `g_extra_loss(g)`, if given, returns a term added to the generator's loss (EWC, repulsion,
    l1); the optimizers decide which tensors are updated (CF-k and EU-k give G's a subset).
    Under torch.distributed every process runs it on its own batch and gradients are averaged.
    """

    def __init__(self, g, d, g_ema, args, g_optim, d_optim, g_extra_loss=None, mean_path_length=0.0, device="cpu"):
        self.g, self.d, self.g_ema, self.args = g, d, g_ema, args
        self.g_optim, self.d_optim = g_optim, d_optim
        self.g_extra_loss = g_extra_loss
        self.device = device
        self.decay = ema_decay(args)
        # fine-tuning must start from the checkpoint's running path length: from 0 the path-length
        # penalty would pull G's Jacobian towards zero for hundreds of steps and blur the samples
        self.mean_path_length = torch.tensor(float(mean_path_length), device=device)

    def _update(self, loss, module, optim):
        module.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(module)
        optim.step()

    def __call__(self, real_img, step):
        """Train on one batch of real images; returns a dict of detached scalar losses."""
        args, g, d = self.args, self.g, self.d
        batch, style_dim = real_img.shape[0], g.style_dim
        losses = {}

        # discriminator
        g.requires_grad_(False)
        d.requires_grad_(True)
        fake_img, _ = g(mixing_noise(batch, style_dim, args.mixing, self.device))
        d_loss = d_logistic_loss(d(real_img), d(fake_img))
        self._update(d_loss, d, self.d_optim)
        losses["d"] = d_loss.detach()

        if args.d_reg_every > 0 and step % args.d_reg_every == 0:
            real_img = real_img.detach().requires_grad_(True)
            r1 = d_r1_loss(d(real_img), real_img)
            # applied every d_reg_every steps, so scaled up by as much
            self._update(args.r1 / 2 * r1 * args.d_reg_every, d, self.d_optim)
            losses["r1"] = r1.detach()

        # generator
        g.requires_grad_(True)
        d.requires_grad_(False)
        fake_img, _ = g(mixing_noise(batch, style_dim, args.mixing, self.device))
        g_loss = g_nonsaturating_loss(d(fake_img))
        losses["g"] = g_loss.detach()
        if self.g_extra_loss is not None:
            extra = self.g_extra_loss(g)
            g_loss = g_loss + extra
            losses["extra"] = extra.detach()
        self._update(g_loss, g, self.g_optim)

        if args.g_reg_every > 0 and args.path_regularize > 0 and step % args.g_reg_every == 0:
            path_batch = max(1, batch // args.path_batch_shrink)
            fake_img, latents = g(mixing_noise(path_batch, style_dim, args.mixing, self.device),
                                  return_latents=True)
            path_loss, self.mean_path_length, _ = g_path_regularize(fake_img, latents, self.mean_path_length)
            self._update(args.path_regularize * args.g_reg_every * path_loss, g, self.g_optim)
            losses["path"] = path_loss.detach()

        accumulate(self.g_ema, g, self.decay)
        return losses


def run_gan_training(gan_step, next_batch, start, iters, log_every=10, sample=None, sample_every=0,
                     save=None, save_every=0, last_good=None, show=True, desc=""):
    """Run steps start..iters-1 of `gan_step` on batches from `next_batch()`, with a progress bar.

    `sample(done)` runs every `sample_every` steps and after the last one; `save(done)` runs
    every `save_every` steps before the last one and returns the path it wrote (the caller
    writes its own final file). A NaN or infinite loss stops the run with a one-line UserError
    naming the step and the last checkpoint written (or `last_good`).
    """
    from tqdm import tqdm

    bar = tqdm(range(start, iters), initial=start, total=iters, disable=not show, dynamic_ncols=True,
               smoothing=0.1)
    for step in bar:
        losses = gan_step(next_batch(), step)
        done = step + 1
        if step % log_every == 0 or done == iters:
            values = {k: float(v) for k, v in losses.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise UserError(f"a loss became NaN or infinite at step {step} "
                                f"({', '.join(f'{k} {v:.3g}' for k, v in values.items())}); last good "
                                f"checkpoint: {last_good or 'none'}; lower --lr, or resume from it")
            bar.set_description(desc + " ".join(f"{k} {v:.3f}" for k, v in values.items()))
        if sample is not None and sample_every and (done % sample_every == 0 or done == iters):
            sample(done)
        if save is not None and save_every and done % save_every == 0 and done < iters:
            last_good = save(done)


def random_batches(images_uint8, batch, device):
    """`next_batch()` for training on a small fixed set of uint8 images (the feedback samples):
    the set moves to `device` once, as uint8; each call draws `batch` images uniformly with
    replacement (so a set smaller than a batch works too) and returns them in [-1, 1]."""
    images_uint8 = images_uint8.to(device)

    def next_batch():
        index = torch.randint(len(images_uint8), (batch,), device=device)
        return from_uint8(images_uint8[index])
    return next_batch


def stylegan2_fisher(g, d, n_samples, device, mixing=0.9):
    """Fisher diagonal of all of `g`'s parameters at their current values: the mean squared
    gradient of D's raw output on `n_samples` generated images (paper eq. 3; as the official
    code, the raw logit stands for the log-likelihood). Returns a list aligned with g.parameters()."""
    if n_samples < 4 or n_samples % 4:
        raise UserError(f"--fisher_samples {n_samples}: must be a positive multiple of 4 "
                        "(the discriminator's minibatch-stddev groups)")
    params = list(g.parameters())
    was_training = g.training
    g.requires_grad_(True)
    d.requires_grad_(False)
    batches = []
    for start in range(0, n_samples, 16):  # D's minibatch-stddev groups stay those of training
        size = min(16, n_samples - start)
        images, _ = g(mixing_noise(size, g.style_dim, mixing, device))
        batches.append(d(images).reshape(-1))
    fisher = fisher_diagonal(params, torch.cat(batches))
    g.train(was_training)
    return fisher


def state_fingerprint(state_dict):
    """sha256 of a state dict's tensors (names, shapes and values): identifies a generator."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


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
    """Same number of tensors, same shapes (foreach ops would broadcast a misaligned list)."""
    if [p.shape for p in params] == [a.shape for a in anchors]:
        return
    if len(params) != len(anchors):
        raise ValueError(f"{what}: {len(anchors)} tensors for {len(params)} parameters")
    index = next(i for i, (p, a) in enumerate(zip(params, anchors)) if p.shape != a.shape)
    raise ValueError(f"{what}: tensor {index} has shape {tuple(anchors[index].shape)}, "
                     f"parameter has {tuple(params[index].shape)}")


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
