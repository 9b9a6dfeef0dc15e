#!/usr/bin/env bash
# bench/hang.sh: figure 15, what the hang watchdog costs idle ([spawner] hang_timeout,
# crates/spawner/README.md "Hung processes"). N router namespaces, one per-namespace proxy
# each (auto_enable_routers, no agent: nothing is asked), then the same idle proxies measured
# side by side in one run, one spawner restart apart (the proxies are adopted and take the new
# spawner's period from their block): hang_timeout = 1 (a beat every 250 ms: the per-beat
# cost of a timer of its own, measurable), the default 60 (a 15 s period, beaten by the
# housekeeping tick every proxy runs anyway), and 0 (no beat). Per row, over WINDOW
# seconds: the proxies' CPU (time on CPU from /proc/PID/task/*/schedstat, in ns: an idle proxy's
# few ms would round to 0 clock ticks), their voluntary context switches (each beat is one
# wake-up), and the spawner's CPU (its watchdogs look at the same pace). The
# shared server's 1 s beat is one process: not measured here.
#
# Run as root, under the machine-wide bench lock, with release binaries built first:
#   sudo bench/hang.sh [N] [WINDOW]      (defaults 200 and 30)
# Binaries: $SPAWNER and $PROXY, default $CARGO_TARGET_DIR/release/ (or target/release/).
# It re-runs itself in `unshare --mount --propagation private`: /run/netns is a private tmpfs,
# so only the namespaces made here are auto-enabled, and nothing outlives the run.
set -euo pipefail
N=${1:-200}
WINDOW=${2:-30}
REPO=$(cd "$(dirname "$0")/.." && pwd)
REL=${CARGO_TARGET_DIR:-$REPO/target}/release
SPAWNER=${SPAWNER:-$REL/ns-metadata-spawner}
PROXY=${PROXY:-$REL/ns-metadata-proxy}
[[ -x $SPAWNER && -x $PROXY ]] || { echo "hang.sh: build the release binaries first ($REL)" >&2; exit 2; }
if [[ -z ${NSB_HANG_INNER:-} ]]; then
    exec env NSB_HANG_INNER=1 SPAWNER="$SPAWNER" PROXY="$PROXY" \
        unshare --mount --propagation private "$0" "$N" "$WINDOW"
fi
RUN=$(printf '%04x' $((RANDOM)))
WORK=$(mktemp -d "/tmp/nsb-hang-$RUN.XXXX")
RAW=$WORK/raw.tsv
SCRIPT=hang.sh TAG=h
SP=
run_pids() { [[ -z $SP ]] || echo "$SP"; pids_in "$WORK"/sp/pids/*.pid; }
# shellcheck source=bench/mountns.sh
. "$REPO/bench/mountns.sh" # log, make_ns, pids_in, stop_all, private_netns (cleanup on exit)
private_netns nsb-hang
# mountns.sh's cleanup (processes, namespaces, the tmpfs), this run's directory too.
finish() {
    local rc=$?
    stop_all TERM || stop_all KILL
    rm -rf "$WORK"
    (exit "$rc")
    cleanup
}
trap finish EXIT

# Time on CPU in µs of every thread of a process (schedstat's first field is ns; the
# spawner's watchdogs run on its runtime's worker threads).
cpu_us() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{t += $1} END {printf "%d", t / 1000}'; }
switches() { awk '$1 == "voluntary_ctxt_switches:" {print $2}' /proc/"$1"/status 2>/dev/null || echo 0; }
proxies() { pids_in "$WORK"/sp/pids/*.pid; }
sum() { local f=$1 p t=0; shift; for p in "$@"; do t=$((t + $("$f" "$p"))); done; echo "$t"; }

# Start the spawner with `hang_timeout = $1` over state dir $WORK/sp (proxies adopted when
# they run), and wait until it reports READY and all N proxies running.
start_spawner() {
    spawner_ini "$WORK/agent.sock" "$WORK/sp" "auto_enable_routers = true" "hang_timeout = $1" >"$WORK/sp.ini"
    "$SPAWNER" --config-file "$WORK/sp.ini" run </dev/null >/dev/null 2>>"$WORK/spawner.log" &
    SP=$!
    running() { [[ $("$SPAWNER" --state-dir "$WORK/sp" status --json 2>/dev/null | grep -o '"state": "running"' | wc -l) -ge $N ]]; }
    wait_for "$N proxies running" 2400 running
}
stop_spawner() { kill -TERM "$SP"; wait "$SP" || true; SP=; }

# One row: settle, then WINDOW seconds of the proxies' and the spawner's CPU and wake-ups.
measure() { # label settle
    sleep "$2"
    mapfile -t P < <(proxies)
    local t0 s0 c0 t1 s1 c1
    t0=$(sum cpu_us "${P[@]}") s0=$(sum switches "${P[@]}") c0=$(cpu_us "$SP")
    sleep "$WINDOW"
    t1=$(sum cpu_us "${P[@]}") s1=$(sum switches "${P[@]}") c1=$(cpu_us "$SP")
    local cpu_ms sw=$((s1 - s0)) sp_ms
    cpu_ms=$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", d / 1000}')
    sp_ms=$(awk -v d=$((c1 - c0)) 'BEGIN {printf "%.1f", d / 1000}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "${#P[@]}" "$cpu_ms" "$sw" "$sp_ms" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW"
    log "$1: ${#P[@]} proxies, ${cpu_ms} ms CPU, $sw wake-ups; spawner ${sp_ms} ms (load $(cut -d' ' -f1 /proc/loadavg))"
}

mkdir -p "$WORK/hap"
printf 'unused @ID@ @PIDFILE@\n' >"$WORK/tmpl"
log "$N namespaces, window ${WINDOW} s, binaries $PROXY"
make_ns "$N" "$WORK" "$WORK/tmpl"
start_spawner 1
measure "hang_timeout=1 (beat 250 ms)" 2
stop_spawner
start_spawner 60
# The proxies' 250 ms timers end at their next beat; the housekeeping tick beats from then on.
measure "hang_timeout=60 (default: period 15 s, beaten by the housekeeping tick)" 2
stop_spawner
start_spawner 0
# Each proxy's timer ends at its next beat, at most 15 s away.
measure "hang_timeout=0 (no timer)" 16
stop_spawner

echo
echo "figure 15: idle cost of the hang watchdog, $N per-namespace proxies, ${WINDOW} s windows"
printf '| %s | %s | %s | %s | %s | %s |\n' row proxies "proxy CPU ms" "proxy wake-ups" "spawner CPU ms" "load 1/5/15"
printf '|---|---|---|---|---|---|\n'
while IFS=$'\t' read -r label n cpu sw sp load; do
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$n" "$cpu" "$sw" "$sp" "$load"
done <"$RAW"
awk -F'\t' -v n="$N" -v w="$WINDOW" '
    NR == 1 { fast_cpu = $3; fast_sw = $4 } NR == 2 { def_cpu = $3; def_sw = $4 } NR == 3 { off_cpu = $3; off_sw = $4 }
    END {
        beats = (fast_sw - off_sw)
        if (beats > 0) printf "per beat: %.1f us of proxy CPU (%d extra wake-ups at 250 ms)\n", (fast_cpu - off_cpu) * 1000 / beats, beats
        if (off_cpu > 0) printf "proxy CPU, default / off: %.2fx; at 250 ms / off: %.2fx\n", def_cpu / off_cpu, fast_cpu / off_cpu
        printf "wake-ups per proxy per minute: off %.2f, default %.2f, 250 ms %.1f\n", off_sw * 60 / w / n, def_sw * 60 / w / n, fast_sw * 60 / w / n
    }' "$RAW"
