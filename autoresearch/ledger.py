"""
The ledger: every experiment of every campaign in one SQLite file, and `autoresearch log`.

The file is `<main worktree root>/.autoresearch/ledger.sqlite`, shared by all worktrees of the
repository. It is in WAL mode and every write is one short `BEGIN IMMEDIATE` transaction with a
busy timeout, so several runners (worktrees, swarm workers) can write at once. Each call opens
its own connection: a Ledger object is cheap and safe to share between threads.

Tables: `experiments` (one row per experiment), `campaigns` (one row per tag) and `events`
(free-form log lines of the loop and the workers). Rows come back as plain dicts.
"""

import contextlib
import json
import math
import os
import sqlite3
import statistics
import sys
import time

from autoresearch import gitutil, results

EXPERIMENT_COLUMNS = {
    "id": "INTEGER PRIMARY KEY", "tag": "TEXT", "worker": "TEXT", "branch": "TEXT", "worktree": "TEXT",
    "parent_commit": "TEXT", "commit_sha": "TEXT", "diff": "TEXT", "description": "TEXT",
    "status": "TEXT", "cause": "TEXT", "val_bpb": "REAL", "training_seconds": "REAL",
    "total_seconds": "REAL", "peak_vram_mb": "REAL", "mfu_percent": "REAL", "total_tokens_M": "REAL",
    "num_steps": "INTEGER", "num_params_M": "REAL", "depth": "INTEGER", "profile": "TEXT",
    "device": "TEXT", "seed": "INTEGER", "started_at": "REAL", "ended_at": "REAL", "timeout_s": "REAL",
    "time_budget": "REAL", "log_path": "TEXT", "log_tail": "TEXT", "proposer": "TEXT", "model": "TEXT",
    "prompt_tokens": "INTEGER", "completion_tokens": "INTEGER", "cost_usd": "REAL",
    "best_before": "REAL", "threshold": "REAL", "is_baseline": "INTEGER",
    # the training's process group and the machine it runs on, so that a runner started after one
    # that died (kill -9) can stop a training left behind
    "pgid": "INTEGER", "host": "TEXT",
    # trust: val_bpb is the harness's own evaluation; what train.py printed, the training time the
    # harness measured, and how the experiment ran ("bwrap": sandboxed; "none": unsandboxed)
    "claimed_val_bpb": "REAL", "measured_training_s": "REAL", "startup_s": "REAL", "eval_s": "REAL",
    "sandbox": "TEXT", "workdir": "TEXT",
    # how much the run really trained: train.py's tokens/s; the share of the CPUs other processes
    # took during its training and their number on its GPU (the harness's measurement); starved = 1
    # when that was enough to slow it down (contention.py). retry_of: the experiment this one re-runs
    # (it was interrupted, or a starved would-be keep)
    "tokens_per_second": "REAL", "cpu_share_others": "REAL", "gpu_others": "INTEGER", "starved": "INTEGER",
    "retry_of": "INTEGER",
    # eval_ahead = 1: the model ran on the program its evaluator compiled while it trained (evaluator.py)
    "eval_ahead": "INTEGER",
}
CAMPAIGN_COLUMNS = {
    "tag": "TEXT PRIMARY KEY", "branch": "TEXT", "base_commit": "TEXT", "created_at": "REAL",
    "profile": "TEXT", "min_delta": "REAL", "noise_std": "REAL", "baseline_repeats": "INTEGER",
    "confirm": "INTEGER", "proposer": "TEXT", "model": "TEXT",
    # sha256 of the profile's manifest.json + tokenizer.json when the campaign started
    "fingerprint": "TEXT",
}
EVENT_COLUMNS = {"id": "INTEGER PRIMARY KEY", "ts": "REAL", "tag": "TEXT", "worker": "TEXT",
                 "kind": "TEXT", "message": "TEXT"}
TABLES = {"experiments": EXPERIMENT_COLUMNS, "campaigns": CAMPAIGN_COLUMNS, "events": EVENT_COLUMNS}
STATUSES = ("running", "keep", "discard", "crash", "timeout", "invalid", "screened")  # screened: a short run
BUSY_TIMEOUT_MS = 60_000


def reference_of(rows):
    """The val_bpb a change must beat (by the threshold): over the kept programs (commits), the lowest
    mean of a program's full-budget results (the baseline with its noise repeats, a keep with its
    confirmation), leaving out runs other processes starved unless a program has no other (then the ones
    that counted, not those thrown away to be run again). One sample
    would let a lucky or unlucky draw set the bar: a first baseline drawn one std high lets a change
    within the noise through. None before anything is kept."""
    return min(kept_means(rows).values(), default=None)


def kept_means(rows):
    """{program (its commit, or "row <id>"): the mean reference_of takes} for each kept program."""
    programs = {}
    for r in rows:
        if r.get("status") in ("keep", "discard") and r.get("val_bpb") is not None:
            programs.setdefault(r.get("commit_sha") or f"row {r.get('id')}", []).append(r)
    means = {}
    for program, runs in programs.items():
        if any(r["status"] == "keep" for r in runs):
            # all starved: the runs that counted, not those thrown away to be run again ("starved: ...")
            counted = [r for r in runs if not (r.get("cause") or "").startswith("starved")]
            fair = [r for r in runs if not was_starved(r)] or counted or runs
            means[program] = statistics.fmean(r["val_bpb"] for r in fair)
    return means


def threshold_of(campaign):
    """How far below the reference a change must come to be kept: max(min_delta, 2 x the baseline's noise
    std), each 0 until the campaign has it."""
    return max(campaign.get("min_delta") or 0.0, 2 * (campaign.get("noise_std") or 0.0))


def was_interrupted(row):
    """Whether a stop (Ctrl-C, SIGTERM, a killed harness) cut the run short: it is no experiment."""
    return row.get("status") == "crash" and (row.get("cause") or "").startswith("interrupted")


def was_starved(row):
    """Whether other processes starved the run (its row says so, or its cause does)."""
    return bool(row.get("starved")) or (row.get("cause") or "").startswith("starved")


def ledger_path(repo="."):
    """Where the ledger of the repository holding `repo` lives (the same for all its worktrees)."""
    return os.path.join(gitutil.main_root(repo), ".autoresearch", "ledger.sqlite")


class LedgerError(RuntimeError):
    """The ledger file exists but cannot be trusted (empty, truncated, not SQLite, tables missing)."""


def _checked_columns(table, cols):
    """cols as they are written: known columns of the table only, the ONE_LINE texts made one line."""
    unknown = sorted(set(cols) - set(TABLES[table]))
    if unknown:
        raise ValueError(f"unknown {table} column(s): {', '.join(unknown)}")
    return {name: one_line(value) if name in ONE_LINE and isinstance(value, str) else value
            for name, value in cols.items()}


ONE_LINE = ("description", "cause")  # texts printed as they are, one line each, in terminals and results.tsv


def one_line(text):
    """text as one line of printable characters: what a proposer or a run wrote (a description, the
    log's FAIL line) is printed in the operator's terminal, where an escape sequence would rewrite
    the lines above it (a forged "keep"), set the window's title or write the clipboard."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


class Ledger:
    """The SQLite ledger; created (tables and folder) on first use."""

    def __init__(self, path=None, repo="."):
        self.path = os.path.abspath(path or ledger_path(repo))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        existed = os.path.exists(self.path)
        if existed:
            self._check()
        try:
            self._create()
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"the ledger {self.path} cannot be opened ({e}); {self.FIX}") from None

    FIX = "restore it from a backup, or move it away to start a new, empty ledger"

    def _check(self):
        """An existing ledger must be a sound SQLite file with our tables: an emptied or damaged file
        is an error, never silently a fresh campaign (that would forget every best and every run)."""
        if os.path.getsize(self.path) == 0:
            raise LedgerError(f"the ledger {self.path} is empty (truncated?); {self.FIX}")
        try:
            with self._read() as conn:
                verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"the ledger {self.path} is not a readable SQLite database ({e}); {self.FIX}") from None
        if verdict != "ok":
            raise LedgerError(f"the ledger {self.path} is damaged ({verdict}); {self.FIX}")
        if "experiments" not in tables:
            raise LedgerError(f"the ledger {self.path} has no experiments table; {self.FIX}")

    # -- plumbing -------------------------------------------------------------------------------
    def _connect(self):
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    @contextlib.contextmanager
    def _read(self):
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self):
        """One write transaction, taken up front so concurrent writers queue instead of deadlocking."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _create(self):
        with self._read() as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                for attempt in range(50):  # switching needs a moment alone with the file
                    try:
                        conn.execute("PRAGMA journal_mode = WAL")
                        break
                    except sqlite3.OperationalError:
                        time.sleep(0.1)
        with self._write() as conn:
            for table, columns in TABLES.items():
                spec = ", ".join(f"{name} {kind}" for name, kind in columns.items())
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({spec})")
                present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns.items():  # a ledger made by an older version
                    if name not in present:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            conn.execute("CREATE INDEX IF NOT EXISTS experiments_tag ON experiments (tag, status)")

    # -- experiments ----------------------------------------------------------------------------
    def start_experiment(self, **cols):
        """Insert an experiment (status `running` and started_at now unless given); returns its id."""
        cols.pop("id", None)
        cols.setdefault("status", "running")
        cols.setdefault("started_at", time.time())
        cols = _checked_columns("experiments", cols)
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        with self._write() as conn:
            cur = conn.execute(f"INSERT INTO experiments ({names}) VALUES ({marks})", list(cols.values()))
            return cur.lastrowid

    def update_experiment(self, id, **cols):
        """Set some columns of an experiment."""
        cols.pop("id", None)
        cols = _checked_columns("experiments", cols)
        if not cols:
            return
        sets = ", ".join(f"{name} = ?" for name in cols)
        with self._write() as conn:
            conn.execute(f"UPDATE experiments SET {sets} WHERE id = ?", [*cols.values(), id])

    def finish_experiment(self, id, **cols):
        """Record the outcome of an experiment (ended_at now unless given)."""
        cols.setdefault("ended_at", time.time())
        self.update_experiment(id, **cols)

    def experiment(self, id):
        with self._read() as conn:
            row = conn.execute("SELECT * FROM experiments WHERE id = ?", (id,)).fetchone()
        return dict(row) if row else None

    def experiments(self, tag=None, status=None):
        """Experiments ordered by id; status is one status or a list of them."""
        where, args = [], []
        if tag is not None:
            where.append("tag = ?")
            args.append(tag)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args.extend(statuses)
        sql = "SELECT * FROM experiments" + (" WHERE " + " AND ".join(where) if where else "")
        with self._read() as conn:
            return [dict(row) for row in conn.execute(sql + " ORDER BY id", args)]

    def best(self, tag):
        """The lowest val_bpb of the campaign's `keep` experiments (None before the baseline): one sample.
        The best a person is shown, and a change must beat, is the reference (below)."""
        with self._read() as conn:
            row = conn.execute("SELECT MIN(val_bpb) FROM experiments WHERE tag = ? AND status = 'keep' "
                               "AND val_bpb IS NOT NULL", (tag,)).fetchone()
        return row[0]

    def reference(self, tag):
        """The val_bpb a change must beat by the threshold (reference_of the campaign's rows)."""
        return reference_of(self.experiments(tag=tag))

    # -- campaigns ------------------------------------------------------------------------------
    def campaign(self, tag):
        with self._read() as conn:
            row = conn.execute("SELECT * FROM campaigns WHERE tag = ?", (tag,)).fetchone()
        return dict(row) if row else None

    def campaigns(self):
        with self._read() as conn:
            return [dict(row) for row in conn.execute("SELECT * FROM campaigns ORDER BY created_at, tag")]

    def save_campaign(self, **cols):
        """Create the campaign `tag` or update the columns given (the others keep their values)."""
        if not cols.get("tag"):
            raise ValueError("save_campaign needs a tag")
        cols = _checked_columns("campaigns", cols)
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM campaigns WHERE tag = ?", (cols["tag"],)).fetchone()
            if exists:
                rest = {k: v for k, v in cols.items() if k != "tag"}
                if rest:
                    sets = ", ".join(f"{name} = ?" for name in rest)
                    conn.execute(f"UPDATE campaigns SET {sets} WHERE tag = ?", [*rest.values(), cols["tag"]])
            else:
                cols.setdefault("created_at", time.time())
                conn.execute(f"INSERT INTO campaigns ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                             list(cols.values()))

    def tags(self):
        """Every campaign tag, campaigns first (by creation), then tags only experiments name."""
        with self._read() as conn:
            tags = [r[0] for r in conn.execute("SELECT tag FROM campaigns ORDER BY created_at, tag")]
            for (tag,) in conn.execute("SELECT tag FROM experiments GROUP BY tag ORDER BY MIN(id)"):
                if tag not in tags:
                    tags.append(tag)
        return tags

    # -- events ---------------------------------------------------------------------------------
    def event(self, tag, kind, message, worker=None):
        with self._write() as conn:
            cur = conn.execute("INSERT INTO events (ts, tag, worker, kind, message) VALUES (?, ?, ?, ?, ?)",
                               (time.time(), tag, worker, kind, one_line(message)))
            return cur.lastrowid

    def events(self, tag=None, since_id=0):
        sql, args = "SELECT * FROM events WHERE id > ?", [since_id]
        if tag is not None:
            sql += " AND tag = ?"
            args.append(tag)
        with self._read() as conn:
            return [dict(row) for row in conn.execute(sql + " ORDER BY id", args)]


# -- autoresearch log ---------------------------------------------------------------------------
LOG_FORMATS = ("table", "tsv", "json")


def _clean(text):
    return " ".join(str(text or "").split())


def _memory_gb(row):
    return row["peak_vram_mb"] / 1024 if row.get("peak_vram_mb") is not None else None


def _fmt(value, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


DESCRIPTION_MAX = 100  # the description's room in a table that is not shown on a terminal (a file, a pipe)
DESCRIPTION_MIN = 40   # on a terminal, FIT_DROP's columns go (in order) before the description + [cause] get less
FIT_DROP = ("mem_gb", "proposer", "seconds", "tok/s", "steps")
DESCRIPTION_FLOOR = 16  # a terminal narrower than the columns left and this many characters: its lines wrap


def _table_width():
    """The terminal's width when stdout is one (COLUMNS first, as shutil reads it), else None."""
    import shutil
    isatty = getattr(sys.stdout, "isatty", None)
    return shutil.get_terminal_size().columns if isatty and isatty() else None


def _markers(row):
    """(cause, flags) following the description: the cause of a run that was not kept, and " [starved]" when
    other processes starved the run and the cause does not already say so (a starved noise repeat's cause
    is 'baseline repeat on seed N: measures the noise')."""
    cause = _clean(row.get("cause")) if row["status"] != "keep" else ""
    return cause, " [starved]" if row.get("starved") and not cause.startswith("starved") else ""


def _ellipsis(text, room):
    return text if len(text) <= room else text[:max(room - 1, 0)].rstrip() + "…"


def _cut(description, cause, flags, room):
    """description [cause] flags in about room characters: the flags kept whole, the cause given what the
    description leaves it but at least half the room, each cut with an ellipsis."""
    tail = f" [{cause}]" if cause else ""
    if len(description) + len(tail) + len(flags) <= room:
        return description + tail + flags
    room = max(room - len(flags), 2)
    if len(tail) > room // 2 and len(description) + len(tail) > room:
        tail = f" [{_ellipsis(cause, max(room // 2, room - len(description)) - 3)}]"
    return _ellipsis(description, room - len(tail)) + tail + flags


def format_table(rows, width=None):
    """`log`'s table, one line per experiment. width: the length its lines fit in (None: the terminal's
    when stdout is one, see _table_width); to fit, the columns of FIT_DROP are left out while the
    description would get less than DESCRIPTION_MIN characters, and the description is cut with an
    ellipsis (to DESCRIPTION_MAX characters without a width), its [cause] and [starved] kept. Only the
    table is cut: `--format tsv/json` are for machines."""
    width = _table_width() if width is None else width
    header = ["id", "tag", "commit", "status", "val_bpb", "mem_gb", "seconds", "steps", "tok/s", "proposer"]
    lines = [dict(zip(header, header))]
    texts = []
    for r in rows:
        seconds = r["ended_at"] - r["started_at"] if r.get("ended_at") and r.get("started_at") else None
        cells = [str(r["id"]), r["tag"] or "", gitutil.short(r["commit_sha"]), r["status"] or "",
                 _fmt(r["val_bpb"], 6), _fmt(_memory_gb(r), 1), _fmt(seconds, 0), _fmt(r.get("num_steps"), 0),
                 _fmt(r.get("tokens_per_second"), 0), r["proposer"] or ""]
        lines.append(dict(zip(header, cells)))
        texts.append((_clean(r["description"]), *_markers(r)))
    widths = {name: max(len(line[name]) for line in lines) for name in header}
    shown = list(header)

    def prefix():  # each column and the two spaces after it
        return sum(widths[name] + 2 for name in shown)

    for name in FIT_DROP:
        if width is None or width - prefix() >= DESCRIPTION_MIN:
            break
        shown.remove(name)
    room = DESCRIPTION_MAX if width is None else max(width - prefix(), DESCRIPTION_FLOOR)
    descriptions = ["description"] + [_cut(*text, room) for text in texts]
    return "\n".join("".join(line[name].ljust(widths[name]) + "  " for name in shown) + description
                     for line, description in zip(lines, descriptions))


def format_tsv(rows):
    """results.tsv's lines (the same writer), then the ledger's extras: tag, id, proposer, cause."""
    return results.format_rows(rows, extra=results.LOG_EXTRAS)


def format_json(rows):
    out = []
    for r in rows:
        item = {"id": r["id"], "tag": r["tag"], "commit": gitutil.short(r["commit_sha"])}
        item.update({k: v for k, v in r.items() if k not in item})
        out.append(item)
    return json.dumps(out, indent=1)


def cmd_log(args):
    repo = "."
    if not gitutil.is_repo(repo):
        print(f"error: {os.path.abspath(repo)} is not in a git repository; run `autoresearch log` "
              f"inside the checkout of a campaign", file=sys.stderr)
        return 2
    path = ledger_path(repo)
    if not os.path.exists(path):  # the same line as `status` and `report`
        print(f"error: no ledger at {path}: nothing has run from this checkout yet (start a campaign with "
              f"`autoresearch loop` or `autoresearch run`)", file=sys.stderr)
        return 2
    ledger = Ledger(path)
    if args.tag is not None and args.tag not in ledger.tags():
        known = ", ".join(ledger.tags()) or "none yet"
        print(f"error: no campaign with tag {args.tag!r} in the ledger (known tags: {known})", file=sys.stderr)
        return 2
    rows = ledger.experiments(tag=args.tag)
    print({"table": format_table, "tsv": format_tsv, "json": format_json}[args.format](rows))
    return 0


def register(subparsers):
    p = subparsers.add_parser("log", help="print the experiments recorded in the ledger",
                              description="Print the ledger's experiments, oldest first.")
    p.add_argument("--tag", help="only this campaign (default: all)")
    p.add_argument("--format", choices=LOG_FORMATS, default="table",
                   help="table (default), tsv (results.tsv's lines, then tag, id, proposer, cause) or json")
    p.set_defaults(func=cmd_log)
