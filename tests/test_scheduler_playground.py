"""The scheduler playground: predict() on the lab's hosts, the funnel, the widget."""

from __future__ import annotations

import html

import pytest

from labkit import diagrams, scheduling, widgets
from labkit.cloud.compute.scheduler import SchedulerConfig

LAB_HOSTS = scheduling.lab_hosts()
LAB_FLAVORS = scheduling.lab_flavors()


def flavor(name: str) -> dict:
    return next(f for f in LAB_FLAVORS if f["name"] == name)


def fits_by_hand(h, f) -> bool:
    """The lab's rule, written out: within the host, and within its overcommitted capacity."""
    return (f["vcpus"] <= h.vcpus and f["vcpus"] <= h.vcpus * h.cpu_allocation_ratio
            and f["memory_mb"] <= h.memory_mb
            and f["memory_mb"] <= (h.memory_mb - h.reserved_host_memory_mb)
            * h.ram_allocation_ratio
            and f["root_gb"] <= h.disk_gb and f["root_gb"] <= h.disk_gb * h.disk_allocation_ratio)


def test_inventories_are_what_nova_compute_reports():
    h = next(h for h in LAB_HOSTS if h.host == "compute-2")
    inv = scheduling.inventories_of(h)
    assert inv["MEMORY_MB"].total == 16384 and inv["MEMORY_MB"].reserved == 512
    assert inv["MEMORY_MB"].max_unit == 16384
    assert inv["VCPU"].capacity == 8 * 4.0
    assert inv["DISK_GB"].capacity == 160
    assert scheduling.usages_of(h.copy(vcpus_used=3)) == {"VCPU": 3, "MEMORY_MB": 0,
                                                          "DISK_GB": 0}


@pytest.mark.parametrize("name", [f["name"] for f in LAB_FLAVORS])
def test_predict_each_lab_flavor(name):
    f = flavor(name)
    d = scheduling.predict(LAB_HOSTS, f)
    fitting = {h.host for h in LAB_HOSTS if fits_by_hand(h, f)}
    assert {c.host for c in d.candidates if c.fits} == fitting
    if not fitting:
        assert d.chosen is None
        return
    # the lab's hosts are idle: the one with the most of everything is chosen
    biggest = max((h for h in LAB_HOSTS if h.host in fitting), key=lambda h: h.memory_mb)
    assert d.chosen == biggest.host
    assert d.alternates == sorted(fitting - {biggest.host})


def test_xlarge_fits_nowhere_in_the_lab_and_the_funnel_says_why():
    d = scheduling.predict(LAB_HOSTS, flavor("m1.xlarge"))
    assert d.chosen is None
    assert d.no_valid_host_reason.startswith("No valid host was found.")
    reasons = {c.host: " ".join(c.reasons) for c in d.candidates}
    assert "MEMORY_MB 16384 is above max_unit 8192" in reasons["compute-1"]
    assert "MEMORY_MB: asks 16384, free 15872" in reasons["compute-2"]
    source = diagrams.scheduler_funnel(d).source
    assert "No valid host was found." in source
    assert "free 15872 of capacity 15872" in source
    assert "filters not run" in source


def test_raising_ram_allocation_ratio_makes_xlarge_fit():
    hosts = [h.copy(ram_allocation_ratio=1.5) for h in LAB_HOSTS]
    d = scheduling.predict(hosts, flavor("m1.xlarge"))
    assert d.chosen == "compute-2"
    # compute-1 stays out: one server can never have more than the host has (max_unit)
    compute_1 = next(c for c in d.candidates if c.host == "compute-1")
    assert not compute_1.fits and any("max_unit" in r for r in compute_1.reasons)


def test_used_ram_moves_the_choice():
    hosts = [h.copy(memory_mb_used=12000) if h.host == "compute-2" else h for h in LAB_HOSTS]
    assert scheduling.predict(hosts, flavor("m1.medium")).chosen == "compute-1"


def test_predict_with_a_group_named_by_its_hosts():
    d = scheduling.predict(LAB_HOSTS, flavor("m1.tiny"),
                           group={"policy": "anti-affinity", "hosts": ["compute-2"]})
    assert d.chosen == "compute-1"
    d = scheduling.predict(LAB_HOSTS, flavor("m1.tiny"),
                           group={"policy": "anti-affinity", "hosts": ["compute-2"],
                                  "rules": {"max_server_per_host": 2}})
    assert d.chosen == "compute-2"


def test_historical_filters_show_in_the_funnel():
    config = SchedulerConfig(enabled_filters=["ComputeFilter", "RamFilter", "CoreFilter"])
    d = scheduling.predict(LAB_HOSTS, flavor("m1.small"), config)
    ram = next(s for s in d.filters if s.name == "RamFilter")
    assert ram.historical
    reasons = {v.host: v.reason for v in ram.verdicts}
    assert "7680 MB usable" in reasons["compute-1"]  # 8192 × 1 − 512 reserved
    assert "(2013, before placement)" in diagrams.scheduler_funnel(d).source


def test_funnel_draws_the_chosen_host_and_every_stage():
    d = scheduling.predict(LAB_HOSTS, flavor("m1.small"))
    svg = html.unescape(diagrams.scheduler_funnel(d.to_dict()).pipe(format="svg").decode())
    assert "chosen: compute-2" in svg
    for stage in d.filters:
        assert stage.name in svg
    assert "RAMWeigher" in svg


def test_scheduler_table_lists_each_host():
    d = scheduling.predict(LAB_HOSTS, flavor("m1.large"))
    table = widgets.scheduler_table(d)
    text = repr(table)
    assert "compute-1" in text and "compute-2" in text
    assert "MEMORY_MB" in text  # compute-1 is too small for m1.large
    assert "<table>" in table._repr_html_()


def test_playground_builds_and_shows_the_lab():
    p = widgets.scheduler_playground()
    assert p.decision.chosen == scheduling.predict(LAB_HOSTS, LAB_FLAVORS[0]).chosen
    assert "compute-2" in p.children[-2].value  # the table
    assert "<svg" in p.children[-1].value  # the funnel


def test_playground_reacts_to_a_flavor_change():
    p = widgets.scheduler_playground()
    table, funnel = p.children[-2].value, p.children[-1].value
    names = [label for label, _ in p.controls["flavor"].options]
    p.controls["flavor"].value = names.index("m1.xlarge")
    assert p.decision.chosen is None
    assert p.children[-2].value != table and p.children[-1].value != funnel
    assert "No valid host was found" in p.children[-1].value


def test_playground_ratio_slider_makes_xlarge_fit():
    p = widgets.scheduler_playground()
    names = [label for label, _ in p.controls["flavor"].options]
    p.controls["flavor"].value = names.index("m1.xlarge")
    p.controls["hosts"]["compute-2"]["ram_allocation_ratio"].value = 1.5
    assert p.decision.chosen == "compute-2"


def test_playground_filter_checkbox_and_multiplier():
    p = widgets.scheduler_playground()
    p.controls["filters"]["RamFilter"].value = True
    assert "RamFilter" in [s.name for s in p.decision.filters]
    p.controls["hosts"]["compute-2"]["memory_mb_used"].value = 12000
    p.controls["multipliers"]["cpu_weight_multiplier"].value = 0.0
    p.controls["multipliers"]["disk_weight_multiplier"].value = 0.0
    assert p.decision.chosen == "compute-1"  # spreading: compute-1 has more free RAM
    p.controls["multipliers"]["ram_weight_multiplier"].value = -1.0
    assert p.decision.chosen == "compute-2"  # stacking
