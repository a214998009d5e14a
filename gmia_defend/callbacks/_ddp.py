"""DDP glue of the leakage monitor: merge the shards' attack statistics and sum the quality statistics.

Each process generates its shard of the fixed latents; ``reduce`` first agrees (a collective boolean)
that every process got that far, so a failure on one rank is reported on all without a hang.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class PeerAuditFailed(RuntimeError):
    """Another process's share of the audit failed (raised on the healthy processes)."""


def ddp_reducers(trainer: Any, on_reduce: Callable[[], None]) -> tuple[Callable[[dict], dict], Callable]:
    """``(reduce, reduce_sum)`` for ``Auditor.audit`` under the trainer's strategy."""
    from gmia_defend.attack.scores import all_gather_reduce

    strategy = trainer.strategy
    gather = all_gather_reduce(lambda t: strategy.all_gather(t), trainer.world_size)

    def reduce(stats: dict) -> dict:
        on_reduce()
        if not strategy.reduce_boolean_decision(True, all=True):
            raise PeerAuditFailed("the audit failed on another process")
        return gather(stats)

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        return strategy.reduce(t.to(strategy.root_device), reduce_op="sum").cpu()

    return reduce, reduce_sum
