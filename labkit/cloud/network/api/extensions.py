"""The extensions this neutron implements, as GET /v2.0/extensions lists them.

Only aliases whose attributes and resources the API and the model honour are listed:
clients read this list to decide what to send (`openstack router set --external-gateway`
asks for external-gateway-multihoming; `port create` for tag-ports-during-bulk-creation),
so an alias listed but not honoured would make them send what we then refuse. Names,
descriptions and dates are neutron's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Extension:
    alias: str
    name: str
    description: str
    updated: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "description": self.description,
                "updated": self.updated, "links": []}


EXTENSIONS: dict[str, Extension] = {e.alias: e for e in (
    Extension("agent", "agent", "The agent management extension.",
              "2013-02-03T10:00:00-00:00"),
    Extension("allowed-address-pairs", "Allowed Address Pairs",
              "Provides allowed address pairs", "2013-07-23T10:00:00-00:00"),
    Extension("binding", "Port Binding",
              "Expose port bindings of a virtual port to external application",
              "2014-02-03T10:00:00-00:00"),
    Extension("empty-string-filtering", "Empty String Filtering Extension",
              "Allow filtering by attributes with empty string value",
              "2018-05-01T10:00:00-00:00"),
    Extension("external-net", "Neutron external network",
              "Adds external network attribute to network resource.",
              "2013-01-14T10:00:00-00:00"),
    Extension("ext-gw-mode", "Neutron L3 Configurable external gateway mode",
              "Extension of the router abstraction for specifying whether SNAT should occur "
              "on the external gateway", "2013-03-28T10:00:00-00:00"),
    Extension("filter-validation", "Filter parameters validation",
              "Provides validation on filter parameters.", "2018-07-04T10:00:00-00:00"),
    Extension("fip-port-details", "Floating IP Port Details Extension",
              "Add port_details attribute to Floating IP resource",
              "2018-04-09T10:00:00-00:00"),
    Extension("net-mtu", "Network MTU", "Provides MTU attribute for a network resource.",
              "2015-03-25T10:00:00-00:00"),
    Extension("pagination", "Pagination support",
              "Extension that indicates that pagination is enabled.",
              "2016-06-12T00:00:00-00:00"),
    Extension("port-security", "Port Security", "Provides port security",
              "2012-07-23T10:00:00-00:00"),
    Extension("project-id", "project_id field enabled",
              "Extension that indicates that project_id field is enabled.",
              "2016-09-09T09:09:09-09:09"),
    Extension("provider", "Provider Network",
              "Expose mapping of virtual networks to physical networks",
              "2012-09-07T10:00:00-00:00"),
    Extension("quotas", "Quota management support",
              "Expose functions for quotas management per project",
              "2012-07-29T10:00:00-00:00"),
    Extension("quota_details", "Quota details management support",
              "Expose functions for quotas usage statistics per project",
              "2017-02-10T10:00:00-00:00"),
    Extension("router", "Neutron L3 Router",
              "Router abstraction for basic L3 forwarding between L2 Neutron networks and "
              "access to external networks via a NAT gateway.", "2012-07-20T10:00:00-00:00"),
    Extension("security-group", "security-group", "The security groups extension.",
              "2012-10-05T10:00:00-00:00"),
    Extension("security-groups-normalized-cidr",
              "Normalized CIDR field for security group rules",
              "Add new field with normalized remote_ip_prefix cidr in SG rule",
              "2020-07-28T10:00:00-00:00"),
    Extension("security-groups-rules-belongs-to-default-sg",
              "Security group rule belongs to the project's default security group",
              "Flag to determine if the security group rule belongs to the project's default "
              "security group", "2023-05-23T10:00:00-00:00"),
    Extension("sorting", "Sorting support", "Extension that indicates that sorting is enabled.",
              "2016-06-12T00:00:00-00:00"),
    Extension("stateful-security-group", "Stateful security group",
              "Indicates if the security group is stateful or not",
              "2019-11-26T09:00:00-00:00"),
    Extension("standard-attr-description", "standard-attr-description",
              "Extension to add descriptions to standard attributes",
              "2016-02-10T10:00:00-00:00"),
    Extension("standard-attr-revisions", "Resource revision numbers",
              "This extension will display the revision number of neutron resources.",
              "2016-04-11T10:00:00-00:00"),
    Extension("standard-attr-timestamp", "Resource timestamps",
              "Adds created_at and updated_at fields to all Neutron resources that have "
              "Neutron standard attributes.", "2016-09-12T10:00:00-00:00"),
)}
