"""Settings of the embedded cloud, read once from the environment or the CLI."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from labkit.paths import cloud_home, lab_dir

PACES = ("fast", "teach")
# the hypervisor driver: qemu boots real guests, model runs none (nova's fake driver);
# auto picks qemu when qemu and the built guest image are both here
VIRT_DRIVERS = ("auto", "qemu", "model")
# nova's [libvirt] virt_type: kvm where /dev/kvm is usable, else qemu (TCG)
VIRT_TYPES = ("auto", "kvm", "qemu")


def env_flag(name: str, default: bool = False) -> bool:
    """A yes/no environment setting: 1, true, yes or on mean yes."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class CloudSettings:
    """How one embedded cloud behaves. Saved in its state folder as settings.json."""

    home: Path = field(default_factory=cloud_home)
    lab: Path = field(default_factory=lab_dir)
    port: int = 0  # 0: a free port, chosen on first start and then kept
    pace: str = "fast"  # fast for tests, teach for demos
    deterministic: bool = False  # seeded ids and tokens
    seed: int = 2013
    # keystone's default bcrypt cost is 12; the lab trades strength for speed.
    bcrypt_rounds: int = 4
    token_ttl: int = 3600  # seconds, keystone's [token] expiration default
    virt: str = "auto"
    virt_type: str = "auto"
    # nova's sync_power_state_interval (600 s there): how often the compute hosts compare
    # what the database says with what the hypervisor reports
    power_sync_interval: float = 2.0
    # nova's service_down_time (60 s there): a service whose last heartbeat is older is "down"
    service_down_time: float = 20.0
    # nova's report_interval (10 s there): how often each service writes its heartbeat
    report_interval: float = 5.0
    # nova's resize_confirm_window: 0 = never auto-confirm a finished resize
    resize_confirm_window: float = 0.0
    # nova's allow_resize_to_same_host: the scheduler may pick the source host for a resize
    allow_resize_to_same_host: bool = False

    def __post_init__(self) -> None:
        if self.pace not in PACES:
            raise ValueError(f"pace must be one of {', '.join(PACES)}, not {self.pace!r}")
        if not 4 <= self.bcrypt_rounds <= 31:
            raise ValueError("bcrypt_rounds must be between 4 and 31")
        if self.power_sync_interval <= 0:
            raise ValueError("power_sync_interval must be more than 0 seconds")
        if self.report_interval <= 0:
            raise ValueError("report_interval must be more than 0 seconds")
        if self.service_down_time <= 0:
            raise ValueError("service_down_time must be more than 0 seconds")
        if self.resize_confirm_window < 0:
            raise ValueError("resize_confirm_window must be 0 (never) or more seconds")
        if self.virt not in VIRT_DRIVERS:
            raise ValueError(f"virt must be one of {', '.join(VIRT_DRIVERS)}, not {self.virt!r}")
        if self.virt_type not in VIRT_TYPES:
            raise ValueError(f"virt_type must be one of {', '.join(VIRT_TYPES)}, "
                             f"not {self.virt_type!r}")

    @classmethod
    def from_env(cls, **overrides: object) -> CloudSettings:
        """Settings from LABKIT_* variables; explicit overrides win."""
        values: dict[str, object] = {
            "port": int(os.environ.get("LABKIT_PORT", "0")),
            "pace": os.environ.get("LABKIT_PACE", "fast"),
            "deterministic": env_flag("LABKIT_DETERMINISTIC"),
            "seed": int(os.environ.get("LABKIT_SEED", "2013")),
            "bcrypt_rounds": int(os.environ.get("LABKIT_BCRYPT_ROUNDS", "4")),
            "token_ttl": int(os.environ.get("LABKIT_TOKEN_TTL", "3600")),
            "virt": os.environ.get("LABKIT_VIRT", "auto"),
            "virt_type": os.environ.get("LABKIT_VIRT_TYPE", "auto"),
            "power_sync_interval": float(os.environ.get("LABKIT_POWER_SYNC_INTERVAL", "2")),
            "service_down_time": float(os.environ.get("LABKIT_SERVICE_DOWN_TIME", "20")),
            "report_interval": float(os.environ.get("LABKIT_REPORT_INTERVAL", "5")),
            "resize_confirm_window": float(os.environ.get("LABKIT_RESIZE_CONFIRM_WINDOW", "0")),
            "allow_resize_to_same_host": env_flag("LABKIT_ALLOW_RESIZE_TO_SAME_HOST"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def with_port(self, port: int) -> CloudSettings:
        return replace(self, port=port)

    def to_json(self) -> str:
        data = asdict(self)
        data["home"] = str(self.home)
        data["lab"] = str(self.lab)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> CloudSettings:
        data = json.loads(text)
        data["home"] = Path(data["home"])
        data["lab"] = Path(data["lab"])
        known = cls.__dataclass_fields__
        # a settings.json from an older labkit lacks the newer fields: their defaults apply
        return cls(**{k: v for k, v in data.items() if k in known})
