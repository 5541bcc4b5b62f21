"""What servers of processes that no longer run left behind (after a kill -9): folders and shared memory.

Only what is provably ours is removed: each server folder carries an owner record (pid, pid namespace, the shared
memory prefixes its tritonserver used, the temporary copies of model files its stubs ran from). A folder is stale
when its owner ran in this pid namespace and is gone; a folder without a record, or from another namespace
(containers sharing a home or ``/dev/shm``), is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable

from tritonnb.triton._pytriton import is_model_copy, process_running, remove_shared_memory

__all__ = ["OWNER_FILE", "pid_namespace", "process_exists", "record_owner", "remove_leftovers", "remove_stale_folders"]

OWNER_FILE = "owner.json"


def process_exists(pid: int) -> bool:
    """Whether a process with this id runs (someone else's counts too; a zombie, dead but not yet reaped, not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process_running(pid)


def pid_namespace() -> str:
    """This process's pid namespace, e.g. ``pid:[4026531836]`` ("" where /proc does not say)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def record_owner(
    folder: pathlib.Path, shm_prefix: str | None = None, model_copies: Iterable[pathlib.Path] = ()
) -> None:
    """Mark ``folder`` as this process's (and add a shared-memory prefix its tritonserver uses, and the temporary
    folders Triton copied loaded models' files to)."""
    path = folder / OWNER_FILE
    owner = _read_owner(folder) or {"pid": os.getpid(), "pid_namespace": pid_namespace(), "shm_prefixes": []}
    if shm_prefix:
        owner["shm_prefixes"].append(shm_prefix)
    recorded = {copy for copy in owner.get("model_copies", []) if os.path.exists(copy)}  # still Triton's to remove
    copies = recorded | {str(p) for p in model_copies}
    owner["model_copies"] = sorted(copies)
    path.write_text(json.dumps(owner))


def _read_owner(folder: pathlib.Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads((folder / OWNER_FILE).read_text())
        if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
            return owner
    return None


def remove_stale_folders(parent: pathlib.Path, prefix: str) -> list[pathlib.Path]:
    """Delete ``parent/<prefix>*`` folders (and their shared memory) whose owner ran here and is gone."""
    removed = []
    namespace = pid_namespace()
    for path in parent.glob(f"{prefix}*") if parent.is_dir() else ():
        owner = _read_owner(path)
        if owner is None or owner.get("pid_namespace") != namespace or process_exists(owner["pid"]):
            continue
        for shm_prefix in owner.get("shm_prefixes", []):
            remove_shared_memory(shm_prefix)
        for copy in map(pathlib.Path, owner.get("model_copies", [])):
            if is_model_copy(copy):  # only what Triton names so
                shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_leftovers(home_parent: pathlib.Path, prefix: str) -> None:
    """Server folders (under ``home_parent`` and the temp folder) and shared memory of processes that are gone."""
    remove_stale_folders(home_parent, prefix)
    remove_stale_folders(pathlib.Path(tempfile.gettempdir()), prefix)
