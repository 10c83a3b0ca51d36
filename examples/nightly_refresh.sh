#!/usr/bin/env bash
# Nightly knowledge refresh: edit today's facts into a pack as a new version, score it, and keep
# it only if quality holds; otherwise roll the pack back to yesterday's state and fail.
#
#   examples/nightly_refresh.sh FACTS.jsonl
#
# In cron (02:15 every night, one log per month):
#   15 2 * * * cd /srv/memoir && examples/nightly_refresh.sh facts/$(date +\%F).jsonl >> logs/refresh-$(date +\%Y-\%m).log 2>&1
#
# Settings (environment):
#   MEMOIR_PACK        pack folder                       (default: packs/knowledge)
#   MEMOIR_MODEL       base model for a new pack         (default: the built-in SmolLM2-135M-Instruct)
#   MEMOIR_EVAL_DATA   records to score (facts JSONL or ZsRE JSON with rephrasings and locality
#                      prompts); default: the pack's own active facts
#   MEMOIR_EVAL_LIMIT  score at most this many records   (default: all)
#   MEMOIR_MIN_REL     lowest acceptable reliability     (default: 0.90)
#   MEMOIR_MIN_LOC     lowest acceptable locality        (default: 0.95)
#   MEMOIR_REPAIR_ROUNDS  after editing, refit the edits whose own question lost its answer, up to
#                      this many rounds (memoir repair), before scoring (default: 1; 0: no repair).
#                      Without it a growing pack forgets: at 998 ZsRE edits 0.90 reliability
#                      (teacher-forced), the bar's edge; repaired each night, 0.99 at 750
#                      (docs/BENCHMARKS.md, "A nightly refresh with repair")
#   MEMOIR_HUB_REPO    Hub repo to pull from (when PACK is missing) and push kept versions to
#                      (default: local only); HF_TOKEN and HF_ENDPOINT as for any Hugging Face tool
#
# Exit codes: 0 refreshed (or nothing new), 2 bad facts file or setting (the pack is untouched), 5 another
# refresh is running, 6 the Hub failed, 10 quality below the bar (the pack was rolled back and
# nothing was pushed), others: memoir's own.
set -euo pipefail

FACTS=${1:?usage: nightly_refresh.sh FACTS.jsonl}
PACK=${MEMOIR_PACK:-packs/knowledge}
MIN_REL=${MEMOIR_MIN_REL:-0.90}
MIN_LOC=${MEMOIR_MIN_LOC:-0.95}
ROUNDS=${MEMOIR_REPAIR_ROUNDS:-1}
if [[ ! $ROUNDS =~ ^[0-9]+$ ]]; then
    echo "nightly_refresh.sh: MEMOIR_REPAIR_ROUNDS must be a whole number (0: no repair), not '$ROUNDS'" >&2
    exit 2
fi
PYTHON=${PYTHON:-python3}
TODAY=$(date -u +%F)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

say() { echo "[$(date -u +%FT%TZ)] $*"; }
field() { "$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

if [[ -n "${MEMOIR_HUB_REPO:-}" && ! -d "$PACK" ]]; then
    say "pulling $MEMOIR_HUB_REPO"
    if ! memoir pull "$MEMOIR_HUB_REPO" --to "$PACK" 2> "$WORK/pull.err"; then
        if grep -q "repository not found" "$WORK/pull.err"; then
            say "no pack on the Hub yet: starting a new one"
        else
            cat "$WORK/pull.err" >&2
            exit 6
        fi
    fi
fi

memoir validate "$FACTS"
before=0
if [[ -f "$PACK/manifest.json" ]]; then
    memoir log "$PACK" --json > "$WORK/log.json"
    before=$(field "$WORK/log.json" '["versions"][-1]["version"]')
fi

say "editing $FACTS into $PACK (now at version $before)"
model_args=()
[[ -n "${MEMOIR_MODEL:-}" ]] && model_args=(--model "$MEMOIR_MODEL")
memoir edit "$FACTS" --pack "$PACK" "${model_args[@]}" --message "nightly refresh $TODAY" \
    --checkpoint-every 50 --json > "$WORK/edit.json"
if [[ $(field "$WORK/edit.json" '["versions"]') == "[]" ]]; then
    say "nothing new in $FACTS; $PACK stays at version $before"
    exit 0
fi
say "edited $(field "$WORK/edit.json" '["edited"]') fact(s), replaced $(field "$WORK/edit.json" '["replaced"]')," \
    "skipped $(field "$WORK/edit.json" '["skipped"]')"

if (( ROUNDS > 0 )); then
    memoir repair "$PACK" --rounds "$ROUNDS" --message "nightly repair $TODAY" --json > "$WORK/repair.json"
    say "repair: $("$PYTHON" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(len(r["forgotten"]), "of", r["checked"], "edits forgotten,", len(r["refitted"]), "refit(s),", len(r["still_forgotten"]), "still forgotten")' "$WORK/repair.json")"
fi

eval_args=(--json)
[[ -n "${MEMOIR_EVAL_DATA:-}" ]] && eval_args+=(--data "$MEMOIR_EVAL_DATA")
[[ -n "${MEMOIR_EVAL_LIMIT:-}" ]] && eval_args+=(--limit "$MEMOIR_EVAL_LIMIT")
memoir eval "$PACK" "${eval_args[@]}" > "$WORK/eval.json"
rel=$(field "$WORK/eval.json" '["scores"]["rel"]')
loc=$(field "$WORK/eval.json" '["scores"]["loc"]')
say "scores: reliability $rel (bar $MIN_REL), locality $loc (bar $MIN_LOC)"

if ! "$PYTHON" -c "import sys; r, l, mr, ml = sys.argv[1:]; sys.exit(not (float(r) >= float(mr) and (l == 'None' or float(l) >= float(ml))))" \
        "$rel" "$loc" "$MIN_REL" "$MIN_LOC"; then
    if (( before > 0 )); then
        memoir rollback "$PACK" --to "$before" --message "nightly refresh $TODAY rejected: rel $rel, loc $loc"
        say "quality below the bar: $PACK is back at version $before's state"
    else
        say "quality below the bar: the new pack $PACK is kept for inspection, not pushed"
    fi
    exit 10
fi

if [[ -n "${MEMOIR_HUB_REPO:-}" ]]; then
    memoir push "$PACK" "$MEMOIR_HUB_REPO" --message "nightly refresh $TODAY"
fi
say "kept: $PACK is at version $(memoir log "$PACK" --json | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["versions"][-1]["version"])')"
