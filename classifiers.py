"""The classifiers: the feedback oracle that plays the user, and the evaluator (PUL, the
classifier-feature FID). LeNet-5 for MNIST, torchvision backbones for images, an ensemble of
members trained from different seeds, and the CLASSIFIERS registry."""

import math

import torch
import torchvision
from torch import nn
from torch.nn import functional as F


class LeNet5(nn.Module):
    """LeNet-5 as in the official MNIST classifier: conv 5x5 to 6, pool,
    conv 5x5 to 16, pool, conv 5x5 to 120, FC 84, FC `num_outputs`; input `channels` x 32 x 32.
    Returns logits (the official network ends in LogSoftmax; argmax is the same)."""

    def __init__(self, num_outputs=10, channels=1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),   # [N, 6, 14, 14]
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),         # [N, 16, 5, 5]
            nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),          # [N, 120]
            nn.Linear(120, 84), nn.ReLU(),                           # [N, 84]
        )
        self.head = nn.Linear(84, num_outputs)

    def features(self, input):
        """Penultimate features [N, 84] (for the classifier-feature FID)."""
        return self.body(input)

    def forward(self, input):
        return self.head(self.features(input))


class TorchvisionClassifier(nn.Module):
    """A torchvision backbone built with weights=None (no download), its `fc` resized to
    `num_outputs`: classes, or one logit per attribute."""

    def __init__(self, arch, num_outputs, channels=3):
        super().__init__()
        if channels != 3:
            raise ValueError(f"{arch} takes 3-channel input, not {channels}")
        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_outputs)
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def features(self, input):
        """Penultimate features [N, fc.in_features] (the globally pooled backbone output)."""
        return self.body(input)

    def forward(self, input):
        return self.head(self.features(input))


# name -> (constructor(num_outputs, channels), default input size, description for --help)
CLASSIFIERS = {
    "lenet": (lambda n, c: LeNet5(n, c), 32, "LeNet-5, 32 px (MNIST; 1 or 3 channels)"),
    "resnet18": (lambda n, c: TorchvisionClassifier("resnet18", n, c), 224, "torchvision ResNet-18"),
    "resnet50": (lambda n, c: TorchvisionClassifier("resnet50", n, c), 224,
                 "torchvision ResNet-50 (official AFHQ feedback classifier)"),
    "resnext50_32x4d": (lambda n, c: TorchvisionClassifier("resnext50_32x4d", n, c), 224,
                        "torchvision ResNeXt-50 32x4d (paper's CelebA attribute classifier)"),
}


def build_classifier(arch, num_outputs, channels):
    """A fresh classifier from the CLASSIFIERS registry; every arch has `.features(x)` and `forward(x)`."""
    if arch not in CLASSIFIERS:
        raise ValueError(f"unknown classifier arch {arch!r}; choose one of {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[arch][0](num_outputs, channels)


class ClassifierEnsemble(nn.Module):
    """Classifiers of one arch trained from different seeds, deciding together.

    One small network's calls on off-manifold generated images depend on its seed (on MNIST at
    CPU scale, ten LeNets of one recipe scored the same GAN trained without 8s from 79 % to 92 %
    PUL, two ensembles of five of them 87 % and 88 %); their mean probability is steadier.
    `forward` returns the log of the members' mean probability (softmax over classes; for
    attributes the logit of the mean sigmoid), so argmax and "logit >= 0" decide as for one
    network. `features` are member 0's: a fixed feature space for the classifier-feature FID
    (the features of separately trained networks do not live in a common space, so they are not
    averaged)."""

    def __init__(self, members, multilabel=False):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.multilabel = multilabel

    def features(self, input):
        return self.members[0].features(input)

    def forward(self, input):
        logits = torch.stack([member(input) for member in self.members])  # [M, N, K]
        log_m = math.log(len(self.members))
        if self.multilabel:  # log of the mean of sigmoid(x) and of sigmoid(-x) = 1 - sigmoid(x)
            log_p = torch.logsumexp(F.logsigmoid(logits), 0) - log_m
            log_q = torch.logsumexp(F.logsigmoid(-logits), 0) - log_m
            return log_p - log_q
        return torch.logsumexp(F.log_softmax(logits, -1), 0) - log_m
