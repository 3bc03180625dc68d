import argparse
import json
import os

import pytest
import torch

import checkpoint
import model
import utils
from model import Discriminator, Generator, ModulatedConv2d

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS_FIXTURE = os.path.join(HERE, "..", "..", "shared", "fixtures", "rosinality_state_dict_keys.json")
TINY = dict(size=16, style_dim=32, n_mlp=2, channel_max=32)


def perturbed(*nets, seed=1, std=0.1):
    """Networks start with zero noise strengths and biases; make every tensor matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in nets:
            for p in net.parameters():
                p.add_(std * torch.randn(p.shape, generator=gen))
    return nets


# ---------------------------------------------------------------------------------------------
# rosinality compatibility
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists(KEYS_FIXTURE), reason="shared fixture absent")
@pytest.mark.parametrize("config", ["size32_style128_mlp8_cm2", "size256_style512_mlp8_cm2"])
def test_state_dict_keys_and_shapes_match_rosinality(config):
    fixture = json.load(open(KEYS_FIXTURE))["configs"][config]
    args = fixture["constructor"]
    with torch.device("meta"):  # shapes only: no memory for the 256 px networks
        g = Generator(**args)
        d = Discriminator(args["size"], args["channel_multiplier"])
    assert [[k, list(v.shape)] for k, v in g.state_dict().items()] == fixture["generator"]
    assert [[k, list(v.shape)] for k, v in d.state_dict().items()] == fixture["discriminator"]
    assert sum(p.numel() for p in g.parameters()) == fixture["n_params"]["generator"]
    assert sum(p.numel() for p in d.parameters()) == fixture["n_params"]["discriminator"]


def test_outputs_match_rosinality_reference():
    """tests/data holds outputs of rosinality's own code for a seeded tiny configuration (how it
    was made is in its "about"); the same construction here must give the same numbers."""
    fixture = json.load(open(os.path.join(HERE, "data", "rosinality_tiny_outputs.json")))
    torch.manual_seed(0)
    g, d = Generator(8, 16, 2), Discriminator(8)
    with torch.no_grad():
        for p in list(g.parameters()) + list(d.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    g.eval()
    z = torch.randn(4, 16)
    with torch.no_grad():
        images, _ = g([z], randomize_noise=False)
        mixed, _ = g([z, z.flip(0)], inject_index=1, randomize_noise=False)
        logits = d(images)
    for name, ours in [("images", images), ("mixed", mixed), ("logits", logits)]:
        reference = torch.tensor(fixture[name])
        assert (ours.flatten() - reference).abs().max() < 1e-4, name


# ---------------------------------------------------------------------------------------------
# The two forms of the modulated convolution
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "upsample", "downsample", "to_rgb"])
def test_batched_modulated_conv_equals_grouped(kind):
    torch.manual_seed(0)
    conv = ModulatedConv2d(24, 16 if kind != "to_rgb" else 3, 3 if kind != "to_rgb" else 1, 12,
                           demodulate=kind != "to_rgb", upsample=kind == "upsample",
                           downsample=kind == "downsample")
    perturbed(conv)
    x = torch.randn(5, 24, 8, 8)
    style = torch.randn(5, 12)
    conv.fused = True
    grouped = conv(x, style)
    conv.fused = False
    batched = conv(x, style)
    assert grouped.shape == batched.shape
    assert grouped.shape[-1] == {"plain": 8, "upsample": 16, "downsample": 4, "to_rgb": 8}[kind]
    assert (grouped - batched).abs().max() < 1e-5


def test_batched_and_grouped_generator_gradients_agree():
    torch.manual_seed(0)
    g = Generator(**TINY)
    perturbed(g)
    z = torch.randn(4, 32)
    grads = []
    for fused in (True, False):
        for m in g.modules():
            if isinstance(m, ModulatedConv2d):
                m.fused = fused
        g.zero_grad()
        images, _ = g([z], randomize_noise=False)
        images.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in g.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Forward semantics
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_generator():
    torch.manual_seed(0)
    g = Generator(**TINY).eval()
    perturbed(g)
    return g


def test_generator_shapes_and_latents(tiny_generator):
    g = tiny_generator
    z = torch.randn(3, 32)
    images, latents = g([z], return_latents=True)
    assert images.shape == (3, 3, 16, 16)
    assert latents.shape == (3, g.n_latent, 32)
    assert g([z])[1] is None
    assert g.mean_latent(100).shape == (1, 32)
    assert torch.allclose(g.get_latent(z), g.style(z))


def test_input_is_latent_and_fixed_noise(tiny_generator):
    g = tiny_generator
    z = torch.randn(3, 32)
    a, _ = g([z], randomize_noise=False)
    b, _ = g([g.get_latent(z)], input_is_latent=True, randomize_noise=False)
    buffers = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    c, _ = g([z], noise=buffers)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)
    d1, _ = g([z])
    d2, _ = g([z])
    assert not torch.allclose(d1, d2)  # randomize_noise=True draws new noise


def test_truncation(tiny_generator):
    g = tiny_generator
    z = torch.randn(3, 32)
    w_avg = g.mean_latent(256)
    full, _ = g([z], randomize_noise=False)
    same, _ = g([z], truncation=1, truncation_latent=w_avg, randomize_noise=False)
    collapsed, _ = g([z], truncation=0, truncation_latent=w_avg, randomize_noise=False)
    assert torch.equal(full, same)
    # psi = 0: every sample is the image of the mean latent
    assert torch.allclose(collapsed, collapsed[:1].expand_as(collapsed), atol=1e-5)


def test_style_mixing_equals_explicit_w_plus(tiny_generator):
    g = tiny_generator
    z1, z2 = torch.randn(2, 32), torch.randn(2, 32)
    mixed, latents = g([z1, z2], inject_index=2, return_latents=True, randomize_noise=False)
    w1, w2 = g.get_latent(z1), g.get_latent(z2)
    w_plus = torch.cat([w1[:, None].expand(-1, 2, -1), w2[:, None].expand(-1, g.n_latent - 2, -1)], 1)
    explicit, _ = g([w_plus], input_is_latent=True, randomize_noise=False)
    assert torch.allclose(latents, w_plus)
    assert torch.allclose(mixed, explicit, atol=1e-6)


def test_channel_max_caps_width_and_default_is_rosinality():
    assert model.channel_table(2) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256,
                                      256: 128, 512: 64, 1024: 32}
    g = Generator(32, 16, 1, channel_max=24)
    assert all(p.shape[1] <= 24 for name, p in g.named_parameters() if name.endswith("conv.weight"))
    d = Discriminator(32, channel_max=24)
    assert d(torch.randn(4, 3, 32, 32)).shape == (4, 1)


@pytest.mark.parametrize("size", [3, 12, 2048, 0])
def test_bad_size_is_a_clear_error(size):
    with pytest.raises(ValueError, match="power of two"):
        Generator(size, 16, 1)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(size)


# ---------------------------------------------------------------------------------------------
# Checkpoint I/O
# ---------------------------------------------------------------------------------------------


def tiny_nets():
    torch.manual_seed(0)
    nets = checkpoint.build_gan(TINY)
    perturbed(*nets.values())
    return nets


def test_checkpoint_round_trip(tmp_path):
    nets = tiny_nets()
    path = str(tmp_path / "g.pt")
    args = argparse.Namespace(iter=3, out=str(tmp_path))
    checkpoint.save_checkpoint(checkpoint.gan_checkpoint(nets, TINY, args, 3, {"data": "x"}), path)
    loaded, ckpt = checkpoint.load_gan(path)
    assert ckpt["kind"] == "stylegan2" and ckpt["step"] == 3 and ckpt["args"]["iter"] == 3
    for name in nets:
        for (k, a), b in zip(nets[name].state_dict().items(), loaded[name].state_dict().values()):
            assert torch.equal(a, b), k
    g, _ = checkpoint.load_generator(path)
    assert not g.training and not any(p.requires_grad for p in g.parameters())


def test_rosinality_file_loads_and_infers_model_args(tmp_path):
    """A train.py file of rosinality: no kind/model_args, args as an argparse.Namespace."""
    nets = tiny_nets()
    path = str(tmp_path / "rosinality.pt")
    args = argparse.Namespace(size=16, latent=32, n_mlp=2, channel_multiplier=2, r1=10.0)
    torch.save({name: net.state_dict() for name, net in nets.items()} | {"args": args, "ada_aug_p": 0.0}, path)
    loaded, ckpt = checkpoint.load_gan(path)
    assert ckpt["model_args"] == dict(arch="stylegan2", size=16, style_dim=32, n_mlp=2, channel_multiplier=2, channel_max=32,
                                      latent_compression=False)
    z = torch.randn(2, 32)
    with torch.no_grad():
        want, _ = nets["g_ema"].eval()([z], randomize_noise=False)
        got, _ = loaded["g_ema"].eval()([z], randomize_noise=False)
    assert torch.equal(want, got)

    # without args at all: everything from the tensor shapes
    torch.save({"g_ema": nets["g_ema"].state_dict()}, path)
    assert checkpoint.complete_model_args(checkpoint.load_checkpoint(path, "stylegan2")["model_args"]) == ckpt["model_args"]


def test_infers_channel_multiplier_from_shapes(tmp_path):
    with torch.device("meta"):
        g = Generator(64, 8, 1, channel_multiplier=1)
    state = {k: torch.empty(v.shape) for k, v in g.state_dict().items()}
    path = str(tmp_path / "g64.pt")
    torch.save({"g_ema": state}, path)
    args = checkpoint.load_checkpoint(path)["model_args"]
    assert (args["size"], args["style_dim"], args["n_mlp"], args["channel_multiplier"]) == (64, 8, 1, 1)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint({"kind": "feedback", "step": 1}, path)

    class Unsavable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        checkpoint.save_checkpoint({"kind": "feedback", "bad": Unsavable()}, path)
    assert checkpoint.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def one_line_error(call, *args, **kwargs):
    with pytest.raises(utils.UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    nets = tiny_nets()
    good = str(tmp_path / "good.pt")
    checkpoint.save_checkpoint(checkpoint.gan_checkpoint(nets, TINY, {}, 0, {}), good)

    assert "no such file" in one_line_error(checkpoint.load_gan, str(tmp_path / "missing.pt"))

    truncated = str(tmp_path / "truncated.pt")
    data = open(good, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])
    assert "truncated" in one_line_error(checkpoint.load_gan, truncated)

    classifier = str(tmp_path / "classifier.pt")
    checkpoint.save_checkpoint({"kind": "classifier", "model": {}}, classifier)
    assert "is a classifier checkpoint" in one_line_error(checkpoint.load_gan, classifier)

    pickled = str(tmp_path / "pickled.pt")
    torch.save({"g_ema": nets["g_ema"].state_dict(), "args": object()}, pickled)
    assert "refused to unpickle" in one_line_error(checkpoint.load_gan, pickled)

    other = str(tmp_path / "other_arch.pt")
    ckpt = checkpoint.gan_checkpoint(nets, TINY, {}, 0, {})
    ckpt["model_args"] = dict(TINY, channel_max=16)
    checkpoint.save_checkpoint(ckpt, other)
    message = one_line_error(checkpoint.load_gan, other)
    assert "does not fit Generator" in message and "shape" in message

    message = one_line_error(checkpoint.load_gan, good, expect_model_args={"channel_multiplier": 1})
    assert "channel_multiplier 2 in the file vs 1 asked for" in message

    not_a_gan = str(tmp_path / "not_a_gan.pt")
    torch.save({"g_ema": {"weight": torch.zeros(1)}}, not_a_gan)
    assert "not a StyleGAN2 generator" in one_line_error(checkpoint.load_gan, not_a_gan)


def test_a_folder_given_as_a_checkpoint_says_so(tmp_path):
    assert "is a folder, not a checkpoint file" in one_line_error(checkpoint.load_gan, str(tmp_path))
