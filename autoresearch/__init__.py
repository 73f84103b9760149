"""autoresearch: the harness around train.py (runner, ledger, loop, proposers, swarm, report)."""

__version__ = "0.1.0"
