"""Load a generator from a file or a spec: Lightning checkpoints, TorchScript, release files, NVIDIA pickles.

``load_generator(spec)`` accepts

- a Lightning checkpoint (``.ckpt``) of ``gmia_defend.models.StyleGAN2`` (its ``G_ema``);
- a release file written by ``gmia_defend.save_release`` (weights only, no pickle);
- a TorchScript file;
- a Python pickle holding ``G_ema`` (a dict key or an attribute), such as the
  ``network-snapshot-<kimg>.pkl`` files of NVIDIA's stylegan2-ada-pytorch and stylegan3 training
  loops. Unpickling runs code stored in the file, so it needs ``trust_pickle=True`` (CLI:
  ``--trust-pickle``), and the modules the pickle names (NVIDIA's ``torch_utils`` and ``dnnlib``) must be
  importable: put the folder of that code on ``PYTHONPATH``;
- ``module:function``, imported and called with no arguments.

NVIDIA-style generators ``G(z, c)`` are wrapped in ``SnapshotGenerator``: a conditional one
(``c_dim > 0``) generates the class the user names (``class_index``); noise inputs are constant
(``noise_mode="const"`` where the generator takes it), so the audit of a snapshot is deterministic.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from gmia_defend.errors import UserError

__all__ = ["CorruptSnapshotError", "SnapshotGenerator", "load_generator", "read_generator_file", "num_classes"]

_CHECKPOINT_SUFFIXES = (".ckpt",)
_PICKLE_SUFFIXES = (".pkl", ".pickle")
#: Packages NVIDIA's snapshot pickles import, and the repositories that provide them.
_NVIDIA_PACKAGES = ("torch_utils", "dnnlib")
RELEASE_FORMAT = "gmia-defend-release"


class CorruptSnapshotError(UserError):
    """A generator file that cannot be read as what it claims to be: truncated, still being written, or corrupt."""


class SnapshotGenerator(nn.Module):
    """``z -> images`` over an NVIDIA-style ``G(z, c)``: fixed class, constant noise.

    ``class_index`` picks the class of a conditional generator (``c_dim > 0``; one-hot ``c``); an
    unconditional one gets ``c=None``. ``z_dim`` and ``img_resolution`` are the wrapped generator's.

    >>> import torch
    >>> class G(torch.nn.Module):
    ...     z_dim, c_dim, img_resolution = 4, 3, 8
    ...     def forward(self, z, c, noise_mode="random"):
    ...         return torch.zeros(z.shape[0], 3, 8, 8) + c.argmax(1).view(-1, 1, 1, 1) / 10
    >>> g = SnapshotGenerator(G(), class_index=2)
    >>> g.z_dim, round(float(g(torch.zeros(2, 4))[0, 0, 0, 0]), 3)
    (4, 0.2)
    """

    def __init__(self, generator: nn.Module, class_index: int | None = None) -> None:
        super().__init__()
        self.G = generator
        self.z_dim = int(getattr(generator, "z_dim"))
        self.c_dim = 0  # the adapter must not add a c of its own
        self.source_c_dim = num_classes(generator)
        self.img_resolution = getattr(generator, "img_resolution", None)
        if self.source_c_dim > 0:
            if class_index is None:
                raise UserError(
                    f"the generator is conditional (c_dim={self.source_c_dim}): name the class to audit, "
                    f"--class-index K with K in 0..{self.source_c_dim - 1} (or --class-index all in watch)")
            if not 0 <= int(class_index) < self.source_c_dim:
                raise UserError(f"--class-index {class_index} is out of range: the generator has "
                                f"{self.source_c_dim} classes (0..{self.source_c_dim - 1})")
        elif class_index is not None:
            raise UserError("--class-index was given but the generator is not conditional (no c_dim > 0)")
        self.class_index = None if class_index is None else int(class_index)
        self._const_noise: bool | None = None if _takes_keyword(generator, "noise_mode") is not False else False

    def _c(self, z: Tensor) -> Tensor | None:
        if self.class_index is None:
            return None
        c = torch.zeros(z.shape[0], self.source_c_dim, device=z.device, dtype=z.dtype)
        c[:, self.class_index] = 1.0
        return c

    def forward(self, z: Tensor) -> Any:
        c = self._c(z)
        if self._const_noise is False:
            return self.G(z, c)
        try:
            out = self.G(z, c, noise_mode="const")
            self._const_noise = True
            return out
        except TypeError as err:
            if self._const_noise or "noise_mode" not in str(err):
                raise
            self._const_noise = False
            return self.G(z, c)


def _takes_keyword(generator: Any, name: str) -> bool | None:
    """True/False when ``generator.forward`` visibly takes (or refuses) keyword ``name``; None if unknown."""
    try:
        params = inspect.signature(generator.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return None
    if any(p.name == name for p in params):
        return True
    return None if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params) else False


def num_classes(generator: Any) -> int:
    """The class count of a conditional generator (its ``c_dim``), 0 for an unconditional one."""
    c_dim = getattr(generator, "c_dim", 0)
    try:
        return max(int(c_dim), 0)
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------------------------- file kinds
def _file_kind(path: Path) -> str:
    """'ckpt', 'pickle', 'torchscript', 'torch' (a torch.save zip), 'partial' (a cut zip) or 'unknown'."""
    if path.suffix in _CHECKPOINT_SUFFIXES:
        return "torch" if _is_release_zip(path) else "ckpt"
    if path.suffix in _PICKLE_SUFFIXES:
        return "pickle"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "unknown"
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == b"PK":
        return "partial"  # a zip archive (torch.save, TorchScript) without its end: truncated or being written
    return "pickle" if head[:1] == b"\x80" else "unknown"


def _is_release_zip(path: Path) -> bool:
    """A release file (any suffix): a torch.save zip whose pickled dict names the release format."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
            info = zf.getinfo(name) if name else None
            if info is None or info.file_size > 1_000_000:
                return False
            return RELEASE_FORMAT.encode() in zf.read(name)
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def _missing_module_message(path: Path, name: str) -> str:
    top = name.split(".")[0]
    if top in _NVIDIA_PACKAGES:
        return (f"cannot load {path}: its pickle needs NVIDIA's module {top!r} (stylegan2-ada-pytorch or "
                f"stylegan3 code); put that repository's folder on PYTHONPATH, e.g. "
                f"PYTHONPATH=/path/to/stylegan2-ada-pytorch")
    return (f"cannot load {path}: its pickle needs the module {name!r}, which is not importable; put the folder "
            f"that contains the package {top!r} on PYTHONPATH")


def _unpickle(path: Path, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise UserError(f"{path} is a Python pickle (e.g. an NVIDIA network-snapshot): loading it runs code stored "
                        "in it; pass --trust-pickle (trust_pickle=True) if you trust this file")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)  # noqa: S301 - the user vouched for this file with trust_pickle
    except ModuleNotFoundError as err:
        raise UserError(_missing_module_message(path, err.name or str(err))) from err
    except (EOFError, pickle.UnpicklingError, ValueError, IndexError, MemoryError, OverflowError) as err:
        raise CorruptSnapshotError(f"cannot read {path}: truncated or corrupt pickle ({type(err).__name__}: "
                                   f"{_first_line(err)}); if training is still writing it, wait until it is "
                                   "complete") from err
    except AttributeError as err:
        raise UserError(f"cannot load {path}: {_first_line(err)}; the code on PYTHONPATH is not the version "
                        "that wrote this pickle") from err


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else ""


def _generator_from_pickle(obj: Any, path: Path) -> nn.Module:
    generator = obj.get("G_ema") if isinstance(obj, dict) else getattr(obj, "G_ema", None)
    if generator is None:
        found = f"a dict with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path} holds {found}, not a generator: expected a dict or object with 'G_ema' (an NVIDIA "
                        "network-snapshot)")
    if not callable(generator):
        raise UserError(f"{path}: G_ema is a {type(generator).__name__}, not a callable generator")
    return generator


def _load_stylegan2_checkpoint(path: Path, trust_pickle: bool) -> nn.Module:
    try:
        from gmia_defend.models import StyleGAN2
    except ImportError as err:  # pragma: no cover - the model package ships with gmia-defend
        raise UserError(f"cannot load {path}: gmia_defend.models.StyleGAN2 is unavailable ({err})") from err
    try:
        module = StyleGAN2.load_from_checkpoint(str(path), map_location="cpu", weights_only=not trust_pickle)
    except (EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        if "zip" in str(err).lower() or isinstance(err, (EOFError, zipfile.BadZipFile)):
            raise CorruptSnapshotError(f"cannot read {path}: truncated or corrupt checkpoint ({type(err).__name__}: "
                                       f"{_first_line(err)})") from err
        raise UserError(_ckpt_message(path, err, trust_pickle)) from err
    except Exception as err:  # noqa: BLE001 - any failure to read the file is the user's to fix
        raise UserError(_ckpt_message(path, err, trust_pickle)) from err
    generator = getattr(module, "G_ema", None)
    if not isinstance(generator, nn.Module):
        raise UserError(f"checkpoint {path} has no G_ema generator; is it a gmia-defend StyleGAN2 checkpoint?")
    generator.kimg = float(module.kimg)
    return generator


def _ckpt_message(path: Path, err: BaseException, trust_pickle: bool) -> str:
    hint = "" if trust_pickle else " (if you trust this file and it holds pickled objects, pass --trust-pickle)"
    return f"cannot load {path} as a gmia-defend StyleGAN2 checkpoint: {type(err).__name__}: {_first_line(err)}{hint}"


def _load_torch_file(path: Path) -> Any:
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, zipfile.BadZipFile) as err:
        raise CorruptSnapshotError(f"cannot read {path}: truncated or corrupt file ({type(err).__name__}: "
                                   f"{_first_line(err)})") from err
    except pickle.UnpicklingError as err:
        raise UserError(f"{path} holds pickled objects, not weights; pass a release file, TorchScript or a "
                        "Lightning .ckpt") from err
    if isinstance(payload, dict) and payload.get("format") == RELEASE_FORMAT:
        import gmia_defend

        load_release = getattr(gmia_defend, "load_release", None)
        if load_release is None:  # pragma: no cover - only while the release module is missing
            raise UserError(f"{path} is a gmia-defend release file, but this install has no load_release")
        return load_release(path)
    raise UserError(f"{path} is a torch.save file but not a gmia-defend release (format "
                    f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}); pass "
                    "a release file, TorchScript, a Lightning .ckpt or 'module:function'")


def _load_torchscript(path: Path) -> Any:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot read {path} as TorchScript ({type(err).__name__}); pass a Lightning "
                        ".ckpt of StyleGAN2, a release file, TorchScript, an NVIDIA .pkl (with --trust-pickle) "
                        "or 'module:function'") from err


def read_generator_file(path: str | Path, trust_pickle: bool = False) -> Any:
    """The generator stored in a file, as stored (an NVIDIA ``G_ema`` is not yet wrapped)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"generator file {str(path)!r} does not exist; pass a checkpoint path or 'module:function'")
    if path.is_dir():
        raise UserError(f"generator {str(path)!r} is a directory; pass a checkpoint file (.ckpt, .pkl, .pt)")
    if path.stat().st_size == 0:
        raise CorruptSnapshotError(f"cannot read {path}: the file is empty (still being written?)")
    kind = _file_kind(path)
    if kind == "ckpt":
        return _load_stylegan2_checkpoint(path, trust_pickle)
    if kind == "pickle":
        return _generator_from_pickle(_unpickle(path, trust_pickle), path)
    if kind == "torch":
        return _load_torch_file(path)
    if kind == "partial":
        raise CorruptSnapshotError(f"cannot read {path}: truncated or corrupt zip archive (its end is missing); if "
                                   "training is still writing it, wait until it is complete")
    return _load_torchscript(path)


def _load_module_function(spec: str) -> Callable:
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise UserError(f"bad generator spec {spec!r}; use a checkpoint path or 'package.module:function'")
    func = import_function(spec)
    generator = func()
    if not callable(generator):
        raise UserError(f"{spec} returned {type(generator).__name__}, not a generator callable (z -> images)")
    return generator


def import_function(spec: str) -> Callable:
    """``package.module:function`` -> the function (the working directory is importable too)."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise UserError(f"bad function spec {spec!r}; use 'package.module:function'")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"cannot import module {module_name!r} from generator spec {spec!r}: {err}; "
                        "check the name and that it is on PYTHONPATH") from err
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"module {module_name!r} has no function {func_name!r} (generator spec {spec!r})")
    return func


def wrap_nvidia(generator: Any, class_index: int | None = None) -> Any:
    """Wrap an NVIDIA-style ``G(z, c)`` module (it has ``z_dim`` and ``c_dim``) in ``SnapshotGenerator``."""
    if isinstance(generator, nn.Module) and hasattr(generator, "z_dim") and hasattr(generator, "c_dim") \
            and not isinstance(generator, SnapshotGenerator):
        return SnapshotGenerator(generator, class_index)
    if class_index is not None and num_classes(generator) == 0:
        raise UserError("--class-index was given but the generator is not conditional (no c_dim > 0)")
    return generator


def load_generator(spec: str, device: str | torch.device | None = None, trust_pickle: bool = False,
                   class_index: int | None = None) -> Callable:
    """Load a generator from a file (``.ckpt``, release, TorchScript, trusted pickle) or ``module:function``.

    ``class_index``: the class a conditional NVIDIA-style generator (``c_dim > 0``) generates.
    """
    path = Path(spec).expanduser()
    if path.exists():
        generator = read_generator_file(path, trust_pickle)
        if path.suffix in _PICKLE_SUFFIXES or class_index is not None:
            generator = wrap_nvidia(generator, class_index)
    elif ":" in spec and not spec.endswith((".ckpt", ".pt", ".pth", ".pkl")):
        generator = _load_module_function(spec)
    else:
        raise UserError(f"generator file {spec!r} does not exist; pass a checkpoint path or 'module:function'")
    if device is not None and isinstance(generator, nn.Module):
        generator = generator.to(device)
    return generator
