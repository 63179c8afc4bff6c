"""The config schema (kdbench/schema.py): every key of every config is in it, and a bad value for any
key of it is refused before any work, with one line naming that key (issue 16 part 8, issue 14 part 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench import schema
from kdbench.errors import ConfigError

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


def _bad_values(spec: schema.Spec) -> list:
    """Values (as the command line would give them) that ``spec`` must refuse."""
    if spec.kind == "bool":
        return ["abc", 2]
    if spec.kind == "str":
        return [123]
    if spec.kind == "choice":
        return ["not_a_choice"]
    if spec.kind == "list":
        return ["abc", ["abc"] if spec.item in ("int", "number") else [1]]
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
