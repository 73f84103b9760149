"""
results.tsv, the reference system's record of a campaign: its one writer and its one reader.

The file (checkout root, never committed) holds exactly one campaign, the one of the checkout's
branch `autoresearch/<tag>`: its finished experiments (not runs a stop cut short) in ledger order, one
line each, under the header `commit val_bpb memory_gb status description` (tab-separated). The status
is `keep`, `discard` or `crash`, the only three the reference knows: `timeout` and `invalid` are written as
`crash`, with `[timeout]` or `[invalid]` ending the description. A crash has val_bpb 0.000000 and
memory 0.0. A run other processes starved (contention.py) has `[starved]` ending its description, as
`autoresearch log` and `status` say it: its val_bpb says more about the machine than the program, and a
reader leaves it out of a program's mean as the ledger does (Ledger.reference).

The harness never edits the file line by line: whenever one of the campaign's ledger rows is written
or changes, write() regenerates the whole file from the ledger (temp file + os.replace, so a reader
never sees half a file). So it cannot disagree with the ledger, nor mix campaigns; lines added by
hand are replaced by the ledger's rows at the next write. `autoresearch log --format tsv` is the same
format (format_rows, the same lines) with extra columns after the five (LOG_EXTRAS), its experiments
still running among them (`crash`, `[running]` ending the description); read() takes both, the
finished experiments only, and a `tag` column splits the rows into campaigns.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

from autoresearch import gitutil

FILENAME = "results.tsv"
TEMP_PREFIX = ".results-tsv-"
HEADER = ("commit", "val_bpb", "memory_gb", "status", "description")
STATUSES = ("keep", "discard", "crash")


class ResultsError(ValueError):
    """A results file that cannot be read: the message names the file, the line and the fix."""


def _clean(text):
    return " ".join(str(text or "").split())


def cells(row):
    """The five reference cells of a ledger row."""
    status = row["status"] if row["status"] in ("keep", "discard") else "discard" if row["status"] == "screened" \
        else "crash"  # a screening run, never kept, is a discard to the reference's tools
    ok = status != "crash" and row.get("val_bpb") is not None
    # a description (a proposer's words) may not end in a mark of ours: read() would take it for one
    description = re.sub(r"\[(\w+)\]$", r"(\1)", _clean(row.get("description")))
    if row["status"] in ("timeout", "invalid", "screened", "running"):
        description += f" [{row['status']}]"
    if ok and (row.get("starved") or (row.get("cause") or "").startswith("starved")):  # ledger.was_starved
        description += " [starved]"
    memory = row["peak_vram_mb"] / 1024 if ok and row.get("peak_vram_mb") is not None else 0.0
    return [gitutil.short(row.get("commit_sha")), f"{row['val_bpb'] if ok else 0.0:.6f}", f"{memory:.1f}",
            status, description]


# the columns `autoresearch log --format tsv` adds after the five
LOG_EXTRAS = {"tag": lambda r: r.get("tag") or "", "id": lambda r: str(r["id"]),
              "proposer": lambda r: r.get("proposer") or "", "cause": lambda r: _clean(r.get("cause"))}


def format_rows(rows, extra=None):
    """The header and one line per row (no trailing newline after the last); extra: {column: row -> text}."""
    extra = extra or {}
    lines = ["\t".join([*HEADER, *extra])]
    lines += ["\t".join(cells(r) + [get(r) for get in extra.values()]) for r in rows]
    return "\n".join(lines)


def write(checkout, ledger, tag):
    """Regenerate <checkout>/results.tsv from the ledger: the finished experiments of campaign tag (a run a
    stop cut short is none: the ledger keeps it, and it is run again)."""
    from autoresearch.ledger import was_interrupted  # the ledger imports this module for its tsv format
    rows = [r for r in ledger.experiments(tag=tag) if r["status"] != "running" and not was_interrupted(r)]
    # the new file is made beside the old one (os.replace needs the same file system) under the name
    # results.tsv, which the harness's git commands leave out: one a killed writer left behind is
    # never taken for a change of the experiment's
    folder = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=checkout)
    temp = os.path.join(folder, FILENAME)
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(format_rows(rows) + "\n")
        os.replace(temp, os.path.join(checkout, FILENAME))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read(path):
    """The rows of a results.tsv or `autoresearch log --format tsv` output as ledger-like dicts (the
    columns the file lacks are None, is_baseline among them; starved is 1 where the description ends
    with [starved]). The campaign is the `tag` column, else the file's name. Experiments still running
    (`log` prints them) are left out: they have no result yet, and are no crash."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"no such results file: {path} (pass the path of a results.tsv)")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header = lines[0].rstrip("\n").split("\t") if lines else []
    if tuple(header[:5]) != HEADER:
        raise ResultsError(f"{path}: first line must be the header '{chr(9).join(HEADER)}' "
                           f"(tab-separated, as program.md writes it)")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            row = _parse(path, number, line, header)
            if not (row["status"] == "crash" and row["description"].endswith("[running]")):
                rows.append(row)
    if not rows:
        raise ResultsError(f"{path} has a header but no experiments yet")
    return rows


def _parse(path, number, line, header):
    values = line.split("\t")
    if len(values) < 5:
        raise ResultsError(f"{path} line {number}: expected 5 tab-separated columns "
                           f"(commit, val_bpb, memory_gb, status, description), got {len(values)}")
    if len(header) == 5:  # a hand-written description may hold tabs
        values = values[:4] + ["\t".join(values[4:])]
    named = dict(zip(header, values))
    commit, val, mem, status = (named[k].strip() for k in HEADER[:4])
    try:
        val_bpb, memory_gb = float(val), float(mem)
    except ValueError:
        raise ResultsError(f"{path} line {number}: val_bpb {val!r} and memory_gb {mem!r} must be numbers") from None
    if status not in STATUSES:
        raise ResultsError(f"{path} line {number}: status {status!r} is not one of {', '.join(STATUSES)}")
    ok = status != "crash"
    ident = named.get("id", "").strip()
    description = named["description"].strip()
    return dict(id=int(ident) if ident.isdigit() else number - 1, tag=named.get("tag") or path.stem,
                commit_sha=commit, status=status, val_bpb=val_bpb if ok else None,
                peak_vram_mb=memory_gb * 1024 if ok else None, description=description,
                proposer=named.get("proposer") or None, cause=named.get("cause") or None, is_baseline=None,
                starved=1 if ok and description.endswith("[starved]") else None)
