"""Streaming Gaussian statistics of features and the Fréchet distance between two of them (float64).

Pure torch, no Lightning: the statistics are three sums (count, sum, sum of outer products), so shards
computed on different processes merge by addition and the result equals one process's.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torchmetrics import Metric


class _SumState(Metric):
    """One tensor summed over processes by torchmetrics (``dist_reduce_fx="sum"``)."""

    full_state_update = False

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.add_state("value", default=value.detach().clone(), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor) -> None:  # type: ignore[override]
        self.value = value.detach().clone()

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        return self.value


def metric_sum(process_group: Any = None, dist_sync_fn: Callable | None = None,
               distributed_available: Callable[[], bool] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``reduce_sum`` for ``GaussianStats.reduce`` through torchmetrics' ``Metric.sync`` (sum over ranks).

    The statistics are three sums, so torchmetrics' ``"sum"`` reduction fits them exactly.

    >>> metric_sum()(torch.tensor([1.0, 2.0])).tolist()  # one process: unchanged
    [1.0, 2.0]
    """

    def reduce_sum(packed: torch.Tensor) -> torch.Tensor:
        state = _SumState(packed)
        state.update(packed)
        state.sync(dist_sync_fn=dist_sync_fn, process_group=process_group, should_sync=True,
                   distributed_available=distributed_available)
        return state.value

    return reduce_sum


class GaussianStats:
    """Running count, sum and outer-product sum of feature vectors, kept in float64.

    >>> a, b = GaussianStats(2), GaussianStats(2)
    >>> a.update(torch.tensor([[0.0, 1.0], [2.0, 3.0]])); b.update(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    >>> round(frechet_from_stats(a, b), 6)
    0.0
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = int(dim)
        self.n = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features [N, dim]."""
        f = features.detach().to(self.sum.device, torch.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected features shaped [N, {self.dim}]; got {tuple(f.shape)}")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Replace the sums by ``reduce_sum`` of them (e.g. an all-reduce over processes).

        ``None`` sums over the default process group through a torchmetrics state
        (``dist_reduce_fx="sum"``, ``metric_sum``); without a process group nothing changes.
        """
        if reduce_sum is None:
            reduce_sum = metric_sum()
        packed = torch.cat([self.n.reshape(1), self.sum, self.outer.reshape(-1)])
        packed = reduce_sum(packed).to(self.sum.device, torch.float64)
        self.n = packed[0].clone()
        self.sum = packed[1:1 + self.dim].clone()
        self.outer = packed[1 + self.dim:].reshape(self.dim, self.dim).clone()

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased covariance (the same estimator as torchmetrics' FID)."""
        n = float(self.n)
        if n < 2:
            raise ValueError("the Fréchet distance needs at least 2 samples on each side")
        mean = self.sum / n
        cov = (self.outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"n": self.n.cpu(), "sum": self.sum.cpu(), "outer": self.outer.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> "GaussianStats":
        stats = cls(int(state["sum"].numel()), device)
        stats.n = state["n"].to(device, torch.float64).clone()
        stats.sum = state["sum"].to(device, torch.float64).clone()
        stats.outer = state["outer"].to(device, torch.float64).clone()
        return stats


def _sqrtm_psd(mat: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((mat + mat.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` in float64.

    ``tr((C1 C2)^(1/2))`` is computed as ``tr((S C2 S)^(1/2))`` with ``S = C1^(1/2)``: a symmetric PSD
    matrix, so the eigenvalues are real and the result does not go complex or negative by round-off.
    """
    mu1, mu2 = mu1.double(), mu2.double()
    cov1, cov2 = cov1.double(), cov2.double()
    s1 = _sqrtm_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return float(value.clamp_min(0))


def frechet_from_stats(real: GaussianStats, fake: GaussianStats) -> float:
    """Fréchet distance between two accumulated feature distributions."""
    mu_r, cov_r = real.mean_cov()
    mu_f, cov_f = fake.mean_cov()
    return frechet_distance(mu_r, cov_r, mu_f.to(mu_r.device), cov_f.to(cov_r.device))
