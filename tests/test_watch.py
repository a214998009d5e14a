"""``gmia-defend watch``: follows a fake NVIDIA-style trainer, resumes without duplicates, survives bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gmia_defend.cli import main
from nvidia_like.networks import FlatGenerator
from nvidia_like.snapshot import append_fid, snapshot_name, write_snapshot, write_state_dict

TESTS = Path(__file__).parent
FAST = ["--embedder", "pixels:16", "--num-samples", "96", "--batch-size", "48", "--n-bootstrap", "30",
        "--device", "cpu", "--no-progress", "--no-figures", "--settle", "0.4", "--poll", "0.1"]


@pytest.fixture(scope="module")
def watch_split(tmp_path_factory):
    from gmia_defend.data import IdentitySplit, SyntheticFaces

    faces = SyntheticFaces(num_identities=36, images_per_identity=5, resolution=16, seed=0)
    split = IdentitySplit.create(faces, num_members=12, num_nonmembers=16, references_per_identity=2, seed=0)
    return split.save(tmp_path_factory.mktemp("watch_split") / "split.json")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "audits.jsonl").read_text().splitlines() if line.strip()]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), env_path()]), OMP_NUM_THREADS="1")
    return env


def env_path() -> str:
    return os.environ.get("PYTHONPATH", "")


def test_watch_follows_a_fake_trainer_and_resumes(watch_split, tmp_path, capsys):
    run = tmp_path / "run"
    kimgs = [0, 40, 80, 120]
    run.mkdir()
    trainer = subprocess.Popen([sys.executable, "-m", "nvidia_like.fake_trainer", str(run), ",".join(map(str, kimgs)),
                                "--pause", "0.5", "--chunk-pause", "0.15", "--corrupt"], env=_env(), cwd=tmp_path)
    deadline = time.time() + 60  # the trainer process needs a few seconds to import torch
    while time.time() < deadline and not (run / snapshot_name(0)).exists():
        time.sleep(0.05)
    try:
        rc = main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--idle-timeout", "4",
                   "--quality-wait", "2", *FAST])
    finally:
        trainer.wait(timeout=60)
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert trainer.returncode == 0 and (run / "done").is_file()
    records = _records(run)
    assert [r["checkpoint"] for r in records] == [snapshot_name(k) for k in kimgs]  # once each, in kimg order
    assert [r["kimg"] for r in records] == kimgs and all(not r.get("error") for r in records)
    # the FID the loop logged is the quality metric of each snapshot
    assert [r["metrics"]["quality/fid"] for r in records] == [pytest.approx(100 - k / 10) for k in kimgs]
    assert "skipping network-snapshot-999999.pkl for now, will retry once" in out
    assert "skipping network-snapshot-999999.pkl for good" in out
    release = json.loads((run / "release.json").read_text())
    assert {c["kimg"] for c in release["candidates"]} == set(kimgs)

    # restarted: nothing is audited twice, and a new snapshot is picked up
    write_snapshot(run, 160, seed=160)
    assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", *FAST]) == 0
    records = _records(run)
    assert [r["kimg"] for r in records] == kimgs + [160]
    assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", *FAST]) == 0
    assert len(_records(run)) == 5


def test_interrupt_during_an_append_finishes_the_line_then_exits(watch_split, tmp_path, capsys, monkeypatch):
    from gmia_defend.audit.log import AuditLog

    run = tmp_path / "run"
    for k in (0, 20, 40, 60):
        write_snapshot(run, k, seed=k)
    real_append, calls = AuditLog.append, []

    def append_interrupted(self, record, result=None):
        calls.append(record.kimg)
        if len(calls) == 2:  # Ctrl-C arrives while the second line is being written
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        return real_append(self, record, result)

    monkeypatch.setattr(AuditLog, "append", append_interrupted)
    assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", *FAST]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out
    text = (run / "audits.jsonl").read_text()
    assert text.endswith("\n") and [json.loads(line)["kimg"] for line in text.splitlines()] == [0, 20]
    monkeypatch.setattr(AuditLog, "append", real_append)
    assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", *FAST]) == 0
    assert [r["kimg"] for r in _records(run)] == [0, 20, 40, 60]


def test_torn_last_line_is_reported_and_not_glued(watch_split, tmp_path, capsys):
    run = tmp_path / "run"
    write_snapshot(run, 0)
    assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", *FAST]) == 0
    with open(run / "audits.jsonl", "a") as fh:
        fh.write('{"kimg": 20.0, "metrics": {"leakage/au')
    write_snapshot(run, 40, seed=4)
    with pytest.warns(UserWarning, match="line 2 is its last line, torn"):
        assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", *FAST]) == 0
    lines = (run / "audits.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["kimg"] == 40


def test_empty_folder_says_what_it_looked_for(watch_split, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["watch", str(tmp_path / "run"), "--audit", str(watch_split), "--once", *FAST]) == 2
    err = capsys.readouterr().err
    assert "no snapshots in" in err and "'network-snapshot-*.pkl', '**/*.ckpt'" in err and "--pattern" in err
    assert len(err.strip().splitlines()) == 1


def test_pickles_need_trust_and_bad_output_is_one_line(watch_split, tmp_path, capsys):
    run = tmp_path / "run"
    write_snapshot(run, 0, generator_cls=FlatGenerator)
    write_snapshot(run, 40)
    assert main(["watch", str(run), "--audit", str(watch_split), "--once", *FAST]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", *FAST]) == 0
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if "network-snapshot-000000.pkl" in line]
    assert len(warning) == 1 and "shape (48, 48)" in warning[0], warning  # batch 48 of flat 48-vectors
    records = _records(run)
    assert records[0]["error"] and not records[1].get("error")


def test_conditional_snapshots_per_class_and_named_class(watch_split, tmp_path, capsys):
    run = tmp_path / "run"
    write_snapshot(run, 0, c_dim=2)
    append_fid(run, 0, 50.0)
    assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", *FAST]) == 2
    assert "--class-index" in capsys.readouterr().err
    assert main(["watch", str(run), "--audit", str(watch_split), "--trust-pickle", "--once", "--class-index", "all",
                 *FAST]) == 0
    (record,) = _records(run)
    per_class = [_records(run / f"class-{k}")[0] for k in (0, 1)]
    assert record["class_index"] == "all" and set(record["classes"]) == {"0", "1"}
    assert record["metrics"]["leakage/auc"] == max(r["metrics"]["leakage/auc"] for r in per_class)
    assert [r["class_index"] for r in per_class] == [0, 1]
    other = tmp_path / "one"
    write_snapshot(other, 0, c_dim=2)
    assert main(["watch", str(other), "--audit", str(watch_split), "--trust-pickle", "--once", "--class-index", "1",
                 *FAST]) == 0
    assert _records(other)[0]["class_index"] == 1


def test_generator_factory_and_kimg_in_names(watch_split, tmp_path, capsys):
    run = tmp_path / "run"
    for k in (2.5, 0.5, 1.5):
        write_state_dict(run / "weights", k, seed=int(k * 10))
    with_figures = [a for a in FAST if a != "--no-figures"]
    assert main(["watch", str(run), "--audit", str(watch_split), "--once", "--pattern", "weights/*.pt",
                 "--generator-factory", "nvidia_like.snapshot:load_state_dict", *with_figures]) == 0
    assert (run / "report" / "leakage_vs_kimg.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "release.json").read_text())["candidates"][-1]["kimg"] == 2.5
    records = _records(run)
    assert [r["kimg"] for r in records] == [0.5, 1.5, 2.5]
    assert records[0]["checkpoint"] == "weights/gen-kimg=0.5.pt"
    assert "quality/fd_pixels" in records[0]["metrics"]  # nothing logged: the Fréchet distance is computed


def test_lightning_checkpoints_take_their_own_kimg_and_log_to_wandb(watch_split, tmp_path, capsys, monkeypatch):
    import pytorch_lightning as pl
    import torch

    from gmia_defend.models import StyleGAN2

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for step, images in ((20, 1500), (10, 700)):
        with torch.random.fork_rng():
            torch.manual_seed(step)
            model = StyleGAN2(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8)
        model.images_seen.fill_(images)
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path)
        trainer.strategy.connect(model)
        trainer.save_checkpoint(run / "checkpoints" / f"step={step:06d}.ckpt")
    (run / "checkpoints" / "last.ckpt").write_bytes((run / "checkpoints" / "step=000020.ckpt").read_bytes())
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["watch", str(run), "--audit", str(watch_split), "--once", "--wandb-project", "watch-test",
                     *FAST]) == 0
    assert not [w for w in caught if "W&B" in str(w.message)], [str(w.message) for w in caught]
    records = _records(run)
    assert [(r["checkpoint"], r["kimg"]) for r in records] == [("checkpoints/step=000010.ckpt", 0.7),
                                                               ("checkpoints/step=000020.ckpt", 1.5)]
    assert list((run / "wandb").glob("offline-run-*")) and (run / "watch_wandb_id").is_file()


def test_logged_quality_from_nvidia_lines_and_named_columns(tmp_path):
    from gmia_defend.watch.logged_quality import LoggedQuality

    run = tmp_path / "run"
    run.mkdir()
    assert not LoggedQuality(run).expects_values and LoggedQuality(run).lookup(snapshot_name(40), 40) is None
    append_fid(run, 40, 12.5)
    with open(run / "metric-fid50k_full.jsonl", "a") as fh:
        fh.write('{"results": {"fid50k_full": 9')  # the loop is writing this line right now
    q = LoggedQuality(run)
    assert q.expects_values and q.lookup(snapshot_name(40), 40.0) == 12.5 and q.key == "quality/fid"
    assert q.lookup(snapshot_name(80), 80.0) is None
    (run / "log.csv").write_text("kimg,fid,is\n0.5,80.0,1.1\n1.0,,1.2\n1.5,60.0,1.3\n")
    q = LoggedQuality(run, "log.csv", "fid")
    assert (q.lookup("a.ckpt", 0.5), q.lookup("b.ckpt", 1.0), q.lookup("c.ckpt", 1.5)) == (80.0, None, 60.0)
    (run / "log.jsonl").write_text('{"checkpoint": "ckpts/g-1.pt", "kid": 0.02}\n')
    q = LoggedQuality(run, run / "log.jsonl", "kid")
    assert q.lookup("ckpts/g-1.pt", None) == 0.02 and q.key == "quality/kid"
    with pytest.raises(Exception, match="--quality-column"):
        LoggedQuality(run, "log.csv")
