"""Which hypervisor driver each nova-compute gets (nova's [DEFAULT] compute_driver).

`qemu` boots real guests and needs qemu and the tiny guest image (`labkit image build`)
loaded into glance; `model` runs no process. The setting `virt` (LABKIT_VIRT) forces
either; `auto` takes qemu when it can run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from labkit.cloud.compute.glance import download_image
from labkit.cloud.virt.driver import Driver
from labkit.cloud.virt.model import ModelDriver

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud
    from labkit.cloud.compute.service import ComputeService


class DriverUnavailable(RuntimeError):
    """The qemu driver was asked for but cannot run here."""


def qemu_missing(cloud: Cloud) -> str | None:
    """Why the qemu driver cannot run here, or None when it can."""
    from labkit.cloud.guest import built_image
    from labkit.cloud.virt.host import qemu_available

    if not qemu_available():
        return ("qemu is not installed (Debian: apt-get install qemu-system-x86 qemu-utils; "
                "`make setup` does it)")
    if built_image() is None:
        return "the tiny guest image is not built (run `labkit image build`)"
    if cloud.image.images.lab_placeholders():
        return ("glance holds the placeholder of the tiny guest, loaded before it was built "
                "(run `labkit cloud reset` to load the built one)")
    return None


def driver_name(cloud: Cloud) -> str:
    """The driver the settings ask for, with `auto` resolved."""
    wanted = cloud.settings.virt
    if wanted == "model":
        return "model"
    why = qemu_missing(cloud)
    if why is None:
        return "qemu"
    if wanted == "qemu":
        raise DriverUnavailable(f"LABKIT_VIRT=qemu, but {why}")
    return "model"


def make_driver(cloud: Cloud, nova: ComputeService, host: str, name: str) -> Driver:
    from labkit.cloud.compute.manager import current_request
    from labkit.cloud.virt.imagecache import ImageCache

    component = f"nova-compute@{host}"
    instances_dir: Path = cloud.settings.home / "hosts" / host / "instances"
    client = nova.service_client()

    async def download(image_id: str, dest: Path) -> None:
        await download_image(client, image_id, dest, component=component,
                             request_id=current_request.get())

    def trace(request_id: str | None, summary: str, detail: dict) -> None:  # type: ignore[type-arg]
        nova.driver_event(host, request_id, summary, detail)

    cache = ImageCache(instances_dir / "_base", download,
                       lambda summary, detail: trace(current_request.get(), summary, detail))
    if name == "model":
        # no guest runs, but the image is fetched into the host's cache as for qemu
        return ModelDriver(host, nova.step_seconds, image_cache=cache)
    from labkit.cloud.virt.host import choose_virt_type
    from labkit.cloud.virt.qemu import QemuDriver

    return QemuDriver(
        host, instances_dir, cache, virt_type=choose_virt_type(cloud.settings.virt_type),
        metadata_url=f"{cloud.base_url}/metadata",
        metadata_secret_file=cloud.settings.home / "metadata_secret", trace=trace,
        on_power_change=lambda uuid: nova.computes[host].power_changed(uuid),
        step_seconds=nova.step_seconds)
