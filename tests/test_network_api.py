"""Neutron v2.0 in the embedded cloud: its attribute rules, raw HTTP and openstacksdk.

The first tests call the API layer's pure parts (attribute maps, list queries) with no
cloud; the rest talk to the module's fresh deterministic cloud over HTTP, as a member
(demo), another project's member (alt_demo) and the admin, and through openstacksdk.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from openstack import exceptions as sdk_exceptions
from openstack.connection import Connection

from conftest import auth_header
from labkit.cloud.network.api.attributes import (
    NETWORK,
    PORT,
    RESOURCES,
    ROUTER,
    SECURITY_GROUP_RULE,
    Caller,
    prepare_request,
    shown,
)
from labkit.cloud.network.api.extensions import EXTENSIONS
from labkit.cloud.network.api.query import ListQuery, page_links, parse_query, run_query
from labkit.cloud.network.exceptions import NeutronBadRequest, NeutronNotFound
from labkit.cloud.process import CloudInfo

V2 = "/networking/v2.0"
MEMBER = Caller(project_id="p1", is_admin=False)
ADMIN = Caller(project_id="admin-project", is_admin=True)


# -- the attribute maps, without a cloud --------------------------------------------------

def test_post_fills_neutrons_defaults_and_the_callers_project() -> None:
    [body], bulk = prepare_request({"network": {"name": "n"}}, "network", NETWORK, MEMBER,
                                   create=True)
    assert not bulk
    assert body["admin_state_up"] is True and body["shared"] is False
    assert body["router:external"] is False and body["description"] == ""
    assert body["project_id"] == body["tenant_id"] == "p1"
    # left to the plugin (neutron's ATTR_NOT_SPECIFIED): not invented here
    assert "provider:network_type" not in body and "mtu" not in body


def test_post_converts_values_as_neutron_does() -> None:
    [port], _ = prepare_request({"port": {"network_id": "5f0c8a6c-1b57-4d4c-8f5e-0d6a1c3b2a10",
                                          "admin_state_up": "False",
                                          "mac_address": "FA-16-3E-00-00-0A"}},
                                "port", PORT, MEMBER, create=True)
    assert port["admin_state_up"] is False
    assert port["mac_address"] == "fa:16:3e:00:00:0a"
    [rule], _ = prepare_request({"security_group_rule": {
        "security_group_id": "5f0c8a6c-1b57-4d4c-8f5e-0d6a1c3b2a10", "direction": "ingress",
        "protocol": "TCP", "port_range_min": "22", "port_range_max": 22,
        "ethertype": "ipv4", "remote_ip_prefix": "10.0.0.1"}},
        "security_group_rule", SECURITY_GROUP_RULE, MEMBER, create=True)
    assert (rule["protocol"], rule["port_range_min"], rule["ethertype"]) == ("tcp", 22, "IPv4")
    assert rule["remote_ip_prefix"] == "10.0.0.1/32"


@pytest.mark.parametrize(("body", "kind", "message"), [
    ({"network": {"name": "n", "colour": "red"}}, "HTTPBadRequest",
     "Unrecognized attribute(s) 'colour'"),
    ({"network": {"status": "DOWN"}}, "HTTPBadRequest", "Attribute 'status' not allowed in POST"),
    ({"network": {"admin_state_up": "maybe"}}, "InvalidInput",
     "Invalid input for operation: 'maybe' cannot be converted to boolean."),
    ({"network": "n"}, "HTTPBadRequest", "Object 'network' contains invalid data"),
    ({"net": {}}, "HTTPBadRequest", "Unable to find 'network' in request body"),
    ({"networks": []}, "HTTPBadRequest", "Resources required"),
    ({"network": {"tenant_id": "p1", "project_id": "p2"}}, "HTTPBadRequest",
     "'project_id' and 'tenant_id' do not match"),
    ({"network": {"project_id": "someone-else"}}, "HTTPBadRequest",
     "Specifying 'project_id' other than the authenticated project in request is not "
     "allowed for the current user."),
])
def test_post_refusals_in_neutrons_words(body: dict, kind: str, message: str) -> None:
    with pytest.raises(NeutronBadRequest) as caught:
        prepare_request(body, "network", NETWORK, MEMBER, create=True, allow_bulk=True)
    assert (caught.value.neutron_type, caught.value.message) == (kind, message)


def test_required_attributes_and_validators_word_their_reason() -> None:
    subnet = RESOURCES["subnet"].attrs
    with pytest.raises(NeutronBadRequest, match="Required attribute 'network_id' not specified"):
        prepare_request({"subnet": {"ip_version": 4, "cidr": "10.0.0.0/24"}}, "subnet",
                        subnet, MEMBER, create=True)
    net = "5f0c8a6c-1b57-4d4c-8f5e-0d6a1c3b2a10"
    with pytest.raises(NeutronBadRequest) as caught:
        prepare_request({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.0.0.0/24",
                                    "gateway_ip": "10.0.0.01"}}, "subnet", subnet, MEMBER,
                        create=True)
    assert caught.value.message == ("Invalid input for gateway_ip. Reason: '10.0.0.01' is not "
                                    "an accepted IP address, '10.0.0.1' is recommended.")
    with pytest.raises(NeutronBadRequest, match="Invalid input for ip_version. Reason: 5 is "
                                                "not in valid_values."):
        prepare_request({"subnet": {"network_id": net, "ip_version": 5}}, "subnet", subnet,
                        MEMBER, create=True)
    with pytest.raises(NeutronBadRequest, match="'x' is not a valid UUID"):
        prepare_request({"router": {"external_gateway_info": {"network_id": "x"}}}, "router",
                        ROUTER, MEMBER, create=True)


def test_put_refuses_read_only_attributes_and_adds_no_defaults() -> None:
    with pytest.raises(NeutronBadRequest, match="^Cannot update read-only attribute mtu$"):
        prepare_request({"network": {"mtu": 9000}}, "network", NETWORK, MEMBER, create=False)
    [body], _ = prepare_request({"network": {"name": "m"}}, "network", NETWORK, MEMBER,
                                create=False)
    assert body == {"name": "m"}
    with pytest.raises(NeutronBadRequest, match="^Bulk operation not supported$"):
        prepare_request({"networks": [{"name": "m"}]}, "network", NETWORK, MEMBER, create=False)


def test_bulk_key_wins_over_a_single_one_beside_it() -> None:
    # neutron's prepare_request_body reads the collection and ignores the single key
    items, bulk = prepare_request({"network": {"name": "single"},
                                   "networks": [{"name": "a"}, {"network": {"name": "b"}}]},
                                  "network", NETWORK, MEMBER, create=True, allow_bulk=True)
    assert bulk and [i["name"] for i in items] == ["a", "b"]


def test_members_do_not_see_admin_only_attributes() -> None:
    record = {"id": "n1", "name": "n", "project_id": "p1", "provider:network_type": "vxlan",
              "provider:segmentation_id": 65537, "not-in-the-map": 1}
    assert shown(record, NETWORK, is_admin=False) == {"id": "n1", "name": "n",
                                                      "project_id": "p1", "tenant_id": "p1"}
    assert shown(record, NETWORK, is_admin=True)["provider:segmentation_id"] == 65537
    assert shown(record, NETWORK, is_admin=True, fields=["id", "nope"]) == {"id": "n1"}
    port = {"id": "x", "binding:host_id": "compute-1", "binding:vnic_type": "normal"}
    assert shown(port, PORT, is_admin=False) == {"id": "x", "binding:vnic_type": "normal"}


def test_filters_convert_and_refuse_what_neutron_does_not_filter_on() -> None:
    query = parse_query([("fixed_ips", "ip_address=10.0.0.3"), ("fixed_ips", "subnet_id=s1"),
                         ("admin_state_up", "False"), ("fields", "id"), ("fields", "name")],
                        PORT)
    assert query.filters == {"fixed_ips": {"ip_address": ["10.0.0.3"], "subnet_id": ["s1"]},
                             "admin_state_up": [False]}
    assert query.fields == ["id", "name"]
    with pytest.raises(NeutronBadRequest, match=r"^\['colour'\] is invalid attribute for "
                                                r"filtering$"):
        parse_query([("colour", "red")], PORT)
    with pytest.raises(NeutronBadRequest, match="must be same"):
        parse_query([("sort_key", "name")], PORT)
    with pytest.raises(NeutronBadRequest, match=r"\['fixed_ips'\] is invalid attribute for "
                                                "sort_keys"):
        parse_query([("sort_key", "fixed_ips"), ("sort_dir", "asc")], PORT)
    with pytest.raises(NeutronBadRequest) as caught:
        parse_query([("limit", "-1")], PORT)
    assert caught.value.neutron_type == "BadRequest"
    assert caught.value.message == ("Bad limit request: Limit must be an integer 0 or greater "
                                    "and not '-1'.")


def _ports() -> list[dict[str, Any]]:
    return [{"id": f"id-{n}", "name": name, "admin_state_up": n != 2, "device_id": "vm",
             "fixed_ips": [{"subnet_id": "s1", "ip_address": f"10.0.0.{n}"}]}
            for n, name in enumerate(["c", "a", "b", "a"])]


def test_run_query_filters_with_or_within_a_key_and_and_across_keys() -> None:
    ports = _ports()
    got = run_query(ports, parse_query([("fixed_ips", "ip_address=10.0.0.1"),
                                        ("fixed_ips", "ip_address=10.0.0.3")], PORT), "port")
    assert [p["id"] for p in got] == ["id-1", "id-3"]
    got = run_query(ports, parse_query([("name", "a"), ("admin_state_up", "true")], PORT),
                    "port")
    assert [p["id"] for p in got] == ["id-1", "id-3"]
    got = run_query(ports, parse_query([("sort_key", "name"), ("sort_dir", "desc")], PORT),
                    "port")
    assert [p["name"] for p in got] == ["c", "b", "a", "a"]


def test_pages_follow_the_marker_both_ways_and_link_as_neutron() -> None:
    ports = _ports()
    params = [("limit", "2"), ("sort_key", "name"), ("sort_dir", "asc")]
    first = run_query(ports, parse_query(params, PORT), "port")
    assert [p["id"] for p in first] == ["id-1", "id-3"]     # name, then id breaks the tie
    links = page_links("http://x/networking/v2.0/ports", params, first,
                       parse_query(params, PORT))
    assert [link["rel"] for link in links] == ["next", "previous"]
    assert links[0]["href"].endswith("?limit=2&sort_key=name&sort_dir=asc&marker=id-3")
    second = run_query(ports, parse_query([*params, ("marker", "id-3")], PORT), "port")
    assert [p["id"] for p in second] == ["id-2", "id-0"]
    back = run_query(ports, parse_query([*params, ("marker", "id-2"),
                                         ("page_reverse", "True")], PORT), "port")
    assert [p["id"] for p in back] == ["id-1", "id-3"]
    last = parse_query([*params, ("marker", "id-0")], PORT)
    assert run_query(ports, last, "port") == []
    assert [link["rel"] for link in page_links("u", [], [], last)] == ["previous"]
    with pytest.raises(NeutronNotFound, match="Port gone could not be found."):
        run_query(ports, parse_query([*params, ("marker", "gone")], PORT), "port")
    assert page_links("u", [], ports, ListQuery()) == []


# -- over HTTP ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_h(demo_token: str) -> dict[str, str]:
    return auth_header(demo_token)


@pytest.fixture(scope="module")
def alt_h(alt_token: str) -> dict[str, str]:
    return auth_header(alt_token)


@pytest.fixture(scope="module")
def admin_h(admin_token: str) -> dict[str, str]:
    return auth_header(admin_token)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()["NeutronError"]
    assert set(body) == {"type", "message", "detail"} and body["detail"] == ""
    return body


def create(http: httpx.Client, headers: dict[str, str], resource: str,
           **body: Any) -> dict[str, Any]:
    path = RESOURCES[resource].path
    return ok(http.post(f"{V2}/{path}", headers=headers, json={resource: body}), 201)[resource]


def named(http: httpx.Client, headers: dict[str, str], resource: str,
          name: str) -> dict[str, Any]:
    res = RESOURCES[resource]
    found = ok(http.get(f"{V2}/{res.path}", headers=headers, params={"name": name}))
    assert len(found[res.collection]) == 1, found
    return found[res.collection][0]


@pytest.fixture
def network(http: httpx.Client, demo_h: dict[str, str],
            request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A demo network of the test's own, deleted (with its ports) afterwards."""
    net = create(http, demo_h, "network", name=f"net-{request.node.name}"[:60])
    yield net
    ports = ok(http.get(f"{V2}/ports", headers=demo_h, params={"network_id": net["id"]}))
    for port in ports["ports"]:
        if not port["device_owner"].startswith("network:"):
            http.delete(f"{V2}/ports/{port['id']}", headers=demo_h)
    http.delete(f"{V2}/networks/{net['id']}", headers=demo_h)


def no_dhcp_subnet(http: httpx.Client, headers: dict[str, str], network_id: str, cidr: str,
                   **extra: Any) -> dict[str, Any]:
    return create(http, headers, "subnet", network_id=network_id, ip_version=4, cidr=cidr,
                  enable_dhcp=False, **extra)


def test_version_document_needs_no_token(http: httpx.Client, cloud: CloudInfo) -> None:
    for path in ("/networking", "/networking/"):
        body = ok(http.get(path))
        assert body == {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
            {"href": f"{cloud.url}/networking/v2.0/", "rel": "self"}]}]}


def test_the_api_needs_a_token(http: httpx.Client) -> None:
    assert http.get(f"{V2}/networks").status_code == 401
    assert http.get(f"{V2}/").status_code == 401


def test_v2_root_lists_the_core_resources(http: httpx.Client, demo_h: dict[str, str],
                                          cloud: CloudInfo) -> None:
    body = ok(http.get(f"{V2}/", headers=demo_h))
    links = {r["name"]: r["links"][0]["href"] for r in body["resources"]}
    assert links["network"] == f"{cloud.url}{V2}/networks"
    assert {"network", "subnet", "port"} <= set(links)
    # as in neutron, only the slashed form answers
    assert error(http.get(V2, headers=demo_h), 404)["type"] == "HTTPNotFound"


def test_extensions_list_what_is_honoured(http: httpx.Client, demo_h: dict[str, str]) -> None:
    listed = ok(http.get(f"{V2}/extensions", headers=demo_h))["extensions"]
    aliases = {e["alias"] for e in listed}
    assert aliases == set(EXTENSIONS)
    assert {"router", "external-net", "ext-gw-mode", "provider", "binding", "security-group",
            "quotas", "agent", "pagination", "sorting"} <= aliases
    # clients change what they send when these are listed; we do not honour them
    assert not aliases & {"external-gateway-multihoming", "tag-ports-during-bulk-creation",
                          "standard-attr-tag", "dns-integration"}
    one = ok(http.get(f"{V2}/extensions/ext-gw-mode", headers=demo_h))["extension"]
    assert one["name"] == "Neutron L3 Configurable external gateway mode"
    assert set(one) == {"name", "alias", "description", "updated", "links"}
    missing = error(http.get(f"{V2}/extensions/nope", headers=demo_h), 404)
    assert missing["message"] == "Extension with alias nope does not exist"


def test_unknown_paths_and_methods_answer_in_neutrons_body(http: httpx.Client,
                                                           demo_h: dict[str, str]) -> None:
    body = error(http.get(f"{V2}/nothing-here", headers=demo_h), 404)
    assert body == {"type": "HTTPNotFound", "message": "The resource could not be found.",
                    "detail": ""}
    assert error(http.delete(f"{V2}/networks", headers=demo_h), 405)["type"] == \
        "HTTPMethodNotAllowed"
    assert http.head(f"{V2}/networks", headers=demo_h).status_code == 405


def test_json_suffix_reaches_the_same_resource(http: httpx.Client,
                                               demo_h: dict[str, str]) -> None:
    plain = ok(http.get(f"{V2}/networks", headers=demo_h, params={"name": "demo-net"}))
    suffixed = ok(http.get(f"{V2}/networks.json", headers=demo_h, params={"name": "demo-net"}))
    assert suffixed == plain and len(plain["networks"]) == 1


def test_malformed_and_unknown_input_is_400(http: httpx.Client, demo_h: dict[str, str]) -> None:
    bad = http.post(f"{V2}/networks", headers={**demo_h, "Content-Type": "application/json"},
                    content=b"{not json")
    assert error(bad, 400)["message"] == "Body contains invalid data"
    unknown = http.post(f"{V2}/networks", headers=demo_h,
                        json={"network": {"name": "x", "colour": "red"}})
    assert error(unknown, 400) == {"type": "HTTPBadRequest", "detail": "",
                                   "message": "Unrecognized attribute(s) 'colour'"}
    filtered = http.get(f"{V2}/networks", headers=demo_h, params={"colour": "red"})
    assert error(filtered, 400)["message"] == "['colour'] is invalid attribute for filtering"


def test_read_only_attribute_cannot_be_updated(http: httpx.Client, demo_h: dict[str, str],
                                               network: dict[str, Any]) -> None:
    refused = http.put(f"{V2}/networks/{network['id']}", headers=demo_h,
                       json={"network": {"status": "DOWN"}})
    assert error(refused, 400)["message"] == "Cannot update read-only attribute status"
    renamed = ok(http.put(f"{V2}/networks/{network['id']}", headers=demo_h,
                          json={"network": {"name": "renamed"}}))["network"]
    assert renamed["name"] == "renamed"
    assert renamed["revision_number"] > network["revision_number"]


def test_new_network_as_a_member_sees_it(http: httpx.Client, demo_h: dict[str, str],
                                         admin_h: dict[str, str],
                                         network: dict[str, Any]) -> None:
    project = named(http, admin_h, "network", network["name"])["project_id"]
    assert network["tenant_id"] == network["project_id"] == project
    assert network["status"] == "ACTIVE" and network["subnets"] == []
    assert network["admin_state_up"] is True and network["shared"] is False
    assert network["router:external"] is False and network["mtu"] == 1450
    assert not [k for k in network if k.startswith(("provider:", "binding:"))]
    as_admin = ok(http.get(f"{V2}/networks/{network['id']}", headers=admin_h))["network"]
    assert as_admin["provider:network_type"] == "vxlan"
    assert as_admin["provider:segmentation_id"] >= 65537
    assert as_admin["provider:physical_network"] is None


def test_member_may_not_set_provider_attributes(http: httpx.Client,
                                                demo_h: dict[str, str]) -> None:
    refused = http.post(f"{V2}/networks", headers=demo_h, json={"network": {
        "name": "flat-try", "provider:network_type": "flat"}})
    assert error(refused, 403) == {"type": "PolicyNotAuthorized", "detail": "", "message":
                                   "(rule:create_network:provider:network_type) is "
                                   "disallowed by policy"}


def test_other_projects_network_is_not_found(http: httpx.Client, alt_h: dict[str, str],
                                             network: dict[str, Any]) -> None:
    missing = error(http.get(f"{V2}/networks/{network['id']}", headers=alt_h), 404)
    assert missing == {"type": "NetworkNotFound", "detail": "",
                       "message": f"Network {network['id']} could not be found."}
    listed = ok(http.get(f"{V2}/networks", headers=alt_h))["networks"]
    assert network["id"] not in [n["id"] for n in listed]


def test_subnet_defaults_gateway_and_pool(http: httpx.Client, demo_h: dict[str, str],
                                          network: dict[str, Any]) -> None:
    subnet = no_dhcp_subnet(http, demo_h, network["id"], "10.50.0.0/24", name="s50",
                            dns_nameservers=["8.8.4.4"])
    assert subnet["gateway_ip"] == "10.50.0.1" and subnet["ip_version"] == 4
    assert subnet["allocation_pools"] == [{"start": "10.50.0.2", "end": "10.50.0.254"}]
    assert subnet["dns_nameservers"] == ["8.8.4.4"] and subnet["host_routes"] == []
    refreshed = ok(http.get(f"{V2}/networks/{network['id']}", headers=demo_h))["network"]
    assert refreshed["subnets"] == [subnet["id"]]
    overlap = http.post(f"{V2}/subnets", headers=demo_h, json={"subnet": {
        "network_id": network["id"], "ip_version": 4, "cidr": "10.50.0.128/25"}})
    assert error(overlap, 400)["message"]
    invalid = http.post(f"{V2}/subnets", headers=demo_h, json={"subnet": {
        "network_id": network["id"], "ip_version": 4, "cidr": "10.50.1"}})
    assert error(invalid, 400) == {"type": "InvalidInput", "detail": "", "message":
                                   "Invalid input for operation: 10.50.1 is not in a CIDR "
                                   "format."}


def test_port_gets_the_lowest_free_address_and_a_neutron_mac(
        http: httpx.Client, demo_h: dict[str, str], admin_h: dict[str, str],
        network: dict[str, Any]) -> None:
    subnet = no_dhcp_subnet(http, demo_h, network["id"], "10.51.0.0/24")
    port = create(http, demo_h, "port", network_id=network["id"], name="p1")
    assert port["fixed_ips"] == [{"subnet_id": subnet["id"], "ip_address": "10.51.0.2"}]
    assert port["mac_address"].startswith("fa:16:3e:") and len(port["mac_address"]) == 17
    assert port["status"] == "DOWN" and port["device_owner"] == "" and port["device_id"] == ""
    assert port["binding:vnic_type"] == "normal"
    assert not [k for k in port if k in ("binding:host_id", "binding:vif_type",
                                         "binding:vif_details", "binding:profile")]
    as_admin = ok(http.get(f"{V2}/ports/{port['id']}", headers=admin_h))["port"]
    assert as_admin["binding:vif_type"] == "unbound" and as_admin["binding:host_id"] == ""
    default = named(http, demo_h, "security_group", "default")
    assert port["security_groups"] == [default["id"]]
    second = create(http, demo_h, "port", network_id=network["id"])
    assert second["fixed_ips"][0]["ip_address"] == "10.51.0.3"


def test_address_or_mac_in_use_is_409(http: httpx.Client, demo_h: dict[str, str],
                                      network: dict[str, Any]) -> None:
    subnet = no_dhcp_subnet(http, demo_h, network["id"], "10.52.0.0/24")
    first = create(http, demo_h, "port", network_id=network["id"],
                   fixed_ips=[{"subnet_id": subnet["id"], "ip_address": "10.52.0.7"}])
    taken = http.post(f"{V2}/ports", headers=demo_h, json={"port": {
        "network_id": network["id"], "fixed_ips": [{"ip_address": "10.52.0.7"}]}})
    assert error(taken, 409)["type"] == "IpAddressAlreadyAllocated"
    same_mac = http.post(f"{V2}/ports", headers=demo_h, json={"port": {
        "network_id": network["id"], "mac_address": first["mac_address"]}})
    assert error(same_mac, 409)["type"] == "MacAddressInUse"


def test_list_filters_and_fields(http: httpx.Client, demo_h: dict[str, str],
                                 network: dict[str, Any]) -> None:
    subnet = no_dhcp_subnet(http, demo_h, network["id"], "10.53.0.0/24")
    a = create(http, demo_h, "port", network_id=network["id"], name="a", device_id="vm-a")
    b = create(http, demo_h, "port", network_id=network["id"], name="b",
               admin_state_up=False)
    by_ip = ok(http.get(f"{V2}/ports", headers=demo_h, params={
        "fixed_ips": f"ip_address={b['fixed_ips'][0]['ip_address']}"}))["ports"]
    assert [p["id"] for p in by_ip] == [b["id"]]
    by_subnet = ok(http.get(f"{V2}/ports", headers=demo_h, params=[
        ("fixed_ips", f"subnet_id={subnet['id']}"), ("fields", "id"), ("fields", "name")]))
    assert sorted(map(tuple, (sorted(p.items()) for p in by_subnet["ports"]))) == sorted([
        (("id", a["id"]), ("name", "a")), (("id", b["id"]), ("name", "b"))])
    by_device = ok(http.get(f"{V2}/ports", headers=demo_h, params={"device_id": "vm-a"}))
    assert [p["id"] for p in by_device["ports"]] == [a["id"]]
    down = ok(http.get(f"{V2}/ports", headers=demo_h, params={
        "network_id": network["id"], "admin_state_up": "False"}))["ports"]
    assert [p["id"] for p in down] == [b["id"]]
    either = ok(http.get(f"{V2}/ports", headers=demo_h, params=[
        ("name", "a"), ("name", "b"), ("network_id", network["id"])]))["ports"]
    assert {p["id"] for p in either} == {a["id"], b["id"]}
    one = ok(http.get(f"{V2}/ports/{a['id']}", headers=demo_h, params={"fields": "name"}))
    assert one == {"port": {"name": "a"}}


def test_pagination_walks_every_port_once(http: httpx.Client, demo_h: dict[str, str],
                                          network: dict[str, Any], cloud: CloudInfo) -> None:
    no_dhcp_subnet(http, demo_h, network["id"], "10.54.0.0/24")
    made = {create(http, demo_h, "port", network_id=network["id"], name=f"pg{n}")["id"]
            for n in range(5)}
    url: str | None = f"{V2}/ports?network_id={network['id']}&limit=2"
    seen: list[str] = []
    pages = 0
    while url:
        body = ok(http.get(url, headers=demo_h))
        seen += [p["id"] for p in body["ports"]]
        links = {link["rel"]: link["href"] for link in body.get("ports_links", [])}
        assert "previous" in links
        url = links.get("next")
        if url:
            assert url.startswith(f"{cloud.url}{V2}/ports?")
            url = url[len(cloud.url):]
        pages += 1
        assert pages <= 4
    assert sorted(seen) == sorted(made) and len(seen) == len(made) == 5
    ordered = ok(http.get(f"{V2}/ports", headers=demo_h, params={
        "network_id": network["id"], "sort_key": "name", "sort_dir": "desc"}))["ports"]
    assert [p["name"] for p in ordered] == [f"pg{n}" for n in range(4, -1, -1)]


def test_bulk_create_is_all_or_nothing(http: httpx.Client, demo_h: dict[str, str],
                                       network: dict[str, Any]) -> None:
    subnet = no_dhcp_subnet(http, demo_h, network["id"], "10.55.0.0/24")
    made = ok(http.post(f"{V2}/ports", headers=demo_h, json={"ports": [
        {"network_id": network["id"], "name": "bulk-1"},
        {"network_id": network["id"], "name": "bulk-2"}]}), 201)["ports"]
    assert [p["name"] for p in made] == ["bulk-1", "bulk-2"]
    taken = made[0]["fixed_ips"][0]["ip_address"]
    refused = http.post(f"{V2}/ports", headers=demo_h, json={"ports": [
        {"network_id": network["id"], "name": "bulk-3"},
        {"network_id": network["id"], "name": "bulk-4",
         "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": taken}]}]})
    assert error(refused, 409)["type"] == "IpAddressAlreadyAllocated"
    names = {p["name"] for p in ok(http.get(f"{V2}/ports", headers=demo_h, params={
        "network_id": network["id"]}))["ports"]}
    assert names == {"bulk-1", "bulk-2"}


def _create_all_at_once(cloud: CloudInfo, headers: dict[str, str], network_id: str,
                        count: int) -> list[httpx.Response]:
    """`count` port creates over HTTP from as many threads, released together."""
    start = threading.Barrier(count)

    def one(n: int) -> httpx.Response:
        with httpx.Client(base_url=cloud.url, timeout=60) as client:
            start.wait()
            return client.post(f"{V2}/ports", headers=headers, json={"port": {
                "network_id": network_id, "name": f"rush-{n}"}})
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def test_fifty_concurrent_port_creates_get_fifty_addresses(
        http: httpx.Client, demo_h: dict[str, str], network: dict[str, Any],
        cloud: CloudInfo) -> None:
    no_dhcp_subnet(http, demo_h, network["id"], "10.56.0.0/24")
    answers = _create_all_at_once(cloud, demo_h, network["id"], 50)
    assert [r.status_code for r in answers] == [201] * 50, [r.text for r in answers
                                                            if r.status_code != 201][:3]
    addresses = [r.json()["port"]["fixed_ips"][0]["ip_address"] for r in answers]
    macs = [r.json()["port"]["mac_address"] for r in answers]
    assert len(set(addresses)) == 50 and len(set(macs)) == 50
    # lowest free first: together they hold exactly .2 to .51
    assert sorted(addresses, key=ipaddress.ip_address) == [f"10.56.0.{n}" for n in range(2, 52)]


def test_more_concurrent_creates_than_the_pool_holds_get_clean_409s(
        http: httpx.Client, demo_h: dict[str, str], network: dict[str, Any],
        cloud: CloudInfo) -> None:
    subnet = no_dhcp_subnet(http, demo_h, network["id"], "10.57.0.0/24",
                            allocation_pools=[{"start": "10.57.0.10", "end": "10.57.0.29"}])
    answers = _create_all_at_once(cloud, demo_h, network["id"], 50)
    made = [r.json()["port"] for r in answers if r.status_code == 201]
    refused = [r for r in answers if r.status_code != 201]
    assert len(made) == 20 and len(refused) == 30
    for answer in refused:
        assert error(answer, 409) == {
            "type": "IpAddressGenerationFailure", "detail": "",
            "message": f"No more IP addresses available on network {network['id']}."}
    pool = {f"10.57.0.{n}" for n in range(10, 30)}
    assert {p["fixed_ips"][0]["ip_address"] for p in made} == pool
    # nothing half made: exactly the twenty ports exist, each with its one address
    listed = ok(http.get(f"{V2}/ports", headers=demo_h, params={
        "network_id": network["id"]}))["ports"]
    assert sorted(p["id"] for p in listed) == sorted(p["id"] for p in made)
    assert all(len(p["fixed_ips"]) == 1 and p["fixed_ips"][0]["subnet_id"] == subnet["id"]
               for p in listed)


def test_quotas_show_details_and_admin_only_updates(http: httpx.Client, demo_h: dict[str, str],
                                                    admin_h: dict[str, str],
                                                    alt_h: dict[str, str]) -> None:
    alt_project = ok(http.get(f"{V2}/quotas/project", headers=alt_h))["project"]["project_id"]
    own = ok(http.get(f"{V2}/quotas/{alt_project}", headers=alt_h))["quota"]
    assert own["network"] == 100 and own["port"] == 500 and own["router"] == 10
    details = ok(http.get(f"{V2}/quotas/{alt_project}/details", headers=alt_h))["quota"]
    assert set(details["port"]) == {"used", "limit", "reserved"}
    assert details["port"]["limit"] == 500
    refused = http.put(f"{V2}/quotas/{alt_project}", headers=demo_h,
                       json={"quota": {"network": 5}})
    assert error(refused, 403)["message"] == "(rule:update_quota) is disallowed by policy"
    others = http.get(f"{V2}/quotas/{alt_project}/details", headers=demo_h)
    assert error(others, 403)["type"] == "AdminRequired"
    defaults = ok(http.get(f"{V2}/quotas/{alt_project}/default", headers=alt_h))["quota"]
    assert defaults["network"] == 100 and defaults["floatingip"] == 50
    assert error(http.get(f"{V2}/quotas/{alt_project}/default", headers=demo_h),
                 403)["type"] == "PolicyNotAuthorized"
    try:
        changed = ok(http.put(f"{V2}/quotas/{alt_project}", headers=admin_h,
                              json={"quota": {"network": "5", "port": -1}}))["quota"]
        assert changed["network"] == 5 and changed["port"] == -1
        listed = ok(http.get(f"{V2}/quotas", headers=admin_h))["quotas"]
        assert any(q.get("project_id") == alt_project for q in listed)
        bad = http.put(f"{V2}/quotas/{alt_project}", headers=admin_h,
                       json={"quota": {"colour": 1}})
        assert error(bad, 400)["message"] == "Unrecognized attribute(s) 'colour'"
        below = http.put(f"{V2}/quotas/{alt_project}", headers=admin_h,
                         json={"quota": {"security_group": 0}})
        assert error(below, 400)["message"].startswith(
            "Quota limit 0 for security_group must be greater than or equal to already used")
    finally:
        assert http.delete(f"{V2}/quotas/{alt_project}", headers=admin_h).status_code == 204
    assert ok(http.get(f"{V2}/quotas/{alt_project}", headers=alt_h))["quota"]["network"] == 100


def test_admin_lists_the_labs_agents(http: httpx.Client, admin_h: dict[str, str]) -> None:
    agents = ok(http.get(f"{V2}/agents", headers=admin_h))["agents"]
    by_kind = {(a["agent_type"], a["host"]) for a in agents}
    assert {("Open vSwitch agent", h) for h in ("compute-1", "compute-2", "network")} <= by_kind
    assert {("DHCP agent", "network"), ("L3 agent", "network"),
            ("Metadata agent", "network")} <= by_kind
    ovs = next(a for a in agents if a["binary"] == "neutron-openvswitch-agent"
               and a["host"] == "compute-1")
    assert ovs["configurations"]["tunneling_ip"] == "10.0.0.20"
    assert ovs["alive"] is True and ovs["admin_state_up"] is True
    assert len(ovs["heartbeat_timestamp"]) == 19 and ovs["heartbeat_timestamp"][10] == " "
    dhcp = ok(http.get(f"{V2}/agents", headers=admin_h, params={
        "binary": "neutron-dhcp-agent", "fields": "host"}))["agents"]
    assert dhcp == [{"host": "network"}]


def test_router_interface_round_trip(http: httpx.Client, demo_h: dict[str, str],
                                     network: dict[str, Any]) -> None:
    subnet = no_dhcp_subnet(http, demo_h, network["id"], "10.58.0.0/24")
    router = create(http, demo_h, "router", name="r58")
    assert router["external_gateway_info"] is None and router["admin_state_up"] is True
    try:
        added = ok(http.put(f"{V2}/routers/{router['id']}/add_router_interface",
                            headers=demo_h, json={"subnet_id": subnet["id"]}))
        assert set(added) == {"id", "tenant_id", "project_id", "port_id", "subnet_id",
                              "subnet_ids", "network_id"}
        assert added["subnet_id"] == subnet["id"] and added["network_id"] == network["id"]
        port = ok(http.get(f"{V2}/ports/{added['port_id']}", headers=demo_h))["port"]
        assert port["device_owner"] == "network:router_interface"
        assert port["fixed_ips"][0]["ip_address"] == "10.58.0.1"
        again = http.put(f"{V2}/routers/{router['id']}/add_router_interface", headers=demo_h,
                         json={"subnet_id": subnet["id"]})
        assert error(again, 400)["message"]
        owned = http.delete(f"{V2}/ports/{added['port_id']}", headers=demo_h)
        assert error(owned, 409)["message"]
        ok(http.put(f"{V2}/routers/{router['id']}/remove_router_interface", headers=demo_h,
                    json={"subnet_id": subnet["id"]}))
        gone = http.get(f"{V2}/ports/{added['port_id']}", headers=demo_h)
        assert error(gone, 404)["type"] == "PortNotFound"
    finally:
        http.delete(f"{V2}/routers/{router['id']}", headers=demo_h)


def test_floating_ip_associates_through_the_lab_router(http: httpx.Client,
                                                       demo_h: dict[str, str]) -> None:
    public = named(http, demo_h, "network", "public")
    assert public["router:external"] is True
    demo_net = named(http, demo_h, "network", "demo-net")
    port = create(http, demo_h, "port", network_id=demo_net["id"], name="fip-target")
    fip = create(http, demo_h, "floatingip", floating_network_id=public["id"])
    try:
        assert ipaddress.ip_address(fip["floating_ip_address"]) in \
            ipaddress.ip_network("203.0.113.0/24")
        assert fip["status"] == "DOWN" and fip["port_id"] is None
        assert fip["router_id"] is None and fip["port_details"] is None
        bound = ok(http.put(f"{V2}/floatingips/{fip['id']}", headers=demo_h,
                            json={"floatingip": {"port_id": port["id"]}}))["floatingip"]
        assert bound["port_id"] == port["id"] and bound["status"] == "ACTIVE"
        assert bound["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
        assert bound["router_id"] == named(http, demo_h, "router", "demo-router")["id"]
        assert bound["port_details"]["mac_address"] == port["mac_address"]
        by_port = ok(http.get(f"{V2}/floatingips", headers=demo_h,
                              params={"port_id": port["id"]}))["floatingips"]
        assert [f["id"] for f in by_port] == [fip["id"]]
        freed = ok(http.put(f"{V2}/floatingips/{fip['id']}", headers=demo_h,
                            json={"floatingip": {"port_id": None}}))["floatingip"]
        assert freed["port_id"] is None and freed["status"] == "DOWN"
        assert freed["fixed_ip_address"] is None
    finally:
        http.delete(f"{V2}/floatingips/{fip['id']}", headers=demo_h)
        http.delete(f"{V2}/ports/{port['id']}", headers=demo_h)


# -- through openstacksdk -----------------------------------------------------------------

def test_sdk_network_subnet_port_round_trip(demo_conn: Connection) -> None:
    net = demo_conn.network.create_network(name="sdk-net")
    try:
        assert demo_conn.network.find_network("sdk-net").id == net.id
        subnet = demo_conn.network.create_subnet(network_id=net.id, ip_version=4,
                                                 cidr="10.60.0.0/24", name="sdk-subnet")
        assert subnet.gateway_ip == "10.60.0.1" and subnet.is_dhcp_enabled
        port = demo_conn.network.create_port(network_id=net.id, name="sdk-port")
        address = port.fixed_ips[0]["ip_address"]
        assert ipaddress.ip_address(address) in ipaddress.ip_network("10.60.0.0/24")
        found = list(demo_conn.network.ports(fixed_ips=[f"ip_address={address}"]))
        assert [p.id for p in found] == [port.id]
        assert demo_conn.network.get_port(port.id).status == "DOWN"
        renamed = demo_conn.network.update_port(port, name="sdk-port-2")
        assert renamed.name == "sdk-port-2"
        dhcp = list(demo_conn.network.ports(network_id=net.id, device_owner="network:dhcp"))
        assert len(dhcp) == 1
        demo_conn.network.delete_port(port)
        assert demo_conn.network.find_port(port.id) is None
    finally:
        for p in demo_conn.network.ports(network_id=net.id):
            if not p.device_owner.startswith("network:"):
                demo_conn.network.delete_port(p)
        demo_conn.network.delete_network(net)
    assert demo_conn.network.find_network("sdk-net") is None


def test_sdk_shows_neutrons_error_message(demo_conn: Connection) -> None:
    with pytest.raises(sdk_exceptions.NotFoundException):
        demo_conn.network.get_network("5f0c8a6c-1b57-4d4c-8f5e-0d6a1c3b2a10")
    with pytest.raises(sdk_exceptions.BadRequestException,
                       match="Unrecognized attribute"):
        demo_conn.network.create_network(name="x", colour="red")


def test_sdk_security_group_rules(demo_conn: Connection) -> None:
    group = demo_conn.network.find_security_group("default")
    assert group is not None
    defaults = list(demo_conn.network.security_group_rules(security_group_id=group.id))
    assert sorted((r.direction, r.ether_type) for r in defaults) == [
        ("egress", "IPv4"), ("egress", "IPv6"), ("ingress", "IPv4"), ("ingress", "IPv6")]
    assert all(r.remote_group_id == group.id for r in defaults if r.direction == "ingress")
    rule = demo_conn.network.create_security_group_rule(
        security_group_id=group.id, direction="ingress", protocol="tcp",
        port_range_min=22, port_range_max=22, remote_ip_prefix="0.0.0.0/0")
    try:
        assert (rule.protocol, rule.port_range_min, rule.ether_type) == ("tcp", 22, "IPv4")
        with pytest.raises(sdk_exceptions.ConflictException, match="already exists"):
            demo_conn.network.create_security_group_rule(
                security_group_id=group.id, direction="ingress", protocol="tcp",
                port_range_min=22, port_range_max=22, remote_ip_prefix="0.0.0.0/0")
    finally:
        demo_conn.network.delete_security_group_rule(rule)


def test_sdk_router_gateway_and_floating_ip(demo_conn: Connection,
                                            admin_conn: Connection) -> None:
    public = demo_conn.network.find_network("public")
    net = demo_conn.network.create_network(name="sdk-routed")
    subnet = demo_conn.network.create_subnet(network_id=net.id, ip_version=4,
                                             cidr="10.61.0.0/24")
    router = demo_conn.network.create_router(name="sdk-router",
                                             external_gateway_info={"network_id": public.id})
    fip = None
    port = None
    try:
        info = router.external_gateway_info
        assert info["network_id"] == public.id and info["enable_snat"] is True
        assert info["external_fixed_ips"][0]["ip_address"].startswith("203.0.113.")
        demo_conn.network.add_interface_to_router(router, subnet=subnet.id)
        port = demo_conn.network.create_port(network_id=net.id)
        fip = demo_conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
        assert fip.router_id == router.id and fip.status == "ACTIVE"
        fip = demo_conn.network.update_ip(fip, port_id=None)
        assert fip.port_id is None and fip.status == "DOWN"
        as_admin = admin_conn.network.get_router(router.id)
        assert as_admin.external_gateway_info["network_id"] == public.id
    finally:
        if fip is not None:
            demo_conn.network.delete_ip(fip)
        if port is not None:
            demo_conn.network.delete_port(port)
        demo_conn.network.remove_interface_from_router(router, subnet=subnet.id)
        demo_conn.network.delete_router(router)
        demo_conn.network.delete_network(net)


def test_sdk_lists_agents_as_admin(admin_conn: Connection) -> None:
    agents = list(admin_conn.network.agents(host="network"))
    assert {a.agent_type for a in agents} >= {"Open vSwitch agent", "DHCP agent", "L3 agent",
                                              "Metadata agent"}
    assert all(a.is_alive for a in agents)


def test_sdk_quota_with_details(demo_conn: Connection) -> None:
    project = demo_conn.current_project_id
    quota = demo_conn.network.get_quota(project, details=True)
    assert quota.networks["limit"] == 100
    assert quota.ports["used"] >= 0

