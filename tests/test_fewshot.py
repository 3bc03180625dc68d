"""CDC's and RSSA's terms against hand computations and loop-by-loop references; the patch-level
discriminator, the anchored schedule and RSSA's compressed latent space."""

import copy
import math

import pytest
import torch
from torch.nn import functional as F

import fewshot
import gan
import model
import unlearn


def features(*vectors):
    """One feature map [N, C, 1, 1] from N channel vectors."""
    return torch.tensor(vectors, dtype=torch.float32)[:, :, None, None]


def test_distance_consistency_by_hand():
    """CDC: cosines source (0, 1/√2 | 0, 1/√2 | 1/√2, 1/√2), target (1, 0 | 1, 0 | 0, 0); rows
    softmaxed; weight · the mean over the 6 entries of p_s (log p_s − log p_t)."""
    ignored = features([5.0, 1.0], [2.0, 3.0], [1.0, 9.0])  # layer 0: no latent is compared there
    source = [ignored, features([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])]
    target = [ignored, features([1.0, 0.0], [2.0, 0.0], [0.0, 3.0])]
    a = 1 / math.sqrt(2)
    p_s = [1 / (1 + math.exp(a)), math.exp(a) / (1 + math.exp(a))]
    p_t = [math.e / (1 + math.e), 1 / (1 + math.e)]
    row = sum(p * math.log(p / q) for p, q in zip(p_s, p_t))  # rows 0 and 1; row 2 is 0 (both uniform)
    loss = fewshot.distance_consistency_loss(source, target, [1, 1, 1], weight=1000.0)
    assert float(loss) == pytest.approx(1000.0 * 2 * row / 6, rel=1e-5)
    same = fewshot.distance_consistency_loss(source, source, [1, 1, 1])
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_distance_consistency_compares_each_latent_at_its_own_layer():
    torch.manual_seed(0)
    source = [torch.randn(4, 3, 2, 2) for _ in range(3)]
    target = [torch.randn(4, 3, 2, 2) for _ in range(3)]
    layer_of = [2, 0, 1, 2]
    rows_s, rows_t = fewshot.similarity_rows(source, layer_of), fewshot.similarity_rows(target, layer_of)
    for i, layer in enumerate(layer_of):
        others = [j for j in range(4) if j != i]
        expected = [F.cosine_similarity(source[layer][i].flatten(), source[layer][j].flatten(), dim=0) for j in others]
        assert torch.allclose(rows_s[i], torch.stack(expected), atol=1e-6)
    p_s, p_t = rows_s.softmax(1), rows_t.softmax(1)
    expected = (p_s * (p_s / p_t).log()).mean() * 7.0
    assert float(fewshot.distance_consistency_loss(source, target, layer_of, 7.0)) == pytest.approx(float(expected), rel=1e-5)


def test_self_correlation_by_hand():
    """RSSA's SCC on a 4x4 map of a size-8 generator: pooled to 2x2, windows of one position, so each
    'self-similarity' is ‖pooled vector‖²: 1 for the source (every vector (1, 0)), 0.5 for the target
    (each 2x2 block half (1, 0), half (0, 1)); smooth L1 of 0.5 is 0.125, over both window grids."""
    source = torch.zeros(1, 2, 4, 4)
    source[:, 0] = 3.0
    target = torch.zeros(1, 2, 4, 4)
    target[:, 0, 0::2] = 2.0  # rows 0 and 2 point along channel 0, rows 1 and 3 along channel 1
    target[:, 1, 1::2] = 5.0
    loss = fewshot.self_correlation_loss([source], [target], size=8)
    assert float(loss) == pytest.approx(0.25, rel=1e-6)


def scc_reference(f_source, f_target, size):
    """SCC, window by window with explicit indices."""
    total = 0.0
    for fs, ft in zip(f_source, f_target):
        res = fs.shape[-1]
        if res < size // 4:
            continue
        maps = [F.avg_pool2d(F.normalize(f, dim=1), 2) for f in (fs, ft)]
        half = res // 2
        w, o = half // 2, half // 4
        for corners in ([(r, c) for r in range(0, half, w) for c in range(0, half, w)], [(o, o)]):
            diffs = []
            for r, c in corners:
                grams = []
                for m in maps:
                    vectors = m[:, :, r:r + w, c:c + w].reshape(m.shape[0], m.shape[1], -1).transpose(1, 2)
                    grams.append(vectors @ vectors.transpose(1, 2))
                diffs.append(grams[1] - grams[0])
            diff = torch.stack(diffs)
            total += float(torch.where(diff.abs() < 1, 0.5 * diff ** 2, diff.abs() - 0.5).mean())
    return total


def test_self_correlation_matches_window_by_window_reference():
    torch.manual_seed(1)
    size = 32
    source = [torch.randn(2, 3, r, r) for r in (4, 8, 16, 32)]  # the 4 px map is below a quarter: ignored
    target = [torch.randn(2, 3, r, r) for r in (4, 8, 16, 32)]
    loss = fewshot.self_correlation_loss(source, target, size)
    assert float(loss) == pytest.approx(scc_reference(source, target, size), rel=1e-5)
    target[0] = torch.randn(2, 3, 4, 4)
    assert float(fewshot.self_correlation_loss(source, target, size)) == pytest.approx(float(loss), rel=1e-6)


def dcc_reference(f_source, f_target, size):
    """DCC as RSSA's code weighs it (batch 4): per anchor j, the L1 mean over the pairs (j, k > j),
    windows, positions a and b, times (N − 1 − j) · (positions per window); summed, divided by 6."""
    total, n = 0.0, 4
    for fs, ft in zip(f_source, f_target):
        res = fs.shape[-1]
        if res > size // 2:
            continue
        w = res // 4 if res >= size // 4 else res
        corners = [(r, c) for r in range(0, res, w) for c in range(0, res, w)]
        fs, ft = F.normalize(fs, dim=1), F.normalize(ft, dim=1)
        for j in range(n - 1):
            diffs = []
            for k in range(j + 1, n):
                for r, c in corners:
                    dist = []
                    for f in (fs, ft):
                        a = f[j, :, r:r + w, c:c + w].reshape(f.shape[1], -1).T
                        b = f[k, :, r:r + w, c:c + w].reshape(f.shape[1], -1)
                        dist.append((a @ b).softmax(1))
                    diffs.append((dist[0] - dist[1]).abs())
            total += float(torch.stack(diffs).mean()) * (n - 1 - j) * w * w
        if res == size // 2:
            break
    return total / 6


def test_disturbance_correlation_matches_rssa_weighting():
    torch.manual_seed(2)
    size = 32
    resolutions = (4, 8, 8, 16, 16, 32)  # the maps after the first 16 px one are not used
    source = [torch.randn(4, 3, r, r) for r in resolutions]
    target = [torch.randn(4, 3, r, r) for r in resolutions]
    loss = fewshot.disturbance_correlation_loss(source, target, size)
    assert float(loss) == pytest.approx(dcc_reference(source, target, size), rel=1e-5)
    target[4], target[5] = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 32, 32)
    assert float(fewshot.disturbance_correlation_loss(source, target, size)) == pytest.approx(float(loss), rel=1e-6)
    assert float(fewshot.disturbance_correlation_loss(source, source, size)) == pytest.approx(0.0, abs=1e-6)


def test_disturbance_correlation_by_hand():
    """RSSA's DCC on one pair, a 2x2 one-channel map (whole, below a quarter of 32 px): the source
    pair is all +1, so every position of sample 0 correlates 1 with each of sample 1's: softmax
    uniform. The target's sample 1 is (1, −1, −1, −1): softmax (e, 1/e, 1/e, 1/e) / (e + 3/e). The
    loss is the L1 distance of the two distributions, the same for every position of sample 0."""
    ones = torch.ones(2, 1, 2, 2)
    target = ones.clone()
    target[1, 0] = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
    total = math.e + 3 / math.e
    expected = abs(math.e / total - 0.25) + 3 * abs(1 / math.e / total - 0.25)
    loss = fewshot.disturbance_correlation_loss([ones], [target], size=32)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_compression_strengths_and_projector():
    assert fewshot.compression_strengths(14).tolist() == pytest.approx(list(fewshot.RSSA_STRENGTH_14))
    assert fewshot.compression_strengths(8).tolist() == pytest.approx([0, 0, 0.05, 0.05, 0.45, 0.45, 0.65, 0.85])
    projector = fewshot.compression_projector(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 1.0, 0.0]]))
    assert torch.allclose(projector, torch.diag(torch.tensor([1.0, 1.0, 0.0])), atol=1e-6)


def test_the_generator_samples_from_the_compressed_latent_space():
    """Each layer's w becomes s_l · ‖w‖ · Pw / ‖Pw‖ + (1 − s_l) · w; a fresh generator built with
    latent_compression=True takes the same values from the state dict."""
    torch.manual_seed(3)
    g = model.Generator(8, 3, 1, channel_max=8)
    projector, strength = torch.diag(torch.tensor([1.0, 1.0, 0.0])), torch.tensor([0.0, 0.5, 1.0, 0.25])
    w = torch.tensor([[3.0, 0.0, 4.0]])
    _, plain = g([w], input_is_latent=True, return_latents=True)
    g.compress_latents(projector, strength)
    images, latents = g([w], input_is_latent=True, return_latents=True, randomize_noise=False)
    on_plane = torch.tensor([5.0, 0.0, 0.0])  # Pw = (3, 0, 0) scaled to ‖w‖ = 5
    for layer, s in enumerate(strength):
        assert torch.allclose(latents[0, layer], s * on_plane + (1 - s) * w[0], atol=1e-6)
    assert torch.equal(plain[0, 0], w[0])
    fresh = model.Generator(8, 3, 1, channel_max=8, latent_compression=True)
    fresh.load_state_dict(g.state_dict())
    assert torch.allclose(fresh([w], input_is_latent=True, randomize_noise=False)[0], images)


def test_the_features_are_those_of_every_styled_convolution():
    g = model.Generator(16, 8, 1, channel_max=8)
    z = torch.randn(2, 8)
    images, feats = g([z], return_features=True, randomize_noise=False)
    assert [f.shape[-1] for f in feats] == [4, 8, 8, 16, 16] and len(feats) == g.n_latent - 1
    assert torch.equal(images, g([z], randomize_noise=False)[0])


def test_patch_logits_see_only_their_neighbourhood():
    """One logit per 16 px patch of a 64 px image; changing the top-left corner moves the whole-image
    logit and the patches near it, not those across the image."""
    torch.manual_seed(4)
    d = model.Discriminator(64, channel_max=8)
    patch_d = fewshot.PatchDiscriminator(d, 64, 16)
    x = torch.randn(4, 3, 64, 64)
    y = x.clone()
    y[:, :, :4, :4] += 1.0
    with torch.no_grad():
        before, after = patch_d.patches(x).reshape(4, 16, 16), patch_d.patches(y).reshape(4, 16, 16)
        assert torch.equal(patch_d(x), d(x)) and not torch.equal(d(x), d(y))
    assert not torch.allclose(before[:, 0, 0], after[:, 0, 0])
    assert torch.equal(before[:, 8:, 8:], after[:, 8:, 8:])
    with pytest.raises(ValueError, match="no residual block"):
        fewshot.PatchDiscriminator(d, 64, 64)


def test_the_anchored_schedule():
    """Steps ≡ 0 (mod 4): latents near the anchors and the whole discriminator; others: free latents
    (with mixing when asked) and the patch logits."""
    torch.manual_seed(5)
    anchors = 10 * torch.randn(3, 16)
    adversary = fewshot.AnchoredPatchAdversary(anchors, mixing=1.0)
    (near,) = adversary.latents(64, 8)
    gap = torch.cdist(near, anchors).min(1).values
    assert gap.max() < 1.0 and gap.mean() == pytest.approx(0.1 * 4, rel=0.15)  # std 0.1 · √16
    free = adversary.latents(64, 9)
    assert len(free) == 2 and torch.cdist(free[0], anchors).min(1).values.min() > 5

    class Judge:
        def __call__(self, images):
            return "image"

        def patches(self, images):
            return "patches"
    assert [adversary.discriminate(Judge(), None, step) for step in range(5)] == ["image"] + ["patches"] * 3 + ["image"]


def test_the_gan_step_routes_every_pass_through_the_hooks():
    """D's real and fake passes, its R1 pass and G's pass all go through `discriminate` with the
    step, and both generated batches come from `latents`: what CDC's schedule relies on."""
    torch.manual_seed(6)
    g, d = model.Generator(8, 8, 1, channel_max=8), model.Discriminator(8, channel_max=8)
    g_ema = copy.deepcopy(g)
    args = unlearn.create_argparser().parse_args(["--ckpt", "x", "--feedback", "x", "--batch", "4"])
    calls = []

    def latents(batch, step):
        calls.append(("latents", step))
        return [torch.zeros(batch, 8)]

    def discriminate(d, images, step):
        calls.append(("judge", step, images.requires_grad))
        return d(images)
    g_optim, d_optim = gan.make_optimizers(g, d, args)
    step = gan.GANStep(g, d, g_ema, args, g_optim, d_optim, latents=latents, discriminate=discriminate)
    step(torch.randn(4, 3, 8, 8), 16)  # a step with R1 (d_reg_every 16)
    assert [c[:2] for c in calls] == [("latents", 16), ("judge", 16), ("judge", 16), ("judge", 16),
                                      ("latents", 16), ("judge", 16)]
    assert calls[3][2]  # the R1 pass sees the real images with their gradient on


@pytest.mark.parametrize("term_of", [fewshot.CDCTerm, fewshot.RSSATerm])
def test_the_consistency_terms_vanish_at_the_source_and_train_only_the_target(term_of):
    """At G_t = G_s the term is 0 (a fresh generator's noise strengths are 0, so CDC's random noise
    does not matter); once G_t moves it is positive, and its gradient reaches G_t, never G_s."""
    torch.manual_seed(7)
    g = model.Generator(32, 8, 1, channel_max=8)
    source = copy.deepcopy(g).requires_grad_(False)
    term = term_of(source)
    for step in (0, 1):
        assert float(term(g, step).detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for conv in g.convs:
            conv.conv.weight.add_(0.3 * torch.randn_like(conv.conv.weight))
    loss = term(g, 0)
    loss.backward()
    assert float(loss.detach()) > 1e-4
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g.convs.parameters())
    assert all(p.grad is None for p in source.parameters())
