"""`make bench`'s command and its one table writer: what the console shows is what ``--out`` writes,
in the layout of ``results/bench/<device>.md`` (title, notes, table, target lines). No timing asserted."""

from __future__ import annotations

import torch

from kdbench.bench import losses
from kdbench.bench.cli import main
from kdbench.bench.table import Section


def test_out_writes_what_the_console_showed(tmp_path, monkeypatch, capsys):
    rows = [{"N x C": "4 x 3", "kd_loss (ms)": 0.12345, "ratio": 1.5, "_hidden": "x"}]
    monkeypatch.setattr(losses, "section", lambda dev, quick: Section(
        "KD loss", rows, notes=["a note"], targets=["Targets:", "- one: MET"]))
    out = tmp_path / "b" / "cpu.md"
    assert main(["--device", "cpu", "--only", "loss", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == (
        f"# kdbench bench — device: CPU {text.split('CPU ')[1].split(', torch')[0]}, torch {torch.__version__}\n"
        "\n## KD loss\n\na note\n\n"
        "| N x C   |   kd_loss (ms) |   ratio |\n"
        "|:--------|---------------:|--------:|\n"
        "| 4 x 3   |          0.123 |     1.5 |\n"
        "\nTargets:\n- one: MET\n")
    assert capsys.readouterr().out == text + f"\nwrote {out}\n"


def test_a_section_without_rows_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(losses, "section", lambda dev, quick: Section("KD loss", []))
    assert main(["--device", "cpu", "--only", "loss"]) == 0
    assert capsys.readouterr().out.endswith("\n## KD loss\n\n(nothing measured)\n")
