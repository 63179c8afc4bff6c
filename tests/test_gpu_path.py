"""Issue 13 part 2: defaults that do not waste a GPU, checked on whatever device is here.

deterministic / compile resolve per device and are recorded; a frozen online teacher's evaluation
logits are computed once per evaluation set; the training step does no host sync (counted with the
profiler on CPU, asserted with CUDA's sync debug mode when a GPU is present).
"""

from __future__ import annotations

import math
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from pytorch_lightning.callbacks import Callback
from torch.overrides import TorchFunctionMode

from kdbench.errors import ConfigError

# ---- trainer.deterministic / trainer.compile -------------------------------------------------------


def test_deterministic_and_compile_resolve_per_device_and_keep_cpu_run_ids(compose):
    from kdbench.config import resolve, validate
    from kdbench.identity import computational, run_id_of

    cpu = resolve(compose("trainer.accelerator=cpu"))
    assert cpu["trainer"]["deterministic"] is True and cpu["trainer"]["compile"] is False
    gpu = resolve(compose("trainer.accelerator=gpu"))
    assert gpu["trainer"]["deterministic"] is False and gpu["trainer"]["compile"] is True
    # asked for explicitly: kept on either device
    asked = resolve(compose("trainer.accelerator=gpu", "trainer.deterministic=true", "trainer.compile=false"))
    assert asked["trainer"]["deterministic"] is True and asked["trainer"]["compile"] is False
    # not compiled: the id is the one of a config without the key (every committed CPU run)
    assert "compile" not in computational(cpu)["trainer"]
    without = {**cpu, "trainer": {k: v for k, v in cpu["trainer"].items() if k != "compile"}}
    assert run_id_of(without) == run_id_of(cpu)
    compiled = resolve(compose("trainer.accelerator=cpu", "trainer.compile=true"))
    assert run_id_of(compiled) != run_id_of(cpu)  # a compiled run is a run of its own
    assert run_id_of(resolve(compose("trainer.accelerator=cpu", "trainer.deterministic=false"))) != run_id_of(cpu)
    for key in ("trainer.compile", "trainer.deterministic"):
        with pytest.raises(ConfigError) as e:
            validate(compose(f"{key}=maybe"))
        assert e.value.key == key and "\n" not in str(e.value)


def test_build_trainer_sets_determinism_and_cudnn_benchmark_as_resolved():
    from kdbench.engine import FitSpec, build_trainer

    build_trainer(FitSpec(accelerator="cpu", deterministic="auto", progress=False), None)
    assert torch.are_deterministic_algorithms_enabled()
    build_trainer(FitSpec(accelerator="cpu", deterministic=False, progress=False), None)
    assert not torch.are_deterministic_algorithms_enabled()
    if torch.cuda.is_available():
        build_trainer(FitSpec(accelerator="gpu", deterministic="auto", progress=False), None)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    build_trainer(FitSpec(accelerator="cpu", deterministic="auto", progress=False), None)  # leave it as CPU runs it


def test_a_cpu_run_records_deterministic_and_not_compiled(compose):
    from kdbench.train import run

    rec = run(compose("distill=none", "trainer.max_epochs=1"))
    assert rec["deterministic"] is True
    assert rec["config"]["trainer"]["deterministic"] is True and rec["config"]["trainer"]["compile"] is False


def test_compile_models_compiles_student_and_frozen_teacher_in_place_keeping_state_keys():
    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.engine import compile_models
    from kdbench.models import build_model
    from kdbench.signals.online import OnlineSignal

    student, teacher = build_model("mlp", 10, (1, 8, 8), hidden=[16]), build_model("mlp", 10, (1, 8, 8), hidden=[32])
    keys = list(student.state_dict())
    module = DistillModule(student, 10, OptimSpec(), SchedSpec(), signal=OnlineSignal(teacher))
    compile_models([module], module.signal)
    assert module.student._compiled_call_impl is not None and teacher._compiled_call_impl is not None
    assert list(module.student.state_dict()) == keys  # checkpoints stay loadable either way
    trained = build_model("mlp", 10, (1, 8, 8), hidden=[32])
    m2 = DistillModule(build_model("mlp", 10, (1, 8, 8), hidden=[16]), 10, OptimSpec(), SchedSpec(),
                       signal=OnlineSignal(trained, grad=True))
    compile_models([m2], m2.signal)
    assert trained._compiled_call_impl is None  # a teacher being trained is left alone


# ---- the teacher's evaluation logits, once -----------------------------------------------------------

class CountingTeacher(nn.Module):
    """A real teacher that counts its forward passes per kind of batch (by batch size: training
    batches are ``bs`` rows, evaluation batches ``eval_bs``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls: dict[int, int] = {}

    def forward(self, x):
        self.calls[x.shape[0]] = self.calls.get(x.shape[0], 0) + 1
        return self.inner(x)


def _digits_fit(tmp_path, *, grad: bool = False, cache: bool = True, epochs: int = 2):
    from kdbench.data import load_dataset
    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.engine import FitSpec, fit_and_test
    from kdbench.methods import build_method
    from kdbench.models import build_model
    from kdbench.signals.online import OnlineSignal

    data = load_dataset({"name": "digits"})
    data.train_x, data.train_y = data.train_x[:256], data.train_y[:256]
    data.test_x, data.test_y = data.test_x[:200], data.test_y[:200]  # validation runs on test (no val split)
    torch.manual_seed(0)
    teacher = CountingTeacher(build_model("mlp", 10, data.input_shape, hidden=[32]))
    student = build_model("mlp", 10, data.input_shape, hidden=[16])
    module = DistillModule(student, 10, OptimSpec(lr=0.05), SchedSpec(), method=build_method("kd", {"alpha": 0.5}),
                           signal=OnlineSignal(teacher, grad=grad))
    if not cache:
        module.EVAL_TEACHER_CACHE_BYTES = 0
    spec = FitSpec(max_epochs=epochs, batch_size=64, eval_batch_size=50, accelerator="cpu", progress=False)
    res = fit_and_test(module, data, spec, ckpt_dir=tmp_path / f"ckpt-{grad}-{cache}", resume=False)
    return teacher.calls, res


def test_a_frozen_teachers_eval_logits_are_computed_once_per_eval_set(tmp_path):
    calls, res = _digits_fit(tmp_path)
    # 256 training images in batches of 64: 4 teacher passes per epoch, 2 epochs; the 200 evaluation
    # images in 4 batches of 50, validated after both epochs (val loader: once) and tested twice, the last
    # and the best weights (test loader: once)
    assert calls == {64: 8, 50: 4 + 4}
    uncached_calls, uncached = _digits_fit(tmp_path, cache=False)
    assert uncached_calls == {64: 8, 50: 2 * 4 + 2 * 4}
    # the same numbers either way (the cache is the teacher's own output)
    assert res.history == uncached.history and res.last == uncached.last and res.best == uncached.best
    assert res.teacher_test == uncached.teacher_test


def test_a_teacher_being_trained_is_asked_at_every_evaluation(tmp_path):
    calls, _ = _digits_fit(tmp_path, grad=True)
    assert calls[50] == 4 * 4  # its weights change every step: nothing is reused


def test_no_cached_val_table_validates_on_the_test_table(tmp_path):
    """dataset.val_size=0 (the CIFAR configs): the validation loader is the test set, and a cached
    teacher's lookups for it come from the test table (they raised KeyError 'val' before)."""
    from kdbench.data import load_dataset
    from kdbench.data.core import TensorLoader
    from kdbench.models import build_model
    from kdbench.signals.cached import CachedSignal, build
    from kdbench.signals.online import OnlineSignal

    data = load_dataset({"name": "digits"})
    assert data.val_x is None
    teacher = build_model("mlp", 10, data.input_shape, hidden=[32]).eval()
    conf = {"trainer": {"accelerator": "cpu", "precision": "32-true", "channels_last": False},
            "dataset": {"batch_size": 128}}
    p = {"family": "none", "views": 1, "num_classes": 10, "dtype": "float32", "n_train": len(data.train_y),
         "n_val": 0, "n_test": len(data.test_y)}
    build(tmp_path / "cache", teacher, conf, data, p)
    cached, online = CachedSignal(tmp_path / "cache", p), OnlineSignal(teacher)
    batch = next(iter(TensorLoader(data.test_x, data.test_y, 64, mean=data.mean, std=data.std)))
    torch.testing.assert_close(cached(batch, "val"), online(batch, "val"))


# ---- no host sync in the training step -----------------------------------------------------------------

#: ATen ops that make the host wait for the device (a value read back, or a data-dependent shape)
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::equal")


def _count_syncs(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name in SYNC_OPS)


def _mnist_like_module(check_every: int, signal: str = "online"):
    from kdbench.data import load_dataset
    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.methods import build_method
    from kdbench.models import build_model
    from kdbench.signals.online import OnlineSignal

    data = load_dataset({"name": "digits"})
    torch.manual_seed(0)
    teacher = build_model("mlp", 10, data.input_shape, hidden=[32])
    module = DistillModule(build_model("mlp", 10, data.input_shape, hidden=[16]), 10, OptimSpec(lr=0.05),
                           SchedSpec(name="cosine"), method=build_method("kd", {"alpha": 0.5}),
                           signal=OnlineSignal(teacher), check_finite_every=check_every)
    return module, data


def _fit_steps(steps: int, check_every: int, tmp_path) -> int:
    from kdbench.engine import FitSpec, fit_and_test

    module, data = _mnist_like_module(check_every)
    spec = FitSpec(max_epochs=1, batch_size=32, accelerator="cpu", progress=False, limit_train_batches=steps,
                   # no validation: its temperature fit (a Newton search) takes a number of passes that
                   # depends on the weights, so 4 and 12 steps would differ there, not in a training step
                   extra={"limit_val_batches": 0, "limit_test_batches": 2})
    return _count_syncs(lambda: fit_and_test(module, data, spec, ckpt_dir=None, resume=False))


def test_the_training_step_does_no_host_sync(tmp_path):
    """The real module fitted by the real Trainer for 4 and for 12 steps (same epochs, same
    evaluation): the host-sync ops counted by the profiler must not grow with the steps."""
    few, many = _fit_steps(4, 1000, tmp_path), _fit_steps(12, 1000, tmp_path)
    assert many - few == 0, f"{(many - few) / 8:.2f} host syncs per training step"
    # the counter sees a per-step sync when there is one: the NaN check done on the host every step
    few1, many1 = _fit_steps(4, 1, tmp_path), _fit_steps(12, 1, tmp_path)
    assert many1 - few1 >= 8


class HostReads(TorchFunctionMode):
    """Records every read of a tensor's value into Python (``.item()``, ``bool()``, ``float()``, ...):
    on a GPU each one waits for the device."""

    READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist"}
    #: torchmetrics checks that probabilities are in [0, 1] with a Python ``if`` only for CPU tensors; for
    #: device tensors it takes ``torch.where`` (torchmetrics/utilities/compute.py normalize_logits_if_needed)
    CPU_ONLY = ("torchmetrics/utilities/compute.py",)

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            stack = traceback.extract_stack()[:-1]
            if not any(f.filename.endswith(self.CPU_ONLY) for f in stack):
                self.reads.append(" <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stack[-4:]))
        return func(*args, **(kwargs or {}))


class CountEvalSteps(Callback):
    """Host reads inside each validation step (the step, the teacher signal, the metrics' updates)."""

    def __init__(self):
        self.mode = HostReads()
        self.steps = 0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.mode.__enter__()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.mode.__exit__(None, None, None)
        self.steps += 1


def test_evaluation_steps_read_nothing_back_to_the_host():
    """Validation of the real module: the metrics accumulate on the device and the host reads them
    once per evaluation, not per batch."""
    from kdbench.engine import FitSpec, build_trainer, make_loaders

    def validate(module, data) -> CountEvalSteps:
        spec = FitSpec(max_epochs=1, batch_size=32, eval_batch_size=32, accelerator="cpu", progress=False)
        _, _, test = make_loaders(data, spec, channels_last=False)
        counter = CountEvalSteps()
        build_trainer(spec, None, callbacks=[counter]).validate(module, dataloaders=test, verbose=False)
        return counter

    module, data = _mnist_like_module(1000)
    counter = validate(module, data)
    assert counter.steps >= 10 and counter.mode.reads == [], counter.mode.reads[:5]
    # the counter sees a per-batch read when there is one: the module with a running max read every step
    from kdbench.distill import DistillModule

    class ReadsEveryStep(DistillModule):
        def validation_step(self, batch, batch_idx):
            self.largest = max(getattr(self, "largest", -math.inf), float(self.student(batch.x).max()))
            return super().validation_step(batch, batch_idx)

    module.__class__ = ReadsEveryStep
    assert len(validate(module, data).mode.reads) == counter.steps


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.set_sync_debug_mode)")
def test_cuda_training_steps_never_sync_the_host(tmp_path):
    """With the GPU defaults (bf16, channels-last, compile, cudnn.benchmark), steps after the first two
    run under ``torch.cuda.set_sync_debug_mode("error")``: any synchronising call in the training step,
    backward or optimiser step raises."""
    from kdbench.data import TensorData
    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.engine import FitSpec, fit_and_test
    from kdbench.methods import build_method
    from kdbench.models import build_model
    from kdbench.signals.online import OnlineSignal

    class SyncDebug(Callback):
        def __init__(self):
            self.checked = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx >= 2:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if torch.cuda.get_sync_debug_mode() != 0:
                torch.cuda.set_sync_debug_mode(0)
                self.checked += 1

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    data = TensorData(name="random", train_x=x, train_y=y, test_x=x[:128], test_y=y[:128], num_classes=10,
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), default_augment="crop_flip")
    teacher = build_model("resnet20", 10, (3, 32, 32))
    module = DistillModule(build_model("resnet8", 10, (3, 32, 32)), 10, OptimSpec(lr=0.05),
                           SchedSpec(name="multistep", milestones=(150,)), method=build_method("kd", {"alpha": 0.1}),
                           signal=OnlineSignal(teacher), check_finite_every=1000)
    cb = SyncDebug()
    spec = FitSpec(max_epochs=1, batch_size=64, accelerator="gpu", progress=False, compile="auto")
    try:
        fit_and_test(module, data, spec, ckpt_dir=None, resume=False, extra_callbacks=[cb])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert cb.checked == 512 // 64 - 2
    assert math.isfinite(module.history[-1]["train_loss"])
