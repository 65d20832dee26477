"""Does a request fit a resource provider? Placement's rule, as one pure function.

The placement API, the scheduler inside the cloud and the scheduler playground
all ask this same function, so what the playground predicts is what the cloud does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Inventory:
    """One resource class on one provider, as placement stores it."""

    total: int
    reserved: int = 0
    min_unit: int = 1
    max_unit: int | None = None  # None: as much as the total
    step_size: int = 1
    allocation_ratio: float = 1.0

    @property
    def capacity(self) -> float:
        """What may be allocated: the unreserved part, overcommitted by the ratio."""
        return (self.total - self.reserved) * self.allocation_ratio


def refusal(resource_class: str, inventory: Inventory | None, used: int,
            amount: int) -> str | None:
    """Why `amount` more of `resource_class` does not fit, or None when it does."""
    if inventory is None:
        return f"no {resource_class} inventory"
    max_unit = inventory.total if inventory.max_unit is None else inventory.max_unit
    if amount < inventory.min_unit:
        return f"{resource_class} {amount} is below min_unit {inventory.min_unit}"
    if amount > max_unit:
        return f"{resource_class} {amount} is above max_unit {max_unit}"
    if amount % inventory.step_size:
        return f"{resource_class} {amount} is not a multiple of step_size {inventory.step_size}"
    if used + amount > inventory.capacity:
        free = inventory.capacity - used
        return (f"{resource_class}: asks {amount}, free {free:g} of capacity "
                f"{inventory.capacity:g} (({inventory.total} - {inventory.reserved} reserved)"
                f" × {inventory.allocation_ratio:g})")
    return None


def refusals(request: dict[str, int], inventories: dict[str, Inventory],
             usages: dict[str, int]) -> list[str]:
    """Every reason the request does not fit the provider; empty when it fits."""
    reasons = []
    for resource_class, amount in request.items():
        if amount <= 0:
            continue
        reason = refusal(resource_class, inventories.get(resource_class),
                         usages.get(resource_class, 0), amount)
        if reason:
            reasons.append(reason)
    return reasons
