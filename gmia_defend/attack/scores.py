"""Per-identity attack statistics, streamed over generated batches in memory independent of N.

Definitions (one audited identity i with reference embeddings r_1..r_R, one generated embedding g):

- **similarity** ``s_i(g)``: with ``reduction="mean"`` (the default) the mean cosine similarity
  of g to i's references, ``mean_r <g, r>`` = ``<g, mean_r r>``: one matmul against a template per
  identity, and, because a mean of pair similarities varies less than one pair similarity, an
  impostor exceeds a threshold calibrated on image pairs *less* often than the pair FAR, so matches
  stay conservative. ``reduction="max"`` (closest reference) is more sensitive to one odd reference
  photo and inflates false matches about R-fold; it is offered for comparison.
- **match**: g matches i iff i is g's nearest audited identity (argmax of ``s_i(g)`` over all
  member and non-member identities) *and* ``s_i(g) >= threshold`` (the embedder's verification
  threshold). Each generated sample matches at most one identity, so match counts are shares of
  the generated samples.
- **streaming statistics** per identity: running max similarity, running sum (mean) similarity,
  match count, and the top-K similarities with the indices of the generated samples that gave them
  (K = max(top_k, evidence neighbours); the evidence images are regenerated from those latent
  indices at the end, so no image is kept).
- **calibrated score**: match frequency divided by the identity's baseline frequency among real
  photos of non-training (population) identities, Laplace-smoothed:
  ``(matches / N) / ((population_matches + 1) / (P + 1))``. Identities that look "average" and
  match many real strangers are discounted; with no population it equals the match frequency.
- **relative score** (population-relative, in the spirit of DOMIAS, van Breugel et al. 2023): the
  top-k mean similarity to generated samples minus the identity's mean similarity to real photos
  of population people (neither trained on nor audited): ``topk_mean_i - mean_p s_i(x_p)``. A face
  close to everybody gets a high top-k mean from any generator; this removes that part. (Dividing
  by the population spread as well lost 12 % of the demo's signal; the difference keeps 98 %.)
  Needs population images.

- **latent blocks**: the N latent indices are cut into ``num_blocks`` contiguous blocks and the
  same statistics are kept per (identity, block), so every score also exists per block
  (``block_summary``): the sample-level half of the two-level bootstrap interval (``metrics``).

State is a dict of tensors (``state_dict``); shards merge exactly (``merge_state_dicts``): sums
add, maxima take the max, top-K lists are merged and re-cut.

One file on purpose: the streaming statistics and their cross-process reduction must agree state by state.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric as _Metric

__all__ = [
    "IdentitySimilarity",
    "StreamingIdentityStats",
    "match_counts",
    "calibrated_scores",
    "relative_scores",
    "threshold_from_impostors",
    "merge_state_dicts",
    "all_gather_reduce",
    "IdentityStatsMetric",
    "metric_reduce",
    "SCORE_NAMES",
]

SCORE_NAMES = ("topk_mean", "max_sim", "match_rate", "calibrated", "mean_sim", "relative")
_SUM_FIELDS = ("count", "sum_sim", "matches", "block_count", "block_sum_sim", "block_matches")
_MAX_FIELDS = ("max_sim", "block_max_sim")
_STATE_FIELDS = ("count", "max_sim", "sum_sim", "matches", "topk_sim", "topk_idx", "block_count",
                 "block_sum_sim", "block_matches", "block_max_sim", "block_topk_sim")
_TOPK_FIELDS = ("topk_sim", "topk_idx")


class IdentitySimilarity:
    """Maps embeddings [B, d] to similarities [B, I] against each identity's references.

    >>> refs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> IdentitySimilarity(refs, torch.tensor([0, 0, 1]), 2)(torch.tensor([[0.6, 0.8]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """

    def __init__(self, ref_embeddings: Tensor, ref_labels: Tensor, num_identities: int,
                 reduction: str = "mean") -> None:
        if reduction not in ("mean", "max"):
            raise ValueError(f"reduction must be 'mean' or 'max', got {reduction!r}")
        ref_labels = ref_labels.to(ref_embeddings.device, torch.long)
        counts = torch.bincount(ref_labels, minlength=num_identities)
        if counts.numel() != num_identities or bool((counts == 0).any()):
            raise ValueError("every identity needs at least one reference embedding")
        self.reduction = reduction
        self.num_identities = num_identities
        ref = ref_embeddings.float()
        if reduction == "mean":
            sums = torch.zeros(num_identities, ref.shape[1], device=ref.device).index_add_(0, ref_labels, ref)
            self.templates = sums / counts[:, None].float()
        else:
            self.references, self.labels = ref, ref_labels

    def __call__(self, embeddings: Tensor) -> Tensor:
        e = embeddings.float()
        if self.reduction == "mean":
            return e @ self.templates.T
        pair = e @ self.references.T
        out = torch.full((e.shape[0], self.num_identities), -torch.inf, device=e.device)
        return out.scatter_reduce_(1, self.labels.expand_as(pair), pair, reduce="amax")


def match_counts(similarities: Tensor, threshold: float) -> Tensor:
    """Per identity, how many rows have it as nearest identity with similarity >= threshold."""
    best, nearest = similarities.max(dim=1)
    return torch.bincount(nearest[best >= threshold], minlength=similarities.shape[1])


def calibrated_scores(matches: np.ndarray, num_samples: int, population_matches: np.ndarray,
                      num_population: int) -> np.ndarray:
    """Match frequency over the Laplace-smoothed population baseline frequency (see module doc)."""
    freq = np.asarray(matches, dtype=np.float64) / max(num_samples, 1)
    baseline = (np.asarray(population_matches, dtype=np.float64) + 1.0) / (num_population + 1.0)
    return freq / baseline


def relative_scores(topk_mean: np.ndarray, population_similarities: np.ndarray) -> np.ndarray:
    """``topk_mean - mean`` per identity, the mean over population images ([P, I] similarities).

    ``topk_mean`` is [I] or [I, blocks].
    """
    pop = np.asarray(population_similarities, dtype=np.float64)
    if pop.ndim != 2 or pop.shape[0] < 2:
        raise ValueError("the relative score needs similarities to at least 2 population images")
    t = np.asarray(topk_mean, dtype=np.float64)
    shape = (-1,) + (1,) * (t.ndim - 1)
    return t - pop.mean(axis=0).reshape(shape)


def threshold_from_impostors(embeddings: Tensor, labels: Tensor, far: float = 1e-3,
                             max_images: int = 4000, seed: int = 0) -> float:
    """Cosine threshold accepting a fraction ``far`` of impostor pairs (different labels).

    Used when an embedder carries no calibrated threshold: computed on the audit's real reference
    photos. At most ``max_images`` images (a seeded subsample) keep the pair matrix small.
    """
    e, y = embeddings.float(), labels.long().to(embeddings.device)
    if e.shape[0] > max_images:
        keep = torch.randperm(e.shape[0], generator=torch.Generator().manual_seed(seed))[:max_images]
        e, y = e[keep.to(e.device)], y[keep.to(e.device)]
    sims = e @ e.T
    upper = torch.triu(torch.ones_like(sims, dtype=torch.bool), diagonal=1)
    impostor = sims[upper & (y[:, None] != y[None, :])].double().cpu().numpy()
    if impostor.size == 0:
        raise ValueError("need references of at least two identities to calibrate a threshold")
    return float(np.quantile(impostor, 1.0 - far, method="higher"))


class StreamingIdentityStats:
    """Running per-identity statistics of generated samples (see module doc for definitions).

    >>> stats = StreamingIdentityStats(num_identities=2, keep=2, threshold=0.5, num_blocks=2, num_samples=4)
    >>> stats.update(torch.tensor([[0.9, 0.1], [0.2, 0.3], [0.7, 0.6], [0.1, 0.8]]), torch.arange(4))
    >>> stats.matches.tolist(), stats.block_summary(top_k=1)["max_sim"].round(2).tolist()
    ([2, 1], [[0.9, 0.7], [0.3, 0.8]])
    """

    def __init__(self, num_identities: int, keep: int, threshold: float,
                 device: torch.device | str = "cpu", num_blocks: int = 1, num_samples: int | None = None) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        if num_blocks < 1 or (num_blocks > 1 and not num_samples):
            raise ValueError("num_blocks must be >= 1, and num_blocks > 1 needs num_samples")
        self.num_identities, self.keep, self.threshold = num_identities, keep, float(threshold)
        self.num_blocks, self.num_samples = int(num_blocks), int(num_samples or 1)
        dev = torch.device(device)
        nb = self.num_blocks
        self.block_count = torch.zeros(nb, dtype=torch.long, device=dev)
        self.block_sum_sim = torch.zeros(num_identities, nb, dtype=torch.float64, device=dev)
        self.block_matches = torch.zeros(num_identities, nb, dtype=torch.long, device=dev)
        self.block_max_sim = torch.full((num_identities, nb), -torch.inf, device=dev)
        self.block_topk_sim = torch.full((num_identities, nb, keep), -torch.inf, device=dev)
        self.count = torch.zeros((), dtype=torch.long, device=dev)
        self.max_sim = torch.full((num_identities,), -torch.inf, device=dev)
        self.sum_sim = torch.zeros(num_identities, dtype=torch.float64, device=dev)
        self.matches = torch.zeros(num_identities, dtype=torch.long, device=dev)
        self.topk_sim = torch.full((num_identities, keep), -torch.inf, device=dev)
        self.topk_idx = torch.full((num_identities, keep), -1, dtype=torch.long, device=dev)

    def update(self, similarities: Tensor, sample_index: Tensor) -> None:
        """Add a batch: ``similarities`` [B, I], ``sample_index`` [B] global latent indices."""
        s = similarities.float()
        idx = sample_index.to(s.device, torch.long)
        self.count += s.shape[0]
        self.max_sim = torch.maximum(self.max_sim, s.max(dim=0).values)
        self.sum_sim += s.sum(dim=0, dtype=torch.float64)
        self.matches += match_counts(s, self.threshold)
        self.topk_sim, self.topk_idx = _merge_topk(
            self.topk_sim, self.topk_idx, s.T, idx.expand(s.shape[1], -1), self.keep)
        self._update_blocks(s, idx)

    def _update_blocks(self, s: Tensor, idx: Tensor) -> None:
        block = (idx * self.num_blocks // self.num_samples).clamp_(0, self.num_blocks - 1)
        first, last = int(block.min()), int(block.max())
        for b in range(first, last + 1):
            seg = s[block == b] if first != last else s
            if seg.shape[0] == 0:
                continue
            self.block_count[b] += seg.shape[0]
            self.block_sum_sim[:, b] += seg.sum(dim=0, dtype=torch.float64)
            self.block_matches[:, b] += match_counts(seg, self.threshold)
            self.block_max_sim[:, b] = torch.maximum(self.block_max_sim[:, b], seg.max(dim=0).values)
            both = torch.cat([self.block_topk_sim[:, b], seg.T], dim=1)
            self.block_topk_sim[:, b] = both.topk(self.keep, dim=1).values if both.shape[1] >= self.keep else \
                torch.cat([both.sort(dim=1, descending=True).values,
                           both.new_full((both.shape[0], self.keep - both.shape[1]), -torch.inf)], dim=1)

    def state_dict(self) -> dict[str, Tensor]:
        return {key: getattr(self, key) for key in _STATE_FIELDS}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        for key in _STATE_FIELDS:
            old = getattr(self, key)
            setattr(self, key, state[key].to(old.device, old.dtype).reshape(old.shape))

    def merge(self, other: "StreamingIdentityStats") -> "StreamingIdentityStats":
        """Fold another shard's statistics into this one (in place) and return self."""
        self.load_state_dict(merge_state_dicts([self.state_dict(), other.state_dict()]))
        return self

    def summary(self, top_k: int) -> dict[str, np.ndarray]:
        """Per-identity numpy arrays: max_sim, topk_mean, mean_sim, matches, match_rate."""
        n = int(self.count)
        k = min(top_k, self.keep)
        top = self.topk_sim[:, :k].double()
        valid = self.topk_idx[:, :k] >= 0
        topk_mean = torch.where(valid, top, torch.zeros_like(top)).sum(1) / valid.sum(1).clamp(min=1)
        return {
            "max_sim": self.max_sim.double().cpu().numpy(),
            "topk_mean": topk_mean.cpu().numpy(),
            "mean_sim": (self.sum_sim / max(n, 1)).cpu().numpy(),
            "matches": self.matches.cpu().numpy(),
            "match_rate": (self.matches.double() / max(n, 1)).cpu().numpy(),
        }

    def block_summary(self, top_k: int) -> dict[str, np.ndarray]:
        """Per (identity, latent block) numpy arrays [I, B] of the same statistics as ``summary``.

        Blocks that received no sample (N < num_blocks) are left out.
        """
        used = (self.block_count > 0).cpu()
        n = self.block_count.double().clamp(min=1)
        k = min(top_k, self.keep)
        top = self.block_topk_sim[:, :, :k].double()
        valid = torch.isfinite(top)
        topk_mean = torch.where(valid, top, torch.zeros_like(top)).sum(2) / valid.sum(2).clamp(min=1)
        out = {
            "max_sim": self.block_max_sim.double(),
            "topk_mean": topk_mean,
            "mean_sim": self.block_sum_sim / n,
            "matches": self.block_matches,
            "match_rate": self.block_matches.double() / n,
        }
        return {key: v.cpu()[:, used].numpy() for key, v in out.items()}

    def nearest(self, identity: int, n: int) -> tuple[list[int], list[float]]:
        """Latent indices and similarities of the ``n`` nearest generated samples of an identity."""
        idx = self.topk_idx[identity, :n].tolist()
        sim = self.topk_sim[identity, :n].tolist()
        pairs = [(i, s) for i, s in zip(idx, sim) if i >= 0]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def _merge_topk(sim_a: Tensor, idx_a: Tensor, sim_b: Tensor, idx_b: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    sims = torch.cat([sim_a, sim_b.to(sim_a.dtype)], dim=1)
    idxs = torch.cat([idx_a, idx_b.to(idx_a.device)], dim=1)
    top, pos = sims.topk(min(keep, sims.shape[1]), dim=1)
    return top, idxs.gather(1, pos)


def _field(key: str) -> str:
    return key.replace("/", ".").rsplit(".", 1)[-1]


def merge_state_dicts(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Merge shard state dicts; keys may carry a prefix (``"trained.max_sim"``) before the field."""
    if not states:
        raise ValueError("nothing to merge")
    out: dict[str, Tensor] = {}
    for key in states[0]:
        field = _field(key)
        values = [s[key] for s in states]
        if field in _SUM_FIELDS:
            out[key] = torch.stack([v.to(values[0].device) for v in values]).sum(0)
        elif field in _MAX_FIELDS:
            out[key] = torch.stack([v.to(values[0].device) for v in values]).amax(0)
        elif field == "block_topk_sim":
            keep = values[0].shape[-1]
            both = torch.cat([v.to(values[0].device) for v in values], dim=-1)
            out[key] = both.topk(keep, dim=-1).values
        elif field == "topk_sim":
            continue  # merged together with topk_idx below
        elif field == "topk_idx":
            sim_key = key[: len(key) - len("topk_idx")] + "topk_sim"
            sims = [s[sim_key] for s in states]
            keep = sims[0].shape[1]
            dev = sims[0].device
            top_sim, top_idx = sims[0], values[0]
            for s2, i2 in zip(sims[1:], values[1:]):
                top_sim, top_idx = _merge_topk(top_sim, top_idx, s2.to(dev), i2.to(dev), keep)
            out[sim_key], out[key] = top_sim, top_idx
        else:
            raise KeyError(f"unknown statistics field {key!r}")
    return {key: out[key] for key in states[0]}


def all_gather_reduce(all_gather: Callable[[Tensor], Tensor], world_size: int) -> Callable[[dict], dict]:
    """Build the attack's ``reduce`` hook from an all-gather (e.g. ``pl_module.all_gather``).

    ``all_gather(t)`` must return the tensors of all ranks stacked on a new first dimension (as
    Lightning does when ``world_size > 1``). Every rank ends up with the same merged statistics.
    """

    def reduce(state: dict[str, Tensor]) -> dict[str, Tensor]:
        if world_size <= 1:
            return dict(state)
        gathered = {k: all_gather(v) for k, v in state.items()}
        shards = [{k: v[r] for k, v in gathered.items()} for r in range(world_size)]
        return merge_state_dicts(shards)

    return reduce


def _safe(key: str) -> str:
    return "s_" + key.replace(".", "__").replace("/", "___")


def _topk_over_ranks(stacked: Tensor) -> Tensor:
    """[world, ..., keep] -> [..., keep]: the top-k values over all ranks (block top-k has no indices)."""
    keep = stacked.shape[-1]
    return torch.cat(list(stacked.unbind(0)), dim=-1).topk(keep, dim=-1).values


class IdentityStatsMetric(_Metric):
    """The attack's streaming statistics as torchmetrics states, so processes reduce them with
    torchmetrics' own synchronisation (``Metric.sync``).

    Sums (``count``, ``sum_sim``, ``matches`` and their per-block versions) reduce with
    ``dist_reduce_fx="sum"``, maxima with ``"max"``, the per-block top-k similarities with a
    callable that re-cuts the top-k over ranks. The global top-k lists do **not** fit a per-state
    reduction: each similarity travels with the latent index that produced it (the evidence
    images are regenerated from those indices), and torchmetrics reduces every state on its own.
    They are gathered unreduced (``dist_reduce_fx=None``) and merged jointly afterwards.

    >>> stats = StreamingIdentityStats(2, keep=2, threshold=0.5)
    >>> stats.update(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))
    >>> metric = IdentityStatsMetric(stats.state_dict())
    >>> metric.update(stats.state_dict())
    >>> metric.merged()["matches"].tolist()
    [1, 0]
    """

    full_state_update = False

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        super().__init__()
        self._keys = list(state)
        for key, value in state.items():
            field = _field(key)
            if field in _SUM_FIELDS:
                fx: Any = "sum"
            elif field in _MAX_FIELDS:
                fx = "max"
            elif field == "block_topk_sim":
                fx = _topk_over_ranks
            elif field in _TOPK_FIELDS:
                fx = None  # joint (similarity, index) merge after the gather, see class doc
            else:
                raise KeyError(f"unknown statistics field {key!r}")
            self.add_state(_safe(key), default=value.detach().clone(), dist_reduce_fx=fx)

    def update(self, state: Mapping[str, Tensor]) -> None:  # type: ignore[override]
        for key in self._keys:
            setattr(self, _safe(key), state[key].detach().clone())

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return self.merged()

    def merged(self) -> dict[str, Tensor]:
        """The statistics (after ``sync``: of all ranks), top-k lists merged jointly."""
        out = {key: getattr(self, _safe(key)) for key in self._keys}
        for key in self._keys:
            if _field(key) != "topk_idx" or out[key].ndim != 3:
                continue  # not gathered: a single process
            sim_key = key[: len(key) - len("topk_idx")] + "topk_sim"
            sims, idxs = out[sim_key], out[key]
            shards = [{sim_key: sims[r], key: idxs[r]} for r in range(sims.shape[0])]
            merged = merge_state_dicts(shards)
            out[sim_key], out[key] = merged[sim_key], merged[key]
        return out


def metric_reduce(process_group: Any = None, dist_sync_fn: Callable | None = None,
                  distributed_available: Callable[[], bool] | None = None) -> Callable[[dict], dict]:
    """The attack's ``reduce`` hook through torchmetrics (``IdentityStatsMetric``): every rank ends with
    the merged statistics of all ranks. Without an initialised process group it returns the state as is.
    """

    def reduce(state: dict[str, Tensor]) -> dict[str, Tensor]:
        metric = IdentityStatsMetric(state)
        metric.update(state)
        metric.sync(dist_sync_fn=dist_sync_fn, process_group=process_group, should_sync=True,
                    distributed_available=distributed_available)
        if not metric._is_synced:
            return dict(state)
        return metric.merged()

    return reduce
