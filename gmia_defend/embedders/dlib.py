"""``DlibResNetEmbedder``: dlib's pretrained face recognition ResNet, re-implemented in PyTorch.

The network is ``dlib_face_recognition_resnet_model_v1.dat`` (Davis King, CC0; 29 conv layers,
5.6 M parameters, 128-d output), shipped on PyPI by ``face_recognition_models``. Its bytes are parsed
by ``dlib_format`` (dlib itself is not needed), converted once to a PyTorch payload, cached as
``<cache>/dlib/<name>-<sha256 prefix>.pt`` (atomic write; the source's SHA-256 recorded inside; loads
with ``weights_only=True``) and run as an ordinary differentiable, batched, GPU-capable module.

Input: 150x150 aligned face chips as dlib's ``get_face_chip(img, shape, size=150, padding=0.25)``
makes them (``gmia_defend.data.photos.align_faces(..., target="dlib")`` makes such chips from photos).
dlib's input layer (``input_rgb_image_sized<150>``) maps a pixel ``p`` in [0, 255] to
``(p - mean_c) / 256`` with channel means (122.782, 117.001, 104.298), read from the file.

Threshold. dlib calls two faces the same person when the Euclidean distance of their raw descriptors
is below 0.6 (the ``loss_metric`` distance threshold, also read from the file). The descriptors are
not unit vectors: their norm is about 1.25-1.4 (``DLIB_TYPICAL_NORM``). For two descriptors of norm
``n``, ``|a - b|^2 = 2 n^2 (1 - cos)``, so distance < 0.6 is cosine ``> 1 - 0.18 / n^2`` (0.90 at
n = 1.35). ``threshold`` (cosine, on the unit embeddings ``forward`` returns) is that value; it
agrees with dlib's rule up to the spread of norms, so ``raw_descriptors`` and ``dlib_same_person``
keep dlib's exact rule, and ``calibrate_threshold`` on real photos replaces it by one at a chosen FAR.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gmia_defend.embedders.base import Embedder
from gmia_defend.embedders.dlib_format import DlibNetwork, read_dnn
from gmia_defend.embedders.weights import cache_dir, load_torch_weights_only, sha256_file
from gmia_defend.io import save_torch_atomic
from gmia_defend.errors import UserError, WeightsError

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
#: SHA-256 of DAT_NAME as shipped by face_recognition_models 0.3.0 (22,466,066 bytes).
KNOWN_DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
#: Version of the converted payload; bump when ``convert_dat`` changes (old cache files are ignored).
CONVERTED_FORMAT = "gmia-dlib-dnn/1"
#: dlib's same-person rule: Euclidean distance of raw descriptors below this.
DLIB_DISTANCE_THRESHOLD = 0.6
#: Typical L2 norm of this network's raw descriptors on aligned 150x150 face chips: measured 1.37-1.40
#: on chips of a real photo (matplotlib's grace_hopper.jpg, jittered) and 1.24-1.34 on rendered faces.
DLIB_TYPICAL_NORM = 1.35


def cosine_threshold_from_distance(distance: float = DLIB_DISTANCE_THRESHOLD,
                                   norm: float = DLIB_TYPICAL_NORM) -> float:
    """Cosine similarity equivalent to a Euclidean distance threshold for descriptors of norm ``norm``."""
    return 1.0 - distance * distance / (2.0 * norm * norm)


# ------------------------------------------------------------------------------------------ weights
def default_dat_path() -> Path:
    """The .dat inside the installed ``face_recognition_models`` package (located without importing it:
    its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "models" / DAT_NAME
        if path.is_file():
            return path
    raise WeightsError(
        f"dlib face recognition weights not found: {DAT_NAME} comes with the PyPI package "
        "face_recognition_models; install it with `pip install face_recognition_models` (or "
        "`pip install gmia-defend[dlib]`), or pass DlibResNetEmbedder(weights='<path to the .dat>')"
    )


def convert_dat(path: str | os.PathLike, sha256: str | None = None) -> dict[str, Any]:
    """Parse a dlib .dat and return the converted payload (plain types and tensors only)."""
    path = Path(path)
    net = read_dnn(path)
    return _payload(net, sha256 or sha256_file(path), path.name)


def _payload(net: DlibNetwork, sha256: str, source_name: str) -> dict[str, Any]:
    ops: list[dict[str, Any]] = []
    state: dict[str, torch.Tensor] = {}
    channels = 3
    saved: list[int] = []  # channel counts on DlibNet's tag stack, to check conv inputs
    for i, layer in enumerate(net.layers):
        f = layer.fields
        op: dict[str, Any] = {"kind": layer.kind}
        if layer.kind == "tag":
            saved.append(channels)
        elif layer.kind == "tag_skip" and saved:
            channels, saved[-1] = saved[-1], channels
        elif layer.kind == "add_prev" and saved:
            channels = max(channels, saved.pop())
        elif layer.kind == "con":
            shape = tuple(f["filters_shape"])
            if shape[1] != channels:
                raise WeightsError(f"{source_name}: conv layer {i} expects {shape[1]} channels, gets {channels}")
            n = int(np.prod(shape))
            op.update(stride=[f["stride_y"], f["stride_x"]], padding=[f["padding_y"], f["padding_x"]],
                      bias=bool(f["use_bias"]))
            state[f"{i}.weight"] = torch.from_numpy(layer.params[:n].copy()).reshape(shape)
            if f["use_bias"]:
                state[f"{i}.bias"] = torch.from_numpy(layer.params[n:n + shape[0]].copy())
            channels = shape[0]
        elif layer.kind == "affine":
            shape = tuple(f["gamma_shape"])
            n = int(np.prod(shape))
            state[f"{i}.weight"] = torch.from_numpy(layer.params[:n].copy()).reshape(shape)
            state[f"{i}.bias"] = torch.from_numpy(layer.params[n:2 * n].copy()).reshape(shape)
        elif layer.kind in ("max_pool", "avg_pool"):
            op.update(window=[f["nr"], f["nc"]], stride=[f["stride_y"], f["stride_x"]],
                      padding=[f["padding_y"], f["padding_x"]])
        elif layer.kind == "fc":
            n_in, n_out = f["num_inputs"], f["num_outputs"]
            op.update(bias=f["bias_mode"] == 0)
            # dlib computes output = input (N x n_in) times W (n_in x n_out).
            state[f"{i}.weight"] = torch.from_numpy(layer.params[:n_in * n_out].copy()).reshape(n_in, n_out).T.contiguous()
            if op["bias"]:
                state[f"{i}.bias"] = torch.from_numpy(layer.params[n_in * n_out:n_in * n_out + n_out].copy())
            channels = n_out
        ops.append(op)
    return {
        "format": CONVERTED_FORMAT,
        "source_sha256": sha256,
        "source_name": source_name,
        "input": {"type": net.input["type"], "mean": [float(m) for m in net.input["mean"]],
                  "size": int(net.input.get("nr", 150))},
        "loss": {k: v for k, v in net.loss.items()},
        "ops": ops,
        "state_dict": state,
    }


def _check_payload(payload: Any, where: str) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != CONVERTED_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise WeightsError(
            f"{where} is not a converted dlib network of format {CONVERTED_FORMAT!r} (found {found!r}); "
            f"pass the original {DAT_NAME} instead and it is converted again"
        )
    return payload


def load_dlib_weights(weights: str | os.PathLike | None = None, cache: bool = True) -> dict[str, Any]:
    """The converted payload for ``weights``: None (the face_recognition_models .dat), a .dat, or a
    converted .pt. A .dat is converted once and cached by its SHA-256 unless ``cache=False``."""
    path = default_dat_path() if weights is None else Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"dlib weights file not found: {path}; give the path of {DAT_NAME} or of a "
                           "converted .pt (or omit weights to use the face_recognition_models package)")
    if path.suffix in (".pt", ".pth"):
        return _check_payload(load_torch_weights_only(path, "converted dlib weights"), str(path))
    sha = sha256_file(path)
    target = cache_dir() / "dlib" / f"{path.stem}-{sha[:16]}.pt"
    if cache and target.is_file():
        try:
            payload = _check_payload(load_torch_weights_only(target, "cached dlib weights"), str(target))
            if payload.get("source_sha256") == sha:
                return payload
        except WeightsError:
            pass  # a stale or damaged cache entry is rebuilt below
    payload = convert_dat(path, sha256=sha)
    if cache:
        try:
            save_torch_atomic(target, payload)
        except OSError:
            pass  # a read-only cache only costs a re-conversion (~0.2 s)
    return payload


# ------------------------------------------------------------------------------------------ network
class _Affine(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.weight)


class _Op(nn.Module):
    """A parameter-free op of the op list (pooling, relu, structural markers)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.kind = spec["kind"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if self.kind == "relu":
            return F.relu(x)
        if self.kind in ("max_pool", "avg_pool"):
            window = [w if w > 0 else x.shape[2 + j] for j, w in enumerate(s["window"])]
            if self.kind == "max_pool":
                return F.max_pool2d(x, window, s["stride"], s["padding"])
            return F.avg_pool2d(x, window, s["stride"], s["padding"], count_include_pad=False)
        raise AssertionError(self.kind)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec.items())


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: sum of two tensors of possibly different C, H, W; the output takes the larger
    size in each dimension and a missing part counts as zero (both aligned at the top-left)."""
    if a.shape == b.shape:
        return a + b
    shape = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:])]

    def grow(t: torch.Tensor) -> torch.Tensor:
        pads = [0, shape[2] - t.shape[3], 0, shape[1] - t.shape[2], 0, shape[0] - t.shape[1]]
        return F.pad(t, pads) if any(pads) else t

    return grow(a) + grow(b)


class DlibNet(nn.Module):
    """A dlib DNN from its converted op list: the layers in input-to-output order plus a stack for
    ``tag`` (save the output), ``tag_skip`` (save the output, continue from the previous saved one)
    and ``add_prev`` (add the last saved output), the structure of dlib's residual blocks."""

    def __init__(self, ops: list[dict[str, Any]], state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.kinds = [op["kind"] for op in ops]
        layers: list[nn.Module] = []
        for i, op in enumerate(ops):
            kind = op["kind"]
            if kind == "con":
                w = state_dict[f"{i}.weight"] if state_dict is not None else None
                out_c, in_c, kh, kw = w.shape
                layers.append(nn.Conv2d(in_c, out_c, (kh, kw), tuple(op["stride"]), tuple(op["padding"]),
                                        bias=op["bias"]))
            elif kind == "affine":
                layers.append(_Affine(tuple(state_dict[f"{i}.weight"].shape)))
            elif kind == "fc":
                w = state_dict[f"{i}.weight"]
                layers.append(nn.Linear(w.shape[1], w.shape[0], bias=op["bias"]))
            elif kind in ("relu", "max_pool", "avg_pool"):
                layers.append(_Op(op))
            elif kind in ("tag", "tag_skip", "add_prev"):
                layers.append(nn.Identity())
            else:
                raise WeightsError(f"unsupported dlib layer kind {kind!r} in converted weights")
        self.layers = nn.ModuleList(layers)
        if state_dict is not None:
            missing, unexpected = self.layers.load_state_dict(state_dict, strict=False)
            if missing or unexpected:
                raise WeightsError(f"converted dlib weights do not fit the op list (missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}); convert the .dat again")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: list[torch.Tensor] = []
        for kind, layer in zip(self.kinds, self.layers):
            if kind == "tag":
                saved.append(x)
            elif kind == "tag_skip":
                previous = saved.pop()
                saved.append(x)
                x = previous
            elif kind == "add_prev":
                x = _add_prev(x, saved.pop())
            elif kind == "fc":
                x = layer(x.flatten(1))
            else:
                x = layer(x)
        if x.ndim != 2:
            x = x.flatten(1)
        return x


# ------------------------------------------------------------------------------------------ embedder
class DlibResNetEmbedder(Embedder):
    """dlib's face recognition ResNet as an ``Embedder`` (name ``"dlib"``, 150x150 input, 128-d).

    ``weights``: None (the .dat of the installed ``face_recognition_models``), a path to that .dat
    (converted once, cached under ``$GMIA_CACHE``/dlib), or a converted .pt. ``forward`` gives unit
    vectors; ``raw_descriptors`` gives dlib's own (unnormalised) descriptors.

    >>> model = DlibResNetEmbedder("dlib_face_recognition_resnet_model_v1.dat")  # doctest: +SKIP
    >>> model(images).shape  # images: [N, 3, 150, 150] aligned face chips in [-1, 1]  # doctest: +SKIP
    torch.Size([N, 128])
    """

    name = "dlib"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 cache: bool = True) -> None:
        payload = load_dlib_weights(weights, cache=cache)
        size = int(payload["input"]["size"])
        net = DlibNet(payload["ops"], payload["state_dict"])
        with torch.no_grad():
            dim = int(net(torch.zeros(1, 3, size, size)).shape[1])
        super().__init__(input_size=size, dim=dim)
        self.net = net
        self.source_sha256 = str(payload["source_sha256"])
        self.distance_threshold = float(payload["loss"].get("distance_threshold", DLIB_DISTANCE_THRESHOLD))
        self.register_buffer("mean", torch.tensor(payload["input"]["mean"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.threshold = cosine_threshold_from_distance(self.distance_threshold)
        self.threshold_far = None
        self.requires_grad_(False)
        self.eval()
        if device is not None:
            self.to(device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> dlib's input scale: pixel p = (x + 1) * 127.5, then (p - mean) / 256."""
        return ((x + 1.0) * 127.5 - self.mean) / 256.0

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def raw_descriptors(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """dlib's descriptors (not normalised, float32, [N, 128]) on the images' device, no grad."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1; got {batch_size}")
        device = self.mean.device
        out = []
        with torch.no_grad(), self._eval_mode():
            for start in range(0, images.shape[0], batch_size):
                x = self.preprocess(images[start:start + batch_size].to(device))
                out.append(self.net(x).float().to(images.device))
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=images.device)

    def dlib_same_person(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """dlib's rule on raw descriptors: Euclidean distance < 0.6 (row-wise, broadcasting)."""
        return torch.linalg.vector_norm(a - b, dim=-1) < self.distance_threshold
