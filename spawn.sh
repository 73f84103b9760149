#!/usr/bin/env bash
# Launch several coding agents at once, one per GPU, each in its own git worktree, all in one tmux session.
#
#   ./spawn.sh launch <tag> <agent>:<gpu> [<agent>:<gpu> ...]   e.g.  ./spawn.sh launch nov26 claude:0 opus:1 codex:2
#   ./spawn.sh status                                           sessions, workers, their last results
#   ./spawn.sh stop <tag>                                       kill the session, remove the worktrees (branches stay)
#
# Agents: claude (Claude Code, default model), sonnet, opus, haiku (Claude Code with that model), codex.
# Worker N works on branch autoresearch/<tag>-gpu<N> in worktrees/gpu<N>, with CUDA_VISIBLE_DEVICES=N and
# AUTORESEARCH_WORKER=gpu<N>; all share this checkout's Python environment, data cache and ledger.
# A watcher looks at every pane each WATCH_INTERVAL seconds (default 120) and nudges an agent whose screen has
# not changed and that sits idle at its prompt.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$PWD"
PROMPT="Read program.md and follow the instructions."
NUDGE="Keep going. Do not stop — continue your research loop."
WATCH_INTERVAL="${WATCH_INTERVAL:-120}"

die() { echo "error: $*" >&2; exit 2; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

agent_command() {  # agent -> the command line that starts it, permissions granted, non-interactively trusted
    case "$1" in
        claude) echo "claude --dangerously-skip-permissions \"$PROMPT\"" ;;
        sonnet|opus|haiku) echo "claude --dangerously-skip-permissions --model $1 \"$PROMPT\"" ;;
        codex) echo "codex --dangerously-bypass-approvals-and-sandbox \"$PROMPT\"" ;;
        *) return 1 ;;
    esac
}

launch() {
    local tag="${1:-}"; shift || true
    [ -n "$tag" ] && [ $# -gt 0 ] || usage
    [[ "$tag" =~ ^[A-Za-z0-9._-]+$ ]] || die "tag '$tag' may only hold letters, digits, '.', '_' and '-'"
    local session="autoresearch-$tag"
    tmux has-session -t "$session" 2>/dev/null && die "session $session is already running (./spawn.sh stop $tag first)"
    local specs=() spec agent gpu gpus=" "
    for spec in "$@"; do  # check everything before creating anything
        [[ "$spec" =~ ^([a-z]+):([0-9]+)$ ]] || die "'$spec' is not <agent>:<gpu>, e.g. claude:0"
        agent="${BASH_REMATCH[1]}"; gpu="${BASH_REMATCH[2]}"
        [[ "$gpus" == *" $gpu "* ]] && die "GPU $gpu is named twice; one agent per GPU"
        gpus+="$gpu "
        agent_command "$agent" >/dev/null || die "unknown agent '$agent'; use claude, sonnet, opus, haiku or codex"
        local cli=claude; [ "$agent" = codex ] && cli=codex
        command -v "$cli" >/dev/null 2>&1 || die "$cli is not on PATH; install it first"
        git show-ref --verify --quiet "refs/heads/autoresearch/$tag-gpu$gpu" && die "branch autoresearch/$tag-gpu$gpu exists already; pick a new tag"
        [ -e "worktrees/gpu$gpu" ] && die "worktrees/gpu$gpu exists already (./spawn.sh stop <its tag>)"
        specs+=("$agent:$gpu")
    done
    # the caller's settings and keys, which a tmux server started earlier would not hand its panes
    local pass=() name
    for name in $(compgen -e); do
        [[ "$name" =~ ^(AUTORESEARCH_|ANTHROPIC_|OPENAI_|CLAUDE_|CODEX_) ]] && pass+=(-e "$name=${!name}")
    done
    local first=1
    for spec in "${specs[@]}"; do
        agent="${spec%%:*}"; gpu="${spec##*:}"
        git worktree add -q -b "autoresearch/$tag-gpu$gpu" "worktrees/gpu$gpu" HEAD
        # program.md's setup makes a branch: this agent's is made and checked out in its worktree already
        PROMPT="Read program.md and follow the instructions. Your branch, autoresearch/$tag-gpu$gpu, is made"
        PROMPT+=" and checked out here: skip making one."
        local cmd="cd '$ROOT/worktrees/gpu$gpu' && export CUDA_VISIBLE_DEVICES=$gpu AUTORESEARCH_WORKER=gpu$gpu PATH='$ROOT/.venv/bin':\$PATH && $(agent_command "$agent")"
        if [ $first = 1 ]; then
            tmux new-session ${pass[@]+"${pass[@]}"} -d -s "$session" -n agents -x 240 -y 60 "bash -lc \"$(printf '%s' "$cmd" | sed 's/"/\\"/g')\"; exec bash"
            first=0
        else
            tmux split-window ${pass[@]+"${pass[@]}"} -t "$session:agents" "bash -lc \"$(printf '%s' "$cmd" | sed 's/"/\\"/g')\"; exec bash"
            tmux select-layout -t "$session:agents" tiled >/dev/null
        fi
        echo "gpu$gpu: $agent on autoresearch/$tag-gpu$gpu in worktrees/gpu$gpu"
    done
    tmux new-window -d -t "$session" -n watcher "'$ROOT/spawn.sh' watch '$tag'"
    echo "tmux session $session started: tmux attach -t $session"
}

watch() {  # the nudger: an unchanged screen whose last line looks like an idle prompt gets a nudge
    local tag="$1" session="autoresearch-$1" pane
    declare -A last
    while tmux has-session -t "$session" 2>/dev/null; do
        for pane in $(tmux list-panes -t "$session:agents" -F '#{pane_id}'); do
            local screen hash
            screen="$(tmux capture-pane -p -t "$pane")"
            hash="$(printf '%s' "$screen" | md5sum | cut -d' ' -f1)"
            if [ "${last[$pane]:-}" = "$hash" ] && printf '%s' "$screen" | grep -v '^[[:space:]]*$' | tail -n 4 | grep -qE '^[[:space:]│|]*(>|›|❯)[[:space:]]*'; then
                tmux send-keys -t "$pane" -l "$NUDGE"
                tmux send-keys -t "$pane" Enter
                echo "$(date '+%H:%M:%S') nudged $pane"
            fi
            last[$pane]="$hash"
        done
        sleep "$WATCH_INTERVAL"
    done
}

status() {
    local sessions
    sessions="$(tmux list-sessions -F '#{session_name}' 2>/dev/null | grep '^autoresearch-' || true)"
    [ -n "$sessions" ] || echo "no autoresearch tmux session is running"
    for s in $sessions; do
        echo "$s: $(tmux list-panes -t "$s:agents" 2>/dev/null | wc -l) agent pane(s)"
    done
    local wt
    for wt in worktrees/gpu*; do
        [ -d "$wt" ] || continue
        echo "$wt: $(git -C "$wt" rev-parse --abbrev-ref HEAD) at $(git -C "$wt" log -1 --format='%h %s')"
        [ -f "$wt/results.tsv" ] && tail -n 3 "$wt/results.tsv" | sed 's/^/    /'
    done
    return 0
}

stop() {
    local tag="${1:-}"
    [ -n "$tag" ] || usage
    tmux kill-session -t "autoresearch-$tag" 2>/dev/null && echo "killed tmux session autoresearch-$tag" || echo "no tmux session autoresearch-$tag"
    local wt branch
    for wt in worktrees/gpu*; do
        [ -d "$wt" ] || continue
        branch="$(git -C "$wt" rev-parse --abbrev-ref HEAD 2>/dev/null || true)"
        case "$branch" in
            "autoresearch/$tag-gpu"*) git worktree remove --force "$wt" && echo "removed $wt (branch $branch kept)" ;;
        esac
    done
    git worktree prune
}

case "${1:-}" in
    launch) shift; launch "$@" ;;
    watch) shift; watch "$@" ;;
    status) status ;;
    stop) shift; stop "$@" ;;
    -h|--help|help) usage 0 ;;
    *) usage ;;
esac
