"""The `dfzsl-fast` command line (also `python -m dfzsl_fast ...`): one thin module per command.

    dfzsl-fast info                  versions, build facts, backends            (cli/info.py)
    dfzsl-fast demo                  DFZSL, ICIS and zero-shot CLIP on a simulated CLIP world
                                     built from real class names                (cli/demo.py)
    dfzsl-fast run CONFIG ...        the whole pipeline: base classifier + class names + text
                                     tower -> classifier over base + new classes (cli/run.py)
    dfzsl-fast configs [NAME]        the shipped config presets, or one in full (cli/configs.py)
    dfzsl-fast sample [options]      exact vMF samples: throughput and a check  (cli/sample.py)
    dfzsl-fast evaluate ...          GZSL S/U/H (and B/N/HM) of a saved classifier on a
                                     feature file                               (cli/evaluate.py)
    dfzsl-fast inject ...            ICIS: extend a saved classifier from class descriptors
                                                                                (cli/inject.py)
    dfzsl-fast extract-features ...  CLIP image features of an image folder     (cli/extract.py)
    dfzsl-fast synthesize ...        synthetic features as resumable safetensors shards;
                                     torchrun splits them across ranks     (cli/synthesize.py)

Each command module has ``add(sub)`` (its sub-parser) and ``run(args) -> int`` (check the
options and inputs, call the library, print). ``run`` imports heavy modules inside it, checks
every option and loads every input before it creates an output file or folder, and writes
only through ``dfzsl_fast.io``'s atomic writers. Adding a command: such a module, appended to
``COMMANDS``; shared option helpers (ranges, devices, output paths, ``--set``) are in
``cli/_common.py``.

Errors: :func:`main` is the one handler. Any exception prints one line,
``dfzsl-fast <command>: error: <message>``, on stderr and returns 2 for a wrong command line
(argparse errors, :class:`UsageError`, a path that is missing or in the way), 130 for Ctrl-C,
1 for anything else; ``dfzsl-fast --debug <command>`` re-raises for the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import configs, demo, evaluate, extract, info, inject, run, sample, synthesize
from ._common import CommandFailed, UsageError

__all__ = ["main", "build_parser", "COMMANDS", "UsageError", "CommandFailed", "CLIError", "PROG"]

PROG = "dfzsl-fast"
#: Command modules, in --help order: each has ``add(sub)`` and ``run(args)``.
COMMANDS = [info, demo, run, configs, sample, evaluate, inject, extract, synthesize]
#: Kept for callers of the former single-module CLI.
CLIError = UsageError

_ALIASES = ("extract",)
#: Exceptions that mean "a path on the command line is wrong": exit code 2.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
#: Exceptions whose message is self-explanatory (no type name printed).
_PLAIN = (UsageError, CommandFailed, ValueError, TypeError, OSError, ImportError)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised (one line from `main`), not printed."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="dfzsl_fast: fast, exact data-free generalized zero-shot learning on CLIP.",
        epilog=f"run `{PROG} <command> --help` for a command's options and an example",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="<command>")
    for module in COMMANDS:
        module.add(sub)
    for name, sp in sub.choices.items():  # `dfzsl-fast <command> --debug` works too
        if name not in _ALIASES:
            sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show full tracebacks on errors")
    return p


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UsageError) and len(exc.args) == 2:
        text = str(exc.args[0])
    else:
        text = str(exc)
        if isinstance(exc, KeyError) and exc.args:  # KeyError quotes its argument
            text = f"missing key {exc.args[0]!r}"
    text = " ".join(text.split()) or type(exc).__name__
    if not isinstance(exc, _PLAIN):
        text = f"{type(exc).__name__}: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code.

    Returns 0 on success, 2 for a wrong command line, 1 for other errors, 130 when interrupted;
    errors print one line on stderr (``--debug`` re-raises instead). ``--help`` raises
    ``SystemExit(0)`` as argparse does.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [str(a) for a in argv]
    debug = "--debug" in argv
    prog = PROG
    try:
        args = build_parser().parse_args(argv)
        debug = args.debug
        prog = f"{PROG} {args.cmd}"
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `dfzsl-fast configs | head`: the reader left; not an error
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        _report(prog, "interrupted")
        return 130
    except SystemExit as exc:  # --help / --version, or a library calling sys.exit
        if exc.code in (0, None) or debug:
            raise
        code = exc.code if isinstance(exc.code, int) else 1
        if not isinstance(exc.code, int):
            _report(prog, " ".join(str(exc.code).split()))
        return code
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, UsageError) and len(exc.args) == 2:
            prog = str(exc.args[1])  # argparse: the sub-parser's prog
        _report(prog, _one_line(exc) + ("" if isinstance(exc, _PLAIN + _PATH_ERRORS) else
                                        f" (run `{PROG} --debug ...` for the traceback)"))
        return 2 if isinstance(exc, (UsageError, *_PATH_ERRORS)) else 1


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pragma: no cover - no real stdout
        pass


def _report(prog: str, message: str) -> None:
    try:
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # pragma: no cover - stderr closed
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
