"""The ``sthfast`` command line: ``train``, ``evaluate``, ``predict``, ``profile``, ``info``.

The flags of ``train`` are generated from the fields of :class:`TrainConfig` and
:class:`STHSepNetConfig` (names, types, defaults, choices and help), so flags and config fields are
one set. Model flags override only when given; ``num_nodes`` and ``in_features`` come from the data.
Building the parser imports no torch (``sthfast --help`` is quick); each command imports what it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any

from .backends import BACKENDS
from .config import STHSepNetConfig
from .train_config import DATA_FIELDS, TRAIN_MODEL_DEFAULTS, TrainConfig


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation) -> tuple[type, bool]:
    """``int | None`` -> ``(int, True)``; ``list[str] | None`` -> ``(list, True)``."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    return (origin or annotation), optional


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                        suppress_defaults: bool = False, defaults: dict[str, Any] | None = None) -> None:
    """One flag per field of ``cls`` with the field's help, type, choices and default (``defaults``:
    the defaults to print where the command's differ from the field's)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, optional = _base_type(hints[f.name])
        # the formatter prints defaults of ordinary flags; model flags are suppressed, so say it here
        default_text = f" (default: {(defaults or {}).get(f.name, f.default)})" if suppress_defaults else ""
        kwargs: dict[str, Any] = {"help": f.metadata["help"] + default_text,
                                  "default": argparse.SUPPRESS if suppress_defaults else f.default}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs.update(nargs="+", type=str)
        else:
            kwargs["type"] = _optional(kind) if optional else kind
        group.add_argument(_flag(f.name), dest=f.name, **kwargs)


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_profile_flags(parser: argparse.ArgumentParser) -> None:
    """The profiler's flags (``sthfast profile`` and ``python/profile_hypergraph.py``)."""
    parser.add_argument("--nodes", type=int, default=None,
                        help="synthetic inputs at N nodes (by default LOS-LOOP windows, N = 207)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--seq-len", type=int, default=12, help="input and forecast steps")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="op backend of the model")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per scenario, after a warm-up")
    parser.add_argument("--chart", default="hypergraph_profile.png", help="PNG chart of the stages")
    parser.add_argument("--trace", default=None, help="write a Chrome trace of one training batch")
    parser.add_argument("--json", default=None, help="also write the table as JSON (for RESULTS.md)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (for tests)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sthfast", description="STH-SepNet, fast: train, evaluate and "
                                     "forecast on sensor networks.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train on a dataset and evaluate on its test split",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_flags(train, TrainConfig)
    add_dataclass_flags(train, STHSepNetConfig, skip=DATA_FIELDS, suppress_defaults=True,
                        defaults=TRAIN_MODEL_DEFAULTS)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint beside the naive baselines")
    evaluate.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint folder")
    evaluate.add_argument("--data", default=None, help="series file (default: the data it was trained on)")
    evaluate.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")

    predict = commands.add_parser("predict", help="forecast the steps after the end of a series")
    predict.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint folder")
    predict.add_argument("--data", required=True, help="series file ('embedded' for LOS-LOOP)")
    predict.add_argument("--out", required=True, help="output .npz (forecast [H, N], timestamps; nodes: the data's "
                                                      "node of each column after --drop-dead-nodes)")
    predict.add_argument("--all-windows", action="store_true",
                         help="also forecast from every window of the series (window_forecasts [W, H, N])")
    predict.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")

    profile_help = ("per-stage latency of the forward pass (streaming, training batch, static graph): "
                    "table and PNG chart")
    profile = commands.add_parser("profile", help=profile_help, description=profile_help[0].upper() + profile_help[1:]
                                  + " (sthfast.profiler).", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_profile_flags(profile)

    info = commands.add_parser("info", help="versions, usable backends, default backbone, model size")
    info.add_argument("--model", action="store_true",
                      help="also build a default model and print its parameter counts")
    info.add_argument("--num-nodes", type=int, default=207, help="N for --model (default 207)")
    return parser


def _show_data_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Data warnings as one line naming the problem, other warnings as Python shows them."""
    from .data import DataWarning  # noqa: PLC0415

    if issubclass(category, DataWarning):
        from tqdm import tqdm  # noqa: PLC0415

        tqdm.write(f"warning: {message}", file=sys.stderr)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOWWARNING = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.invocation = shlex.join(["sthfast", *args.argv])
    warnings.showwarning = _show_data_warning
    try:
        return _run(parser, args)
    except ValueError as err:  # bad data, config or checkpoint: one clear line, no traceback
        print(f"sthfast {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = _PYTHON_SHOWWARNING


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "info":
        from .info import report  # noqa: PLC0415

        if args.num_nodes < 1:
            parser.error(f"--num-nodes must be >= 1, got {args.num_nodes}")
        print(report(args.num_nodes if args.model else None))
        return 0
    if args.command == "profile":
        from .profiler import run  # noqa: PLC0415

        run(args, args.invocation)
        return 0
    from . import evaluation  # noqa: PLC0415

    if args.command == "train":
        from .training import train  # noqa: PLC0415

        values = vars(args)
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        tc = TrainConfig(**{k: v for k, v in values.items() if k in train_fields})
        overrides = {k: v for k, v in values.items()
                     if k in {f.name for f in dataclasses.fields(STHSepNetConfig)}}
        try:
            with _sigterm_as_interrupt():
                summary = train(tc, **overrides)
        except KeyboardInterrupt as stop:
            return _stopped(tc, args.argv, getattr(stop, "signum", signal.SIGINT))
        if summary is None:                    # a rank > 0 of a DDP run: rank 0 reports
            return 0
        print(f"\ntest metrics ({summary['protocol']} protocol, {summary['seq_len']} -> "
              f"{summary['pred_len']}, best epoch {summary['best_epoch']}), run folder {tc.out}:")
        print(evaluation.format_table(summary["test"]))
    elif args.command == "evaluate":
        result = evaluation.evaluate(args.checkpoint, args.data, args.device)
        print(json.dumps(result, indent=2) if args.json else evaluation.format_table(result))
    elif args.command == "predict":
        result = evaluation.predict(args.checkpoint, args.data, args.out, args.device, args.all_windows)
        print(f"wrote {args.out}: forecast {list(result['forecast'].shape)}"
              + (f", window_forecasts {list(result['window_forecasts'].shape)}" if args.all_windows else ""))
    return 0


class Stopped(KeyboardInterrupt):
    """A signal other than Ctrl-C (SIGTERM) that stops training as Ctrl-C does."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a batch scheduler's stop) raises :class:`Stopped` in the training loop;
    the previous handler comes back afterwards."""
    def stop(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped(tc: TrainConfig, argv: list[str], signum: int) -> int:
    """After Ctrl-C or SIGTERM: one line naming the last checkpoint and the command that continues
    from it (the same flags with ``--resume``; under torchrun rank 0 alone says it). Returns the
    shell's exit status for the signal, 128 + its number (130, 143)."""
    if os.environ.get("RANK", "0") == "0":
        from .checkpoint import META  # noqa: PLC0415

        last = Path(tc.out).expanduser().resolve() / "checkpoint" / "last"
        command = shlex.join(["sthfast", *argv, *([] if "--resume" in argv else ["--resume"])])
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        where = (f"the last checkpoint, {last}, holds epoch {json.loads((last / META).read_text())['epoch']}"
                 if (last / META).exists() else f"no epoch had ended, {tc.out} holds no checkpoint yet")
        print(f"\nsthfast train: stopped by {name}; {where}; continue with: {command}", file=sys.stderr)
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
