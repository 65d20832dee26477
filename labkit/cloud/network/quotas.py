"""Neutron's quotas: per-project limits, counted from what the project holds.

Defaults are neutron's ([quotas] section); a project's own limits live in the quotas
table. Usage is counted at the moment of the request, inside its transaction, as
neutron's DbQuotaNoLockDriver does, so a bulk create cannot slip past a limit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from labkit.cloud.network.common import Tx
from labkit.cloud.network.exceptions import (
    NeutronBadRequest,
    NeutronNamedNotFound,
    OverQuota,
    PolicyNotAuthorized,
)
from labkit.cloud.network.tables import (
    FloatingIPRow,
    NetworkRow,
    PortRow,
    QuotaRow,
    RouterRow,
    SecurityGroupRow,
    SecurityGroupRuleRow,
    SubnetRow,
)

# neutron's defaults; -1 is unlimited
DEFAULTS = {"network": 100, "subnet": 100, "subnetpool": -1, "port": 500, "router": 10,
            "floatingip": 50, "security_group": 10, "security_group_rule": 100,
            "rbac_policy": 10}
COUNTED = {"network": NetworkRow, "subnet": SubnetRow, "port": PortRow, "router": RouterRow,
           "floatingip": FloatingIPRow, "security_group": SecurityGroupRow,
           "security_group_rule": SecurityGroupRuleRow}


def limits(tx: Tx, project_id: str) -> dict[str, int]:
    found = dict(DEFAULTS)
    for row in tx.session.scalars(select(QuotaRow).where(QuotaRow.project_id == project_id)):
        found[row.resource] = row.limit
    return found


def used(tx: Tx, project_id: str, resource: str) -> int:
    table = COUNTED.get(resource)
    if table is None:
        return 0
    return tx.session.scalar(select(func.count()).select_from(table).where(
        table.project_id == project_id)) or 0


def check(tx: Tx, project_id: str, resource: str, adding: int = 1) -> None:
    """OverQuota (409) if `adding` more would pass the project's limit."""
    if not project_id:
        return  # neutron's own ports (gateways, floating IPs) count against no one
    limit = limits(tx, project_id).get(resource, -1)
    if limit >= 0 and used(tx, project_id, resource) + adding > limit:
        raise OverQuota(resource)


def _may_read(tx: Tx, project_id: str) -> None:
    if not tx.owns(project_id):
        raise PolicyNotAuthorized("get_quota")


def get(tx: Tx, project_id: str) -> dict[str, int]:
    _may_read(tx, project_id)
    return limits(tx, project_id)


def details(tx: Tx, project_id: str) -> dict[str, dict[str, int]]:
    _may_read(tx, project_id)
    return {resource: {"used": used(tx, project_id, resource), "limit": limit, "reserved": 0}
            for resource, limit in limits(tx, project_id).items()}


def update(tx: Tx, project_id: str, body: dict[str, Any]) -> dict[str, int]:
    tx.require_admin("update_quota")
    unknown = sorted(set(body) - set(DEFAULTS))
    if unknown:
        raise NeutronBadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    for resource, value in body.items():
        limit = _limit(resource, value)
        row = tx.session.get(QuotaRow, (project_id, resource))
        if row is None:
            tx.session.add(QuotaRow(project_id=project_id, resource=resource, limit=limit))
        else:
            row.limit = limit
    tx.session.flush()
    return limits(tx, project_id)


def _limit(resource: str, value: Any) -> int:
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise NeutronBadRequest(f"Invalid input for {resource}. Reason: '{value}' is not an "
                                "integer.") from None
    if isinstance(value, bool) or limit < -1:
        raise NeutronBadRequest(f"Invalid input for {resource}. Reason: '{value}' is too "
                                "small - must be at least '-1'.")
    return limit


def reset(tx: Tx, project_id: str) -> None:
    tx.require_admin("delete_quota")
    result = tx.session.execute(delete(QuotaRow).where(QuotaRow.project_id == project_id))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NeutronNamedNotFound("TenantQuotaNotFound",
                                   f"Quota for project {project_id} could not be found.")


def listing(tx: Tx) -> list[dict[str, Any]]:
    """Every project with a limit of its own, as GET /v2.0/quotas lists them."""
    tx.require_admin("get_quota")
    projects = tx.session.scalars(select(QuotaRow.project_id).distinct().order_by(
        QuotaRow.project_id))
    return [{**limits(tx, p), "project_id": p, "tenant_id": p} for p in projects]
