"""
`autoresearch status`: a live terminal view of the running campaigns, read from the ledger.
Per campaign and worker: the experiment in progress with a progress bar taken from the last
progress line of its run log, then the last results, the best so far and experiments per hour.
`--json` prints the same as one machine-readable snapshot of every campaign.
"""

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from autoresearch import gitutil
from autoresearch.ledger import STATUSES, was_interrupted
from autoresearch.report import FAILED, ReportError, is_failed, mark_baselines, open_ledger, short, summarize

# train.py's progress line, e.g. "step 00042 (13.9%) | loss: 5.123456 | ... | remaining: 258s",
# newline-terminated in a log file, rewritten in place with '\r' on a terminal
PROGRESS = re.compile(r"^step (\d+) \((\d+(?:\.\d+)?)%\).*\| remaining: (\d+)s")
BAR_WIDTH = 30
LAST_RESULTS = 5
VAL_WIDTH = 8  # "1.234567"; a failed run's word ("crashed", "timeout", "invalid") lines up with it
FAILED_WORDS = {"crash": "crashed"}  # a failed run's val column: its status, "crash" as "crashed"
CLEAR = "\x1b[H\x1b[2J"


def read_progress(log_path, worktree=None, tail_bytes=65536):
    """What the run's log says so far: {step, percent, remaining, phase}, or None without a log.

    The log holds progress lines ended by '\\n' (or '\\r' when train.py wrote to a terminal); only its tail is read and the last complete
    progress line wins. phase: "starting" (no progress yet), "training", "evaluating" (the
    eval's progress follows the last step) or "done" (the summary block has been printed)."""
    if not log_path:
        return None
    path = Path(log_path)
    if not path.is_absolute() and worktree:
        path = Path(worktree) / path
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - tail_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    state = dict(step=None, percent=None, remaining=None, phase="starting")
    for line in re.split(r"[\r\n]", text):
        line = line.strip()
        match = PROGRESS.match(line)
        if match:
            state.update(step=int(match[1]), percent=float(match[2]), remaining=int(match[3]), phase="training")
        elif line.startswith("eval") and state["phase"] == "training":
            state["phase"] = "evaluating"
        elif line.startswith("val_bpb:") or line.startswith("FAIL:"):
            state["phase"] = "done"
    return state


def bar(percent, width=BAR_WIDTH):
    filled = round(width * min(max(percent or 0.0, 0.0), 100.0) / 100)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def clock(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def running_line(row, now):
    """One line for an experiment in progress."""
    elapsed = now - row["started_at"] if row.get("started_at") else None
    progress = read_progress(row.get("log_path"), row.get("worktree"))
    head = f"  {row.get('worker') or 'main':<8} #{row['id']} {short(row.get('description'), 40)!r}"
    if progress is None:
        tail = "no run log yet"
    elif progress["phase"] == "starting":
        tail = f"{bar(0)} starting (no progress line yet)"
    else:
        tail = f"{bar(progress['percent'])} {progress['percent']:5.1f}%  remaining {progress['remaining']}s"
        if progress["phase"] != "training":
            tail += f"  ({progress['phase']})"
    timing = f"elapsed {clock(elapsed)}" if elapsed is not None else ""
    if row.get("timeout_s") and elapsed is not None:
        timing += f" of {clock(row['timeout_s'])} max"
        if elapsed > row["timeout_s"] + 120:
            timing += "  (stale? it is past its timeout)"
    return f"{head}  {tail}  {timing}".rstrip()


def val_text(row):
    """The val column: val_bpb, or why there is none (crashed, timeout, invalid; n/a for a row without one)."""
    if not is_failed(row):
        return f"{row['val_bpb']:.6f}"
    return FAILED_WORDS.get(row["status"], row["status"]) if row["status"] in FAILED else "n/a"


def result_line(row):
    """One finished experiment: status, val_bpb, commit, how much it trained, what it was."""
    val = f"{val_text(row):>{VAL_WIDTH}}"
    who = f" ({row['worker']})" if row.get("worker") else ""
    cause = f" [{short(row['cause'], 40)}]" if row.get("cause") and is_failed(row) else \
        " [starved]" if row.get("starved") else ""
    steps = f"{row['num_steps']:>6} steps" if row.get("num_steps") is not None else " " * 12
    speed = f"{row['tokens_per_second'] / 1000:>6.1f}k tok/s" if row.get("tokens_per_second") else " " * 13
    return (f"    #{row['id']:<4} {row['status']:<8} {val}  {(row.get('commit_sha') or '')[:7]:<7} {steps} {speed}  "
            f"{short(row.get('description'), 36)}{who}{cause}")


def finished_of(rows):
    """The finished rows (not those a stop cut short), each marked is_baseline or not as the report marks
    them (an older ledger does not say: its rows up to the first result are the baseline), so that every
    count leaves it out alike."""
    return mark_baselines([r for r in rows if r["status"] != "running" and not was_interrupted(r)])


def where_text(profile, device):
    """" [profile / device]", leaving out what no row recorded (an invalid run has no device)."""
    known = [part for part in (profile, device) if part]
    return f" [{' / '.join(known)}]" if known else ""


def counts_text(s, finished):
    """"5 done, baseline + 2 kept": the kept count leaves out the baseline (as the keep rate does), so
    the line says the baseline is there when its row is a keep."""
    baseline = "baseline + " if any(r.get("is_baseline") and r["status"] == "keep" for r in finished) else ""
    screened = f", {s['screened']} screened" if s.get("screened") else ""
    return f"{s['experiments']} done, {baseline}{s['kept']} kept{screened}"


def campaign_lines(tag, rows, campaign, now):
    """The block of one campaign: its running experiments, then its last results."""
    campaign = campaign or {}
    finished = finished_of(rows)
    running = [r for r in rows if r["status"] == "running"]
    s = summarize(tag, finished, campaign) if finished else {}
    lines = []
    if finished:
        best = f"{s['best']:.6f}" if s["best"] is not None else "n/a"
        rate = f", {s['per_hour']:.1f} experiments/hour" if s["per_hour"] else ""
        where = where_text(s["profile"] or campaign.get("profile"), s["device"])
        lines.append(f"campaign {tag}{where}: {counts_text(s, finished)}, best {best}{rate}")
    else:
        profile = campaign.get("profile") or next((r.get("profile") for r in rows if r.get("profile")), None)
        where = where_text(profile, None)  # nothing finished: its runs are in flight, or a stop cut them short
        lines.append(f"campaign {tag}{where}: no finished experiment yet")
    if running:
        lines.append("  running:")
        lines += [running_line(r, now) for r in sorted(running, key=lambda r: r.get("worker") or "")]
    lines.append(noise_line(campaign, s, finished))
    if finished:
        lines.append("  last results:")
        lines += [result_line(r) for r in finished[-LAST_RESULTS:]]
    return lines


def baseline_results(finished):
    """The baseline runs that count towards the noise, as the loop counts them: a result, not starved."""
    return [r for r in finished if r.get("is_baseline") and r["status"] in ("keep", "discard")
            and r.get("val_bpb") is not None and not (r.get("cause") or "").startswith("starved")]


def noise_line(campaign, summary, finished=()):
    """How big a gain must be to count: the measured noise (or that its baseline repeats are still to
    run, or that it is not measured) and the threshold. The campaign's baseline_repeats is what the
    loop was asked for (loop --baseline-repeats K); 1 or unset: no measurement."""
    repeats = campaign.get("baseline_repeats") or 1
    if campaign.get("noise_std") is not None:
        noise = f"noise std {campaign['noise_std']:.6f}"
    elif repeats > 1:
        done = min(len(baseline_results(finished)), repeats)
        noise = f"noise pending: {done} of {repeats} baseline runs done"
    else:
        noise = "noise not measured (loop --baseline-repeats K)"
    threshold = summary.get("threshold", campaign.get("min_delta"))
    return f"  {noise}; keep threshold {threshold or 0:.6f}"


def campaign_snapshot(tag, rows, campaign, now):
    """One campaign for `status --json`: plain numbers and strings, null where unknown."""
    finished = finished_of(rows)
    s = summarize(tag, finished, campaign) if finished else {}
    counts = dict.fromkeys(STATUSES + ("interrupted",), 0)
    for r in rows:  # a run a stop cut short is no crash of its program
        status = "interrupted" if was_interrupted(r) else r["status"]
        counts[status] = counts.get(status, 0) + 1
    running = [dict(id=r["id"], worker=r.get("worker"), description=r.get("description"),
                    commit=gitutil.short(r.get("commit_sha")) or None, started_at=r.get("started_at"),
                    elapsed_s=round(now - r["started_at"], 1) if r.get("started_at") else None,
                    timeout_s=r.get("timeout_s"), log_path=r.get("log_path"),
                    progress=read_progress(r.get("log_path"), r.get("worktree")))
               for r in rows if r["status"] == "running"]
    last = [dict(id=r["id"], status=r["status"], val_bpb=None if is_failed(r) else r["val_bpb"],
                 commit=gitutil.short(r.get("commit_sha")) or None, description=r.get("description"),
                 worker=r.get("worker"), cause=r.get("cause"), ended_at=r.get("ended_at"))
            for r in finished[-LAST_RESULTS:]]
    return dict(tag=tag, profile=campaign.get("profile") or s.get("profile"), device=s.get("device"),
                best=s.get("best"), noise_std=campaign.get("noise_std"),
                baseline_repeats=campaign.get("baseline_repeats"),
                threshold=s.get("threshold", campaign.get("min_delta")), per_hour=s.get("per_hour"),
                counts=counts, running=running, last_results=last)


def status_json(ledger, now=None, tag=None):
    """Every campaign of the ledger (or the one tagged `tag`), as the JSON text of `status --json`."""
    now = time.time() if now is None else now
    rows = ledger.experiments()
    campaigns = [campaign_snapshot(t, [r for r in rows if r["tag"] == t], ledger.campaign(t) or {}, now)
                 for t in ledger.tags() if tag in (None, t)]
    return json.dumps(dict(time=now, ledger=ledger.path, campaigns=campaigns), indent=1)


def status_text(ledger, now=None, tag=None):
    """The whole screen, as text: the running campaigns (or the latest ones), or the one tagged `tag`."""
    now = time.time() if now is None else now
    rows = [r for r in ledger.experiments() if tag in (None, r["tag"])]
    lines = [f"autoresearch status  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}"]
    if not rows:
        return "\n".join(lines + ["No experiment is running, and the ledger has no experiments yet."])
    by_tag = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r)
    live = [t for t, some in by_tag.items() if any(r["status"] == "running" for r in some)]
    if tag is not None:
        latest = [tag]
    elif not live:
        lines.append("No campaign is running. The last results:")
        latest = sorted(by_tag, key=lambda t: by_tag[t][-1]["id"], reverse=True)[:3]
    else:
        latest = live
    for t in latest:
        lines.append("")
        lines += campaign_lines(t, by_tag[t], ledger.campaign(t), now)
    return "\n".join(lines)


def cmd_status(args):
    if args.interval <= 0:
        print(f"error: --interval must be a positive number of seconds, not {args.interval:g}", file=sys.stderr)
        return 2
    if args.json and args.watch:
        print("error: --json prints one snapshot; leave out --watch (or poll it yourself)", file=sys.stderr)
        return 2
    try:
        ledger = open_ledger()
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tag is not None and args.tag not in ledger.tags():
        known = ", ".join(ledger.tags()) or "none yet"
        print(f"error: no campaign '{args.tag}' in {ledger.path} (campaigns: {known})", file=sys.stderr)
        return 2
    if args.json:
        print(status_json(ledger, tag=args.tag))
        return 0
    if not args.watch:
        print(status_text(ledger, tag=args.tag))
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it even if started with SIGINT ignored
    try:
        while True:
            screen = status_text(ledger, tag=args.tag)
            sys.stdout.write(CLEAR + screen + f"\n\n(refreshing every {args.interval:g}s; Ctrl-C to stop)\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print()
        return 130


def register(subparsers):
    p = subparsers.add_parser("status", help="live view of running campaigns",
                              description="Show each running experiment's progress, the last results, "
                                          "the best so far and experiments per hour.")
    p.add_argument("--tag", metavar="T", help="only this campaign, running or not (default: the running ones, "
                                               "else the latest)")
    p.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between redraws (default 2)")
    p.add_argument("--json", action="store_true",
                   help="print one machine-readable snapshot of every campaign (best, noise, counts, "
                        "the running experiments with their progress, the last results)")
    p.set_defaults(func=cmd_status)
