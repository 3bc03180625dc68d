"""The DC-GAN of the paper's Table 4: the network, its checkpoints (model_args["arch"]), and every
stage run on it unchanged: train_stylegan2 --arch dcgan -> negative_adapt -> unlearn -> evaluate
-> generate."""

import json

import pytest
import torch

import checkpoint
import evaluate
import gan
import generate
import negative_adapt
import train_classifier
import train_stylegan2
import unlearn
import utils
from conftest import cli_error, rarer_class, run_main
from model import DCGANGenerator

DCGAN = ["--arch", "dcgan", "--size", "8", "--style_dim", "8", "--channels", "8"]
SHORT = ["--batch", "8", "--n_sample", "4"]


def test_generator_shapes_layers_and_latent_calls():
    torch.manual_seed(0)
    g = DCGANGenerator(32, 16, 8).eval()
    z = torch.randn(5, 16)
    images, latents = g([z], return_latents=True)
    assert images.shape == (5, 3, 32, 32) and latents.shape == (5, 1, 16)
    assert images.abs().max() <= 1
    # one latent per image: [N, 1, d] as input_is_latent is the same call as z itself
    assert torch.equal(g([latents], input_is_latent=True)[0], images)
    # truncation ψ = 0 draws the truncation latent for every z
    center = torch.randn(1, 16)
    assert torch.allclose(g([z], truncation=0.0, truncation_latent=center)[0], g([center.expand(5, -1)])[0])
    # layers() in forward order name every parameter once: 4x4, 8, 16, then the 32 px output layer
    names = [name for _, names in g.layers() for name in names]
    assert sorted(names) == sorted(name for name, _ in g.named_parameters())
    assert [layer for layer, _ in g.layers()] == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert [g.blocks[i][0].out_channels for i in range(4)] == [32, 16, 8, 3]


def test_ema_averages_parameters_and_copies_batch_norm_statistics():
    torch.manual_seed(0)
    g, g_ema = DCGANGenerator(8, 4, 4), DCGANGenerator(8, 4, 4)
    g([torch.randn(8, 4)])  # training mode: g's running statistics move
    before = [p.detach().clone() for p in g_ema.parameters()]
    gan.accumulate(g_ema, g, 0.75)
    for ema, p, old in zip(g_ema.parameters(), g.parameters(), before):
        assert torch.allclose(ema, 0.75 * old + 0.25 * p)
    for ema_buf, buf in zip(g_ema.buffers(), g.buffers()):
        assert torch.equal(ema_buf, buf)
    assert not torch.equal(g.blocks[0][1].running_mean, torch.zeros(4))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcgan")
    paths = {"root": root, "gan": str(root / "gan" / "pretrained.pt"), "clf": str(root / "clf" / "classifier.pt")}
    run_main(train_stylegan2, "--dataset", "synthetic", *DCGAN, "--batch", 8, "--workers", 0, "--iter", 400,
             "--out", root / "gan")
    run_main(train_classifier, "--dataset", "synthetic", "--size", 8, "--arch", "lenet", "--epochs", 1,
             "--workers", 0, "--out", root / "clf")
    paths["negative"], _ = rarer_class(paths["gan"], paths["clf"])
    run_main(negative_adapt, "--ckpt", paths["gan"], "--classifier", paths["clf"], "--negative", paths["negative"],
             "--n_feedback", 200, "--n_models", 2, "--iter", 4, "--fisher_samples", 8, "--n_eval", 40, *SHORT,
             "--out", root / "adapt")
    paths["feedback"] = str(root / "adapt" / "feedback.pt")
    paths["adapted"] = [str(root / "adapt" / f"adapted_{j}.pt") for j in range(2)]
    return paths


def test_checkpoints_name_the_architecture(chain, tmp_path):
    nets, ckpt = checkpoint.load_gan(chain["gan"])
    assert ckpt["model_args"] == {"arch": "dcgan", "size": 8, "style_dim": 8, "channels": 8}
    assert isinstance(nets["g_ema"], DCGANGenerator) and ckpt["step"] == 400
    # resuming reads the architecture from the file; a flag of another one is refused, so is the other arch
    run_main(train_stylegan2, "--dataset", "synthetic", "--batch", 8, "--workers", 0, "--iter", 402,
             "--ckpt", chain["gan"], "--out", tmp_path / "more")
    assert checkpoint.load_gan(str(tmp_path / "more" / "pretrained.pt"))[1]["step"] == 402
    line = cli_error(train_stylegan2, "--dataset", "synthetic", *DCGAN, "--n_mlp", 2, "--out", tmp_path / "a")
    assert "--n_mlp: not a setting of --arch dcgan" in line
    line = cli_error(train_stylegan2, "--dataset", "synthetic", "--arch", "stylegan2", "--ckpt", chain["gan"],
                     "--out", tmp_path / "b")
    assert "architecture differs: arch dcgan in the file vs stylegan2 asked for" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_every_stage_runs_on_it_unchanged(chain, tmp_path):
    theta_g = checkpoint.load_generator(chain["gan"])[0].state_dict()
    for name, flags in {"el2": ["--repulsion", "el2"], "eu_k": ["--method", "eu_k", "--last_k", 1],
                        "ewc": ["--method", "ewc", "--fisher_samples", 8], "dred": ["--method", "dred"],
                        "cua": ["--method", "cua"]}.items():
        run_main(unlearn, "--ckpt", chain["gan"], "--feedback", chain["feedback"], "--adapted", *chain["adapted"],
                 *flags, "--iter", 20, *SHORT, "--out", tmp_path / name)
        nets, ckpt = checkpoint.load_gan(str(tmp_path / name / "unlearned.pt"))
        assert ckpt["model_args"]["arch"] == "dcgan" and abs(ckpt["method"]["ema_pull"]) <= 0.05
        changed = {k for k, v in nets["g_ema"].state_dict().items() if not torch.equal(v, theta_g[k])}
        if name == "eu_k":  # the output layer only (its one tensor) trains; every other tensor is θ_G's
            assert ckpt["method"]["last_k"] == ["blocks.1.0.weight"] and changed == {"blocks.1.0.weight"}
        else:
            assert "blocks.0.0.weight" in changed
    record = run_main(evaluate, tmp_path / "el2" / "unlearned.pt", "--reference", chain["gan"],
                      "--classifier", chain["clf"], "--negative", chain["negative"], "--dataset", "synthetic",
                      "--features", "classifier", "--n_eval", 100, "--n_fid", 50, "--n_sample", 4,
                      "--recover", 2, "--recover_steps", 3, "--out", tmp_path / "eval")
    saved = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert record["reference"]["negatives"] > 0 and saved["checkpoints"][0]["fid"] >= 0
    assert (tmp_path / "eval" / "recover.png").is_file()
    rows = run_main(generate, "--ckpt", chain["gan"], tmp_path / "el2" / "unlearned.pt", "--seeds", "0-3",
                    "--trunc", 0.7, "--out", tmp_path / "samples")
    assert len(rows) == 2 and (tmp_path / "samples" / "grid.png").is_file()


def test_cua_cascade_alternates_and_pairs_negatives_with_positives(chain):
    feedback = checkpoint.load_checkpoint(chain["feedback"], "feedback")
    args = unlearn.create_argparser().parse_args(["--ckpt", "x", "--feedback", "x", "--method", "cua", "--batch", "4",
                                                  "--cua_beta", "2"])
    cascade = unlearn.CUACascade(args, feedback, "cpu")
    negatives = feedback["negative"]
    assert torch.equal(cascade.z, feedback["z"][negatives]) and len(cascade.substitutes) == int(negatives.sum())
    # every substitute is one of the positives, the same pairs for the same --seed
    positives = {bytes(x.numpy()) for x in feedback["images"][~negatives]}
    assert all(bytes(x.numpy()) in positives for x in cascade.substitutes)
    assert torch.equal(unlearn.CUACascade(args, feedback, "cpu").substitutes, cascade.substitutes)
    nets, _ = checkpoint.load_gan(chain["gan"])
    g, d = nets["g_ema"], nets["d"].eval()
    # an unlearning step (even): D's negatives term and G's substitution term, as by hand
    d_term = cascade.d_loss(d, 0)
    want = torch.nn.functional.softplus(d(utils.from_uint8(cascade.negatives[cascade.batch]))).mean()
    assert float(d_term.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    images = g([cascade.z[cascade.batch]])[0]
    want = 2 * (images - utils.from_uint8(cascade.substitutes[cascade.batch])).square().mean()
    assert float(cascade.g_loss(g, 0).detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    # a learning step (odd): no extra term on either side
    assert float(cascade.d_loss(d, 1)) == 0 and float(cascade.g_loss(g, 1)) == 0


def test_cua_needs_latents_and_dred_negatives(chain, tmp_path):
    feedback = checkpoint.load_checkpoint(chain["feedback"], "feedback")
    fingerprint = feedback["generator_fingerprint"]
    no_z = checkpoint.save_feedback(str(tmp_path / "curated.pt"), feedback["images"], feedback["negative"],
                                    {"folders": {"negatives": "n", "positives": "p"}}, fingerprint)
    line = cli_error(unlearn, "--ckpt", chain["gan"], "--feedback", no_z, "--method", "cua", "--out", tmp_path / "a")
    assert "--method cua needs the negatives' latents" in line
    none_negative = checkpoint.save_feedback(str(tmp_path / "none.pt"), feedback["images"],
                                             torch.zeros_like(feedback["negative"]), feedback["labelled_by"],
                                             fingerprint, z=feedback["z"])
    line = cli_error(unlearn, "--ckpt", chain["gan"], "--feedback", none_negative, "--method", "dred",
                     "--out", tmp_path / "b")
    assert "holds no negative sample" in line
    for name in ("cdc", "rssa"):  # they compare StyleGAN2's styled convolutions
        line = cli_error(unlearn, "--ckpt", chain["gan"], "--feedback", chain["feedback"], "--method", name,
                         "--out", tmp_path / name)
        assert f"--method {name} compares the styled convolutions' features of a StyleGAN2" in line
    assert not any((tmp_path / name).exists() for name in ("a", "b", "cdc", "rssa"))
