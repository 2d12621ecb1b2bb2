"""Bulk transfer runs: the cohort step lands in the next commit; the worker already asks."""

from __future__ import annotations

from ekd.interaction.base import Services
from ekd.transfer.context import Exchange


def prepare_due(services: Services, exchange: Exchange, *, limit: int = 10) -> int:
    """No bulk runs exist yet, so nothing is due."""
    del services, exchange, limit
    return 0
