"""train_classifier.py and the classifier helpers of metrics.py and checkpoint.py: preprocessing, checkpoints, decisions."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import dataset
import metrics
import train_classifier
import utils
from conftest import cli_error
from classifiers import CLASSIFIERS, ClassifierEnsemble, build_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST5K = os.path.join(ROOT, "..", "shared", "data", "mnist5k")


def train_args(out, **overrides):
    args = train_classifier.create_argparser().parse_args(["--dataset", "synthetic", "--data", "unused",
                                                           "--test_fraction", "0.25", "--device", "cpu",
                                                           "--out", str(out)])
    for key, value in overrides.items():
        assert hasattr(args, key), key
        setattr(args, key, value)
    return args


@pytest.fixture(scope="module")
def synthetic_classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf")
    ckpt = train_classifier.main(train_args(out, epochs=3))
    return os.path.join(out, "classifier.pt"), ckpt


# --- preprocessing: generator space -> classifier input ------------------------------------


def test_uint8_round_trip_is_exact():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(utils.to_uint8(utils.from_uint8(values)), values)
    # a real dataset image in generator space quantises back to its own bytes
    digit = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
    pil = Image.fromarray(digit, mode="L")
    x = dataset.to_generator_space(28, 1)(pil)  # [3, 28, 28] in [-1, 1]
    assert torch.equal(utils.to_uint8(x)[0], torch.from_numpy(digit))


def test_classifier_input_matches_the_classic_mnist_pipeline():
    """A gray digit loaded by the datasets (generator space, 3 equal channels) becomes what
    ToTensor + Normalize(MNIST mean, std) makes of the original image."""
    from torchvision import transforms

    digit = (np.random.default_rng(1).random((32, 32)) * 255).astype(np.uint8)
    pil = Image.fromarray(digit, mode="L")
    meta = {"channels": 1, "image_size": 32, "normalization": metrics.CLASSIFIER_NORMALIZATION[1]}
    ours = metrics.to_classifier_input(dataset.to_generator_space(32, 1)(pil)[None], meta)
    norm = metrics.CLASSIFIER_NORMALIZATION[1]
    classic = transforms.Normalize(norm["mean"], norm["std"])(transforms.ToTensor()(pil))[None]
    assert ours.shape == (1, 1, 32, 32)
    torch.testing.assert_close(ours, classic, atol=1e-5, rtol=0)


def test_classifier_input_rgb_resize_and_normalisation():
    meta = {"channels": 3, "image_size": 32, "normalization": metrics.CLASSIFIER_NORMALIZATION[3]}
    images = torch.full((2, 3, 16, 16), 0.5)
    images[:, 1] = -0.25
    out = metrics.to_classifier_input(images, meta)
    assert out.shape == (2, 3, 32, 32)
    mean, std = (torch.tensor(meta["normalization"][k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = (((images[:, :, :1, :1] + 1) / 2) - mean) / std
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-5, rtol=0)
    # values outside [-1, 1] are clamped, as a saved image would be
    torch.testing.assert_close(metrics.to_classifier_input(images * 4, meta)[:, 0],
                               metrics.to_classifier_input(torch.ones(2, 3, 16, 16), meta)[:, 0])


def test_luma_grayscale_weights():
    meta = {"channels": 1, "image_size": 4, "normalization": {"mean": [0.0], "std": [1.0]}}
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    torch.testing.assert_close(metrics.to_classifier_input(red, meta), torch.full((1, 1, 4, 4), 0.299))


# --- architectures --------------------------------------------------------------------------


def test_registry_archs_build_offline_and_expose_features():
    for arch in ("lenet", "resnet18"):
        channels = 1 if arch == "lenet" else 3
        net = build_classifier(arch, 7, channels).eval()
        x = torch.randn(2, channels, 32, 32)
        assert net(x).shape == (2, 7)
        assert net.features(x).shape[0] == 2 and net.features(x).ndim == 2
    with pytest.raises(ValueError):
        build_classifier("resnet18", 3, 1)
    assert {"lenet", "resnet50", "resnext50_32x4d"} <= set(CLASSIFIERS)


# --- training and the checkpoint -----------------------------------------------------------


def test_train_on_synthetic_and_load(synthetic_classifier):
    path, ckpt = synthetic_classifier
    assert ckpt["kind"] == "classifier" and ckpt["arch"] == "lenet"
    assert ckpt["classes"] == ["horizontal", "vertical"] and not ckpt["multilabel"]
    assert (ckpt["image_size"], ckpt["channels"], ckpt["data_size"]) == (32, 3, 16)
    assert ckpt["normalization"] == metrics.CLASSIFIER_NORMALIZATION[3]
    assert ckpt["test_accuracy"] > 90
    assert set(ckpt["test_accuracy_per_class"]) == {"horizontal", "vertical"}
    assert os.path.isfile(os.path.join(os.path.dirname(path), "args.json"))

    model, meta = checkpoint.load_classifier(path)
    assert not model.training
    test, _ = dataset.load_dataset("synthetic", None, 16, train=False)
    images, labels = next(iter(torch.utils.data.DataLoader(test, batch_size=128)))
    logits = metrics.classify(model, meta, images)
    assert (logits.argmax(1) == labels).float().mean() > 0.9  # what it learnt is what it applies
    index, name = metrics.resolve_negative(meta, "vertical")
    assert (index, name) == (1, "vertical")
    assert torch.equal(metrics.negative_mask(logits, meta, index), logits.argmax(1) == 1)
    assert metrics.label_counts(logits, meta).sum() == len(images)


class _FixedLogits(torch.nn.Module):
    """A stand-in network that returns given logits and features, whatever the input."""

    def __init__(self, logits, features):
        super().__init__()
        self.logits, self.feats = logits, features

    def forward(self, input):
        return self.logits

    def features(self, input):
        return self.feats


def test_ensemble_decides_by_the_mean_probability():
    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    members = [_FixedLogits(a, torch.ones(2, 4)), _FixedLogits(b, torch.zeros(2, 4))]
    out = ClassifierEnsemble(members)(torch.zeros(2, 1))
    mean_p = (a.softmax(1) + b.softmax(1)) / 2
    assert torch.allclose(out, mean_p.log(), atol=1e-6)
    # by hand, first sample: class 0 has probability e^2/(e^2+2) under a and 1/(e+2) under b
    e = float(np.e)
    assert abs(out[0].exp()[0].item() - (e ** 2 / (e ** 2 + 2) + 1 / (e + 2)) / 2) < 1e-6
    # a vote would tie the second sample (one call each); the mean probability gives class 2
    assert out.argmax(1).tolist() == [0, 2]
    assert torch.equal(ClassifierEnsemble(members).features(None), torch.ones(2, 4))  # member 0's

    attr_a, attr_b = torch.tensor([[3.0, -1.0]]), torch.tensor([[-1.0, -2.0]])
    multi = ClassifierEnsemble([_FixedLogits(attr_a, None), _FixedLogits(attr_b, None)], multilabel=True)
    p = (attr_a.sigmoid() + attr_b.sigmoid()) / 2
    assert torch.allclose(multi(None), (p / (1 - p)).log(), atol=1e-6)
    # extreme logits stay finite (the mean probability is computed in log space)
    far = ClassifierEnsemble([_FixedLogits(torch.tensor([[200.0]]), None)] * 2, multilabel=True)
    assert torch.isfinite(far(None)).all() and far(None).item() > 100


def test_ensemble_members_are_the_single_seed_networks(tmp_path, synthetic_classifier):
    assert "--members: must be a whole number of at least 1" in cli_error(train_classifier, "--members", 0,
                                                                           "--out", tmp_path / "none")
    ckpt = train_classifier.main(train_args(tmp_path / "ens", epochs=3, members=2))
    assert ckpt["members"] == 2 and len(ckpt["member_test_accuracy"]) == 2
    single_seed1 = train_classifier.main(train_args(tmp_path / "s1", epochs=3, seed=1))
    for key, value in synthetic_classifier[1]["model"].items():
        assert torch.equal(ckpt["model"][f"members.0.{key}"], value)
    for key, value in single_seed1["model"].items():
        assert torch.equal(ckpt["model"][f"members.1.{key}"], value)

    model, meta = checkpoint.load_classifier(str(tmp_path / "ens" / "classifier.pt"))
    assert isinstance(model, ClassifierEnsemble) and len(model.members) == 2 and not model.training
    test, _ = dataset.load_dataset("synthetic", None, 16, train=False)
    images, labels = next(iter(torch.utils.data.DataLoader(test, batch_size=128)))
    logits = metrics.classify(model, meta, images)
    assert logits.shape == (len(images), 2) and torch.allclose(logits.exp().sum(1), torch.ones(len(images)))
    assert (logits.argmax(1) == labels).float().mean() > 0.9
    single, single_meta = checkpoint.load_classifier(synthetic_classifier[0])
    assert torch.equal(metrics.classifier_features(model, meta, images),
                       metrics.classifier_features(single, single_meta, images))


def test_resolve_negative_names_indices_and_errors():
    meta = {"classes": [str(i) for i in range(10)], "attributes": None, "multilabel": False, "path": "c.pt"}
    assert metrics.resolve_negative(meta, "8") == (8, "8")
    assert metrics.resolve_negative(meta, 8) == (8, "8")
    with pytest.raises(utils.UserError, match="not a class"):
        metrics.resolve_negative(meta, "11")
    cats = {"classes": ["cat", "dog", "wild"], "attributes": None, "multilabel": False}
    assert metrics.resolve_negative(cats, "1") == (1, "dog")
    attrs = {"classes": None, "attributes": ["Bangs", "Eyeglasses"], "multilabel": True}
    assert metrics.resolve_negative(attrs, "Eyeglasses") == (1, "Eyeglasses")
    with pytest.raises(utils.UserError, match="not an attribute"):
        metrics.resolve_negative(attrs, "Hat")


def test_check_classifier_fits_warns_only_on_another_training_size(capsys):
    meta = {"image_size": 32, "channels": 1, "data_size": 32}
    metrics.check_classifier_fits(meta, 32)
    assert capsys.readouterr() == ("", "")
    metrics.check_classifier_fits(meta, 64)  # resized for the input, and trained on other images
    printed = capsys.readouterr()
    assert "resized" in printed.out and "1x32 px" in printed.out
    assert "trained on 32 px data" in printed.err and "--size 64" in printed.err
    metrics.check_classifier_fits(dict(meta, data_size=None), 64)  # an older checkpoint: only the note
    printed = capsys.readouterr()
    assert "resized" in printed.out and printed.err == ""


def test_multilabel_decisions():
    meta = {"classes": None, "attributes": ["a", "b"], "multilabel": True}
    logits = torch.tensor([[0.5, -1.0], [-0.1, 0.0], [2.0, 3.0]])
    assert metrics.negative_mask(logits, meta, 1).tolist() == [False, True, True]
    assert metrics.label_counts(logits, meta).tolist() == [2, 2]


def test_multilabel_training_on_an_attribute_table(tmp_path):
    """--dataset celeba: images + attribute table -> one logit per attribute, accuracy per attribute."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        bright, bar = i % 2, (i // 2) % 2
        image = np.full((16, 16, 3), 200 if bright else 30, dtype=np.uint8)
        if bar:
            image[6:10] = 255 - image[6:10]
        image = np.clip(image + rng.integers(0, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
        rows.append(f"{i:03d}.png {2 * bright - 1} {2 * bar - 1}")
    table = tmp_path / "attrs.txt"
    table.write_text("40\nBright Bar\n" + "\n".join(rows) + "\n")
    ckpt = train_classifier.main(train_args(tmp_path / "out", dataset="celeba", data=str(tmp_path),
                                            attributes=str(table), arch="lenet", size=16, epochs=1, batch=8))
    assert ckpt["multilabel"] and ckpt["attributes"] == ["Bright", "Bar"] and ckpt["classes"] is None
    assert set(ckpt["test_accuracy_per_attribute"]) == {"Bright", "Bar"}
    assert ckpt["test_count"] == 10
    model, meta = checkpoint.load_classifier(str(tmp_path / "out" / "classifier.pt"))
    assert model.head.out_features == 2 and checkpoint.class_names(meta) == ["Bright", "Bar"]


def test_wrong_checkpoint_kind_is_a_user_error(tmp_path, synthetic_classifier):
    g = checkpoint.build_gan(dict(size=16, style_dim=16, n_mlp=1, channel_max=16), ("g_ema",))
    path = str(tmp_path / "g.pt")
    checkpoint.save_checkpoint(checkpoint.gan_checkpoint(g, dict(size=16, style_dim=16, n_mlp=1, channel_max=16),
                                                     {}, 0, {}), path)
    with pytest.raises(utils.UserError, match="is a stylegan2 checkpoint, but a classifier"):
        checkpoint.load_classifier(path)
    with pytest.raises(utils.UserError, match="is a classifier checkpoint, but a stylegan2"):
        checkpoint.load_generator(synthetic_classifier[0])


def test_cli_help_lists_the_registry():
    out = subprocess.run([sys.executable, "train_classifier.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    assert all(arch in out.stdout for arch in CLASSIFIERS)


@pytest.mark.skipif(not os.path.isdir(MNIST5K), reason="shared/data/mnist5k not present")
def test_mnist5k_loads_as_ten_classes():
    data, info = dataset.load_dataset("mnist", MNIST5K, 32, train=False)
    assert info["classes"] == [str(i) for i in range(10)] and len(data) > 0
    image, label = data[0]
    assert image.shape == (3, 32, 32) and -1 <= image.min() and image.max() <= 1
