"""SyntheticFaces: procedural, identity-structured face images (the embedded default dataset).

Why: demos and tests need identity-labelled faces without downloading anything. Each identity is a
vector of ~30 face parameters (head shape, skin tone, hair colour/style, eyes, brows, nose, mouth,
ears, glasses, beard) drawn from (seed, absolute identity index); each image adds nuisance drawn from
(seed, identity, image index): pose (shift, rotation, scale), expression, gaze, lighting,
background, clothing and pixel noise.

How: everything is rendered in batches with pure torch ops on signed distances, antialiased with a
smoothstep over about one pixel. Random numbers come from a counter-based integer hash of the ids
(no generator is consumed), and only exactly-rounded float ops are used (+ - * / sqrt, min/max,
clamp), so an image is bit-identical whatever batch it is rendered in and however large the
dataset is.

One file on purpose: the renderer's parameters and the drawing code that uses them are read together.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from gmia_defend.data.specs import IdentityDataset
from gmia_defend.errors import DataError

__all__ = ["SyntheticFaces", "render_faces", "NUISANCE_LEVELS"]

NUISANCE_LEVELS = ("none", "mild", "strong")

_M32 = 0xFFFFFFFF
_CHUNK_PIXELS = 65536  # pixels rendered per inner batch (keeps temporaries cache-sized)

# Domain tags: identity parameters, nuisance parameters, pixel noise.
_TAG_IDENTITY = 0x1D
_TAG_NUISANCE = 0x2B
_TAG_NOISE = 0x3F


# ---------------------------------------------------------------------------------------------
# Counter-based random numbers (exact integer arithmetic in int64, values kept below 2**32)
# ---------------------------------------------------------------------------------------------
def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32 without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A well-mixing 32-bit integer hash (lowbias32 by C. Wellons)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def _seed_word(seed: int) -> int:
    """Fold a (possibly large or negative) Python int seed into 32 bits."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    h = _hash32(torch.tensor(seed & _M32, dtype=torch.int64) ^ 0x2545F491)
    h = _hash32(h ^ (seed >> 32))
    return int(h)


def _base_keys(seed: int, tag: int, *ids: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per element from (seed, tag, ids...)."""
    h = _hash32(torch.as_tensor(_seed_word(seed) ^ _mul32(torch.tensor(tag), 0x9E3779B9), dtype=torch.int64))
    for part in ids:
        h = _hash32(h ^ (part & _M32))
    return h


def _uniforms(keys: torch.Tensor, count: int) -> torch.Tensor:
    """[N, count] uniforms in [0, 1) from per-element keys (float32, 24-bit resolution)."""
    k = torch.arange(1, count + 1, dtype=torch.int64)
    h = _hash32(_hash32(keys[:, None] ^ _mul32(k, 0x9E3779B9)[None, :]) + 0x632BE5AB)
    return (h >> 8).to(torch.float32) * (1.0 / 16777216.0)


# ---------------------------------------------------------------------------------------------
# Drawing primitives (exactly-rounded ops only, see module docstring)
# ---------------------------------------------------------------------------------------------
def _cover(d: torch.Tensor, sharp: float) -> torch.Tensor:
    """Soft coverage of a signed distance (negative inside): smoothstep over ~1 pixel."""
    a = (0.5 - d * sharp).clamp(0.0, 1.0)
    return a * a * (3.0 - 2.0 * a)


def _ellipse(x, y, cx, cy, a, b):
    """Approximate signed distance to an axis-aligned ellipse."""
    u = (x - cx) / a
    v = (y - cy) / b
    return (torch.sqrt(u * u + v * v) - 1.0) * torch.minimum(a, b)


def _segment(x, y, ax, ay, bx, by, r):
    """Signed distance to a capsule (segment a-b with radius r)."""
    px, py = x - ax, y - ay
    dx, dy = bx - ax, by - ay
    h = ((px * dx + py * dy) / (dx * dx + dy * dy + 1e-8)).clamp(0.0, 1.0)
    ex, ey = px - h * dx, py - h * dy
    return torch.sqrt(ex * ex + ey * ey) - r


def _paint(img: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Composite ``colour`` ([N,3,1,1] or [N,3,R,R]) over ``img`` with coverage ``alpha`` [N,R,R]."""
    a = alpha[:, None]
    return img + a * (colour - img)


def _lerp(lo, hi, u):
    return lo + (hi - lo) * u


def _sincos(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos of small angles (|t| < 0.8) by polynomials: exact-op only."""
    t2 = t * t
    s = t * (1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0)))
    c = 1.0 - t2 / 2.0 * (1.0 - t2 / 12.0 * (1.0 - t2 / 30.0))
    return s, c


def _pick(palette: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Row of ``palette`` [K,3] chosen by uniform ``u`` [N] -> [N,3]."""
    k = palette.shape[0]
    i = (u * k).to(torch.int64).clamp(0, k - 1)
    return palette[i]


_SKIN_LIGHT = torch.tensor([0.97, 0.82, 0.71])
_SKIN_DARK = torch.tensor([0.33, 0.21, 0.14])
_HAIR = torch.tensor(
    [
        [0.06, 0.05, 0.05],  # black
        [0.20, 0.12, 0.07],  # dark brown
        [0.38, 0.24, 0.13],  # brown
        [0.55, 0.27, 0.12],  # auburn
        [0.82, 0.66, 0.38],  # blond
        [0.93, 0.85, 0.62],  # platinum
        [0.62, 0.61, 0.60],  # grey
        [0.72, 0.30, 0.10],  # ginger
    ]
)
_EYES = torch.tensor(
    [
        [0.22, 0.13, 0.07],  # dark brown
        [0.40, 0.25, 0.12],  # brown
        [0.45, 0.42, 0.18],  # hazel
        [0.22, 0.48, 0.30],  # green
        [0.25, 0.45, 0.75],  # blue
        [0.50, 0.56, 0.62],  # grey
    ]
)
_FRAMES = torch.tensor([[0.05, 0.05, 0.06], [0.35, 0.20, 0.10], [0.70, 0.70, 0.74], [0.55, 0.10, 0.12]])

# Identity parameter layout (uniforms in [0, 1)).
(
    P_HEAD_W, P_HEAD_H, P_SQUARE, P_JAW, P_SKIN, P_SKIN_HUE, P_SKIN_SAT,
    P_HAIR_COL, P_HAIR_SHADE, P_HAIR_STYLE, P_HAIR_VOL, P_HAIRLINE, P_PART,
    P_EYE_SPACE, P_EYE_SIZE, P_EYE_Y, P_EYE_COL, P_BROW_THICK, P_BROW_ANGLE, P_BROW_GAP,
    P_NOSE_LEN, P_NOSE_W, P_MOUTH_W, P_MOUTH_Y, P_LIP, P_LIP_COL, P_MOUTH_CURVE,
    P_GLASSES, P_GLASS_STYLE, P_BEARD, P_BEARD_STYLE, P_EAR, P_CHEEK,
) = range(33)
_NUM_IDENTITY_PARAMS = 33

# Nuisance parameter layout.
(
    Q_SHIFT_X, Q_SHIFT_Y, Q_ROT, Q_SCALE, Q_SMILE, Q_OPEN, Q_OPEN_P, Q_BROW, Q_GAZE_X, Q_GAZE_Y,
    Q_LIGHT_X, Q_LIGHT_Y, Q_LIGHT_S, Q_BRIGHT, Q_BG_L, Q_BG_R, Q_BG_G, Q_BG_B, Q_BG_GRAD,
    Q_CLOTH_H, Q_CLOTH_L, Q_CLOTH_S, Q_CAST_R, Q_CAST_B, Q_CONTRAST, Q_BLINK,
) = range(26)
_NUM_NUISANCE_PARAMS = 26

# Nuisance strengths per level.
_LEVELS: dict[str, dict[str, float]] = {
    "none": dict(shift=0.0, rot=0.0, scale=0.0, smile=0.0, open=0.0, brow=0.0, gaze=0.0,
                 light=0.0, bright=0.0, bg_sat=0.0, bg_lo=0.55, bg_hi=0.55, bg_grad=0.0,
                 cloth_sat=0.0, cloth_var=0.0, cast=0.0, contrast=0.0, noise=0.0),
    "mild": dict(shift=0.09, rot=0.14, scale=0.07, smile=0.05, open=0.35, brow=0.025, gaze=0.5,
                 light=0.12, bright=0.08, bg_sat=0.05, bg_lo=0.15, bg_hi=0.9, bg_grad=0.04,
                 cloth_sat=0.25, cloth_var=1.0, cast=0.02, contrast=0.08, noise=0.015),
    "strong": dict(shift=0.14, rot=0.25, scale=0.12, smile=0.09, open=0.6, brow=0.045, gaze=1.0,
                   light=0.35, bright=0.15, bg_sat=0.6, bg_lo=0.1, bg_hi=0.9, bg_grad=0.25,
                   cloth_sat=0.7, cloth_var=1.0, cast=0.07, contrast=0.15, noise=0.05),
}


_NOISE_BANKS: dict[tuple[int, int], torch.Tensor] = {}


def _noise_planes(resolution: int) -> int:
    """Planes in the noise bank: 256 at 32 px, fewer at larger sizes (bounded memory)."""
    return max(16, min(256, 2**18 // (resolution * resolution)))


def _noise_bank(seed: int, resolution: int) -> torch.Tensor:
    """[planes,3,R,R] uniform noise in [-0.5, 0.5), a pure function of (seed, resolution)."""
    key = (int(seed), int(resolution))
    bank = _NOISE_BANKS.get(key)
    if bank is None:
        r = resolution
        planes = torch.arange(_noise_planes(r), dtype=torch.int64)
        keys = _base_keys(seed, _TAG_NOISE + r, planes)
        pix = torch.arange(3 * r * r, dtype=torch.int64)
        h = _hash32(keys[:, None] ^ _mul32(pix + 1, 0x9E3779B9)[None, :])
        bank = ((h >> 8).to(torch.float32) * (1.0 / 16777216.0) - 0.5).view(-1, 3, r, r)
        if len(_NOISE_BANKS) > 8:
            _NOISE_BANKS.clear()
        _NOISE_BANKS[key] = bank
    return bank


def _render_chunk(
    identity_ids: torch.Tensor, image_ids: torch.Tensor, resolution: int, seed: int, nuisance: str
) -> torch.Tensor:
    """Render one chunk: identity_ids/image_ids int64 [N] -> float32 [N,3,R,R] in [-1,1]."""
    n, r = identity_ids.shape[0], resolution
    lv = _LEVELS[nuisance]
    P = _uniforms(_base_keys(seed, _TAG_IDENTITY, identity_ids), _NUM_IDENTITY_PARAMS)
    Q = _uniforms(_base_keys(seed, _TAG_NUISANCE, identity_ids, image_ids), _NUM_NUISANCE_PARAMS)

    def p(k: int, lo: float, hi: float) -> torch.Tensor:  # identity parameter, [N,1,1]
        return _lerp(lo, hi, P[:, k]).view(n, 1, 1)

    def q(k: int, amp: float) -> torch.Tensor:  # symmetric nuisance in [-amp, amp], [N,1,1]
        return ((Q[:, k] * 2.0 - 1.0) * amp).view(n, 1, 1)

    sharp = r / 2.4  # coverage goes 0 -> 1 over ~1.2 pixels
    c = (torch.arange(r, dtype=torch.float32) + 0.5) * (2.0 / r) - 1.0
    X, Y = c.view(1, 1, r), c.view(1, r, 1)

    # Pose: image coords -> face coords.
    s, co = _sincos(q(Q_ROT, lv["rot"]))
    scale = 1.0 + q(Q_SCALE, lv["scale"])
    dx, dy = X - q(Q_SHIFT_X, lv["shift"]), Y - q(Q_SHIFT_Y, lv["shift"])
    x = (co * dx + s * dy) / scale
    y = (co * dy - s * dx) / scale
    ax = x.abs()
    one = torch.ones(n, 1, 1)

    # ---- background (plain grey-ish when mild; coloured with a gradient when strong)
    bg_l = _lerp(lv["bg_lo"], lv["bg_hi"], Q[:, Q_BG_L]).view(n, 1)
    bg_tint = torch.stack([Q[:, Q_BG_R], Q[:, Q_BG_G], Q[:, Q_BG_B]], 1) * 2.0 - 1.0
    bg = (bg_l + bg_tint * lv["bg_sat"] * 0.5).clamp(0.02, 0.98).view(n, 3, 1, 1)
    grad = q(Q_BG_GRAD, lv["bg_grad"]).view(n, 1, 1, 1)
    img = bg + grad * (X - Y).view(1, 1, r, r) * 0.7
    img = img.expand(n, 3, r, r).contiguous()

    # ---- identity colours
    skin = _lerp(_SKIN_LIGHT, _SKIN_DARK, P[:, P_SKIN : P_SKIN + 1])
    hue = (P[:, P_SKIN_HUE] - 0.5) * 0.08
    skin = skin + torch.stack([hue, hue * 0.2, -hue], 1)
    skin = skin * _lerp(0.93, 1.05, P[:, P_SKIN_SAT : P_SKIN_SAT + 1])
    skin = skin.clamp(0.0, 1.0)
    hair = _pick(_HAIR, P[:, P_HAIR_COL]) * _lerp(0.8, 1.15, P[:, P_HAIR_SHADE : P_HAIR_SHADE + 1])
    hair = hair.clamp(0.0, 1.0)
    brow_col = torch.minimum(hair * 0.75, skin * 0.55)
    eye_col = _pick(_EYES, P[:, P_EYE_COL])
    lip_col = skin * torch.tensor([0.88, 0.55, 0.55]) * _lerp(0.85, 1.05, P[:, P_LIP_COL : P_LIP_COL + 1])
    cloth_h = Q[:, Q_CLOTH_H]
    cloth_base = torch.stack([cloth_h, (cloth_h + 0.33) % 1.0, (cloth_h + 0.66) % 1.0], 1)
    cloth_base = (cloth_base * 2.0 - 1.0).abs()  # a cheap hue wheel
    cloth_l = _lerp(0.45 - 0.3 * lv["cloth_var"], 0.45 + 0.3 * lv["cloth_var"], Q[:, Q_CLOTH_L : Q_CLOTH_L + 1])
    cloth = (cloth_l + (cloth_base - 0.5) * lv["cloth_sat"] * Q[:, Q_CLOTH_S : Q_CLOTH_S + 1]).clamp(0, 1)

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.view(n, 3, 1, 1)

    # ---- geometry
    hw, hh = p(P_HEAD_W, 0.46, 0.60), p(P_HEAD_H, 0.60, 0.74)
    hc = 0.02 * one
    square = p(P_SQUARE, 0.0, 0.85)
    jaw = p(P_JAW, 0.0, 0.38)
    ey = p(P_EYE_Y, -0.13, 0.0)
    es = p(P_EYE_SPACE, 0.17, 0.27)
    er = p(P_EYE_SIZE, 0.055, 0.095)
    my = p(P_MOUTH_Y, 0.30, 0.42)
    mw = p(P_MOUTH_W, 0.12, 0.24)

    # shoulders / clothing and neck
    neck = torch.maximum(ax - hw * 0.5, 0.25 - y)
    img = _paint(img, _cover(neck, sharp), col(skin * 0.8))
    shoulders = _ellipse(x, y, 0.0 * one, 1.32 * one, 0.98 * one, 0.62 * one)
    collar = _ellipse(x, y, 0.0 * one, 0.70 * one, hw * 0.5, 0.16 * one)
    shoulders = torch.maximum(shoulders, -collar)
    img = _paint(img, _cover(shoulders, sharp), col(cloth))

    # hair style: 0 buzz, 1 short, 2 medium, 3 long, 4 fringe/bob
    style = (P[:, P_HAIR_STYLE] * 5.0).to(torch.int64).clamp(0, 4).view(n, 1, 1)
    vol = torch.tensor([0.01, 0.05, 0.08, 0.10, 0.09])[style] * _lerp(0.7, 1.4, P[:, P_HAIR_VOL].view(n, 1, 1))
    length = torch.tensor([0.0, 0.0, 0.35, 0.75, 0.25])[style]
    back = _ellipse(x, y, 0.0 * one, hc - 0.03 + length * 0.5, hw + vol, hh + vol + length * 0.5)
    back_bottom = ey + 0.05 + length * 1.2
    back = torch.maximum(back, y - back_bottom)
    img = _paint(img, _cover(back, sharp), col(hair * 0.85))

    # ears
    ear = p(P_EAR, 0.8, 1.25)
    ears = _ellipse(ax, y, hw * 0.97, ey + 0.10, 0.075 * ear, 0.13 * ear)
    img = _paint(img, _cover(ears, sharp), col(skin * 0.9))

    # head: a rounded-square ellipse that tapers towards the chin
    tv = ((y - hc) / hh).clamp(0.0, 1.0)
    taper = 1.0 - jaw * tv * tv
    u = x / (hw * taper)
    v = (y - hc) / hh
    u2, v2 = u * u, v * v
    r2 = torch.sqrt(u2 + v2)
    r4 = torch.sqrt(torch.sqrt(u2 * u2 + v2 * v2))
    rr = r2 + square * (r4 - r2)
    head = (rr - 1.0) * hw
    head_a = _cover(head, sharp)
    rim = (rr * rr).clamp(0.0, 1.0)
    shade = 1.0 - 0.22 * rim * rim  # darker towards the rim: a 3-D look
    cheek = p(P_CHEEK, 0.0, 0.25)
    blush = _cover(_ellipse(ax, y, es + 0.02, my - 0.12, 0.12 * one, 0.08 * one), sharp * 0.25) * cheek
    face_col = col(skin) * shade[:, None]
    face_col = face_col + blush[:, None] * (torch.tensor([0.9, 0.35, 0.35]).view(1, 3, 1, 1) - face_col) * 0.5
    img = _paint(img, head_a, face_col)

    # beard: 0-2 none, 3 full, 4 moustache, 5 goatee, 6 stubble (when the beard flag is set)
    bstyle = (P[:, P_BEARD_STYLE] * 4.0).to(torch.int64).clamp(0, 3)
    has_beard = (P[:, P_BEARD] < 0.3).to(torch.float32)
    w_full = ((bstyle == 0) | (bstyle == 3)).to(torch.float32) * has_beard
    w_must = (bstyle == 1).to(torch.float32) * has_beard
    w_goat = (bstyle == 2).to(torch.float32) * has_beard
    density = torch.where(bstyle == 3, 0.45, 0.9).to(torch.float32) * has_beard
    bx = ax / hw
    beard_top = my - 0.06 - 0.26 * bx * bx
    full = head_a * _cover(beard_top - y, sharp)
    must = _cover(_segment(ax, y, 0.0 * one, my - 0.055, mw * 0.95, my - 0.035, 0.03 * one), sharp)
    goat = _cover(_ellipse(x, y, 0.0 * one, my + 0.13, mw * 0.7, 0.11 * one), sharp) * head_a
    beard_a = torch.maximum(full * w_full.view(n, 1, 1), torch.maximum(must * w_must.view(n, 1, 1), goat * w_goat.view(n, 1, 1)))
    img = _paint(img, beard_a * density.view(n, 1, 1), col(hair * 0.9))

    # front hair: inside the head, above a hairline that drops towards the temples
    part = p(P_PART, -0.25, 0.25)
    hx = (x - part * hw) / hw
    hairline = hc - hh + p(P_HAIRLINE, 0.28, 0.45) * hh + 0.28 * hh * hx * hx
    fringe = hc - hh + p(P_HAIRLINE, 0.42, 0.55) * hh + 0.12 * hh * hx * hx
    is_fringe = (style == 4).to(torch.float32)
    line = hairline + is_fringe * (fringe - hairline)
    front = torch.maximum(head, y - line)
    cap = torch.maximum(_ellipse(x, y, 0.0 * one, hc - 0.02, hw + vol, hh + vol), y - (ey - 0.08))
    hair_front = torch.minimum(front, cap)
    hair_alpha = torch.where(style == 0, 0.55, 1.0).to(torch.float32)
    img = _paint(img, _cover(hair_front, sharp) * hair_alpha, col(hair))

    # eyes: white, iris (clipped to the white), pupil
    blink = 1.0 - (Q[:, Q_BLINK] > 0.97).to(torch.float32).view(n, 1, 1) * 0.75 * (lv["gaze"] > 0)
    sgn = torch.where(x >= 0, 1.0, -1.0)
    white = _ellipse(ax, y, es, ey, er * 1.45, er * 0.95 * blink)
    white_a = _cover(white, sharp)
    img = _paint(img, white_a, col(torch.full((n, 3), 0.93)))
    gx = q(Q_GAZE_X, lv["gaze"]) * er * 0.45 * sgn
    gy = q(Q_GAZE_Y, lv["gaze"]) * er * 0.25
    ix, iy = ax - es - gx, y - ey - gy
    iris = torch.sqrt(ix * ix + iy * iy)
    img = _paint(img, _cover(iris - er * 0.78, sharp) * white_a, col(eye_col))
    img = _paint(img, _cover(iris - er * 0.36, sharp) * white_a, col(torch.full((n, 3), 0.03)))
    lid = (white.abs() - 0.012) * 1.0
    img = _paint(img, _cover(lid, sharp) * (y < ey).to(torch.float32) * 0.7, col(brow_col * 0.6))

    # brows
    bt = p(P_BROW_THICK, 0.018, 0.04)
    tilt = p(P_BROW_ANGLE, -0.05, 0.06) - q(Q_BROW, lv["brow"]) * 0.5
    by = ey - er - p(P_BROW_GAP, 0.05, 0.10) - q(Q_BROW, lv["brow"])
    brows = _segment(ax, y, es - er * 1.5, by + tilt * 0.3, es + er * 1.6, by - tilt, bt)
    img = _paint(img, _cover(brows, sharp), col(brow_col))

    # nose: a soft shadow along one side and darker nostrils
    nl = p(P_NOSE_LEN, 0.16, 0.28)
    nw = p(P_NOSE_W, 0.045, 0.085)
    ridge = _segment(x, y, nw * 0.4, ey + 0.04, nw * 0.7, ey + nl - 0.02, 0.014 * one)
    img = _paint(img, _cover(ridge, sharp) * 0.35, col(skin * 0.6))
    nostrils = _ellipse(x, y, 0.0 * one, ey + nl, nw, nw * 0.42)
    img = _paint(img, _cover(nostrils, sharp) * 0.55, col(skin * 0.55))

    # mouth: a lip band following a smile curve, optionally open
    curve = p(P_MOUTH_CURVE, -0.03, 0.05) + q(Q_SMILE, lv["smile"])
    tx = (x / mw).clamp(-1.0, 1.0)
    yc = my - curve * tx * tx
    lt = p(P_LIP, 0.022, 0.045)
    is_open = (Q[:, Q_OPEN_P] < lv["open"]).to(torch.float32).view(n, 1, 1)
    opening = Q[:, Q_OPEN].view(n, 1, 1) * is_open * 0.05
    thick = lt * (1.0 - 0.75 * tx * tx) + opening
    lips = torch.maximum((y - yc - opening * 0.5).abs() - thick, ax - mw)
    img = _paint(img, _cover(lips, sharp), col(lip_col))
    inner = torch.maximum((y - yc - opening * 0.5).abs() - opening * (1.0 - tx * tx), ax - mw * 0.8)
    img = _paint(img, _cover(inner, sharp) * is_open, col(torch.full((n, 3), 0.12)))

    # glasses
    has_glasses = (P[:, P_GLASSES] < 0.22).to(torch.float32).view(n, 1, 1)
    gr = er * _lerp(1.7, 2.2, P[:, P_GLASS_STYLE].view(n, 1, 1))
    gt = 0.016 + 0.010 * (P[:, P_GLASS_STYLE].view(n, 1, 1) > 0.5).to(torch.float32)
    rx, ry = ax - es, y - ey
    ring = (torch.sqrt(rx * rx + ry * ry) - gr).abs() - gt
    bridge = _segment(ax, y, 0.0 * one, ey - 0.01, es - gr, ey, gt)
    arm = _segment(ax, y, es + gr, ey, hw, ey - 0.03, gt)
    frame = torch.minimum(ring, torch.minimum(bridge, arm))
    frame_col = _pick(_FRAMES, (P[:, P_GLASS_STYLE] * 4.0) % 1.0)
    img = _paint(img, _cover(frame, sharp) * has_glasses, col(frame_col))

    # ---- lighting, colour cast, contrast, noise
    lx, ly = q(Q_LIGHT_X, 1.0), q(Q_LIGHT_Y, 1.0)
    norm = torch.sqrt(lx * lx + ly * ly) + 1e-3
    strength = Q[:, Q_LIGHT_S].view(n, 1, 1) * lv["light"]
    light = 1.0 + q(Q_BRIGHT, lv["bright"]) + strength * (X * lx + Y * ly) / norm
    cast = torch.stack(
        [1.0 + (Q[:, Q_CAST_R] * 2 - 1) * lv["cast"], torch.ones(n), 1.0 + (Q[:, Q_CAST_B] * 2 - 1) * lv["cast"]], 1
    )
    img = img * light[:, None] * col(cast)
    contrast = 1.0 + q(Q_CONTRAST, lv["contrast"]).view(n, 1, 1, 1)
    img = 0.5 + (img - 0.5) * contrast
    if lv["noise"] > 0:
        # Two planes from a fixed per-(seed, resolution) bank, one mirrored: up to 2**16 patterns.
        bank = _noise_bank(seed, r)
        pick = _uniforms(_base_keys(seed, _TAG_NOISE, identity_ids, image_ids), 2)
        planes = bank.shape[0]
        i1 = (pick[:, 0] * planes).to(torch.int64)
        i2 = (pick[:, 1] * planes).to(torch.int64)
        noise = bank[i1] - bank[i2].flip(-1)
        img = img + noise * (lv["noise"] * 2.4494897)  # difference of two uniforms, std = noise
    return (img.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


def render_faces(
    identity_ids: torch.Tensor | Sequence[int],
    image_ids: torch.Tensor | Sequence[int],
    resolution: int = 32,
    seed: int = 0,
    nuisance: str = "mild",
) -> torch.Tensor:
    """Render faces for absolute identity ids and image ids: float32 [N,3,R,R] in [-1,1] (CPU).

    Pure function of (seed, identity id, image id, resolution, nuisance): the same pair renders the
    same pixels in any batch.
    """
    if nuisance not in _LEVELS:
        raise DataError(f"unknown nuisance {nuisance!r}; use one of {list(NUISANCE_LEVELS)}")
    ids = torch.as_tensor(identity_ids, dtype=torch.int64).reshape(-1).cpu()
    imgs = torch.as_tensor(image_ids, dtype=torch.int64).reshape(-1).cpu()
    if ids.shape != imgs.shape:
        raise ValueError(f"identity_ids and image_ids differ in length: {ids.numel()} vs {imgs.numel()}")
    if ids.numel() and (int(ids.min()) < 0 or int(imgs.min()) < 0 or int(ids.max()) > _M32 or int(imgs.max()) > _M32):
        raise ValueError("identity and image ids must lie in [0, 2**32)")
    out = torch.empty(ids.numel(), 3, resolution, resolution, dtype=torch.float32)
    with torch.no_grad():
        chunk = max(1, _CHUNK_PIXELS // (resolution * resolution))
        for start in range(0, ids.numel(), chunk):
            stop = min(start + chunk, ids.numel())
            out[start:stop] = _render_chunk(ids[start:stop], imgs[start:stop], resolution, seed, nuisance)
    return out


class SyntheticFaces(IdentityDataset):
    """Procedural face images with identities: the embedded default dataset.

    ``images_per_identity`` is an int or one count per identity (over-represented identities).
    Identity ``i`` is named ``syn-{identity_offset+i:06d}`` and rendered from the absolute index
    ``identity_offset + i``; image ``j`` of it has key ``syn-XXXXXX/{j:04d}``. Same seed and absolute
    index -> the same person in any instance; a different ``identity_offset`` range -> other people.

    >>> faces = SyntheticFaces(num_identities=3, images_per_identity=[2, 1, 4], resolution=16)
    >>> len(faces), faces.identities[0], faces.keys[1]
    (7, 'syn-000000', 'syn-000000/0001')
    >>> bool(torch.equal(faces.load([2]), SyntheticFaces(5, 1, resolution=16).load([1])))  # same person, same image
    True
    """

    def __init__(
        self,
        num_identities: int = 64,
        images_per_identity: int | Sequence[int] = 20,
        resolution: int = 32,
        seed: int = 0,
        identity_offset: int = 0,
        nuisance: str = "mild",
    ) -> None:
        if int(num_identities) < 1:
            raise DataError(f"num_identities must be >= 1, got {num_identities}")
        if int(resolution) < 16:
            raise DataError(f"resolution must be >= 16 (32 or 64 are typical), got {resolution}")
        if nuisance not in _LEVELS:
            raise DataError(f"unknown nuisance {nuisance!r}; use one of {list(NUISANCE_LEVELS)}")
        if int(identity_offset) < 0 or int(identity_offset) + int(num_identities) > _M32:
            raise DataError(f"identity_offset must be in [0, 2**32 - num_identities), got {identity_offset}")
        self.num_identities = int(num_identities)
        if isinstance(images_per_identity, (int,)) or (
            isinstance(images_per_identity, torch.Tensor) and images_per_identity.ndim == 0
        ):
            counts = [int(images_per_identity)] * self.num_identities
        else:
            counts = [int(c) for c in images_per_identity]
            if len(counts) != self.num_identities:
                raise DataError(
                    f"images_per_identity has {len(counts)} counts but num_identities is "
                    f"{self.num_identities}; give one count per identity or a single int"
                )
        if min(counts) < 1:
            raise DataError("every identity needs at least 1 image: images_per_identity must be >= 1")
        self.images_per_identity = counts
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.identity_offset = int(identity_offset)
        self.nuisance = nuisance
        self.identities = [f"syn-{self.identity_offset + i:06d}" for i in range(self.num_identities)]
        counts_t = torch.tensor(counts, dtype=torch.int64)
        self.targets = torch.repeat_interleave(torch.arange(self.num_identities), counts_t)
        starts = torch.cumsum(counts_t, 0) - counts_t
        self._starts = starts
        self.image_ids = torch.arange(len(self.targets)) - starts[self.targets]
        self.keys = [
            f"{self.identities[t]}/{j:04d}" for t, j in zip(self.targets.tolist(), self.image_ids.tolist())
        ]

    def _fingerprint_extra(self) -> str:
        return f"synthetic seed={self.seed} nuisance={self.nuisance}"

    def _identity_ranges(self) -> dict[str, list[int]]:
        cached = getattr(self, "_identity_index_cache", None)
        if cached is None:
            cached = {
                name: list(range(int(s), int(s) + c))
                for name, s, c in zip(self.identities, self._starts.tolist(), self.images_per_identity)
            }
            self._identity_index_cache = cached
        return cached

    def render(self, identity_ids: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        """Render absolute identity ids (offset included) x image ids with this dataset's settings."""
        return render_faces(identity_ids, image_ids, self.resolution, self.seed, self.nuisance)

    def load(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Images at dataset ``indices``: float32 [N,3,R,R] in [-1,1], rendered in batches."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"indices out of range for a dataset of {len(self)} images")
        idx = idx % max(len(self), 1)
        return self.render(self.targets[idx] + self.identity_offset, self.image_ids[idx])

    def spec(self) -> dict[str, Any]:
        counts = self.images_per_identity
        return {
            "type": "synthetic",
            "num_identities": self.num_identities,
            "images_per_identity": counts[0] if len(set(counts)) == 1 else list(counts),
            "resolution": self.resolution,
            "seed": self.seed,
            "identity_offset": self.identity_offset,
            "nuisance": self.nuisance,
        }
