"""The libvirt domain XML nova's libvirt driver would define for an instance.

labkit runs qemu itself (no libvirtd, no root), but it still writes the document nova
would hand libvirt (nova.virt.libvirt.config and driver._get_guest_config), so readers
can compare it with `virsh dumpxml` on a real compute host. The qemu command line is
then derived from this XML (qemu_command.py), as libvirt derives its own.

Also here: the files of one instance folder (GuestPaths), the network facts the guest's
kernel command line needs (the metadata address), and a reader that turns the XML back
into plain data.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.cloud.netinfo import subnet_dns, subnet_gateway, subnets

if TYPE_CHECKING:
    from labkit.cloud.virt.driver import GuestSpec

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
# the qemu binary the XML names, as libvirt's <emulator>: the one on PATH
EMULATOR = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
# pcie-root-ports for hot-plug (volumes): q35's root bus refuses hot-plug, so nova's
# [libvirt] num_pcie_ports adds ports at boot. The root disk, the NIC and the balloon sit
# on the root bus here, so every port is free for a volume: eight volumes, vdb to vdi.
PCIE_ROOT_PORTS = 8
TCG_CPU_MODEL = "qemu64"
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL

ET.register_namespace("nova", NOVA_NS)


def short_socket_dir(folder: Path) -> Path:
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:12]  # noqa: S324 - a name, not a secret
    return Path(tempfile.gettempdir()) / f"labkit-qmp-{digest}"


@dataclass(frozen=True)
class GuestPaths:
    """The files of one instance, under nova's instances_path/<uuid>/."""

    folder: Path
    disk: Path
    kernel: Path | None
    ramdisk: Path | None
    console_log: Path
    qmp_socket: Path
    pidfile: Path

    @classmethod
    def for_folder(cls, folder: Path, *, kernel: bool = True,
                   ramdisk: bool = True) -> GuestPaths:
        """The usual layout. A unix socket path is limited to 107 bytes, so when the
        folder is deep the QMP socket goes to a short folder in the temp dir instead."""
        folder = Path(folder)
        qmp = folder / "qmp.sock"
        if len(os.fsencode(qmp)) > UNIX_PATH_MAX:
            qmp = short_socket_dir(folder) / "qmp.sock"
        return cls(folder=folder, disk=folder / "disk",
                   kernel=folder / "kernel" if kernel else None,
                   ramdisk=folder / "ramdisk" if ramdisk else None,
                   console_log=folder / "console.log", qmp_socket=qmp,
                   pidfile=folder / "qemu.pid")

    @property
    def log(self) -> Path:
        """qemu's own stdout and stderr (libvirt keeps it as /var/log/libvirt/qemu/<name>.log)."""
        return self.folder / "qemu.log"

    @property
    def xml(self) -> Path:
        return self.folder / "libvirt.xml"

    @property
    def record(self) -> Path:
        return self.folder / "guest.json"

    def as_dict(self) -> dict[str, str | None]:
        return {k: (str(v) if v is not None else None) for k, v in self.__dict__.items()}


# -- network facts from nova's network_info

def first_ipv4(vif: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The vif's first IPv4 subnet holding a fixed IP, and that IP."""
    for subnet in subnets(vif):
        if ipaddress.ip_network(subnet["cidr"], strict=False).version != 4:
            continue
        for ip in subnet.get("ips", []):
            if ip.get("type", "fixed") == "fixed":
                return subnet, ip["address"]
    return None


def metadata_address(cidr: str, taken: list[str | None]) -> str:
    """The address the guest reaches the metadata service on: the subnet's highest host
    address not `taken` (fixed IP, gateway, dns). 169.254.169.254 cannot be used: qemu's
    guestfwd only accepts an address inside the user network's `net=`."""
    net = ipaddress.ip_network(cidr, strict=False)
    used = {ipaddress.ip_address(a) for a in taken if a}
    candidate = int(net.broadcast_address) - 1
    while candidate > int(net.network_address):
        addr = ipaddress.ip_address(candidate)
        if addr not in used:
            return str(addr)
        candidate -= 1
    raise ValueError(f"subnet {cidr} has no address left for the metadata service")


def vif_metadata_address(vif: dict[str, Any]) -> str | None:
    found = first_ipv4(vif)
    if found is None:
        return None
    subnet, fixed = found
    return metadata_address(subnet["cidr"], [fixed, subnet_gateway(subnet), *subnet_dns(subnet)])


def kernel_cmdline(network_info: list[dict[str, Any]]) -> str:
    """What the tiny guest's /init reads: its console, and where the metadata service is
    (only the first vif carries traffic, see qemu_command.py)."""
    parts = ["console=ttyS0", "mitigations=off", "quiet"]
    meta = vif_metadata_address(network_info[0]) if network_info else None
    if meta:
        parts.append(f"labkit.metadata={meta}")
    return " ".join(parts)


def tap_name(vif: dict[str, Any]) -> str:
    return vif.get("devname") or f"tap{vif['id'][:11]}"


def bridge_name(vif: dict[str, Any]) -> str:
    # the hybrid plug's Linux bridge, where the iptables firewall lives
    return f"qbr{vif['id'][:11]}"


def direct_io_supported(folder: Path) -> bool:
    """nova checks O_DIRECT before choosing cache="none" (tmpfs refuses it)."""
    probe = Path(folder) / ".directio.test"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink(missing_ok=True)
    return True


def direct_io_file(path: Path | str) -> bool:
    """Does the file at `path` open with O_DIRECT (a volume's backing file; tmpfs refuses)?"""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    os.close(fd)
    return True


# -- writing the XML

def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _nova(tag: str) -> str:
    return f"{{{NOVA_NS}}}{tag}"


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return f"labkit {version('labkit')}"
    except Exception:  # not installed as a distribution: a source tree
        return "labkit"


def _metadata(root: ET.Element, guest: GuestSpec, network_info: list[dict[str, Any]]) -> None:
    """nova's <metadata><nova:instance>: who asked for this guest and with what flavor."""
    flavor = guest.flavor or {}
    inst = _sub(_sub(root, "metadata"), _nova("instance"))
    _sub(inst, _nova("package"), version=_package_version())
    _sub(inst, _nova("name"), guest.display_name or guest.name)
    created = guest.created_at or time.time()
    _sub(inst, _nova("creationTime"), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created)))
    fl = _sub(inst, _nova("flavor"), name=str(flavor.get("name", "")))
    for tag, value in (("memory", flavor.get("memory_mb", guest.memory_mb)),
                       ("disk", flavor.get("root_gb", guest.root_gb)),
                       ("swap", flavor.get("swap", 0) or 0),
                       ("ephemeral", flavor.get("ephemeral_gb", 0)),
                       ("vcpus", flavor.get("vcpus", guest.vcpus))):
        _sub(fl, _nova(tag), str(value))
    owner = _sub(inst, _nova("owner"))
    _sub(owner, _nova("user"), guest.user_id, uuid=guest.user_id)
    _sub(owner, _nova("project"), guest.project_id, uuid=guest.project_id)
    if guest.image.get("id"):
        _sub(inst, _nova("root"), type="image", uuid=guest.image["id"])
    ports = _sub(inst, _nova("ports"))
    for vif in network_info:
        port = _sub(ports, _nova("port"), uuid=vif["id"])
        for subnet in subnets(vif):
            version = ipaddress.ip_network(subnet["cidr"], strict=False).version
            for ip in subnet.get("ips", []):
                _sub(port, _nova("ip"), type=ip.get("type", "fixed"), address=ip["address"],
                     ipVersion=str(version))


def domain_xml(guest: GuestSpec, *, virt_type: str, paths: GuestPaths,
               network_info: list[dict[str, Any]], disk_cache: str = "none",
               volumes: list[DomainDisk] | None = None) -> str:
    """The domain nova would define for `guest` (virt_type "qemu" for TCG or "kvm"), with
    `volumes` (see volume_disk) after its root disk."""
    if virt_type not in ("qemu", "kvm"):
        raise ValueError(f"virt_type must be qemu or kvm, not {virt_type!r}")
    root = ET.Element("domain", type=virt_type)
    _sub(root, "uuid", guest.uuid)
    _sub(root, "name", guest.name)
    kib = str(guest.memory_mb * 1024)
    _sub(root, "memory", kib, unit="KiB")
    _sub(root, "currentMemory", kib, unit="KiB")
    _sub(root, "vcpu", str(guest.vcpus))
    _metadata(root, guest, network_info)

    system = _sub(_sub(root, "sysinfo", type="smbios"), "system")
    for name, value in (("manufacturer", "OpenStack Foundation"), ("product", "OpenStack Nova"),
                        ("version", _package_version()), ("serial", guest.uuid),
                        ("uuid", guest.uuid), ("family", "Virtual Machine")):
        _sub(system, "entry", value, name=name)

    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    if paths.kernel is not None:
        # an AMI with its AKI/ARI: direct kernel boot, as nova does for such images
        _sub(os_el, "kernel", str(paths.kernel))
        if paths.ramdisk is not None:
            _sub(os_el, "initrd", str(paths.ramdisk))
        _sub(os_el, "cmdline", kernel_cmdline(network_info))
    else:
        _sub(os_el, "boot", dev="hd")
    _sub(os_el, "smbios", mode="sysinfo")

    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")

    if virt_type == "kvm":
        cpu = _sub(root, "cpu", mode="host-model", match="exact")
    else:
        # TCG cannot offer the host's CPU: name a model it emulates
        cpu = _sub(root, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", TCG_CPU_MODEL, fallback="allow")
    _sub(cpu, "topology", sockets=str(guest.vcpus), cores="1", threads="1")

    clock = _sub(root, "clock", offset="utc")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="hpet", present="no")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")

    devices = _sub(root, "devices")
    _sub(devices, "emulator", EMULATOR)
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache=disk_cache)
    _sub(disk, "source", file=str(paths.disk))
    _sub(disk, "target", dev="vda", bus="virtio")
    for volume in volumes or ():
        devices.append(volume_disk_element(volume))
    for vif in network_info:
        iface = _sub(devices, "interface", type="bridge")
        _sub(iface, "mac", address=vif["address"])
        _sub(iface, "model", type="virtio")
        _sub(iface, "source", bridge=bridge_name(vif))
        mtu = (vif.get("network", {}).get("meta") or {}).get("mtu")
        if mtu:
            _sub(iface, "mtu", size=str(mtu))
        _sub(iface, "target", dev=tap_name(vif))
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(paths.console_log), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="file")
    _sub(console, "source", path=str(paths.console_log), append="on")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "controller", type="pci", index="0", model="pcie-root")
    for index in range(1, PCIE_ROOT_PORTS + 1):
        _sub(devices, "controller", type="pci", index=str(index), model="pcie-root-port")
    balloon = _sub(devices, "memballoon", model="virtio")
    _sub(balloon, "stats", period="10")
    return _serialize(root)


# -- reading it back

@dataclass
class DomainDisk:
    path: str
    format: str
    target: str
    bus: str
    cache: str
    type: str = "file"  # "block" for a volume: the host's device os-brick connected
    serial: str | None = None  # a volume's id, which the guest reads as the disk's serial
    io: str | None = None  # "native" (Linux AIO) with cache none, as nova asks for volumes
    read_only: bool = False
    pci_bus: int | None = None  # the pcie-root-port (controller index) the disk sits on
    alias: str | None = None  # libvirt's device alias: qemu's device id

    @property
    def is_volume(self) -> bool:
        return self.serial is not None


def volume_disk(*, path: str, target: str, serial: str, pci_bus: int,
                direct_io: bool = True, read_only: bool = False) -> DomainDisk:
    """A cinder volume as nova's libvirt driver describes an iSCSI one (LibvirtConfigGuestDisk
    from the volume driver): a raw block device, cache none with native AIO when the host
    allows O_DIRECT (writethrough otherwise), the volume id as serial, on its root port."""
    return DomainDisk(path=path, format="raw", target=target.removeprefix("/dev/"),
                      bus="virtio", cache="none" if direct_io else "writethrough",
                      type="block", serial=serial, io="native" if direct_io else None,
                      read_only=read_only, pci_bus=pci_bus, alias=disk_alias(target))


def disk_alias(target: str) -> str:
    """libvirt's alias for a virtio disk, used as qemu's device id: vda is virtio-disk0,
    vdb virtio-disk1, vdaa virtio-disk26 (the target's letters counted as libvirt does)."""
    name = target.removeprefix("/dev/")
    letters = name[2:]
    if not name.startswith("vd") or not letters or not (letters.isascii() and letters.isalpha()
                                                         and letters.islower()):
        raise ValueError(f"not a virtio disk name: {target!r}")
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return f"virtio-disk{index - 1}"


def volume_disk_element(disk: DomainDisk) -> ET.Element:
    """<disk type="block" device="disk"> for a volume, with the address a running domain's
    XML shows (bus = the root port's controller index)."""
    el = ET.Element("disk", type=disk.type, device="disk")
    driver = {"name": "qemu", "type": disk.format, "cache": disk.cache}
    if disk.io:
        driver["io"] = disk.io
    _sub(el, "driver", **driver)
    _sub(el, "source", **({"dev": disk.path} if disk.type == "block" else {"file": disk.path}))
    _sub(el, "target", dev=disk.target, bus=disk.bus)
    if disk.read_only:
        _sub(el, "readonly")
    if disk.serial is not None:
        _sub(el, "serial", disk.serial)
    if disk.alias:
        _sub(el, "alias", name=disk.alias)
    if disk.pci_bus is not None:
        _sub(el, "address", type="pci", domain="0x0000", bus=f"{disk.pci_bus:#04x}",
             slot="0x00", function="0x0")
    return el


def add_volume_disk(xml: str, disk: DomainDisk) -> str:
    """The domain XML with `disk` after its last disk (libvirt keeps disks together)."""
    root = ET.fromstring(xml)
    devices = root.find("devices")
    if devices is None:
        raise ValueError("the domain has no <devices>")
    if any(d.findtext("serial") == disk.serial for d in devices.findall("disk")):
        raise ValueError(f"the domain already has a disk with serial {disk.serial}")
    disks = devices.findall("disk")
    at = list(devices).index(disks[-1]) + 1 if disks else 0
    devices.insert(at, volume_disk_element(disk))
    return _serialize(root)


def remove_volume_disk(xml: str, serial: str) -> str:
    """The domain XML without the disk whose serial is `serial` (unchanged if none)."""
    root = ET.fromstring(xml)
    devices = root.find("devices")
    if devices is not None:
        for d in devices.findall("disk"):
            if d.findtext("serial") == serial:
                devices.remove(d)
    return _serialize(root)


def _serialize(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def free_root_port(dom: Domain) -> int | None:
    """The lowest pcie-root-port (controller index) no disk sits on; None when all are taken."""
    taken = {d.pci_bus for d in dom.disks if d.pci_bus is not None}
    return next((i for i in range(1, dom.pcie_root_ports + 1) if i not in taken), None)


@dataclass
class DomainInterface:
    mac: str
    model: str
    bridge: str | None
    target_dev: str | None
    mtu: int | None


@dataclass
class Domain:
    """What the command builder needs from a domain XML."""

    virt_type: str
    uuid: str
    name: str
    memory_kib: int
    vcpus: int
    machine: str
    kernel: str | None
    initrd: str | None
    cmdline: str | None
    cpu_mode: str
    cpu_model: str | None
    emulator: str
    smbios: dict[str, str] = field(default_factory=dict)
    disks: list[DomainDisk] = field(default_factory=list)
    interfaces: list[DomainInterface] = field(default_factory=list)
    console_log: str | None = None
    pcie_root_ports: int = 0
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    nova: dict[str, Any] = field(default_factory=dict)


def _text(root: ET.Element, path: str, default: str | None = None) -> str | None:
    el = root.find(path)
    return el.text if el is not None and el.text is not None else default


def _memory_kib(el: ET.Element | None) -> int:
    if el is None or el.text is None:
        raise ValueError("the domain has no <memory>")
    factor = {"kib": 1, "k": 1, "mib": 1024, "m": 1024, "gib": 1024**2, "g": 1024**2,
              "b": 1 / 1024, "bytes": 1 / 1024}[el.get("unit", "KiB").lower()]
    return int(int(el.text) * factor)


def _parse_disk(disk: ET.Element) -> DomainDisk:
    driver, source, target = disk.find("driver"), disk.find("source"), disk.find("target")
    alias, address = disk.find("alias"), disk.find("address")
    pci_bus = None
    if address is not None and address.get("type") == "pci" and address.get("bus"):
        pci_bus = int(address.get("bus", "0"), 0)
    return DomainDisk(
        path=(source.get("file") or source.get("dev") or "") if source is not None else "",
        format=driver.get("type", "raw") if driver is not None else "raw",
        target=target.get("dev", "vda") if target is not None else "vda",
        bus=target.get("bus", "virtio") if target is not None else "virtio",
        cache=driver.get("cache", "none") if driver is not None else "none",
        type=disk.get("type", "file"), serial=disk.findtext("serial"),
        io=driver.get("io") if driver is not None else None,
        read_only=disk.find("readonly") is not None, pci_bus=pci_bus,
        alias=alias.get("name") if alias is not None else None)


def parse_domain(xml: str) -> Domain:
    """Read a domain XML (ours, or one like it) into plain data."""
    root = ET.fromstring(xml)
    if root.tag != "domain":
        raise ValueError(f"not a libvirt domain: <{root.tag}>")
    os_type = root.find("os/type")
    cpu = root.find("cpu")
    dom = Domain(
        virt_type=root.get("type", "qemu"), uuid=_text(root, "uuid", "") or "",
        name=_text(root, "name", "") or "", memory_kib=_memory_kib(root.find("memory")),
        vcpus=int(_text(root, "vcpu", "1") or 1),
        machine=os_type.get("machine", "q35") if os_type is not None else "q35",
        kernel=_text(root, "os/kernel"), initrd=_text(root, "os/initrd"),
        cmdline=_text(root, "os/cmdline"),
        cpu_mode=cpu.get("mode", "custom") if cpu is not None else "custom",
        cpu_model=_text(root, "cpu/model"),
        emulator=_text(root, "devices/emulator", EMULATOR) or EMULATOR,
        on_poweroff=_text(root, "on_poweroff", "destroy") or "destroy",
        on_reboot=_text(root, "on_reboot", "restart") or "restart",
        on_crash=_text(root, "on_crash", "destroy") or "destroy")
    for entry in root.findall("sysinfo/system/entry"):
        dom.smbios[entry.get("name", "")] = entry.text or ""
    for disk in root.findall("devices/disk"):
        dom.disks.append(_parse_disk(disk))
    for iface in root.findall("devices/interface"):
        mac, model = iface.find("mac"), iface.find("model")
        source, target, mtu = iface.find("source"), iface.find("target"), iface.find("mtu")
        dom.interfaces.append(DomainInterface(
            mac=mac.get("address", "") if mac is not None else "",
            model=model.get("type", "virtio") if model is not None else "virtio",
            bridge=source.get("bridge") if source is not None else None,
            target_dev=target.get("dev") if target is not None else None,
            mtu=(int(mtu.get("size", "0")) or None) if mtu is not None else None))
    serial_source = root.find("devices/serial/source")
    if serial_source is not None:
        dom.console_log = serial_source.get("path")
    dom.pcie_root_ports = sum(1 for c in root.findall("devices/controller")
                              if c.get("model") == "pcie-root-port")
    inst = root.find(f"metadata/{_nova('instance')}")
    if inst is not None:
        dom.nova = {"name": _text(inst, _nova("name")),
                    "flavor": (inst.find(_nova("flavor")).get("name")  # type: ignore[union-attr]
                               if inst.find(_nova("flavor")) is not None else None)}
    return dom
