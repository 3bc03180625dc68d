"""The GANs: StyleGAN2 (Karras et al., 2020) and the DC-GAN of the Table 4 comparison (GAN_ARCHS).

The module tree, parameter names and shapes are those of rosinality/stylegan2-pytorch for the same
(size, style_dim, n_mlp, channel_multiplier), so its checkpoints load with strict=True and give
the same images. Additions, all off by default:

* `channel_max` caps every layer's width, for small configurations that train on a CPU;
* the modulated convolution has two equal forms (see ModulatedConv2d); the cheaper one runs by
  default;
* for the few-shot baselines (fewshot.py): the generator's intermediate features
  (`return_features`) and RSSA's compressed latent space (`latent_compression`, a checkpoint's
  model_args records it).

    g = Generator(32, 128, 8, channel_max=128)
    images, _ = g([torch.randn(16, 128)])        # [16, 3, 32, 32], roughly in [-1, 1]
"""

import math
import random
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from op import FusedLeakyReLU, fused_leaky_relu, upfirdn2d


def channel_table(channel_multiplier=2, channel_max=512):
    """Feature maps per resolution: rosinality's table (config-f), capped at `channel_max`."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
             128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
             512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: min(ch, channel_max) for res, ch in table.items()}


def check_size(size):
    """Raise ValueError unless `size` is a resolution the networks support."""
    if not isinstance(size, int) or size < 4 or size > 1024 or size & (size - 1):
        raise ValueError(f"image size must be a power of two between 4 and 1024, got {size}")


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class PixelNorm(nn.Module):
    def forward(self, input):
        return input * torch.rsqrt(torch.mean(input ** 2, dim=1, keepdim=True) + 1e-8)


def make_kernel(k):
    """A normalised 2-D FIR kernel; a 1-D list means its outer product with itself."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


class Upsample(nn.Module):
    """2x upsampling with a FIR low-pass filter (gain factor**2 keeps the mean)."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, input):
        return upfirdn2d(input, self.kernel, up=self.factor, down=1, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor ** 2)
        self.pad = pad

    def forward(self, input):
        return upfirdn2d(input, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
    """Conv2d with the equalised learning rate: weights stored at unit variance, scaled at run time."""

    def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, input):
        return F.conv2d(input, self.weight * self.scale, bias=self.bias,
                        stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate and an optional fused leaky ReLU."""

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, input):
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(input, self.weight * self.scale), bias)
        return F.linear(input, self.weight * self.scale, bias=bias)


class ModulatedConv2d(nn.Module):
    """The StyleGAN2 convolution: per-sample weights scaled by the style, then demodulated.

    Two mathematically equal forms:

    * grouped (`fused=True`): build the [batch, out, in, k, k] modulated weights and run one
      grouped convolution with `groups=batch` — rosinality's default;
    * batched (`fused=False`): scale the input activations by the style, run one ordinary
      convolution with the shared weights for the whole batch, and scale the outputs by the
      demodulation coefficients. Convolution is linear in each input channel, so this equals the
      grouped form, and it is much cheaper: no per-sample weight tensor, one dense conv.

    `fused=None` (the default) uses the batched form.
    """

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True,
                 upsample=False, downsample=False, blur_kernel=(1, 3, 3, 1), fused=None):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        self.downsample = downsample

        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             upsample_factor=factor)
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))

        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate
        self.fused = fused

    def forward(self, input, style):
        style = self.modulation(style)  # [N, in]
        if self.fused:
            return self._forward_grouped(input, style)
        return self._forward_batched(input, style)

    def _conv(self, input, weight, groups=1):
        """The spatial part shared by both forms: plain, upsampling or downsampling conv."""
        if self.upsample:
            # conv_transpose2d wants [in, out/groups, k, k]
            n_out = weight.shape[0] // groups
            weight = weight.view(groups, n_out, -1, self.kernel_size, self.kernel_size)
            weight = weight.transpose(1, 2).reshape(-1, n_out, self.kernel_size, self.kernel_size)
            out = F.conv_transpose2d(input, weight, stride=2, groups=groups)
            return self.blur(out)
        if self.downsample:
            return F.conv2d(self.blur(input), weight, stride=2, groups=groups)
        return F.conv2d(input, weight, padding=self.padding, groups=groups)

    def _forward_batched(self, input, style):
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        out = self._conv(input * style[:, :, None, None], weight)
        if self.demodulate:
            # sum over (in, k, k) of (w * s)^2 = (w^2 summed over k, k) @ s^2
            demod = torch.rsqrt(style.square() @ weight.square().sum((2, 3)).t() + self.eps)
            out = out * demod[:, :, None, None]
        return out

    def _forward_grouped(self, input, style):
        batch, in_channel, height, width = input.shape
        weight = self.scale * self.weight * style.view(batch, 1, in_channel, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.square().sum([2, 3, 4]) + self.eps)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        weight = weight.view(batch * self.out_channel, in_channel, self.kernel_size, self.kernel_size)
        out = self._conv(input.reshape(1, batch * in_channel, height, width), weight, groups=batch)
        return out.view(batch, self.out_channel, *out.shape[2:])

    def extra_repr(self):
        return (f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, "
                f"upsample={self.upsample}, downsample={self.downsample}")


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image, noise=None):
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, input):
        return self.input.repeat(input.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
                 blur_kernel=(1, 3, 3, 1), demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    upsample=upsample, blur_kernel=blur_kernel, demodulate=demodulate)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, input, style, noise=None):
        return self.activate(self.noise(self.conv(input, style), noise=noise))


class ToRGB(nn.Module):
    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, input, style, skip=None):
        out = self.conv(input, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


class Generator(nn.Module):
    has_mapping = True  # the path-length regulariser acts on the mapped latents (gan.GANStep)
    has_batch_norm = False  # its buffers are fixed noise maps, which the EMA copy keeps

    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2, blur_kernel=(1, 3, 3, 1),
                 lr_mlp=0.01, channel_max=512, latent_compression=False):
        super().__init__()
        check_size(size)
        self.size = size
        self.style_dim = style_dim

        layers = [PixelNorm()]
        for _ in range(n_mlp):
            layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu"))
        self.style = nn.Sequential(*layers)

        self.channels = channel_table(channel_multiplier, channel_max)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept so the module tree matches rosinality's
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2 ** res, 2 ** res))

        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel

        self.n_latent = self.log_size * 2 - 2
        self.latent_compression = False
        if latent_compression:  # the values come from the checkpoint
            self.compress_latents(torch.zeros(style_dim, style_dim), torch.zeros(self.n_latent))

    @torch.no_grad()
    def compress_latents(self, projector, strength):
        """Sample from RSSA's compressed latent space from now on (Xiao et al., 2022, its
        Projection_module): each layer's w becomes s_l · ‖w‖ · Pw / ‖Pw‖ + (1 − s_l) · w, with P the
        projector [style_dim, style_dim] onto the span of target codes and s = `strength` [n_latent]."""
        if not self.latent_compression:
            self.latent_compression = True
            self.register_buffer("compression_projector", projector.clone())
            self.register_buffer("compression_strength", strength.clone())
        self.compression_projector.copy_(projector)
        self.compression_strength.copy_(strength)

    def layers(self):
        """The layers in forward order, as (layer name, [its parameter names]): the mapping
        network's linears, the constant input, then per resolution its styled convolutions (each with
        its modulation, noise strength and bias) and its ToRGB. CF-k and EU-k count from the end."""
        modules = [(f"style.{i}", self.style[i]) for i in range(1, len(self.style))]
        modules += [("input", self.input), ("conv1", self.conv1), ("to_rgb1", self.to_rgb1)]
        for i, to_rgb in enumerate(self.to_rgbs):
            modules += [(f"convs.{2 * i}", self.convs[2 * i]), (f"convs.{2 * i + 1}", self.convs[2 * i + 1]),
                        (f"to_rgbs.{i}", to_rgb)]
        return [(name, [f"{name}.{p}" for p, _ in module.named_parameters()]) for name, module in modules]

    def make_noise(self):
        device = self.input.input.device
        noises = [torch.randn(1, 1, 4, 4, device=device)]
        for i in range(3, self.log_size + 1):
            noises += [torch.randn(1, 1, 2 ** i, 2 ** i, device=device) for _ in range(2)]
        return noises

    @torch.no_grad()
    def mean_latent(self, n_latent):
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, input):
        return self.style(input)

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1,
                truncation_latent=None, input_is_latent=False, noise=None, randomize_noise=True,
                return_features=False):
        """Images from a list of one or two style inputs (two: style mixing at `inject_index`).

        Returns (images [N, 3, size, size], the W+ latents [N, n_latent, style_dim] or None); with
        `return_features`, (images, the output of every styled convolution in forward order:
        n_latent − 1 feature maps, which CDC and RSSA compare between generators).
        """
        if not input_is_latent:
            styles = [self.style(s) for s in styles]

        if noise is None:
            if randomize_noise:
                noise = [None] * self.num_layers
            else:
                noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) < 2:
            inject_index = self.n_latent
            latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1) if styles[0].ndim < 3 else styles[0]
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            latent = torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                                styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], 1)
        if self.latent_compression:
            projected = latent @ self.compression_projector  # P is symmetric
            projected = projected * (latent.norm(dim=2, keepdim=True) / projected.norm(dim=2, keepdim=True).clamp_min(1e-8))
            strength = self.compression_strength[:, None]
            latent = strength * projected + (1 - strength) * latent

        features = []  # filled only when asked, so that inference frees each map as it goes
        out = self.input(latent)
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        if return_features:
            features.append(out)
        skip = self.to_rgb1(out, latent[:, 1])

        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2],
                                                        noise[2::2], self.to_rgbs):
            out = conv1(out, latent[:, i], noise=noise1)
            if return_features:
                features.append(out)
            out = conv2(out, latent[:, i + 1], noise=noise2)
            if return_features:
                features.append(out)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2

        if return_features:
            return skip, features
        return (skip, latent) if return_latents else (skip, None)


# --------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------


class ConvLayer(nn.Sequential):
    def __init__(self, in_channel, out_channel, kernel_size, downsample=False,
                 blur_kernel=(1, 3, 3, 1), bias=True, activate=True):
        layers = []
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding,
                                  stride=stride, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_channel, out_channel, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False)

    def forward(self, input):
        out = self.conv2(self.conv1(input))
        return (out + self.skip(input)) / math.sqrt(2)


class Discriminator(nn.Module):
    def __init__(self, size, channel_multiplier=2, blur_kernel=(1, 3, 3, 1), channel_max=512):
        super().__init__()
        check_size(size)
        channels = channel_table(channel_multiplier, channel_max)

        convs = [ConvLayer(3, channels[size], 1)]
        in_channel = channels[size]
        for i in range(int(math.log2(size)), 2, -1):
            out_channel = channels[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)

        # minibatch standard deviation: one feature map over groups of up to 4 samples
        self.stddev_group = 4
        self.stddev_feat = 1

        self.final_conv = ConvLayer(in_channel + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activation="fused_lrelu"),
            EqualLinear(channels[4], 1),
        )

    def forward(self, input):
        out = self.convs(input)

        batch, channel, height, width = out.shape
        group = min(batch, self.stddev_group)
        if batch % group:
            raise ValueError(f"the discriminator needs a batch divisible by {group}, got {batch}")
        stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)
        stddev = stddev.repeat(group, 1, height, width)
        out = torch.cat([out, stddev], 1)

        out = self.final_conv(out)
        return self.final_linear(out.view(batch, -1))


# --------------------------------------------------------------------------------------------
# DC-GAN (Radford et al., 2016): the small GAN of the paper's Table 4 comparison
# --------------------------------------------------------------------------------------------


def dcgan_widths(size, channels):
    """Widths of the DC-GAN's feature maps at 4, 8, ..., size/2 px: `channels` at size/2, doubling
    toward 4 px (at 32 px and channels 64: 256, 128, 64)."""
    check_size(size)
    if size < 8:
        raise ValueError(f"the DC-GAN needs an image size of at least 8, got {size}")
    n = int(math.log2(size)) - 2
    return [channels * 2 ** (n - 1 - i) for i in range(n)]


class DCGANGenerator(nn.Module):
    """z [N, style_dim] -> images [N, 3, size, size] in [-1, 1]: a 4x4 transposed convolution from
    z, then stride-2 transposed convolutions, each but the last followed by batch norm and ReLU,
    and tanh. It answers the calls the stages make of a StyleGAN2 generator: `style` is the
    identity (z is the latent: truncation and inversion act on z), one latent per image
    (`n_latent` 1; of two style inputs only the first is drawn, so style mixing does nothing), no
    noise inputs, and `layers()` for CF-k and EU-k."""

    has_mapping = False  # no path-length regularisation (gan.GANStep)
    has_batch_norm = True  # the EMA copy takes g's running statistics (gan.accumulate)

    def __init__(self, size=32, style_dim=100, channels=64):
        super().__init__()
        self.size, self.style_dim, self.n_latent, self.num_layers = size, style_dim, 1, 0
        widths = dcgan_widths(size, channels)
        self.style = nn.Identity()
        blocks = [nn.Sequential(nn.ConvTranspose2d(style_dim, widths[0], 4, 1, 0, bias=False),
                                nn.BatchNorm2d(widths[0]), nn.ReLU(True))]
        for w_in, w_out in zip(widths, widths[1:]):
            blocks.append(nn.Sequential(nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False),
                                        nn.BatchNorm2d(w_out), nn.ReLU(True)))
        blocks.append(nn.Sequential(nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()))
        self.blocks = nn.Sequential(*blocks)
        for module in self.modules():  # the DC-GAN initialisation: N(0, 0.02), batch-norm scales N(1, 0.02)
            if isinstance(module, nn.ConvTranspose2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def layers(self):
        """The layers in forward order, as (layer name, [its parameter names]): each transposed
        convolution with its batch norm is one layer."""
        return [(f"blocks.{i}", [f"blocks.{i}.{p}" for p, _ in block.named_parameters()])
                for i, block in enumerate(self.blocks)]

    def make_noise(self):
        return []

    @torch.no_grad()
    def mean_latent(self, n_latent):
        return torch.randn(n_latent, self.style_dim, device=self.blocks[0][0].weight.device).mean(0, keepdim=True)

    def get_latent(self, input):
        return input

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1,
                truncation_latent=None, input_is_latent=False, noise=None, randomize_noise=True):
        """Images from the first of `styles` (z [N, style_dim], or [N, 1, style_dim]); returns
        (images, the latents [N, 1, style_dim] or None), as Generator.forward."""
        latent = styles[0] if styles[0].ndim == 3 else styles[0].unsqueeze(1)
        if truncation < 1:
            latent = truncation_latent.reshape(1, 1, -1) + truncation * (latent - truncation_latent.reshape(1, 1, -1))
        images = self.blocks(latent[:, 0, :, None, None])
        return (images, latent) if return_latents else (images, None)


class DCGANDiscriminator(nn.Module):
    """images [N, 3, size, size] -> logits [N, 1]: stride-2 convolutions with leaky ReLU (0.2),
    batch norm on all but the first, then a 4x4 convolution to one logit."""

    def __init__(self, size=32, channels=64):
        super().__init__()
        widths = dcgan_widths(size, channels)[::-1]  # size/2 px first
        layers = [nn.Conv2d(3, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, input):
        return self.net(input).reshape(len(input), 1)


class GANArch(NamedTuple):
    generator: type
    discriminator: type
    defaults: dict            # every constructor argument of the generator, with its default
    discriminator_args: tuple  # those the discriminator takes too


# the architectures a GAN checkpoint's model_args["arch"] can name (absent: stylegan2)
GAN_ARCHS = {
    "stylegan2": GANArch(Generator, Discriminator,
                         dict(size=32, style_dim=128, n_mlp=8, channel_multiplier=2, channel_max=512,
                              latent_compression=False),
                         ("size", "channel_multiplier", "channel_max")),
    "dcgan": GANArch(DCGANGenerator, DCGANDiscriminator, dict(size=32, style_dim=100, channels=64), ("size", "channels")),
}
