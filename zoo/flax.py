"""Flax / JAX checkpoints (``sslzoo convert ... --format flax-msgpack``).

**The file.** ``flax.serialization.to_bytes(target)`` (also what ``flax.training.checkpoints.save_checkpoint``
writes with its legacy backend, as UvA tutorial 17's JAX notebook does with
``target={'params': ..., 'batch_stats': ...}``) is one msgpack map. Arrays are msgpack extension type 1
whose payload is the msgpack list ``[shape, dtype name, C-order bytes]``; type 3 is a numpy scalar in the
same encoding, type 2 a Python complex; an array over 2**30 bytes is split into a map
``{"__msgpack_chunked_array__": true, "shape": {"0": ...}, "chunks": {"0": array, ...}}``. msgpack decodes
data only (no code runs), so reading needs just the ``msgpack`` package and numpy, not jax or flax:
:func:`read_checkpoint` decodes the same tree as ``flax.serialization.msgpack_restore`` (the tests compare
them leaf for leaf where flax is installed).

**The model.** The tutorial's encoder is ``flaxmodels.ResNet18(output='activations', pretrained=False,
normalize=False, num_classes=512)`` (matthias-wright/flaxmodels, checked against flaxmodels 0.1.3):
torchvision's ResNet-18 in NHWC with the ImageNet stem (7x7/2 conv padding 3, BatchNorm, ReLU, 3x3/2
max-pool padding 1), BasicBlocks [2, 2, 2, 2] with the stride on the first 3x3 conv and a 1x1/2 conv +
BatchNorm shortcut in the first block of stages 2-4, BatchNorm epsilon 1e-5 everywhere; its features
(``encode``) are ``block4_1`` mean-pooled, torchvision's pooled 512-d feature. Flax names the modules by
class and call order, so the tree under ``params/convnet`` (and ``batch_stats/convnet``) maps as

=====================================  ==========================================
flaxmodels                             torchvision
=====================================  ==========================================
``Conv_0`` / ``BatchNorm_0``           ``conv1`` / ``bn1``
``BasicBlock_k``                       ``layer{s}.{i}`` (k counted over the stages)
``BasicBlock_k/Conv_0``, ``Conv_1``    ``conv1``, ``conv2``
``BasicBlock_k/BatchNorm_0``, ``_1``   ``bn1``, ``bn2``
``BasicBlock_k/Conv_2``, ``BatchNorm_2``  ``downsample.0``, ``downsample.1``
=====================================  ==========================================

and per leaf: conv ``kernel`` (H, W, I, O) -> ``weight`` (O, I, H, W); BatchNorm ``scale`` / ``bias`` /
``mean`` / ``var`` -> ``weight`` / ``bias`` / ``running_mean`` / ``running_var`` (``num_batches_tracked``,
which flax does not keep, is 0). The ResNet's ``Dense_0`` (the tutorial's first projection layer, 512->512)
and everything outside the ResNet (the tutorial's ``head/layers_1``, 512->128) go to the heads file under
their flax path, Dense ``kernel`` (in, out) transposed to torch's ``weight`` (out, in). Every leaf of the file
is placed somewhere; the backbone is loaded strictly by :func:`zoo.convert.convert`.

flaxmodels' BatchNorm keeps ``running = 0.1 * running + 0.9 * batch`` (a momentum of 0.1 in Flax's
convention, not PyTorch's), so the stored statistics are close to the last training batches': the
conversion is exact, but the statistics are noisier than a PyTorch-trained model's.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .io import WeightsError

__all__ = ["FORMAT", "HEADS_LAYOUT", "looks_like_msgpack", "is_msgpack_file", "read_checkpoint", "flatten_tree",
           "split_flax_resnet", "msgpack_hint"]

log = logging.getLogger(__name__)

FORMAT = "flax-msgpack"
HEADS_LAYOUT = ("flax paths kept: <resnet>.Dense_0 (the ResNet's fc; in the tutorial 512->512) and every module "
                "outside the ResNet (the tutorial's SimCLR head.layers_1, 512->128); Dense kernels transposed to "
                "torch's (out, in)")

# numbers of BasicBlocks -> blocks per stage (flaxmodels' LAYERS)
_BASIC_LAYOUTS = {8: ("resnet18", [2, 2, 2, 2]), 16: ("resnet34", [3, 4, 6, 3])}
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


# ----------------------------------------------------------------------------- recognising the file

def looks_like_msgpack(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts a non-empty msgpack map with a string key, as
    every Flax checkpoint does. A pickle starts with 0x80 (PROTO) or an ASCII opcode, a torch.save zip with
    ``PK``, safetensors with a little-endian header length: none of them look like this."""
    if len(head) < 2:
        return False
    b0 = head[0]
    if 0x81 <= b0 <= 0x8F:  # fixmap with 1..15 entries
        key = head[1:2]
    elif b0 == 0xDE and len(head) >= 4 and head[1:3] != b"\x00\x00":  # map16
        key = head[3:4]
    elif b0 == 0xDF and len(head) >= 6 and head[1:5] != b"\x00\x00\x00\x00":  # map32
        key = head[5:6]
    else:
        return False
    return bool(key) and (0xA0 <= key[0] <= 0xBF or key[0] in (0xD9, 0xDA, 0xDB))  # a str key


def is_msgpack_file(path: str | Path) -> bool:
    """Whether the file at ``path`` starts like a msgpack map (see :func:`looks_like_msgpack`)."""
    try:
        with open(path, "rb") as f:
            return looks_like_msgpack(f.read(8))
    except OSError:
        return False


def msgpack_hint(path: str | Path) -> str:
    """The one line for a Flax msgpack file given to a PyTorch reader: which converter reads it."""
    return (f"{path} is a Flax/JAX msgpack checkpoint, not a PyTorch pickle; convert it with --format {FORMAT} "
            f"(sslzoo convert NAME --checkpoint {path} --format {FORMAT} --out DIR)")


# ----------------------------------------------------------------------------- reading

def _ndarray(payload: bytes) -> np.ndarray:
    import msgpack

    shape, dtype_name, buffer = msgpack.unpackb(payload, raw=True)
    name = dtype_name.decode() if isinstance(dtype_name, bytes) else str(dtype_name)
    shape = tuple(int(s) for s in shape)
    if name == "bfloat16":  # numpy has no bfloat16: its 16 bits are the top half of a float32
        u16 = np.frombuffer(buffer, dtype="<u2")
        return (u16.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise WeightsError(f"array of unknown dtype {name!r} in the Flax checkpoint") from None
    if dtype.hasobject:
        raise WeightsError(f"array of dtype {name!r} in the Flax checkpoint: only numeric arrays are read")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order="C")


def _ext_hook(code: int, payload: bytes):
    import msgpack

    if code == _EXT_NDARRAY:
        return _ndarray(payload)
    if code == _EXT_NPSCALAR:
        return _ndarray(payload)[()]
    if code == _EXT_COMPLEX:
        re_, im = msgpack.unpackb(payload)
        return complex(re_, im)
    raise WeightsError(f"unknown msgpack extension type {code} in the Flax checkpoint (flax writes 1, 2, 3)")


def _unchunk(tree):
    if isinstance(tree, dict):
        if tree.get(_CHUNKED) is True:
            shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_checkpoint(path: str | Path) -> dict:
    """The tree of a Flax msgpack checkpoint (``flax.serialization.to_bytes``): nested dicts with numpy
    arrays (bfloat16 widened to float32) and Python scalars as leaves. Needs only ``msgpack``."""
    try:
        import msgpack
    except ImportError:
        raise WeightsError("reading a Flax msgpack checkpoint needs the msgpack package: pip install msgpack "
                           "(or pip install 'ssl-zoo[jax]')") from None
    path = Path(path)
    data = path.read_bytes()
    if not looks_like_msgpack(data[:8]):
        what = ("a PyTorch zip checkpoint" if data[:2] == b"PK" else "a pickle" if data[:1] == b"\x80"
                else "empty" if not data else "not a msgpack map")
        raise WeightsError(f"{path} is not a Flax msgpack checkpoint ({what}); choose the format that wrote it "
                           f"with --format")
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except WeightsError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"{path} is not a readable Flax msgpack checkpoint ({type(e).__name__}: {first}); it may "
                           f"be truncated") from None
    if not isinstance(tree, dict):
        raise WeightsError(f"{path}: a Flax checkpoint is a msgpack map, this file holds a {type(tree).__name__}")
    return _unchunk(tree)


def flatten_tree(tree: Mapping, prefix: tuple = ()) -> dict[tuple, object]:
    """``{path tuple: leaf}`` of a nested mapping (``None`` subtrees, e.g. empty ``batch_stats``, are leaves)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten_tree(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


# ----------------------------------------------------------------------------- flaxmodels ResNet -> torchvision

def _find_resnet(params: Mapping):
    """Path of the first (breadth-first, up to 4 levels down) subtree of ``params`` that is a flaxmodels
    ResNet, or None."""
    level = [((), params)]
    for _ in range(4):
        nxt = []
        for p, node in level:
            if "Conv_0" in node and "BatchNorm_0" in node and any(
                    str(k).startswith(("BasicBlock_", "Bottleneck_")) for k in node):
                return p
            nxt += [((*p, str(k)), v) for k, v in node.items() if isinstance(v, Mapping)]
        level = nxt
    return None


def _torch_leaf(name: str, value, path: tuple) -> tuple[str, torch.Tensor]:
    """A flax leaf -> (torch parameter name, tensor in torch's layout)."""
    if not isinstance(value, np.ndarray):
        raise WeightsError(f"{'/'.join(path)} is a {type(value).__name__}, not an array")
    t = torch.from_numpy(np.array(value, copy=True))
    if name == "kernel":
        if t.ndim == 4:  # conv (H, W, I, O) -> (O, I, H, W)
            return "weight", t.permute(3, 2, 0, 1).contiguous()
        if t.ndim == 2:  # dense (in, out) -> (out, in)
            return "weight", t.t().contiguous()
        raise WeightsError(f"{'/'.join(path)}: a kernel of shape {tuple(t.shape)} (expected a conv or dense kernel)")
    return {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}.get(name, name), t


def _backbone_module(rel: tuple, stage_of: dict) -> str | None:
    """torchvision module name of the flaxmodels module at ``rel`` (path below the ResNet), or None."""
    top = {"Conv_0": "conv1", "BatchNorm_0": "bn1"}
    if len(rel) == 1:
        return top.get(rel[0])
    if len(rel) == 2 and rel[0] in stage_of:
        sub = {"Conv_0": "conv1", "Conv_1": "conv2", "BatchNorm_0": "bn1", "BatchNorm_1": "bn2",
               "Conv_2": "downsample.0", "BatchNorm_2": "downsample.1"}.get(rel[1])
        return f"{stage_of[rel[0]]}.{sub}" if sub else None
    return None


def split_flax_resnet(tree) -> tuple[dict, dict, dict]:
    """A Flax checkpoint tree ``{params, batch_stats}`` holding a flaxmodels BasicBlock ResNet (ResNet-18/34)
    -> (torchvision backbone state dict, heads state dict, provenance). See the module docstring."""
    if not isinstance(tree, Mapping) or not isinstance(tree.get("params"), Mapping):
        keys = ", ".join(map(str, list(tree)[:5])) if isinstance(tree, Mapping) else type(tree).__name__
        raise WeightsError(f"not a Flax training checkpoint: expected a map {{params, batch_stats}}, found {keys}")
    params, stats = tree["params"], tree.get("batch_stats")
    root = _find_resnet(params)
    if root is None:
        raise WeightsError(f"no flaxmodels-style ResNet (Conv_0, BatchNorm_0, BasicBlock_0 ...) under params "
                           f"(top-level modules: {', '.join(map(str, list(params)[:6]))}); a ResNet encoder is needed")
    node = params
    for k in root:
        node = node[k]
    if any(str(k).startswith("Bottleneck_") for k in node):
        raise WeightsError("a flaxmodels Bottleneck ResNet (ResNet-50 and deeper) is not supported yet; "
                           "flax-msgpack reads the BasicBlock ResNets (ResNet-18 / ResNet-34)")
    blocks = sorted(int(str(k).removeprefix("BasicBlock_")) for k in node if str(k).startswith("BasicBlock_"))
    if blocks != list(range(len(blocks))) or len(blocks) not in _BASIC_LAYOUTS:
        raise WeightsError(f"unsupported flaxmodels ResNet: {len(blocks)} BasicBlocks (ResNet-18 has 8, ResNet-34 16)")
    arch_name, layers = _BASIC_LAYOUTS[len(blocks)]
    stage_of, k = {}, 0
    for s, n in enumerate(layers, 1):
        for i in range(n):
            stage_of[f"BasicBlock_{k}"] = f"layer{s}.{i}"
            k += 1
    if not isinstance(stats, Mapping) or not stats:
        raise WeightsError("the Flax checkpoint has no batch_stats (BatchNorm running statistics); a ResNet cannot be "
                           "converted without them (save {'params': ..., 'batch_stats': ...})")

    backbone, heads, where = {}, {}, {}
    for collection, sub in (("params", params), ("batch_stats", stats)):
        for path, leaf in flatten_tree(sub).items():
            full = (collection, *path)
            if leaf is None or (isinstance(leaf, Mapping) and not leaf):
                continue  # an empty subtree holds nothing
            rel = path[len(root):-1] if path[:len(root)] == root else None
            module = _backbone_module(rel, stage_of) if rel else None
            name, t = _torch_leaf(path[-1], leaf, full)
            key, target = (f"{module}.{name}", backbone) if module else (".".join((*path[:-1], name)), heads)
            if key in target:
                raise WeightsError(f"{'/'.join(full)} and {where[key]} both map to {key}")
            target[key], where[key] = t, "/".join(full)
            if module and name == "running_mean":
                backbone[f"{module}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    meta = {"flax_resnet": "/".join(("params", *root)) or "params", "flaxmodels_arch": arch_name,
            "collections": sorted(map(str, tree)), "leaves": len(where)}
    log.debug(f"flax checkpoint: {arch_name} at {meta['flax_resnet']}, {len(backbone)} backbone / {len(heads)} "
              f"head tensors")
    return backbone, heads, meta
