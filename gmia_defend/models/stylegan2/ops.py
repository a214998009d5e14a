"""Equalized-learning-rate layers and resampling shared by the generator and the discriminator.

Equalized learning rate (Karras et al. 2018/2020): weights are stored as N(0, 1) / lr_mul and scaled
at run time by ``lr_mul / sqrt(fan_in)``, so Adam's per-parameter step size is the same for every
layer whatever its fan-in. Leaky ReLU outputs are multiplied by sqrt(2) to keep unit variance.

Resampling (simpler than the paper's [1, 3, 3, 1] FIR filters, and cheaper on the CPU): the skip
generator upsamples RGB images bilinearly; the generator's upsampling conv is a 4x4 stride-2
transposed conv followed by a [1, 2, 1]^2 blur (networks.ModulatedConv2d); the discriminator
downsamples by 2x2 average pooling (box filter) before its conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) with the sqrt(2) gain that keeps activations at unit variance."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x upsampling (stands in for the paper's FIR-filtered transposed convolution)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def blur_kernel(channels: int) -> torch.Tensor:
    """Depthwise [1, 2, 1] x [1, 2, 1] low-pass kernel, shape [channels, 1, 3, 3].

    Scaled to unit L2 norm (sum of squares 1), so i.i.d. activations keep their variance, as
    demodulation assumes; without it each upsampling layer shrinks activations ~2.7x at init.
    """
    k = torch.tensor([1.0, 2.0, 1.0])
    k2 = k[:, None] * k[None, :]
    return (k2 / k2.square().sum().sqrt()).expand(channels, 1, 3, 3).contiguous()


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Low-pass filter each channel (removes the checkerboard a stride-2 transposed conv leaves)."""
    return F.conv2d(x, kernel.to(x.dtype), padding=1, groups=x.shape[1])


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling (stands in for the paper's FIR blur + stride 2)."""
    return F.avg_pool2d(x, 2)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate, optional lr multiplier and lrelu."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        x = F.linear(x, self.weight * self.weight_gain, bias)
        return lrelu(x) if self.activation else x

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, lr_mul={self.lr_mul}, act={self.activation}"


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate; ``down=True`` halves the resolution first."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = False, down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.activation = activation
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = downsample2x(x)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return lrelu(x) if self.activation else x

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}->{o}, k={k}, down={self.down}, act={self.activation}"
