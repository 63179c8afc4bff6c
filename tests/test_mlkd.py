"""MLKD (kdbench.losses.logit_2024 mlkd_*, method mlkd, the weak/strong view seam): each level against a float64
formula written here, the identity with KD, the confidence masks, the released composition, the strong view
(against PIL, reproducible, weak batches untouched), a digits run, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import FAST, whole_cut_resumed


def _pair(n=6, c=5, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, c, generator=g, dtype=torch.float64)).to(dtype), \
        (scale * torch.randn(n, c, generator=g, dtype=torch.float64)).to(dtype)


def _p(z, temp):
    z = z.double() / temp
    e = (z - z.max(-1, keepdim=True).values).exp()
    return e / e.sum(-1, keepdim=True)


def ref_instance(s, t, temps, w=None):
    """float64: sum_T (1/B) sum_i w_i T^2 sum_c p_t (log p_t - log p_s), p = softmax(z / T)."""
    w = torch.ones(s.shape[0], dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
    total = 0.0
    for temp in temps:
        pt, ps = _p(t, temp), _p(s, temp)
        total += temp**2 * (w * (pt * (pt.log() - ps.log())).sum(-1)).sum() / s.shape[0]
    return total


def ref_batch(s, t, temps, w=None):
    """float64: sum_T (1/B) sum_ij w_i (G_t - G_s)_ij^2, G_ij = sum_c p_ic p_jc."""
    b = s.shape[0]
    w = torch.ones(b, dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
    total = 0.0
    for temp in temps:
        pt, ps = _p(t, temp), _p(s, temp)
        for i in range(b):
            for j in range(b):
                total += w[i] * ((pt[i] * pt[j]).sum() - (ps[i] * ps[j]).sum()) ** 2 / b
    return total


def ref_class(s, t, temps, w=None):
    """float64: sum_T (1/C) sum_kl w_k (M_t - M_s)_kl^2, M_kl = sum_i p_ik p_il."""
    c = s.shape[1]
    w = torch.ones(c, dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
    total = 0.0
    for temp in temps:
        pt, ps = _p(t, temp), _p(s, temp)
        for k in range(c):
            for m in range(c):
                total += w[k] * ((pt[:, k] * pt[:, m]).sum() - (ps[:, k] * ps[:, m]).sum()) ** 2 / c
    return total


def _close(a, b, rel=1e-5):
    assert math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12), (float(a), float(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_level_equals_its_float64_formula(dtype):
    from kdbench.losses import mlkd_batch_loss, mlkd_class_loss, mlkd_instance_loss

    s, t = _pair(dtype=dtype)
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    rows = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 0.0])
    classes = torch.tensor([0.0, 1.0, 3.0, 1.0, 0.25])
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    for got, ref in [(mlkd_instance_loss(s, t, temps), ref_instance(s, t, temps)),
                     (mlkd_instance_loss(s, t, temps, weight=rows), ref_instance(s, t, temps, rows)),
                     (mlkd_batch_loss(s, t, temps), ref_batch(s, t, temps)),
                     (mlkd_batch_loss(s, t, temps, weight=rows), ref_batch(s, t, temps, rows)),
                     (mlkd_class_loss(s, t, temps), ref_class(s, t, temps)),
                     (mlkd_class_loss(s, t, temps, weight=classes), ref_class(s, t, temps, classes))]:
        assert got.dtype == dtype and got.dim() == 0
        _close(got, ref, rel)
    # the Gram terms vanish for a student that predicts as the teacher, the instance term too
    assert mlkd_batch_loss(t, t, temps).item() == 0.0 and mlkd_class_loss(t, t, temps).item() == 0.0
    assert abs(mlkd_instance_loss(t, t, temps).item()) < 1e-6


def test_bf16_logits_and_autocast_are_computed_in_float32():
    from kdbench.losses import mlkd_loss

    sw, tw = _pair(n=8, c=6, seed=10)
    ss, ts = _pair(n=8, c=6, seed=11)
    bf = [z.bfloat16() for z in (sw, tw, ss, ts)]
    ref = mlkd_loss(*[z.float() for z in bf])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mlkd_loss(*bf)
    for k in ("instance", "batch", "class"):
        assert got[k].dtype == torch.float32
        _close(got[k], ref[k], 1e-6)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_one_temperature_unmasked_without_gram_terms_is_kd_at_that_tau(tau):
    """MLKD reduced to one temperature, no mask, no strong/extra instance terms and Gram weights 0 is
    ce_weight*(CE(weak) + CE(strong)) + kd_weight * KD's tau^2 KL on the weak view."""
    from kdbench.data import Batch
    from kdbench.features import Out
    from kdbench.losses import kd_loss, mlkd_instance_loss
    from kdbench.methods import build_method

    sw, tw = _pair(n=8, c=10, seed=1)
    ss, ts = _pair(n=8, c=10, seed=2)
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(3))
    kd = kd_loss(sw, tw, None, alpha=0.0, tau=tau)
    _close(mlkd_instance_loss(sw, tw, [tau]), kd)
    m = build_method("mlkd", {"temperatures": [tau], "strong_temperatures": [], "weak_extra_temperatures": [],
                              "mask": "none", "batch_weight": 0.0, "class_weight": 0.0, "ce_weight": 0.3,
                              "kd_weight": 0.7})
    out = m([Out(sw), Out(ss)], [Out(tw), Out(ts)], Batch(sw, y, torch.arange(8), torch.zeros(8, dtype=torch.long)),
            None)
    ce = torch.nn.functional.cross_entropy(sw.double(), y) + torch.nn.functional.cross_entropy(ss.double(), y)
    _close(out["loss"], 0.3 * ce + 0.7 * kd)
    _close(out["instance"], kd)


def test_the_confidence_masks_keep_rows_and_classes_at_or_below_the_percentile():
    from kdbench.losses import mlkd_confidence_masks

    # row i's teacher puts its peak at class i % 3 with a height growing with i: confidence rises with i
    t = torch.zeros(6, 4)
    for i in range(6):
        t[i, i % 3] = 0.5 * (i + 1)
    conf = torch.softmax(t.double(), -1).max(-1).values.numpy()
    by_class = torch.softmax(t.double(), -1).sum(0).numpy()
    assert np.all(np.diff(conf) > 0)
    rows, classes = mlkd_confidence_masks(t)
    assert rows.tolist() == [True, True, True, False, False, False]  # the median of six lies between rows 2 and 3
    assert classes.tolist() == list(by_class <= np.percentile(by_class, 50))
    assert classes.tolist() == [True, False, False, True]  # class 3 is never a peak; class 0 has the lowest peaks
    assert mlkd_confidence_masks(t, 0.0)[0].tolist() == [True] + [False] * 5
    assert mlkd_confidence_masks(t, 100.0)[0].all()
    for q in (10.0, 37.5, 80.0):
        assert mlkd_confidence_masks(t, q)[0].tolist() == list(conf <= np.percentile(conf, q))


def test_rows_mask_selects_rows_and_released_scales_by_the_kept_fraction():
    from kdbench.losses import mlkd_loss

    sw, tw = _pair(n=6, c=5, seed=4)
    ss, ts = _pair(n=6, c=5, seed=5)
    temps = (4.0, 2.0)
    only_weak = {"strong_temperatures": (), "weak_extra_temperatures": ()}
    conf = torch.softmax(tw.double(), -1).max(-1).values
    keep = (conf <= torch.quantile(conf, 0.5)).double()
    by_class = torch.softmax(tw.double(), -1).sum(0)
    ckeep = (by_class <= torch.quantile(by_class, 0.5)).double()
    rows = mlkd_loss(sw, tw, ss, ts, temps, mask="rows", **only_weak)
    _close(rows["instance"], ref_instance(sw, tw, temps, keep))
    _close(rows["batch"], ref_batch(sw, tw, temps, keep))
    _close(rows["class"], ref_class(sw, tw, temps, ckeep))
    # a dropped row's student logits do not reach the row-masked instance term
    moved = sw.clone()
    moved[keep == 0] += 5.0 * torch.randn_like(moved[keep == 0])
    _close(mlkd_loss(moved, tw, ss, ts, temps, mask="rows", **only_weak)["instance"], rows["instance"])
    released = mlkd_loss(sw, tw, ss, ts, temps, mask="released", **only_weak)
    _close(released["kept"], keep.mean())
    _close(released["instance"], keep.mean() * ref_instance(sw, tw, temps))
    _close(released["batch"], keep.mean() * ref_batch(sw, tw, temps))
    _close(released["class"], ckeep.mean() * ref_class(sw, tw, temps))
    none = mlkd_loss(sw, tw, ss, ts, temps, mask="none", **only_weak)
    _close(none["instance"], ref_instance(sw, tw, temps))


@pytest.mark.parametrize("standardize", [False, True])
def test_the_defaults_are_the_released_composition(standardize):
    """Weak view at 4, 3, 5, 2, 6 masked (released: x the kept fraction), strong view at 4, 3, 5 and the weak
    view again at 2, 6 unmasked; the Gram terms on the weak view only, from the raw logits even under LS."""
    from kdbench.losses import mlkd_loss, standardize_logits

    sw, tw = _pair(n=8, c=6, seed=6)
    ss, ts = _pair(n=8, c=6, seed=7)
    conf = torch.softmax(tw.double(), -1).max(-1).values
    frac = (conf <= torch.quantile(conf, 0.5)).double().mean()
    by_class = torch.softmax(tw.double(), -1).sum(0)
    cfrac = (by_class <= torch.quantile(by_class, 0.5)).double().mean()
    z = (lambda a: standardize_logits(a.double())) if standardize else (lambda a: a)
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    expect = (frac * ref_instance(z(sw), z(tw), temps) + ref_instance(z(ss), z(ts), (4.0, 3.0, 5.0))
              + ref_instance(z(sw), z(tw), (2.0, 6.0)))
    got = mlkd_loss(sw, tw, ss, ts, standardize=standardize)
    _close(got["instance"], expect)
    _close(got["batch"], frac * ref_batch(sw, tw, temps))
    _close(got["class"], cfrac * ref_class(sw, tw, temps))


def test_the_method_weights_its_terms_and_refuses_a_top_k_teacher():
    from kdbench.data import Batch
    from kdbench.features import Out
    from kdbench.losses import mlkd_loss
    from kdbench.methods import build_method, method_defaults

    d = method_defaults("mlkd")
    assert (d["ce_weight"], d["kd_weight"], d["batch_weight"], d["class_weight"]) == (0.1, 0.9, 0.9, 0.9)
    assert d["temperatures"] == (4.0, 3.0, 5.0, 2.0, 6.0) and d["mask"] == "released" and d["percentile"] == 50.0
    sw, tw = _pair(n=8, c=6, seed=8)
    ss, ts = _pair(n=8, c=6, seed=9)
    y = torch.randint(0, 6, (8,), generator=torch.Generator().manual_seed(0))
    batch = Batch(sw, y, torch.arange(8), torch.zeros(8, dtype=torch.long))
    m = build_method("mlkd", {"batch_weight": 2.0, "class_weight": 3.0})
    out = m([Out(sw), Out(ss)], [Out(tw), Out(ts)], batch, None)
    terms = mlkd_loss(sw, tw, ss, ts)
    ce = torch.nn.functional.cross_entropy(sw, y) + torch.nn.functional.cross_entropy(ss, y)
    _close(out["loss"], 0.1 * ce + 0.9 * terms["instance"] + 2.0 * terms["batch"] + 3.0 * terms["class"])
    with pytest.raises(TypeError, match="dense teacher logits"):
        m([Out(sw), Out(ss)], [Out(object()), Out(ts)], batch, None)
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        mlkd_loss(sw.reshape(2, 4, 6), tw.reshape(2, 4, 6), ss.reshape(2, 4, 6), ts.reshape(2, 4, 6))


# ---- the strong view --------------------------------------------------------------------------------------


def _images(n=4, h=12, w=10, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(("name", "v", "pil", "levels"), [
    ("rotate", 17.0, lambda i: i.rotate(17.0), 0),
    ("shear_x", 0.21, lambda i: i.transform(i.size, 0, (1, 0.21, 0, 0, 1, 0)), 0),
    ("shear_y", -0.13, lambda i: i.transform(i.size, 0, (1, 0, 0, -0.13, 1, 0)), 0),
    ("translate_x", 0.23, lambda i: i.transform(i.size, 0, (1, 0, 0.23 * 10, 0, 1, 0)), 0),
    ("translate_y", -0.2, lambda i: i.transform(i.size, 0, (1, 0, 0, 0, 1, -0.2 * 12)), 0),
    ("equalize", 0.5, "equalize", 0),
    ("posterize", 5.6, lambda i: __import__("PIL.ImageOps").ImageOps.posterize(i, 5), 0),
    ("solarize", 100.0, lambda i: __import__("PIL.ImageOps").ImageOps.solarize(i, 100), 0),
    ("auto_contrast", 0.5, "autocontrast", 1),
    ("brightness", 0.37, ("Brightness", 0.37), 1),
    ("color", 0.37, ("Color", 0.37), 1),
    ("contrast", 0.37, ("Contrast", 0.37), 1),
    ("sharpness", 0.37, ("Sharpness", 0.37), 1),
])
def test_each_strong_operation_is_pils(name, v, pil, levels):
    """The operations of MLKD's RandAugment against PIL itself on random RGB images: exact, or within one
    level for the blends (PIL truncates, kdbench rounds)."""
    from PIL import Image, ImageEnhance, ImageOps

    from kdbench.data.randaugment import apply_op

    if isinstance(pil, str):
        pil = getattr(ImageOps, pil)
    elif isinstance(pil, tuple):
        cls, f = pil
        pil = lambda i, cls=cls, f=f: getattr(ImageEnhance, cls)(i).enhance(f)  # noqa: E731
    imgs = _images()
    ref = torch.stack([torch.from_numpy(np.array(pil(Image.fromarray(im.numpy())))) for im in imgs])
    x = imgs.permute(0, 3, 1, 2).float() / 255
    got = (apply_op(name, x, torch.full((4,), v)) * 255).round().clamp(0, 255).permute(0, 2, 3, 1)
    assert (got - ref.float()).abs().max().item() <= levels
    if levels:
        assert not torch.equal(got, x.permute(0, 2, 3, 1) * 255)  # it did something


def test_rand_augment_is_reproducible_on_grid_and_row_independent():
    from kdbench.data.randaugment import rand_augment

    x = _images(n=6).permute(0, 3, 1, 2).float() / 255
    a = rand_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, rand_augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, rand_augment(x, torch.Generator().manual_seed(2)))
    assert a.min() >= 0 and a.max() <= 1 and torch.equal((a * 255).round() / 255, a)
    other = x.clone()
    other[1:] = torch.rand_like(other[1:])
    other = (other * 255).round() / 255
    assert torch.equal(rand_augment(other, torch.Generator().manual_seed(1))[0], a[0])


def test_a_loader_asked_for_a_strong_view_keeps_the_weak_batches_and_draws_it_reproducibly():
    from kdbench.data import TensorLoader

    x = _images(n=10, h=8, w=8, seed=3).permute(0, 3, 1, 2).contiguous()
    y = torch.arange(10) % 3
    kw = dict(shuffle=True, augment="crop_flip", seed=5, mean=(0.5,), std=(0.25,))
    plain = list(TensorLoader(x, y, 4, **kw))
    both = TensorLoader(x, y, 4, views=("weak", "strong"), **kw)
    first = list(both)
    for p, b in zip(plain, first, strict=True):
        assert torch.equal(p.x, b.x) and torch.equal(p.idx, b.idx) and torch.equal(p.view, b.view)
        assert len(p) == 4 and b.x_views["strong"].shape == b.x.shape
        assert not torch.equal(b.x_views["strong"], b.x)
    both.set_epoch(0)
    again = list(both)
    assert all(torch.equal(a.x_views["strong"], b.x_views["strong"]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(list(both)[0].x_views["strong"], first[0].x_views["strong"])  # epoch 1 differs
    with pytest.raises(ValueError, match="strong view needs image inputs"):
        TensorLoader(torch.randn(10, 3), y, 4, views=("weak", "strong"))
    with pytest.raises(ValueError, match="views must be 'weak'"):
        TensorLoader(x, y, 4, views=("strong",))


# ---- runs and refusals ------------------------------------------------------------------------------------


def test_mlkd_trains_one_epoch_on_digits_on_both_views(compose, teachers_dir, monkeypatch):
    from kdbench.methods.mlkd import MLKD
    from kdbench.train import run

    seen = []
    call = MLKD.__call__

    def spy(self, student, teacher, batch, parts):
        if not seen:
            seen.append((student[0].logits.detach().clone(), student[1].logits.detach().clone(),
                         teacher[0].logits.clone(), teacher[1].logits.clone()))
        return call(self, student, teacher, batch, parts)

    monkeypatch.setattr(MLKD, "__call__", spy)
    rec = run(compose(*FAST, "trainer.max_epochs=1", "distill=mlkd", f"paths.teachers_dir={teachers_dir}"))
    assert rec["status"] == "complete" and len(rec["history"]) == 1 and math.isfinite(rec["history"][0]["train_loss"])
    assert rec["distill"]["method"] == "mlkd" and rec["params"]["training_only"] == 0
    assert rec["metrics"]["last"]["test"]["acc"] > 0.2
    sw, ss, tw, ts = seen[0]
    assert sw.shape == ss.shape and not torch.equal(sw, ss) and not torch.equal(tw, ts)  # two views, both sides


@pytest.mark.slow
def test_an_interrupted_mlkd_run_resumes_exactly(compose, teachers_dir, monkeypatch):
    """SIGTERM as the second epoch starts, then the same command: the strong views of the resumed epochs are the
    uninterrupted run's (keyed to seed and epoch), so it ends with the same numbers."""
    args = (*FAST, "distill=mlkd", "trainer.max_epochs=3", f"paths.teachers_dir={teachers_dir}")
    whole_cut_resumed(lambda name: compose(*args, f"experiment_name={name}"), monkeypatch)


def test_mlkd_ls_composes_with_the_ls_recipe(compose):
    from omegaconf import OmegaConf

    from kdbench.config import validate
    from kdbench.methods import build_method

    cfg = compose("distill=mlkd_ls")
    validate(cfg)
    m = build_method("mlkd", OmegaConf.to_container(cfg.distill))
    assert m.standardize and (m.kd_weight, m.batch_weight, m.class_weight, m.ce_weight) == (9.0, 9.0, 9.0, 0.1)
    assert m.temperatures == (2.0, 3.0, 5.0, 2.0, 6.0) and m.strong_temperatures == (2.0, 3.0, 5.0)


@pytest.mark.parametrize(("overrides", "key", "says"), [
    (("teacher_signal=cached",), "teacher_signal", "teacher_signal=cached gives the teacher on one view only"),
    (("dataset=synthetic", "teacher=oracle"), "distill.method", "feature vectors or tokens"),
    (("distill.temperatures=[2,0]",), "distill.temperatures", "a list of numbers > 0"),
    (("distill.mask=rowz",), "distill.mask", "allowed: released, rows, none"),
    (("distill.percentile=101",), "distill.percentile", "[0, 100]"),
])
def test_refusals_are_one_line_before_any_work(compose, tmp_path, overrides, key, says):
    from kdbench.errors import ConfigError
    from kdbench.train import run

    with pytest.raises(ConfigError) as e:
        run(compose("distill=mlkd", "trainer.max_epochs=1", *overrides, f"paths.teachers_dir={tmp_path / 't'}"))
    assert e.value.key == key and says in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "t").exists() and not list((tmp_path / "results").rglob("*.json"))
