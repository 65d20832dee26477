"""nova-api-metadata and neutron's metadata proxy: what a guest learns about itself.

One cloud built in this process boots a server on the model driver with a key pair,
user data, metadata and a floating IP; the metadata app is called in process with
neutron's signed headers (and with wrong ones), then for real through the proxy
script, which reads a request on stdin and forwards it to the app served by uvicorn
on a free port. The documents' shapes follow nova's metadata service.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import SUBPROCESS_TIMEOUT, demo_context, in_cloud
from labkit.cloud.app import Cloud
from labkit.cloud.compute.api.metadata import build_metadata_app, load_or_create_secret
from labkit.cloud.compute.metadata import (
    EC2_VERSIONS,
    OPENSTACK_VERSIONS,
    InstanceMetadata,
    MetadataNotFound,
    network_data,
)
from labkit.cloud.compute.servers import CreateRequest, ServersAPI
from labkit.cloud.network import metadata_proxy
from labkit.cloud.network.common import NetContext
from labkit.cloud.network.metadata_proxy import proxy_command, sign, webob_error

IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny (kernel_id and ramdisk_id set)
KERNEL = "98c03dae-0569-44bd-96d4-d91283a7e27f"
NANO = "42"
USER_DATA = b"#!/bin/sh\necho 'hello from user data'\n\x00\xffbinary too"
ADMIN_NET = NetContext(project_id=None, is_admin=True)
PROXY = Path(metadata_proxy.__file__)
NOT_FOUND = b"404 Not Found\n\nThe resource could not be found.\n\n   "
PLAIN = "text/plain; charset=UTF-8"

# every path asked of the app, by a short name; (path, headers: "good", "none", ...)
ASKED = {
    "root": "/",
    "openstack": "/openstack",
    "openstack_slash": "/openstack/",
    "latest": "/openstack/latest",
    "latest_slash": "/openstack/latest/",
    "folsom": "/openstack/2012-08-10",
    "meta_data": "/openstack/latest/meta_data.json",
    "meta_data_folsom": "/openstack/2012-08-10/meta_data.json",
    "network_data": "/openstack/latest/network_data.json",
    "user_data": "/openstack/latest/user_data",
    "vendor_data": "/openstack/latest/vendor_data.json",
    "vendor_data2": "/openstack/latest/vendor_data2.json",
    "password": "/openstack/latest/password",
    "no_such_file": "/openstack/latest/nothing.json",
    "no_such_version": "/openstack/1999-01-01/meta_data.json",
    "ec2_latest": "/latest",
    "ec2_meta": "/latest/meta-data/",
    "ec2_hostname": "/latest/meta-data/hostname",
    "ec2_local_hostname": "/latest/meta-data/local-hostname",
    "ec2_instance_id": "/latest/meta-data/instance-id",
    "ec2_instance_type": "/latest/meta-data/instance-type",
    "ec2_ami_id": "/latest/meta-data/ami-id",
    "ec2_kernel_id": "/latest/meta-data/kernel-id",
    "ec2_local_ipv4": "/latest/meta-data/local-ipv4",
    "ec2_public_ipv4": "/latest/meta-data/public-ipv4",
    "ec2_az": "/latest/meta-data/placement/availability-zone",
    "ec2_keys": "/latest/meta-data/public-keys/",
    "ec2_key0": "/latest/meta-data/public-keys/0/",
    "ec2_openssh_key": "/latest/meta-data/public-keys/0/openssh-key",
    "ec2_reservation": "/latest/meta-data/reservation-id",
    "ec2_groups": "/latest/meta-data/security-groups",
    "ec2_bdm": "/latest/meta-data/block-device-mapping/",
    "ec2_user_data": "/latest/user-data",
    "ec2_old_version": "/1.0/meta-data/",
    "ec2_no_such": "/latest/meta-data/nothing",
    "ec2_under_a_value": "/latest/meta-data/hostname/more",
}

Answer = tuple[int, str, bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode() + " tester@labkit"


async def drain(cloud: Cloud) -> None:
    """Until the bus and the agents have nothing in flight (a build waits on both)."""
    for _ in range(10):
        await cloud.bus.drain()
        await cloud.network.agents.drain()
    await cloud.bus.drain()


async def boot(cloud: Cloud, key: str) -> str:
    ctx = demo_context(cloud, "req-metadata-boot")
    cloud.compute.keypairs.create(ctx.user_id, "demo-key", public_key=key)
    net = next(n for n in cloud.network.neutron.list(ADMIN_NET, "network")
               if n["name"] == "demo-net")
    _, (uuid,) = ServersAPI(cloud.compute).create(ctx, CreateRequest(
        name="md vm", flavor_ref=NANO, image_ref=IMAGE, networks=[{"uuid": net["id"]}],
        key_name="demo-key", user_data=base64.b64encode(USER_DATA).decode(),
        metadata={"role": "web"}))
    await drain(cloud)
    # a floating IP on its port: neutron tells nova (network-changed), nova refreshes its cache
    public = next(n for n in cloud.network.neutron.list(ADMIN_NET, "network")
                  if n["name"] == "public")
    port = next(p for p in cloud.network.neutron.list(ADMIN_NET, "port")
                if p["device_id"] == uuid)
    demo_net = NetContext(project_id=ctx.project_id, user_id=ctx.user_id)
    cloud.network.neutron.create(demo_net, "floatingip", {
        "floating_network_id": public["id"], "port_id": port["id"]})
    await drain(cloud)
    return uuid


async def ask(client: httpx.AsyncClient, path: str, headers: dict[str, str],
              method: str = "GET") -> Answer:
    r = await client.request(method, path, headers=headers)
    return r.status_code, r.headers.get("content-type", ""), r.content


def run_proxy(url: str, secret_file: Path, instance: str, project: str,
              request: bytes) -> subprocess.CompletedProcess[bytes]:
    """The proxy as qemu starts it: through /bin/sh -c, the request on its stdin."""
    command = proxy_command(url, secret_file, instance, project)
    return subprocess.run(["/bin/sh", "-c", command], input=request, capture_output=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (li.partition(":") for li in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every answer this module checks, from one cloud in this process."""
    home = tmp_path_factory.mktemp("labkit-metadata")
    key = public_key()

    async def scenario(cloud: Cloud) -> dict[str, Any]:
        uuid = await boot(cloud, key)
        with cloud.compute.database.session() as s:
            row = cloud.compute.instances.get(s, uuid)
            instance = {"uuid": uuid, "id": row.id, "hostname": row.hostname,
                        "project_id": row.project_id, "az": row.availability_zone,
                        "reservation_id": row.reservation_id,
                        "network_info": cloud.compute.instances.network_info(s, uuid)}
        secret = load_or_create_secret(cloud.settings.home)
        app = build_metadata_app(cloud.compute, secret)
        good = {"X-Instance-ID": uuid, "X-Tenant-ID": instance["project_id"],
                "X-Instance-ID-Signature": sign(secret, uuid)}
        out: dict[str, Any] = {"instance": instance, "key": key, "secret": secret,
                               "home": cloud.settings.home}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metadata") as client:
            # nova's own callers (the proxy) send no Accept header: plain text refusals
            client.headers.pop("accept", None)
            out["answers"] = {name: await ask(client, path, good)
                              for name, path in ASKED.items()}
            refused: dict[str, Answer] = {}
            for missing in good:
                partial = {k: v for k, v in good.items() if k != missing}
                refused[f"no {missing}"] = await ask(client, "/latest/meta-data/", partial)
            refused["no headers, root"] = await ask(client, "/", {})
            refused["bad signature"] = await ask(client, "/latest/meta-data/", {
                **good, "X-Instance-ID-Signature": sign(b"another secret", uuid)})
            refused["other tenant"] = await ask(client, "/latest/meta-data/", {
                **good, "X-Tenant-ID": "someone-else"})
            other = "00000000-0000-4000-8000-000000000000"
            refused["unknown instance"] = await ask(client, "/latest/meta-data/", {
                **good, "X-Instance-ID": other, "X-Instance-ID-Signature": sign(secret, other)})
            refused["html"] = await ask(client, "/latest/meta-data/nothing",
                                        {**good, "Accept": "*/*"})
            refused["post password"] = await ask(client, ASKED["password"], good, "POST")
            out["refused"] = refused
            out["proxied"] = await through_proxy(cloud, app, good, uuid, instance["project_id"])
            ServersAPI(cloud.compute).delete(demo_context(cloud, "req-metadata-delete"), uuid)
            await drain(cloud)
            out["deleted"] = await ask(client, "/openstack/latest/meta_data.json", good)
        return out
    return in_cloud(home, scenario)


async def through_proxy(cloud: Cloud, app: Any, good: dict[str, str], uuid: str,
                        project: str) -> dict[str, Any]:
    """The proxy script against the app served by uvicorn (the cloud's event loop serves
    both): requests as a guest's wget sends them."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        secret_file = cloud.settings.home / "metadata_secret"
        wget = (b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 172.16.1.254\r\n"
                b"User-Agent: Wget\r\nConnection: close\r\n\r\n")
        asked = {
            "meta_data": (url, uuid, project, wget),
            "hostname": (url, uuid, project,
                         b"GET /latest/meta-data/hostname HTTP/1.0\r\n\r\n"),
            "head": (url, uuid, project, b"HEAD /latest/user-data HTTP/1.0\r\n\r\n"),
            "missing": (url, uuid, project, b"GET /latest/nothing HTTP/1.1\r\n\r\n"),
            "wrong project": (url, uuid, "nobody", b"GET /latest HTTP/1.1\r\n\r\n"),
            "garbage": (url, uuid, project, b"HELLO\r\n\r\n"),
            "silent": (url, uuid, project, b""),
            "cloud down": (f"http://127.0.0.1:{free_port()}", uuid, project,
                           b"GET /latest HTTP/1.1\r\nAccept: text/plain\r\n\r\n"),
        }
        answers: dict[str, Any] = {}
        for name, (base, instance, tenant, request) in asked.items():
            done = await asyncio.to_thread(run_proxy, base, secret_file, instance, tenant,
                                           request)
            answers[name] = done
        # a wrong secret on the proxy's side
        wrong = cloud.settings.home / "wrong_secret"
        wrong.write_text("not the secret\n")
        answers["wrong secret"] = await asyncio.to_thread(
            run_proxy, url, wrong, uuid, project, b"GET /latest HTTP/1.1\r\n\r\n")
        return answers
    finally:
        server.should_exit = True
        await task


# -- the OpenStack tree ------------------------------------------------------------------------

def test_meta_data_json_describes_the_instance(served: dict[str, Any]) -> None:
    status, content_type, body = served["answers"]["meta_data"]
    assert (status, content_type) == (200, "application/json")
    md = json.loads(body)
    inst = served["instance"]
    assert md["uuid"] == inst["uuid"]
    assert md["name"] == "md vm"
    assert md["hostname"] == f"{inst['hostname']}.novalocal" == "md-vm.novalocal"
    assert md["project_id"] == inst["project_id"]
    assert md["launch_index"] == 0
    assert md["availability_zone"] == inst["az"] == "nova"
    assert md["public_keys"] == {"demo-key": served["key"]}
    assert md["keys"] == [{"name": "demo-key", "type": "ssh", "data": served["key"]}]
    assert md["meta"] == {"role": "web"}
    assert md["devices"] == [] and md["dedicated_cpus"] == []
    assert "random_seed" not in md


def test_older_versions_show_fewer_fields(served: dict[str, Any]) -> None:
    md = json.loads(served["answers"]["meta_data_folsom"][2])
    assert "project_id" not in md and "devices" not in md
    assert served["answers"]["folsom"][2] == b"meta_data.json\nuser_data"


def test_the_version_listings(served: dict[str, Any]) -> None:
    answers = served["answers"]
    listing = (*OPENSTACK_VERSIONS, "latest")
    assert answers["openstack"] == (200, PLAIN, "\n".join(listing).encode())
    assert answers["openstack_slash"] == answers["openstack"]
    assert answers["latest"] == (200, PLAIN, b"meta_data.json\nuser_data\npassword\n"
                                 b"vendor_data.json\nnetwork_data.json\nvendor_data2.json")
    assert answers["latest_slash"] == answers["latest"]
    assert answers["root"] == (200, PLAIN, "\n".join((*EC2_VERSIONS, "latest")).encode())


def test_user_data_round_trips_as_bytes(served: dict[str, Any]) -> None:
    assert served["answers"]["user_data"] == (200, PLAIN, USER_DATA)
    assert served["answers"]["ec2_user_data"] == (200, PLAIN, USER_DATA)


def test_network_data_json_from_the_cached_network_info(served: dict[str, Any]) -> None:
    status, content_type, body = served["answers"]["network_data"]
    # nova never sets the JSON type for this one
    assert (status, content_type) == (200, PLAIN)
    data = json.loads(body)
    (vif,) = served["instance"]["network_info"]
    assert data["links"] == [{"id": vif["devname"], "vif_id": vif["id"], "type": "ovs",
                              "mtu": vif["network"]["meta"]["mtu"],
                              "ethernet_mac_address": vif["address"]}]
    assert data["networks"] == [{"id": "network0", "type": "ipv4_dhcp",
                                 "link": vif["devname"], "network_id": vif["network"]["id"]}]
    assert data["services"] == [{"type": "dns", "address": "8.8.4.4"}]


def test_vendor_data_and_password(served: dict[str, Any]) -> None:
    answers = served["answers"]
    assert answers["vendor_data"] == (200, "application/json", b"{}")
    assert answers["vendor_data2"] == (200, "application/json", b'{"static": {}}')
    assert answers["password"] == (200, PLAIN, b"")
    status, _, body = served["refused"]["post password"]
    assert status == 400 and b"does not store instance passwords" in body


# -- the EC2 tree ------------------------------------------------------------------------------

def test_ec2_values(served: dict[str, Any]) -> None:
    answers, inst = served["answers"], served["instance"]
    (vif,) = inst["network_info"]
    (ip,) = vif["network"]["subnets"][0]["ips"]
    (floating,) = ip["floating_ips"]

    def text(name: str) -> str:
        status, content_type, body = answers[name]
        assert (status, content_type) == (200, PLAIN), (name, answers[name])
        return body.decode()
    assert text("ec2_hostname") == text("ec2_local_hostname") == "md-vm.novalocal"
    assert text("ec2_instance_id") == f"i-{inst['id']:08x}"
    assert text("ec2_instance_type") == "m1.nano"
    assert text("ec2_ami_id") == "ami-6b4f1c2e"
    assert text("ec2_kernel_id") == f"aki-{KERNEL[:8]}"
    assert text("ec2_local_ipv4") == ip["address"]
    assert text("ec2_public_ipv4") == floating["address"]
    assert text("ec2_az") == "nova"
    assert text("ec2_keys") == "0=demo-key"
    assert text("ec2_key0") == "openssh-key"
    assert text("ec2_openssh_key") == served["key"]
    assert text("ec2_reservation") == inst["reservation_id"]
    assert text("ec2_groups") == "default"
    assert text("ec2_bdm") == "ami\nroot"
    assert text("ec2_latest") == "meta-data/\nuser-data"


def test_ec2_meta_data_listing(served: dict[str, Any]) -> None:
    listing = served["answers"]["ec2_meta"][2].decode().split("\n")
    assert listing == ["ami-id", "ami-launch-index", "ami-manifest-path",
                       "block-device-mapping/", "hostname", "instance-action", "instance-id",
                       "instance-type", "kernel-id", "local-hostname", "local-ipv4",
                       "placement/", "public-hostname", "public-ipv4", "public-keys/",
                       "ramdisk-id", "reservation-id", "security-groups"]
    old = served["answers"]["ec2_old_version"][2].decode().split("\n")
    assert "local-hostname" not in old and "placement/" not in old and "hostname" in old


# -- refusals ----------------------------------------------------------------------------------

def test_missing_paths_are_404_as_webob_says_it(served: dict[str, Any]) -> None:
    for name in ("no_such_file", "no_such_version", "ec2_no_such", "ec2_under_a_value"):
        assert served["answers"][name] == (404, PLAIN, NOT_FOUND), name


def test_missing_headers_are_400(served: dict[str, Any]) -> None:
    refused = served["refused"]
    for header in ("X-Instance-ID", "X-Tenant-ID", "X-Instance-ID-Signature"):
        status, content_type, body = refused[f"no {header}"]
        assert (status, content_type) == (400, PLAIN)
        assert body == (f"400 Bad Request\n\n{header} header is missing from request."
                        f"\n\n   ").encode()
    # the version list needs no identity
    assert refused["no headers, root"][0] == 200


def test_a_bad_signature_is_403(served: dict[str, Any]) -> None:
    assert served["refused"]["bad signature"] == (
        403, PLAIN, b"403 Forbidden\n\nInvalid proxy request signature.\n\n   ")


def test_unknown_deleted_or_foreign_instances_are_404(served: dict[str, Any]) -> None:
    refused = served["refused"]
    assert refused["other tenant"] == (404, PLAIN, NOT_FOUND)
    assert refused["unknown instance"] == (404, PLAIN, NOT_FOUND)
    assert served["deleted"] == (404, PLAIN, NOT_FOUND)


def test_refusals_follow_the_accept_header_like_webob(served: dict[str, Any]) -> None:
    status, content_type, body = served["refused"]["html"]
    assert (status, content_type) == (404, "text/html; charset=UTF-8")
    assert b"<title>404 Not Found</title>" in body
    assert b"The resource could not be found.<br /><br />" in body
    assert webob_error(404, "application/json")[0] == "application/json"
    assert json.loads(webob_error(404, "application/json")[1])["code"] == "404 Not Found"
    assert webob_error(404, "text/plain")[0] == PLAIN
    assert webob_error(404, "text/html;q=0, */*;q=0.5")[0] == "application/json"


def test_the_secret_is_kept_private_and_survives(served: dict[str, Any]) -> None:
    path = served["home"] / "metadata_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    assert load_or_create_secret(served["home"]) == served["secret"]


def test_a_fresh_secret_is_random(tmp_path: Path) -> None:
    a, b = load_or_create_secret(tmp_path / "a"), load_or_create_secret(tmp_path / "b")
    assert a != b and len(bytes.fromhex(a.decode())) == 32


# -- the proxy qemu starts ---------------------------------------------------------------------

def test_the_proxy_forwards_a_guest_request(served: dict[str, Any]) -> None:
    done = served["proxied"]["meta_data"]
    assert done.returncode == 0, done.stderr
    status, headers, body = parse_response(done.stdout)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["uuid"] == served["instance"]["uuid"]
    assert parse_response(served["proxied"]["hostname"].stdout)[2] == b"md-vm.novalocal"


def test_the_proxy_answers_head_without_a_body(served: dict[str, Any]) -> None:
    status, headers, body = parse_response(served["proxied"]["head"].stdout)
    # as neutron's agent: HEAD goes on to nova as HEAD, whose empty body it passes back
    assert (status, headers["content-length"], body) == (200, "0", b"")


def test_the_proxy_passes_refusals_on_as_the_agent_does(served: dict[str, Any]) -> None:
    proxied = served["proxied"]
    assert parse_response(proxied["missing"].stdout)[::2] == (404, NOT_FOUND)
    assert parse_response(proxied["wrong project"].stdout)[0] == 404
    status, _, body = parse_response(proxied["wrong secret"].stdout)
    # the agent answers a bare 403, not nova's sentence
    assert (status, body) == (403, b"403 Forbidden\n\nAccess was denied to this resource.\n\n   ")
    assert b"shared secret" in proxied["wrong secret"].stderr


def test_the_proxy_when_the_cloud_is_down_or_the_guest_talks_nonsense(
        served: dict[str, Any]) -> None:
    proxied = served["proxied"]
    status, headers, body = parse_response(proxied["cloud down"].stdout)
    assert status == 503 and headers["content-type"] == PLAIN
    assert b"The remote metadata server is temporarily unavailable" in body
    assert parse_response(proxied["garbage"].stdout)[0] == 400
    # a connection closed before any request: nothing to answer
    assert (proxied["silent"].returncode, proxied["silent"].stdout) == (0, b"")


def test_the_proxy_command_is_safe_for_qemu_and_the_shell(tmp_path: Path) -> None:
    secret = tmp_path / "a dir" / "metadata_secret"
    command = proxy_command("http://127.0.0.1:8774/metadata", secret, "uuid-1", "proj")
    assert "," not in command
    assert f"'{secret}'" in command and " -S " in command and str(PROXY) in command
    with pytest.raises(ValueError, match="comma"):
        proxy_command("http://127.0.0.1:1/metadata", tmp_path / "a,b", "uuid-1", "proj")
    with pytest.raises(ValueError, match="comma"):
        proxy_command("http://127.0.0.1:1/metadata", secret, "uuid-1", "p,q")


def test_the_proxy_imports_nothing_outside_the_standard_library() -> None:
    """qemu runs it with `python -S`: no site-packages, so no labkit and no third party."""
    code = ("import sys, runpy; before = set(sys.modules); "
            f"runpy.run_path({str(PROXY)!r}, run_name='not_main'); "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
            "('labkit', 'starlette', 'httpx', 'requests')))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- the model alone ---------------------------------------------------------------------------

def test_network_data_for_a_static_subnet_carries_address_routes_and_dns() -> None:
    vif = {"id": "port-1", "address": "fa:16:3e:00:00:01", "type": "bridge",
           "devname": "tapport-1", "network": {
               "id": "net-1", "meta": {"mtu": 1450}, "subnets": [{
                   "cidr": "10.0.0.0/24", "version": 4, "meta": {"dhcp_server": None},
                   "gateway": {"address": "10.0.0.1"}, "dns": [{"address": "10.0.0.2"}],
                   "routes": [{"cidr": "192.168.0.0/16", "gateway": {"address": "10.0.0.3"}}],
                   "ips": [{"address": "10.0.0.5", "type": "fixed", "floating_ips": []}]}]}}
    data = network_data([vif])
    assert data is not None
    assert data["links"][0]["type"] == "bridge" and data["links"][0]["mtu"] == 1450
    assert data["networks"] == [{
        "id": "network0", "type": "ipv4", "link": "tapport-1", "ip_address": "10.0.0.5",
        "netmask": "255.255.255.0", "network_id": "net-1",
        "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"},
                   {"network": "192.168.0.0", "netmask": "255.255.0.0",
                    "gateway": "10.0.0.3"}],
        "services": [{"type": "dns", "address": "10.0.0.2"}]}]
    assert network_data([]) is None


def test_no_user_data_means_no_user_data_paths() -> None:
    md = InstanceMetadata(uuid="u", name="n", hostname="n", project_id="p", dhcp_domain="")
    assert "user_data" not in md.openstack_files()
    assert md.lookup("/latest").body == b"meta-data/"
    assert md.meta_data()["hostname"] == "n"
    for path in ("/openstack/latest/user_data", "/latest/user-data"):
        with pytest.raises(MetadataNotFound):
            md.lookup(path)
