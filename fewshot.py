"""The few-shot adaptation baselines of the paper's tables, applied to the positive samples:
CDC (Ojha et al., 2021, "Few-shot image generation via cross-domain correspondence") and RSSA
(Xiao et al., 2022, "Few shot generative model adaption via relaxed spatial structural alignment").

Both adapt a generator G_t, initialised at the source G_s = θ_G (kept frozen), with

* CDC's anchored adversarial schedule (AnchoredPatchAdversary; RSSA's code keeps it): every
  `anchor_every`-th step samples near a few fixed anchor latents and is judged by the whole
  discriminator, every other step samples freely and is judged patch by patch;
* a term that keeps G_t's intermediate features structured like G_s's at the same latents:
  CDC's cross-domain distance consistency (CDCTerm), or RSSA's self-correlation and disturbance
  correlation consistency (RSSATerm) on RSSA's compressed latent space (compression_strengths,
  compression_projector, model.Generator.compress_latents).

The weights and schedules are those of the authors' code for few-shot adaptation (below); each
function names the paper's term it is (by its symbol: the papers' full text could not be read
here, their code could). Both papers' generators are 256 px; where their code picks feature maps
by absolute size, these pick them by the same fraction of the image size.
"""

import math

import torch
from torch.nn import functional as F

import model
from gan import mixing_noise

# CDC's train.py defaults, which RSSA's train_*_proj.py keep
CDC_WEIGHT = 1000.0    # --kl_wt
FEATURE_BATCH = 4      # --feat_const_batch: latents per consistency term
ANCHOR_EVERY = 4       # --subspace_freq
ANCHOR_STD = 0.1       # --subspace_std
PATCH_RES = 32         # the 32 px features of its 256 px discriminator (Patch_Discriminator, p_ind 0)
# RSSA's train_face_proj.py
SCC_WEIGHT = 0.8
DCC_WEIGHT = 0.4
DCC_EVERY = 6          # --dis_corr_freq
DISTURBANCE = 0.15     # z = 0.85 z_anchor + 0.15 z_n
# Projection_module: the share s_l of the compressed code in each of its 14 W+ layers
RSSA_STRENGTH_14 = (0, 0, 0, 0.05, 0.05, 0.05, 0.05, 0.45, 0.45, 0.65, 0.65, 0.85, 0.85, 0.85)


def similarity_rows(features, layer_of):
    """CDC's similarity vector y_i^l before its softmax: for each latent i of the batch, the cosine similarities of
    its feature map at layer layer_of[i] to those of the other latents, [N, N − 1]."""
    rows = []
    for i, layer in enumerate(layer_of):
        flat = features[layer].flatten(1)
        sim = F.cosine_similarity(flat[i:i + 1], flat, dim=1)
        rows.append(torch.cat([sim[:i], sim[i + 1:]]))
    return torch.stack(rows)


def distance_consistency_loss(source_features, target_features, layer_of, weight=CDC_WEIGHT):
    """CDC's cross-domain distance consistency L_dist: y_i = softmax of similarity_rows for G_s and
    for G_t, and weight · mean_{i,j} y_s,ij (log y_s,ij − log y_t,ij). As CDC's code (nn.KLDivLoss,
    mean over the N(N − 1) entries), this is KL(y_s ‖ y_t), the reverse of the paper's
    D_KL(y_{s→t} ‖ y_s)."""
    log_p_source = similarity_rows(source_features, layer_of).log_softmax(1)
    log_p_target = similarity_rows(target_features, layer_of).log_softmax(1)
    return weight * (log_p_source.exp() * (log_p_source - log_p_target)).mean()


def window_vectors(features, window):
    """[N, C, H, W] -> [N, P, window², C]: the channel vectors of each of the P non-overlapping
    window x window patches, row-major."""
    n, c = features.shape[:2]
    unfolded = F.unfold(features, window, stride=window)  # [N, C·window², P]
    return unfolded.reshape(n, c, window * window, -1).permute(0, 3, 2, 1)


def self_correlation_loss(source_features, target_features, size):
    """RSSA's cross-domain self-correlation consistency L_scc, as its code: for every
    feature map at a quarter of the image size or more, channel-normalised and 2x2 average-pooled,
    the dot products between positions inside each window of a quarter of its side (the pooled
    map cut into 2x2 windows, then once more offset by half a window), G_t's against G_s's by the
    smooth L1 loss (mean), summed over maps and both window grids."""
    loss = 0.0
    for f_source, f_target in zip(source_features, target_features):
        if f_source.shape[-1] < size // 4:
            continue
        pooled = F.avg_pool2d(F.normalize(torch.cat([f_source, f_target]), dim=1), 2)
        half = pooled.shape[-1]
        window, offset = half // 2, half // 4
        for grid in (pooled, pooled[:, :, offset:half - offset, offset:half - offset]):
            vectors = window_vectors(grid, window)
            sim_source, sim_target = (vectors @ vectors.transpose(2, 3)).chunk(2)
            loss = loss + F.smooth_l1_loss(sim_target, sim_source)
    return loss


def disturbance_correlation_loss(source_features, target_features, size):
    """RSSA's cross-domain disturbance correlation consistency L_dcc, as its code: on
    the feature maps up to the first at half the image size, channel-normalised (those of a quarter
    of the size or more cut into 4x4 windows, smaller ones whole), for every pair (j, k) of the
    batch and every position a of j: softmax_b ⟨f_j(a), f_k(b)⟩ over the positions b of k, G_t's
    against G_s's by the L1 distance of the two distributions; averaged over pairs, windows and
    positions a, summed over maps."""
    loss = 0.0
    n = len(source_features[0])
    pairs = torch.triu_indices(n, n, offset=1, device=source_features[0].device)
    for f_source, f_target in zip(source_features, target_features):
        res = f_source.shape[-1]
        if res > size // 2:
            continue
        feats = F.normalize(torch.cat([f_source, f_target]), dim=1)
        vectors = window_vectors(feats, res // 4 if res >= size // 4 else res)  # [2N, P, w², C]
        corr = (vectors[pairs[0]] @ vectors[pairs[1]].transpose(2, 3)).softmax(3)
        corr = torch.cat([corr, (vectors[n + pairs[0]] @ vectors[n + pairs[1]].transpose(2, 3)).softmax(3)])
        corr_source, corr_target = corr.chunk(2)
        loss = loss + (corr_source - corr_target).abs().sum(3).mean()
        if res == size // 2:
            break
    return loss


def compression_strengths(n_latent):
    """RSSA's per-layer share of the compressed code, RSSA_STRENGTH_14 read at the same relative
    depth for a generator of `n_latent` W+ layers."""
    return torch.tensor([RSSA_STRENGTH_14[layer * 14 // n_latent] for layer in range(n_latent)])


def compression_projector(codes):
    """RSSA's latent-space compression (its Projection_module): the orthogonal projector
    A (AᵀA)⁻¹ Aᵀ onto the span of the target codes A = codes [K, style_dim] (a pseudo-inverse, so
    that dependent codes work)."""
    a = codes.double().T
    return (a @ torch.linalg.pinv(a)).float()


def patch_resolution(size):
    """Where the patch head reads D: CDC's 32 px (of 256), and a quarter of the image size (at
    least 4 px) below 128 px, where 32 px would be the whole image."""
    return max(4, min(PATCH_RES, size // 4))


class PatchDiscriminator(torch.nn.Module):
    """CDC's patch-level discriminator (Ojha et al., 2021, its Patch_Discriminator with Extra):
    `d` as it is, and `patches(images)`: d's features at `patch_res` px (the second convolution of
    the residual block that reaches it) through a 3x3 convolution with leaky ReLU, as CDC's head,
    to one logit per patch, [N, patch_res²]."""

    def __init__(self, d, size, patch_res):
        super().__init__()
        self.d = d
        self.block = int(math.log2(size // patch_res))
        if not (2 ** self.block * patch_res == size and 1 <= self.block < len(d.convs)):
            raise ValueError(f"no residual block of a {size} px discriminator ends at {patch_res} px "
                             f"(a power of two from 4 to {size // 2})")
        self.head = model.ConvLayer(d.convs[self.block].conv2[1].weight.shape[0], 1, 3)

    def forward(self, input):
        return self.d(input)

    def patches(self, input):
        block = self.d.convs[self.block]
        return self.head(block.conv2(block.conv1(self.d.convs[:self.block](input)))).flatten(1)


class AnchoredPatchAdversary:
    """CDC's relaxed realism L'_adv (anchor regions judged by the image-level discriminator, the
    rest of the latent space by the patch-level one), on its train.py schedule: on steps ≡ 0
    (mod anchor_every) both the discriminator and the generator step sample latents near
    `anchors` [A, style_dim] (an anchor per sample, plus N(0, std²) noise) and the whole
    discriminator judges; on the other steps latents are drawn as usual and `d.patches`
    (PatchDiscriminator) judges."""

    def __init__(self, anchors, mixing, anchor_every=ANCHOR_EVERY, std=ANCHOR_STD):
        self.anchors, self.mixing, self.anchor_every, self.std = anchors, mixing, anchor_every, std

    def latents(self, batch, step):
        if step % self.anchor_every == 0:
            index = torch.randint(len(self.anchors), (batch,), device=self.anchors.device)
            return [self.anchors[index] + self.std * torch.randn_like(self.anchors[index])]
        return mixing_noise(batch, self.anchors.shape[1], self.mixing, self.anchors.device)

    def discriminate(self, d, images, step):
        return d(images) if step % self.anchor_every == 0 else d.patches(images)


class CDCTerm:
    """The generator's extra loss of CDC: distance_consistency_loss between the frozen `source`
    and the trained generator at FEATURE_BATCH fresh latents, each compared at a random layer of
    the styled convolutions but the first (CDC's feat_ind)."""

    def __init__(self, source, weight=CDC_WEIGHT):
        self.source, self.weight = source, weight

    def __call__(self, g, step):
        z = torch.randn(FEATURE_BATCH, g.style_dim, device=self.source.input.input.device)
        layer_of = torch.randint(1, g.n_latent - 1, (FEATURE_BATCH,)).tolist()
        with torch.no_grad():
            _, source_features = self.source([z], return_features=True)
        _, target_features = g([z], return_features=True)
        return distance_consistency_loss(source_features, target_features, layer_of, self.weight)


class RSSATerm:
    """The generator's extra loss of RSSA: SCC_WEIGHT · self_correlation_loss at FEATURE_BATCH
    fresh latents every step, + DCC_WEIGHT · disturbance_correlation_loss every DCC_EVERY-th step
    at FEATURE_BATCH disturbances 0.85 z + 0.15 z_n of one latent z (RSSA's code draws them, then
    passes the z_n; we pass the disturbed latents its paper describes); the generators' fixed
    noise maps, as its code. Both generators hold the compressed latent space, so both terms see
    compressed latents (RSSA's code feeds L_dcc uncompressed ones)."""

    def __init__(self, source):
        self.source = source

    def features(self, g, z):
        with torch.no_grad():
            _, source_features = self.source([z], return_features=True, randomize_noise=False)
        _, target_features = g([z], return_features=True, randomize_noise=False)
        return source_features, target_features

    def __call__(self, g, step):
        device = self.source.input.input.device
        z = torch.randn(FEATURE_BATCH, g.style_dim, device=device)
        loss = SCC_WEIGHT * self_correlation_loss(*self.features(g, z), g.size)
        if step % DCC_EVERY == 0:
            z_n = torch.randn(FEATURE_BATCH, g.style_dim, device=device)
            z = (1 - DISTURBANCE) * torch.randn(1, g.style_dim, device=device) + DISTURBANCE * z_n
            loss = loss + DCC_WEIGHT * disturbance_correlation_loss(*self.features(g, z), g.size)
        return loss
