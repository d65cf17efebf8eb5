"""Command line: ``python -m benchmarks`` / ``condbench``.

Subcommands: ``condense`` (one method, dataset, IPC, seed -> a synthetic-set ``.pt``),
``evaluate`` (a synthetic set x architectures -> mean ± std table + JSON record), ``whole``
(whole-dataset baseline) and ``list`` (methods, datasets, architectures). The sweep commands
(``run``/``status``/``cancel``) come from :mod:`benchmarks.sweep_cli` when it is installed.

Errors the user can fix (unknown names, impossible IPC, missing data, unreadable files, bad
``--set`` / ``--eval-set``) print one line to stderr and exit with status 2, without a traceback.

Why ~560 lines: one parser and one small handler per subcommand, with their help texts and the
output-path checks every handler runs before any compute; the stage and import commands keep
their own parsers in :mod:`benchmarks.experts` and :mod:`benchmarks.importers`.

``evaluate`` and ``whole`` run the set's evaluation plan (:mod:`methods.protocol`);
``--eval-set KEY=VALUE`` overrides one field of it (validated before anything runs) and
``--explain`` prints the effective plan per architecture and exits without training.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from benchmarks import UserError
from methods.errors import MethodError, SyntheticSetFormatError

log = logging.getLogger("condbench")

EXIT_USER_ERROR = 2

_EPILOG_MAIN = """\
examples:
  condbench list
  condbench condense --method random --dataset digits --ipc 10 --out synsets/random_digits_10.pt
  condbench evaluate synsets/random_digits_10.pt --arch ConvNet --num-eval 5
  condbench whole --dataset digits --arch ConvNet --num-eval 3

data: --data-root (default ./data, or $CONDBENCH_DATA) holds torchvision's folders; add --download
to fetch MNIST/FashionMNIST/SVHN/CIFAR. 'digits' ships with scikit-learn and needs nothing.
"""

_EPILOG_CONDENSE = """\
examples:
  condbench condense --method random --dataset digits --ipc 10
  condbench condense --method dc --dataset fashionmnist --ipc 1 --iterations 200 \\
      --set outer_loop=1 --checkpoint runs/dc.ckpt --out synsets/dc_fmnist_1.pt
  condbench condense --method herding --dataset cifar10 --ipc 10 --download --cache-dir cache/

--set KEY=VALUE overrides one field of the method's config; VALUE is parsed as YAML
(--set dsa=true, --set lr_img=0.01, --set layers=[1,2]). See `condbench list` for methods.
"""

_EPILOG_EVALUATE = """\
examples:
  condbench evaluate synsets/random_digits_ipc10_seed0.pt
  condbench evaluate syn.pt --arch ConvNet,ResNet18 --arch LeNet --num-eval 20 --json res.json
  condbench evaluate syn.pt --epochs 50 --num-eval 2      # quick check, not the protocol
  condbench evaluate syn.pt --eval-set optimizer=adam --eval-set lr=0.001 --explain
  condbench evaluate syn.pt --eval-set selection=best_val --eval-set val_fraction=0.1

The protocol is the set's evaluation plan; by default the reference evaluate_synset: fresh
networks, SGD lr 0.01 (x0.1 after epoch E//2+1, optimiser re-created), final-epoch test
accuracy. Epochs default to the method's rule (1000 with DSA/DC augmentation, else 300; 600 for
CAFE, 1000 for DM). --eval-set KEY=VALUE changes one field of the plan (YAML value; keys:
labels, loss, temperature, lr, lr_source, optimizer, momentum, weight_decay, batch_size,
schedule, epochs, epochs_no_aug, epochs_with_aug, augmentation, dsa, dsa_strategy, zca,
selection, val_fraction); --explain prints the effective plan and exits without training.
"""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def parse_overrides(items: Optional[Sequence[str]], flag: str = "--set") -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: yaml(v)}``; raises :class:`UserError` on bad syntax."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{flag} expects KEY=VALUE, got '{item}'")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(f"{flag} {key}: value '{raw}' is not valid YAML ({str(exc).splitlines()[0]})") from exc
    return out


def parse_plan_overrides(items: Optional[Sequence[str]], base: Optional[Any] = None) -> dict[str, Any]:
    """``--eval-set`` items -> validated evaluation-plan overrides (every problem in one line)."""
    from benchmarks.teacher import split_overrides
    from methods.protocol import plan_problems

    overrides = parse_overrides(items, "--eval-set")
    plan_keys, _teacher, problems = split_overrides(overrides)  # labels=teacher and its teacher_* keys
    problems = list(problems) + plan_problems(plan_keys, base)
    if problems:
        raise UserError("--eval-set: " + "; ".join(problems))
    return overrides


def format_plan_table(plans: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The effective plans ``[(arch, plan dict), ...]`` as one table: a row per field, a column
    per architecture."""
    header = ["field", *(arch for arch, _ in plans)]
    keys = list(plans[0][1]) if plans else []
    rows = [[key, *("-" if d.get(key) is None else str(d.get(key)) for _, d in plans)] for key in keys]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def parse_archs(items: Optional[Sequence[str]]) -> list[str]:
    """Repeatable / comma-separated ``--arch`` -> canonical names (unknown -> MethodError)."""
    from methods.networks import canonical_network_name

    names: list[str] = []
    for item in items or ["ConvNet"]:
        for part in item.split(","):
            if part.strip():
                name = canonical_network_name(part.strip())
                if name not in names:
                    names.append(name)
    if not names:
        raise UserError("--arch needs at least one architecture name")
    return names


def check_output(path: str | os.PathLike, flag: str, *, inputs: Sequence[str | os.PathLike] = (),
                 overwrite: bool = True) -> Path:
    """Check an output path before any compute (:class:`UserError`, one line): not one of the
    command's ``inputs`` (a dataset or synthetic-set file), not an existing file unless
    ``overwrite``, and writable (:func:`benchmarks.storage.check_writable`)."""
    from benchmarks.storage import check_writable

    path = Path(path).expanduser()
    for source in inputs:
        if Path(source).exists() and path.exists() and path.resolve() == Path(source).resolve():
            raise UserError(f"{flag} {path} is an input of this command; write the result to another file")
    if path.is_file() and not overwrite:
        raise UserError(f"{flag} {path} exists; pass --overwrite to replace it, or choose another path")
    return check_writable(path, flag=flag)


def write_output(data: bytes, path: str | os.PathLike, what: str) -> Path:
    """Write ``data`` to ``path`` atomically; when that fails (after the up-front check: disk
    full, made read-only) save it to a fallback file in the temp folder and raise a
    :class:`UserError` naming both."""
    from benchmarks.storage import atomic_write_bytes, write_problem

    path = Path(path)
    try:
        return atomic_write_bytes(path, data)
    except OSError as exc:
        problem = write_problem(exc, path.parent)
        fd, fallback = tempfile.mkstemp(prefix=f"condbench-{path.stem}-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except OSError as exc2:
            raise UserError(f"{problem}; the {what} could not be saved elsewhere either ({exc2.strerror})") from None
        raise UserError(f"{problem}; the {what} was saved to {fallback} instead") from None


def write_json(record: Any, path: str | os.PathLike) -> Path:
    """Write ``record`` as indented JSON atomically (:func:`write_output`)."""
    return write_output((json.dumps(record, indent=2, sort_keys=False) + "\n").encode(), path, "JSON record")


def format_table(results: Sequence[Any]) -> str:
    """A small fixed-width table of :class:`~benchmarks.evaluate.EvalResult` rows."""
    header = ("architecture", "nets", "epochs", "augmentation", "accuracy (%)", "time (s)")
    rows = [
        (r.arch, str(r.num_eval), str(r.epochs), r.augmentation, f"{100 * r.mean:.2f} ± {100 * r.std:.2f}",
         f"{r.wall_time_s:.1f}")
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _code_version() -> str:
    try:
        from importlib.metadata import version

        return version("condensation-bench")
    except Exception:
        return "unknown"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_condense(args: argparse.Namespace) -> int:
    from benchmarks.pipeline import default_synset_path, run_condense

    overrides = parse_overrides(args.set)
    out = Path(args.out) if args.out else default_synset_path(args.method, args.dataset, args.ipc, args.seed)
    inputs = [args.dataset.split(":", 1)[1]] if args.dataset.lower().startswith("tensor:") else []
    if args.checkpoint:
        inputs.append(args.checkpoint)
    check_output(out, "--out", inputs=inputs, overwrite=args.overwrite)
    if args.checkpoint:
        check_output(args.checkpoint, "--checkpoint", inputs=inputs[:1])
    if args.cache_dir:
        from benchmarks.storage import check_writable

        check_writable(args.cache_dir, flag="--cache-dir", folder=True)
    synset = run_condense(
        args.method, overrides, args.dataset, args.ipc, args.seed,
        data_root=args.data_root, device=args.device, download=args.download,
        iterations=args.iterations, checkpoint_path=args.checkpoint,
        checkpoint_every=args.checkpoint_every, cache_dir=args.cache_dir,
        progress=args.progress, log=log.info, experts_root=args.experts_root, compile=args.compile,
    )
    write_output(synset.to_bytes(), out, "synthetic set")
    print(f"wrote {out}  ({synset.method}, {synset.dataset}, IPC {synset.ipc}, {len(synset)} images, "
          f"{synset.cost.get('wall_time_s', 0.0):.1f} s)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from benchmarks.data import DataError, canonical_dataset_name, load_dataset
    from benchmarks.evaluate import evaluate_synset
    from benchmarks.pipeline import resolve_device
    from methods.synset import SyntheticSet

    from benchmarks.evaluate import explained_plan

    archs = parse_archs(args.arch)
    synset = SyntheticSet.load(args.synset)
    problem = synset.evaluation_problem()
    if problem is not None:
        raise UserError(f"{args.synset} cannot be evaluated: {problem}")
    json_path = Path(args.json) if args.json else Path(args.synset).with_suffix(".eval.json")
    if not args.explain:
        inputs = [args.synset] + ([args.dataset.split(":", 1)[1]] if (args.dataset or "").lower().startswith("tensor:") else [])
        check_output(json_path, "--json", inputs=inputs)
    plan_overrides = parse_plan_overrides(args.eval_set, synset.eval_plan)
    name = _dataset_name(args.dataset or synset.dataset)
    # resolved before any data is loaded: what the plan needs that the set lacks fails here
    plans = [(arch, explained_plan(synset, arch, name, epochs=args.epochs, plan_overrides=plan_overrides))
             for arch in archs]
    if args.explain:
        print(f"evaluation plan of {args.synset} ({synset.method}, IPC {synset.ipc}) on {name}"
              + (f", overrides: {_overrides_text(plan_overrides)}" if plan_overrides else ""))
        print(format_plan_table(plans))
        return 0
    device = resolve_device(args.device)
    if not args.dataset:
        try:
            canonical_dataset_name(synset.dataset)
        except DataError:
            raise UserError(
                f"{args.synset} records dataset '{synset.dataset}', which is not a dataset name this "
                "suite can load; pass --dataset NAME (or tensor:<file.pt>)"
            ) from None
    other = other_dataset_problem(synset, args.dataset)
    if other is not None and not args.allow_other_dataset:
        raise UserError(f"{args.synset} {other}; pass --allow-other-dataset to evaluate it there anyway")
    dataset = load_dataset(args.dataset or synset.dataset, data_root=args.data_root, device=device,
                           download=args.download)
    results = [
        evaluate_synset(synset, dataset, arch, num_eval=args.num_eval, epochs=args.epochs,
                        plan_overrides=plan_overrides, seed=args.seed, device=device, progress=args.progress,
                        compile=args.compile, workers=_workers(args.workers, device))
        for arch in archs
    ]
    print(f"{synset.method} on {dataset.name}, IPC {synset.ipc} (synthetic-set seed {synset.seed})")
    print(format_table(results))
    record = {
        "kind": "evaluation",
        "synset": str(args.synset),
        "method": synset.method,
        "dataset": dataset.name,
        "ipc": synset.ipc,
        "synset_seed": synset.seed,
        "config": synset.config,
        "eval_plan": synset.eval_plan.to_dict(),
        "plan_overrides": plan_overrides,
        "condense_cost": synset.cost,
        "eval_seed": args.seed,
        "code_version": _code_version(),
        "results": [r.to_dict() for r in results],
    }
    write_json(record, json_path)
    print(f"wrote {json_path}")
    return 0


def other_dataset_problem(synset: Any, dataset: Optional[str]) -> Optional[str]:
    """Why evaluating ``synset`` on ``dataset`` (None: its own) is evaluating it on other data
    than it was condensed from (None: it is not): another dataset name, or a tensor file whose
    bytes differ from the recorded fingerprint (:func:`benchmarks.data.dataset_fingerprint`)."""
    from benchmarks.data import DataError, dataset_fingerprint

    target = dataset or synset.dataset
    recorded = synset.extra.get("dataset_fingerprint")
    try:
        actual = dataset_fingerprint(target)
    except DataError:
        return None  # load_dataset names the problem
    if recorded is not None and recorded != actual:
        if target == synset.dataset or _dataset_name(target) == _dataset_name(synset.dataset):
            return f"was condensed from another version of {target} (its contents changed since)"
        return f"was condensed from {synset.dataset}, not {target}"
    if recorded is None and dataset and _dataset_name(dataset) != _dataset_name(synset.dataset):
        return f"was condensed from {synset.dataset}, not {dataset}"
    return None


def cmd_whole(args: argparse.Namespace) -> int:
    from benchmarks.data import load_dataset
    from benchmarks.evaluate import effective_plan, evaluate_whole_dataset
    from benchmarks.pipeline import resolve_device
    from methods.protocol import EvalPlan

    archs = parse_archs(args.arch)
    if args.json and not args.explain:
        check_output(args.json, "--json",
                     inputs=[args.dataset.split(":", 1)[1]] if args.dataset.lower().startswith("tensor:") else [])
    plan_overrides = parse_plan_overrides(args.eval_set, EvalPlan(epochs=args.epochs))
    if args.explain:
        name = _dataset_name(args.dataset)
        plans = [(arch, effective_plan(EvalPlan(epochs=args.epochs), arch, name,
                                       plan_overrides=plan_overrides).to_dict()) for arch in archs]
        print(f"evaluation plan of the whole training set of {name}"
              + (f", overrides: {_overrides_text(plan_overrides)}" if plan_overrides else ""))
        print(format_plan_table(plans))
        return 0
    device = resolve_device(args.device)
    dataset = load_dataset(args.dataset, data_root=args.data_root, device=device, download=args.download)
    results = [
        evaluate_whole_dataset(dataset, arch, num_eval=args.num_eval, epochs=args.epochs,
                               plan_overrides=plan_overrides, seed=args.seed, device=device,
                               progress=args.progress, compile=args.compile,
                               workers=_workers(args.workers, device))
        for arch in archs
    ]
    print(f"whole training set of {dataset.name} ({len(dataset.train)} images)")
    print(format_table(results))
    if args.json:
        record = {
            "kind": "whole_dataset",
            "dataset": dataset.name,
            "train_size": len(dataset.train),
            "eval_seed": args.seed,
            "code_version": _code_version(),
            "results": [r.to_dict() for r in results],
        }
        print(f"wrote {write_json(record, args.json)}")
    return 0


def _dataset_name(name: str) -> str:
    """The canonical dataset name where the suite knows it (the plan's rules read it)."""
    from benchmarks.data import DataError, canonical_dataset_name

    try:
        return canonical_dataset_name(name)
    except DataError:
        return name


def _overrides_text(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def cmd_list(args: argparse.Namespace) -> int:
    from benchmarks.data import builtin_dataset_names, dataset_info, dataset_names
    from methods.registry import available_methods
    from methods.networks import network_names

    what = args.what
    if what in ("all", "methods"):
        print("methods:")
        for name, desc in available_methods().items():
            print(f"  {name:<14} {desc}")
    if what in ("all", "datasets"):
        print("datasets:")
        for name in dataset_names():
            if name not in builtin_dataset_names():
                print(f"  {name:<14} your own data in one .pt file (see benchmarks.data.save_tensor_dataset)")
            else:
                i = dataset_info(name)
                print(f"  {name:<14} {i.channel}x{i.im_size[0]}x{i.im_size[1]}, {i.num_classes} classes, "
                      f"max IPC {i.min_train_per_class}")
    if what in ("all", "architectures"):
        print("architectures:")
        names = network_names()
        for start in range(0, len(names), 6):
            print("  " + ", ".join(names[start:start + 6]))
    return 0


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--data-root", default=os.environ.get("CONDBENCH_DATA", "data"),
                   help="folder holding the datasets (default: $CONDBENCH_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="download torchvision datasets that are missing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="show tqdm progress bars (default: when stderr is a terminal)")


def _add_speed_options(p: argparse.ArgumentParser, *, workers: bool) -> None:
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the single-backward hot paths: auto (when the expected work pays for "
                        "the compile, README Performance), on, off (plain eager code)")
    if workers:
        p.add_argument("--workers", type=_positive, default=None,
                       help="train the evaluation networks in N processes, threads split between them "
                            "(default: the usable cores on CPU, 1 on CUDA)")


def _workers(requested: Optional[int], device: Any) -> int:
    from benchmarks.workers import default_workers

    return int(requested) if requested is not None else default_workers(device)


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-set", action="append", metavar="KEY=VALUE",
                   help="override one field of the evaluation plan (repeatable, YAML value), "
                        "e.g. optimizer=adam, selection=best_val, augmentation=dsa:color_crop")
    p.add_argument("--explain", action="store_true",
                   help="print the effective evaluation plan per architecture and exit without training")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="condbench",
        description="Dataset-condensation benchmark suite: condense datasets with CAFE/DC/DSA/DM or "
                    "coreset baselines and evaluate them with the reference protocol.",
        epilog=_EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("condense", help="condense one dataset with one method into a .pt synthetic set",
                       description="Run one condensation method on one dataset at one IPC and seed.",
                       epilog=_EPILOG_CONDENSE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, help="method name (see `condbench list methods`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable, YAML value)")
    p.add_argument("--dataset", required=True, help="dataset name or tensor:<file.pt>")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--iterations", type=int, help="override the method's iteration budget")
    p.add_argument("--out", help="output file (default synsets/<method>_<dataset>_ipc<N>_seed<S>.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--checkpoint", help="checkpoint file: saved periodically, resumed from if present")
    p.add_argument("--checkpoint-every", type=_positive, default=10, help="iterations between checkpoints (10)")
    p.add_argument("--cache-dir", help="folder for reusable tensors (e.g. herding's feature network)")
    p.add_argument("--experts-root", default=os.environ.get("CONDBENCH_EXPERTS", "."),
                   help="folder holding experts/ (expert trajectories of MTT/DATM, written by `condbench "
                        "experts`; default: $CONDBENCH_EXPERTS or .)")
    _add_speed_options(p, workers=False)
    _add_common(p)
    p.set_defaults(func=cmd_condense)

    p = sub.add_parser("evaluate", help="evaluate a synthetic set with the reference protocol",
                       description="Train fresh networks on a synthetic set and report test accuracy "
                                   "(mean ± std); writes a JSON record.",
                       epilog=_EPILOG_EVALUATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synset", help="synthetic set .pt written by `condbench condense`")
    p.add_argument("--arch", action="append", help="evaluation architecture(s), repeatable or comma list (ConvNet)")
    p.add_argument("--num-eval", type=_positive, default=20, help="networks per architecture (20)")
    p.add_argument("--epochs", type=_positive, help="override the protocol's epoch count")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation networks (0)")
    p.add_argument("--dataset", help="the dataset the set was condensed from (default: the one recorded in the set)")
    p.add_argument("--allow-other-dataset", action="store_true",
                   help="evaluate on a --dataset other than the one the set was condensed from")
    p.add_argument("--json", help="JSON record path (default: next to SYNSET, *.eval.json)")
    _add_plan_options(p)
    _add_speed_options(p, workers=True)
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("whole", help="whole-dataset baseline: train on the full training set",
                       description="Train networks on the whole training set with the evaluation "
                                   "protocol (the upper bound condensation is compared with).",
                       epilog="example:\n  condbench whole --dataset digits --arch ConvNet --num-eval 3 --epochs 20",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name or tensor:<file.pt>")
    p.add_argument("--arch", action="append", help="architecture(s), repeatable or comma list (ConvNet)")
    p.add_argument("--num-eval", type=_positive, default=5, help="networks per architecture (5)")
    p.add_argument("--epochs", type=_positive, default=20, help="training epochs (20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the networks (0)")
    p.add_argument("--json", help="write a JSON record here")
    _add_plan_options(p)
    _add_speed_options(p, workers=True)
    _add_common(p)
    p.set_defaults(func=cmd_whole)

    from benchmarks.experts import add_experts_parser
    from benchmarks.importers import add_import_parser

    add_experts_parser(sub)
    add_import_parser(sub)

    p = sub.add_parser("list", help="list methods, datasets and architectures")
    p.add_argument("what", nargs="?", default="all", choices=["all", "methods", "datasets", "architectures"])
    p.set_defaults(func=cmd_list)

    try:
        sweep_cli = importlib.import_module("benchmarks.sweep_cli")
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.sweep_cli":  # a missing dependency *inside* sweep_cli
            raise
    else:
        sweep_cli.register(sub)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except (UserError, MethodError, SyntheticSetFormatError) as exc:
        print(f"condbench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("condbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
