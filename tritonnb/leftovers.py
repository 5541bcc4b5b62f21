"""What servers of processes that no longer run left behind (after a kill -9): folders and shared memory."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from tritonnb._pytriton import orphaned_shared_memory_prefixes, remove_shared_memory


def process_exists(pid: int) -> bool:
    """Whether a process with this id runs (someone else's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_folders(parent: pathlib.Path, prefix: str) -> list[pathlib.Path]:
    """Delete ``parent/<prefix><pid>-*`` folders whose process is gone."""
    removed = []
    for path in parent.glob(f"{prefix}*-*") if parent.is_dir() else ():
        pid = path.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_leftovers(home_parent: pathlib.Path, prefix: str) -> None:
    """Server folders (under ``home_parent`` and the temp folder) and shared memory of processes that are gone."""
    remove_stale_folders(home_parent, prefix)
    remove_stale_folders(pathlib.Path(tempfile.gettempdir()), prefix)
    for shm_prefix in orphaned_shared_memory_prefixes(process_exists):
        remove_shared_memory(shm_prefix)
