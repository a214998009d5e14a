"""StyleGAN2 generator and discriminator (Karras et al. 2020, "Analyzing and Improving the Image
Quality of StyleGAN"), written from the paper.

Generator: a mapping network (pixel norm, equalized-lr MLP with lr multiplier 0.01) turns z into w;
a synthesis network starts from a learned 4x4 constant and applies, per resolution, two 3x3
modulated/demodulated convolutions (the first upsamples), each followed by per-pixel noise with a
learned strength, a bias and a leaky ReLU. "Skip" architecture: every resolution has a toRGB layer
(1x1 modulated conv, no demodulation) and the RGB outputs are upsampled and summed.

Discriminator: "residual" architecture: fromRGB at the top resolution, then per resolution two 3x3
convs (the second downsamples) plus a 1x1 downsampling skip, summed and scaled by 1/sqrt(2);
at 4x4 a minibatch standard deviation layer (optional), a conv and two dense layers give one logit.

Differences from the paper, on purpose: bilinear RGB upsampling and average-pool downsampling
instead of FIR filters, and a 4x4 stride-2 transposed conv + [1,2,1]^2 blur as the upsampling conv
(see ops.py, ModulatedConv2d); toRGB weights start at 0.1x (``torgb_init``, see ToRGB); the modulated
convolution is computed as scale-input / shared-conv / scale-output (mathematically the same as the
per-sample weight version, much faster on the CPU).

One file on purpose: the generator and discriminator layers are the paper's architecture, read side by side.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gmia_defend.models.stylegan2.ops import EqualConv2d, EqualLinear, blur, blur_kernel, lrelu, upsample2x


def channels_for(resolution: int, channel_base: int, channel_max: int,
                 channels: Mapping[int, int] | None = None) -> int:
    """Feature maps at one resolution: ``min(channel_base // res, channel_max)`` unless overridden."""
    if channels:
        lookup = {int(k): int(v) for k, v in channels.items()}
        if resolution in lookup:
            return lookup[resolution]
    return max(1, min(channel_base // resolution, channel_max))


def check_resolution(resolution: int) -> int:
    """Resolutions are powers of two from 8 to 1024 (the demo uses 32, the GPU configs 64/128)."""
    log2 = int(round(math.log2(resolution))) if resolution > 0 else 0
    if resolution < 8 or 2 ** log2 != resolution or resolution > 1024:
        from gmia_defend.errors import UserError

        raise UserError(f"StyleGAN2 resolution must be a power of two between 8 and 1024, got {resolution}; "
                        "set model.resolution to match data.resolution (e.g. 32, 64, 128, 256)")
    return log2


# ----------------------------------------------------------------------------------------------- G


class MappingNetwork(nn.Module):
    """z -> w: pixel norm then ``num_layers`` equalized-lr dense layers (lr multiplier 0.01).

    Tracks ``w_avg`` (moving average of w), used for the truncation trick at sampling time.
    """

    def __init__(self, z_dim: int, w_dim: int, num_layers: int = 8, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.w_avg_beta = z_dim, w_dim, w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=lr_mul, activation=True)
                                      for a, b in zip(dims[:-1], dims[1:])])
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # pixel norm
        return self.layers(z)

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor) -> None:
        """Move ``w_avg`` towards the mean of a batch of w (called during G training steps)."""
        self.w_avg.lerp_(w.detach().float().mean(0).to(self.w_avg.dtype), 1.0 - self.w_avg_beta)


class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated) convolution; the style comes from w by an affine layer.

    Implemented as x * s -> conv(shared weight) -> * d, where d = 1/sqrt(sum (w * s)^2) is the
    demodulation coefficient per (sample, out channel); equal to convolving with per-sample weights.
    ``up=True``: a 4x4 stride-2 transposed convolution doubles the resolution, then a [1,2,1]^2 blur
    removes its checkerboard (the paper: 3x3 transposed conv + [1,3,3,1] FIR blur). This is ~4x faster
    on the CPU than upsample-then-conv. Each output pixel sees a quarter of the taps, so the output is
    multiplied by 2 to keep unit variance.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, up: bool = False) -> None:
        super().__init__()
        if up:
            kernel_size = 4
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = 1 if up else kernel_size // 2
        self.demodulate, self.up = demodulate, up
        if up:
            self.register_buffer("blur_kernel", blur_kernel(out_channels), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # [N, in]
        weight = self.weight * self.weight_gain
        x = x * styles.to(x.dtype)[:, :, None, None]
        if self.up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2, padding=self.padding)
            x = blur(x, self.blur_kernel)
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        gain = 2.0 if self.up else 1.0
        if self.demodulate:
            # sum over (in, k, k) of (weight * style)^2 = styles^2 @ sum_k weight^2, in float32
            # even under autocast (an rsqrt of a bf16/fp16 sum loses too much precision)
            with torch.autocast(device_type=x.device.type, enabled=False):
                wsq = weight.float().square().sum(dim=(2, 3))  # [out, in]
                dcoefs = torch.rsqrt(styles.float().square() @ wsq.t() + 1e-8) * gain  # [N, out]
            x = x * dcoefs.to(x.dtype)[:, :, None, None]
        elif self.up:
            x = x * gain
        return x


class SynthesisLayer(nn.Module):
    """Modulated conv + per-pixel noise (learned strength) + bias + leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, demodulate=True, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.resolution = resolution
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.conv(x, w)
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype,
                                generator=generator)
            x = x + noise * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        return lrelu(x + self.bias.to(x.dtype)[None, :, None, None])


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB without demodulation, plus bias.

    ``init_scale``: the paper's init makes every toRGB output std ~1.4, so the summed image starts at
    std ~2-4, far outside [-1, 1]; D then wins at once and G spends hundreds of steps shrinking the
    weights. Starting the toRGB weights at 0.1x makes the first images grey, which matters when the
    whole budget is a few thousand steps (the CPU demo). 1.0 reproduces the paper.
    """

    def __init__(self, in_channels: int, w_dim: int, img_channels: int = 3, init_scale: float = 0.1) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, img_channels, 1, w_dim, demodulate=False)
        with torch.no_grad():
            self.conv.weight.mul_(init_scale)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (learned const | upsampling conv), conv, toRGB."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int = 3, torgb_init: float = 0.1) -> None:
        super().__init__()
        self.resolution = resolution
        self.is_first = resolution == 4
        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGB(out_channels, w_dim, img_channels, torgb_init)
        self.num_conv = 1 if self.is_first else 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``ws``: [N, num_conv + 1, w_dim]: one w per conv and one for toRGB."""
        i = 0
        if self.is_first:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, ws[:, i], noise_mode, generator)
            i += 1
        x = self.conv1(x, ws[:, i], noise_mode, generator)
        i += 1
        y = self.torgb(x, ws[:, i])
        img = y if img is None else upsample2x(img).to(y.dtype) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, 3, R, R]; ``num_ws = 2 * log2(R) - 2``."""

    def __init__(self, w_dim: int, resolution: int, channel_base: int, channel_max: int,
                 channels: Mapping[int, int] | None = None, img_channels: int = 3,
                 torgb_init: float = 0.1) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        self.w_dim, self.resolution = w_dim, resolution
        self.resolutions = [2 ** i for i in range(2, log2 + 1)]
        blocks = []
        for res in self.resolutions:
            in_ch = channels_for(res // 2, channel_base, channel_max, channels) if res > 4 else 0
            out_ch = channels_for(res, channel_base, channel_max, channels)
            blocks.append(SynthesisBlock(in_ch, out_ch, w_dim, res, img_channels, torgb_init))
        self.blocks = nn.ModuleList(blocks)
        # Consecutive blocks share one w: a block's toRGB and the next block's first conv.
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``generator``: draws the random per-pixel noise (None: the global RNG)."""
        x = img = None
        start = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, start:start + block.num_conv + 1], noise_mode, generator)
            start += block.num_conv
        return img


class Generator(nn.Module):
    """z -> image. ``G(z, c=None, truncation_psi=1.0)``; ``c`` is accepted (and ignored) for
    compatibility with NVIDIA-style ``G(z, c)`` callers; this generator is unconditional.

    ``noise_mode``: "random" (training), "const" (fixed per-layer noise, reproducible sampling;
    the default for ``G_ema``) or "none"; random noise is drawn from ``synthesis(..., generator=g)``.

    >>> G = Generator(z_dim=8, w_dim=8, resolution=8, mapping_layers=1, channel_base=64, channel_max=8)
    >>> G(torch.zeros(2, 8), noise_mode="const").shape
    torch.Size([2, 3, 8, 8])
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, resolution: int = 64, mapping_layers: int = 8,
                 mapping_lr_mul: float = 0.01, channel_base: int = 16384, channel_max: int = 512,
                 channels: Mapping[int, int] | None = None, img_channels: int = 3,
                 noise_mode: str = "random", torgb_init: float = 0.1) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.c_dim, self.img_resolution = z_dim, w_dim, 0, resolution
        self.img_channels = img_channels
        self.noise_mode = noise_mode
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, lr_mul=mapping_lr_mul)
        self.synthesis = SynthesisNetwork(w_dim, resolution, channel_base, channel_max, channels, img_channels,
                                          torgb_init)
        self.num_ws = self.synthesis.num_ws

    def map(self, z: torch.Tensor, truncation_psi: float = 1.0,
            truncation_cutoff: int | None = None) -> torch.Tensor:
        """z [N, z_dim] -> ws [N, num_ws, w_dim], with the truncation trick toward ``w_avg``."""
        w = self.mapping(z)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1.0:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            w_avg = self.mapping.w_avg.to(ws.dtype)
            ws[:, :cutoff] = w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str | None = None) -> torch.Tensor:
        ws = self.map(z, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode or self.noise_mode)


# ----------------------------------------------------------------------------------------------- D


class MinibatchStdDev(nn.Module):
    """Append the average (over features and pixels) standard deviation across groups of samples.

    This layer deliberately mixes samples (it lets D see a batch's variety); it must not be used in a
    differentially private discriminator.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:  # largest group size <= group_size that divides the batch
            g -= 1
        f = self.num_channels
        y = x.reshape(g, n // g, f, c // f, h, w).float()
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # [n/g, f]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: conv3x3, downsampling conv3x3, plus a 1x1 downsampling skip; sum / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation=True, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x)
        x = self.conv1(self.conv0(x))
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """image [N, 3, R, R] -> logit [N]. ``mbstd_group_size=0`` removes the only cross-sample op.

    With ``mbstd_group_size=0`` every output depends on its own input only (no BatchNorm, no
    minibatch statistics), as differentially private training needs.

    >>> D = Discriminator(resolution=8, channel_base=64, channel_max=8, mbstd_group_size=0)
    >>> D(torch.zeros(3, 3, 8, 8)).shape
    torch.Size([3])
    """

    def __init__(self, resolution: int = 64, channel_base: int = 16384, channel_max: int = 512,
                 channels: Mapping[int, int] | None = None, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, img_channels: int = 3) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        ch = lambda r: channels_for(r, channel_base, channel_max, channels)  # noqa: E731
        self.resolution = resolution
        self.fromrgb = EqualConv2d(img_channels, ch(resolution), 1, activation=True)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(ch(2 ** i), ch(2 ** (i - 1)))
                                      for i in range(log2, 2, -1)])
        self.mbstd = MinibatchStdDev(mbstd_group_size, mbstd_num_channels) if mbstd_group_size > 0 else None
        c4 = ch(4)
        extra = mbstd_num_channels if self.mbstd is not None else 0
        self.conv = EqualConv2d(c4 + extra, c4, 3, activation=True)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)

    @property
    def has_cross_sample_ops(self) -> bool:
        return self.mbstd is not None

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = self.blocks(self.fromrgb(img))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x).squeeze(1)
