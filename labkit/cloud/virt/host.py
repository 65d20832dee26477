"""What this machine offers a hypervisor: qemu's binaries and whether KVM works.

nova's libvirt driver reads [libvirt] virt_type (kvm or qemu) from its configuration;
labkit also accepts `auto`, which takes KVM when /dev/kvm really lets us create a VM
(the device can exist and still refuse: no permission, nested virtualisation off).

A /dev/kvm that creates VMs is not always hardware KVM: some sandboxes provide it with
PVM (kvm_pvm, a paging-based KVM without VT-x/AMD-V) which only runs guest kernels
built for it; a stock kernel crawls there for minutes. So KVM counts as usable only
when kvm_intel or kvm_amd drives it.
"""

from __future__ import annotations

import fcntl
import os
import shutil

QEMU_SYSTEM = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
KVM_DEVICE = "/dev/kvm"
KVM_CREATE_VM = 0xAE01  # _IO(KVMIO=0xAE, 0x01) from linux/kvm.h
HARDWARE_KVM_MODULES = ("kvm_intel", "kvm_amd")
SYS_MODULE = "/sys/module"


def qemu_available() -> bool:
    """Are qemu-system-x86_64 and qemu-img both on PATH?"""
    return shutil.which(QEMU_SYSTEM) is not None and shutil.which(QEMU_IMG) is not None


def kvm_problem() -> str | None:
    """Why KVM cannot boot our guests here, or None when it can."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{KVM_DEVICE} cannot be opened read-write ({exc.strerror or exc})"
    try:
        vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm_fd)
    except OSError as exc:
        return f"{KVM_DEVICE} refuses to create a virtual machine ({exc.strerror or exc})"
    finally:
        os.close(fd)
    if not any(os.path.isdir(os.path.join(SYS_MODULE, m)) for m in HARDWARE_KVM_MODULES):
        return (f"{KVM_DEVICE} is not hardware KVM (neither kvm_intel nor kvm_amd is loaded; "
                f"a PVM or other software KVM cannot boot a stock guest kernel)")
    return None


def kvm_usable() -> bool:
    """Can this process run our guests under hardware KVM? False on any error."""
    try:
        return kvm_problem() is None
    except Exception:
        return False


def choose_virt_type(setting: str) -> str:
    """nova's virt_type from labkit's setting: `auto` takes kvm when usable, else qemu (TCG)."""
    if setting == "auto":
        return "kvm" if kvm_usable() else "qemu"
    if setting == "kvm":
        problem = kvm_problem()
        if problem is not None:
            raise ValueError(f"virt_type kvm was asked for, but {problem}: use virt_type "
                             f"qemu (TCG) or auto")
        return "kvm"
    if setting == "qemu":
        return "qemu"
    raise ValueError(f"virt_type must be auto, kvm or qemu, not {setting!r}")
