"""Synthetic retail transactions shaped like the shipped UCI Online Retail data.

The frame has the UCI columns and dtypes, so the default column mapping reads it unchanged. One row
is one invoice line. Customers belong to planted types (`CUSTOMER_TYPES`) that differ in recency,
frequency and monetary value, so a segmentation can be checked against `planted_types`. The dirt
the cleaning stage must remove is planted in fixed numbers: guest lines without a customer,
cancellation invoices (`C<number>`) that negate earlier lines of the same customer, zero and
negative prices, and exact duplicate rows. Everything is drawn with numpy from one seed, without
per-row Python loops, so the same `SampleSpec` always gives the same frame.

With `demographics=True` every customer also gets an age band, a gender and a region
(`DEMOGRAPHICS`), drawn independently of the customer type, so a fairness audit of the segments
finds nothing. `planted_bias` (0..1) plants one: that share of the customers of one type
(`PLANTED_BIAS`: churned customers) is moved into one age band, so the segments the churned
customers fall into (and the win-back discounts they get) over-represent that band. The
demographic draws use their own random stream: the other columns do not change with them.
"""

from __future__ import annotations

import datetime
import functools
import logging
import numbers
import os
import pathlib
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

CUSTOMER_TYPES: dict[str, float] = {
    "champions": 0.06,
    "loyal": 0.14,
    "big_spenders": 0.05,
    "occasional": 0.40,
    "new": 0.10,
    "churned": 0.25,
}
NEW_CUSTOMER_DAYS = 60  # a `new` customer's first order lies in the last 60 days of the range
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# Dirt, as shares of all rows (the UCI file has similar ones).
_GUEST_SHARE = 0.08
_CANCEL_SHARE = 0.02
_ZERO_PRICE_SHARE = 0.001
_NEGATIVE_PRICE_SHARE = 0.0005
_DUPLICATE_SHARE = 0.01

_LINES_PER_INVOICE = 3
_BASE_QUANTITY = 4.0
_FIRST_INVOICE = 536_365  # UCI numbering starts here
_FIRST_CUSTOMER = 12_346  # the lowest UCI CustomerID
_OPENING = (7 * 3600, 20 * 3600)  # purchases are timed 07:00-20:00, like a shop's day
_DAY = 86_400
_MAX_CANCEL_DELAY = 10 * _DAY
_CATALOGUE_SEED = 20_101_201  # the catalogue is the same whatever the spec's seed
_PRODUCTS = 400


class _Profile(NamedTuple):
    """How a planted customer type buys (windows as fractions of the date range)."""

    orders: float  # mean number of invoices, relative to the other types
    basket: float  # multiplier of the quantity per line
    first: tuple[float, float]  # range of the start of the active window
    last: tuple[float, float]  # range of the end of the active window


_PROFILES: dict[str, _Profile] = {
    "champions": _Profile(30.0, 2.5, (0.0, 0.5), (1.0, 1.0)),
    "loyal": _Profile(12.0, 1.5, (0.0, 0.6), (0.85, 1.0)),
    "big_spenders": _Profile(2.5, 25.0, (0.0, 0.7), (1.0, 1.0)),
    "occasional": _Profile(1.8, 0.6, (0.0, 0.8), (1.0, 1.0)),
    "new": _Profile(1.5, 1.0, (1.0, 1.0), (1.0, 1.0)),  # start set by NEW_CUSTOMER_DAYS
    "churned": _Profile(4.0, 1.0, (0.0, 0.25), (0.35, 0.55)),
}
_NEW = list(CUSTOMER_TYPES).index("new")

# Optional demographic columns: value -> share of customers (independent of the customer type).
DEMOGRAPHICS: dict[str, dict[str, float]] = {
    "AgeBand": {"18-24": 0.12, "25-34": 0.22, "35-44": 0.21, "45-54": 0.19, "55-64": 0.15,
                "65+": 0.11},
    "Gender": {"Female": 0.51, "Male": 0.47, "Not stated": 0.02},
    "Region": {"London": 0.18, "South East": 0.20, "South West": 0.10, "Midlands": 0.17,
               "North": 0.23, "Scotland": 0.08, "Wales": 0.04},
}  # fmt: skip
# (customer type, column, value): `planted_bias` of that type's customers get that value.
PLANTED_BIAS = ("churned", "AgeBand", "65+")
_DEMOGRAPHICS_STREAM = 7_919  # mixed into the seed: a stream of its own

_COUNTRIES: dict[str, float] = {
    "United Kingdom": 0.880, "Germany": 0.022, "France": 0.020, "EIRE": 0.010, "Spain": 0.007,
    "Belgium": 0.006, "Switzerland": 0.005, "Portugal": 0.005, "Italy": 0.004, "Finland": 0.003,
    "Austria": 0.003, "Norway": 0.003, "Netherlands": 0.003, "Australia": 0.003,
    "Denmark": 0.002, "Channel Islands": 0.002, "Sweden": 0.002, "Japan": 0.002, "Cyprus": 0.002,
    "Poland": 0.002, "USA": 0.002, "Canada": 0.002, "Israel": 0.002, "Greece": 0.002,
    "Singapore": 0.002, "Iceland": 0.002,
}  # fmt: skip
_COLOURS = ("WHITE", "RED", "PINK", "BLUE", "GREEN", "IVORY", "BLACK", "SILVER", "CREAM", "VINTAGE")
_STYLES = ("HANGING HEART", "REGENCY", "RETROSPOT", "PAISLEY", "POLKADOT", "FLORAL",
           "GINGHAM", "STAR", "BIRD", "SPOTTY", "ZINC", "GLASS")  # fmt: skip
_ITEMS = ("T-LIGHT HOLDER", "LANTERN", "COAT HANGER", "HOT WATER BOTTLE", "LUNCH BAG", "TEACUP",
          "CAKE STAND", "BUNTING", "DOORSTOP", "NOTEBOOK", "JUMBO BAG", "PHOTO FRAME", "CANDLE",
          "MUG", "PURSE", "CUSHION COVER", "GIFT WRAP", "PLATE", "CLOCK",
          "STORAGE TIN")  # fmt: skip


@dataclass(frozen=True)
class SampleSpec:
    """What to generate: size, population, seed and the inclusive date range."""

    rows: int = 100_000  # invoice lines; the result has exactly this many
    customers: int = 5_000  # size of the customer population
    seed: int = 42
    start: datetime.date = datetime.date(2023, 1, 1)
    end: datetime.date = datetime.date(2024, 12, 31)  # inclusive
    demographics: bool = False  # add the DEMOGRAPHICS columns (AgeBand, Gender, Region)
    planted_bias: float = 0.0  # share of PLANTED_BIAS's type moved into its group (0..1)

    def __post_init__(self) -> None:
        problems = _spec_problems(self)
        if problems:
            raise ValueError("Invalid SampleSpec: " + "; ".join(problems))


def _spec_problems(spec: SampleSpec) -> list[str]:
    """Every problem with a spec, so that one error lists them all."""
    problems = [
        f"{name}: expected an integer >= {low}, got {value!r}"
        for name, value, low in (
            ("rows", spec.rows, 1),
            ("customers", spec.customers, 1),
            ("seed", spec.seed, 0),
        )
        if not _is_int(value) or value < low
    ]
    if not problems and spec.customers > spec.rows:
        problems.append(
            f"customers: expected at most rows ({spec.rows}), got {spec.customers} "
            "(every customer needs at least one invoice line)"
        )
    dates = [(n, v) for n, v in (("start", spec.start), ("end", spec.end)) if not _is_date(v)]
    problems += [f"{name}: expected a datetime.date, got {value!r}" for name, value in dates]
    if not dates and spec.end < spec.start:
        problems.append(f"end: expected a date on or after start ({spec.start}), got {spec.end}")
    return problems + _bias_problems(spec)


def _bias_problems(spec: SampleSpec) -> list[str]:
    """The demographic options: a share in [0, 1], and only with the demographic columns."""
    bias = spec.planted_bias
    if isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not 0 <= bias <= 1:
        return [f"planted_bias: expected a number from 0 to 1, got {bias!r}"]
    if bias > 0 and not spec.demographics:
        return ["planted_bias: needs demographics=True (the bias is planted in those columns)"]
    return []


def _is_int(value: object) -> bool:
    """An integer that is not a bool (True would silently mean 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_date(value: object) -> bool:
    """A plain date; a datetime would bring a time of day the range does not have."""
    return isinstance(value, datetime.date) and not isinstance(value, datetime.datetime)


class _Budget(NamedTuple):
    """How the rows split into purchase lines and planted dirt."""

    customer_lines: int
    guest_lines: int
    cancel_lines: int
    duplicates: int
    zero_price: int
    negative_price: int


class _Customers(NamedTuple):
    """One entry per customer (index i has CustomerID _FIRST_CUSTOMER + i)."""

    kind: np.ndarray  # index into CUSTOMER_TYPES
    first_day: np.ndarray  # active window, in days from spec.start
    last_day: np.ndarray
    basket: np.ndarray  # quantity multiplier
    weight: np.ndarray  # relative share of the invoices beyond each customer's first
    country: np.ndarray  # index into _COUNTRIES


class _Invoices(NamedTuple):
    """One entry per invoice: purchases in time order, then cancellations."""

    customer: np.ndarray  # customer index, -1 for a guest
    seconds: np.ndarray  # from midnight of spec.start
    lines: np.ndarray  # rows on the invoice (duplicates not counted)
    country: np.ndarray
    cancel: np.ndarray


class _Lines(NamedTuple):
    """One entry per purchase line, grouped by invoice."""

    invoice: np.ndarray
    position: np.ndarray  # 0-based line number on its invoice
    product: np.ndarray  # index into the catalogue
    quantity: np.ndarray
    cents: np.ndarray  # unit price in pence, dirt included


class _Rows(NamedTuple):
    """Rows before the duplicates: purchase lines, then cancellation lines."""

    invoice: np.ndarray
    position: np.ndarray
    line: np.ndarray  # the purchase line a row shows (a cancellation shows the one it negates)
    sign: np.ndarray  # -1 on cancellation rows


class _Catalogue(NamedTuple):
    """The fixed product list."""

    codes: pl.Series
    descriptions: pl.Series
    cents: np.ndarray
    popularity: np.ndarray  # probability of each product on a line


def generate_transactions(spec: SampleSpec) -> pl.DataFrame:
    """Generate the synthetic transactions of `spec` (UCI Online Retail columns and dtypes)."""
    people_rng, invoice_rng, line_rng, dirt_rng = np.random.default_rng(spec.seed).spawn(4)
    budget = _budget(spec)
    people = _customers(spec, people_rng)
    purchases = _purchase_invoices(spec, budget, people, invoice_rng)
    lines = _purchase_lines(purchases, people, line_rng)
    cancels, rows = _cancellations(spec, budget, purchases, lines, dirt_rng)
    lines = _dirty_prices(budget, lines, rows.line[rows.sign < 0], dirt_rng)
    invoices = _distinct_times(spec, _concat(purchases, cancels))
    number, order = _placement(invoices, rows)
    order = _duplicate(order, budget.duplicates, dirt_rng)
    frame = _frame(spec, invoices, number, lines, rows, order)
    if spec.demographics:
        per_invoice = _invoice_demographics(spec, people, invoices.customer)
        frame = frame.with_columns(s.gather(rows.invoice[order]) for s in per_invoice)
    log.info(
        "Generated %d sample rows for %d customers (seed %d)",
        frame.height,
        spec.customers,
        spec.seed,
    )
    return frame


def planted_types(spec: SampleSpec) -> pl.DataFrame:
    """The planted type of every generated customer: `CustomerID` (Float64), `customer_type`."""
    people = _customers(spec, np.random.default_rng(spec.seed).spawn(4)[0])
    return pl.DataFrame(
        {
            "CustomerID": np.arange(spec.customers, dtype=np.float64) + _FIRST_CUSTOMER,
            "customer_type": pl.Series(list(CUSTOMER_TYPES)).gather(people.kind),
        }
    )


def planted_demographics(spec: SampleSpec) -> pl.DataFrame:
    """The demographic columns of every generated customer (needs `spec.demographics`)."""
    if not spec.demographics:
        raise ValueError("planted_demographics: the spec has demographics=False")
    people = _customers(spec, np.random.default_rng(spec.seed).spawn(4)[0])
    codes = _customer_demographics(spec, people.kind, _demographics_rng(spec))
    return pl.DataFrame(
        [
            pl.Series("CustomerID", np.arange(spec.customers, dtype=np.float64) + _FIRST_CUSTOMER),
            *(pl.Series(n, list(DEMOGRAPHICS[n])).gather(code) for n, code in codes.items()),
        ]
    )


def _demographics_rng(spec: SampleSpec) -> np.random.Generator:
    """The demographic draws' own stream, so the other columns do not depend on them."""
    return np.random.default_rng([spec.seed, _DEMOGRAPHICS_STREAM])


def _customer_demographics(
    spec: SampleSpec, kind: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per customer and column, the index of its value; the planted bias applied last."""
    codes = {
        name: rng.choice(len(values), size=kind.size, p=_normalised(values))
        for name, values in DEMOGRAPHICS.items()
    }
    planted_type, column, value = PLANTED_BIAS
    moved = (kind == list(CUSTOMER_TYPES).index(planted_type)) & (
        rng.random(kind.size) < spec.planted_bias
    )
    codes[column] = np.where(moved, list(DEMOGRAPHICS[column]).index(value), codes[column])
    return codes


def _invoice_demographics(
    spec: SampleSpec, people: _Customers, customer: np.ndarray
) -> list[pl.Series]:
    """Per invoice, each demographic column: the customer's value, or a fresh draw for guests."""
    rng = _demographics_rng(spec)
    codes = _customer_demographics(spec, people.kind, rng)
    known = np.maximum(customer, 0)
    columns = []
    for name, values in DEMOGRAPHICS.items():
        guest = rng.choice(len(values), size=customer.size, p=_normalised(values))
        code = np.where(customer >= 0, codes[name][known], guest)
        columns.append(pl.Series(name, list(values)).gather(code))
    return columns


def _normalised(shares: dict[str, float]) -> np.ndarray:
    """Probabilities from shares that may not sum to exactly 1."""
    values = np.array(list(shares.values()))
    normalised: np.ndarray = values / values.sum()
    return normalised


def write_sample(
    spec: SampleSpec, path: pathlib.Path, fmt: Literal["csv", "parquet"] | None = None
) -> pathlib.Path:
    """Generate and write; format from `fmt` or the suffix (.csv / .parquet); returns the path."""
    path = pathlib.Path(path)
    kind = _sample_format(path, fmt)
    frame = generate_transactions(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a failure never leaves half a file under its name.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if kind == "csv":
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("Wrote %d sample rows to %s", frame.height, path)
    return path


def _sample_format(path: pathlib.Path, fmt: str | None) -> str:
    """The output format from `fmt`, else from the file suffix."""
    if fmt is not None:
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"Unknown sample format {fmt!r}: expected 'csv' or 'parquet'")
        return fmt
    kind = {".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"Cannot tell the sample format from the file name {path.name!r}: "
            "use a .csv or .parquet suffix, or pass fmt='csv' or fmt='parquet'"
        )
    return kind


def _days(spec: SampleSpec) -> int:
    """Number of calendar days in the inclusive range."""
    return (spec.end - spec.start).days + 1


def _budget(spec: SampleSpec) -> _Budget:
    """Split the rows into purchase lines and dirt, leaving each customer at least one line."""
    dirt = np.array([round(spec.rows * s) for s in (_GUEST_SHARE, _CANCEL_SHARE, _DUPLICATE_SHARE)])
    room = spec.rows - spec.customers
    if dirt.sum() > room:  # only when nearly every row must be some customer's only line
        dirt = np.floor(dirt * room / dirt.sum()).astype(np.int64)
    guest, cancel, duplicates = (int(n) for n in dirt)
    return _Budget(
        customer_lines=spec.rows - guest - cancel - duplicates,
        guest_lines=guest,
        cancel_lines=cancel,
        duplicates=duplicates,
        zero_price=round(spec.rows * _ZERO_PRICE_SHARE),
        negative_price=round(spec.rows * _NEGATIVE_PRICE_SHARE),
    )


def _type_counts(customers: int) -> np.ndarray:
    """Customers per planted type: exact shares, rounded by largest remainder."""
    exact = np.array(list(CUSTOMER_TYPES.values())) * customers
    counts: np.ndarray = np.floor(exact).astype(np.int64)
    short = customers - int(counts.sum())
    counts[np.argsort(counts - exact, kind="stable")[:short]] += 1
    return counts


def _customers(spec: SampleSpec, rng: np.random.Generator) -> _Customers:
    """Draw the population: a shuffled type per customer, its active window and spending."""
    n, days = spec.customers, _days(spec)
    kind = rng.permutation(np.repeat(np.arange(len(CUSTOMER_TYPES)), _type_counts(n)))
    prof = [_PROFILES[name] for name in CUSTOMER_TYPES]
    first_lo, first_hi, last_lo, last_hi = np.array([[*p.first, *p.last] for p in prof])[kind].T
    u = rng.random((2, n))
    first = days * (first_lo + u[0] * (first_hi - first_lo))
    first[kind == _NEW] = max(days - NEW_CUSTOMER_DAYS, 0)
    last = days * (last_lo + u[1] * (last_hi - last_lo))
    orders = np.array([p.orders for p in prof])[kind]
    basket = np.array([p.basket for p in prof])[kind] * rng.lognormal(0.0, 0.3, n)
    # Gamma noise spreads frequency within a type; every customer already has one invoice.
    weight = (orders - 1.0) * rng.gamma(2.0, 0.5, n)
    country = rng.choice(len(_COUNTRIES), size=n, p=_country_shares())
    return _Customers(kind, first, last, basket, weight, country)


def _country_shares() -> np.ndarray:
    """Country probabilities, normalised."""
    shares = np.array(list(_COUNTRIES.values()))
    normalised: np.ndarray = shares / shares.sum()
    return normalised


def _split_lines(rng: np.random.Generator, lines: int, invoices: int) -> np.ndarray:
    """Lines per invoice: at least one each, the rest spread at random (mean about 3)."""
    extra = rng.integers(0, invoices, size=lines - invoices) if invoices else np.empty(0, np.int64)
    return 1 + np.bincount(extra, minlength=invoices)


def _purchase_invoices(
    spec: SampleSpec, budget: _Budget, people: _Customers, rng: np.random.Generator
) -> _Invoices:
    """Customers' invoices (one each, the rest by weight) and guest invoices, in time order."""
    n = spec.customers
    own = min(budget.customer_lines, max(n, round(budget.customer_lines / _LINES_PER_INVOICE)))
    guests = max(1, round(budget.guest_lines / _LINES_PER_INVOICE)) if budget.guest_lines else 0
    extra = rng.choice(n, size=own - n, p=people.weight / people.weight.sum())
    customer = np.concatenate([np.arange(n), extra, np.full(guests, -1)])
    known = np.maximum(customer, 0)
    lo = np.where(customer >= 0, people.first_day[known], 0.0)
    hi = np.where(customer >= 0, people.last_day[known], _days(spec))
    day = np.minimum(np.floor(lo + rng.random(customer.size) * (hi - lo)), _days(spec) - 1)
    seconds = day.astype(np.int64) * _DAY + rng.integers(*_OPENING, size=customer.size)
    lines = np.concatenate(
        [
            _split_lines(rng, budget.customer_lines, own),
            _split_lines(rng, budget.guest_lines, guests),
        ]
    )
    guest_country = rng.choice(len(_COUNTRIES), size=customer.size, p=_country_shares())
    country = np.where(customer >= 0, people.country[known], guest_country)
    # Time order up front keeps the final row order close to line order: cache-friendly gathers.
    by_time = np.argsort(seconds, kind="stable")
    invoices = _Invoices(customer, seconds, lines, country, np.zeros(customer.size, bool))
    return _Invoices(*(column[by_time] for column in invoices))


def _purchase_lines(inv: _Invoices, people: _Customers, rng: np.random.Generator) -> _Lines:
    """Products (distinct within an invoice), quantities by customer type, catalogue prices."""
    invoice = np.repeat(np.arange(inv.lines.size), inv.lines)
    position = np.arange(invoice.size) - np.repeat(np.cumsum(inv.lines) - inv.lines, inv.lines)
    product = _distinct_products(rng, invoice, position)
    customer = inv.customer[invoice]
    basket = np.where(customer >= 0, people.basket[np.maximum(customer, 0)], 1.0)
    noise = rng.lognormal(0.0, 0.6, invoice.size)
    quantity = np.maximum(1, np.rint(_BASE_QUANTITY * basket * noise)).astype(np.int64)
    return _Lines(invoice, position, product, quantity, _catalogue().cents[product])


def _distinct_products(
    rng: np.random.Generator, invoice: np.ndarray, position: np.ndarray
) -> np.ndarray:
    """Popularity-weighted products, redrawn until no invoice lists a product twice."""
    # Distinct products keep the planted duplicates the only identical rows.
    pop = _catalogue().popularity
    product = rng.choice(pop.size, size=invoice.size, p=pop)
    check = np.arange(invoice.size)
    while check.size:
        clash = check[_repeats(product[check], position[check])]
        product[clash] = rng.choice(pop.size, size=clash.size, p=pop)
        touched = np.zeros(int(invoice[-1]) + 1, bool)
        touched[invoice[clash]] = True
        check = np.flatnonzero(touched[invoice])  # recheck only the invoices just changed
    return product


def _repeats(product: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Mask of lines whose product already appears earlier on the same invoice."""
    # Lines of an invoice are contiguous, so an earlier line d places back is on the same invoice
    # exactly when position >= d; invoices are short, so this loops a dozen times at most.
    seen = np.zeros(product.size, bool)
    for d in range(1, int(position.max(initial=0)) + 1):
        seen[d:] |= (product[d:] == product[:-d]) & (position[d:] >= d)
    return seen


def _cancellations(
    spec: SampleSpec, budget: _Budget, inv: _Invoices, lines: _Lines, rng: np.random.Generator
) -> tuple[_Invoices, _Rows]:
    """Cancel random customer lines: one `C` invoice per source invoice, a little later."""
    own = np.flatnonzero(inv.customer[lines.invoice] >= 0)
    src = np.sort(own[rng.choice(own.size, size=budget.cancel_lines, replace=False)])
    source, group = np.unique(lines.invoice[src], return_inverse=True)
    # A minute to ten days later, but never past the range's last second.
    room = np.clip(_days(spec) * _DAY - 61 - inv.seconds[source], 0, _MAX_CANCEL_DELAY)
    seconds = inv.seconds[source] + 60 + np.floor(rng.random(source.size) * room).astype(np.int64)
    counts = np.bincount(group, minlength=source.size)
    cancels = _Invoices(
        inv.customer[source], seconds, counts, inv.country[source], np.ones(source.size, bool)
    )
    n, base = inv.lines.size, lines.invoice.size
    position = np.arange(src.size) - (np.cumsum(counts) - counts)[group]
    rows = _Rows(
        invoice=np.concatenate([lines.invoice, n + group]),
        position=np.concatenate([lines.position, position]),
        line=np.concatenate([np.arange(base), src]),
        sign=np.concatenate([np.ones(base, np.int64), np.full(src.size, -1, np.int64)]),
    )
    return cancels, rows


def _dirty_prices(
    budget: _Budget, lines: _Lines, cancelled: np.ndarray, rng: np.random.Generator
) -> _Lines:
    """Set zero and negative prices on a few purchase lines that are not cancelled."""
    # A cancellation must copy a real, clean purchase, so its source keeps its price.
    clean = np.ones(lines.invoice.size, bool)
    clean[cancelled] = False
    candidates = np.flatnonzero(clean)
    n_zero, n_neg = budget.zero_price, budget.negative_price
    pick = candidates[rng.choice(candidates.size, size=n_zero + n_neg, replace=False)]
    cents = lines.cents.copy()
    cents[pick[:n_zero]] = 0
    cents[pick[n_zero:]] *= -1
    return lines._replace(cents=cents)


def _concat(a: _Invoices, b: _Invoices) -> _Invoices:
    """Append the invoices of `b` to those of `a`."""
    return _Invoices(*(np.concatenate([x, y]) for x, y in zip(a, b, strict=True)))


def _distinct_times(spec: SampleSpec, inv: _Invoices) -> _Invoices:
    """Move a customer's clashing invoice times back a second at a time, keeping their order."""
    idx = np.flatnonzero(inv.customer >= 0)
    cust, t = inv.customer[idx], inv.seconds[idx]
    span = int(t.max() - t.min()) + t.size + 1 if t.size else 1
    order = np.argsort(cust * span + t, kind="stable")  # by customer, then time
    k = np.arange(t.size)
    # t'[j] = min(t[j], t'[j+1] - 1) per customer, in closed form: a reversed running minimum of
    # t - k, with each customer lifted by `span` so later customers never lower earlier ones.
    lifted = t[order] - k + cust[order] * span
    fixed = np.minimum.accumulate(lifted[::-1])[::-1] - cust[order] * span + k
    if fixed.size and fixed.min() < 0:
        raise ValueError(
            f"Invalid SampleSpec: {spec.rows} rows for {spec.customers} customers give some "
            f"customer more invoices than there are seconds from {spec.start} to {spec.end}; "
            "widen the date range or add customers"
        )
    seconds = inv.seconds.copy()
    seconds[idx[order]] = fixed
    return inv._replace(seconds=seconds)


def _placement(inv: _Invoices, rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Invoice numbers in time order, and the row order (by invoice number, then line)."""
    by_time = np.argsort(inv.seconds, kind="stable")
    number = np.empty(by_time.size, np.int64)
    number[by_time] = np.arange(by_time.size)
    # A counting sort: each invoice's rows start after the rows of all earlier invoices.
    sizes = inv.lines[by_time]
    start = np.empty(by_time.size, np.int64)
    start[by_time] = np.cumsum(sizes) - sizes
    order = np.empty(rows.invoice.size, np.int64)
    order[start[rows.invoice] + rows.position] = np.arange(rows.invoice.size)
    return number + _FIRST_INVOICE, order


def _duplicate(order: np.ndarray, duplicates: int, rng: np.random.Generator) -> np.ndarray:
    """Repeat a few rows right after themselves: exact duplicates, as in the UCI file."""
    repeat = np.ones(order.size, np.int64)
    repeat[rng.choice(order.size, size=duplicates, replace=False)] = 2
    return np.repeat(order, repeat)


def _frame(
    spec: SampleSpec,
    inv: _Invoices,
    number: np.ndarray,
    lines: _Lines,
    rows: _Rows,
    order: np.ndarray,
) -> pl.DataFrame:
    """Build the UCI-shaped frame; strings are made per invoice or product, then gathered."""
    invoice, line = rows.invoice[order], rows.line[order]
    product, customer = lines.product[line], inv.customer[invoice]
    catalogue = _catalogue()
    return pl.DataFrame(
        {
            "InvoiceNo": _invoice_numbers(number, inv.cancel).gather(invoice),
            "StockCode": catalogue.codes.gather(product),
            "Description": catalogue.descriptions.gather(product),
            "Quantity": lines.quantity[line] * rows.sign[order],
            "InvoiceDate": _invoice_dates(spec, inv.seconds).gather(invoice),
            "UnitPrice": lines.cents[line] / 100,
            "CustomerID": pl.Series(
                np.where(customer >= 0, customer + _FIRST_CUSTOMER, np.nan), nan_to_null=True
            ),
            "Country": pl.Series(list(_COUNTRIES)).gather(inv.country[invoice]),
        }
    )


def _invoice_numbers(number: np.ndarray, cancel: np.ndarray) -> pl.Series:
    """InvoiceNo per invoice: the number as text, with a `C` in front of cancellations."""
    text = pl.col("number").cast(pl.String)
    frame = pl.DataFrame({"number": number, "cancel": cancel})
    return frame.select(pl.when("cancel").then("C" + text).otherwise(text)).to_series()


def _invoice_dates(spec: SampleSpec, seconds: np.ndarray) -> pl.Series:
    """InvoiceDate per invoice, as UCI-style text."""
    epoch = (spec.start - datetime.date(1970, 1, 1)).days * _DAY
    return pl.from_epoch(pl.Series(seconds + epoch), time_unit="s").dt.strftime(DATE_FORMAT)


@functools.cache
def _catalogue() -> _Catalogue:
    """The product list (StockCode, Description, price per code), the same for every seed."""
    rng = np.random.default_rng(_CATALOGUE_SEED)
    digits = rng.choice(np.arange(10_002, 90_000), size=_PRODUCTS, replace=False)
    letters = np.array(list("ABCDEFGHJKLMNPRSW"))[rng.integers(0, 17, _PRODUCTS)]
    suffix = np.where(rng.random(_PRODUCTS) < 0.25, letters, "")  # like 85123A beside 71053
    codes = [f"{d}{s}" for d, s in zip(digits.tolist(), suffix.tolist(), strict=True)]
    shape = (len(_COLOURS), len(_STYLES), len(_ITEMS))
    combos = rng.choice(np.prod(shape), size=_PRODUCTS, replace=False)  # distinct descriptions
    parts = zip(*(x.tolist() for x in np.unravel_index(combos, shape)), strict=True)
    names = [f"{_COLOURS[c]} {_STYLES[s]} {_ITEMS[i]}" for c, s, i in parts]
    # Prices in whole pence, rounded to 5p like most UCI prices (2.55, 4.95, 0.85).
    cents = np.maximum(15, 5 * np.rint(rng.lognormal(np.log(250), 0.75, _PRODUCTS) / 5))
    weight = 1.0 / (rng.permutation(_PRODUCTS) + 20.0)  # a long tail; the top code ~1.6% of lines
    return _Catalogue(
        pl.Series(codes), pl.Series(names), cents.astype(np.int64), weight / weight.sum()
    )
