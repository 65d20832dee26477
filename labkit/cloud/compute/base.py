"""The nova database's declarative base: every nova table module registers on it."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class ComputeBase(DeclarativeBase):
    pass
