"""What nova's metadata service tells a guest about itself: the OpenStack and EC2 trees.

This mirrors nova.api.metadata.base. A guest asks for paths such as
`/openstack/latest/meta_data.json` or `/latest/meta-data/hostname`; the answer is
built from the instance's row, its cached network info and its image. Two trees:

- OpenStack's: `/openstack` lists dated versions and `latest`; each version lists
  meta_data.json, user_data (only when there is some), password, vendor_data.json,
  network_data.json and vendor_data2.json, the later files from the versions that
  added them.
- EC2's: `/` lists the EC2 API versions; `/<version>/meta-data/` is a tree of plain
  values (ami-id, hostname, local-ipv4, public-keys/0/openssh-key, ...) and
  `/<version>/user-data` the raw user data.

No HTTP here: labkit.cloud.compute.api.metadata serves these documents. Where labkit
differs from nova: EC2 ids come from the instance's row id and the image's UUID
rather than from nova's EC2 id mapping tables; meta_data.json has no `random_seed`
(stored notebook outputs stay stable, and the tiny guest seeds its own RNG); the
password is readable (empty) but never stored.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from labkit.cloud.netinfo import ips

# EC2's API versions, oldest first; nova serves these and `latest` (= the last one)
EC2_VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
                "2008-02-01", "2008-09-01", "2009-04-04")

# OpenStack's metadata versions: each names the release that changed the documents
FOLSOM, GRIZZLY, HAVANA, LIBERTY = "2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15"
NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY = "2016-06-30", "2016-10-06", "2017-02-22", "2018-08-27"
VICTORIA, EPOXY = "2020-10-14", "2025-04-04"
OPENSTACK_VERSIONS = (FOLSOM, GRIZZLY, HAVANA, LIBERTY, NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY,
                      VICTORIA, EPOXY)

TEXT_PLAIN = "text/plain"
APPLICATION_JSON = "application/json"
DHCP_DOMAIN = "novalocal"  # nova's [api] dhcp_domain default
ROOT_DEVICE = "/dev/vda"  # what the libvirt driver names a virtio root disk
# vif types nova shows as themselves in network_data.json's links; others are "phy"
EXPOSED_VIF_TYPES = ("bridge", "dvs", "hw_veb", "hyperv", "ovs", "tap", "vhostuser", "vif")


class MetadataNotFound(LookupError):
    """No such path in this instance's metadata (nova answers 404)."""


class Listing(dict):
    """A folder of the EC2 tree. `label`, when set, is what its parent's listing shows for
    it instead of `<key>/` (the EC2 API shows `0=<key name>` under public-keys/)."""

    def __init__(self, items: dict[str, Any], label: str | None = None) -> None:
        super().__init__(items)
        self.label = label


@dataclass(frozen=True)
class Document:
    """One answer: its bytes and the content type nova gives them."""

    body: bytes
    content_type: str = TEXT_PLAIN

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def ec2_id(uuid: str, prefix: str) -> str:
    """An EC2-style id for a glance image: `ami-`, `aki-` or `ari-` and 8 hex digits.

    Nova numbers images in a mapping table of its own; labkit takes the first 8 hex
    digits of the image's UUID, which is as stable and needs no table."""
    return f"{prefix}-{uuid.replace('-', '')[:8].lower()}"


def render(data: Any) -> bytes:
    """A tree node as the EC2 API prints it: a folder lists its entries one a line, sorted,
    subfolders with a trailing slash; a list is one item a line; a value is itself."""
    if isinstance(data, dict):
        lines = []
        for key in sorted(data):
            value = data[key]
            if isinstance(value, Listing) and value.label is not None:
                lines.append(value.label)
            elif isinstance(value, dict):
                lines.append(f"{key}/")
            else:
                lines.append(key)
        return "\n".join(lines).encode()
    if isinstance(data, list | tuple):
        return "\n".join(str(item) for item in data).encode()
    if isinstance(data, bytes):
        return data
    return str(data).encode()


def _after(required: str, requested: str, versions: tuple[str, ...]) -> bool:
    return versions.index(requested) >= versions.index(required)


def _netmask(cidr: str | None) -> str | None:
    return str(ipaddress.ip_network(cidr, strict=False).netmask) if cidr else None


def _subnet_meta(subnet: dict[str, Any]) -> dict[str, Any]:
    return subnet.get("meta") or {}


def _dhcp(subnet: dict[str, Any]) -> bool:
    """Does the guest get this subnet's address by DHCP? Nova's network info marks it with
    `enable_dhcp` or the DHCP server's address in the subnet's meta; labkit's cache marks
    the opposite (`dhcp_server: None` when the subnet has DHCP off)."""
    meta = _subnet_meta(subnet)
    if meta.get("enable_dhcp") or meta.get("dhcp_server"):
        return True
    return "dhcp_server" not in meta and "enable_dhcp" not in meta


def _version_of(subnet: dict[str, Any]) -> int:
    if subnet.get("version"):
        return int(subnet["version"])
    if subnet.get("cidr"):
        return ipaddress.ip_network(subnet["cidr"], strict=False).version
    ips = subnet.get("ips") or []
    return ipaddress.ip_address(ips[0]["address"]).version if ips else 4


def _dns_services(subnet: dict[str, Any]) -> list[dict[str, str]]:
    return [{"type": "dns", "address": d["address"]} for d in subnet.get("dns") or []
            if d.get("address")]


def network_data(network_info: list[dict[str, Any]]) -> dict[str, Any] | None:
    """network_data.json from nova's network info: links (one per VIF with a subnet),
    networks (the first IPv4 and first IPv6 subnet of each) and services (DNS servers).

    None when the instance has no network info at all (nova then serves `{}`)."""
    if not network_info:
        return None
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    services: list[dict[str, str]] = []
    for vif in network_info:
        network = vif.get("network") or {}
        subnets = network.get("subnets") or []
        if not subnets:
            continue
        first = {v: next((s for s in subnets if _version_of(s) == v), None) for v in (4, 6)}
        # nova leaves the MTU to DHCP when a subnet names its DHCP server
        mtu = None if any(_subnet_meta(s).get("dhcp_server") for s in subnets) \
            else (network.get("meta") or {}).get("mtu")
        link = {"id": vif.get("devname") or f"interface{len(links)}", "vif_id": vif["id"],
                "type": vif.get("type") if vif.get("type") in EXPOSED_VIF_TYPES else "phy",
                "mtu": mtu, "ethernet_mac_address": vif.get("address")}
        links.append(link)
        for version in (4, 6):
            subnet = first[version]
            if subnet is None or not subnet.get("ips"):
                continue
            networks.append(_network_entry(vif, subnet, version, len(networks), link["id"]))
            services += [s for s in _dns_services(subnet) if s not in services]
    return {"links": links, "networks": networks, "services": services}


def _network_entry(vif: dict[str, Any], subnet: dict[str, Any], version: int, number: int,
                   link_id: str) -> dict[str, Any]:
    """One entry of network_data.json's networks: DHCP says only which link; a static
    address carries its netmask, routes and DNS servers."""
    net_id = vif["network"]["id"]
    meta = _subnet_meta(subnet)
    mode = meta.get("ipv6_address_mode")
    if mode is None and _dhcp(subnet):
        return {"id": f"network{number}", "type": f"ipv{version}_dhcp", "link": link_id,
                "network_id": net_id}
    gateway = (subnet.get("gateway") or {}).get("address")
    default = "0.0.0.0" if version == 4 else "::"
    routes = [{"network": default, "netmask": default, "gateway": gateway}] if gateway else []
    for route in subnet.get("routes") or []:
        dest = ipaddress.ip_network(route["cidr"], strict=False)
        routes.append({"network": str(dest.network_address), "netmask": str(dest.netmask),
                       "gateway": (route.get("gateway") or {}).get("address")})
    return {"id": f"network{number}", "type": f"ipv{version}" + (f"_{mode}" if mode else ""),
            "link": link_id, "ip_address": subnet["ips"][0]["address"],
            "netmask": _netmask(subnet.get("cidr")),
            "routes": routes, "network_id": net_id, "services": _dns_services(subnet)}


def ip_info(network_info: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The instance's addresses as the EC2 tree wants them: fixed IPv4, fixed IPv6, floating."""
    fixed4: list[str] = []
    fixed6: list[str] = []
    floating: list[str] = []
    for _vif, _subnet, ip in ips(network_info):
        if ip.get("type", "fixed") != "fixed":
            continue
        address = ip["address"]
        (fixed6 if ipaddress.ip_address(address).version == 6 else fixed4).append(address)
        floating += [f["address"] for f in ip.get("floating_ips") or []]
    return {"fixed_ips": fixed4, "fixed_ip6s": fixed6, "floating_ips": floating}


@dataclass
class InstanceMetadata:
    """Everything the metadata service says about one instance, read once from the database
    (as nova's InstanceMetadata is), then looked up path by path."""

    uuid: str
    name: str
    hostname: str
    project_id: str
    launch_index: int = 0
    availability_zone: str | None = None
    reservation_id: str = ""
    ec2_instance_id: str = "i-00000000"
    flavor_name: str = ""
    key_name: str | None = None
    key_data: str | None = None
    user_data: bytes | None = None
    meta: dict[str, str] = field(default_factory=dict)
    security_groups: list[str] = field(default_factory=list)
    network_info: list[dict[str, Any]] = field(default_factory=list)
    ami_id: str = ""
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    block_devices: dict[str, str] = field(default_factory=lambda: {"ami": "vda",
                                                                    "root": ROOT_DEVICE})
    dhcp_domain: str = DHCP_DOMAIN
    # what the guest may have posted to /openstack/latest/password (labkit stores none)
    password: str = ""

    @classmethod
    def from_instance(cls, instance: Any, network_info: list[dict[str, Any]],
                      image: dict[str, Any] | None = None,
                      dhcp_domain: str = DHCP_DOMAIN) -> InstanceMetadata:
        """Read an Instance row (labkit.cloud.compute.instances), its cached network info and,
        when it still exists, its glance image (for kernel_id and ramdisk_id)."""
        user_data = None
        if instance.user_data is not None:
            try:
                user_data = base64.b64decode(instance.user_data)
            except binascii.Error:  # the API checks it; a row written otherwise shows as is
                user_data = instance.user_data.encode()
        properties = (image or {}).get("properties") or {}
        flavor = instance.flavor or {}
        return cls(
            uuid=instance.uuid, name=instance.display_name, hostname=instance.hostname,
            project_id=instance.project_id, launch_index=instance.launch_index or 0,
            availability_zone=instance.availability_zone,
            reservation_id=instance.reservation_id or "",
            ec2_instance_id=f"i-{instance.id:08x}", flavor_name=flavor.get("name", ""),
            key_name=instance.key_name, key_data=instance.key_data, user_data=user_data,
            meta=dict(instance.metadata_ or {}),
            security_groups=list(instance.security_groups or []),
            network_info=list(network_info or []),
            ami_id=ec2_id(instance.image_ref, "ami") if instance.image_ref else "",
            kernel_id=ec2_id(properties["kernel_id"], "aki")
            if properties.get("kernel_id") else None,
            ramdisk_id=ec2_id(properties["ramdisk_id"], "ari")
            if properties.get("ramdisk_id") else None,
            block_devices=_block_devices(flavor), dhcp_domain=dhcp_domain)

    # -- the documents

    @property
    def fqdn(self) -> str:
        """The hostname as the metadata service gives it: with nova's dhcp_domain, if any."""
        return f"{self.hostname}.{self.dhcp_domain}" if self.dhcp_domain else self.hostname

    def meta_data(self, version: str = "latest") -> dict[str, Any]:
        """meta_data.json of an OpenStack metadata version."""
        version = self._openstack_version(version)
        data: dict[str, Any] = {"uuid": self.uuid}
        if self.meta:
            data["meta"] = dict(self.meta)
        if self.key_name and self.key_data:
            data["public_keys"] = {self.key_name: self.key_data}
            key_type = "x509" if "BEGIN CERTIFICATE" in self.key_data else "ssh"
            data["keys"] = [{"name": self.key_name, "type": key_type, "data": self.key_data}]
        data["hostname"] = self.fqdn
        data["name"] = self.name
        data["launch_index"] = self.launch_index
        data["availability_zone"] = self.availability_zone
        if _after(LIBERTY, version, OPENSTACK_VERSIONS):
            data["project_id"] = self.project_id
        if _after(NEWTON_ONE, version, OPENSTACK_VERSIONS):
            data["devices"] = []  # tagged devices: labkit tags none
        if _after(VICTORIA, version, OPENSTACK_VERSIONS):
            data["dedicated_cpus"] = []
        return data

    def network_data(self) -> dict[str, Any]:
        return network_data(self.network_info) or {}

    def openstack_files(self, version: str = "latest") -> list[str]:
        """What `/openstack/<version>` lists, in nova's order."""
        version = self._openstack_version(version)
        files = ["meta_data.json"]
        if self.user_data is not None:
            files.append("user_data")
        for since, name in ((GRIZZLY, "password"), (HAVANA, "vendor_data.json"),
                            (LIBERTY, "network_data.json"), (NEWTON_TWO, "vendor_data2.json")):
            if _after(since, version, OPENSTACK_VERSIONS):
                files.append(name)
        return files

    def ec2_tree(self, version: str = "latest") -> Listing:
        """An EC2 version's tree: meta-data/ and (when there is some) user-data."""
        version = EC2_VERSIONS[-1] if version == "latest" else version
        if version not in EC2_VERSIONS:
            raise MetadataNotFound(version)
        ips = ip_info(self.network_info)
        md: dict[str, Any] = {
            "ami-id": self.ami_id, "ami-launch-index": self.launch_index,
            "ami-manifest-path": "FIXME",  # nova's placeholder, kept for EC2 clients
            "instance-id": self.ec2_instance_id, "hostname": self.fqdn,
            "local-ipv4": ips["fixed_ips"][0] if ips["fixed_ips"] else "",
            "reservation-id": self.reservation_id, "security-groups": self.security_groups,
        }
        if self.key_name:
            md["public-keys"] = Listing({"0": Listing({"openssh-key": self.key_data or ""},
                                                      label=f"0={self.key_name}")})
        if _after("2007-01-19", version, EC2_VERSIONS):
            md["local-hostname"] = self.fqdn
            md["public-hostname"] = self.fqdn
            md["public-ipv4"] = ips["floating_ips"][0] if ips["floating_ips"] else ""
        if _after("2007-08-29", version, EC2_VERSIONS):
            md["instance-type"] = self.flavor_name
        if _after("2007-12-15", version, EC2_VERSIONS):
            md["block-device-mapping"] = Listing(dict(self.block_devices))
            if self.kernel_id:
                md["kernel-id"] = self.kernel_id
            if self.ramdisk_id:
                md["ramdisk-id"] = self.ramdisk_id
        if _after("2008-02-01", version, EC2_VERSIONS):
            md["placement"] = Listing({"availability-zone": self.availability_zone})
        if _after("2008-09-01", version, EC2_VERSIONS):
            md["instance-action"] = "none"
        tree: dict[str, Any] = {"meta-data": Listing(md)}
        if self.user_data is not None:
            tree["user-data"] = self.user_data
        return Listing(tree)

    # -- looking a path up

    def lookup(self, path: str, today: datetime.date | None = None) -> Document:
        """The answer to a GET of `path` (as the guest sends it, `/` first or not, a trailing
        slash or not); MetadataNotFound for a path nova answers with 404."""
        tokens = posixpath.normpath("/" + path.lstrip("/")).split("/")[1:]
        if tokens == [""]:
            return Document(render([*EC2_VERSIONS, "latest"]))
        if tokens[0] == "openstack":
            return self._openstack(tokens[1:], today or datetime.date.today())
        if tokens[0] == "ec2":
            tokens = tokens[1:]
            if not tokens:
                return Document(render([*EC2_VERSIONS, "latest"]))
        return self._ec2(tokens)

    def _openstack(self, tokens: list[str], today: datetime.date) -> Document:
        if not tokens:
            # versions dated after today are hidden from the listing (still served if asked)
            shown = [v for v in OPENSTACK_VERSIONS if v <= today.isoformat()]
            return Document(render([*shown, "latest"]))
        version = self._openstack_version(tokens[0])
        name = "/".join(tokens[1:])
        if not name:
            return Document(render(self.openstack_files(version)))
        if name not in self.openstack_files(version):
            raise MetadataNotFound(name)
        if name == "meta_data.json":
            return _json(self.meta_data(version), APPLICATION_JSON)
        if name == "user_data":
            assert self.user_data is not None
            return Document(self.user_data)
        if name == "password":
            return Document(self.password.encode())
        if name == "vendor_data.json":
            return _json({}, APPLICATION_JSON)  # no StaticJSON vendordata file configured
        if name == "vendor_data2.json":
            return _json({"static": {}}, APPLICATION_JSON)
        # nova serves network_data.json as text/plain: it never sets the JSON type for it
        return _json(self.network_data(), TEXT_PLAIN)

    def _openstack_version(self, version: str) -> str:
        if version == "latest":
            return OPENSTACK_VERSIONS[-1]
        if version not in OPENSTACK_VERSIONS:
            raise MetadataNotFound(version)
        return version

    def _ec2(self, tokens: list[str]) -> Document:
        node: Any = self.ec2_tree(tokens[0])
        for token in tokens[1:]:
            if not isinstance(node, dict) or token not in node:
                raise MetadataNotFound("/".join(tokens))
            node = node[token]
        return Document(render(node))


def _json(data: Any, content_type: str) -> Document:
    return Document(json.dumps(data).encode(), content_type)


def _block_devices(flavor: dict[str, Any]) -> dict[str, str]:
    """The EC2 block-device-mapping: the root disk, and the flavor's ephemeral and swap
    disks on the next virtio names, as the libvirt driver lays them out."""
    devices = {"ami": ROOT_DEVICE.removeprefix("/dev/"), "root": ROOT_DEVICE}
    letters = iter("bcdefgh")
    if int(flavor.get("ephemeral_gb") or 0) > 0:
        devices["ephemeral0"] = f"/dev/vd{next(letters)}"
    if int(flavor.get("swap") or 0) > 0:
        devices["swap"] = f"/dev/vd{next(letters)}"
    return devices
