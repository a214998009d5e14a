"""Leave every global random state as it was: auditing must never change training.

``preserved_rng()`` snapshots torch's CPU generator, every initialised CUDA device's generator, numpy's
global state and Python's ``random``, and restores them on exit, whatever happens inside. Loading an
embedder (its layers draw initial weights before the saved ones are loaded), building an audit set or
running the attack all go inside it.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


def _cuda_devices() -> list[int]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []  # nothing drew from a CUDA generator yet; do not initialise CUDA just to save it
    return list(range(torch.cuda.device_count()))


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the body, then put torch (CPU and CUDA), numpy and ``random`` global states back."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=_cuda_devices()):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def rng_fingerprint() -> tuple:
    """A comparable snapshot of every global random state (for tests of RNG neutrality)."""
    cuda = tuple(torch.cuda.get_rng_state(d).tolist() for d in _cuda_devices())
    np_state = np.random.get_state()
    return (tuple(torch.get_rng_state().tolist()), cuda, np_state[0], tuple(np_state[1].tolist()),
            *np_state[2:], random.getstate())
