#!/usr/bin/env bash
# bench/cold.sh: figure 11 (issue 19), cold start of N router namespaces: ours (the spawner
# with auto_enable_routers, started with every qrouter- namespace already there) vs haproxy
# started Neutron's way (one `ip netns exec NS haproxy -f CONF` after another), start -> every
# namespace answering 169.254.169.254:80, rows N in $COLD_NS, $COLD_RUNS rounds (sides
# alternate which goes first). Appends `cold_*` samples to $RAW (bench/src/cold.rs).
#
# run.sh runs it inside `unshare --mount --propagation private`: /run/netns here is a private
# tmpfs, so the spawner's auto_enable_routers sees only the namespaces made here (never another
# engineer's qrouter-*), and nothing made here is visible outside or outlives the run.
# Needs in the environment: WORK RUN TOOL SPAWNER PROXY RAW COLD_SOCK COLD_NS COLD_RUNS, and
# COLD_HAPROXY_TMPL: Neutron's haproxy configuration with @ID@ and @PIDFILE@ left to fill.
set -euo pipefail
: "${WORK:?}" "${RUN:?}" "${TOOL:?}" "${SPAWNER:?}" "${PROXY:?}" "${RAW:?}" "${COLD_SOCK:?}" "${COLD_NS:?}" "${COLD_RUNS:?}"
: "${COLD_HAPROXY_TMPL:?}"

SCRIPT=cold.sh TAG=c
# shellcheck source=bench/mountns.sh
. "$(dirname "$0")/mountns.sh"
CW=$WORK/cold
run_pids() { [[ -z $SP ]] || echo "$SP"; pids_in "$CW"/sp/pids/*.pid "$CW"/hap/*.pid; }
SP=
private_netns nsb-cold
mkdir -p "$CW/hap"
CLK=$(getconf CLK_TCK)

# Children's user+system CPU of this shell so far, in ms (bash `times`, second line; run in
# this shell, not in a command substitution, whose subshell has no children yet).
children_ms() {
    times >"$CW/times"
    awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%d", t * 1000 }' "$CW/times"
}

# t0 -> the waiter's JSON line. A pass over 2,000 silent namespaces (setns + connect each)
# takes tens of ms of CPU: 100 ms between passes leaves the cores to the starters, for a
# resolution that is still 1% of the figure at 2,000.
waiter() {
    "$TOOL" wait --netns-file "$CW/ns.list" --t0-ns "$1" --timeout-ms 600000 --pause-ms 100
}

# Ours: the spawner starts with every namespace there and auto-enables them all.
cold_ours() {
    local n=$1 t0 w ticks
    rm -rf "$CW/sp"
    spawner_ini "$COLD_SOCK" "$CW/sp" "auto_enable_routers = true" "agent_keepalive = auto" >"$CW/spawner.ini"
    sample cold_load1 "ours-$n" "$(cut -d' ' -f1 /proc/loadavg)"
    t0=$(date +%s%N)
    "$SPAWNER" --config-file "$CW/spawner.ini" run --stop-proxies-on-exit 2>>"$CW/spawner.log" &
    SP=$!
    # COLD_PERF=1: a call-graph profile of the spawner over the start ($CW/perf-ours-N.data).
    local perf=
    if [[ -n ${COLD_PERF:-} ]]; then
        perf record -q -F 499 -g -p "$SP" -o "$CW/perf-ours-$n.data" 2>/dev/null &
        perf=$!
    fi
    w=$(waiter "$t0")
    [[ -z $perf ]] || { kill -INT "$perf"; wait "$perf" || true; }
    ticks=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' /proc/"$SP"/stat)
    sample cold_all_ms "ours-$n" "$(field all_ms "$w")"
    sample cold_cpu_ms "ours-$n" $((ticks * 1000 / CLK))
    # PSS per proxy with all N running (issue 19 keeps figure 2's bound: ≤ 0.35 MB at 200).
    local proxies
    mapfile -t proxies < <(pids_in "$CW"/sp/pids/*.pid)
    ((${#proxies[@]} == 0)) || sample cold_pss_per_kb "ours-$n" $(($(mem_kb Pss "${proxies[@]}") / ${#proxies[@]}))
    log "ours, $n: $w; spawner CPU $((ticks * 1000 / CLK)) ms"
    kill -TERM "$SP"
    wait "$SP" || true
    SP=
    stop_all TERM # nothing left, unless the spawner failed to stop some
}

# haproxy as Neutron's l3 agent starts it, one after another (mountns.sh: start_haproxies).
cold_haproxy() {
    local n=$1 t0 w c0 c1
    sample cold_load1 "haproxy-$n" "$(cut -d' ' -f1 /proc/loadavg)"
    children_ms >"$CW/c0"
    t0=$(date +%s%N)
    start_haproxies "$n" "$CW"
    children_ms >"$CW/c1"
    w=$(waiter "$t0")
    c0=$(<"$CW/c0") c1=$(<"$CW/c1")
    sample cold_all_ms "haproxy-$n" "$(field all_ms "$w")"
    sample cold_cpu_ms "haproxy-$n" $((c1 - c0))
    log "haproxy, $n: $w; loop CPU $((c1 - c0)) ms"
    stop_all TERM
    rm -f "$CW"/hap/*.pid
    ip -all netns exec ip addr del 169.254.169.254/32 dev lo >/dev/null
}

# COLD_SIDES="ours" measures ours alone (profiling); default both.
SIDES=${COLD_SIDES:-haproxy ours}
for n in $COLD_NS; do
    log "$n namespaces"
    make_ns "$n" "$CW" "$COLD_HAPROXY_TMPL"
    for r in $(seq "$COLD_RUNS"); do
        if ((r % 2)); then
            [[ $SIDES != *haproxy* ]] || cold_haproxy "$n"
            [[ $SIDES != *ours* ]] || cold_ours "$n"
        else
            [[ $SIDES != *ours* ]] || cold_ours "$n"
            [[ $SIDES != *haproxy* ]] || cold_haproxy "$n"
        fi
    done
    ip -all netns delete
done
