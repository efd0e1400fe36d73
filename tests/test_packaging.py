"""The wheel ships the configs: ``jaxmoe/configs/*.yaml`` inside the package, and a bare
config name (``--config lm_tiny``) resolves from the installed package, wherever it runs."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from jaxmoe import config as config_lib
from jaxmoe.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


def test_package_data_names_every_config():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = sorted({p.name for pattern in package_data["jaxmoe"] for p in (ROOT / "jaxmoe").glob(pattern)})
    assert CONFIGS and shipped == CONFIGS


def test_bare_name_resolves_from_the_installed_location(tmp_path, monkeypatch):
    installed = tmp_path / "site" / "configs"
    installed.mkdir(parents=True)
    (installed / "mine.yaml").write_text((ROOT / "configs" / "lm_tiny.yaml").read_text())
    monkeypatch.setattr(config_lib, "SHIPPED_CONFIG_DIRS", (installed,))
    monkeypatch.chdir(tmp_path)
    assert load_config("mine") == load_config("mine.yaml") == load_config(str(installed / "mine.yaml"))
    (tmp_path / "child.yaml").write_text("base: mine\ntrain:\n  steps: 3\n")
    assert load_config("child.yaml").train.steps == 3
    with pytest.raises(ConfigError, match="'absent' does not exist"):
        load_config("absent")


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building a wheel needs setuptools")
def test_wheel_ships_the_configs(tmp_path):
    src = tmp_path / "src"  # a copy, so the build writes nothing into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("jaxmoe", "configs"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("jaxmoe-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
        names = z.namelist()
    assert sorted(n.split("/")[-1] for n in names if n.startswith("jaxmoe/configs/")) == CONFIGS
    # the unpacked wheel, run from a directory without configs/, loads a config by its name
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    code = ("import jaxmoe.config as c; cfg = c.load_config('lm_tiny'); "
            "print(c.shipped_config('lm_tiny').relative_to(c.Path(c.__file__).parent), cfg.model.family)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["configs/lm_tiny.yaml", "lm"]
