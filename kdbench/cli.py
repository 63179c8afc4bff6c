"""The ``kdbench`` command: models, teacher import/list, and shortcuts to train/sweep/report.

    kdbench models [--num-classes 100] [--family cifar]
    kdbench teacher import PATH --arch resnet32x4 --dataset cifar100 [--root DIR] [--no-eval]
    kdbench teacher list
    kdbench doctor FILE.py:FUNCTION [--json] [--classes C] [--device cpu|cuda] [--signature ...]
    kdbench train  [hydra overrides]      (= python -m kdbench.train)
    kdbench sweep  [hydra overrides]      (= make sweep)
    kdbench report --experiment NAME      (= make table)
    kdbench runs [--experiment X] [--status S] | kdbench runs show RUN_ID   (the results browser)
    kdbench compare A B                   (two experiments side by side, with intervals)
    kdbench openai import FILE --out STORE [overrides] | openai export STORE --out FILE [overrides]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdbench.errors import KDBenchError, exit_codes


def _models(args) -> int:
    from kdbench.models import get_spec, model_names
    from kdbench.models.profile import format_table, model_table

    def keep(n: str) -> bool:
        spec = get_spec(n)
        if args.family == "cifar":
            return spec.input_shape == (3, 32, 32)
        return args.family is None or spec.family == args.family

    names = [n for n in model_names() if keep(n)]
    if not names:
        raise KDBenchError("--family", f"no model in family {args.family!r}")
    table = model_table(num_classes=args.num_classes, names=names)
    print(format_table(table))
    print(f"\n{len(table)} models, {args.num_classes} classes (the vocabulary, for language models); MACs per input "
          "of the size shown\n(an image; 64 token ids for a language model), torch.utils.flop_counter, MACs = FLOPs / 2")
    for name in table.attrs.get("skipped", []):
        print(f"not listed: {name} (its size comes from its own kwargs.path or kwargs.config)")
    return 0


DEFAULT_TEACHERS_DIR = "results/teachers"


def _teacher_import(args) -> int:
    from kdbench.config import DATASET_CLASSES
    from kdbench.data import dataset_names
    from kdbench.teachers import import_published, read_meta

    if args.dataset not in dataset_names():
        raise KDBenchError("--dataset", f"unknown dataset {args.dataset!r}; valid: {', '.join(dataset_names())}")
    if not Path(args.path).is_file():
        raise KDBenchError("PATH", f"no such file: {args.path}")
    ds = {"name": args.dataset, "root": args.root, "download": False, "test_subset": args.test_subset}
    if args.dataset in DATASET_CLASSES and args.root is None:
        ds["root"] = "data"
    entry = import_published(args.path, args.arch, ds, args.teachers_dir, evaluate=not args.no_eval,
                             submodule=args.submodule)
    meta = read_meta(entry)
    acc = (meta.get("test") or {}).get("acc")
    print(f"imported {args.path} as {entry}")
    print(f"  arch {meta['arch']}, {meta['num_classes']} classes, test acc "
          + (f"{100 * acc:.2f}%" if acc is not None else str(meta.get("note") or "not measured")))
    where = "" if Path(args.teachers_dir) == Path(DEFAULT_TEACHERS_DIR) else f" paths.teachers_dir={args.teachers_dir}"
    print(f"  use it with: teacher.arch={args.arch} teacher.checkpoint={entry.name}{where}")
    return 0


def _teacher_list(args) -> int:
    from kdbench.teachers import entry_complete, read_meta

    root = Path(args.teachers_dir)
    entries = sorted(p for p in root.glob("*") if p.is_dir() and entry_complete(p)) if root.exists() else []
    if not entries:
        print(f"no teachers under {root}")
        return 0
    for e in entries:
        m = read_meta(e)
        acc = (m.get("test") or {}).get("acc")
        print(f"{e.name:<55} {m.get('arch'):<16} classes {m.get('num_classes'):<4} "
              f"test acc {'%.2f%%' % (100 * acc) if acc is not None else 'n/a'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdbench", description="knowledge-distillation benchmark harness")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="every model's parameters and MACs")
    m.add_argument("--num-classes", type=int, default=100)
    m.add_argument("--family", default=None, help="only this family: cifar (the whole CIFAR zoo), resnet, wrn, vgg, mobilenet, shufflenet, mlp, cnn")
    t = sub.add_parser("teacher", help="the teacher registry")
    tsub = t.add_subparsers(dest="tcmd", required=True)
    ti = tsub.add_parser("import", help="register a RepDistiller/mdistiller .pth teacher")
    ti.add_argument("path")
    ti.add_argument("--arch", required=True)
    ti.add_argument("--dataset", required=True)
    ti.add_argument("--root", default=None, help="dataset root for measuring test accuracy")
    ti.add_argument("--teachers-dir", default=DEFAULT_TEACHERS_DIR)
    ti.add_argument("--submodule", choices=("student", "teacher"), default=None,
                    help="from a distillation run's checkpoint (mdistiller: module.student.*), take this model")
    ti.add_argument("--no-eval", action="store_true", help="skip measuring test accuracy")
    ti.add_argument("--test-subset", type=int, default=None, help="measure on the first N test images only")
    tl = tsub.add_parser("list", help="registered teachers")
    tl.add_argument("--teachers-dir", default="results/teachers")
    r = sub.add_parser("records", help="run records")
    rsub = r.add_subparsers(dest="rcmd", required=True)
    rsub.add_parser("migrate", help="re-key records written before run ids hashed resolved configs",
                    add_help=False)
    sub.add_parser("capture", help="write a teacher's top-k log-probs for teacher_signal=captured", add_help=False)
    sub.add_parser("eval", help="test a student checkpoint: kdbench eval ckpt=PATH [overrides]", add_help=False)
    sub.add_parser("runs", help="the run records: kdbench runs [--experiment X] [--status S] | runs show RUN_ID",
                   add_help=False)
    sub.add_parser("compare", help="two experiments side by side: kdbench compare A B", add_help=False)
    sub.add_parser("openai", help="OpenAI/vLLM top_logprobs JSONL into or out of a capture store: kdbench openai "
                                  "import|export ...", add_help=False)
    d = sub.add_parser("doctor", help="check your own KD loss for the common mistakes: kdbench doctor FILE.py:FUNCTION")
    d.add_argument("function", help="FILE.py:FUNCTION or package.module:FUNCTION")
    d.add_argument("--json", action="store_true", help="print only the JSON diagnosis")
    d.add_argument("--classes", type=int, default=None, help="probe with this many classes")
    d.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    d.add_argument("--signature", default=None, help="parameter names, e.g. s=logits_s,t=logits_t,y=target,alpha=alpha,T=temperature")
    for name in ("train", "sweep", "report"):
        sub.add_parser(name, help=f"= python -m kdbench.{name}", add_help=False)
    return p


@exit_codes()
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["capture"]:
        from kdbench.capture import main as capture_main

        return capture_main(argv[1:])
    if argv[:1] == ["eval"]:
        from kdbench.evaluate import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] in (["runs"], ["compare"]):
        from kdbench.browse import main as browse_main

        return browse_main(argv)
    if argv[:1] == ["openai"]:
        from kdbench.openai_logprobs import main as openai_main

        return openai_main(argv[1:])
    if argv[:2] == ["records", "migrate"]:
        from kdbench.migrate import main as migrate_main

        return migrate_main(argv[2:])
    if argv and argv[0] in ("train", "sweep", "report"):
        cmd, rest = argv[0], argv[1:]
        if cmd == "train":
            from kdbench import train

            sys.argv = ["kdbench.train", *rest]
            train.main()
            return 0
        if cmd == "sweep":
            from kdbench.sweep import main as sweep_main

            return sweep_main(rest)
        from kdbench.report import main as report_main

        return report_main(rest)
    args = build_parser().parse_args(argv)
    if args.cmd == "models":
        return _models(args)
    if args.cmd == "teacher" and args.tcmd == "import":
        return _teacher_import(args)
    if args.cmd == "teacher" and args.tcmd == "list":
        return _teacher_list(args)
    if args.cmd == "doctor":
        from kdbench.doctor import main_args as doctor_main

        return doctor_main(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
