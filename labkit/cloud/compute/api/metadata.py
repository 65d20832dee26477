"""nova-api-metadata: the metadata service a guest reads, behind neutron's metadata proxy.

This mirrors nova.api.metadata.handler with `[neutron] service_metadata_proxy` on:
nova does not look the guest up by its address; it trusts the instance named in
X-Instance-ID because neutron's proxy signed it (X-Instance-ID-Signature, the hex
HMAC-SHA256 of the id keyed with the shared secret). In order, as nova checks:

- `/` lists the EC2 versions to anyone;
- a missing X-Instance-ID, X-Instance-ID-Signature or X-Tenant-ID header is 400;
- a signature that does not match is 403;
- an unknown or deleted instance, or one of another project than X-Tenant-ID, is 404;
- then the path is looked up (labkit.cloud.compute.metadata); no such path is 404.

Refusals are webob's error pages, as nova's are (plain text unless the Accept header
asks for HTML or JSON). The app is mounted at `/metadata`, outside the token
middleware: guests have no keystone token. The shared secret lives in
`<cloud home>/metadata_secret`, so guests' proxies keep working across restarts.
"""

from __future__ import annotations

import hmac
import os
import posixpath
import secrets
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from labkit.cloud.compute.metadata import (
    DHCP_DOMAIN,
    EC2_VERSIONS,
    TEXT_PLAIN,
    InstanceMetadata,
    MetadataNotFound,
    render,
)
from labkit.cloud.errors import NotFound
from labkit.cloud.network.metadata_proxy import sign, webob_error

SECRET_FILE = "metadata_secret"
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
HEADERS = ("X-Instance-ID", "X-Instance-ID-Signature", "X-Tenant-ID")


def load_or_create_secret(home: Path) -> bytes:
    """The secret nova-api-metadata shares with the metadata proxies (nova's and neutron's
    metadata_proxy_shared_secret): `<home>/metadata_secret`, 32 random bytes as hex,
    made (mode 0600) on first use. Both sides key the HMAC with the hex text's bytes,
    as they use the configured string."""
    path = home / SECRET_FILE
    try:
        kept = path.read_bytes().strip()
    except FileNotFoundError:
        kept = b""
    if kept:
        return kept
    made = secrets.token_hex(32).encode()
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(made + b"\n")
    os.chmod(path, 0o600)
    return made


def _content_type(kind: str) -> str:
    """As webob sets it: text types carry the UTF-8 charset, JSON does not."""
    return f"{kind}; charset=UTF-8" if kind.startswith("text/") else kind


def _refuse(request: Request, code: int, explanation: str | None = None) -> Response:
    content_type, body = webob_error(code, request.headers.get("accept"), explanation)
    return Response(body, status_code=code, headers={"Content-Type": content_type})


def _identity(request: Request) -> tuple[str, str, str] | str:
    """(instance id, tenant id, signature) from the proxy's headers, or nova's reason to
    refuse the request with 400."""
    given = {name: request.headers.getlist(name) for name in HEADERS}
    for name in HEADERS:
        if not given[name]:
            return f"{name} header is missing from request."
    for name in ("X-Instance-ID", "X-Tenant-ID"):
        if len(given[name]) > 1:
            return f"Multiple {name} headers found within request."
    return given["X-Instance-ID"][0], given["X-Tenant-ID"][0], \
        given["X-Instance-ID-Signature"][0]


def _metadata(nova: Any, instance_id: str, tenant_id: str,
              dhcp_domain: str) -> InstanceMetadata | None:
    """The instance's metadata, or None when nova would answer 404: no such (live)
    instance, or it belongs to another project than the proxy said."""
    with nova.database.session() as s:
        try:
            instance = nova.instances.get(s, instance_id)
        except NotFound:
            return None
        if instance.project_id != tenant_id:
            return None
        network_info = nova.instances.network_info(s, instance_id)
        image = _image(nova, instance.image_ref)
        return InstanceMetadata.from_instance(instance, network_info, image, dhcp_domain)


def _image(nova: Any, image_id: str | None) -> dict[str, Any] | None:
    """The instance's glance image as nova reads it (for kernel and ramdisk ids), or None
    once it is gone."""
    images = getattr(nova, "images", None)
    if not image_id or images is None:
        return None
    try:
        return images.get_image(image_id, None, is_admin=True)
    except NotFound:
        return None


async def serve(request: Request) -> Response:
    app_state = request.app.state
    path = "/" + request.path_params.get("path", "")
    normalized = posixpath.normpath(path)
    if normalized == "/":
        return Response(render([*EC2_VERSIONS, "latest"]),
                        headers={"Content-Type": _content_type(TEXT_PLAIN)})
    identity = _identity(request)
    if isinstance(identity, str):
        return _refuse(request, 400, identity)
    instance_id, tenant_id, signature = identity
    if not hmac.compare_digest(sign(app_state.secret, instance_id), signature):
        return _refuse(request, 403, "Invalid proxy request signature.")
    info = request.scope.get("labkit.request")
    if info is not None:  # the trace then shows whose guest asked
        info.project_id = tenant_id
    metadata = _metadata(app_state.nova, instance_id, tenant_id, app_state.dhcp_domain)
    if metadata is None:
        return _refuse(request, 404)
    try:
        document = metadata.lookup(path)
    except MetadataNotFound:
        return _refuse(request, 404)
    if normalized.startswith("/openstack/") and normalized.endswith("/password"):
        if request.method == "POST":
            # nova keeps a password the guest posts (once); labkit's guests have none
            return _refuse(request, 400, "labkit does not store instance passwords.")
        if request.method not in ("GET", "HEAD"):
            return _refuse(request, 400, "GET and POST only are supported.")
    return Response(document.body, headers={"Content-Type": _content_type(document.content_type)})


def build_metadata_app(nova: Any, secret: bytes, dhcp_domain: str = DHCP_DOMAIN) -> Starlette:
    """nova-api-metadata as an ASGI app; `nova` is the ComputeService (its database,
    instances and images), `secret` the shared secret (load_or_create_secret).
    `dhcp_domain` is nova's [api] dhcp_domain: the hostname served is `<hostname>.<domain>`
    (nova's default domain is novalocal; "" serves the bare hostname)."""
    app = Starlette(routes=[Route("/{path:path}", serve, methods=METHODS)])
    app.state.nova = nova
    app.state.secret = secret
    app.state.dhcp_domain = dhcp_domain
    return app
