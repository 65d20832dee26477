"""nova-scheduler's logic as pure code: each filter, the weighers, one whole decision."""

from __future__ import annotations

import json

import pytest

from labkit import scheduling
from labkit.cloud.compute.scheduler import (
    DEFAULT_FILTERS,
    FILTERS,
    HISTORICAL_FILTERS,
    Candidate,
    Decision,
    Flavor,
    HostState,
    Image,
    RequestSpec,
    SchedulerConfig,
    ServerGroup,
    decide,
    get_filter,
    normalize,
)
from labkit.cloud.compute.scheduler.decide import NOT_A_CANDIDATE
from labkit.cloud.compute.scheduler.extra_specs_ops import match
from labkit.cloud.compute.scheduler.weighers import weigh
from labkit.cloud.placement.capacity import refusals


def host(name: str = "compute-1", **changes) -> HostState:
    base = {"vcpus": 4, "memory_mb": 8192, "disk_gb": 80}
    return HostState(host=name, uuid=f"rp-{name}", **{**base, **changes})


def spec(vcpus: int = 1, ram: int = 512, disk: int = 1, **changes) -> RequestSpec:
    flavor = Flavor(name="test.flavor", vcpus=vcpus, memory_mb=ram, root_gb=disk,
                    extra_specs=changes.pop("extra_specs", {}))
    image = Image(properties=changes.pop("image_properties", {}))
    return RequestSpec(flavor=flavor, image=image, **changes)


def fits_everywhere(hosts: list[HostState]) -> list[Candidate]:
    return [Candidate(h.uuid, h.host, True) for h in hosts]


def passes(filter_name: str, h: HostState, s: RequestSpec) -> tuple[bool, str]:
    verdict = get_filter(filter_name).host_passes(h, s)
    return verdict.passed, verdict.reason


# -- host state and request --------------------------------------------------------------------


def test_host_state_free_values_are_novas():
    h = host(memory_mb_used=1024, vcpus_used=3, disk_gb_used=10, reserved_host_disk_mb=512)
    assert h.free_ram_mb == 8192 - 512 - 1024  # the reserve counts as used, as in nova
    assert h.free_disk_mb == (80 - 10) * 1024 - 512
    assert h.vcpus_free == 4 * 4.0 - 3  # vcpus_total × cpu_allocation_ratio − vcpus_used


def test_host_state_from_lab_reads_only_compute_hosts():
    hosts = HostState.from_lab()
    assert [h.host for h in hosts] == ["compute-1", "compute-2"]
    assert all(h.memory_mb_used == 0 and h.vcpus_used == 0 for h in hosts)
    assert hosts[0].supported_instances == [("x86_64", "qemu", "hvm")]
    assert len({h.uuid for h in hosts}) == 2


def test_request_resources_count_swap_in_whole_gigabytes():
    s = RequestSpec(flavor=Flavor("f", vcpus=2, memory_mb=1024, root_gb=10, ephemeral_gb=5,
                                  swap=1500))
    assert s.resources() == {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 10 + 5 + 2}


def test_request_resources_leave_out_zero_disk():
    s = RequestSpec(flavor=Flavor("f", vcpus=1, memory_mb=64))
    assert "DISK_GB" not in s.resources()


# -- filters -------------------------------------------------------------------------------------


def test_compute_filter_passes_an_enabled_live_service():
    ok, reason = passes("ComputeFilter", host(), spec())
    assert ok and reason == "compute-1's nova-compute service is enabled and up"


def test_compute_filter_refuses_a_disabled_service_with_its_reason():
    ok, reason = passes("ComputeFilter",
                        host(service_enabled=False, disabled_reason="maintenance"), spec())
    assert not ok and "disabled" in reason and "maintenance" in reason


def test_compute_filter_refuses_a_service_that_is_down():
    ok, reason = passes("ComputeFilter", host(service_up=False), spec())
    assert not ok and "down" in reason


def test_availability_zone_filter_passes_when_no_zone_is_asked():
    ok, reason = passes("AvailabilityZoneFilter", host(), spec())
    assert ok and "no zone" in reason


def test_availability_zone_filter_passes_the_zone_asked_for():
    ok, reason = passes("AvailabilityZoneFilter", host(availability_zone="az1"),
                        spec(availability_zone="az1"))
    assert ok and "az1" in reason


def test_availability_zone_filter_refuses_another_zone():
    ok, reason = passes("AvailabilityZoneFilter", host("compute-2"),
                        spec(availability_zone="az1"))
    assert not ok
    assert reason == "compute-2 is in zone nova, the request asks for az1"


@pytest.mark.parametrize("props", [
    {},
    {"hw_architecture": "x86_64"},
    {"architecture": "amd64"},  # the old property name, and an alias of x86_64
    {"img_hv_type": "qemu"},
    {"hypervisor_type": "QEMU"},
    {"hw_vm_mode": "hvm"},
    {"hw_architecture": "x86_64", "img_hv_type": "qemu", "hw_vm_mode": "hvm"},
    {"hw_architecture": "x86_64", "img_hv_requested_version": ">= 6.0"},
])
def test_image_properties_filter_passes_what_the_host_runs(props):
    ok, reason = passes("ImagePropertiesFilter", host(), spec(image_properties=props))
    assert ok, reason


@pytest.mark.parametrize(("props", "words"), [
    ({"hw_architecture": "aarch64"}, "aarch64"),
    ({"img_hv_type": "xen"}, "xen"),
    ({"vm_mode": "exe"}, "exe"),
    ({"hw_architecture": "x86_64", "img_hv_requested_version": ">= 9.0"}, ">= 9.0"),
])
def test_image_properties_filter_refuses_what_the_host_lacks(props, words):
    ok, reason = passes("ImagePropertiesFilter", host(hypervisor_version=8002002),
                        spec(image_properties=props))
    assert not ok
    assert words in reason and "compute-1" in reason


def test_image_properties_filter_names_the_hosts_version():
    _, reason = passes("ImagePropertiesFilter", host(hypervisor_version=8002002),
                       spec(image_properties={"hw_architecture": "x86_64",
                                              "img_hv_requested_version": "< 8.0"}))
    assert "8.2.2" in reason


def test_anti_affinity_filter_refuses_a_host_with_a_member():
    group = ServerGroup("anti-affinity", hosts=["compute-2"], members=["m1"])
    ok, reason = passes("ServerGroupAntiAffinityFilter", host("compute-2", instances={"m1"}),
                        spec(group=group))
    assert not ok and "compute-2 already has 1 of the group's servers" in reason


def test_anti_affinity_filter_passes_a_host_without_members():
    group = ServerGroup("anti-affinity", hosts=["compute-2"], members=["m1"])
    ok, reason = passes("ServerGroupAntiAffinityFilter", host("compute-1", instances={"other"}),
                        spec(group=group))
    assert ok and "0 of the group's servers" in reason


def test_anti_affinity_filter_honours_max_server_per_host():
    group = ServerGroup("anti-affinity", rules={"max_server_per_host": 2}, members=["m1", "m2"])
    one = host(instances={"m1"})
    two = host(instances={"m1", "m2"})
    assert passes("ServerGroupAntiAffinityFilter", one, spec(group=group))[0]
    ok, reason = passes("ServerGroupAntiAffinityFilter", two, spec(group=group))
    assert not ok and "allows 2" in reason


def test_anti_affinity_filter_lets_a_server_stay_where_it_is():
    group = ServerGroup("anti-affinity", members=["me", "m1"])
    ok, _ = passes("ServerGroupAntiAffinityFilter", host(instances={"me", "m1"}),
                   spec(group=group, instance_uuid="me"))
    assert ok


def test_affinity_filter_passes_the_groups_host_and_refuses_others():
    group = ServerGroup("affinity", hosts=["compute-2"], members=["m1"])
    assert passes("ServerGroupAffinityFilter", host("compute-2"), spec(group=group))[0]
    ok, reason = passes("ServerGroupAffinityFilter", host("compute-1"), spec(group=group))
    assert not ok and reason == "the group's servers are on compute-2, not on compute-1"


def test_affinity_filter_passes_any_host_for_an_empty_group():
    ok, reason = passes("ServerGroupAffinityFilter", host(), spec(group=ServerGroup("affinity")))
    assert ok and "no servers yet" in reason


def test_group_filters_ignore_the_other_policy():
    anti = ServerGroup("anti-affinity", hosts=["compute-1"], members=["m1"])
    assert passes("ServerGroupAffinityFilter", host("compute-2"), spec(group=anti))[0]


@pytest.mark.parametrize(("value", "requirement", "expected"), [
    ("8", "= 4", True),  # "=" means at least
    ("2", "= 4", False),
    ("4", "== 4", True),
    ("4", "== 5", False),
    ("4", "!= 4", False),
    ("4", ">= 5", False),
    ("4", "<= 5", True),
    ("QEMU", "s== QEMU", True),
    ("QEMU", "s!= QEMU", False),
    ("b", "s>= a", True),
    ("a", "s>= b", False),
    ("avx sse2", "<in> avx", True),
    ("sse2", "<in> avx", False),
    ("avx sse2", "<all-in> avx sse2", True),
    ("avx", "<all-in> avx sse2", False),
    ("x86_64", "<or> aarch64 <or> x86_64", True),
    ("ppc64le", "<or> aarch64 <or> x86_64", False),
    ("QEMU", "QEMU", True),  # no operator: equal as text
    ("QEMU", "KVM", False),
    ("QEMU", ">= 4", False),  # a number operator on a word
])
def test_extra_specs_operators(value, requirement, expected):
    assert match(value, requirement) is expected


@pytest.mark.parametrize(("extra_specs", "expected"), [
    ({"capabilities:hypervisor_type": "s== QEMU"}, True),
    ({"capabilities:hypervisor_type": "s!= QEMU"}, False),
    ({"capabilities:cpu_info:arch": "<or> aarch64 <or> x86_64"}, True),
    ({"vcpus": ">= 8"}, False),  # unscoped, and the host has such an attribute
    ({"vcpus": ">= 4"}, True),
    ({"no_such_attribute": "s== x"}, True),  # unscoped and unknown: ignored
    ({"hw:cpu_policy": "dedicated"}, True),  # another namespace: ignored
    ({"capabilities:no_such_thing": "1"}, False),
])
def test_compute_capabilities_filter(extra_specs, expected):
    ok, reason = passes("ComputeCapabilitiesFilter", host(), spec(extra_specs=extra_specs))
    assert ok is expected, reason


def test_compute_capabilities_filter_says_what_did_not_match():
    _, reason = passes("ComputeCapabilitiesFilter", host(),
                       spec(extra_specs={"capabilities:hypervisor_type": "s== KVM"}))
    assert "s== KVM" in reason and "QEMU" in reason


def test_historical_filters_are_marked_and_not_enabled_by_default():
    assert set(HISTORICAL_FILTERS) == {"RamFilter", "CoreFilter"}
    assert not set(HISTORICAL_FILTERS) & set(SchedulerConfig().enabled_filters)
    assert SchedulerConfig().enabled_filters == list(DEFAULT_FILTERS)
    assert all(name in FILTERS for name in DEFAULT_FILTERS)


def test_ram_filter_of_2013_overcommits_the_reserve_too():
    # 2013: 8192 × 1.5 − 512 reserved = 11776 MB; placement: (8192 − 512) × 1.5 = 11520 MB
    h = host(ram_allocation_ratio=1.5)
    assert passes("RamFilter", h, spec(ram=11776))[0]
    ok, reason = passes("RamFilter", h, spec(ram=11777))
    assert not ok and "11776 MB usable" in reason
    between = spec(ram=11600)
    assert passes("RamFilter", h, between)[0]
    assert refusals(between.resources(), scheduling.inventories_of(h), scheduling.usages_of(h))


def test_core_filter_of_2013_counts_overcommitted_cores():
    h = host(vcpus_used=14)  # 4 × 4.0 − 14 = 2 free
    assert passes("CoreFilter", h, spec(vcpus=2))[0]
    ok, reason = passes("CoreFilter", h, spec(vcpus=3))
    assert not ok and "2 vCPUs free" in reason


# -- weighers ------------------------------------------------------------------------------------


def test_normalize_scales_between_min_and_max():
    assert normalize([1000, 3000, 5000]) == [0.0, 0.5, 1.0]


def test_normalize_gives_zero_when_all_equal():
    assert normalize([7, 7, 7]) == [0.0, 0.0, 0.0]


def test_ram_weigher_normalises_from_zero_as_novas_does():
    # free RAM 1000, 3000, 5000 MB; nova's RAMWeigher has minval 0: 1000/5000, 3000/5000, 1
    hosts = [host(f"h{i}", memory_mb=512 + free) for i, free in enumerate((1000, 3000, 5000))]
    rows = weigh(hosts, SchedulerConfig(ram_weight_multiplier=2.0))
    ram = [r.terms[0] for r in rows]
    assert [t.weigher for t in ram] == ["RAMWeigher"] * 3
    assert [t.raw for t in ram] == [1000, 3000, 5000]
    assert [t.normalized for t in ram] == pytest.approx([0.2, 0.6, 1.0])
    assert [t.contribution for t in ram] == pytest.approx([0.4, 1.2, 2.0])
    # CPU and disk are equal on every host: each normalises to 1 (value ÷ the largest)
    assert [r.total for r in rows] == pytest.approx([0.4 + 2, 1.2 + 2, 2.0 + 2])


def test_weigher_counts_an_overcommitted_host_as_zero():
    hosts = [host("a", memory_mb_used=9000), host("b")]  # a: free RAM −1320
    rows = weigh(hosts, SchedulerConfig())
    assert rows[0].terms[0].raw < 0
    assert rows[0].terms[0].normalized == 0.0


def test_a_lone_host_is_not_weighed():
    rows = weigh([host()], SchedulerConfig())
    assert rows[0].total == 0.0


def _ram_only_hosts() -> list[HostState]:
    return [host(name, memory_mb_used=used)
            for name, used in (("full", 6000), ("empty", 0), ("half", 3000))]


def test_positive_ram_multiplier_spreads():
    d = decide(spec(), _ram_only_hosts(), fits_everywhere(_ram_only_hosts()), SchedulerConfig())
    assert [r.host for r in d.ranking] == ["empty", "half", "full"]


def test_negative_ram_multiplier_stacks():
    hosts = _ram_only_hosts()
    d = decide(spec(), hosts, fits_everywhere(hosts), SchedulerConfig(ram_weight_multiplier=-1))
    assert d.chosen == "full"
    assert [r.host for r in d.ranking] == ["full", "half", "empty"]


# -- decisions -----------------------------------------------------------------------------------


def test_equal_weights_are_ranked_by_host_name():
    hosts = [host("b-host"), host("c-host"), host("a-host")]
    d = decide(spec(), hosts, fits_everywhere(hosts))
    assert d.chosen == "a-host"
    assert d.alternates == ["b-host", "c-host"]


def test_alternates_are_max_attempts_minus_one():
    hosts = [host(f"h{i}", memory_mb_used=i * 512) for i in range(4)]
    d = decide(spec(), hosts, fits_everywhere(hosts), SchedulerConfig(max_attempts=2))
    assert d.chosen == "h0" and d.alternates == ["h1"]


def test_placement_refusal_removes_a_host_with_its_reasons():
    hosts = [host("compute-1"), host("compute-2", memory_mb=16384)]
    candidates = [Candidate("rp-compute-1", "compute-1", True),
                  Candidate("rp-compute-2", "compute-2", False, ["MEMORY_MB: asks 99999"])]
    d = decide(spec(), hosts, candidates)
    row = next(c for c in d.candidates if c.host == "compute-2")
    assert not row.fits and row.reasons == ["MEMORY_MB: asks 99999"]
    assert all(v.host != "compute-2" for s in d.filters for v in s.verdicts)
    assert d.chosen == "compute-1"
    assert d.removed_by()["compute-2"] == "placement: MEMORY_MB: asks 99999"


def test_a_host_placement_did_not_mention_is_out():
    hosts = [host("compute-1"), host("compute-2")]
    d = decide(spec(), hosts, [{"uuid": "rp-compute-1", "name": "compute-1", "fits": True}])
    row = next(c for c in d.candidates if c.host == "compute-2")
    assert not row.fits and row.reasons == [NOT_A_CANDIDATE]


def test_no_candidates_gives_novas_message():
    hosts = [host()]
    d = decide(spec(), hosts, [Candidate("rp-compute-1", "compute-1", False, ["too big"])])
    assert d.chosen is None and d.alternates == []
    assert d.no_valid_host_reason == "No valid host was found. "
    assert not any(s.ran for s in d.filters)


def test_filters_removing_every_host_give_novas_message():
    hosts = [host("compute-1", service_up=False), host("compute-2", service_enabled=False)]
    d = decide(spec(), hosts, fits_everywhere(hosts))
    assert d.chosen is None
    assert d.no_valid_host_reason == ("No valid host was found. There are not enough hosts "
                                      "available.")
    stages = {s.name: s for s in d.filters}
    assert stages["ComputeFilter"].ran and stages["ComputeFilter"].survivors == []
    assert not stages["ImagePropertiesFilter"].ran
    assert "compute-2" in d.explain()


def test_a_removed_host_is_not_asked_again():
    hosts = [host("compute-1"), host("compute-2", service_enabled=False)]
    d = decide(spec(), hosts, fits_everywhere(hosts))
    later = [s for s in d.filters if s.name != "ComputeFilter" and
             d.filters.index(s) > [x.name for x in d.filters].index("ComputeFilter")]
    assert later and all([v.host for v in s.verdicts] == ["compute-1"] for s in later)


def test_ignore_hosts_removes_the_host_and_says_so():
    hosts = [host("compute-1"), host("compute-2")]
    d = decide(spec(ignore_hosts=["compute-1"]), hosts, fits_everywhere(hosts))
    stage = d.filters[0]
    assert stage.name == "ignore_hosts" and stage.survivors == ["compute-2"]
    assert "compute-1 is in the request's ignore_hosts" in stage.removed[0].reason
    assert d.chosen == "compute-2"


def test_filters_run_in_the_configured_order():
    hosts = [host()]
    config = SchedulerConfig(enabled_filters=["CoreFilter", "ComputeFilter"])
    d = decide(spec(), hosts, fits_everywhere(hosts), config)
    assert [s.name for s in d.filters] == ["CoreFilter", "ComputeFilter"]


def test_unknown_filter_name_is_refused():
    with pytest.raises(KeyError, match="NoSuchFilter"):
        decide(spec(), [host()], [], SchedulerConfig(enabled_filters=["NoSuchFilter"]))


def test_anti_affinity_with_the_group_on_compute_2_picks_compute_1():
    hosts = HostState.from_lab()
    member = "00000000-0000-0000-0000-00000000aaaa"
    hosts[1].instances.add(member)
    group = ServerGroup("anti-affinity", hosts=["compute-2"], members=[member])
    s = spec(group=group)
    plain = decide(spec(), hosts, scheduling.candidates_for(spec(), hosts))
    assert plain.chosen == "compute-2"  # the bigger host wins without the group
    d = decide(s, hosts, scheduling.candidates_for(s, hosts))
    assert d.chosen == "compute-1"
    stage = next(x for x in d.filters if x.name == "ServerGroupAntiAffinityFilter")
    assert [v.host for v in stage.removed] == ["compute-2"]


def test_decision_round_trips_through_json():
    hosts = [host("compute-1"), host("compute-2", service_enabled=False)]
    d = decide(spec(availability_zone="nova", ignore_hosts=["nowhere"]), hosts,
               fits_everywhere(hosts), SchedulerConfig(enabled_filters=[*DEFAULT_FILTERS,
                                                                        "RamFilter"]))
    data = json.loads(json.dumps(d.to_dict()))
    again = Decision.from_dict(data)
    assert again == d
    assert again.to_dict() == d.to_dict()
    assert again.explain() == d.explain()


def test_anti_affinity_filter_counts_hosts_when_members_are_unknown():
    group = ServerGroup("anti-affinity", hosts=["compute-2", "compute-2"],
                        rules={"max_server_per_host": 2})
    ok, reason = passes("ServerGroupAntiAffinityFilter", host("compute-2"), spec(group=group))
    assert not ok and "2 of the group's servers" in reason
    assert passes("ServerGroupAntiAffinityFilter", host("compute-1"), spec(group=group))[0]
