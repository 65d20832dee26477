"""nova-scheduler, the component on topic `scheduler`.

For each instance it asks placement which hosts can hold the flavor, builds the
host states, runs the filters and weighers (`scheduler.decide`, the same code
the playground runs), and claims the winner in placement; if that claim loses a
race, it claims the next alternate. The whole decision is stored per instance
so the notebooks can show why a host was chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.conductor import NO_VALID_HOST, NoValidHost
from labkit.cloud.compute.scheduler.config import SchedulerConfig
from labkit.cloud.compute.scheduler.decide import decide
from labkit.cloud.compute.scheduler.host_state import HostState
from labkit.cloud.compute.scheduler.request import RequestSpec
from labkit.cloud.errors import Conflict, NotFound

if TYPE_CHECKING:
    from labkit.cloud.compute.service import ComputeService

class SchedulerManager:
    component = "nova-scheduler"
    topic = "scheduler"

    def __init__(self, nova: ComputeService, config: SchedulerConfig | None = None) -> None:
        self.nova = nova
        self.config = config or SchedulerConfig()

    def host_states(self) -> list[HostState]:
        """Every compute host as the scheduler sees it: capacity, usage (from placement,
        where claims land first), service status, and the instances on it."""
        nova = self.nova
        states = []
        for node in nova.hosts.nodes():
            service = nova.hosts.compute_service(node.host)
            try:
                used = nova.placement.usages(node.uuid)
                # claimed here but not built yet counts too: a group's next member must
                # see it, as nova's scheduler sees its own earlier selections
                claimed = set(nova.placement.provider_allocations(node.uuid)[1])
            except NotFound:  # not registered in placement yet: nothing used
                used, claimed = {}, set()
            instances = nova.hosts.instance_uuids(node.host) | claimed
            states.append(HostState(
                host=node.host, node=node.hypervisor_hostname, uuid=node.uuid,
                availability_zone=node.availability_zone,
                service_enabled=bool(service and not service.disabled),
                service_up=bool(service and nova.service_is_up(service)),
                disabled_reason=service.disabled_reason if service else None,
                vcpus=node.vcpus, vcpus_used=used.get("VCPU", 0),
                memory_mb=node.memory_mb,
                memory_mb_used=used.get("MEMORY_MB", 0),  # the reserve is counted apart
                disk_gb=node.local_gb, disk_gb_used=used.get("DISK_GB", 0),
                cpu_allocation_ratio=node.cpu_allocation_ratio,
                ram_allocation_ratio=node.ram_allocation_ratio,
                disk_allocation_ratio=node.disk_allocation_ratio,
                reserved_host_memory_mb=node.reserved_host_memory_mb,
                reserved_host_disk_mb=node.reserved_host_disk_mb,
                hypervisor_type=node.hypervisor_type,
                hypervisor_version=node.hypervisor_version,
                cpu_arch=node.cpu_info.get("arch", "x86_64"),
                instances=instances, num_instances=len(instances)))
        return states

    async def select_destinations(self, ctx: MessageContext, request_spec: dict[str, Any],
                                  instance_uuids: list[str]) -> list[list[str]]:
        """For each instance, [chosen host, *alternates]; the chosen host is claimed."""
        selections: list[list[str]] = []
        chosen_so_far: list[str] = []
        for uuid in instance_uuids:
            spec = self._spec(request_spec, uuid, chosen_so_far)
            resources = spec.resources()
            query = ",".join(f"{rc}:{amount}" for rc, amount in resources.items())
            verdicts = self.nova.placement.verdicts(resources)
            fitting = [v for v in verdicts if v.fits]
            self.nova.placement_event(ctx, self.component,
                                      f"GET /allocation_candidates?resources={query}",
                                      candidates=[v.name for v in fitting])
            decision = decide(spec, self.host_states(), verdicts, self.config)
            picked = self._claim_first(ctx, uuid, spec, decision)
            record = decision.to_dict()
            record["claimed"] = picked
            self.nova.instances.record_decision(uuid, ctx.request_id, record)
            if picked is None:
                reason = decision.no_valid_host_reason or (
                    NO_VALID_HOST + "There are not enough hosts available.")
                raise NoValidHost(reason)
            rest = [h for h in [decision.chosen, *decision.alternates] if h and h != picked]
            selections.append([picked, *rest])
            chosen_so_far.append(picked)
        return selections

    def _claim_first(self, ctx: MessageContext, uuid: str, spec: RequestSpec,
                     decision: Any) -> str | None:
        for host in [decision.chosen, *decision.alternates]:
            if host is None:
                continue
            try:
                self.nova.claim_on(ctx, self.component, uuid, host, spec.resources())
                return host
            except Conflict:
                continue
        return None

    def _spec(self, request_spec: dict[str, Any], uuid: str,
              chosen_so_far: list[str]) -> RequestSpec:
        data = {**request_spec, "instance_uuid": uuid}
        group = data.get("group")
        if group:
            # members placed earlier in this same request count, as nova's scheduler
            # adds each selected host to the group's hosts
            group = dict(group)
            group["hosts"] = sorted(set(self.nova.group_hosts(group)) | set(chosen_so_far))
            data["group"] = group
        return RequestSpec.from_dict(data)
