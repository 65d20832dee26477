"""Where labkit keeps things: the cloud's state folder and the lab's data."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parent.parent


def cloud_home() -> Path:
    """The embedded cloud's state folder: `$LABKIT_HOME`, else one under the user's data dir."""
    env = os.environ.get("LABKIT_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir("labkit")) / "cloud"


def lab_dir() -> Path:
    """The lab's YAML files: `$LABKIT_LAB`, else `data/` beside the package."""
    env = os.environ.get("LABKIT_LAB")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "data"


def keys_dir() -> Path:
    """Where labkit keeps the ssh keys notebooks log in to guests with: `$LABKIT_KEYS`,
    else `keys/` under the user's data dir."""
    env = os.environ.get("LABKIT_KEYS")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir("labkit")) / "keys"
