"""Training a missing teacher from its own recipe: the part of the teacher registry that needs the
distillation module and the engine (imported only when a teacher is looked up for a run)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from kdbench.teachers.registry import freeze, get_or_train, locate, oracle


def for_run(teacher_cfg: dict, dataset_cfg: dict, trainer_cfg: dict, data, *, teachers_dir: Path,
            checkpoints_dir: Path, eval_batch_size: int, log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """The frozen teacher a run asks for (a registry entry, trained once from its own recipe if missing).

    ``trainer_cfg`` is the run's resolved trainer config: only its hardware settings (accelerator,
    devices, strategy, memory format, progress) are used, and the recipe may set ``precision``.
    """
    tc = teacher_cfg
    if tc["arch"] == "oracle":
        return oracle(data)
    if tc["arch"] == "hf_causal_lm" and (tc.get("kwargs") or {}).get("path"):
        from kdbench.models.hf import load_pretrained

        model, meta = load_pretrained(tc, data)  # a local pretrained model: frozen as it is, never trained here
        return freeze(model), meta
    from kdbench.config import resolve_precision
    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.engine import FitSpec, check_every, fit_and_test
    from kdbench.models import build_model

    recipe = tc["recipe"]
    acc = trainer_cfg["accelerator"]
    precision = resolve_precision(recipe.get("precision", "auto"), acc)
    entry, fields = locate(tc, dataset_cfg, data, precision, teachers_dir)
    kwargs = tc.get("kwargs") or {}

    def build() -> nn.Module:
        return build_model(tc["arch"], data.num_classes, data.input_shape, **kwargs)

    def train(model: nn.Module) -> dict:
        import pytorch_lightning as pl

        hardware = {k: trainer_cfg[k] for k in ("accelerator", "devices", "strategy", "channels_last", "progress",
                                                "log_every_n_steps", "deterministic", "compile") if k in trainer_cfg}
        spec = FitSpec.from_trainer(
            hardware, precision=precision, max_epochs=int(recipe["epochs"]), batch_size=int(recipe["batch_size"]),
            eval_batch_size=int(eval_batch_size), augment=recipe.get("augment", "default"), data_seed=int(tc["seed"]),
            limit_train_batches=recipe.get("limit_train_batches"), gradient_clip_val=recipe.get("gradient_clip_val"))
        pl.seed_everything(int(tc["seed"]), verbose=False)
        model.load_state_dict(build().state_dict())  # initial weights drawn under the teacher's seed
        module = DistillModule(model, data.num_classes, OptimSpec(**recipe["optim"]), SchedSpec(**recipe["sched"]),
                               check_finite_every=check_every(trainer_cfg.get("check_finite_every", "auto"), acc))
        # an interrupted training resumes from its last epoch (the folder is removed once the entry is saved)
        res = fit_and_test(module, data, spec, ckpt_dir=ckpt_dir)
        return res.last["test"]

    ckpt_dir = checkpoints_dir / "teachers" / entry.name
    model, meta, trained_now = get_or_train(entry, build, tc["arch"], data.num_classes,
                                            train if tc.get("train_if_missing", True) else None,
                                            {**fields, "name": entry.name}, log=log)
    if trained_now:
        # registered: its training checkpoints are done with; a later retrain (entry deleted) starts afresh
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return model, {**meta, "name": entry.name, "path": str(entry)}
