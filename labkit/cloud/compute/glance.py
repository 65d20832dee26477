"""nova's glance client: image bytes fetched over Glance's API as nova's service user.

nova-compute downloads an image it has not cached with GET /v2/images/{id}/file; the
request carries the build's request id, so the trace shows the download inside the build.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from labkit.cloud.service_client import ServiceClient


class ImageDownloadFailed(Exception):
    """Glance did not give the image's bytes (nova's ImageNotFound / ImageDownloadFailed)."""


async def download_image(client: ServiceClient, image_id: str, dest: Path, *,
                         component: str, request_id: str | None) -> None:
    """Write the image's bytes to `dest`, checking them against glance's checksum (md5, as
    nova's glance download verifies os_hash or checksum)."""
    r = await client.send("GET", f"/image/v2/images/{image_id}/file", request_id=request_id,
                          component=component, headers={"Accept": "application/octet-stream"})
    if r.status_code != 200:
        raise ImageDownloadFailed(f"Image {image_id} could not be downloaded: glance answered "
                                  f"{r.status_code}")
    expected = r.headers.get("Content-MD5")
    if expected and hashlib.md5(r.content).hexdigest() != expected:  # noqa: S324 - glance's own checksum
        raise ImageDownloadFailed(f"Image {image_id}: the downloaded bytes do not match "
                                  f"glance's checksum")
    dest.write_bytes(r.content)
