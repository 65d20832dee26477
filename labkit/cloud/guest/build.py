"""Build labkit-tiny from Debian packages alone: `labkit image build`.

Where a real cloud's operator downloads CirrOS and uploads its kernel, ramdisk and
machine image to glance, labkit assembles the same trio here, with no root and no
network but Debian's package archive:

1. `apt-get download` the meta package linux-image-cloud-amd64 and the versioned
   kernel package it depends on (kept in cache/debs/ for reuse), `dpkg -x` it.
2. Kernel: its vmlinuz. The cloud kernel builds virtio as modules, so `depmod -b`
   on the unpacked tree gives their dependencies and load order.
3. Initramfs (newc cpio, gzip): busybox-static and its applet links, those
   modules, dropbear with every library `ldd` lists, a minimal /etc, /root/.ssh,
   and /init (init.sh beside this module).
4. Machine image: a 1 MiB raw file that says, in its first bytes, that the guest
   runs from its initramfs and that this disk is blank.

Builds go into a temporary folder in the cache and are renamed into
cache/<key>/ once complete, the manifest written last: a reader never sees half a
build. The key covers the kernel version, init.sh and the busybox and dropbear
versions, so a changed init.sh gets a new folder and the old one keeps working.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labkit.cloud.guest import (
    DISK_FILE,
    INIT_SCRIPT,
    KERNEL_FILE,
    MANIFEST,
    RAMDISK_FILE,
    GuestBuildError,
    GuestImage,
    cache_dir,
    complete_builds,
    init_script_sha256,
    load_build,
)

#: Bumped when the build's output changes for the same inputs (part of the cache key).
BUILD_FORMAT = 1
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE, BUSYBOX = "busybox-static", Path("/bin/busybox")
DROPBEAR_PACKAGE, DROPBEAR = "dropbear-bin", Path("/usr/sbin/dropbear")
#: The drivers the guest needs; depmod adds what they depend on (virtio, virtio_ring...).
TOP_MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
DISK_BYTES = 1 << 20
# Debian keeps admin tools in sbin, which a normal user's PATH may lack.
_SBIN = ("/usr/sbin", "/sbin")
# A tool the build runs, and the Debian package that provides it.
TOOLS = {"apt-get": "apt", "apt-cache": "apt", "dpkg": "dpkg", "dpkg-deb": "dpkg",
         "dpkg-query": "dpkg", "cpio": "cpio", "depmod": "kmod", "ldd": "libc-bin"}

Log = Callable[[str], object]


# --- running tools ------------------------------------------------------------------------

def _which(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(
        tool, path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    if path is None:
        package = TOOLS.get(tool, tool)
        raise GuestBuildError(f"`{tool}` is not installed: install the Debian package {package} "
                              f"(apt-get install {package}, or `make setup`)")
    return path


def _run(cmd: list[str], *, cwd: Path | None = None, what: str | None = None) -> str:
    """Run a tool, return its stdout; a failure raises GuestBuildError with its stderr."""
    argv = [_which(cmd[0]), *cmd[1:]]
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise GuestBuildError(f"{what or ' '.join(cmd)} failed (exit {proc.returncode}): "
                              + " / ".join(detail))
    return proc.stdout


def installed_version(package: str) -> str | None:
    """The installed version of a Debian package, or None (not installed, or no dpkg)."""
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query is None:
        return None
    proc = subprocess.run([dpkg_query, "-W", "-f=${Status}\t${Version}", package],
                          capture_output=True, text=True)
    status, _, version = proc.stdout.partition("\t")
    return version if proc.returncode == 0 and status == "install ok installed" else None


# --- the cache key --------------------------------------------------------------------------

def local_inputs(init_script: Path = INIT_SCRIPT) -> dict[str, object]:
    """The key's inputs this machine knows without apt: init.sh, busybox, dropbear."""
    return {"format": BUILD_FORMAT, "init_sha256": init_script_sha256(init_script),
            BUSYBOX_PACKAGE: installed_version(BUSYBOX_PACKAGE),
            DROPBEAR_PACKAGE: installed_version(DROPBEAR_PACKAGE)}


def key_inputs(kernel_version: str, kernel_package_version: str,
               init_script: Path = INIT_SCRIPT) -> dict[str, object]:
    """Everything a build depends on: the local inputs plus the kernel."""
    return {**local_inputs(init_script), "kernel_version": kernel_version,
            "kernel_package_version": kernel_package_version}


def cache_key(inputs: dict[str, object]) -> str:
    """`<kernel version>-<12 hex digits of the inputs' sha256>`: readable and exact."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return f"{inputs['kernel_version']}-{digest[:12]}"


def _matches_local(build: GuestImage, local: dict[str, object]) -> bool:
    recorded = build.manifest.get("key_inputs", {})
    return all(value is not None and recorded.get(name) == value for name, value in local.items())


def cached_build(cache: Path | None = None, init_script: Path = INIT_SCRIPT) -> GuestImage | None:
    """The newest complete build made from this init.sh, busybox and dropbear (no apt)."""
    local = local_inputs(init_script)
    return next((b for b in complete_builds(cache) if _matches_local(b, local)), None)


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache (setup and a test run may both ask for one)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- the kernel from Debian's archive -----------------------------------------------------

def _apt_update(log: Log) -> bool:
    """Refresh apt's lists when we may (root); False when we may not."""
    if os.geteuid() != 0:
        return False
    log("  apt-get update (apt's package lists are missing or stale)")
    _run(["apt-get", "update", "-q"], what="apt-get update")
    return True


def _kernel_package(log: Log) -> str:
    """The versioned kernel package linux-image-cloud-amd64 depends on right now."""
    for attempt in (1, 2):
        try:
            out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
        except GuestBuildError:
            out = ""
        for line in out.splitlines():
            m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
            if m:
                return m.group(1)
        if attempt == 1 and _apt_update(log):
            continue
        break
    raise GuestBuildError(f"apt knows no {KERNEL_META_PACKAGE}: run `apt-get update` as root "
                          "(this needs Debian's package archive, e.g. Debian 12 bookworm)")


def _candidate(package: str) -> str | None:
    out = _run(["apt-cache", "policy", package])
    m = re.search(r"Candidate:\s*(\S+)", out)
    return m.group(1) if m and m.group(1) != "(none)" else None


def _deb_field(deb: Path, name: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), name]).strip()


def _download(package: str, debs: Path, log: Log) -> Path:
    """The package's .deb in debs/: the cached one when it is apt's candidate, else fetched."""
    debs.mkdir(parents=True, exist_ok=True)
    wanted = _candidate(package)
    cached = sorted(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime, reverse=True)
    for deb in cached:
        if wanted is None or _deb_field(deb, "Version") == wanted:
            log(f"  reusing {deb.name}")
            return deb
    log(f"  apt-get download {package}" + (f" ({wanted})" if wanted else ""))
    try:
        _run(["apt-get", "download", package], cwd=debs, what=f"apt-get download {package}")
    except GuestBuildError:
        if not _apt_update(log):
            raise
        _run(["apt-get", "download", package], cwd=debs, what=f"apt-get download {package}")
    fresh = sorted(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not fresh:
        raise GuestBuildError(f"apt-get download {package} left no .deb in {debs}")
    return fresh[0]


def _module_order(modules_dir: Path, top: tuple[str, ...]) -> list[str]:
    """Module paths (relative to lib/modules/<ver>) in load order, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" in line:
            module, _, rest = line.partition(":")
            deps[module] = rest.split()
    by_name = {re.sub(r"\.ko(\.\w+)?$", "", Path(m).name).replace("-", "_"): m for m in deps}
    builtin_file = modules_dir / "modules.builtin"
    builtin = builtin_file.read_text() if builtin_file.exists() else ""
    order: list[str] = []

    def load(module: str) -> None:
        if module in order:
            return
        # modules.dep lists each module's whole closure, the one to load first last.
        for dep in reversed(deps.get(module, [])):
            load(dep)
        order.append(module)

    for name in top:
        if name in by_name:
            load(by_name[name])
        elif f"/{name}.ko" not in builtin:
            raise GuestBuildError(f"the kernel has no module {name} (and does not build it in)")
    return order


def _module_bytes(path: Path) -> bytes:
    """A module's contents, uncompressed (busybox insmod loads plain .ko files)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        zstd = shutil.which("zstd")
        if zstd is None:
            raise GuestBuildError(f"{path.name} is zstd-compressed: install the package zstd")
        return subprocess.run([zstd, "-dc", str(path)], check=True, capture_output=True).stdout
    return data


# --- the initramfs ------------------------------------------------------------------------

def _libraries(binary: Path) -> list[Path]:
    """The shared libraries (and the dynamic loader) `ldd` lists for a binary."""
    proc = subprocess.run([_which("ldd"), str(binary)], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:  # "not a dynamic executable": a static binary needs none
        return []
    libs = []
    for line in proc.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _owners(paths: list[Path]) -> dict[str, str]:
    """Debian packages (name -> installed version) that own these files."""
    if not paths or shutil.which("dpkg") is None:
        return {}
    queries = sorted({str(p) for p in paths} | {os.path.realpath(p) for p in paths})
    proc = subprocess.run([_which("dpkg"), "-S", *queries], capture_output=True, text=True)
    names = {line.split(":", 1)[0] for line in proc.stdout.splitlines() if ": " in line}
    return {name: installed_version(name) or "?" for name in sorted(names)}


def _copy_file(src: Path, root: Path, dest: str, mode: int | None = None) -> None:
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)  # follows symlinks: the real library lands at ldd's path
    os.chmod(target, mode if mode is not None else (src.stat().st_mode & 0o777))


def _write(root: Path, dest: str, text: str, mode: int = 0o644) -> None:
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    os.chmod(target, mode)


def _stage_root(root: Path, kernel_tree: Path, kernel_version: str,
                init_script: Path) -> dict[str, object]:
    """Fill `root` with the guest's files; return what went in (for the manifest)."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/dropbear", "etc/labkit", "proc", "sys",
              "dev", "run", "var/log", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    (root / "root/.ssh").mkdir(parents=True)
    os.chmod(root / "root", 0o700)
    os.chmod(root / "root/.ssh", 0o700)
    os.symlink("../run", root / "var/run")

    # busybox and its applets (the list comes from the binary itself)
    _copy_file(BUSYBOX, root, "/bin/busybox", 0o755)
    applets = _run([str(BUSYBOX), "--list-full"], what="busybox --list-full").split()
    for applet in applets:
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/bin/busybox", link)

    # dropbear and the libraries it links (none for busybox-static, but ask anyway)
    _copy_file(DROPBEAR, root, str(DROPBEAR), 0o755)
    libs = sorted({*_libraries(DROPBEAR), *_libraries(BUSYBOX)})
    for lib in libs:
        _copy_file(lib, root, str(lib), 0o755)

    # the virtio modules, in load order; depmod again so modprobe works inside the guest too
    modules_dir = kernel_tree / "lib/modules" / kernel_version
    _run(["depmod", "-b", str(kernel_tree), kernel_version], what="depmod")
    order = _module_order(modules_dir, TOP_MODULES)
    guest_paths = []
    for rel in order:
        plain = re.sub(r"\.ko\.\w+$", ".ko", rel)
        dest = root / "lib/modules" / kernel_version / plain
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_module_bytes(modules_dir / rel))
        guest_paths.append(f"/lib/modules/{kernel_version}/{plain}")
    for extra in ("modules.builtin", "modules.order"):
        if (modules_dir / extra).exists():
            shutil.copyfile(modules_dir / extra, root / "lib/modules" / kernel_version / extra)
    _run(["depmod", "-b", str(root), kernel_version], what="depmod (initramfs)")
    _write(root, "/etc/labkit/modules", "".join(p + "\n" for p in guest_paths))

    # a minimal /etc: root with no password at all (keys only), no shadow file
    _write(root, "/etc/passwd", "root:*:0:0:root:/root:/bin/sh\n")
    _write(root, "/etc/group", "root:x:0:\ntty:x:5:\n")
    _write(root, "/etc/shells", "/bin/sh\n/bin/ash\n")
    _write(root, "/etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\n"
                                       "hosts: files dns\n")
    _write(root, "/etc/hosts", "127.0.0.1 localhost\n")
    _write(root, "/etc/hostname", "labkit-tiny\n")
    _write(root, "/etc/profile",
           "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\h:\\w\\$ '\n")
    _write(root, "/etc/os-release", 'NAME="labkit-tiny"\nID=labkit-tiny\n'
                                    f'PRETTY_NAME="labkit-tiny (Debian kernel {kernel_version})"\n')
    _copy_file(init_script, root, "/init", 0o755)
    return {"modules": [Path(p).name for p in guest_paths],
            "libraries": [str(p) for p in libs], "busybox_applets": len(applets)}


def _pack(root: Path, out: Path) -> int:
    """Pack `root` as a gzipped newc cpio at `out`, every file owned by root; return raw size."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            names.append(name if rel == "." else f"{rel}/{name}")
    listing = "\0".join(sorted(names)) + "\0"
    proc = subprocess.run([_which("cpio"), "-o", "-H", "newc", "-0", "-R", "0:0", "--quiet",
                           "--reproducible"], cwd=root, input=listing.encode(),
                          capture_output=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
    out.write_bytes(gzip.compress(proc.stdout, compresslevel=9, mtime=0))
    return len(proc.stdout)


def _write_disk(path: Path, kernel_version: str) -> None:
    """The machine image: blank but for a label that says so."""
    label = ("labkit-tiny machine image. This disk is blank: the guest runs entirely from its "
             "initramfs (labkit-tiny-ramdisk) with the Debian cloud kernel "
             f"{kernel_version} (labkit-tiny-kernel). Nothing on it is read at boot.\n")
    with open(path, "wb") as f:
        f.write(label.encode())
        f.truncate(DISK_BYTES)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the build ----------------------------------------------------------------------------

def _check_tools() -> None:
    for tool in TOOLS:
        _which(tool)
    for binary, package in ((BUSYBOX, BUSYBOX_PACKAGE), (DROPBEAR, DROPBEAR_PACKAGE)):
        if not binary.exists() or installed_version(package) is None:
            raise GuestBuildError(f"{binary} is missing: install the Debian package {package} "
                                  f"(apt-get install {package}, or `make setup`)")


def build_image(cache: Path | None = None, force: bool = False, log: Log = print,
                init_script: Path = INIT_SCRIPT) -> GuestImage:
    """Build labkit-tiny into the cache, or return the cached build when there is one.

    Without `force`, a complete build made from this init.sh, busybox and dropbear is
    returned at once: no apt, no building. `log` receives one line per step.
    """
    cache = cache if cache is not None else cache_dir()
    if not force and (hit := cached_build(cache, init_script)) is not None:
        log(f"reusing the cached labkit-tiny build {hit.folder} (--force rebuilds it)")
        return hit
    _check_tools()
    with _locked(cache):
        # another process may have finished the same build while we waited for the lock
        if not force and (hit := cached_build(cache, init_script)) is not None:
            log(f"reusing the labkit-tiny build another process just made: {hit.folder}")
            return hit
        return _build(cache, force, log, init_script)


def _build(cache: Path, force: bool, log: Log, init_script: Path) -> GuestImage:
    started = time.monotonic()
    log(f"building labkit-tiny, the tiny guest image, in {cache}")
    log(f"  resolving the kernel: apt-cache depends {KERNEL_META_PACKAGE}")
    versioned = _kernel_package(log)
    debs = cache / "debs"
    meta_deb = _download(KERNEL_META_PACKAGE, debs, log)
    kernel_deb = _download(versioned, debs, log)
    package_version = _deb_field(kernel_deb, "Version")
    kernel_version = versioned.removeprefix("linux-image-")
    inputs = key_inputs(kernel_version, package_version, init_script)
    key = cache_key(inputs)
    final = cache / key
    if not force and (existing := load_build(final)) is not None:
        log(f"reusing the labkit-tiny build {final}: already built from these inputs")
        return existing

    with tempfile.TemporaryDirectory(dir=cache, prefix=".tmp-") as tmp:
        work, out = Path(tmp) / "work", Path(tmp) / key
        out.mkdir()
        work.mkdir()
        log(f"  dpkg -x {kernel_deb.name}")
        tree = work / "kernel"
        _run(["dpkg", "-x", str(kernel_deb), str(tree)], what=f"dpkg -x {kernel_deb.name}")
        vmlinuz = tree / "boot" / f"vmlinuz-{kernel_version}"
        if not vmlinuz.exists():
            found = sorted((tree / "boot").glob("vmlinuz-*"))
            if not found:
                raise GuestBuildError(f"{kernel_deb.name} holds no boot/vmlinuz-*")
            vmlinuz, kernel_version = found[0], found[0].name.removeprefix("vmlinuz-")
        shutil.copyfile(vmlinuz, out / KERNEL_FILE)

        log("  initramfs: busybox, virtio modules (depmod), dropbear and its libraries, /init")
        contents = _stage_root(work / "root", tree, kernel_version, init_script)
        raw_size = _pack(work / "root", out / RAMDISK_FILE)
        _write_disk(out / DISK_FILE, kernel_version)

        files = {role: {"path": name, "size": (out / name).stat().st_size,
                        "sha256": _sha256(out / name)}
                 for role, name in (("kernel", KERNEL_FILE), ("ramdisk", RAMDISK_FILE),
                                    ("disk", DISK_FILE))}
        packages = {
            KERNEL_META_PACKAGE: _deb_field(meta_deb, "Version"),
            versioned: package_version,
            BUSYBOX_PACKAGE: inputs[BUSYBOX_PACKAGE],
            DROPBEAR_PACKAGE: inputs[DROPBEAR_PACKAGE],
        }
        for name, version in _owners([Path(p) for p in contents["libraries"]]).items():
            packages.setdefault(name, version)
        manifest = {
            "name": "labkit-tiny", "key": key, "key_inputs": inputs,
            "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 2),
            "kernel_version": kernel_version, "packages": packages, "files": files,
            "initramfs": {**contents, "uncompressed_size": raw_size, "format": "newc cpio, gzip"},
            "debs": [meta_deb.name, kernel_deb.name],
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

        if final.exists():  # --force over the same key: swap the old folder out
            old = Path(tempfile.mkdtemp(dir=cache, prefix=".old-"))
            os.rename(final, old / key)
            os.rename(out, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(out, final)  # atomic: readers see no build or a complete one
    image = load_build(final)
    if image is None:  # pragma: no cover - the manifest was just written
        raise GuestBuildError(f"the build in {final} is incomplete")
    log(f"built labkit-tiny {key} in {manifest['build_seconds']} s")
    return image
