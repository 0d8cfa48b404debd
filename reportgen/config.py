"""The configuration: a typed schema, and the one loader that turns config.yaml into it.

Everything a run needs is decided here, once: unknown keys are refused, `${ENV_VAR}` is
expanded after parsing (so `:` or `#` in a secret cannot break the YAML), relative paths are
resolved against the config file's folder, and every problem is reported at once as
`file:line: dotted.key: message`.
"""

from __future__ import annotations

import datetime as dt
import logging
import unicodedata
import os
import re
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
    field_validator,
    model_validator,
)

from .errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_PREFIX = "sample:"
SAMPLE_DATASETS = ("online_retail",)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
            raise ValueError(f"{value!r} is not a known locale (e.g. en_GB, de_DE, fr_FR)") from None
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
            raise ValueError(f"@{missing}: map `quantity` and `unit_price` together (or only `amount`)")
        return self

    def mapped(self) -> dict[str, str]:
        """Canonical name -> source column, for the mapped fields only."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class InputSection(_Section):
    """Where the transactions are and how to read them."""

    path: str = Field(
        description="File, folder or glob; `sample:online_retail` is the built-in sample data."
    )
    format: Literal["auto", "csv", "parquet", "excel"] = Field(
        "auto", description="File format; auto: from the file name."
    )
    csv: CsvOptions = Field(default_factory=CsvOptions, description="CSV options.")
    excel: ExcelOptions = Field(default_factory=ExcelOptions, description="Excel options.")
    date_formats: list[str] = Field(
        default_factory=lambda: ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
        min_length=1,
        description="strftime formats tried in order; day and month are never guessed.",
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="Column mapping.")
    attributes: list[str] = Field(
        default_factory=list, description="Extra columns kept per customer (e.g. Country)."
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
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
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. Europe/London)")
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


FEATURES = ("recency_days", "frequency", "monetary", "tenure_days", "avg_order_value", "return_rate")


class OutlierOptions(_Section):
    """Optional capping of extreme values before clustering (exports keep the true values)."""

    method: Literal["none", "quantile_cap"] = Field("none", description="none or quantile_cap.")
    lower_quantile: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.0, description="Values below this quantile are raised to it."
    )
    upper_quantile: Annotated[float, Field(gt=0.5, le=1)] = Field(
        0.99, description="Values above this quantile are lowered to it."
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
    algorithm: Literal["kmeans"] = Field("kmeans", description="Clustering algorithm.")
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

    @model_validator(mode="after")
    def _consistent_limits(self) -> SegmentationSection:
        low, high = self.k_range
        if low > high:
            raise ValueError(f"k_range {list(self.k_range)}: the first number must not exceed the second")
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
    playbook: dict[PlaybookName, PlaybookEntry] = Field(
        default_factory=dict, description="Per segment name, overrides of the default actions."
    )
    history: HistorySection = Field(
        default_factory=HistorySection, description="Comparison with the previous run."
    )
    output: OutputSection = Field(default_factory=OutputSection, description="Output folders.")
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

    @property
    def source_file(self) -> str | None:
        """The YAML file this config was read from (None when built from a dict)."""
        return self._source_file


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _Section)


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
        raise ConfigError(f"{path}: config file not found (create one with `reportgen init`)")
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
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the file must be a mapping of sections (report:, input:, ...)")
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


def _problem_of(err: dict[str, Any]) -> _Problem:
    loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
    message = err["msg"].removeprefix("Value error, ")
    named = _KEY_PREFIX.match(message)
    if named:
        loc, message = (*loc, named.group(1)), message[named.end() :]
    return _Problem(loc, _plain_message(err, message))


def _plain_message(err: dict[str, Any], message: str) -> str:
    kind, given = err["type"], err.get("input")
    if kind == "extra_forbidden":
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


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the tried union member to the location, e.g. ('as_of', 'literal[...]')
    return isinstance(part, str) and (
        "[" in part or part in {"date", "str", "int", "float", "list", "dict", "function-after"}
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
