"""The package as `pip install .` installs it (not editable): the configs travel inside it, and every command runs
from any folder (`python -m deeplab.train`, `.evaluate`, `.predict` besides the checkout's train.py & co). The whole
installed case, a fresh environment with a tiny train, evaluate and predict, is proved by .ci/installed.sh."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deeplab.cli.command_line import CONFIGS, config_folder

REPO = Path(__file__).resolve().parents[1]
# each command's module and the start of its --help page
COMMANDS = {"deeplab.train": "train.py:", "deeplab.evaluate": "evaluate.py:", "deeplab.predict": "predict.py:",
            **{m: f"python -m {m}:" for m in ("deeplab.export", "deeplab.bench", "deeplab.convert",
                                              "deeplab.data.check", "deeplab.data.annotations")}}


def test_the_wheel_lists_every_package_and_ships_the_configs_folder_as_package_data():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "deeplab").rglob("__init__.py")}
    assert set(setuptools["packages"]) == packages | {"deeplab.configs"}  # a new subpackage must be listed
    assert setuptools["package-dir"] == {"deeplab.configs": "configs"}  # one folder, not a copy
    assert setuptools["package-data"]["deeplab.configs"] == ["**/*.yaml"]
    assert not list((REPO / "configs").rglob("*.yml"))  # every config is a .yaml the glob takes


def test_the_configs_are_the_packages_own_when_installed_and_the_checkouts_otherwise(tmp_path):
    installed = tmp_path / "site-packages" / "deeplab"
    (installed / "configs").mkdir(parents=True)
    (tmp_path / "site-packages" / "configs").mkdir()  # another project's top-level configs/ beside it: not ours
    assert config_folder(installed) == installed / "configs"
    checkout = tmp_path / "checkout"
    (checkout / "deeplab").mkdir(parents=True)
    (checkout / "configs").mkdir()
    assert config_folder(checkout / "deeplab") == checkout / "configs"
    assert Path(CONFIGS) == REPO / "configs"  # this checkout: the configs users edit


@pytest.mark.slow  # builds the wheel and runs each command as a process
def test_the_built_wheel_runs_every_command_from_another_folder(tmp_path):
    """The wheel installed (without dependencies: this environment has them) into a folder first on sys.path, then
    every command's --help run from a folder with no configs/ in it."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("deeplab-*.whl")
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "deeplab" / "configs" / "train.yaml").is_file()
    assert (site / "deeplab" / "configs" / "hydra" / "help" / "train.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import deeplab.cli; print(deeplab.cli.CONFIGS)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip() == str(site / "deeplab" / "configs"), where.stderr[-3000:]
    for module, says in COMMANDS.items():
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith(says) and "Traceback" not in done.stderr, \
            f"{module}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert list(elsewhere.iterdir()) == []  # --help writes nothing
