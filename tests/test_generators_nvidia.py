"""NVIDIA-style snapshot pickles, release files and TorchScript through ``load_generator``."""

from __future__ import annotations

import pickle
import sys
import textwrap

import pytest
import torch

from gmia_defend.attack.generator_loading import CorruptSnapshotError, SnapshotGenerator, read_generator_file
from gmia_defend.attack.generators import GeneratorAdapter, check_images, load_generator
from gmia_defend.errors import UserError
from gmia_defend.rng import rng_fingerprint
from nvidia_like.networks import FlatGenerator
from nvidia_like.snapshot import write_snapshot


def test_pickle_needs_trust(tmp_path):
    path = write_snapshot(tmp_path, 40)
    with pytest.raises(UserError, match="runs code.*--trust-pickle") as err:
        load_generator(str(path))
    assert "\n" not in str(err.value)


def test_trusted_snapshot_generates_images_deterministically(tmp_path):
    path = write_snapshot(tmp_path, 40, seed=3)
    g = load_generator(str(path), trust_pickle=True)
    assert isinstance(g, SnapshotGenerator) and g.z_dim == 16 and g.img_resolution == 16
    z = torch.randn(5, 16)
    before = rng_fingerprint()
    with torch.no_grad():
        a, b = g(z), g(z)
    assert rng_fingerprint() == before  # constant noise: nothing drawn from the global RNG
    assert torch.equal(a, b) and a.shape == (5, 3, 16, 16)
    check_images(GeneratorAdapter(g)(z), 5, (-1.0, 1.0))
    other = load_generator(str(write_snapshot(tmp_path / "o", 40, seed=4)), trust_pickle=True)
    with torch.no_grad():
        assert not torch.equal(other(z), a)


def test_conditional_snapshot_needs_a_class(tmp_path):
    path = write_snapshot(tmp_path, 40, c_dim=3)
    with pytest.raises(UserError, match=r"conditional \(c_dim=3\).*--class-index K with K in 0..2"):
        load_generator(str(path), trust_pickle=True)
    with pytest.raises(UserError, match="out of range"):
        load_generator(str(path), trust_pickle=True, class_index=3)
    z = torch.randn(4, 16)
    with torch.no_grad():
        imgs = [load_generator(str(path), trust_pickle=True, class_index=k)(z) for k in range(3)]
    assert imgs[0].shape == (4, 3, 16, 16)
    assert not torch.equal(imgs[0], imgs[1]) and not torch.equal(imgs[1], imgs[2])
    with pytest.raises(UserError, match="not conditional"):
        load_generator(str(write_snapshot(tmp_path / "u", 40)), trust_pickle=True, class_index=1)


def _pickle_from_hidden_package(tmp_path, monkeypatch, package: str):
    code = tmp_path / "code"
    (code / package).mkdir(parents=True)
    (code / package / "__init__.py").write_text("")
    (code / package / "nets.py").write_text(textwrap.dedent("""
        import torch
        class G(torch.nn.Module):
            z_dim, c_dim = 4, 0
            def forward(self, z, c):
                return torch.zeros(z.shape[0], 3, 8, 8)
    """))
    monkeypatch.syspath_prepend(str(code))
    module = __import__(f"{package}.nets", fromlist=["G"])
    path = tmp_path / "network-snapshot-000010.pkl"
    path.write_bytes(pickle.dumps({"G": module.G(), "D": None, "G_ema": module.G()}))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(code)])
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    return path, code


def test_missing_code_names_the_pythonpath(tmp_path, monkeypatch):
    path, code = _pickle_from_hidden_package(tmp_path, monkeypatch, "hidden_nets_pkg")
    with pytest.raises(UserError, match="needs the module 'hidden_nets_pkg'.*package 'hidden_nets_pkg' on "
                                        "PYTHONPATH") as err:
        load_generator(str(path), trust_pickle=True)
    assert "\n" not in str(err.value)
    monkeypatch.syspath_prepend(str(code))  # with the folder on the path it loads
    assert load_generator(str(path), trust_pickle=True).z_dim == 4


def test_missing_nvidia_code_names_their_repository(tmp_path, monkeypatch):
    path, _ = _pickle_from_hidden_package(tmp_path, monkeypatch, "torch_utils")
    with pytest.raises(UserError, match="NVIDIA's module 'torch_utils'.*PYTHONPATH=/path/to/stylegan2-ada-pytorch"):
        load_generator(str(path), trust_pickle=True)


def test_truncated_empty_and_foreign_pickles(tmp_path):
    full = write_snapshot(tmp_path, 40).read_bytes()
    cut = tmp_path / "network-snapshot-000080.pkl"
    cut.write_bytes(full[: len(full) // 3])
    with pytest.raises(CorruptSnapshotError, match="truncated or corrupt"):
        load_generator(str(cut), trust_pickle=True)
    empty = tmp_path / "network-snapshot-000120.pkl"
    empty.write_bytes(b"")
    with pytest.raises(CorruptSnapshotError, match="empty"):
        read_generator_file(empty, trust_pickle=True)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(UserError, match=r"keys \['weights'\].*G_ema"):
        load_generator(str(other), trust_pickle=True)


def test_flat_output_is_named_by_shape(tmp_path):
    g = load_generator(str(write_snapshot(tmp_path, 40, generator_cls=FlatGenerator)), trust_pickle=True)
    with pytest.raises(UserError, match=r"shape \(2, 48\)"):
        check_images(GeneratorAdapter(g)(torch.randn(2, 16)), 2, (-1.0, 1.0))


def test_torchscript_and_foreign_torch_files(tmp_path):
    from nvidia_like.networks import Generator

    g = SnapshotGenerator(Generator().eval())
    ts = tmp_path / "g.pt"
    torch.jit.trace(g, torch.randn(2, 16)).save(str(ts))
    assert load_generator(str(ts))(torch.zeros(1, 16)).shape == (1, 3, 16, 16)
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not a gmia-defend release"):
        load_generator(str(foreign))


def test_release_file_is_recognised(tmp_path):
    import gmia_defend

    save_release = getattr(gmia_defend, "save_release", None)
    if save_release is None:
        pytest.skip("gmia_defend.save_release is not in this tree yet")
    pytest.importorskip("gmia_defend.models")
    from gmia_defend.models import StyleGAN2

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = StyleGAN2(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8)
    z = torch.randn(2, 8)
    for name in ("release.ckpt", "release.pt"):
        path = save_release(tmp_path / name, model, generator_attr="G_ema")
        g = load_generator(str(path))
        with torch.no_grad():
            assert torch.allclose(GeneratorAdapter(g)(z), GeneratorAdapter(model.G_ema.eval())(z))


def test_truncated_checkpoint_and_release_are_corrupt_snapshots(tmp_path):
    blob_path = tmp_path / "full.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, blob_path)
    blob = blob_path.read_bytes()
    for name in ("step=000010.ckpt", "release.pt"):
        cut = tmp_path / name
        cut.write_bytes(blob[: len(blob) // 2])
        with pytest.raises(CorruptSnapshotError, match="truncated or corrupt"):
            read_generator_file(cut)
