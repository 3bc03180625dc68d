"""NVlabs .pkl snapshots: read as data (nothing in them runs), mapped onto model.py exactly, and
refused in one line when they are not a StyleGAN2 that model.py can be. The pickles are written
by tests/nvlabs_format.py from our own tensors, in NVlabs' format."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import generate
import metrics
import train_stylegan2
import utils
from conftest import cli_error, run_main
from nvlabs_format import Persistent, discriminator, generator, write_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_ARGS = dict(size=16, style_dim=16, n_mlp=2, channel_max=16)


def perturbed_nets(seed=0):
    torch.manual_seed(seed)
    nets = checkpoint.build_gan(MODEL_ARGS)
    with torch.no_grad():  # fresh networks have zero noise strengths and biases: they would hide mix-ups
        for net in nets.values():
            for p in net.parameters():
                p.add_(0.2 * torch.randn_like(p))
        for name, buffer in nets["g_ema"].noises.named_buffers():
            buffer.copy_(torch.randn_like(buffer))
    return nets


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    nets = perturbed_nets()
    w_avg = torch.randn(16, generator=torch.Generator().manual_seed(5))
    path = str(tmp_path_factory.mktemp("nv") / "network-snapshot-000120.pkl")
    write_snapshot(path, generator(nets["g"], torch.zeros(16)), discriminator(nets["d"], 16),
                   generator(nets["g_ema"], w_avg))
    return {"path": path, "nets": nets, "w_avg": w_avg}


def test_snapshot_maps_exactly_onto_our_networks(snapshot):
    loaded, ckpt = checkpoint.load_gan(snapshot["path"])
    nets = snapshot["nets"]
    assert ckpt["model_args"] == checkpoint.complete_model_args({**MODEL_ARGS, "channel_multiplier": 1})
    assert ckpt["nvlabs"]["kimg"] == 120 and torch.equal(ckpt["latent_avg"], snapshot["w_avg"])
    z = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    for name in ("g", "g_ema"):
        for psi in (1.0, 0.7):
            kwargs = dict(randomize_noise=False, truncation=psi, truncation_latent=snapshot["w_avg"][None])
            assert torch.equal(loaded[name]([z], **kwargs)[0], nets[name]([z], **kwargs)[0]), (name, psi)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded["d"](images), nets["d"](images))
    # G and G_ema are read apart; the blur kernels are model.py's own
    assert not torch.equal(loaded["g"].style[1].weight, loaded["g_ema"].style[1].weight)
    assert torch.equal(loaded["g_ema"].convs[0].conv.blur.kernel, nets["g_ema"].convs[0].conv.blur.kernel)


def test_numpy_1_and_numpy_2_scalars(snapshot, tmp_path):
    """Published 2020-21 files name numpy.core.multiarray.scalar, numpy 2 writes numpy._core."""
    nets = snapshot["nets"]
    path = write_snapshot(str(tmp_path / "v2.pkl"), generator(nets["g"], snapshot["w_avg"]),
                          discriminator(nets["d"], 16), generator(nets["g_ema"], snapshot["w_avg"]), protocol=3)
    data = open(path, "rb").read()
    module = b"numpy._core.multiarray" if b"numpy._core.multiarray" in data else b"numpy.core.multiarray"
    assert data.count(module + b"\nscalar\n") == 1
    other = b"numpy.core.multiarray" if module == b"numpy._core.multiarray" else b"numpy._core.multiarray"
    (tmp_path / "v1.pkl").write_bytes(data.replace(module + b"\nscalar\n", other + b"\nscalar\n"))
    for name in ("v1.pkl", "v2.pkl"):
        _, ckpt = checkpoint.load_gan(str(tmp_path / name))
        assert ckpt["model_args"]["style_dim"] == 16


def refused(path):
    with pytest.raises(utils.UserError) as info:
        checkpoint.load_generator(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_what_model_py_cannot_be_is_refused(snapshot, tmp_path):
    nets, w_avg = snapshot["nets"], snapshot["w_avg"]
    d = discriminator(nets["d"], 16)

    def snap(name, g_ema, disc=d):
        return write_snapshot(str(tmp_path / name), generator(nets["g"], w_avg), disc, g_ema)

    assert "conditional model (c_dim 10)" in refused(snap("cond.pkl", generator(nets["g_ema"], w_avg, c_dim=10)))
    stylegan3 = generator(nets["g_ema"], w_avg, synthesis_extra={"input": Persistent("SynthesisInput")})
    assert "StyleGAN3" in refused(snap("sg3.pkl", stylegan3))
    assert "only skip generators" in refused(snap("resnet_g.pkl", generator(nets["g_ema"], w_avg,
                                                                            architecture="resnet")))
    assert "only resnet discriminators" in refused(snap("skip_d.pkl", generator(nets["g_ema"], w_avg),
                                                        discriminator(nets["d"], 16, architecture="skip")))
    assert "minibatch-stddev" in refused(snap("mbstd.pkl", generator(nets["g_ema"], w_avg),
                                              discriminator(nets["d"], 16, mbstd_group=8)))
    narrow = generator(nets["g_ema"], w_avg)
    block = narrow.state["_modules"]["synthesis"].state["_modules"]["b16"].state["_modules"]["conv1"]
    block.state["_parameters"]["weight"] = block.state["_parameters"]["weight"][:8]
    assert "not a layout of model.py" in refused(snap("narrow.pkl", narrow))
    wide_z = generator(nets["g_ema"], w_avg)
    wide_z.state["z_dim"] = 32
    assert "z_dim 32 differs from w_dim 16" in refused(snap("z.pkl", wide_z))
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    assert "not an NVlabs network snapshot" in refused(tmp_path / "list.pkl")
    (tmp_path / "cut.pkl").write_bytes(open(snapshot["path"], "rb").read()[:5000])
    assert "unreadable" in refused(tmp_path / "cut.pkl")


def pickle_naming(module, name, *args):
    """Pickle bytes (protocol 2) that call module.name(*args) when a plain unpickler loads them."""
    body = pickle.dumps(args, protocol=2)[2:-1]  # the argument tuple's opcodes, without PROTO and STOP
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + body + b"R."


def test_nothing_in_a_pickle_ever_runs(snapshot, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    command = f"touch {sentinel}"
    # the bytes do what they claim: plain pickle runs the command
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads({pickle_naming('os', 'system', 'true')!r})"],
                   check=True)
    attacks = {"os_system.pkl": pickle_naming("os", "system", command),
               "posix_system.pkl": pickle_naming("posix", "system", command),
               "eval.pkl": pickle_naming("builtins", "eval", f"__import__('os').system({command!r})"),
               "subprocess.pkl": pickle_naming("subprocess", "call", ["touch", str(sentinel)])}
    for name, data in attacks.items():
        (tmp_path / name).write_bytes(data)
        message = refused(tmp_path / name)
        assert "not on the allow-list" in message and "nothing was executed" in message, message
    # an embedded module source that would write the sentinel is kept as text, never compiled
    nets, w_avg = snapshot["nets"], snapshot["w_avg"]
    g_ema = generator(nets["g_ema"], w_avg)
    g_ema.source = f"open({str(sentinel)!r}, 'w').write('ran')\n"
    path = write_snapshot(str(tmp_path / "source.pkl"), generator(nets["g"], w_avg), discriminator(nets["d"], 16),
                          g_ema)
    checkpoint.load_generator(path)
    # a persistent id (torch.save's storage references) is not resolved
    (tmp_path / "pid.pkl").write_bytes(b"\x80\x02P1\n.")
    assert "persistent ids" in refused(tmp_path / "pid.pkl")
    assert not sentinel.exists()


def test_tensorflow_pickles_name_the_conversion(tmp_path):
    (tmp_path / "tf.pkl").write_bytes(pickle_naming("dnnlib.tflib.network", "Network"))
    assert "TensorFlow-era" in refused(tmp_path / "tf.pkl") and "legacy.py" in refused(tmp_path / "tf.pkl")


def test_convert_writes_a_checkpoint_of_ours(snapshot, tmp_path):
    out = tmp_path / "runs" / "ffhq" / "pretrained.pt"  # its folder is made, as the README's command needs
    done = subprocess.run([sys.executable, "checkpoint.py", "convert", snapshot["path"], str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "stylegan2" and torch.equal(ckpt["latent_avg"], snapshot["w_avg"])
    loaded, _ = checkpoint.load_gan(str(out))
    assert all(torch.equal(v, snapshot["nets"]["g_ema"].state_dict()[k]) for k, v in loaded["g_ema"].state_dict().items())
    assert "convert reads NVlabs .pkl" in cli_error(checkpoint, "convert", str(out), str(tmp_path / "x.pt"))
    assert "is a folder" in cli_error(checkpoint, "convert", snapshot["path"], str(tmp_path))


def test_generate_and_fine_tuning_read_a_snapshot(snapshot, tmp_path):
    rows = run_main(generate, "--ckpt", snapshot["path"], "--seeds", "0-2", "--trunc", "0.7", "--device", "cpu",
                    "--out", tmp_path / "samples")
    g = snapshot["nets"]["g_ema"]
    z, _ = metrics.seeded_inputs(g, [0], 1)
    expected = utils.to_uint8(g([z], truncation=0.7, truncation_latent=snapshot["w_avg"][None],
                                randomize_noise=False)[0])[0].permute(1, 2, 0).numpy()
    assert np.array_equal(rows[0][1][1], expected)
    run_main(train_stylegan2, "--ckpt", snapshot["path"], "--dataset", "synthetic", "--batch", 4, "--workers", 0,
             "--iter", 1, "--n_sample", 4, "--out", tmp_path / "finetune")
    assert checkpoint.load_checkpoint(str(tmp_path / "finetune" / "pretrained.pt"))["step"] == 1
