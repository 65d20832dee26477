"""Nova's host filters: each says yes or no to one host for one request, and why.

Each filter follows the nova filter of the same name (nova/scheduler/filters/);
where nova only logs a debug line, ours returns the reason in plain words, for
the hosts that pass as much as for those that do not. RamFilter and
CoreFilter are the filters of 2013 that placement made redundant (Pike): deprecated in
Stein (19.0.0) and removed in Train (20.0.0), kept here, marked historical,
so a notebook can put then and now side by side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from labkit.cloud.compute.scheduler import extra_specs_ops
from labkit.cloud.compute.scheduler.host_state import DEFAULT_ZONE, HostState
from labkit.cloud.compute.scheduler.request import RequestSpec


@dataclass(frozen=True)
class Verdict:
    """One filter's answer for one host."""

    passed: bool
    reason: str


class HostFilter:
    """A nova host filter: `host_passes(host, spec)` for one host and one request."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line: what it checks, for the funnel diagram
    historical: ClassVar[bool] = False  # gone from today's nova

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        raise NotImplementedError


# -- is the host's nova-compute alive? ----------------------------------------------------------


class ComputeFilter(HostFilter):
    name = "ComputeFilter"
    description = "the host's nova-compute service is enabled and up"

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        if not host.service_enabled:
            why = f" ({host.disabled_reason})" if host.disabled_reason else ""
            return Verdict(False, f"{host.host}'s nova-compute service is disabled{why}")
        if not host.service_up:
            return Verdict(False, f"{host.host}'s nova-compute has not been heard from in a "
                                  "while: its service is down")
        return Verdict(True, f"{host.host}'s nova-compute service is enabled and up")


# -- where ----------------------------------------------------------------------------------------


class AvailabilityZoneFilter(HostFilter):
    name = "AvailabilityZoneFilter"
    description = "the host is in the availability zone the request asks for"

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        zone = host.availability_zone or DEFAULT_ZONE
        if not spec.availability_zone:
            return Verdict(True, f"the request names no zone ({host.host} is in {zone})")
        if zone == spec.availability_zone:
            return Verdict(True, f"{host.host} is in zone {zone}, as the request asks")
        return Verdict(False, f"{host.host} is in zone {zone}, the request asks for "
                              f"{spec.availability_zone}")


# -- can the host run this image? -------------------------------------------------------------

# Canonical names, as nova.objects.fields canonicalises them (the common cases).
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "i386": "i686", "i486": "i686",
                 "i586": "i686", "x86_32": "i686", "arm64": "aarch64", "ppc64el": "ppc64le"}
_HV_ALIASES = {"xapi": "xen"}
_VM_MODE_ALIASES = {"hv": "hvm", "pv": "xen", "baremetal": "hvm"}


def _canon(value: Any, aliases: dict[str, str]) -> str | None:
    if not value:
        return None
    text = str(value).lower()
    return aliases.get(text, text)


def version_text(version: int) -> str:
    """libvirt's integer version as text: 8002002 -> "8.2.2"."""
    return f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"


_PREDICATE = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([0-9][0-9.]*)\s*$")


def version_satisfies(version: str, predicate: str) -> bool:
    """Does "8.2.2" satisfy ">= 6.0" (or ">=6.0, <9")? As oslo's VersionPredicate."""
    have = tuple(int(p) for p in version.split("."))
    for part in predicate.split(","):
        found = _PREDICATE.match(part)
        if not found:
            raise ValueError(f"not a version predicate: {part!r}")
        op, text = found.groups()
        want = tuple(int(p) for p in text.split("."))
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ok = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
              "!=": a != b}[op]
        if not ok:
            return False
    return True


class ImagePropertiesFilter(HostFilter):
    name = "ImagePropertiesFilter"
    description = "the host supports the image's architecture, hypervisor type and VM mode"

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        props = spec.image.properties
        # the image's wish, under its current property name or the old one glance once used
        arch = _canon(props.get("hw_architecture") or props.get("architecture"), _ARCH_ALIASES)
        hv_type = _canon(props.get("img_hv_type") or props.get("hypervisor_type"), _HV_ALIASES)
        vm_mode = _canon(props.get("hw_vm_mode") or props.get("vm_mode"), _VM_MODE_ALIASES)
        wanted = (arch, hv_type, vm_mode)
        wanted_text = ", ".join(f"{k} {v}" for k, v in
                                zip(("architecture", "hypervisor", "VM mode"), wanted,
                                    strict=True) if v)
        required_version = props.get("img_hv_requested_version")
        have_version = version_text(host.hypervisor_version) if host.hypervisor_version else ""
        if not any(wanted):
            return Verdict(True, "the image asks for no architecture, hypervisor or VM mode")
        offered = "; ".join("/".join(s) for s in host.supported_instances) or "nothing"
        if not host.supported_instances:
            return Verdict(False, f"the image asks for {wanted_text}, {host.host} advertises "
                                  "no supported instance types")
        matching = [s for s in host.supported_instances
                    if all(w is None or w == have for w, have in zip(wanted, s, strict=False))]
        if not matching:
            return Verdict(False, f"the image asks for {wanted_text}; {host.host} runs "
                                  f"{offered}")
        if required_version and have_version:
            if not version_satisfies(have_version, str(required_version)):
                return Verdict(False, f"the image asks for hypervisor version "
                                      f"{required_version}; {host.host} runs "
                                      f"{host.hypervisor_type} {have_version}")
            return Verdict(True, f"{host.host} runs {offered} with {host.hypervisor_type} "
                                 f"{have_version}, as the image asks ({wanted_text}, "
                                 f"version {required_version})")
        return Verdict(True, f"{host.host} runs {offered}, as the image asks ({wanted_text})")


# -- server groups ----------------------------------------------------------------------------


class ServerGroupAntiAffinityFilter(HostFilter):
    name = "ServerGroupAntiAffinityFilter"
    description = "anti-affinity group: fewer than max_server_per_host of its servers here"

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        group = spec.group
        if group is None or group.policy != "anti-affinity":
            return Verdict(True, "the request is in no anti-affinity group")
        # a move (resize to the same host) must not be refused because of itself
        if spec.instance_uuid and spec.instance_uuid in host.instances:
            return Verdict(True, f"the server itself is on {host.host} (a move)")
        limit = int((group.rules or {}).get("max_server_per_host", 1))
        if group.members:  # nova's rule: the group's members among the host's instances
            count = len(host.instances & set(group.members))
        else:  # a group given only by its hosts (the playground): a member per mention
            count = group.hosts.count(host.host)
        servers = f"{count} of the group's servers"
        if count < limit:
            return Verdict(True, f"{host.host} has {servers}, fewer than "
                                 f"max_server_per_host {limit}")
        return Verdict(False, f"{host.host} already has {servers}; anti-affinity allows "
                              f"{limit} (max_server_per_host)")


class ServerGroupAffinityFilter(HostFilter):
    name = "ServerGroupAffinityFilter"
    description = "affinity group: the host is where the group's servers already are"

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        group = spec.group
        if group is None or group.policy != "affinity":
            return Verdict(True, "the request is in no affinity group")
        if not group.hosts:
            return Verdict(True, "the affinity group has no servers yet: any host will do")
        where = ", ".join(group.hosts)
        if host.host in group.hosts:
            return Verdict(True, f"the group's servers are on {where}, as is this host")
        return Verdict(False, f"the group's servers are on {where}, not on {host.host}")


# -- flavor extra specs against host capabilities --------------------------------------------


def _capability(host: HostState, scope: list[str]) -> Any:
    """The host attribute (or nested key) a `capabilities:` scope names, or None."""
    value: Any = host
    for part in scope:
        if isinstance(value, str):  # nova keeps some capabilities as JSON text
            try:
                value = json.loads(value)
            except ValueError:
                return None
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            return None
    return value


class ComputeCapabilitiesFilter(HostFilter):
    name = "ComputeCapabilitiesFilter"
    description = "the host's capabilities meet the flavor's capabilities: extra specs"

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        checked = []
        for key, requirement in spec.flavor.extra_specs.items():
            scope = key.split(":")
            if len(scope) == 1:
                # an unscoped key counts only when the host has such an attribute
                if not hasattr(host, key):
                    continue
            elif scope[0] == "capabilities":
                scope = scope[1:]
            else:
                continue  # another namespace (hw:, quota:, ...): other parts of nova read it
            value = _capability(host, scope)
            if value is None:
                return Verdict(False, f"{key} asks {requirement!r}, {host.host} reports no "
                                      f"{':'.join(scope)}")
            if not extra_specs_ops.match(str(value), str(requirement)):
                return Verdict(False, f"{key} asks {requirement!r}, {host.host} has {value}")
            checked.append(f"{key} {requirement!r} ({value})")
        if not checked:
            return Verdict(True, "the flavor has no capabilities extra specs to check")
        return Verdict(True, f"{host.host} meets " + ", ".join(checked))


# -- the filters of 2013: RAM and cores, before placement -------------------------------------


class RamFilter(HostFilter):
    """The Havana-era RamFilter (nova then defaulted ram_allocation_ratio to 1.5).

    It overcommits the whole memory, reserved part included, then takes away
    what is used (reserved included): memory_mb × ratio − (memory_mb − free_ram_mb).
    Placement instead overcommits what is left after the reserve:
    (memory_mb − reserved) × ratio − used.
    """

    name = "RamFilter"
    description = "(2013, before placement) memory × ratio − used ≥ the flavor's RAM"
    historical = True

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        asked = spec.flavor.memory_mb
        limit = host.total_usable_ram_mb * host.ram_allocation_ratio
        used = host.total_usable_ram_mb - host.free_ram_mb
        usable = limit - used
        text = (f"{host.host} has {usable:g} MB usable ({host.total_usable_ram_mb} × "
                f"{host.ram_allocation_ratio:g} − {used} used or reserved), the flavor asks "
                f"{asked}")
        return Verdict(usable >= asked, text)


class CoreFilter(HostFilter):
    """The Havana-era CoreFilter (nova then defaulted cpu_allocation_ratio to 16.0)."""

    name = "CoreFilter"
    description = "(2013, before placement) vCPUs × ratio − used ≥ the flavor's vCPUs"
    historical = True

    def host_passes(self, host: HostState, spec: RequestSpec) -> Verdict:
        if not host.vcpus_total:
            return Verdict(True, f"{host.host} reports no vCPU count: passed, as nova did")
        asked = spec.flavor.vcpus
        free = host.vcpus_total * host.cpu_allocation_ratio - host.vcpus_used
        text = (f"{host.host} has {free:g} vCPUs free ({host.vcpus_total} × "
                f"{host.cpu_allocation_ratio:g} − {host.vcpus_used} used), the flavor "
                f"asks {asked}")
        return Verdict(free >= asked, text)


# -- the registry -------------------------------------------------------------------------------

FILTER_CLASSES: tuple[type[HostFilter], ...] = (
    AvailabilityZoneFilter, ComputeFilter, ComputeCapabilitiesFilter, ImagePropertiesFilter,
    ServerGroupAntiAffinityFilter, ServerGroupAffinityFilter, RamFilter, CoreFilter)
FILTERS: dict[str, HostFilter] = {cls.name: cls() for cls in FILTER_CLASSES}
HISTORICAL_FILTERS = tuple(name for name, f in FILTERS.items() if f.historical)


def get_filter(name: str) -> HostFilter:
    """The filter called `name`; KeyError names the ones we have."""
    try:
        return FILTERS[name]
    except KeyError:
        raise KeyError(f"no scheduler filter {name!r}; known: {', '.join(FILTERS)}") from None

