"""What the evaluation measures, and how the classifier that measures it is fed.

Classifier input and decisions; the seeded samples every generator is scored on; PUL; FID
features (Inception or the classifier's), their statistics and the Fréchet distance (also
Ret-FID: the distance to the retrained model's statistics); KID and precision/recall from the same
features; the side effects on other classes; recoverability (inverting held-out real images).
"""

import hashlib
import os
import sys

import numpy as np
import torch
import torch_fidelity
from torch.nn import functional as F
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from tqdm import tqdm

from checkpoint import class_names
from utils import UserError, atomic_write, to_uint8


# --------------------------------------------------------------------------------------------
# Classifier input and decisions
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



# --------------------------------------------------------------------------------------------
# Seeded samples: each sample i under a seed has its own random stream, numpy's
# default_rng([seed, i]) (PCG64 keyed by both numbers; torch's CPU generator keeps only 32 bits
# of a seed), so its latent and its noise maps are the same whatever the batch size, the number
# of samples or the device.
# --------------------------------------------------------------------------------------------


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
    with tqdm(total=n, desc=desc, disable=desc is None, leave=False) as bar:
        for start in range(0, n, batch):
            z, noise = seeded_inputs(g, range(start, min(n, start + batch)), seed)
            kwargs = {"noise": [maps.to(device) for maps in noise]} if noise else {}
            images, _ = g([z.to(device)], **kwargs)
            bar.update(len(z))
            yield z, images



# --------------------------------------------------------------------------------------------
# PUL, FID, side effects
# --------------------------------------------------------------------------------------------


def percentage_unlearned(neg_before, neg_after):
    """PUL = 100 · (S_n(θ_G) − S_n(θ_P)) / S_n(θ_G) (paper §5.3); NaN when θ_G makes no negatives."""
    return float("nan") if neg_before == 0 else 100.0 * (neg_before - neg_after) / neg_before


FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME


FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub's hash prefix in the file name


def file_sha256(path):
    """sha256 hex digest of a file, read in 1 MiB blocks."""
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
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    dim = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise UserError(f"Fréchet distance of statistics that do not match: mu {mu1.shape} vs {mu2.shape}, "
                        f"sigma {sigma1.shape} vs {sigma2.shape}")
    value = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, False)
    return float(value[KEY_METRIC_FID])


# KID and precision/recall need the feature matrices themselves, not their statistics; both use
# torch-fidelity's implementations on float32 features, its defaults as ours
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED, PR_K = 100, 1000, 2020, 3


def kernel_inception_distance(generated, real, subset_size=KID_SUBSET_SIZE, subsets=KID_SUBSETS):
    """(mean, std, subset size) over `subsets` seeded random subsets of min(subset_size, N, M)
    of each set of the unbiased MMD² with the cubic kernel k(x, y) = (x·y / D + 1)³ (Bińkowski et
    al. 2018), by torch-fidelity. Unbiased: about 0, and may be below 0, for equal distributions."""
    size = min(subset_size, len(generated), len(real))
    if size < 2:
        raise UserError(f"KID needs at least 2 samples of each set ({len(generated)} generated, {len(real)} real)")
    out = kid_features_to_metric(torch.as_tensor(generated).float(), torch.as_tensor(real).float(),
                                 kid_subsets=subsets, kid_subset_size=size, rng_seed=KID_SEED, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD], size


def precision_recall(generated, real, k=PR_K):
    """Improved precision and recall (Kynkäänniemi et al. 2019), by torch-fidelity: precision =
    share of generated samples inside the k-NN ball of some real sample (quality), recall = share
    of real samples inside the k-NN ball of some generated one (coverage)."""
    if min(len(generated), len(real)) <= k:
        raise UserError(f"precision/recall with k = {k} needs more than {k} samples of each set")
    out = prc_features_to_metric(torch.as_tensor(generated).float(), torch.as_tensor(real).float(),
                                 prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def save_statistics(path, mu, sigma, feature_matrix=None, **protocol):
    """Feature statistics as pytorch-fid's .npz (keys mu, sigma), plus string fields describing
    how they were made and optionally a float32 feature matrix for KID and precision/recall
    (both ignored by pytorch-fid), written atomically."""
    extra = {k: np.asarray(str(v)) for k, v in protocol.items()}
    if feature_matrix is not None:
        extra["feature_matrix"] = np.asarray(feature_matrix, dtype=np.float32)
    atomic_write(path, lambda f: np.savez(f, mu=np.asarray(mu, dtype=np.float64),
                                          sigma=np.asarray(sigma, dtype=np.float64), **extra))


def load_features(path):
    """The feature matrix [N, D] (float32 tensor) kept in a statistics file, or None."""
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["feature_matrix"]) if "feature_matrix" in data.files else None


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
    fields.pop("feature_matrix", None)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a [D] mean and a [D, D] covariance")
    return mu.astype(np.float64), sigma.astype(np.float64), {k: str(v) for k, v in fields.items()}



def side_effects(before, after, names, n):
    """Per class/attribute: share (%) of the n samples before and after, and the % change of
    the count (paper appendix E)."""
    out = {}
    for name, b, a in zip(names, before, after):
        change = 100.0 * (a - b) / b if b else float("nan")
        out[name] = {"before": 100.0 * b / n, "after": 100.0 * a / n, "change": change}
    return out


def mean_std(values):
    """{mean, std (population, as the paper), n} of the values that are not None or NaN; None if none is."""
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


# --------------------------------------------------------------------------------------------
# Recoverability: is the class removed, or only hidden? A generator that still reconstructs
# held-out images of it as well as θ_G did still holds it.
# --------------------------------------------------------------------------------------------

RECOVER_STEPS, RECOVER_LR, RECOVER_MEAN_SAMPLES = 100, 0.1, 4096


def invert(g, targets, steps=RECOVER_STEPS, lr=RECOVER_LR, seed=0, features=None, feature_weight=0.0, desc=None,
           w_plus=True):
    """Reconstructions of `targets` ([N, 3, H, W] in [-1, 1]) by `g`: one W+ latent per image (or
    one W latent shared by every layer: far less freedom to draw what g does not make),
    from g's mean latent (over RECOVER_MEAN_SAMPLES seeded z), Adam at `lr` for `steps` steps on
    the pixel MSE (+ feature_weight · the MSE of `features(images)`), the noise maps fixed per image
    by `seed`; g's weights stay as they are. Returns (reconstructions, per-image pixel MSE)."""
    device = targets.device
    z = torch.randn(RECOVER_MEAN_SAMPLES, g.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        mean_w = g.style(z.to(device)).mean(0)
    w = mean_w.repeat(len(targets), g.n_latent if w_plus else 1, 1).requires_grad_(True)
    _, noise = seeded_inputs(g, range(len(targets)), seed)
    noise = [maps.to(device) for maps in noise] or None
    target_features = features(targets).detach() if feature_weight else None
    optimiser = torch.optim.Adam([w], lr=lr)
    trainable = [p for p in g.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        for _ in tqdm(range(steps), desc=desc, disable=desc is None, leave=False):
            images, _ = g([w.expand(-1, g.n_latent, -1)], input_is_latent=True, noise=noise)
            loss = (images - targets).pow(2).mean((1, 2, 3))
            if feature_weight:
                loss = loss + feature_weight * (features(images) - target_features).pow(2).mean(1)
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimiser.step()
        with torch.no_grad():
            images, _ = g([w.expand(-1, g.n_latent, -1)], input_is_latent=True, noise=noise)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return images.clamp(-1, 1), (images.clamp(-1, 1) - targets).pow(2).mean((1, 2, 3))
