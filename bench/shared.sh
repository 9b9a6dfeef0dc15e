#!/usr/bin/env bash
# bench/shared.sh: figure 14 (issue 20), the shared proxy model side by side with the
# per-namespace model and with haproxy, N router namespaces (rows N in $SH_NS), $SH_RUNS rounds
# (sides rotate which goes first). For each N and side: start -> every namespace answering
# 169.254.169.254:80, then memory per namespace (PSS of every process of the side / N, and
# the drop of MemAvailable / N). At the smallest N, both models of ours also get: one busy
# namespace (wrk c32: req/s and CPU per request of the serving process(es)), the p99 of a
# quiet namespace (wrk c1) idle and while another namespace floods with 2,000 connections,
# with the same p99s read from the quiet namespace's access lines (the whole answer as the
# proxy saw it, and the proxy's own part of it). Then, in the shared side, the busy namespace
# with both models at once: a second spawner (per-namespace model, one router from a records
# file, in a namespace the first spawner's auto-enable does not take) beside the shared
# server, and wrk c32 alternating between the two $SH_PAIRS times (the order swapped each
# time): req/s and CPU per request of each serving process, paired run by run.
# At every N, the shared model: server kill -9 -> namespace N answering again (the last one
# in id order; namespaces with a connection waiting are handed over first), and -> every
# namespace handed to the new server (the spawner's log), with a request loop over namespaces
# 2..11 counting failed requests during it. Appends `sh_*` samples to $RAW (bench/src/shared.rs).
#
# run.sh runs it inside `unshare --mount --propagation private`, like cold.sh: /run/netns
# here is a private tmpfs, so auto_enable_routers sees only the namespaces made here.
# Needs in the environment: WORK RUN TOOL SPAWNER PROXY RAW SH_SOCK SH_NS SH_RUNS SH_DUR
# SH_LUA (wrk's report script: one `NSBENCH req dur_us p50_us p99_us errors status` line),
# SH_HAPROXY_TMPL: Neutron's haproxy configuration with @ID@ and @PIDFILE@ left to fill.
# Optional: SH_MAX_AGENT_REQUESTS (the spawner's `max_agent_requests` for both models of ours;
# unset: the proxy's default), SH_PROXY_METRICS (`true`/`false`: the spawner's `proxy_metrics`;
# unset: its default, on), SH_PROXY_THREADS (the spawner's `proxy_threads` for both models
# of ours; unset: its default, one thread),
# SH_PAIRS (the busy runs per model with both models at once, default 4),
# SH_PERF=DIR (`perf record -g` of the serving process under the busy load,
# DIR/perf-MODEL-N.data, then `strace -c` over a second busy run, DIR/strace-MODEL-N.txt with
# its request count).
set -euo pipefail
: "${WORK:?}" "${RUN:?}" "${TOOL:?}" "${SPAWNER:?}" "${PROXY:?}" "${RAW:?}" "${SH_SOCK:?}" "${SH_NS:?}" "${SH_RUNS:?}"
: "${SH_DUR:?}" "${SH_LUA:?}" "${SH_HAPROXY_TMPL:?}"

SCRIPT=shared.sh TAG=s
# shellcheck source=bench/mountns.sh
. "$(dirname "$0")/mountns.sh"
SW=$WORK/shared
# Every process of the side running now: the spawner, its proxies or its shared server,
# haproxy's pid files; the second spawner of the busy pairs and its proxy.
run_pids() {
    [[ -z $SP ]] || echo "$SP"
    [[ -z $PP ]] || echo "$PP"
    pids_in "$SW"/sp/pids/*.pid "$SW"/sp/shared-server.pid "$SW"/hap/*.pid "$SW"/pp/pids/*.pid
}
SP= PP=
SH_PAIRS=${SH_PAIRS:-4}
private_netns nsb-shared
mkdir -p "$SW/hap"
ulimit -n "$(ulimit -Hn)" # wrk's 2,000 connections, and the spawner's 2 x N listeners
CLK=$(getconf CLK_TCK)
load1() { cut -d' ' -f1 /proc/loadavg; }
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' /proc/"$1"/stat 2>/dev/null || echo 0; }
mem_available_kb() { awk '$1 == "MemAvailable:" {print $2}' /proc/meminfo; }

waiter() {
    "$TOOL" wait --netns-file "$SW/ns.list" --t0-ns "$1" --timeout-ms 600000 --pause-ms 100
}
# Memory of the side with all N answering (after a 2 s settle): PSS / N, MemAvailable drop / N.
memory() { # variant n mem0
    local v=$1 n=$2 mem0=$3 p k pss=0 each=
    sleep 2
    for p in $(run_pids); do
        k=$(mem_kb Pss "$p")
        pss=$((pss + k))
        # The spawner and the shared server by name in the log (haproxy's are many).
        [[ $v == haproxy-* || $p != "$SP" && $v == per-namespace-* ]] \
            || each+=" $(tr -d '\0' </proc/"$p"/comm 2>/dev/null) ${k} kB $(awk '$1 == "Threads:" {print $2}' /proc/"$p"/status 2>/dev/null) threads;"
    done
    [[ -z $each ]] || log "$v:$each"
    sample sh_pss_per_ns_b "$v" $((pss * 1024 / n))
    sample sh_avail_per_ns_b "$v" $(((mem0 - $(mem_available_kb)) * 1024 / n))
    log "$v: PSS $((pss / 1024)) MB in all, $((pss * 1024 / n)) B per namespace; MemAvailable -$(((mem0 - $(mem_available_kb)) / 1024)) MB"
}
# wrk in namespace $1 (c$2, $SH_DUR s): `req dur_us p50_us p99_us errors status`.
wrk_in() {
    ip netns exec "$1" wrk -t1 -c"$2" -d"${SH_DUR}s" --timeout 5s -s "$SH_LUA" \
        http://169.254.169.254/latest/meta-data/ | sed -n 's/^NSBENCH //p'
}
# The processes serving namespace 1 (busy) for the CPU figure: the shared server, or the
# namespace's own proxy.
serving_pid() { # model
    if [[ $1 == shared ]]; then
        pids_in "$SW"/sp/shared-server.pid
    else
        pids_in "$SW"/sp/pids/*"$(rid 1)"*.pid
    fi
}
# Seconds into the UTC day now (the access lines' clock).
day_s() { date -u +%H:%M:%S.%N | awk -F: '{print $1 * 3600 + $2 * 60 + $3}'; }
# The quiet namespace's own access lines (the spawner's log: the shared server's stderr, and
# the proxies') between seconds FROM and TO of the UTC day: p99 of the whole answer
# (`duration_us`) and of the proxy's own part (`duration_us` - `agent_us`), as
# sh_quiet_PHASE_whole_p99_us / sh_quiet_PHASE_own_p99_us. Where a wrk p99 goes.
proxy_p99() { # model variant phase from to
    local out
    out=$(awk -v id="id=$(rid 2)" -v a="$4" -v b="$5" '$NF == id {
            split(substr($1, 12), t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]
            if (s < a || s > b) next
            d = g = -1
            for (i = 2; i < NF; i++) {
                if ($i ~ /^duration_us=/) d = substr($i, 13) + 0
                else if ($i ~ /^agent_us=/) g = substr($i, 10) + 0
            }
            if (d >= 0 && g >= 0) print d, d - g
        }' "$SW/spawner-$1.log" 2>/dev/null)
    [[ -n $out ]] || { log "$2: no access lines of the quiet namespace in the $3 run"; return 0; }
    sample "sh_quiet_${3}_whole_p99_us" "$2" "$(sort -n -k1,1 <<<"$out" | p99_of 1)"
    sample "sh_quiet_${3}_own_p99_us" "$2" "$(sort -n -k2,2 <<<"$out" | p99_of 2)"
}
# The spawner configuration of both models of ours: state in DIR, the lines given, and the
# run's SH_* options.
ours_ini() { # dir line...
    spawner_ini "$SH_SOCK" "$1" "agent_keepalive = auto" "${@:2}" \
        ${SH_MAX_AGENT_REQUESTS:+"max_agent_requests = $SH_MAX_AGENT_REQUESTS"} \
        ${SH_PROXY_METRICS:+"proxy_metrics = $SH_PROXY_METRICS"} \
        ${SH_PROXY_THREADS:+"proxy_threads = $SH_PROXY_THREADS"}
}
# One busy run: wrk c32 in namespace NS for SH_DUR, and the CPU of process PID over it:
# samples PREFIX_rps, PREFIX_cpu_us and PREFIX_errors of VARIANT, a log line LABEL.
busy_run() { # prefix variant ns pid label
    local c0 c1 req dur err status
    c0=$(ticks "$4")
    read -r req dur _ _ err status <<<"$(wrk_in "$3" 32)"
    c1=$(ticks "$4")
    sample "${1}_rps" "$2" "$(awk -v r="$req" -v d="$dur" 'BEGIN {printf "%.1f", r / (d / 1e6)}')"
    sample "${1}_cpu_us" "$2" "$(awk -v d=$((c1 - c0)) -v r="$req" -v k="$CLK" 'BEGIN {printf "%.2f", d * 1e6 / k / r}')"
    sample "${1}_errors" "$2" $((err + status))
    log "$5: $req requests in ${SH_DUR}s, CPU $((c1 - c0)) ticks, errors $((err + status))"
}
p99_of() { awk -v c="$1" '{a[NR] = $c} END {i = int(NR * 0.99); if (i < 1) i = 1; print a[i]}'; }
# One busy namespace, then a quiet one idle and beside a 2,000-connection flood.
load_figures() { # model n
    local m=$1 v="$1-$2" p req idle p99 err status fl t0
    p=$(serving_pid "$m")
    [[ -n $p ]] || { log "$v: no serving process found; load figures skipped"; return 0; }
    sample sh_load_load1 "$v" "$(load1)"
    # SH_PERF=DIR: a call-graph profile of the serving process under the busy load, per side.
    local perf=
    if [[ -n ${SH_PERF:-} ]]; then
        perf record -q -g -p "$p" -o "$SH_PERF/perf-$v.data" -- sleep "$SH_DUR" 2>/dev/null &
        perf=$!
    fi
    busy_run sh_busy "$v" "qrouter-$(rid 1)" "$p" "$v busy"
    [[ -z $perf ]] || wait "$perf" || true
    if [[ -n ${SH_PERF:-} ]]; then
        # Syscalls per request, on a second busy run (strace slows it; not a figure).
        strace -c -f -p "$p" -o "$SH_PERF/strace-$v.txt" &
        perf=$!
        read -r req _ <<<"$(wrk_in "qrouter-$(rid 1)" 32)"
        kill -INT "$perf" && wait "$perf" || true
        echo "requests $req" >>"$SH_PERF/strace-$v.txt"
    fi
    t0=$(day_s)
    read -r _ _ _ idle _ _ <<<"$(wrk_in "qrouter-$(rid 2)" 1)"
    proxy_p99 "$m" "$v" idle "$t0" "$(day_s)"
    sample sh_quiet_idle_p99_us "$v" "$idle"
    # The flood: 2,000 connections from namespace 1, requests as fast as it answers.
    ip netns exec "qrouter-$(rid 1)" wrk -t1 -c2000 -d"$((SH_DUR + 4))s" --timeout 5s \
        http://169.254.169.254/latest/meta-data/ >"$SW/flood.out" 2>&1 &
    fl=$!
    sleep 2
    t0=$(day_s)
    read -r _ _ _ p99 err status <<<"$(wrk_in "qrouter-$(rid 2)" 1)"
    proxy_p99 "$m" "$v" flood "$t0" "$(day_s)"
    wait "$fl" || true
    sample sh_quiet_flood_p99_us "$v" "$p99"
    sample sh_quiet_flood_errors "$v" $((err + status))
    log "$v quiet p99: idle $idle us, flooded $p99 us (flood: $(grep -m1 'Requests/sec' "$SW/flood.out"))"
}
# One busy namespace with both models at once (issue 20): the figure above measures each
# model in its own side, tens of seconds apart, and the machine's load moves between them by
# more than the two differ (session 13: 0.92-1.15x over five runs of the same code). Here a
# second spawner (per-namespace model, configured like the per-namespace side, its one router
# from a records file, in a namespace the first spawner's auto-enable does not take) runs
# beside the shared server, and wrk c32 goes to each in turn $SH_PAIRS times, the order
# swapped each time: each pair of runs seconds apart, on the same machine state.
pair_figure() { # n
    local n=$1 id pns pp ps k m p ns
    id=$(rid 999999)
    pns="pair-$TAG$RUN"
    ps=$(serving_pid shared)
    [[ -n $ps ]] || { log "shared-$n: no shared server; busy pairs skipped"; return 0; }
    ip netns add "$pns"
    ip -n "$pns" link set lo up
    echo "$pns" >"$SW/pair.list"
    rm -rf "$SW/pp"
    mkdir -p "$SW/pp"
    printf '{"routers": [{"id": "%s", "netns": "%s"}]}\n' "$id" "$pns" >"$SW/pair-records.json"
    ours_ini "$SW/pp" "proxy_model = per-namespace" "records_file = $SW/pair-records.json" \
        >"$SW/pair.ini"
    "$SPAWNER" --config-file "$SW/pair.ini" run --stop-proxies-on-exit 2>>"$SW/spawner-pair.log" &
    PP=$!
    if "$TOOL" wait --netns-file "$SW/pair.list" --t0-ns "$(date +%s%N)" --timeout-ms 60000 \
        --pause-ms 50 >/dev/null && pp=$(pids_in "$SW"/pp/pids/*.pid) && [[ -n $pp ]]; then
        for k in $(seq "$SH_PAIRS"); do
            for m in $( ((k % 2)) && echo shared per-namespace || echo per-namespace shared); do
                if [[ $m == shared ]]; then p=$ps ns="qrouter-$(rid 1)"; else p=$pp ns=$pns; fi
                busy_run sh_pair "$m-$n" "$ns" "$p" "$m-$n busy pair $k"
            done
        done
    else
        log "shared-$n: the per-namespace proxy of the busy pairs did not answer (see $SW/spawner-pair.log); skipped"
    fi
    kill -TERM "$PP"
    wait "$PP" || true
    PP=
    ip netns delete "$pns"
}
# Shared model: kill -9 the server, time until namespace N answers again; a request loop
# over namespaces 2..11 meanwhile counts failed requests: refused (no connection), and lost
# in flight (accepted by the server that was killed).
kill_figure() { # n
    local v="shared-$1" p w lp out
    p=$(pids_in "$SW"/sp/shared-server.pid)
    [[ -n $p ]] && ours "$p" || { log "$v: no shared server pid; kill figure skipped"; return 0; }
    local slog=$SW/spawner-shared.log readies died ready
    readies=$(grep -c 'shared server ready' "$slog" || true)
    "$TOOL" loop --netns-file "$SW/loop.list" --secs 3 >"$SW/loop.out" &
    lp=$!
    sleep 1
    sample sh_kill_load1 "$v" "$(load1)"
    # Namespace N: the last one a restarted server is handed again (entries go in id order).
    w=$("$TOOL" kill-wait --netns "qrouter-$(rid "$1")" --pid "$p" --timeout-ms 10000) || w='{"ms":-1}'
    wait "$lp" || true
    out=$(<"$SW/loop.out")
    sample sh_kill_answer_ms "$v" "$(field ms "$w")"
    sample sh_kill_failed "$v" "$(field failed "$out")"
    sample sh_kill_refused "$v" "$(field refused "$out")"
    sample sh_kill_total "$v" "$(field total "$out")"
    log "$v kill -9 server: $w; loop $out"
    # Every namespace handed to the new server (namespaces with a connection waiting go
    # first, so namespace N may answer before): the spawner's log, its death seen → ready.
    for _ in $(seq 200); do
        (($(grep -c 'shared server ready' "$slog" || true) > readies)) && break
        sleep 0.05
    done
    died=$(grep 'shared server died' "$slog" | tail -1 | cut -d' ' -f1)
    ready=$(grep 'shared server ready' "$slog" | tail -1 | cut -d' ' -f1)
    if [[ -n $died && -n $ready ]]; then
        sample sh_kill_all_ms "$v" "$(awk -v a="$(date -d "$died" +%s%N)" -v b="$(date -d "$ready" +%s%N)" \
            'BEGIN {printf "%.1f", (b - a) / 1e6}')"
    fi
    # Wait for the spawner's restart to settle before the side stops.
    "$TOOL" wait --netns-file "$SW/ns.list" --t0-ns "$(date +%s%N)" --timeout-ms 60000 --pause-ms 50 >/dev/null
}

side_ours() { # model n first_n
    local m=$1 n=$2 v="$1-$2" t0 w mem0
    rm -rf "$SW/sp"
    ours_ini "$SW/sp" "auto_enable_routers = true" "proxy_model = $m" >"$SW/spawner.ini"
    sample sh_load1 "$v" "$(load1)"
    mem0=$(mem_available_kb)
    t0=$(date +%s%N)
    "$SPAWNER" --config-file "$SW/spawner.ini" run --stop-proxies-on-exit 2>>"$SW/spawner-$m.log" &
    SP=$!
    w=$(waiter "$t0")
    sample sh_start_ms "$v" "$(field all_ms "$w")"
    sample sh_start_cpu_ms "$v" $(($(ticks "$SP") * 1000 / CLK))
    log "$v: $w"
    memory "$v" "$n" "$mem0"
    [[ $n != "$3" ]] || load_figures "$m" "$n"
    [[ $n != "$3" || $m != shared ]] || pair_figure "$n"
    [[ $m != shared ]] || kill_figure "$n"
    kill -TERM "$SP"
    wait "$SP" || true
    SP=
    stop_all TERM
}
side_haproxy() { # n
    local n=$1 v="haproxy-$1" t0 w mem0
    sample sh_load1 "$v" "$(load1)"
    mem0=$(mem_available_kb)
    t0=$(date +%s%N)
    start_haproxies "$n" "$SW"
    w=$(waiter "$t0")
    sample sh_start_ms "$v" "$(field all_ms "$w")"
    log "$v: $w"
    memory "$v" "$n" "$mem0"
    stop_all TERM
    rm -f "$SW"/hap/*.pid
    ip -all netns exec ip addr del 169.254.169.254/32 dev lo >/dev/null
}

SIDES=${SH_SIDES:-shared per-namespace haproxy}
read -r first _ <<<"$SH_NS"
for n in $SH_NS; do
    log "$n namespaces"
    make_ns "$n" "$SW" "$SH_HAPROXY_TMPL"
    # The quiet namespaces of the request loop during a server kill: 2..11.
    sed -n 2,11p "$SW/ns.list" >"$SW/loop.list"
    for r in $(seq "$SH_RUNS"); do
        order=($SIDES)
        for ((k = 0; k < ${#order[@]}; k++)); do
            s=${order[$(((k + r - 1) % ${#order[@]}))]}
            case $s in
                haproxy) side_haproxy "$n" ;;
                *) side_ours "$s" "$n" "$first" ;;
            esac
        done
    done
    ip -all netns delete
done
