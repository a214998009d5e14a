"""Reader of dlib's binary serialisation of DNNs (``.dat`` files such as the face recognition ResNet).

dlib writes a network recursively from the loss layer down: every ``add_layer`` writes its version,
then its sub-network, then its own layer details, so the file holds first a run of version integers
(outermost layer first; ``2`` = a computational layer, ``1`` = a tag or skip layer, which carry no
data), then the input layer, then the details of every computational layer from the input upwards.
This module parses those bytes into plain Python objects (no dlib needed); ``dlib.py`` turns them
into a PyTorch network.

Primitive encodings (dlib/serialize.h, dlib/float_details.h, dlib/dnn/tensor.h):

- integers: one control byte (low nibble = number of value bytes, ``0x80`` = negative, bits ``0x70``
  always 0) then the magnitude, little-endian;
- floats: integer mantissa then integer exponent, value ``mantissa * 2**exponent`` (exponents 32000,
  32001, 32002 mean +inf, -inf, NaN);
- bool: the ASCII byte ``'1'`` or ``'0'``; string: integer length then the bytes;
- tensor: version (1: dlib floats, 2: raw little-endian float32), then num_samples, k, nr, nc, data;
- alias_tensor (a view into a layer's ``params``): version 1 then num_samples, k, nr, nc.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gmia_defend.errors import WeightsError

_IS_INF, _IS_NINF, _IS_NAN = 32000, 32001, 32002


class DlibFormatError(WeightsError):
    """The bytes are not a dlib DNN of a kind this reader understands (corrupt, truncated, other net)."""


@dataclass
class DlibLayer:
    """One layer, in input-to-output order. ``kind`` is dlib's name without version suffix
    (``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``) or ``tag``/
    ``tag_skip`` for the data-free structural markers (see :func:`read_dnn`)."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    params: np.ndarray | None = None  # the layer's flat float32 parameter tensor, if any


@dataclass
class DlibNetwork:
    """A parsed dlib DNN: loss, input layer and layers from the input upwards."""

    loss: dict[str, Any]
    input: dict[str, Any]
    layers: list[DlibLayer]

    def kinds(self) -> list[str]:
        return [layer.kind for layer in self.layers]


class DlibReader:
    """Sequential reader of dlib's primitive encodings over an in-memory buffer."""

    def __init__(self, data: bytes | memoryview, name: str = "<bytes>") -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    def _fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self.name} is not a readable dlib network file ({what} at byte {self.pos} of "
            f"{len(self.data)}); the file is corrupt, truncated or of another kind: download "
            "dlib_face_recognition_resnet_model_v1.dat again (pip install --force-reinstall "
            "face_recognition_models)"
        )

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self._fail(f"unexpected end of data reading {n} bytes")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def peek_int(self) -> int:
        """The next integer without consuming it."""
        pos = self.pos
        try:
            return self.read_int()
        finally:
            self.pos = pos

    def read_int(self) -> int:
        ctrl = self._take(1)[0]
        if ctrl & 0x70:
            raise self._fail(f"bad integer control byte 0x{ctrl:02x}")
        size = ctrl & 0x0F
        if size > 8:
            raise self._fail(f"integer of {size} bytes")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if ctrl & 0x80 else value

    def read_float(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self._fail("old ASCII float encoding (unsupported)")
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent < _IS_INF:
            return math.ldexp(float(mantissa), exponent)
        return {_IS_INF: math.inf, _IS_NINF: -math.inf}.get(exponent, math.nan)

    def read_bool(self) -> bool:
        byte = self._take(1)[0]
        if byte not in (ord("0"), ord("1")):
            raise self._fail(f"bad bool byte 0x{byte:02x}")
        return byte == ord("1")

    def read_string(self, max_len: int = 1 << 16) -> str:
        n = self.read_int()
        if not 0 <= n <= max_len:
            raise self._fail(f"string length {n}")
        try:
            return bytes(self._take(n)).decode("ascii")
        except UnicodeDecodeError:
            raise self._fail("non-ASCII string") from None

    def read_tensor(self) -> np.ndarray:
        """A dlib tensor as a float32 array shaped (num_samples, k, nr, nc)."""
        version = self.read_int()
        if version not in (1, 2):
            raise self._fail(f"tensor version {version}")
        shape = tuple(self.read_int() for _ in range(4))
        if any(s < 0 for s in shape):
            raise self._fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        if version == 2:
            raw = self._take(4 * count)
            return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
        return np.asarray([self.read_float() for _ in range(count)], dtype=np.float32).reshape(shape)

    def read_alias(self) -> tuple[int, int, int, int]:
        version = self.read_int()
        if version != 1:
            raise self._fail(f"alias_tensor version {version}")
        return tuple(self.read_int() for _ in range(4))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- layer details
def _flat(t: np.ndarray) -> np.ndarray:
    return t.reshape(-1)


def _read_con(r: DlibReader, tag: str) -> DlibLayer:
    params = r.read_tensor()
    f: dict[str, Any] = {}
    f["num_filters"], f["nr"], f["nc"] = r.read_int(), r.read_int(), r.read_int()
    f["stride_y"], f["stride_x"] = r.read_int(), r.read_int()
    f["padding_y"], f["padding_x"] = r.read_int(), r.read_int()
    f["filters_shape"], f["biases_shape"] = r.read_alias(), r.read_alias()
    f["use_bias"] = True
    if tag == "con_5":  # newer dlib adds use_bias after the aliases
        f["use_bias"] = r.read_bool()
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        f[name] = r.read_float()
    return DlibLayer("con", f, _flat(params))


def _read_affine(r: DlibReader, tag: str) -> DlibLayer:
    params = r.read_tensor()
    f = {"gamma_shape": r.read_alias(), "beta_shape": r.read_alias(), "mode": r.read_int()}
    return DlibLayer("affine", f, _flat(params))


def _read_pool(kind: str):
    def read(r: DlibReader, tag: str) -> DlibLayer:
        f: dict[str, Any] = {}
        f["nr"], f["nc"] = r.read_int(), r.read_int()
        f["stride_y"], f["stride_x"] = r.read_int(), r.read_int()
        f["padding_y"], f["padding_x"] = r.read_int(), r.read_int()
        return DlibLayer(kind, f)
    return read


def _read_fc(r: DlibReader, tag: str) -> DlibLayer:
    f: dict[str, Any] = {"num_outputs": r.read_int(), "num_inputs": r.read_int()}
    params = r.read_tensor()
    f["weights_shape"], f["biases_shape"] = r.read_alias(), r.read_alias()
    f["bias_mode"] = r.read_int()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        f[name] = r.read_float()
    return DlibLayer("fc", f, _flat(params))


def _read_nothing(kind: str):
    return lambda r, tag: DlibLayer(kind)


#: Serialisation tag -> reader of the fields that follow it.
_LAYER_READERS = {
    "con_4": _read_con,
    "con_5": _read_con,
    "affine_": _read_affine,
    "relu_": _read_nothing("relu"),
    "add_prev_": _read_nothing("add_prev"),
    "max_pool_2": _read_pool("max_pool"),
    "avg_pool_2": _read_pool("avg_pool"),
    "fc_2": _read_fc,
}

_INPUT_TAGS = ("input_rgb_image_sized", "input_rgb_image")


def _read_input(r: DlibReader) -> dict[str, Any]:
    tag = r.read_string()
    if tag not in _INPUT_TAGS:
        raise r._fail(f"unsupported input layer {tag!r}")
    out: dict[str, Any] = {"type": tag, "mean": (r.read_float(), r.read_float(), r.read_float())}
    if tag == "input_rgb_image_sized":
        out["nr"], out["nc"] = r.read_int(), r.read_int()
    return out


def _read_loss(r: DlibReader) -> dict[str, Any]:
    tag = r.read_string()
    if tag == "loss_metric_2":
        return {"type": "loss_metric", "margin": r.read_float(), "distance_threshold": r.read_float()}
    if tag == "loss_metric_":
        return {"type": "loss_metric", "margin": 0.04, "distance_threshold": 0.6}
    raise r._fail(f"unsupported loss layer {tag!r}")


def read_dnn(source: str | os.PathLike | bytes) -> DlibNetwork:
    """Parse a dlib DNN file (path or bytes) made of the layers listed above.

    Tag and skip layers hold no data and the file does not say which tag a skip or ``add_prev``
    refers to; they are returned as markers where they sit: a single marker as ``tag`` (save the
    current output), two consecutive markers as ``tag_skip`` (``tagN<skipM<...>>``: save the current
    output, then continue from the previous saved one), the pattern of dlib's ResNets
    (``residual`` and ``residual_down``). Raises :class:`DlibFormatError` on anything else.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        r = DlibReader(source)
    else:
        with open(source, "rb") as fh:
            r = DlibReader(fh.read(), name=str(source))
    if r.read_int() != 1:
        r.pos = 0
        raise r._fail("loss layer version is not 1")
    loss = _read_loss(r)
    # Versions of the nested layers, outermost first: 2 = add_layer, 1 = tag/skip layer. The
    # add_layer right above the input layer is a specialisation written as version 3 by current dlib
    # (2 by older ones); the input layer's tag string begins with its length (> 3), ending the run.
    versions: list[int] = []
    while r.peek_int() in (1, 2):
        versions.append(r.read_int())
    if r.peek_int() == 3:
        versions.append(r.read_int())
    if not versions or versions[0] != 2 or versions[-1] not in (2, 3):
        raise r._fail("unexpected layer nesting under the loss")
    inp = _read_input(r)

    layers: list[DlibLayer] = []
    pending_markers = 0

    def flush_markers() -> None:
        nonlocal pending_markers
        if pending_markers == 1:
            layers.append(DlibLayer("tag"))
        elif pending_markers == 2:
            layers.append(DlibLayer("tag_skip"))
        elif pending_markers > 2:
            raise r._fail(f"{pending_markers} consecutive tag/skip layers (unsupported topology)")
        pending_markers = 0

    bottom = len(versions) - 1
    for i in range(bottom, -1, -1):  # innermost first
        if versions[i] == 1:
            pending_markers += 1
            continue
        flush_markers()
        tag = r.read_string()
        reader = _LAYER_READERS.get(tag)
        if reader is None:
            raise r._fail(f"unsupported layer type {tag!r}")
        layer = reader(r, tag)
        layer.fields["setup_called"] = r.read_bool()
        r.read_bool()  # gradient_input_is_stale
        r.read_bool()  # get_output_and_gradient_input_disabled
        r.read_tensor()  # x_grad (empty in saved nets)
        r.read_tensor()  # cached_output
        r.read_tensor()  # params_grad, or grad_final for the bottom layer
        if i == bottom and versions[i] == 3:
            r.read_int()  # sample_expansion_factor
        layers.append(layer)
    flush_markers()
    if r.pos != len(r.data):
        raise r._fail(f"{len(r.data) - r.pos} unread trailing bytes")
    return DlibNetwork(loss=loss, input=inp, layers=layers)

