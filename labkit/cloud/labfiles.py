"""The lab's YAML files (data/ or $LABKIT_LAB), read the same way by every service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def lab_hosts(lab: Path) -> list[dict[str, Any]]:
    """hosts.yaml's hosts: the controller, the network node and the compute hosts."""
    return list(yaml.safe_load((lab / "hosts.yaml").read_text())["hosts"])
