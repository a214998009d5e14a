"""PrivacyBudgetMonitor and the StyleGAN2 integration: log epsilon, stop before the budget, resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from _fixtures_dp import DpTinyD, dp_batch
from gmia_defend.callbacks.privacy import PrivacyBudgetMonitor
from gmia_defend.errors import UserError
from gmia_defend.mitigations.dp import make_discriminator_private


def _tiny_world(batch_size: int = 8):
    from gmia_defend.data import IdentityDataModule
    from gmia_defend.models import StyleGAN2

    dm = IdentityDataModule(resolution=16, num_members=12, num_nonmembers=2, num_population_identities=0,
                            images_per_identity=6, references_per_identity=2, batch_size=batch_size)
    pl.seed_everything(0)
    model = StyleGAN2(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8,
                      dp_compatible=True, r1_interval=2, sample_every_n_batches=0, sample_grid=2)
    return dm, model


def _trainer(root, callbacks, max_steps: int = 1000) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      accelerator="cpu", num_sanity_val_steps=0)


def test_stylegan2_identity_dp_stops_at_budget(tmp_path) -> None:
    dm, model = _tiny_world()
    pd = make_discriminator_private(model, noise_multiplier=1.2, target_epsilon=4.0, datamodule=dm, unit="identity",
                                    max_images_per_identity=2, seed=0)
    assert model.private_d is pd and pd.num_units == 12
    import pickle

    pickle.loads(pickle.dumps((model, dm)))  # still picklable (spawned workers, deep copies)
    assert pd.r1_gamma == model.hparams.r1_gamma and pd.r1_interval == 2  # R1 taken over, per sample
    budget = pd.budget_steps
    assert 2 <= budget <= 20
    monitor = PrivacyBudgetMonitor()

    class Auditor(pl.Callback):  # runs before the monitor, like a leakage audit listed first
        seen: list = []

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.seen.append((float(trainer.callback_metrics["privacy/epsilon"]), pl_module.private_d.epsilon))

    auditor = Auditor()
    trainer = _trainer(tmp_path, [auditor, monitor])
    trainer.fit(model, datamodule=dm)
    assert len(auditor.seen) == budget and all(a == pytest.approx(b) for a, b in auditor.seen)  # never stale
    assert int(model.batches_seen) == budget == pd.steps  # stopped before the step that would exceed
    assert pd.epsilon <= 4.0 < pd.epsilon_after(1)
    assert monitor.stopping_reason == "privacy_budget" and "epsilon=" in monitor.stopping_reason_message
    assert float(trainer.callback_metrics["privacy/epsilon"]) == pytest.approx(pd.epsilon, rel=1e-6)
    record = json.loads((tmp_path / "privacy.json").read_text())
    assert record["unit"] == "identity" and record["steps"] == budget
    assert record["epsilon"] == pytest.approx(pd.epsilon) and record["delta"] == pytest.approx(1 / 120)
    assert monitor.summary()["noise_multiplier"] == 1.2 and monitor.unit == "identity"
    assert all(p.grad is None for p in model.D.parameters())


def test_stylegan2_with_minibatch_std_is_refused() -> None:
    from gmia_defend.models import StyleGAN2

    model = StyleGAN2(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8,
                      dp_compatible=False, sample_grid=2)
    with pytest.raises(UserError, match="dp_compatible=True"):
        make_discriminator_private(model, noise_multiplier=1.0, batch_size=8, dataset_size=100)


def test_resume_continues_the_budget(tmp_path) -> None:
    dm, model = _tiny_world()
    pd = make_discriminator_private(model, noise_multiplier=1.0, datamodule=dm, seed=0)
    trainer = _trainer(tmp_path, [PrivacyBudgetMonitor()], max_steps=6)  # 3 batches (2 optimizer steps each)
    trainer.fit(model, datamodule=dm)
    assert pd.steps == 3
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    eps3 = pd.epsilon

    dm2, model2 = _tiny_world()  # DP set up by the callback, as from a LightningCLI YAML
    monitor2 = PrivacyBudgetMonitor(make_private={"noise_multiplier": 1.0, "seed": 0})
    _trainer(tmp_path, [monitor2], max_steps=10).fit(model2, datamodule=dm2, ckpt_path=ckpt)
    pd2 = model2.private_d
    assert pd2 is monitor2.private_d and pd2.unit == "image" and pd2.num_units == pd.num_units
    assert pd2.steps == 5 and monitor2.steps == 5
    assert pd2.epsilon > eps3
    assert pd2.epsilon == pytest.approx(pd.epsilon_after(2), rel=1e-9)


def _stub_module():
    logged = {}
    return SimpleNamespace(log=lambda k, v, **kw: logged.__setitem__(k, v), logged=logged)


def test_monitor_tighter_target_and_state(tmp_path) -> None:
    D = DpTinyD()
    pd = make_discriminator_private(D, noise_multiplier=1.0, target_epsilon=5.0, batch_size=4, dataset_size=40,
                                    optimizer=torch.optim.SGD(D.parameters(), lr=0.1), seed=0)
    loose = pd.budget_steps
    monitor = PrivacyBudgetMonitor(target_epsilon=2.0, private_d=pd)
    trainer = SimpleNamespace(should_stop=False)
    module = _stub_module()
    monitor.on_fit_start(trainer, module)
    assert pd.target_epsilon == 2.0 and pd.budget_steps < loose
    real, _, fake = dp_batch(4)
    while not trainer.should_stop:
        monitor.on_train_batch_start(trainer, module, None, 0)
        pd.step(None, real, None, fake)
        monitor.on_train_batch_end(trainer, module, None, None, 0)
    assert pd.steps == pd.budget_steps and monitor.epsilon <= 2.0 < pd.epsilon_after(1)
    assert module.logged["privacy/epsilon"] == pytest.approx(monitor.epsilon)
    assert set(monitor.summary()) >= {"epsilon", "delta", "unit", "steps", "noise_multiplier", "accountant"}
    state = monitor.state_dict()
    fresh = PrivacyBudgetMonitor()
    fresh.load_state_dict(state)
    D2 = DpTinyD()
    pd2 = make_discriminator_private(D2, noise_multiplier=1.0, batch_size=4, dataset_size=40,
                                     optimizer=torch.optim.SGD(D2.parameters(), lr=0.1), seed=0)
    fresh.on_fit_start(SimpleNamespace(should_stop=False), SimpleNamespace(private_d=pd2))
    assert pd2.steps == pd.steps and fresh.epsilon == pytest.approx(monitor.epsilon)


def test_monitor_and_step_refusals() -> None:
    with pytest.raises(UserError, match="make_discriminator_private"):
        PrivacyBudgetMonitor().on_fit_start(SimpleNamespace(should_stop=False), SimpleNamespace(private_d=None))
    D = DpTinyD()
    pd = make_discriminator_private(D, noise_multiplier=1.0, batch_size=4, dataset_size=40,
                                    optimizer=torch.optim.SGD(D.parameters(), lr=0.1))
    real, _, fake = dp_batch(4)
    with pytest.raises(UserError, match="privacy sampler"):
        pd.step(SimpleNamespace(_trainer=SimpleNamespace(precision="32-true")), real, None, fake)
    pd.batch_sampler()
    with pytest.raises(UserError, match="float16"):
        pd.step(SimpleNamespace(_trainer=SimpleNamespace(precision="16-mixed")), real, None, fake)


def test_prv_logging_never_under_reports() -> None:
    D = DpTinyD()
    pd = make_discriminator_private(D, noise_multiplier=1.0, batch_size=4, dataset_size=40, accountant="prv",
                                    optimizer=torch.optim.SGD(D.parameters(), lr=0.1), seed=0)
    monitor = PrivacyBudgetMonitor(private_d=pd, log_every_n_steps=4)
    trainer, module = SimpleNamespace(should_stop=False), _stub_module()
    monitor.on_fit_start(trainer, module)
    real, _, fake = dp_batch(4)
    logged = []
    for _ in range(4):
        monitor.on_train_batch_start(trainer, module, None, 0)
        pd.step(None, real, None, fake)
        monitor.on_train_batch_end(trainer, module, None, None, 0)
        logged.append(module.logged["privacy/epsilon"])
    assert logged[0] == logged[3] == pytest.approx(pd.epsilon)  # block end, exact at step 4
    from gmia_defend.mitigations.accounting import epsilon

    at_step_1 = epsilon([(1.0, pd.sample_rate, 1)], pd.delta, "prv")
    assert logged[0] > at_step_1  # at step 1 the true value is lower: an upper bound was logged


# ---------------------------------------------------------------------------- per person (ULS / ELS)


class _Reader(pl.Callback):
    """Listed BEFORE the monitor: reads privacy/* at batch end, as a leakage audit would."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("privacy/")})


def test_image_level_run_reports_epsilon_per_person_too(tmp_path) -> None:
    from gmia_defend.mitigations.user_level import els_epsilon_history

    dm, model = _tiny_world()
    pd = make_discriminator_private(model, noise_multiplier=1.5, datamodule=dm, unit="image", seed=0)
    reader, monitor = _Reader(), PrivacyBudgetMonitor(log_every_n_steps=1)
    callbacks = [reader, monitor]
    trainer = _trainer(tmp_path, callbacks, max_steps=6)
    trainer.fit(model, datamodule=dm)
    assert [c for c in trainer.callbacks if c in callbacks] == callbacks  # order kept: no reordering
    labels = dm.train_dataset.labels
    k = int(torch.bincount(labels).max())
    people = int(torch.unique(labels).numel())
    expected = els_epsilon_history(pd.history, k, 1 / (10 * people))
    summary = monitor.summary()
    assert summary["scheme"] == "els" and summary["images_per_person_cap"] == k and summary["people"] == people
    assert summary["epsilon_person"] == pytest.approx(expected) and expected > pd.epsilon
    assert "per image" in summary["epsilon_meaning"] and "per person" in summary["epsilon_meaning"]
    assert summary["epsilon_valid"] is True
    assert reader.seen[-1]["privacy/epsilon_person"] == pytest.approx(expected, rel=1e-6)  # fresh at batch end
    assert reader.seen[0]["privacy/epsilon_person"] < reader.seen[-1]["privacy/epsilon_person"]
    assert json.loads((tmp_path / "privacy.json").read_text())["epsilon_person"] == pytest.approx(expected)


def test_uls_counts_d_steps_and_keeps_nothing_private(tmp_path) -> None:
    dm, model = _tiny_world()
    model.hparams.d_steps_per_g_step = 2  # one D step per batch, a G step every second batch
    pd = make_discriminator_private(model, noise_multiplier=1.2, datamodule=dm, unit="identity",
                                    max_images_per_identity=2, seed=0)
    reader, monitor = _Reader(), PrivacyBudgetMonitor()
    trainer = _trainer(tmp_path, [reader, monitor], max_steps=6)
    trainer.fit(model, datamodule=dm)
    batches = len(reader.seen)
    assert batches >= 3 and pd.steps == batches == model.d_steps
    assert monitor.epsilon_person == pytest.approx(pd.epsilon) and monitor.scheme == "uls"
    assert reader.seen[-1]["privacy/epsilon"] == pytest.approx(pd.epsilon)
    assert "per person" in monitor.summary()["epsilon_meaning"]
    # logs: only the guarantee (no batch sizes, no image counts)
    assert set(reader.seen[-1]) <= {"privacy/epsilon", "privacy/delta", "privacy/epsilon_person",
                                    "privacy/delta_person", "privacy/steps"}
    state = monitor.state_dict()
    assert set(state["private_d"]) <= {"steps", "history", "accountant", "unit", "delta"}
    path = tmp_path / "state.pt"
    torch.save(state, path)
    assert torch.load(path, weights_only=True)["private_d"]["steps"] == batches
    noisy = dict(state, private_d={**state["private_d"], "noise_rng": torch.zeros(3, dtype=torch.uint8)})
    fresh = PrivacyBudgetMonitor()
    fresh.load_state_dict(noisy)  # a noise state from an older checkpoint is dropped, not restored
    assert "noise_rng" not in fresh.state_dict()["private_d"]


def test_shuffled_sampling_is_not_reported_as_a_bound() -> None:
    import inspect

    D = DpTinyD()
    extra = ({"allow_shuffled_sampling": True}
             if "allow_shuffled_sampling" in inspect.signature(make_discriminator_private).parameters else {})
    pd = make_discriminator_private(D, noise_multiplier=1.0, batch_size=4, dataset_size=40, poisson_sampling=False,
                                    optimizer=torch.optim.SGD(D.parameters(), lr=0.1), seed=0, **extra)
    summary = PrivacyBudgetMonitor(private_d=pd).summary()
    assert summary["epsilon_valid"] is False and "Poisson" in summary["epsilon_note"]
    assert "NOT a valid bound" in summary["epsilon_meaning"]


def test_per_person_target_sets_the_noise_stops_and_refuses(tmp_path) -> None:
    dm, model = _tiny_world()
    monitor = PrivacyBudgetMonitor(target_epsilon_person=3.0,
                                   make_private={"unit": "identity", "steps": 5, "max_images_per_identity": 2})
    trainer = _trainer(tmp_path, [monitor], max_steps=40)
    trainer.fit(model, datamodule=dm)
    pd = model.private_d
    assert 4 <= pd.steps <= 6 and monitor.epsilon_person <= 3.0  # noise chosen for 5 steps, then stopped
    assert monitor.stopping_reason == "privacy_budget" and "epsilon_person" in monitor.stopping_reason_message
    dm2, model2 = _tiny_world()
    tiny = PrivacyBudgetMonitor(target_epsilon_person=0.01,
                                make_private={"unit": "identity", "steps": 500, "max_images_per_identity": 2})
    with pytest.raises(UserError, match=r"out of reach with 12 people and 500 steps.*at most \d+ steps|no number"):
        _trainer(tmp_path, [tiny], max_steps=40).fit(model2, datamodule=dm2)
