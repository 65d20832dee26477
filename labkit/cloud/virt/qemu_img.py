"""The few qemu-img calls a cold migration needs, as nova's libvirt driver makes them.

nova keeps instance disks as qcow2 overlays on a base image in the host's cache
(imagecache.py). Moving one to another host copies the overlay only; the dest host
finds the same image in its own cache and points the overlay at it (an "unsafe"
rebase changes the pointer, not the data: the base is the same image). A bigger
flavor's root disk is grown with `qemu-img resize` (nova's disk.api.extend); nova
never shrinks a disk.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

GiB = 1024**3


class QemuImgError(RuntimeError):
    """qemu-img failed; the message carries its stderr."""


@dataclass(frozen=True)
class DiskInfo:
    """What `qemu-img info` says about a disk (nova's disk_info entry for it)."""

    path: str
    format: str
    virtual_size: int  # bytes the guest sees
    disk_size: int  # bytes the file takes on the host
    backing_file: str | None
    backing_format: str | None


async def _run(cmd: list[str]) -> str:
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
    if done.returncode:
        raise QemuImgError(f"{' '.join(cmd[:2])} failed: {done.stderr.strip()}")
    return done.stdout


async def info(path: Path | str) -> DiskInfo:
    """`qemu-img info` (-U: a running guest's lock does not matter for reading)."""
    data = json.loads(await _run(["qemu-img", "info", "--output=json", "-U", str(path)]))
    return DiskInfo(path=str(path), format=data.get("format", "raw"),
                    virtual_size=int(data.get("virtual-size", 0)),
                    disk_size=int(data.get("actual-size", 0)),
                    backing_file=data.get("full-backing-filename") or data.get(
                        "backing-filename"),
                    backing_format=data.get("backing-filename-format"))


async def rebase_unsafe(disk: Path | str, backing: Path | str, backing_format: str) -> list[str]:
    """Point the overlay at `backing` without touching its data (the same image, in
    another host's cache). Returns the command, for the trace."""
    cmd = ["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", backing_format, "-b",
           str(backing), str(disk)]
    await _run(cmd)
    return cmd


async def grow(disk: Path | str, size_gb: int) -> list[str]:
    """Grow the disk to `size_gb` GiB (the caller checks that it is bigger)."""
    cmd = ["qemu-img", "resize", "-f", "qcow2", str(disk), f"{size_gb}G"]
    await _run(cmd)
    return cmd
