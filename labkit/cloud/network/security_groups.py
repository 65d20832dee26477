"""Security groups and their rules, and each project's "default" group.

A project's default group is made on its first neutron request, with neutron's four
default rules: egress IPv4 and IPv6 to anywhere, ingress IPv4 and IPv6 from members of
the group itself. Any other new group starts with the two egress rules. Rules are
checked as neutron checks them (port ranges against the protocol, prefix against the
ethertype, duplicates refused), protocols stored as given, by name or number.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import func, or_, select

from labkit.cloud.network import quotas, views
from labkit.cloud.network.common import Tx, in_use, invalid, standard, touch
from labkit.cloud.network.exceptions import NeutronNotFound, invalid_input
from labkit.cloud.network.tables import (
    DefaultSecurityGroupRow,
    PortSecurityGroupRow,
    SecurityGroupRow,
    SecurityGroupRuleRow,
)

# neutron_lib's IP_PROTOCOL_MAP
PROTOCOLS = {"ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0, "icmp": 1,
             "igmp": 2, "ip": 0, "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44,
             "ipv6-icmp": 58, "icmpv6": 58, "ipv6-nonxt": 59, "ipv6-opts": 60,
             "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46, "sctp": 132, "tcp": 6,
             "udp": 17, "udplite": 136, "vrrp": 112}
NUMBER_NAMES = {str(n): name for name, n in PROTOCOLS.items() if name not in ("icmpv6", "ip")}
PORT_PROTOCOLS = ("dccp", "sctp", "tcp", "udp")
IPV6_ONLY = ("ipv6-encap", "ipv6-frag", "ipv6-icmp", "icmpv6", "ipv6-nonxt", "ipv6-opts",
             "ipv6-route", "41", "44", "58", "59", "60", "43")
DEFAULT_NAME = "default"


# -- lookups ------------------------------------------------------------------------------


def default_id(tx: Tx, project_id: str) -> str | None:
    row = tx.session.get(DefaultSecurityGroupRow, project_id)
    return row.security_group_id if row else None


def ensure_default(tx: Tx, project_id: str) -> str:
    """The project's default group, made with neutron's four rules if it has none."""
    found = default_id(tx, project_id)
    if found is not None:
        return found
    group = _new_group(tx, project_id, {"name": DEFAULT_NAME,
                                        "description": "Default security group"})
    tx.session.add(DefaultSecurityGroupRow(project_id=project_id, security_group_id=group.id))
    for ethertype in ("IPv4", "IPv6"):
        _add_rule(tx, group, {"direction": "ingress", "ethertype": ethertype,
                              "remote_group_id": group.id})
    tx.session.flush()
    tx.trace("securitygroups", f"default security group for project {project_id}",
             security_group_id=group.id)
    return group.id


def visible(tx: Tx, group_id: str) -> SecurityGroupRow:
    row = tx.session.scalar(select(SecurityGroupRow).where(SecurityGroupRow.id == group_id))
    if row is None or not tx.owns(row.project_id):
        raise NeutronNotFound("security_group", group_id)
    return row


def visible_rule(tx: Tx, rule_id: str) -> SecurityGroupRuleRow:
    row = tx.session.scalar(select(SecurityGroupRuleRow).where(
        SecurityGroupRuleRow.id == rule_id))
    if row is None:
        raise NeutronNotFound("security_group_rule", rule_id)
    if not tx.owns(row.project_id):
        group = tx.session.scalar(select(SecurityGroupRow.project_id).where(
            SecurityGroupRow.id == row.security_group_id))
        if not tx.owns(group):
            raise NeutronNotFound("security_group_rule", rule_id)
    return row


def _default_ids(tx: Tx) -> set[str]:
    return set(tx.session.scalars(select(DefaultSecurityGroupRow.security_group_id)))


def view(tx: Tx, row: SecurityGroupRow) -> dict[str, Any]:
    return views.security_group(row, row.id in _default_ids(tx))


def rule_view(tx: Tx, row: SecurityGroupRuleRow) -> dict[str, Any]:
    return views.security_group_rule(row, row.security_group_id in _default_ids(tx))


def listing(tx: Tx) -> list[dict[str, Any]]:
    query = select(SecurityGroupRow).order_by(SecurityGroupRow.seq)
    if not tx.admin:
        query = query.where(SecurityGroupRow.project_id == tx.ctx.project_id)
    defaults = _default_ids(tx)
    return [views.security_group(r, r.id in defaults) for r in tx.session.scalars(query)]


def rule_listing(tx: Tx) -> list[dict[str, Any]]:
    query = select(SecurityGroupRuleRow).order_by(SecurityGroupRuleRow.seq)
    if not tx.admin:
        own_groups = select(SecurityGroupRow.id).where(
            SecurityGroupRow.project_id == tx.ctx.project_id)
        query = query.where(or_(SecurityGroupRuleRow.project_id == tx.ctx.project_id,
                                SecurityGroupRuleRow.security_group_id.in_(own_groups)))
    defaults = _default_ids(tx)
    return [views.security_group_rule(r, r.security_group_id in defaults)
            for r in tx.session.scalars(query)]


# -- groups -------------------------------------------------------------------------------


def _new_group(tx: Tx, project_id: str, body: dict[str, Any]) -> SecurityGroupRow:
    group = SecurityGroupRow(id=tx.env.ids.uuid("security-group"), project_id=project_id,
                             name=body.get("name") or "",
                             stateful=body.get("stateful", True), **standard(tx, body))
    tx.session.add(group)
    tx.session.flush()
    for ethertype in ("IPv4", "IPv6"):
        _add_rule(tx, group, {"direction": "egress", "ethertype": ethertype})
    return group


def create(tx: Tx, body: dict[str, Any]) -> SecurityGroupRow:
    project = tx.project_for(body)
    ensure_default(tx, project)
    if (body.get("name") or "").lower() == DEFAULT_NAME:
        raise in_use("SecurityGroupDefaultAlreadyExists", "Default security group already "
                     "exists.")
    quotas.check(tx, project, "security_group")
    return _new_group(tx, project, body)


def update(tx: Tx, row: SecurityGroupRow, body: dict[str, Any]) -> None:
    if row.id == default_id(tx, row.project_id) and body.get("name", row.name) != row.name:
        raise in_use("SecurityGroupCannotUpdateDefault",
                     "Updating default security group not allowed.")
    if (body.get("name") or "").lower() == DEFAULT_NAME and row.name != DEFAULT_NAME:
        raise in_use("SecurityGroupDefaultAlreadyExists", "Default security group already "
                     "exists.")
    if "stateful" in body and body["stateful"] != row.stateful and _in_use(tx, row.id):
        raise in_use("SecurityGroupInUse", f"Security Group {row.id} in use.")
    for key in ("name", "description", "stateful"):
        if key in body:
            setattr(row, key, body[key] if body[key] is not None else "")
    touch(row, tx)


def _in_use(tx: Tx, group_id: str) -> bool:
    return bool(tx.session.scalar(select(func.count()).select_from(PortSecurityGroupRow).where(
        PortSecurityGroupRow.security_group_id == group_id)))


def delete(tx: Tx, row: SecurityGroupRow) -> None:
    if _in_use(tx, row.id):
        raise in_use("SecurityGroupInUse", f"Security Group {row.id} in use.")
    if row.id == default_id(tx, row.project_id):
        if not tx.admin:
            raise in_use("SecurityGroupCannotRemoveDefault",
                         "Insufficient rights for removing default security group.")
        tx.session.delete(tx.session.get(DefaultSecurityGroupRow, row.project_id))
    # rules elsewhere that name this group as their remote go with it, as in neutron
    for rule in tx.session.scalars(select(SecurityGroupRuleRow).where(
            SecurityGroupRuleRow.remote_group_id == row.id)):
        tx.session.delete(rule)
    tx.session.delete(row)


def check_for_port(tx: Tx, project_id: str, group_ids: list[str]) -> list[str]:
    """The groups a port asks for: each must exist and be its project's (or asked by admin)."""
    found: list[str] = []
    for group_id in group_ids:
        row = tx.session.scalar(select(SecurityGroupRow).where(SecurityGroupRow.id == group_id))
        if row is None or (row.project_id != project_id and not tx.admin):
            raise NeutronNotFound("security_group", group_id)
        if group_id not in found:
            found.append(group_id)
    return found


# -- rules --------------------------------------------------------------------------------


def create_rule(tx: Tx, body: dict[str, Any]) -> SecurityGroupRuleRow:
    group = visible(tx, body.get("security_group_id") or "")
    # a rule belongs to its group's project unless an admin names another
    named = body.get("project_id") or body.get("tenant_id")
    project = tx.project_for(body) if named else group.project_id
    quotas.check(tx, project, "security_group_rule")
    return _add_rule(tx, group, body, project, check=True)


def _add_rule(tx: Tx, group: SecurityGroupRow, body: dict[str, Any],
              project: str | None = None, check: bool = False) -> SecurityGroupRuleRow:
    rule = normalize(body)
    if check:
        _validate(tx, rule)
        key = rule_key(rule)
        for existing in group.rules:
            if rule_key(_as_dict(existing)) == key:
                raise in_use("SecurityGroupRuleExists", "Security group rule already exists. "
                             f"Rule id is {existing.id}.")
    row = SecurityGroupRuleRow(
        id=tx.env.ids.uuid("security-group-rule"), project_id=project or group.project_id,
        security_group_id=group.id, remote_group_id=rule["remote_group_id"],
        direction=rule["direction"], ethertype=rule["ethertype"], protocol=rule["protocol"],
        port_range_min=rule["port_range_min"], port_range_max=rule["port_range_max"],
        remote_ip_prefix=rule["remote_ip_prefix"], **standard(tx, body))
    group.rules.append(row)
    touch(group, tx)
    tx.session.flush()
    return row


def delete_rule(tx: Tx, row: SecurityGroupRuleRow) -> None:
    group = tx.session.scalar(select(SecurityGroupRow).where(
        SecurityGroupRow.id == row.security_group_id))
    tx.session.delete(row)
    if group is not None:
        touch(group, tx)


def update_rule(tx: Tx, row: SecurityGroupRuleRow, body: dict[str, Any]) -> None:
    if "description" in body:
        row.description = body["description"] or ""
    touch(row, tx)


def normalize(body: dict[str, Any]) -> dict[str, Any]:
    """A rule's fields in neutron's stored form: ethertype cased, protocol by name or number."""
    ethertype = body.get("ethertype") or "IPv4"
    ethertype = {"ipv4": "IPv4", "ipv6": "IPv6"}.get(str(ethertype).lower())
    if ethertype is None:
        raise invalid("SecurityGroupRuleInvalidEtherType",
                      f"Security group rule for ethertype '{body.get('ethertype')}' not "
                      "supported. Allowed values are ['IPv4', 'IPv6'].")
    direction = body.get("direction")
    if direction not in ("ingress", "egress"):
        raise invalid_input(f"'{direction}' is not in ['ingress', 'egress'].")
    protocol = _protocol(body.get("protocol"), ethertype)
    low, high = body.get("port_range_min"), body.get("port_range_max")
    low = int(low) if low is not None else None
    high = int(high) if high is not None else None
    if protocol in (*PORT_PROTOCOLS, "6", "17", "33", "132") and (low, high) == (1, 65535):
        low = high = None  # the whole range means no range, as neutron stores it
    prefix = body.get("remote_ip_prefix")
    if prefix:
        try:
            network = ipaddress.ip_interface(prefix)
        except ValueError:
            raise invalid("InvalidCIDR", f"Invalid CIDR {prefix} given as IP prefix.") from None
        prefix = f"{network.ip}/{network.network.prefixlen}"
    return {"direction": direction, "ethertype": ethertype, "protocol": protocol,
            "port_range_min": low, "port_range_max": high, "remote_ip_prefix": prefix or None,
            "remote_group_id": body.get("remote_group_id"),
            "security_group_id": body.get("security_group_id")}


def _protocol(value: Any, ethertype: str) -> str | None:
    if value is None or value == "" or str(value).lower() == "any":
        return None
    text = str(value).lower()
    if text.isdigit():
        if not 0 <= int(text) <= 255:
            raise _bad_protocol(value)
        if ethertype == "IPv6" and text == "1":
            return "58"
        return text
    if text not in PROTOCOLS:
        raise _bad_protocol(value)
    if ethertype == "IPv6" and text in ("icmp", "icmpv6"):
        return "ipv6-icmp"
    return text


def _bad_protocol(value: Any) -> Exception:
    names = ", ".join(sorted(PROTOCOLS))
    return invalid("SecurityGroupRuleInvalidProtocol",
                   f"Security group rule protocol {value} not supported. Only protocol values "
                   f"[None, 'any', {names}] and integer representations [0 to 255] are "
                   "supported.")


def _number(protocol: str) -> int:
    return int(protocol) if protocol.isdigit() else PROTOCOLS[protocol]


def _validate(tx: Tx, rule: dict[str, Any]) -> None:
    """neutron's checks of a new rule, in neutron's order."""
    if rule["remote_ip_prefix"] and rule["remote_group_id"]:
        raise invalid_input("Only one of remote_ip_prefix or remote_group_id or "
                            "remote_address_group_id may be provided.")
    if rule["remote_group_id"]:
        visible(tx, rule["remote_group_id"])
    low, high, protocol = rule["port_range_min"], rule["port_range_max"], rule["protocol"]
    if low is not None or high is not None:
        if protocol is None:
            raise invalid("SecurityGroupProtocolRequiredWithPorts",
                          "Must also specify protocol if port range is given.")
        number = _number(protocol)
        if number in (6, 17, 33, 132):
            if low == 0 or high == 0:
                raise invalid("SecurityGroupInvalidPortValue", "Invalid value for port 0")
            if low is None or high is None or low > high:
                raise invalid("SecurityGroupInvalidPortRange", "For TCP/UDP protocols, "
                              "port_range_min must be <= port_range_max")
        elif number in (1, 58):
            for attr, field, value in (("port_range_min", "type", low),
                                       ("port_range_max", "code", high)):
                if value is not None and not 0 <= value <= 255:
                    raise invalid("SecurityGroupInvalidIcmpValue",
                                  f"Invalid value for ICMP {field} ({attr}) {value}. It must "
                                  "be 0 to 255.")
            if low is None and high is not None:
                raise invalid("SecurityGroupMissingIcmpType",
                              f"ICMP code (port-range-max) {high} is provided but ICMP type "
                              "(port-range-min) is missing.")
        else:
            raise invalid("SecurityGroupInvalidProtocolForPort",
                          f"Ports cannot be specified for protocol {number}. Ports are only "
                          "supported for DCCP, SCTP, TCP, UDP.")
    if protocol in IPV6_ONLY and rule["ethertype"] == "IPv4":
        raise invalid("SecurityGroupEthertypeConflictWithProtocol",
                      f"Invalid ethertype IPv4 for protocol {protocol}.")
    prefix = rule["remote_ip_prefix"]
    if prefix and f"IPv{ipaddress.ip_interface(prefix).version}" != rule["ethertype"]:
        raise invalid("SecurityGroupRuleParameterConflict",
                      f"Conflicting value ethertype {rule['ethertype']} for CIDR {prefix}")


def _as_dict(row: SecurityGroupRuleRow) -> dict[str, Any]:
    return {"direction": row.direction, "ethertype": row.ethertype, "protocol": row.protocol,
            "port_range_min": row.port_range_min, "port_range_max": row.port_range_max,
            "remote_ip_prefix": row.remote_ip_prefix, "remote_group_id": row.remote_group_id,
            "security_group_id": row.security_group_id}


def rule_key(rule: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two rules the same: "tcp" and "6" alike, any-address and no prefix alike."""
    protocol = rule["protocol"]
    prefix = rule["remote_ip_prefix"]
    if prefix in ("0.0.0.0/0", "::/0"):
        prefix = None
    return (rule["direction"], rule["ethertype"], rule["port_range_max"],
            rule["port_range_min"], None if protocol is None else _number(protocol),
            rule["remote_group_id"], prefix)
