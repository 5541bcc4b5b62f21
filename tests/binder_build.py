"""The Binder environment of the Binder test, built as repo2docker builds it.

A clean virtual environment (no system site-packages) gets exactly ``pip install -r binder/requirements.txt``, run
from a copy of the repository made of its git-tracked and untracked-but-not-ignored files (so no .venv, build/ or
egg-info comes along, and the build cannot write into the checkout), then ``binder/postBuild``. The pip install takes
minutes, so ``start()`` only launches it (conftest does so when the session begins) and ``finish()`` waits for it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARK = "TRITONNB_TEST_RUN"  # every process of one notebook run carries this in its environment, with the run's id
PIP_TIMEOUT_S = 1200
FIND_TRITONNB = "importlib.util.find_spec('tritonnb').origin"


@dataclasses.dataclass
class Binder:
    """The built environment: the repository copy it was built from, the environment, and the session's HOME."""

    repo: pathlib.Path
    env: pathlib.Path
    home: pathlib.Path

    def session_environ(self, run_id: str) -> dict[str, str]:
        """A Binder session's environment: this environment's bin first, HOME and Jupyter's folders in tmp, nothing of
        the development environment (its .venv, PYTHONPATH, Jupyter or PyTriton settings), and the run's marker."""
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER", "IPYTHON", "PYTRITON", "TRITONNB", "XDG_"))
        }
        path = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and not inside(p, ROOT)]
        return {
            **inherited,
            "PATH": os.pathsep.join([str(self.env / "bin"), *path]),
            "HOME": str(self.home),
            "JUPYTER_CONFIG_DIR": str(self.home / ".jupyter"),
            MARK: run_id,
        }


class BinderBuild:
    """One build: ``start()`` copies the repository, makes the venv and launches pip; ``finish()`` waits for pip, runs
    postBuild and returns the environment; ``remove()`` deletes it (about 1.5 GB)."""

    def __init__(self, base: pathlib.Path) -> None:
        self.binder = Binder(repo=base / "repo", env=base / "env", home=base / "home")
        self.pip_log = base / "pip.log"
        self._pip: subprocess.Popen | None = None
        self._started = 0.0
        self._times: dict[str, float] = {}
        self._finished: Binder | None = None

    def start(self) -> BinderBuild:
        """Everything up to the pip install, which goes on in the background."""
        self._started = time.perf_counter()
        built = self.binder
        built.home.mkdir(parents=True)
        _copy_repository(built.repo)
        _run("python -m venv", [sys.executable, "-m", "venv", str(built.env)])  # no --system-site-packages
        self._times["copy and venv"] = time.perf_counter() - self._started
        # exactly what repo2docker runs, from the repository root; pip keeps this machine's HOME (its configuration
        # says where the local CPU torch wheel is); nothing else of the development environment leaks in
        pip_environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        pip_environ["PATH"] = os.pathsep.join([str(built.env / "bin"), os.environ.get("PATH", os.defpath)])
        with self.pip_log.open("w") as log:
            self._pip = subprocess.Popen(
                [str(built.env / "bin" / "python"), "-m", "pip", "install", "-r", "binder/requirements.txt"],
                cwd=built.repo,
                env=pip_environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def finish(self) -> Binder:
        """Wait for pip, then run postBuild and check that tritonnb is the installed package."""
        if self._finished is not None:
            return self._finished
        runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
        here = f"python-{sys.version_info.major}.{sys.version_info.minor}"
        if runtime != here:
            pytest.fail(f"binder/runtime.txt asks for {runtime}; this test builds with {here} ({sys.executable})")
        assert self._pip is not None, "start() first"
        waited = time.perf_counter()
        try:
            code = self._pip.wait(timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._pip.kill()
            pytest.fail(f"pip install -r binder/requirements.txt took over {PIP_TIMEOUT_S} s")
        if code != 0:
            output = self.pip_log.read_text()[-5000:]
            pytest.fail(f"pip install -r binder/requirements.txt failed (exit {code}):\n{output}")
        self._times["pip install"] = time.perf_counter() - self._started - sum(self._times.values())
        built = self.binder
        environ = built.session_environ("")
        postbuild = _run("binder/postBuild", [str(built.repo / "binder" / "postBuild")], cwd=built.repo, env=environ)
        self._times["postBuild"] = time.perf_counter() - self._started - sum(self._times.values())
        print(
            f"\nBinder environment built in {time.perf_counter() - self._started:.1f} s, in the background while "
            f"other tests ran; waited {time.perf_counter() - waited:.1f} s for it here ("
            + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in self._times.items())
            + ")\n"
            + postbuild.strip()
        )
        found = _run(  # tritonnb is the installed package (not the copy's source folder, not an editable install)
            "import tritonnb",
            [str(built.env / "bin" / "python"), "-c", f"import importlib.util; print({FIND_TRITONNB})"],
            cwd=built.home,
            env=environ,
        ).strip()
        assert inside(found, built.env), found
        self._finished = built
        return built

    def remove(self) -> None:
        """Stop pip if it still runs, and delete the environment and the copy."""
        if self._pip is not None and self._pip.poll() is None:
            self._pip.kill()
            self._pip.wait()
        shutil.rmtree(self.binder.env, ignore_errors=True)
        shutil.rmtree(self.binder.repo, ignore_errors=True)


def inside(path: str, folder: pathlib.Path) -> bool:
    """Whether ``path`` lies in ``folder`` (after resolving links)."""
    return pathlib.Path(path).resolve().is_relative_to(folder)


def _run(step: str, command: list[str], **kwargs) -> str:
    """Run a build step; fail with the end of its output if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{step} failed (exit {done.returncode}):\n{output[-5000:]}")
    return output


def _copy_repository(target: pathlib.Path) -> None:
    """The files git would commit (tracked, and untracked ones it does not ignore), as they are in the work tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split(b"\0")):
        source = ROOT / os.fsdecode(name)
        if not source.is_file() and not source.is_symlink():
            continue  # deleted in the work tree
        destination = target / os.fsdecode(name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination, follow_symlinks=False)  # keeps postBuild's and start's executable bit
