"""`reportgen init`: a commented starter config, generated from the schema so it never drifts."""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import Config

_HEADER = """\
# reportgen configuration. Every key is optional except input.path; the values below are the
# defaults, except that `input` is set up for the built-in sample data so this file runs as it
# is: point input.path and input.columns at your own data. Check a file with
# `reportgen validate --config FILE`. For completion in editors, run
# `reportgen schema > reportgen.schema.json` and add the line
# `# yaml-language-server: $schema=./reportgen.schema.json` at the top.
# ${VAR} and ${VAR:-default} read environment variables (for secrets).
"""
# The built-in sample data's columns, so that the starter file runs as it is.
_PLACEHOLDERS = {
    "input.path": "sample:online_retail",
    "input.date_formats": "['%Y-%m-%d %H:%M:%S']",
    "input.columns.customer_id": "CustomerID",
    "input.columns.order_id": "InvoiceNo",
    "input.columns.order_date": "InvoiceDate",
    "input.columns.amount": "null",
    "input.columns.quantity": "Quantity",
    "input.columns.unit_price": "UnitPrice",
    "input.columns.product_id": "StockCode",
    "input.attributes": "[Country]",
}


def render_starter_config() -> str:
    """The whole starter file."""
    return _HEADER + "\n".join(_model_lines(Config, "", 0)) + "\n"


def _model_lines(model: type[BaseModel], prefix: str, depth: int) -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _submodel(field)
        indent = "  " * depth
        comment = f"  # {field.description}" if field.description else ""
        if sub is not None:
            if depth == 0:
                lines.append("")
            lines.append(f"{indent}{name}:{comment}")
            lines += _model_lines(sub, dotted + ".", depth + 1)
        else:
            lines.append(f"{indent}{name}: {_default_text(field, dotted)}{comment}")
    return lines


def _submodel(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _default_text(field: FieldInfo, dotted: str) -> str:
    if dotted in _PLACEHOLDERS:
        return _PLACEHOLDERS[dotted]
    value: Any = field.get_default(call_default_factory=True)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip() or "null"


def json_schema() -> str:
    """The JSON Schema of the config file, for editors."""
    return json.dumps(Config.model_json_schema(), indent=2)
