"""DP-SGD for the discriminator, at the level of images or of identities (people).

Only the discriminator sees real data, so if its updates are differentially private, the generator
(trained from D's outputs on generated images only) is private too, by post-processing. Every D
step: sample units with Poisson rate q (``identity_sampling``), compute each unit's gradient of the
logistic loss (+ R1 on lazy steps) with ``torch.func`` (``per_sample``), clip it to
``max_grad_norm`` C, sum, add N(0, sigma^2 C^2) once, divide by the expected number of units per
batch, and step D's optimizer. Opacus's accountant (RDP or PRV) turns (sigma, q, steps) into epsilon.

With ``unit="identity"`` the unit is a person: identities are Poisson-sampled, each brings up to
``m`` images and one clipped gradient (the sum over its images), and epsilon is per person.

What the guarantee covers: the D parameters (hence G and G_ema). It does not cover anything else
computed from real training images and released (logged D(real) statistics, batch sizes, image grids
of real data, FID against training images): keep those off or count them as leaks.

Randomness: the Gaussian noise comes from a generator of this object seeded from the OS (or from an
explicit ``seed``); its state is never saved. A resumed run reseeds it from OS entropy, so no
checkpoint lets anyone recompute the noise, and no noise is ever replayed. The Poisson sampling
draws from a seed shared by all ranks (rank 0's); the realised batch sizes are never logged or
checkpointed (the module counts images at the expected batch size).
Sampling that is not Poisson (shuffled fixed-size batches) is refused: the accountant's epsilon would
not bound it. ``allow_shuffled_sampling=True`` runs it anyway and marks the epsilon as not a valid
bound (``summary()["epsilon_valid"] is False`` with the reason).

One file on purpose: sampling, clipping, noise and accounting of one private step must be read together to check the guarantee.
"""

from __future__ import annotations

import functools
import math
import secrets
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from gmia_defend.errors import UserError
from gmia_defend.mitigations import accounting
from gmia_defend.mitigations.dp_checks import check_discriminator, check_no_adaptive_augmentation
from gmia_defend.mitigations.identity_sampling import (
    UnitBatchSampler,
    capped_images,
    identity_units,
    private_dataloader,
)
from gmia_defend.mitigations.per_sample import LossFn, PerUnitGradients, unit_layout

UNITS = ("image", "identity")
DEFAULT_IMAGES_PER_IDENTITY = 4
SHUFFLED_NOTE = ("shuffled fixed-size batches, not Poisson sampling: the accountant assumes Poisson "
                 "subsampling, so this epsilon is not a valid bound")


class PrivateDiscriminator:
    """The DP replacement of a discriminator update, plus its privacy accountant.

    Build it with :func:`make_discriminator_private`. ``step(module, real, labels, fake)`` performs one
    private D update and returns floats to log. ``epsilon``/``delta``/``unit``/``summary()`` report
    the guarantee; ``batch_sampler()`` / ``attach_datamodule()`` give the Poisson batches the
    accounting assumes; ``state_dict()`` / ``load_state_dict()`` resume the accountant.

    >>> D = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    >>> pd = make_discriminator_private(D, optimizer=torch.optim.SGD(D.parameters(), lr=0.1),
    ...                                 noise_multiplier=1.0, batch_size=4, dataset_size=40)
    >>> logs = pd.step(None, torch.randn(3, 3, 2, 2), None, torch.randn(3, 3, 2, 2))
    >>> pd.steps, round(pd.sample_rate, 2), pd.unit, sorted(pd.state_dict())
    (1, 0.1, 'image', ['accountant', 'delta', 'history', 'steps', 'unit'])
    """

    def __init__(self, D: nn.Module, *, unit: str, noise_multiplier: float, max_grad_norm: float,
                 sample_rate: float, delta: float, accountant: str, num_units: int,
                 expected_images: float, targets: torch.Tensor | None, max_images_per_identity: int | None,
                 poisson_sampling: bool, target_epsilon: float | None, r1_gamma: float, r1_interval: int,
                 optimizer: torch.optim.Optimizer | None = None, chunk_size: int | None = None,
                 seed: int | None = None, loss_fn: LossFn | None = None, augment: bool = True,
                 log_private_stats: bool = False, planned_steps: int | None = None) -> None:
        self.D = D
        self.unit = unit
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.accountant_name = accounting.check_accountant(accountant)
        self.accountant = accounting.create_accountant(self.accountant_name)
        self.num_units = int(num_units)
        self.expected_units = self.sample_rate * self.num_units
        self.expected_images_per_step = float(expected_images)
        self.targets = targets
        self.max_images_per_identity = max_images_per_identity
        self.poisson_sampling = bool(poisson_sampling)
        self.target_epsilon = target_epsilon
        self.r1_gamma = float(r1_gamma)
        self.r1_interval = int(r1_interval)
        self.optimizer = optimizer
        self.chunk_size = chunk_size
        self.explicit_seed = seed is not None
        self.seed = int(secrets.randbits(63) if seed is None else seed)
        self.loss_fn = loss_fn
        self.augment = bool(augment)
        self.log_private_stats = bool(log_private_stats)
        self.planned_steps = planned_steps
        self.steps = 0
        self.sampler: UnitBatchSampler | None = None
        self._noise: torch.Generator | None = None
        self._noise_seed = (int(np.random.SeedSequence([self.seed, 2]).generate_state(1)[0]) if self.explicit_seed
                            else secrets.randbits(63))
        self._budget_end: int | None = None
        self._eps_cache: tuple[int, float] | None = None

    # ------------------------------------------------------------------ the guarantee

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """Opacus accountant history ``[(noise_multiplier, sample_rate, steps)]``."""
        return list(self.accountant.history)

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (per image or per identity, see ``unit``)."""
        if self._eps_cache is None or self._eps_cache[0] != self.steps:
            self._eps_cache = (self.steps, accounting.epsilon(self.history, self.delta, self.accountant_name))
        return self._eps_cache[1]

    def epsilon_after(self, extra_steps: int) -> float:
        """Epsilon after ``extra_steps`` more steps at the current noise and sample rate."""
        more = [(self.noise_multiplier, self.sample_rate, int(extra_steps))]
        return accounting.epsilon(self.history + more, self.delta, self.accountant_name)

    def reported_epsilon(self, every: int | None = None) -> float:
        """Epsilon to log now: exact every ``every`` steps (default 1 with RDP, 25 with the slower PRV),
        in between the value at the end of the current block, an upper bound (never under-reported)."""
        every = every or (1 if self.accountant_name == "rdp" else 25)
        return self.epsilon if self.steps % every == 0 else self.epsilon_after(-self.steps % every)

    @property
    def budget_steps(self) -> int | None:
        """Total D steps that keep epsilon <= target_epsilon (None without a target)."""
        if self.target_epsilon is None:
            return None
        if self._budget_end is None:
            self._budget_end = self.steps + accounting.max_steps_within(
                self.target_epsilon, self.delta, self.noise_multiplier, self.sample_rate,
                self.accountant_name, history=self.history,
                hint=None if self.planned_steps is None else max(1, self.planned_steps - self.steps))
        return self._budget_end

    def set_target_epsilon(self, target_epsilon: float | None) -> None:
        """Change the budget (e.g. the monitor's tighter target); the step limit is recomputed."""
        self.target_epsilon = target_epsilon
        self._budget_end = None

    @property
    def budget_exhausted(self) -> bool:
        """True when one more step would take epsilon above target_epsilon."""
        return self.budget_steps is not None and self.steps >= self.budget_steps

    @property
    def epsilon_valid(self) -> bool:
        """False when the sampling is not what the accountant assumes (shuffled batches)."""
        return self.poisson_sampling

    def summary(self) -> dict[str, Any]:
        """What release.json records: the guarantee and how it was obtained."""
        return {"epsilon": self.epsilon, "delta": self.delta, "unit": self.unit, "steps": self.steps,
                "noise_multiplier": self.noise_multiplier, "accountant": self.accountant_name,
                "sample_rate": self.sample_rate, "max_grad_norm": self.max_grad_norm,
                "num_units": self.num_units, "target_epsilon": self.target_epsilon,
                "max_images_per_identity": self.max_images_per_identity,
                "poisson_sampling": self.poisson_sampling, "epsilon_valid": self.epsilon_valid,
                "epsilon_note": None if self.epsilon_valid else SHUFFLED_NOTE}

    # ------------------------------------------------------------------ data

    def batch_sampler(self, rank: int | None = None, world_size: int | None = None) -> UnitBatchSampler:
        """The batch sampler the accounting assumes (Poisson over images or identities, rate q)."""
        dist = torch.distributed
        ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if rank is None or world_size is None:
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
        if ddp and not self.explicit_seed:
            # one global draw: every rank samples with rank 0's (secret) seed and keeps its slice
            shared = torch.tensor([self.seed], dtype=torch.int64)
            dist.broadcast(shared, src=0)
            self.seed = int(shared.item())
        if self.targets is not None:
            units = (identity_units(self.targets) if self.unit == "identity"
                     else [[i] for i in range(len(self.targets))])
        else:
            units = [[i] for i in range(self.num_units)]
        self.sampler = UnitBatchSampler(
            units, self.sample_rate, max_per_unit=self.max_images_per_identity if self.unit == "identity" else None,
            poisson=self.poisson_sampling, seed=int(np.random.SeedSequence([self.seed, 1]).generate_state(1)[0]),
            salt=self._salt, rank=rank, world_size=world_size)
        return self.sampler

    def _salt(self) -> int:
        return self.steps

    def attach_datamodule(self, datamodule: Any) -> None:
        """Make ``datamodule.train_dataloader()`` yield this object's private batches."""
        data = datamodule.train_dataset
        labels = getattr(data, "labels", None)
        if self.targets is not None and (labels is None or not torch.equal(torch.as_tensor(labels).long(), self.targets)):
            raise UserError("the datamodule's training labels differ from those the privacy accounting was "
                            "built for; call make_discriminator_private(..., datamodule=dm) with this datamodule")
        datamodule.train_dataloader = functools.partial(_private_train_dataloader, self, datamodule)

    # ------------------------------------------------------------------ the private update

    def _find_optimizer(self, module: Any) -> Any:
        if self.optimizer is not None:
            return self.optimizer
        trainer = getattr(module, "_trainer", None)
        if trainer is None:
            raise UserError("no optimizer for the private discriminator: pass optimizer= to "
                            "make_discriminator_private, or call step() from a LightningModule being trained")
        opts = module.optimizers()
        opts = opts if isinstance(opts, (list, tuple)) else [opts]
        ids = {id(p) for p in self.D.parameters()}
        for opt in opts:
            if any(id(p) in ids for g in opt.param_groups for p in g["params"]):
                return opt
        raise UserError("none of the module's optimizers holds the discriminator's parameters; "
                        "configure_optimizers must return an optimizer over D.parameters()")

    def _check_training_setup(self, module: Any) -> None:
        trainer = getattr(module, "_trainer", None)
        if trainer is None:
            return
        if str(getattr(trainer, "precision", "32")) in ("16", "16-mixed"):
            raise UserError("DP training does not support float16 mixed precision (its gradient scaler "
                            "would rescale the private gradient); use precision='32-true' or 'bf16-mixed'")
        if self.poisson_sampling and self.sampler is None:
            raise UserError("the training batches are not drawn by the privacy sampler, so the accounted "
                            "epsilon would be wrong; pass datamodule= to make_discriminator_private, or build the "
                            "DataLoader with private_dataloader(dataset, private_d.batch_sampler())")

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._noise is None or self._noise.device != device:
            self._noise = torch.Generator(device=device)
            self._noise.manual_seed(self._noise_seed)
            self._noise_seed = secrets.randbits(63)  # a later device switch never replays this noise
        return self._noise

    def _noisy_sum(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add N(0, (sigma C)^2) once to the (all-ranks) sum of clipped gradients."""
        names = list(grads)
        flat = torch.cat([grads[n].reshape(-1).float() for n in names])
        dist = torch.distributed
        ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not ddp or dist.get_rank() == 0:  # noise once, whatever the number of ranks
            std = self.noise_multiplier * self.max_grad_norm
            flat += std * torch.randn(flat.shape, generator=self._generator(flat.device), device=flat.device)
        if ddp:
            dist.all_reduce(flat)
        out, start = {}, 0
        for n in names:
            size = grads[n].numel()
            out[n] = flat[start:start + size].view_as(grads[n]).to(grads[n].dtype)
            start += size
        return out

    def step(self, module: Any, real_images: torch.Tensor, real_labels: torch.Tensor | None = None,
             fake_images: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict[str, float]:
        """One private D update; returns floats to log (``privacy/epsilon``, ``privacy/steps``).

        ``fake_images[i]`` is paired with ``real_images[i]`` (reused cyclically if there are fewer);
        for identity-level DP ``real_labels`` give each image's identity. An empty real batch (Poisson)
        still takes a step: noise only. ``generator`` draws the module's augmentation (None: the
        global RNG); the Gaussian noise always comes from this object's own generator.
        """
        if self.budget_exhausted:
            raise UserError(f"privacy budget exhausted: another D step would take epsilon above target_epsilon="
                            f"{self.target_epsilon} after {self.steps} steps; stop training (PrivacyBudgetMonitor "
                            "does) or raise target_epsilon")
        if module is not None:
            self._check_training_setup(module)
        optimizer = self._find_optimizer(module)
        real = real_images.detach()
        n = real.shape[0]
        labels = None
        if self.unit == "identity":
            if real_labels is None:
                raise UserError("identity-level DP needs the identity of every training image: the DataLoader "
                                "must yield (images, identity_labels), e.g. IdentityDataModule batches")
            labels = torch.as_tensor(real_labels, device=real.device).long().reshape(-1)
        if fake_images is None or (n > 0 and fake_images.shape[0] == 0):
            raise UserError("the private discriminator step needs generated images paired with the real ones")
        fake = fake_images.detach()[torch.arange(n, device=real.device) % max(fake_images.shape[0], 1)]
        aug = getattr(module, "augment", None) if self.augment else None
        if callable(aug) and n > 0:
            with torch.no_grad():
                if generator is not None:
                    real, fake = aug(real, generator), aug(fake, generator)
                else:
                    real, fake = aug(real), aug(fake)

        lazy_r1 = self.r1_gamma > 0 and self.steps % self.r1_interval == 0
        r1_weight = self.r1_gamma / 2.0 * self.r1_interval if lazy_r1 else 0.0
        names = {id(p) for g in optimizer.param_groups for p in g["params"]}
        params = [name for name, p in self.D.named_parameters() if id(p) in names]
        engine = PerUnitGradients(self.D, params, self.loss_fn, self.chunk_size)
        result = engine.clipped_sum(real, fake, unit_layout(n, labels, real.device), self.max_grad_norm, r1_weight)
        noisy = self._noisy_sum(result.grads)

        by_name = dict(self.D.named_parameters())
        for name, g in noisy.items():
            by_name[name].grad = g / self.expected_units
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1

        trainer = getattr(module, "_trainer", None) if module is not None else None
        if trainer is not None and self.budget_exhausted:
            trainer.should_stop = True
        # the module logs these from training_step: fresh for batch-end readers even without a monitor
        logs = {"privacy/epsilon": self.reported_epsilon(), "privacy/steps": float(self.steps)}
        if self.log_private_stats:  # statistics of real data: NOT covered by the guarantee
            logs.update({f"dp/{k}": float(v) for k, v in result.stats.items()})
            logs["dp/units"] = float(result.num_units)
        return logs

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Accountant history and step count (weights_only-loadable). Deliberately not the noise
        generator's state (it would let anyone with the checkpoint recompute every noise draw) nor
        any realised batch size."""
        return {"steps": self.steps, "history": [list(h) for h in self.history],
                "accountant": self.accountant_name, "unit": self.unit, "delta": self.delta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved (the unit and accountant must match). The noise generator
        is reseeded from OS entropy, whatever ``seed`` was: resumed noise never repeats earlier noise."""
        for key in ("unit", "accountant"):
            mine = self.unit if key == "unit" else self.accountant_name
            if state.get(key) != mine:
                raise UserError(f"the checkpoint's privacy state was accounted with {key}={state.get(key)!r}, "
                                f"this run uses {mine!r}; resume with the same DP settings")
        self.accountant.history = [(float(s), float(q), int(t)) for s, q, t in state["history"]]
        self.steps = int(state["steps"])
        self._noise, self._noise_seed = None, secrets.randbits(63)
        self._budget_end, self._eps_cache = None, None


def _private_train_dataloader(private: PrivateDiscriminator, datamodule: Any) -> torch.utils.data.DataLoader:
    """Replacement ``datamodule.train_dataloader``: the training set through the privacy sampler
    (bound with functools.partial, not a closure: Lightning inspects it and it stays picklable)."""
    pin = getattr(datamodule, "pin_memory", None)
    workers = int(getattr(datamodule, "num_workers", 0) or 0)
    return private_dataloader(datamodule.train_dataset, private.batch_sampler(), num_workers=workers,
                              pin_memory=torch.cuda.is_available() if pin is None else bool(pin),
                              persistent_workers=workers > 0)


# ---------------------------------------------------------------------------------------- factory


def _resolve_units(unit: str, targets: torch.Tensor | None, dataset_size: int | None,
                   m: int | None) -> tuple[int, int]:
    """(number of privacy units, images that can enter a batch)."""
    if unit == "identity":
        if targets is None:
            raise UserError("identity-level DP needs the identity of every training image: pass datamodule= "
                            "(an IdentityDataModule) or targets=")
        return len(identity_units(targets)), capped_images(targets, m)
    n = len(targets) if targets is not None else dataset_size
    if n is None or n < 1:
        raise UserError("the number of training images is unknown: pass datamodule=, targets= or dataset_size=")
    return int(n), int(n)


def make_discriminator_private(
    module_or_discriminator: nn.Module,
    *,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    epochs: float | None = None,
    steps: int | None = None,
    max_grad_norm: float = 1.0,
    delta: float | None = None,
    accountant: str = "rdp",
    poisson_sampling: bool = True,
    unit: str = "image",
    max_images_per_identity: int | None = None,
    sample_rate: float | None = None,
    batch_size: int | None = None,
    dataset_size: int | None = None,
    targets: Sequence[int] | torch.Tensor | None = None,
    datamodule: Any = None,
    r1_gamma: float | None = None,
    r1_interval: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    chunk_size: int | None = None,
    seed: int | None = None,
    loss_fn: LossFn | None = None,
    max_noise_multiplier: float = accounting.MAX_NOISE_MULTIPLIER,
    log_private_stats: bool = False,
    allow_shuffled_sampling: bool = False,
) -> PrivateDiscriminator:
    """Make a discriminator's updates (epsilon, delta)-DP per image or per identity.

    ``module_or_discriminator``: a LightningModule with a ``D`` attribute (StyleGAN2: its
    ``private_d`` is set) or a bare discriminator (then pass ``optimizer=``).
    Noise: ``noise_multiplier`` directly, or ``target_epsilon`` with ``steps`` (or ``epochs``) to solve
    for it; both together: fixed noise, and training stops when target_epsilon is reached.
    Sampling: ``sample_rate`` q, or ``batch_size`` = expected real images per batch (default: the
    datamodule's). ``unit="identity"``: q is per identity; ``max_images_per_identity`` m (default 4)
    images per sampled identity. ``unit="image"`` with ``max_images_per_identity`` k: every person
    must have at most k training images (the cap a per-person guarantee from image-level DP needs);
    otherwise refused. ``delta`` defaults to 1 / (10 * units). ``r1_gamma``/``r1_interval``
    default to the module's (StyleGAN2 hparams) and are applied per sample on every
    ``r1_interval``-th step. ``datamodule``: its training labels give the units and its
    ``train_dataloader`` is switched to the private batch sampler. ``seed``: sampling and noise
    randomness (None: from the OS; a known seed voids the guarantee against whoever knows it); the
    noise is reseeded from OS entropy on resume. ``poisson_sampling=False`` (shuffled fixed-size
    batches) is refused unless ``allow_shuffled_sampling=True``, which marks epsilon as not a valid bound.
    Raises UserError for configurations that would not be private (see ``dp_checks``).
    """
    if unit not in UNITS:
        raise UserError(f"unit must be 'image' or 'identity', got {unit!r}")
    if not poisson_sampling and not allow_shuffled_sampling:
        raise UserError("poisson_sampling=False is refused: the privacy accountant assumes Poisson subsampling, so "
                        "the epsilon of shuffled fixed-size batches is not a valid bound; keep poisson_sampling=True "
                        "(or pass allow_shuffled_sampling=True to run it with epsilon marked invalid)")
    accountant = accounting.check_accountant(accountant)
    target = module_or_discriminator
    D = next((d for d in (getattr(target, a, None) for a in ("D", "discriminator")) if isinstance(d, nn.Module)), None)
    module = target if D is not None else None
    D = D if module is not None else target
    if not isinstance(D, nn.Module) or not any(True for _ in D.parameters()):
        raise UserError("make_discriminator_private needs a discriminator nn.Module with parameters, or a "
                        "LightningModule with one as attribute D (or discriminator)")
    if not max_grad_norm > 0:
        raise UserError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    check_discriminator(D)
    if module is not None:
        if not hasattr(module, "private_d"):
            raise UserError(f"{type(module).__name__} has no private_d hook, so its discriminator update would stay "
                            "non-private; use StyleGAN2 (its D update calls module.private_d.step(...)), add that "
                            "hook to your module, or pass the bare discriminator and call step() yourself")
        check_no_adaptive_augmentation(module)

    if datamodule is not None:
        labels = getattr(datamodule.train_dataset, "labels", None)
        if labels is None:
            raise UserError("the datamodule's train_dataset has no per-image identity labels (.labels)")
        targets = labels
        batch_size = batch_size if batch_size is not None or sample_rate is not None else datamodule.batch_size
    targets_t = torch.as_tensor(np.asarray(targets)).long().reshape(-1) if targets is not None else None
    m = None
    if unit == "identity":
        m = DEFAULT_IMAGES_PER_IDENTITY if max_images_per_identity is None else int(max_images_per_identity)
        if m < 1:
            raise UserError(f"max_images_per_identity must be >= 1, got {max_images_per_identity}")
    elif max_images_per_identity is not None:
        m = int(max_images_per_identity)
        if m < 1:
            raise UserError(f"max_images_per_identity must be >= 1, got {max_images_per_identity}")
        if targets_t is None:
            raise UserError("max_images_per_identity with unit='image' needs the identity of every training image: "
                            "pass datamodule= or targets=")
        most = int(torch.bincount(targets_t - targets_t.min()).max())
        if most > m:
            raise UserError(f"a person has {most} training images, more than max_images_per_identity={m}: cap the data "
                            f"(data.max_images_per_identity={m}) so that the per-person bound holds")
    num_units, usable_images = _resolve_units(unit, targets_t, dataset_size, m)

    if sample_rate is None:
        if batch_size is None:
            raise UserError("pass sample_rate= or batch_size= (expected real images per batch) for DP accounting")
        sample_rate = float(batch_size) / usable_images
    if not 0 < sample_rate <= 1:
        raise UserError(f"sample rate {sample_rate:.4g} is outside (0, 1]; use a batch size between 1 and the "
                        f"{usable_images} usable training images")
    delta = accounting.default_delta(num_units) if delta is None else float(delta)
    if not 0 < delta < 1:
        raise UserError(f"delta must be in (0, 1), got {delta}")

    if epochs is not None and steps is None:
        steps = int(math.ceil(float(epochs) / sample_rate))
    if noise_multiplier is None:
        if target_epsilon is None:
            raise UserError("pass noise_multiplier= or target_epsilon= (with steps= or epochs=)")
        if steps is None:
            raise UserError("target_epsilon needs the training length to choose the noise: pass steps= "
                            "(discriminator steps) or epochs=")
        noise_multiplier = accounting.noise_multiplier_for(target_epsilon, delta, sample_rate, steps, accountant,
                                                           max_noise_multiplier)
    elif not noise_multiplier > 0:
        raise UserError(f"noise_multiplier must be > 0, got {noise_multiplier}")

    hp = getattr(module, "hparams", None) or {}
    r1_gamma = float(hp.get("r1_gamma", 0.0) if r1_gamma is None else r1_gamma)
    r1_interval = int(hp.get("r1_interval", 16) if r1_interval is None else r1_interval)
    if r1_gamma < 0 or r1_interval < 1:
        raise UserError("r1_gamma must be >= 0 and r1_interval >= 1")

    private = PrivateDiscriminator(
        D, unit=unit, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, sample_rate=sample_rate,
        delta=delta, accountant=accountant, num_units=num_units,
        expected_images=sample_rate * usable_images, targets=targets_t, max_images_per_identity=m,
        poisson_sampling=poisson_sampling, target_epsilon=target_epsilon, r1_gamma=r1_gamma,
        r1_interval=r1_interval, optimizer=optimizer, chunk_size=chunk_size, seed=seed, loss_fn=loss_fn,
        log_private_stats=log_private_stats, planned_steps=steps)
    if private.budget_steps == 0:
        raise UserError(f"target_epsilon={target_epsilon} is already exceeded by one step at noise "
                        f"{noise_multiplier:.3g} and sample rate {sample_rate:.4g}; raise target_epsilon or the noise")
    if datamodule is not None:
        private.attach_datamodule(datamodule)
    if module is not None:
        module.private_d = private
    return private
