"""AttackResult: metrics, a per-identity table, evidence images; JSON and an evidence grid.

``leakage/leak_rate`` = mean over member identities of their match rate minus the mean over
non-member identities of theirs, where an identity's match rate is the share of the N generated
samples matched to it (nearest audited identity and similarity >= verification threshold; see
``scores``). Equivalently: the share of generated samples matched to *some* member, divided by the
number of members, minus the same for non-members. Dividing by the identity counts makes sides of
different sizes comparable; 0 means the generator produces member faces no more often than faces
of people it never saw; a memoriser of M member identities reaches about 1/M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from gmia_defend.io import atomic_write, write_json_atomic

__all__ = ["AttackResult", "EmbedderReport", "WORST_CASE_KEYS", "worst_case"]

# Metrics whose maximum over embedders is the reported worst case (the interval's both ends too:
# the worst interval is the one the most leaking matcher could reach).
WORST_CASE_KEYS = ("leakage/auc", "leakage/auc_ci_low", "leakage/auc_ci_high", "leakage/tpr_at_1pct_fpr",
                   "leakage/tpr_at_0.1pct_fpr", "leakage/advantage", "leakage/leak_rate")


@dataclass
class EmbedderReport:
    """What one embedder saw: metrics with plain ``leakage/...`` keys, identity table, evidence.

    >>> EmbedderReport("pixels", {"leakage/auc": 0.5}, [], [], 0.9, "embedder").to_dict()["metrics"]
    {'leakage/auc': 0.5}
    """

    name: str
    metrics: dict[str, float]
    identities: list[dict]
    evidence: list[dict]
    threshold: float
    threshold_source: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metrics": dict(self.metrics), "threshold": self.threshold,
                "threshold_source": self.threshold_source, "identities": self.identities,
                "evidence": [_evidence_json(e) for e in self.evidence]}


def _evidence_json(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not isinstance(v, Tensor)}


@dataclass
class AttackResult:
    """Outcome of ``IdentityMembershipAttack.run``.

    ``metrics`` is flat ``{key: float}`` (``leakage/auc``, ``leakage/p_value``, ... see
    ``attack.metrics.METRIC_KEYS``, plus ``leakage/leak_rate``); with several embedders also
    ``leakage/<name>/<metric>`` and the plain keys hold the worst case (``worst_case``).
    ``identities`` and ``evidence`` are the worst embedder's; each identity row carries its
    ``score`` and ``block_scores`` (one per latent block), so any subset can be re-scored with
    ``membership_metrics``. Evidence entries hold tensors ``reference`` [3,H,W] and ``images``
    [n,3,H,W] in [-1, 1] (not written to JSON).

    Example (two embedders: the plain keys are the worst of each):

    >>> a = EmbedderReport("a", {"leakage/auc": 0.6, "leakage/auc_ci_low": 0.5, "leakage/auc_ci_high": 0.7}, [], [], 0.5, "x")
    >>> b = EmbedderReport("b", {"leakage/auc": 0.7, "leakage/auc_ci_low": 0.4, "leakage/auc_ci_high": 0.9}, [], [], 0.5, "x")
    >>> r = AttackResult.from_reports([a, b], num_samples=10, score="topk_mean", top_k=1, seed=0)
    >>> r.worst_embedder, r.metrics["leakage/auc"], r.metrics["leakage/auc_ci_low"], r.metrics["leakage/auc_ci_high"]
    ('b', 0.7, 0.5, 0.9)
    """

    metrics: dict[str, float]
    identities: list[dict]
    evidence: list[dict]
    num_samples: int
    embedder_name: str
    worst_embedder: str
    score: str
    top_k: int
    seed: int
    embedders: dict[str, EmbedderReport] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = math.nan

    @classmethod
    def from_reports(cls, reports: list[EmbedderReport], **kwargs: Any) -> "AttackResult":
        """Combine per-embedder reports: one -> plain keys; several -> prefixed keys + worst case."""
        if len(reports) == 1:
            worst = reports[0]
            metrics = dict(worst.metrics)
        else:
            worst = max(reports, key=lambda r: _nan_low(r.metrics.get("leakage/auc")))
            metrics = {}
            for r in reports:
                for key, value in r.metrics.items():
                    metrics[key.replace("leakage/", f"leakage/{r.name}/", 1)] = value
            for key, value in worst.metrics.items():
                metrics[key] = value
            metrics.update(worst_case(reports, kwargs.get("config", {})))
        return cls(metrics=metrics, identities=worst.identities, evidence=worst.evidence,
                   embedder_name=worst.name, worst_embedder=worst.name,
                   embedders={r.name: r for r in reports}, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "num_samples": self.num_samples,
            "embedder_name": self.embedder_name,
            "worst_embedder": self.worst_embedder,
            "score": self.score,
            "top_k": self.top_k,
            "seed": self.seed,
            "elapsed_s": self.elapsed_s,
            "config": dict(self.config),
            "identities": self.identities,
            "evidence": [_evidence_json(e) for e in self.evidence],
            "embedders": {name: r.to_dict() for name, r in self.embedders.items()},
        }

    def save_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` atomically (NaN becomes null)."""
        return write_json_atomic(path, self.to_dict())

    def save_evidence_png(self, path: str | Path, max_identities: int | None = None) -> Path:
        """Grid: per most-leaked member identity, its reference photo beside its nearest generated faces.

        One mosaic image (red frame = held-out reference photo), captions with score, training-image
        count and similarities; one matplotlib axes, so it renders in well under a second.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = [e for e in self.evidence if isinstance(e.get("reference"), Tensor)]
        if max_identities is not None:
            rows = rows[:max_identities]
        if not rows:
            raise ValueError("this result holds no evidence images (run the attack with evidence_identities > 0)")
        mosaic, tile, cap, pad, cols = _mosaic(rows)
        fig = Figure(figsize=(1.25 * cols, 1.45 * len(rows) + 0.4), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.35 / fig.get_figheight()))
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_axis_off()
        step = tile + pad
        for r, entry in enumerate(rows):
            y = r * (tile + cap + pad) + cap - 1
            captions = [f"{entry['identity']}\nscore {entry['score']:.3g}, train {entry.get('train_count', 0)}"]
            captions += [f"sim {s:.2f}" + (" *" if s >= entry.get("threshold", math.inf) else "")
                         for s in entry["similarities"]]
            for c, text in enumerate(captions):
                ax.text(pad + c * step + tile / 2, y, text, ha="center", va="bottom", fontsize=6)
        fig.suptitle(f"Nearest generated faces of the most leaked member identities ({self.embedder_name}, "
                     f"AUC {self.metrics.get('leakage/auc', math.nan):.3f}, N={self.num_samples}); red frame: "
                     "held-out reference, * = similarity >= verification threshold", fontsize=6, y=0.998, va="top")
        return atomic_write(path, lambda p: fig.savefig(p, format="png"))


def _mosaic(rows: list[dict]) -> tuple[np.ndarray, int, int, int, int]:
    """White canvas with one row of tiles per identity (reference first, framed red) + caption bands."""
    import torch.nn.functional as F

    side = max(int(t.shape[-1]) for e in rows for t in [e["reference"], *e["images"]])
    tile = max(side, 64)
    cap, pad = tile // 3, max(tile // 16, 2)
    cols = 1 + max(int(e["images"].shape[0]) for e in rows)
    height = len(rows) * (tile + cap + pad) + pad
    width = cols * (tile + pad) + pad
    canvas = np.ones((height, width, 3), dtype=np.float32)
    for r, entry in enumerate(rows):
        tiles = [entry["reference"], *entry["images"]]
        y = r * (tile + cap + pad) + cap
        for c, img in enumerate(tiles):
            t = img.detach().float().cpu().clamp(-1, 1)[None]
            t = F.interpolate(t, size=(tile, tile), mode="nearest" if tile % t.shape[-1] == 0 else "bilinear")
            x = pad + c * (tile + pad)
            canvas[y:y + tile, x:x + tile] = ((t[0] + 1) / 2).permute(1, 2, 0).numpy()
            if c == 0:
                b = max(tile // 32, 2)
                red = np.array([0.85, 0.1, 0.1], dtype=np.float32)
                canvas[y:y + b, x:x + tile] = red
                canvas[y + tile - b:y + tile, x:x + tile] = red
                canvas[y:y + tile, x:x + b] = red
                canvas[y:y + tile, x + tile - b:x + tile] = red
    return canvas, tile, cap, pad, cols


def worst_case(reports: list[EmbedderReport], config: dict[str, Any] | None = None) -> dict[str, float]:
    """The worst of every key over several embedders (the attacker picks the best matcher).

    ``WORST_CASE_KEYS`` (AUC, both interval ends, TPRs, advantage, leak rate): maximum.
    ``leakage/p_value``: Bonferroni over the J embedders, ``min(1, J * min_j p_j)``, because the
    smallest of J p-values is not itself a p-value. ``leakage/null_auc_low/high``: the widest band.
    ``leakage/epsilon_lower_bound``: the largest per-embedder bound, each recomputed at
    ``alpha / J`` from its identity table so the claim still holds at 1 - alpha over the J choices.
    """
    from gmia_defend.attack.metrics import DEFAULT_DELTA, epsilon_lower_bound

    def values(key: str) -> list[float]:
        out = [r.metrics.get(key, math.nan) for r in reports]
        return [float(v) for v in out if v is not None and math.isfinite(v)]

    def pick(key: str, fn: Any) -> float:
        v = values(key)
        return fn(v) if v else math.nan

    j = len(reports)
    out = {key: pick(key, max) for key in WORST_CASE_KEYS if any(key in r.metrics for r in reports)}
    if any("leakage/p_value" in r.metrics for r in reports):
        out["leakage/p_value"] = min(1.0, j * pick("leakage/p_value", min))
        out["leakage/null_auc_low"] = pick("leakage/null_auc_low", min)
        out["leakage/null_auc_high"] = pick("leakage/null_auc_high", max)
    if any("leakage/epsilon_lower_bound" in r.metrics for r in reports):
        cfg = config or {}
        delta = cfg.get("delta")
        alpha = float(cfg.get("alpha", 0.05))
        bounds = []
        for r in reports:
            scores = [row["score"] for row in r.identities]
            member = [bool(row["member"]) for row in r.identities]
            if scores and any(member) and not all(member):
                bounds.append(epsilon_lower_bound(scores, member, DEFAULT_DELTA if delta is None else float(delta),
                                                  alpha / j))
        out["leakage/epsilon_lower_bound"] = max(bounds) if bounds else pick("leakage/epsilon_lower_bound", max)
    return out


def _nan_low(value: Any) -> float:
    return value if isinstance(value, (float, int, np.floating)) and math.isfinite(value) else -math.inf
