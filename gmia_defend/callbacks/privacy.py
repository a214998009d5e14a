"""PrivacyBudgetMonitor: log epsilon per image and per person as a DP discriminator trains; stop at the budget.

Reads the ``PrivateDiscriminator`` that ``make_discriminator_private`` attached to the module
(``pl_module.private_d``). Every DP run is reported per person, whatever its unit:

- ``unit="identity"`` is ULS (people sampled, each person's summed gradient clipped): its epsilon is
  per person already;
- ``unit="image"`` is ELS (images sampled, at most k images a person, k = the largest per-person
  image count of the training set): its epsilon is per image, and the per-person epsilon follows
  from the mixture-of-Gaussians accountant of ``gmia_defend.mitigations.user_level``.

It publishes ``privacy/epsilon``, ``privacy/delta``, ``privacy/epsilon_person`` and
``privacy/delta_person`` through ``pl_module.log`` (so ``trainer.callback_metrics`` holds them for
other callbacks): at the start of a batch the values that hold after that batch's D step (the
accountant is deterministic and the module takes one D step per batch, whatever
``d_steps_per_g_step``), and again at its end. Callbacks listed before it therefore never read a
stale value, and the trainer's callback list is never reordered. With a target (per unit and/or per
person) it stops training before one more D step would exceed it.

What it keeps and logs is public by construction: the accountant history (noise, sample rate, step
counts), never the realised batch sizes, and no noise-generator state (a resumed run draws fresh
noise from OS entropy). ``summary()`` and ``<run>/privacy.json`` state the scheme, what epsilon
means ("per image" / "per person") and whether it is a valid bound (a shuffled, non-Poisson
sampler is not covered by the accountant: its epsilon is flagged, with the reason).

>>> PrivacyBudgetMonitor(target_epsilon_person=8.0).target_epsilon_person
8.0

One file on purpose: the callback's accounting, per-person reading, budget stop and checkpoint state all read the same private discriminator and must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from gmia_defend.callbacks._state import resolve_run_dir
from gmia_defend.errors import UserError
from gmia_defend.io import write_json_atomic

#: Keys of the private discriminator's state that a checkpoint may hold (all public: the accountant
#: history and step count). Anything else (noise-generator state, realised batch sizes) is dropped.
_PUBLIC_STATE = ("steps", "history", "accountant", "unit", "delta")

SHUFFLED_REASON = ("batches were drawn by a shuffled (fixed-size) sampler, not by Poisson sampling: the "
                   "accountant assumes Poisson sampling, so this epsilon is not a valid bound")


def _d_steps_of(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int | None:
    """D steps (one per batch) that ``trainer.max_steps`` allows: it counts G and D optimizer steps."""
    max_steps = int(getattr(trainer, "max_steps", -1) or -1)
    if max_steps <= 0:
        return None
    hparams = getattr(pl_module, "hparams", None) or {}
    k = int(hparams.get("d_steps_per_g_step", 1) or 1) if hasattr(hparams, "get") else 1
    from gmia_defend.models.stylegan2.module import batches_for_max_steps

    return batches_for_max_steps(max_steps, k)


class PrivacyBudgetMonitor(pl.Callback):
    """Track (epsilon, delta)-DP of a private discriminator, per unit and per person; stop at a target.

    Args:
        target_epsilon: stop before epsilon (per the run's unit) would exceed it (None: the private
            discriminator's own target, if any; with both, the smaller).
        target_epsilon_person: stop before the per-person epsilon would exceed it. With
            ``make_private`` and a step budget (``steps``), the noise is chosen to reach it exactly;
            a target out of reach is refused up front, naming the fewest people or most steps that
            would reach it.
        private_d: the PrivateDiscriminator (None: ``pl_module.private_d`` at fit start).
        log_every_n_steps: evaluate epsilon every N D steps (None: 1 with RDP, 25 with the slower PRV
            and PLD accountants); in between, the logged value is the one at the end of the current
            block of N steps, an upper bound (never under-reported). The stop decision is exact.
        run_dir: where ``privacy.json`` is written at the end (None: ``trainer.default_root_dir``).
        make_private: if given (and the module has no ``private_d`` yet), these keyword arguments of
            ``make_discriminator_private`` are applied at setup, with the trainer's datamodule and this
            ``target_epsilon``: DP from a LightningCLI YAML, e.g. ULS:
            ``make_private: {unit: identity, noise_multiplier: 1.0, max_images_per_identity: 4}``;
            ELS: ``make_private: {unit: image, target_epsilon_person: 8}`` on data capped with
            ``data.max_images_per_identity: 4`` (a ``target_epsilon_person`` key here sets the per-person
            target; without ``steps`` the noise is chosen for the D steps ``trainer.max_steps`` allows).
    """

    #: other callbacks find it by this attribute (no import) and call ``summary()`` for release.json
    emits_privacy_summary = True

    def __init__(self, target_epsilon: float | None = None, private_d: Any = None,
                 log_every_n_steps: int | None = None, run_dir: str | Path | None = None,
                 make_private: dict[str, Any] | None = None, target_epsilon_person: float | None = None) -> None:
        for name, value in (("target_epsilon", target_epsilon), ("target_epsilon_person", target_epsilon_person)):
            if value is not None and not value > 0:
                raise UserError(f"PrivacyBudgetMonitor {name} must be > 0, got {value}")
        self.target_epsilon = target_epsilon
        self.target_epsilon_person = target_epsilon_person
        self.private_d = private_d
        self.log_every_n_steps = log_every_n_steps
        self.run_dir = run_dir
        self.make_private = dict(make_private) if make_private is not None else None
        self.stopping_reason: str | None = None
        self.stopping_reason_message: str | None = None
        self._pending: dict[str, Any] | None = None
        self._last_logged = -1
        self._person: dict[str, Any] | None = None  # scheme, k, people, delta (fixed for a run)
        self._person_cache: dict[int, float] = {}
        self._person_budget: int | None = None

    # ------------------------------------------------------------------ what others read

    @property
    def epsilon(self) -> float | None:
        return None if self.private_d is None else float(self.private_d.epsilon)

    @property
    def delta(self) -> float | None:
        return None if self.private_d is None else float(self.private_d.delta)

    @property
    def unit(self) -> str | None:
        return None if self.private_d is None else str(self.private_d.unit)

    @property
    def steps(self) -> int:
        return 0 if self.private_d is None else int(self.private_d.steps)

    @property
    def scheme(self) -> str | None:
        """"uls" (unit identity) or "els" (unit image); None before a private discriminator is known."""
        if self.private_d is None:
            return None
        return "uls" if self.private_d.unit == "identity" else "els"

    @property
    def epsilon_person(self) -> float | None:
        """Per-person epsilon spent so far (None if the people are unknown: image unit without labels)."""
        return self._person_epsilon_at(self.steps)

    @property
    def delta_person(self) -> float | None:
        info = self._person_info()
        return None if info is None else info["delta"]

    @property
    def epsilon_valid(self) -> bool:
        """False when the run's sampling is not the Poisson sampling the accountant assumes."""
        pd = self.private_d
        return pd is None or (bool(getattr(pd, "poisson_sampling", True))
                              and bool(pd.summary().get("epsilon_valid", True)))

    def summary(self) -> dict[str, Any]:
        """The guarantee for release.json: epsilon per unit and per person, scheme, meaning, validity."""
        out: dict[str, Any] = dict(self.private_d.summary()) if self.private_d is not None else {
            "epsilon": None, "delta": None, "unit": None, "steps": 0, "noise_multiplier": None, "accountant": None}
        info = self._person_info()
        eps_person = self.epsilon_person
        out["scheme"] = self.scheme
        out["epsilon_person"] = eps_person
        out["delta_person"] = None if info is None else info["delta"]
        out["people"] = None if info is None else info["people"]
        out["images_per_person_cap"] = None if info is None else info["k"]
        out["epsilon_meaning"] = self._meaning(out, eps_person)
        valid = bool(out.get("epsilon_valid", True)) and self.epsilon_valid
        out["epsilon_valid"] = valid
        out["epsilon_note"] = None if valid else (out.get("epsilon_note") or SHUFFLED_REASON)
        out["target_epsilon"] = self._effective_target()
        out["target_epsilon_person"] = self.target_epsilon_person
        out["stopping_reason"] = self.stopping_reason
        out["stopping_reason_message"] = self.stopping_reason_message
        return out

    def _meaning(self, out: dict[str, Any], eps_person: float | None) -> str | None:
        if self.private_d is None:
            return None
        eps, delta = out.get("epsilon"), out.get("delta")
        if self.scheme == "uls":
            text = (f"per person: epsilon {eps:.4g} at delta {delta:.3g} (ULS: people Poisson-sampled, each person's "
                    "summed gradient clipped; covers all of a person's training images)")
        else:
            text = f"per image: epsilon {eps:.4g} at delta {delta:.3g}" + self._person_text(eps_person)
        if not self.epsilon_valid:
            text += "; NOT a valid bound: " + (self.private_d.summary().get("epsilon_note") or SHUFFLED_REASON)
        return text

    def _person_text(self, eps_person: float | None) -> str:
        text = ""
        if eps_person is not None:
            info = self._person_info() or {}
            text += (f"; per person: epsilon {eps_person:.4g} at delta {info.get('delta', float('nan')):.3g} (ELS: "
                     f"images Poisson-sampled, at most {info.get('k')} images a person, "
                     "mixture-of-Gaussians accountant)")
        else:
            text += "; per person: unknown (the training images' identities were not given)"
        return text

    # ------------------------------------------------------------------ per-person accounting

    def _person_info(self) -> dict[str, Any] | None:
        pd = self.private_d
        if pd is None:
            return None
        if self._person is None:
            import numpy as np

            from gmia_defend.mitigations.user_level import person_delta

            if pd.unit == "identity":
                self._person = {"scheme": "uls", "people": int(pd.num_units), "delta": float(pd.delta),
                                "k": getattr(pd, "max_images_per_identity", None)}
            else:
                targets = getattr(pd, "targets", None)
                if targets is None:
                    return None
                arr = np.asarray(targets, dtype=np.int64)
                counts = np.bincount(arr - arr.min())
                counts = counts[counts > 0]
                self._person = {"scheme": "els", "people": int(counts.size), "k": int(counts.max()),
                                "delta": person_delta(int(counts.size))}
        return self._person

    def _history_at(self, steps: int) -> list[tuple[float, float, int]]:
        pd = self.private_d
        history = list(pd.history)
        extra = int(steps) - int(pd.steps)
        if extra > 0:
            history.append((float(pd.noise_multiplier), float(pd.sample_rate), extra))
        return history

    def _person_epsilon_at(self, steps: int) -> float | None:
        """Per-person epsilon after ``steps`` D steps (steps beyond today's at the current noise and rate)."""
        info = self._person_info()
        if info is None:
            return None
        pd = self.private_d
        if info["scheme"] == "uls":
            return float(pd.epsilon) if steps == pd.steps else float(pd.epsilon_after(steps - pd.steps))
        if steps not in self._person_cache:
            from gmia_defend.mitigations.user_level import els_epsilon_history

            if steps < pd.steps:
                return None
            self._person_cache = {steps: els_epsilon_history(self._history_at(steps), info["k"], info["delta"]),
                                  **{s: v for s, v in list(self._person_cache.items())[-8:]}}
        return self._person_cache[steps]

    def _every(self) -> int:
        if self.log_every_n_steps:
            return int(self.log_every_n_steps)
        info = self._person_info()
        slow = self.private_d.accountant_name != "rdp" or (info is not None and info["scheme"] == "els")
        return 25 if slow else 1

    def _reported_person(self, steps: int) -> float | None:
        """Exact every N steps, in between the value at the end of the block (an upper bound)."""
        every = self._every()
        return self._person_epsilon_at(steps + (-steps % every))

    def person_budget_steps(self) -> int | None:
        """Total D steps that keep the per-person epsilon <= target_epsilon_person (None without one)."""
        if self.target_epsilon_person is None or self.private_d is None:
            return None
        if self._person_budget is None:
            info = self._person_info()
            pd = self.private_d
            if info is None:
                raise UserError("target_epsilon_person needs each training image's identity: build the private "
                                "discriminator with datamodule= or targets=")
            if info["scheme"] == "uls":
                from gmia_defend.mitigations.accounting import max_steps_within

                more = max_steps_within(self.target_epsilon_person, pd.delta, pd.noise_multiplier, pd.sample_rate,
                                        pd.accountant_name, history=pd.history,
                                        hint=getattr(pd, "planned_steps", None))
            else:
                from gmia_defend.mitigations.user_level import els_max_steps

                more = els_max_steps(self.target_epsilon_person, pd.noise_multiplier, pd.sample_rate, info["k"],
                                     info["delta"], history=pd.history)
            self._person_budget = int(pd.steps) + int(more)
        return self._person_budget

    # ------------------------------------------------------------------ hooks

    def _effective_target(self) -> float | None:
        targets = [t for t in (self.target_epsilon, getattr(self.private_d, "target_epsilon", None)) if t is not None]
        return min(targets) if targets else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.make_private is None or getattr(pl_module, "private_d", None) is not None:
            return
        from gmia_defend.mitigations.dp import make_discriminator_private

        kwargs = dict(self.make_private)
        if kwargs.get("target_epsilon_person") is not None:  # a sweep sets the per-person target here
            self.target_epsilon_person = float(kwargs.pop("target_epsilon_person"))
        kwargs.pop("target_epsilon_person", None)
        if self.target_epsilon_person is not None and kwargs.get("steps") is None and kwargs.get("epochs") is None:
            kwargs["steps"] = _d_steps_of(trainer, pl_module)
        if self.target_epsilon is not None:
            kwargs.setdefault("target_epsilon", self.target_epsilon)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and "targets" not in kwargs:
            kwargs.setdefault("datamodule", datamodule)
        if self.target_epsilon_person is not None and kwargs.get("noise_multiplier") is None:
            kwargs["noise_multiplier"] = self._noise_for_person_target(kwargs)
        self.private_d = make_discriminator_private(pl_module, **kwargs)

    def _noise_for_person_target(self, kwargs: dict[str, Any]) -> float:
        """The noise that reaches target_epsilon_person after ``steps`` D steps (refused if out of reach)."""
        import numpy as np

        from gmia_defend.mitigations.identity_sampling import capped_images
        from gmia_defend.mitigations.user_level import noise_for_person_target

        steps = kwargs.get("steps")
        if steps is None and kwargs.get("epochs") is not None:
            raise UserError("target_epsilon_person with make_private counts the training length in D steps: give "
                            "steps: <D steps> (one per batch) instead of epochs, or give noise_multiplier")
        if steps is None:
            raise UserError("target_epsilon_person with make_private needs the training length to choose the "
                            "noise: set trainer.max_steps or add steps: <D steps> (one per batch) to make_private")
        dm = kwargs.get("datamodule")
        labels = kwargs.get("targets")
        if labels is None and dm is not None:
            labels = getattr(dm.train_dataset, "labels", None)
        if labels is None:
            raise UserError("target_epsilon_person needs each training image's identity: use an IdentityDataModule "
                            "or pass targets= in make_private")
        arr = np.asarray(labels, dtype=np.int64).reshape(-1)
        counts = np.bincount(arr - arr.min())
        counts = counts[counts > 0]
        people = int(counts.size)
        batch = kwargs.get("batch_size") or (getattr(dm, "batch_size", None) if dm is not None else None)
        unit = kwargs.get("unit", "image")
        if unit == "identity":
            m = int(kwargs.get("max_images_per_identity") or 4)
            images = capped_images(arr, m)
            expected = (float(kwargs["sample_rate"]) * people if kwargs.get("sample_rate") is not None
                        else float(batch) * people / images)
            return noise_for_person_target(self.target_epsilon_person, scheme="uls", people=people, steps=int(steps),
                                           expected_batch=expected, k=m, images=images,
                                           delta=kwargs.get("delta"), accountant=kwargs.get("accountant", "rdp"))
        images, k = int(arr.size), int(counts.max())
        expected = float(kwargs["sample_rate"]) * images if kwargs.get("sample_rate") is not None else float(batch)
        return noise_for_person_target(self.target_epsilon_person, scheme="els", people=people, steps=int(steps),
                                       expected_batch=expected, k=k, images=images)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.private_d is None:
            self.private_d = getattr(pl_module, "private_d", None)
        if self.private_d is None:
            raise UserError("PrivacyBudgetMonitor found no private discriminator: call "
                            "gmia_defend.mitigations.make_discriminator_private(model, ...) before fitting")
        if self._pending is not None:
            self.private_d.load_state_dict(self._pending)
            self._pending = None
        self._person, self._person_cache, self._person_budget = None, {}, None
        target = self._effective_target()
        if target is not None and target != self.private_d.target_epsilon:
            self.private_d.set_target_epsilon(target)
        if not self._exhausted():
            self.stopping_reason = self.stopping_reason_message = None  # e.g. resumed with a larger budget
        self._check_budget(trainer)

    def _publish(self, pl_module: pl.LightningModule, steps: int) -> None:
        """Log the guarantee that holds after ``steps`` D steps (beyond today's: at the current noise)."""
        pd = self.private_d
        every = self.log_every_n_steps or (1 if pd.accountant_name == "rdp" else 25)
        eps = pd.epsilon_after(steps - pd.steps + (-steps % every))
        values = {"privacy/epsilon": eps, "privacy/delta": pd.delta}
        person = self._reported_person(steps)
        if person is not None:
            values["privacy/epsilon_person"] = person
            values["privacy/delta_person"] = self._person_info()["delta"]
        for key, value in values.items():
            pl_module.log(key, float(value), on_step=True, on_epoch=False, batch_size=1)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Published once per batch, from this hook only (a key logged from two hooks can leave the older
        # value in callback_metrics): the values after this batch's one D step, so every batch-end reader
        # sees them fresh, whatever its place in the callback list.
        if self.private_d is None or self._exhausted():
            return
        self._publish(pl_module, self.private_d.steps + 1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        pd = self.private_d
        if pd is None or pd.steps == self._last_logged:
            return
        self._check_budget(trainer)
        self._last_logged = pd.steps

    def _exhausted(self) -> tuple[str, str] | None:
        """(which target, message) when one more D step would exceed a target, else None."""
        pd = self.private_d
        if pd is None:
            return None
        if pd.budget_exhausted:
            return "epsilon", (f"epsilon={pd.epsilon:.4g} (delta={pd.delta:.3g}, per {pd.unit}) after {pd.steps} D "
                               f"steps; one more step would exceed target_epsilon={pd.target_epsilon}")
        budget = self.person_budget_steps()
        if budget is not None and pd.steps >= budget:
            return "epsilon_person", (
                f"epsilon_person={self.epsilon_person:.4g} (delta={self.delta_person:.3g}, per person, "
                f"{self.scheme.upper()}) after {pd.steps} D steps; one more step would exceed "
                f"target_epsilon_person={self.target_epsilon_person}")
        return None

    def _check_budget(self, trainer: pl.Trainer) -> bool:
        reached = self._exhausted()
        if reached is None:
            return False
        trainer.should_stop = True
        if self.stopping_reason is None:
            self.stopping_reason = "privacy_budget"
            self.stopping_reason_message = "privacy budget reached: " + reached[1]
        return True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.private_d is None or not trainer.is_global_zero:
            return
        root = resolve_run_dir(trainer, self.run_dir)
        write_json_atomic(root / "privacy.json", self.summary())

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Targets, stop reason and the accountant's public history; no noise state, no batch sizes."""
        state: dict[str, Any] = {"stopping_reason": self.stopping_reason,
                                 "stopping_reason_message": self.stopping_reason_message,
                                 "target_epsilon": self.target_epsilon,
                                 "target_epsilon_person": self.target_epsilon_person}
        private_state = self.private_d.state_dict() if self.private_d is not None else self._pending
        if private_state is not None:
            state["private_d"] = {k: v for k, v in private_state.items() if k in _PUBLIC_STATE}
            state["unit"] = private_state.get("unit")
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stopping_reason = state_dict.get("stopping_reason")
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
        private_state = state_dict.get("private_d")
        if private_state is None:
            return
        private_state = {k: v for k, v in private_state.items() if k in _PUBLIC_STATE}
        if self.private_d is not None:
            self.private_d.load_state_dict(private_state)
        else:
            self._pending = private_state
