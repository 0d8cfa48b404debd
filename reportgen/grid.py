"""The classic RFM grid: a complete map from (R, F, M) scores to segment names.

The default map ships as `data/rfm_segment_map.csv` (125 score codes, 11 names). A replacement,
as a CSV file or as `{name: [patterns]}` in YAML, must cover every code exactly once: a gap
would leave customers without a name and an overlap would make the name depend on rule order.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)

ALL_CODES = tuple("".join(c) for c in itertools.product("12345", repeat=3))
_SHOWN = 6  # how many offending codes an error lists


@dataclass(frozen=True)
class SegmentMap:
    """Score code ('RFM', e.g. '545') -> segment name, for all 125 codes."""

    names_by_code: dict[str, str]
    source: str

    @property
    def names(self) -> list[str]:
        """The segment names, in order of first appearance."""
        return list(dict.fromkeys(self.names_by_code.values()))

    def to_frame(self) -> pl.DataFrame:
        """The map as a frame keyed by the three scores (Int8), with the code ('545')."""
        codes = list(self.names_by_code)
        return pl.DataFrame(
            {
                "r_score": [int(c[0]) for c in codes],
                "f_score": [int(c[1]) for c in codes],
                "m_score": [int(c[2]) for c in codes],
                "rfm_grid_segment": list(self.names_by_code.values()),
                "rfm_score": codes,
            },
            schema_overrides={"r_score": pl.Int8, "f_score": pl.Int8, "m_score": pl.Int8},
        )


def builtin_map_path() -> Path:
    """The shipped default map."""
    return Path(str(resources.files("reportgen") / "data" / "rfm_segment_map.csv"))


def load_segment_map(spec: str | dict[str, list[str | int]] = "builtin") -> SegmentMap:
    """Load and validate a segment map; raise ValueError naming any gap or overlap."""
    if isinstance(spec, dict):
        pairs = _pairs_from_patterns(spec)
        source = "config (patterns)"
    else:
        path = builtin_map_path() if spec == "builtin" else Path(spec)
        pairs = _pairs_from_csv(path)
        source = "builtin" if spec == "builtin" else str(path)
    return SegmentMap(names_by_code=_check_partition(pairs), source=source)


def _pairs_from_csv(path: Path) -> list[tuple[str, str]]:
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"cannot read the segment map {path}: {exc}") from None
    missing = {"r_score", "f_score", "m_score", "segment"} - set(frame.columns)
    if missing:
        raise ValueError(f"segment map {path} lacks the columns {sorted(missing)}")
    rows = frame.select("r_score", "f_score", "m_score", "segment").iter_rows()
    pairs = [(f"{r.strip()}{f.strip()}{m.strip()}", name) for r, f, m, name in rows]
    bad = [code for code, _ in pairs if code not in ALL_CODES]
    if bad:
        raise ValueError(f"segment map {path}: scores must be 1-5, found codes {bad[:_SHOWN]}")
    return pairs


def _pairs_from_patterns(spec: dict[str, list[str | int]]) -> list[tuple[str, str]]:
    pairs, unused = [], []
    for name, patterns in spec.items():
        for pattern in patterns:
            matched = [code for code in ALL_CODES if fnmatch.fnmatchcase(code, str(pattern))]
            if not matched:
                unused.append(f"{name}: {pattern!r}")
            pairs += [(code, name) for code in matched]
    if unused:
        raise ValueError(f"segment map patterns that match no score code: {unused[:_SHOWN]}")
    return pairs


def _check_partition(pairs: list[tuple[str, str]]) -> dict[str, str]:
    names: dict[str, set[str]] = defaultdict(set)
    for code, name in pairs:
        names[code].add(name)
    gaps = [code for code in ALL_CODES if code not in names]
    overlaps = {code: sorted(n) for code, n in names.items() if len(n) > 1}
    problems = []
    if gaps:
        problems.append(f"{_codes(len(gaps))} no segment (e.g. {', '.join(gaps[:_SHOWN])})")
    if overlaps:
        shown = "; ".join(f"{c} -> {' / '.join(n)}" for c, n in list(overlaps.items())[:_SHOWN])
        problems.append(f"{_codes(len(overlaps))} more than one segment ({shown})")
    if problems:
        raise ValueError("segment map refused: " + "; ".join(problems))
    return {code: next(iter(names[code])) for code in ALL_CODES}


def _codes(count: int) -> str:
    return "1 score code has" if count == 1 else f"{count} score codes have"


def describe_map(segment_map: SegmentMap) -> dict[str, Any]:
    """Each name with its score codes, for the report's method section."""
    codes: dict[str, list[str]] = defaultdict(list)
    for code, name in segment_map.names_by_code.items():
        codes[name].append(code)
    return {"source": segment_map.source, "codes_by_segment": dict(codes)}
