"""The datasets, one registry: every entry yields (image in [-1, 1] with 3 channels at the
generator's size, label), the generator's space, and says what its labels are.

Adding a dataset is one function that builds it and one DATASETS entry; every script's
--dataset choices, --help and defaults come from the registry.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import MNIST, ImageFolder

from utils import UserError, to_uint8


def load_image(path):
    """An image file as 8-bit RGB, or a UserError naming it. 16-bit grayscale is scaled to 8 bits
    (a plain convert("RGB") would clip it to white); palette, gray, alpha and CMYK images are
    converted by their own rules."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.asarray(image, dtype=np.float64) / 257
                image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{path}: cannot be decoded as an image ({str(err).splitlines()[0] or type(err).__name__}); "
                        "remove or replace it")


def to_generator_space(size, channels_in):
    """torchvision transform: resize + centre-crop to `size`, 3 channels, values in [-1, 1]."""
    steps = [transforms.Resize(size), transforms.CenterCrop(size)]
    if channels_in == 1:
        steps.append(transforms.Grayscale(3))
    else:
        steps.append(transforms.Lambda(lambda image: image.convert("RGB")))
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    return transforms.Compose(steps)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def load_image_folder(root, size, flag):
    """Every image under `root` (recursively, sorted paths) in the generator's space at `size` px,
    as uint8 [N, 3, size, size] (what a user would see), with the paths. `flag` names the option
    in errors."""
    if not os.path.isdir(root):
        raise UserError(f"{flag} {root}: no such folder")
    paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise UserError(f"{flag} {root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or below it")
    transform = to_generator_space(size, 3)
    images = torch.stack([transform(load_image(path)) for path in paths])
    return to_uint8(images), paths


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
    count = None
    if lines and len(lines[0]) == 1 and lines[0][0].isdigit():
        count, lines = int(lines[0][0]), lines[1:]
    if len(lines) < 2:
        raise UserError(f"--attributes {path}: expected a header of attribute names and one row per image")
    names, rows = lines[0], lines[1:]
    if count is not None and count != len(rows):
        raise UserError(f"--attributes {path}: the first line says {count} images, the table has {len(rows)} rows")
    bad = next((i for i, row in enumerate(rows) if len(row) != len(names) + 1), None)
    if bad is not None:
        raise UserError(f"--attributes {path}: row {bad + 1} has {len(rows[bad]) - 1} values for "
                        f"{len(names)} attributes")
    for i, row in enumerate(rows):
        odd = next((v for v in row[1:] if v not in ("-1", "0", "1")), None)
        if odd is not None:
            raise UserError(f"--attributes {path}: row {i + 1} ({row[0]}) has the value {odd!r}; "
                            "attribute values are -1, 0 or 1")
    filenames = [row[0] for row in rows]
    if len(set(filenames)) != len(filenames):
        twice = next(name for name in filenames if filenames.count(name) > 1)
        raise UserError(f"--attributes {path}: {twice} has more than one row")
    values = torch.tensor([[int(v) for v in row[1:]] for row in rows])
    return names, filenames, (values > 0).to(torch.float32)


class AttributeImages(torch.utils.data.Dataset):
    """Images named by an attribute table; the label is the 0/1 attribute vector."""

    def __init__(self, root, filenames, attributes, transform):
        self.root, self.filenames, self.attributes, self.transform = root, filenames, attributes, transform
        self.classes = None

    def __len__(self):
        return len(self.filenames)

    def __getitem__(self, index):
        return self.transform(load_image(os.path.join(self.root, self.filenames[index]))), self.attributes[index]


def _load_mnist(root, train):
    """torchvision's MNIST under root/MNIST/raw; when absent, downloaded into a temporary folder
    and moved into place only when complete (a failed download leaves root as it was)."""
    try:
        return MNIST(root, train=train, download=False)
    except RuntimeError:
        pass
    download = tempfile.mkdtemp(prefix=".mnist-download-")
    try:
        MNIST(download, train=train, download=True)
        raw = os.path.join(root, "MNIST", "raw")
        os.makedirs(raw, exist_ok=True)
        for name in os.listdir(os.path.join(download, "MNIST", "raw")):
            shutil.move(os.path.join(download, "MNIST", "raw", name), os.path.join(raw, name))
    except Exception as err:  # no network, proxy, a partial download: all end the same way
        raise UserError(f"MNIST is not under {os.path.join(root, 'MNIST', 'raw')} and could not be downloaded "
                        f"({type(err).__name__}); put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                        f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (or their .gz) there")
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return MNIST(root, train=train, download=False)



def _synthetic(root, size, train, attributes):
    dataset = SyntheticBars(size, seed=0 if train else 1)
    return dataset, dataset.targets, {"classes": SyntheticBars.classes}


def _mnist(root, size, train, attributes):
    mnist = _load_mnist(root, train)
    return _Transformed(mnist, to_generator_space(size, 1)), mnist.targets.tolist(), \
        {"classes": [str(i) for i in range(10)]}


def _folder(root, size, train, attributes):
    if not os.path.isdir(root):
        raise UserError(f"--data {root}: no such folder")
    try:
        dataset = ImageFolder(root, transform=to_generator_space(size, 3), loader=load_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise UserError(f"--data {root}: {str(err).splitlines()[0]}")
    return dataset, dataset.targets, {"classes": dataset.classes}


def _celeba(root, size, train, attributes):
    if not os.path.isdir(root):
        raise UserError(f"--data {root}: no such folder")
    if attributes is None:
        raise UserError("--dataset celeba needs --attributes FILE (the attribute table)")
    names, filenames, values = read_attribute_table(attributes)
    missing = [name for name in filenames if not os.path.isfile(os.path.join(root, name))]
    if missing:
        raise UserError(f"--attributes {attributes}: {len(missing)} of its {len(filenames)} rows name images "
                        f"not in --data {root} (e.g. {missing[0]}); the table and the folder do not match")
    return AttributeImages(root, filenames, values, to_generator_space(size, 3)), values, {"attributes": names}


@dataclass(frozen=True)
class DatasetEntry:
    """A registry entry.

    load(root, size, train, attributes) -> (dataset, labels, {"classes": names} or
    {"attributes": names}); `test_split` is "own" when the data set has a test split of its own
    (train=False loads it), "folder" when a separate folder of the same classes may serve
    (--test_data), else "holdout"; `classifier` holds train_classifier.py's defaults for it.
    """
    load: Callable
    help: str
    channels: int           # of the stored images: 1 = grayscale
    multilabel: bool = False
    test_split: str = "holdout"
    reads_files: bool = True
    classifier: dict = field(default_factory=dict)


# celeba's classifier follows paper A.2; mnist's trains longer than A.2 (see train_classifier.py)
DATASETS = {
    "mnist": DatasetEntry(_mnist, "torchvision MNIST under --data (downloaded when missing and online)", channels=1,
                     test_split="own",
                     classifier=dict(arch="lenet", size=32, batch=64, epochs=20, optim="adam", translate=2)),
    "folder": DatasetEntry(_folder, "one subfolder of images per class (e.g. AFHQ train/{cat,dog,wild})", channels=3,
                      test_split="folder",
                      classifier=dict(arch="resnet50", size=256, batch=64, epochs=10, optim="adam", translate=0)),
    "celeba": DatasetEntry(_celeba, "images in --data plus an attribute table --attributes", channels=3,
                      multilabel=True,
                      classifier=dict(arch="resnext50_32x4d", size=256, batch=64, epochs=10, optim="adamax",
                                      translate=0)),
    "synthetic": DatasetEntry(_synthetic, "generated two-class bar images for smoke tests (no files)", channels=3,
                         test_split="own", reads_files=False,
                         classifier=dict(arch="lenet", size=16, batch=64, epochs=2, optim="adam", translate=0)),
}


def add_data_args(parser, exclude=True):
    parser.add_argument("--dataset", choices=list(DATASETS), default="mnist",
                        help="; ".join(f"{name}: {kind.help}" for name, kind in DATASETS.items()))
    parser.add_argument("--data", default="data", help="dataset root folder")
    parser.add_argument("--attributes", default=None,
                        help="celeba: attribute table (list_attr_celeba.txt or CelebAMask-HQ-attribute-anno.txt)")
    if exclude:
        parser.add_argument("--exclude", default=None,
                            help="drop this class (digit, folder name) or attribute (images where it is +1)")
    return parser


def data_source(kind, root):
    """What a checkpoint records as the data it came from: the folder, or the dataset's name."""
    return os.path.abspath(root) if DATASETS[kind].reads_files else kind


def load_dataset(kind, root, size, train=True, attributes=None, exclude=None, verbose=True):
    """The dataset `kind` at `size` px in the generator's space, optionally without a class or
    attribute. Returns (dataset, info) with info = {classes, attributes, multilabel, kept, dropped}."""
    if kind not in DATASETS:
        raise UserError(f"unknown dataset {kind}; choose one of {', '.join(DATASETS)}")
    info = {"classes": None, "attributes": None, "multilabel": DATASETS[kind].multilabel}
    dataset, labels, names = DATASETS[kind].load(root, size, train, attributes)
    info.update(names)

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


def split_by_label(kind, root, size, name, train=True, attributes=None):
    """(dataset, indices of the images labelled `name`, indices of the others): `name` is a class
    or an attribute (+1) of the dataset."""
    if kind not in DATASETS:
        raise UserError(f"unknown dataset {kind}; choose one of {', '.join(DATASETS)}")
    data, labels, names = DATASETS[kind].load(root, size, train, attributes)
    keep = _keep_mask(labels, {"classes": None, "attributes": None, **names}, name, "--negative")
    return data, [i for i, k in enumerate(keep) if not k], [i for i, k in enumerate(keep) if k]


def _keep_mask(labels, info, exclude, flag="--exclude"):
    if info["attributes"] is not None:
        if exclude not in info["attributes"]:
            raise UserError(f"{flag} {exclude}: not an attribute of the table "
                            f"(e.g. {', '.join(info['attributes'][:5])}, ...)")
        return (labels[:, info["attributes"].index(exclude)] == 0).tolist()
    if exclude not in info["classes"]:
        raise UserError(f"{flag} {exclude}: not a class of this dataset ({', '.join(info['classes'])})")
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

