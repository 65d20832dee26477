"""Local VLANs: the tag each network gets on one host's br-int.

The OVS agent gives a network the lowest free tag (1..4094) on a host when the network's
first port arrives there, keeps it while any of the network's ports is bound to the host,
and frees it when the last one leaves (neutron's reclaim_local_vlan). Tags are per host:
the same network may have tag 1 on compute-1 and tag 2 on the network node; the
segmentation id on the wire (br-tun) is what is global.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select

from labkit.cloud.network.common import Tx
from labkit.cloud.network.tables import LocalVlanRow, PortRow
from labkit.cloud.network.wiring import lowest_free_vlan


def allocate(tx: Tx, host: str, network_id: str) -> int:
    """The network's tag on `host`, allocated (lowest free) if it has none."""
    row = tx.session.get(LocalVlanRow, (host, network_id))
    if row is not None:
        return row.tag
    taken = set(tx.session.scalars(select(LocalVlanRow.tag).where(LocalVlanRow.host == host)))
    tag = lowest_free_vlan(taken)  # the rule the wiring and the notebooks' what-if use too
    tx.session.add(LocalVlanRow(host=host, network_id=network_id, tag=tag))
    tx.session.flush()
    return tag


def release(tx: Tx, host: str, network_id: str) -> None:
    tx.session.execute(delete(LocalVlanRow).where(LocalVlanRow.host == host,
                                                  LocalVlanRow.network_id == network_id))


def release_if_unused(tx: Tx, host: str, network_id: str) -> None:
    """Free the tag once no port of the network is bound to the host any more."""
    if not host:
        return
    tx.session.flush()
    left = tx.session.scalar(select(func.count()).select_from(PortRow).where(
        PortRow.host == host, PortRow.network_id == network_id)) or 0
    if not left:
        release(tx, host, network_id)


def release_network(tx: Tx, network_id: str) -> None:
    tx.session.execute(delete(LocalVlanRow).where(LocalVlanRow.network_id == network_id))


def all_tags(tx: Tx) -> dict[tuple[str, str], int]:
    return {(r.host, r.network_id): r.tag for r in tx.session.scalars(select(LocalVlanRow))}
