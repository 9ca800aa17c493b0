"""A wheel built from this tree carries its configs and runs outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "nas_cli", "conf"]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources and unpack it into a bare folder."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__", "conf")} if name == "nas_cli" else {}),
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (work / "dist").glob("nas_cli-*.whl")
    site = work / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``nas-cli`` from the unpacked wheel alone: -S keeps the editable checkout off the path."""
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), deps]), "COLUMNS": "200"}
    code = "import sys; from nas_cli.cli import main; sys.argv[0] = 'nas-cli'; main()"
    return subprocess.run(
        [sys.executable, "-S", "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_wheel_ships_the_configs_and_finds_them(installed_wheel, tmp_path):
    packaged = installed_wheel / "nas_cli" / "conf"
    assert (packaged / "train.yaml").is_file() and (packaged / "model" / "resnet18.yaml").is_file()
    assert (installed_wheel / "nas_cli" / "tools" / "imagenet" / "val_labels.csv.gz").is_file()
    out = run_installed(installed_wheel, tmp_path, "train", "--help")
    assert out.returncode == 0, out.stderr
    model_line = next(line for line in out.stdout.splitlines() if line.startswith("model: "))
    assert {"cnn", "mlp", "resnet18"} <= set(model_line[len("model: ") :].split(", "))
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "from nas_cli.hydra_bridge import config_dir; print(config_dir())"],
        env={**os.environ, "PYTHONPATH": f"{installed_wheel}{os.pathsep}{sysconfig.get_paths()['purelib']}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()) == packaged


@pytest.mark.slow
def test_wheel_trains_in_another_directory(installed_wheel, tmp_path):
    out = run_installed(installed_wheel, tmp_path, "train", *TINY, "trainer.epochs=1")
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert (run / "summary.json").is_file() and (run / "metrics.csv").is_file()


def test_source_checkout_reads_the_top_level_conf():
    from nas_cli.hydra_bridge import config_dir

    assert config_dir() == ROOT / "conf"
