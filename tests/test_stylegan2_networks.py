"""StyleGAN2 networks: shapes, truncation, per-sample independence of the DP-compatible D, losses."""

from __future__ import annotations

import pytest
import torch

from gmia_defend.errors import UserError
from gmia_defend.models import StyleGAN2
from gmia_defend.models.stylegan2.augment import DiffAugment
from gmia_defend.models.stylegan2.losses import path_length_penalty, r1_penalty_per_sample
from gmia_defend.models.stylegan2.networks import Discriminator, Generator


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_shapes_at_each_resolution(resolution, tiny_stylegan2_kwargs):
    torch.manual_seed(0)
    kw = {**tiny_stylegan2_kwargs, "resolution": resolution}
    model = StyleGAN2(**kw)
    z = torch.randn(3, model.G_ema.z_dim)
    assert model.G_ema.z_dim == kw["z_dim"]
    images = model.G_ema(z, None, truncation_psi=0.5)
    assert images.shape == (3, 3, resolution, resolution)
    assert torch.isfinite(images).all()
    assert model.G.num_ws == 2 * (resolution.bit_length() - 1) - 2
    assert model.D(images).shape == (3,)
    assert model.generate(5, seed=1).shape == (5, 3, resolution, resolution)


def test_bad_resolution_is_a_user_error(tiny_stylegan2_kwargs):
    with pytest.raises(UserError, match="power of two"):
        StyleGAN2(**{**tiny_stylegan2_kwargs, "resolution": 48})


def test_truncation_pulls_towards_w_avg():
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, resolution=16, mapping_layers=2, channel_base=64, channel_max=8)
    G.mapping.w_avg.copy_(torch.randn(8))
    z = torch.randn(4, 8)
    ws_full, ws_zero = G.map(z, 1.0), G.map(z, 0.0)
    assert torch.allclose(ws_zero, G.mapping.w_avg.expand_as(ws_zero))
    assert not torch.allclose(ws_full, ws_zero)
    half = G.map(z, 0.5)
    assert torch.allclose(half, (ws_full + ws_zero) / 2, atol=1e-6)


def test_generate_is_deterministic_per_seed(tiny_stylegan2_kwargs):
    model = StyleGAN2(**tiny_stylegan2_kwargs)
    assert torch.equal(model.generate(4, seed=3), model.generate(4, seed=3))
    assert not torch.equal(model.generate(4, seed=3), model.generate(4, seed=4))


def _per_sample_param_grad(model: StyleGAN2, D: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor):
    """Gradient of sample 0's D loss w.r.t. D's parameters, computed on the whole batch."""
    params = {k: v.detach() for k, v in D.named_parameters()}

    def loss0(p):
        out = lambda x: torch.func.functional_call(D, p, (x,))  # noqa: E731
        return model.d_loss_per_sample(out, real, fake, augment=False)[0]

    grads = torch.func.grad(loss0)(params)
    return torch.cat([g.flatten() for g in grads.values()])


@pytest.mark.parametrize("dp_compatible", [True, False])
def test_dp_compatible_discriminator_has_no_cross_sample_ops(dp_compatible, tiny_stylegan2_kwargs):
    torch.manual_seed(0)
    model = StyleGAN2(**{**tiny_stylegan2_kwargs, "dp_compatible": dp_compatible, "mbstd_group_size": 4})
    D = model.D
    assert D.has_cross_sample_ops is (not dp_compatible)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in D.modules())
    real, fake = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    real2, fake2 = real.clone(), fake.clone()
    real2[1:] = torch.randn(3, 3, 16, 16)  # same sample 0, different others
    fake2[1:] = torch.randn(3, 3, 16, 16)
    g_a = _per_sample_param_grad(model, D, real, fake)
    g_b = _per_sample_param_grad(model, D, real2, fake2)
    # Sample 0 alone (a batch of one) is what a per-sample DP step sees.
    g_single = _per_sample_param_grad(model, D, real[:1], fake[:1])
    if dp_compatible:
        assert torch.allclose(g_a, g_b, atol=1e-6)
        assert torch.allclose(g_a, g_single, atol=1e-6)
    else:  # the minibatch-stddev layer mixes samples: the check above can fail
        assert not torch.allclose(g_a, g_b, atol=1e-4)


def test_r1_penalty_is_finite_and_per_sample():
    torch.manual_seed(0)
    D = Discriminator(resolution=16, channel_base=64, channel_max=8, mbstd_group_size=0)
    real = torch.randn(4, 3, 16, 16)
    penalty, logits = r1_penalty_per_sample(D, real)
    assert penalty.shape == (4,) and logits.shape == (4,)
    assert torch.isfinite(penalty).all() and (penalty > 0).all()
    alone, _ = r1_penalty_per_sample(D, real[2:3])
    assert torch.allclose(alone[0], penalty[2], rtol=1e-4)
    # differentiable: the penalty has a gradient w.r.t. D's weights (not the final bias: d logit/dx ignores it)
    penalty.sum().backward()
    grad = D.fromrgb.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_path_length_penalty_is_finite():
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, resolution=16, mapping_layers=2, channel_base=64, channel_max=8)
    ws = G.map(torch.randn(3, 8)).detach().requires_grad_(True)
    penalty, new_mean = path_length_penalty(G.synthesis(ws), ws, torch.zeros(()))
    assert torch.isfinite(penalty) and float(new_mean) > 0


def test_augmentation_is_per_sample_and_off_at_p0():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert torch.equal(DiffAugment(0.0)(x), x)
    torch.manual_seed(0)
    y = DiffAugment(1.0)(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    torch.manual_seed(0)
    y_first = DiffAugment(1.0)(x[:1].expand(6, -1, -1, -1).contiguous())
    # the same image gets different random augmentations in different rows
    assert not torch.equal(y_first[0], y_first[1])
    with pytest.raises(UserError, match="augment"):
        DiffAugment(0.5, "translation,flip")
