#!/usr/bin/env bash
# bench/ovn_provision.sh — figure 10 (issue 16), also `bench/run.sh --ovn-provision`:
# NETS networks (default 500), each with a metadata port and one VM port bound to this
# chassis, in a Southbound ovsdb-server; from start to every ovnmeta- namespace answering
# 200 on 169.254.169.254:80, ours (ns-metadata-spawner, source = ovn) against Neutron 29's
# OVN metadata agent (bench/ovn_sb.py neutron-agent: what is stubbed is said there), both
# on the same databases with real namespaces, veths and proxies (haproxy on Neutron's side),
# and the PSS of spawner + proxies vs Neutron's agent + haproxys once all answer.
# Needs root and release binaries in $CARGO_TARGET_DIR/release (bench/run.sh builds them).
# Runs in a private mount namespace whose /run/netns is a tmpfs of its own: both sides remove,
# at start, every ovnmeta- namespace they do not want, and must not see anyone else's.
# Everything it starts is stopped by pid on exit; the namespaces and veths die with it.
set -euo pipefail
if [[ -z ${NSB_OVNP_PRIVATE:-} ]]; then
    [[ $EUID -eq 0 ]] || { echo "ovn_provision.sh: needs root (namespaces, port 80)" >&2; exit 1; }
    exec unshare --mount --propagation private env NSB_OVNP_PRIVATE=1 "$0" "$@"
fi
mount -t tmpfs -o mode=0755 nsb-ovnp /run/netns

REPO=$(cd "$(dirname "$0")/.." && pwd)
REL=${CARGO_TARGET_DIR:-$REPO/target}/release
NETS=${NSB_OVNP_NETS:-500}
ROUNDS=${NSB_OVNP_ROUNDS:-1}
# Which side goes first in round 1 (then they alternate): NSB_OVNP_FIRST=neutron to swap.
FIRST=0
[[ ${NSB_OVNP_FIRST:-ours} == neutron ]] && FIRST=1
# The sides to run (NSB_OVNP_SIDES=ours: only ours, e.g. to repeat it alone).
SIDES=${NSB_OVNP_SIDES:-ours neutron}
NEUTRON_VENV=${NS_NEUTRON_VENV:-/opt/ns-metadata-ci/neutron-29.0.0}
NEUTRON_PY=$NEUTRON_VENV/bin/python
OVN_PY=$REPO/bench/ovn_sb.py
RUN=$(printf '%04x' $((RANDOM % 65536)))
WORK=$(mktemp -d "/tmp/nsb-ovnp-$RUN-XXXX")
HERE=bench-here-$RUN
COMMIT=${NSB_OVNP_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}  # the binaries' commit
OUT=$REPO/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-ovn-provision.md
PIDS=()
log() { printf '%s ovn_provision.sh: %s\n' "$(date -u +%T)" "$*" >&2; }
OVS_ENV=(env PYTHONDONTWRITEBYTECODE=1 OVS_RUNDIR="$WORK" OVS_DBDIR="$WORK" OVS_LOGDIR="$WORK"
    OVS_SYSCONFDIR="$WORK")

# The process is one this run started (its command line names the run directory).
is_ours() { { tr '\0' ' ' </proc/"$1"/cmdline; } 2>/dev/null | grep -q -e "$WORK"; }
pidfile_pids() { local f p _; for f in "$@"; do [[ -s $f ]] && read -r p _ <"$f" && echo "$p"; done 2>/dev/null || true; }
gone() { [[ ! -r /proc/$1/stat ]] || [[ $(sed 's/.*) //' /proc/"$1"/stat | cut -c1) == Z ]]; }
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh" # mem_kb, wait_for, ovsdb_start
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
# Every proxy a side started: ours from the spawner's pid files, Neutron's from its own
# (<network id>.pid.haproxy).
proxy_pids() { pidfile_pids "$WORK"/ours/pids/*.pid "$WORK"/neutron/external/pids/*.pid*; }

# Exited, or its pid already reused by someone else's process (never waited for, never signalled).
gone_or_not_ours() { gone "$1" || ! is_ours "$1"; }
stop_side() {
    local p ours=()
    # The pids are read once: a stale pid file's pid may belong to another process by now.
    for p in $(pidfile_pids "$WORK/side.pid") $(proxy_pids); do
        is_ours "$p" && ours+=("$p") && kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${ours[@]}"; do
        wait_for "pid $p to exit" 200 gone_or_not_ours "$p" || { is_ours "$p" && kill -KILL "$p" 2>/dev/null; } || true
    done
    rm -f "$WORK/side.pid" "$WORK"/ours/pids/*.pid "$WORK"/neutron/external/pids/*.pid*
    for ns in /run/netns/ovnmeta-*; do [[ -e $ns ]] && ip netns delete "${ns##*/}"; done
    return 0
}
cleanup() {
    local p
    stop_side || true
    for p in "${PIDS[@]}"; do is_ours "$p" && kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in ovsdb-server ovsdb-tool ovs-vsctl ovn-sbctl haproxy; do
    command -v "$p" >/dev/null || { log "skipped: no $p"; exit 0; }
done
for f in "$REL/ns-metadata-spawner" "$REL/ns-metadata-proxy" "$REL/ns-bench" "$REL/ns-bench-agent" "$NEUTRON_PY"; do
    [[ -x $f ]] || { log "skipped: no $f (build with bench/run.sh, or .ci/run for the venv)"; exit 0; }
done
((NETS <= 4096)) || { log "NSB_OVNP_NETS must be at most 4096 (a /28 each in 10.250.0.0/16)"; exit 2; }

# ovsdb-server NAME on $WORK/NAME.sock serving a new database of SCHEMA.
declare -A SRV
server() { # name schema
    ovsdb_start "$WORK" "$1" "$2"
    SRV[$1]=$OVSDB_PID
}
# A fresh local OVS database for each side: the integration bridge and our chassis name.
ovs_fresh() {
    if [[ -n ${SRV[ovs]:-} ]]; then kill -TERM "${SRV[ovs]}"; wait_for "ovs db exit" 200 gone "${SRV[ovs]}"; fi
    rm -f "$WORK/ovs.sock"
    server ovs /usr/share/openvswitch/vswitch.ovsschema
    local v=("${OVS_ENV[@]}" ovs-vsctl --db="unix:$WORK/ovs.sock" --no-wait --timeout=20)
    "${v[@]}" init
    "${v[@]}" add-br br-int
    "${v[@]}" set Open_vSwitch . "external_ids:system-id=$HERE" external_ids:ovn-bridge=br-int
}

log "run $RUN in $WORK: $NETS networks, $ROUNDS round(s), load $(load)"
server sb /usr/share/ovn/ovn-sb.ovsschema
w=$("${OVS_ENV[@]}" python3 "$OVN_PY" fill "$WORK/sb.sock" "$HERE" $((2 * NETS)) "$NETS" "$NETS" 1 "$RUN")
log "Southbound: $w"
"${OVS_ENV[@]}" ovn-sbctl --db="unix:$WORK/sb.sock" --bare --columns=external_ids list Datapath_Binding \
    | sed -n 's/.*name=neutron-\([0-9a-f-]*\).*/ovnmeta-\1/p' >"$WORK/nets.list"
[[ $(wc -l <"$WORK/nets.list") -eq $NETS ]] || { log "expected $NETS networks in the Southbound database"; exit 1; }
for side in ours neutron; do
    "$REL/ns-bench-agent" --socket "$WORK/agent-$side.sock" --mode close 2>>"$WORK/agent.log" &
    PIDS+=($!)
    wait_for "agent $side" 200 test -S "$WORK/agent-$side.sock"
done
mkdir -p "$WORK/ours" "$WORK/neutron"
cat >"$WORK/spawner.ini" <<EOF
[DEFAULT]
metadata_proxy_socket = $WORK/agent-ours.sock
[spawner]
state_dir = $WORK/ours
proxy_binary = $REL/ns-metadata-proxy
source = ovn
[ovn]
ovn_sb_connection = unix:$WORK/sb.sock
[ovs]
ovsdb_connection = unix:$WORK/ovs.sock
EOF
cat >"$WORK/neutron.conf" <<EOF
[DEFAULT]
state_path = $WORK/neutron
metadata_proxy_socket = $WORK/agent-neutron.sock
[AGENT]
root_helper =
[ovn]
ovn_sb_connection = unix:$WORK/sb.sock
[ovs]
ovsdb_connection = unix:$WORK/ovs.sock
EOF

declare -a ROWS
# One side, one round: start it with a fresh OVS database and no agent keys in our
# Chassis_Private row, wait for its READY (ours: first pass done; Neutron: NETS namespaces
# exist), then for every namespace to answer (ns-bench wait, times from t0), sample, stop.
run_side() {
    local side=$1 round=$2 t0 w a p proxies main_pss all_pss l
    ovs_fresh
    "${OVS_ENV[@]}" ovn-sbctl --db="unix:$WORK/sb.sock" clear Chassis_Private "$HERE" external_ids
    l=$(load)
    t0=$(date +%s%N)
    if [[ $side == ours ]]; then
        w=$("${OVS_ENV[@]}" python3 "$OVN_PY" launch "$WORK/notify.sock" "$WORK/side.pid" 1200 -- \
            "$REL/ns-metadata-spawner" --config-file "$WORK/spawner.ini" run --stop-proxies-on-exit \
            2>>"$WORK/spawner.log") || true
    else
        w=$("${OVS_ENV[@]}" python3 "$OVN_PY" launch "$WORK/notify.sock" "$WORK/side.pid" 1200 -- \
            "$NEUTRON_PY" "$OVN_PY" neutron-agent "$WORK/neutron.conf" "$NETS" \
            2>>"$WORK/neutron.log") || true
    fi
    [[ $w == *ready_ms* ]] || { log "$side not ready: $w"; return 1; }
    a=$("$REL/ns-bench" wait --netns-file "$WORK/nets.list" --t0-ns "$t0" --timeout-ms 300000) \
        || { log "$side: not every namespace answered: $a"; return 1; }
    p=$(pidfile_pids "$WORK/side.pid")
    # shellcheck disable=SC2046
    set -- $(proxy_pids)
    proxies=$#
    main_pss=$(mem_kb Pss "$p")
    all_pss=$((main_pss + $(mem_kb Pss "$@")))
    log "$side round $round: $w; $a; $proxies proxies, PSS main $main_pss kB, all $all_pss kB; load $l"
    ROWS+=("$side $round $(field ready_ms "$w") $(field all_ms "$a") $proxies $main_pss $all_pss $l")
    stop_side
}

for round in $(seq "$ROUNDS"); do
    if (((round + FIRST) % 2)); then order=(ours neutron); else order=(neutron ours); fi
    for side in "${order[@]}"; do
        [[ " $SIDES " == *" $side "* ]] || continue
        run_side "$side" "$round" || exit 1
    done
done

{
    echo "## Figure 10: OVN provisioning, $NETS networks with a local VIF (issue 16)"
    echo
    echo "Commit $COMMIT, $(nproc) cores, $(date -u +%FT%TZ). Start → every \`ovnmeta-\` namespace answering"
    echo "200 on 169.254.169.254:80 (ns-bench wait, from just before the start); READY: ours after its"
    echo "first pass, Neutron's once all $NETS namespaces exist. PSS once all answer. Load: 1/5/15-min"
    echo "load average when the side started (shared machine)."
    echo
    echo "| side | round | ready ms | all answering ms | proxies | main PSS kB | total PSS kB | load |"
    echo "|---|---|---|---|---|---|---|---|"
    for r in "${ROWS[@]}"; do
        read -r s rd rdy all n mp ap l1 l2 l3 <<<"$r"
        echo "| $s | $rd | $rdy | $all | $n | $mp | $ap | $l1 $l2 $l3 |"
    done
} | tee "$OUT"
log "written $OUT"
