"""``kdbench eval ckpt=PATH [config overrides]``: test an arbitrary student checkpoint.

The config (the same overrides as the run that wrote it: dataset, student, ...) says how to build
the student and which test set to use; the checkpoint (a run's ``best.ckpt`` / ``last.ckpt``, read
with ``weights_only``) gives its weights and the temperature fitted on the validation set. Prints
one JSON object: accuracy, ECE, MCE, NLL, Brier (and after temperature scaling) and, when the run had
a teacher, fidelity to it (agreement and KL(teacher ‖ student), as the run's record measures them);
never writes, never trains a teacher.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kdbench.errors import exit_codes


def evaluate(cfg, ckpt_path: str | Path) -> dict:
    import torch

    from kdbench.config import is_scratch, resolve, validate
    from kdbench.data import TensorLoader, load_dataset, split_train_val
    from kdbench.errors import ConfigError
    from kdbench.metrics import ClassificationMetrics
    from kdbench.models import build_model

    validate(cfg)
    conf = resolve(cfg)
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError("ckpt", f"no checkpoint file at {path}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a checkpoint, pickled objects
        raise ConfigError("ckpt", f"{path} is not a readable kdbench checkpoint ({type(e).__name__})") from None
    state = {k[len("student."):]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith("student.")}
    if not state:
        raise ConfigError("ckpt", f"{path} holds no student weights (expected a kdbench run's best.ckpt or last.ckpt)")
    ds = {**conf["dataset"], **{k: str(Path(conf["dataset"][k]).absolute())
                                for k in ("root", "cache_dir") if conf["dataset"].get(k)}}
    data = split_train_val(load_dataset(ds), ds["val_size"], seed=ds["split_seed"])
    student = build_model(conf["student"]["arch"], data.num_classes, data.input_shape,
                          **(conf["student"].get("kwargs") or {}))
    mismatch = first_mismatch(student.state_dict(), state)
    if mismatch:
        s = conf["student"]
        raise ConfigError("ckpt", f"{path} does not fit student.arch={s['arch']} student.kwargs="
                                  f"{json.dumps(s.get('kwargs') or {}, separators=(',', ':'))}: {mismatch}; give the "
                                  f"overrides of the run that wrote it{_written_by(cfg, path)}")
    student.load_state_dict(state)
    student.eval()
    teacher = None if is_scratch(cfg) else fidelity_teacher(conf, data, ckpt)
    metrics = ClassificationMetrics(data.num_classes, with_teacher=teacher is not None and teacher["signal"] is not None)
    metrics.temperature = (ckpt.get("kdbench_temperature") or {}).get("student")
    bs = int(conf["dataset"]["eval_batch_size"])
    with torch.inference_mode():
        for batch in TensorLoader(data.test_x, data.test_y, bs, mean=data.mean, std=data.std):
            t = teacher["signal"](batch) if teacher and teacher["signal"] is not None else None
            metrics.update(student(batch.x), batch.y, t)
    out = {"checkpoint": str(path), "epoch": ckpt.get("epoch"), "student": conf["student"]["arch"],
           "dataset": conf["dataset"]["name"], "n_test": int(data.test_y.shape[0]), "test": metrics.compute()}
    if teacher is not None:
        out["teacher"] = {k: v for k, v in teacher.items() if k != "signal"}
    return out


def first_mismatch(model_state: dict, ckpt_state: dict) -> str | None:
    """The first tensor (in the model's order) that the checkpoint lacks or holds in another shape, then
    the first one the model lacks, as a phrase; None when every tensor fits."""
    for k, v in model_state.items():
        if k not in ckpt_state:
            return f"tensor {k!r} of the student is not in the checkpoint"
        if tuple(ckpt_state[k].shape) != tuple(v.shape):
            return (f"tensor {k!r} is {list(ckpt_state[k].shape)} in the checkpoint, {list(v.shape)} in the "
                    "student built from the config")
    extra = next((k for k in ckpt_state if k not in model_state), None)
    return f"the checkpoint's tensor {extra!r} is not in the student built from the config" if extra else None


def _written_by(cfg, ckpt: Path) -> str:
    """`` (its run's record: student.arch=..., student.kwargs=...)`` when the checkpoint sits in a run's
    folder (``<checkpoints>/<experiment>/<run id>/``) whose record is readable; else ``""``."""
    from kdbench.files import abs_path
    from kdbench.records import read_record

    try:
        rec = read_record(abs_path(cfg.paths.runs_dir) / ckpt.parent.parent.name / f"{ckpt.parent.name}.json")
        s = rec["config"]["student"]
        return (f" (its run's record: student.arch={s['arch']} student.kwargs="
                f"{json.dumps(s.get('kwargs') or {}, separators=(',', ':'))})")
    except Exception:  # noqa: BLE001 - a hint only: no record, another layout, an odd record
        return ""


def fidelity_teacher(conf: dict, data, ckpt: dict) -> dict:
    """What the run distilled from, for agreement and KL on the test set: ``{name, signal}`` where
    ``signal(batch)`` gives the teacher's dense test logits (the registry's teacher, for online and cached
    runs; the weights the checkpoint holds when the run trained its teacher) or a capture store's top-k
    (agreement with its top-1 only); ``signal`` None with a ``note`` when the teacher cannot be found.
    Never trains a teacher."""
    from kdbench.config import resolve_precision
    from kdbench.files import abs_path
    from kdbench.models import build_model
    from kdbench.teachers.registry import entry_complete, freeze, load_into, locate, oracle

    kind = conf["teacher_signal"]
    if kind == "captured":
        from kdbench.signals import build_signal

        store = build_signal("captured", conf=conf, data=data)
        return {"name": store.header.get("teacher", {}).get("name"), "source": str(conf["teacher_capture"]["path"]),
                "signal": lambda batch: store(batch, "test"), "note": "agreement with the store's top-1 class; "
                "no KL (the store holds the top-k only)"}
    tc = conf["teacher"]
    if tc["arch"] == "oracle":
        model, meta = oracle(data)
        return {"name": meta["name"], "source": "oracle", "signal": lambda batch: model(batch.x).float()}
    precision = resolve_precision(tc["recipe"].get("precision", "auto"), conf["trainer"]["accelerator"])
    entry, _ = locate(tc, conf["dataset"], data, precision, abs_path(conf["paths"]["teachers_dir"]))
    if not entry_complete(entry):
        return {"name": entry.name, "source": str(entry), "signal": None,
                "note": f"no teacher at {entry} (paths.teachers_dir as the run had it?): fidelity not measured"}
    model = build_model(tc["arch"], data.num_classes, data.input_shape, **(tc.get("kwargs") or {}))
    load_into(model, entry, tc["arch"], data.num_classes)
    trained = ckpt.get("kdbench_teacher")
    if trained:  # distill.teacher_grad: the run trained its teacher; the checkpoint holds its weights
        model.load_state_dict(trained)
    freeze(model)
    return {"name": entry.name, "source": str(entry) + (" + the checkpoint's trained teacher" if trained else ""),
            "signal": lambda batch: model(batch.x).float()}


@exit_codes()
def main(argv: list[str] | None = None) -> int:
    from kdbench.config import compose_job

    argv = list(sys.argv[1:] if argv is None else argv)
    ckpts = [a.split("=", 1)[1] for a in argv if a.startswith("ckpt=")]
    if len(ckpts) != 1:
        print("usage: kdbench eval ckpt=PATH [config overrides of the run that wrote it]", file=sys.stderr)
        return 2
    out = evaluate(compose_job([a for a in argv if not a.startswith("ckpt=")]), ckpts[0])
    print(json.dumps(out, indent=2))
    return 0
