"""What one run prints (issue 24 points 5, 6, 8): the config tree only when asked, one line for a refused and
for a skipped run, no warning about keys scratch never reads, and a warning for a warm-up as long as the run.
Measured on the printed lines of ``python -m kdbench.train`` (Hydra's entry point, in this process)."""

from __future__ import annotations

from tests.conftest import train_main


def lines(capfd) -> list[str]:
    out, err = capfd.readouterr()
    return [ln for ln in (out + err).splitlines() if ln.strip()]


def test_a_scratch_run_warns_of_nothing_and_refused_and_skipped_runs_print_one_line(tmp_path, capfd):
    base = [f"paths.results_dir={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'out'}", "logger=none", "distill=none",
            "trainer.max_epochs=1"]
    assert train_main([*base, "trainer.progress=false"]) == 0
    first = lines(capfd)
    assert not any("not read by method" in ln or "warning" in ln.lower() for ln in first), first
    assert not any(ln.startswith("config:") for ln in first)  # no tree unless asked
    # trainer.progress on (an interactive run's default, under which the ~115-line tree used to come first)
    assert train_main(base) == 0
    (skipped,) = lines(capfd)
    assert "already complete" in skipped and "force=true" in skipped
    assert train_main([*base, "dataset.batch_size=0"]) == 2
    (refused,) = lines(capfd)
    assert refused.startswith("kdbench: error: dataset.batch_size")
    assert train_main([*base, "print_config=true"]) == 0
    tree = lines(capfd)
    assert tree[0].startswith("config: default") and any("batch_size" in ln for ln in tree) and len(tree) > 20


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
