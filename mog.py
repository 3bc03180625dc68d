"""The 2-D mixture of Gaussians of mog_toy.py: the data, the batched MLP networks, the scores
of a generator's samples, and the Figure 1c layout. Nothing here knows the method (method.py)
or the stages (mog_toy.py)."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

MMD_BANDWIDTHS = (1.0, 4.0, 20.0)  # Gaussian kernel widths, in units of the modes' std


# ----------------------------------------------------------------------------------- data


def mode_centers(n_modes, radius):
    angles = torch.arange(n_modes, dtype=torch.float32) * (2 * math.pi / n_modes)
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # [M, 2]


def sample_mixture(n, centers, std, generator=None):
    """n points from the equal-weight mixture of isotropic Gaussians at `centers`."""
    modes = torch.randint(len(centers), (n,), generator=generator)
    return centers[modes] + std * torch.randn(n, 2, generator=generator)


def nearest_mode(points, centers):
    """Index of the nearest centre and the distance to it, for points [N, 2]."""
    dist = torch.cdist(points, centers)  # [N, M]
    distance, index = dist.min(dim=1)
    return index, distance


# ----------------------------------------------------------------------------------- networks


class MLPCopies(torch.nn.Module):
    """`copies` independent MLPs, run together with one batched matmul per layer.

    Parameters have a leading copy axis ([copies, fan_in, fan_out]); copies never interact, so k
    adapted generators (or k discriminators) train in one loop, each with its own Adam moments.
    """

    def __init__(self, sizes, negative_slope, copies=1):
        super().__init__()
        self.sizes = list(sizes)
        self.negative_slope = negative_slope
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation range
            self.weights.append(torch.nn.Parameter(torch.empty(copies, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(torch.nn.Parameter(torch.empty(copies, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, x):  # [copies, N, in] -> [copies, N, out]
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if layer < len(self.weights) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        return x

    def replicate(self, copies):
        """A new MLPCopies with `copies` copies of copy 0 of this one."""
        clone = MLPCopies(self.sizes, self.negative_slope, copies)
        with torch.no_grad():
            for target, source in zip(clone.parameters(), self.parameters()):
                target.copy_(source[:1].expand_as(target))
        return clone

    def copy_state(self, index):
        """Copy `index` as a one-copy state dict."""
        return {name: value[index:index + 1].detach().clone() for name, value in self.state_dict().items()}


# ----------------------------------------------------------------------------------- scores


def mmd2_unbiased(x, y, bandwidths, block=1000):
    """Unbiased MMD² between point sets x and y [N, 2], with the mean of the Gaussian kernels
    exp(−‖a − b‖² / (2σ²)) over `bandwidths` σ (so k(a, a) = 1).

    The pairs are taken within disjoint blocks of `block` points of x and of y (an incomplete
    U-statistic): still unbiased and using every point, at a tenth of the cost of all pairs for
    10,000 points. Blocks of a smaller x or y are cut to the smaller size.
    """
    def kernel_mean(a, b, same):
        sq = torch.cdist(a, b).square_()  # [block, block]
        total = sum(torch.exp(sq * (-0.5 / (s * s))).sum(dtype=torch.float64) for s in bandwidths)
        total = total / len(bandwidths)
        return (total - len(a)) / (len(a) * (len(a) - 1)) if same else total / (len(a) * len(b))

    size = min(block, len(x), len(y))
    estimates = []
    for start in range(0, min(len(x), len(y)) - size + 1, size):
        a, b = x[start:start + size], y[start:start + size]
        estimates.append(kernel_mean(a, a, True) + kernel_mean(b, b, True) - 2 * kernel_mean(a, b, False))
    return float(torch.stack(estimates).mean())


def sample_metrics(samples, centers, negative_modes, std, reference, negatives_before=None):
    """Scores of one generator's samples [N, 2] (all in %, except counts and mmd2).

    A sample is negative when its nearest mode is negative, and high-quality (HQ) when it lies
    within 3·std of its nearest mode. pul = 100·(neg_before − neg_after)/neg_before, pul_hq the
    same counting only HQ negatives (before = `negatives_before`, else these samples: 0);
    modes_covered = positive modes holding >= 2% of all samples as HQ samples (and
    negative_modes_covered the same for the negative modes); mmd2 to `reference`.
    """
    n = len(samples)
    index, distance = nearest_mode(samples, centers)
    high_quality = distance <= 3 * std
    is_negative = negative_modes[index]
    negatives = int(is_negative.sum())
    negatives_hq = int((is_negative & high_quality).sum())
    before = negatives_before or {"negatives": negatives, "negatives_hq": negatives_hq}
    hq_per_mode = torch.bincount(index[high_quality], minlength=len(centers))
    covered = hq_per_mode >= 0.02 * n
    pul = lambda before_, after: 100.0 * (before_ - after) / before_ if before_ > 0 else None
    return {
        "pul": pul(before["negatives"], negatives),
        "pul_hq": pul(before["negatives_hq"], negatives_hq),
        "hq": 100.0 * high_quality.float().mean().item(),
        "modes_covered": int(covered[~negative_modes].sum()),
        "negative_modes_covered": int(covered[negative_modes].sum()),
        "mmd2": mmd2_unbiased(samples, reference, [b * std for b in MMD_BANDWIDTHS]),
        "negatives": negatives,
        "negatives_hq": negatives_hq,
    }


# ----------------------------------------------------------------------------------- figure

# ----------------------------------------------------------------------------------- figure

COLORS = {"data": (175, 175, 175), "negative": (240, 140, 140), "positive": (140, 205, 140),
          "samples": (25, 60, 200), "adapted": (140, 30, 10)}


def scatter_panel(layers, extent, size):
    """A square scatter plot over [−extent, extent]² of layers [(points [N, 2], rgb, dot size)],
    drawn in order (later layers on top)."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    canvas[[0, -1], :] = canvas[:, [0, -1]] = 120  # frame
    for points, color, dot in layers:
        centre = np.rint((points.numpy() / extent + 1) / 2 * (size - 1)).astype(int)  # [N, (x, y)]
        corner = centre - dot // 2
        corner = corner[((corner >= 0) & (corner <= size - dot)).all(axis=1)]
        for dx in range(dot):
            for dy in range(dot):
                canvas[size - 1 - corner[:, 1] - dy, corner[:, 0] + dx] = color
    return Image.fromarray(canvas)


def make_figure(rows, extent, size=240, n_points=1500):
    """Figure 1c's layout, one row per result: rows = [(label, [layers] * 3, caption)]."""
    font = ImageFont.load_default()
    label_w, head_h, caption_h = 130, 36, 18
    titles = [("data (grey)", "+ pre-trained G (blue)"), ("negatives (red)", "+ adapted G, k copies (brown)"),
              ("positives (green)", "+ result (blue)")]
    figure = Image.new("RGB", (label_w + 3 * size, head_h + len(rows) * (size + caption_h)), "white")
    draw = ImageDraw.Draw(figure)
    for column, lines in enumerate(titles):
        for line_index, line in enumerate(lines):
            draw.text((label_w + column * size + 6, 4 + 14 * line_index), line, fill="black", font=font)
    for row, (label, panels, caption) in enumerate(rows):
        top = head_h + row * (size + caption_h)
        draw.text((6, top + size // 2), label, fill="black", font=font)
        for column, layers in enumerate(panels):
            layers = [(points[:n_points], color, dot) for points, color, dot in layers]
            figure.paste(scatter_panel(layers, extent, size), (label_w + column * size, top))
        draw.text((label_w + 2 * size + 6, top + size + 3), caption, fill="black", font=font)
    return figure
