"""The config loader (reportgen/config.py) and the `validate`, `schema` and `init` commands."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner, Result
from pydantic import BaseModel

from reportgen import Config, ConfigError, config_from_dict, load_config, load_segment_map
from reportgen.cli import cli
from reportgen.grid import builtin_map_path
from reportgen.read import read_transactions

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "config.yaml"
MINIMAL = {"input": {"path": "tx.csv"}}
SUMMARY_TAIL = "; fix and run `reportgen validate`"
UNKNOWN_KEY = "unknown key (check the spelling; `reportgen schema` lists every key)"
AMOUNT_MESSAGE = "map either `amount`, or both `quantity` and `unit_price`"
GRID_NAMES = {
    "Champions", "Loyal Customers", "Potential Loyalist", "New Customers", "Promising",
    "Need Attention", "About To Sleep", "At Risk", "Can't Lose Them", "Hibernating", "Lost",
}  # fmt: skip


def write(path: Path, text: str) -> Path:
    """Write `text` (a YAML document) to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    """Run the `reportgen` CLI in-process."""
    return CliRunner().invoke(cli, list(args))


def validate(path: Path | str) -> Result:
    """Run `reportgen validate --config PATH`."""
    return invoke("validate", "--config", str(path))


def error_message(result: Result) -> str:
    """The one ERROR log record on stderr (its continuation lines included), without the prefix."""
    assert "Traceback" not in result.stderr
    match = re.fullmatch(r"\S+ \S+ ERROR reportgen: (.*)\n", result.stderr, flags=re.DOTALL)
    assert match, result.stderr
    return match.group(1)


def split_report(message: str) -> tuple[list[str], str]:
    """(problem lines without their indent, summary line) of an 'invalid configuration' message."""
    first, *body, summary = message.splitlines()
    assert first == "invalid configuration:"
    assert all(line.startswith("  ") for line in body), body
    return [line.strip() for line in body], summary


def cli_problems(result: Result) -> tuple[list[str], str]:
    """Problem lines and summary of a failed `reportgen validate` (exit 3)."""
    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""
    return split_report(error_message(result))


def load_problems(path: Path) -> tuple[list[str], str]:
    """Problem lines and summary raised by load_config."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return split_report(str(info.value))


def builtin_rows() -> list[list[str]]:
    """The rows (r, f, m, segment) of the shipped segment map."""
    with builtin_map_path().open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))[1:]


def write_map_csv(path: Path, rows: list[list[str]]) -> Path:
    """A segment-map CSV with the expected header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["r_score", "f_score", "m_score", "segment"])
        writer.writerows(rows)
    return path


def one_name_per_recency(skip: str = "") -> dict[str, list[str]]:
    """A pattern map {'R1': ['1**'], ...}: complete unless a recency score is skipped."""
    return {f"R{r}": [f"{r}**"] for r in "12345" if r not in skip}


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every dotted key of a config model (sections and leaves), internal fields left out."""
    keys = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        keys.add(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= model_keys(annotation, f"{prefix}{name}.")
    return keys


def yaml_keys(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Dotted key -> 0-based line of every mapping key in a composed YAML document."""
    keys = {}
    for key, value in node.value:
        keys[prefix + key.value] = key.start_mark.line
        if isinstance(value, yaml.MappingNode):
            keys |= yaml_keys(value, f"{prefix}{key.value}.")
    return keys


# ---------------------------------------------------------------------------------------------
# A valid file, defaults, the report slug


def test_valid_file_loads_with_typed_values(tmp_path):
    """Every section set in YAML ends up typed in the Config."""
    path = write(
        tmp_path / "c.yaml",
        """\
report:
  name: Weekly segments
  company: Acme
  currency: EUR
  locale: de_DE
input:
  path: sample:online_retail
  format: csv
  csv: {separator: ";", encoding: latin-1, decimal: ","}
  date_formats: ["%d.%m.%Y"]
  columns: {amount: null, quantity: Qty, unit_price: Price, order_id: null}
  attributes: [Country]
period:
  as_of: 2024-01-31
  window_days: 365
  max_staleness_days: 0
  timezone: Europe/Berlin
cleaning:
  duplicates: [order_id, sku]
  cancellation_prefix: ""
  returns: net
rfm:
  monetary: mean_order
output:
  csv_bom: true
seed: 7
""",
    )
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.source_file == str(path)
    assert (config.report.name, config.report.company) == ("Weekly segments", "Acme")
    assert (config.report.currency, config.report.locale) == ("EUR", "de_DE")
    assert config.input.format == "csv"
    assert (config.input.csv.separator, config.input.csv.encoding) == (";", "latin-1")
    assert config.input.csv.decimal == ","
    assert config.input.date_formats == ["%d.%m.%Y"]
    assert config.input.columns.mapped() == {
        "customer_id": "customer_id",
        "order_date": "order_date",
        "quantity": "Qty",
        "unit_price": "Price",
    }
    assert config.input.attributes == ["Country"]
    assert config.period.as_of == dt.date(2024, 1, 31)
    assert (config.period.window_days, config.period.max_staleness_days) == (365, 0)
    assert config.period.timezone == "Europe/Berlin"
    assert config.cleaning.duplicates == ["order_id", "sku"]
    assert (config.cleaning.cancellation_prefix, config.cleaning.returns) == ("", "net")
    assert config.rfm.monetary == "mean_order"
    assert config.output.csv_bom is True
    assert config.seed == 7


def test_defaults_of_a_minimal_config(tmp_path):
    """Only input.path given: every other key takes its documented default."""
    config = config_from_dict(MINIMAL, base_dir=tmp_path)
    base = tmp_path.resolve()
    assert config.report.model_dump() == {
        "name": "Customer segmentation",
        "slug": None,
        "company": "",
        "currency": "GBP",
        "locale": "en_GB",
        "templates_dir": None,
        "logo": None,
        "accent_color": None,
    }
    assert config.input.path == str(base / "tx.csv")
    assert config.input.format == "auto"
    assert config.input.csv.model_dump() == {
        "separator": ",", "encoding": "utf-8", "decimal": ".", "quote_char": '"'
    }  # fmt: skip
    assert config.input.excel.sheet == 0
    assert config.input.date_formats == ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]
    assert config.input.columns.mapped() == {
        "customer_id": "customer_id",
        "order_id": "order_id",
        "order_date": "order_date",
        "amount": "amount",
    }
    assert config.input.attributes == []
    assert config.period.model_dump() == {
        "as_of": "latest", "window_days": None, "max_staleness_days": None, "timezone": "UTC"
    }  # fmt: skip
    assert config.cleaning.model_dump() == {
        "duplicates": "all",
        "cancellation_prefix": "C",
        "returns": "exclude",
        "unparseable_dates": "error",
        "examples_per_rule": 3,
    }
    assert config.rfm.model_dump() == {"monetary": "sum", "segment_map": "builtin"}
    assert config.output.csv_bom is False
    assert config.seed == 42
    assert config.source_file is None


def test_default_output_dir_is_resolved_like_an_explicit_one(tmp_path):
    """Leaving output.dir out and writing its default give the same folder."""
    implicit = load_config(write(tmp_path / "a.yaml", "input:\n  path: tx.csv\n"))
    explicit = load_config(
        write(tmp_path / "b.yaml", "input:\n  path: tx.csv\noutput:\n  dir: output\n")
    )
    assert explicit.output.dir == str(tmp_path.resolve() / "output")
    assert implicit.output.dir == explicit.output.dir


def test_empty_yaml_file_loads_with_the_same_defaults_as_a_dict(tmp_path):
    """A file holding only input.path equals config_from_dict of the same dict."""
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\n")
    assert load_config(path).model_dump() == config_from_dict(MINIMAL, tmp_path).model_dump()


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Online Retail customer segmentation", "online-retail-customer-segmentation"),
        ("  --Q4 / 2024 Report!! ", "q4-2024-report"),
        ("Customer segmentation", "customer-segmentation"),
        ("!!!", "report"),
    ],
)
def test_report_slug_is_made_from_the_name(name, slug):
    """Without report.slug: the lower-cased name, other characters as one '-'."""
    config = config_from_dict({**MINIMAL, "report": {"name": name}})
    assert config.report.report_slug == slug


def test_explicit_slug_wins_over_the_name():
    """report.slug, when given, is the folder name."""
    config = config_from_dict({**MINIMAL, "report": {"name": "Anything", "slug": "weekly_rfm-2"}})
    assert config.report.report_slug == "weekly_rfm-2"


def test_bad_slug_is_refused(tmp_path):
    """A slug with capitals or spaces is refused with its location."""
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\nreport:\n  slug: Bad Slug\n")
    lines, _ = load_problems(path)
    assert lines == [
        (
            f"{path}:4: report.slug: String should match pattern '^[a-z0-9][a-z0-9_-]*$'"
            " (got 'Bad Slug')"
        )
    ]


def test_slug_keeps_accented_letters_as_ascii():
    """'Ventes été 2024' gives 'ventes-ete-2024', not 'ventes-t-2024'."""
    config = config_from_dict({**MINIMAL, "report": {"name": "Ventes été 2024"}})
    assert config.report.report_slug == "ventes-ete-2024"


# ---------------------------------------------------------------------------------------------
# Every problem at once, each with its file, line and key

MANY_MISTAKES = """\
report:
  name: Test
  currency: XXY
  locale: xx_YY
  colour: blue
input:
  path: sample:nope
  csv:
    encoding: klingon
  columns:
    amount: null
period:
  as_of: "2024-02-30"
  window_days: five
  max_staleness_days: -1
  timezone: Mars/Olympus
cleaning:
  returns: sometimes
outputs:
  dir: out
"""
MISTAKES = 12  # one per line 3, 4, 5, 7, 9, 11, 13, 14, 15, 16, 18, 19


def expected_lines(path: Path) -> list[str]:
    """The exact lines of MANY_MISTAKES, but for period.as_of and input.columns (see below)."""
    return [
        f"{path}:3: report.currency: 'XXY' is not an ISO 4217 currency code (e.g. GBP, EUR, USD)",
        f"{path}:4: report.locale: 'xx_YY' is not a known locale (e.g. en_GB, de_DE, fr_FR)",
        f"{path}:5: report.colour: {UNKNOWN_KEY}",
        f"{path}:7: input.path: unknown sample data set 'sample:nope'; known: sample:online_retail",
        f"{path}:9: input.csv.encoding: unknown encoding 'klingon' (e.g. utf-8, latin-1, cp1252)",
        (
            f"{path}:14: period.window_days: Input should be a valid integer,"
            " unable to parse string as an integer (got 'five')"
        ),
        (
            f"{path}:15: period.max_staleness_days: Input should be greater than or equal to 0"
            " (got -1)"
        ),
        (
            f"{path}:16: period.timezone: unknown time zone 'Mars/Olympus'"
            " (an IANA name, e.g. Europe/London)"
        ),
        f"{path}:18: cleaning.returns: Input should be 'exclude' or 'net' (got 'sometimes')",
        f"{path}:19: outputs: unknown key; did you mean 'output'? (`reportgen schema` lists every key)",
    ]


def test_every_mistake_is_reported_at_once_with_file_line_and_key(tmp_path):
    """`reportgen validate` exits 3 and lists each mistake as `file:line: dotted.key: message`."""
    path = write(tmp_path / "many.yaml", MANY_MISTAKES)
    lines, summary = cli_problems(validate(path))
    as_of = [line for line in lines if line.startswith(f"{path}:13: period.as_of: ")]
    amount = [
        line
        for line in lines
        if re.fullmatch(
            rf"{re.escape(str(path))}:11: input\.columns\.amount: " + re.escape(AMOUNT_MESSAGE),
            line,
        )
    ]
    assert as_of, lines
    assert len(amount) == 1, lines
    assert [line for line in lines if line not in as_of + amount] == expected_lines(path)
    assert summary == f"{len(lines)} problems in {path}{SUMMARY_TAIL}"


def test_load_config_raises_the_same_report(tmp_path):
    """load_config raises ConfigError (exit code 3) with the same lines as the CLI prints."""
    path = write(tmp_path / "many.yaml", MANY_MISTAKES)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.exit_code == 3
    assert str(info.value) == error_message(validate(path))


def test_each_mistake_is_one_line(tmp_path):
    """Twelve mistakes give twelve lines; the as_of line names the bad value."""
    path = write(tmp_path / "many.yaml", MANY_MISTAKES)
    lines, summary = cli_problems(validate(path))
    as_of = [line for line in lines if line.startswith(f"{path}:13: period.as_of: ")]
    assert len(as_of) == 1 and "'2024-02-30'" in as_of[0]
    assert len(lines) == MISTAKES
    assert summary == f"{MISTAKES} problems in {path}{SUMMARY_TAIL}"


def test_missing_amount_mapping_points_at_the_amount_key(tmp_path):
    """The problem line names input.columns.amount and the line of `amount: null`."""
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\n  columns:\n    amount: null\n")
    lines, _ = load_problems(path)
    assert lines == [f"{path}:4: input.columns.amount: {AMOUNT_MESSAGE}"]


def test_amount_from_quantity_and_unit_price_is_accepted():
    """amount: null is fine when quantity and unit_price are both mapped."""
    columns = {"amount": None, "quantity": "q", "unit_price": "p"}
    config = config_from_dict({"input": {"path": "x.csv", "columns": columns}})
    assert config.input.columns.mapped()["quantity"] == "q"


def test_quantity_without_unit_price_is_refused(tmp_path):
    """Mapping only one of quantity and unit_price is refused."""
    path = write(
        tmp_path / "c.yaml", "input:\n  path: tx.csv\n  columns:\n    amount: a\n    quantity: q\n"
    )
    lines, summary = load_problems(path)
    assert lines == [
        (
            f"{path}:3: input.columns.unit_price: map `quantity` and `unit_price` together"
            " (or only `amount`)"
        )
    ]
    assert summary == f"1 problem in {path}{SUMMARY_TAIL}"


def test_problem_in_a_list_item_names_its_index(tmp_path):
    """A bad date format in a list is located at its item."""
    path = write(
        tmp_path / "c.yaml",
        'input:\n  path: tx.csv\n  date_formats:\n    - "%Y-%m-%d"\n    - "%m/%y"\n',
    )
    lines, _ = load_problems(path)
    assert lines == [
        f"{path}:3: input.date_formats: formats need at least %Y, a month and %d: ['%m/%y']"
    ]


def test_unquoted_impossible_date_is_a_config_error(tmp_path):
    """`as_of: 2024-02-30` (a YAML timestamp) is reported with file and line, exit 3."""
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\nperiod:\n  as_of: 2024-02-30\n")
    result = validate(path)
    assert result.exit_code == 3
    message = error_message(result)
    assert f"{path}:4" in message and "2024-02-30" in message


def test_duplicate_key_is_refused(tmp_path):
    """A section written twice is a config error naming the second occurrence."""
    path = write(tmp_path / "c.yaml", "input:\n  path: a.csv\ninput:\n  path: b.csv\n")
    result = validate(path)
    assert result.exit_code == 3
    message = error_message(result)
    assert f"{path}:3" in message and "duplicate" in message


def test_wrong_type_for_a_section(tmp_path):
    """A scalar where a section is expected is reported at the section's line."""
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\nperiod: 30\n")
    lines, _ = cli_problems(validate(path))
    assert len(lines) == 1
    assert lines[0] == f"{path}:3: period: expected a mapping of keys (got 30)"


# ---------------------------------------------------------------------------------------------
# Files that cannot be read as a config


def test_yaml_syntax_error_names_the_line(tmp_path):
    """A YAML syntax error exits 3 with file:line, no traceback."""
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\n   extra: 1\n")
    result = validate(path)
    assert result.exit_code == 3
    assert error_message(result) == f"{path}:3: not valid YAML: mapping values are not allowed here"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a sentence\n", "42\n"])
def test_file_that_is_not_a_mapping(tmp_path, text):
    """A list or a scalar at the top is refused (exit 3)."""
    path = write(tmp_path / "c.yaml", text)
    result = validate(path)
    assert result.exit_code == 3
    assert error_message(result) == (
        f"{path}:1: the file must be a mapping of sections (report:, input:, ...)"
    )


def test_missing_file(tmp_path):
    """A config file that does not exist: exit 3, the message names it."""
    path = tmp_path / "nope" / "config.yaml"
    result = validate(path)
    assert result.exit_code == 3
    assert error_message(result) == (
        f"{path}: config file not found (create one with `reportgen init`)"
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_requires_input(tmp_path, text):
    """An empty file is an empty mapping: `input` is required."""
    path = write(tmp_path / "c.yaml", text)
    lines, summary = cli_problems(validate(path))
    assert lines == [f"{path}:1: input.path: required key is missing"]
    assert summary == f"1 problem in {path}{SUMMARY_TAIL}"


def test_file_that_is_not_utf8(tmp_path):
    """Undecodable bytes: exit 3 with the file named, no traceback."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"report:\n  name: caf\xe9\ninput:\n  path: tx.csv\n")
    result = validate(path)
    assert result.exit_code == 3
    assert error_message(result).startswith(f"{path}: cannot read the config file: ")


def test_python_object_tag_is_refused_without_running_it(tmp_path):
    """`!!python/object/apply` is refused by safe_load: exit 3, no traceback, nothing executed."""
    marker = tmp_path / "pwned"
    path = write(
        tmp_path / "c.yaml",
        f'input:\n  path: !!python/object/apply:os.system ["touch {marker}"]\n',
    )
    result = validate(path)
    assert result.exit_code == 3
    assert error_message(result) == (
        f"{path}:2: not valid YAML: could not determine a constructor for the tag"
        " 'tag:yaml.org,2002:python/object/apply:os.system'"
    )
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# ${ENV_VAR} interpolation


def test_env_var_is_expanded_after_parsing(tmp_path, monkeypatch):
    """A value with ':' and '#' survives whole, inside or around other text."""
    monkeypatch.setenv("RG_TEST_COMPANY", "Acme: East # 2")
    monkeypatch.setenv("RG_TEST_DIR", "data")
    path = write(
        tmp_path / "c.yaml",
        "report:\n  company: ${RG_TEST_COMPANY}\n  name: Report for ${RG_TEST_COMPANY}!\n"
        "input:\n  path: ${RG_TEST_DIR}/tx.csv\n",
    )
    config = load_config(path)
    assert config.report.company == "Acme: East # 2"
    assert config.report.name == "Report for Acme: East # 2!"
    assert config.input.path == str(tmp_path.resolve() / "data" / "tx.csv")


def test_env_var_default(tmp_path, monkeypatch):
    """${VAR:-default} takes the default when VAR is unset, and VAR when it is set."""
    monkeypatch.delenv("RG_TEST_UNSET", raising=False)
    monkeypatch.setenv("RG_TEST_TZ", "Europe/Paris")
    path = write(
        tmp_path / "c.yaml",
        "report:\n  company: ${RG_TEST_UNSET:-Acme Ltd}\n  name: x${RG_TEST_UNSET:-}y\n"
        "input:\n  path: tx.csv\n"
        "period:\n  timezone: ${RG_TEST_TZ:-UTC}\n",
    )
    config = load_config(path)
    assert config.report.company == "Acme Ltd"
    assert config.report.name == "xy"
    assert config.period.timezone == "Europe/Paris"


def test_env_var_can_give_a_number(tmp_path, monkeypatch):
    """An expanded '30' validates as the integer 30."""
    monkeypatch.setenv("RG_TEST_DAYS", "30")
    path = write(
        tmp_path / "c.yaml", "input:\n  path: tx.csv\nperiod:\n  window_days: ${RG_TEST_DAYS}\n"
    )
    assert load_config(path).period.window_days == 30


def test_missing_env_var_is_reported_with_its_key(tmp_path, monkeypatch):
    """Each unset variable without a default is one problem at its key's line; exit 3."""
    monkeypatch.delenv("RG_TEST_MISSING_A", raising=False)
    monkeypatch.delenv("RG_TEST_MISSING_B", raising=False)
    path = write(
        tmp_path / "c.yaml",
        "input:\n  path: ${RG_TEST_MISSING_A}/tx.csv\n"
        "report:\n  company: ok\n  name: ${RG_TEST_MISSING_B}\n",
    )
    lines, summary = cli_problems(validate(path))
    assert lines == [
        f"{path}:2: input.path: environment variable RG_TEST_MISSING_A is not set",
        f"{path}:5: report.name: environment variable RG_TEST_MISSING_B is not set",
    ]
    assert summary == f"2 problems in {path}{SUMMARY_TAIL}"


def test_missing_env_var_in_a_validated_key_is_one_problem(tmp_path, monkeypatch):
    """period.timezone: ${UNSET} gives only the 'not set' line."""
    monkeypatch.delenv("RG_TEST_MISSING_TZ", raising=False)
    path = write(
        tmp_path / "c.yaml", "input:\n  path: tx.csv\nperiod:\n  timezone: ${RG_TEST_MISSING_TZ}\n"
    )
    lines, _ = load_problems(path)
    assert lines == [
        f"{path}:4: period.timezone: environment variable RG_TEST_MISSING_TZ is not set"
    ]


# ---------------------------------------------------------------------------------------------
# Paths


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    """input.path, output.dir and a segment-map CSV are relative to the file, not the cwd."""
    folder = tmp_path / "project" / "conf"
    write_map_csv(folder / "maps" / "grid.csv", builtin_rows())
    write(
        folder / "c.yaml",
        "input:\n  path: data/*.csv\noutput:\n  dir: ../out\nrfm:\n  segment_map: maps/grid.csv\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "project" / "conf" / "c.yaml")
    base = folder.resolve()
    assert config.input.path == str(base / "data" / "*.csv")
    assert Path(config.output.dir).resolve() == (tmp_path / "project" / "out").resolve()
    assert config.rfm.segment_map == str(base / "maps" / "grid.csv")
    assert validate(Path("..") / "project" / "conf" / "c.yaml").exit_code == 0


def test_absolute_paths_and_sample_are_untouched(tmp_path):
    """Absolute paths and `sample:online_retail` are kept as written."""
    grid = write_map_csv(tmp_path / "maps" / "grid.csv", builtin_rows()).resolve()
    out = (tmp_path / "out").resolve()
    path = write(
        tmp_path / "conf" / "c.yaml",
        f"input:\n  path: sample:online_retail\noutput:\n  dir: {out}\n"
        f"rfm:\n  segment_map: {grid}\n",
    )
    config = load_config(path)
    assert config.input.path == "sample:online_retail"
    assert config.output.dir == str(out)
    assert config.rfm.segment_map == str(grid)
    absolute = config_from_dict({"input": {"path": str(tmp_path / "tx.csv")}}, base_dir="/srv")
    assert absolute.input.path == str(tmp_path / "tx.csv")


def test_config_from_dict_resolves_against_base_dir(tmp_path):
    """config_from_dict uses base_dir for relative paths."""
    config = config_from_dict({**MINIMAL, "output": {"dir": "reports"}}, base_dir=tmp_path)
    assert config.input.path == str(tmp_path.resolve() / "tx.csv")
    assert config.output.dir == str(tmp_path.resolve() / "reports")


def test_config_from_dict_message_names_the_dotted_key():
    """Errors from config_from_dict read `dotted.key: message`, one per line."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({**MINIMAL, "report": {"slug": "Bad Slug"}})
    assert str(info.value) == (
        "invalid configuration:\n"
        "  report.slug: String should match pattern '^[a-z0-9][a-z0-9_-]*$' (got 'Bad Slug')\n"
        "1 problem; fix and run `reportgen validate`"
    )


# ---------------------------------------------------------------------------------------------
# Segment maps


def test_builtin_segment_map_loads():
    """The default map covers the 125 codes with the 11 grid names."""
    config = config_from_dict(MINIMAL)
    segment_map = load_segment_map(config.rfm.segment_map)
    assert len(segment_map.names_by_code) == 125
    assert set(segment_map.names) == GRID_NAMES
    assert segment_map.source == "builtin"


def test_segment_map_csv_with_a_gap_is_refused(tmp_path):
    """A CSV missing code 345 is refused at load (exit 3), naming the code."""
    write_map_csv(tmp_path / "gap.csv", [r for r in builtin_rows() if r[:3] != ["3", "4", "5"]])
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\nrfm:\n  segment_map: gap.csv\n")
    lines, _ = cli_problems(validate(path))
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:4: rfm.segment_map: segment map refused: ")
    assert "no segment (e.g. 345)" in lines[0]


def test_segment_map_csv_with_an_overlap_is_refused(tmp_path):
    """A CSV giving 222 two names is refused at load (exit 3), naming the code and names."""
    write_map_csv(tmp_path / "overlap.csv", [*builtin_rows(), ["2", "2", "2", "Champions"]])
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\nrfm:\n  segment_map: overlap.csv\n")
    lines, _ = cli_problems(validate(path))
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:4: rfm.segment_map: segment map refused: ")
    assert "more than one segment (222 -> Champions / Hibernating)" in lines[0]


def test_segment_map_csv_that_does_not_exist(tmp_path):
    """A missing map file is a config error at the key's line."""
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\nrfm:\n  segment_map: nomap.csv\n")
    lines, _ = cli_problems(validate(path))
    assert len(lines) == 1
    assert lines[0].startswith(
        f"{path}:4: rfm.segment_map: cannot read the segment map {tmp_path.resolve() / 'nomap.csv'}"
    )


def test_pattern_segment_map_loads(tmp_path):
    """A complete {name: [patterns]} map with character classes loads from YAML."""
    path = write(
        tmp_path / "c.yaml",
        """\
input:
  path: tx.csv
rfm:
  segment_map:
    Champions: ['5[45][45]']
    Other recent: ['5[123]*', '5[45][123]']
    R1: ['1**']
    R2: ['2**']
    R3: ['3**']
    R4: ['4??']
""",
    )
    config = load_config(path)
    segment_map = load_segment_map(config.rfm.segment_map)
    codes = segment_map.names_by_code
    assert len(codes) == 125
    assert [codes[c] for c in ("555", "544", "553", "515", "111", "345")] == [
        "Champions", "Champions", "Other recent", "Other recent", "R1", "R3"
    ]  # fmt: skip
    assert sum(name == "Champions" for name in codes.values()) == 4


def test_pattern_map_one_name_per_recency_loads():
    """{'R1': ['1**'], ..., 'R5': ['5**']} covers every code once."""
    config = config_from_dict({**MINIMAL, "rfm": {"segment_map": one_name_per_recency()}})
    codes = load_segment_map(config.rfm.segment_map).names_by_code
    assert {name: sum(n == name for n in codes.values()) for name in set(codes.values())} == {
        f"R{r}": 25 for r in "12345"
    }


def test_incomplete_pattern_map_is_refused(tmp_path):
    """Leaving out R4 leaves 25 codes without a name."""
    path = write(
        tmp_path / "c.yaml",
        yaml.safe_dump({**MINIMAL, "rfm": {"segment_map": one_name_per_recency(skip="4")}}),
    )
    line = yaml_keys(yaml.compose(path.read_text()))["rfm.segment_map"] + 1
    lines, _ = load_problems(path)
    assert lines == [
        (
            f"{path}:{line}: rfm.segment_map: segment map refused: 25 score codes have no segment"
            " (e.g. 411, 412, 413, 414, 415, 421)"
        )
    ]


def test_overlapping_pattern_map_is_refused(tmp_path):
    """A second name for 55? is refused, naming the codes and both names."""
    spec = {**one_name_per_recency(), "Top": ["55?"]}
    path = write(tmp_path / "c.yaml", yaml.safe_dump({**MINIMAL, "rfm": {"segment_map": spec}}))
    lines, _ = load_problems(path)
    assert len(lines) == 1
    assert (
        ": rfm.segment_map: segment map refused: 5 score codes have more than one segment"
        in lines[0]
    )
    for code in ("551", "552", "553", "554", "555"):
        assert f"{code} -> R5 / Top" in lines[0]


def test_pattern_matching_nothing_is_refused(tmp_path):
    """A pattern that matches no code is refused even when the map is otherwise complete."""
    spec = {**one_name_per_recency(), "Ghost": ["6*"]}
    with pytest.raises(ConfigError) as info:
        config_from_dict({**MINIMAL, "rfm": {"segment_map": spec}})
    assert "segment map patterns that match no score code: [\"Ghost: '6*'\"]" in str(info.value)


def test_unquoted_score_codes_are_accepted(tmp_path):
    """Codes written as YAML integers are read as codes."""
    path = write(
        tmp_path / "c.yaml",
        "input:\n  path: tx.csv\nrfm:\n  segment_map:\n    Top: [555, 554]\n"
        "    R5: ['5[1-4]*', '55[1-3]']\n    R1: ['1**']\n    R2: ['2**']\n"
        "    R3: ['3**']\n    R4: ['4**']\n",
    )
    codes = load_segment_map(load_config(path).rfm.segment_map).names_by_code
    assert (codes["555"], codes["554"], codes["553"]) == ("Top", "Top", "R5")


# ---------------------------------------------------------------------------------------------
# reportgen schema


def test_schema_is_valid_json_schema_closed_on_every_section():
    """`reportgen schema` prints a JSON Schema; every object refuses unknown keys."""
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["input"]
    sections = {"report", "input", "period", "cleaning", "rfm", "output"}
    assert sections <= set(schema["properties"])
    assert len(schema["$defs"]) >= 9
    for name, definition in schema["$defs"].items():
        assert definition["additionalProperties"] is False, name
    # input needs one source: path, or a database or Spark (tests/test_pushdown.py)
    assert schema["$defs"]["InputSection"]["anyOf"] == [
        {"required": ["path"]},
        {"required": ["database"]},
        {"required": ["spark"]},
    ]


def test_schema_accepts_the_shipped_config_and_refuses_unknown_keys():
    """The shipped config.yaml validates against the schema; a misspelt key does not."""
    schema = json.loads(invoke("schema").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    data = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    assert list(validator.iter_errors(data)) == []
    bad = {**data, "report": {**data["report"], "colour": "blue"}}
    errors = list(validator.iter_errors(bad))
    assert [list(e.absolute_path) for e in errors] == [["report"]]


def test_source_file_is_not_a_user_key(tmp_path):
    """`source_file:` in YAML is an unknown key, and the schema does not list it."""
    schema = json.loads(invoke("schema").stdout)
    assert "source_file" not in schema["properties"]
    path = write(tmp_path / "c.yaml", "input:\n  path: tx.csv\nsource_file: /etc/passwd\n")
    lines, _ = load_problems(path)
    assert lines == [f"{path}:3: source_file: {UNKNOWN_KEY}"]


# ---------------------------------------------------------------------------------------------
# reportgen init


@pytest.mark.parametrize(
    ("yaml_text", "line"),
    [
        (
            "input:\n  path: tx.csv\noutputs: {}\n",
            "3: outputs: unknown key; did you mean 'output'?",
        ),
        (
            "input:\n  path: tx.csv\n  columns: {custmer_id: id}\n",
            "3: input.columns.custmer_id: unknown key; did you mean 'customer_id'?",
        ),
        (
            "input:\n  path: tx.csv\nsegmentation:\n  algoritm: gmm\n",
            "4: segmentation.algoritm: unknown key; did you mean 'algorithm'?",
        ),
    ],
    ids=["top-level", "nested", "section"],
)
def test_a_misspelt_key_gets_the_closest_key(tmp_path, yaml_text, line):
    """An unknown key close to a key of its section names that key."""
    path = write(tmp_path / "c.yaml", yaml_text)
    lines, _ = load_problems(path)
    assert lines == [f"{path}:{line} (`reportgen schema` lists every key)"]


def test_init_writes_a_config_that_loads_as_is(tmp_path):
    """The starter file loads, points at the sample data and holds the defaults."""
    path = tmp_path / "starter.yaml"
    result = invoke("init", str(path))
    assert result.exit_code == 0
    assert result.stdout == f"{path}\n"
    config = load_config(path)
    assert config.input.path == "sample:online_retail"
    defaults = config_from_dict({"input": {"path": "sample:online_retail"}}, base_dir=tmp_path)
    assert config.output.dir == str(tmp_path.resolve() / "output")
    # Everything but `input` (set up for the sample data) holds the defaults.
    assert config.model_dump(exclude={"input"}) == defaults.model_dump(exclude={"input"})
    assert config.input.columns.customer_id == "CustomerID"
    assert validate(path).exit_code == 0


def test_init_default_path_is_config_yaml(tmp_path, monkeypatch):
    """Without PATH, init writes ./config.yaml."""
    monkeypatch.chdir(tmp_path)
    result = invoke("init")
    assert result.exit_code == 0
    assert result.stdout == "config.yaml\n"
    assert load_config(tmp_path / "config.yaml").input.path == "sample:online_retail"


def test_init_refuses_to_overwrite_without_force(tmp_path):
    """An existing file is kept (exit 2) unless --force is given."""
    path = write(tmp_path / "config.yaml", "# mine\n")
    result = invoke("init", str(path))
    assert result.exit_code == 2
    assert f"{path} exists; pass --force to overwrite it" in result.stderr
    assert result.stdout == ""
    assert path.read_text(encoding="utf-8") == "# mine\n"
    forced = invoke("init", "--force", str(path))
    assert forced.exit_code == 0
    assert load_config(path).input.path == "sample:online_retail"


def test_init_comments_every_key(tmp_path):
    """Every key of the schema appears in the starter file with a comment on its line."""
    path = tmp_path / "starter.yaml"
    assert invoke("init", str(path)).exit_code == 0
    text = path.read_text(encoding="utf-8")
    keys = yaml_keys(yaml.compose(text))
    assert set(keys) == model_keys(Config)
    raw_lines = text.splitlines()
    uncommented = [key for key, line in keys.items() if " # " not in raw_lines[line]]
    assert uncommented == []


def test_init_file_validates_against_the_schema(tmp_path):
    """The starter file and `reportgen schema` agree."""
    path = tmp_path / "starter.yaml"
    assert invoke("init", str(path)).exit_code == 0
    schema = json.loads(invoke("schema").stdout)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(data)) == []


def test_init_file_reads_the_sample_data(tmp_path):
    """The starter's column mapping matches the built-in sample data it points at."""
    path = tmp_path / "starter.yaml"
    assert invoke("init", str(path)).exit_code == 0
    config = load_config(path)
    tx = read_transactions(config.input, config.report.currency, config.period.timezone)
    assert {"customer_id", "order_id", "amount_minor"} <= set(tx.frame.collect_schema().names())


# ---------------------------------------------------------------------------------------------
# The shipped config


def test_shipped_config_validates():
    """/work/main/config.yaml is valid: exit 0, nothing on stdout."""
    result = validate(SHIPPED_CONFIG)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.rstrip().endswith(f"INFO reportgen: {SHIPPED_CONFIG}: valid")
    config = load_config(SHIPPED_CONFIG)
    assert config.input.path == "sample:online_retail"
    assert config.input.columns.mapped() == {
        "customer_id": "CustomerID",
        "order_id": "InvoiceNo",
        "order_date": "InvoiceDate",
        "quantity": "Quantity",
        "unit_price": "UnitPrice",
        "product_id": "StockCode",
    }
    assert config.output.dir == str(REPO / "output")
    assert config.report.report_slug == "online-retail-customer-segmentation"


@pytest.mark.parametrize(
    ("source", "named"),
    [({"database": {"url": "duckdb:///shop.duckdb", "table": "t"}}, "input.database"),
     ({"path": "tx.parquet", "format": "parquet"}, "Parquet")],
)  # fmt: skip
def test_header_row_is_for_csv_and_excel_only(source, named):
    """A source without a header row refuses input.header_row, naming the key."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({**MINIMAL, "input": {**source, "header_row": 3}})
    assert f"input.header_row: applies to CSV and Excel files, not to {named}" in str(info.value)
