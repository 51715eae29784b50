"""The wheel as a user gets it: built from the checkout, installed without `-e` into a fresh venv, run elsewhere.

An editable install reads `conf/`, the prompts and the assets in place, so it cannot show what the wheel
forgot. Here the package is built from a copy of the checkout (the checkout's own `build/` and `dist/`
stay untouched), installed into a new venv whose only view of the dependencies is the running
interpreter's site-packages (a `.pth` line, no network), and run from a directory outside any checkout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _source_files() -> list[str]:
    """What a build sees: tracked files plus untracked ones git does not ignore (a new prompt not yet added)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return sorted({f for f in out.split("\0") if f and os.path.lexists(ROOT / f)})


def _copy_checkout(dest: Path) -> Path:
    for rel in _source_files():
        src, dst = ROOT / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():                 # conf/sweep -> ../sweeps: the build follows it
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment minus everything that would point Python or the tool back at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "OYSTER_EXP_OUTPUTS", "OYSTER_EXP_DATA", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _check(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the wheel, the fresh venv's bin dir, an empty directory outside the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    src = _copy_checkout(base / "src")
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
            "--no-cache-dir", "-q", "-w", str(base / "dist"), str(src)], cwd=base)
    (wheel,) = (base / "dist").glob("oyster_exp-*.whl")

    venv = base / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    py = venv / "bin" / "python"
    _check([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
            str(wheel)], cwd=base)
    # the dependencies come from the running interpreter's site-packages: a plain path line, so that
    # directory's own .pth files (among them the editable install of the checkout) are not run
    purelib = _check([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base)
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    assert deps, sys.path
    Path(purelib.stdout.strip(), "shared-deps.pth").write_text("\n".join(deps) + "\n")

    outside = base / "elsewhere"
    outside.mkdir()
    return wheel, venv / "bin", outside


def test_wheel_ships_configs_prompts_and_assets(installed: tuple[Path, Path, Path]) -> None:
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    files = _source_files()
    data = [f for f in files if f.startswith("oyster_exp/") and not f.endswith(".py")]
    assert data, "no package data found in the checkout"
    missing = [f for f in data if f not in names]
    conf = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "conf").rglob("*")
                  if p.is_file() and not p.name.endswith(".pyc"))
    missing += [f"oyster_exp/{f}" for f in conf if f"oyster_exp/{f}" not in names]
    assert not missing, f"files the wheel lacks: {missing}"
    # sweeps/ reaches the wheel through the conf/sweep link, as real files
    assert any(n.startswith("oyster_exp/conf/sweep/") and n.endswith(".yaml") for n in names)


def test_a_wheel_built_through_the_sdist_has_the_same_files(installed: tuple[Path, Path, Path],
                                                           tmp_path: Path) -> None:
    """`uv build` (and `python -m build`) builds the wheel from the sdist: the configs must travel in it."""
    wheel, _, _ = installed
    src = _copy_checkout(tmp_path / "src")
    _check([sys.executable, "-m", "uv", "build", "--offline", "--no-build-isolation", "--python", sys.executable,
            "-q", "-o", str(tmp_path / "dist"), str(src)], cwd=tmp_path)
    (via_sdist,) = (tmp_path / "dist").glob("oyster_exp-*.whl")
    direct = {n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("oyster_exp-0")}
    assert {n for n in zipfile.ZipFile(via_sdist).namelist() if not n.startswith("oyster_exp-0")} == direct


def test_installed_package_is_the_wheel_not_the_checkout(installed: tuple[Path, Path, Path]) -> None:
    _, bin_dir, outside = installed
    p = _check([str(bin_dir / "python"), "-c", "import oyster_exp; print(oyster_exp.__file__)"], cwd=outside)
    assert Path(p.stdout.strip()).is_relative_to(bin_dir.parent), p.stdout


def test_cfg_job_from_outside_the_checkout(installed: tuple[Path, Path, Path]) -> None:
    _, bin_dir, outside = installed
    p = _check([str(bin_dir / "oyster-exp"), "--cfg", "job", "--resolve"], cwd=outside)
    assert "_target_: oyster_exp.llm.factory.local_client" in p.stdout
    # installed, the project root is the launch directory: runs go to ./outputs there
    assert f"root_dir: {outside}" in p.stdout and f"output_dir: {outside}/outputs" in p.stdout
    assert not any(outside.iterdir()), "--cfg job wrote into the launch directory"


def test_fast_run_and_report_from_outside_the_checkout(installed: tuple[Path, Path, Path]) -> None:
    _, bin_dir, outside = installed
    _check([str(bin_dir / "oyster-exp"), "model=tiny_random", "debug=fast", "llm=local", "print_config=false"],
           cwd=outside, timeout=600)
    (run,) = sorted((outside / "outputs" / "runs").glob("*/*"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["counters"]["llm_calls"] > 0
    assert (run / "report.md").read_text().startswith("# oyster-exp report")
    # not inside a checkout: the manifest says so instead of recording some other repository's state
    assert manifest["git"] == {"commit": None, "dirty": None}
    assert sorted(p.name for p in outside.iterdir()) == ["outputs"], "a run wrote into the launch directory"

    _check([str(bin_dir / "oyster-exp-report"), str(run)], cwd=outside)
    assert (run / "summary.md").read_text().startswith("# Sweep summary")
