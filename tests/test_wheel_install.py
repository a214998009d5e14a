"""A regular (non-editable) install works: build the wheel, install it away from the source tree, run the CLI.

The wheel is installed with ``pip install --target`` into a temporary folder that goes first on
``PYTHONPATH``; the commands run from another directory, so the source checkout is not what gets
imported (checked through ``gmia_defend.__file__``). Dependencies come from the current environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: the build writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "gmia_defend", src / "gmia_defend", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w",
          str(tmp / "dist")], tmp, env)
    (wheel,) = (tmp / "dist").glob("gmia_defend-*.whl")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"), str(wheel)], tmp,
         env)
    work = tmp / "elsewhere"
    work.mkdir()
    run_env = dict(os.environ, PYTHONPATH=str(tmp / "site"), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    return tmp / "site", work, run_env


def test_the_installed_package_is_the_one_imported(installed):
    site, work, env = installed
    out = _run([sys.executable, "-c", "import gmia_defend; print(gmia_defend.__file__)"], work, env)
    assert Path(out.strip()).is_relative_to(site)
    assert (site / "gmia_defend" / "configs" / "demo.yaml").is_file()
    assert not (work / "configs").exists()


def test_configs_and_a_shortened_demo_run_from_the_wheel(installed):
    site, work, env = installed
    gmia = [sys.executable, str(site / "bin" / "gmia-defend")]
    listing = _run(gmia + ["configs"], work, env)
    assert "demo" in listing and str(site / "gmia_defend" / "configs" / "demo.yaml") in listing
    config = yaml.safe_load(_run(gmia + ["configs", "demo"], work, env))
    # the shipped demo, shrunk: fewer identities and images, a smaller model
    config["data"].update(num_members=8, member_images=12, num_nonmembers=12, num_population_identities=8,
                          images_per_identity=3, references_per_identity=2, resolution=16, batch_size=8)
    config["model"].update(z_dim=16, w_dim=16, channel_base=64, channel_max=16, sample_every_n_batches=1000)
    (work / "small.yaml").write_text(yaml.safe_dump(config))
    out = _run(gmia + ["demo", "--config", "small.yaml", "--out", "run", "--max-steps", "4", "--every-n-kimg", "0.02",
                       "--num-samples", "48", "--embedder", "pixels"], work, env)
    assert "demo finished" in out
    assert (work / "run" / "audits.jsonl").read_text().strip() and (work / "run" / "release.json").is_file()
