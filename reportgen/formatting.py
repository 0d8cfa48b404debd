"""Numbers for people: money, counts, shares and dates in the report's locale (Babel).

Every filter the templates use is registered here, in one place (`register_filters`), and every
chart gets the same conventions through `d3_format_locale` / `d3_time_locale` (Vega-Lite formats
numbers and dates with d3, which takes a locale definition built here from Babel's data).

Money arrives in integer minor units (pence) everywhere and is divided exactly (Decimal), so a
figure in a table is the figure in `summary.json`. Missing values (None, NaN) print as an en dash.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import (
    format_compact_currency,
    format_compact_decimal,
    format_currency,
    format_decimal,
    format_percent,
    get_currency_precision,
    get_currency_symbol,
    get_decimal_symbol,
    get_group_symbol,
)

log = logging.getLogger(__name__)

MISSING = "\u2013"  # en dash


@dataclass(frozen=True)
class Formatter:
    """Formats numbers, money and dates for one locale and currency."""

    locale: str
    currency: str
    minor_digits: int | None = None  # decimals of the minor unit; None: the currency's (GBP 2)

    @property
    def digits(self) -> int:
        """Decimals of the minor units the amounts are counted in."""
        if self.minor_digits is not None:
            return self.minor_digits
        return get_currency_precision(self.currency)

    def money(self, minor: int | None, decimals: int | None = None) -> str:
        """Money from integer minor units: '£1,234.50'; `decimals=0` rounds to whole units."""
        if minor is None:
            return MISSING
        value = Decimal(int(minor)).scaleb(-self.digits)
        if decimals is None:
            return format_currency(value, self.currency, locale=self.locale)
        pattern = Locale.parse(self.locale).currency_formats["standard"].pattern
        whole = pattern.split(";")[0].replace(
            "0.00", "0" if decimals == 0 else "0." + "0" * decimals
        )
        return format_currency(
            value, self.currency, format=whole, locale=self.locale, currency_digits=False
        )

    def money_short(self, minor: int | None) -> str:
        """Money rounded for a headline: '£8.9M'."""
        if minor is None:
            return MISSING
        value = Decimal(int(minor)).scaleb(-self.digits)
        if abs(value) < 10_000:
            return self.money(minor, decimals=0)
        return format_compact_currency(value, self.currency, locale=self.locale, fraction_digits=1)

    def number(self, value: float | None, digits: int = 0) -> str:
        """A count or measure with thousands separators and `digits` decimals."""
        if value is None or _nan(value):
            return MISSING
        pattern = "#,##0" + ("." + "0" * digits if digits else "")
        return format_decimal(value, format=pattern, locale=self.locale)

    def number_short(self, value: float | None) -> str:
        """A count rounded for a headline: '4.3K'."""
        if value is None or _nan(value):
            return MISSING
        if abs(value) < 1_000_000:
            return self.number(value)
        return format_compact_decimal(value, locale=self.locale, fraction_digits=1)

    def percent(self, share: float | None, digits: int = 1) -> str:
        """A share (0.253) as a percentage: '25.3%'."""
        if share is None or _nan(share):
            return MISSING
        pattern = Locale.parse(self.locale).percent_formats[None].pattern.split(";")[0]
        pattern = pattern.replace("#,##0", "#,##0" + ("." + "0" * digits if digits else ""), 1)
        return format_percent(share, format=pattern, locale=self.locale)

    def date(self, value: dt.date | None, style: str = "medium") -> str:
        """A date in the locale's style: '9 Dec 2011'."""
        if value is None:
            return MISSING
        return format_date(value, format=style, locale=self.locale)

    def month(self, value: dt.date | None) -> str:
        """A month and year: 'Dec 2011'."""
        if value is None:
            return MISSING
        return format_date(value, format="MMM y", locale=self.locale)

    def datetime(self, value: dt.datetime | None, style: str = "medium") -> str:
        """A time stamp in the locale's style, with its UTC offset when it has one."""
        if value is None:
            return MISSING
        text = format_datetime(value, format=style, locale=self.locale)
        return f"{text} UTC" if value.utcoffset() == dt.timedelta(0) else text

    def filters(self) -> dict[str, Any]:
        """The Jinja filters, by name."""
        return {
            "money": self.money,
            "money_short": self.money_short,
            "number": self.number,
            "number_short": self.number_short,
            "percent": self.percent,
            "date": self.date,
            "month": self.month,
            "datetime": self.datetime,
        }


def register_filters(env: Any, formatter: Formatter) -> None:
    """Register every formatting filter on a Jinja environment (the one place they are named)."""
    env.filters.update(formatter.filters())


def _nan(value: float) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def d3_format_locale(locale: str, currency: str) -> dict[str, Any]:
    """The d3-format locale of `locale` with `currency`'s symbol (for Vega's '$' formats)."""
    loc = Locale.parse(locale)
    pattern = loc.currency_formats["standard"]
    symbol = get_currency_symbol(currency, locale)
    prefix = pattern.prefix[0].replace("¤", symbol)
    suffix = pattern.suffix[0].replace("¤", symbol)
    primary, secondary = pattern.grouping
    return {
        "decimal": get_decimal_symbol(locale),
        "thousands": get_group_symbol(locale),
        "grouping": [primary] if primary == secondary else [primary, secondary],
        "currency": [prefix, suffix],
        "minus": "\u2212",
    }


def d3_time_locale(locale: str) -> dict[str, Any]:
    """The d3-time-format locale of `locale` (month and day names for date axes)."""
    loc = Locale.parse(locale)
    days, short_days = loc.days["stand-alone"]["wide"], loc.days["stand-alone"]["abbreviated"]
    months = loc.months["stand-alone"]["wide"]
    short_months = loc.months["stand-alone"]["abbreviated"]
    sunday_first = [6, 0, 1, 2, 3, 4, 5]  # Babel counts from Monday, d3 from Sunday
    return {
        "dateTime": "%x, %X",
        "date": "%d/%m/%Y",
        "time": "%H:%M:%S",
        "periods": [
            loc.day_periods["format"]["abbreviated"].get(p, p.upper()) for p in ("am", "pm")
        ],
        "days": [days[i] for i in sunday_first],
        "shortDays": [short_days[i] for i in sunday_first],
        "months": [months[i] for i in range(1, 13)],
        "shortMonths": [short_months[i] for i in range(1, 13)],
    }
