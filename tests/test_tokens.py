"""Token-level distillation (issue 12, first steps): sequence data with shifted labels, causal models,
masking and the mean over kept tokens, per-position captures, alignment, captured == online at k = V."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench.losses import kd_loss, topk_kd_loss

MARKOV = ("dataset=markov", "dataset.n_train=600", "dataset.n_test=200", "dataset.val_size=100",
          "student=lm_student", "optim=adamw", "optim.lr=3e-3", "trainer.max_epochs=2", "logger=none")


def test_markov_data_is_shifted_masked_and_follows_its_law():
    from kdbench.data import load_dataset
    from kdbench.data.text import markov_oracle

    d = load_dataset({"name": "markov", "prompt_len": 8, "n_train": 3000, "n_test": 100})
    assert d.is_tokens and d.train_x.shape == (3000, 32) and d.num_classes == 32
    assert (d.train_y[:, :7] == -100).all() and (d.train_y[:, 7:] >= 0).all()
    assert torch.equal(d.train_x[:, 8:], d.train_y[:, 7:-1])  # label at t is input token t + 1
    # every transition in the data is possible under the law, and the oracle's NLL is the entropy rate
    oracle = markov_oracle(d)
    logp = oracle(d.train_x).log_softmax(-1)
    keep = d.train_y != -100
    nll = -logp[keep].gather(-1, d.train_y[keep].unsqueeze(-1)).mean()
    assert torch.isfinite(nll) and abs(float(nll) - d.info["entropy_rate_nats"]) < 0.05
    again = load_dataset({"name": "markov", "prompt_len": 8, "n_train": 3000, "n_test": 100})
    assert torch.equal(again.train_x, d.train_x)  # seeded


def test_bytes_corpus_ships_with_python_and_records_its_provenance():
    from kdbench.data import load_dataset

    d = load_dataset({"name": "bytes_text", "seq_len": 32, "prompt_len": 0})
    assert d.num_classes == 256 and d.train_x.shape[1] == 32 and (d.train_y >= 0).all()
    assert len(d.info["sha256"]) == 64 and d.info["bytes"] > 100_000 and "pydoc_data" in d.info["file"]
    assert 0 < d.info["unigram_entropy_nats"] < math.log(256)


def test_the_causal_model_never_looks_ahead():
    from kdbench.models import build_model

    torch.manual_seed(0)
    m = build_model("transformer_lm", 32, (16,), width=32, depth=2, heads=4).eval()
    x = torch.randint(0, 32, (3, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 32, (3, 6))
    with torch.no_grad():
        a, b = m(x), m(y)
    assert a.shape == (3, 16, 32)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])


def test_masked_positions_change_neither_value_nor_gradient_and_the_mean_is_over_kept_tokens():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, 10, generator=g)
    t = torch.randn(4, 6, 10, generator=g)
    y = torch.randint(0, 10, (4, 6), generator=g)
    y[0, :4] = -100  # an uneven prompt: rows keep 2, 6, 6, 6 tokens
    s_bad, t_bad = s.clone(), t.clone()
    s_bad[y == -100] = float("nan")
    t_bad[y == -100] = 1e30
    s1, s2 = s.clone().requires_grad_(True), s_bad.clone().requires_grad_(True)
    a = kd_loss(s1, t, y, alpha=0.3, tau=2.0)
    b = kd_loss(s2, t_bad, y, alpha=0.3, tau=2.0)
    a.backward()
    b.backward()
    assert torch.equal(a, b) and torch.equal(s1.grad[y != -100], s2.grad[y != -100])
    assert (s2.grad[y == -100] == 0).all()
    keep = y != -100
    flat = kd_loss(s[keep], t[keep], y[keep], alpha=0.3, tau=2.0)  # the mean over the 20 kept tokens
    assert torch.allclose(a, flat, atol=1e-6)
    per_seq = torch.stack([kd_loss(s[i][keep[i]], t[i][keep[i]], y[i][keep[i]], alpha=0.3, tau=2.0) for i in range(4)])
    assert not torch.allclose(a, per_seq.mean(), atol=1e-4)  # not the mean of per-sequence means
    idx, lp = t.log_softmax(-1).topk(10, dim=-1)[1], t.log_softmax(-1).topk(10, dim=-1)[0]
    assert torch.allclose(topk_kd_loss(s, idx, lp, y, alpha=0.3, tau=2.0), a, atol=1e-5)  # k = V: dense KD


@pytest.fixture
def capture_store(tmp_path):
    from kdbench.capture import main

    out = tmp_path / "cap"
    assert main(["--k", "32", "--tau", "1", "--out", str(out), "--jsonl", str(tmp_path / "cap.jsonl"),
                 *MARKOV, "teacher=oracle", f"paths.results_dir={tmp_path / 'r'}"]) == 0
    return out


def test_a_token_capture_holds_one_top_k_per_position_and_round_trips_through_jsonl(capture_store, tmp_path):
    import json

    from kdbench.stores import import_jsonl, read_header, read_split

    h = read_header(capture_store)
    assert h["positions"] == 32 and "token t + 1" in h["alignment"] and h["k"] == 32
    idx, logp = read_split(capture_store, "train")
    assert idx.shape == (500, 1, 32, 32) and np.allclose(np.exp(logp.numpy()).sum(-1), 1.0, atol=1e-4)
    lines = (tmp_path / "cap.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    assert len(row["tokens"]) == 32 and len(row["indices"]) == 32 and len(row["indices"][0]) == 32
    back = import_jsonl(tmp_path / "cap.jsonl", tmp_path / "back")
    i2, l2 = read_split(back, "train")
    assert torch.equal(i2, idx) and torch.allclose(l2, logp, atol=1e-6)


def test_captured_equals_online_at_k_equal_v_with_no_teacher_in_memory(capture_store, compose, monkeypatch):
    import kdbench.teachers.train as teacher_training
    from kdbench.train import run

    online = run(compose(*MARKOV, "teacher=oracle", "distill.tau=2", "experiment_name=on"))
    monkeypatch.setattr(teacher_training, "for_run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no teacher")))
    cap = run(compose(*MARKOV, "teacher=oracle", "distill.tau=2", "teacher_signal=captured",
                      f"teacher_capture.path={capture_store}", "experiment_name=cap"))
    assert cap["status"] == "complete" and cap["teacher_signal"] == "captured"
    for h_on, h_cap in zip(online["history"], cap["history"]):
        assert h_cap["train_loss"] == pytest.approx(h_on["train_loss"], rel=1e-4)
    assert online["metrics"]["last"]["test"]["ppl"] == pytest.approx(math.exp(online["metrics"]["last"]["test"]["nll"]))
    # the oracle is the true law: its NLL is the data's entropy rate, a lower bound for every student
    assert online["teacher"]["test"]["nll"] < online["metrics"]["last"]["test"]["nll"]
    # the exact KL to the true law: 0 for the oracle itself, positive for the student, and it accounts
    # for the student's excess NLL (equal in expectation over the sampled labels)
    assert online["teacher"]["test"]["kl_to_true"] == pytest.approx(0.0, abs=1e-6)
    s_test = online["metrics"]["last"]["test"]
    assert s_test["kl_to_true"] > 0.01
    assert s_test["kl_to_true"] == pytest.approx(s_test["nll"] - online["teacher"]["test"]["nll"], abs=0.05)
    assert cap["metrics"]["last"]["test"]["kl_to_true"] == pytest.approx(s_test["kl_to_true"], rel=1e-3)


def test_kl_to_the_true_law_has_its_closed_form_over_kept_tokens_only():
    from kdbench.data import load_dataset
    from kdbench.data.text import markov_oracle
    from kdbench.distill import kl_to_reference

    d = load_dataset({"name": "markov", "prompt_len": 8, "n_train": 50, "n_test": 10})
    x, y = d.train_x[:6], d.train_y[:6]
    true = markov_oracle(d)(x)
    uniform = torch.zeros(6, 32, 32)
    uniform[y == -100] = float("nan")  # garbage at the masked prompt positions is never read
    total, n = kl_to_reference(true, uniform, y)
    p = true.softmax(-1)[y != -100]
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    assert int(n) == int((y != -100).sum()) == 6 * 25  # prompt 8: labels 0..6 masked
    assert float(total / n) == pytest.approx(float((math.log(32) - entropy).mean()), rel=1e-5)  # KL(p || U) = log V - H(p)
    zero, _ = kl_to_reference(true, true, y)
    assert abs(float(zero)) < 1e-4


def test_an_off_by_one_capture_is_refused_before_any_work(capture_store, compose, tmp_path):
    from kdbench.errors import ConfigError
    from kdbench.train import run

    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for f in capture_store.iterdir():
        (shifted / f.name).write_bytes(f.read_bytes())
    for split in ("train", "val", "test"):
        for kind in ("indices", "log_probs"):
            a = np.load(shifted / f"{split}.{kind}.npy")
            np.save(shifted / f"{split}.{kind}.npy", np.roll(a, 1, axis=2))  # position t holds token t's law
    with pytest.raises(ConfigError) as e:
        run(compose(*MARKOV, "teacher=oracle", "teacher_signal=captured", f"teacher_capture.path={shifted}",
                    results=tmp_path / "r2"))
    assert "off by one" in str(e.value) and not (tmp_path / "r2" / "runs").exists()


def test_the_cached_signal_is_refused_for_sequences_before_any_work(compose, tmp_path):
    from kdbench.errors import ConfigError
    from kdbench.train import run

    with pytest.raises(ConfigError) as e:
        run(compose(*MARKOV, "teacher=oracle", "teacher_signal=cached", results=tmp_path / "r"))
    assert e.value.key == "teacher_signal" and "captured" in str(e.value)
    assert not (tmp_path / "r" / "runs").exists()
