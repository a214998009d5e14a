"""StyleGAN2 as a LightningModule (manual optimization): one D step per batch, one G step every
``d_steps_per_g_step`` batches.

Per batch (``trainer.global_step`` counts optimizer steps: 2 per batch with the default of one D step
per G step; schedule by images instead):
  D step: non-saturating logistic loss on real vs generated images; every ``r1_interval`` batches the
          R1 penalty is added, scaled by the interval (lazy regularisation, folded into the same step).
          Replaced by ``self.private_d.step(...)`` when a DP wrapper is attached.
  G step: non-saturating loss with style mixing; every ``pl_interval`` G steps the (optional)
          path-length penalty, scaled by the interval.
  Then: ``images_seen`` += batch (all ranks), G_ema <- EMA of G (half-life ``ema_kimg``, rampup),
        ``progress/kimg`` and losses are logged, and every ``sample_every_n_batches`` a grid of
        G_ema samples from fixed latents is written to ``<run>/samples/``.

Randomness: every random draw of a step (latents, style-mixing crossover, per-pixel noise,
augmentation, path-length probes) comes from its own ``torch.Generator`` seeded from
``(rng_seed, batch counter, stream, rank)``, never from the global RNG. The batch counter is saved in
the checkpoint, so a run resumed from a checkpoint continues with exactly the draws of the
uninterrupted run; and the D step and the G step use separate streams, so under DP the G step's
draws do not depend on the realised (private) size of the real batch.

One file on purpose: the D and G steps, their random streams and the checkpoint hooks that make a resume exact must be read together.
"""

from __future__ import annotations

import copy
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

import pytorch_lightning as pl
import torch
from torch import nn

from gmia_defend.io import atomic_write
from gmia_defend.models.stylegan2.augment import DiffAugment
from gmia_defend.models.stylegan2.losses import (
    d_logistic_loss_per_sample,
    g_nonsaturating_loss,
    path_length_penalty,
    r1_penalty_per_sample,
)
from gmia_defend.models.stylegan2.networks import Discriminator, Generator


def run_dir(trainer: pl.Trainer) -> Path:
    """The run folder: ``trainer.default_root_dir`` (config, checkpoints, samples, audits live there)."""
    return Path(trainer.default_root_dir)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """Write images in [-1, 1] (NCHW) as one PNG grid, atomically."""
    import numpy as np
    from PIL import Image

    images = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = images.shape
    ncol = math.ceil(n / nrow)
    grid = torch.zeros(c, ncol * h, nrow * w)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = images[i]
    array = ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(np.ascontiguousarray(array.squeeze(-1) if c == 1 else array))
    return atomic_write(path, lambda p: image.save(p, format="PNG"))


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def batches_for_max_steps(max_steps: int, d_steps_per_g_step: int = 1) -> int:
    """Batches (one D step each) a fit with ``trainer.max_steps=max_steps`` trains: ``global_step``
    counts D and G optimizer steps, a G step every ``d_steps_per_g_step`` batches, and training stops
    at the first batch that reaches ``max_steps``.

    >>> batches_for_max_steps(5000), batches_for_max_steps(2000, 16), batches_for_max_steps(6, 2)
    (2500, 1883, 4)
    """
    k = max(1, int(d_steps_per_g_step))
    batches = (int(max_steps) * k) // (k + 1)
    while batches + batches // k < max_steps:
        batches += 1
    return max(1, batches)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers and stream names (stable across processes and Python versions)."""
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class StyleGAN2(pl.LightningModule):
    """Unconditional StyleGAN2 (config-F style: skip G, residual D) for 8..1024 px images.

    >>> model = StyleGAN2(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64,
    ...                   channel_max=8, sample_grid=2, rng_seed=0)
    >>> model.generate(4, seed=1).shape
    torch.Size([4, 3, 8, 8])
    >>> round(model.kimg, 3)
    0.0

    Pretrained weights: ``StyleGAN2(..., init_from="pretrain/checkpoints/last.ckpt")`` starts G, D
    and G_ema from a checkpoint (or G and G_ema from a release file), e.g. a model pretrained
    without privacy on public identities before a private fine-tuning.

    Args:
        resolution: image size (power of two); must match the data.
        z_dim, w_dim, mapping_layers, mapping_lr_mul: mapping network (paper: 512, 512, 8, 0.01).
        channel_base, channel_max: feature maps per resolution ``min(channel_base // res, channel_max)``
            for G and D (paper: 32768, 512; the CPU demo uses a few hundred).
        channels: optional per-resolution override ``{res: channels}`` (both networks).
        torgb_init: initial scale of the toRGB weights (1.0 = the paper; 0.1 starts from grey images
            instead of std ~2-4 and saves hundreds of steps on short budgets).
        mbstd_group_size: minibatch-stddev group size in D; 0 disables it.
        dp_compatible: build a D with no cross-sample operations (no minibatch-stddev, no BatchNorm),
            as differentially private training needs; R1 then is exactly per sample.
        lr_g, lr_d, betas: Adam (paper: 0.0025, (0, 0.99)).
        r1_gamma, r1_interval: R1 weight and lazy interval (0 disables R1).
        pl_weight, pl_interval, pl_batch_shrink, pl_decay: path-length regularisation (0 disables).
        style_mixing_prob: probability a training batch mixes two latents at a random crossover.
        ema_kimg, ema_rampup: G_ema half-life in thousands of images; rampup caps it at
            ``rampup * images_seen`` early on (None: no rampup).
        augment_p, augment_policy: DiffAugment-style augmentation of everything D sees, per op and
            sample with fixed probability ``augment_p`` (0: off).
        sample_every_n_batches: write a G_ema sample grid every N training batches (0: only at the end).
        sample_grid, sample_seed, sample_truncation_psi: grid size (sample_grid^2 images), latent seed
            and truncation used for the grids.
        rng_seed: seed of the per-step random streams (None: drawn once from the global RNG, so
            ``seed_everything`` fixes it; it is stored in checkpoints either way).
        d_steps_per_g_step: discriminator steps (one batch each) per generator step; more than one
            helps DP training (each D step is one private, accounted step; the G step reads no
            real data). ``trainer.global_step`` then grows by ``1 + 1/d_steps_per_g_step`` per batch.
        init_from: a Lightning checkpoint of this model (G, D and G_ema are loaded) or a release
            file (G and G_ema from its generator weights; D keeps its initialisation). The
            architecture must match; mismatching keys are refused by name.
    """

    def __init__(
        self,
        resolution: int = 64,
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        mapping_lr_mul: float = 0.01,
        channel_base: int = 16384,
        channel_max: int = 512,
        channels: dict[int, int] | None = None,
        torgb_init: float = 0.1,
        mbstd_group_size: int = 4,
        dp_compatible: bool = False,
        lr_g: float = 0.0025,
        lr_d: float = 0.0025,
        betas: tuple[float, float] = (0.0, 0.99),
        r1_gamma: float = 10.0,
        r1_interval: int = 16,
        pl_weight: float = 0.0,
        pl_interval: int = 4,
        pl_batch_shrink: int = 2,
        pl_decay: float = 0.01,
        style_mixing_prob: float = 0.9,
        ema_kimg: float = 10.0,
        ema_rampup: float | None = 0.05,
        augment_p: float = 0.0,
        augment_policy: str = "translation,cutout,color",
        sample_every_n_batches: int = 500,
        sample_grid: int = 8,
        sample_seed: int = 0,
        sample_truncation_psi: float = 1.0,
        rng_seed: int | None = None,
        d_steps_per_g_step: int = 1,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        # init_from is where the weights STARTED: a checkpoint of this model already holds them, so
        # load_from_checkpoint must not need that file (the run's config.yaml records it)
        self.save_hyperparameters(ignore=["init_from"])
        self.automatic_optimization = False
        from gmia_defend.errors import UserError

        if r1_interval < 1 or pl_interval < 1:
            raise UserError("model.r1_interval and model.pl_interval must be >= 1 (use r1_gamma=0 / "
                            "pl_weight=0 to switch the regularisers off)")
        if int(d_steps_per_g_step) < 1:
            raise UserError(f"model.d_steps_per_g_step must be >= 1, got {d_steps_per_g_step}")
        self.G = Generator(z_dim, w_dim, resolution, mapping_layers, mapping_lr_mul, channel_base,
                           channel_max, channels, torgb_init=torgb_init)
        self.D = Discriminator(resolution, channel_base, channel_max, channels,
                               mbstd_group_size=0 if dp_compatible else mbstd_group_size)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)  # train mode: no BN/dropout; avoids warnings
        self.G_ema.noise_mode = "const"
        self.augment = DiffAugment(augment_p, augment_policy)
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("pl_mean", torch.zeros(()))
        self.register_buffer("sample_z", torch.randn(sample_grid * sample_grid, z_dim,
                                                     generator=torch.Generator().manual_seed(sample_seed)))
        # Set by gmia_defend.mitigations.make_discriminator_private: replaces the D update.
        self.private_d: Any = None
        # drawn after every weight, so the initial weights are those of a model without this line
        self.rng_seed = int(rng_seed) if rng_seed is not None else int(torch.randint(0, 2**62, ()).item())
        if init_from:
            from gmia_defend.models.stylegan2.pretrained import load_pretrained

            load_pretrained(self, init_from)

    # ------------------------------------------------------------------ public helpers

    @property
    def kimg(self) -> float:
        """Thousands of real images shown to D so far (over all ranks)."""
        return float(self.images_seen.item()) / 1000.0

    @property
    def z_dim(self) -> int:
        return self.G.z_dim

    @property
    def d_steps(self) -> int:
        """Discriminator steps taken so far (one per batch): under DP, each is one accounted step."""
        return int(self.batches_seen.item())

    def random_stream(self, name: str, batch_no: int | None = None) -> torch.Generator:
        """The generator of stream ``name`` at batch ``batch_no`` (default: the current batch), on this
        module's device: seeded from (seed, batch, name, rank), independent of every other stream."""
        batch_no = self.d_steps if batch_no is None else int(batch_no)
        rank = self.global_rank if self._trainer is not None else 0
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.rng_seed, batch_no, name, rank))
        return gen

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0, truncation_psi: float = 1.0, batch_size: int = 256,
                 generator: str = "G_ema") -> torch.Tensor:
        """``n`` images in [-1, 1] from latents seeded by ``seed`` (deterministic: const noise)."""
        net: Generator = getattr(self, generator)
        z = torch.randn(n, net.z_dim, generator=torch.Generator().manual_seed(seed))
        out = [net(z[i:i + batch_size].to(self.device), truncation_psi=truncation_psi, noise_mode="const")
               for i in range(0, n, batch_size)]
        return torch.cat(out).clamp(-1, 1)

    def d_loss_per_sample(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                          augment: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logistic D loss per (real_i, fake_i) pair, shape [N]; no cross-sample ops when D has none.

        ``augment=True`` applies this model's (per-sample, random) augmentation first, drawn from
        ``generator``; under ``torch.func.vmap`` pass ``augment=False`` or use ``randomness="different"``.
        """
        if augment:
            real, fake = self.augment(real, generator), self.augment(fake, generator)
        return d_logistic_loss_per_sample(D(real), D(fake))

    # ------------------------------------------------------------------ Lightning hooks

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.G_ema(z, c, truncation_psi=truncation_psi)

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = torch.optim.Adam(self.G.parameters(), lr=hp.lr_g, betas=tuple(hp.betas), eps=1e-8)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=hp.lr_d, betas=tuple(hp.betas), eps=1e-8)
        return [opt_g, opt_d]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, labels = self._unpack(batch)
        n = real.shape[0]
        batch_no = int(self.batches_seen.item())
        world = self.trainer.world_size if self._trainer is not None else 1
        private = self.private_d is not None
        # Under DP the (Poisson) batch size is itself private: the generator step, the image count
        # and the EMA use the expected batch size, and no grid of training images is written.
        n_g = max(1, round(self.private_d.expected_images_per_step)) if private else n
        if batch_no == 0 and self._is_global_zero() and not private and n > 0:
            self._save_grid(real[: self.hparams.sample_grid ** 2], "reals.png")

        # D step: its own streams (their use depends on the real batch size, private under DP)
        with torch.no_grad():
            fake, _ = self._run_generator(max(n, 1), gen=self.random_stream("d_fakes", batch_no))
        d_aug = self.random_stream("d_augment", batch_no)
        if private:
            extra = {"generator": d_aug} if _accepts(self.private_d.step, "generator") else {}
            d_logs = self.private_d.step(self, real, labels, fake, **extra)
        else:
            d_logs = self.discriminator_step(real, fake, batch_no, generator=d_aug)
        d_per_g = int(self.hparams.get("d_steps_per_g_step", 1) or 1)
        g_logs: dict[str, Any] = {}
        if (batch_no + 1) % d_per_g == 0:  # G step: streams keyed by the batch only, whatever n was
            g_logs = self.generator_step(n_g, batch_no // d_per_g, batch_no=batch_no)

        seen = n_g if private else n * world
        self.images_seen += seen
        self.batches_seen += 1
        self._update_ema(seen)
        kimg = self.kimg  # one read of the counter per batch
        logs = {**(d_logs or {}), **g_logs, "progress/kimg": kimg}
        logs = {k: v.detach().float() if torch.is_tensor(v) else float(v) for k, v in logs.items()}
        self.log_dict(logs, prog_bar=False, batch_size=max(n_g, 1))
        self.log("kimg", kimg, prog_bar=True, logger=False, batch_size=max(n_g, 1))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.hparams.sample_every_n_batches
        if every and int(self.batches_seen.item()) % every == 0 and self._is_global_zero():
            self.save_samples()

    def on_train_end(self) -> None:
        if self._is_global_zero():
            self.save_samples()

    # ------------------------------------------------------------------ the two updates

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, batch_no: int,
                           generator: torch.Generator | None = None) -> dict[str, float]:
        """Logistic loss (+ lazy R1 every ``r1_interval`` batches, scaled by it); one Adam step on D.
        ``generator`` draws the augmentation (None: the global RNG)."""
        hp = self.hparams
        opt_d = self.optimizers()[1]
        do_r1 = hp.r1_gamma > 0 and batch_no % hp.r1_interval == 0
        fake_logits = self.D(self.augment(fake.detach(), generator))
        if do_r1:
            penalty, real_logits = r1_penalty_per_sample(lambda x: self.D(self.augment(x, generator)), real)
        else:
            real_logits = self.D(self.augment(real, generator))
        loss = d_logistic_loss_per_sample(real_logits, fake_logits).mean()
        total = loss
        logs = {"loss/d": loss.detach(), "D/real_logit": real_logits.detach().mean(),
                "D/fake_logit": fake_logits.detach().mean()}
        if do_r1:
            loss_r1 = penalty.mean() * (hp.r1_gamma / 2) * hp.r1_interval
            total = total + loss_r1
            logs["loss/r1_penalty"] = penalty.detach().mean()
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(total)
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        return logs

    def generator_step(self, n: int, g_step: int, batch_no: int | None = None) -> dict[str, float]:
        """Non-saturating loss (+ lazy path-length penalty every ``pl_interval`` G steps); one Adam
        step on G; D is frozen. Random draws come from the G streams of batch ``batch_no`` (default
        ``g_step``), which depend on nothing but the seed and that number."""
        hp = self.hparams
        batch_no = g_step if batch_no is None else batch_no
        opt_g = self.optimizers()[0]
        self.D.requires_grad_(False)
        try:
            opt_g.zero_grad(set_to_none=True)
            fake, ws = self._run_generator(n, update_w_avg=True, gen=self.random_stream("g_fakes", batch_no))
            loss = g_nonsaturating_loss(self.D(self.augment(fake, self.random_stream("g_augment", batch_no))))
            self.manual_backward(loss)
            logs = {"loss/g": loss.detach()}
            if hp.pl_weight > 0 and g_step % hp.pl_interval == 0:
                n_pl = max(1, n // hp.pl_batch_shrink)
                gen = self.random_stream("g_path_length", batch_no)
                ws_pl = self._mixed_ws(n_pl, gen=gen).detach().requires_grad_(True)
                images = self.G.synthesis(ws_pl, generator=gen)
                penalty, new_mean = path_length_penalty(images, ws_pl, self.pl_mean, hp.pl_decay, generator=gen)
                self.pl_mean.copy_(new_mean.detach())
                self.manual_backward(penalty * hp.pl_weight * hp.pl_interval)
                logs["loss/pl_penalty"] = penalty.detach()
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
        finally:
            self.D.requires_grad_(True)
        return logs

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, (tuple, list)):
            return batch[0], (batch[1] if len(batch) > 1 else None)
        return batch, None

    def _mixed_ws(self, n: int, update_w_avg: bool = False, gen: torch.Generator | None = None) -> torch.Tensor:
        """ws for n random latents with style mixing: after a random crossover, a second latent.
        Draws come from ``gen`` (None: the global RNG)."""
        z = torch.randn(n, self.G.z_dim, device=self.device, generator=gen)
        ws = self.G.map(z)
        if update_w_avg:
            self.G.mapping.update_w_avg(ws[:, 0])
        p = self.hparams.style_mixing_prob
        if p > 0 and float(torch.rand((), device=self.device, generator=gen)) < p:
            cutoff = int(torch.randint(1, self.G.num_ws, (), device=self.device, generator=gen))
            ws2 = self.G.map(torch.randn(n, self.G.z_dim, device=self.device, generator=gen))
            ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return ws

    def _run_generator(self, n: int, update_w_avg: bool = False,
                       gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self._mixed_ws(n, update_w_avg, gen)
        return self.G.synthesis(ws, noise_mode="random", generator=gen), ws

    @torch.no_grad()
    def _update_ema(self, batch_images: int) -> None:
        hp = self.hparams
        ema_nimg = hp.ema_kimg * 1000.0
        if hp.ema_rampup is not None:
            ema_nimg = min(ema_nimg, float(self.images_seen.item()) * hp.ema_rampup)
        beta = 0.5 ** (batch_images / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the seed of the per-step streams (the batch counter is a buffer in the state dict)
        checkpoint["stylegan2_rng_seed"] = self.rng_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "stylegan2_rng_seed" in checkpoint:
            self.rng_seed = int(checkpoint["stylegan2_rng_seed"])

    def _is_global_zero(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def _save_grid(self, images: torch.Tensor, name: str) -> Path | None:
        if self._trainer is None:
            return None
        return save_image_grid(images, run_dir(self.trainer) / "samples" / name, self.hparams.sample_grid)

    @torch.no_grad()
    def save_samples(self) -> Path | None:
        """Grid of G_ema images from the fixed ``sample_z`` (const noise) -> samples/fakes_<batch>.png."""
        images = self.G_ema(self.sample_z, truncation_psi=self.hparams.sample_truncation_psi, noise_mode="const")
        return self._save_grid(images, f"fakes_{int(self.batches_seen.item()):07d}.png")
