"""dlib's serialisation reader on bytes written here (no dlib needed): primitives, a small residual
network run by ``DlibNet`` against hand-written torch ops, and clear errors on damaged files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmia_defend.embedders.dlib import DlibNet, _payload
from gmia_defend.embedders.dlib_format import DlibFormatError, DlibReader, read_dnn
from gmia_defend.errors import WeightsError


# ----------------------------------------------------------------------------- an independent writer
def enc_int(v: int) -> bytes:
    mag = abs(int(v))
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little") if mag else b""
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def enc_float(v: float) -> bytes:
    if math.isinf(v):
        return enc_int(0) + enc_int(32000 if v > 0 else 32001)
    if math.isnan(v):
        return enc_int(0) + enc_int(32002)
    m, e = math.frexp(v)
    mant, exp = int(m * (1 << 53)), e - 53
    while mant and mant % 256 == 0:
        mant //= 256
        exp += 8
    return enc_int(mant) + enc_int(exp)


def enc_str(s: str) -> bytes:
    return enc_int(len(s)) + s.encode()


def enc_bool(b: bool) -> bytes:
    return b"1" if b else b"0"


def enc_tensor(a: np.ndarray, version: int = 2) -> bytes:
    a = np.asarray(a, dtype=np.float32)
    shape = list(a.shape) + [1] * (4 - a.ndim)
    out = enc_int(version) + b"".join(enc_int(s) for s in shape)
    if version == 2:
        return out + a.astype("<f4").tobytes()
    return out + b"".join(enc_float(float(x)) for x in a.reshape(-1))


EMPTY = enc_tensor(np.zeros((0, 0, 0, 0)))


def enc_alias(shape) -> bytes:
    return enc_int(1) + b"".join(enc_int(s) for s in shape)


def layer_con(w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> bytes:
    n, k, r, c = w.shape
    out = enc_str("con_4") + enc_tensor(np.concatenate([w.reshape(-1), b]))
    out += b"".join(enc_int(v) for v in (n, r, c, stride, stride, pad, pad))
    out += enc_alias((n, k, r, c)) + enc_alias((1, n, 1, 1))
    return out + b"".join(enc_float(v) for v in (1.0, 1.0, 1.0, 0.0))


def layer_affine(g: np.ndarray, be: np.ndarray) -> bytes:
    k = g.size
    return (enc_str("affine_") + enc_tensor(np.concatenate([g, be])) + enc_alias((1, k, 1, 1)) * 2
            + enc_int(0))


def layer_pool(tag: str, window: int, stride: int, pad: int = 0) -> bytes:
    return enc_str(tag) + b"".join(enc_int(v) for v in (window, window, stride, stride, pad, pad))


def layer_fc(w: np.ndarray) -> bytes:  # w: (num_inputs, num_outputs), no bias
    n_in, n_out = w.shape
    return (enc_str("fc_2") + enc_int(n_out) + enc_int(n_in) + enc_tensor(w)
            + enc_alias((n_in, n_out, 1, 1)) + enc_alias((0, 0, 0, 0)) + enc_int(1)
            + b"".join(enc_float(v) for v in (1.0, 1.0, 1.0, 0.0)))


def write_net(layers: list, mean=(122.782, 117.001, 104.298), size: int = 8) -> bytes:
    """``layers``: input-to-output list of detail bytes, or "tag" / "tag_skip" markers."""
    versions = []
    for item in reversed(layers):  # outermost first
        versions += {"tag": [1], "tag_skip": [1, 1]}.get(item, [2]) if isinstance(item, str) else [2]
    versions[-1] = 3  # the add_layer on top of the input layer
    out = enc_int(1) + enc_str("loss_metric_2") + enc_float(0.04) + enc_float(0.6)
    out += b"".join(enc_int(v) for v in versions)
    out += enc_str("input_rgb_image_sized") + b"".join(enc_float(m) for m in mean) + enc_int(size) + enc_int(size)
    first = True
    for item in layers:
        if isinstance(item, str):
            continue
        out += item + enc_bool(True) + enc_bool(True) + enc_bool(False) + EMPTY * 3
        if first:
            out += enc_int(1)  # sample_expansion_factor
            first = False
    return out


# ----------------------------------------------------------------------------- tests
def test_primitives_round_trip():
    values = [0, 1, -1, 127, 128, 255, 256, -70000, 2**40 + 3, -(2**62)]
    r = DlibReader(b"".join(enc_int(v) for v in values))
    assert [r.read_int() for _ in values] == values
    floats = [0.0, 1.0, -2.5, 0.04, 0.6, 122.782, 1e-30, -3.4e38, math.inf, -math.inf]
    r = DlibReader(b"".join(enc_float(v) for v in floats) + enc_float(math.nan))
    assert [r.read_float() for _ in floats] == floats
    assert math.isnan(r.read_float())
    r = DlibReader(enc_str("affine_") + enc_bool(True) + enc_bool(False))
    assert (r.read_string(), r.read_bool(), r.read_bool()) == ("affine_", True, False)
    a = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    for version in (1, 2):
        np.testing.assert_array_equal(DlibReader(enc_tensor(a, version)).read_tensor(), a)
    # dlib's own bytes for the loss layer of the face model: margin 0.04, distance threshold 0.6
    r = DlibReader(b"\x03\n\xd7\xa3\x81\x1c\x03\x9a\x99\x99\x81\x18")
    assert r.read_float() == pytest.approx(0.04) and r.read_float() == pytest.approx(0.6)


def _small_net(rng):
    w1, b1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.3, rng.normal(size=4).astype(np.float32)
    g1, e1 = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    w2, b2 = rng.normal(size=(6, 4, 3, 3)).astype(np.float32) * 0.3, rng.normal(size=6).astype(np.float32)
    g2, e2 = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    wf = rng.normal(size=(6, 5)).astype(np.float32)
    layers = [layer_con(w1, b1, 1, 1), layer_affine(g1, e1), enc_str("relu_"), "tag",
              layer_con(w2, b2, 2, 0), layer_affine(g2, e2), "tag_skip", layer_pool("avg_pool_2", 2, 2),
              enc_str("add_prev_"), enc_str("relu_"), layer_pool("max_pool_2", 3, 1, 1),
              layer_pool("avg_pool_2", 0, 1), layer_fc(wf)]
    t = {k: torch.from_numpy(v) for k, v in dict(w1=w1, b1=b1, g1=g1, e1=e1, w2=w2, b2=b2, g2=g2, e2=e2,
                                                   wf=wf).items()}
    return write_net(layers), t


def _reference(x: torch.Tensor, t: dict) -> torch.Tensor:
    """The same network written out with torch ops (dlib semantics, incl. add_prev's zero padding)."""
    def aff(y, g, e):
        return y * g.view(1, -1, 1, 1) + e.view(1, -1, 1, 1)

    y = F.relu(aff(F.conv2d(x, t["w1"], t["b1"], 1, 1), t["g1"], t["e1"]))       # 8x8, 4 ch
    block = aff(F.conv2d(y, t["w2"], t["b2"], 2, 0), t["g2"], t["e2"])          # 3x3, 6 ch
    pooled = F.avg_pool2d(y, 2, 2)                                               # 4x4, 4 ch
    s = torch.zeros(x.shape[0], 6, 4, 4)
    s[:, :4] += pooled
    s[:, :, :3, :3] += block
    s = F.max_pool2d(F.relu(s), 3, 1, 1)
    return s.mean((2, 3)) @ t["wf"]


def test_read_dnn_and_dlibnet_match_hand_written_ops():
    data, t = _small_net(np.random.default_rng(1))
    net = read_dnn(data)
    assert net.loss["distance_threshold"] == pytest.approx(0.6)
    assert net.input["nr"] == 8 and net.input["mean"][0] == pytest.approx(122.782)
    assert net.kinds() == ["con", "affine", "relu", "tag", "con", "affine", "tag_skip", "avg_pool",
                           "add_prev", "relu", "max_pool", "avg_pool", "fc"]
    payload = _payload(net, "0" * 64, "small.dat")
    model = DlibNet(payload["ops"], payload["state_dict"])
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(model(x), _reference(x, t), rtol=1e-5, atol=1e-5)


def test_damaged_files_raise_weights_error():
    data, _ = _small_net(np.random.default_rng(2))
    with pytest.raises(DlibFormatError, match="truncated"):
        read_dnn(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="trailing"):
        read_dnn(data + b"\x00")
    with pytest.raises(DlibFormatError, match="unsupported loss"):
        read_dnn(data.replace(b"loss_metric_2", b"loss_other_99", 1))
    with pytest.raises(DlibFormatError, match="unsupported layer"):
        read_dnn(data.replace(b"\x07affine_", b"\x07affinX_", 1))
    with pytest.raises(DlibFormatError):
        read_dnn(b"\x75garbage")
