"""``kdbench eval ckpt=PATH [config overrides]``: test an arbitrary student checkpoint.

The config (the same overrides as the run that wrote it: dataset, student, ...) says how to build
the student and which test set to use; the checkpoint (a run's ``best.ckpt`` / ``last.ckpt``, read
with ``weights_only``) gives its weights and the temperature fitted on the validation set. Prints
one JSON object: accuracy, ECE, MCE, NLL, Brier (and after temperature scaling), never writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kdbench.errors import exit_codes


def evaluate(cfg, ckpt_path: str | Path) -> dict:
    import torch

    from kdbench.config import resolve, validate
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
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError("student", f"the checkpoint does not fit student.arch={conf['student']['arch']} "
                                     f"(missing {len(missing)}, unexpected {len(unexpected)} tensors): give the "
                                     "overrides of the run that wrote it")
    student.eval()
    metrics = ClassificationMetrics(data.num_classes)
    metrics.temperature = (ckpt.get("kdbench_temperature") or {}).get("student")
    bs = int(conf["dataset"]["eval_batch_size"])
    with torch.inference_mode():
        for batch in TensorLoader(data.test_x, data.test_y, bs, mean=data.mean, std=data.std):
            metrics.update(student(batch.x), batch.y)
    return {"checkpoint": str(path), "epoch": ckpt.get("epoch"), "student": conf["student"]["arch"],
            "dataset": conf["dataset"]["name"], "n_test": int(data.test_y.shape[0]), "test": metrics.compute()}


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
