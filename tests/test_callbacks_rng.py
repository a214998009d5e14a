"""Auditing never changes training: with or without the callbacks (or an Auditor between steps), a plain
DCGAN (BatchNorm in G, manual optimisation, latents and data order from the global RNG) ends bit for bit
the same, and every global random state ends the same too."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from _fixtures_callbacks import cb_monitor_kwargs, cb_trainer
from dcgan_module import DCDiscriminator, DCGAN, DCGenerator
from torch.utils.data import DataLoader, TensorDataset

from gmia_defend.callbacks import IdentityLeakageMonitor, LeakageEarlyStopping, ReleaseCheckpointSelector
from gmia_defend.rng import rng_fingerprint

BATCHES = 90


@pytest.fixture()
def synthetic_spec(monkeypatch):
    """``"synthetic"`` builds a real TrainedEmbedder (its layers draw initial weights from the global RNG,
    as loading saved weights does) without training one for a minute."""
    import gmia_defend.embedders.trained as trained

    monkeypatch.setattr(trained, "train_identity_embedder",
                        lambda **kw: trained.TrainedEmbedder(input_size=16, dim=16, width=4).eval())
    return "synthetic"


def _tensors(model, trainer=None) -> dict:
    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    if trainer is not None:
        for i, opt in enumerate(trainer.optimizers):
            for pid, state in opt.state_dict()["state"].items():
                out.update({f"opt{i}.{pid}.{k}": v.clone() for k, v in state.items() if torch.is_tensor(v)})
    return out


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


def _fit(world, root, make_callbacks):
    pl.seed_everything(0)
    callbacks = make_callbacks()  # constructed after seeding, as a script would: construction must not draw either
    model = DCGAN(global_latents=True)  # a new user's DCGAN: BatchNorm, torch.randn latents
    loader = DataLoader(TensorDataset(world.train_images, world.train_labels), batch_size=16, shuffle=True,
                        drop_last=True)
    trainer = cb_trainer(root, callbacks, max_steps=2 * BATCHES)
    trainer.fit(model, loader)
    return _tensors(model, trainer), rng_fingerprint(), callbacks


def test_three_callbacks_leave_training_bit_identical(cb_world, tmp_path, synthetic_spec):
    plain, rng_plain, _ = _fit(cb_world, tmp_path / "plain", list)

    def three():
        monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, synthetic_spec, every_n_steps=30,
                                                             audit_at_start=True))
        return [monitor, LeakageEarlyStopping(budget=0.999), ReleaseCheckpointSelector(budget=0.999)]

    audited, rng_audited, (monitor, _, _) = _fit(cb_world, tmp_path / "audited", three)
    assert [r.kimg for r in monitor.history] == [0.0, 0.48, 0.96, 1.44] and all(r.ok for r in monitor.history)
    _assert_identical(plain, audited)
    assert rng_plain == rng_audited


def test_auditor_between_steps_of_a_plain_loop_leaves_it_bit_identical(cb_world, synthetic_spec):
    from gmia_defend.audit import Auditor

    def loop(audit_every: int | None):
        torch.manual_seed(0)
        G, D = DCGenerator(), DCDiscriminator()
        opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.99))
        opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.99))
        auditor, records = None, []
        for step in range(BATCHES):
            real = cb_world.train_images[torch.randint(len(cb_world.train_images), (16,))]
            fake = G(torch.randn(16, G.z_dim))
            d_loss = (torch.nn.functional.softplus(D(fake.detach())).mean()
                      + torch.nn.functional.softplus(-D(real)).mean())
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = torch.nn.functional.softplus(-D(fake)).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            if audit_every and (step + 1) % audit_every == 0:
                if auditor is None:  # built mid-training, from a spec, as a watcher would
                    auditor = Auditor(synthetic_spec, cb_world.audit, num_samples=128, batch_size=64,
                                      real_images=cb_world.train_images, attack_options={"n_bootstrap": 50})
                records.append(auditor.audit(G, kimg=(step + 1) * 16 / 1000))
        assert G.training  # the audit put the generator back in training mode
        return {**_tensors(G), **{f"D.{k}": v for k, v in _tensors(D).items()}}, rng_fingerprint(), records

    plain, rng_plain, _ = loop(None)
    audited, rng_audited, records = loop(30)
    assert len(records) == 3 and all(r.ok for r in records)
    _assert_identical(plain, audited)
    assert rng_plain == rng_audited


class _OwnKimg(DCGAN):
    """A module that reports its own kimg (as StyleGAN2 does; under DP it counts nominal batches)."""

    @property
    def kimg(self) -> float:
        return self.global_step // 2 * 16 / 1000


def test_monitor_keeps_no_realised_batch_sizes_when_the_module_counts_kimg(cb_world, tmp_path):
    from _fixtures_callbacks import CbTinyEmbedder

    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), every_n_steps=4, fid=False))
    # ragged batches, as Poisson sampling gives: their sizes must not be summed into any state or log
    loader = DataLoader(TensorDataset(cb_world.train_images, cb_world.train_labels), batch_size=13, drop_last=False)
    cb_trainer(tmp_path, [monitor], max_steps=12).fit(_OwnKimg(), loader)
    state = monitor.state_dict()
    assert "images" not in state and monitor._images == 0
    assert [r.kimg for r in monitor.history] == [0.064, 0.096]
    assert all("images" not in r.to_json() for r in monitor.history)


class _RaggedSampler:
    """Batches of varying size around an expected 10, as Poisson sampling gives."""

    expected_batch_size = 10

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        sizes, start = [7, 13, 9, 12, 10, 6, 14, 8], 0
        for size in sizes:
            yield list(range(start, start + size))
            start += size

    def __len__(self) -> int:
        return 8


class _PrivacyStandIn(pl.Callback):
    emits_privacy_summary = True

    def summary(self):
        return {}


def test_under_dp_the_monitor_counts_nominal_not_realised_batch_sizes(cb_world, tmp_path):
    from _fixtures_callbacks import CbTinyEmbedder

    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), every_n_steps=4, fid=False))
    data = TensorDataset(cb_world.train_images, cb_world.train_labels)
    loader = DataLoader(data, batch_sampler=_RaggedSampler(len(data)))
    cb_trainer(tmp_path, [_PrivacyStandIn(), monitor], max_steps=16).fit(DCGAN(), loader)
    assert monitor.state_dict()["images"] == 80.0  # 8 batches x the expected 10, not the realised 79
    assert [r.kimg for r in monitor.history] == [0.04, 0.08]  # 4 x 10, not 7+13+9+12
