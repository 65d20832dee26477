"""matplotlib plots: an instance's states over time (from the trace), where placement's
allocations sit, and how full each compute host is."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

STATE_COLOURS = {
    "building": "#fde68a", "active": "#86efac", "stopped": "#cbd5e1", "error": "#fca5a5",
    "deleted": "#e5e7eb", "scheduling": "#93c5fd", "networking": "#a5b4fc",
    "block_device_mapping": "#c4b5fd", "spawning": "#f0abfc", "deleting": "#fdba74",
    "powering-off": "#fdba74", "powering-on": "#bef264", "rebooting": "#fde047",
    "rebooting_hard": "#facc15", "resize_prep": "#fbcfe8", "resize_migrating": "#f9a8d4",
    "resize_migrated": "#f472b6", "resize_finish": "#e879f9", "resized": "#fcd34d",
    "resize_reverting": "#fdba74",
}
ROWS = ("vm_state", "task_state")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _show_figures_inline() -> None:
    """In a Jupyter kernel, show a returned Figure as a picture. Figures made without
    pyplot are not registered with the inline backend, so they would print as text."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, _png)


def _segments(events: list[Mapping[str, Any]], field: str,
              end: float) -> list[tuple[float, float, str]]:
    """(start, length, value) runs of one field, None runs left out."""
    runs: list[tuple[float, float, str]] = []
    current, since = None, 0.0
    for event in events:
        value = event["detail"].get(field)
        if value != current:
            if current is not None:
                runs.append((since, event["time"] - since, str(current)))
            current, since = value, event["time"]
    if current is not None:
        runs.append((since, end - since, str(current)))
    return runs


def state_timeline(events: Iterable[Mapping[str, Any]], title: str | None = None,
                   unit: str = "ms") -> Figure:
    """vm_state and task_state of one instance over time, from its "state" trace events.

    Times are relative to the first state event, in `unit` ("ms" or "s").
    """
    states = sorted((e for e in events if e.get("kind") == "state"),
                    key=lambda e: (e["time"], e.get("seq") or 0))
    _show_figures_inline()
    figure = Figure(figsize=(9, 2.2), layout="constrained")
    axes = figure.subplots()
    if not states:
        axes.text(0.5, 0.5, "no state changes in these events", ha="center", va="center")
        axes.set_axis_off()
        return figure
    scale = 1000.0 if unit == "ms" else 1.0
    start = states[0]["time"]
    end = states[-1]["time"]
    # the last state lasts on; give it a visible width
    tail = max((end - start) * 0.15, 0.001)
    shifted = [{**e, "time": (e["time"] - start) * scale} for e in states]
    span = (end - start + tail) * scale
    narrow: dict[str, str] = {}  # states too short to label in their bar go in the legend
    for row, field in enumerate(reversed(ROWS)):
        for left, width, value in _segments(shifted, field, span):
            colour = STATE_COLOURS.get(value, "#e5e7eb")
            axes.broken_barh([(left, width)], (row - 0.35, 0.7), facecolors=colour,
                             edgecolors="#475569", linewidth=0.6)
            if width > span * 0.012 * (len(value) + 2):
                axes.text(left + width / 2, row, value, ha="center", va="center", fontsize=8)
            else:
                narrow[value] = colour
    if narrow:
        axes.legend(handles=[Patch(facecolor=c, edgecolor="#475569", label=v)
                             for v, c in narrow.items()],
                    loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes.set_yticks(range(len(ROWS)), list(reversed(ROWS)))
    axes.set_xlabel(f"time since the first state change ({unit})")
    axes.set_xlim(0, span)
    axes.spines[["top", "right"]].set_visible(False)
    if title:
        axes.set_title(title, fontsize=10, loc="left")
    return figure


# the consumers of an allocation, coloured by what holds it
HOLDER_COLOURS = {"instance": "#60a5fa", "migration": "#f59e0b", "other": "#cbd5e1"}


def allocation_bars(snapshots: Mapping[str, Mapping[str, Mapping[str, int]]],
                    resource: str = "MEMORY_MB", title: str | None = None) -> Figure:
    """One group of bars per moment (e.g. before, during VERIFY_RESIZE, after), one bar per
    host, stacked by holder: `snapshots[moment][host][holder] = amount` of `resource`."""
    _show_figures_inline()
    moments = list(snapshots)
    hosts = sorted({h for by_host in snapshots.values() for h in by_host})
    figure = Figure(figsize=(9, 2.8), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(len(hosts), 1)
    holders_seen: dict[str, str] = {}
    for m, moment in enumerate(moments):
        for h, host in enumerate(hosts):
            x = m + (h - (len(hosts) - 1) / 2) * width
            bottom = 0
            for holder, amount in sorted(snapshots[moment].get(host, {}).items()):
                colour = HOLDER_COLOURS.get(holder, HOLDER_COLOURS["other"])
                holders_seen[holder] = colour
                axes.bar(x, amount, width * 0.9, bottom=bottom, color=colour,
                         edgecolor="#475569", linewidth=0.6)
                bottom += amount
            axes.text(x, bottom, f"{host}\n{bottom}", ha="center", va="bottom", fontsize=7)
    axes.set_xticks(range(len(moments)), moments)
    axes.set_ylabel(resource)
    axes.margins(y=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    if holders_seen:
        axes.legend(handles=[Patch(facecolor=c, edgecolor="#475569", label=f"held by the {h}")
                             for h, c in holders_seen.items()],
                    loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        axes.set_title(title, fontsize=10, loc="left")
    return figure


def capacity_bars(hosts: Mapping[str, Mapping[str, tuple[float, float]]],
                  title: str | None = None) -> Figure:
    """How full each host is: `hosts[host][resource] = (used, capacity)`, one panel per
    resource, the used part of each host's bar filled."""
    _show_figures_inline()
    resources = sorted({r for by_resource in hosts.values() for r in by_resource})
    figure = Figure(figsize=(9, 0.6 + 0.45 * len(hosts) * len(resources)), layout="constrained")
    panels = figure.subplots(len(resources), 1, squeeze=False)[:, 0]
    names = sorted(hosts)
    for axes, resource in zip(panels, resources, strict=True):
        for row, host in enumerate(names):
            used, capacity = hosts[host].get(resource, (0, 0))
            axes.barh(row, capacity, color="#e5e7eb", edgecolor="#475569", linewidth=0.6)
            axes.barh(row, used, color="#60a5fa", edgecolor="#475569", linewidth=0.6)
            share = f" ({used / capacity:.0%})" if capacity else ""
            axes.text(capacity, row, f" {used:g} of {capacity:g}{share}", va="center",
                      fontsize=8)
        axes.set_yticks(range(len(names)), names)
        axes.set_title(resource, fontsize=9, loc="left")
        axes.margins(x=0.3)
        axes.spines[["top", "right"]].set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10, x=0.0, ha="left")
    return figure
