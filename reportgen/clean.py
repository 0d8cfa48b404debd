"""Cleaning: decide, for every row read, whether it is kept or which rule drops it.

Nothing is removed here: each row gets `_reason`, the first rule (in `RULES` order) that drops
it, or null when it is kept. That single column feeds both the audit (rows and revenue per
rule, which therefore reconcile exactly with what was read) and the RFM stage.

Duplicates come first: an exact copy of an earlier row is a copy whatever else is wrong with
it, which is also how the published figure for the sample (5,268 duplicate rows) is counted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from .config import CleaningSection
from .errors import InputDataError
from .period import PeriodRequest
from .read import FILE, ROW, SOURCE_PREFIX, Transactions

log = logging.getLogger(__name__)

RULES: dict[str, str] = {
    "duplicate": "exact duplicate of an earlier row",
    "missing_customer_id": "no customer id",
    "missing_date": "no order date",
    "unparseable_date": "order date matching none of the formats",
    "missing_amount": "no amount",
    "cancellation": "cancellation or return line",
    "non_positive": "quantity, price or amount not positive",
    "after_as_of": "order after the as-of date",
    "before_window": "order before the window",
}
REASON = "_reason"
CANDIDATE = "_candidate"  # the row's hash occurs more than once: it may be a duplicate
# The rule as an enum: grouping on it is grouping on a small integer, not on text.
REASON_DTYPE = pl.Enum(list(RULES))
IS_RETURN = "_is_return"
AS_OF = "_as_of"


_NO_KEYS = pl.Series("key", [], dtype=pl.UInt64)  # row keys: see `_row_key`


@dataclass(frozen=True)
class RuleCount:
    """Rows and revenue one cleaning rule dropped, with a few masked example rows."""

    rule: str
    description: str
    rows: int
    revenue_minor: int
    examples: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class CleaningAudit:
    """What was read, what each rule dropped, what was kept: reconciled to the minor unit."""

    rows_read: int
    revenue_read_minor: int
    rules: list[RuleCount]
    rows_kept: int
    revenue_kept_minor: int
    returns_netted_rows: int
    returns_netted_minor: int
    first_date: dt.date | None
    last_date: dt.date | None
    missing_values: dict[str, int]

    @property
    def reconciles(self) -> bool:
        """Revenue read equals revenue kept plus the revenue each rule dropped."""
        dropped = sum(r.revenue_minor for r in self.rules)
        rows = sum(r.rows for r in self.rules)
        return (
            self.revenue_read_minor == self.revenue_kept_minor + dropped
            and self.rows_read == self.rows_kept + rows
        )


@dataclass(frozen=True)
class Cleaned:
    """The annotated lazy frame: every row read, with `_reason`, `_is_return` and `_as_of`, and
    what the first pass found: the rows read, the value checks, the example rows' keys and
    perhaps the rows' groups.

    Until `with_duplicates` names the exact duplicates, `_reason` judges every row by the other
    rules and `_candidate` marks the rows whose hash occurs more than once (the only rows that
    can be duplicates); see `settle_duplicates`.
    """

    frame: pl.LazyFrame
    transactions: Transactions
    window_days: int | None
    as_of: dt.date | None = None  # None when `latest` found no clean purchase
    compared: tuple[str, ...] | None = None  # the columns the duplicate rule compares (None: off)
    whole_rows: bool = True  # it compares every column, so a copy is in its original's group
    rows_read: int = 0
    checks: pl.DataFrame = field(default_factory=pl.DataFrame)  # one row: see `_checks`
    shown_keys: pl.Series = field(default_factory=lambda: _NO_KEYS)  # the example rows' keys
    candidate_keys: pl.Series = field(default_factory=lambda: _NO_KEYS)  # see `_candidate`
    # the rows grouped as `line_groups` does but by their content rules alone, when the first
    # pass grouped them (see `annotate`); `first_pass_groups` applies the period rules
    content_groups: pl.DataFrame | None = None

    def with_duplicates(self, keys: pl.Series) -> Cleaned:
        """The frame with the duplicate rule applied: `keys` are the row keys of the copies."""
        if keys.is_empty():
            return self
        copy = _row_key().is_in(keys.implode())
        frame = self.frame.with_columns(
            pl.when(copy).then(_rule("duplicate")).otherwise(pl.col(REASON)).alias(REASON)
        )
        return dataclasses.replace(self, frame=frame)


def annotate(tx: Transactions, cfg: CleaningSection, period: PeriodRequest) -> Cleaned:
    """Add the cleaning decision of every row (lazily) and the period's `as_of`.

    Some things need the whole table before a row can be judged or shown: which rows are
    duplicates, for `as_of: latest` the last clean purchase, and which rows are the first of
    each rule. A first pass (`_first_pass`) finds them with the value checks; the frame
    returned then judges every row from its own values and literals, so it streams whatever the
    size of the input. The duplicates among the candidates are settled exactly after the main
    pass (`settle_duplicates`). A CSV source of up to `CSV_PARSED_ONCE_MAX_BYTES` is parsed
    once, here, and both passes read the rows from memory. The first pass also groups the
    rows of a Parquet source or of a larger CSV file (`_groups_in_first_pass`,
    `Cleaned.content_groups`), so that the main pass has only the example rows and the
    duplicate candidates left to read.
    """
    frame = _judged(tx.frame, tx, cfg)
    if _parse_once(tx):
        frame = frame.collect().lazy()
    compared = _compared_row(tx, cfg)
    group = _groups_in_first_pass(tx, cfg, frame)
    # `as_of: latest` is the last purchase the content rules keep: without a window, the period
    # rules then drop none of those, and only the other rows can be shown as examples
    purchases_shown = period.as_of is not None or period.window_days is not None

    def judged_files(first: int, last: int) -> pl.LazyFrame:  # see Transactions.files_frame
        return _judged(tx.files_frame(first, last), tx, cfg)

    runs = _groups_may_repeat(cfg.duplicates == "all", compared)
    first = _first_pass(frame, judged_files, compared, tx if group else None, purchases_shown,
                        runs)  # fmt: skip
    # Copies of a row share its content, so the duplicates could not move `latest`.
    as_of = period.as_of if period.as_of is not None else first.latest
    shown = first.shown_keys(as_of, period.window_days, cfg.examples_per_rule)
    candidate = (
        _row_key().is_in(first.candidates.implode()) if len(first.candidates) else pl.lit(False)
    )
    frame = frame.with_columns(
        pl.lit(as_of, dtype=pl.Date).alias(AS_OF), candidate.alias(CANDIDATE)
    )
    frame = frame.with_columns(
        pl.coalesce(pl.col(REASON), _period_reason(period.window_days)).alias(REASON)
    )
    return Cleaned(frame, tx, period.window_days, as_of, compared, cfg.duplicates == "all",
                   first.rows, first.checks, shown, first.candidates, first.groups)  # fmt: skip


# Parsing CSV text costs more than the rest of a pass (10M rows, 421 MB: the first pass took
# 2.0 s, the second 2.7 s, of a 6.1 s stage), so a CSV source up to this size is parsed once
# and kept in memory for both passes (10M rows: 4.7 s, peak 2.6 GB instead of 2.2 GB; the rows
# take about 1.8 bytes per byte of text). A larger CSV file, and Parquet, are read once in
# chunks, grouped as they are read (see FIRST_PASS_CHUNK_ROWS): 10M rows of CSV that way took
# 5.0 s at a peak of 1.45 GB; keeping all the Parquet rows would lift its 10M peak past 1.5 GB.
CSV_PARSED_ONCE_MAX_BYTES = 512 * 2**20  # about 12M rows of the benchmark's 42 bytes


def _judged(rows: pl.LazyFrame, tx: Transactions, cfg: CleaningSection) -> pl.LazyFrame:
    """`rows` with their day, return flag and the content rule that drops them (if any)."""
    rows = rows.with_columns(
        pl.col("order_ts").dt.date().alias("order_date"),
        _is_return(tx, cfg).alias(IS_RETURN),
    )
    return rows.with_columns(_content_reason(cfg).alias(REASON))


def _parse_once(tx: Transactions) -> bool:
    if tx.source.format != "csv":
        return False
    return sum(Path(f).stat().st_size for f in tx.source.files) <= CSV_PARSED_ONCE_MAX_BYTES


# Grouping the rows in the first pass, which holds them anyway, saves reading and judging them
# again: 10M rows of Parquet 3.25 -> 2.9 s, 50M 19 -> 16-17 s; 50M rows of CSV (2.2 GB, too
# large to parse once) 43.8 -> 24 s at the same peak (4.1 GB), as the file is parsed once more
# (for the example rows and candidates) instead of three times. It reads them in chunks of
# this many rows, so that it holds the grouped columns (about 45 bytes a row) of one chunk at a
# time (10M rows of Parquet peak at 1.05 GB, as with two reads; in chunks of 10M, 1.24 GB).
# Rows already in memory (a CSV parsed once, a workbook) are not read again anyway, and
# grouping them in the first pass was slower.
FIRST_PASS_CHUNK_ROWS = 5_000_000


def _groups_in_first_pass(tx: Transactions, cfg: CleaningSection, frame: pl.LazyFrame) -> bool:
    """Whether the first pass groups the rows: a Parquet source or a CSV file too large to parse
    once, and the duplicates settled by taking the copies out of their groups (see
    `settle_duplicates`). A copy of a whole row is in its original's group; with `duplicates`
    comparing some columns, the copies' groups are looked up, which needs each group whole (in
    one chunk: a Parquet source of one chunk, counted from its metadata) and the candidates'
    attributes left out (the second read does that)."""
    if tx.source.format == "csv" and not _parse_once(tx):
        return cfg.duplicates in ("all", "off")
    if tx.source.format != "parquet":
        return False
    if cfg.duplicates in ("all", "off"):
        return True
    return not tx.attributes and _rows(frame) <= FIRST_PASS_CHUNK_ROWS


def _rows(frame: pl.LazyFrame) -> int:
    return frame.select(pl.len()).collect().item()  # Parquet: from the files' metadata


def _is_return(tx: Transactions, cfg: CleaningSection) -> pl.Expr:
    """Return lines: order ids with the cancellation prefix; without order ids, negative lines."""
    text_ids = tx.frame.collect_schema()["order_id"] == pl.String
    if tx.has_order_id and cfg.cancellation_prefix and text_ids:
        return pl.col("order_id").str.starts_with(cfg.cancellation_prefix).fill_null(False)
    return (pl.col("amount_minor") < 0).fill_null(False)


def _compared_row(tx: Transactions, cfg: CleaningSection) -> tuple[str, ...] | None:
    """The source columns the duplicate rule compares (None: the rule is off)."""
    if cfg.duplicates == "off":
        return None
    names = tx.source.columns if cfg.duplicates == "all" else cfg.duplicates
    unknown = [n for n in names if n not in tx.source.columns]
    if unknown:
        raise InputDataError(
            f"{tx.source.location}: cleaning.duplicates names column(s) not in the data: "
            f"{', '.join(unknown)}. The data has: {', '.join(tx.source.columns)}"
        )
    return tuple(SOURCE_PREFIX + c for c in names)


def _row_hash(columns: tuple[str, ...]) -> pl.Expr:
    """One 64-bit hash of the compared columns, folded from each column's hash (on 10M rows
    0.3 s, where hashing them as one struct took 0.4-1 s). Equal rows hash equal; unequal rows
    that collide only become candidates, which are compared exactly."""
    folded = pl.col(columns[0]).hash(seed=0)
    for seed, column in enumerate(columns[1:], start=1):
        folded = (folded * _MIX) ^ pl.col(column).hash(seed=seed)  # wraps around 2^64
    return folded


_MIX = pl.lit(0x9E3779B97F4A7C15, dtype=pl.UInt64)  # odd: multiplying by it loses no bits


@dataclass(frozen=True)
class FirstPass:
    """What one read of every row tells before the rows can be judged and shown."""

    candidates: pl.Series  # row keys of the rows whose hash occurs more than once
    latest: dt.date | None  # the last day with a purchase the content rules keep
    rows: int
    checks: pl.DataFrame  # one row: see `_checks`
    judged: pl.DataFrame  # per row that may be shown: its key, content rule and day
    groups: pl.DataFrame | None  # see `Cleaned.content_groups`

    def shown_keys(
        self, as_of: dt.date | None, window_days: int | None, per_rule: int
    ) -> pl.Series:
        """The keys of the rows each rule shows as examples: its first rows in the file, except
        duplicate candidates (`settle_duplicates` shows those it drops)."""
        judged = self.judged.lazy().with_columns(pl.lit(as_of, dtype=pl.Date).alias(AS_OF))
        if len(self.candidates):
            judged = judged.filter(~pl.col("_key").is_in(self.candidates.implode()))
        reason = pl.coalesce(pl.col(REASON), _period_reason(window_days))
        shown = (
            judged.filter(reason.is_not_null())
            .group_by(reason.alias(REASON))
            .agg(pl.col("_key").bottom_k(per_rule))
        )
        return shown.collect()["_key"].explode().drop_nulls().rename("key")


_FileRange = Callable[[int, int], pl.LazyFrame]  # files `first` to `last` (excluded)


def _first_pass(
    frame: pl.LazyFrame, judged_files: _FileRange, compared: tuple[str, ...] | None,
    grouped: Transactions | None, purchases_shown: bool, runs: bool,
) -> FirstPass:  # fmt: skip
    """One read of the rows: their hashes give the duplicate candidates (rows whose hash occurs
    more than once: sorting 8-byte hashes is far cheaper than grouping whole rows); each row's
    content rule, day and return flag give `latest` and the example rows (of the kept purchases
    only when `purchases_shown`); flags give the value checks. About 30 bytes a row are kept
    until the hashes are sorted, then 14 (2-4 when the kept purchases are not shown). With
    `grouped`, the rows are also grouped by customer, order, day, content rule and return flag,
    a chunk of rows at a time (a group split across chunks is then in several rows, which every
    later aggregate sums), with `runs` as runs of consecutive rows where that pays
    (`_grouped_runs`). `frame`: the judged rows; `judged_files`: those of a range of Parquet
    files (`_chunks`).
    """
    group_columns = _grouped_columns(grouped) if grouped is not None else []
    columns = [
        _row_key().alias("_key"), REASON, "order_date", IS_RETURN, *_CHECKED_PER_ROW,
        *([_row_hash(compared).alias("_hash")] if compared is not None else []),
        *[c for c in group_columns if c not in (REASON, "order_date", IS_RETURN)],
    ]  # fmt: skip
    chunks = _chunks(frame, judged_files, columns, grouped)
    parts = [_read_chunk(c, grouped, purchases_shown, runs) for c in chunks]
    hashed = [p.hashed for p in parts if p.hashed is not None]
    groups = [p.groups for p in parts if p.groups is not None]
    return FirstPass(
        candidates=_candidates(pl.concat(hashed)) if hashed else _NO_KEYS,
        latest=max((p.latest for p in parts if p.latest is not None), default=None),
        rows=sum(p.rows for p in parts),
        checks=_summed_checks([p.checks for p in parts]),
        judged=pl.concat([p.judged for p in parts]),
        groups=pl.concat(groups) if groups else None,
    )


@dataclass(frozen=True)
class _ChunkRead:
    """What the first pass keeps of one chunk of rows (see `_first_pass`)."""

    rows: int
    latest: dt.date | None
    judged: pl.DataFrame
    hashed: pl.DataFrame | None  # the row keys and hashes, when duplicates are compared
    checks: pl.DataFrame
    groups: pl.DataFrame | None


def _read_chunk(
    rows: pl.LazyFrame, grouped: Transactions | None, purchases_shown: bool, runs: bool
) -> _ChunkRead:
    read = rows.collect()
    purchase = pl.col(REASON).is_null() & ~pl.col(IS_RETURN)
    shown = read.select("_key", REASON, "order_date", IS_RETURN)
    shown = shown if purchases_shown else shown.filter(~purchase)
    groups = None
    if grouped is not None:
        groups = _grouped_runs(read.select(_grouped_columns(grouped)), grouped, runs)
    return _ChunkRead(
        rows=read.height,
        latest=read.select(pl.col("order_date").filter(purchase).max()).item(),
        judged=shown.drop(IS_RETURN),
        hashed=read.select("_key", "_hash") if "_hash" in read.columns else None,
        checks=_checks(read),
        groups=groups,
    )


# Consecutive rows with the same keys (the lines of an order, as most files list them) are
# summed as one run where there are at most this many runs per row; else the rows are grouped by
# their keys (a file listing the lines by product, say, would leave almost a run per row).
MAX_RUNS_PER_ROW = 0.5


def _groups_may_repeat(whole_rows: bool, compared: tuple[str, ...] | None) -> bool:
    """Whether the grouped lines may hold a group in several rows (as runs): yes when the
    copies of whole rows are taken out by rows of minus their count, or there are no copies;
    copies compared on some columns are taken out of their group by a join on its keys."""
    return whole_rows or compared is None


def _grouped_runs(rows: pl.DataFrame, tx: Transactions, runs: bool) -> pl.DataFrame:
    """`_grouped` for rows in file order, as runs of consecutive rows with the same keys where
    `runs` allows it and MAX_RUNS_PER_ROW holds: a group may then be in several runs, which
    every later aggregate sums. Finding where runs start and summing between the starts is
    cheaper than hashing the keys (a chunk of 5M rows, 1.7M groups: 0.2 s against 0.8 s)."""
    if not runs:
        return _grouped_by_key(rows, tx)
    keys = _group_keys(tx)
    starts = rows.select(_run_starts(keys)).to_series()
    if starts.sum() > MAX_RUNS_PER_ROW * len(starts):
        return _grouped_by_key(rows, tx)
    if tx.attributes:  # their smallest value per run needs a group-by (0.5 s a chunk)
        return _grouped_by_run_number(rows, starts.cum_sum().set_sorted(), tx)
    return _summed_runs(rows, starts, keys)


def _run_starts(keys: list[str]) -> pl.Expr:
    """True on the rows whose keys differ from the row before's, and on the first row."""
    differs = [pl.col(k).ne_missing(pl.col(k).shift()) for k in keys]
    return pl.any_horizontal(pl.int_range(pl.len()) == 0, *differs).alias("_start")


def _summed_runs(rows: pl.DataFrame, starts: pl.Series, keys: list[str]) -> pl.DataFrame:
    """Each run's first row, its row count and its money: the running total of the money
    before each start, subtracted from the next start's (a group-by on the run number took
    0.5 s for a chunk of 5M rows, this 0.2 s)."""
    money = pl.col("amount_minor").fill_null(0)  # a missing amount counts as 0, as in `_grouped`
    before = (money.cum_sum() - money).alias("_before")  # the money of the rows before
    first_rows = rows.lazy().with_row_index("_row").with_columns(before).filter(starts)
    # the next run's start, or after the last run the chunk's end
    next_row = pl.col("_row").shift(-1, fill_value=rows.height)
    next_before = pl.col("_before").shift(-1, fill_value=rows["amount_minor"].sum())
    summed = first_rows.select(
        *keys,
        (next_row - pl.col("_row")).cast(pl.Int64).alias("rows"),
        (next_before - pl.col("_before")).alias("amount_minor"),
    ).collect()
    # in one piece: the filter leaves many (50M rows: 1,470 a column), and the later steps then
    # peaked at 3.16 GB, not 2.48
    return summed.rechunk()


def _grouped_by_run_number(rows: pl.DataFrame, run: pl.Series, tx: Transactions) -> pl.DataFrame:
    by_run = rows.with_columns(run.alias("_run")).group_by("_run")
    first_keys = [pl.col(k).first() for k in _group_keys(tx)]
    return by_run.agg(*first_keys, *_group_totals(tx, pl.lit(True))).drop("_run")


def _grouped_by_key(rows: pl.DataFrame, tx: Transactions) -> pl.DataFrame:
    # the streaming engine groups a frame in memory twice as fast (10M rows: 0.6 s, 1.4 s)
    return _grouped(rows.lazy(), tx, pl.lit(True)).collect(engine="streaming")


def _chunks(
    frame: pl.LazyFrame, judged_files: _FileRange, columns: list[str | pl.Expr],
    grouped: Transactions | None,
) -> Iterable[pl.LazyFrame]:  # fmt: skip
    """`columns` of the rows, all at once or, when the first pass groups them, FIRST_PASS_CHUNK_ROWS
    rows at a time: for Parquet, runs of whole files and slices of a file (polars reads only
    their rows; a slice of the files' union would read every row before it); for a CSV file,
    batches as it is parsed (a slice would parse the lines before it again)."""
    if grouped is None:
        return [frame.select(columns)]
    if grouped.source.format == "csv":
        rows = frame.select(columns)
        return (b.lazy() for b in rows.collect_batches(chunk_size=FIRST_PASS_CHUNK_ROWS))
    counts = list(grouped.file_rows) or [_rows(frame)]  # a folder's were read with its files
    return [
        _chunk_frame(chunk, counts, judged_files).select(columns)
        for chunk in _pieces(counts, FIRST_PASS_CHUNK_ROWS)
    ]


def _chunk_frame(
    chunk: list[tuple[int, int, int]], counts: list[int], judged_files: _FileRange
) -> pl.LazyFrame:
    """The rows of one chunk of `_pieces`: its whole files read together (one scan when they
    share a schema: a chunk of 500 files of 10k rows, 3.7 -> 0.38 s), a part of a file as a
    slice of it (only the first and last piece of a chunk can be one)."""
    frames = []
    for whole, run in itertools.groupby(chunk, key=lambda piece: piece[2] == counts[piece[0]]):
        pieces = list(run)
        if whole:
            frames.append(judged_files(pieces[0][0], pieces[-1][0] + 1))
        else:
            frames += [judged_files(f, f + 1).slice(start, rows) for f, start, rows in pieces]
    return pl.concat(frames)


def _pieces(counts: list[int], size: int) -> list[list[tuple[int, int, int]]]:
    """Chunks of at most `size` rows of files of `counts` rows, each chunk a list of (file, first
    row, rows) pieces: small files stacked whole, a larger file in slices."""
    chunks: list[list[tuple[int, int, int]]] = []
    chunk: list[tuple[int, int, int]] = []
    room = size
    for file, rows in enumerate(counts):
        start = 0
        while True:
            taken = min(room, rows - start)
            chunk.append((file, start, taken))
            start, room = start + taken, room - taken
            if room == 0:
                chunks.append(chunk)
                chunk, room = [], size
            if start == rows:
                break
    return [*chunks, chunk] if chunk else chunks


def _candidates(hashed: pl.DataFrame) -> pl.Series:
    """The keys of the rows whose hash occurs more than once: the hashes sorted, each compared
    with the one before (10M hashes: 0.35-0.45 s, numpy's sort 0.5 s with the copy out, a
    group-by or `is_duplicated` 1.7-2.4 s). The two sides are slices of the sorted hashes, which
    polars does not copy (a `shift` would: 0.4 GB more on 50M rows)."""
    ordered = hashed["_hash"].sort()
    later = ordered.slice(1)
    repeated = later.filter(later == ordered.slice(0, max(ordered.len() - 1, 0))).unique()
    return hashed.filter(pl.col("_hash").is_in(repeated.implode()))["_key"]


def _row_key() -> pl.Expr:
    """One integer per row read: its file and its row in the file."""
    return pl.col(FILE).cast(pl.UInt64) * 2**32 + pl.col(ROW).cast(pl.UInt64)


def _content_reason(cfg: CleaningSection) -> pl.Expr:
    """The first rule that drops a row for what it contains (period rules come later)."""
    not_positive = (
        (pl.col("quantity") <= 0) | (pl.col("unit_price") <= 0) | (pl.col("amount") <= 0)
    ).fill_null(False)
    drop_returns = cfg.returns == "exclude"
    return (
        pl.when(pl.col("customer_id").is_null()).then(_rule("missing_customer_id"))
        .when(pl.col("order_ts").is_null() & ~pl.col("_bad_date")).then(_rule("missing_date"))
        .when(pl.col("_bad_date")).then(_rule("unparseable_date"))
        .when(pl.col("amount_minor").is_null()).then(_rule("missing_amount"))
        .when(pl.col(IS_RETURN) & pl.lit(drop_returns)).then(_rule("cancellation"))
        .when(~pl.col(IS_RETURN) & not_positive).then(_rule("non_positive"))
        .otherwise(pl.lit(None, dtype=REASON_DTYPE))
    )  # fmt: skip


def _rule(name: str) -> pl.Expr:
    return pl.lit(name, dtype=REASON_DTYPE)


def _period_reason(window_days: int | None) -> pl.Expr:
    date, as_of = pl.col("order_date"), pl.col(AS_OF)
    late = pl.when(date > as_of).then(_rule("after_as_of"))
    if window_days is None:
        return late.otherwise(pl.lit(None, dtype=REASON_DTYPE))
    start = as_of - pl.duration(days=window_days - 1)
    early = late.when(date < start).then(_rule("before_window"))
    return early.otherwise(pl.lit(None, dtype=REASON_DTYPE))


def line_groups(cleaned: Cleaned) -> pl.LazyFrame:
    """The rows grouped by all the audit, RFM and EDA tell apart: customer, order, day, rule
    and return flag, with their count, money and smallest attribute values.

    About one group per order (10M rows give 3.4M groups on the benchmark data): one group-by
    over the rows, and everything else is aggregated from its much smaller result. Duplicate
    candidates are counted in their groups; `settle_duplicates` moves the copies out.
    """
    # a copy of a whole row has its original's attributes; else they are merged in when settled
    counted = pl.lit(True) if cleaned.whole_rows else ~pl.col(CANDIDATE)
    return _grouped(cleaned.frame, cleaned.transactions, counted)


def collected_line_groups(cleaned: Cleaned) -> pl.DataFrame:
    """`line_groups` collected, FIRST_PASS_CHUNK_ROWS rows at a time as runs (`_grouped_runs`)
    where the duplicates allow it (rows read from memory, or a file that polars slices)."""
    if not _groups_may_repeat(cleaned.whole_rows, cleaned.compared):
        return line_groups(cleaned).collect()
    tx, size = cleaned.transactions, FIRST_PASS_CHUNK_ROWS
    rows = cleaned.frame.select(_grouped_columns(tx))
    starts = range(0, max(cleaned.rows_read, 1), size)
    return pl.concat(_grouped_runs(rows.slice(i, size).collect(), tx, True) for i in starts)


def first_pass_groups(cleaned: Cleaned) -> pl.DataFrame | None:
    """`line_groups` collected, from the first pass's groups (None when it did not group the
    rows): a group's rows share a day, so the period rules judge the group by it."""
    if cleaned.content_groups is None:
        return None
    groups = cleaned.content_groups.with_columns(pl.lit(cleaned.as_of, dtype=pl.Date).alias(AS_OF))
    period = pl.coalesce(pl.col(REASON), _period_reason(cleaned.window_days)).alias(REASON)
    return groups.with_columns(period).drop(AS_OF)


def _grouped(rows: pl.LazyFrame, tx: Transactions, counted: pl.Expr) -> pl.LazyFrame:
    return rows.group_by(_group_keys(tx)).agg(_group_totals(tx, counted))


def _group_totals(tx: Transactions, counted: pl.Expr) -> list[pl.Expr]:
    """A group's row count and money, and the smallest attribute values of its `counted` rows."""
    return [
        pl.len().cast(pl.Int64).alias("rows"),
        pl.col("amount_minor").sum(),  # a missing amount counts as 0, as in the audit
        *[pl.when(counted).then(pl.col(a)).min().alias(a) for a in tx.attributes],
    ]


def _group_keys(tx: Transactions) -> list[str]:
    keys = ["customer_id", "order_date", REASON, IS_RETURN]
    if tx.has_order_id:
        keys.insert(1, "order_id")
    return keys


def _grouped_columns(tx: Transactions) -> list[str]:
    return [*_group_keys(tx), "amount_minor", *tx.attributes]


_SHOWN = [FILE, ROW, "customer_id", "order_id", "order_ts", "amount_minor"]  # in examples


def shown_and_candidates_query(cleaned: Cleaned) -> pl.LazyFrame:
    """The rows read again: the example rows (`Cleaned.shown_keys`) and the duplicate
    candidates, with what settling the candidates needs: their content, group and example."""
    columns = dict.fromkeys(
        [*_group_keys(cleaned.transactions), *_SHOWN, *cleaned.transactions.attributes]
    )
    keys = pl.concat([cleaned.shown_keys, cleaned.candidate_keys.rename("key")])
    # on the key alone, so that polars filters the rows before it judges them
    rows = cleaned.frame.filter(_row_key().is_in(keys.implode()))
    content = [pl.struct(*cleaned.compared).alias("_content")] if cleaned.compared else []
    return rows.select(*columns, CANDIDATE, *content)


def settle_duplicates(
    cleaned: Cleaned, fetched: pl.DataFrame, results: dict[str, pl.DataFrame],
    examples_per_rule: int,
) -> Cleaned:  # fmt: skip
    """Find the exact duplicates among the candidates and move them to their own rule.

    `fetched` is `shown_and_candidates_query` collected. A copy is a candidate equal to an
    earlier candidate in every compared column (compared exactly, so a hash collision can never
    drop a row). Their rows and money are taken out of their groups and counted as duplicates
    (`results` "groups" is updated and "examples" set; "groups" may then hold several rows per
    group key, to be summed). Returns the cleaning with the duplicates applied to its frame,
    for queries that read the rows again.
    """
    results["examples"] = fetched.filter(~pl.col(CANDIDATE)).select(REASON, *_SHOWN)
    candidates = fetched.filter(pl.col(CANDIDATE))
    if candidates.is_empty():
        return cleaned.with_duplicates(_NO_KEYS)
    candidates = candidates.sort(FILE, ROW)
    copy = ~pl.col("_content").is_first_distinct()
    copies, originals = candidates.filter(copy), candidates.filter(~copy)
    as_duplicates = copies.with_columns(_rule("duplicate").alias(REASON))
    results["groups"] = _without_copies(results["groups"], copies, as_duplicates, originals,
                                        cleaned)  # fmt: skip
    dropped = [f.filter(pl.col(REASON).is_not_null()) for f in (originals, as_duplicates)]
    shown = pl.concat([results["examples"], *(f.select(REASON, *_SHOWN) for f in dropped)])
    results["examples"] = (
        shown.sort(FILE, ROW).group_by(REASON, maintain_order=True).head(examples_per_rule)
    )
    return cleaned.with_duplicates(copies.select(_row_key()).to_series())


def _without_copies(
    groups: pl.DataFrame, copies: pl.DataFrame, as_duplicates: pl.DataFrame,
    originals: pl.DataFrame, cleaned: Cleaned,
) -> pl.DataFrame:  # fmt: skip
    """The groups with the copies taken out (and counted as duplicates), the originals'
    attributes merged in."""
    keys, attributes = _group_keys(cleaned.transactions), list(cleaned.transactions.attributes)
    duplicates = as_duplicates.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("rows"),
        pl.col("amount_minor").sum(),
        *[pl.lit(None, dtype=groups.schema[a]).alias(a) for a in attributes],
    )
    if cleaned.whole_rows:
        # A copy is in its original's group, with the same day and attributes: rows of minus
        # the copies, which every later aggregate sums, take them out without a join.
        minus = copies.group_by(keys).agg(
            -pl.len().cast(pl.Int64).alias("rows"),
            -pl.col("amount_minor").sum(),
            *[pl.lit(None, dtype=groups.schema[a]).alias(a) for a in attributes],
        )
        return pl.concat([groups, minus.select(groups.columns), duplicates.select(groups.columns)])
    removed = copies.group_by(keys).agg(
        pl.len().alias("_copies"), pl.col("amount_minor").sum().alias("_copied")
    )
    settled = (
        groups.join(removed, on=keys, how="left", nulls_equal=True)
        .with_columns(
            pl.col("rows") - pl.col("_copies").fill_null(0),
            pl.col("amount_minor") - pl.col("_copied").fill_null(0),
        )
        .drop("_copies", "_copied")
    )
    if attributes:
        known = originals.group_by(keys).agg(pl.col(a).min().alias(f"_{a}") for a in attributes)
        settled = settled.join(known, on=keys, how="left", nulls_equal=True).with_columns(
            pl.min_horizontal(a, f"_{a}").alias(a) for a in attributes
        ).drop(f"_{a}" for a in attributes)  # fmt: skip
    return pl.concat([settled.filter(pl.col("rows") > 0), duplicates.select(groups.columns)])


def group_audit_queries(cleaned: Cleaned, groups: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    """The audit's counts, from `line_groups`: rows and money per rule, and the totals."""
    money, rows = pl.col("amount_minor"), pl.col("rows")
    by_rule = groups.group_by(REASON).agg(rows.sum().alias("rows"), money.sum().alias("revenue"))
    netted = pl.col(REASON).is_null() & pl.col(IS_RETURN)
    counted = groups.select(
        rows.sum().alias("rows"),
        money.sum().alias("revenue"),
        pl.col("order_date").min().alias("first_date"),
        pl.col("order_date").max().alias("last_date"),
        pl.lit(cleaned.as_of, dtype=pl.Date).alias("as_of"),
        pl.col("order_date").filter(_kept_before(cleaned.as_of)).max().alias("latest_kept"),
        rows.filter(netted).sum().alias("netted_rows"),
        money.filter(netted).sum().alias("netted_revenue"),
    )
    return {"by_rule": by_rule, "counted": counted}


_MISSING_TRACKED = ("customer_id", "order_id", "order_ts", "amount_minor", "product_id")
# the per-row flags `_checks` counts, read in the first pass (a bit each; the currency is a
# category, 4 bytes, and a constant when no currency column is mapped)
_CHECKED_PER_ROW: list[str | pl.Expr] = [
    *[pl.col(c).is_null().alias(f"missing:{c}") for c in _MISSING_TRACKED],
    "_bad_id", "_bad_amount", "_bad_date", "_zoned",
    pl.col("currency").cast(pl.Categorical).alias("currency"),
]  # fmt: skip


def _checks(read: pl.DataFrame) -> pl.DataFrame:
    """The audit's value checks: missing values, values that do not parse, time zones mixed
    with naive times, the currencies."""
    return read.select(
        *[pl.col(f"missing:{c}").sum().alias(f"missing:{c}") for c in _MISSING_TRACKED],
        pl.col("_bad_id").sum().alias("bad_ids"),
        pl.col("_bad_amount").sum().alias("bad_amounts"),
        pl.col("_bad_date").sum().alias("bad_dates"),
        pl.col("_zoned").filter(pl.col("_zoned")).len().alias("zoned"),
        pl.col("_zoned").filter(~pl.col("_zoned")).len().alias("naive"),
        pl.col("currency").drop_nulls().unique().cast(pl.String).sort().head(5).implode()
        .alias("currencies"),
    )  # fmt: skip


def _summed_checks(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The value checks of the chunks read, summed."""
    currencies = pl.col("currencies").explode().drop_nulls().unique().sort().head(5).implode()
    summed = pl.concat(parts).select(pl.exclude("currencies").sum(), currencies)
    return summed.cast(parts[0].schema)


def _kept_before(as_of: dt.date | None) -> pl.Expr:
    clean = pl.col(REASON).is_null() | (pl.col(REASON) == "before_window")
    return clean & (pl.col("order_date") <= pl.lit(as_of, dtype=pl.Date))


def build_audit(results: dict[str, pl.DataFrame], cleaned: Cleaned) -> CleaningAudit:
    """Assemble the audit from the collected queries."""
    totals = results["totals"].row(0, named=True)
    counts = {r[REASON]: r for r in results["by_rule"].iter_rows(named=True)}
    examples = _examples_by_rule(results["examples"], cleaned)
    none = {"rows": 0, "revenue": 0}
    rules = [
        RuleCount(rule, text, counts.get(rule, none)["rows"], counts.get(rule, none)["revenue"],
                  examples.get(rule, []))
        for rule, text in RULES.items()
        if rule in counts or _always_listed(rule, cleaned)
    ]  # fmt: skip
    kept = counts.get(None, none)
    return CleaningAudit(
        rows_read=totals["rows"],
        revenue_read_minor=totals["revenue"],
        rules=rules,
        rows_kept=kept["rows"],
        revenue_kept_minor=kept["revenue"],
        returns_netted_rows=totals["netted_rows"],
        returns_netted_minor=totals["netted_revenue"] or 0,
        first_date=totals["first_date"],
        last_date=totals["last_date"],
        missing_values={c: totals[f"missing:{c}"] for c in _MISSING_TRACKED},
    )


def _always_listed(rule: str, cleaned: Cleaned) -> bool:
    """Rules that apply to this run are listed even when they dropped nothing."""
    if rule == "before_window":
        return cleaned.window_days is not None
    return rule not in {"unparseable_date", "missing_date", "missing_amount"}


def _examples_by_rule(frame: pl.DataFrame, cleaned: Cleaned) -> dict[str, list[dict]]:
    source = cleaned.transactions.source
    digits = cleaned.transactions.minor_digits
    out: dict[str, list[dict]] = {}
    for row in frame.sort(FILE, ROW).iter_rows(named=True):
        out.setdefault(row[REASON], []).append(
            {
                "file": source.files[row[FILE]],
                "line": source.line(row[ROW]),
                "customer_id": mask_id(
                    None if row["customer_id"] is None else str(row["customer_id"])
                ),
                "order_id": row["order_id"],
                "order_ts": row["order_ts"].isoformat(sep=" ") if row["order_ts"] else None,
                "amount": format_minor(row["amount_minor"], digits),
            }
        )
    return out


def mask_id(value: str | None) -> str | None:
    """Hide a customer id but its last two characters ('17850' -> '•••50')."""
    if value is None:
        return None
    return "•" * max(len(value) - 2, 1) + value[-2:]


def format_minor(value: int | None, digits: int) -> str | None:
    """Integer minor units as a plain decimal string ('-1234' -> '-12.34')."""
    if value is None:
        return None
    sign, value = ("-" if value < 0 else ""), abs(value)
    if digits == 0:
        return f"{sign}{value}"
    return f"{sign}{value // 10**digits}.{value % 10**digits:0{digits}d}"
