"""CSV cells that a spreadsheet will not run as formulas (CSV injection, OWASP's rule).

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and
some also after a leading tab or carriage return) as a formula, so a frame named ``=HYPERLINK(...)_bmode.png``
or a crafted model's class name would run as one when a clinician opens ``detections.csv``. Such text
cells get a leading ``'``, which spreadsheets show as text. Plain numbers (``-1.5``, ``+3``, ``-2e-05``)
stay as they are: numeric columns must remain numeric. Standard library only: the inference path uses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: object) -> str:
    """``value`` as CSV text that no spreadsheet evaluates; plain numbers unchanged."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_PREFIXES) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def safe_row(row: Iterable[object]) -> list[str]:
    """Every cell of one CSV row through ``safe_cell``."""
    return [safe_cell(value) for value in row]
