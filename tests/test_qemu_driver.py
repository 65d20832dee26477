"""The qemu driver on its own (not through the cloud): the libvirt XML, the qemu command
line, the QMP client, the image cache, and real tiny guests under TCG.

Tests that need qemu or the built guest image skip when either is missing, unless
LABKIT_REQUIRE_QEMU=1, which makes them fail instead (CI sets it where qemu must work).
LABKIT_TEST_VIRT_TYPE=kvm runs the real guests under KVM instead of TCG.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from labkit.cloud.guest import static_metadata
from labkit.cloud.netinfo import floating_ips
from labkit.cloud.virt import host as virt_host
from labkit.cloud.virt.driver import (
    GuestNotFound,
    GuestSpec,
    SpawnFailed,
    VolumeAttachFailed,
    VolumeAttachment,
)
from labkit.cloud.virt.imagecache import ImageCache, cache_name
from labkit.cloud.virt.libvirt_xml import (
    NOVA_NS,
    PCIE_ROOT_PORTS,
    UNIX_PATH_MAX,
    DomainDisk,
    GuestPaths,
    add_volume_disk,
    disk_alias,
    domain_xml,
    free_root_port,
    kernel_cmdline,
    metadata_address,
    parse_domain,
    remove_volume_disk,
    volume_disk,
    volume_disk_element,
)
from labkit.cloud.virt.qemu import (
    FORWARD_BASE,
    NOSTATE,
    RUNNING,
    SHUTDOWN,
    QemuDriver,
    kill_orphans,
    preferred_port,
)
from labkit.cloud.virt.qemu_command import (
    UserNet,
    escape,
    qemu_command,
    volume_node_names,
    without_volume_args,
)
from labkit.cloud.virt.qmp import QMP, QMPError, QMPTimeout

PORT_ID = "3f1c2b9a-5d6e-4f70-8a9b-0c1d2e3f4a5b"
MAC = "fa:16:3e:11:22:33"
UUID = "8a1c54b2-7e0d-4c1b-9f3a-2d4e6f8a0b1c"
NS = {"nova": NOVA_NS}
VIRT_TYPE = os.environ.get("LABKIT_TEST_VIRT_TYPE", "qemu")  # TCG unless told otherwise
BOOT_TIMEOUT = 180  # a guard against a hung guest, never an assertion about speed
STUB_PROXY = Path(static_metadata.__file__).read_text()


# -- what nova would hand the driver

def network_info(floating: list[str] | None = None, *, cidr: str = "172.16.1.0/24",
                 fixed: str = "172.16.1.5", gateway: str | None = "172.16.1.1",
                 dns: list[str] | None = None) -> list[dict[str, Any]]:
    return [{
        "id": PORT_ID, "address": MAC, "type": "ovs", "devname": f"tap{PORT_ID[:11]}",
        "active": True,
        "network": {
            "id": "5e2b1c9d-0000-4000-8000-000000000001", "label": "private",
            "bridge": "br-int", "meta": {"mtu": 1450},
            "subnets": [{
                "cidr": cidr, "gateway": {"address": gateway} if gateway else {},
                "dns": [{"address": d} for d in (dns or [])],
                "ips": [{"address": fixed, "type": "fixed", "version": 4,
                         "floating_ips": [{"address": f, "type": "floating"}
                                          for f in (floating or [])]}]}]}}]


def make_guest(uuid: str = UUID, *, image: dict[str, Any] | None = None,
               nets: list[dict[str, Any]] | None = None, root_gb: int = 1,
               hostname: str = "vm-a") -> GuestSpec:
    image = image if image is not None else {
        "id": "img-machine", "name": "labkit-tiny", "disk_format": "ami",
        "properties": {"kernel_id": "img-kernel", "ramdisk_id": "img-ramdisk"}}
    return GuestSpec(
        uuid=uuid, name="instance-0000000a", vcpus=1, memory_mb=128, root_gb=root_gb,
        image=image, network_info=nets if nets is not None else network_info(),
        hostname=hostname, display_name=hostname, project_id="project-1", user_id="user-1",
        flavor={"name": "m1.nano", "memory_mb": 128, "vcpus": 1, "root_gb": root_gb,
                "ephemeral_gb": 0, "swap": 0, "flavorid": "42", "extra_specs": {}},
        request_id="req-0001", created_at=1_700_000_000.0)


def paths_for(folder: Path) -> GuestPaths:
    return GuestPaths.for_folder(folder)


# -- the domain XML

def test_domain_xml_names_memory_metadata_and_devices(tmp_path: Path) -> None:
    paths = paths_for(tmp_path / UUID)
    root = ET.fromstring(domain_xml(make_guest(), virt_type="qemu", paths=paths,
                                    network_info=network_info()))
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("uuid") == UUID
    assert root.findtext("name") == "instance-0000000a"
    assert root.find("memory").get("unit") == "KiB"
    assert root.findtext("memory") == root.findtext("currentMemory") == str(128 * 1024)
    assert root.findtext("vcpu") == "1"

    inst = root.find("metadata/nova:instance", NS)
    assert inst.find("nova:package", NS).get("version").startswith("labkit")
    assert inst.findtext("nova:name", namespaces=NS) == "vm-a"
    assert inst.findtext("nova:creationTime", namespaces=NS) == "2023-11-14 22:13:20"
    flavor = inst.find("nova:flavor", NS)
    assert flavor.get("name") == "m1.nano"
    assert {c.tag.split("}")[1]: c.text for c in flavor} == {
        "memory": "128", "disk": "1", "swap": "0", "ephemeral": "0", "vcpus": "1"}
    assert inst.find("nova:owner/nova:user", NS).get("uuid") == "user-1"
    assert inst.find("nova:owner/nova:project", NS).get("uuid") == "project-1"
    assert inst.find("nova:root", NS).attrib == {"type": "image", "uuid": "img-machine"}
    assert inst.find("nova:ports/nova:port", NS).get("uuid") == PORT_ID

    smbios = {e.get("name"): e.text for e in root.findall("sysinfo/system/entry")}
    assert smbios["manufacturer"] == "OpenStack Foundation"
    assert smbios["product"] == "OpenStack Nova"
    assert smbios["serial"] == smbios["uuid"] == UUID
    assert smbios["family"] == "Virtual Machine"

    assert root.find("os/type").get("machine") == "q35" and root.findtext("os/type") == "hvm"
    assert root.findtext("os/kernel") == str(paths.kernel)
    assert root.findtext("os/initrd") == str(paths.ramdisk)
    assert root.findtext("os/cmdline") == ("console=ttyS0 mitigations=off quiet "
                                           "labkit.metadata=172.16.1.254")
    assert root.find("os/smbios").get("mode") == "sysinfo"
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    assert [root.findtext(t) for t in ("on_poweroff", "on_reboot", "on_crash")] == [
        "destroy", "restart", "destroy"]

    disk = root.find("devices/disk")
    assert disk.get("type") == "file" and disk.find("driver").get("type") == "qcow2"
    assert disk.find("source").get("file") == str(paths.disk)
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}

    iface = root.find("devices/interface")
    assert iface.get("type") == "bridge"
    assert iface.find("mac").get("address") == MAC
    assert iface.find("model").get("type") == "virtio"
    assert iface.find("source").get("bridge") == "qbr3f1c2b9a-5d"
    assert iface.find("target").get("dev") == "tap3f1c2b9a-5d"
    assert iface.find("mtu").get("size") == "1450"

    serial = root.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == str(paths.console_log)
    assert root.find("devices/console/target").get("type") == "serial"
    ports = [c for c in root.findall("devices/controller") if c.get("model") == "pcie-root-port"]
    assert len(ports) == PCIE_ROOT_PORTS
    assert root.find("devices/memballoon").get("model") == "virtio"


def test_domain_xml_cpu_follows_virt_type(tmp_path: Path) -> None:
    paths = paths_for(tmp_path / UUID)
    kvm = ET.fromstring(domain_xml(make_guest(), virt_type="kvm", paths=paths, network_info=[]))
    tcg = ET.fromstring(domain_xml(make_guest(), virt_type="qemu", paths=paths,
                                   network_info=[]))
    assert kvm.get("type") == "kvm" and kvm.find("cpu").get("mode") == "host-model"
    assert tcg.find("cpu").get("mode") == "custom" and tcg.findtext("cpu/model") == "qemu64"
    with pytest.raises(ValueError):
        domain_xml(make_guest(), virt_type="xen", paths=paths, network_info=[])


def test_domain_xml_without_kernel_boots_the_disk(tmp_path: Path) -> None:
    paths = GuestPaths.for_folder(tmp_path / UUID, kernel=False, ramdisk=False)
    root = ET.fromstring(domain_xml(make_guest(image={"id": "img", "properties": {}}),
                                    virt_type="qemu", paths=paths, network_info=[]))
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"
    assert root.find("devices/interface") is None


def test_parse_domain_reads_back_what_domain_xml_wrote(tmp_path: Path) -> None:
    paths = paths_for(tmp_path / UUID)
    dom = parse_domain(domain_xml(make_guest(), virt_type="qemu", paths=paths,
                                  network_info=network_info()))
    assert (dom.virt_type, dom.name, dom.uuid) == ("qemu", "instance-0000000a", UUID)
    assert dom.memory_kib == 131072 and dom.vcpus == 1 and dom.machine == "q35"
    assert dom.kernel == str(paths.kernel) and dom.initrd == str(paths.ramdisk)
    assert dom.disks[0].path == str(paths.disk) and dom.disks[0].format == "qcow2"
    nic = dom.interfaces[0]
    assert (nic.mac, nic.bridge, nic.target_dev, nic.mtu) == (
        MAC, "qbr3f1c2b9a-5d", "tap3f1c2b9a-5d", 1450)
    assert dom.console_log == str(paths.console_log)
    assert dom.pcie_root_ports == PCIE_ROOT_PORTS
    assert dom.nova == {"name": "vm-a", "flavor": "m1.nano"}


def test_guest_paths_move_a_long_socket_path_to_a_short_folder(tmp_path: Path) -> None:
    short = GuestPaths.for_folder(Path("/tmp/i") / UUID)
    assert short.qmp_socket == Path("/tmp/i") / UUID / "qmp.sock"
    deep = tmp_path / ("d" * 80) / UUID
    paths = GuestPaths.for_folder(deep)
    assert len(os.fsencode(paths.qmp_socket)) <= UNIX_PATH_MAX
    assert paths.qmp_socket.parent.name.startswith("labkit-qmp-")
    assert paths.disk == deep / "disk"
    # the same folder always gets the same short folder
    assert GuestPaths.for_folder(deep).qmp_socket == paths.qmp_socket


# -- the metadata address and the user-mode network

@pytest.mark.parametrize(("cidr", "taken", "expected"), [
    ("172.16.1.0/24", ["172.16.1.5", "172.16.1.1"], "172.16.1.254"),
    ("172.16.1.0/24", ["172.16.1.254", "172.16.1.1"], "172.16.1.253"),
    ("172.16.1.0/24", ["172.16.1.5", "172.16.1.254", "172.16.1.253"], "172.16.1.252"),
    ("10.0.0.0/28", ["10.0.0.2", None], "10.0.0.14"),
    ("10.0.0.0/30", ["10.0.0.2"], "10.0.0.1"),
])
def test_metadata_address_is_the_highest_free_host_address(
        cidr: str, taken: list[str | None], expected: str) -> None:
    assert metadata_address(cidr, taken) == expected


def test_metadata_address_fails_when_the_subnet_is_full() -> None:
    with pytest.raises(ValueError):
        metadata_address("10.0.0.0/30", ["10.0.0.1", "10.0.0.2"])


def test_kernel_cmdline_names_the_metadata_address() -> None:
    assert kernel_cmdline(network_info(fixed="172.16.1.254")).endswith(
        "labkit.metadata=172.16.1.253")
    assert "labkit.metadata" not in kernel_cmdline([])


def test_user_net_follows_the_port_and_its_subnet() -> None:
    net = UserNet.from_network_info(network_info(), "stub-proxy --x", "vm-a")
    assert net is not None
    assert (net.net, net.host, net.dhcpstart, net.metadata_ip, net.dns) == (
        "172.16.1.0/24", "172.16.1.1", "172.16.1.5", "172.16.1.254", None)
    assert net.netdev_arg() == (
        "user,id=hostnet0,net=172.16.1.0/24,host=172.16.1.1,dhcpstart=172.16.1.5,"
        "hostname=vm-a,restrict=on,guestfwd=tcp:172.16.1.254:80-cmd:stub-proxy --x")
    # a nameserver inside the subnet is slirp's dns; one outside cannot be
    inside = UserNet.from_network_info(network_info(dns=["8.8.8.8", "172.16.1.2"]), "p")
    assert inside is not None and inside.dns == "172.16.1.2"
    outside = UserNet.from_network_info(network_info(dns=["8.8.8.8"]), "p")
    assert outside is not None and outside.dns is None
    # slirp's default dns (.3) must not collide with the fixed IP
    collide = UserNet.from_network_info(network_info(fixed="172.16.1.3"), "p")
    assert collide is not None and collide.dns not in (None, "172.16.1.3", "172.16.1.1")
    # no gateway: slirp still gets an address of its own
    nogw = UserNet.from_network_info(network_info(gateway=None), "p")
    assert nogw is not None and nogw.host not in ("172.16.1.5", "172.16.1.254")
    assert UserNet.from_network_info([], "p") is None
    with pytest.raises(ValueError):
        UserNet.from_network_info(network_info(), "a,b").netdev_arg()  # type: ignore[union-attr]


# -- the qemu command line

def _command(tmp_path: Path, virt_type: str = "qemu", folder: Path | None = None) -> list[str]:
    paths = paths_for(folder or tmp_path / UUID)
    xml = domain_xml(make_guest(), virt_type=virt_type, paths=paths,
                     network_info=network_info())
    net = UserNet.from_network_info(network_info(), "stub-proxy", "vm-a")
    return qemu_command(xml, user_net=net, qmp_socket=paths.qmp_socket,
                        pidfile=paths.pidfile, console_log=paths.console_log)


def _opts(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == flag]


def test_qemu_command_tcg(tmp_path: Path) -> None:
    cmd = _command(tmp_path)
    folder = tmp_path / UUID
    assert cmd[0].endswith("qemu-system-x86_64")
    assert _opts(cmd, "-name") == ["guest=instance-0000000a,debug-threads=on"]
    assert _opts(cmd, "-uuid") == [UUID]
    assert _opts(cmd, "-machine")[0].startswith("q35")
    assert _opts(cmd, "-accel") == ["tcg"] and _opts(cmd, "-cpu") == ["qemu64"]
    assert _opts(cmd, "-m") == ["128"] and _opts(cmd, "-smp")[0].startswith("1,")
    for flag in ("-nodefaults", "-nographic", "-no-user-config"):
        assert flag in cmd
    assert _opts(cmd, "-kernel") == [str(folder / "kernel")]
    assert _opts(cmd, "-initrd") == [str(folder / "ramdisk")]
    assert _opts(cmd, "-append") == ["console=ttyS0 mitigations=off quiet "
                                     "labkit.metadata=172.16.1.254"]
    if Path("/usr/share/qemu/qboot.rom").exists():
        assert _opts(cmd, "-bios") == ["/usr/share/qemu/qboot.rom"]
    netdev = _opts(cmd, "-netdev")
    assert len(netdev) == 1
    assert "net=172.16.1.0/24" in netdev[0] and "dhcpstart=172.16.1.5" in netdev[0]
    assert "host=172.16.1.1" in netdev[0] and "restrict=on" in netdev[0]
    assert "guestfwd=tcp:172.16.1.254:80-cmd:stub-proxy" in netdev[0]
    devices = _opts(cmd, "-device")
    assert f"virtio-net-pci,netdev=hostnet0,id=net0,mac={MAC},host_mtu=1450" in devices
    assert sum(d.startswith("pcie-root-port,") for d in devices) == PCIE_ROOT_PORTS
    assert any(d.startswith("virtio-blk-pci,drive=libvirt-1-format") for d in devices)
    assert any(d.startswith("isa-serial,chardev=charserial0") for d in devices)
    blockdevs = _opts(cmd, "-blockdev")
    assert blockdevs[0].startswith(f"driver=file,filename={folder / 'disk'},")
    assert "driver=qcow2" in blockdevs[1]
    chardevs = _opts(cmd, "-chardev")
    assert f"socket,id=charmonitor,path={folder / 'qmp.sock'},server=on,wait=off" in chardevs
    assert f"file,id=charserial0,path={folder / 'console.log'},append=on" in chardevs
    assert _opts(cmd, "-pidfile") == [str(folder / "qemu.pid")]
    smbios = _opts(cmd, "-smbios")[0]
    assert smbios.startswith("type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova")
    assert f"serial={UUID}" in smbios and "family=Virtual Machine" in smbios


def test_qemu_command_kvm(tmp_path: Path) -> None:
    cmd = _command(tmp_path, "kvm")
    assert _opts(cmd, "-accel") == ["kvm"] and _opts(cmd, "-cpu") == ["host"]


def test_qemu_command_escapes_commas(tmp_path: Path) -> None:
    assert escape("a,b,,c") == "a,,b,,,,c"
    folder = tmp_path / "odd,name" / UUID
    cmd = _command(tmp_path, folder=folder)
    esc = str(folder).replace(",", ",,")
    assert _opts(cmd, "-blockdev")[0].startswith(f"driver=file,filename={esc}/disk,")
    assert any(c.startswith(f"file,id=charserial0,path={esc}/console.log,")
               for c in _opts(cmd, "-chardev"))
    # -kernel and -append take their value whole: no escaping there
    assert _opts(cmd, "-kernel") == [f"{folder}/kernel"]


def test_qemu_command_without_network(tmp_path: Path) -> None:
    paths = paths_for(tmp_path / UUID)
    xml = domain_xml(make_guest(nets=[]), virt_type="qemu", paths=paths, network_info=[])
    cmd = qemu_command(xml, user_net=None, qmp_socket=paths.qmp_socket,
                       pidfile=paths.pidfile, console_log=paths.console_log)
    assert "-netdev" not in cmd
    assert not any(d.startswith("virtio-net-pci") for d in _opts(cmd, "-device"))


# -- volumes in the XML and on the command line

VOLUME_ID = "5b0e9f3c-1d2a-4e6b-8c7d-9a0b1c2d3e4f"
BY_PATH = ("/h/compute-1/dev/disk/by-path/ip-10.0.0.11:3260-iscsi-"
           f"iqn.2010-10.org.openstack:volume-{VOLUME_ID}-lun-1")


def _volume(target: str = "vdb", serial: str = VOLUME_ID, port: int = 1,
            path: str = BY_PATH, direct_io: bool = True) -> DomainDisk:
    return volume_disk(path=path, target=target, serial=serial, pci_bus=port,
                       direct_io=direct_io)


def test_a_volume_disk_is_written_like_novas_iscsi_disk(tmp_path: Path) -> None:
    paths = paths_for(tmp_path / UUID)
    xml = domain_xml(make_guest(), virt_type="qemu", paths=paths,
                     network_info=network_info(), volumes=[_volume(port=3)])
    root = ET.fromstring(xml)
    disks = root.findall("devices/disk")
    assert [d.get("type") for d in disks] == ["file", "block"]
    vol = disks[1]
    assert vol.get("device") == "disk"
    assert vol.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none",
                                         "io": "native"}
    assert vol.find("source").attrib == {"dev": BY_PATH}
    assert vol.find("target").attrib == {"dev": "vdb", "bus": "virtio"}
    assert vol.findtext("serial") == VOLUME_ID
    assert vol.find("alias").get("name") == "virtio-disk1"
    assert vol.find("address").attrib == {"type": "pci", "domain": "0x0000", "bus": "0x03",
                                          "slot": "0x00", "function": "0x0"}
    # disks stay together, before the interfaces
    tags = [el.tag for el in root.find("devices")]
    assert tags.index("interface") > max(i for i, t in enumerate(tags) if t == "disk")
    # without O_DIRECT (tmpfs): writethrough and no native AIO, as nova falls back
    slow = volume_disk_element(_volume(direct_io=False))
    assert slow.find("driver").attrib == {"name": "qemu", "type": "raw",
                                          "cache": "writethrough"}


def test_volume_disks_round_trip_through_the_xml(tmp_path: Path) -> None:
    paths = paths_for(tmp_path / UUID)
    xml = domain_xml(make_guest(), virt_type="qemu", paths=paths, network_info=network_info())
    dom = parse_domain(xml)
    assert [d.is_volume for d in dom.disks] == [False]
    assert free_root_port(dom) == 1
    first = _volume()
    xml = add_volume_disk(xml, first)
    second = _volume("vdc", "0f0e0d0c-0000-4000-8000-000000000002", port=2,
                     path="/odd, path:with/both", direct_io=False)
    xml = add_volume_disk(xml, second)
    dom = parse_domain(xml)
    assert dom.disks[0].path == str(paths.disk) and not dom.disks[0].is_volume
    assert dom.disks[1:] == [first, second]
    assert free_root_port(dom) == 3
    with pytest.raises(ValueError, match="already"):
        add_volume_disk(xml, first)
    xml = remove_volume_disk(xml, VOLUME_ID)
    dom = parse_domain(xml)
    assert dom.disks[1:] == [second] and free_root_port(dom) == 1
    assert remove_volume_disk(xml, "no-such-volume") == xml
    # the rest of the domain is untouched by the edits
    assert dom.interfaces[0].mac == MAC and dom.pcie_root_ports == PCIE_ROOT_PORTS
    assert ET.fromstring(xml).find("metadata/nova:instance", NS) is not None
    full = parse_domain(domain_xml(make_guest(), virt_type="qemu", paths=paths,
                                   network_info=[], volumes=[
                                       _volume(f"vd{chr(ord('b') + i)}", f"vol-{i}", i + 1)
                                       for i in range(PCIE_ROOT_PORTS)]))
    assert free_root_port(full) is None


@pytest.mark.parametrize(("target", "alias"), [
    ("vda", "virtio-disk0"), ("/dev/vdb", "virtio-disk1"), ("vdz", "virtio-disk25"),
    ("vdaa", "virtio-disk26")])
def test_disk_alias_counts_like_libvirt(target: str, alias: str) -> None:
    assert disk_alias(target) == alias


@pytest.mark.parametrize("target", ["sdb", "vd", "vdB", "/dev/vd1"])
def test_disk_alias_refuses_other_names(target: str) -> None:
    with pytest.raises(ValueError):
        disk_alias(target)


def test_volume_node_names_are_stable_and_short() -> None:
    storage, fmt = volume_node_names(VOLUME_ID)
    assert (storage, fmt) == ("volume-5b0e9f3c1d2a-storage", "volume-5b0e9f3c1d2a-format")
    assert volume_node_names(VOLUME_ID) == (storage, fmt)
    assert max(len(storage), len(fmt)) <= 31  # qemu's limit for node names


def test_qemu_command_boots_the_volumes_in_json_form(tmp_path: Path) -> None:
    odd = "/h/dev/disk/by-path/ip-10.0.0.11:3260-iscsi-iqn.x,y:volume-1-lun-1"
    paths = paths_for(tmp_path / UUID)
    xml = domain_xml(make_guest(), virt_type="qemu", paths=paths, network_info=network_info(),
                     volumes=[_volume(path=odd, port=2),
                              _volume("vdc", "0f0e0d0c-0000-4000-8000-000000000002", 5,
                                      direct_io=False)])
    net = UserNet.from_network_info(network_info(), "stub-proxy", "vm-a")
    cmd = qemu_command(xml, user_net=net, qmp_socket=paths.qmp_socket,
                       pidfile=paths.pidfile, console_log=paths.console_log)
    blockdevs = _opts(cmd, "-blockdev")
    assert blockdevs[0].startswith("driver=file,")  # the root disk as before
    nodes = [json.loads(b) for b in blockdevs[2:]]
    assert nodes[0] == {"driver": "file", "filename": odd,  # ':' and ',' reach qemu as is
                        "node-name": "volume-5b0e9f3c1d2a-storage", "auto-read-only": True,
                        "discard": "unmap", "cache": {"direct": True, "no-flush": False},
                        "aio": "native"}
    assert nodes[1] == {"driver": "raw", "node-name": "volume-5b0e9f3c1d2a-format",
                        "file": "volume-5b0e9f3c1d2a-storage", "read-only": False,
                        "cache": {"direct": True, "no-flush": False}}
    assert "aio" not in nodes[2] and nodes[2]["cache"]["direct"] is False
    devices = [json.loads(d) for d in _opts(cmd, "-device") if d.startswith("{")]
    assert devices == [
        {"driver": "virtio-blk-pci", "bus": "pci.2", "addr": "0x0",
         "drive": "volume-5b0e9f3c1d2a-format", "id": "virtio-disk1", "serial": VOLUME_ID},
        {"driver": "virtio-blk-pci", "bus": "pci.5", "addr": "0x0",
         "drive": "volume-0f0e0d0c0000-format", "id": "virtio-disk2",
         "serial": "0f0e0d0c-0000-4000-8000-000000000002", "write-cache": "off"}]
    # the root disk keeps its own ids; the volumes' device ids are hot-plug's
    assert any(d.startswith("virtio-blk-pci,drive=libvirt-1-format,id=virtio-disk0")
               for d in _opts(cmd, "-device"))
    # swapping the volumes: the command without them is the command of the plain domain
    plain = qemu_command(domain_xml(make_guest(), virt_type="qemu", paths=paths,
                                    network_info=network_info()),
                         user_net=net, qmp_socket=paths.qmp_socket, pidfile=paths.pidfile,
                         console_log=paths.console_log)
    assert without_volume_args(cmd) == plain
    assert without_volume_args(plain) == plain


def test_pcie_root_ports_fill_slots_eight_functions_each(tmp_path: Path) -> None:
    paths = paths_for(tmp_path / UUID)
    xml = domain_xml(make_guest(), virt_type="qemu", paths=paths, network_info=[])
    xml = xml.replace('<controller type="pci" index="0" model="pcie-root" />',
                      '<controller type="pci" index="0" model="pcie-root" />' + "".join(
                          f'<controller type="pci" index="{i}" model="pcie-root-port" />'
                          for i in range(PCIE_ROOT_PORTS + 1, 11)))
    cmd = qemu_command(xml, user_net=None, qmp_socket=paths.qmp_socket,
                       pidfile=paths.pidfile, console_log=paths.console_log)
    ports = [d for d in _opts(cmd, "-device") if d.startswith("pcie-root-port,")]
    assert len(ports) == 10
    assert ports[0].endswith("addr=0x2,multifunction=on")
    assert ports[7].endswith("addr=0x2.0x7")
    assert ports[8].endswith("addr=0x3,multifunction=on") and "id=pci.9" in ports[8]
    assert ports[9].endswith("addr=0x3.0x1")


def _shut_off_guest(tmp_path: Path) -> tuple[QemuDriver, list[tuple[str | None, str]]]:
    """A driver that adopted a guest with no qemu: attach and detach edit files only."""
    traced: list[tuple[str | None, str]] = []
    instances = tmp_path / "instances"
    driver = QemuDriver("compute-1", instances, ImageCache(instances / "_base", _no_download),
                        virt_type="qemu", metadata_url="http://x/metadata",
                        metadata_secret_file=tmp_path / "secret",
                        trace=lambda rid, summary, detail: traced.append((rid, summary)))
    paths = paths_for(instances / UUID)
    paths.folder.mkdir(parents=True)
    xml = domain_xml(make_guest(), virt_type="qemu", paths=paths, network_info=network_info())
    paths.xml.write_text(xml)
    net = UserNet.from_network_info(network_info(), "stub-proxy", "vm-a")
    command = qemu_command(xml, user_net=net, qmp_socket=paths.qmp_socket,
                           pidfile=paths.pidfile, console_log=paths.console_log)
    paths.record.write_text(json.dumps({
        "uuid": UUID, "name": "instance-0000000a", "virt_type": "qemu", "command": command,
        "pid": None, "netdev": "hostnet0", "paths": paths.as_dict()}))
    driver.adopt(UUID, SHUTDOWN)
    return driver, traced


def _attachment(tmp_path: Path, volume_id: str = VOLUME_ID, device: str = "/dev/vdb",
                request_id: str = "req-attach") -> VolumeAttachment:
    backing = tmp_path / "cinder-volumes" / f"volume-{volume_id}"
    backing.parent.mkdir(exist_ok=True)
    with open(backing, "wb") as f:
        f.truncate(64 * 1024**2)
    link = (tmp_path / "dev/disk/by-path" /
            f"ip-10.0.0.11:3260-iscsi-iqn.2010-10.org.openstack:volume-{volume_id}-lun-1")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(backing)
    return VolumeAttachment(volume_id=volume_id, device=device, path=str(link),
                            serial=volume_id, request_id=request_id)


def test_attach_and_detach_on_a_shut_off_guest_edit_the_xml_only(tmp_path: Path) -> None:
    driver, traced = _shut_off_guest(tmp_path)
    att = _attachment(tmp_path)
    asyncio.run(driver.attach_volume(UUID, att))
    info = driver.describe(UUID)
    assert info["pid"] is None and info["power_state"] == SHUTDOWN
    assert info["volumes"] == [{
        "volume_id": VOLUME_ID, "device": "/dev/vdb", "serial": VOLUME_ID, "path": att.path,
        "read_only": False, "qemu_device": "virtio-disk1", "root_port": "pci.1",
        "node_names": ["volume-5b0e9f3c1d2a-storage", "volume-5b0e9f3c1d2a-format"]}]
    disks = parse_domain(info["domain_xml"]).disks
    assert [(d.target, d.path, d.serial, d.pci_bus) for d in disks[1:]] == [
        ("vdb", att.path, VOLUME_ID, 1)]
    # the saved command (what power_on runs) has the volume, with hot-plug's ids
    devices = [json.loads(d) for d in _opts(info["command"], "-device") if d.startswith("{")]
    assert [(d["id"], d["bus"], d["serial"]) for d in devices] == [
        ("virtio-disk1", "pci.1", VOLUME_ID)]
    assert any("not running" in s for rid, s in traced if rid == "req-attach")
    assert not any(s.startswith(("blockdev-add", "device_add")) for _, s in traced)
    # guest.json keeps the volume for the next cloud
    again = QemuDriver("compute-1", driver.instances_dir, driver.image_cache, virt_type="qemu",
                       metadata_url="http://x/metadata", metadata_secret_file=tmp_path / "s")
    again.adopt(UUID, SHUTDOWN)
    assert again.describe(UUID)["volumes"] == info["volumes"]

    with pytest.raises(VolumeAttachFailed, match="already attached"):
        asyncio.run(driver.attach_volume(UUID, att))
    other = "0f0e0d0c-0000-4000-8000-000000000002"
    with pytest.raises(VolumeAttachFailed, match="already has a disk /dev/vdb"):
        asyncio.run(driver.attach_volume(UUID, _attachment(tmp_path, other)))
    gone = _attachment(tmp_path, other, "/dev/vdc")
    Path(gone.path).unlink()
    with pytest.raises(VolumeAttachFailed, match="no device"):
        asyncio.run(driver.attach_volume(UUID, gone))
    assert len(driver.describe(UUID)["volumes"]) == 1  # refusals change nothing

    asyncio.run(driver.detach_volume(UUID, VOLUME_ID, request_id="req-detach"))
    info = driver.describe(UUID)
    assert info["volumes"] == []
    assert [d.is_volume for d in parse_domain(info["domain_xml"]).disks] == [False]
    assert not any(d.startswith("{") for d in _opts(info["command"], "-device"))
    asyncio.run(driver.detach_volume(UUID, VOLUME_ID))  # not attached: no error
    with pytest.raises(GuestNotFound):
        asyncio.run(driver.attach_volume("no-such-guest", att))


def test_attach_fails_clearly_when_no_root_port_is_free(tmp_path: Path) -> None:
    driver, _ = _shut_off_guest(tmp_path)
    for i in range(PCIE_ROOT_PORTS):
        vid = f"0f0e0d0c-0000-4000-8000-00000000000{i}"
        asyncio.run(driver.attach_volume(
            UUID, _attachment(tmp_path, vid, f"/dev/vd{chr(ord('b') + i)}")))
    ports = {v["root_port"] for v in driver.describe(UUID)["volumes"]}
    assert ports == {f"pci.{i}" for i in range(1, PCIE_ROOT_PORTS + 1)}
    extra = _attachment(tmp_path, "0f0e0d0c-0000-4000-8000-0000000000ff", "/dev/vdz")
    with pytest.raises(VolumeAttachFailed,
                       match=f"no free PCIe root port .* all {PCIE_ROOT_PORTS} are taken"):
        asyncio.run(driver.attach_volume(UUID, extra))
    # a detach frees its port for the next volume
    asyncio.run(driver.detach_volume(UUID, "0f0e0d0c-0000-4000-8000-000000000002"))
    asyncio.run(driver.attach_volume(UUID, extra))
    assert driver.describe(UUID)["volumes"][-1]["root_port"] == "pci.3"


# -- host checks, constants, small helpers

def test_choose_virt_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(virt_host, "kvm_problem", lambda: None)
    assert virt_host.choose_virt_type("auto") == "kvm"
    assert virt_host.choose_virt_type("kvm") == "kvm"
    assert virt_host.choose_virt_type("qemu") == "qemu"
    monkeypatch.setattr(virt_host, "kvm_problem", lambda: "/dev/kvm is missing")
    assert virt_host.choose_virt_type("auto") == "qemu"
    with pytest.raises(ValueError, match="/dev/kvm is missing"):
        virt_host.choose_virt_type("kvm")
    with pytest.raises(ValueError):
        virt_host.choose_virt_type("xen")


def test_kvm_usable_never_raises() -> None:
    assert isinstance(virt_host.kvm_usable(), bool)
    assert isinstance(virt_host.qemu_available(), bool)


def test_power_states_match_the_compute_records() -> None:
    from labkit.cloud.compute import instances

    assert (NOSTATE, RUNNING, SHUTDOWN) == (instances.NOSTATE, instances.RUNNING,
                                            instances.SHUTDOWN)


def test_floating_ips_and_their_ports() -> None:
    nets = network_info(["172.24.4.10", "172.24.4.11"])
    assert floating_ips(nets) == ["172.24.4.10", "172.24.4.11"]
    assert preferred_port("172.24.4.10") == FORWARD_BASE + int(
        ipaddress.ip_address("172.24.4.10")) % 10000


# -- the image cache

def test_image_cache_downloads_once_and_names_files_like_nova(tmp_path: Path) -> None:
    calls: list[str] = []
    events: list[str] = []

    async def download(image_id: str, dest: Path) -> None:
        calls.append(image_id)
        await asyncio.sleep(0.05)
        dest.write_bytes(b"bytes of " + image_id.encode())

    cache = ImageCache(tmp_path / "_base", download, lambda s, d: events.append(s))

    async def scenario() -> list[tuple[Path, bool]]:
        together = await asyncio.gather(cache.fetch("img-1"), cache.fetch("img-1"))
        return [*together, await cache.fetch("img-1")]

    results = asyncio.run(scenario())
    assert calls == ["img-1"]  # the lock made the second fetch wait, then hit
    assert [hit for _, hit in results] == [False, True, True]
    assert results[0][0] == tmp_path / "_base" / cache_name("img-1")
    assert cache_name("img-1") == hashlib.sha1(b"img-1").hexdigest()  # noqa: S324
    assert results[0][0].read_bytes() == b"bytes of img-1"
    assert any("miss" in e for e in events) and any("hit" in e for e in events)
    assert [c["name"] for c in cache.cached()] == [cache_name("img-1")]


def test_image_cache_leaves_nothing_after_a_failed_download(tmp_path: Path) -> None:
    async def download(image_id: str, dest: Path) -> None:
        dest.write_bytes(b"half")
        raise RuntimeError("glance went away")

    cache = ImageCache(tmp_path / "_base", download)
    with pytest.raises(RuntimeError):
        asyncio.run(cache.fetch("img-2"))
    assert list((tmp_path / "_base").iterdir()) == []


# -- processes: kill_orphans checks /proc/<pid>/cmdline

def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args],
                            start_new_session=True)


def test_kill_orphans_kills_only_processes_naming_their_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hosts" / "compute-1" / "instances" / UUID
    folder.mkdir(parents=True)
    stranger = _sleeper()
    guest = _sleeper(f"{folder}/disk")
    try:
        (folder / "guest.json").write_text(json.dumps({"pid": stranger.pid}))
        (folder / "qemu.pid").write_text(f"{guest.pid}\n")
        # until the child has exec'd, its cmdline is still ours
        wait_until = time.monotonic() + 10
        while (str(folder).encode() not in Path(f"/proc/{guest.pid}/cmdline").read_bytes()
               and time.monotonic() < wait_until):
            time.sleep(0.01)
        assert kill_orphans(tmp_path) == 1
        assert guest.wait(timeout=5) == -signal.SIGKILL
        assert stranger.poll() is None  # a recycled pid is never killed
        assert kill_orphans(tmp_path) == 0
    finally:
        for p in (stranger, guest):
            p.kill()
            p.wait()


def test_console_output_reads_the_log(tmp_path: Path) -> None:
    driver = QemuDriver("compute-1", tmp_path, ImageCache(tmp_path / "_base", _no_download),
                        virt_type="qemu", metadata_url="http://x/metadata",
                        metadata_secret_file=tmp_path / "secret")
    assert driver.console_output(UUID) == ""
    (tmp_path / UUID).mkdir()
    (tmp_path / UUID / "console.log").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    assert driver.console_output(UUID) == "one\ntwo\nthree\n"
    assert driver.console_output(UUID, 2) == "two\nthree\n"
    assert driver.console_output(UUID, 0) == ""
    assert driver.power_state(UUID) == NOSTATE
    with pytest.raises(GuestNotFound):
        driver.describe(UUID)


async def _no_download(image_id: str, dest: Path) -> None:
    raise AssertionError("no download expected")


# -- with qemu: the QMP client, then real guests

def need(image: bool) -> Any:
    """The built guest image (or None when not asked for); skip or fail when missing."""
    missing = []
    if not virt_host.qemu_available():
        missing.append("qemu (apt-get install qemu-system-x86 qemu-utils)")
    found = None
    if image:
        from labkit.cloud.guest import built_image

        found = built_image()
        if found is None:
            missing.append("the tiny guest image (labkit image build)")
    if missing:
        why = "needs " + " and ".join(missing)
        if os.environ.get("LABKIT_REQUIRE_QEMU") == "1":
            pytest.fail(f"LABKIT_REQUIRE_QEMU=1 but this test {why}")
        pytest.skip(why)
    return found


@pytest.fixture
def bare_qemu(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A qemu with no machine at all: a monitor and a user-mode netdev."""
    need(image=False)
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
         "-chardev", f"socket,id=mon,path={sock},server=on,wait=off",
         "-mon", "chardev=mon,mode=control",
         "-netdev", "user,id=hostnet0,net=172.16.1.0/24,restrict=on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield proc, sock
    finally:
        proc.kill()
        proc.wait()


def test_qmp_client_against_a_real_qemu(bare_qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = bare_qemu
    with QMP(sock) as q:
        assert q.greeting is not None and "QMP" in q.greeting
        assert q.query_status()["status"] == "running"
        assert "qemu" in q.execute("query-version")
        with pytest.raises(QMPError, match="CommandNotFound"):
            q.execute("no-such-command")
        port = _free_port()
        q.hostfwd_add("hostnet0", port, 22)
        with pytest.raises(QMPError):
            q.hostfwd_add("hostnet0", port, 22)  # taken now
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # qemu listens for the forward
        q.hostfwd_remove("hostnet0", port)
        q.hostfwd_remove("hostnet0", port)  # gone already: no error
        assert "hostnet0" in q.hmp("info network")
        q.quit()
        assert proc.wait(timeout=5) == 0
        assert any(e["event"] == "SHUTDOWN" for e in q.events)
    with pytest.raises(QMPError):
        QMP(sock, timeout=0.5).query_status()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Rig:
    """A driver on its own event loop, with a stub metadata service and an ssh key."""

    home: Path
    image: Any
    loop: asyncio.AbstractEventLoop
    proxy: Callable[[str, Path, str, str], str]
    key: Path | None
    changes: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    traced: list[tuple[str | None, str]] = field(default_factory=list)
    drivers: list[QemuDriver] = field(default_factory=list)

    def run(self, coro: Any, timeout: float = BOOT_TIMEOUT) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def driver(self, host: str = "compute-1") -> QemuDriver:
        files = {"img-machine": self.image.disk, "img-kernel": self.image.kernel,
                 "img-ramdisk": self.image.ramdisk}

        async def download(image_id: str, dest: Path) -> None:
            self.downloads.append(image_id)
            shutil.copyfile(files[image_id], dest)

        instances = self.home / "hosts" / host / "instances"
        d = QemuDriver(host, instances, ImageCache(instances / "_base", download),
                       virt_type=VIRT_TYPE, metadata_url="http://127.0.0.1:9/metadata",
                       metadata_secret_file=self.home / "metadata_secret",
                       on_power_change=self.changes.append, metadata_proxy=self.proxy,
                       trace=lambda rid, summary, detail: self.traced.append((rid, summary)))
        self.drivers.append(d)
        return d

    def wait_console(self, driver: QemuDriver, uuid: str, text: str, count: int = 1) -> str:
        """Run the loop until the console shows `text` `count` times."""
        async def poll() -> str:
            while True:
                out = driver.console_output(uuid)
                if out.count(text) >= count:
                    return out
                await asyncio.sleep(0.1)
        try:
            return self.run(poll())
        except TimeoutError:
            pytest.fail(f"no {text!r} on the console of {uuid}:\n"
                        f"{driver.console_output(uuid, 30)}")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    image = need(image=True)
    home = tmp_path_factory.mktemp("qemu-home")
    meta = home / "metadata"
    (meta / "latest/meta-data/public-keys/0").mkdir(parents=True)
    (meta / "latest/meta-data/hostname").write_text("vm-a\n")
    key = None
    if shutil.which("ssh-keygen"):
        key = home / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        shutil.copyfile(key.with_suffix(".pub"),
                        meta / "latest/meta-data/public-keys/0/openssh-key")
    script = home / "stub_proxy.py"
    script.write_text(STUB_PROXY)

    def proxy(url: str, secret: Path, uuid: str, project: str) -> str:
        return f"{sys.executable} -S {script} {meta}"

    loop = asyncio.new_event_loop()
    r = Rig(home=home, image=image, loop=loop, proxy=proxy, key=key)
    try:
        yield r
    finally:
        for d in r.drivers:
            with contextlib.suppress(Exception):  # kill_orphans below is the backstop
                r.run(d.shutdown(), timeout=30)
        kill_orphans(home)
        loop.close()


def _pid(driver: QemuDriver, uuid: str) -> int:
    pid = driver.describe(uuid)["pid"]
    assert isinstance(pid, int)
    return pid


def _dead(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.settimeout(30)
        return s.recv(64)


@pytest.fixture(scope="module")
def guest_a(rig: Rig) -> tuple[QemuDriver, str]:
    driver = rig.driver()
    started = time.monotonic()
    rig.run(driver.spawn(make_guest()))
    rig.wait_console(driver, UUID, "labkit-tiny ready")
    print(f"\nboot to ready ({VIRT_TYPE}): {time.monotonic() - started:.1f} s")
    return driver, UUID


def test_spawn_boots_a_real_guest(rig: Rig, guest_a: tuple[QemuDriver, str]) -> None:
    driver, uuid = guest_a
    assert driver.power_state(uuid) == RUNNING
    out = driver.console_output(uuid)
    assert "labkit-tiny: hostname vm-a, address 172.16.1.5/24, metadata 172.16.1.254" in out
    info = driver.describe(uuid)
    assert info["driver"] == "qemu" and info["virt_type"] == VIRT_TYPE
    assert "<name>instance-0000000a</name>" in info["domain_xml"]
    assert info["command"][0].endswith("qemu-system-x86_64")
    assert f"-accel {'kvm' if VIRT_TYPE == 'kvm' else 'tcg'}" in " ".join(info["command"])
    assert [(e["role"], e["hit"]) for e in info["image_cache"]] == [
        ("machine image", False), ("kernel", False), ("ramdisk", False)]
    folder = Path(info["folder"])
    for name in ("disk", "kernel", "ramdisk", "libvirt.xml", "console.log", "guest.json",
                 "qemu.pid"):
        assert (folder / name).exists(), name
    disk = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(folder / "disk")],
        capture_output=True, text=True, check=True).stdout)
    assert disk["format"] == "qcow2" and disk["virtual-size"] == 1024**3
    assert disk["backing-filename"] == info["image_cache"][0]["path"]
    assert Path(info["image_cache"][0]["path"]).parent.name == "_base"
    # each step joined the build's request in the trace
    steps = [summary for rid, summary in rig.traced if rid == "req-0001"]
    for step in ("copy the kernel", "create the root disk", "write libvirt.xml", "start qemu",
                 "is running"):
        assert any(step in s for s in steps), (step, steps)
    # the pid is qemu's, and its command line names the instance folder
    cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes().split(b"\0")
    assert os.fsencode(f"{folder}/disk") in b" ".join(cmdline)


def test_floating_ip_forwards_to_the_guests_ssh(rig: Rig,
                                               guest_a: tuple[QemuDriver, str]) -> None:
    driver, uuid = guest_a
    rig.run(driver.network_changed(uuid, network_info(["172.24.4.10"])))
    forwards = driver.describe(uuid)["forwards"]
    assert len(forwards) == 1
    fwd = forwards[0]
    assert fwd["floating_ip"] == "172.24.4.10" and fwd["host"] == "127.0.0.1"
    assert fwd["guest_port"] == 22
    assert fwd["port"] >= preferred_port("172.24.4.10")
    assert json.loads((Path(driver.describe(uuid)["folder"]) / "guest.json").read_text())[
        "forwards"] == forwards
    assert _banner(fwd["port"]).startswith(b"SSH-2.0-dropbear")
    if rig.key is not None and shutil.which("ssh"):
        done = subprocess.run(
            ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
             "-i", str(rig.key), "-p", str(fwd["port"]), "root@127.0.0.1", "hostname"],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "vm-a"
    # the same network info again changes nothing; without the floating IP it is gone
    rig.run(driver.network_changed(uuid, network_info(["172.24.4.10"])))
    assert driver.describe(uuid)["forwards"] == forwards
    rig.run(driver.network_changed(uuid, network_info()))
    assert driver.describe(uuid)["forwards"] == []
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", fwd["port"]), 2):
        pass


def test_an_unasked_exit_is_reported_and_power_on_restarts(
        rig: Rig, guest_a: tuple[QemuDriver, str]) -> None:
    driver, uuid = guest_a
    rig.run(driver.network_changed(uuid, network_info(["172.24.4.10"])))
    port = driver.describe(uuid)["forwards"][0]["port"]
    pid = _pid(driver, uuid)
    rig.changes.clear()
    os.kill(pid, signal.SIGKILL)

    async def reported() -> None:
        while uuid not in rig.changes:
            await asyncio.sleep(0.05)
    rig.run(reported(), timeout=10)
    assert driver.power_state(uuid) == SHUTDOWN
    assert driver.describe(uuid)["pid"] is None

    rig.run(driver.power_on(uuid))
    assert driver.power_state(uuid) == RUNNING
    assert _pid(driver, uuid) != pid
    rig.wait_console(driver, uuid, "labkit-tiny ready", count=2)  # the log was appended to
    assert driver.describe(uuid)["forwards"][0]["port"] == port  # forwards applied again
    assert _banner(port).startswith(b"SSH-2.0-dropbear")
    assert rig.changes == [uuid]  # power_on itself is no news


def test_power_off_reboot_and_power_on(rig: Rig, guest_a: tuple[QemuDriver, str]) -> None:
    driver, uuid = guest_a
    pid = _pid(driver, uuid)
    rig.changes.clear()
    rig.run(driver.reboot(uuid, hard=False))
    assert _pid(driver, uuid) == pid and driver.power_state(uuid) == RUNNING
    rig.run(driver.reboot(uuid, hard=True))
    assert _pid(driver, uuid) != pid and driver.power_state(uuid) == RUNNING
    pid = _pid(driver, uuid)
    rig.run(driver.power_off(uuid))
    assert _dead(pid) and driver.power_state(uuid) == SHUTDOWN
    assert Path(driver.describe(uuid)["folder"]).exists()
    rig.run(driver.power_on(uuid))
    assert driver.power_state(uuid) == RUNNING
    rig.run(asyncio.sleep(0.3))
    assert rig.changes == []  # none of these was an unasked exit


def test_destroy_leaves_no_process_and_no_folder(rig: Rig,
                                                 guest_a: tuple[QemuDriver, str]) -> None:
    driver, uuid = guest_a
    pid = _pid(driver, uuid)
    folder = Path(driver.describe(uuid)["folder"])
    socket_dir = Path(driver.describe(uuid)["qmp_socket"]).parent
    rig.run(driver.destroy(uuid))
    assert _dead(pid)
    assert not folder.exists()
    if socket_dir.name.startswith("labkit-qmp-"):
        assert not socket_dir.exists()
    assert driver.power_state(uuid) == NOSTATE
    rig.run(driver.destroy(uuid))  # absent: no error
    with pytest.raises(GuestNotFound):
        rig.run(driver.power_on(uuid))


def test_adopt_after_a_restart_then_kill_orphans(rig: Rig) -> None:
    uuid = "0b7e3c1a-2222-4d5e-8f90-1a2b3c4d5e6f"
    first = rig.driver("compute-2")
    downloads = len(rig.downloads)
    rig.run(first.spawn(make_guest(uuid, root_gb=0, hostname="vm-b")))
    assert len(rig.downloads) == downloads + 3  # a new host: a cache of its own
    pid = _pid(first, uuid)
    disk = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", first.describe(uuid)["folder"] + "/disk"],
        capture_output=True, text=True, check=True).stdout)
    assert disk["virtual-size"] == rig.image.disk.stat().st_size  # root_gb 0: the image's size

    # the cloud "crashes": its driver is gone, qemu (in a session of its own) runs on
    first.guests.clear()
    second = rig.driver("compute-2")
    second.adopt(uuid, RUNNING)
    assert second.power_state(uuid) == RUNNING
    assert second.describe(uuid)["pid"] == pid
    rig.wait_console(second, uuid, "labkit-tiny ready")

    # the state is thrown away without a clean stop: kill_orphans finds the guest
    second.guests.clear()
    assert kill_orphans(rig.home / "none") == 0
    assert kill_orphans(rig.home) >= 1
    assert _dead(pid)
    third = rig.driver("compute-2")
    third.adopt(uuid, RUNNING)
    assert third.power_state(uuid) == SHUTDOWN  # adopted, but nothing runs
    assert third.describe(uuid)["pid"] is None
    rig.run(third.destroy(uuid))


def test_spawn_failure_says_why(rig: Rig, tmp_path: Path) -> None:
    driver = rig.driver("compute-3")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not a kernel" * 100)
    files = {"img-machine": rig.image.disk, "img-kernel": garbage,
             "img-ramdisk": rig.image.ramdisk}

    async def download(image_id: str, dest: Path) -> None:
        shutil.copyfile(files[image_id], dest)

    driver.image_cache.download = download
    uuid = "7c6d5e4f-3333-4a2b-9c1d-0e9f8a7b6c5d"
    with pytest.raises(SpawnFailed) as failed:
        rig.run(driver.spawn(make_guest(uuid)))
    assert "qemu" in str(failed.value)
    rig.run(driver.destroy(uuid))
    assert not (driver.instances_dir / uuid).exists()


# -- volumes: hot-plug over QMP into a real qemu

@pytest.fixture
def paused_q35(tmp_path: Path) -> Iterator[Path]:
    """A q35 machine that never runs (-S): no guest kernel, so nothing ever lets go of a
    device that device_del asks for. Its QMP socket."""
    need(image=False)
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-S", "-nodefaults",
         "-display", "none", "-chardev", f"socket,id=mon,path={sock},server=on,wait=off",
         "-mon", "chardev=mon,mode=control",
         "-device", "pcie-root-port,port=0x10,chassis=1,id=pci.1,bus=pcie.0,addr=0x2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield sock
    finally:
        proc.kill()
        proc.wait()


def test_qmp_keeps_events_that_arrive_while_a_command_runs(paused_q35: Path) -> None:
    with QMP(paused_q35) as q:
        q.execute("cont")  # RESUME comes in among the answers
        q.execute("stop")
        q.execute("query-status")
        assert q.wait_event("STOP", timeout=2)["event"] == "STOP"
        assert q.wait_event("RESUME", timeout=2)["event"] == "RESUME"
        with pytest.raises(QMPTimeout, match="no RESUME event"):
            q.wait_event("RESUME", timeout=0.3)


def test_hotplug_on_a_real_qemu_and_a_guest_that_never_lets_go(paused_q35: Path,
                                                               tmp_path: Path) -> None:
    from labkit.cloud.virt.hotplug import Hotplug

    steps: list[str] = []
    backing = tmp_path / "vol,with:odd chars"
    backing.write_bytes(b"")
    os.truncate(backing, 16 * 1024**2)
    disk = _volume(path=str(backing), port=1, direct_io=False)
    plug = Hotplug(paused_q35, lambda summary, detail: steps.append(summary), detach_timeout=1)
    asyncio.run(plug.plug(disk))
    assert [s.split()[0] for s in steps] == ["blockdev-add", "blockdev-add", "device_add"]
    with QMP(paused_q35) as q:
        assert "virtio-disk1" in {p["name"] for p in q.execute(
            "qom-list", path="/machine/peripheral")}
        # qemu keeps the whole volume id; the guest's virtio-blk reads only 20 bytes of it
        assert q.execute("qom-get", path="/machine/peripheral/virtio-disk1",
                         property="serial") == VOLUME_ID
        names = {n["node-name"] for n in q.execute("query-named-block-nodes", flat=True)}
        assert set(volume_node_names(VOLUME_ID)) <= names
    # a second volume on a port that does not exist: refused, and its nodes rolled back
    other = "0f0e0d0c-0000-4000-8000-000000000002"
    with pytest.raises(VolumeAttachFailed, match="hot-plug of volume .* failed"):
        asyncio.run(plug.plug(_volume("vdc", other, port=7, path=str(backing))))
    with QMP(paused_q35) as q:
        names = {n["node-name"] for n in q.execute("query-named-block-nodes", flat=True)}
        assert not set(volume_node_names(other)) & names
    # nothing runs to answer the PCIe attention button: the detach times out, twice
    steps.clear()
    with pytest.raises(VolumeAttachFailed, match="did not release vdb .* within 1 s"):
        asyncio.run(plug.unplug(disk))
    assert steps == ["device_del virtio-disk1"]
    with pytest.raises(VolumeAttachFailed, match="try the detach again"):
        asyncio.run(plug.unplug(disk))
    assert steps[-1] == "device_del virtio-disk1: an unplug is already pending"


def _ssh(rig: Rig, port: int, command: str) -> subprocess.CompletedProcess[str]:
    assert rig.key is not None
    return subprocess.run(
        ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
         "-i", str(rig.key), "-p", str(port), "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=120)


def _ssh_until(rig: Rig, port: int, command: str, timeout: float = 60) -> str:
    """Run `command` in the guest until it succeeds (a hot-plugged disk takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        done = _ssh(rig, port, command)
        if done.returncode == 0:
            return done.stdout
        if time.monotonic() > deadline:
            pytest.fail(f"{command!r} kept failing: {done.stdout}{done.stderr}")
        time.sleep(0.5)


MARKER = "labkit volume marker 6"
UUID_C = "c0c0c0c0-4444-4c4c-8c4c-0c0c0c0c0c0c"
UUID_D = "d0d0d0d0-5555-4d5d-8d5d-0d0d0d0d0d0d"


@dataclass
class VolumeRig:
    driver: QemuDriver
    att: VolumeAttachment
    ports: dict[str, int]


@pytest.fixture(scope="module")
def volume_rig(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> VolumeRig:
    if rig.key is None or not shutil.which("ssh"):
        pytest.skip("needs ssh and ssh-keygen")
    driver = rig.driver("compute-4")
    ports = {}
    for uuid, fip in ((UUID_C, "172.24.4.30"), (UUID_D, "172.24.4.31")):
        rig.run(driver.spawn(make_guest(uuid, nets=network_info([fip]))))
        ports[uuid] = driver.describe(uuid)["forwards"][0]["port"]
    for uuid in ports:
        rig.wait_console(driver, uuid, "labkit-tiny ready")
    att = _attachment(tmp_path_factory.mktemp("volumes"))
    return VolumeRig(driver, att, ports)


def test_a_volume_hot_plugs_into_a_running_guest(rig: Rig, volume_rig: VolumeRig) -> None:
    driver, att, port = volume_rig.driver, volume_rig.att, volume_rig.ports[UUID_C]
    assert "vdb" not in _ssh_until(rig, port, "ls /sys/block")
    rig.traced.clear()
    rig.run(driver.attach_volume(UUID_C, att))
    steps = [s for rid, s in rig.traced if rid == "req-attach"]
    assert [s.split()[0] for s in steps[:3]] == ["blockdev-add", "blockdev-add", "device_add"]
    # the guest sees /dev/vdb with the first 20 bytes of the volume id as its serial
    # (virtio-blk's id is 20 bytes; nova passes the whole id and guests see it cut short)
    assert _ssh_until(rig, port, "cat /sys/block/vdb/serial").strip() == VOLUME_ID[:20]
    assert _ssh_until(rig, port, "cat /sys/block/vdb/size").strip() == str(64 * 2048)
    _ssh_until(rig, port, f"printf '{MARKER}' | dd of=/dev/vdb bs=512 conv=sync,fsync")
    assert driver.describe(UUID_C)["volumes"][0]["qemu_device"] == "virtio-disk1"
    assert "<serial>" + VOLUME_ID in driver.describe(UUID_C)["domain_xml"]


def test_detach_unplugs_the_disk_and_the_guest_stays_healthy(
        rig: Rig, volume_rig: VolumeRig) -> None:
    driver, att, port = volume_rig.driver, volume_rig.att, volume_rig.ports[UUID_C]
    rig.traced.clear()
    rig.run(driver.detach_volume(UUID_C, VOLUME_ID, request_id="req-detach"))
    steps = [s for rid, s in rig.traced if rid == "req-detach"]
    assert steps[:4] == ["device_del virtio-disk1", "DEVICE_DELETED",
                         "blockdev-del volume-5b0e9f3c1d2a-format",
                         "blockdev-del volume-5b0e9f3c1d2a-storage"]
    assert driver.describe(UUID_C)["volumes"] == []
    assert "vdb" not in _ssh_until(rig, port, "ls /sys/block")
    assert _ssh_until(rig, port, "echo alive").strip() == "alive"
    assert driver.power_state(UUID_C) == RUNNING
    # the bytes the guest wrote are in the volume's file on the host
    assert Path(att.path).read_bytes()[:len(MARKER)] == MARKER.encode()


def test_a_volume_attached_while_shut_off_is_there_after_power_on(
        rig: Rig, volume_rig: VolumeRig) -> None:
    driver, att, port = volume_rig.driver, volume_rig.att, volume_rig.ports[UUID_D]
    rig.run(driver.power_off(UUID_D))
    rig.run(driver.attach_volume(UUID_D, att))
    rig.run(driver.power_on(UUID_D))
    rig.wait_console(driver, UUID_D, "labkit-tiny ready", count=2)
    # the data written in the other guest reads back here
    assert _ssh_until(rig, port, "cat /sys/block/vdb/serial").strip() == VOLUME_ID[:20]
    assert _ssh_until(rig, port, f"head -c {len(MARKER)} /dev/vdb") == MARKER


def test_volumes_survive_a_hard_reboot_and_a_restart_of_the_cloud(
        rig: Rig, volume_rig: VolumeRig) -> None:
    driver, port = volume_rig.driver, volume_rig.ports[UUID_D]
    rig.run(driver.reboot(UUID_D, hard=True))
    rig.wait_console(driver, UUID_D, "labkit-tiny ready", count=3)
    assert _ssh_until(rig, port, f"head -c {len(MARKER)} /dev/vdb") == MARKER
    # a new driver adopts the running guest; its detach names the devices the command
    # line made at boot
    volumes = driver.describe(UUID_D)["volumes"]
    driver.guests.pop(UUID_D)
    adopted = rig.driver("compute-4")
    adopted.adopt(UUID_D, RUNNING)
    assert adopted.describe(UUID_D)["volumes"] == volumes
    rig.traced.clear()
    rig.run(adopted.detach_volume(UUID_D, VOLUME_ID, request_id="req-detach-2"))
    assert "DEVICE_DELETED" in [s for rid, s in rig.traced if rid == "req-detach-2"]
    assert "vdb" not in _ssh_until(rig, port, "ls /sys/block")
    rig.run(adopted.destroy(UUID_D))
    rig.run(driver.destroy(UUID_C))
