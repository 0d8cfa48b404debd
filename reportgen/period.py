"""The period a report covers: `as_of` (inclusive last day) and the optional window."""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from dataclasses import dataclass

from .config import PeriodSection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeriodRequest:
    """`as_of` as asked: a fixed date, or None for `latest` (known only once data is read)."""

    as_of: dt.date | None
    window_days: int | None
    max_staleness_days: int | None
    timezone: str
    asked: str  # the keyword or date as configured, for the report


@dataclass(frozen=True)
class Period:
    """The resolved period."""

    as_of: dt.date
    window_start: dt.date | None  # None: all history
    timezone: str
    asked: str
    latest_transaction: dt.date  # latest clean transaction on or before as_of

    @property
    def staleness_days(self) -> int:
        """Days between the latest clean transaction and as_of."""
        return (self.as_of - self.latest_transaction).days


def request_period(
    cfg: PeriodSection, as_of_override: str | dt.date | None = None, now: dt.datetime | None = None
) -> PeriodRequest:
    """Turn the configured `as_of` keyword into a date where the clock decides it."""
    asked = as_of_override if as_of_override is not None else cfg.as_of
    today = (now or dt.datetime.now(dt.UTC)).astimezone(zoneinfo.ZoneInfo(cfg.timezone))
    return PeriodRequest(
        as_of=_as_of_date(asked, today.date()),
        window_days=cfg.window_days,
        max_staleness_days=cfg.max_staleness_days,
        timezone=cfg.timezone,
        asked=str(asked),
    )


def _as_of_date(asked: str | dt.date, today: dt.date) -> dt.date | None:
    if isinstance(asked, dt.date):
        return asked
    if asked == "latest":
        return None
    if asked == "yesterday":
        return today - dt.timedelta(days=1)
    if asked == "last_month_end":
        return today.replace(day=1) - dt.timedelta(days=1)
    return dt.date.fromisoformat(asked)


def window_start(as_of: dt.date, window_days: int | None) -> dt.date | None:
    """First day of the window [as_of - window_days + 1, as_of], or None for all history."""
    return None if window_days is None else as_of - dt.timedelta(days=window_days - 1)
