"""Portable SQL: the read, clean and aggregate work as a few queries a database or Spark runs.

The queries use only what PostgreSQL, DuckDB, Spark SQL and Trino all understand the same way:
derived tables, CASE, CAST to DECIMAL, BIGINT, INTEGER, DATE and TIMESTAMP, COALESCE, NULLIF,
TRIM, SUBSTR, ABS, FLOOR, ROUND, MOD, EXTRACT(YEAR/MONTH), and the aggregates MIN, MAX, COUNT,
COUNT(DISTINCT) and SUM under WHERE and GROUP BY; no window function, no LIMIT, no dialect
function. Identifiers are double-quoted (Spark is told to read them so, see pushdown.py).

They reproduce the embedded engine (read.py, clean.py, rfm.py, eda.py) row for row:
- money is fixed point exactly as in read.py: amounts and prices are scaled to 6 decimals and
  quantities to 3, each rounded half to even; a line is rounded once, half to even, to the
  currency's minor unit. Integer arithmetic on DECIMAL(38,0) keeps it exact on every engine;
- the cleaning rules are one CASE in the order of clean.RULES, first match wins. Exact
  duplicates are counted by grouping on every source column: a group of n identical rows is one
  row judged by the other rules plus n - 1 duplicates (copies agree on every rule);
- an order is an order id, or without ids a customer's calendar day.

Queries (see `scan_query` and the others): the scan (rows read, money read, dates, missing
values, the latest clean purchase for `as_of: latest`), the rows and money per rule, one row
per customer, one row per month, and per attribute column the order counts per value.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from .clean import RULES
from .config import CleaningSection, ColumnMap
from .errors import ConfigError, InputDataError
from .read import MONEY_LIMIT, check_mapped_columns, is_id_type

log = logging.getLogger(__name__)

PRICE_SCALE, QUANTITY_SCALE = 6, 3  # as read.py: prices exact to 6 decimals, quantities to 3
MAX_EXACT_FLOAT_ID = 2**53
_WIDE = "DECIMAL(38,0)"
_CANCEL_KEPT = ("before_window", "cancellation")  # rules whose lines still feed the RFM query


@dataclass(frozen=True)
class SqlSource:
    """The relation the queries read and what they must know about it."""

    relation: str  # a table name as the engine resolves it, or a parenthesised query
    schema: dict[str, pl.DataType]  # every source column with its type, in order
    columns: ColumnMap
    attributes: tuple[str, ...]
    cleaning: CleaningSection
    minor_digits: int
    location: str  # for messages
    # A table or view holding `canonical_query`'s result, when the engine materialised it once
    # (Spark caches it); otherwise every query computes it as a derived table.
    canonical: str | None = None

    @property
    def has_order_id(self) -> bool:
        """Orders are identified by a column (else by customer and day)."""
        return self.columns.order_id is not None


def check_config(cleaning: CleaningSection) -> None:
    """Refuse settings the queries cannot reproduce (before connecting)."""
    if isinstance(cleaning.duplicates, list):
        raise ConfigError(
            "cleaning.duplicates: a list of columns keeps the first of several rows, and a "
            "database table has no row order; use `all` or `off` with a database or Spark source"
        )
    if any(c in cleaning.cancellation_prefix for c in "'\\"):
        raise ConfigError(
            "cleaning.cancellation_prefix: quotes and backslashes cannot be pushed down"
        )


def check_source(src: SqlSource) -> None:
    """Refuse columns the queries cannot read, naming the column, its key and the fix."""
    cols = src.columns
    check_mapped_columns(cols, src.attributes, tuple(src.schema), src.location)
    for key in ("amount", "quantity", "unit_price"):
        name = getattr(cols, key)
        if name is not None and not src.schema[name].is_numeric():
            raise InputDataError(
                f"{src.location}: column {name!r} (input.columns.{key}) is {src.schema[name]}, "
                "not a number; cast it to a numeric type in the table or in input.database.query"
            )
    _check_kind(src, cols.customer_id, "customer_id", is_id_type)
    _check_kind(src, cols.order_date, "order_date", _is_date)
    if cols.order_id is not None:
        _check_kind(src, cols.order_id, "order_id", is_id_type)


def _check_kind(
    src: SqlSource, name: str, key: str, accepted: Callable[[pl.DataType], bool]
) -> None:
    if not accepted(src.schema[name]):
        raise InputDataError(
            f"{src.location}: column {name!r} (input.columns.{key}) has type {src.schema[name]}, "
            "which the database source does not read; cast it in input.database.query"
        )


def _is_date(dtype: pl.DataType) -> bool:
    return dtype == pl.String or dtype == pl.Date or isinstance(dtype, pl.Datetime)


# --- the queries -------------------------------------------------------------------------------


def scan_query(src: SqlSource) -> str:
    """Every row read, without period rules: totals, dates, missing values, latest clean date."""
    missing = {
        "missing_customer_id": "rg_cust IS NULL",
        "missing_order_id": "rg_ord IS NULL" if src.has_order_id else "1 = 1",
        "missing_order_ts": "rg_date IS NULL",
        "missing_amount_minor": "rg_exact IS NULL",
        "missing_product_id": "rg_no_product = 1",
    }
    currency = (
        ["MIN(rg_cur) AS currency_min", "MAX(rg_cur) AS currency_max"]
        if src.columns.currency is not None
        else []
    )
    return _select(
        [
            "CAST(SUM(rg_copies) AS BIGINT) AS n_rows",
            "CAST(SUM(rg_copies * COALESCE(rg_amount, 0)) AS BIGINT) AS revenue",
            "MIN(rg_date) AS first_date",
            "MAX(rg_date) AS last_date",
            "MAX(CASE WHEN rg_reason IS NULL AND rg_return = 0 THEN rg_date END) AS latest_clean",
            *[
                f"SUM(CASE WHEN {cond} THEN rg_copies ELSE 0 END) AS {name}"
                for name, cond in missing.items()
            ],
            "SUM(rg_bad_id * rg_copies) AS bad_ids",
            "SUM(rg_bad_amount * rg_copies) AS bad_amounts",
            "MIN(CASE WHEN rg_bad_amount = 1 THEN rg_cust END) AS bad_amount_customer",
            "SUM(rg_bad_date * rg_copies) AS bad_dates",
            *currency,
        ],
        _lines(src, period=None),
    )


def rules_query(src: SqlSource, as_of: dt.date | None, start: dt.date | None) -> str:
    """Rows and money per rule (and return flag); copies beyond the first are the duplicates."""
    return _select(
        [
            "rg_reason AS reason",
            "rg_return AS is_return",
            "CAST(SUM(rg_weight) AS BIGINT) AS n_rows",
            "CAST(SUM(rg_weight * COALESCE(rg_amount, 0)) AS BIGINT) AS revenue",
            "CAST(SUM(rg_extra) AS BIGINT) AS duplicate_rows",
            "CAST(SUM(rg_extra * COALESCE(rg_amount, 0)) AS BIGINT) AS duplicate_revenue",
            "MAX(rg_date) AS max_date",
        ],
        _lines(src, period=(as_of, start)),
        group_by=["rg_reason", "rg_return"],
    )


def customers_query(src: SqlSource, as_of: dt.date | None, start: dt.date | None) -> str:
    """One row per customer: orders with a positive value, spend, returns, first and last dates."""
    orders = _select(
        [
            "rg_cust",
            *_order_key(src),
            "SUM(CASE WHEN f_kept = 1 THEN rg_weight * rg_amount ELSE 0 END) AS o_value",
            "SUM(CASE WHEN f_purchase = 1 THEN rg_weight * rg_amount ELSE 0 END) AS o_gross",
            "SUM(CASE WHEN f_returned = 1 THEN 0 - rg_weight * rg_amount ELSE 0 END) AS o_returned",
            "MAX(CASE WHEN f_purchase = 1 THEN rg_date END) AS o_last",
            "MIN(CASE WHEN f_history = 1 THEN rg_date END) AS o_first",
            "MIN(CASE WHEN f_purchase = 1 THEN rg_date END) AS o_first_purchase",
            "MAX(f_kept) AS o_kept",
        ],
        _flagged_lines(src, as_of, start),
        group_by=["rg_cust", *_order_key(src)],
    )
    return _select(
        [
            "rg_cust AS customer_key",
            "SUM(CASE WHEN o_value > 0 AND o_kept = 1 THEN 1 ELSE 0 END) AS frequency",
            "CAST(SUM(o_value) AS BIGINT) AS monetary_minor",
            "CAST(SUM(o_gross) AS BIGINT) AS gross_minor",
            "CAST(SUM(o_returned) AS BIGINT) AS returned_value_minor",
            "MAX(o_last) AS last_order",
            "MIN(o_first) AS first_order",
            "MAX(o_kept) AS in_period",
            "MIN(o_first_purchase) AS first_purchase",
        ],
        orders,
        group_by=["rg_cust"],
    )


def months_query(src: SqlSource, as_of: dt.date | None, start: dt.date | None) -> str:
    """Per calendar month of the kept purchases: money, distinct orders, distinct customers."""
    month = "CAST(EXTRACT(YEAR FROM rg_date) * 100 + EXTRACT(MONTH FROM rg_date) AS INTEGER)"
    purchases = _select(
        ["l.*", f"{month} AS rg_month"],
        _lines(src, period=(as_of, start)),
        where="rg_reason IS NULL AND rg_return = 0",
    )
    orders = _select(
        ["rg_month", "rg_cust", *_order_key(src), "SUM(rg_weight * rg_amount) AS o_revenue"],
        purchases,
        group_by=["rg_month", "rg_cust", *_order_key(src)],
    )
    # An order id shared by customers is one order; orders without an id count as one (like
    # polars' n_unique, which counts null as a value).
    distinct_orders = (
        "COUNT(DISTINCT rg_ord) + MAX(CASE WHEN rg_ord IS NULL THEN 1 ELSE 0 END)"
        if src.has_order_id
        else "COUNT(*)"
    )
    return _select(
        [
            "rg_month AS month_key",
            "CAST(SUM(o_revenue) AS BIGINT) AS revenue_minor",
            f"{distinct_orders} AS orders",
            "COUNT(DISTINCT rg_cust) AS customers",
        ],
        orders,
        group_by=["rg_month"],
    )


def attribute_query(
    src: SqlSource, index: int, as_of: dt.date | None, start: dt.date | None
) -> str:
    """Per customer and value of one attribute: the orders whose smallest value it is."""
    orders = _select(
        ["rg_cust", *_order_key(src), f"MIN(rg_attr_{index}) AS o_value"],
        _flagged_lines(src, as_of, start),
        group_by=["rg_cust", *_order_key(src)],
    )
    return _select(
        ["rg_cust AS customer_key", "o_value AS attribute_value", "COUNT(*) AS orders"],
        orders,
        where="o_value IS NOT NULL",
        group_by=["rg_cust", "o_value"],
    )


# --- the lines: one nested derived table, a level per step -------------------------------------


def _select(
    columns: list[str], source: str, where: str | None = None, group_by: list[str] | None = None
) -> str:
    sql = f"SELECT {', '.join(columns)}\nFROM ({source}) AS l"
    if where:
        sql += f"\nWHERE {where}"
    if group_by:
        sql += f"\nGROUP BY {', '.join(group_by)}"
    return sql


def _order_key(src: SqlSource) -> list[str]:
    return ["rg_ord"] if src.has_order_id else ["rg_date"]


def _flagged_lines(src: SqlSource, as_of: dt.date | None, start: dt.date | None) -> str:
    """The lines the RFM query aggregates, with the flags of rfm.py `_line_flags`."""
    in_period = f"rg_date <= {_date(as_of)}"
    if start is not None:
        in_period += f" AND rg_date >= {_date(start)}"
    kept = "rg_reason IS NULL"
    flags = {
        "f_kept": kept,
        "f_purchase": f"{kept} AND rg_return = 0",
        "f_returned": f"rg_return = 1 AND {in_period} AND ({kept} OR rg_reason = 'cancellation')",
        "f_history": f"rg_return = 0 AND ({kept} OR rg_reason = 'before_window')",
    }
    kept_rules = ", ".join(f"'{r}'" for r in _CANCEL_KEPT)
    return _select(
        ["l.*", *[f"CASE WHEN {cond} THEN 1 ELSE 0 END AS {name}" for name, cond in flags.items()]],
        _lines(src, period=(as_of, start)),
        where=f"rg_reason IS NULL OR rg_reason IN ({kept_rules})",
    )


def _lines(src: SqlSource, period: tuple[dt.date | None, dt.date | None] | None) -> str:
    """Every distinct source row in canonical form, with its weight and its rule.

    `rg_weight` is what the row counts for in sums: 1 when its other copies are duplicates,
    all its copies when the duplicate rule is off; `rg_extra` is its duplicates.
    """
    if src.cleaning.duplicates == "off":
        weight, extra = "rg_copies", "0"
    else:
        weight, extra = "1", "rg_copies - 1"
    return _select(
        ["l.*", f"{weight} AS rg_weight", f"{extra} AS rg_extra",
         f"{_reason(src, period)} AS rg_reason"],
        f"SELECT * FROM {src.canonical}" if src.canonical else canonical_query(src),
    )  # fmt: skip


def canonical_query(src: SqlSource) -> str:
    """The distinct source rows with their copies, in canonical form, with amount and return flag.

    Nothing here depends on the period, so an engine may compute it once (Spark caches it).
    """
    return _select(
        ["l.*", f"{_amount(src)} AS rg_amount", f"{_is_return(src)} AS rg_return"],
        _distinct_rows(src),
    )


def _distinct_rows(src: SqlSource) -> str:
    """The distinct source rows, their copies, and the mapped columns in canonical form.

    Grouping on every source column finds the exact duplicates, and it makes every engine
    compute these expressions once per distinct row: an aggregate's output is materialised,
    while a plain derived table's expressions are repeated in each reference (PostgreSQL has
    no common-subexpression elimination), so the money arithmetic above starts from
    `rg_exact` instead of the source columns.
    """
    cols, schema = src.columns, src.schema
    customer = _q(cols.customer_id)
    exprs = [
        f"{_customer_key(customer, schema[cols.customer_id])} AS rg_cust",
        f"{_bad_id(customer, schema[cols.customer_id])} AS rg_bad_id",
        *_date_exprs(_q(cols.order_date), schema[cols.order_date]),
        f"{_exact_amount(src)} AS rg_exact",
        f"{_bad_amount(src)} AS rg_bad_amount",
        f"{_prefixed(src)} AS rg_prefixed",
        f"{_not_positive(src)} AS rg_nonpos",
        f"{_missing_text(cols.product_id, schema)} AS rg_no_product",
    ]
    if cols.order_id is not None:
        exprs.append(f"{_text_key(_q(cols.order_id), schema[cols.order_id])} AS rg_ord")
    if cols.currency is not None:
        exprs.append(f"{_text_key(_q(cols.currency), schema[cols.currency])} AS rg_cur")
    exprs += [f"{_q(a)} AS rg_attr_{i}" for i, a in enumerate(src.attributes)]
    names = ", ".join(_q(c) for c in schema)
    return (
        f"SELECT {', '.join(exprs)}, COUNT(*) AS rg_copies\nFROM {src.relation} AS src\n"
        f"GROUP BY {names}"
    )


def _divisor(src: SqlSource) -> int:
    """10^(digits the exact amount has beyond the currency's minor unit)."""
    scale = PRICE_SCALE if src.columns.amount else PRICE_SCALE + QUANTITY_SCALE
    return 10 ** max(scale - src.minor_digits, 0)


def _amount(src: SqlSource) -> str:
    """amount_minor: the exact line value `rg_exact` rounded half to even to the minor unit."""
    divisor, exact = _divisor(src), "rg_exact"
    rest = f"MOD({exact}, {divisor})"  # takes the sign of `exact` on every engine
    # (exact - rest) / divisor is whole; ROUND keeps it exact where the engine divides in
    # floating point (DuckDB), before the cast.
    quotient = f"CAST(ROUND(({exact} - {rest}) / {divisor}) AS BIGINT)"
    # Half to even: away from zero past the half, and at the half only from an odd quotient.
    away = (
        f"2 * ABS({rest}) > {divisor} OR (2 * ABS({rest}) = {divisor} AND MOD({quotient}, 2) <> 0)"
    )
    sign = f"CASE WHEN {rest} < 0 THEN -1 ELSE 1 END"
    return f"{quotient} + CASE WHEN {away} THEN {sign} ELSE 0 END"


def _is_return(src: SqlSource) -> str:
    """Cancellation lines: order ids with the prefix; without ids or prefix, negative lines.

    A line is negative when its rounded amount is: 2 x exact < -divisor (half a unit rounds to
    the even 0).
    """
    if _uses_prefix(src):
        return "rg_prefixed"
    return f"CASE WHEN 2 * rg_exact < -{_divisor(src)} THEN 1 ELSE 0 END"


def _uses_prefix(src: SqlSource) -> bool:
    # Integer order ids stay integers in read.py: they cannot carry a prefix.
    order_id = src.columns.order_id
    if order_id is None or not src.cleaning.cancellation_prefix:
        return False
    return not src.schema[order_id].is_integer()


def _prefixed(src: SqlSource) -> str:
    order_id = src.columns.order_id
    if order_id is None or not _uses_prefix(src):
        return "0"
    prefix, dtype = src.cleaning.cancellation_prefix, src.schema[order_id]
    order = _text_key(_q(order_id), dtype)
    if dtype != pl.String:
        order = f"CAST({order} AS VARCHAR(64))"
    return f"CASE WHEN SUBSTR({order}, 1, {len(prefix)}) = '{prefix}' THEN 1 ELSE 0 END"


def _customer_key(col: str, dtype: pl.DataType) -> str:
    """The grouping key of a customer; pushdown.py turns it into read.py's form."""
    if dtype.is_float():  # a fraction, or 2^53 and above: digits were lost (an input error)
        return f"CASE WHEN {_whole(col)} THEN {col} END"
    return _text_key(col, dtype)


def _bad_id(col: str, dtype: pl.DataType) -> str:
    if dtype.is_float():
        return f"CASE WHEN {col} IS NOT NULL AND NOT ({_whole(col)}) THEN 1 ELSE 0 END"
    return "0"


def _whole(col: str) -> str:
    return f"ABS({col}) < {MAX_EXACT_FLOAT_ID} AND {col} = FLOOR({col})"


def _text_key(col: str, dtype: pl.DataType) -> str:
    """Text trimmed, empty as missing (read.py `_text`); other types as they are."""
    return f"NULLIF(TRIM({col}), '')" if dtype == pl.String else col


def _date_exprs(col: str, dtype: pl.DataType) -> list[str]:
    """The calendar day (timestamps with a zone are in the session's zone: period.timezone)."""
    if dtype == pl.Date:
        return [f"{col} AS rg_date", "0 AS rg_bad_date"]
    if isinstance(dtype, pl.Datetime):
        return [f"CAST({col} AS DATE) AS rg_date", "0 AS rg_bad_date"]
    text = f"NULLIF(TRIM({col}), '')"
    parsed = f"CAST(CAST({text} AS TIMESTAMP) AS DATE)"
    # Engines whose CAST fails on bad text stop with their error; lenient ones give NULL,
    # which is then counted as unparseable rather than missing.
    bad = f"CASE WHEN {text} IS NOT NULL AND {parsed} IS NULL THEN 1 ELSE 0 END"
    return [f"{parsed} AS rg_date", f"{bad} AS rg_bad_date"]


def _exact_amount(src: SqlSource) -> str:
    """The line's money as an exact integer count of 10^-6 (amount) or 10^-9 (q x price); NULL
    when a value is not money (`_money_tests`), as read.py `_number` makes it."""
    cols, schema = src.columns, src.schema
    if cols.amount is not None:
        exact = _fixed(_q(cols.amount), schema[cols.amount], PRICE_SCALE)
    else:
        quantity_column, price_column = cols.price_parts()
        quantity = _fixed(_q(quantity_column), schema[quantity_column], QUANTITY_SCALE)
        price = _fixed(_q(price_column), schema[price_column], PRICE_SCALE)
        exact = f"({quantity}) * ({price})"
    *each, last = _money_tests(src)  # the amount; or quantity, price, then their product
    guarded = f"CASE WHEN {last} THEN {exact} END"
    # nested, not one AND: an engine may evaluate every side of an AND, and the product of
    # values that are not money can fail
    return f"CASE WHEN {' AND '.join(each)} THEN {guarded} END" if each else guarded


def _bad_amount(src: SqlSource) -> str:
    """1 when a line's money is not money (`_money_tests`, in order), else 0."""
    return f"CASE {' '.join(f'WHEN NOT {t} THEN 1' for t in _money_tests(src))} ELSE 0 END"


def bad_amount_test(src: SqlSource) -> str:
    """`_bad_amount` as a condition to read (for messages: a query that finds the rows)."""
    return " OR ".join(f"NOT {t}" for t in _money_tests(src))


def _money_tests(src: SqlSource) -> list[str]:
    """The tests a line's money passes (read.py `_amount_exprs`): the amount, or the quantity,
    the unit price and their product, is a number below MONEY_LIMIT in size. NaN, infinity and
    larger values would stop the DECIMAL casts with the engine's own error, and could not be
    summed exactly."""
    cols, schema = src.columns, src.schema
    if cols.amount is not None:
        return [_is_money(_q(cols.amount))]
    quantity_column, price_column = cols.price_parts()
    quantity, price = _q(quantity_column), _q(price_column)
    if schema[quantity_column].is_float() or schema[price_column].is_float():
        product = f"{quantity} * {price}"
    else:  # as decimals: BIGINT x BIGINT overflows at 9.2e18
        product = f"CAST({quantity} AS DECIMAL(38,3)) * CAST({price} AS DECIMAL(38,6))"
    return [_is_money(quantity), _is_money(price), _is_money(product)]


def _is_money(value: str) -> str:
    """A number below MONEY_LIMIT in size (NULL stays NULL). NaN fails it: PostgreSQL, DuckDB
    and Spark order NaN above every number. No ABS: ABS of the smallest BIGINT overflows."""
    limit = f"{MONEY_LIMIT:.0f}"
    return f"({value} > -{limit} AND {value} < {limit})"


def _fixed(col: str, dtype: pl.DataType, scale: int) -> str:
    """A number as an integer count of 10^-scale, rounded half to even (read.py `_fixed`).

    The rounding is done in the column's own type (floating point stays floating point, which
    is exact for whole numbers below 2^53 and cheap), then cast once to DECIMAL(38,0).
    """
    if dtype.is_integer():
        return f"CAST({col} AS {_WIDE}) * {10**scale}"
    scaled = f"({col} * {10**scale})"
    floor = f"FLOOR({scaled})"
    frac = f"{scaled} - {floor}"
    odd = f"{floor} - 2 * FLOOR({floor} / 2)"
    rounded = f"{floor} + CASE WHEN {frac} > 0.5 THEN 1 WHEN {frac} < 0.5 THEN 0 ELSE {odd} END"
    return f"CAST({rounded} AS {_WIDE})"


def _not_positive(src: SqlSource) -> str:
    cols = src.columns
    if cols.amount is not None:
        test = f"{_q(cols.amount)} <= 0"
    else:
        quantity_column, price_column = cols.price_parts()
        test = f"{_q(quantity_column)} <= 0 OR {_q(price_column)} <= 0"
    return f"CASE WHEN {test} THEN 1 ELSE 0 END"


def _missing_text(name: str | None, schema: dict[str, pl.DataType]) -> str:
    if name is None:
        return "1"
    return f"CASE WHEN {_text_key(_q(name), schema[name])} IS NULL THEN 1 ELSE 0 END"


def _reason(src: SqlSource, period: tuple[dt.date | None, dt.date | None] | None) -> str:
    """clean.py's rules as one CASE, in `RULES` order (duplicates are counted by grouping)."""
    exclude = src.cleaning.returns == "exclude"
    is_return = "rg_return"
    conditions = {
        "duplicate": None,
        "missing_customer_id": "rg_cust IS NULL",
        "missing_date": "rg_date IS NULL AND rg_bad_date = 0",
        "unparseable_date": "rg_bad_date = 1",
        "missing_amount": "rg_exact IS NULL",
        "cancellation": f"{is_return} = 1" if exclude else None,
        "non_positive": f"{is_return} = 0 AND rg_nonpos = 1",
        "after_as_of": None,
        "before_window": None,
    }
    if period is not None:
        as_of, start = period
        conditions["after_as_of"] = f"rg_date > {_date(as_of)}"
        if start is not None:
            conditions["before_window"] = f"rg_date < {_date(start)}"
    unknown = set(RULES) - set(conditions)
    if unknown:  # a rule added to clean.py must be added here too
        raise NotImplementedError(f"no SQL for cleaning rule(s) {sorted(unknown)}")
    whens = [f"WHEN {conditions[r]} THEN '{r}'" for r in RULES if conditions.get(r)]
    return "CASE " + " ".join(whens) + " END"


def _q(name: str) -> str:
    """A double-quoted identifier (the SQL standard's; Spark is set to accept it)."""
    return '"' + name.replace('"', '""') + '"'


def _date(value: dt.date | None) -> str:
    return "CAST(NULL AS DATE)" if value is None else f"DATE '{value.isoformat()}'"
