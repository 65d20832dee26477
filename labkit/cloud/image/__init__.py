"""Glance: the image service, mounted at /image (API under /image/v2).

Rows in `<home>/glance.sqlite`, image bytes in `<home>/images/`. The lab's images
(data/images.yaml) are created at start when missing. Nova reads images in process
through `cloud.image.images.get_image(image_id, project_id, is_admin)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml
from starlette.requests import Request
from starlette.responses import Response

from labkit.cloud.db import Database
from labkit.cloud.image.handlers import anonymous, build_image_app, versions
from labkit.cloud.image.models import ImageBase, Images

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud

__all__ = ["ImageService", "Images"]


class ImageService:
    """glance-api and its store, as one Service of the embedded cloud."""

    name = "glance-api"
    path = "/image"
    base = ImageBase

    def __init__(self, cloud: Cloud) -> None:
        home = cloud.settings.home
        self.database = Database(home / "glance.sqlite", ImageBase)
        self.images = Images(self.database, home / "images", cloud.ids)
        # the troubleshooting lab's faults (an unreadable store) reach the store through it
        self.images.faults = getattr(cloud, "faults", None)  # type: ignore[attr-defined]
        self.images.forget_partial_uploads()
        self.images.load_lab(cloud.settings.lab, self._lab_owner(cloud))
        self.app = build_image_app(self.images)

    @staticmethod
    def _lab_owner(cloud: Cloud) -> str | None:
        """The project that owns the lab's images (images.yaml's `owner`, admin by default)."""
        path = cloud.settings.lab / "images.yaml"
        spec = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
        name = spec.get("owner", "admin")
        found = cloud.identity.list("project", {"name": name})
        return found[0].id if found else None

    async def root(self, request: Request) -> Response:
        return await versions(request)

    def anonymous(self, method: str, path: str) -> bool:
        return anonymous(method, path)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def close(self) -> None:
        self.database.close()
