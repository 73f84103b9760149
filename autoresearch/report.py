"""
`autoresearch report`: the progress plot, a self-contained HTML report and a terminal summary
of one or more campaigns, read from the ledger (or from a results.tsv / `autoresearch log --format tsv`).

The page answers what a researcher asks next: per experiment its diff, steps, tokens/s, its
training-loss curve (from the step lines of its log, drawn over the baseline's) and its log, copied
into `report_logs/` beside report.html. A log is an experiment's only while no later experiment wrote
to the same path and the file is no newer than the experiment's end; otherwise the ledger's last lines
stand in for it. `--json` prints the same numbers and rows instead of writing anything.

The baseline is what a campaign measured of the program it started from: the rows the ledger marks
is_baseline, or, where nothing says (a results.tsv, an older ledger), the rows up to the first result
(the reference's first run is the baseline; crashes before it were attempts at it) and every later row
of their commits (the same program run again: a noise repeat, the re-run of a starved run). The keep
rate and the top hits leave it out, and every improvement is measured from it: the mean of its
unstarved results, as the keep rule measures a kept program (Ledger.reference).
"""

import base64
import html
import io
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from autoresearch import gitutil, results
from autoresearch.ledger import (Ledger, kept_means, ledger_path, reference_of, threshold_of, was_interrupted,
                                was_starved)

FAILED = ("crash", "timeout", "invalid")  # statuses that produced no usable val_bpb
LOG_SLACK = 5.0  # seconds a run's log may be newer than its row's end (file-system clocks)
STEP_LINE = re.compile(r"step\s+(\d+)\s+\([^)]*\)\s*\|\s*loss:\s*([^\s|]+)")


class ReportError(Exception):
    """A user mistake or missing input: reported as one line, exit 2."""


# ---------------------------------------------------------------------------------------------
# reading experiments

def checkout_root(repo="."):
    """The top folder of the checkout (worktree) holding repo; repo itself outside git."""
    return Path(gitutil.toplevel(repo)) if gitutil.is_repo(repo) else Path(repo).resolve()


def open_ledger(repo=".", hint=""):
    """The Ledger of this checkout, without creating one: ReportError when there is none."""
    if not gitutil.is_repo(repo):
        raise ReportError(f"{Path(repo).resolve()} is not a git checkout: run this inside the "
                          f"campaign's repository{hint}")
    path = ledger_path(repo)
    if not os.path.exists(path):
        raise ReportError(f"no ledger at {path}: nothing has run from this checkout yet (start a "
                          f"campaign with `autoresearch loop` or `autoresearch run`{hint})")
    return Ledger(path=path)


def is_failed(row):
    return row["status"] in FAILED or not row.get("val_bpb")


def read_results_tsv(path):
    """Rows of a results.tsv (or `autoresearch log --format tsv` output) as ledger-like dicts."""
    try:
        return results.read(path)
    except results.ResultsError as e:
        raise ReportError(str(e)) from None


def load_ledger(tags, repo="."):
    """(rows, campaigns by tag, tags) for the given tags; the latest campaign when none."""
    ledger = open_ledger(repo, hint=", or pass --results results.tsv")
    # finished experiments: not those in flight, nor runs a stop cut short (run again; the ledger keeps them)
    everything = [r for r in ledger.experiments() if r["status"] != "running" and not was_interrupted(r)]
    known = ledger.tags()
    if not everything:
        raise ReportError(f"the ledger {ledger_path(repo)} has no finished experiments yet")
    if not tags:
        tags = [everything[-1]["tag"]]
    for tag in tags:
        if tag not in known:
            raise ReportError(f"unknown tag {tag!r}: the ledger has {', '.join(map(repr, known))} "
                              f"(pass one of them with --tag)")
    rows = [r for r in everything if r["tag"] in tags]
    if not rows:
        raise ReportError(f"no finished experiments yet for tag(s) {', '.join(tags)}")
    campaigns = {tag: ledger.campaign(tag) or {} for tag in tags}
    return rows, campaigns, tags


def log_owners(repo="."):
    """{log path: id of the newest experiment (running ones too) that wrote to it}."""
    return {r["log_path"]: r["id"] for r in open_ledger(repo).experiments() if r.get("log_path")}


# ---------------------------------------------------------------------------------------------
# numbers

def mark_baselines(rows):
    """Where no row of a campaign says whether it is the baseline, the rows up to its first result are,
    and so is every later row of their commits: a run of the unchanged program measures the baseline
    again (a repeat, a re-run of a starved run), it never improves on it, though the harness records
    the one that counted as `keep` after a discarded one."""
    for tag in dict.fromkeys(r["tag"] for r in rows):
        campaign = [r for r in rows if r["tag"] == tag]
        if any(r.get("is_baseline") is not None for r in campaign):
            for r in campaign:
                r["is_baseline"] = int(bool(r.get("is_baseline")))
            continue
        before_result, commits = True, set()
        for r in campaign:
            if before_result and r.get("commit_sha"):
                commits.add(r["commit_sha"])
            r["is_baseline"] = int(before_result or r.get("commit_sha") in commits)
            before_result = before_result and is_failed(r)
    return rows


def baseline_of(rows):
    """The baseline's val_bpb: what the keep rule makes of its runs (ledger.reference_of, the baseline rows
    taken as one program: a results.tsv may name an attempt by another commit), so that the report's
    baseline is the bar the campaign's first change had to beat. Where no baseline run was kept (a
    results.tsv), the mean of the baseline rows with a result, starved runs left out unless all were;
    else the first result."""
    marked = [r for r in rows if r.get("is_baseline") and not is_failed(r)]
    reference = reference_of([dict(r, commit_sha="baseline") for r in marked])
    if reference is not None:
        return reference
    fair = [r["val_bpb"] for r in marked if not was_starved(r)] or [r["val_bpb"] for r in marked]
    if fair:
        return statistics.fmean(fair)
    return next((r["val_bpb"] for r in rows if not is_failed(r)), None)


def with_improvements(rows):
    """Each row of one campaign gets `vs_baseline` (val_bpb minus the baseline's) and each keep after the
    baseline `gain`: how much it lowered the best val_bpb before it (None when it did not)."""
    baseline = baseline_of(rows)
    best = baseline
    for r in rows:
        r["gain"] = None
        r["vs_baseline"] = None if is_failed(r) or baseline is None else r["val_bpb"] - baseline
        if r.get("is_baseline") or r["status"] != "keep" or is_failed(r):
            continue
        before = r.get("best_before") or best
        if before is not None and before > r["val_bpb"]:
            r["gain"] = before - r["val_bpb"]
        best = r["val_bpb"] if best is None else min(best, r["val_bpb"])
    return rows


def tokens_per_second(row):
    """Training throughput: the ledger's column when it has one, else total tokens / training time."""
    if row.get("tokens_per_second"):
        return row["tokens_per_second"]
    if row.get("total_tokens_M") and row.get("training_seconds"):
        return row["total_tokens_M"] * 1e6 / row["training_seconds"]
    return None


def summarize(tag, rows, campaign):
    """The numbers of one campaign, as a dict that the terminal, the page, --json and the tests share."""
    rows = [r for r in rows if not was_interrupted(r)]  # a run a stop cut short is no experiment
    screened = [r for r in rows if r["status"] == "screened"]  # short runs: never kept, never the best
    after = [r for r in rows if not r.get("is_baseline") and r["status"] != "screened"]
    keeps = [r for r in after if r["status"] == "keep" and not is_failed(r)]
    baseline = baseline_of(rows)
    # the best is what the keep rule compares with: the lowest mean of a kept program's runs, not one lucky run
    means = kept_means([r for r in rows if r["status"] != "screened"])
    program = min(means, key=means.get, default=None)
    best_row = next((r for r in reversed(keeps) if (r.get("commit_sha") or f"row {r.get('id')}") == program), None)
    if best_row is not None and baseline is not None and means[program] >= baseline:
        best_row = None  # a keep no better than the baseline (a results.tsv kept by hand) is not the best
    best = means[program] if best_row else baseline
    causes = Counter(f"{r['status']}: {r.get('cause') or 'no cause recorded'}" for r in rows if is_failed(r))
    thresholds = [r.get("threshold") for r in rows if r.get("threshold") is not None]
    starts = [r["started_at"] for r in rows if r.get("started_at")]
    ends = [r["ended_at"] for r in rows if r.get("ended_at")]
    hours = (max(ends) - min(starts)) / 3600 if starts and ends and max(ends) > min(starts) else None
    s = dict(tag=tag, experiments=len(rows), baseline_runs=sum(bool(r.get("is_baseline")) for r in rows),
             kept=len(keeps), screened=len(screened),
             failed=sum(is_failed(r) for r in rows), baseline=baseline, best=best, best_row=best_row,
             keep_rate=len(keeps) / len(after) if after else None,
             crash_causes=dict(causes.most_common()),
             threshold=keep_threshold(campaign, thresholds),
             noise_std=campaign.get("noise_std"),
             per_hour=len(rows) / hours if hours else None,
             profile=", ".join(sorted({r["profile"] for r in rows if r.get("profile")})) or None,
             device=", ".join(sorted({r["device"] for r in rows if r.get("device")})) or None,
             workers=sorted({r["worker"] for r in rows if r.get("worker")}))
    if baseline is not None and best is not None:
        s["improvement"] = baseline - best
        s["improvement_pct"] = 100 * (baseline - best) / baseline
    else:
        s["improvement"] = s["improvement_pct"] = None
    return s


def keep_threshold(campaign, recorded):
    """The threshold a change must now beat the best by, as the loop sets it: max(min_delta, 2 x the
    noise std) once the campaign knows them, else the last one an experiment recorded (a results file's
    rows, a campaign run by hand)."""
    if campaign.get("noise_std") is not None or campaign.get("min_delta") is not None:
        return threshold_of(campaign)
    return recorded[-1] if recorded else None


def fmt(value, spec=".6f", missing="n/a"):
    return missing if value is None else format(value, spec)


def counted(n, noun):
    """"1 experiment", "2 experiments": every count the report writes."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def counts_text(s):
    baseline = f" ({counted(s['baseline_runs'], 'baseline run')})" if s["baseline_runs"] else ""
    screened = f", {s['screened']} screened (short runs, not compared)" if s.get("screened") else ""
    return f"{counted(s['experiments'], 'experiment')}{baseline}, {s['kept']} kept{screened}"


def best_text(s):
    if s["best"] is None:
        return "n/a"
    if s["best_row"] is None:
        return f"{s['best']:.6f}  (the baseline: nothing beat it yet)"
    return f"{s['best']:.6f}  ({(s['best_row'].get('commit_sha') or '')[:7]} {s['best_row'].get('description') or ''})"


def keep_rate_text(s):
    if s["keep_rate"] is None:
        return "n/a (only the baseline so far)"
    full = s["experiments"] - s["baseline_runs"] - s.get("screened", 0)
    not_counted = "the baseline and screening runs" if s.get("screened") else "the baseline"
    return f"{100 * s['keep_rate']:.0f}% ({s['kept']}/{full}, {not_counted} not counted)"


def noise_text(s, unknown):
    if s["noise_std"] is not None:
        return f"{fmt(s['threshold'], '.6f', unknown)} (baseline noise std {s['noise_std']:.6f})"
    return f"{fmt(s['threshold'], '.6f', 'n/a')} (noise not measured)"


def summary_lines(s, from_tsv=False):
    """The summary of one campaign as plain text lines."""
    unknown = "n/a (results.tsv does not record it)" if from_tsv else "n/a"
    lines = [f"campaign {s['tag']}: {counts_text(s)}"
             + (f", workers: {', '.join(s['workers'])}" if len(s['workers']) > 1 else "")]
    lines.append(f"  baseline val_bpb:  {fmt(s['baseline'])}")
    lines.append(f"  best val_bpb:      {best_text(s)}")
    if s["improvement"] is not None:
        lines.append(f"  improvement:       {s['improvement']:.6f} ({s['improvement_pct']:.2f}%)")
    else:
        lines.append("  improvement:       n/a")
    lines.append(f"  keep rate:         {keep_rate_text(s)}")
    causes = ", ".join(f"{k} x{v}" for k, v in s["crash_causes"].items()) or "none"
    lines.append(f"  failures:          {s['failed']} ({causes})")
    lines.append(f"  noise threshold:   {noise_text(s, unknown)}")
    lines.append(f"  experiments/hour:  {fmt(s['per_hour'], '.1f', unknown)}")
    lines.append(f"  profile / device:  {s['profile'] or unknown} / {s['device'] or unknown}")
    return lines


# ---------------------------------------------------------------------------------------------
# the logs

def loss_curve(text):
    """[(step, loss)] from a log's step lines (old logs separate them with '\\r', new ones with newlines)."""
    curve = {}
    for m in STEP_LINE.finditer(text):
        try:
            loss = float(m.group(2))
        except ValueError:
            continue
        if math.isfinite(loss):
            curve[int(m.group(1))] = loss
    return sorted(curve.items())


def own_log(row, owners):
    """(path of the row's own run log or None, why there is none)."""
    path = row.get("log_path")
    if not path:
        return None, "no log: the experiment never ran" if row["status"] == "invalid" else "no log recorded"
    if owners.get(path, row["id"]) != row["id"]:
        return None, f"log overwritten by #{owners[path]}"
    if not os.path.isfile(path):
        return None, f"log not found: {path}"
    if row.get("ended_at") and os.path.getmtime(path) > row["ended_at"] + LOG_SLACK:
        return None, "log rewritten after the experiment ended"
    return path, None


def copy_logs(rows, owners, folder):
    """Copy each row's own log into folder (the ledger's last lines where it has none); each row gets
    `log_href` (relative to the page, or None), `log_note` and `loss` (its loss curve, [] without a log)."""
    shutil.rmtree(folder, ignore_errors=True)  # the folder is the report's own: no logs of a previous one
    folder.mkdir(parents=True)
    for r in rows:
        path, r["log_note"] = own_log(r, owners)
        name = f"{r['id']}-{gitutil.short(r.get('commit_sha'))}" if r.get("commit_sha") else str(r["id"])
        r["log_href"], r["loss"] = None, []
        if path:
            shutil.copyfile(path, folder / f"{name}.log")
            r["log_href"] = f"{folder.name}/{name}.log"
            r["loss"] = loss_curve(Path(path).read_text(encoding="utf-8", errors="replace"))
        elif r.get("log_tail"):
            (folder / f"{name}.tail.log").write_text(r["log_tail"] + "\n", encoding="utf-8")
            r["log_href"] = f"{folder.name}/{name}.tail.log"
            r["log_note"] += "; its last lines are kept in the ledger"


# ---------------------------------------------------------------------------------------------
# the plot

def short(text, limit=40):
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def running_best(campaign):
    """[(experiment #, best)] of one campaign from its first keep on: after each experiment, the best as the
    keep rule measures it (ledger.reference_of: the lowest mean of a kept program's full-budget runs), not
    the luckiest single draw, which the decisions never used."""
    runs, means, steps = {}, {}, []
    for i, r in enumerate(campaign, start=1):
        if r["status"] in ("keep", "discard") and r.get("val_bpb") is not None:
            program = r.get("commit_sha") or f"row {r.get('id')}"
            runs.setdefault(program, []).append(r)
            mean = reference_of(runs[program])  # None while the program has no keep
            if mean is not None:
                means[program] = mean
        if means:
            steps.append((i, min(means.values())))
    return steps


def y_range(rows):
    """From just below the lowest result to just above the highest of what must be seen: the baselines,
    every kept point and the running best. Crashes don't count; discards above are drawn off the top."""
    values = [r["val_bpb"] for r in rows if not is_failed(r)]
    if not values:
        return 0.0, 1.0
    campaigns = [[r for r in rows if r["tag"] == t] for t in dict.fromkeys(r["tag"] for r in rows)]
    shown = [b for b in map(baseline_of, campaigns) if b is not None]
    shown += [r["val_bpb"] for r in rows if r["status"] == "keep" and not is_failed(r)]
    shown += [best for campaign in campaigns for _, best in running_best(campaign)]
    lo, hi = min(values), max(shown) if shown else max(values)
    if hi <= lo:  # nothing beat the baseline yet: show how far off the tries were
        hi = max(values)
    span = hi - lo if hi > lo else max(abs(hi) * 0.01, 1e-3)
    return lo - 0.15 * span, hi + 0.25 * span


def plot_progress(rows, path):
    """progress.png: one panel per (campaign, worker) series, all on the same y-axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tags_in_order = list(dict.fromkeys(r["tag"] for r in rows))
    series = {}
    for r in rows:
        series.setdefault((r["tag"], r.get("worker") or ""), []).append(r)
    series = dict(sorted(series.items(), key=lambda kv: (tags_in_order.index(kv[0][0]), kv[0][1])))
    tags = {r["tag"] for r in rows}
    bottom, top = y_range(rows)
    fig, axes = plt.subplots(len(series), 1, figsize=(14, 2 + 4.5 * len(series)), squeeze=False)
    kept = sum(r["status"] == "keep" and not is_failed(r) and not r.get("is_baseline") for r in rows)
    fig.suptitle(f"{counted(len(rows), 'experiment')}, {kept} kept", fontsize=14)
    for ax, ((tag, worker), mine) in zip(axes[:, 0], series.items()):
        campaign = [r for r in rows if r["tag"] == tag]
        number = {id(r): i for i, r in enumerate(campaign, start=1)}  # x = experiment # in the campaign
        xs = lambda some: [number[id(r)] for r in some]
        ok = [r for r in mine if not is_failed(r)]
        keeps = [r for r in ok if r["status"] == "keep"]
        screened = [r for r in ok if r["status"] == "screened" and r["val_bpb"] <= top]
        discards = [r for r in ok if r["status"] not in ("keep", "screened")]
        inside = [r for r in discards if r["val_bpb"] <= top]
        above = [r for r in discards if r["val_bpb"] > top]
        failed = [r for r in mine if is_failed(r)]
        if inside:
            ax.scatter(xs(inside), [r["val_bpb"] for r in inside], c="#aaaaaa", s=14, label="discard", zorder=2)
        if above:
            ax.scatter(xs(above), [top - 0.01 * (top - bottom)] * len(above), c="#aaaaaa", marker="^", s=20,
                       label="discard (off the top)", zorder=2)
        if screened:  # on a shorter budget: not comparable with the full runs, drawn apart
            ax.scatter(xs(screened), [r["val_bpb"] for r in screened], facecolors="none", edgecolors="#1f77b4",
                       marker="s", s=16, label="screened (short run, not compared)", zorder=2)
        if failed:
            ax.scatter(xs(failed), [bottom + 0.02 * (top - bottom)] * len(failed), c="#d62728", marker="x",
                       s=24, label="crash / timeout / invalid", zorder=2)
        if keeps:
            ax.scatter(xs(keeps), [r["val_bpb"] for r in keeps], c="#2ca02c", s=36, edgecolors="black",
                       linewidths=0.5, label="keep", zorder=4)
        for r in keeps:
            ax.annotate(short(r.get("description")), (number[id(r)], r["val_bpb"]), xytext=(4, 6),
                        textcoords="offset points", fontsize=7, rotation=30, color="#1a6b1a", clip_on=True)
        steps = running_best(campaign)  # the campaign's, shared by all its workers
        if steps:
            steps.append((steps[-1][0] + 0.5, steps[-1][1]))  # the last best as a step of its own, not a dot
            ax.step([x for x, _ in steps], [y for _, y in steps], where="post", c="#2ca02c", alpha=0.6,
                    lw=1.5, label="running best (mean of a kept program's runs)", zorder=3)
        if not ok:
            ax.text(0.5, 0.5, "no successful experiments", transform=ax.transAxes, ha="center", color="#d62728")
        ax.set_ylim(bottom, top)
        ax.set_xlim(0.5, len(campaign) + 0.5 + 0.06 * len(campaign))  # room for the last label
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("experiment #")
        ax.set_ylabel("val_bpb (lower is better)")
        ax.grid(alpha=0.25)
        name = " / ".join(str(p) for p in ((tag if len(tags) > 1 else None), worker) if p)
        if len(series) > 1:
            kept = sum(not r.get("is_baseline") for r in keeps)
            ax.set_title(f"{name}: {counted(len(mine), 'experiment')}, {kept} kept", fontsize=11)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tags(rows, path):
    """tags.png: the kept val_bpb of each campaign against its experiment #, one line per tag."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(14, 5))
    for tag in dict.fromkeys(r["tag"] for r in rows):
        campaign = [r for r in rows if r["tag"] == tag]
        kept = [(i, r["val_bpb"]) for i, r in enumerate(campaign, start=1)
                if r["status"] == "keep" and not is_failed(r)]
        if kept:
            ax.plot([x for x, _ in kept], [y for _, y in kept], marker="o", ms=4, drawstyle="steps-post",
                    label=f"{tag} ({counted(len(campaign), 'experiment')})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment # in its campaign")
    ax.set_ylabel("val_bpb of the kept experiments (lower is better)")
    ax.grid(alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loss_charts(rows):
    """Each row with a loss curve gets `loss_png`: its curve (PNG bytes) over its campaign's baseline's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = {}
    for r in rows:
        if r.get("is_baseline") and r.get("loss") and r["tag"] not in baseline:
            baseline[r["tag"]] = r
    fig, ax = plt.subplots(figsize=(6, 2.2))  # one figure, redrawn: a campaign has hundreds of these
    for r in rows:
        r["loss_png"] = None
        if not r.get("loss"):
            continue
        ax.clear()
        base = baseline.get(r["tag"])
        if base is not None and base is not r:
            ax.plot(*zip(*base["loss"]), c="#aaaaaa", lw=1, label=f"baseline #{base['id']}")
        ax.plot(*zip(*r["loss"]), c="#1f77b4", lw=1.2, label=f"#{r['id']}")
        # the first tenth of training (the steep fall) would flatten the part worth comparing
        curves = [r["loss"]] + ([base["loss"]] if base is not None else [])
        later = [loss for curve in curves for _, loss in curve[len(curve) // 10:]]
        low, high = min(loss for curve in curves for _, loss in curve), max(later)
        ax.set_ylim(low - 0.05 * (high - low or 1), high + 0.05 * (high - low or 1))
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        r["loss_png"] = buffer.getvalue()
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the page

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: .2em 1.5em; }
dl.summary dt { color: #666; } dl.summary dd { margin: 0; font-family: ui-monospace, monospace; }
img.plot { max-width: 100%; border: 1px solid #eee; } img.loss { display: block; margin: .4em 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: .25em .5em; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
th { background: #f6f6f6; cursor: pointer; user-select: none; white-space: nowrap; }
th[data-dir=asc]::after { content: " \\25B2"; } th[data-dir=desc]::after { content: " \\25BC"; }
td.num { text-align: right; font-family: ui-monospace, monospace; }
tr.keep td { background: #eef8ee; } tr.crash td, tr.timeout td, tr.invalid td { color: #a33; }
tr.screened td { color: #1f5f99; font-style: italic; }
details { margin: .4em 0; border: 1px solid #ddd; border-radius: 4px; padding: .3em .6em; }
details.keep { border-left: 4px solid #2ca02c; } details.crash, details.timeout, details.invalid { border-left: 4px solid #d62728; }
summary { cursor: pointer; } .add { color: #1a7f37; } .del { color: #cf222e; } pre.diff { overflow-x: auto; font-size: 12px; background: #fafafa; padding: .5em; }
.note { color: #777; } .starved { color: #b35900; font-weight: bold; }
"""

PAGE_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var asc = th.getAttribute("data-dir") !== "asc";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
    th.setAttribute("data-dir", asc ? "asc" : "desc");
    function key(row) {
      var cell = row.cells[col], v = cell.getAttribute("data-v");
      if (v === null) return cell.textContent.trim().toLowerCase();
      return v === "" ? null : parseFloat(v);
    }
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === y) return 0;
      if (x === null) return 1;           // empty cells last, either way
      if (y === null) return -1;
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
// a link to #exp-N opens that experiment's details
function openTarget() {
  var target = document.getElementById(location.hash.slice(1));
  if (target && target.tagName === "DETAILS") target.open = true;
}
window.addEventListener("hashchange", openTarget);
openTarget();
"""


def esc(value):
    return html.escape(str(value), quote=True)


def memory_gb(row):
    return row["peak_vram_mb"] / 1024 if row.get("peak_vram_mb") else None


def val_text(row):
    return "" if is_failed(row) else f"{row['val_bpb']:.6f}"


def status_text(row):
    return row["status"] + (" (baseline)" if row.get("is_baseline") else "")


NUMBER_COLUMNS = {  # header: (row -> number or None, format)
    "val_bpb": (lambda r: None if is_failed(r) else r["val_bpb"], ".6f"),
    "vs baseline": (lambda r: r.get("vs_baseline"), "+.6f"),
    "gain": (lambda r: r.get("gain"), "+.6f"),
    "memory GB": (memory_gb, ".1f"),
    "train s": (lambda r: r.get("training_seconds"), ".1f"),
    "steps": (lambda r: r.get("num_steps"), "d"),
    "tok/s": (tokens_per_second, ",.0f"),
}
TEXT_COLUMNS = {  # header: row -> text
    "tag": lambda r: r.get("tag") or "", "worker": lambda r: r.get("worker") or "",
    "commit": lambda r: (r.get("commit_sha") or "")[:7], "status": status_text,
    "starved": lambda r: "starved" if r.get("starved") else "",
    "description": lambda r: r.get("description") or "", "cause": lambda r: r.get("cause") or "",
}


def columns(rows):
    """The table's headers; `starved` only where the ledger records it."""
    starved = ["starved"] if any(r.get("starved") is not None for r in rows) else []
    return ["#", "tag", "worker", "commit", "status", "val_bpb", "vs baseline", "gain", "memory GB", "train s",
            "steps", "tok/s", *starved, "description", "cause", "log"]


def cell_html(header, r):
    if header == "#":
        return f'<td class="num" data-v="{r["id"]}"><a href="#exp-{r["id"]}">{r["id"]}</a></td>'
    if header == "log":
        return f'<td><a href="{esc(r["log_href"])}">log</a></td>' if r.get("log_href") else "<td></td>"
    if header in NUMBER_COLUMNS:
        get, spec = NUMBER_COLUMNS[header]
        value = get(r)
        if value is None:
            return '<td class="num" data-v=""></td>'
        return f'<td class="num" data-v="{value!r}">{esc(format(value, spec))}</td>'
    return f"<td>{esc(TEXT_COLUMNS[header](r))}</td>"


def table_html(rows):
    headers = columns(rows)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(f'<tr class="{esc(r["status"])}">{"".join(cell_html(h, r) for h in headers)}</tr>' for r in rows)
    return (f'<table class="sortable" id="experiments"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table>')


def diff_html(diff):
    """A unified diff, escaped, its added and removed lines coloured."""
    out = []
    for line in diff.splitlines():
        kind = "add" if line.startswith("+") and not line.startswith("+++") else \
               "del" if line.startswith("-") and not line.startswith("---") else None
        out.append(f'<span class="{kind}">{esc(line)}</span>' if kind else esc(line))
    return "\n".join(out)


def label_html(r):
    """One line naming an experiment: #, status, val_bpb, commit, description."""
    where = f" ({r['tag']}{' / ' + r['worker'] if r.get('worker') else ''})"
    return (f"#{r['id']} {esc(status_text(r))} {val_text(r) or '&mdash;'} "
            f"<code>{esc((r.get('commit_sha') or '')[:7])}</code> {esc(r.get('description') or '')}"
            f' <span class="note">{esc(where)}</span>')


def top_hits_html(rows, from_tsv):
    hits = sorted((r for r in rows if r.get("gain") is not None), key=lambda r: -r["gain"])
    if not hits:
        return '<p class="note">No experiment improved on the baseline yet.</p>'
    parts = ['<ol id="top-hits">']
    for r in hits:
        label = f"{r['gain']:+.6f} &rarr; {label_html(r)}"
        if from_tsv:
            parts.append(f"<li>{label}</li>")
        else:
            diff = diff_html(r.get("diff") or "(no diff recorded)")
            parts.append(f'<li><details><summary>{label}</summary><pre class="diff">{diff}</pre></details></li>')
    parts.append("</ol>")
    return "".join(parts)


def facts_html(r):
    """What ran: status and cause, steps, tokens/s, time, memory, seed, proposer, a starved machine."""
    facts = [esc(status_text(r)) + (f": {esc(r['cause'])}" if r.get("cause") else "")]
    if r.get("num_steps") is not None:
        facts.append(f"{r['num_steps']} steps")
    if tokens_per_second(r):
        facts.append(f"{tokens_per_second(r):,.0f} tokens/s")
    if r.get("training_seconds") is not None:
        facts.append(f"{r['training_seconds']:.1f} s of training")
    if memory_gb(r):
        facts.append(f"{memory_gb(r):.1f} GB")
    if r.get("seed") is not None:
        facts.append(f"seed {r['seed']}")
    if r.get("proposer"):
        facts.append(esc(r["proposer"] + (f" ({r['model']})" if r.get("model") else "")))
    if r.get("starved"):
        facts.append('<span class="starved">starved: other processes took a significant share of the machine '
                     'during the run</span>')
    log = f'<a href="{esc(r["log_href"])}">log</a>' if r.get("log_href") else ""
    note = f'<span class="note">{esc(r["log_note"])}</span>' if r.get("log_note") else ""
    return " &middot; ".join(facts + [x for x in (log, note) if x])


def experiment_html(r):
    diff = r.get("diff")
    if diff is None:
        diff = "(no diff recorded)"
    elif not diff:
        diff = "(no change: the baseline)" if r.get("is_baseline") else "(no change)"
    loss = (f'<img class="loss" alt="training loss of #{r["id"]}" '
            f'src="data:image/png;base64,{base64.b64encode(r["loss_png"]).decode("ascii")}">'
            if r.get("loss_png") else '<p class="note">no loss curve: no step lines in a log of this run</p>')
    return (f'<details class="experiment {esc(r["status"])}" id="exp-{r["id"]}"><summary>{label_html(r)}</summary>'
            f"<p>{facts_html(r)}</p>{loss}<pre class=\"diff\">{diff_html(diff)}</pre></details>")


def summary_html(s, from_tsv):
    unknown = "n/a (not in results.tsv)" if from_tsv else "n/a"
    improvement = ("n/a" if s["improvement"] is None
                   else f"{s['improvement']:.6f} ({s['improvement_pct']:.2f}%)")
    causes = ", ".join(f"{k} x{v}" for k, v in s["crash_causes"].items()) or "none"
    items = [
        ("experiments", f"{counts_text(s)}, {s['failed']} failed"),
        ("baseline val_bpb", fmt(s["baseline"])),
        ("best val_bpb", best_text(s)),
        ("improvement", improvement),
        ("keep rate", keep_rate_text(s)),
        ("failures", causes),
        ("noise threshold", noise_text(s, unknown)),
        ("experiments per hour", fmt(s["per_hour"], ".1f", unknown)),
        ("profile", s["profile"] or unknown),
        ("device", s["device"] or unknown),
    ]
    if s["workers"]:
        items.append(("workers", ", ".join(s["workers"])))
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return f"<h3>campaign {esc(s['tag'])}</h3><dl class=\"summary\">{dl}</dl>"


def image_html(png, id, alt):
    return f'<img class="plot" id="{id}" alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def report_html(title, summaries, rows, progress_png, tags_png, source, from_tsv):
    generated = time.strftime("%Y-%m-%d %H:%M")
    compared = ("<h2>Campaigns compared</h2>"
                + image_html(tags_png, "tags-plot", "val_bpb of the kept experiments of each campaign")) \
        if tags_png else ""
    if from_tsv:
        experiments = ('<p class="note">results.tsv records no diffs, steps or logs: run campaigns with the '
                       'harness (autoresearch loop / run) to keep them.</p>')
    else:
        experiments = ('<p class="note">Each experiment: what ran, its training loss (grey: the baseline\'s), '
                       'its log and its diff.</p>' + "".join(experiment_html(r) for r in rows))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="note">from {esc(source)}, {esc(generated)}</p>
<h2>Summary</h2>
{"".join(summary_html(s, from_tsv) for s in summaries)}
<h2>Progress</h2>
{image_html(progress_png, "plot", "val_bpb of each experiment")}
{compared}
<h2>Top hits</h2>
<p class="note">Keeps ranked by how much they lowered the best val_bpb before them (the baseline not counted).</p>
{top_hits_html(rows, from_tsv)}
<h2>All experiments</h2>
<p class="note">Click a column header to sort, a number to see the experiment.</p>
{table_html(rows)}
<h2>Experiments</h2>
{experiments}
<script>{PAGE_JS}</script>
</body></html>
"""


# ---------------------------------------------------------------------------------------------
# the command

def load(tags=None, results_path=None, repo="."):
    """(rows with their baselines, gains and tokens/s; summaries; source; name) of the campaigns asked for."""
    if results_path:
        rows = read_results_tsv(results_path)
        tags = list(dict.fromkeys(r["tag"] for r in rows))
        campaigns = {tag: {} for tag in tags}
        source, name = f"results file {Path(results_path).resolve()}", Path(results_path).stem
    else:
        rows, campaigns, tags = load_ledger(tags, repo)
        source, name = f"ledger {ledger_path(repo)}", "+".join(tags)
    mark_baselines(rows)
    for r in rows:
        r["tokens_per_second"] = tokens_per_second(r)
    for tag in tags:
        with_improvements([r for r in rows if r["tag"] == tag])
    summaries = [summarize(tag, [r for r in rows if r["tag"] == tag], campaigns[tag]) for tag in tags]
    return rows, summaries, source, name


def build_report(tags=None, results_path=None, out=None, repo="."):
    """Write progress.png, report.html and report_logs/; return (summary text lines, out folder)."""
    rows, summaries, source, name = load(tags, results_path, repo)
    from_tsv = bool(results_path)
    out = Path(out) if out else checkout_root(repo) / "reports" / name
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the output folder {out}: {e.strerror} (pass another with --out)")
    png = out / "progress.png"
    plot_progress(rows, png)
    tags_png = None
    if len(summaries) > 1:
        plot_tags(rows, out / "tags.png")
        tags_png = (out / "tags.png").read_bytes()
    if not from_tsv:
        copy_logs(rows, log_owners(repo), out / "report_logs")
        loss_charts(rows)
    page = report_html(f"autoresearch report: {name}", summaries, rows, png.read_bytes(), tags_png, source, from_tsv)
    (out / "report.html").write_text(page, encoding="utf-8")
    lines = [f"source: {source}"]
    for s in summaries:
        lines += summary_lines(s, from_tsv=from_tsv)
    hits = sorted((r for r in rows if r.get("gain") is not None), key=lambda r: -r["gain"])[:5]
    if hits:
        lines.append("top hits:")
        lines += [f"  {r['gain']:+.6f}  {r['val_bpb']:.6f}  {(r.get('commit_sha') or '')[:7]}  "
                  f"{short(r.get('description'), 60)}" for r in hits]
    lines += [f"wrote {png}", f"wrote {out / 'report.html'}"]
    return lines, out


def report_json(tags=None, results_path=None, repo="."):
    """The summaries and rows as a JSON text (the best row named by its id)."""
    rows, summaries, source, _ = load(tags, results_path, repo)
    summaries = [{**{k: v for k, v in s.items() if k != "best_row"},
                  "best_id": s["best_row"]["id"] if s["best_row"] else None} for s in summaries]
    return json.dumps(dict(source=source, summaries=summaries, rows=rows), indent=1)


def cmd_report(args):
    try:
        if args.json:
            print(report_json(args.tag, args.results))
            return 0
        lines, _ = build_report(args.tag, args.results, args.out)
    except ReportError as e:  # a usage or precondition error (cli.EXIT_CODES)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def register(subparsers):
    p = subparsers.add_parser("report", help="progress plot, HTML report and summary of a campaign",
                              description="Write DIR/progress.png, DIR/report.html and DIR/report_logs/ for "
                                          "one or more campaigns and print their summary.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--tag", action="append", metavar="T",
                        help="campaign tag (repeat for several; default: the latest campaign)")
    source.add_argument("--results", metavar="PATH",
                        help="read a results.tsv (or `autoresearch log --format tsv` output) instead of the ledger")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: reports/<name> under the checkout: the tag, the tags joined "
                        "by '+', or the results file's name without .tsv)")
    p.add_argument("--json", action="store_true",
                   help="print the summaries and rows as JSON instead of writing the report")
    p.set_defaults(func=cmd_report)
