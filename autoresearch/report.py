"""
`autoresearch report`: the progress plot, a self-contained HTML report and a terminal summary
of one or more campaigns, read from the ledger (or from a reference-format results.tsv).
"""

import base64
import html
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from autoresearch import gitutil
from autoresearch.ledger import Ledger, ledger_path

FAILED = ("crash", "timeout", "invalid")  # statuses that produced no usable val_bpb
TSV_HEADER = ["commit", "val_bpb", "memory_gb", "status", "description"]
TSV_STATUSES = ("keep", "discard", "crash")


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
    """Rows of a reference results.tsv as ledger-like dicts (the columns it lacks are None)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no such results file: {path} (pass the path of a results.tsv)")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header = lines[0].strip().split("\t") if lines else []
    if header[:5] != TSV_HEADER:  # extra columns after these (autoresearch log --format tsv) are fine
        raise ReportError(f"{path}: first line must be the header "
                          f"'{chr(9).join(TSV_HEADER)}' (tab-separated, as program.md writes it)")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 5:
            raise ReportError(f"{path} line {number}: expected 5 tab-separated columns "
                              f"(commit, val_bpb, memory_gb, status, description), got {len(cells)}")
        commit, val, mem, status = cells[:4]
        description = "\t".join(cells[4:]) if len(header) == 5 else cells[4]
        try:
            val_bpb, memory_gb = float(val), float(mem)
        except ValueError:
            raise ReportError(f"{path} line {number}: val_bpb {val!r} and memory_gb {mem!r} must be numbers")
        status = status.strip()
        if status not in TSV_STATUSES:
            raise ReportError(f"{path} line {number}: status {status!r} is not one of "
                              f"{', '.join(TSV_STATUSES)}")
        rows.append(dict(id=len(rows) + 1, tag=path.stem, worker=None, commit_sha=commit.strip(),
                         val_bpb=val_bpb, peak_vram_mb=memory_gb * 1024, status=status,
                         description=description.strip(), diff=None, cause=None, is_baseline=None))
    if not rows:
        raise ReportError(f"{path} has a header but no experiments yet")
    return rows


def load_ledger(tags, repo="."):
    """(rows, campaigns by tag, ledger path) for the given tags; the latest campaign when none."""
    ledger = open_ledger(repo, hint=", or pass --results results.tsv")
    everything = [r for r in ledger.experiments() if r["status"] != "running"]
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


# ---------------------------------------------------------------------------------------------
# numbers

def baseline_of(rows):
    """The baseline's val_bpb: the mean of the rows marked baseline, else the first keep."""
    marked = [r["val_bpb"] for r in rows if r.get("is_baseline") and not is_failed(r)]
    if marked:
        return statistics.fmean(marked)
    for wanted in ("keep", None):
        for r in rows:
            if not is_failed(r) and (wanted is None or r["status"] == wanted):
                return r["val_bpb"]
    return None


def with_improvements(rows):
    """Each keep of one campaign gets `gain`: how much it lowered the best val_bpb before it."""
    best = None
    for r in rows:
        r["gain"] = None
        if r["status"] != "keep" or is_failed(r):
            continue
        before = r.get("best_before")
        before = before if before else best
        if before is not None and not r.get("is_baseline"):
            r["gain"] = before - r["val_bpb"]
        best = r["val_bpb"] if best is None else min(best, r["val_bpb"])
    return rows


def summarize(tag, rows, campaign):
    """The numbers of one campaign, as a dict that the terminal, the page and the tests share."""
    done = [r for r in rows if not is_failed(r)]
    keeps = [r for r in done if r["status"] == "keep"]
    baseline = baseline_of(rows)
    best_row = min(keeps, key=lambda r: r["val_bpb"]) if keeps else None
    best = best_row["val_bpb"] if best_row else None
    causes = Counter(f"{r['status']}: {r.get('cause') or 'no cause recorded'}" for r in rows if is_failed(r))
    thresholds = [r.get("threshold") for r in rows if r.get("threshold") is not None]
    starts = [r["started_at"] for r in rows if r.get("started_at")]
    ends = [r["ended_at"] for r in rows if r.get("ended_at")]
    hours = (max(ends) - min(starts)) / 3600 if starts and ends and max(ends) > min(starts) else None
    s = dict(tag=tag, experiments=len(rows), kept=len(keeps), failed=len(rows) - len(done),
             baseline=baseline, best=best, best_row=best_row,
             keep_rate=len(keeps) / len(rows),
             crash_causes=dict(causes.most_common()),
             threshold=thresholds[-1] if thresholds else campaign.get("min_delta"),
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


def fmt(value, spec=".6f", missing="n/a"):
    return missing if value is None else format(value, spec)


def summary_lines(s, from_tsv=False):
    """The summary of one campaign as plain text lines."""
    unknown = "n/a (results.tsv does not record it)" if from_tsv else "n/a"
    lines = [f"campaign {s['tag']}: {s['experiments']} experiments, {s['kept']} kept"
             + (f", workers: {', '.join(s['workers'])}" if len(s['workers']) > 1 else "")]
    lines.append(f"  baseline val_bpb:  {fmt(s['baseline'])}")
    best = fmt(s["best"])
    if s["best_row"] is not None:
        best += f"  ({(s['best_row'].get('commit_sha') or '')[:7]} {s['best_row'].get('description') or ''})"
    lines.append(f"  best val_bpb:      {best}")
    if s["improvement"] is not None:
        lines.append(f"  improvement:       {s['improvement']:.6f} ({s['improvement_pct']:.2f}%)")
    else:
        lines.append("  improvement:       n/a")
    lines.append(f"  keep rate:         {100 * s['keep_rate']:.0f}% ({s['kept']}/{s['experiments']})")
    causes = ", ".join(f"{k} x{v}" for k, v in s["crash_causes"].items()) or "none"
    lines.append(f"  failures:          {s['failed']} ({causes})")
    noise = fmt(s["threshold"], ".6f", unknown)
    if s["noise_std"] is not None:
        noise += f" (baseline noise std {s['noise_std']:.6f})"
    lines.append(f"  noise threshold:   {noise}")
    lines.append(f"  experiments/hour:  {fmt(s['per_hour'], '.1f', unknown)}")
    lines.append(f"  profile / device:  {s['profile'] or unknown} / {s['device'] or unknown}")
    return lines


# ---------------------------------------------------------------------------------------------
# the plot

def short(text, limit=40):
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def y_range(rows):
    """From just below the best result to just above the baseline; crashes don't count."""
    values = [r["val_bpb"] for r in rows if not is_failed(r)]
    if not values:
        return 0.0, 1.0
    baselines = [b for b in (baseline_of([r for r in rows if r["tag"] == t]) for t in {r["tag"] for r in rows})
                 if b is not None]
    lo, hi = min(values), max(baselines) if baselines else max(values)
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
    kept = sum(r["status"] == "keep" and not is_failed(r) for r in rows)
    fig.suptitle(f"{len(rows)} experiments, {kept} kept", fontsize=14)
    for ax, ((tag, worker), mine) in zip(axes[:, 0], series.items()):
        campaign = [r for r in rows if r["tag"] == tag]
        number = {id(r): i for i, r in enumerate(campaign, start=1)}  # x = experiment # in the campaign
        xs = lambda some: [number[id(r)] for r in some]
        ok = [r for r in mine if not is_failed(r)]
        keeps = [r for r in ok if r["status"] == "keep"]
        discards = [r for r in ok if r["status"] != "keep"]
        inside = [r for r in discards if r["val_bpb"] <= top]
        above = [r for r in discards if r["val_bpb"] > top]
        failed = [r for r in mine if is_failed(r)]
        if inside:
            ax.scatter(xs(inside), [r["val_bpb"] for r in inside], c="#aaaaaa", s=14, label="discard", zorder=2)
        if above:
            ax.scatter(xs(above), [top - 0.01 * (top - bottom)] * len(above), c="#aaaaaa", marker="^", s=20,
                       label="discard (off the top)", zorder=2)
        if failed:
            ax.scatter(xs(failed), [bottom + 0.02 * (top - bottom)] * len(failed), c="#d62728", marker="x",
                       s=24, label="crash / timeout / invalid", zorder=2)
        if keeps:
            ax.scatter(xs(keeps), [r["val_bpb"] for r in keeps], c="#2ca02c", s=36, edgecolors="black",
                       linewidths=0.5, label="keep", zorder=4)
        for r in keeps:
            ax.annotate(short(r.get("description")), (number[id(r)], r["val_bpb"]), xytext=(4, 6),
                        textcoords="offset points", fontsize=7, rotation=30, color="#1a6b1a", clip_on=True)
        # the campaign's running best, shared by all its workers
        best, steps = None, []
        for i, r in enumerate(campaign, start=1):
            if r["status"] == "keep" and not is_failed(r):
                best = r["val_bpb"] if best is None else min(best, r["val_bpb"])
            if best is not None:
                steps.append((i, best))
        if steps:
            ax.step([x for x, _ in steps], [y for _, y in steps], where="post", c="#2ca02c", alpha=0.6,
                    lw=1.5, label="running best", zorder=3)
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
            ax.set_title(f"{name}: {len(mine)} experiments, {len(keeps)} kept", fontsize=11)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the page

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: .2em 1.5em; }
dl.summary dt { color: #666; } dl.summary dd { margin: 0; font-family: ui-monospace, monospace; }
img.plot { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: .25em .5em; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
th { background: #f6f6f6; cursor: pointer; user-select: none; white-space: nowrap; }
th[data-dir=asc]::after { content: " \\25B2"; } th[data-dir=desc]::after { content: " \\25BC"; }
td.num { text-align: right; font-family: ui-monospace, monospace; }
tr.keep td { background: #eef8ee; } tr.crash td, tr.timeout td, tr.invalid td { color: #a33; }
details { margin: .4em 0; border: 1px solid #ddd; border-radius: 4px; padding: .3em .6em; }
summary { cursor: pointer; } .add { color: #1a7f37; } .del { color: #cf222e; } pre.diff { overflow-x: auto; font-size: 12px; background: #fafafa; padding: .5em; }
.note { color: #777; }
"""

SORT_JS = """
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
"""

COLUMNS = [  # header, row -> (value for sorting or None for text, text shown)
    ("#", lambda r: (r["id"], str(r["id"]))),
    ("tag", lambda r: (None, r.get("tag") or "")),
    ("worker", lambda r: (None, r.get("worker") or "")),
    ("commit", lambda r: (None, (r.get("commit_sha") or "")[:7])),
    ("status", lambda r: (None, r["status"] + (" (baseline)" if r.get("is_baseline") else ""))),
    ("val_bpb", lambda r: (None if is_failed(r) else r["val_bpb"], "" if is_failed(r) else f"{r['val_bpb']:.6f}")),
    ("gain", lambda r: (r.get("gain"), fmt(r.get("gain"), "+.6f", ""))),
    ("memory GB", lambda r: (r.get("peak_vram_mb") and r["peak_vram_mb"] / 1024,
                             fmt(r.get("peak_vram_mb") and r["peak_vram_mb"] / 1024, ".1f", ""))),
    ("train s", lambda r: (r.get("training_seconds"), fmt(r.get("training_seconds"), ".1f", ""))),
    ("description", lambda r: (None, r.get("description") or "")),
    ("cause", lambda r: (None, r.get("cause") or "")),
]


def esc(value):
    return html.escape(str(value), quote=True)


def table_html(rows):
    head = "".join(f"<th>{esc(h)}</th>" for h, _ in COLUMNS)
    body = []
    for r in rows:
        cells = []
        for _, get in COLUMNS:
            sort_value, text = get(r)
            if isinstance(sort_value, (int, float)):
                cells.append(f'<td class="num" data-v="{sort_value!r}">{esc(text)}</td>')
            elif sort_value is None and text == "" and _ in ("val_bpb", "gain", "memory GB", "train s"):
                cells.append('<td class="num" data-v=""></td>')
            else:
                cells.append(f"<td>{esc(text)}</td>")
        body.append(f'<tr class="{esc(r["status"])}">{"".join(cells)}</tr>')
    return (f'<table class="sortable" id="experiments"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def diff_html(diff):
    """A unified diff, escaped, its added and removed lines coloured."""
    out = []
    for line in diff.splitlines():
        kind = "add" if line.startswith("+") and not line.startswith("+++") else \
               "del" if line.startswith("-") and not line.startswith("---") else None
        out.append(f'<span class="{kind}">{esc(line)}</span>' if kind else esc(line))
    return "\n".join(out)


def top_hits_html(rows, from_tsv):
    hits = sorted((r for r in rows if r.get("gain") is not None), key=lambda r: -r["gain"])
    if not hits:
        return '<p class="note">No experiment improved on the baseline yet.</p>'
    parts = []
    if from_tsv:
        parts.append('<p class="note">results.tsv records no diffs: run campaigns with the harness '
                     '(autoresearch loop) to keep each experiment\'s diff.</p>')
    parts.append("<ol id=\"top-hits\">")
    for r in hits:
        label = (f"{esc(r['gain'] and format(r['gain'], '+.6f'))} &rarr; {r['val_bpb']:.6f} "
                 f"<code>{esc((r.get('commit_sha') or '')[:7])}</code> {esc(r.get('description') or '')}"
                 + (f" <span class=\"note\">({esc(r['tag'])}{' / ' + esc(r['worker']) if r.get('worker') else ''})</span>"))
        if from_tsv:
            parts.append(f"<li>{label}</li>")
        else:
            diff = diff_html(r.get("diff") or "(no diff recorded)")
            parts.append(f'<li><details><summary>{label}</summary><pre class="diff">{diff}</pre></details></li>')
    parts.append("</ol>")
    return "".join(parts)


def summary_html(s, from_tsv):
    unknown = "n/a (not in results.tsv)" if from_tsv else "n/a"
    best = fmt(s["best"])
    if s["best_row"] is not None:
        best += f" ({(s['best_row'].get('commit_sha') or '')[:7]} {s['best_row'].get('description') or ''})"
    improvement = ("n/a" if s["improvement"] is None
                   else f"{s['improvement']:.6f} ({s['improvement_pct']:.2f}%)")
    causes = ", ".join(f"{k} &times;{v}" for k, v in ((esc(k), v) for k, v in s["crash_causes"].items()))
    noise = fmt(s["threshold"], ".6f", unknown)
    if s["noise_std"] is not None:
        noise += f" (baseline noise std {s['noise_std']:.6f})"
    items = [
        ("experiments", f"{s['experiments']} ({s['kept']} kept, {s['failed']} failed)"),
        ("baseline val_bpb", fmt(s["baseline"])),
        ("best val_bpb", best),
        ("improvement", improvement),
        ("keep rate", f"{100 * s['keep_rate']:.0f}%"),
        ("failures", None),
        ("noise threshold", noise),
        ("experiments per hour", fmt(s["per_hour"], ".1f", unknown)),
        ("profile", s["profile"] or unknown),
        ("device", s["device"] or unknown),
    ]
    if s["workers"]:
        items.append(("workers", ", ".join(s["workers"])))
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{(causes or 'none') if v is None else esc(v)}</dd>" for k, v in items)
    return f"<h3>campaign {esc(s['tag'])}</h3><dl class=\"summary\">{dl}</dl>"


def report_html(title, summaries, rows, png_bytes, source, from_tsv):
    image = base64.b64encode(png_bytes).decode("ascii")
    generated = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="note">from {esc(source)}, {esc(generated)}</p>
<h2>Summary</h2>
{"".join(summary_html(s, from_tsv) for s in summaries)}
<h2>Progress</h2>
<img class="plot" id="plot" alt="val_bpb of each experiment" src="data:image/png;base64,{image}">
<h2>Top hits</h2>
<p class="note">Keeps ranked by how much they lowered the best val_bpb before them.</p>
{top_hits_html(rows, from_tsv)}
<h2>All experiments</h2>
<p class="note">Click a column header to sort.</p>
{table_html(rows)}
<script>{SORT_JS}</script>
</body></html>
"""


# ---------------------------------------------------------------------------------------------
# the command

def build_report(tags=None, results=None, out=None, repo="."):
    """Write progress.png and report.html; return (summary text lines, out folder)."""
    if results:
        rows = read_results_tsv(results)
        campaigns, tags = {rows[0]["tag"]: {}}, [rows[0]["tag"]]
        source, name = f"results file {Path(results).resolve()}", Path(results).stem
    else:
        rows, campaigns, tags = load_ledger(tags, repo)
        source, name = f"ledger {ledger_path(repo)}", "+".join(tags)
    for tag in tags:
        with_improvements([r for r in rows if r["tag"] == tag])
    summaries = [summarize(tag, [r for r in rows if r["tag"] == tag], campaigns[tag]) for tag in tags]
    out = Path(out) if out else checkout_root(repo) / "reports" / name
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the output folder {out}: {e.strerror} (pass another with --out)")
    png = out / "progress.png"
    plot_progress(rows, png)
    page = report_html(f"autoresearch report: {name}", summaries, rows, png.read_bytes(), source, bool(results))
    (out / "report.html").write_text(page, encoding="utf-8")
    lines = [f"source: {source}"]
    for s in summaries:
        lines += summary_lines(s, from_tsv=bool(results))
    hits = sorted((r for r in rows if r.get("gain") is not None), key=lambda r: -r["gain"])[:5]
    if hits:
        lines.append("top hits:")
        lines += [f"  {r['gain']:+.6f}  {r['val_bpb']:.6f}  {(r.get('commit_sha') or '')[:7]}  "
                  f"{short(r.get('description'), 60)}" for r in hits]
    lines += [f"wrote {png}", f"wrote {out / 'report.html'}"]
    return lines, out


def cmd_report(args):
    try:
        lines, _ = build_report(args.tag, args.results, args.out)
    except ReportError as e:  # a usage or precondition error (cli.EXIT_CODES)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def register(subparsers):
    p = subparsers.add_parser("report", help="progress plot, HTML report and summary of a campaign",
                              description="Write DIR/progress.png and DIR/report.html for one or more "
                                          "campaigns and print their summary.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--tag", action="append", metavar="T",
                        help="campaign tag (repeat for several; default: the latest campaign)")
    source.add_argument("--results", metavar="PATH",
                        help="read a reference-format results.tsv instead of the ledger")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: reports/<tag> under the checkout)")
    p.set_defaults(func=cmd_report)
