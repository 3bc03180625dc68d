"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically and read with
`torch.load(..., weights_only=True)`, each with a "kind" that its reader checks.

Each writer stands beside its reader: generators (ours, rosinality's train.py files, whose
architecture is inferred, and NVlabs .pkl snapshots, read as data by nvlabs.py), classifiers,
and the feedback of negative_adapt.py. Every failure to read is a one-line UserError naming the
file.

    python checkpoint.py convert network-snapshot-000800.pkl pretrained.pt   # NVlabs .pkl -> ours
"""

import argparse
import glob
import hashlib
import json
import os
import pickle
import re
import sys

import torch

import nvlabs
from classifiers import CLASSIFIERS, ClassifierEnsemble, build_classifier
from model import GAN_ARCHS
from utils import UserError, atomic_write, make_parser, run_cli


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def non_finite(obj, name=""):
    """The name of the first floating tensor in `obj` (nested dicts and lists) holding NaN or
    infinity, else None."""
    if torch.is_tensor(obj):
        return name if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = non_finite(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None


def save_checkpoint(obj, path):
    """torch.save a checkpoint dict atomically; one holding NaN or infinity is never written."""
    bad = non_finite(obj)
    if bad is not None:
        raise UserError(f"refused to write {path}: '{bad}' holds NaN or infinite values")
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, kind=None):
    """Load a checkpoint dict with weights_only=True; `kind` ("stylegan2", "classifier",
    "feedback") is checked. rosinality's train.py files (no "kind", an argparse.Namespace as
    "args") are read as "stylegan2", with "args" turned into a dict and "model_args" inferred.
    Every failure is a one-line UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: is a folder, not a checkpoint file" if os.path.isdir(path) else f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: permission denied")
    if path.endswith(".pkl"):
        return check_kind(read_nvlabs_pkl(path), path, kind)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: refused to unpickle it (only tensors and plain values are loaded): {first_line}")
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as err:
        raise UserError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict")

    if "kind" not in ckpt and ("g_ema" in ckpt or "g" in ckpt):  # rosinality/stylegan2-pytorch
        ckpt["kind"] = "stylegan2"
        if isinstance(ckpt.get("args"), argparse.Namespace):
            ckpt["args"] = vars(ckpt["args"])
    if ckpt.get("kind") == "stylegan2" and "model_args" not in ckpt:
        ckpt["model_args"] = infer_model_args(ckpt, path)
    return check_kind(ckpt, path, kind)


def check_kind(ckpt, path, kind):
    if kind is not None and ckpt.get("kind", "unknown") != kind:
        raise UserError(f"{path} is a {ckpt.get('kind', 'unknown')} checkpoint, but a {kind} checkpoint is expected here")
    return ckpt


def read_nvlabs_pkl(path):
    """An NVlabs network pickle as our StyleGAN2 checkpoint dict (nvlabs.py reads it as data); the
    blur kernels, fixed buffers of model.py, come from freshly built networks."""
    ckpt = nvlabs.read_network_pkl(path)
    fresh = build_gan(ckpt["model_args"])
    for name, net in fresh.items():  # in model.py's order, so the fingerprint is that of the same .pt
        own = net.state_dict()
        kernels = {k: v for k, v in own.items() if k.endswith("kernel")}
        merged = {**kernels, **ckpt[name]}
        ckpt[name] = {**{k: merged[k] for k in own if k in merged}, **merged}
    return ckpt


# --------------------------------------------------------------------------------------------
# Generators (model.GAN_ARCHS)
# --------------------------------------------------------------------------------------------


# the generator constructor arguments a file must give; the other ones default (model.GAN_ARCHS)
REQUIRED_MODEL_ARGS = ("size", "style_dim", "n_mlp")


def infer_model_args(ckpt, path):
    """Constructor arguments of a checkpoint without "model_args": from rosinality's training
    options when present, else from the generator's tensor shapes."""
    args = ckpt.get("args") or {}
    state = ckpt.get("g_ema", ckpt.get("g"))
    if state is None:
        raise UserError(f"{path}: a StyleGAN2 checkpoint needs a 'g_ema' or 'g' state dict")
    try:
        n_mlp = sum(1 for key in state if key.startswith("style.") and key.endswith(".weight"))
        style_dim = state["style.1.weight"].shape[0]
        size = 2 ** (sum(1 for key in state if re.fullmatch(r"to_rgbs\.\d+\.bias", key)) + 2)
        base_width = state["input.input"].shape[1]
    except KeyError as err:
        raise UserError(f"{path}: not a StyleGAN2 generator state dict (no {err.args[0]})")
    channel_multiplier = 2
    if size >= 64:  # width at 64 px is 256 * channel_multiplier unless capped
        width64 = state[f"convs.{2 * (6 - 3)}.conv.weight"].shape[1]
        if width64 < base_width or base_width == 512:
            channel_multiplier = max(1, width64 // 256)
    return {"arch": "stylegan2", "size": int(args.get("size", size)), "style_dim": int(args.get("latent", style_dim)),
            "n_mlp": int(args.get("n_mlp", n_mlp)),
            "channel_multiplier": int(args.get("channel_multiplier", channel_multiplier)),
            "channel_max": min(int(base_width), 512)}


def complete_model_args(model_args):
    """model_args with "arch" (absent: stylegan2, as in rosinality's and older files) and the
    optional constructor arguments of model.GAN_ARCHS filled in, so files always record them all."""
    arch = model_args.get("arch", "stylegan2")
    if arch not in GAN_ARCHS:
        raise UserError(f"model_args names an unknown architecture {arch!r} (known: {', '.join(GAN_ARCHS)})")
    defaults = GAN_ARCHS[arch].defaults
    return {"arch": arch, **{k: v for k, v in defaults.items() if k not in REQUIRED_MODEL_ARGS},
            **{k: v for k, v in model_args.items() if k in defaults}}


def describe_model_args(model_args):
    return ", ".join(f"{k}={v}" for k, v in complete_model_args(model_args).items())


def load_state_strict(module, state, path, key):
    """load_state_dict(strict=True), with a mismatch reported as one line naming what differs."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            what = f"'{k}' has shape {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)}"
        elif missing:
            what = f"{len(missing)} tensors missing, e.g. '{missing[0]}'"
        else:
            what = f"{len(unexpected)} unexpected tensors, e.g. '{unexpected[0]}'"
        raise UserError(f"{path}: '{key}' does not fit {type(module).__name__}: {what}")
    module.load_state_dict(state, strict=True)


def build_gan(model_args, which=("g", "d", "g_ema")):
    """Fresh networks of the architecture model_args["arch"]: a dict name -> module for `which`."""
    model_args = complete_model_args(model_args)
    arch = GAN_ARCHS[model_args["arch"]]
    gen_args = {k: v for k, v in model_args.items() if k != "arch"}
    disc_args = {k: gen_args[k] for k in arch.discriminator_args}
    return {name: arch.discriminator(**disc_args) if name == "d" else arch.generator(**gen_args) for name in which}


def load_gan(path, which=("g", "d", "g_ema"), device="cpu", expect_model_args=None):
    """Networks from a GAN checkpoint (ours of any arch, or rosinality's), loaded strictly.

    Returns (dict name -> module on `device`, the checkpoint dict). With `expect_model_args`,
    any constructor argument given there that differs from the file's is a one-line error.
    """
    ckpt = load_checkpoint(path, "stylegan2")
    model_args = ckpt["model_args"] = complete_model_args(ckpt["model_args"])
    if expect_model_args:
        diff = [f"{k} {model_args.get(k)} in the file vs {v} asked for" for k, v in expect_model_args.items()
                if k in model_args and model_args.get(k, v) != v]
        if diff:
            raise UserError(f"{path}: architecture differs: " + "; ".join(diff))
    try:
        nets = build_gan(model_args, which)
    except ValueError as err:
        raise UserError(f"{path}: bad model_args ({describe_model_args(model_args)}): {err}")
    for name, net in nets.items():
        if name not in ckpt:
            raise UserError(f"{path}: has no '{name}' state dict")
        load_state_strict(net.to(device), ckpt[name], path, name)
    return nets, ckpt


def load_generator(path, device="cpu"):
    """The generator to sample from: `g_ema` of a GAN checkpoint (else `g`), in eval mode."""
    which = "g_ema" if "g_ema" in load_checkpoint(path, "stylegan2") else "g"
    nets, ckpt = load_gan(path, (which,), device)
    return nets[which].eval().requires_grad_(False), ckpt


def gan_checkpoint(nets, model_args, args, step, sources, optimizers=None, method=None, mean_path_length=None):
    """A GAN checkpoint dict: rosinality's keys + kind ("stylegan2", the name of every generator file,
    whatever model_args["arch"]), model_args, step, args, sources, and the running path length."""
    ckpt = {name: net.state_dict() for name, net in nets.items()}
    ckpt.update({name: optim.state_dict() for name, optim in (optimizers or {}).items()})
    ckpt.update(kind="stylegan2", model_args=complete_model_args(model_args), step=int(step),
                args=plain_args(args), sources=dict(sources))
    if method is not None:
        ckpt["method"] = method
    if mean_path_length is not None:
        ckpt["mean_path_length"] = float(mean_path_length)
    return ckpt


def save_generator(path, nets, model_args, args, step, sources, optimizers=None, method=None,
                   mean_path_length=None, **extra):
    """Write `gan_checkpoint(...)` to `path`, with `extra` keys beside (e.g. the random state)."""
    ckpt = gan_checkpoint(nets, model_args, args, step, sources, optimizers, method, mean_path_length)
    save_checkpoint({**ckpt, **extra}, path)
    return path


def load_adapted(paths, pretrained_ckpt, device="cpu"):
    """The g_ema of each adapted_*.pt of negative_adapt.py, checked to belong to the pre-trained
    checkpoint `pretrained_ckpt`: the same architecture, the generator fingerprint the file
    records, no file twice, and none that is the pre-trained generator itself."""
    if not paths:
        raise UserError("--adapted needs at least one adapted_*.pt of negative_adapt.py")
    theta_g = state_fingerprint(pretrained_ckpt["g_ema"])
    nets, seen = [], {}
    for path in paths:
        net, ckpt = load_gan(path, which=("g_ema",), device=device,
                            expect_model_args=pretrained_ckpt["model_args"])
        own = state_fingerprint(ckpt["g_ema"])
        if own == theta_g:
            raise UserError(f"--adapted {path} is the pre-trained generator itself, not an adapted model")
        if own in seen:
            raise UserError(f"--adapted {path} is the same model as {seen[own]}: give each adapted model once")
        recorded = ckpt.get("generator_fingerprint")
        if recorded is None:
            print(f"warning: --adapted {path} does not record which generator it was adapted from "
                  "(made before this was recorded); it is trusted to come from --ckpt", file=sys.stderr)
        elif recorded != theta_g:
            raise UserError(f"--adapted {path} was adapted from another generator "
                            f"({ckpt.get('sources', {}).get('ckpt', 'unknown')}), not from --ckpt")
        seen[own] = path
        nets.append(net["g_ema"])
    return nets


def last_checkpoint(out, final):
    """The newest checkpoint of the run in `out`: its `final` file when the run finished, else the
    highest-numbered checkpoint/NNNNNN.pt; None when there is none (the run starts afresh)."""
    if os.path.isfile(os.path.join(out, final)):
        return os.path.join(out, final)
    numbered = sorted(glob.glob(os.path.join(out, "checkpoint", "[0-9]*.pt")))
    return numbered[-1] if numbered else None


def check_same_run(args, flags):
    """Refuse --resume with any of `flags` other than the run in --out was started with (args.json)."""
    path = os.path.join(args.out, "args.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            started = json.load(f)["args"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: unreadable ({type(err).__name__}); cannot check that --resume continues the same run")
    now = plain_args(args)
    changed = [f"--{k} {started.get(k)} -> {now.get(k)}" for k in flags if k in started and started[k] != now.get(k)]
    if changed:
        raise UserError(f"--resume would change the run in {args.out}: {'; '.join(changed)}; "
                        "keep them, or start a new run with --overwrite or another --out")


def plain_args(args):
    """vars(args) with only JSON-able values, so the checkpoint loads with weights_only=True."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return json.loads(json.dumps(values, default=str))


def state_fingerprint(state_dict):
    """sha256 of a state dict's tensors (names, shapes and values): identifies a generator."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------------


def class_names(meta):
    """The names of a classifier's outputs: its classes, or its attributes when multi-label."""
    return list(meta["attributes"] if meta["multilabel"] else meta["classes"])


def load_classifier(path, device="cpu"):
    """A classifier checkpoint -> (model on `device` in eval mode, meta = the checkpoint's other
    fields plus "path"). A checkpoint with "members" > 1 holds an ensemble (classifiers.ClassifierEnsemble,
    keys "members.{i}.*"); it is used like one network. Always eval(): BatchNorm must not use the
    statistics of a generated batch (the official AFHQ code forgot it)."""
    ckpt = load_checkpoint(path, "classifier")
    missing = [k for k in ("model", "arch", "multilabel", "image_size", "channels", "normalization")
               if k not in ckpt]
    if missing:
        raise UserError(f"{path}: classifier checkpoint lacks {', '.join(missing)}")
    if ckpt["arch"] not in CLASSIFIERS:
        raise UserError(f"{path}: unknown classifier arch {ckpt['arch']!r} (known: {', '.join(CLASSIFIERS)})")
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    meta["path"] = path
    n_members = int(ckpt.get("members", 1))
    try:
        members = [build_classifier(ckpt["arch"], len(class_names(meta)), ckpt["channels"]) for _ in range(n_members)]
    except ValueError as err:
        raise UserError(f"{path}: {err}")
    model = members[0] if n_members == 1 else ClassifierEnsemble(members, ckpt["multilabel"])
    load_state_strict(model, ckpt["model"], path, "model")
    return model.to(device).eval().requires_grad_(False), meta


def save_classifier(path, model, meta, **fields):
    """Write a classifier checkpoint: its weights, `meta` (arch, classes or attributes, multilabel,
    image_size, channels, normalization, data_size) and `fields` (accuracy, args, sources...)."""
    save_checkpoint({"kind": "classifier", "model": model.state_dict(), **meta, **fields}, path)
    return path


# --------------------------------------------------------------------------------------------
# Feedback (negative_adapt.py -> unlearn.py)
# --------------------------------------------------------------------------------------------


def save_feedback(path, images, negative, labelled_by, fingerprint, **fields):
    """Write the labelled samples: `images` uint8 [N, 3, H, W] as the user saw them, `negative`
    bool [N], how they were labelled, and the fingerprint of the generator they came from
    (`fields`: z, the seed, args, sources)."""
    save_checkpoint({"kind": "feedback", "images": images, "negative": negative, "labelled_by": labelled_by,
                     "generator_fingerprint": fingerprint, **fields}, path)
    return path


def load_feedback(path, fingerprint):
    """A feedback file made from the generator whose `state_fingerprint` is `fingerprint`."""
    feedback = load_checkpoint(path, "feedback")
    if feedback.get("generator_fingerprint") != fingerprint:
        raise UserError(f"--feedback {path} was made from another generator "
                        f"({feedback.get('sources', {}).get('ckpt', 'unknown')}), not from --ckpt")
    return feedback


def convert(args):
    """`convert IN.pkl OUT.pt`: an NVlabs snapshot as a checkpoint of ours (g, g_ema, d, model_args,
    and w_avg as latent_avg), loaded strictly into model.py's networks before it is written."""
    if not args.input.endswith(".pkl"):
        raise UserError(f"{args.input}: convert reads NVlabs .pkl files (ours and rosinality's .pt load as they are)")
    nets, ckpt = load_gan(args.input)
    folder = os.path.dirname(os.path.abspath(args.output))
    if os.path.isdir(args.output) or (os.path.exists(folder) and not os.path.isdir(folder)):
        raise UserError(f"{args.output}: is a folder, or inside a file; give the .pt file to write")
    os.makedirs(folder, exist_ok=True)  # like every --out
    save_generator(args.output, nets, ckpt["model_args"], vars(args), 0, {"nvlabs_pkl": os.path.abspath(args.input)},
                   latent_avg=ckpt["latent_avg"], nvlabs=ckpt["nvlabs"])
    print(f"wrote {args.output} ({describe_model_args(ckpt['model_args'])})")


def create_argparser():
    parser = make_parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert_parser = commands.add_parser("convert", help="write an NVlabs .pkl snapshot as a checkpoint of ours")
    convert_parser.add_argument("input",
                                help="network-snapshot-*.pkl of stylegan2-ada-pytorch or stylegan3 (StyleGAN2 config)")
    convert_parser.add_argument("output", help="the .pt file to write")
    return parser


def main(args):
    return {"convert": convert}[args.command](args)


if __name__ == "__main__":
    run_cli(main, create_argparser().parse_args())
