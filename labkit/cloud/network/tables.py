"""Neutron's tables in `<home>/neutron.sqlite`, after neutron's own schema (models_v2, l3, agents).

Rows hold what neutron stores; the API's shape is made by views.py. Ids are neutron's
dashed UUIDs; "project_id" is keystone's project id, or "" for the ports neutron keeps
for itself (router gateways and floating IPs), as neutron leaves them without a project.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class NetworkBase(DeclarativeBase):
    pass


class Standard:
    """Neutron's standard attributes: every resource has them."""

    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[str] = mapped_column(String(20))
    updated_at: Mapped[str] = mapped_column(String(20))
    revision_number: Mapped[int] = mapped_column(Integer, default=0)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)


class NetworkRow(Standard, NetworkBase):
    __tablename__ = "networks"
    __table_args__ = (UniqueConstraint("network_type", "segmentation_id"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    network_type: Mapped[str] = mapped_column(String(32))
    physical_network: Mapped[str | None] = mapped_column(String(64), nullable=True)
    segmentation_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mtu: Mapped[int] = mapped_column(Integer)
    port_security_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    availability_zone_hints: Mapped[list[str]] = mapped_column(JSON, default=list)

    subnets: Mapped[list[SubnetRow]] = relationship(
        back_populates="network", lazy="selectin", order_by="SubnetRow.seq")


class SubnetRow(Standard, NetworkBase):
    __tablename__ = "subnets"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"),
                                            index=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    cidr: Mapped[str] = mapped_column(String(64))
    ip_version: Mapped[int] = mapped_column(Integer)
    gateway_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enable_dhcp: Mapped[bool] = mapped_column(Boolean, default=True)
    allocation_pools: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    dns_nameservers: Mapped[list[str]] = mapped_column(JSON, default=list)
    host_routes: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    ipv6_ra_mode: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ipv6_address_mode: Mapped[str | None] = mapped_column(String(32), nullable=True)

    network: Mapped[NetworkRow] = relationship(back_populates="subnets", lazy="raise")


class PortRow(Standard, NetworkBase):
    __tablename__ = "ports"
    # neutron keeps MACs unique per network; generated ones are unique everywhere
    __table_args__ = (UniqueConstraint("network_id", "mac_address"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    mac_address: Mapped[str] = mapped_column(String(32), index=True)
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="DOWN")
    device_id: Mapped[str] = mapped_column(String(255), default="", index=True)
    device_owner: Mapped[str] = mapped_column(String(255), default="")
    host: Mapped[str] = mapped_column(String(255), default="", index=True)
    vif_type: Mapped[str] = mapped_column(String(64), default="unbound")
    vif_details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    vnic_type: Mapped[str] = mapped_column(String(64), default="normal")
    profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    port_security_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    allowed_address_pairs: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)

    fixed_ips: Mapped[list[IPAllocationRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="IPAllocationRow.seq")
    security_group_bindings: Mapped[list[PortSecurityGroupRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="PortSecurityGroupRow.seq")

    @property
    def security_group_ids(self) -> list[str]:
        return [b.security_group_id for b in self.security_group_bindings]


class IPAllocationRow(NetworkBase):
    """One address of a port. Unique per subnet: the database refuses a second holder."""

    __tablename__ = "ipallocations"
    __table_args__ = (UniqueConstraint("subnet_id", "ip_address"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    port_id: Mapped[str] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"), index=True)
    subnet_id: Mapped[str] = mapped_column(ForeignKey("subnets.id"), index=True)
    network_id: Mapped[str] = mapped_column(String(36), index=True)
    ip_address: Mapped[str] = mapped_column(String(64))


class PortSecurityGroupRow(NetworkBase):
    __tablename__ = "securitygroupportbindings"
    __table_args__ = (UniqueConstraint("port_id", "security_group_id"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    port_id: Mapped[str] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"), index=True)
    security_group_id: Mapped[str] = mapped_column(ForeignKey("securitygroups.id"), index=True)


class SecurityGroupRow(Standard, NetworkBase):
    __tablename__ = "securitygroups"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    stateful: Mapped[bool] = mapped_column(Boolean, default=True)

    rules: Mapped[list[SecurityGroupRuleRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="SecurityGroupRuleRow.seq",
        foreign_keys="SecurityGroupRuleRow.security_group_id")


class DefaultSecurityGroupRow(NetworkBase):
    """Which group is each project's "default" (neutron's default_security_group table)."""

    __tablename__ = "default_security_group"

    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    security_group_id: Mapped[str] = mapped_column(
        ForeignKey("securitygroups.id", ondelete="CASCADE"), unique=True)


class SecurityGroupRuleRow(Standard, NetworkBase):
    __tablename__ = "securitygrouprules"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    security_group_id: Mapped[str] = mapped_column(
        ForeignKey("securitygroups.id", ondelete="CASCADE"), index=True)
    remote_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("securitygroups.id", ondelete="CASCADE"), nullable=True)
    direction: Mapped[str] = mapped_column(String(16))
    ethertype: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[str | None] = mapped_column(String(40), nullable=True)
    port_range_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port_range_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote_ip_prefix: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RouterRow(Standard, NetworkBase):
    __tablename__ = "routers"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    gw_port_id: Mapped[str | None] = mapped_column(ForeignKey("ports.id"), nullable=True)
    enable_snat: Mapped[bool] = mapped_column(Boolean, default=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)  # its L3 agent's
    routes: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    availability_zone_hints: Mapped[list[str]] = mapped_column(JSON, default=list)

    gw_port: Mapped[PortRow | None] = relationship(lazy="selectin")


class FloatingIPRow(Standard, NetworkBase):
    __tablename__ = "floatingips"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    floating_ip_address: Mapped[str] = mapped_column(String(64))
    floating_network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"))
    floating_port_id: Mapped[str] = mapped_column(ForeignKey("ports.id"))
    fixed_port_id: Mapped[str | None] = mapped_column(ForeignKey("ports.id"), nullable=True,
                                                      index=True)
    fixed_ip_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    router_id: Mapped[str | None] = mapped_column(ForeignKey("routers.id"), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="DOWN")

    fixed_port: Mapped[PortRow | None] = relationship(foreign_keys=[fixed_port_id],
                                                      lazy="selectin")


class AgentRow(NetworkBase):
    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("agent_type", "host"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    agent_type: Mapped[str] = mapped_column(String(255))
    binary: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    availability_zone: Mapped[str | None] = mapped_column(String(255), nullable=True)
    configurations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_timestamp: Mapped[float] = mapped_column(Float)


class LocalVlanRow(NetworkBase):
    """The OVS agent's local VLAN for a network on one host's br-int."""

    __tablename__ = "local_vlans"
    __table_args__ = (UniqueConstraint("host", "tag"),)

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tag: Mapped[int] = mapped_column(Integer)


class QuotaRow(NetworkBase):
    """A project's limit for one resource, where it differs from the default."""

    __tablename__ = "quotas"

    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource: Mapped[str] = mapped_column(String(255), primary_key=True)
    limit: Mapped[int] = mapped_column(Integer)
