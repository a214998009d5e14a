"""IdentityMembershipAttack: stream a generator's samples through embedders, score audited identities.

One generation pass over ``num_samples`` fixed latents (``LatentSampler``: the same latents at every
checkpoint and under any sharding); each batch is validated, mapped to [-1, 1], handed to
``on_batch`` (e.g. FID on the same samples), embedded by every embedder and folded into per-identity
streaming statistics (``scores``), so memory does not grow with ``num_samples``. Reference (and
population) embeddings are computed once per (embedder, device) and cached on the attack object.
See ``scores`` for the similarity, match and calibrated-score definitions and ``result`` for
``leak_rate``.

One file on purpose: the generation pass, its sharding and the statistics it feeds must be read together.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmia_defend.attack.generators import GeneratorAdapter, LatentSampler, check_images, eval_mode
from gmia_defend.attack.metrics import membership_metrics
from gmia_defend.attack.result import AttackResult, EmbedderReport
from gmia_defend.attack.scores import (SCORE_NAMES, IdentitySimilarity, StreamingIdentityStats,
                                       calibrated_scores, match_counts, metric_reduce, relative_scores,
                                       threshold_from_impostors)
from gmia_defend.errors import DataError, UserError

__all__ = ["IdentityMembershipAttack", "AttackPass"]


@dataclass
class _References:
    """Cached per (embedder, device): the audit's reference embeddings and what derives from them."""

    embedder: nn.Module
    similarity: IdentitySimilarity
    ref_embeddings: Tensor
    ref_labels: Tensor
    population_embeddings: Tensor | None
    impostor_threshold: float | None = None  # derived from ref_embeddings: same for every run
    population_matches: dict[float, np.ndarray] = field(default_factory=dict)  # threshold -> counts
    population_similarities: np.ndarray | None = None  # [P, I], for the relative score


@dataclass
class AttackPass:
    """One pass's state: per embedder, the reference similarities, the threshold and its statistics."""

    refs: list[_References]
    thresholds: list[tuple[float, str]]
    stats: list[StreamingIdentityStats]

    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Every embedder's statistics under ``<prefix><j>.<field>`` (what a shard sends to be merged)."""
        return {f"{prefix}{j}.{k}": v for j, s in enumerate(self.stats) for k, v in s.state_dict().items()}

    def load_state_dict(self, merged: dict[str, Tensor], prefix: str = "") -> None:
        """Load merged statistics written by ``state_dict(prefix)`` (other keys are ignored)."""
        for j, s in enumerate(self.stats):
            head = f"{prefix}{j}."
            s.load_state_dict({k[len(head):]: v for k, v in merged.items() if k.startswith(head)})


class IdentityMembershipAttack:
    """The identity membership attack (Webster et al., arXiv 2107.06018) as a streaming audit.

    ``embedder`` (one or a list), ``audit`` (an ``AuditSet``), ``num_samples`` latents drawn from
    ``seed``, ``score`` (one of ``SCORE_NAMES``; ``top_k`` for ``topk_mean``); extras:
    ``reference_reduction`` ("mean" similarity over an identity's references, or "max"), ``far``
    (false-accept rate for a threshold calibrated on the audit's references when an embedder has
    none), ``amp`` (autocast the generator to fp16 on CUDA; off by default, so the audited figures
    describe the fp32 generator that is released), ``num_blocks`` (latent blocks for the two-level
    bootstrap interval), ``n_permutations`` (permutation p-value and null band; 0 = normal
    Mann-Whitney approximation), ``delta`` (of the epsilon lower bound; default 1e-5).

    Example (an untrained generator; every audit reports the p-value and null band):

    >>> import torch
    >>> from gmia_defend.data import SyntheticFaces, IdentitySplit, AuditSet
    >>> from gmia_defend.embedders.pixels import PixelEmbedder
    >>> faces = SyntheticFaces(num_identities=24, images_per_identity=6, resolution=16)
    >>> split = IdentitySplit.create(faces, num_members=8, num_nonmembers=12, references_per_identity=2)
    >>> attack = IdentityMembershipAttack(PixelEmbedder(16), AuditSet.from_split(faces, split), z_dim=8,
    ...                                   num_samples=64, batch_size=32, progress=False, n_bootstrap=100)
    >>> g = torch.nn.Sequential(torch.nn.Linear(8, 3 * 16 * 16), torch.nn.Tanh(), torch.nn.Unflatten(1, (3, 16, 16)))
    >>> result = attack.run(g)
    >>> sorted(k for k in result.metrics if "null" in k or "p_value" in k)
    ['leakage/null_auc_high', 'leakage/null_auc_low', 'leakage/p_value']
    >>> len(result.identities[0]["block_scores"])
    10
    """

    def __init__(self, embedder: Any, audit: Any, num_samples: int = 10_000, batch_size: int = 256,
                 seed: int = 0, z_dim: int | None = None, score: str = "topk_mean", top_k: int = 10,
                 input_range: tuple[float, float] = (-1.0, 1.0), device: str | torch.device | None = None,
                 n_bootstrap: int = 1000, progress: bool = True, evidence_identities: int = 8,
                 evidence_neighbours: int = 6, reference_reduction: str = "mean", far: float = 1e-3,
                 amp: bool = False, num_blocks: int = 10, n_permutations: int = 2000,
                 delta: float | None = None) -> None:
        self.embedders = list(embedder) if isinstance(embedder, (list, tuple)) else [embedder]
        if not self.embedders:
            raise UserError("give at least one embedder")
        for e in self.embedders:
            if not callable(e):
                raise UserError(f"embedder {e!r} is not callable; pass a gmia_defend.embedders.Embedder")
        if int(num_samples) < 1 or int(batch_size) < 1:
            raise UserError(f"num_samples ({num_samples}) and batch_size ({batch_size}) must be >= 1")
        if score not in SCORE_NAMES:
            raise UserError(f"unknown score {score!r}; choose one of {', '.join(SCORE_NAMES)}")
        if not 1 <= int(top_k) <= int(num_samples):
            raise UserError(f"top_k={top_k} must be between 1 and num_samples={num_samples}")
        lo, hi = (float(v) for v in input_range)
        if not lo < hi:
            raise UserError(f"input_range={input_range!r} must be (low, high) with low < high, e.g. (-1, 1)")
        self.audit = audit
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.z_dim, self.score, self.top_k = z_dim, score, int(top_k)
        self.input_range = (lo, hi)
        self.device = torch.device(device) if device is not None else None
        self.n_bootstrap, self.progress = int(n_bootstrap), bool(progress)
        self.evidence_identities = max(0, int(evidence_identities))
        self.evidence_neighbours = max(0, int(evidence_neighbours))
        self.reference_reduction, self.far, self.amp = reference_reduction, float(far), bool(amp)
        if int(num_blocks) < 1 or int(n_permutations) < 0:
            raise UserError(f"num_blocks ({num_blocks}) must be >= 1 and n_permutations ({n_permutations}) >= 0")
        self.num_blocks = min(int(num_blocks), self.num_samples)
        self.n_permutations, self.delta = int(n_permutations), delta
        self._check_audit(audit)
        pop = getattr(audit, "population_images", None)
        if score == "relative" and (pop is None or len(pop) < 2):
            raise UserError("score='relative' compares with photos of population people; build the split with "
                            "num_population_identities > 0, or choose score='topk_mean'")
        self.identities = list(audit.member_identities) + list(audit.nonmember_identities)
        self.num_members = len(audit.member_identities)
        self._cache: dict[tuple[int, str], _References] = {}
        self.names = _unique_names([str(getattr(e, "name", f"embedder{i}")) for i, e in enumerate(self.embedders)])

    def prepare(self, device: str | torch.device | None = None) -> "IdentityMembershipAttack":
        """Embed the references (and population) now, so the first ``run`` costs what later ones cost.

        A training callback calls it when fitting starts: the one-off reference embedding then
        happens outside the first audit's pause.
        """
        dev = torch.device(device) if device is not None else (self.device or torch.device("cpu"))
        embed_modules = [e for e in self.embedders if isinstance(e, nn.Module)]
        for e in embed_modules:
            e.to(dev)
        with torch.no_grad(), eval_mode(embed_modules):
            for i in range(len(self.embedders)):
                self._threshold(i, self._references(i, dev))
        return self

    def clear_cache(self) -> None:
        """Forget cached reference embeddings (needed only if an embedder's weights were changed)."""
        self._cache.clear()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _check_audit(audit: Any) -> None:
        for side in ("member", "nonmember"):
            ids = getattr(audit, f"{side}_identities", None)
            images = getattr(audit, f"{side}_images", None)
            labels = getattr(audit, f"{side}_labels", None)
            if ids is None or images is None or labels is None:
                raise DataError(f"the audit set lacks {side}_identities/_images/_labels; build it with "
                                "AuditSet.from_split(dataset, split)")
            if len(ids) < 2:
                raise DataError(f"the audit has {len(ids)} {side} identities; at least 2 per side are needed "
                                "(recreate the split with more identities)")
            present = torch.bincount(torch.as_tensor(labels).long(), minlength=len(ids))
            if present.numel() != len(ids) or bool((present == 0).any()):
                raise DataError(f"some {side} identities have no reference image; give each audited "
                                "identity at least one held-out reference photo")
        counts = [torch.bincount(torch.as_tensor(getattr(audit, f"{side}_labels")).long().cpu())
                  for side in ("member", "nonmember")]
        low, high = min(int(c.min()) for c in counts), max(int(c.max()) for c in counts)
        if low != high:
            raise DataError(f"audited identities have {low} to {high} reference photos; scores would depend on "
                            "photo counts, not leakage: use audit.equalize_references() (AuditSet.from_split and "
                            "from_photos do it)")

    def _resolve_device(self, adapter: GeneratorAdapter) -> torch.device:
        if self.device is not None:
            return self.device
        for module in adapter.modules + [e for e in self.embedders if isinstance(e, nn.Module)]:
            for t in list(module.parameters()) + list(module.buffers()):
                return t.device
        return torch.device("cpu")

    def _embed(self, embedder: Callable, images: Tensor, device: torch.device) -> Tensor:
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            out.append(self._embed_batch(embedder, images[start:start + self.batch_size].to(device)))
        return torch.cat(out)

    @staticmethod
    def _embed_batch(embedder: Callable, images: Tensor) -> Tensor:
        e = embedder(images)
        if not isinstance(e, Tensor) or e.ndim != 2 or e.shape[0] != images.shape[0]:
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise UserError(f"embedder {getattr(embedder, 'name', embedder)!r} returned {got} for "
                            f"{images.shape[0]} images; it must return a [N, dim] tensor, one row per image")
        return F.normalize(e.float(), dim=1)

    def _references(self, index: int, device: torch.device) -> _References:
        embedder = self.embedders[index]
        key = (id(embedder), str(device))
        cached = self._cache.get(key)
        if cached is not None and cached.embedder is embedder:
            return cached
        a = self.audit
        images = torch.cat([a.member_images, a.nonmember_images])
        labels = torch.cat([torch.as_tensor(a.member_labels).long(),
                            torch.as_tensor(a.nonmember_labels).long() + self.num_members]).to(device)
        emb = self._embed(embedder, images, device)
        pop = getattr(a, "population_images", None)
        pop_emb = self._embed(embedder, pop, device) if pop is not None and len(pop) > 0 else None
        sim = IdentitySimilarity(emb, labels, len(self.identities), self.reference_reduction)
        self._cache[key] = _References(embedder, sim, emb, labels, pop_emb)
        return self._cache[key]

    def _threshold(self, index: int, refs: _References) -> tuple[float, str]:
        value = getattr(self.embedders[index], "threshold", None)
        if value is not None and math.isfinite(float(value)):
            return float(value), "embedder"
        if refs.impostor_threshold is None:
            refs.impostor_threshold = threshold_from_impostors(refs.ref_embeddings, refs.ref_labels, self.far)
        return refs.impostor_threshold, f"audit references at FAR {self.far:g}"

    # ------------------------------------------------------------------ run
    def run(self, generator: Callable, on_batch: Callable[[Tensor], Any] | None = None,
            shard: tuple[int, int] = (0, 1), reduce: Callable[[dict], dict] | None = None,
            on_embeddings: Callable[[int, Tensor, Tensor], Any] | None = None) -> AttackResult:
        """Generate, embed and score; return metrics, the identity table and evidence.

        ``on_batch(images)`` sees every generated batch; ``on_embeddings(j, images, embeddings)`` sees
        what embedder ``j`` made of it, so a quality metric in that embedder's space reuses the attack's
        own embeddings instead of embedding the batch again.
        """
        t0 = time.perf_counter()
        rank, world = (int(v) for v in shard)
        if not 0 <= rank < world:
            raise UserError(f"shard={shard!r} must be (rank, world_size) with 0 <= rank < world_size")
        if world > 1 and reduce is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise UserError("a sharded attack (world_size > 1) needs reduce= to merge the shards' statistics "
                                "(or an initialised torch.distributed process group)")
            reduce = metric_reduce()  # torchmetrics' sync over the default process group
        adapter = GeneratorAdapter(generator, self.z_dim)
        device = self._resolve_device(adapter)
        embed_modules = [e for e in self.embedders if isinstance(e, nn.Module)]
        for e in embed_modules:
            e.to(device)
        sampler = LatentSampler(self.seed, adapter.z_dim)
        with torch.no_grad(), eval_mode(adapter.modules + embed_modules):
            scoring = self.start_pass(device)
            start, stop = self.num_samples * rank // world, self.num_samples * (rank + 1) // world
            self._stream(adapter, sampler, device, scoring, start, stop, on_batch, on_embeddings)
            return self.finish_pass(scoring, reduce, t0=t0, evidence=(adapter, sampler, device))

    # ------------------------------------------------------------------ a pass, in three steps
    def start_pass(self, device: torch.device) -> "AttackPass":
        """Reference similarities, thresholds and empty statistics for one pass over the latents.

        ``run`` uses it; so does a companion attack on other identities (e.g. public ones) that is fed
        the embeddings of another attack's pass with ``feed`` instead of generating its own samples.
        """
        refs = [self._references(i, device) for i in range(len(self.embedders))]
        thresholds = [self._threshold(i, r) for i, r in enumerate(refs)]
        keep = max(self.top_k, self.evidence_neighbours, 1)
        stats = [StreamingIdentityStats(len(self.identities), keep, thr, device, self.num_blocks,
                                        self.num_samples) for thr, _ in thresholds]
        return AttackPass(refs, thresholds, stats)

    @staticmethod
    def feed(scoring: "AttackPass", j: int, embeddings: Tensor, index: Tensor) -> None:
        """Fold embedder ``j``'s embeddings of the samples with latent indices ``index`` into the pass."""
        scoring.stats[j].update(scoring.refs[j].similarity(embeddings), index)

    def finish_pass(self, scoring: "AttackPass", reduce: Callable[[dict], dict] | None = None, t0: float | None = None,
                    evidence: tuple | None = None) -> AttackResult:
        """Merge shards (``reduce``), compute metrics and the identity table; ``evidence``: (adapter,
        sampler, device) to regenerate the nearest samples of the most leaked members."""
        t0 = time.perf_counter() if t0 is None else t0
        stats, refs, thresholds = scoring.stats, scoring.refs, scoring.thresholds
        if reduce is not None:
            scoring.load_state_dict(reduce(scoring.state_dict()))
        reports = [self._report(j, refs[j], stats[j], *thresholds[j]) for j in range(len(self.embedders))]
        if evidence is not None:
            self._attach_evidence(reports, refs, *evidence)
        return AttackResult.from_reports(
            reports, num_samples=int(stats[0].count), score=self.score, top_k=self.top_k, seed=self.seed,
            config=self.config(), elapsed_s=time.perf_counter() - t0)

    def config(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "batch_size": self.batch_size, "seed": self.seed,
                "score": self.score, "top_k": self.top_k, "input_range": list(self.input_range),
                "n_bootstrap": self.n_bootstrap, "reference_reduction": self.reference_reduction,
                "num_blocks": self.num_blocks, "n_permutations": self.n_permutations, "amp": self.amp,
                "delta": self.delta,
                "num_members": self.num_members, "num_nonmembers": len(self.identities) - self.num_members,
                "embedders": list(self.names)}

    def _generate(self, adapter: GeneratorAdapter, z: Tensor, device: torch.device, warned: list[bool]) -> Tensor:
        ctx = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" and self.amp
               else contextlib.nullcontext())
        with ctx:
            raw = adapter(z)
        return check_images(raw, z.shape[0], self.input_range, warned)

    def _stream(self, adapter, sampler, device, scoring, start, stop, on_batch, on_embeddings=None) -> None:
        from tqdm.auto import tqdm

        warned = [False]
        with tqdm(total=stop - start, unit="img", desc="identity attack", disable=not self.progress,
                  leave=False) as bar:
            for i in range(start, stop, self.batch_size):
                j = min(i + self.batch_size, stop)
                images = self._generate(adapter, sampler.get(i, j).to(device), device, warned)
                if on_batch is not None:
                    on_batch(images)
                index = torch.arange(i, j, device=device)
                for k, e in enumerate(self.embedders):
                    embeddings = self._embed_batch(e, images)
                    if on_embeddings is not None:
                        on_embeddings(k, images, embeddings)
                    self.feed(scoring, k, embeddings, index)
                bar.update(j - i)

    # ------------------------------------------------------------------ results
    def _report(self, j: int, refs: _References, stats: StreamingIdentityStats, threshold: float,
                source: str) -> EmbedderReport:
        n = int(stats.count)
        summ = stats.summary(self.top_k)
        if refs.population_embeddings is not None:
            n_pop = refs.population_embeddings.shape[0]
            if threshold not in refs.population_matches:  # references and population are fixed: once
                refs.population_matches[threshold] = match_counts(
                    refs.similarity(refs.population_embeddings), threshold).cpu().numpy()
            pop_matches = refs.population_matches[threshold]
        else:
            n_pop, pop_matches = 0, np.zeros(len(self.identities), dtype=np.int64)
        summ["calibrated"] = calibrated_scores(summ["matches"], n, pop_matches, n_pop)
        blocks = stats.block_summary(self.top_k)
        if refs.population_embeddings is not None and refs.population_embeddings.shape[0] >= 2:
            if refs.population_similarities is None:
                refs.population_similarities = refs.similarity(refs.population_embeddings).double().cpu().numpy()
            summ["relative"] = relative_scores(summ["topk_mean"], refs.population_similarities)
            blocks["relative"] = relative_scores(blocks["topk_mean"], refs.population_similarities)
        scores = summ[self.score]
        if self.score == "calibrated":
            counts = stats.block_count[stats.block_count > 0].cpu().numpy()
            block_scores = np.stack([calibrated_scores(blocks["matches"][:, b], int(c), pop_matches, n_pop)
                                     for b, c in enumerate(counts)], axis=1)
        else:
            block_scores = blocks[self.score]
        labels = np.r_[np.ones(self.num_members), np.zeros(len(self.identities) - self.num_members)]
        metrics = membership_metrics(scores, labels, block_scores, n_bootstrap=self.n_bootstrap,
                                     n_permutations=self.n_permutations, seed=self.seed, delta=self.delta)
        member = labels.astype(bool)
        metrics["leakage/leak_rate"] = float(summ["match_rate"][member].mean() - summ["match_rate"][~member].mean())
        train_counts = dict(getattr(self.audit, "train_counts", {}) or {})
        ref_counts = torch.bincount(refs.ref_labels, minlength=len(self.identities)).tolist()
        rows = []
        for i, name in enumerate(self.identities):
            idx, sims = stats.nearest(i, self.evidence_neighbours)
            rows.append({
                "identity": name, "member": bool(member[i]), "score": float(scores[i]),
                "max_sim": float(summ["max_sim"][i]), "topk_mean": float(summ["topk_mean"][i]),
                "mean_sim": float(summ["mean_sim"][i]), "matches": int(summ["matches"][i]),
                "match_rate": float(summ["match_rate"][i]), "calibrated": float(summ["calibrated"][i]),
                "population_matches": int(pop_matches[i]),
                **({"relative": float(summ["relative"][i])} if "relative" in summ else {}),
                "train_count": int(train_counts.get(name, 0)) if member[i] else 0,
                "num_references": int(ref_counts[i]), "nearest_samples": idx, "nearest_similarities": sims,
                "block_scores": [float(v) for v in block_scores[i]],
            })
        return EmbedderReport(self.names[j], metrics, rows, [], threshold, source)

    def _attach_evidence(self, reports: list[EmbedderReport], refs: list[_References],
                         adapter: GeneratorAdapter, sampler: LatentSampler, device: torch.device) -> None:
        """Regenerate the nearest samples of each embedder's most leaked member identities."""
        if self.evidence_identities == 0 or self.evidence_neighbours == 0:
            return
        chosen = []
        for report in reports:
            members = [r for r in report.identities if r["member"] and r["nearest_samples"]]
            members.sort(key=lambda r: (r["score"], r["max_sim"]), reverse=True)
            chosen.append(members[: self.evidence_identities])
        wanted = sorted({i for rows in chosen for r in rows for i in r["nearest_samples"]})
        if not wanted:
            return
        z = sampler.take(wanted)
        images = torch.cat([self._generate(adapter, z[s:s + self.batch_size].to(device), device, [True])
                            for s in range(0, len(wanted), self.batch_size)])
        position = {idx: k for k, idx in enumerate(wanted)}
        a = self.audit
        ref_images = torch.cat([a.member_images, a.nonmember_images])
        for j, (report, rows) in enumerate(zip(reports, chosen)):
            for r in rows:
                ident = self.identities.index(r["identity"])
                imgs = images[[position[i] for i in r["nearest_samples"]]]
                # Show the reference photo closest to the nearest generated face.
                ref_rows = torch.nonzero(refs[j].ref_labels == ident).flatten()
                near = self._embed_batch(self.embedders[j], imgs[:1])
                best = ref_rows[(refs[j].ref_embeddings[ref_rows] @ near[0]).argmax()]
                report.evidence.append({
                    "identity": r["identity"], "member": True, "score": r["score"],
                    "train_count": r["train_count"], "matches": r["matches"], "threshold": report.threshold,
                    "sample_indices": list(r["nearest_samples"]), "similarities": list(r["nearest_similarities"]),
                    "reference": ref_images[int(best)].detach().float().cpu(), "images": imgs.float().cpu(),
                })


def _unique_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, k = name, 2
        while candidate in out:
            candidate, k = f"{name}-{k}", k + 1
        out.append(candidate)
    return out
