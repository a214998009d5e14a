"""Auditor: one generation pass feeds the identity membership attack and the quality metric.

It knows nothing of Lightning: the callbacks, ``watch``, the CLI and plain training loops call
``auditor.audit(generator, kimg=...)`` and get an ``AuditRecord``. The quality metric is the
Fréchet distance in the (first) embedder's space, fed by the attack's own embeddings through its
``on_embeddings`` hook (no second pass), or Inception FID from a local weights file (fed by
``on_batch``), or a figure the training loop already computed (``quality_value=``).

With a ``public_audit`` (public identities: canaries trained on on purpose against public people
never trained on), the same embeddings also feed a companion attack on those identities, recorded as
``public/leakage/*``: a leakage figure that uses no protected person's photo, so a release rule
reading it stays post-processing of a DP training.

Auditing never changes training: loading embedders from specs, the audit set, the real-image
statistics and every audit run inside ``preserved_rng()``, and the generator runs in eval mode (no
BatchNorm statistic moves).

Example:
    >>> import torch
    >>> from gmia_defend.data import SyntheticFaces, IdentitySplit, AuditSet
    >>> from gmia_defend.embedders.pixels import PixelEmbedder
    >>> faces = SyntheticFaces(num_identities=24, images_per_identity=6, resolution=16)
    >>> split = IdentitySplit.create(faces, num_members=8, num_nonmembers=12, references_per_identity=2)
    >>> auditor = Auditor(PixelEmbedder(16), AuditSet.from_split(faces, split), num_samples=64, batch_size=32,
    ...                   real_images=faces.load(list(range(64))), attack_options={"n_bootstrap": 50})
    >>> g = torch.nn.Sequential(torch.nn.Linear(8, 3 * 16 * 16), torch.nn.Tanh(), torch.nn.Unflatten(1, (3, 16, 16)))
    >>> g.z_dim = 8
    >>> record = auditor.audit(g, kimg=0.0)
    >>> record.ok, "quality/fd_pixels" in record.metrics, "selection/leakage/auc" in record.metrics
    (True, True, True)
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from gmia_defend.audit.halves import half_metrics, split_halves
from gmia_defend.audit.record import IDENTITY_FIELDS, KIMG, LEAKAGE_PREFIX, PUBLIC_PREFIX, AuditRecord
from gmia_defend.errors import UserError
from gmia_defend.rng import preserved_rng


def load_embedders(spec: Any, device: Any = None) -> list[Any]:
    """Embedders from an ``Embedder``, a spec string, or a list of them; spec loading leaves every RNG as it was."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise UserError("give at least one embedder (an Embedder or a spec such as 'synthetic')")
    out = []
    for s in specs:
        if isinstance(s, nn.Module) or (callable(s) and not isinstance(s, (str, Path))):
            out.append(s)
            continue
        from gmia_defend.embedders import load_embedder

        with preserved_rng():  # its layers draw initial weights before the saved ones are loaded
            out.append(load_embedder(s) if device is None else load_embedder(s, device=device))
    return out


class Auditor:
    """Audit generators for identity leakage and quality; see the module docstring for an example.

    Args:
        embedder: an ``Embedder``, a spec (``"synthetic"``, ``"facenet:path"``, a ``.pt``) or a list
            (the worst case over embedders is reported, every key including the intervals).
        audit: an ``AuditSet``, or a zero-argument callable returning one (built on first use).
        num_samples, batch_size, seed: generated samples per audit (the same latents every time).
        quality: measure quality (default True). ``fid_weights_path`` gives Inception FID
            (``quality/fid``); else the Fréchet distance in the first embedder's space.
        real_images: real images in [-1, 1] for the quality reference (a tensor or a zero-argument
            callable returning one); needed for quality unless ``quality_value`` is given per audit.
        halves: split the audited identities into a selection and a confirmation half (seeded by
            ``seed``, stratified by membership) and record ``selection/...`` / ``confirmation/...``.
        progress: progress bar during the attack.
        attack_options: extra ``IdentityMembershipAttack`` arguments (``score``, ``top_k``, ...).
        public_audit: an ``AuditSet`` of public identities (or a zero-argument callable returning one or
            None): scored on the same generated samples, recorded as ``public/leakage/*``.

    >>> Auditor("synthetic", audit=None, num_samples=1000).num_samples  # nothing is loaded before the first audit
    1000
    """

    def __init__(self, embedder: Any, audit: Any, num_samples: int = 5000, batch_size: int = 256, seed: int = 0,
                 quality: bool = True, fid_weights_path: str | None = None, real_images: Any = None,
                 halves: bool = True, progress: bool = False, attack_options: dict | None = None,
                 public_audit: Any = None) -> None:
        if int(num_samples) < 2:
            raise UserError(f"num_samples must be >= 2; got {num_samples}")
        self.embedder_spec, self._audit_arg = embedder, audit
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.quality_enabled, self.fid_weights_path = bool(quality), fid_weights_path
        self.real_images, self.halves, self.progress = real_images, bool(halves), bool(progress)
        self.attack_options = dict(attack_options or {})
        self.embedders: list[Any] | None = None
        self.quality: Any = None
        self.attack: Any = None
        self._public_arg = public_audit
        self.public_attack: Any = None  # the companion attack on public identities (None without them)
        self.result: Any = None  # the AttackResult of the latest audit (evidence images)
        self._prepared = False
        self._warned: set[tuple] = set()  # (category, file, line) of warnings already shown by this auditor

    # ------------------------------------------------------------------------------ building
    def build(self, device: Any = None) -> "Auditor":
        """Load embedders, the audit set and the real-image statistics (done by the first audit)."""
        if self.attack is not None:
            return self
        from gmia_defend.attack import IdentityMembershipAttack

        with preserved_rng():
            self.embedders = load_embedders(self.embedder_spec)
            if device is not None:
                for e in self.embedders:
                    if isinstance(e, nn.Module):
                        e.to(device)
            audit = self._audit_arg() if callable(self._audit_arg) and not hasattr(self._audit_arg,
                                                                                   "member_identities") else self._audit_arg
            if audit is None:
                raise UserError("the Auditor has no audit set: pass audit=AuditSet.from_split(dataset, split)")
            options = {"progress": self.progress, **self.attack_options}
            embedders = self.embedders if len(self.embedders) > 1 else self.embedders[0]
            attack = IdentityMembershipAttack(embedders, audit, num_samples=self.num_samples,
                                              batch_size=self.batch_size, seed=self.seed, **options)
            public = self._public_arg() if callable(self._public_arg) and not hasattr(
                self._public_arg, "member_identities") else self._public_arg
            if public is not None:
                options.update(progress=False, evidence_identities=0)
                if options.get("score") == "relative" and getattr(public, "population_images", None) is None:
                    options["score"] = "topk_mean"  # the public audit has no population to be relative to
                self.public_attack = IdentityMembershipAttack(embedders, public, num_samples=self.num_samples,
                                                              batch_size=self.batch_size, seed=self.seed, **options)
            if self.quality_enabled:
                self.quality = self._build_quality(device)
            self.attack = attack  # last: a failed build is retried whole by the next audit
        return self

    def prepare(self, device: Any = None) -> "Auditor":
        """``build``, the reference embeddings and the real-image statistics: configuration errors surface
        here, before any audit, and the first audit costs what later ones cost."""
        self.build(device)
        if not self._prepared and hasattr(self.attack, "prepare"):
            with preserved_rng():
                self.attack.prepare(device)
                if self.public_attack is not None:
                    self.public_attack.prepare(device)
            self._prepared = True
        self._ensure_real()
        return self

    def _build_quality(self, device: Any) -> Any:
        from gmia_defend.quality.fid import FrechetQuality

        if self.fid_weights_path:
            quality = FrechetQuality.inception(self.fid_weights_path)
            if device is not None:
                quality.to(device)
        else:
            quality = FrechetQuality.for_embedder(self.embedders[0], batch_size=self.batch_size)
        return quality

    def _ensure_real(self) -> None:
        if self.quality is None or self.quality.has_real:
            return
        src = self.real_images
        images = src() if callable(src) else src
        if images is None:
            raise UserError("quality needs real images: pass real_images= (a tensor in [-1, 1]), "
                            "quality_value= per audit, or quality=False")
        with preserved_rng():
            self.quality.set_real_images(torch.as_tensor(images)[: max(self.num_samples, 2)])

    # ------------------------------------------------------------------------------ auditing
    def audit(self, generator: Any, *, kimg: float, step: int | None = None, checkpoint: str | None = None,
              quality_value: float | None = None, quality_key: str = "quality/fid", shard: tuple[int, int] = (0, 1),
              reduce: Callable[[dict], dict] | None = None,
              reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> AuditRecord:
        """Attack ``generator`` (and measure quality) at ``kimg``; returns the record. Raises on failure.

        ``quality_value``: a quality figure the training loop computed (e.g. its FID), recorded as
        ``quality_key`` instead of computing one. ``shard``/``reduce``/``reduce_sum``: DDP glue, each
        process generates its shard of the latents; ``reduce`` merges the attack's statistics,
        ``reduce_sum`` sums the quality statistics.
        """
        t0 = time.perf_counter()
        with preserved_rng():
            device = _device_of(generator)
            self.build(device)
            measure = self.quality if quality_value is None else None
            if measure is not None:
                self._ensure_real()
                measure.reset_fake()
            on_batch, on_embeddings = self._hooks(measure)
            public = self._public_pass(generator, shard)
            if public is not None:
                on_embeddings = public.hook(on_embeddings)

            if reduce is None and int(shard[1]) > 1 and _distributed():
                from gmia_defend.attack.scores import metric_reduce

                reduce = metric_reduce()  # what the attack would use: the public pass must merge the same way

            def merge(stats: dict) -> dict:
                # one collective call per audit: the public pass's statistics travel with the main ones
                extra = public.state_dict() if public is not None else {}
                merged = reduce({**stats, **extra}) if reduce is not None else stats
                if public is not None:
                    public.load_state_dict(merged)
                if measure is not None and reduce_sum is not None:
                    measure.reduce(reduce_sum)
                return {k: v for k, v in merged.items() if not k.startswith(_PublicPass.PREFIX)}

            caught: list = []
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = self.attack.run(generator, on_batch=on_batch, on_embeddings=on_embeddings,
                                             shard=shard, reduce=merge if reduce is not None else None)
            finally:
                self._show_once(caught)
            metrics = self._metrics(result)
            if public is not None:
                public_result = self.public_attack.finish_pass(public.scoring)  # merged in merge() already
                metrics.update({PUBLIC_PREFIX + k: v for k, v in self._metrics(public_result).items()
                                if k.startswith(LEAKAGE_PREFIX)})
            if quality_value is not None:
                metrics[quality_key] = float(quality_value)
            elif measure is not None:
                metrics[measure.key] = float(measure.compute())
        self.result = result
        metrics[KIMG] = round(float(kimg), 6)
        rows, halves = self._identity_rows(result)
        if halves:
            metrics.update(half_metrics(self._per_embedder_rows(result), halves, **self._metric_options()))
        return AuditRecord(kimg=round(float(kimg), 6), step=step, metrics=metrics, identities=rows,
                           checkpoint=checkpoint, num_samples=int(result.num_samples),
                           embedder=getattr(result, "worst_embedder", None) or getattr(result, "embedder_name", None),
                           time=time.time(), audit_s=round(time.perf_counter() - t0, 3))

    def _public_pass(self, generator: Any, shard: tuple[int, int]) -> "_PublicPass | None":
        """The companion pass on the public identities, fed the main pass's embeddings (None without them)."""
        if self.public_attack is None:
            return None
        from gmia_defend.attack.generators import GeneratorAdapter

        device = self.attack._resolve_device(GeneratorAdapter(generator, self.attack.z_dim))
        rank, world = (int(v) for v in shard)
        self.public_attack.prepare(device)  # cached references: free after the first audit
        with torch.no_grad():
            scoring = self.public_attack.start_pass(device)
        return _PublicPass(self.public_attack, scoring,
                           self.num_samples * rank // world, len(self.embedders or [None]))

    def _show_once(self, caught: list) -> None:
        """Re-issue each warning of the attack once per auditor (e.g. clamping), not at every audit."""
        for w in caught:
            key = (w.category, w.filename, w.lineno)
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _hooks(self, measure: Any) -> tuple[Any, Any]:
        if measure is None:
            return None, None
        if self.fid_weights_path:
            return measure.update, None

        def on_embeddings(j: int, images: torch.Tensor, embeddings: torch.Tensor) -> None:
            if j == 0:
                measure.update_features(embeddings)

        return None, on_embeddings

    def _metric_options(self) -> dict[str, Any]:
        opts = self.attack_options
        return {"n_bootstrap": opts.get("n_bootstrap", 1000), "n_permutations": opts.get("n_permutations"),
                "seed": self.seed, "delta": opts.get("delta")}

    @staticmethod
    def _metrics(result: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for k, v in result.metrics.items():
            if isinstance(v, bool):
                continue
            try:
                metrics[k] = float(v)
            except (TypeError, ValueError):
                continue
        return metrics  # with several embedders the attack's plain keys already hold the worst of every key

    def _per_embedder_rows(self, result: Any) -> dict[str, list[dict]]:
        reports = getattr(result, "embedders", None) or {}
        if reports:
            return {name: list(r.identities) for name, r in reports.items()}
        return {"embedder": list(result.identities)}

    def _identity_rows(self, result: Any) -> tuple[list[dict], dict[str, str]]:
        halves = split_halves(result.identities, self.seed) if self.halves else {}
        rows = []
        for r in result.identities:
            row = {k: r.get(k) for k in IDENTITY_FIELDS if k in r}
            if halves:
                row["half"] = halves.get(str(r.get("identity")))
            rows.append(row)
        return rows, halves


class _PublicPass:
    """Feeds the companion attack the main pass's embeddings, with the latent index of each sample
    (batches arrive in latent order, once per embedder); its statistics are merged across processes
    in the same collective call as the main pass's (keys under ``PREFIX``)."""

    PREFIX = "public."

    def __init__(self, attack: Any, scoring: Any, start: int, embedders: int) -> None:
        self.attack, self.scoring = attack, scoring
        self.next_index = [start] * embedders

    def hook(self, inner: Callable | None) -> Callable:
        def on_embeddings(j: int, images: torch.Tensor, embeddings: torch.Tensor) -> None:
            if inner is not None:
                inner(j, images, embeddings)
            first = self.next_index[j]
            self.next_index[j] = first + embeddings.shape[0]
            index = torch.arange(first, self.next_index[j], device=embeddings.device)
            self.attack.feed(self.scoring, j, embeddings, index)

        return on_embeddings

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.scoring.state_dict(self.PREFIX)

    def load_state_dict(self, merged: dict[str, torch.Tensor]) -> None:
        self.scoring.load_state_dict(merged, self.PREFIX)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _device_of(generator: Any) -> torch.device | None:
    if isinstance(generator, nn.Module):
        for p in generator.parameters():
            return p.device
    return None
