"""Markdown tables for result files: tabulate's GitHub format, with one number format."""
import math
from typing import Sequence

from tabulate import tabulate


def fmt(value, digits: int = 3) -> str:
    """A cell: None/NaN as '–', small or huge floats in scientific notation, others readable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits}e}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:,.{max(digits - 2, 1)}f}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells formatted by `fmt`, strings left as they are."""
    return tabulate([[fmt(v) for v in row] for row in rows], headers=list(columns), tablefmt="github",
                    disable_numparse=True)
