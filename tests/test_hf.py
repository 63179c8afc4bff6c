"""Hugging Face language models (issue 28): local folders only, one vocabulary, OpenAI-format captures, masks.

Everything is built once per module in tmp, offline: a byte-level BPE tokenizer trained with ``tokenizers`` on a
slice of the shipped corpus, tiny random GPT-2 and Llama models written with ``save_pretrained``."""

from __future__ import annotations

import json
import os

import pytest
import torch

V = 300
GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from kdbench.data.hf_text import train_tokenizer
    from kdbench.data.text import corpus_bytes

    root = tmp_path_factory.mktemp("hf")
    text = corpus_bytes()[0].decode("utf-8")[:30000]
    tok = train_tokenizer(root / "tok", V, text)
    other = train_tokenizer(root / "other", V, text[::-1])  # other merges: the same size, other ids
    (root / "corpus.txt").write_text(text)
    torch.manual_seed(0)
    # untied: a random model with tied embeddings predicts its current token, which the alignment check (rightly,
    # for a trained teacher) calls off by one
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                                       tie_word_embeddings=False))
    ids = torch.tensor(tok(text[:8000])["input_ids"])
    windows = ids[: len(ids) // 33 * 33].view(-1, 33)
    opt = torch.optim.AdamW(gpt2.parameters(), lr=1e-2)
    for step in range(15):  # a few steps: a teacher that predicts the next token (above chance), not the current one
        batch = windows[torch.randint(0, len(windows), (16,), generator=torch.Generator().manual_seed(step))]
        opt.zero_grad()
        gpt2(input_ids=batch, labels=batch).loss.backward()
        opt.step()
    gpt2.save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")  # the folder carries its tokenizer, as a Hub download does
    llama = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=V + 64, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         num_key_value_heads=1, max_position_embeddings=64))
    llama.save_pretrained(root / "llama")  # its vocabulary padded by 64 ids past the tokenizer's
    return {"root": root, "tok": tok, "other": other, "gpt2": root / "gpt2", "llama": root / "llama",
            "corpus": root / "corpus.txt", "gpt2_model": gpt2.eval(), "llama_model": llama.eval()}


def data_args(lm, *extra):
    return ("dataset=hf_text", f"dataset.tokenizer={lm['root'] / 'tok'}", f"dataset.path={lm['corpus']}",
            "dataset.max_length=32", "dataset.n_train=48", "dataset.n_test=16", "dataset.val_size=16",
            "dataset.batch_size=16", "dataset.eval_batch_size=32", "student=hf_causal_lm",
            "student.kwargs.config={" + ",".join(f"{k}:{v}" for k, v in GPT2.items()) + "}", "teacher=hf_causal_lm",
            f"teacher.kwargs.path={lm['gpt2']}", "teacher.kwargs.config=null",
            "optim=adamw", "optim.lr=3e-3", "trainer.max_epochs=1", "logger=none", *extra)


def test_a_local_folder_loads_offline_and_a_padded_vocabulary_is_cut_to_the_tokenizer(lm, tmp_path):
    from kdbench.models import build_model
    from kdbench.teachers.train import for_run

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    x = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    m = build_model("hf_causal_lm", V, (32,), path=str(lm["gpt2"])).eval()
    with torch.no_grad():
        assert torch.equal(m(x), lm["gpt2_model"](x).logits)  # the saved weights, not a fresh init
        ll = build_model("hf_causal_lm", V, (32,), path=str(lm["llama"])).eval()
        full = lm["llama_model"](x).logits
        assert full.shape[-1] == V + 64 and torch.equal(ll(x), full[..., :V])  # padded ids out of the softmax
    class Data:
        num_classes, input_shape = V, (32,)
    teacher, meta = for_run({"arch": "hf_causal_lm", "kwargs": {"path": str(lm["gpt2"])}}, {}, {}, Data(),
                            teachers_dir=tmp_path / "t", checkpoints_dir=tmp_path / "c", eval_batch_size=8)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert meta["arch"] == "hf_causal_lm" and meta["key"].startswith("hf-") and meta["name"] == "gpt2"
    assert not (tmp_path / "t").exists()  # never registered, never trained


def test_a_run_that_would_download_or_unpickle_is_refused_in_one_line_before_any_work(lm, compose, tmp_path):
    from kdbench.config import validate
    from kdbench.errors import ConfigError

    bins = tmp_path / "bins"
    bins.mkdir()
    (bins / "config.json").write_text((lm["gpt2"] / "config.json").read_text())
    (bins / "pytorch_model.bin").write_bytes(b"\0")
    for path, words in (("openai-community/gpt2", "looks like a Hub model id"), (str(lm["corpus"]), "not a folder"),
                        (str(bins), "no *.safetensors weights (only pytorch_model.bin)")):
        with pytest.raises(ConfigError) as e:
            validate(compose(*data_args(lm, f"teacher.kwargs.path={path}")))
        msg = str(e.value)
        assert e.value.key == "teacher.kwargs.path" and words in msg and "\n" not in msg
    with pytest.raises(ConfigError) as e:  # a folder and a fresh config: which one ran? refused, not guessed
        validate(compose(*data_args(lm, "teacher.kwargs.config={model_type:gpt2}")))
    assert e.value.key == "teacher.kwargs.path" and "teacher.kwargs.config=null" in str(e.value)
    assert not (tmp_path / "results").exists()


def test_teacher_and_student_tokenizers_that_differ_are_refused_naming_both_and_the_first_id(lm, compose, capsys):
    from kdbench.config import validate
    from kdbench.errors import ConfigError
    from kdbench.tokenizers_check import first_difference, id_to_token

    a, b = id_to_token(lm["tok"]), id_to_token(lm["other"])
    first = first_difference(a, b)
    assert len(a) == len(b) == V and first is not None and all(a[i] == b[i] for i in range(first))
    with pytest.raises(ConfigError) as e:
        validate(compose(*data_args(lm, f"teacher.kwargs.tokenizer={lm['root'] / 'other'}")))
    msg = str(e.value)
    assert f"token id {first} " in msg and str(lm["root"] / "other") in msg and str(lm["root"] / "tok") in msg
    assert e.value.key == "teacher.kwargs.tokenizer"
    # a vocabulary padded past the tokenizer's, with the same ids: allowed, and said
    validate(compose(*data_args(lm, f"teacher.kwargs.path={lm['llama']}",
                                f"teacher.kwargs.tokenizer={lm['root'] / 'tok'}")))
    assert f"padded to {V + 64} ids, the tokenizer has {V}" in capsys.readouterr().err


def test_jsonl_prompts_and_pads_are_masked_and_garbage_there_changes_neither_loss_nor_gradient(lm, tmp_path):
    from kdbench.data import load_dataset
    from kdbench.losses import kd_loss
    from kdbench.models import build_model

    tok = lm["tok"]
    rows = [{"prompt": "Question: what is a list?\n", "response": "A mutable sequence."},
            {"prompt": "Say hi: ", "response": "hi"}, {"text": "The for statement iterates."}]
    f = tmp_path / "sft.jsonl"
    f.write_text("\n".join(map(json.dumps, rows)) + "\n")
    d = load_dataset({"name": "hf_text", "path": str(f), "tokenizer": str(lm["root"] / "tok"), "max_length": 48,
                      "pack": False, "test_fraction": 0.34})
    x = torch.cat([d.train_x, d.test_x])
    y = torch.cat([d.train_y, d.test_y])
    for r in rows:
        p = tok(r.get("prompt", ""), add_special_tokens=False)["input_ids"]
        resp = tok(r.get("response", r.get("text")), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        i = next(i for i in range(3) if x[i, : len(p) + 1].tolist() == (p + resp)[:1 + len(p)])
        assert len(p + resp) <= 49  # none cut
        want = torch.full((48,), -100)
        want[max(len(p) - 1, 0): len(p) + len(resp) - 1] = torch.tensor((p + resp)[max(len(p), 1):])
        assert torch.equal(y[i], want)  # labels: the response's tokens (shifted), -100 on prompt and pads
    s = build_model("hf_causal_lm", d.num_classes, d.input_shape, config=GPT2).eval()  # no dropout: one function
    t = build_model("hf_causal_lm", d.num_classes, d.input_shape, path=str(lm["gpt2"])).eval()
    pads = torch.zeros_like(y, dtype=torch.bool)
    for i in range(3):
        last = int((y[i] != -100).nonzero().max())
        pads[i, last + 1:] = True  # right padding: never seen by a real position of a causal model
    garbage = torch.where(pads, torch.randint(0, V, x.shape, generator=torch.Generator().manual_seed(1)), x)

    def loss_and_grad(inputs, teacher_logits):
        s.zero_grad()
        loss = kd_loss(s(inputs), teacher_logits, y, alpha=0.5, tau=2.0)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in s.parameters()]

    with torch.no_grad():
        tl = t(x)
    bad_t = torch.where((y == -100).unsqueeze(-1), torch.full_like(tl, 1e4), tl)
    a, ga = loss_and_grad(x, tl)
    b, gb = loss_and_grad(garbage, bad_t)
    assert torch.allclose(a, b, atol=1e-6) and all(torch.allclose(u, w, atol=1e-6) for u, w in zip(ga, gb))


def write_capture(lm, out, k: int, results):
    """``kdbench capture`` of the GPT-2 teacher folder at top-``k``."""
    from kdbench.capture import main

    assert main(["--k", str(k), "--out", str(out), *data_args(lm), f"paths.results_dir={results}"]) == 0
    return out


def test_gradient_checkpointing_gives_the_same_gradients(lm):
    from kdbench.models import build_model

    x = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    grads = []
    for ckpt in (False, True):
        m = build_model("hf_causal_lm", V, (16,), path=str(lm["gpt2"]), gradient_checkpointing=ckpt).train()
        m.model.config.resid_pdrop = m.model.config.embd_pdrop = m.model.config.attn_pdrop = 0.0
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        m(x).logsumexp(-1).sum().backward()
        grads.append([p.grad for p in m.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert m.model.is_gradient_checkpointing


@pytest.fixture(scope="module")
def capture(lm, tmp_path_factory):
    """A top-8 capture, written once for the module."""
    return write_capture(lm, tmp_path_factory.mktemp("cap") / "cap", 8, tmp_path_factory.mktemp("capres"))


def test_openai_format_round_trip_and_its_refusals(lm, capture, compose, tmp_path):
    from kdbench.config import resolve
    from kdbench.errors import ConfigError
    from kdbench.openai_logprobs import export_openai, import_openai
    from kdbench.runner import load_data
    from kdbench.stores import read_header, read_split

    conf = resolve(compose(*data_args(lm)))
    data = load_data(conf["dataset"])
    out = export_openai(capture, tmp_path / "oa.jsonl", conf, data, lm["tok"])
    lines = out.read_text().splitlines()
    assert len(lines) == 32 + 16 + 16  # train (48 less 16 held out as val), val, test
    first = json.loads(lines[0])
    pos0 = first["logprobs"]["content"][0]
    assert len(pos0["top_logprobs"]) == 8 and bytes(pos0["bytes"]) == lm["tok"].decode([int(data.train_x[0, 1])]).encode()
    from kdbench.cli import main

    run_args = [*data_args(lm), f"paths.results_dir={tmp_path / 'results'}"]
    assert main(["openai", "export", str(capture), "--out", str(tmp_path / "cli.jsonl"), *run_args]) == 0
    assert (tmp_path / "cli.jsonl").read_bytes() == out.read_bytes()  # the command is the function
    assert main(["openai", "import", str(out), "--out", str(tmp_path / "cli"), *run_args]) == 0
    back = import_openai(out, tmp_path / "back", conf, data, lm["tok"], teacher="gpt2-tiny")
    h = read_header(back)
    assert h["tokenizer"] == read_header(capture)["tokenizer"] and h["teacher"]["name"] == "gpt2-tiny"
    assert read_header(tmp_path / "cli")["n"] == h["n"]
    for split in ("train", "val", "test"):
        i1, l1 = read_split(capture, split)
        i2, l2 = read_split(back, split)
        assert torch.equal(i1, i2) and torch.allclose(l1, l2, atol=1e-6)  # packed rows: every position covered
    # a token that is not the row's (re-tokenized otherwise), and one the tokenizer has no id for
    o = json.loads(lines[3])
    o["logprobs"]["content"][5].update(token="\u2603", bytes=list("\u2603".encode()))
    for bad, words in ((lines[3].replace('"bytes": [', '"bytes": [255, ', 1), "position 0: token"),
                       (json.dumps(o), "is no token of the run's tokenizer")):
        f = tmp_path / f"bad{len(words)}.jsonl"
        f.write_text("\n".join(lines[:3] + [bad] + lines[4:]) + "\n")
        with pytest.raises(ConfigError) as e:
            import_openai(f, tmp_path / f"no{len(words)}", conf, data, lm["tok"])
        assert f"{f}:4: " in str(e.value) and words in str(e.value) and not (tmp_path / f"no{len(words)}").exists()


@pytest.mark.slow
def test_captured_equals_online_at_k_equal_v_and_a_capture_of_another_tokenizer_is_refused(lm, compose, tmp_path,
                                                                                           monkeypatch):
    import kdbench.teachers.train as teacher_training
    from kdbench.errors import ConfigError
    from kdbench.train import run

    capture = write_capture(lm, tmp_path / "capV", V, tmp_path / "capres")
    online = run(compose(*data_args(lm, "experiment_name=on", "distill.tau=2")))
    assert online["status"] == "complete" and online["teacher"]["arch"] == "hf_causal_lm"
    assert (tmp_path / "results" / "runs" / "on" / f"{online['run_id']}.json").is_file()
    monkeypatch.setattr(teacher_training, "for_run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no teacher")))
    cap = run(compose(*data_args(lm, "experiment_name=cap", "distill.tau=2", "teacher_signal=captured",
                                 f"teacher_capture.path={capture}")))
    for h_on, h_cap in zip(online["history"], cap["history"]):
        assert h_cap["train_loss"] == pytest.approx(h_on["train_loss"], rel=1e-4)
    assert cap["metrics"]["last"]["test"]["nll"] == pytest.approx(online["metrics"]["last"]["test"]["nll"], rel=1e-4)
    fake = tmp_path / "faketok"
    lm["other"].save_pretrained(fake)
    h = json.loads((capture / "header.json").read_text())
    from kdbench.tokenizers_check import identity

    h["tokenizer"] = identity(lm["other"], fake)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in capture.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "header.json").write_text(json.dumps(h))
    with pytest.raises(ConfigError) as e:
        run(compose(*data_args(lm, "experiment_name=cap2", "teacher_signal=captured", f"teacher_capture.path={copy}")))
    assert "the tokenizers of the capture" in str(e.value) and "token id" in str(e.value)
