"""The `autoresearch` command: each subcommand lives in the module of the same concept."""

import argparse
import importlib
import sys

# module -> it defines register(subparsers), adding its subcommand(s) with set_defaults(func=...)
MODULES = [
    "autoresearch.runner",   # autoresearch run
    "autoresearch.loop",     # autoresearch loop
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="autoresearch",
        description="Run, record and report autonomous train.py experiments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from autoresearch.ledger import LedgerError
    try:
        return args.func(args) or 0
    except LedgerError as e:  # any verb, one line: the ledger is never silently replaced
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
