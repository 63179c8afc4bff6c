"""lightning-hydra-template conventions (issue 14 part 8): debug configs, trainer presets, evaluating
a checkpoint, the config tree at start, machine-local overrides; and an acyclic module graph, counting
imports inside functions (issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_debug_fast_runs_one_batch_and_is_never_recorded_as_a_result(compose):
    from kdbench.train import run

    rec = run(compose("debug=fast", "logger=none"))
    assert rec["status"] == "debug" and rec["experiment"] == "debug" and len(rec["history"]) == 1


def test_debug_overfit_drives_the_training_loss_down_on_a_few_batches(compose):
    from kdbench.train import run

    rec = run(compose("debug=overfit", "logger=none", "distill=none", "trainer.max_epochs=15"))
    losses = [h["train_loss"] for h in rec["history"]]
    assert rec["status"] == "debug" and len(losses) == 15 and losses[-1] < 0.25 * losses[0]


@pytest.mark.parametrize("preset, acc, devices, strategy", [("gpu", "gpu", 1, "auto"), ("ddp", "gpu", 2, "ddp_spawn")])
def test_trainer_presets_compose_and_validate(compose, preset, acc, devices, strategy):
    from kdbench.config import validate

    cfg = compose(f"trainer={preset}")
    validate(cfg)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy) == (acc, devices, strategy)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_epochs == 20  # the rest from default


def test_eval_tests_a_runs_best_checkpoint_to_its_recorded_metrics(compose, tmp_path, capsys):
    from kdbench.cli import main
    from kdbench.train import run

    res = tmp_path / "results"
    rec = run(compose("distill=none", "trainer.max_epochs=2", "logger=none", results=res))
    ckpt = res / "checkpoints" / rec["experiment"] / rec["run_id"] / "best.ckpt"
    capsys.readouterr()
    assert main(["eval", f"ckpt={ckpt}", f"paths.results_dir={res}", "distill=none"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = rec["metrics"]["best"]["test"]
    for k in ("acc", "ece", "nll", "brier", "ece_ts", "nll_ts"):
        assert out["test"][k] == pytest.approx(best[k], rel=1e-6, abs=1e-7), k
    assert main(["eval", f"ckpt={tmp_path / 'nope.ckpt'}"]) == 2
    assert "ckpt: no checkpoint file" in capsys.readouterr().err


@pytest.mark.slow
def test_a_single_run_prints_its_config_tree_without_secrets(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "-m", "kdbench.train", "debug=fast", f"paths.results_dir={tmp_path}/r",
                          f"hydra.run.dir={tmp_path}/h", "trainer.progress=true"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "config: debug" in res.stdout and "├── distill" in res.stdout and "fast_dev_run: true" in res.stdout


def test_machine_local_overrides_come_from_conf_local_and_git_ignores_them(tmp_path):
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "local" / "default.yaml").write_text("# @package _global_\npaths: {data_dir: /scratch/data}\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=quickstart"])
    GlobalHydra.instance().clear()
    assert cfg.paths.data_dir == "/scratch/data" and cfg.experiment_name == "quickstart"
    ignored = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml"], cwd=REPO)
    assert ignored.returncode == 0  # a machine's file never lands in a commit


def test_epochs_report_progress_and_a_sweep_shows_its_running_jobs(compose, tmp_path, capsys):
    from kdbench.sweep import _running, plan
    from kdbench.train import run

    res = tmp_path / "results"
    rec = run(compose("distill=none", "trainer.max_epochs=2", "trainer.progress=false", results=res))
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "min left" in out
    prog = json.loads((res / "checkpoints" / rec["experiment"] / rec["run_id"] / "progress.json").read_text())
    assert prog["epoch"] == 2 and prog["epochs"] == 2 and prog["eta_s"] == 0
    jobs = plan(["experiment=quickstart", f"paths.results_dir={res}", "distill=kd", "distill.tau=2,8", "seed=0"])
    (first, _) = jobs
    folder = res / "checkpoints" / "quickstart" / first["run_id"]
    folder.mkdir(parents=True)
    import time

    (folder / "progress.json").write_text(json.dumps({"epoch": 3, "epochs": 20, "s_per_epoch": 1.5, "eta_s": 25.5,
                                                      "updated": time.time()}))
    _running(jobs, {}, ["distill.tau"])
    assert "running kd tau=2 seed 0: epoch 3/20, 1.5 s/epoch, about 0.4 min left" in capsys.readouterr().out


def test_callbacks_are_named_dicts_and_only_early_stopping_changes_the_run(compose):
    from kdbench.config import resolve, validate
    from kdbench.identity import run_id_of
    from kdbench.train import run

    plain, stop = compose(), compose("callbacks=early_stopping", "callbacks.early_stopping.patience=1")
    validate(stop)
    assert plain.callbacks.lr_monitor.logging_interval == "epoch"
    assert run_id_of(resolve(compose("callbacks=model_summary"))) == run_id_of(resolve(plain))  # it only prints
    assert run_id_of(resolve(stop)) != run_id_of(resolve(plain))
    rec = run(compose("distill=none", "trainer.max_epochs=40", "optim.lr=0.5", "callbacks=early_stopping",
                      "callbacks.early_stopping.patience=1", "logger=none"))
    assert rec["status"] == "complete" and len(rec["history"]) < 40  # it stopped, and says how far it went
    assert rec["metrics"]["last"]["epoch"] == rec["history"][-1]["epoch"]


# ---- no import cycle, counting imports inside functions -----------------------------------------


def import_graph(root: Path, package: str = "kdbench") -> dict[str, set[str]]:
    """Module -> the package modules it imports: module-level and function-level imports alike,
    ``import a.b``, ``from a.b import c`` (``c`` a module or a name), relative imports, and a registry's
    discovery (a call of ``import_submodules``: every public submodule of its package). Importing
    ``a.b.c`` runs ``a`` and ``a.b`` first, so it depends on them too; a module's dependence on its own
    enclosing packages (a plugin importing its registry's decorator) is not counted, since Python has
    them initialised before it."""
    import ast

    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}

    def targets(name: str, tree: ast.AST):
        here = name if name in packages else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                yield base
                yield from (f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Call) and "import_submodules" in (getattr(node.func, "id", None),
                                                                        getattr(node.func, "attr", None)):
                yield from (m for m in modules if m.rpartition(".")[0] == here
                            and not m.rpartition(".")[2].startswith("_"))

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target in targets(name, ast.parse(path.read_text())):
            parts = target.split(".")
            deps |= {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules}
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [node, dep]
            if dep not in state:
                found = visit(dep, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_the_cycle_finder_sees_every_kind_of_import(tmp_path):
    """A package whose cycles each hide behind one kind of import: each is found."""
    pkg = tmp_path / "kdbench"
    files = {"__init__.py": "", "a.py": "def f():\n    from kdbench import b\n", "b.py": "import kdbench.c\n",
             "c.py": "from .sub.d import x\n", "sub/__init__.py": "def discover():\n    import_submodules(__name__, __path__)\n",
             "sub/d.py": "from kdbench.sub import register\nx = 1\n", "sub/e.py": "from ..a import f\n"}
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["kdbench.a"] == {"kdbench.b"}  # its own package is not counted
    assert graph["kdbench.c"] == {"kdbench.sub", "kdbench.sub.d"} and graph["kdbench.sub"] == {"kdbench.sub.d", "kdbench.sub.e"}
    assert graph["kdbench.sub.d"] == set()  # the registry's own decorator
    cycle = find_cycle(graph)
    assert cycle == ["kdbench.a", "kdbench.b", "kdbench.c", "kdbench.sub", "kdbench.sub.e", "kdbench.a"], cycle
    (pkg / "sub" / "e.py").write_text("x = 2\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_no_import_cycle_between_kdbench_modules():
    """No module reaches itself through imports, even through imports inside functions and registry
    discovery: each module can be read, tested and changed without the ones that use it."""
    graph = import_graph(REPO)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
