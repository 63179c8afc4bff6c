"""The one table writer of ``make bench``: every section's title, notes, Markdown table and target lines,
printed as they come and kept for ``--out`` (the file is what the console showed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    """One section of the output: ``rows`` become a Markdown table (medians, ratios; keys starting with
    ``_`` are for the target lines, not the table); ``targets`` (lines marked MET / NOT MET) follow it."""

    title: str
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    targets: list[str] | None = None


def markdown(rows: list[dict]) -> str:
    """The rows as a pipe table, three significant digits; columns whose name starts with ``_`` left out."""
    import pandas as pd

    if not rows:
        return "(nothing measured)"
    shown = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return pd.DataFrame(shown).to_markdown(index=False, floatfmt=".3g")


class Report:
    """Prints lines and keeps them, so that ``--out`` writes exactly what the console showed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def emit(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def section(self, s: Section) -> None:
        self.emit(f"\n## {s.title}\n")
        for line in s.notes:
            self.emit(line)
        if s.notes:
            self.emit()
        self.emit(markdown(s.rows))
        if s.targets is not None:
            self.emit()
            for line in s.targets:
                self.emit(line)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")
        return path
