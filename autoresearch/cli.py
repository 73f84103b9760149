"""The `autoresearch` command: each subcommand lives in the module of the same concept."""

import argparse
import importlib
import importlib.metadata
import os
import sys

# module -> it defines register(subparsers), adding its subcommand(s) with set_defaults(func=...)
MODULES = [
    "autoresearch.runner",   # autoresearch run
    "autoresearch.loop",     # autoresearch loop
    "autoresearch.swarm",    # autoresearch swarm
    "autoresearch.ledger",   # autoresearch log
    "autoresearch.report",   # autoresearch report
    "autoresearch.status",   # autoresearch status
]


def positive(kind, name=None):
    """An argparse type: a number of `kind` greater than 0 (argparse names it in its error)."""
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value
    parse.__name__ = f"positive {name or kind.__name__}"
    return parse


def non_negative(text):
    """An argparse type: a number >= 0."""
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value


non_negative.__name__ = "non-negative number"


EXIT_CODES = """\
exit codes (every command):
  0    success (for `run`: the experiment was kept or discarded)
  1    the work ran but failed: an experiment that crashed, timed out or was invalid,
       a damaged ledger, a git command that failed
  2    usage or precondition error: bad flags, no ledger yet, not on a campaign branch,
       data not prepared
  130  stopped by Ctrl-C (SIGINT)
  143  stopped by SIGTERM
  141  the reader of the output went away (`autoresearch log | head -1`)
errors are one line on stderr starting with `error: ` (bad flags: argparse's usage and error)"""


def version():
    try:
        return importlib.metadata.version("autoresearch")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        from autoresearch import __version__
        return __version__


def build_parser():
    parser = argparse.ArgumentParser(
        prog="autoresearch",
        description="Run, record and report autonomous train.py experiments.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    shown = f"autoresearch {version()}"
    parser.add_argument("--version", action="version", version=shown)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    # `autoresearch run --version`, as users type it: the version, before a missing -m is an error
    # (left out of the verbs' help: the top-level one documents it)
    for verb in {id(p): p for p in sub.choices.values()}.values():
        try:
            verb.add_argument("--version", action="version", version=shown, help=argparse.SUPPRESS)
        except argparse.ArgumentError:  # the verb has a --version of its own
            pass
    return parser


def quiet_stdout():
    """Send the rest of stdout to /dev/null: its reader went away (`| head -1`). The Python docs'
    recipe: without it, the interpreter's last flush at exit raises BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv=None):
    from autoresearch.ledger import LedgerError
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        try:
            code = args.func(args) or 0
        except LedgerError as e:  # any verb, one line: the ledger is never silently replaced
            print(f"error: {e}", file=sys.stderr)
            code = 1
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return code
    except BrokenPipeError:
        quiet_stdout()
        return 141  # 128 + SIGPIPE, as a C program killed by the closed pipe would exit
    except KeyboardInterrupt:  # a verb that has no stop of its own (log, report): no traceback
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
