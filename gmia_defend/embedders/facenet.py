"""``FaceNetEmbedder``: facenet-pytorch's InceptionResnetV1 (FaceNet, 512-d) as an ``Embedder``.

Weights: ``"vggface2"`` is the file facenet-pytorch caches, ``$TORCH_HOME/checkpoints/
20180402-114759-vggface2.pt`` (David Sandberg's VGGFace2 model, converted by facenet-pytorch). If it
is not there it is downloaded only when the machine is online; offline the constructor fails at once
with a ``WeightsError`` naming the file, the URL and where to put it. A local path is loaded with
``weights_only=True``; the known VGGFace2 file is checked against its SHA-256, any other file by its
structure (every InceptionResnetV1 tensor present with the right shape; the 8631-way ``logits``
head of the VGGFace2 checkpoint is ignored).

Input: 160x160 face crops as ``align_faces(..., target="facenet")`` makes them (MTCNN box plus
margin). facenet-pytorch standardises a pixel ``p`` in [0, 255] as ``(p - 127.5) / 128``; from
[-1, 1] that is ``x * 127.5 / 128``. The network runs in eval mode (BatchNorm1d, dropout), under
float16 autocast on CUDA. ``threshold`` is None until ``calibrate_threshold`` sets it.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any, Mapping

import torch

from gmia_defend.embedders.base import Embedder
from gmia_defend.embedders.weights import load_torch_weights_only, sha256_file, torch_home
from gmia_defend.errors import UserError, WeightsError

VGGFACE2_FILE = "20180402-114759-vggface2.pt"
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/" + VGGFACE2_FILE
#: SHA-256 and size of VGGFACE2_FILE as published by facenet-pytorch (v2.2.9 release asset).
VGGFACE2_SHA256 = "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b"
VGGFACE2_SIZE = 111_898_327
#: Environment variables that declare the machine offline (no probe, no download attempt).
OFFLINE_ENV = ("GMIA_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def vggface2_path() -> Path:
    """Where facenet-pytorch keeps the VGGFace2 weights: ``$TORCH_HOME/checkpoints/<file>``."""
    return torch_home() / "checkpoints" / VGGFACE2_FILE


def is_online(host: str = "github.com", port: int = 443, timeout: float = 1.5) -> bool:
    """False when an offline variable (``GMIA_OFFLINE=1`` ...) is set or ``host`` cannot be reached
    within ``timeout`` seconds in total (name lookup included, which has no timeout of its own)."""
    if any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes") for name in OFFLINE_ENV):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _missing_message(path: Path, why: str) -> str:
    return (f"FaceNet VGGFace2 weights {VGGFACE2_FILE} not found at {path} and {why}; download "
            f"{VGGFACE2_URL} on a connected machine and put it at {path} (or set $TORCH_HOME to the "
            "folder whose checkpoints/ holds it, or pass FaceNetEmbedder(weights='<path>'))")


def download_vggface2(path: Path) -> None:
    """Fetch the VGGFace2 weights to ``path`` (atomic; the SHA-256 is checked while downloading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(VGGFACE2_URL, str(path), hash_prefix=VGGFACE2_SHA256, progress=True)
    except Exception as exc:
        raise WeightsError(_missing_message(path, f"the download failed ({type(exc).__name__}: {exc})")) from exc


def resolve_weights(weights: str | os.PathLike, download: bool | None = None) -> Path:
    """Path of the weights file; for ``"vggface2"`` fetch it if missing and ``download`` allows
    (None: only when ``is_online()``)."""
    if os.fspath(weights) == "vggface2":
        path = vggface2_path()
        if path.is_file():
            return path
        if download is False:
            raise WeightsError(_missing_message(path, "downloading is disabled"))
        if download is None and not is_online():
            raise WeightsError(_missing_message(path, "this machine is offline"))
        download_vggface2(path)
        return path
    if os.fspath(weights) in ("casia-webface",):
        raise UserError("only the 'vggface2' FaceNet weights are known here; pass a local path for others")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"FaceNet weights file not found: {path}; give an existing file or 'vggface2'")
    return path


def _model_state(model: torch.nn.Module, state: Any, where: Path) -> dict[str, torch.Tensor]:
    """Check a loaded state dict against InceptionResnetV1; drop the classifier head."""
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where} is not a state dict of tensors; give InceptionResnetV1 weights "
                           f"(e.g. {VGGFACE2_FILE})")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    unexpected = [k for k in state if k not in expected and not k.startswith("logits.")]
    if missing or wrong or unexpected:
        detail = "; ".join(part for part in (
            f"{len(missing)} missing (e.g. {missing[:2]})" if missing else "",
            f"wrong shapes: {wrong[:2]}" if wrong else "",
            f"unexpected keys: {unexpected[:2]}" if unexpected else "") if part)
        raise WeightsError(f"{where} does not hold InceptionResnetV1 weights ({detail}); give facenet-pytorch "
                           f"weights such as {VGGFACE2_FILE}")
    return {k: state[k] for k in expected}


class FaceNetEmbedder(Embedder):
    """FaceNet (InceptionResnetV1, 512-d) on 160x160 face crops.

    ``weights``: ``"vggface2"`` or a local file. ``verify_checksum``: check the SHA-256 of the known
    VGGFace2 file (always skipped for other files, which are checked by structure). ``download``:
    None = fetch the VGGFace2 file only when online; False = never.

    >>> model = FaceNetEmbedder("weights/20180402-114759-vggface2.pt")  # doctest: +SKIP
    >>> model(images).shape  # images: [N, 3, 160, 160] face crops in [-1, 1]  # doctest: +SKIP
    torch.Size([N, 512])
    """

    name = "facenet"

    def __init__(self, weights: str | os.PathLike = "vggface2", device: str | torch.device | None = None,
                 verify_checksum: bool = True, download: bool | None = None) -> None:
        super().__init__(input_size=160, dim=512)
        path = resolve_weights(weights, download=download)
        try:
            from facenet_pytorch import InceptionResnetV1
        except ImportError as err:
            raise UserError(f"FaceNet needs facenet-pytorch ({err}); `pip install facenet-pytorch==2.5.3`") from err
        is_known = os.fspath(weights) == "vggface2" or path.name == VGGFACE2_FILE
        if is_known and verify_checksum:
            digest = sha256_file(path)
            if digest != VGGFACE2_SHA256:
                raise WeightsError(
                    f"{path} has SHA-256 {digest}, not the published {VGGFACE2_SHA256} of {VGGFACE2_FILE} "
                    f"({VGGFACE2_SIZE:,} bytes; this one has {path.stat().st_size:,}): it is corrupt, "
                    f"truncated or another file; delete it and download {VGGFACE2_URL} again (or pass "
                    "verify_checksum=False to use it anyway)")
        model = InceptionResnetV1(pretrained=None, classify=False)
        state = load_torch_weights_only(path, "FaceNet weights")
        model.load_state_dict(_model_state(model, state, path), strict=True)
        self.net = model.eval()
        self.weights_path = str(path)
        self.requires_grad_(False)
        self.eval()
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True) -> "FaceNetEmbedder":
        """Keep the network in eval mode even inside a module being trained (BatchNorm1d, dropout)."""
        super().train(mode)
        self.net.eval()
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> facenet-pytorch's ``(p - 127.5) / 128`` with p = (x + 1) * 127.5."""
        return x * (127.5 / 128.0)

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
