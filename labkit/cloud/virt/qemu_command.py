"""The qemu command line for a domain XML, as libvirt's qemu driver would build it.

libvirt turns the domain XML nova defines into a qemu process; labkit does the same
without libvirtd, and without root. What differs from libvirt on a compute host:

- Networking. libvirt plugs a tap device into the port's qbr bridge (and from there
  br-int, br-tun, the tunnels to the network node). Creating taps and bridges needs
  root, so the NIC here is backed by qemu's user-mode network (`-netdev user`, slirp):
  its DHCP server hands out exactly the port's fixed IP (dhcpstart=), the gateway is
  the subnet's gateway (host=), `restrict=on` keeps the guest from reaching the host
  or the internet, a `guestfwd` sends the metadata address's port 80 to a proxy
  command that plays neutron's metadata proxy, and floating IPs are loopback ports
  forwarded to the guest's ssh (`hostfwd_add` at run time). The XML still says
  type="bridge" with the qbr/tap names, because that is what nova would write.
  Only the first vif gets a NIC with real traffic: every user-mode network is a
  private world of its own, so a second NIC would reach nothing.
- Firmware. With a kernel to boot directly, `-bios qboot.rom` replaces SeaBIOS (it
  boots a Linux kernel about a second sooner under TCG).
- The CPU. For KVM `-cpu host` (libvirt expands host-model to a named model plus
  features; passing the host through is the simple equivalent); for TCG, the model
  named in the XML.
- The monitor is a QMP socket in the instance folder rather than libvirt's private
  one, and qemu runs in a session of its own so it outlives the cloud's process.

qemu parses most option values as key=value lists split on commas: a comma inside a
value is written ",," (`escape`). Volumes are written in qemu's JSON form instead, the
same dictionaries hot-plug sends over QMP (volume_blockdevs, volume_device): their
host paths (/dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-<n>) hold ':' and may hold
',' and no escaping can go wrong there.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.cloud.netinfo import subnet_dns, subnet_gateway
from labkit.cloud.virt.libvirt_xml import (
    DomainDisk,
    first_ipv4,
    metadata_address,
    parse_domain,
)

QBOOT = Path("/usr/share/qemu/qboot.rom")
NETDEV_ID = "hostnet0"  # libvirt's name for the first NIC's backend
SMBIOS_FIELDS = ("manufacturer", "product", "version", "serial", "uuid", "family")
VOLUME_NODE_PREFIX = "volume-"


def escape(value: str) -> str:
    """A value for qemu's comma-separated option syntax."""
    return value.replace(",", ",,")


@dataclass(frozen=True)
class UserNet:
    """qemu's user-mode network for the first vif, shaped like the port's subnet."""

    net: str  # the subnet's CIDR
    host: str  # the subnet's gateway: the address slirp answers on
    dhcpstart: str  # the port's fixed IP: the first (and only) lease
    metadata_ip: str  # inside `net`, where the guest finds the metadata service (port 80)
    proxy_command: str  # run per connection to metadata_ip:80 (HTTP on stdin/stdout)
    dns: str | None = None
    hostname: str | None = None
    netdev_id: str = NETDEV_ID

    @classmethod
    def from_network_info(cls, network_info: list[dict[str, Any]], proxy_command: str,
                          hostname: str | None = None) -> UserNet | None:
        """From nova's network_info: None when the guest has no vif with an IPv4 address.
        Only the first vif is used (see the module docstring)."""
        if not network_info:
            return None
        found = first_ipv4(network_info[0])
        if found is None:
            return None
        subnet, fixed = found
        net = ipaddress.ip_network(subnet["cidr"], strict=False)
        gateway = subnet_gateway(subnet)
        dns_list = subnet_dns(subnet)
        meta = metadata_address(subnet["cidr"], [fixed, gateway, *dns_list])
        taken = {fixed, meta}
        if gateway is None:  # a subnet without a gateway: slirp still needs an address
            gateway = _lowest_free(net, taken)
        taken.add(gateway)
        # slirp's DNS must lie inside `net` (a subnet's dns_nameservers are often outside)
        dns = next((d for d in dns_list if ipaddress.ip_address(d) in net and d not in taken),
                   None)
        if dns is None and str(net.network_address + 3) in taken:
            dns = _lowest_free(net, taken)  # slirp's default .3 would collide
        return cls(net=str(net), host=gateway, dhcpstart=fixed, metadata_ip=meta,
                   proxy_command=proxy_command, dns=dns, hostname=hostname)

    def netdev_arg(self) -> str:
        if "," in self.proxy_command:
            # inside guestfwd's value qemu's ",," would reach the shell as ",": refuse early
            raise ValueError("the metadata proxy command must not contain commas")
        parts = [f"user,id={self.netdev_id}", f"net={self.net}", f"host={self.host}",
                 f"dhcpstart={self.dhcpstart}"]
        if self.dns:
            parts.append(f"dns={self.dns}")
        if self.hostname:
            parts.append(f"hostname={escape(self.hostname)}")
        parts += ["restrict=on",
                  f"guestfwd=tcp:{self.metadata_ip}:80-cmd:{self.proxy_command}"]
        return ",".join(parts)


# -- volumes: the same arguments on the command line and over QMP

def volume_node_names(volume_id: str) -> tuple[str, str]:
    """qemu's block node names for a volume's file and raw format nodes: derived from the
    volume id, so a detach after a restart of the cloud names the nodes the command line
    made, and short enough for qemu (node names are at most 31 characters)."""
    short = volume_id.replace("-", "")[:12]
    return f"{VOLUME_NODE_PREFIX}{short}-storage", f"{VOLUME_NODE_PREFIX}{short}-format"


def volume_blockdevs(disk: DomainDisk) -> list[dict[str, Any]]:
    """blockdev-add arguments for a volume, bottom up: a file node on the host's device
    path (a symlink to the target's file), then raw on top, as libvirt adds them."""
    if disk.serial is None:
        raise ValueError("a volume disk needs its serial (the volume id)")
    storage, fmt = volume_node_names(disk.serial)
    direct = disk.cache in ("none", "directsync")
    cache = {"direct": direct, "no-flush": False}
    file_node: dict[str, Any] = {"driver": "file", "filename": disk.path, "node-name": storage,
                                 "auto-read-only": True, "discard": "unmap", "cache": cache}
    if disk.io == "native" and direct:  # qemu refuses native AIO without O_DIRECT
        file_node["aio"] = "native"
    return [file_node, {"driver": disk.format, "node-name": fmt, "file": storage,
                        "read-only": disk.read_only, "cache": cache}]


def volume_device(disk: DomainDisk) -> dict[str, Any]:
    """device_add arguments: virtio-blk-pci on the disk's root port, serial = volume id."""
    if disk.serial is None or disk.pci_bus is None or disk.alias is None:
        raise ValueError("a volume disk needs its serial, root port and alias")
    device: dict[str, Any] = {"driver": "virtio-blk-pci", "bus": f"pci.{disk.pci_bus}",
                              "addr": "0x0", "drive": volume_node_names(disk.serial)[1],
                              "id": disk.alias, "serial": disk.serial}
    if disk.cache == "writethrough":
        device["write-cache"] = "off"
    return device


def volume_args(disks: list[DomainDisk]) -> list[str]:
    """-blockdev and -device for each volume, in qemu's JSON form."""
    args: list[str] = []
    for disk in disks:
        if disk.is_volume:
            for node in volume_blockdevs(disk):
                args += ["-blockdev", json.dumps(node)]
            args += ["-device", json.dumps(volume_device(disk))]
    return args


def without_volume_args(cmd: list[str]) -> list[str]:
    """`cmd` without what volume_args added (before adding the domain's current volumes)."""
    out: list[str] = []
    i = 0
    while i < len(cmd):
        if cmd[i] in ("-blockdev", "-device") and i + 1 < len(cmd) and _is_volume_arg(cmd[i + 1]):
            i += 2
            continue
        out.append(cmd[i])
        i += 1
    return out


def _is_volume_arg(value: str) -> bool:
    if not value.startswith("{"):
        return False
    try:
        spec = json.loads(value)
    except ValueError:
        return False
    name = spec.get("node-name") or spec.get("drive") or ""
    return isinstance(name, str) and name.startswith(VOLUME_NODE_PREFIX)


def _lowest_free(net: ipaddress.IPv4Network | ipaddress.IPv6Network, taken: set[str]) -> str:
    for addr in net.hosts():
        if str(addr) not in taken:
            return str(addr)
    raise ValueError(f"subnet {net} has no free address")


def qemu_command(xml: str, *, user_net: UserNet | None, qmp_socket: Path | str,
                 pidfile: Path | str, console_log: Path | str) -> list[str]:
    """The argv that runs the domain in `xml` (see the module docstring for what differs
    from libvirt). `user_net` None: no NIC."""
    dom = parse_domain(xml)
    kvm = dom.virt_type == "kvm"
    machine = "q35,usb=off,vmport=off,dump-guest-core=off,hpet=off"
    cmd = [dom.emulator,
           "-name", f"guest={escape(dom.name)},debug-threads=on",
           "-uuid", dom.uuid,
           "-machine", machine,
           "-accel", "kvm" if kvm else "tcg",
           "-cpu", "host" if kvm or dom.cpu_mode == "host-passthrough"
           else (dom.cpu_model or "qemu64")]
    if dom.kernel and QBOOT.exists():
        cmd += ["-bios", str(QBOOT)]
    cmd += ["-m", f"{dom.memory_kib // 1024}",
            "-smp", f"{dom.vcpus},sockets={dom.vcpus},cores=1,threads=1",
            "-no-user-config", "-nodefaults", "-nographic",
            "-msg", "timestamp=on"]
    smbios = [f"{k}={escape(dom.smbios[k])}" for k in SMBIOS_FIELDS if dom.smbios.get(k)]
    if smbios:
        cmd += ["-smbios", ",".join(["type=1", *smbios])]
    cmd += ["-rtc", "base=utc,driftfix=slew"]
    if dom.kernel:
        # -kernel/-initrd/-append take their value whole: no comma escaping
        cmd += ["-kernel", dom.kernel]
        if dom.initrd:
            cmd += ["-initrd", dom.initrd]
        if dom.cmdline:
            cmd += ["-append", dom.cmdline]
    # the monitor libvirt talks to, here ours (qmp.py)
    cmd += ["-chardev", f"socket,id=charmonitor,path={escape(str(qmp_socket))},"
                        "server=on,wait=off",
            "-mon", "chardev=charmonitor,id=monitor,mode=control",
            "-pidfile", str(pidfile)]
    # pcie-root-ports for volumes (hot-plugged or not); eight functions per slot from
    # slot 2 on, the first one multifunction, as libvirt packs them
    for i in range(1, dom.pcie_root_ports + 1):
        slot, function = 2 + (i - 1) // 8, (i - 1) % 8
        addr = (f"addr={slot:#x},multifunction=on" if function == 0
                else f"addr={slot:#x}.{function:#x}")
        cmd += ["-device", f"pcie-root-port,port={0x10 + i - 1:#x},chassis={i},id=pci.{i},"
                           f"bus=pcie.0,{addr}"]
    for n, disk in enumerate((d for d in dom.disks if not d.is_volume), start=1):
        direct = "on" if disk.cache in ("none", "directsync") else "off"
        cmd += ["-blockdev", f"driver=file,filename={escape(disk.path)},"
                             f"node-name=libvirt-{n}-storage,auto-read-only=on,"
                             f"discard=unmap,cache.direct={direct},cache.no-flush=off",
                "-blockdev", f"node-name=libvirt-{n}-format,read-only=off,"
                             f"driver={disk.format},file=libvirt-{n}-storage",
                "-device", f"virtio-blk-pci,drive=libvirt-{n}-format,id=virtio-disk{n - 1}"
                           + (",bootindex=1" if n == 1 else "")
                           + (",write-cache=off" if disk.cache == "writethrough" else "")]
    if user_net is not None and dom.interfaces:
        # only the first interface: see the module docstring
        nic = dom.interfaces[0]
        device = f"virtio-net-pci,netdev={user_net.netdev_id},id=net0,mac={nic.mac}"
        if nic.mtu:
            device += f",host_mtu={nic.mtu}"
        cmd += ["-netdev", user_net.netdev_arg(), "-device", device]
    cmd += ["-chardev", f"file,id=charserial0,path={escape(str(console_log))},append=on",
            "-device", "isa-serial,chardev=charserial0,id=serial0",
            "-device", "virtio-balloon-pci,id=balloon0"]
    # volumes last, so the driver can swap them when one is attached or detached
    return cmd + volume_args(dom.disks)
