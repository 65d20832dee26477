"""The tiny guest image: where builds live and how to find a finished one.

A real cloud boots CirrOS, a few-MB image published as a kernel, a ramdisk and a
machine image (glance's aki/ari/ami trio). labkit makes its own equivalent,
"labkit-tiny", from Debian packages alone (`labkit image build`, in build.py): the
Debian cloud kernel, an initramfs with busybox, the virtio modules and dropbear, and
a blank machine image. The guest runs entirely from its initramfs; its /init
(init.sh beside this file) does what cloud-init does for CirrOS: DHCP, the metadata
service, ssh keys, user data.

This module stays light to import (the cloud imports it to find the image): it
only reads the cache. Building lives in build.py and is imported on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from labkit.cloud.guest.build import build_image as build_image

#: The last line the guest prints on its serial console once ssh is up.
READY_LINE = "labkit-tiny ready"
#: The prefix of every other line /init prints (the banner, and what failed).
CONSOLE_PREFIX = "labkit-tiny: "
#: The guest's /init, shipped as a data file of this package.
INIT_SCRIPT = Path(__file__).with_name("init.sh")
#: The file written last into a build folder: a folder without it is not complete.
MANIFEST = "manifest.json"
#: Names of the three files inside a build folder.
KERNEL_FILE, RAMDISK_FILE, DISK_FILE = "vmlinuz", "initrd.img", "disk.img"


class GuestBuildError(RuntimeError):
    """Building the guest image failed; the message says what to install or run."""


@dataclass(frozen=True)
class GuestImage:
    """One complete build of labkit-tiny in the cache."""

    kernel: Path  # the Debian cloud kernel (bzImage), glance's aki
    ramdisk: Path  # the gzipped newc initramfs the guest runs from, glance's ari
    disk: Path  # the machine image (a small blank raw disk), glance's ami
    kernel_version: str  # `uname -r` inside the guest, e.g. 6.1.0-56-cloud-amd64
    folder: Path  # cache/<key>/
    # What it was built from: packages and versions, sizes, sha256 of each file, when.
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The cache key: the folder's name (kernel version and a digest of the inputs)."""
        return self.folder.name

    def sizes(self) -> dict[str, int]:
        """Bytes of the kernel, the ramdisk and the disk."""
        return {"kernel": self.kernel.stat().st_size, "ramdisk": self.ramdisk.stat().st_size,
                "disk": self.disk.stat().st_size}


def cache_dir() -> Path:
    """`$LABKIT_CACHE/guest`, else `<the user's cache dir>/labkit/guest`."""
    env = os.environ.get("LABKIT_CACHE")
    if env:
        return Path(env).expanduser().resolve() / "guest"
    import platformdirs  # light, but only needed here

    return Path(platformdirs.user_cache_dir("labkit")) / "guest"


def init_script_sha256(path: Path = INIT_SCRIPT) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_build(folder: Path) -> GuestImage | None:
    """The build in `folder`, or None when it is not a complete build.

    Complete means: the manifest exists (it is written last, before the folder is
    renamed into place) and every file it lists is there with the size it records.
    Sizes, not hashes: this runs on every lookup and must stay fast.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        paths = {role: folder / files[role]["path"] for role in ("kernel", "ramdisk", "disk")}
        for role, path in paths.items():
            if path.stat().st_size != files[role]["size"]:
                return None
        return GuestImage(kernel=paths["kernel"], ramdisk=paths["ramdisk"], disk=paths["disk"],
                          kernel_version=manifest["kernel_version"], folder=folder,
                          manifest=manifest)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def complete_builds(cache: Path | None = None) -> list[GuestImage]:
    """Every complete build in the cache, newest first."""
    root = cache if cache is not None else cache_dir()
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name != "debs"]
    except OSError:
        return []
    builds = [b for b in map(load_build, folders) if b is not None]
    builds.sort(key=lambda b: (str(b.manifest.get("built_at", "")), b.folder.name), reverse=True)
    return builds


def built_image(cache: Path | None = None) -> GuestImage | None:
    """The newest complete build, or None: no apt, no building, just the cache.

    Builds made from this package's own init.sh are preferred over older ones, so a
    checkout whose init.sh changed does not boot a stale /init while a fresh build
    exists.
    """
    builds = complete_builds(cache)
    if not builds:
        return None
    try:
        current = init_script_sha256()
    except OSError:
        return builds[0]
    for build in builds:
        if build.manifest.get("key_inputs", {}).get("init_sha256") == current:
            return build
    return builds[0]


def __getattr__(name: str) -> Callable[..., GuestImage]:
    # build_image lives in build.py (subprocess, gzip, tempfile): imported on first use.
    if name == "build_image":
        from labkit.cloud.guest.build import build_image

        return build_image
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["READY_LINE", "CONSOLE_PREFIX", "GuestBuildError", "GuestImage", "build_image",
           "built_image", "cache_dir", "complete_builds", "load_build"]
