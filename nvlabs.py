"""NVlabs `network-snapshot-*.pkl` files (stylegan2-ada-pytorch; the StyleGAN2 configurations of
the stylegan3 repository) read as data, never executed, and mapped onto model.py's networks.

NVlabs' own loader unpickles the networks' embedded source code and runs it. Here a restricted
unpickler resolves only a short allow-list of globals: tensor and storage rebuilding (storages
are read with torch.load(..., weights_only=True)), OrderedDict, set, numpy scalars and dtypes,
torch dtypes and sizes, and NVlabs' persistent-object and EasyDict records, which become plain
dicts. Every other global is refused, and so is any persistent id. The embedded source
(`module_src`) is kept as text and never compiled.

The module records (parameters, buffers, sub-modules, `init_kwargs`) are then mapped onto
rosinality's layout. Refused, each with one line: conditional models, StyleGAN3 synthesis
networks, architectures other than a skip generator and a resnet discriminator, channel
layouts or mapping settings model.py cannot express, and TensorFlow-era pickles.
"""

import collections
import io
import pickle
import re

import numpy as np
import torch

from model import channel_table
from utils import UserError

PERSISTENT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
TF_NETWORK = ("dnnlib.tflib.network", "Network")
TF_ADVICE = ("a TensorFlow-era StyleGAN2 pickle: convert it first with NVlabs stylegan2-ada-pytorch "
             "(python legacy.py --source IN.pkl --dest OUT.pkl) or rosinality's convert_weight.py")


class Record(dict):
    """An NVlabs persistent object (or EasyDict) read as data: its fields, nothing executed."""

    def __setstate__(self, state):  # pickle's BUILD on an EasyDict: attributes become items
        if isinstance(state, dict):
            self.update(state)


def _persistent_record(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise pickle.UnpicklingError("a persistent object record without a class state")
    return Record(class_name=str(meta.get("class_name")), module_src=str(meta.get("module_src", "")),
                  state=meta["state"])


def _load_storage(data):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
    return data


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("only numeric numpy scalars are read")
    return np.frombuffer(data, dtype=dtype)[0]


SAFE_GLOBALS = {
    PERSISTENT: _persistent_record,
    ("dnnlib.util", "EasyDict"): Record,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch", "Size"): torch.Size,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,   # files pickled by numpy 1
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # and by numpy 2
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == TF_NETWORK:
            raise UserError(TF_ADVICE)
        raise pickle.UnpicklingError(f"global {module}.{name} is not on the allow-list of network data")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not read")


def read_records(path):
    """The pickle at `path` as data: a dict with the records "G", "D", "G_ema"."""
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f).load()
    except UserError as err:
        raise UserError(f"{path}: {err}")
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: refused or unreadable as an NVlabs network pickle (nothing was executed): {detail}")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), Record) for k in ("G", "D", "G_ema")):
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path}: not an NVlabs network snapshot (expected G, D and G_ema; found {keys})")
    return data


# --------------------------------------------------------------------------------------------
# From records to rosinality's layout
# --------------------------------------------------------------------------------------------


def children(record):
    """{name: record} of a module record's sub-modules."""
    return {name: child for name, child in (record["state"].get("_modules") or {}).items() if isinstance(child, Record)}


def flatten(record, prefix=""):
    """A module record -> {dotted name: tensor} of its parameters and buffers, as state_dict()."""
    state, out = record["state"], {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                out[prefix + name] = value.detach().float()
    for name, child in children(record).items():
        out.update(flatten(child, f"{prefix}{name}."))
    return out


def module(record, path):
    """The sub-module record at a dotted path, e.g. 'synthesis.b4.conv1', or None."""
    for part in path.split("."):
        record = children(record).get(part) if record is not None else None
    return record


def attribute(record, path, name, default=None):
    sub = module(record, path) if path else record
    return default if sub is None else sub["state"].get(name, default)


def check_kind(path, which, record):
    """Refuse what model.py cannot be: conditional, StyleGAN3, another architecture."""
    c_dim = int(attribute(record, "", "c_dim", 0) or 0)
    if c_dim > 0:
        raise UserError(f"{path}: {which} is a conditional model (c_dim {c_dim}); only unconditional networks load")
    if which == "D":
        arch = attribute(record, "b4", "architecture")
        if arch != "resnet":
            raise UserError(f"{path}: D has the '{arch}' architecture; only resnet discriminators load")
        return
    synthesis = module(record, "synthesis")
    if synthesis is None:
        raise UserError(f"{path}: {which} has no synthesis network")
    if "input" in children(synthesis) or "SynthesisInput" in synthesis["module_src"]:
        raise UserError(f"{path}: {which} is a StyleGAN3 (alias-free) generator; only StyleGAN2 networks load")
    archs = {str(block["state"].get("architecture")) for block in children(synthesis).values()}
    if archs != {"skip"}:
        raise UserError(f"{path}: {which}'s synthesis has the {', '.join(sorted(archs))} architecture; "
                        "only skip generators load")


def model_args_of(path, g):
    """Our constructor arguments for an NVlabs generator record, or a UserError saying why none fit."""
    tensors = flatten(g)
    size = int(attribute(g, "synthesis", "img_resolution"))
    style_dim = int(attribute(g, "", "w_dim"))
    n_mlp = int(attribute(g, "mapping", "num_layers"))
    if int(attribute(g, "", "z_dim")) != style_dim or int(attribute(g, "", "img_channels", 3)) != 3:
        raise UserError(f"{path}: z_dim {attribute(g, '', 'z_dim')} differs from w_dim {style_dim} (or not RGB): "
                        "model.py's mapping network keeps one width")
    widths = {tuple(tensors[f"mapping.fc{i}.weight"].shape) for i in range(n_mlp)}
    if widths != {(style_dim, style_dim)}:
        raise UserError(f"{path}: mapping layers of widths {sorted(widths)}; model.py's are all {style_dim}")
    gain = attribute(g, "mapping.fc0", "weight_gain")
    if gain is not None and not np.isclose(float(gain), 0.01 / np.sqrt(style_dim)):
        raise UserError(f"{path}: mapping lr_multiplier {float(gain) * np.sqrt(style_dim):g}; model.py's is 0.01")
    channels = {2 ** i: int(tensors[f"synthesis.b{2 ** i}.conv1.weight"].shape[0])
                for i in range(2, int(np.log2(size)) + 1)}
    channel_max = max(channels.values())
    for multiplier in (1, 2, 4, 8):
        ours = channel_table(multiplier, channel_max)
        if all(ours[res] == ch for res, ch in channels.items()):
            return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": multiplier,
                    "channel_max": channel_max}
    raise UserError(f"{path}: channels per resolution {channels} are not a layout of model.py "
                    "(rosinality's table capped at one width)")


def generator_state(g, size):
    """NVlabs generator tensors -> rosinality names (blur kernels are model.py's own buffers)."""
    t, out = flatten(g), {}
    for i in range(int(attribute(g, "mapping", "num_layers"))):
        out[f"style.{i + 1}.weight"] = t[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = t[f"mapping.fc{i}.bias"]
    out["input.input"] = t["synthesis.b4.const"].unsqueeze(0)

    def styled(ours, theirs, noise_index):
        out[f"{ours}.conv.weight"] = t[f"{theirs}.weight"].unsqueeze(0)
        out[f"{ours}.conv.modulation.weight"] = t[f"{theirs}.affine.weight"]
        out[f"{ours}.conv.modulation.bias"] = t[f"{theirs}.affine.bias"]
        out[f"{ours}.noise.weight"] = t[f"{theirs}.noise_strength"].reshape(1)
        out[f"{ours}.activate.bias"] = t[f"{theirs}.bias"]
        out[f"noises.noise_{noise_index}"] = t[f"{theirs}.noise_const"].reshape(1, 1, *t[f"{theirs}.noise_const"].shape)

    def to_rgb(ours, theirs):
        out[f"{ours}.conv.weight"] = t[f"{theirs}.weight"].unsqueeze(0)
        out[f"{ours}.conv.modulation.weight"] = t[f"{theirs}.affine.weight"]
        out[f"{ours}.conv.modulation.bias"] = t[f"{theirs}.affine.bias"]
        out[f"{ours}.bias"] = t[f"{theirs}.bias"].reshape(1, -1, 1, 1)

    styled("conv1", "synthesis.b4.conv1", 0)
    to_rgb("to_rgb1", "synthesis.b4.torgb")
    for k, res in enumerate(2 ** i for i in range(3, int(np.log2(size)) + 1)):
        styled(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1)
        styled(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb")
    return out


def discriminator_state(d, size):
    """NVlabs resnet discriminator tensors -> rosinality names."""
    t = flatten(d)
    out = {"convs.0.0.weight": t[f"b{size}.fromrgb.weight"], "convs.0.1.bias": t[f"b{size}.fromrgb.bias"]}
    for j, res in enumerate((2 ** i for i in range(int(np.log2(size)), 2, -1)), start=1):
        out[f"convs.{j}.conv1.0.weight"] = t[f"b{res}.conv0.weight"]
        out[f"convs.{j}.conv1.1.bias"] = t[f"b{res}.conv0.bias"]
        out[f"convs.{j}.conv2.1.weight"] = t[f"b{res}.conv1.weight"]
        out[f"convs.{j}.conv2.2.bias"] = t[f"b{res}.conv1.bias"]
        out[f"convs.{j}.skip.1.weight"] = t[f"b{res}.skip.weight"]
    out.update({"final_conv.0.weight": t["b4.conv.weight"], "final_conv.1.bias": t["b4.conv.bias"],
                "final_linear.0.weight": t["b4.fc.weight"], "final_linear.0.bias": t["b4.fc.bias"],
                "final_linear.1.weight": t["b4.out.weight"], "final_linear.1.bias": t["b4.out.bias"]})
    return out


def check_filters(path, which, record):
    """model.py blurs with [1, 3, 3, 1]; a snapshot made with another resample filter would not
    give its images."""
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    for name, tensor in flatten(record).items():
        if name.endswith("resample_filter") and (tensor.shape != expected.shape or not torch.allclose(tensor, expected)):
            raise UserError(f"{path}: {which}.{name} is not the [1, 3, 3, 1] filter model.py uses")


def check_discriminator(path, d):
    group, channels = attribute(d, "b4.mbstd", "group_size"), attribute(d, "b4.mbstd", "num_channels")
    if (group, channels) != (4, 1):
        raise UserError(f"{path}: D's minibatch-stddev layer has group {group}, {channels} channel(s); "
                        "model.py's has group 4, 1 channel")


def read_network_pkl(path):
    """An NVlabs snapshot as a checkpoint dict of ours (kind stylegan2; g, g_ema, d in rosinality's
    layout without the blur-kernel buffers; model_args; latent_avg = G_ema's w_avg)."""
    data = read_records(path)
    for which in ("G", "G_ema", "D"):
        check_kind(path, which, data[which])
        check_filters(path, which, data[which])
    try:
        model_args = model_args_of(path, data["G_ema"])
        check_discriminator(path, data["D"])
        size = model_args["size"]
        ckpt = {"kind": "stylegan2", "g": generator_state(data["G"], size),
                "g_ema": generator_state(data["G_ema"], size), "d": discriminator_state(data["D"], size),
                "latent_avg": flatten(data["G_ema"])["mapping.w_avg"].clone(), "model_args": model_args}
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: an NVlabs pickle whose networks do not have StyleGAN2's layout "
                        f"({type(err).__name__}: {err})")
    match = re.search(r"network-snapshot-(\d+)\.pkl$", path)
    blocks = children(module(data["G_ema"], "synthesis")).values()
    clamp = attribute(data["G_ema"], "synthesis.b4.conv1", "conv_clamp")
    ckpt.update(args={}, step=0, sources={"nvlabs_pkl": path},
                nvlabs={"kimg": int(match.group(1)) if match else None,
                        "conv_clamp": None if clamp is None else float(clamp),
                        "fp16_resolutions": [int(b["state"]["resolution"]) for b in blocks if b["state"].get("use_fp16")]})
    return ckpt
