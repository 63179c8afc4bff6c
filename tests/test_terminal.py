"""What one run prints (issue 24 points 5, 6, 8): the config tree only when asked, one line for a refused and
for a skipped run, no warning about keys scratch never reads, and a warning for a warm-up as long as the run.
Measured on the printed lines of ``python -m kdbench.train`` (Hydra's entry point, in this process)."""

from __future__ import annotations

import pytest

from tests.conftest import train_main


def lines(capfd) -> list[str]:
    out, err = capfd.readouterr()
    return [ln for ln in (out + err).splitlines() if ln.strip()]


def _base(tmp_path) -> list[str]:
    return [f"paths.results_dir={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'out'}", "logger=none", "distill=none",
            "trainer.max_epochs=1"]


def test_a_refused_run_prints_one_line_and_the_tree_only_when_asked(tmp_path, capfd):
    # trainer.progress on (an interactive run's default, under which the ~115-line tree used to come first)
    assert train_main([*_base(tmp_path), "dataset.batch_size=0"]) == 2
    (refused,) = lines(capfd)
    assert refused.startswith("kdbench: error: dataset.batch_size: ") and refused.endswith("got 0")
    assert train_main([*_base(tmp_path), "dataset.batch_size=0", "print_config=true"]) == 2
    tree = lines(capfd)
    assert tree[0] == "config: default" and any("batch_size: 0" in ln for ln in tree) and tree[-1] == refused


@pytest.mark.slow  # trains a (1-epoch) scratch run
def test_a_scratch_run_warns_of_nothing_and_a_skipped_run_prints_one_line(tmp_path, capfd):
    assert train_main([*_base(tmp_path), "trainer.progress=false"]) == 0
    first = lines(capfd)
    assert not any("not read by method" in ln or "warning" in ln.lower() for ln in first), first
    assert train_main(_base(tmp_path)) == 0
    (skipped,) = lines(capfd)
    assert "already complete" in skipped and "force=true" in skipped


def test_print_config_changes_no_run_id(compose):
    from kdbench.config import resolve
    from kdbench.identity import run_id_of

    assert run_id_of(resolve(compose("print_config=true"))) == run_id_of(resolve(compose()))


def test_a_warm_up_as_long_as_the_run_is_announced_naming_both_keys(compose):
    from kdbench.config import unusual_values

    (never,) = unusual_values(compose("distill=dkd", "trainer.max_epochs=2"))  # DKD's default warm-up: 20 epochs
    assert "distill.warmup_epochs=20" in never and "trainer.max_epochs=2" in never and "never" in never
    (last,) = unusual_values(compose("distill=dkd", "trainer.max_epochs=5", "distill.warmup_epochs=5"))
    assert "only in the last epoch" in last
    assert unusual_values(compose("distill=dkd", "trainer.max_epochs=21")) == []
    assert unusual_values(compose("distill=dkd", "trainer.max_epochs=2", "distill.warmup_epochs=0")) == []
    assert unusual_values(compose("distill=kd", "trainer.max_epochs=2")) == []  # KD has no warm-up


def test_scratch_announces_no_distill_key_while_a_method_still_names_what_it_ignores(compose, caplog):
    import logging

    from kdbench.lifecycle import Job

    with caplog.at_level(logging.DEBUG, logger="kdbench"):
        Job.of(compose("distill=none"), [])  # inherits KD's keys for grids such as distill=kd,none distill.tau=1,4
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.DEBUG, logger="kdbench"):
        Job.of(compose("distill=dkd", "+distill.alpha=0.3"), [])  # a shared recipe's alpha: DKD does not read it
    assert any("distill.alpha: not read by method dkd" in r.getMessage() for r in caplog.records)


def test_make_help_lists_every_target_with_a_description():
    import re
    import subprocess

    from tests.conftest import REPO

    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    documented = re.findall(r"^([a-zA-Z0-9_-]+):.*?## ", (REPO / "Makefile").read_text(), flags=re.M)
    assert "study-cifar10" in documented
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("  make ")] == documented
