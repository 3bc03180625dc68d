"""Test fixtures: pickles in the format of NVlabs' network-snapshot-*.pkl, written from our own
networks' tensors, with a dummy embedded source.

NVlabs' persistent classes pickle as `torch_utils.persistence._reconstruct_persistent_obj(meta)`
with meta = {type, version, module_src, class_name, state}, the state being the module's
__dict__ (_parameters, _buffers, _modules, plain attributes, _init_kwargs as a dnnlib EasyDict).
Stand-ins for those two globals are registered under their names while a fixture is pickled, so
the file names exactly the globals a real snapshot names; no NVlabs code is involved.
"""

import collections
import pickle
import sys
import types

import numpy as np
import torch

DUMMY_SOURCE = "# the networks' source would be here; a reader must never run it\n"
RESAMPLE_FILTER = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64  # setup_filter([1,3,3,1])


def _reconstruct_persistent_obj(meta):  # only its name matters: pickle records it by name
    raise AssertionError("fixtures are never unpickled with this")


class EasyDict(dict):
    pass


def _register_stand_ins():
    persistence = sys.modules.setdefault("torch_utils.persistence", types.ModuleType("torch_utils.persistence"))
    sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
    util = sys.modules.setdefault("dnnlib.util", types.ModuleType("dnnlib.util"))
    sys.modules.setdefault("dnnlib", types.ModuleType("dnnlib"))
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict


class Persistent:
    """One module as NVlabs pickles it."""

    def __init__(self, class_name, params=None, buffers=None, modules=None, source=DUMMY_SOURCE, **attributes):
        self.class_name, self.source = class_name, source
        self.state = {"training": False, "_parameters": collections.OrderedDict(params or {}),
                      "_buffers": collections.OrderedDict(buffers or {}),
                      "_modules": collections.OrderedDict(modules or {}), **attributes}

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (dict(type="class", version=4, module_src=self.source,
                                                   class_name=self.class_name, state=self.state),))


def fc(weight, bias, lr_multiplier=1.0, activation="linear"):
    return Persistent("FullyConnectedLayer", {"weight": weight, "bias": bias}, activation=activation,
                      weight_gain=np.float64(lr_multiplier / np.sqrt(weight.shape[1])),
                      bias_gain=np.float64(lr_multiplier))


def generator(g, w_avg, c_dim=0, architecture="skip", conv_clamp=None, synthesis_extra=None):
    """Our Generator `g` (rosinality layout) as an NVlabs Generator record."""
    s = {k: v.detach().clone() for k, v in g.state_dict().items()}
    n_mlp, size, style_dim = len(g.style) - 1, g.size, g.style_dim
    mapping = Persistent("MappingNetwork", buffers={"w_avg": w_avg.clone()},
                         modules={f"fc{i}": fc(s[f"style.{i + 1}.weight"], s[f"style.{i + 1}.bias"], 0.01, "lrelu")
                                  for i in range(n_mlp)},
                         z_dim=style_dim, c_dim=c_dim, w_dim=style_dim, num_layers=n_mlp)

    def layer(ours, noise_index, resolution, up):
        return Persistent("SynthesisLayer", {"weight": s[f"{ours}.conv.weight"][0],
                                             "noise_strength": s[f"{ours}.noise.weight"].reshape(()),
                                             "bias": s[f"{ours}.activate.bias"]},
                          {"resample_filter": RESAMPLE_FILTER.clone(),
                           "noise_const": s[f"noises.noise_{noise_index}"][0, 0]},
                          {"affine": fc(s[f"{ours}.conv.modulation.weight"], s[f"{ours}.conv.modulation.bias"])},
                          resolution=resolution, up=up, conv_clamp=conv_clamp)

    def torgb(ours):
        return Persistent("ToRGBLayer", {"weight": s[f"{ours}.conv.weight"][0], "bias": s[f"{ours}.bias"].flatten()},
                          modules={"affine": fc(s[f"{ours}.conv.modulation.weight"], s[f"{ours}.conv.modulation.bias"])},
                          conv_clamp=conv_clamp)

    blocks = {"b4": Persistent("SynthesisBlock", {"const": s["input.input"][0]},
                               modules={"conv1": layer("conv1", 0, 4, 1), "torgb": torgb("to_rgb1")},
                               resolution=4, architecture=architecture, use_fp16=False)}
    for k, res in enumerate(2 ** i for i in range(3, int(np.log2(size)) + 1)):
        blocks[f"b{res}"] = Persistent("SynthesisBlock", modules={
            "conv0": layer(f"convs.{2 * k}", 2 * k + 1, res, 2), "conv1": layer(f"convs.{2 * k + 1}", 2 * k + 2, res, 1),
            "torgb": torgb(f"to_rgbs.{k}")}, resolution=res, architecture=architecture, use_fp16=False)
    synthesis = Persistent("SynthesisNetwork", modules={**blocks, **(synthesis_extra or {})}, w_dim=style_dim,
                           img_resolution=size, img_channels=3)
    kwargs = EasyDict(z_dim=style_dim, c_dim=c_dim, w_dim=style_dim, img_resolution=size, img_channels=3)
    return Persistent("Generator", modules={"synthesis": synthesis, "mapping": mapping}, z_dim=style_dim, c_dim=c_dim,
                      w_dim=style_dim, img_resolution=size, img_channels=3, _init_kwargs=kwargs, _init_args=())


def discriminator(d, size, architecture="resnet", mbstd_group=4):
    """Our Discriminator `d` (rosinality layout) as an NVlabs resnet Discriminator record."""
    s = {k: v.detach().clone() for k, v in d.state_dict().items()}

    def conv(weight, bias=None):
        return Persistent("Conv2dLayer", {"weight": weight, **({"bias": bias} if bias is not None else {})})

    blocks = {}
    for j, res in enumerate((2 ** i for i in range(int(np.log2(size)), 2, -1)), start=1):
        modules = {"conv0": conv(s[f"convs.{j}.conv1.0.weight"], s[f"convs.{j}.conv1.1.bias"]),
                   "conv1": conv(s[f"convs.{j}.conv2.1.weight"], s[f"convs.{j}.conv2.2.bias"]),
                   "skip": conv(s[f"convs.{j}.skip.1.weight"])}
        if j == 1:
            modules = {"fromrgb": conv(s["convs.0.0.weight"], s["convs.0.1.bias"]), **modules}
        blocks[f"b{res}"] = Persistent("DiscriminatorBlock", modules=modules, resolution=res, architecture=architecture)
    blocks["b4"] = Persistent("DiscriminatorEpilogue", modules={
        "mbstd": Persistent("MinibatchStdLayer", group_size=mbstd_group, num_channels=1),
        "conv": conv(s["final_conv.0.weight"], s["final_conv.1.bias"]),
        "fc": fc(s["final_linear.0.weight"], s["final_linear.0.bias"], activation="lrelu"),
        "out": fc(s["final_linear.1.weight"], s["final_linear.1.bias"])}, architecture=architecture, resolution=4)
    return Persistent("Discriminator", modules=blocks, c_dim=0, img_resolution=size, img_channels=3,
                      _init_kwargs=EasyDict(c_dim=0, img_resolution=size, img_channels=3))


def write_snapshot(path, g_record, d_record, g_ema_record, protocol=4, **extra):
    """Pickle a snapshot dict as NVlabs' training loop does (pickle.dump of a dict)."""
    _register_stand_ins()
    snapshot = dict(training_set_kwargs=EasyDict(resolution=8), G=g_record, D=d_record, G_ema=g_ema_record,
                    augment_pipe=None, **extra)
    with open(path, "wb") as f:
        pickle.dump(snapshot, f, protocol=protocol)
    return path
