"""The model's tables as a `Topology`: the plain snapshot the wiring is computed from."""

from __future__ import annotations

from sqlalchemy import select

from labkit.cloud.network import local_vlans
from labkit.cloud.network.common import ROUTER_INTERFACE, Tx
from labkit.cloud.network.tables import (
    FloatingIPRow,
    NetworkRow,
    PortRow,
    RouterRow,
    SecurityGroupRow,
    SubnetRow,
)
from labkit.cloud.network.topology import (
    FixedIP,
    FloatingIP,
    Host,
    Network,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    Topology,
)


def build(tx: Tx) -> Topology:
    """Everything, for every host. A port counts as on a host only once it is bound there
    through an OVS agent (vif_type "ovs"): a failed binding wires nothing."""
    s = tx.session
    ports = list(s.scalars(select(PortRow).order_by(PortRow.seq)))
    interfaces: dict[str, list[str]] = {}
    for port in ports:
        if port.device_owner == ROUTER_INTERFACE:
            interfaces.setdefault(port.device_id, []).append(port.id)
    return Topology(
        hosts=tuple(Host(name=h["name"], role=h.get("role", "compute"),
                         local_ip=h.get("local_ip"), management_ip=h.get("management_ip"))
                    for h in tx.env.hosts),
        networks=tuple(
            Network(id=n.id, name=n.name, project_id=n.project_id, network_type=n.network_type,
                    segmentation_id=n.segmentation_id, physical_network=n.physical_network,
                    external=n.external, mtu=n.mtu)
            for n in s.scalars(select(NetworkRow).order_by(NetworkRow.seq))),
        subnets=tuple(
            Subnet(id=n.id, network_id=n.network_id, cidr=n.cidr, gateway_ip=n.gateway_ip,
                   enable_dhcp=n.enable_dhcp, dns_nameservers=tuple(n.dns_nameservers or ()))
            for n in s.scalars(select(SubnetRow).order_by(SubnetRow.seq))),
        ports=tuple(
            Port(id=p.id, network_id=p.network_id, mac_address=p.mac_address,
                 fixed_ips=tuple(FixedIP(a.subnet_id, a.ip_address) for a in p.fixed_ips),
                 device_owner=p.device_owner, device_id=p.device_id,
                 host=p.host if p.vif_type == "ovs" else None, status=p.status,
                 admin_state_up=p.admin_state_up,
                 security_group_ids=tuple(p.security_group_ids),
                 port_security_enabled=p.port_security_enabled,
                 allowed_address_pairs=tuple((a["ip_address"], a.get("mac_address"))
                                             for a in p.allowed_address_pairs or ()))
            for p in ports),
        security_groups=tuple(
            SecurityGroup(id=g.id, name=g.name, project_id=g.project_id, rules=tuple(
                SecurityGroupRule(id=r.id, security_group_id=g.id, direction=r.direction,
                                  ethertype=r.ethertype, protocol=r.protocol,
                                  port_range_min=r.port_range_min,
                                  port_range_max=r.port_range_max,
                                  remote_ip_prefix=r.remote_ip_prefix,
                                  remote_group_id=r.remote_group_id)
                for r in g.rules))
            for g in s.scalars(select(SecurityGroupRow).order_by(SecurityGroupRow.seq))),
        routers=tuple(
            Router(id=r.id, name=r.name, project_id=r.project_id, host=r.host,
                   gateway_port_id=r.gw_port_id, enable_snat=r.enable_snat,
                   interface_port_ids=tuple(interfaces.get(r.id, ())))
            for r in s.scalars(select(RouterRow).order_by(RouterRow.seq))),
        floating_ips=tuple(
            FloatingIP(id=f.id, floating_ip_address=f.floating_ip_address,
                       floating_network_id=f.floating_network_id, port_id=f.fixed_port_id,
                       fixed_ip_address=f.fixed_ip_address, router_id=f.router_id,
                       status=f.status)
            for f in s.scalars(select(FloatingIPRow).order_by(FloatingIPRow.seq))),
        local_vlans=local_vlans.all_tags(tx),
        tunnel_type=tx.env.lab.tunnel_type,
    )
