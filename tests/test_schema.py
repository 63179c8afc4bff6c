"""The config schema (kdbench/schema.py): every key of every config is in it, and a bad value for any
key of it is refused before any work, with one line naming that key (issue 16 part 8, issue 14 part 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench import schema
from kdbench.errors import ConfigError
from kdbench.kinds import Spec

REPO = Path(__file__).resolve().parent.parent
GROUPS = sorted(d.name for d in (REPO / "conf").iterdir() if d.is_dir() and d.name not in ("hydra",))


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["logger=wandb", *overrides])


def _every_option():
    for g in GROUPS:
        for f in sorted((REPO / "conf" / g).glob("*.yaml")):
            yield ["experiment=cifar100", f"pair={f.stem}"] if g == "pair" else [f"{g}={f.stem}"]


def test_every_key_of_every_config_option_is_in_the_schema():
    from omegaconf import OmegaConf

    missing = {}
    for option in _every_option():
        c = OmegaConf.to_container(_compose(*option), resolve=False)
        for key in schema.leaves({k: v for k, v in c.items() if k not in schema.SKIP}):
            if schema.spec_of(key) is None:
                missing.setdefault(key, " ".join(option))
    assert not missing, f"keys no schema entry covers (add them to kdbench/schema.py): {missing}"


def _bad_values(spec: Spec) -> list:
    """Values (as the command line would give them) that ``spec`` must refuse."""
    if spec.kind == "bool":
        return ["abc", 2]
    if spec.kind == "str":
        return [123]
    if spec.kind == "name":
        return [123, "../x", ".hidden", "a b"]
    if spec.kind == "map":
        return [3, "abc"]
    if spec.kind == "choice":
        return ["not_a_choice"]
    if spec.kind == "list":
        return ["abc", ["abc"] if spec.item is not None and spec.item.kind in ("int", "number") else [1]] + \
            ([[spec.item.lo - 1]] if spec.item is not None and spec.item.lo is not None else [])
    if spec.kind == "count_or_fraction":
        return ["abc", [1], True, (spec.lo or 0) - 1, 1.5, -0.5] + ([1.0] if spec.hi_open else [0.0])
    out: list = ["abc", [1], float("inf")]
    if spec.kind == "int":
        out.append(1.5)
    if spec.lo is not None:
        out.append(spec.lo - 1)
    if spec.hi is not None:
        out.append(spec.hi if spec.hi_open else spec.hi + 1)
    if not spec.optional:
        out.append(None)
    return out


CASES = [(key, bad) for key, spec in schema.SCHEMA.items() if "*" not in key and spec.kind != "any"
         for bad in _bad_values(spec)]
_BASES: dict = {}


def _base(key: str, results: str):
    """The composed config the key lives in (composed once: Hydra's compose is the slow part)."""
    extra = ()
    if key.startswith("dataset.") and key.split(".")[1] in ("dim", "noise", "n_train", "n_test", "num_classes", "seed"):
        extra = ("dataset=synthetic",)
    elif key.endswith("optim.betas"):
        extra = ("optim=adamw",)
    if extra not in _BASES:
        _BASES[extra] = _compose(*extra)
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(_BASES[extra], resolve=False))
    if not key.startswith("paths."):
        OmegaConf.update(cfg, "paths.results_dir", results)
    return cfg


@pytest.mark.parametrize("key, bad", CASES, ids=[f"{k}={b!r}" for k, b in CASES])
def test_a_bad_value_for_any_key_is_refused_naming_that_key(key, bad, tmp_path):
    from omegaconf import OmegaConf

    from kdbench.config import validate

    cfg = _base(key, str(tmp_path / "r"))
    OmegaConf.update(cfg, key, bad, force_add=True)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key == key or e.value.key.startswith(key.rsplit(".", 1)[0] + "."), (e.value.key, str(e.value))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()  # before any work


@pytest.mark.parametrize("override, key", [
    ("+trainer.fast_dev_run=true", "trainer.fast_dev_run"),
    ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches"),
    ("+dataset.shuffle=false", "dataset.shuffle"),
    ("+optim.amsgrad=true", "optim.amsgrad"),
    ("+student.kwargs.colour=3", "student.kwargs"),
    ("student.kwargs.hidden=abc", "student.kwargs.hidden"),
    ("student.kwargs.hidden=[64,abc]", "student.kwargs.hidden"),
    ("+student.kwargs.dropout=1.5", "student.kwargs"),
])
def test_keys_nothing_reads_and_model_arguments_a_model_does_not_take_are_refused(override, key):
    from kdbench.config import validate

    with pytest.raises(ConfigError) as e:
        validate(_compose(override))
    assert e.value.key == key, str(e.value)


def test_model_arguments_are_checked_against_each_models_signature():
    from kdbench.config import validate

    validate(_compose("student=mnist_cnn_small", "dataset=mnist", "student.kwargs.width=4", "student.kwargs.dropout=0.1"))
    for bad, key in (("student.kwargs.width=0", "student.kwargs.width"), ("student.kwargs.width=abc", "student.kwargs.width"),
                     ("+student.kwargs.hidden=[8]", "student.kwargs.hidden")):
        with pytest.raises(ConfigError) as e:
            validate(_compose("student=mnist_cnn_small", "dataset=mnist", bad))
        assert e.value.key == key, str(e.value)


@pytest.mark.parametrize("option", [" ".join(o) for o in _every_option()])
def test_every_config_option_is_valid_as_shipped(option):
    """Each group option, composed with the defaults, passes validation (``dataset=bytes_text`` once shipped
    ``n_train: null``, "every window", which the schema refused)."""
    from kdbench.config import validate

    extra = ("dataset=synthetic",) if option == "teacher=oracle" else ()
    validate(_compose(*option.split(), *extra))


# ---- choices come from the registries: a plugin validates with no second edit ---------------------


def _refused(key: str, *overrides: str) -> str:
    from kdbench.config import validate

    with pytest.raises(ConfigError) as e:
        validate(_compose(*overrides))
    assert e.value.key == key and "\n" not in str(e.value), str(e.value)
    return e.value.message


def test_a_registered_method_is_accepted_and_checks_its_own_parameters(monkeypatch):
    from dataclasses import dataclass

    from kdbench import methods
    from kdbench.config import validate
    from kdbench.kinds import C, N, param

    methods.method_names()  # the built-in methods discovered, then a registry this test may extend
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))

    @methods.register_method("toy_scaled")
    @dataclass(frozen=True)
    class Scaled:
        weight: float = param(1.0, N(0))
        mode: str = param("a", C("a", "b"))
        steps: int = 3  # undeclared: any value of its default's kind
        needs_teacher = True

        def __call__(self, student_logits, teacher, batch):
            raise NotImplementedError

    validate(_compose("distill.method=toy_scaled", "+distill.weight=2", "+distill.mode=b", "+distill.steps=5"))
    assert _refused("distill.weight", "distill.method=toy_scaled", "+distill.weight=-1") == "must be >= 0, got -1"
    assert _refused("distill.mode", "distill.method=toy_scaled", "+distill.mode=c") == \
        "unknown value 'c'; allowed: a, b"
    assert "must be an integer" in _refused("distill.steps", "distill.method=toy_scaled", "+distill.steps=2.5")
    assert _refused("distill.method", "distill.method=toy_nope") == \
        f"unknown method 'toy_nope'; allowed: none, {', '.join(methods.method_names())}"
    assert "toy_scaled" in methods.method_names()


def test_a_registered_optimizer_and_schedule_are_accepted_and_built(monkeypatch):
    import torch

    from kdbench import optim
    from kdbench.config import validate
    from kdbench.distill import OptimSpec, SchedSpec

    monkeypatch.setattr(optim, "_OPTIMIZERS", dict(optim._OPTIMIZERS))
    monkeypatch.setattr(optim, "_SCHEDULERS", dict(optim._SCHEDULERS))

    @optim.register_optimizer("toy_plain_sgd")
    def plain(params, o):
        return torch.optim.SGD(params, lr=o.lr)

    @optim.register_scheduler("toy_halving")
    def halving(opt, s, steps):
        return lambda step: 0.5 ** (step // steps.per_epoch)

    validate(_compose("optim.name=toy_plain_sgd", "sched.name=toy_halving", "teacher.recipe.optim.name=toy_plain_sgd"))
    assert _refused("optim.name", "optim.name=adam") == "unknown optimizer 'adam'; allowed: sgd, adamw, toy_plain_sgd"
    assert _refused("teacher.recipe.sched.name", "teacher.recipe.sched.name=linear") == \
        "unknown scheduler 'linear'; allowed: none, multistep, cosine, onecycle, toy_halving"
    w = torch.nn.Parameter(torch.zeros(2))
    opt = optim.build_optimizer([w], OptimSpec(name="toy_plain_sgd", lr=0.4))
    out = optim.build_schedule(opt, SchedSpec(name="toy_halving"), optim.Steps(total=20, per_epoch=10, warmup=0))
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0
    sched = out["lr_scheduler"]["scheduler"]
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)


def test_registered_augmentations_signals_datasets_and_models_are_valid_choices(monkeypatch):
    from kdbench import models, signals
    from kdbench.config import validate
    from kdbench.data import DATASETS, DatasetSpec, augment, dataset_names

    monkeypatch.setattr(augment, "_SPEC", dict(augment._SPEC))
    augment.register_augment("toy_crop2", pad=2, flip=True)
    assert augment.num_views("toy_crop2") == 50
    signals.signal_names()
    monkeypatch.setattr(signals, "_REGISTRY", dict(signals._REGISTRY))
    signals.register_signal("toy_signal")(lambda **_: None)
    monkeypatch.setitem(DATASETS, "toy_data", DatasetSpec("toy_data", DATASETS["digits"].loader, 10, "image", "toy"))
    models.model_names()
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    models.register_model("toy_net")(models.get_spec("mlp").builder)

    validate(_compose("dataset.augment=toy_crop2", "teacher_signal=toy_signal", "dataset.name=toy_data",
                      "student.arch=toy_net", "teacher.arch=toy_net"))
    assert _refused("dataset.augment", "dataset.augment=twirl") == \
        "unknown augmentation 'twirl'; allowed: default, none, crop_flip, jitter, flip, toy_crop2"
    assert _refused("teacher_signal", "teacher_signal=nope") == \
        f"unknown teacher signal 'nope'; allowed: {', '.join(signals.signal_names())}"
    assert "toy_signal" in signals.signal_names()
    assert _refused("dataset.name", "dataset.name=imagenet") == \
        f"unknown dataset 'imagenet'; allowed: {', '.join(dataset_names())}"
    assert "toy_data" in dataset_names()
    assert "toy_net" in _refused("student.arch", "student.arch=resnet9000")
    assert _refused("teacher.arch", "teacher.arch=resnet9000").startswith("unknown model 'resnet9000'; allowed: oracle, ")


def _literal_lists() -> dict[frozenset, list[str]]:
    """Every literal tuple/list/set of two or more strings in kdbench, by its set of strings."""
    import ast

    out: dict[frozenset, list[str]] = {}
    for path in sorted((REPO / "kdbench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and \
                    all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                out.setdefault(frozenset(e.value for e in node.elts), []).append(
                    f"{path.relative_to(REPO)}:{node.lineno}")
    return out


def test_no_choice_list_is_written_twice():
    """Each key's choices are written once, in the schema's table or as their registry's entries: never
    copied into another module (config.py and distill.py once each had the optimizers and schedules)."""
    from kdbench.methods import method_names, method_specs

    specs = list(schema.SCHEMA.items()) + [(f"distill.{k}", v) for m in method_names() for k, v in method_specs(m).items()]
    literal = _literal_lists()
    for key, spec in specs:
        if spec.kind != "choice":
            continue
        names = [c for c in spec.allowed() if isinstance(c, str)]
        for chosen in {frozenset(names), frozenset(names[1:])}:  # with and without a leading none/default/auto
            if len(chosen) >= 2:
                assert len(literal.get(chosen, [])) <= 1, f"{key}'s choices are written more than once: {literal[chosen]}"
