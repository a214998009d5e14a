"""Face-verification statistics on embeddings: genuine/impostor pair similarities, ROC AUC, threshold at a FAR.

Pure functions on tensors (no model), shared by ``Embedder.calibrate_threshold`` and the embedder
training report. "Same identity" means cosine similarity ``>= threshold``.
"""

from __future__ import annotations

import math

import torch

from gmia_defend.errors import DataError

#: Above this many impostor pairs, a seeded uniform subsample of this size is used instead.
DEFAULT_MAX_IMPOSTOR_PAIRS = 2_000_000


def _check(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.as_tensor(emb)
    labels = torch.as_tensor(labels).reshape(-1).to(device=emb.device, dtype=torch.long)
    if emb.ndim != 2 or emb.shape[0] != labels.shape[0]:
        raise DataError(
            f"verification needs embeddings [N, D] and N labels; got embeddings {tuple(emb.shape)} and "
            f"{labels.shape[0]} labels; pass one label per image"
        )
    num_ids = int(labels.unique().numel()) if labels.numel() else 0
    if num_ids < 2:
        raise DataError(
            f"verification needs images of at least 2 identities (impostor pairs); got {num_ids}; "
            "add images of more identities"
        )
    counts = torch.unique(labels, return_counts=True)[1]
    if int((counts >= 2).sum()) == 0:
        raise DataError(
            "verification needs at least one identity with 2 or more images (genuine pairs); every identity "
            "has a single image; add a second image for some identities"
        )
    return emb.float(), labels


def pair_similarities(
    emb: torch.Tensor,
    labels: torch.Tensor,
    max_impostor_pairs: int | None = DEFAULT_MAX_IMPOSTOR_PAIRS,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of all genuine pairs and of all (or a seeded subsample of) impostor pairs.

    ``emb`` rows are L2-normalised here (so raw features work too). Each unordered pair ``i < j`` counts
    once. Returns ``(genuine, impostor)`` 1-D float64 tensors on the CPU.
    """
    emb, labels = _check(emb, labels)
    emb = torch.nn.functional.normalize(emb, dim=1).double().cpu()
    labels = labels.cpu()
    n = emb.shape[0]
    # Genuine pairs: all of them, identity by identity (few compared with impostors).
    genuine = []
    for lab in labels.unique():
        idx = (labels == lab).nonzero().flatten()
        if idx.numel() < 2:
            continue
        e = emb[idx]
        s = e @ e.T
        iu = torch.triu_indices(idx.numel(), idx.numel(), offset=1)
        genuine.append(s[iu[0], iu[1]])
    genuine_t = torch.cat(genuine)
    counts = torch.unique(labels, return_counts=True)[1].double()
    num_impostor = int((n * (n - 1) / 2) - (counts * (counts - 1) / 2).sum().item())
    if max_impostor_pairs is None or num_impostor <= max_impostor_pairs:
        impostor = []
        for start in range(0, n, 1024):  # row blocks keep memory at 1024 x N
            s = emb[start:start + 1024] @ emb.T
            rows = torch.arange(start, min(start + 1024, n)).unsqueeze(1)
            cols = torch.arange(n).unsqueeze(0)
            keep = (cols > rows) & (labels[start:start + 1024].unsqueeze(1) != labels.unsqueeze(0))
            impostor.append(s[keep])
        impostor_t = torch.cat(impostor)
    else:
        # Seeded subsample: draw random pairs, keep the cross-identity ones (i != j, unordered).
        gen = torch.Generator().manual_seed(seed)
        chunks, have = [], 0
        while have < max_impostor_pairs:
            m = 2 * (max_impostor_pairs - have) + 1024
            i = torch.randint(n, (m,), generator=gen)
            j = torch.randint(n, (m,), generator=gen)
            ok = labels[i] != labels[j]
            i, j = i[ok][: max_impostor_pairs - have], j[ok][: max_impostor_pairs - have]
            chunks.append((emb[i] * emb[j]).sum(1))
            have += i.numel()
        impostor_t = torch.cat(chunks)
    return genuine_t, impostor_t


def roc_auc_from_pairs(genuine: torch.Tensor, impostor: torch.Tensor) -> float:
    """ROC AUC = P(genuine > impostor) + 0.5 P(tie), exact (Mann-Whitney U with average tie ranks)."""
    g = torch.as_tensor(genuine).double().flatten().cpu()
    i = torch.as_tensor(impostor).double().flatten().cpu()
    if g.numel() == 0 or i.numel() == 0:
        return float("nan")
    values = torch.cat([g, i])
    order = torch.argsort(values, stable=True)
    sorted_vals = values[order]
    _, counts = torch.unique_consecutive(sorted_vals, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of the last member of each tie group
    avg_rank_group = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = torch.repeat_interleave(avg_rank_group, counts)
    n_pos, n_neg = g.numel(), i.numel()
    u = ranks[:n_pos].sum().item() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def threshold_at_far(impostor: torch.Tensor, far: float) -> float:
    """A threshold with at most ``floor(far * n)`` impostor pairs at ``sim >= threshold``.

    So the false-accept rate on these pairs is ``<= far`` (exactly ``far`` up to ties and rounding).
    The threshold lies midway between the largest rejected impostor similarity and the next larger
    one (1e-6 above it when none is accepted), so float32 / float16 similarity arithmetic elsewhere
    does not flip pairs at the boundary. If ``far * n < 1`` no false accept is allowed.
    """
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1); got {far}")
    imp = torch.as_tensor(impostor).double().flatten().cpu()
    if imp.numel() == 0:
        raise DataError("no impostor pairs to set a verification threshold; use images of 2+ identities")
    k = int(math.floor(far * imp.numel() + 1e-9))
    k = min(k, imp.numel() - 1)
    top = torch.topk(imp, k + 1).values  # descending; top[k] is the largest rejected similarity
    rejected = top[k].item()
    above = top[:k][top[:k] > rejected]
    if above.numel():
        return float((rejected + above.min().item()) / 2)
    return float(rejected + 1e-6)


def verification_metrics(
    emb: torch.Tensor,
    labels: torch.Tensor,
    far: float = 1e-3,
    max_impostor_pairs: int | None = DEFAULT_MAX_IMPOSTOR_PAIRS,
    seed: int = 0,
) -> dict[str, float]:
    """Verification ROC AUC, threshold at ``far`` and the true-accept rate there.

    Returns ``{"auc", "tar_at_far", "threshold", "far", "measured_far", "num_genuine", "num_impostor"}``.
    """
    genuine, impostor = pair_similarities(emb, labels, max_impostor_pairs=max_impostor_pairs, seed=seed)
    threshold = threshold_at_far(impostor, far)
    return {
        "auc": roc_auc_from_pairs(genuine, impostor),
        "tar_at_far": float((genuine >= threshold).double().mean().item()),
        "threshold": threshold,
        "far": float(far),
        "measured_far": float((impostor >= threshold).double().mean().item()),
        "num_genuine": int(genuine.numel()),
        "num_impostor": int(impostor.numel()),
    }
