"""The configuration: a typed schema, and the one loader that turns config.yaml into it.

Everything a run needs is decided here, once: unknown keys are refused, `${ENV_VAR}` is
expanded after parsing (so `:` or `#` in a secret cannot break the YAML), relative paths are
resolved against the config file's folder, and every problem is reported at once as
`file:line: dotted.key: message`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import os
import re
import typing
import unicodedata
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from .errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_PREFIX = "sample:"
SAMPLE_DATASETS = ("online_retail",)


class _Section(BaseModel):
    # defer_build: each section's validator is built when first used, as part of Config's,
    # not once per class at import (import plus the first validation: 0.60 -> 0.43 s here)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """Resolve a relative path (or glob) against the config file's folder."""
    base = (info.context or {}).get("base_dir")
    if value.startswith(SAMPLE_PREFIX):
        return value
    value = os.path.expanduser(value)
    if base is None or Path(value).is_absolute():
        return value
    return str(Path(base) / value)


class ReportSection(_Section):
    """What the report is called and how its numbers are written."""

    name: str = Field("Customer segmentation", min_length=1, description="Report title.")
    slug: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Folder name under the output root (default: made from `name`).",
    )
    company: str = Field("", description="Company name shown on the title page.")
    currency: str = Field("GBP", description="ISO 4217 code of the amounts.")
    locale: str = Field("en_GB", description="Locale for numbers, money and dates (e.g. de_DE).")
    templates_dir: str | None = Field(
        None, description="Folder of templates overriding ours by file name (the rest fall back)."
    )
    logo: str | None = Field(
        None, description="Logo file (PNG, JPEG, GIF, WebP or SVG) shown on the report cover."
    )
    accent_color: str | None = Field(
        None, pattern=r"^#[0-9a-fA-F]{6}$", description="Accent colour of the reports, #rrggbb."
    )

    @field_validator("logo")
    @classmethod
    def _resolve_logo(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_path(value, info)

    @field_validator("templates_dir")
    @classmethod
    def _resolve_templates(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_path(value, info)

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        from babel.numbers import is_currency

        if not is_currency(value):
            raise ValueError(f"{value!r} is not an ISO 4217 currency code (e.g. GBP, EUR, USD)")
        return value

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        from babel import Locale, UnknownLocaleError

        try:
            Locale.parse(value)
        except (ValueError, UnknownLocaleError):
            raise ValueError(
                f"{value!r} is not a known locale (e.g. en_GB, de_DE, fr_FR)"
            ) from None
        return value

    @property
    def report_slug(self) -> str:
        """The folder name of this report under the output root."""
        if self.slug:
            return self.slug
        ascii_name = unicodedata.normalize("NFKD", self.name).encode("ascii", "ignore").decode()
        return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-") or "report"


class CsvOptions(_Section):
    """How CSV files are read."""

    separator: str = Field(",", min_length=1, max_length=1, description="Field separator.")
    encoding: str = Field("utf-8", description="Text encoding; others are transcoded to UTF-8.")
    decimal: Literal[".", ","] = Field(".", description="Decimal separator of numbers.")
    quote_char: str = Field('"', min_length=1, max_length=1, description="Quote character.")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, latin-1, cp1252)") from None
        return value


class ExcelOptions(_Section):
    """How Excel workbooks are read."""

    sheet: str | int = Field(0, description="Sheet name, or its 0-based position.")


class ColumnMap(_Section):
    """Which source column holds each canonical field."""

    customer_id: str = Field("customer_id", description="Customer identifier (read as text).")
    order_id: str | None = Field(
        "order_id", description="Order/invoice id; null: an order is a customer's day of purchases."
    )
    order_date: str = Field("order_date", description="Order date or timestamp.")
    amount: str | None = Field(
        "amount", description="Line amount; null when quantity and unit_price are mapped."
    )
    quantity: str | None = Field(None, description="Quantity (amount = quantity x unit_price).")
    unit_price: str | None = Field(None, description="Unit price (amount = quantity x unit_price).")
    product_id: str | None = Field(None, description="Product identifier (optional).")
    currency: str | None = Field(None, description="Currency code column (optional; one value).")

    @model_validator(mode="after")
    def _amount_or_product(self) -> ColumnMap:
        has_parts = self.quantity is not None and self.unit_price is not None
        if self.amount is None and not has_parts:
            raise ValueError("@amount: map either `amount`, or both `quantity` and `unit_price`")
        if self.amount is not None and (self.quantity or self.unit_price) and not has_parts:
            missing = "unit_price" if self.quantity else "quantity"
            raise ValueError(
                f"@{missing}: map `quantity` and `unit_price` together (or only `amount`)"
            )
        return self

    def price_parts(self) -> tuple[str, str]:
        """The quantity and unit price columns, for a map without `amount` (validated above)."""
        assert self.quantity and self.unit_price, "both are mapped when amount is not"
        return self.quantity, self.unit_price

    def mapped(self) -> dict[str, str]:
        """Canonical name -> source column, for the mapped fields only."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


DATABASE_SCHEMES = ("postgresql", "postgres", "duckdb")
_DUCKDB_PREFIX = "duckdb:///"


class DatabaseInput(_Section):
    """Transactions in PostgreSQL or a DuckDB file: the work runs inside the database."""

    url: str = Field(
        description="postgresql://user@host:5432/db (libpq options such as ?sslmode=verify-full"
        " pass through) or duckdb:///path/to/file.duckdb; never with a password in it."
    )
    table: str | None = Field(None, description="Table or view of the transactions (sales.tx).")
    query: str | None = Field(None, description="A SELECT giving the transactions (not table).")
    password_env: str | None = Field(
        None, description="Name of the environment variable holding the password (PostgreSQL)."
    )

    @model_validator(mode="before")
    @classmethod
    def _usable_url(cls, data: Any, info: ValidationInfo) -> Any:
        # A model validator, so that an error never echoes the URL (it may hold a password).
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        from urllib.parse import parse_qs, urlsplit

        value = data["url"]
        parts = urlsplit(value)
        if parts.password is not None or "password" in parse_qs(parts.query):
            raise ValueError(
                "@url: the URL holds a password; remove it, and put the name of the "
                "environment variable holding it in input.database.password_env"
            )
        if parts.scheme not in DATABASE_SCHEMES:
            raise ValueError(
                f"@url: unsupported database {parts.scheme or value!r}; use postgresql://... "
                "or duckdb:///path (Spark: input.spark)"
            )
        if parts.scheme == "duckdb":  # duckdb:///relative or duckdb:////absolute, as SQLAlchemy
            path = value[len(_DUCKDB_PREFIX) :] if value.startswith(_DUCKDB_PREFIX) else ""
            if not path:
                raise ValueError("@url: expected duckdb:///path/to/file.duckdb")
            return {**data, "url": _DUCKDB_PREFIX + _resolve_path(path, info)}
        return data

    @model_validator(mode="after")
    def _table_or_query(self) -> DatabaseInput:
        if (self.table is None) == (self.query is None):
            raise ValueError("@table: give either input.database.table or input.database.query")
        return self


class SparkInput(_Section):
    """Transactions in a Spark table or Parquet dataset: the work runs in Spark SQL."""

    master: str = Field(
        "local[*]", description="Spark master URL: local[*], spark://host:7077, yarn, k8s://..."
    )
    table: str | None = Field(None, description="Table in the Spark catalog (e.g. sales.tx).")
    parquet: str | None = Field(
        None, description="Parquet file or folder (a path, or a URL such as s3a://bucket/tx/)."
    )
    app_name: str = Field("reportgen", description="Application name shown in the Spark UI.")
    conf: dict[str, str] = Field(
        default_factory=dict, description="Extra Spark settings (e.g. spark.executor.memory: 4g)."
    )

    @field_validator("parquet")
    @classmethod
    def _resolve_parquet(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or "://" in value:
            return value
        return _resolve_path(value, info)

    @model_validator(mode="after")
    def _table_or_parquet(self) -> SparkInput:
        if (self.table is None) == (self.parquet is None):
            raise ValueError("@table: give either input.spark.table or input.spark.parquet")
        return self


class InputSection(_Section):
    """Where the transactions are and how to read them."""

    # For editors: one of the three sources is required (the validator below says which).
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": [k]} for k in ("path", "database", "spark")]}
    )

    path: str | None = Field(
        None,
        description="File, folder or glob; `sample:online_retail` is the built-in sample data."
        " (Or set database or spark instead.)",
    )
    format: Literal["auto", "csv", "parquet", "excel"] = Field(
        "auto", description="File format; auto: from the file name."
    )
    csv: CsvOptions = Field(default_factory=CsvOptions, description="CSV options.")
    excel: ExcelOptions = Field(default_factory=ExcelOptions, description="Excel options.")
    header_row: int = Field(
        1,
        ge=1,
        description="CSV and Excel: the row holding the column names (a CSV file's line), "
        "counted from 1 as a spreadsheet shows it; the rows above it (a title, notes) are skipped.",
    )
    date_formats: list[str] = Field(
        default_factory=lambda: ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
        min_length=1,
        description="strftime formats tried in order; day and month are never guessed.",
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="Column mapping.")
    attributes: list[str] = Field(
        default_factory=list, description="Extra columns kept per customer (e.g. Country)."
    )
    database: DatabaseInput | None = Field(
        None, description="A PostgreSQL or DuckDB source instead of path (see the README)."
    )
    spark: SparkInput | None = Field(
        None, description="A Spark table or Parquet dataset instead of path (see the README)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> InputSection:
        given = [k for k in ("path", "database", "spark") if getattr(self, k) is not None]
        if not given:
            raise ValueError("@path: required key is missing")
        if len(given) > 1:
            raise ValueError(f"@{given[1]}: give only one of input.{' and input.'.join(given)}")
        if self.header_row != 1 and (given[0] != "path" or self.format == "parquet"):
            source = f"input.{given[0]}" if given[0] != "path" else "Parquet"
            raise ValueError(f"@header_row: applies to CSV and Excel files, not to {source}")
        return self

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if value.startswith(SAMPLE_PREFIX) and value[len(SAMPLE_PREFIX) :] not in SAMPLE_DATASETS:
            known = ", ".join(SAMPLE_PREFIX + name for name in SAMPLE_DATASETS)
            raise ValueError(f"unknown sample data set {value!r}; known: {known}")
        return _resolve_path(value, info)

    @field_validator("date_formats")
    @classmethod
    def _has_date_parts(cls, value: list[str]) -> list[str]:
        bad = [f for f in value if not all(p in f for p in ("%Y", "%d")) and "%F" not in f]
        if bad:
            raise ValueError(f"formats need at least %Y, a month and %d: {bad}")
        return value


AsOfKeyword = Literal["latest", "yesterday", "last_month_end"]
AS_OF_KEYWORDS = ("latest", "yesterday", "last_month_end")


def parse_as_of(value: Any) -> str | dt.date:
    """An as-of keyword or an ISO date; ValueError with the accepted forms otherwise."""
    if isinstance(value, dt.date) or value in AS_OF_KEYWORDS:
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(
            f"expected latest, yesterday, last_month_end or a date YYYY-MM-DD (got {value!r})"
        ) from None


class PeriodSection(_Section):
    """Which days the report covers."""

    as_of: AsOfKeyword | dt.date = Field(
        "latest", description="Last day covered: latest, yesterday, last_month_end or a date."
    )
    window_days: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Keep orders in [as_of - window_days + 1, as_of]; null: all history."
    )
    max_staleness_days: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Stop (exit 4) when the latest transaction is older than this."
    )
    timezone: str = Field("UTC", description="IANA time zone of the calendar days.")

    @field_validator("as_of", mode="before")
    @classmethod
    def _keyword_or_date(cls, value: Any) -> Any:
        return parse_as_of(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name, e.g. Europe/London)"
            ) from None
        return value


class CleaningSection(_Section):
    """Which rows are dropped before RFM; each rule is counted in the audit."""

    duplicates: Literal["all", "off"] | list[str] = Field(
        "all", description="Exact duplicates over all source columns, a list of columns, or off."
    )
    cancellation_prefix: str = Field(
        "C", description="Order ids starting with this mark cancellations/returns ('' = none)."
    )
    returns: Literal["exclude", "net"] = Field(
        "exclude", description="exclude: drop returns; net: subtract them from monetary."
    )
    unparseable_dates: Literal["error", "drop"] = Field(
        "error", description="A date matching no format: stop with an error, or drop and audit."
    )
    examples_per_rule: Annotated[int, Field(ge=0, le=20)] = Field(
        3, description="Example rows kept per cleaning rule in the audit."
    )


class RfmSection(_Section):
    """How R, F and M are computed and named."""

    monetary: Literal["sum", "mean_order"] = Field(
        "sum", description="sum: total spend; mean_order: mean order value."
    )
    segment_map: Literal["builtin"] | str | dict[str, list[str | int]] = Field(
        "builtin",
        description="Score map to the RFM grid names: builtin, a CSV path (r_score, f_score,"
        " m_score, segment), or {name: [score patterns like '5[45]*']}.",
    )

    @field_validator("segment_map", mode="before")
    @classmethod
    def _resolve_map_path(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and value != "builtin":
            return _resolve_path(value, info)
        return value

    @field_validator("segment_map")
    @classmethod
    def _valid_map(cls, value: Any) -> Any:
        from .grid import load_segment_map

        load_segment_map(value)  # raises ValueError naming the gaps and overlaps
        return value


FEATURES = (
    "recency_days",
    "frequency",
    "monetary",
    "tenure_days",
    "avg_order_value",
    "return_rate",
)
ALGORITHMS = ("kmeans", "gmm", "dbscan", "hdbscan", "agglomerative", "spectral")
Algorithm = Literal[ALGORITHMS]  # type: ignore[valid-type]


class OutlierOptions(_Section):
    """Optional capping of extreme values before clustering (exports keep the true values)."""

    method: Literal["none", "quantile_cap"] = Field("none", description="none or quantile_cap.")
    lower_quantile: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.0, description="Values below this quantile are raised to it."
    )
    upper_quantile: Annotated[float, Field(gt=0.5, le=1)] = Field(
        0.99, description="Values above this quantile are lowered to it."
    )


class AlgorithmOptions(_Section):
    """Settings of the algorithms other than K-Means (segmentation.algorithm and compare)."""

    sample_size: Annotated[int, Field(ge=100)] = Field(
        3_000,
        description="Agglomerative, spectral, DBSCAN and HDBSCAN are fitted on a seeded sample of "
        "this many customers; everyone else takes the segment of their nearest sampled neighbours.",
    )
    gmm_covariance: Literal["full", "diag", "tied", "spherical"] = Field(
        "full", description="Covariance type of the Gaussian mixture (k by BIC, n_init restarts)."
    )
    min_cluster_size: Literal["auto"] | Annotated[int, Field(ge=2)] = Field(
        "auto",
        description="HDBSCAN smallest group; auto: min_segment_share of the customers fitted.",
    )
    min_samples: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="DBSCAN/HDBSCAN neighbours of a core customer; auto: 2 x dimensions."
    )
    eps: Literal["auto"] | Annotated[float, Field(gt=0)] = Field(
        "auto",
        description="DBSCAN radius (clustered units); auto: the knee of the sorted distances to "
        "each customer's min_samples-th neighbour.",
    )
    neighbors: Annotated[int, Field(ge=2)] = Field(
        10, description="Neighbours of the spectral affinity graph and of the extension to all."
    )


class SegmentationSection(_Section):
    """How customers are clustered into the segments the report acts on."""

    features: list[Literal[FEATURES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["recency_days", "frequency", "monetary"],
        min_length=1,
        description=f"Per-customer features clustered; any of {', '.join(FEATURES)}.",
    )
    outliers: OutlierOptions = Field(default_factory=OutlierOptions, description="Outliers.")
    log1p: bool = Field(True, description="Apply log1p to the features (they are skewed).")
    scaling: Literal["standard", "robust", "minmax", "none"] = Field(
        "standard", description="Scaling after log1p."
    )
    algorithm: Algorithm = Field(
        "kmeans", description=f"Algorithm of the segments acted on: {', '.join(ALGORITHMS)}."
    )
    k: Literal["auto"] | Annotated[int, Field(ge=2)] = Field(
        "auto", description="Number of segments, or auto (chosen by `rule` over `k_range`)."
    )
    k_range: tuple[Annotated[int, Field(ge=2)], Annotated[int, Field(ge=2)]] = Field(
        (2, 10), description="Smallest and largest k fitted when k is auto."
    )
    rule: Literal["knee", "silhouette", "calinski_harabasz", "davies_bouldin"] = Field(
        "knee", description="How k is chosen: knee of the inertia curve, or the best score."
    )
    min_k: Annotated[int, Field(ge=2)] = Field(3, description="Smallest k the rule may choose.")
    max_k: Annotated[int, Field(ge=2)] = Field(8, description="Largest k the rule may choose.")
    min_segment_share: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.02, description="k is admissible only if its smallest segment holds this share."
    )
    n_init: Annotated[int, Field(ge=1)] = Field(3, description="K-Means restarts per fit.")
    fit_sample_size: Annotated[int, Field(ge=100)] = Field(
        50_000, description="Customers sampled (seeded) for the k sweep; the final fit uses all."
    )
    silhouette_sample_size: Annotated[int, Field(ge=100)] = Field(
        10_000, description="Customers sampled (seeded, the same for every k) for silhouette."
    )
    stability_seeds: Annotated[int, Field(ge=2)] = Field(
        5, description="Seeds refitted to measure the stability (ARI) of the chosen solution."
    )
    k_policy: Literal["choose", "keep_previous"] = Field(
        "choose", description="keep_previous: use the previous run's k (periodic reports)."
    )
    compare: list[Algorithm] = Field(
        default_factory=list,
        description="Algorithms compared side by side in their own report section ([]: none).",
    )
    algorithm_options: AlgorithmOptions = Field(
        default_factory=AlgorithmOptions, description="Settings of the non-K-Means algorithms."
    )

    @field_validator("compare")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        repeated = sorted({a for a in value if value.count(a) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value

    @model_validator(mode="after")
    def _consistent_limits(self) -> SegmentationSection:
        low, high = self.k_range
        if low > high:
            raise ValueError(
                f"k_range {list(self.k_range)}: the first number must not exceed the second"
            )
        if self.min_k > self.max_k:
            raise ValueError(f"min_k ({self.min_k}) is larger than max_k ({self.max_k})")
        if self.k == "auto" and (self.max_k < low or self.min_k > high):
            raise ValueError(
                f"min_k..max_k ({self.min_k}..{self.max_k}) does not overlap k_range "
                f"({low}..{high}): no k could be chosen; widen one of them"
            )
        smallest_k = max(self.min_k, low)
        if self.k == "auto" and self.min_segment_share * smallest_k > 1:
            raise ValueError(
                f"min_segment_share ({self.min_segment_share:.0%}) times the smallest k allowed "
                f"({smallest_k}) exceeds 100%: no k can give every segment that share; lower "
                f"min_segment_share below {1 / smallest_k:.0%}"
            )
        return self


class EmbeddingOptions(_Section):
    """A small autoencoder (scikit-learn MLPRegressor, CPU, seeded) that learns customer coordinates."""

    enabled: bool = Field(False, description="Train the embedding and compare it with RFM.")
    dimensions: Annotated[int, Field(ge=1, le=16)] = Field(
        3, description="Size of the bottleneck: the embedding's coordinates per customer."
    )
    hidden: Annotated[int, Field(ge=2, le=256)] = Field(
        16, description="Width of the layers on each side of the bottleneck."
    )
    max_iter: Annotated[int, Field(ge=10, le=5000)] = Field(
        100, description="Training epochs at most (adam; stops earlier when the loss settles)."
    )
    sample_size: Annotated[int, Field(ge=100)] = Field(
        20_000, description="Customers (seeded sample) the autoencoder is trained on."
    )


class RepresentationSection(_Section):
    """Which per-customer features are built, an optional learned embedding, and what is clustered."""

    features: Literal["rfm", "extended"] = Field(
        "rfm",
        description="rfm: segmentation.features; extended: also tenure, average order value, "
        "days between orders, return rate, basket size and spend shares.",
    )
    share_columns: list[str] | None = Field(
        None,
        description="Columns of input.attributes whose share of each customer's spend per value "
        "is a feature (extended); null: every attribute.",
    )
    share_top: Annotated[int, Field(ge=1, le=20)] = Field(
        5, description="Values per share column kept (largest by spend); the rest are 'other'."
    )
    embedding: EmbeddingOptions = Field(
        default_factory=EmbeddingOptions, description="Autoencoder embedding of the features."
    )
    cluster_on: Literal["rfm", "extended", "embedding"] = Field(
        "rfm",
        description="Space the report's segments are clustered in (segments are described in RFM).",
    )

    @model_validator(mode="after")
    def _space_is_built(self) -> RepresentationSection:
        if self.cluster_on == "embedding" and not self.embedding.enabled:
            raise ValueError("@cluster_on: embedding needs representation.embedding.enabled: true")
        if self.cluster_on == "extended" and self.features != "extended":
            raise ValueError("@cluster_on: extended needs representation.features: extended")
        return self


class PlaybookEntry(_Section):
    """What to do about one segment; every field overrides the default entry of that name."""

    objective: str | None = Field(None, description="What the action should achieve.")
    channel: str | None = Field(None, description="Where to reach these customers.")
    offer: str | None = Field(None, description="What to offer.")
    no_discount_offer: str | None = Field(None, description="An option that costs no margin.")
    timing: str | None = Field(None, description="When and how often.")
    kpi: str | None = Field(None, description="The number that shows it worked.")
    holdout: str | None = Field(None, description="The control group to keep.")

    @field_validator("*")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave the key out to keep the default text)")
        return value.strip() if value is not None else None


def _known_segment_name(name: str, info: ValidationInfo) -> str:
    """A playbook key must be one of the 11 names, or a name of the configured segment map."""
    from .playbook import unknown_names, unknown_names_message

    rfm = (info.data or {}).get("rfm")
    extra: list[str] = []
    if isinstance(rfm, RfmSection) and rfm.segment_map != "builtin":
        from .grid import load_segment_map

        extra = load_segment_map(rfm.segment_map).names
    if unknown_names([name], extra):
        message = unknown_names_message([name], extra)
        raise ValueError(message.split(": ", 1)[1])  # the location already names the key
    return name


PlaybookName = Annotated[str, AfterValidator(_known_segment_name)]


RISK_SEGMENTS = ("About To Sleep", "At Risk", "Can't Lose Them", "Hibernating", "Lost")


class HistorySection(_Section):
    """How a run is compared with the previous run of the same report."""

    compare: bool = Field(True, description="Compare with the latest earlier run, if any.")
    match_threshold: Annotated[float, Field(gt=0)] = Field(
        1.0,
        description="A segment keeps the previous run's name when its centroid lies within this "
        "distance (standardised units) of the matched previous centroid; beyond it is new.",
    )
    risk_segments: list[str] = Field(
        default_factory=lambda: list(RISK_SEGMENTS),
        description="Segments whose new entrants are exported to moved_into_risk.csv.",
    )


class OutputSection(_Section):
    """Where the run folders go."""

    dir: str = Field(
        "output",
        validate_default=True,
        description="Output root (relative to the config file); runs go to <dir>/<slug>/<as_of>/.",
    )
    csv_bom: bool = Field(False, description="Start segments.csv with a BOM (for Excel).")

    @field_validator("dir")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return _resolve_path(value, info)


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SUBJECT_FIELDS = ("report_name", "as_of", "period")
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


class SmtpOptions(_Section):
    """The mail server the summary email is sent through (certificates are always verified)."""

    host: str = Field("localhost", min_length=1, description="SMTP server host name.")
    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None, description="SMTP port; null: 587 for starttls, 465 for ssl, 25 for none."
    )
    security: Literal["starttls", "ssl", "none"] = Field(
        "starttls",
        description="starttls: upgrade a plain connection (587); ssl: TLS from the start (465); "
        "none: no encryption (a local relay only).",
    )
    username: str | None = Field(None, min_length=1, description="Login name; null: no login.")
    password_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable holding the password (never the password).",
    )
    ca_file: str | None = Field(
        None,
        description="CA certificate (PEM) that signed the server's certificate, for a private "
        "server; it replaces the system CAs. null: the system CAs.",
    )
    timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        30, description="Timeout of the connection and of each server reply."
    )
    retries: Annotated[int, Field(ge=0, le=10)] = Field(
        3, description="Retries after a transient failure (no connection, timeout, 4xx reply)."
    )
    retry_backoff_seconds: Annotated[float, Field(ge=0)] = Field(
        10, description="Wait before the first retry; doubled before each next one."
    )

    @field_validator("ca_file")
    @classmethod
    def _resolve_ca(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_path(value, info)

    @model_validator(mode="after")
    def _login_consistent(self) -> SmtpOptions:
        if self.username and not self.password_env:
            raise ValueError(
                "@password_env: a username needs password_env, the name of the environment "
                "variable holding its password"
            )
        if self.password_env and not self.username:
            raise ValueError("@username: password_env is set but username is not")
        if self.security == "none" and self.username and self.host.lower() not in _LOOPBACK_HOSTS:
            raise ValueError(
                f"@security: 'none' would send the password of {self.username!r} unencrypted to "
                f"{self.host}; use starttls or ssl (security: none is for a relay on localhost)"
            )
        return self

    @property
    def effective_port(self) -> int:
        """The port connected to: `port`, or the usual one of `security`."""
        return self.port or DEFAULT_PORTS[self.security]


def _email_address(value: str) -> str:
    """pydantic's EmailStr check, run only when there is an address: EmailStr imports
    email-validator as soon as the config's validator is built (about 50 ms of every run)."""
    from pydantic.networks import validate_email

    return validate_email(value)[1]


EmailAddress = Annotated[
    str, AfterValidator(_email_address), WithJsonSchema({"type": "string", "format": "email"})
]


class EmailSection(_Section):
    """The summary email to stakeholders (sent only with `reportgen run --send` or `send`)."""

    sender: EmailAddress = Field(description="From address.")
    sender_name: str = Field("", description="Display name of the From address.")
    to: list[EmailAddress] = Field(min_length=1, description="Recipients (To).")
    cc: list[EmailAddress] = Field(default_factory=list, description="Copy recipients (Cc).")
    bcc: list[EmailAddress] = Field(
        default_factory=list, description="Blind copies: in the envelope only, never a header."
    )
    reply_to: EmailAddress | None = Field(
        None, description="Reply-To address; null: replies go to From."
    )
    subject: str = Field(
        "{report_name}: {period}",
        min_length=1,
        description="Subject; {report_name}, {as_of} and {period} are filled in.",
    )
    max_attachment_mb: Annotated[float, Field(gt=0)] = Field(
        10, description="The PDF is attached up to this size (MB); larger, a note says where it is."
    )
    smtp: SmtpOptions = Field(default_factory=SmtpOptions, description="The mail server.")

    @field_validator("subject")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        import string

        try:
            names = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{exc}; write a literal brace as {{{{ or }}}}") from None
        unknown = [n for n in names if n not in SUBJECT_FIELDS]
        if unknown:
            known = ", ".join("{" + n + "}" for n in SUBJECT_FIELDS)
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {known}")
        return value


class FairnessSection(_Section):
    """The fairness audit: are the segments, and the discounts they get, skewed by attribute?"""

    enabled: bool = Field(False, description="Audit the segments by the attribute columns.")
    attributes: list[str] = Field(
        default_factory=list,
        description="Columns of input.attributes to audit (e.g. [Country]); empty: all of them.",
    )
    cramers_v_threshold: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.1,
        description="A segment is flagged when its make-up differs from all customers' by at "
        "least this bias-corrected Cramer's V (0.1: Cohen's 'small' effect).",
    )
    alpha: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.05,
        description="A flag also needs the chi-square p-value (Bonferroni-adjusted over the "
        "segments tested) below this, so that chance differences in small segments are not flagged.",
    )
    min_group_size: Annotated[int, Field(ge=1)] = Field(
        30,
        description="Attribute values with fewer customers are merged into 'Other' (reported as "
        "too small if Other still is); smaller segments are reported, not tested.",
    )
    discount_segments: Literal["auto"] | list[str] = Field(
        "auto",
        description="Segments whose action is a discount; auto: those whose playbook offer "
        "names a percentage, discount, sale, voucher or pricing.",
    )


class GraphSection(_Section):
    """The customer graph: customers linked by the products they share, and its communities."""

    enabled: bool = Field(
        False,
        description="Build the graph and find communities (needs input.columns.product_id and "
        "the optional extra: pip install 'reportgen[graph]').",
    )
    neighbours: Annotated[int, Field(ge=1, le=100)] = Field(
        10, description="Each customer keeps links to this many most similar customers."
    )
    max_product_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.1,
        description="Products bought by more than this share of customers are ignored: they "
        "link everyone and tell customers apart least.",
    )
    exclude_products: list[str] = Field(
        default_factory=list,
        description="Product ids left out (postage, fees: e.g. [POST, DOT, M, C2]).",
    )
    description_column: str | None = Field(
        None, description="Source column with product names (e.g. Description); null: ids only."
    )
    resolution: Annotated[float, Field(gt=0)] = Field(
        1.0, description="Louvain resolution: above 1 gives more, smaller communities."
    )
    min_community_size: Annotated[int, Field(ge=1)] = Field(
        20, description="Smaller communities are summed up as one line in the report."
    )
    top_products: Annotated[int, Field(ge=1, le=20)] = Field(
        5, description="Products shown per community (those most over-bought in it)."
    )


class Config(_Section):
    """The whole configuration of one report."""

    report: ReportSection = Field(default_factory=ReportSection, description="Report identity.")
    input: InputSection = Field(description="The transactions.")
    period: PeriodSection = Field(default_factory=PeriodSection, description="Period covered.")
    cleaning: CleaningSection = Field(default_factory=CleaningSection, description="Cleaning.")
    rfm: RfmSection = Field(default_factory=RfmSection, description="RFM definition.")
    segmentation: SegmentationSection = Field(
        default_factory=SegmentationSection, description="Clustering into segments."
    )
    representation: RepresentationSection = Field(
        default_factory=RepresentationSection,
        description="Extended features, a learned embedding, and the space clustered.",
    )
    playbook: dict[PlaybookName, PlaybookEntry] = Field(
        default_factory=dict, description="Per segment name, overrides of the default actions."
    )
    history: HistorySection = Field(
        default_factory=HistorySection, description="Comparison with the previous run."
    )
    output: OutputSection = Field(default_factory=OutputSection, description="Output folders.")
    email: EmailSection | None = Field(
        None, description="The summary email; null: none (it is sent only with --send)."
    )
    fairness: FairnessSection = Field(
        default_factory=FairnessSection, description="Fairness audit of the segments (off)."
    )
    graph: GraphSection = Field(
        default_factory=GraphSection, description="Customer graph and communities (off)."
    )
    seed: int = Field(42, description="Seed of every random step.")
    _source_file: str | None = PrivateAttr(None)  # the YAML file read, set by the loader

    @model_validator(mode="before")
    @classmethod
    def _validate_absent_sections(cls, data: Any) -> Any:
        # Absent sections are validated like empty ones, so their defaults (a relative
        # output.dir) are resolved against the config file's folder too.
        if isinstance(data, dict):
            sections = [n for n, f in cls.model_fields.items() if _is_section(f.annotation)]
            data = {**{name: {} for name in sections}, **data}
        return data

    @field_validator("representation")
    @classmethod
    def _share_columns_are_attributes(
        cls, value: RepresentationSection, info: ValidationInfo
    ) -> RepresentationSection:
        source = (info.data or {}).get("input")
        known = source.attributes if isinstance(source, InputSection) else None
        unknown = [c for c in value.share_columns or [] if known is not None and c not in known]
        if unknown:
            raise ValueError(f"@share_columns: {unknown} are not in input.attributes {known}; "
                             "add them there (spend shares are read per transaction)")  # fmt: skip
        return value

    @model_validator(mode="after")
    def _extensions_consistent(self) -> Config:
        problems = _fairness_problems(self) + _graph_problems(self)
        if problems:
            raise ValueError(problems[0])  # one at a time: they name different keys
        return self

    @property
    def source_file(self) -> str | None:
        """The YAML file this config was read from (None when built from a dict)."""
        return self._source_file


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _Section)


def _fairness_problems(config: Config) -> list[str]:
    """fairness: attributes that exist, and discount segments that are segment names."""
    cfg, known = config.fairness, config.input.attributes
    unknown = [a for a in cfg.attributes if a not in known]
    if unknown:
        return [(f"@fairness: attributes {unknown} are not in input.attributes {known}; add them "
                 "there (the audit reads the columns kept per customer)")]  # fmt: skip
    if cfg.enabled and not known:
        return [("@fairness: enabled, but input.attributes is empty: list the columns to audit "
                 "there (e.g. attributes: [Country])")]  # fmt: skip
    if isinstance(cfg.discount_segments, list):
        from .playbook import unknown_names, unknown_names_message

        extra = [] if config.rfm.segment_map == "builtin" else _map_names(config.rfm.segment_map)
        wrong = unknown_names(cfg.discount_segments, extra)
        if wrong:
            message = unknown_names_message(wrong, extra).split(": ", 1)[1]
            return [f"@fairness: discount_segments {wrong}: {message}"]
    return []


def _map_names(segment_map: Any) -> list[str]:
    from .grid import load_segment_map

    return list(load_segment_map(segment_map).names)


def _graph_problems(config: Config) -> list[str]:
    """graph: a product column, and the optional extra installed."""
    if not config.graph.enabled:
        return []
    if config.input.columns.product_id is None:
        return [("@graph: enabled, but input.columns.product_id is not mapped: map the product "
                 "column (e.g. product_id: StockCode) or set graph.enabled: false")]  # fmt: skip
    from .graph import missing_extra_message

    message = missing_extra_message()
    return [f"@graph: {message}"] if message else []


# ---------------------------------------------------------------------------------------------
# Loading


_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_KEY_PREFIX = re.compile(r"^@([A-Za-z_]+): ")  # a model validator naming the key it is about


@dataclass(frozen=True)
class _Problem:
    loc: tuple[str | int, ...]
    message: str


def load_config(path: str | Path) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    data, root = _parse_yaml(path, _read_text(path))
    env_problems: list[_Problem] = []
    data = _interpolate(data, (), env_problems)
    problems = env_problems + _validation_problems(data, path.resolve().parent)
    if problems:
        raise ConfigError(_problem_report(problems, path, root))
    config = Config.model_validate(data, context={"base_dir": path.resolve().parent})
    config._source_file = str(path)
    return config


def config_from_dict(data: dict[str, Any], base_dir: str | Path = ".") -> Config:
    """Validate a config given as a dict (for Python callers); relative paths use `base_dir`."""
    problems = _validation_problems(data, Path(base_dir).resolve())
    if problems:
        raise ConfigError(_problem_report(problems))
    return Config.model_validate(data, context={"base_dir": Path(base_dir).resolve()})


def _validation_problems(data: dict[str, Any], base_dir: Path) -> list[_Problem]:
    try:
        Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        return _merge_same_key([_problem_of(err) for err in exc.errors()])
    return []


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (create one with `reportgen init`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None


class _StrictLoader(yaml.SafeLoader):
    """safe_load, but repeated keys are errors and dates stay text (pydantic parses them)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _parse_yaml(path: Path, text: str) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe_load's rules
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1: the file must be a mapping of sections (report:, input:, ...)"
        )
    return data, root


def _interpolate(value: Any, where: tuple, problems: list[_Problem]) -> Any:
    """Expand ${VAR} and ${VAR:-default} in string values, after parsing."""
    if isinstance(value, dict):
        return {k: _interpolate(v, (*where, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*where, i), problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append(_Problem(where, f"environment variable {name} is not set"))
        return match.group(0)

    return _ENV_PATTERN.sub(expand, value)


def _problem_of(err: ErrorDetails) -> _Problem:
    loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
    message = err["msg"].removeprefix("Value error, ")
    named = _KEY_PREFIX.match(message)
    if named:
        loc, message = (*loc, named.group(1)), message[named.end() :]
    return _Problem(loc, _plain_message(err, message, loc))


def _plain_message(err: ErrorDetails, message: str, loc: tuple) -> str:
    kind, given = err["type"], err.get("input")
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _keys_beside(loc), n=1)
        if close:
            return f"unknown key; did you mean {close[0]!r}? (`reportgen schema` lists every key)"
        return "unknown key (check the spelling; `reportgen schema` lists every key)"
    if kind == "missing":
        return "required key is missing"
    if kind == "model_type" or kind == "dict_type":
        return f"expected a mapping of keys (got {given!r})"
    if isinstance(given, str | int | float | bool) and repr(given) not in message:
        return f"{message} (got {given!r})"
    return message


def _merge_same_key(problems: list[_Problem]) -> list[_Problem]:
    """A value that fits no member of a union gets one line, not one per member."""
    merged: dict[tuple, list[str]] = {}
    for problem in problems:
        merged.setdefault(problem.loc, [])
        if problem.message not in merged[problem.loc]:
            merged[problem.loc].append(problem.message)
    return [_Problem(loc, "; or ".join(messages)) for loc, messages in merged.items()]


def _keys_beside(loc: tuple) -> list[str]:
    """The keys of the section holding the key at `loc` ([] when it cannot be told)."""
    model: type[BaseModel] | None = Config
    entries = False  # the part is a list index or a mapping's key: the model stays
    for part in loc[:-1]:
        if entries or isinstance(part, int):
            entries = False
            continue
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        if field is None:
            return []
        model = _model_in(field.annotation)
        entries = typing.get_origin(field.annotation) in (list, dict)
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section model in `X`, `X | None`, `list[X]` or `dict[K, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the tried union member to the location, e.g. ('as_of', 'literal[...]')
    return isinstance(part, str) and (
        "[" in part
        or part in {"date", "str", "int", "float", "list", "dict", "function-after"}
        or part.startswith("constrained-")  # Annotated[int, Field(ge=2)] in a union
    )


def _problem_report(
    problems: list[_Problem], path: Path | None = None, root: yaml.Node | None = None
) -> str:
    problems = _without_env_followups(problems)
    lines = []
    for problem in problems:
        dotted = ".".join(str(p) for p in problem.loc) or "(top level)"
        where = f"{path}:{_line_of(root, list(problem.loc))}: " if path else ""
        lines.append(f"  {where}{dotted}: {problem.message}")
    count = len(lines)
    source = f" in {path}" if path else ""
    summary = f"{count} problem{'s' if count > 1 else ''}{source}; fix and run `reportgen validate`"
    return "invalid configuration:\n" + "\n".join(lines) + "\n" + summary


def _without_env_followups(problems: list[_Problem]) -> list[_Problem]:
    """An unset variable is the problem; the odd value it leaves behind is not reported again."""
    env_locs = {p.loc for p in problems if p.message.startswith("environment variable")}
    return [
        p for p in problems
        if p.loc not in env_locs or p.message.startswith("environment variable")
    ]  # fmt: skip


def _line_of(root: yaml.Node | None, loc: list) -> int:
    """The line of the deepest YAML node on the path `loc` (1-based); missing keys: the parent."""
    node, line = root, 1
    for part in loc:
        found = _child(node, part) if node is not None else None
        if found is None:
            break
        marker, node = found
        line = marker.start_mark.line + 1
    return line


def _child(node: yaml.Node, part: Any) -> tuple[yaml.Node, yaml.Node] | None:
    """(the node whose line names `part`, the node holding its value)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part], node.value[part]
    return None
