"""The results file of ``aiokd evaluate``: its format, and the table and CSV made from it.

``results.json`` holds the settings of the evaluation (model, test set, beam, engine, dtype,
device, threads, the sacreBLEU signatures, how size and latency were measured) and one entry per
student::

    {"student": "6-2", "enc_layers": 6, "dec_layers": 2, "bleu": 34.1, "chrf": 60.2,
     "tok_bleu": 35.0 | null, "length_ratio": 0.98, "params": 9_870_000,
     "params_no_embeddings": 7_820_000, "size_bytes": 39_500_000, "size_mb": 39.5,
     "ms_per_sentence": 12.3 | null, "sentences_per_second": 210.0 | null,
     "peak_memory_mb": 610.0 | null}

``length_ratio`` is the translations' length over the references' in sacreBLEU's BLEU tokens
(below 1, BLEU's brevity penalty applies).  Sizes are in MB of 10^6 bytes.  Latency figures are
null when evaluation ran with ``--no-latency``.  ``translations`` names the directory beside the
file that holds every student's output (see :mod:`aiokd.evaluation.evaluate`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from aiokd.errors import UserError

FORMAT = "aiokd-results"
VERSION = 1

COLUMNS = ("student", "enc_layers", "dec_layers", "bleu", "chrf", "tok_bleu", "length_ratio",
           "params", "params_no_embeddings", "size_bytes", "size_mb", "ms_per_sentence",
           "sentences_per_second", "peak_memory_mb")
"""The fields of a student entry, in the order of the CSV columns."""

_NUMBERS = COLUMNS[1:]
_REQUIRED = ("bleu", "params")


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed results file, checked to be one written by ``aiokd evaluate``.

    Raises:
        UserError: the file is missing, not JSON, or not a results file of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such results file; make one with `aiokd evaluate`")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: damaged results file ({error})") from error
    check_results(results, str(path))
    return results


def check_results(results: Any, where: str = "results") -> None:
    """Raise a UserError naming ``where`` unless ``results`` is a well-formed results dict."""
    if not isinstance(results, dict) or results.get("format") != FORMAT:
        raise UserError(f"{where}: not an {FORMAT} file (made by `aiokd evaluate`)")
    if results.get("version") != VERSION:
        raise UserError(f"{where}: unsupported {FORMAT} version {results.get('version')!r}")
    students = results.get("students")
    if not isinstance(students, list) or not students:
        raise UserError(f"{where}: damaged results file (no student entries)")
    for entry in students:
        if not isinstance(entry, dict) or not isinstance(entry.get("student"), str):
            raise UserError(f"{where}: damaged results file (a student entry has no name)")
        for key in _NUMBERS:
            value = entry.get(key)
            if value is None and key in _REQUIRED:
                raise UserError(f"{where}: damaged results file ({entry['student']}: no {key})")
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise UserError(f"{where}: damaged results file ({entry['student']}: {key} is "
                                f"{value!r}, not a number)")


def csv_text(students: list[dict[str, Any]]) -> str:
    """One CSV row per student entry, with a header of :data:`COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for entry in students:
        writer.writerow({key: "" if entry.get(key) is None else entry[key] for key in COLUMNS})
    return buffer.getvalue()


def millions(count: float | None) -> str:
    """``9_870_000`` -> ``"9.87M"``."""
    return "-" if count is None else f"{count / 1e6:.2f}M"


def number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_HEADER = ("student", "BLEU", "chrF", "params", "params w/o emb", "size MB", "ms/sent",
                "sent/s")


def table_row(entry: dict[str, Any]) -> tuple[str, ...]:
    """The cells of one student in :func:`markdown_table`."""
    return (entry["student"], number(entry.get("bleu"), 2), number(entry.get("chrf"), 2),
            millions(entry.get("params")), millions(entry.get("params_no_embeddings")),
            number(entry.get("size_mb"), 1), number(entry.get("ms_per_sentence"), 1),
            number(entry.get("sentences_per_second"), 1))


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table with aligned columns; every column but the first is right-aligned."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)]
                          + ["-" * (width + 1) + ":" for width in widths[1:]]) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
