"""Nothing read back from a capture store, a JSONL import or a teacher import is trusted (issue 23 #3-#5, #7).

Each case plants one defect in a copy of a real store made by a real ``kdbench capture`` (one per module)
and expects a one-line refusal naming the file, split, row and rule, with nothing written or trained.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from kdbench.errors import ConfigError

ARGS = ["teacher.recipe.epochs=2", "trainer.max_epochs=1", "logger=none"]


@pytest.fixture(scope="module")
def made(tmp_path_factory, teachers_dir):
    """One top-3 capture of the digits teacher (``cap``) and its JSONL export (``cap.jsonl``), read only."""
    from kdbench.capture import main

    tmp = tmp_path_factory.mktemp("stores")
    assert main(["--k", "3", "--out", str(tmp / "cap"), "--jsonl", str(tmp / "cap.jsonl"), *ARGS,
                 f"paths.results_dir={tmp / 'results'}", f"paths.teachers_dir={teachers_dir}",
                 f"paths.data_dir={tmp / 'data'}"]) == 0
    return tmp


@pytest.fixture
def store(made, tmp_path):
    """A copy of the module's store, to tamper with."""
    return shutil.copytree(made / "cap", tmp_path / "cap")


def _header(store, edit):
    h = json.loads((store / "header.json").read_text())
    edit(h)
    (store / "header.json").write_text(json.dumps(h))


def _array(store, name, edit):
    a = np.load(store / name)
    a = edit(a.copy())
    np.save(store / name, a if a is not None else np.zeros(0))


def _set(index, value):
    def edit(a):
        a[index] = value
        return a

    return edit


def _refused(path, *fragments, values=True):
    from kdbench.stores import validate_store

    with pytest.raises(ConfigError) as e:
        validate_store(path, values=values)
    msg = str(e.value)
    assert "\n" not in msg and e.value.key == "teacher_capture.path"
    for f in fragments:
        assert f in msg, msg
    return msg


def test_the_store_a_capture_writes_passes_and_records_its_checksums(made):
    from kdbench.stores import file_digest, validate_store

    h = validate_store(made / "cap")
    assert h["k"] == 3 and set(h["n"]) == {"train", "val", "test"} and h["checked"]["rules"] >= 1
    assert h["checked"]["sha256"]["train.log_probs.npy"] == file_digest(made / "cap" / "train.log_probs.npy")


def test_values_are_checked_once_then_trusted_by_checksum_and_rechecked_when_an_array_changes(store, monkeypatch):
    import kdbench.stores as stores

    def no_values(*a, **k):
        raise AssertionError("values re-read although the checksums match")

    with monkeypatch.context() as m:
        m.setattr(stores, "check_values", no_values)
        stores.validate_store(store)  # untampered: the header's checksums vouch for the values
    _array(store, "test.log_probs.npy", _set((4, 0, 1), -0.0001))  # row 4 now unsorted, its top-1 not first
    _refused(store, "test.log_probs.npy", "split test, row 4, view 0", "sorted from the largest")


# one defect per case: (file, edit of the array) -> the fragments of the one-line refusal
ARRAY_CASES = {
    "duplicate class id": ("train.indices.npy", lambda a: (a.__setitem__((7, 0, 2), a[7, 0, 0]), a)[1],
                           ["train.indices.npy", "split train, row 7, view 0", "class ids repeat"]),
    "log-prob above 0": ("train.log_probs.npy", _set((3, 0, 0), 0.5), ["row 3", "log-probs must be <= 0"]),
    "mass about 3 (tail mode)": ("val.log_probs.npy", _set((2, 0), math.log(0.99)),
                                 ["split val, row 2", "sum above 1"]),
    "NaN": ("train.log_probs.npy", _set((11, 0, 1), np.nan), ["row 11", "must be finite"]),
    "-inf": ("test.log_probs.npy", _set((0, 0, 2), -np.inf), ["split test, row 0", "must be finite"]),
    "class id out of range": ("test.indices.npy", _set((5, 0, 1), 10), ["row 5", "class ids must be in [0, 10)"]),
    "negative class id": ("test.indices.npy", _set((6, 0, 2), -1), ["row 6", "class ids must be in [0, 10)"]),
    "too few rows": ("train.indices.npy", lambda a: a[:-1], ["train.indices.npy", "shape", "but the header says"]),
    "top-3 arrays cut to top-2": ("train.log_probs.npy", lambda a: np.ascontiguousarray(a[..., :2]), ["shape"]),
    "2-D array": ("val.indices.npy", lambda a: a[:, 0], ["val.indices.npy", "shape"]),
    "float16 log-probs": ("test.log_probs.npy", lambda a: a.astype(np.float16), ["dtype float16; allowed: float32"]),
    "float indices": ("test.indices.npy", lambda a: a.astype(np.float32), ["dtype float32; allowed: int32, int64"]),
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_a_tampered_array_is_refused_naming_file_split_row_and_rule(store, case):
    name, edit, fragments = ARRAY_CASES[case]
    _array(store, name, edit)
    _refused(store, *fragments)


HEADER_CASES = {
    "k says 5 over top-3 arrays": (lambda h: h.update(k=5), ["shape", "[", "5]"]),
    "k larger than the classes": (lambda h: h.update(k=11), ["k must be an integer in [1, num_classes=10]"]),
    "k = 0": (lambda h: h.update(k=0), ["k must be an integer in [1"]),
    "k as a string": (lambda h: h.update(k="3"), ["k must be an integer", "'3'"]),
    "k as true": (lambda h: h.update(k=True), ["k must be an integer"]),
    "a key missing": (lambda h: h.pop("n"), ["the header lacks n"]),
    "an unknown key": (lambda h: h.update(kk=3), ["unknown header key(s) kk"]),
    "capture_tau 0": (lambda h: h.update(capture_tau=0), ["capture_tau must be a finite number > 0"]),
    "capture_tau NaN": (lambda h: h.update(capture_tau=float("nan")), ["capture_tau must be a finite number > 0"]),
    "capture_tau a string": (lambda h: h.update(capture_tau="4"), ["capture_tau must be a finite number > 0"]),
    "num_classes not the dataset's own": (lambda h: h.update(num_classes=12), ["dataset.num_classes is 10"]),
    "n.train not the dataset's": (lambda h: h["n"].update(train=h["n"]["train"] - 1), ["dataset.n_train"]),
    "views of another family": (lambda h: h.update(family="jitter", views={**h["views"], "train": 3}),
                                ["views.train is 3, but family 'jitter' has 25 views"]),
    "an unknown family": (lambda h: h.update(family="mixup"), ["family must be one of"]),
    "views for the test split": (lambda h: h["views"].update(test=2), ["views.test must be 1"]),
    "a split in n but not in views": (lambda h: h["views"].pop("val"), ["views and n name other splits"]),
    "another format": (lambda h: h.update(format="kdbench-capture-0"), ["format must be 'kdbench-capture-1'"]),
    "probabilities, not log-probs": (lambda h: h.update(values="probs"), ["values must be 'log_probs'"]),
    "teacher not an object": (lambda h: h.update(teacher="mlp"), ["teacher must be an object"]),
    "token header over 3-D arrays": (lambda h: h.update(positions=4), ["train.indices.npy", "[N, V, T, k]"]),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_a_tampered_header_is_refused_before_any_array_is_read(store, case):
    edit, fragments = HEADER_CASES[case]
    _header(store, edit)
    _refused(store, *fragments, values=False)


def test_a_split_the_header_counts_without_its_files_is_refused(store):
    (store / "val.log_probs.npy").unlink()
    _refused(store, "val.log_probs.npy", "missing")


def test_a_truncated_or_padded_npy_is_refused_with_its_size(store):
    f = store / "train.log_probs.npy"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    _refused(store, "train.log_probs.npy", "truncated", values=False)
    f.write_bytes(data + b"\0" * 8)
    _refused(store, "train.log_probs.npy", f"{len(data) + 8} bytes", values=False)


def test_an_object_array_is_refused_without_unpickling_it(store):
    a = np.empty(np.load(store / "test.indices.npy").shape, dtype=object)
    np.save(store / "test.indices.npy", a, allow_pickle=True)
    _refused(store, "test.indices.npy", "object array", values=False)


def test_a_link_out_of_the_store_is_refused(store, tmp_path):
    outside = tmp_path / "elsewhere.npy"
    shutil.copy(store / "test.indices.npy", outside)
    (store / "test.indices.npy").unlink()
    (store / "test.indices.npy").symlink_to(outside)
    _refused(store, "test.indices.npy", "outside the store", values=False)


def test_a_header_linked_from_another_store_is_refused(store, made, tmp_path):
    other = shutil.copytree(made / "cap", tmp_path / "other")
    (store / "header.json").unlink()
    (store / "header.json").symlink_to(other / "header.json")
    _refused(store, "header.json: a link to", "outside the store", values=False)


def test_a_nan_in_a_store_is_the_store_s_fault_before_any_work_not_a_divergence(store, compose, tmp_path):
    """Issue 23 #5: refused by the run's preflight (no record, no teacher), not recorded as 'diverged'."""
    from kdbench.train import run

    _array(store, "train.log_probs.npy", _set((0, 0, 0), np.nan))
    results = tmp_path / "r"
    with pytest.raises(ConfigError) as e:
        run(compose(*ARGS, "teacher_signal=captured", f"teacher_capture.path={store}", results=results))
    assert e.value.key == "teacher_capture.path" and "train.log_probs.npy" in str(e.value)
    assert "split train, row 0, view 0: log-probs must be finite" in str(e.value)
    assert not (results / "runs").exists() and not (results / "teachers").exists()


def test_the_signal_itself_refuses_a_bad_store_and_rechecks_one_changed_after_it_passed(store):
    """``kdbench eval`` builds the signal without a run's preflight: the signal validates too."""
    from kdbench.signals.captured import CapturedSignal

    assert CapturedSignal(store).tables["test"][0].shape[-1] == 3  # passed (and remembered by this process)
    _array(store, "test.indices.npy", _set((1, 0, 0), 99))
    with pytest.raises(ConfigError, match=r"test.indices.npy: split test, row 1, view 0: class ids must be in"):
        CapturedSignal(store)


def test_a_capture_with_other_splits_than_the_run_is_refused(store, compose):
    from kdbench.config import resolve
    from kdbench.runner import load_data
    from kdbench.signals.captured import preflight

    conf = resolve(compose(*ARGS, "teacher_signal=captured", f"teacher_capture.path={store}"))
    data = load_data(conf["dataset"])
    data.val_x = data.val_y = None  # a run that validates on test, over a capture that holds a val split
    with pytest.raises(ConfigError) as e:
        preflight(conf, data)
    assert "holds the splits train, val, test, the run reads train, test" in str(e.value)


# ---- JSONL imports ----------------------------------------------------------------------------------------


def _lines(made):
    return (made / "cap.jsonl").read_text().splitlines()


def _first(lines, split):
    return next(n for n, line in enumerate(lines) if n and json.loads(line)["split"] == split)


def _edit_row(split, fn):
    def edit(lines):
        n = _first(lines, split)
        o = json.loads(lines[n])
        fn(o)
        return [*lines[:n], json.dumps(o), *lines[n + 1:]]

    return edit


def _edit_header(fn):
    def edit(lines):
        o = json.loads(lines[0])
        fn(o["header"])
        return [json.dumps(o), *lines[1:]]

    return edit


JSONL_CASES = {
    "duplicated class ids": (_edit_row("train", lambda o: o["indices"].__setitem__(1, o["indices"][0])),
                             ":2: split train, row 0, view 0: class ids repeat"),
    "a row summing above 1": (_edit_row("train", lambda o: o.update(log_probs=[-0.01, -0.02, -0.03])),
                              ":2: split train, row 0, view 0: the row's probabilities sum above 1"),
    "a negative idx": (_edit_row("train", lambda o: o.update(idx=-1)), ":2: idx must be an integer in [0, "),
    "an idx past the header's count": (_edit_row("test", lambda o: o.update(idx=10**6)), "idx must be an integer"),
    "k = 0": (_edit_header(lambda h: h.update(k=0)), ":1: k must be an integer in [1, num_classes=10]"),
    "fewer rows than the header counts": (lambda lines: lines[:-1], "split test has"),
    "true as a class id": (_edit_row("train", lambda o: o["indices"].__setitem__(0, True)),
                           ":2: class ids must be integers"),
    "false as a log-prob": (_edit_row("train", lambda o: o["log_probs"].__setitem__(0, False)),
                            ":2: log_probs must be finite and <= 0"),
    "no val rows": (lambda lines: [ln for ln in lines if '"split": "val"' not in ln], "split val has 0 rows"),
    "a row repeated": (lambda lines: [*lines, lines[1]], "train idx 0 view 0 repeats line 2"),
    "a split the header does not count": (_edit_row("val", lambda o: o.update(split="holdout")),
                                          "split 'holdout' is not one the header counts"),
    "a view the header does not count": (_edit_row("test", lambda o: o.update(view=1)), "view must be an integer"),
    "a string idx": (_edit_row("train", lambda o: o.update(idx="0")), "idx must be an integer"),
    "a row not an object": (lambda lines: [*lines[:2], "[1, 2]", *lines[3:]], ":3: a row must be a JSON object"),
    "a header without n": (_edit_header(lambda h: h.pop("n")), ":1: the header lacks n"),
    "a file cut after its first rows": (lambda lines: lines[:3], "cannot hold them"),
    "a header counting 10**12 rows": (_edit_header(lambda h: h["n"].update(test=10**12)),
                                      ":1: the header counts 1000000001"),  # refused before allocating them
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_a_bad_jsonl_import_is_refused_naming_its_line_and_nothing_is_written(made, tmp_path, case):
    from kdbench.stores import import_jsonl

    edit, fragment = JSONL_CASES[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(edit(_lines(made))) + "\n")
    with pytest.raises(ConfigError) as e:
        import_jsonl(bad, tmp_path / "imported")
    assert fragment in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "imported").exists()


def test_an_imported_row_out_of_order_is_stored_top_1_first(made, tmp_path):
    from kdbench.stores import import_jsonl, read_split, validate_store

    lines = _lines(made)
    n = _first(lines, "test")
    o = json.loads(lines[n])
    want_ids, want_lps = o["indices"], o["log_probs"]
    o["indices"], o["log_probs"] = want_ids[::-1], want_lps[::-1]  # another tool's order: smallest first
    bad = tmp_path / "rev.jsonl"
    bad.write_text("\n".join([*lines[:n], json.dumps(o), *lines[n + 1:]]) + "\n")
    out = import_jsonl(bad, tmp_path / "imported")
    validate_store(out)
    idx, logp = read_split(out, "test")
    assert idx[o["idx"], 0].tolist() == want_ids
    assert np.allclose(logp[o["idx"], 0].numpy(), want_lps, atol=1e-6)


# ---- what capture writes, and its arguments ------------------------------------------------------------


def test_the_writer_refuses_what_breaks_a_rule_and_writes_nothing(made, tmp_path):
    from kdbench.stores import read_header, read_split, write_store

    h = read_header(made / "cap")
    arrays = {s: tuple(t.numpy().copy() for t in read_split(made / "cap", s)) for s in h["n"]}
    arrays["val"][1][3, 0, 0] = np.nan  # a teacher whose log-probs are NaN (e.g. NaN weights)
    with pytest.raises(ConfigError) as e:
        write_store(tmp_path / "new", h, arrays)
    assert "split val, row 3, view 0: log-probs must be finite" in str(e.value)
    assert not (tmp_path / "new").exists()


@pytest.fixture
def capture_cli(made, teachers_dir, monkeypatch, capsys):
    """``kdbench capture ARGS`` -> (exit code, stderr), with the teacher forbidden to run."""
    import kdbench.teachers.train as teacher_training
    from kdbench.capture import main

    def no_teacher(*a, **k):
        raise AssertionError("the teacher ran before the arguments were checked")

    monkeypatch.setattr(teacher_training, "for_run", no_teacher)

    def call(*args):
        rc = main([*args, *ARGS, f"paths.results_dir={made / 'results'}", f"paths.teachers_dir={teachers_dir}",
                   f"paths.data_dir={made / 'data'}"])
        return rc, capsys.readouterr().err.strip()

    return call


@pytest.mark.parametrize("args, fragment", [
    (["--tau", "0"], "--tau: must be a finite number > 0"),
    (["--tau", "nan"], "--tau: must be a finite number > 0"),
    (["--tau", "-1"], "--tau: must be a finite number > 0"),
    (["--tau", "inf"], "--tau: must be a finite number > 0"),
    (["--k", "0"], "--k: must be an integer >= 1"),
    (["--k", "11"], "--k: must be in [1, 10]"),
])
def test_bad_capture_arguments_are_refused_before_the_teacher_runs(capture_cli, tmp_path, args, fragment):
    rc, err = capture_cli(*args, "--out", str(tmp_path / "out"))
    assert rc == 2 and fragment in err and err.count("\n") == 0, err
    assert not (tmp_path / "out").exists()


def test_capture_out_under_a_file_on_a_file_or_over_another_store_is_refused_before_the_teacher(
        capture_cli, made, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("mine")
    rc, err = capture_cli("--out", str(f / "cap"))
    assert rc == 2 and f"under {f}, a file" in err
    rc, err = capture_cli("--out", str(f))
    assert rc == 2 and "is a file" in err and f.read_text() == "mine"
    other = shutil.copytree(made / "cap", tmp_path / "other")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    rc, err = capture_cli("--k", "4", "--out", str(other))
    assert rc == 2 and "holds another capture (k 3 (asked 4))" in err and err.count("\n") == 0
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


@pytest.mark.parametrize("extra, key", [(["--tau", "4"], "--tau"), (["--k", "5"], "--k"), (["--views", "none"], "--views"),
                                        (["dataset.val_size=0"], "dataset.val_size=0")])
def test_an_import_refuses_capture_options_it_would_ignore(made, tmp_path, capsys, extra, key):
    from kdbench.capture import main

    rc = main(["--from-jsonl", str(made / "cap.jsonl"), "--out", str(tmp_path / "imp"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"kdbench: error: {key}: not used with --from-jsonl") and "\n" not in err
    assert not (tmp_path / "imp").exists()


def test_capture_never_overwrites_an_existing_jsonl_file(capture_cli, tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my notes\n")
    rc, err = capture_cli("--out", str(tmp_path / "out"), "--jsonl", str(mine))
    assert rc == 2 and "--jsonl" in err and mine.read_text() == "my notes\n"


# ---- teacher import (issue 23 #7) -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_teacher_import_refuses_non_finite_weights_even_without_evaluation(tmp_path, capsys, bad):
    import torch

    from kdbench.cli import main as cli
    from kdbench.models import build_model

    torch.manual_seed(0)
    state = build_model("resnet8", 10).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    state[name].view(-1)[3] = bad
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": state}, ckpt)
    rc = cli(["teacher", "import", str(ckpt), "--arch", "resnet8", "--dataset", "cifar10", "--no-eval",
              "--teachers-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and name in err and "non-finite" in err, err
    assert not (tmp_path / "t").exists()


# ---- more hostile stores ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, fragment", [
    ("[]", "the header must be a JSON object, got list"),
    ("", "no readable capture"),
    ("\udcff", "no readable capture"),
])
def test_a_header_that_is_not_a_json_object_is_one_line(store, text, fragment):
    (store / "header.json").write_bytes(b"\xff\xfe\x00" if text == "\udcff" else text.encode())
    _refused(store, fragment, values=False)


def test_teacher_metrics_that_are_not_numbers_never_reach_a_record(store):
    _header(store, lambda h: h["teacher"]["test"].update(acc="0.97"))
    _refused(store, "teacher.test.acc must be a number or null, got '0.97'", values=False)


def test_an_npy_whose_own_header_is_garbage_is_refused(store):
    f = store / "val.indices.npy"
    data = bytearray(f.read_bytes())
    data[10:40] = b"{'descr': garbage, 'shape': ("
    f.write_bytes(bytes(data))
    _refused(store, "val.indices.npy: not a readable .npy array", values=False)


def test_capture_into_a_broken_copy_of_the_same_capture_does_not_keep_it(capture_cli, made, tmp_path):
    copy = shutil.copytree(made / "cap", tmp_path / "copy")
    f = copy / "train.log_probs.npy"
    f.write_bytes(f.read_bytes()[:-40])
    rc, err = capture_cli("--k", "3", "--out", str(copy))
    assert rc == 2 and "holds this capture, broken" in err and "train.log_probs.npy" in err and "truncated" in err
    assert err.count("\n") == 0


def test_two_writers_of_one_folder_never_mix_their_arrays(made, tmp_path, monkeypatch):
    """The second writer, started while the first writes, finds the first's store and is refused."""
    import threading

    import kdbench.stores as stores

    h = stores.read_header(made / "cap")
    arrays = {s: tuple(t.numpy().copy() for t in stores.read_split(made / "cap", s)) for s in h["n"]}
    other = {s: (i[..., ::-1].copy(), np.full(lp.shape, math.log(0.2), np.float32)) for s, (i, lp) in arrays.items()}
    first_writing, second_writing = threading.Event(), threading.Event()
    real = stores.atomic_write

    def write(path, fn, **kw):
        if threading.current_thread().name == "first" and not first_writing.is_set():
            first_writing.set()
            second_writing.wait(timeout=1.0)  # without a lock the second writer gets here meanwhile
        else:
            second_writing.set()
        return real(path, fn, **kw)

    monkeypatch.setattr(stores, "atomic_write", write)
    out = tmp_path / "cap"
    t = threading.Thread(target=stores.write_store, args=(out, h, arrays), name="first")
    t.start()
    first_writing.wait(timeout=10)
    with pytest.raises(ConfigError) as e:
        stores.write_store(out, h, other)
    t.join()
    assert "already holds a capture" in str(e.value)
    stores.validate_store(out)  # the first writer's store, whole and consistent with its checksums
    assert np.array_equal(np.load(out / "test.indices.npy"), arrays["test"][0])


# ---- token captures ---------------------------------------------------------------------------------------

TOKENS = ["dataset=markov", "dataset.n_train=40", "dataset.n_test=20", "dataset.val_size=10", "teacher=oracle",
          "logger=none"]


@pytest.fixture(scope="module")
def token_made(tmp_path_factory):
    """A real top-4 capture of the Markov data's oracle: ``[N, 1, T, 4]`` arrays and ``[N, T]`` token ids."""
    from kdbench.capture import main

    tmp = tmp_path_factory.mktemp("token_store")
    assert main(["--k", "4", "--out", str(tmp / "cap"), *TOKENS, f"paths.results_dir={tmp / 'results'}",
                 f"paths.data_dir={tmp / 'data'}"]) == 0
    return tmp / "cap"


@pytest.fixture
def token_store(token_made, tmp_path):
    return shutil.copytree(token_made, tmp_path / "tcap")


def test_a_real_token_capture_passes(token_made):
    from kdbench.stores import validate_store

    h = validate_store(token_made)
    assert h["positions"] >= 2 and np.load(token_made / "train.indices.npy").ndim == 4


@pytest.mark.parametrize("name, edit, fragments", [
    ("train.indices.npy", lambda a: np.ascontiguousarray(a[:, :, 0]), ["[N, V, T, k]", "shape"]),  # 3-D, not 4-D
    ("train.log_probs.npy", lambda a: np.ascontiguousarray(a.reshape(a.shape[0], 1, -1)[..., :4]), ["shape"]),
    ("test.tokens.npy", lambda a: a[:, None], ["test.tokens.npy", "[N, T]"]),
    ("val.tokens.npy", _set((1, 2), 10**6), ["val.tokens.npy", "split val, row 1", "token ids must be in [0, "]),
    ("test.indices.npy", _set((2, 0, 3, 1), -5), ["split test, row 2, view 0, position 3", "class ids"]),
    ("train.log_probs.npy", _set((0, 0, 1), np.log(0.6)), ["split train, row 0, view 0, position 1"]),
])
def test_a_tampered_token_capture_is_refused_naming_the_position(token_store, name, edit, fragments):
    _array(token_store, name, edit)
    _refused(token_store, *fragments)


def test_a_token_capture_without_its_token_ids_is_refused(token_store):
    (token_store / "train.tokens.npy").unlink()
    _refused(token_store, "train.tokens.npy: missing", values=False)


def test_a_token_header_without_positions_over_token_arrays_is_refused(token_store):
    _header(token_store, lambda h: (h.pop("positions"), h.pop("alignment")))
    _refused(token_store, "train.indices.npy", "[N, V, k]", values=False)
