"""W&B identity and names (issue 14 part 2): one kdbench run is one W&B run, named by what varies."""

from __future__ import annotations

import re


def test_wandb_ids_are_derived_from_the_run_and_valid():
    from kdbench.tracking import wandb_id

    a, b = wandb_id("exp", "kd-s0-0123456789"), wandb_id("other", "kd-s0-0123456789")
    assert a == wandb_id("exp", "kd-s0-0123456789") and a != b  # stable; unique across experiments
    long = wandb_id("x" * 80, "kd-s0-0123456789")
    assert len(long) <= 64 and long != wandb_id("x" * 79 + "y", "kd-s0-0123456789")
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", w) for w in (a, b, long, wandb_id("a/b c", "kd.s0")))


def test_run_names_carry_what_the_command_line_varied():
    from kdbench.tracking import run_name

    ov = ["experiment=mnist_ablation", "distill=kd", "distill.tau=4", "distill.alpha=0.5", "seed=2",
          "paths.results_dir=/tmp/x", "trainer.progress=false", "pair=resnet56_resnet20"]
    assert run_name("kd", 2, ov) == "kd tau=4 alpha=0.5 pair=resnet56_resnet20 s2"
    assert run_name("kd", 2, [o.replace("tau=4", "tau=1") for o in ov]) != run_name("kd", 2, ov)
    assert run_name("scratch", 0, []) == "scratch s0"
