"""Image -> unit-norm identity embedding, with a calibrated verification threshold."""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {
    "Embedder": "base",
    "FaceNetEmbedder": "facenet",
    "DlibResNetEmbedder": "dlib",
    "TrainedEmbedder": "trained",
    "PixelEmbedder": "pixels",
    "train_identity_embedder": "trained",
    "load_embedder": "registry",
    "load_embedders": "registry",
    "verification_metrics": "verification",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
