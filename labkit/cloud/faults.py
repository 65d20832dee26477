"""Fault injection for the troubleshooting lab: break one thing the way it breaks for real.

Each kind is a small `FaultKind`: the parameters it takes, what it does, the symptom a
user sees, and `apply`/`undo`. A kind never writes ERROR into a row: it changes what a
component sees (a stopped nova-compute, a dead agent, a store that cannot read, a full
disk, a wrong password) and the cloud's own code fails the way a real one does.

`Faults` is the registry the cloud holds (`cloud.faults`): the inspection API injects
and clears through it, the services' hooks ask it questions (`binding_fails(host)`,
`image_unreadable(id)`, ...), and it keeps the active faults in $LABKIT_HOME/faults.json
so a restarted cloud breaks again the same way (`reapply` after the services start).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from labkit.cloud.errors import BadRequest, Conflict, NotFound
from labkit.cloud.trace import TraceEvent
from labkit.cloud.virt.driver import SpawnFailed

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud

log = logging.getLogger(__name__)
SERVICE_USERS = ("nova", "neutron", "cinder", "glance")
OVS_AGENT = "neutron-openvswitch-agent"
QUOTA_RESOURCES = ("instances", "cores", "ram")


@dataclass
class Fault:
    """One active fault: its kind, its parameters, and what apply saved to undo it."""

    id: str
    kind: str
    params: dict[str, Any]
    created_at: float = field(default_factory=time.time)
    saved: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaultKind:
    """What a kind takes, does and shows. `params` maps each name to (required, help)."""

    kind: str
    params: dict[str, tuple[bool, str]]
    description: str
    symptom: str
    target: Callable[[dict[str, Any]], str]
    check: Callable[[Cloud, dict[str, Any]], dict[str, Any]] = lambda cloud, p: p
    apply: Callable[[Cloud, Fault], Any] = lambda cloud, fault: None
    undo: Callable[[Cloud, Fault], Any] = lambda cloud, fault: None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description, "symptom": self.symptom,
                "params": [{"name": n, "required": req, "help": text}
                           for n, (req, text) in self.params.items()]}


# -- checks of the parameters ---------------------------------------------------------------

def _compute_host(cloud: Cloud, params: dict[str, Any]) -> dict[str, Any]:
    host = params.get("host")
    if host not in cloud.compute.computes:
        raise BadRequest(f"host must be a compute host ({', '.join(sorted(cloud.compute.computes))}"
                         f"), not {host!r}.")
    return params


def _agent(cloud: Cloud, params: dict[str, Any]) -> dict[str, Any]:
    params = {"binary": OVS_AGENT, **params}
    agents = cloud.network.agents.agents
    if (params.get("host"), params["binary"]) not in agents:
        known = ", ".join(f"{b}@{h}" for h, b in sorted(agents))
        raise BadRequest(f"No agent {params['binary']} on host {params.get('host')!r}; the "
                         f"agents are: {known}.")
    return params


def _network_host(cloud: Cloud, params: dict[str, Any]) -> dict[str, Any]:
    hosts = sorted(h for h, b in cloud.network.agents.agents if b == OVS_AGENT)
    if params.get("host") not in hosts:
        raise BadRequest(f"host must be a host with an Open vSwitch agent ({', '.join(hosts)}), "
                         f"not {params.get('host')!r}.")
    return params


def _image(cloud: Cloud, params: dict[str, Any]) -> dict[str, Any]:
    wanted = params.get("image")
    if wanted is None:
        return params
    from sqlalchemy import or_, select

    from labkit.cloud.image.models import ImageRow

    with cloud.image.images.db.session() as s:
        found = s.scalar(select(ImageRow.id).where(or_(ImageRow.id == wanted,
                                                      ImageRow.name == wanted)))
    if found is not None:
        return {**params, "image": found}
    raise BadRequest(f"No image with id or name {wanted!r}.")


def _slow_step(cloud: Cloud, params: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(params.get("step"), str) or not params["step"]:
        raise BadRequest("step must be a task state, e.g. spawning, networking or "
                         "resize_migrating.")
    try:
        seconds = float(params.get("seconds", ""))
    except (TypeError, ValueError) as exc:
        raise BadRequest("seconds must be a number of seconds.") from exc
    if not 0 < seconds <= 3600:
        raise BadRequest("seconds must be more than 0 and at most 3600.")
    if params.get("host") is not None:
        _compute_host(cloud, params)
    return {**params, "seconds": seconds}


def _project(cloud: Cloud, params: dict[str, Any]) -> dict[str, Any]:
    params = {"resource": "instances", **params}
    if params["resource"] not in QUOTA_RESOURCES:
        raise BadRequest(f"resource must be one of {', '.join(QUOTA_RESOURCES)}.")
    wanted = params.get("project")
    for project in cloud.identity.list("project", {}):
        if wanted in (project.id, project.name):
            return {**params, "project": project.id, "project_name": project.name}
    raise BadRequest(f"No project with id or name {wanted!r}.")


def _service_user(cloud: Cloud, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("service") not in SERVICE_USERS:
        raise BadRequest(f"service must be one of {', '.join(SERVICE_USERS)}.")
    return params


# -- what each kind does ---------------------------------------------------------------------

async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def _stop_compute(cloud: Cloud, fault: Fault) -> None:
    cloud.compute.stop_compute(fault.params["host"])


def _start_compute(cloud: Cloud, fault: Fault) -> None:
    cloud.compute.start_compute(fault.params["host"])


async def _stop_agent(cloud: Cloud, fault: Fault) -> None:
    await cloud.network.agents.stop_agent(fault.params["host"], fault.params["binary"])


def _start_agent(cloud: Cloud, fault: Fault) -> None:
    cloud.network.agents.start_agent(fault.params["host"], fault.params["binary"])


def _exhaust_quota(cloud: Cloud, fault: Fault) -> None:
    """The limit becomes what the project uses; the limit before is saved once, so a
    re-apply after a restart does not take the exhausted limit for the old one."""
    quotas, project, resource = (cloud.compute.quotas, fault.params["project"],
                                 fault.params["resource"])
    if "had_own_limit" not in fault.saved:
        own = quotas.own_limit(project, resource)
        fault.saved.update(had_own_limit=own is not None, limit=own)
    used = quotas.usage(project)[resource]
    quotas.set_limits(project, {resource: used}, force=True)


def _restore_quota(cloud: Cloud, fault: Fault) -> None:
    project, resource = fault.params["project"], fault.params["resource"]
    if fault.saved.get("had_own_limit"):
        cloud.compute.quotas.set_limits(project, {resource: fault.saved["limit"]}, force=True)
    else:  # no limit of its own before: nova's default applies again
        cloud.compute.quotas.reset(project, resource)


KINDS: dict[str, FaultKind] = {k.kind: k for k in (
    FaultKind(
        "compute-down", {"host": (True, "the compute host whose nova-compute stops")},
        "nova-compute on the host stops: no heartbeat, messages to it wait in its queue.",
        "After service_down_time `openstack compute service list` shows the host's "
        "nova-compute State down; the scheduler's ComputeFilter then skips it, so new "
        "servers land elsewhere (or fail with 'No valid host was found' when no host is left).",
        target=lambda p: f"nova-compute@{p['host']}", check=_compute_host,
        apply=_stop_compute, undo=_start_compute),
    FaultKind(
        "agent-down", {"host": (True, "the host of the agent"),
                       "binary": (False, f"the agent (default {OVS_AGENT})")},
        "A neutron agent stops: no more heartbeats and no more wiring.",
        "After agent_down_time `openstack network agent list` shows the agent Alive XXX "
        "(False); a port bound to that host gets binding:vif_type binding_failed, so nova "
        "raises PortBindingFailed and reschedules the build to another host.",
        target=lambda p: f"{p['binary']}@{p['host']}", check=_agent,
        apply=_stop_agent, undo=_start_agent),
    FaultKind(
        "port-binding", {"host": (True, "the host where neutron cannot bind ports")},
        "ML2 cannot bind ports on the host although its agent is alive (a mechanism "
        "driver that refuses the host, as with a missing bridge mapping).",
        "The port's binding:vif_type is binding_failed; nova-compute raises "
        "PortBindingFailed ('Binding failed for port <id>, please check neutron logs for "
        "more information.') and the build is rescheduled to another host.",
        target=lambda p: "neutron-server", check=_network_host),
    FaultKind(
        "image-download", {"image": (False, "the image id or name (default: every image)")},
        "glance's store cannot read the image's data: GET /v2/images/{id}/file answers 503.",
        "A compute host that has not cached the image cannot download it: the spawn fails "
        "and the build is rescheduled; when every host fails the server is ERROR with "
        "'Exceeded maximum number of retries. Exhausted all hosts available for retrying "
        "build failures for instance <id>.' (MaxRetriesExceeded).",
        target=lambda p: "glance-api", check=_image),
    FaultKind(
        "volume-backend-full", {},
        "cinder-volume's LVM backend reports no free space to the scheduler.",
        "A new volume goes to status error: cinder-scheduler's capacity filter finds no "
        "backend ('No valid backend was found. No weighed backends available').",
        target=lambda p: "cinder-volume"),
    FaultKind(
        "slow-step", {"step": (True, "the task state to slow down (spawning, networking, "
                                     "block_device_mapping, powering-off, "
                                     "resize_migrating, ...)"),
                      "seconds": (True, "how long the compute host pauses in that step"),
                      "host": (False, "only on this compute host (default: every host)")},
        "nova-compute pauses in one task state, long enough to watch it.",
        "The server stays in that task state (OS-EXT-STS:task_state) for the given seconds, "
        "then goes on normally.",
        target=lambda p: f"nova-compute@{p.get('host') or '*'}", check=_slow_step),
    FaultKind(
        "quota-exhausted", {"project": (True, "the project (name or id)"),
                            "resource": (False, "instances (default), cores or ram")},
        "The project's nova quota is set to what it uses now; clearing restores the "
        "limit it had.",
        "A boot is refused with 403 'Quota exceeded for instances: Requested 1, but already "
        "used N of N instances' before anything is created.",
        target=lambda p: "nova-api", check=_project, apply=_exhaust_quota, undo=_restore_quota),
    FaultKind(
        "service-password", {"service": (True, "nova, neutron, cinder or glance")},
        "The service user's password in the service's configuration is wrong, so keystone "
        "answers 401 when the service authenticates.",
        "nova: a build is aborted, not rescheduled: 'Build of instance <id> aborted: Failed "
        "to allocate the network(s), not rescheduling.' neutron: nova never hears "
        "network-vif-plugged, and the build fails the same way after vif_plugging_timeout. "
        "cinder: a volume from an image goes to error. glance: its auth_token middleware "
        "cannot validate tokens, so every image request answers 401.",
        target=lambda p: p["service"], check=_service_user),
    FaultKind(
        "instances-disk-full", {"host": (True, "the compute host whose disk is full")},
        "The host's instances directory (/var/lib/nova/instances) has no space left.",
        "The spawn fails creating the root disk (qemu-img: ... No space left on device) and "
        "the build is rescheduled to another host; with no other host the server is ERROR "
        "with 'Exceeded maximum number of retries. ...'.",
        target=lambda p: f"nova-compute@{p['host']}", check=_compute_host),
)}


def _key(params: dict[str, Any]) -> dict[str, Any]:
    """What makes two faults of a kind the same one (the amount of a slow step does not)."""
    return {k: v for k, v in params.items() if k not in ("seconds", "project_name")}


class _NoFaults:
    """What hooks see in a cloud without a fault registry: nothing is broken."""

    def binding_fails(self, host: str) -> bool:
        return False

    def image_unreadable(self, image_id: str) -> bool:
        return False

    def backend_full(self) -> bool:
        return False

    def password_for(self, user: str, password: str, component: str) -> str:
        return password

    def slow_step(self, task_state: str | None, host: str) -> float:
        return 0.0

    def check_instances_disk(self, host: str, instance_uuid: str,
                             request_id: str | None = None) -> None:
        return None


NO_FAULTS = _NoFaults()


def faults_of(cloud: Any) -> Faults | _NoFaults:
    """The registry of `cloud`, or one that says nothing is broken."""
    found = getattr(cloud, "faults", None)
    return found if isinstance(found, Faults) else NO_FAULTS


class Faults:
    """The cloud's active faults: inject, clear, persist, and answer the hooks."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.path = cloud.settings.home / "faults.json"
        self.active: dict[str, Fault] = {}
        self._seq = 0
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                for item in data.get("faults", []):
                    if item.get("kind") in KINDS:
                        self.active[item["id"]] = Fault(**item)
                self._seq = int(data.get("seq", len(self.active)))
            except (ValueError, TypeError, KeyError):
                log.exception("faults.json is unreadable; starting with no faults")

    # -- the registry

    @staticmethod
    def kinds() -> list[dict[str, Any]]:
        return [k.to_dict() for k in KINDS.values()]

    def listing(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.active.values()]

    def _save(self) -> None:
        data = {"seq": self._seq, "faults": self.listing()}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)

    def _trace(self, fault: Fault, verb: str) -> None:
        kind = KINDS[fault.kind]
        shown = " ".join(f"{k}={v}" for k, v in fault.params.items() if k != "project_name")
        self.cloud.trace.record(TraceEvent(
            kind="event", source="labkit", target=kind.target(fault.params),
            summary=f"fault {verb}: {fault.kind} {shown}".rstrip(), request_id=None,
            detail={"fault": fault.to_dict(), "action": verb}))

    def validate(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters, checked and completed; BadRequest for an unknown kind or a
        parameter the kind does not take."""
        found = KINDS.get(kind)
        if found is None:
            raise BadRequest(f"Unknown fault kind {kind!r}; the kinds are: "
                             f"{', '.join(KINDS)}.")
        unknown = sorted(set(params) - set(found.params))
        if unknown:
            raise BadRequest(f"Fault {kind} takes no parameter {unknown[0]!r}; it takes: "
                             f"{', '.join(found.params) or 'none'}.")
        missing = [n for n, (required, _) in found.params.items()
                   if required and params.get(n) in (None, "")]
        if missing:
            raise BadRequest(f"Fault {kind} needs {missing[0]!r}.")
        return found.check(self.cloud, dict(params))

    async def inject(self, kind: str, params: dict[str, Any]) -> Fault:
        checked = self.validate(kind, params)
        same = next((f for f in self.active.values()
                     if f.kind == kind and _key(f.params) == _key(checked)), None)
        if same is not None:
            # clearing one of two would mend what the other still claims is broken
            raise Conflict(f"Fault {same.id} ({kind}) is already injected with these "
                           "parameters.")
        self._seq += 1
        fault = Fault(id=f"fault-{self._seq}", kind=kind, params=checked)
        await _maybe_await(KINDS[kind].apply(self.cloud, fault))
        self.active[fault.id] = fault
        self._save()
        self._trace(fault, "injected")
        return fault

    async def clear(self, fault_id: str) -> None:
        fault = self.active.get(fault_id)
        if fault is None:
            raise NotFound(f"No active fault {fault_id!r}.")
        await _maybe_await(KINDS[fault.kind].undo(self.cloud, fault))
        del self.active[fault_id]
        self._save()
        self._trace(fault, "cleared")

    async def clear_all(self) -> None:
        for fault_id in list(self.active):
            await self.clear(fault_id)

    async def reapply(self) -> None:
        """After a restart: what the faults did is gone from the running components (a
        stopped compute, a dead agent); do it again. Database changes (a quota) stay."""
        for fault in self.active.values():
            try:
                await _maybe_await(KINDS[fault.kind].apply(self.cloud, fault))
            except Exception:
                log.exception("re-applying %s failed", fault.id)
                continue
            self._trace(fault, "re-applied after a restart")
        if self.active:
            self._save()

    # -- what the hooks ask

    def _of(self, kind: str) -> list[dict[str, Any]]:
        return [f.params for f in self.active.values() if f.kind == kind]

    def binding_fails(self, host: str) -> bool:
        """neutron's ML2: can no mechanism driver bind a port on `host`?"""
        return any(p["host"] == host for p in self._of("port-binding"))

    def image_unreadable(self, image_id: str) -> bool:
        """glance's store: is the image's data unreadable?"""
        return any(p.get("image") in (None, image_id) for p in self._of("image-download"))

    def backend_full(self) -> bool:
        """cinder-volume: does the backend report no free space?"""
        return bool(self._of("volume-backend-full"))

    def password_for(self, user: str, password: str, component: str) -> str:
        """The password the service's configuration holds for `user`. nova-api is left
        alone: real nova-api checks a boot's networks with the user's own token, so only
        nova-compute's calls as the service user meet the wrong password."""
        if user == "nova" and component.startswith("nova-api"):
            return password
        if any(p["service"] == user for p in self._of("service-password")):
            return password + "-typo"
        return password

    def token_refused(self, service: str) -> bool:
        """keystonemiddleware in `service` (e.g. glance-api) cannot authenticate its own
        user, so it cannot validate any token."""
        return any(f"{p['service']}-api" == service for p in self._of("service-password")
                   if p["service"] == "glance")

    def slow_step(self, task_state: str | None, host: str) -> float:
        """Extra seconds nova-compute on `host` spends in `task_state`."""
        return sum(p["seconds"] for p in self._of("slow-step")
                   if p["step"] == task_state and p.get("host") in (None, host))

    def check_instances_disk(self, host: str, instance_uuid: str,
                             request_id: str | None = None) -> None:
        """Before the spawn: SpawnFailed, as qemu-img's, when the host's disk is full (the
        trace shows the failed command, as nova-compute's log would)."""
        if any(p["host"] == host for p in self._of("instances-disk-full")):
            path = f"/var/lib/nova/instances/{instance_uuid}/disk"
            self.cloud.trace.record(TraceEvent(
                kind="event", source=f"nova-compute@{host}", target=f"qemu-img@{host}",
                summary="qemu-img create: No space left on device", request_id=request_id,
                detail={"instance_uuid": instance_uuid, "path": path}))
            raise SpawnFailed(
                "Unexpected error while running command. Command: qemu-img create -f qcow2 "
                f"{path} Exit code: 1 Stderr: \"qemu-img: {path}: Could not create "
                f"'{path}': No space left on device\"")
