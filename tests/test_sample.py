"""Tests for the synthetic transaction generator (reportgen.sample)."""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import reportgen
from reportgen.sample import (
    CUSTOMER_TYPES,
    NEW_CUSTOMER_DAYS,
    SampleSpec,
    generate_transactions,
    planted_types,
    write_sample,
)

UCI_SCHEMA = {
    "InvoiceNo": pl.String,
    "StockCode": pl.String,
    "Description": pl.String,
    "Quantity": pl.Int64,
    "InvoiceDate": pl.String,
    "UnitPrice": pl.Float64,
    "CustomerID": pl.Float64,
    "Country": pl.String,
}
SPEC = SampleSpec(rows=50_000, customers=2_500, seed=7)
SMALL = SampleSpec(rows=5_000, customers=250, seed=3)
CANCELLED = pl.col("InvoiceNo").str.starts_with("C")


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    """The 50k-row sample, generated once for the module."""
    return generate_transactions(SPEC)


@pytest.fixture(scope="module")
def profiles(frame: pl.DataFrame) -> pl.DataFrame:
    """Per planted customer: invoices, spend, first and last purchase, from the clean lines."""
    clean = frame.unique().filter(
        pl.col("CustomerID").is_not_null(), ~CANCELLED, pl.col("UnitPrice") > 0
    )
    per_customer = clean.group_by("CustomerID").agg(
        pl.col("InvoiceNo").n_unique().alias("invoices"),
        (pl.col("Quantity") * pl.col("UnitPrice")).sum().alias("spend"),
        pl.col("InvoiceDate").min().alias("first"),
        pl.col("InvoiceDate").max().alias("last"),
    )
    return planted_types(SPEC).join(per_customer, on="CustomerID", how="left")


def _medians(profiles: pl.DataFrame) -> dict[str, dict[str, object]]:
    """customer_type -> median of each profile column."""
    rows = (
        profiles.group_by("customer_type")
        .agg(
            pl.col("invoices", "spend").median(),
            (pl.col("spend") / pl.col("invoices")).median().alias("order_value"),
            # Medians of the date strings: the middle element once sorted (ISO text sorts as time).
            pl.col("first").sort().get(pl.len() // 2),
            pl.col("last").sort().get(pl.len() // 2),
        )
        .to_dicts()
    )
    return {row.pop("customer_type"): row for row in rows}


# --- determinism ------------------------------------------------------------------------------


def test_same_spec_gives_the_same_frame(frame: pl.DataFrame) -> None:
    assert_frame_equal(generate_transactions(SPEC), frame)


def test_same_spec_gives_the_same_planted_types() -> None:
    assert_frame_equal(planted_types(SMALL), planted_types(dataclasses.replace(SMALL)))


def test_another_seed_gives_other_data() -> None:
    first = generate_transactions(SMALL)
    other = generate_transactions(dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    assert not first.equals(other)
    assert not first["InvoiceDate"].equals(other["InvoiceDate"])
    assert not planted_types(SMALL).equals(planted_types(dataclasses.replace(SMALL, seed=4)))


# --- shape --------------------------------------------------------------------------------------


def test_columns_and_dtypes_are_uci(frame: pl.DataFrame) -> None:
    assert dict(frame.schema) == UCI_SCHEMA


def test_schema_equals_the_shipped_uci_file(frame: pl.DataFrame) -> None:
    shipped = Path(reportgen.__file__).parent / "data" / "online_retail.parquet"
    assert pl.read_parquet_schema(shipped) == dict(frame.schema)


@pytest.mark.parametrize(
    ("rows", "customers"), [(50_000, 2_500), (12_345, 678), (1_000, 1_000), (10, 3), (1, 1)]
)
def test_row_count_is_within_one_percent(rows: int, customers: int) -> None:
    height = generate_transactions(SampleSpec(rows=rows, customers=customers)).height
    assert abs(height - rows) <= 0.01 * rows


def test_every_customer_buys_and_planted_types_cover_them(frame: pl.DataFrame) -> None:
    planted = planted_types(SPEC)
    assert dict(planted.schema) == {"CustomerID": pl.Float64, "customer_type": pl.String}
    assert planted.height == SPEC.customers
    bought = frame["CustomerID"].drop_nulls().unique().sort()
    assert bought.equals(planted["CustomerID"].sort(), check_names=False)


def test_dates_parse_and_lie_in_the_range(frame: pl.DataFrame) -> None:
    ts = frame["InvoiceDate"].str.strptime(pl.Datetime, "%Y-%m-%d %H:%M:%S", strict=True)
    assert ts.null_count() == 0
    assert ts.dt.date().min() >= SPEC.start
    assert ts.dt.date().max() <= SPEC.end


def test_a_crowded_day_keeps_dates_in_range_and_distinct() -> None:
    # ~3,000 invoices per customer in one day: many clash at first and must be moved apart.
    day = datetime.date(2024, 2, 29)
    frame = generate_transactions(SampleSpec(rows=20_000, customers=2, start=day, end=day))
    assert frame["InvoiceDate"].str.slice(0, 10).unique().to_list() == ["2024-02-29"]
    invoices = frame.filter(pl.col("CustomerID").is_not_null())
    invoices = invoices.select("CustomerID", "InvoiceNo", "InvoiceDate").unique()
    assert invoices.select("CustomerID", "InvoiceDate").is_unique().all()


def test_invoice_numbers_increase_with_time(frame: pl.DataFrame) -> None:
    invoices = (
        frame.select(
            pl.col("InvoiceNo").str.strip_prefix("C").cast(pl.Int64).alias("number"),
            "InvoiceDate",
        )
        .unique()
        .sort("number")
    )
    assert invoices["number"].is_unique().all()  # one date per invoice
    assert invoices["InvoiceDate"].is_sorted()


def test_rows_are_ordered_by_invoice_number(frame: pl.DataFrame) -> None:
    assert frame["InvoiceNo"].str.strip_prefix("C").cast(pl.Int64).is_sorted()


def test_a_customers_invoices_have_distinct_timestamps(frame: pl.DataFrame) -> None:
    invoices = frame.filter(pl.col("CustomerID").is_not_null()).select(
        "CustomerID", "InvoiceNo", "InvoiceDate"
    )
    invoices = invoices.unique()
    assert invoices.select("CustomerID", "InvoiceDate").is_unique().all()


def test_an_invoice_has_one_customer_and_about_three_lines(frame: pl.DataFrame) -> None:
    per_invoice = (
        frame.unique()
        .group_by("InvoiceNo")
        .agg(pl.len().alias("lines"), pl.col("CustomerID", "Country").n_unique())
    )
    assert per_invoice["CustomerID"].max() == 1
    assert per_invoice["Country"].max() == 1
    assert 2.5 <= per_invoice["lines"].mean() <= 3.5
    assert per_invoice["lines"].min() == 1


def test_catalogue_has_a_few_hundred_codes_with_fixed_prices(frame: pl.DataFrame) -> None:
    priced = frame.filter(pl.col("UnitPrice") > 0)
    per_code = priced.group_by("StockCode").agg(pl.col("UnitPrice", "Description").n_unique())
    assert 200 <= per_code.height <= 1_000
    assert per_code["UnitPrice"].max() == 1
    assert per_code["Description"].max() == 1


def test_prices_have_two_decimals(frame: pl.DataFrame) -> None:
    cents = frame["UnitPrice"] * 100
    assert (cents - cents.round()).abs().max() < 1e-6


def test_customer_ids_look_like_uci(frame: pl.DataFrame) -> None:
    ids = frame["CustomerID"].drop_nulls()
    assert (ids == ids.round()).all()
    assert ids.min() >= 12_346


# --- dirt -------------------------------------------------------------------------------------


def test_dirt_shares(frame: pl.DataFrame) -> None:
    n = frame.height
    assert 0.07 <= frame["CustomerID"].null_count() / n <= 0.09
    assert 0.015 <= frame.filter(CANCELLED).height / n <= 0.025
    assert 0.0005 <= (frame["UnitPrice"] == 0).sum() / n <= 0.0015
    assert 0.0002 <= (frame["UnitPrice"] < 0).sum() / n <= 0.0008
    assert 0.008 <= (n - frame.unique().height) / n <= 0.012


def test_duplicates_are_whole_identical_rows_next_to_their_original(frame: pl.DataFrame) -> None:
    repeated = frame.with_row_index().filter(pl.struct(pl.all().exclude("index")).is_duplicated())
    # Each duplicate is its original's neighbour: pairs of consecutive row numbers.
    index = repeated["index"].to_list()
    assert len(index) % 2 == 0 and len(index) > 0
    assert all(b == a + 1 for a, b in zip(index[::2], index[1::2], strict=True))


def test_dirt_is_reproducible() -> None:
    def dirt(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_row_index().filter(
            pl.col("CustomerID").is_null() | CANCELLED | (pl.col("UnitPrice") <= 0)
        )

    assert_frame_equal(dirt(generate_transactions(SMALL)), dirt(generate_transactions(SMALL)))


def test_cancellations_are_c_invoices_with_negative_quantity(frame: pl.DataFrame) -> None:
    cancels = frame.filter(CANCELLED)
    assert cancels.height > 0
    assert (cancels["Quantity"] < 0).all()
    assert cancels["CustomerID"].null_count() == 0
    assert cancels["InvoiceNo"].str.contains(r"^C\d+$").all()
    # Only cancellation lines carry a negative quantity.
    assert (frame.filter(~CANCELLED)["Quantity"] > 0).all()


def test_cancellations_copy_an_earlier_purchase_of_the_same_customer(
    frame: pl.DataFrame,
) -> None:
    same = ["CustomerID", "StockCode", "Description", "UnitPrice", "Country"]
    cancels = frame.filter(CANCELLED).unique().with_columns(-pl.col("Quantity"))
    purchases = frame.filter(~CANCELLED).unique()
    matched = cancels.join(purchases, on=[*same, "Quantity"], suffix="_bought").filter(
        pl.col("InvoiceDate_bought") < pl.col("InvoiceDate")
    )
    assert matched.select(*same, "InvoiceNo").unique().height == cancels.height
    assert (cancels["UnitPrice"] > 0).all()


# --- planted customer types --------------------------------------------------------------------


def test_customer_type_shares() -> None:
    assert math.isclose(sum(CUSTOMER_TYPES.values()), 1.0)
    counts = dict(planted_types(SPEC)["customer_type"].value_counts().iter_rows())
    assert set(counts) == set(CUSTOMER_TYPES)
    for name, share in CUSTOMER_TYPES.items():
        assert counts[name] == pytest.approx(share * SPEC.customers, abs=1)


def test_planted_types_differ_in_frequency(profiles: pl.DataFrame) -> None:
    med = _medians(profiles)
    assert med["champions"]["invoices"] > med["loyal"]["invoices"] > med["occasional"]["invoices"]
    assert med["champions"]["invoices"] >= 4 * med["big_spenders"]["invoices"]
    assert med["new"]["invoices"] <= med["occasional"]["invoices"]


def test_planted_types_differ_in_recency(profiles: pl.DataFrame) -> None:
    med = _medians(profiles)
    assert med["churned"]["last"] < med["occasional"]["last"] < med["champions"]["last"]
    assert med["loyal"]["last"] < med["champions"]["last"]
    # Churned customers buy only in the first part of the range.
    churned = profiles.filter(pl.col("customer_type") == "churned")
    assert churned["last"].max() < str(SPEC.start + (SPEC.end - SPEC.start) * 0.6)


def test_new_customers_first_buy_in_the_last_days(profiles: pl.DataFrame) -> None:
    new = profiles.filter(pl.col("customer_type") == "new")
    cutoff = SPEC.end - datetime.timedelta(days=NEW_CUSTOMER_DAYS - 1)
    assert new["first"].min() >= str(cutoff)
    others = profiles.filter(pl.col("customer_type") != "new")
    assert others["first"].min() < str(cutoff)


def test_planted_types_differ_in_spend(profiles: pl.DataFrame) -> None:
    med = _medians(profiles)
    assert med["champions"]["spend"] > med["loyal"]["spend"] > med["occasional"]["spend"]
    assert med["big_spenders"]["order_value"] > 5 * med["champions"]["order_value"]
    assert med["champions"]["order_value"] > med["occasional"]["order_value"]
    assert med["big_spenders"]["spend"] > 10 * med["occasional"]["spend"]


# --- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sample.parquet", "SAMPLE.PARQUET"])
def test_write_parquet_round_trip(tmp_path: Path, name: str) -> None:
    written = write_sample(SMALL, tmp_path / name)
    assert written == tmp_path / name
    assert_frame_equal(pl.read_parquet(written), generate_transactions(SMALL))


def test_write_csv_round_trip(tmp_path: Path) -> None:
    written = write_sample(SMALL, tmp_path / "out" / "sample.csv")
    text = written.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(UCI_SCHEMA)
    back = pl.read_csv(written, schema=UCI_SCHEMA)
    assert_frame_equal(back, generate_transactions(SMALL))
    as_text = pl.read_csv(written, infer_schema=False)
    assert as_text["CustomerID"].drop_nulls()[0].endswith(".0")  # UCI style: 17850.0


def test_format_argument_beats_the_suffix(tmp_path: Path) -> None:
    written = write_sample(SMALL, tmp_path / "sample.dat", fmt="csv")
    assert pl.read_csv(written, schema=UCI_SCHEMA).height == generate_transactions(SMALL).height
    assert [p.name for p in tmp_path.iterdir()] == ["sample.dat"]  # no temporary file left


def test_unknown_suffix_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        write_sample(SMALL, tmp_path / "sample.xlsx")
    assert str(err.value) == (
        "Cannot tell the sample format from the file name 'sample.xlsx': "
        "use a .csv or .parquet suffix, or pass fmt='csv' or fmt='parquet'"
    )
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        write_sample(SMALL, tmp_path / "sample.csv", fmt="json")  # type: ignore[arg-type]
    assert str(err.value) == "Unknown sample format 'json': expected 'csv' or 'parquet'"
    assert list(tmp_path.iterdir()) == []


# --- invalid specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, "rows: expected an integer >= 1, got 0"),
        ({"customers": 0}, "customers: expected an integer >= 1, got 0"),
        (
            {"rows": 10, "customers": 11},
            (
                "customers: expected at most rows (10), got 11 "
                "(every customer needs at least one invoice line)"
            ),
        ),
        (
            {"start": datetime.date(2024, 1, 2), "end": datetime.date(2024, 1, 1)},
            "end: expected a date on or after start (2024-01-02), got 2024-01-01",
        ),
        ({"seed": -1}, "seed: expected an integer >= 0, got -1"),
        ({"rows": 1.5}, "rows: expected an integer >= 1, got 1.5"),
    ],
)
def test_invalid_spec_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        SampleSpec(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == f"Invalid SampleSpec: {message}"


def test_all_spec_problems_are_reported_at_once() -> None:
    with pytest.raises(ValueError) as err:
        SampleSpec(rows=0, customers=-2, end=datetime.date(2000, 1, 1))
    assert str(err.value) == (
        "Invalid SampleSpec: rows: expected an integer >= 1, got 0; "
        "customers: expected an integer >= 1, got -2; "
        "end: expected a date on or after start (2023-01-01), got 2000-01-01"
    )


def test_too_many_invoices_for_the_range_is_refused() -> None:
    day = datetime.date(2024, 1, 1)
    with pytest.raises(ValueError, match="more invoices than there are seconds"):
        generate_transactions(SampleSpec(rows=400_000, customers=1, start=day, end=day))
