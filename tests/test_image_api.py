"""Glance v2 in the embedded cloud: openstacksdk, the openstack CLI and raw HTTP.

Every test talks to a real server (the module's fresh deterministic cloud), except the
one that calls the in-process API nova uses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openstack import exceptions as sdk_exceptions
from openstack.connection import Connection

from conftest import LAB_PASSWORDS, auth_header, connection, start_cloud, stop_cloud
from labkit.cloud import errors
from labkit.cloud.db import Database
from labkit.cloud.ids import IdSource
from labkit.cloud.image.models import Caller, ImageBase, Images, ListQuery, lab_image_file
from labkit.cloud.process import CloudInfo
from labkit.paths import lab_dir

PATCH = "application/openstack-images-v2.1-json-patch"
LAB = yaml.safe_load((lab_dir() / "images.yaml").read_text())
TINY = next(i for i in LAB["images"] if i["name"] == "labkit-tiny")
# the built guest's machine image, or its placeholder while the guest is not built
TINY_BYTES = lab_image_file(lab_dir(), TINY).read_bytes()


@pytest.fixture(scope="module")
def alt_conn(cloud: CloudInfo) -> Iterator[Connection]:
    """openstacksdk as alt_demo, a member of the alt_demo project (not in clouds.yaml)."""
    conn = Connection(auth_url=f"{cloud.url}/identity", username="alt_demo",
                      password=LAB_PASSWORDS["alt_demo"], project_name="alt_demo",
                      user_domain_name="Default", project_domain_name="Default",
                      region_name="RegionOne", identity_api_version="3")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def demo_h(issue_token: Callable[..., str]) -> dict[str, str]:
    return {**auth_header(issue_token("demo", "demo")), "Accept": "application/json"}


@pytest.fixture(scope="module")
def alt_h(issue_token: Callable[..., str]) -> dict[str, str]:
    return {**auth_header(issue_token("alt_demo", "alt_demo")), "Accept": "application/json"}


@pytest.fixture(scope="module")
def admin_h(issue_token: Callable[..., str]) -> dict[str, str]:
    return {**auth_header(issue_token("admin", "admin")), "Accept": "application/json"}


def new_image(http: httpx.Client, headers: dict[str, str], **body: object) -> dict:
    r = http.post("/image/v2/images", headers=headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def upload(http: httpx.Client, headers: dict[str, str], image_id: str, data: bytes) -> None:
    r = http.put(f"/image/v2/images/{image_id}/file", content=data,
                 headers={**headers, "Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text


def patch(http: httpx.Client, headers: dict[str, str], image_id: str,
          ops: object) -> httpx.Response:
    return http.patch(f"/image/v2/images/{image_id}", content=json.dumps(ops),
                      headers={**headers, "Content-Type": PATCH})


def listed(http: httpx.Client, headers: dict[str, str], query: str = "") -> list[str]:
    r = http.get(f"/image/v2/images{query}", headers=headers)
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["images"]]


def glance_error(r: httpx.Response, status: int) -> str:
    """The message of a glance error in JSON (WebOb's format), after checking its shape."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"message", "code", "title"}
    assert body["code"].startswith(f"{status} ")
    return body["message"]


# -- version documents and tokens -------------------------------------------------------------

def test_image_root_lists_versions_with_300(http: httpx.Client, cloud: CloudInfo) -> None:
    for path in ("/image", "/image/"):
        r = http.get(path)
        assert r.status_code == 300
        versions = r.json()["versions"]
        assert any(v["status"] == "CURRENT" for v in versions)
        for v in versions:
            assert v["id"].startswith("v2.")
            assert v["links"] == [{"rel": "self", "href": f"{cloud.url}/image/v2/"}]


def test_versions_asked_for_by_name_are_200(http: httpx.Client) -> None:
    r = http.get("/image/versions")
    assert r.status_code == 200 and r.json()["versions"]


def test_unknown_api_version_answers_the_versions(http: httpx.Client) -> None:
    assert http.get("/image/v1/images").status_code == 300


def test_images_api_needs_a_token(http: httpx.Client) -> None:
    assert http.get("/image/v2/images").status_code == 401


def test_minor_version_in_url_reaches_v2(http: httpx.Client, demo_h: dict) -> None:
    r = http.get(f"/image/v2.1/images/{TINY['id']}", headers=demo_h)
    assert r.status_code == 200 and r.json()["id"] == TINY["id"]


# -- the lab's image --------------------------------------------------------------------------

def test_sdk_lists_the_lab_image(demo_conn: Connection) -> None:
    images = {i.name: i for i in demo_conn.image.images()}
    tiny = images["labkit-tiny"]
    assert tiny.id == TINY["id"]
    assert (tiny.status, tiny.visibility, tiny.disk_format, tiny.container_format) == (
        "active", "public", "ami", "ami")
    assert tiny.kernel_id == images["labkit-tiny-kernel"].id
    assert tiny.ramdisk_id == images["labkit-tiny-ramdisk"].id
    assert (images["labkit-tiny-kernel"].disk_format,
            images["labkit-tiny-ramdisk"].disk_format) == ("aki", "ari")
    assert tiny.min_ram == TINY["min_ram"] and tiny.min_disk == TINY["min_disk"]
    assert tiny.size == len(TINY_BYTES)
    assert tiny.checksum == hashlib.md5(TINY_BYTES).hexdigest()
    assert tiny.hash_algo == "sha512"
    assert tiny.hash_value == hashlib.sha512(TINY_BYTES).hexdigest()


def test_lab_image_carries_its_note_as_a_property(http: httpx.Client, demo_h: dict) -> None:
    image = http.get(f"/image/v2/images/{TINY['id']}", headers=demo_h).json()
    assert image["labkit_note"] == TINY["properties"]["labkit_note"]
    assert image["hw_architecture"] == "x86_64"


def test_lab_image_is_owned_by_the_admin_project(demo_conn: Connection,
                                                 admin_conn: Connection) -> None:
    admin_project = admin_conn.identity.find_project("admin")
    assert demo_conn.image.find_image("labkit-tiny").owner == admin_project.id


def test_find_image_by_name_and_by_id(demo_conn: Connection) -> None:
    assert demo_conn.image.find_image("labkit-tiny").id == TINY["id"]
    assert demo_conn.image.find_image(TINY["id"]).name == "labkit-tiny"
    assert demo_conn.image.find_image("no-such-image") is None


def test_sdk_downloads_the_lab_image(demo_conn: Connection) -> None:
    response = demo_conn.image.download_image(TINY["id"])
    assert response.content == TINY_BYTES


def test_download_sends_content_md5(http: httpx.Client, demo_h: dict) -> None:
    r = http.get(f"/image/v2/images/{TINY['id']}/file", headers=demo_h)
    assert r.status_code == 200 and r.content == TINY_BYTES
    assert r.headers["Content-MD5"] == hashlib.md5(TINY_BYTES).hexdigest()
    assert r.headers["Content-Type"] == "application/octet-stream"


def test_member_cannot_change_or_delete_the_lab_image(http: httpx.Client, demo_h: dict) -> None:
    r = patch(http, demo_h, TINY["id"], [{"op": "replace", "path": "/name", "value": "x"}])
    assert "modify_image" in glance_error(r, 403)
    r = http.delete(f"/image/v2/images/{TINY['id']}", headers=demo_h)
    assert "delete_image" in glance_error(r, 403)


# -- create, upload, download, update, delete -------------------------------------------------

def test_sdk_create_with_data_makes_an_active_image(demo_conn: Connection) -> None:
    data = b"bytes of a test image\n" * 100
    image = demo_conn.image.create_image("sdk-upload", data=data, disk_format="raw",
                                         container_format="bare", allow_duplicates=True)
    try:
        image = demo_conn.image.get_image(image.id)
        assert image.status == "active" and image.size == len(data)
        assert image.checksum == hashlib.md5(data).hexdigest()
        assert image.hash_algo == "sha512"
        assert image.hash_value == hashlib.sha512(data).hexdigest()
        assert image.visibility == "shared"  # glance's default since Ocata
        assert demo_conn.image.download_image(image.id).content == data
    finally:
        demo_conn.image.delete_image(image.id)


def test_new_image_is_queued_without_data(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="queued-one", disk_format="raw",
                      container_format="bare")
    assert image["status"] == "queued"
    assert image["size"] is None and image["checksum"] is None
    r = http.get(f"/image/v2/images/{image['id']}/file", headers=demo_h)
    assert r.status_code == 204 and r.content == b""


def test_create_answers_201_with_location(http: httpx.Client, demo_h: dict,
                                          cloud: CloudInfo) -> None:
    r = http.post("/image/v2/images", headers=demo_h, json={"name": "located"})
    assert r.status_code == 201
    assert r.headers["Location"] == f"{cloud.url}/image/v2/images/{r.json()['id']}"


def test_extra_properties_appear_top_level(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="with-props", hw_disk_bus="virtio", os_distro="cirros")
    shown = http.get(f"/image/v2/images/{image['id']}", headers=demo_h).json()
    assert shown["hw_disk_bus"] == "virtio" and shown["os_distro"] == "cirros"


def test_non_string_property_is_400(http: httpx.Client, demo_h: dict) -> None:
    r = http.post("/image/v2/images", headers=demo_h, json={"name": "bad", "hw_x": 3})
    assert "does not match schema 'image'" in glance_error(r, 400)


def test_read_only_attribute_on_create_is_403(http: httpx.Client, demo_h: dict) -> None:
    r = http.post("/image/v2/images", headers=demo_h, json={"name": "bad", "status": "active"})
    assert "Attribute 'status' is read-only." in glance_error(r, 403)


def test_upload_to_active_image_is_409(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="twice", disk_format="raw", container_format="bare")
    upload(http, demo_h, image["id"], b"first")
    r = http.put(f"/image/v2/images/{image['id']}/file", content=b"second",
                 headers={**demo_h, "Content-Type": "application/octet-stream"})
    assert "transition from active to saving" in glance_error(r, 409)


def test_upload_needs_formats_first(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="no-formats")
    r = http.put(f"/image/v2/images/{image['id']}/file", content=b"x",
                 headers={**demo_h, "Content-Type": "application/octet-stream"})
    assert "must be set prior to saving data" in glance_error(r, 400)
    shown = http.get(f"/image/v2/images/{image['id']}", headers=demo_h).json()
    assert shown["status"] == "queued"


def test_upload_needs_octet_stream(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="wrong-type", disk_format="raw",
                      container_format="bare")
    r = http.put(f"/image/v2/images/{image['id']}/file", content=b"x",
                 headers={**demo_h, "Content-Type": "text/plain"})
    assert r.status_code == 415


def test_sdk_update_name_and_property(demo_conn: Connection) -> None:
    image = demo_conn.image.create_image("before-update", allow_duplicates=True,
                                         disk_format="raw", container_format="bare")
    try:
        demo_conn.image.update_image(image, name="after-update", os_distro="debian")
        image = demo_conn.image.get_image(image.id)
        assert image.name == "after-update" and image.os_distro == "debian"
    finally:
        demo_conn.image.delete_image(image.id)


def test_patch_add_replace_remove_properties(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="patched")
    r = patch(http, demo_h, image["id"], [
        {"op": "add", "path": "/flavour", "value": "vanilla"},
        {"op": "replace", "path": "/flavour", "value": "chocolate"},
        {"op": "add", "path": "/colour", "value": "blue"},
        {"op": "replace", "path": "/min_ram", "value": 64},
    ])
    assert r.status_code == 200, r.text
    assert (r.json()["flavour"], r.json()["colour"], r.json()["min_ram"]) == (
        "chocolate", "blue", 64)
    r = patch(http, demo_h, image["id"], [{"op": "remove", "path": "/colour"}])
    assert r.status_code == 200 and "colour" not in r.json()


def test_patch_replace_of_missing_property_is_409(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="missing-prop")
    r = patch(http, demo_h, image["id"], [{"op": "replace", "path": "/nope", "value": "x"}])
    assert "Property nope does not exist." in glance_error(r, 409)


def test_bad_patch_is_400(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="bad-patch")
    r = patch(http, demo_h, image["id"], [{"op": "move", "path": "/name", "value": "x"}])
    assert "Invalid operation: `move`" in glance_error(r, 400)
    r = patch(http, demo_h, image["id"], {"op": "add"})
    assert "JSON array of operation objects" in glance_error(r, 400)
    r = patch(http, demo_h, image["id"], [{"op": "add", "path": "name", "value": "x"}])
    assert 'does not start with "/"' in glance_error(r, 400)


def test_patch_read_only_attribute_is_403(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="ro")
    r = patch(http, demo_h, image["id"], [{"op": "replace", "path": "/status",
                                           "value": "active"}])
    assert "Attribute 'status' is read-only." in glance_error(r, 403)


def test_patch_needs_the_json_patch_media_type(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="plain-json")
    r = http.patch(f"/image/v2/images/{image['id']}", headers=demo_h,
                   json=[{"op": "replace", "path": "/name", "value": "x"}])
    assert r.status_code == 415
    assert PATCH in r.headers["Accept-Patch"]


def test_delete_is_204_then_404(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="doomed", disk_format="raw", container_format="bare")
    upload(http, demo_h, image["id"], b"short-lived")
    assert http.delete(f"/image/v2/images/{image['id']}", headers=demo_h).status_code == 204
    r = http.get(f"/image/v2/images/{image['id']}", headers=demo_h)
    glance_error(r, 404)


def test_protected_image_refuses_delete(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="guarded", protected=True)
    r = http.delete(f"/image/v2/images/{image['id']}", headers=demo_h)
    assert "is protected and cannot be deleted" in glance_error(r, 403)
    patch(http, demo_h, image["id"], [{"op": "replace", "path": "/protected", "value": False}])
    assert http.delete(f"/image/v2/images/{image['id']}", headers=demo_h).status_code == 204


# -- errors in glance's format ----------------------------------------------------------------

def test_unknown_image_is_404_in_glance_body(http: httpx.Client, demo_h: dict) -> None:
    r = http.get("/image/v2/images/0b5c4e1e-0000-4000-8000-000000000000", headers=demo_h)
    message = glance_error(r, 404)
    assert message.startswith("No image found with ID 0b5c4e1e-0000-4000-8000-000000000000")
    assert r.json()["title"] == "Not Found" and r.json()["code"] == "404 Not Found"


def test_sdk_raises_not_found_for_unknown_image(demo_conn: Connection) -> None:
    with pytest.raises(sdk_exceptions.NotFoundException, match="No image found"):
        demo_conn.image.get_image("0b5c4e1e-0000-4000-8000-000000000001")


def test_errors_are_html_for_a_browser(http: httpx.Client, demo_h: dict) -> None:
    headers = {k: v for k, v in demo_h.items() if k != "Accept"}
    r = http.get("/image/v2/images/nope", headers=headers)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "<h1>404 Not Found</h1>" in r.text and "No image found with ID nope" in r.text


def test_member_creating_a_public_image_is_403(http: httpx.Client, demo_h: dict) -> None:
    r = http.post("/image/v2/images", headers=demo_h,
                  json={"name": "wants-public", "visibility": "public"})
    assert glance_error(r, 403).startswith(
        "You are not authorized to complete publicize_image action.")


def test_member_making_an_image_public_is_403(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="private-one", visibility="private")
    r = patch(http, demo_h, image["id"], [{"op": "replace", "path": "/visibility",
                                           "value": "public"}])
    assert "publicize_image" in glance_error(r, 403)


def test_admin_may_create_a_public_image(http: httpx.Client, admin_h: dict,
                                         demo_h: dict) -> None:
    image = new_image(http, admin_h, name="admin-public", visibility="public")
    assert image["visibility"] == "public"
    assert image["id"] in listed(http, demo_h)


def test_creating_for_another_project_is_403(http: httpx.Client, demo_h: dict) -> None:
    r = http.post("/image/v2/images", headers=demo_h, json={"name": "x", "owner": "someone"})
    assert "You are not permitted to create images owned by 'someone'" in glance_error(r, 403)


# -- visibility between projects --------------------------------------------------------------

def test_private_image_is_invisible_to_other_projects(demo_conn: Connection,
                                                      alt_conn: Connection,
                                                      admin_conn: Connection) -> None:
    image = demo_conn.image.create_image("demo-private", allow_duplicates=True,
                                         visibility="private", disk_format="raw",
                                         container_format="bare")
    try:
        assert image.id in {i.id for i in demo_conn.image.images()}
        assert image.id not in {i.id for i in alt_conn.image.images()}
        with pytest.raises(sdk_exceptions.NotFoundException):
            alt_conn.image.get_image(image.id)
        assert alt_conn.image.find_image("demo-private") is None
        # the admin sees everything
        assert admin_conn.image.get_image(image.id).name == "demo-private"
        assert image.id in {i.id for i in admin_conn.image.images()}
    finally:
        demo_conn.image.delete_image(image.id)


def test_other_project_cannot_delete_what_it_cannot_see(http: httpx.Client, demo_h: dict,
                                                        alt_h: dict) -> None:
    image = new_image(http, demo_h, name="not-yours", visibility="private")
    r = http.delete(f"/image/v2/images/{image['id']}", headers=alt_h)
    assert "Failed to find image" in glance_error(r, 404)


def test_shared_image_is_listed_once_the_member_accepts(http: httpx.Client, demo_h: dict,
                                                        alt_h: dict,
                                                        alt_conn: Connection) -> None:
    alt_project = alt_conn.current_project_id
    image = new_image(http, demo_h, name="shared-with-alt", visibility="shared")
    image_id = image["id"]
    assert image_id not in listed(http, alt_h)
    glance_error(http.get(f"/image/v2/images/{image_id}", headers=alt_h), 404)

    r = http.post(f"/image/v2/images/{image_id}/members", headers=demo_h,
                  json={"member": alt_project})
    assert r.status_code == 200 and r.json()["status"] == "pending"
    # a pending member can fetch the image, but does not get it in its list
    assert http.get(f"/image/v2/images/{image_id}", headers=alt_h).status_code == 200
    assert image_id not in listed(http, alt_h)
    assert image_id in listed(http, alt_h, "?member_status=pending")

    r = http.put(f"/image/v2/images/{image_id}/members/{alt_project}", headers=alt_h,
                 json={"status": "accepted"})
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    assert image_id in listed(http, alt_h)

    members = http.get(f"/image/v2/images/{image_id}/members", headers=demo_h).json()
    assert [m["member_id"] for m in members["members"]] == [alt_project]
    r = http.delete(f"/image/v2/images/{image_id}/members/{alt_project}", headers=demo_h)
    assert r.status_code == 204
    glance_error(http.get(f"/image/v2/images/{image_id}", headers=alt_h), 404)


def test_owner_cannot_accept_for_the_member(http: httpx.Client, demo_h: dict,
                                            alt_conn: Connection) -> None:
    alt_project = alt_conn.current_project_id
    image = new_image(http, demo_h, name="owner-accepts", visibility="shared")
    http.post(f"/image/v2/images/{image['id']}/members", headers=demo_h,
              json={"member": alt_project})
    r = http.put(f"/image/v2/images/{image['id']}/members/{alt_project}", headers=demo_h,
                 json={"status": "accepted"})
    glance_error(r, 403)


def test_private_image_has_no_members(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="no-members", visibility="private")
    r = http.post(f"/image/v2/images/{image['id']}/members", headers=demo_h,
                  json={"member": "someone"})
    glance_error(r, 403)


def test_community_image_is_shown_but_listed_only_when_asked(http: httpx.Client,
                                                             demo_h: dict,
                                                             alt_h: dict) -> None:
    image = new_image(http, demo_h, name="for-the-community", visibility="community")
    assert http.get(f"/image/v2/images/{image['id']}", headers=alt_h).status_code == 200
    assert image["id"] not in listed(http, alt_h)
    assert image["id"] in listed(http, alt_h, "?visibility=community")
    assert image["id"] in listed(http, demo_h)  # its owner does see it by default


def test_hidden_image_is_listed_only_when_asked(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="hidden", os_hidden=True)
    assert image["id"] not in listed(http, demo_h)
    assert image["id"] in listed(http, demo_h, "?os_hidden=true")


# -- list filters, sorting and paging ---------------------------------------------------------

def test_id_in_filter_returns_just_those(http: httpx.Client, demo_h: dict) -> None:
    a = new_image(http, demo_h, name="in-a")["id"]
    b = new_image(http, demo_h, name="in-b")["id"]
    new_image(http, demo_h, name="in-c")
    assert sorted(listed(http, demo_h, f"?id=in:{a},{b}")) == sorted([a, b])
    assert listed(http, demo_h, f"?id=in:{a},{TINY['id']}").count(TINY["id"]) == 1


def test_name_status_owner_and_tag_filters(http: httpx.Client, demo_h: dict,
                                           demo_conn: Connection) -> None:
    image = new_image(http, demo_h, name="filter-me", tags=["blue", "round"])
    assert listed(http, demo_h, "?name=filter-me") == [image["id"]]
    assert image["id"] in listed(http, demo_h, "?status=queued")
    assert TINY["id"] not in listed(http, demo_h, "?status=queued")
    assert image["id"] in listed(http, demo_h, f"?owner={demo_conn.current_project_id}")
    assert listed(http, demo_h, "?tag=blue&tag=round") == [image["id"]]
    assert image["id"] not in listed(http, demo_h, "?tag=blue&tag=square")


def test_property_filter(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="prop-filter", labkit_flavour="lemon")
    assert listed(http, demo_h, "?labkit_flavour=lemon") == [image["id"]]


def test_unknown_filter_operator_is_400(http: httpx.Client, demo_h: dict) -> None:
    r = http.get("/image/v2/images?name=like:x", headers=demo_h)
    assert "unknown operator 'like'" in glance_error(r, 400)


def test_sort_by_name(http: httpx.Client, demo_h: dict) -> None:
    for name in ("sort-b", "sort-a", "sort-c"):
        new_image(http, demo_h, name=name, labkit_sort="yes")
    r = http.get("/image/v2/images?labkit_sort=yes&sort_key=name&sort_dir=asc", headers=demo_h)
    assert [i["name"] for i in r.json()["images"]] == ["sort-a", "sort-b", "sort-c"]
    r = http.get("/image/v2/images?labkit_sort=yes&sort=name:desc", headers=demo_h)
    assert [i["name"] for i in r.json()["images"]] == ["sort-c", "sort-b", "sort-a"]


def test_bad_sort_key_is_400(http: httpx.Client, demo_h: dict) -> None:
    r = http.get("/image/v2/images?sort_key=colour", headers=demo_h)
    assert "Invalid sort key: colour" in glance_error(r, 400)


def test_pages_follow_next_links(http: httpx.Client, demo_h: dict) -> None:
    made = {new_image(http, demo_h, name=f"page-{n}", labkit_page="yes")["id"] for n in range(3)}
    r = http.get("/image/v2/images?labkit_page=yes&limit=2", headers=demo_h)
    body = r.json()
    assert len(body["images"]) == 2
    assert body["first"] == "/v2/images?labkit_page=yes&limit=2"
    assert body["schema"] == "/v2/schemas/images"
    seen = [i["id"] for i in body["images"]]
    while "next" in body:
        body = http.get("/image" + body["next"], headers=demo_h).json()
        seen += [i["id"] for i in body["images"]]
    assert sorted(seen) == sorted(made) and len(seen) == 3


def test_sdk_pages_through_everything(demo_conn: Connection, http: httpx.Client,
                                      demo_h: dict) -> None:
    made = {new_image(http, demo_h, name=f"sdk-page-{n}", tags=["sdk-page"])["id"]
            for n in range(3)}
    found = {i.id for i in demo_conn.image.images(limit=1, tag="sdk-page")}
    assert found == made


def test_unknown_marker_is_400(http: httpx.Client, demo_h: dict) -> None:
    r = http.get("/image/v2/images?marker=0b5c4e1e-0000-4000-8000-00000000dead",
                 headers=demo_h)
    assert "No image found" in glance_error(r, 400)


# -- tags, actions, schemas -------------------------------------------------------------------

def test_tags_are_added_and_removed(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="tagged")
    url = f"/image/v2/images/{image['id']}"
    assert http.put(f"{url}/tags/shiny", headers=demo_h).status_code == 204
    assert http.get(url, headers=demo_h).json()["tags"] == ["shiny"]
    assert http.delete(f"{url}/tags/shiny", headers=demo_h).status_code == 204
    assert http.get(url, headers=demo_h).json()["tags"] == []
    glance_error(http.delete(f"{url}/tags/shiny", headers=demo_h), 404)


def test_deactivated_image_cannot_be_downloaded(http: httpx.Client, demo_h: dict) -> None:
    image = new_image(http, demo_h, name="deactivated", disk_format="raw",
                      container_format="bare")
    upload(http, demo_h, image["id"], b"hold on")
    url = f"/image/v2/images/{image['id']}"
    assert http.post(f"{url}/actions/deactivate", headers=demo_h).status_code == 204
    assert http.get(url, headers=demo_h).json()["status"] == "deactivated"
    assert "deactivated" in glance_error(http.get(f"{url}/file", headers=demo_h), 403)
    assert http.post(f"{url}/actions/reactivate", headers=demo_h).status_code == 204
    assert http.get(f"{url}/file", headers=demo_h).content == b"hold on"


def test_schemas(http: httpx.Client, demo_h: dict) -> None:
    image = http.get("/image/v2/schemas/image", headers=demo_h).json()
    assert image["name"] == "image" and "min_ram" in image["properties"]
    assert image["additionalProperties"] == {"type": "string"}
    images = http.get("/image/v2/schemas/images", headers=demo_h).json()
    assert images["name"] == "images" and "next" in images["properties"]


# -- the openstack CLI ------------------------------------------------------------------------

@pytest.mark.cli
def test_cli_image_list_and_show(openstack_cli: Callable) -> None:
    result = openstack_cli("image", "list", "-f", "json")
    assert result.returncode == 0, result.stderr
    assert "labkit-tiny" in {row["Name"] for row in json.loads(result.stdout)}
    result = openstack_cli("image", "show", "labkit-tiny", "-f", "json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["id"] == TINY["id"] and shown["status"] == "active"
    assert shown["checksum"] == hashlib.md5(TINY_BYTES).hexdigest()


@pytest.mark.cli
def test_cli_create_from_file_then_delete(openstack_cli: Callable, tmp_path: Path,
                                          demo_conn: Connection) -> None:
    data = b"made by the openstack CLI\n" * 50
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    result = openstack_cli("image", "create", "--file", str(path), "--disk-format", "raw",
                           "cli-made", "-f", "json")
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    image = demo_conn.image.get_image(made["id"])
    assert image.status == "active" and image.checksum == hashlib.md5(data).hexdigest()
    result = openstack_cli("image", "delete", "cli-made")
    assert result.returncode == 0, result.stderr
    assert demo_conn.image.find_image(made["id"]) is None


@pytest.mark.cli
def test_cli_save_gives_back_the_bytes(openstack_cli: Callable, tmp_path: Path) -> None:
    out = tmp_path / "saved"
    result = openstack_cli("image", "save", "labkit-tiny", "--file", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == TINY_BYTES


# -- nova's in-process API --------------------------------------------------------------------

@pytest.fixture
def images(tmp_path: Path) -> Iterator[Images]:
    db = Database(tmp_path / "glance.sqlite", ImageBase)
    yield Images(db, tmp_path / "images", IdSource(deterministic=True))
    db.close()


def test_get_image_in_process(images: Images) -> None:
    images.load_lab(lab_dir(), owner="admin-project")
    image = images.get_image(TINY["id"], project_id="demo-project", is_admin=False)
    assert image["name"] == "labkit-tiny" and image["min_ram"] == TINY["min_ram"]
    assert image["properties"]["hw_architecture"] == "x86_64"
    assert image["status"] == "active" and image["size"] == len(TINY_BYTES)


def test_get_image_hides_other_projects_private_images(images: Images) -> None:
    owner = Caller(project_id="p1")
    image = images.create_image(owner, {"name": "mine", "visibility": "private"}, {}, [])
    assert images.get_image(image["id"], "p1")["name"] == "mine"
    assert images.get_image(image["id"], "p2", is_admin=True)["name"] == "mine"
    with pytest.raises(errors.NotFound):
        images.get_image(image["id"], "p2", is_admin=False)
    with pytest.raises(errors.NotFound):
        images.get_image("0b5c4e1e-0000-4000-8000-000000000002", "p1")


def test_load_lab_is_idempotent(images: Images) -> None:
    first = images.load_lab(lab_dir(), owner="admin-project")
    second = images.load_lab(lab_dir(), owner="admin-project")
    assert first == second == [i["id"] for i in LAB["images"]]
    admin = Caller(project_id="admin-project", is_admin=True)
    page, _ = images.list_images(admin, ListQuery(filters={"name": "labkit-tiny"}))
    assert len(page) == 1


# -- state across a restart -------------------------------------------------------------------

def test_images_and_data_survive_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "restart-home"
    data = b"kept across a restart\n"
    try:
        conn = connection(start_cloud(home), "labkit")
        image = conn.image.create_image("kept", data=data, disk_format="raw",
                                        container_format="bare", allow_duplicates=True)
        conn.close()
        stop_cloud(home)
        assert (home / "glance.sqlite").exists() and (home / "images" / image.id).exists()

        conn = connection(start_cloud(home), "labkit")
        kept = conn.image.get_image(image.id)
        assert kept.status == "active" and kept.checksum == hashlib.md5(data).hexdigest()
        assert conn.image.download_image(image.id).content == data
        assert [i.id for i in conn.image.images() if i.name == "labkit-tiny"] == [TINY["id"]]
        conn.close()
    finally:
        stop_cloud(home)
