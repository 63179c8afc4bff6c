"""The three seams (batches with views, teacher signals, methods), the layering, and the traps the
redesign closed: teachers trained from their own recipe, run ids of resolved configs, NaN metrics."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import FAST, REPO

PKG = REPO / "kdbench"


# ---- layering ---------------------------------------------------------------------------------


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, [names])`` of every import in a file, function-local ones included."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
FRAMEWORKS = ("pytorch_lightning", "lightning", "hydra", "omegaconf", "wandb")


def _top(mod: str) -> str:
    return mod.split(".")[0]


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith(("kdbench.losses", "kdbench.methods"))])
def test_losses_and_methods_import_no_framework(name):
    bad = [m for m, _ in _imports(MODULES[name]) if _top(m) in FRAMEWORKS]
    assert not bad, f"{name} imports {bad}"


def test_data_and_models_do_not_import_each_other():
    for name, path in MODULES.items():
        for mod, _ in _imports(path):
            if name.startswith("kdbench.data"):
                assert not mod.startswith("kdbench.models"), f"{name} imports {mod}"
            if name.startswith("kdbench.models"):
                assert not mod.startswith("kdbench.data"), f"{name} imports {mod}"


def test_nothing_imports_train_and_no_private_cross_module_imports():
    for name, path in MODULES.items():
        for mod, names in _imports(path):
            assert mod != "kdbench.train", f"{name} imports kdbench.train"
            if mod.startswith("kdbench") and mod != name:
                private = [n for n in names if n.startswith("_") and n != "__version__"]
                assert not private, f"{name} imports private {private} from {mod}"


@pytest.mark.parametrize(("module", "function"), [("runner", "_run"), ("fused", "_run_group"), ("fused", "_fit_group")])
def test_run_reads_in_one_pass(module, function):
    """The functions that do a run's work (``runner.run`` is a wrapper around ``_run``; train.py is the
    command) read top to bottom on one screen: a job's life is kdbench.lifecycle's, not theirs."""
    tree = ast.parse((PKG / f"{module}.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    assert fn.end_lineno - fn.lineno + 1 <= 70, f"{module}.{function}: {fn.end_lineno - fn.lineno + 1} lines"


# ---- methods ----------------------------------------------------------------------------------


def test_kd_method_is_kd_loss_terms():
    from kdbench.data import Batch
    from kdbench.losses import kd_loss_terms
    from kdbench.methods import build_method

    torch.manual_seed(0)
    s, t, y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    params = {"alpha": 0.3, "tau": 3.0, "kl": "reverse", "tau_squared": False, "kl_reduction": "sum",
              "student_tau_one": False, "variant": "x", "enabled": True, "teacher_grad": False}
    m = build_method("kd", params)
    got = m(s, t, Batch(s, y, torch.arange(16), torch.zeros(16, dtype=torch.long)))
    want = kd_loss_terms(s, t, y, alpha=0.3, tau=3.0, kl="reverse", tau_squared=False)
    assert set(got) == {"loss", "ce", "kl"}
    for k in got:
        assert torch.equal(got[k], want[k])


def test_a_new_method_is_one_class_and_trains(compose):
    """Register a toy method (MSE to the teacher's logits, Ba & Caruana's logit regression) and train with
    it through the whole harness: it sees Batch objects whose views replay and the online teacher's logits."""
    from kdbench.methods import register_method
    from kdbench.train import run

    calls: list[dict] = []

    @dataclass(frozen=True)
    class LogitMSE:
        alpha: float = 0.5
        needs_teacher = True

        def __call__(self, student_logits, teacher, batch):
            calls.append({"teacher": teacher.detach().clone(), "x": batch.x.detach().clone(),
                          "view": batch.view.clone(), "requires_grad": teacher.requires_grad})
            ce = F.cross_entropy(student_logits, batch.y)
            mse = F.mse_loss(student_logits, teacher)
            return {"loss": self.alpha * ce + (1 - self.alpha) * mse, "ce": ce, "mse": mse}

    register_method("toy_logit_mse")(LogitMSE)
    rec = run(compose(*FAST, "distill.method=toy_logit_mse", "distill.variant=logit_mse", "trainer.max_epochs=1"))
    assert rec["status"] == "complete" and rec["distill"]["method"] == "toy_logit_mse"
    assert calls and all(not c["requires_grad"] for c in calls)  # the frozen teacher: no gradient
    # the logits it got are the registry teacher's on exactly that batch
    from kdbench.data import load_dataset
    from kdbench.models import build_model
    from kdbench.teachers import load_into

    data = load_dataset({"name": "digits"})
    teacher = build_model(rec["teacher"]["arch"], 10, data.input_shape, **rec["config"]["teacher"]["kwargs"])
    load_into(teacher, Path(rec["teacher"]["path"]), rec["teacher"]["arch"], 10)
    teacher.eval()
    with torch.no_grad():
        assert torch.allclose(teacher(calls[0]["x"]), calls[0]["teacher"], atol=1e-6)


def test_unknown_method_is_a_one_line_config_error(compose):
    from kdbench.config import validate
    from kdbench.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate(compose("distill.method=nosuch"))
    assert e.value.key == "distill.method" and "kd" in str(e.value)


# ---- teacher signal ---------------------------------------------------------------------------


def test_online_signal_runs_teacher_in_eval_under_inference_mode():
    from kdbench.data import Batch
    from kdbench.signals import NoSignal, build_signal
    from kdbench.signals.online import OnlineSignal

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    teacher.train()
    sig = OnlineSignal(teacher)
    b = Batch(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), torch.arange(5), torch.zeros(5, dtype=torch.long))
    a1, a2 = sig(b, "train"), sig(b, "train")
    assert torch.equal(a1, a2) and not teacher.training  # eval mode: dropout off
    assert not a1.requires_grad and not a1.is_inference()  # usable by an autograd loss
    s = torch.randn(5, 3, requires_grad=True)
    (s.log_softmax(-1) * a1.softmax(-1)).sum().backward()  # an inference tensor here would raise
    ablation = OnlineSignal(teacher, train_mode=True)
    assert not torch.equal(ablation(b, "train"), ablation(b, "train"))  # dropout on in the ablation
    assert torch.equal(ablation(b, "val"), a1)  # evaluation always in eval mode
    assert isinstance(build_signal("none", teacher=teacher), NoSignal) and NoSignal()(b, "train") is None
    assert isinstance(build_signal("online", teacher=teacher), OnlineSignal)


def test_student_checkpoints_hold_no_teacher(compose, tmp_path):
    from kdbench.train import run

    rec = run(compose(*FAST, "trainer.max_epochs=1", "logger=none"))
    ckpts = list((tmp_path / "results" / "checkpoints").rglob("last.ckpt"))
    student_ckpts = [c for c in ckpts if "teachers" not in c.parts]
    assert student_ckpts and rec["status"] == "complete"
    state = torch.load(student_ckpts[0], map_location="cpu", weights_only=True)
    assert state["state_dict"] and all(not k.startswith("teacher") for k in state["state_dict"])
    assert "kdbench_teacher" not in state
    # the registry entry's training checkpoints are removed once it is saved (a later retrain starts afresh)
    assert not [c for c in ckpts if "teachers" in c.parts]


# ---- traps ------------------------------------------------------------------------------------


def test_teacher_trains_from_its_recipe_not_the_student_trainer(compose, tmp_path):
    """A smoke run with trainer.limit_train_batches=1 must not register a crippled teacher under the full
    recipe's key: the teacher it trains is bit-identical to one trained on its own."""
    from safetensors.torch import load_file

    from kdbench.train import run

    smoke = run(compose(*FAST, "trainer.limit_train_batches=1", "trainer.gradient_clip_val=0.01", "logger=none",
                        results=tmp_path / "a"))
    alone = run(compose(*FAST, "teacher_only=true", "logger=none", results=tmp_path / "b"))
    assert smoke["teacher"]["key"] == alone["teacher"]["key"]
    w1 = load_file(str(Path(smoke["teacher"]["path"]) / "model.safetensors"))
    w2 = load_file(str(Path(alone["teacher"]["path"]) / "model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_teacher_key_holds_the_precision_it_trained_in(compose):
    from kdbench.data import load_dataset
    from kdbench.teachers import key_fields, teacher_key

    data = load_dataset({"name": "digits"})
    cfg = {"arch": "mlp", "kwargs": {}, "recipe": {"epochs": 1}, "seed": 0}
    ds = {"name": "digits"}
    k32 = teacher_key(key_fields(cfg, ds, data, "32-true"))
    assert k32 == teacher_key({"arch": "mlp", "kwargs": {}, "dataset": {"name": "digits", "num_classes": 10,
                                                                           "n_train": int(data.train_x.shape[0])},
                               "recipe": {"epochs": 1}, "seed": 0})  # float32 keys are the pre-existing ones
    assert teacher_key(key_fields(cfg, ds, data, "bf16-mixed")) != k32


def test_run_id_hashes_resolved_values(compose):
    from kdbench.config import resolve
    from kdbench.identity import run_id_of

    on_this_cpu = run_id_of(resolve(compose("trainer.accelerator=auto")))
    assert on_this_cpu == run_id_of(resolve(compose("trainer.accelerator=cpu")))
    gpu = resolve(compose("trainer.accelerator=gpu"))
    assert gpu["trainer"]["precision"] == "bf16-mixed" and gpu["trainer"]["channels_last"] is True
    assert run_id_of(gpu) != on_this_cpu  # a GPU run is never skipped as the CPU run's "already complete"
    # keys that do not change the computation do not change the id; data_seed does
    assert run_id_of(resolve(compose("trainer.progress=true", "experiment_name=other"))) == on_this_cpu
    assert run_id_of(resolve(compose("data_seed=7"))) != on_this_cpu
    assert resolve(compose("seed=3"))["data_seed"] == 3
    assert resolve(compose("distill=none"))["teacher_signal"] == "none"


def test_nan_metrics_show_as_nan():
    from kdbench.metrics import ClassificationMetrics

    m = ClassificationMetrics(3, with_teacher=True)
    logits = torch.tensor([[1.0, 2.0, 3.0], [float("nan"), 0.0, 0.0]])
    y = torch.tensor([2, 0])
    m.update(logits, y, teacher_logits=torch.tensor([[0.0, 0.0, 1.0], [float("nan"), 0.0, 0.0]]))
    out = m.compute()
    for k in ("nll", "brier", "kl_teacher"):
        assert out[k] != out[k], f"{k} dropped the NaN example: {out[k]}"


def test_a_new_teacher_signal_is_one_factory_and_trains(compose):
    """Register a toy signal (the online teacher's logits scaled by 2, recording the splits it serves) and
    train with it: the LightningModule needs no change, and every split asks the signal."""
    from kdbench.signals import register_signal
    from kdbench.signals.online import OnlineSignal
    from kdbench.train import run

    splits: list[str] = []

    class Doubled(OnlineSignal):
        kind = "toy_doubled"

        def __call__(self, batch, split):
            splits.append(split)
            return 2 * super().__call__(batch, split)

    register_signal("toy_doubled")(lambda *, teacher, conf, data, **_: Doubled(teacher))
    rec = run(compose(*FAST, "teacher_signal=toy_doubled", "trainer.max_epochs=1", "logger=none"))
    assert rec["status"] == "complete" and rec["teacher_signal"] == "toy_doubled"
    assert set(splits) == {"train", "val", "test"}
    # the teacher metrics of the run are the doubled logits' (same argmax, sharper): accuracy equals the registry's
    assert rec["teacher"]["test"]["acc"] == pytest.approx(rec["teacher"]["registry_test"]["acc"])
    assert rec["teacher"]["test"]["nll"] != pytest.approx(rec["teacher"]["registry_test"]["nll"])


def test_records_from_before_the_resolved_run_id_are_re_keyed_only_when_the_computation_matches(tmp_path):
    """`kdbench records migrate` moves a pre-redesign record to the id a sweep plans today, and refuses a
    record whose config no longer describes today's computation."""
    import json
    import shutil

    from kdbench.migrate import migrate
    from kdbench.sweep import plan

    src = sorted((REPO / "results" / "runs" / "mnist_ablation").glob("*.json"))[0]
    rec = json.loads(src.read_text())
    runs = tmp_path / "runs" / "mnist_ablation"
    runs.mkdir(parents=True)
    # a record as the pre-redesign code wrote it: its id hashed "auto" unresolved, no data_seed/method/signal
    rec.pop("migrated_from", None)
    old = {**rec, "run_id": "kd-s0-0123456789", "config": {k: v for k, v in rec["config"].items()
                                                           if k not in ("data_seed", "teacher_signal")}}
    old["config"]["distill"] = {k: v for k, v in old["config"]["distill"].items() if k != "method"}
    old["config"]["trainer"] = {**old["config"]["trainer"], "accelerator": "auto", "precision": "auto"}
    (runs / "kd-s0-0123456789.json").write_text(json.dumps(old))
    tampered = {**old, "run_id": "kd-s0-9999999999",
                "config": {**old["config"], "distill": {**old["config"]["distill"], "tau": 5.0}}}
    (runs / "kd-s0-9999999999.json").write_text(json.dumps(tampered))
    res = migrate(tmp_path / "runs", "mnist_ablation", log=lambda *_: None)
    assert len(res["moved"]) == 1 and len(res["refused"]) == 1 and "distill.tau" in res["refused"][0][1]
    moved = json.loads(Path(res["moved"][0][1]).read_text())
    planned = {j["run_id"] for j in plan(rec["overrides"])}
    assert moved["run_id"] in planned and moved["migrated_from"] == ["kd-s0-0123456789"]
    assert moved["metrics"] == rec["metrics"] and moved["history"] == rec["history"]
    assert (runs / "kd-s0-9999999999.json").exists() and not (runs / "kd-s0-0123456789.json").exists()
    shutil.rmtree(tmp_path / "runs")
