#!/usr/bin/env bash
# bench/run.sh [--quick] [--no-build] [--only-haproxy] [--only-ovn | --no-ovn] [--ovn-provision]
#              [--only-cold | --no-cold]
#              [--only-shapes | --no-shapes]
#              [--only-metrics] [--only-shared | --no-shared]
#
# Side-by-side benchmark: ns-metadata-proxy (and ns-metadata-spawner) vs haproxy with
# Neutron's generated config, same agent stand-in, same namespace topology. Writes
# bench/results/<stamp>.{json,md} and prints the Markdown table. Needs root. Everything it
# creates (namespaces, veths, processes, files) carries a per-run prefix and is removed on
# exit, also on Ctrl-C or error. See bench/README.md for what each figure means.
set -euo pipefail

QUICK=0 BUILD=1 OURS=auto ONLY_OVN=0 OVN=1 OVN_PROVISION=0 ONLY_COLD=0 COLD=1 ONLY_SHAPES=0 SHAPES=1 ONLY_METRICS=0 ONLY_SHARED=0 SHARED=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --only-haproxy) OURS=0 ;;
        --only-ovn) ONLY_OVN=1 ;;
        --no-ovn) OVN=0 ;;
        --ovn-provision) OVN_PROVISION=1 ;;
        --only-cold) ONLY_COLD=1 ;;
        --no-cold) COLD=0 ;;
        --only-shapes) ONLY_SHAPES=1 ;;
        --no-shapes) SHAPES=0 ;;
        --only-metrics) ONLY_METRICS=1 ;;
        --only-shared) ONLY_SHARED=1 ;;
        --no-shared) SHARED=0 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
[[ $EUID -eq 0 ]] || { echo "run.sh: needs root (namespaces, port 80)" >&2; exit 1; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
REL=$CARGO_TARGET_DIR/release
if [[ $QUICK == 1 ]]; then
    RUNS=1 DUR=3 IDLE=10 KILLS=3 CEIL_SECS=2 MIN_REQ=0 N=${NSB_N:-200}
    MANY_RUNS=1 DROPIN_K=10
else
    RUNS=5 DUR=5 IDLE=30 KILLS=10 CEIL_SECS=3 MIN_REQ=1000000 N=${NSB_N:-200}
    MANY_RUNS=3 DROPIN_K=20
fi
# Figure 7: routers PUT before the timed ones, timed ones (the same in --quick: ~3 s).
PUT_FILL=5000 PUT_MEASURE=1000
# Figure 8: proxies started through Neutron's driver for the memory sample (at most N: they
# use figure 2's namespaces); DROPIN_K of them are also timed one by one per round.
DROPIN_N=${NSB_DROPIN_N:-$N}
((DROPIN_N <= N)) || DROPIN_N=$N
((DROPIN_K <= DROPIN_N)) || DROPIN_K=$DROPIN_N
NEUTRON_VENV=${NS_NEUTRON_VENV:-/opt/ns-metadata-ci/neutron-29.0.0}
NEUTRON_PY=$NEUTRON_VENV/bin/python
REAL_HAPROXY=/usr/sbin/haproxy
# Figure 9 (issue 15): Port_Binding rows in the Southbound database, how many bound to this
# chassis, networks (one localport metadata port each, counted in the rows), chassis.
OVN_PORTS=${NSB_OVN_PORTS:-50000} OVN_HERE=500 OVN_NETS=500 OVN_CHASSIS=100
((OVN_PORTS >= 2 * (OVN_HERE + OVN_NETS))) || { echo "run.sh: NSB_OVN_PORTS must be at least $((2 * (OVN_HERE + OVN_NETS)))" >&2; exit 2; }

log() { printf '%s run.sh: %s\n' "$(date -u +%T)" "$*" >&2; }
# Neutron 29's venv (figures 8 and 9), created as .ci/run does if missing.
neutron_venv() {
    [[ -x $NEUTRON_PY ]] && return 0
    log "creating $NEUTRON_VENV (python3 -m venv; pip install neutron==29.0.0), as .ci/run does"
    python3 -m venv "$NEUTRON_VENV" >&2 && "$NEUTRON_VENV/bin/pip" install -q --disable-pip-version-check neutron==29.0.0 >&2
}

# ---------------------------------------------------------------- tools
need=()
[[ $ONLY_OVN == 1 ]] || command -v haproxy >/dev/null && [[ -x $REAL_HAPROXY ]] || need+=(haproxy)
[[ $ONLY_OVN == 1 ]] || command -v wrk >/dev/null || need+=(wrk)
if ((${#need[@]})); then
    log "installing ${need[*]} from apt"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2; }
fi
# Under sudo, build as the invoking user with their rustup cargo (target/ must not become
# root-owned), like examples/quickstart.sh; otherwise with the cargo in PATH.
cargo_build() {
    local user=${SUDO_USER:-root} home cargo
    home=$(getent passwd "$user" | cut -d: -f6)
    if [[ $user != root && -x $home/.cargo/bin/cargo ]]; then
        runuser -u "$user" -- env HOME="$home" PATH="$home/.cargo/bin:$PATH" CARGO_TARGET_DIR="$CARGO_TARGET_DIR" \
            "$home/.cargo/bin/cargo" build --release --manifest-path "$REPO/Cargo.toml" "$@" >&2
    else
        cargo=$(command -v cargo || echo /root/.cargo/bin/cargo)
        "$cargo" build --release --manifest-path "$REPO/Cargo.toml" "$@" >&2
    fi
}
# The commit the binaries are built from (others may commit while the run goes on).
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]] || COMMIT="$COMMIT+dirty"
if [[ $BUILD == 1 ]]; then
    log "cargo build --release --workspace --bins"
    if ! cargo_build --workspace --bins; then
        log "workspace build failed; building ns-bench alone, ours is skipped"
        cargo_build -p ns-bench
        OURS=0
    fi
fi
AGENT=$REL/ns-bench-agent TOOL=$REL/ns-bench
PROXY=$REL/ns-metadata-proxy SPAWNER=$REL/ns-metadata-spawner
[[ -x $AGENT && -x $TOOL ]] || { echo "run.sh: $AGENT or $TOOL missing (build first)" >&2; exit 1; }
# Figure 10 (issue 16) runs alone, in a mount namespace of its own: bench/ovn_provision.sh.
[[ $OVN_PROVISION == 0 ]] || NSB_OVNP_COMMIT=$COMMIT exec "$REPO/bench/ovn_provision.sh"
if [[ $OURS == auto ]]; then
    OURS=0
    if [[ -x $PROXY ]] && "$PROXY" --help 2>/dev/null | grep -q -- '--agent-keepalive'; then OURS=1; fi
fi
SPAWN=0
if [[ $OURS == 1 && -x $SPAWNER ]] && "$SPAWNER" --help >/dev/null 2>&1; then SPAWN=1; fi
log "ours: proxy=$OURS spawner=$SPAWN; quick=$QUICK runs=$RUNS duration=${DUR}s"

# ---------------------------------------------------------------- per-run state and cleanup
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
RUN=$(printf '%04x' $((RANDOM)))
PFX=nsb$RUN                          # every namespace and veth name starts with this
WORK=$(mktemp -d "/tmp/nsb-$RUN.XXXX")
RAW=$WORK/raw.tsv
: >"$RAW"
PIDS=()                              # processes this script started directly
declare -A NEUTRON_PID NIN NOUT      # figure 8: Neutron's driver per side, its stdin and stdout fds
CLK=$(getconf CLK_TCK)

# The process is one this run started (its command line names the run directory or run id).
is_ours() { { tr '\0' ' ' </proc/"$1"/cmdline; } 2>/dev/null | grep -q -e "$WORK" -e "$RUN"; }
# The pid is the first field (the spawner's pid files hold `pid starttime netns-inode iface`).
pidfile_pids() { local f p _; for f in "$@"; do [[ -s $f ]] && read -r p _ <"$f" && echo "$p"; done 2>/dev/null || true; }

# Every pid file of a proxy this run had started for it (bench haproxy, both spawners,
# Neutron's driver in figure 8).
run_pidfile_pids() {
    pidfile_pids "$WORK"/hap/*.pid "$WORK"/spawner/pids/*.pid "$WORK"/spawner-api/pids/*.pid "$WORK"/spawner-mx/pids/*.pid \
        "$WORK"/neutron-*/external/pids/*.pid.haproxy "$WORK"/ovn/*.pid \
        "$WORK"/cold/hap/*.pid "$WORK"/cold/sp/pids/*.pid
}

cleanup() {
    local rc=$? p ns
    trap - EXIT INT TERM
    trap '' PIPE # a closed stderr must not end the cleanup half-way
    set +e       # every step below runs, whatever the one before it did
    log "cleanup"
    # Neutron's driver first, at once: its ProcessMonitor would respawn the proxies killed
    # below, and in the middle of a spawn it does not act on SIGTERM until the spawn returns.
    for p in "${NEUTRON_PID[@]}"; do disown "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
    for p in "${NEUTRON_PID[@]}"; do wait_for "neutron_driver.py $p exit" 100 gone "$p"; done
    # Indirectly started processes are found through the pid files this run wrote, and
    # only killed if their cmdline still names this run's directory or router ids.
    for p in $(run_pidfile_pids) "${PIDS[@]}"; do
        if is_ours "$p"; then
            kill -TERM "$p" 2>/dev/null || true
        fi
    done
    for _ in $(seq 50); do
        local alive=0
        for p in $(run_pidfile_pids) "${PIDS[@]}"; do
            if is_ours "$p"; then alive=1; fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for p in $(run_pidfile_pids) "${PIDS[@]}"; do
        if is_ours "$p"; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    for ns in $(ip netns list | awk '{print $1}' | grep "^$PFX-" || true); do
        ip netns delete "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A write to Neutron's driver after it died (figure 8) ends the run through the cleanup.
trap 'exit 141' PIPE

# A numeric field of the one-line JSON the ns-bench tool prints.
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
# The process has exited (gone, or a zombie not yet reaped).
gone() { [[ ! -r /proc/$1/stat ]] || [[ $(sed 's/.*) //' /proc/"$1"/stat | cut -c1) == Z ]]; }
sample() {
    if [[ -z $3 ]]; then
        log "no value for $1 ($2); sample skipped"
        return 0
    fi
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"
}
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh" # mem_kb, spawner_ini, wait_for, ovsdb_start
# Our proxies run in a session of their own, as the spawner (POSIX_SPAWN_SETSID) and the
# haproxy drop-in (`daemon`) start them and as haproxy's `daemon` puts itself. With
# sched_autogroup (the default of Debian's and Ubuntu's kernels) a session is a scheduling
# group: a proxy left in this script's session shares one group's CPU with wrk and the agent
# stand-in while haproxy gets a group of its own (measured: 0.93-1.01x haproxy's req/s at c32
# keep-alive in our session, 1.03-1.17x in its own; bench/RESULTS.md, session 10). setsid(1)
# execs in place here (a background job of a script is no group leader), so $! is the proxy;
# own_session checks that (haproxy's too), once the process answers.
own_session() { # pid
    local sid
    sid=$(awk '{sub(/^.*\) /, ""); print $4}' /proc/"$1"/stat 2>/dev/null) || return 0
    [[ $sid == "$1" ]] || log "warning: pid $1 is not in a session of its own (sid $sid): CPU shares differ from haproxy's"
}
# utime+stime in clock ticks (all threads).
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' /proc/"$1"/stat; }
# MemAvailable and the memory the kernel accounts to processes and itself
# (AnonPages + KernelStack + PageTables + SUnreclaim + Shmem), in kB: "memavail accounted",
# each the median of five samples 0.1 s apart. MemAvailable on this VM drifts upward by tens
# of MB/s at rest (MemFree rises, AnonPages flat), which swamps 200 small proxies; the
# accounted sum does not drift but moves with whatever else runs on the machine.
meminfo_kb() {
    local i
    for i in 1 2 3 4 5; do
        awk '$1 == "MemAvailable:" {a = $2}
             $1 ~ /^(AnonPages|KernelStack|PageTables|SUnreclaim|Shmem):$/ {s += $2}
             END {print a, s}' /proc/meminfo
        ((i == 5)) || sleep 0.1
    done >"$WORK/meminfo.tmp"
    echo "$(cut -d' ' -f1 "$WORK/meminfo.tmp" | sort -n | sed -n 3p) $(cut -d' ' -f2 "$WORK/meminfo.tmp" | sort -n | sed -n 3p)"
}
http_ok() { [[ $(ip netns exec "$1" curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://169.254.169.254/latest/meta-data/) == 200 ]]; }
rid() { printf '%s-0000-4000-8000-%012d' "0000$RUN" "$1"; }   # UUID-like router id, unique per run

start_agent() { # name mode -> socket path; pid appended to PIDS
    local sock=$WORK/agent-$1.sock
    "$AGENT" --socket "$sock" --mode "$2" 2>>"$WORK/agent.log" &
    PIDS+=($!)
    wait_for "agent $1" 100 test -S "$sock"
    AGENT_PID[$1]=$!
}
declare -A AGENT_PID PROXY_PID

haproxy_cfg() { # id socket pidfile -> config text (Neutron's template: neutron/common/metadata.py)
    cat <<EOF
global
    log         /dev/log local0 info
    log-tag     haproxy-metadata-proxy-$1
    user        root
    group       root
    maxconn     1024
    nbthread    2
    pidfile     $3
    daemon

defaults
    log global
    mode http
    option httplog
    option dontlognull
    option http-server-close
    option forwardfor
    retries                 3
    timeout http-request    30s
    timeout connect         30s
    timeout client          32s
    timeout server          32s
    timeout http-keep-alive 30s

listen listener
    bind 169.254.169.254:80

    server metadata $2

    http-request del-header X-Neutron-Network-ID
    http-request set-header X-Neutron-Router-ID $1
EOF
}

# ---------------------------------------------------------------- figure 9: OVN Southbound, 50,000 Port_Binding rows
# Issue 15: our agent's OVN resolver (conditional monitor) against Neutron 29's
# MetadataAgentOvnSbIdl (its full replica) on the same ovsdb-server: start -> ready, memory
# once ready, Southbound bytes (through one byte-counting relay per side, bench/ovn_sb.py
# relay) and the server's CPU. Everything on Unix sockets in $WORK/ovn; the OVS programs'
# run/log/db dirs point there too. Sides alternate which goes first per round.
OVN_PY=$REPO/bench/ovn_sb.py
OVNDIR=$WORK/ovn
OVN_HERE_NAME=bench-here-$RUN
# A plain command prefix (not a function), so that `$!` of `"${OVS_ENV[@]}" prog &` is prog's pid.
OVS_ENV=(env PYTHONDONTWRITEBYTECODE=1 OVS_RUNDIR="$OVNDIR" OVS_DBDIR="$OVNDIR" OVS_LOGDIR="$OVNDIR"
    OVS_SYSCONFDIR="$OVNDIR")
# ovsdb-server NAME serving a new database of SCHEMA on $OVNDIR/NAME.sock (pid: OVN_SRV[NAME]).
declare -A OVN_SRV
ovn_server() { # name schema
    ovsdb_start "$OVNDIR" "$1" "$2"
    OVN_SRV[$1]=$OVSDB_PID
}
ovn_relay() { # side
    "${OVS_ENV[@]}" python3 "$OVN_PY" relay "$OVNDIR/relay-$1.sock" "$OVNDIR/sb.sock" "$OVNDIR/relay-$1.json" \
        2>>"$OVNDIR/relay.log" &
    PIDS+=($!)
    wait_for "relay $1" 200 test -s "$OVNDIR/relay-$1.json"
}
# One side, one round: start it, wait for READY=1, sample, wait 1 s, count bytes, stop it.
ovn_side() {
    local side=$1 w before after t0 t1 p
    before=$(cat "$OVNDIR/relay-$side.json")
    t0=$(cpu_ticks "${OVN_SRV[sb]}")
    if [[ $side == ours ]]; then
        w=$("${OVS_ENV[@]}" python3 "$OVN_PY" launch "$OVNDIR/notify-$side.sock" "$OVNDIR/$side.pid" 60 -- \
            "$REL/ns-metadata-agent" --config-file "$OVNDIR/agent.ini" 2>>"$OVNDIR/agent.log") || true
    else
        w=$("${OVS_ENV[@]}" python3 "$OVN_PY" launch "$OVNDIR/notify-$side.sock" "$OVNDIR/$side.pid" 600 -- \
            "$NEUTRON_PY" "$OVN_PY" neutron "unix:$OVNDIR/relay-neutron.sock" "$OVN_HERE_NAME" "$OVN_PORTS" \
            2>>"$OVNDIR/neutron.log") || true
    fi
    p=$(pidfile_pids "$OVNDIR/$side.pid")
    if [[ $w != *ready_ms* ]]; then
        log "figure 9: $side not ready: $w"
        [[ -z $p ]] || ! is_ours "$p" || kill -KILL "$p"
        return 1
    fi
    log "figure 9: $side $w"
    sleep 1
    t1=$(cpu_ticks "${OVN_SRV[sb]}")
    after=$(cat "$OVNDIR/relay-$side.json")
    sample ovn_ready_ms "$side" "$(field ready_ms "$w")"
    sample ovn_hwm_kb "$side" "$(field hwm_kb "$w")"
    sample ovn_rss_kb "$side" "$(field rss_kb "$w")"
    sample ovn_pss_kb "$side" "$(field pss_kb "$w")"
    sample ovn_sb_down_bytes "$side" $(($(field down "$after") - $(field down "$before")))
    sample ovn_sb_up_bytes "$side" $(($(field up "$after") - $(field up "$before")))
    sample ovn_sb_conns "$side" $(($(field conns "$after") - $(field conns "$before")))
    sample ovn_server_cpu_ms "$side" $(((t1 - t0) * 1000 / CLK))
    if [[ $side == neutron ]]; then
        sample ovn_neutron_import_ms neutron "$(field import_ms "$w")"
        sample ovn_neutron_replica_ms neutron "$(field replica_ms "$w")"
        sample ovn_neutron_port_bindings neutron "$(field port_bindings "$w")"
    fi
    kill -TERM "$p"
    wait_for "figure 9 $side exit" 200 gone "$p" || kill -KILL "$p" 2>/dev/null || true
    rm -f "$OVNDIR/$side.pid"
}
ovn_figure() {
    local run w p
    for p in ovsdb-tool ovsdb-server ovs-vsctl; do
        command -v "$p" >/dev/null || { log "figure 9 skipped: no $p (openvswitch-common, openvswitch-switch)"; return 0; }
    done
    [[ -f /usr/share/ovn/ovn-sb.ovsschema && -f /usr/share/openvswitch/vswitch.ovsschema ]] \
        || { log "figure 9 skipped: no ovn-sb.ovsschema (ovn-common) or vswitch.ovsschema"; return 0; }
    [[ -x $REL/ns-metadata-agent ]] && "$REL/ns-metadata-agent" --help 2>/dev/null | grep -q -- '--ovn-sb-connection' \
        || { log "figure 9 skipped: no ns-metadata-agent with the OVN resolver in $REL"; return 0; }
    neutron_venv || { log "figure 9 skipped: no Neutron venv at $NEUTRON_VENV"; return 0; }
    mkdir -p "$OVNDIR"
    ovn_server sb /usr/share/ovn/ovn-sb.ovsschema
    ovn_server ovs /usr/share/openvswitch/vswitch.ovsschema
    "${OVS_ENV[@]}" ovs-vsctl --db="unix:$OVNDIR/ovs.sock" --no-wait --timeout=20 init
    "${OVS_ENV[@]}" ovs-vsctl --db="unix:$OVNDIR/ovs.sock" --no-wait --timeout=20 set Open_vSwitch . \
        "external_ids:system-id=$OVN_HERE_NAME" external_ids:ovn-bridge=br-int
    log "figure 9: filling the Southbound database: $OVN_PORTS Port_Binding rows ($OVN_HERE here, $OVN_NETS localports), $OVN_CHASSIS chassis"
    w=$("${OVS_ENV[@]}" python3 "$OVN_PY" fill "$OVNDIR/sb.sock" "$OVN_HERE_NAME" "$OVN_PORTS" "$OVN_HERE" "$OVN_NETS" "$OVN_CHASSIS") \
        || { log "figure 9 skipped: filling the database failed: $w"; return 0; }
    log "figure 9: $w"
    sample ovn_fill_s setup "$(field secs "$w")"
    sample ovn_port_bindings setup "$OVN_PORTS"
    sample ovn_here setup "$OVN_HERE"
    sample ovn_localports setup "$OVN_NETS"
    sample ovn_chassis setup "$OVN_CHASSIS"
    cat >"$OVNDIR/agent.ini" <<EOT
[DEFAULT]
metadata_proxy_socket = $OVNDIR/agent.sock
nova_metadata_host = 127.0.0.1
nova_metadata_port = 9
metadata_proxy_shared_secret = bench
metadata_workers = 1

[ovs]
ovsdb_connection = unix:$OVNDIR/ovs.sock

[ovn]
ovn_sb_connection = unix:$OVNDIR/relay-ours.sock
EOT
    ovn_relay ours
    ovn_relay neutron
    for run in $(seq "$MANY_RUNS"); do
        if ((run % 2)); then
            ovn_side ours && ovn_side neutron || return 0
        else
            ovn_side neutron && ovn_side ours || return 0
        fi
    done
}

# ---------------------------------------------------------------- figure 12: agent shapes (issue 19)
# One proxy each in front of each agent shape, req/s and CPU per request at c32 (keep-alive
# and Connection: close): the stand-in in close mode (Neutron-like) and nginx serving a Unix
# socket (a plain keep-alive HTTP/1.1 server that never advertises reuse; skipped without
# nginx). Per shape: ours with --agent-keepalive off and auto (the default), haproxy with
# Neutron's template as rendered (its `log` lines) and without them. Variants of a shape share
# its agent; each wrk run gets a fresh vm namespace (as figure 3); rounds rotate the order.
# Names: $PFX-sq-<shape>-<variant> / $PFX-sv-…, addresses 10.250.81-88.0/24.
SH_SHAPES=(close nginx)
SHAPE_RUNS=3
[[ $QUICK == 0 ]] || SHAPE_RUNS=1
SH_VARIANTS=(off auto haproxy haproxy_nolog)
declare -A SH_IDX SH_PID SH_AGENT SH_LINK
SH_LINKS=0
# A fresh vm namespace VM joined to router namespace QR by the veth A (in QR, NET.1/24) and B
# (in VM, NET.2/24), 169.254.169.254 routed through it; the previous veth OLD (in QR, if any)
# deleted first, which removes its other end and address. Same client settings everywhere.
fresh_vm_link() { # qr vm net a b [old]
    local qr=$1 vm=$2 net=$3 a=$4 b=$5 old=${6:-}
    [[ -n $old ]] && ip -n "$qr" link delete "$old"
    ip netns delete "$vm" 2>/dev/null || true
    ip netns add "$vm"
    ip netns exec "$vm" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
    ip link add "$a" netns "$qr" type veth peer name "$b" netns "$vm"
    ip -n "$qr" addr add "$net.1/24" dev "$a"
    ip -n "$qr" link set "$a" up
    ip -n "$vm" link set lo up
    ip -n "$vm" addr add "$net.2/24" dev "$b"
    ip -n "$vm" link set "$b" up
    ip -n "$vm" route add 169.254.169.254/32 via "$net.1"
}
shape_link() { # shape variant: a fresh vm namespace and veth to the variant's qrouter namespace
    local k=$1-$2 i=${SH_IDX[$1-$2]} qr=$PFX-sq-$1-$2 vm=$PFX-sv-$1-$2 net
    net=10.250.$((80 + i))
    SH_LINKS=$((SH_LINKS + 1))
    local a=${PFX}s${i}a$SH_LINKS b=${PFX}s${i}b$SH_LINKS
    fresh_vm_link "$qr" "$vm" "$net" "$a" "$b" "${SH_LINK[$k]:-}"
    SH_LINK[$k]=$a
}
# nginx in the foreground, one process (one core, like the stand-in), keep-alive on (75 s,
# 10,000 requests per connection), no access log, a fixed 62-byte 200 like the stand-in's.
shape_nginx() {
    local d=$WORK/nginx
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOT
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp; proxy_temp_path $d/tmp; fastcgi_temp_path $d/tmp;
    uwsgi_temp_path $d/tmp; scgi_temp_path $d/tmp;
    keepalive_timeout 75s;
    keepalive_requests 10000;
    server {
        listen unix:$WORK/agent-shape-nginx.sock;
        default_type "text/plain; charset=UTF-8";
        location / { return 200 "ami-id\nhostname\ninstance-id\nlocal-ipv4\npublic-keys/\nuser-data\n"; }
    }
}
EOT
    nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" </dev/null >/dev/null 2>>"$d/error.log" &
    PIDS+=($!)
    SH_AGENT[nginx]=$!
    wait_for "nginx" 100 test -S "$WORK/agent-shape-nginx.sock"
}
shape_up() { # shape variant
    local s=$1 v=$2 k=$1-$2 qr=$PFX-sq-$1-$2 sock=$WORK/agent-shape-$1.sock id
    id=$(rid $((900 + SH_IDX[$k])))
    ip netns add "$qr"
    ip -n "$qr" link set lo up
    ip -n "$qr" addr add 169.254.169.254/32 dev lo
    shape_link "$s" "$v"
    case $v in
        haproxy | haproxy_nolog)
            mkdir -p "$WORK/hap"
            if [[ $v == haproxy ]]; then
                haproxy_cfg "$id" "$sock" "$WORK/hap/shape-$k.pid" >"$WORK/hap/shape-$k.conf"
            else
                haproxy_cfg "$id" "$sock" "$WORK/hap/shape-$k.pid" | grep -v -e '^ *log ' -e '^ *log-tag ' >"$WORK/hap/shape-$k.conf"
            fi
            ip netns exec "$qr" env PROCESS_TAG="haproxy-$id" haproxy -f "$WORK/hap/shape-$k.conf"
            SH_PID[$k]=$(cat "$WORK/hap/shape-$k.pid")
            PIDS+=("${SH_PID[$k]}")
            ;;
        off | auto)
            cp "$PROXY" "$WORK/ns-metadata-proxy-shape-$k"
            setsid "$WORK/ns-metadata-proxy-shape-$k" --router-id "$id" --metadata-proxy-socket "$sock" \
                --bind 169.254.169.254:80 --agent-keepalive "$v" --threads "${NSB_SHAPE_THREADS:-1}" \
                --netns "$qr" 2>>"$WORK/proxy-shape-$k.log" &
            SH_PID[$k]=$!
            PIDS+=($!)
            ;;
    esac
    wait_for "figure 12 $k answering" 200 http_ok "$PFX-sv-$k"
    own_session "${SH_PID[$k]}"
}
shape_wrk() { # shape variant load threads conns [header]
    local s=$1 v=$2 load=$3 t=$4 c=$5 hdr=${6:-} k=$1-$2 p a c0 c1 a0 a1 out key
    local -a extra=()
    p=${SH_PID[$k]} a=${SH_AGENT[$s]} key=shape_${s}_$load
    shape_link "$s" "$v"
    [[ -n $hdr ]] && extra=(-H "$hdr")
    c0=$(cpu_ticks "$p") a0=$(cpu_ticks "$a")
    out=$(ip netns exec "$PFX-sv-$k" wrk -t"$t" -c"$c" -d"${DUR}s" --timeout 5s -s "$WORK/shapes.lua" "${extra[@]}" \
        http://169.254.169.254/latest/meta-data/ | grep '^SHAPE')
    c1=$(cpu_ticks "$p") a1=$(cpu_ticks "$a")
    read -r _ req dur err <<<"$out"
    sample "${key}_rps" "$v" "$(awk -v r="$req" -v d="$dur" 'BEGIN {printf "%.1f", r / (d / 1e6)}')"
    sample "${key}_cpu_us" "$v" "$(awk -v d=$((c1 - c0)) -v r="$req" -v k="$CLK" 'BEGIN {printf "%.2f", d * 1e6 / k / r}')"
    sample "${key}_agent_cpu_us" "$v" "$(awk -v d=$((a1 - a0)) -v r="$req" -v k="$CLK" 'BEGIN {printf "%.2f", d * 1e6 / k / r}')"
    sample "${key}_errors" "$v" "$err"
    sample shape_load1 run "$(cut -d' ' -f1 /proc/loadavg)"
}
shapes_figure() {
    local s v i=0 run k n cfg load t c hdr
    local -a vs=("${SH_VARIANTS[@]}")
    [[ $OURS == 1 ]] || vs=(haproxy haproxy_nolog)
    cat >"$WORK/shapes.lua" <<'EOT'
done = function(s, latency, requests)
  io.write(string.format("SHAPE %d %d %d\n", s.requests, s.duration,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout + s.errors.status))
end
EOT
    local -a shapes=()
    for s in "${SH_SHAPES[@]}"; do
        case $s in
            close)
                "$AGENT" --socket "$WORK/agent-shape-close.sock" --mode close 2>>"$WORK/agent.log" &
                PIDS+=($!)
                SH_AGENT[close]=$!
                wait_for "agent shape close" 100 test -S "$WORK/agent-shape-close.sock"
                ;;
            nginx)
                if ! command -v nginx >/dev/null; then
                    log "figure 12: nginx skipped: no nginx"
                    sample shape_skipped nginx 1
                    continue
                fi
                shape_nginx
                ;;
        esac
        shapes+=("$s")
        for v in "${vs[@]}"; do
            i=$((i + 1))
            SH_IDX[$s-$v]=$i
            shape_up "$s" "$v"
        done
    done
    log "figure 12: agent shapes ${shapes[*]} x ${vs[*]}, $SHAPE_RUNS rounds of ${DUR}s wrk runs"
    for run in $(seq "$SHAPE_RUNS"); do
        for cfg in "ka_c32 2 32" "close_c32 2 32 Connection: close"; do
            read -r load t c hdr <<<"$cfg"
            for s in "${shapes[@]}"; do
                n=${#vs[@]}
                for k in $(seq 0 $((n - 1))); do
                    v=${vs[$(((k + run) % n))]}
                    log "figure 12: run $run/$SHAPE_RUNS $load $s $v (load $(cut -d' ' -f1 /proc/loadavg))"
                    shape_wrk "$s" "$v" "$load" "$t" "$c" "$hdr"
                done
            done
        done
    done
}

# ---------------------------------------------------------------- report
write_report() {
    mkdir -p "$REPO/bench/results"
    local stamp
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    "$TOOL" report --raw "$RAW" --json "$REPO/bench/results/$stamp.json" --md "$REPO/bench/results/$stamp.md" \
        --meta "date=$(date -u +%FT%TZ)" --meta "quick=$QUICK" --meta "runs=$RUNS" --meta "many_runs=$MANY_RUNS" --meta "duration_s=$DUR" \
        --meta "idle_s=$IDLE" --meta "n=$N" --meta "kernel=$(uname -r)" --meta "cpus=$(nproc)" \
        --meta "loadavg_start=$LOAD_START" --meta "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" \
        --meta "elapsed_s=$(($(date +%s) - T_START))" --meta "haproxy=$(haproxy -v 2>/dev/null | head -1)" \
        --meta "commit=$COMMIT" --meta "built=$BUILD" \
        --meta "ours_proxy=$OURS" --meta "ours_spawner=$SPAWN" --meta "only_ovn=$ONLY_OVN" --meta "only_cold=$ONLY_COLD"
    cp "$RAW" "$REPO/bench/results/$stamp.raw.tsv"
    # Under sudo the results belong to the invoking user, like the build.
    [[ -z ${SUDO_USER:-} ]] || chown -R "$SUDO_USER:" "$REPO/bench/results" 2>/dev/null || true
    log "results: bench/results/$stamp.{md,json,raw.tsv}"
}
# ---------------------------------------------------------------- figure 11: cold start (issue 19)
# bench/cold.sh, in a mount namespace of its own (private /run/netns): rows N = $COLD_NS.
COLD_NS=${NSB_COLD_NS:-200 1000 2000}
# --only-NAME: run figure N's function alone, write the report if it measured anything, exit.
only_figure() { # figure-number option-name function
    log "figure $1 only (--only-$2)"
    "$3"
    if [[ -s $RAW ]]; then write_report; else log "figure $1 measured nothing; no report"; fi
    exit 0
}
cold_figure() {
    [[ $SPAWN == 1 ]] || { log "figure 11 skipped: no spawner"; return 0; }
    log "figure 11: cold start of N = $COLD_NS namespaces, ours vs haproxy ($MANY_RUNS rounds)"
    start_agent cold close
    haproxy_cfg @ID@ "$WORK/agent-cold.sock" @PIDFILE@ >"$WORK/cold-haproxy.tmpl"
    WORK=$WORK RUN=$RUN TOOL=$TOOL SPAWNER=$SPAWNER PROXY=$PROXY RAW=$RAW COLD_SOCK=$WORK/agent-cold.sock \
        COLD_NS=$COLD_NS COLD_RUNS=$MANY_RUNS COLD_HAPROXY_TMPL=$WORK/cold-haproxy.tmpl unshare --mount --propagation private "$REPO/bench/cold.sh" \
        || log "figure 11 failed (see $WORK/cold/spawner.log)"
    kill "${AGENT_PID[cold]}"
}
[[ $ONLY_COLD != 1 ]] || only_figure 11 cold cold_figure
# ---------------------------------------------------------------- figure 14: shared model (issue 20)
# bench/shared.sh, in a mount namespace of its own like figure 11: rows N = $SHARED_NS.
SHARED_NS=${NSB_SHARED_NS:-200 1000 2000}
shared_figure() {
    [[ $SPAWN == 1 ]] || { log "figure 14 skipped: no spawner"; return 0; }
    log "figure 14: shared model vs per-namespace vs haproxy, N = $SHARED_NS ($MANY_RUNS rounds)"
    start_agent shared close
    haproxy_cfg @ID@ "$WORK/agent-shared.sock" @PIDFILE@ >"$WORK/shared-haproxy.tmpl"
    cat >"$WORK/shared.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("NSBENCH %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
EOF
    WORK=$WORK RUN=$RUN TOOL=$TOOL SPAWNER=$SPAWNER PROXY=$PROXY RAW=$RAW SH_SOCK=$WORK/agent-shared.sock \
        SH_NS=$SHARED_NS SH_RUNS=$MANY_RUNS SH_DUR=$DUR SH_LUA=$WORK/shared.lua SH_HAPROXY_TMPL=$WORK/shared-haproxy.tmpl \
        unshare --mount --propagation private "$REPO/bench/shared.sh" \
        || log "figure 14 failed (see $WORK/shared/spawner-*.log)"
    kill "${AGENT_PID[shared]}"
}
[[ $ONLY_SHARED != 1 ]] || only_figure 14 shared shared_figure
if [[ $ONLY_SHAPES == 1 ]]; then
    log "figure 12 only (--only-shapes)"
    shapes_figure
    write_report
    exit 0
fi
[[ $ONLY_OVN != 1 ]] || only_figure 9 ovn ovn_figure

# ---------------------------------------------------------------- agent ceiling
if [[ $ONLY_METRICS == 0 ]]; then
    log "agent stand-in ceiling (direct Unix-socket load, ${CEIL_SECS}s x $MANY_RUNS)"
    start_agent ceil-close close
    start_agent ceil-keepalive keepalive
    for _ in $(seq "$MANY_RUNS"); do
        v=$("$TOOL" agent-load --socket "$WORK/agent-ceil-close.sock" --secs "$CEIL_SECS")
        sample agent_ceiling_rps close "$(field rps "$v")"
        v=$("$TOOL" agent-load --socket "$WORK/agent-ceil-keepalive.sock" --secs "$CEIL_SECS" --reuse)
        sample agent_ceiling_rps keepalive "$(field rps "$v")"
    done
    kill "${AGENT_PID[ceil-close]}" "${AGENT_PID[ceil-keepalive]}"
fi

# ---------------------------------------------------------------- figures 1 and 3: one proxy each
VARIANTS=(haproxy)
[[ $OURS == 1 ]] && VARIANTS+=(off on)
# --only-metrics: no figure 1 proxies; figure 13 below uses the same helpers.
[[ $ONLY_METRICS == 0 ]] || VARIANTS=()
declare -A VIDX
LINKS=0
# (Re)create the vm namespace of variant $1 and its veth to the qrouter namespace. Every wrk
# run gets a fresh one: wrk closes first, so each Connection: close run leaves tens of
# thousands of client TIME_WAIT sockets behind, and in the same namespace they would turn the
# next run's connect() into a port search (measured: c1 close fell from ~13k to ~650 req/s
# depending only on which variant ran after which). The wider port range and tcp_tw_reuse
# keep that from happening inside one run too. Same client settings for every variant.
vm_link() {
    local v=$1 i=${VIDX[$1]} vm=$PFX-vm-$1 qr=$PFX-qrouter-$1 net=10.250.$((70 + ${VIDX[$1]}))
    LINKS=$((LINKS + 1))
    local a=${PFX}${i}a$LINKS b=${PFX}${i}b$LINKS
    fresh_vm_link "$qr" "$vm" "$net" "$a" "$b" "${QR_LINK[$v]:-}"
    QR_LINK[$v]=$a
}
declare -A QR_LINK
i=0
for v in "${VARIANTS[@]}"; do
    i=$((i + 1))
    VIDX[$v]=$i
    qr=$PFX-qrouter-$v vm=$PFX-vm-$v
    ip netns add "$qr"
    ip -n "$qr" link set lo up
    ip -n "$qr" addr add 169.254.169.254/32 dev lo
    vm_link "$v"
    id=$(rid "$i")
    case $v in
        haproxy)
            start_agent "$v" close
            mkdir -p "$WORK/single"
            haproxy_cfg "$id" "$WORK/agent-$v.sock" "$WORK/single/haproxy.pid" >"$WORK/single/haproxy.conf"
            ip netns exec "$qr" haproxy -f "$WORK/single/haproxy.conf"
            PROXY_PID[$v]=$(cat "$WORK/single/haproxy.pid")
            PIDS+=("${PROXY_PID[$v]}")
            ;;
        off | on)
            if [[ $v == on ]]; then start_agent "$v" keepalive; else start_agent "$v" close; fi
            # A private copy per mode, so the two processes share no text pages (PSS).
            cp "$PROXY" "$WORK/ns-metadata-proxy-$v"
            setsid "$WORK/ns-metadata-proxy-$v" --router-id "$id" --metadata-proxy-socket "$WORK/agent-$v.sock" \
                --bind 169.254.169.254:80 --agent-keepalive "$v" --netns "$qr" 2>>"$WORK/proxy-$v.log" &
            PROXY_PID[$v]=$!
            PIDS+=($!)
            ;;
    esac
    wait_for "$v answering" 200 http_ok "$vm"
    own_session "${PROXY_PID[$v]}"
done
sleep 1
for v in "${VARIANTS[@]}"; do
    sample pss_idle_kb "$v" "$(mem_kb Pss "${PROXY_PID[$v]}")"
    sample rss_idle_kb "$v" "$(mem_kb Rss "${PROXY_PID[$v]}")"
done

cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("NSBENCH %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
EOF
declare -A TOTAL
for v in "${VARIANTS[@]}"; do TOTAL[$v]=0; done
# One wrk run; records the samples. args: variant key threads conns [header]
wrk_run() {
    local v=$1 key=$2 t=$3 c=$4 hdr=${5:-} p=${PROXY_PID[$1]} a=${AGENT_PID[$1]} c0 c1 a0 a1 out
    local -a extra=()
    vm_link "$v"
    [[ -n $hdr ]] && extra=(-H "$hdr")
    c0=$(cpu_ticks "$p") a0=$(cpu_ticks "$a")
    out=$(ip netns exec "$PFX-vm-$v" wrk -t"$t" -c"$c" -d"${DUR}s" --timeout 5s -s "$WORK/report.lua" "${extra[@]}" \
        http://169.254.169.254/latest/meta-data/ | grep '^NSBENCH')
    c1=$(cpu_ticks "$p") a1=$(cpu_ticks "$a")
    read -r _ req dur p50 p99 err status <<<"$out"
    TOTAL[$v]=$((TOTAL[$v] + req))
    [[ -n $key ]] || return 0
    sample "${key}_rps" "$v" "$(awk -v r="$req" -v d="$dur" 'BEGIN {printf "%.1f", r / (d / 1e6)}')"
    sample "${key}_p50_us" "$v" "$p50"
    sample "${key}_p99_us" "$v" "$p99"
    sample "${key}_cpu_us" "$v" "$(awk -v d=$((c1 - c0)) -v r="$req" -v k="$CLK" 'BEGIN {printf "%.2f", d * 1e6 / k / r}')"
    sample "${key}_agent_cpu_us" "$v" "$(awk -v d=$((a1 - a0)) -v r="$req" -v k="$CLK" 'BEGIN {printf "%.2f", d * 1e6 / k / r}')"
    sample "${key}_errors" "$v" $((err + status))
}
# ---------------------------------------------------------------- figure 13: proxy metrics on/off
# Issue #17: the same proxy binary with its statistics block (--stats-fd: "on") and without
# ("off"), same agent mode (keep-alive), wrk from each side's own vm namespace, the side that
# goes first alternating per round; then PSS per proxy with N proxies running under the
# spawner with [spawner] proxy_metrics = true and = false, one side at a time (PSS divides
# shared pages among the processes mapping them), the first side alternating per round.
stats_block() { # path: a fresh statistics block (ns_contract::proxy_stats: magic, one page)
    printf 'NSMSTAT1' >"$1"
    truncate -s 4096 "$1"
}
mx_none_running() { ! compgen -G "$WORK/spawner-mx/pids/*.pid" >/dev/null; }
mx_all_running() { local f=("$WORK"/spawner-mx/pids/*.pid); [[ -e ${f[0]} ]] && ((${#f[@]} == N)); }
mx_many() { # on|off
    local flag=true sp pss count
    local -a pids
    [[ $1 == on ]] || flag=false
    spawner_ini "$WORK/agent-mx.sock" "$WORK/spawner-mx" "records_file = $WORK/mx-records.json" \
        "proxy_metrics = $flag" >"$WORK/mx-$1.ini"
    log "figure 13: $N proxies under the spawner, proxy_metrics = $flag"
    "$SPAWNER" run --config-file "$WORK/mx-$1.ini" --stop-proxies-on-exit 2>>"$WORK/spawner-mx.log" &
    sp=$!
    PIDS+=("$sp")
    wait_for "figure 13: $N proxies running ($1)" 2400 mx_all_running
    mapfile -t pids < <(pidfile_pids "$WORK"/spawner-mx/pids/*.pid)
    count=${#pids[@]}
    pss=$(mem_kb Pss "${pids[@]}")
    sample mx_many_pss_per_kb "$1" $((pss / count))
    sample mx_many_count "$1" "$count"
    kill -TERM "$sp"
    wait "$sp" || true
    wait_for "figure 13: proxies stopped ($1)" 400 mx_none_running
}
metrics_figure() {
    local v i=4 run key t c hdr j sep=""
    local -a order stats
    log "figure 13: proxy metrics on and off"
    stats_block "$WORK/stats-on"
    for v in on off; do
        i=$((i + 1))
        VIDX[$v]=$i
        TOTAL[$v]=0
        unset "QR_LINK[$v]"
        ip netns add "$PFX-qrouter-$v"
        ip -n "$PFX-qrouter-$v" link set lo up
        ip -n "$PFX-qrouter-$v" addr add 169.254.169.254/32 dev lo
        vm_link "$v"
        start_agent "m$v" keepalive
        AGENT_PID[$v]=${AGENT_PID[m$v]}
        cp "$PROXY" "$WORK/ns-metadata-proxy-m$v"
        stats=()
        [[ $v == off ]] || stats=(--stats-fd 5)
        setsid "$WORK/ns-metadata-proxy-m$v" --router-id "$(rid $((900000 + i)))" --metadata-proxy-socket "$WORK/agent-m$v.sock" \
            --bind 169.254.169.254:80 --agent-keepalive on --netns "$PFX-qrouter-$v" "${stats[@]}" \
            5<>"$WORK/stats-on" 2>>"$WORK/proxy-m$v.log" &
        PROXY_PID[$v]=$!
        PIDS+=($!)
        wait_for "figure 13: metrics $v answering" 200 http_ok "$PFX-vm-$v"
        own_session "${PROXY_PID[$v]}"
    done
    for run in $(seq "$RUNS"); do
        for cfg in "ka_c32 2 32" "close_c32 2 32 Connection: close"; do
            read -r key t c hdr <<<"$cfg"
            if ((run % 2)); then order=(on off); else order=(off on); fi
            for v in "${order[@]}"; do
                log "figure 13: run $run/$RUNS $key metrics $v"
                wrk_run "$v" "mx_$key" "$t" "$c" "$hdr"
            done
        done
    done
    for v in on off; do
        kill "${PROXY_PID[$v]}" "${AGENT_PID[$v]}" 2>/dev/null || true
        wait_for "figure 13 proxy $v exit" 200 gone "${PROXY_PID[$v]}" || true
        ip netns delete "$PFX-vm-$v"
        ip netns delete "$PFX-qrouter-$v"
        unset "QR_LINK[$v]"
    done
    [[ $SPAWN == 1 ]] || return 0
    printf '{"routers": [' >"$WORK/mx-records.json"
    for j in $(seq "$N"); do
        ip netns add "$PFX-mx$j"
        ip -n "$PFX-mx$j" link set lo up
        printf '%s{"id": "%s", "netns": "%s"}' "$sep" "$(rid $((800000 + j)))" "$PFX-mx$j" >>"$WORK/mx-records.json"
        sep=", "
    done
    echo ']}' >>"$WORK/mx-records.json"
    start_agent mx keepalive
    for run in $(seq "$MANY_RUNS"); do
        if ((run % 2)); then order=(on off); else order=(off on); fi
        for v in "${order[@]}"; do mx_many "$v"; done
    done
    kill "${AGENT_PID[mx]}"
    for j in $(seq "$N"); do ip netns delete "$PFX-mx$j"; done
}
if [[ $ONLY_METRICS == 1 ]]; then
    [[ $OURS == 1 ]] || { log "figure 13 needs our proxy"; exit 1; }
    metrics_figure
    write_report
    exit 0
fi

for run in $(seq "$RUNS"); do
    for cfg in "ka_c32 2 32" "close_c32 2 32 Connection: close" "ka_c1 1 1" "close_c1 1 1 Connection: close"; do
        read -r key t c hdr <<<"$cfg"
        # Rotate the order so no variant always runs first (the machine is shared).
        n=${#VARIANTS[@]}
        for k in $(seq 0 $((n - 1))); do
            v=${VARIANTS[$(((k + run) % n))]}
            log "run $run/$RUNS $key $v"
            wrk_run "$v" "$key" "$t" "$c" "$hdr"
        done
    done
done
# Figure 1 asks for memory after 1M requests: top up with c32 keep-alive (full run only).
for v in "${VARIANTS[@]}"; do
    while ((TOTAL[$v] < MIN_REQ)); do
        log "top-up $v (${TOTAL[$v]} requests so far)"
        wrk_run "$v" "" 2 32
    done
done
for v in "${VARIANTS[@]}"; do
    sample load_requests "$v" "${TOTAL[$v]}"
    sample pss_load_kb "$v" "$(mem_kb Pss "${PROXY_PID[$v]}")"
    sample rss_load_kb "$v" "$(mem_kb Rss "${PROXY_PID[$v]}")"
done
log "idle ${IDLE}s"
sleep "$IDLE"
for v in "${VARIANTS[@]}"; do
    sample pss_idle30_kb "$v" "$(mem_kb Pss "${PROXY_PID[$v]}")"
    sample rss_idle30_kb "$v" "$(mem_kb Rss "${PROXY_PID[$v]}")"
done
# Issue 8: memory while 2,000 client connections are open (both proxies allow 1,024 at once;
# the rest wait in the listen backlog). keepalive = a complete request whose answer the
# client leaves unread; then partial = an unfinished request head on each (measured second,
# so it includes whatever the first kept). Then PSS once all closed and 10 s passed.
log "2,000 open client connections per proxy"
for v in "${VARIANTS[@]}"; do
    for mode in keepalive partial; do
        vm_link "$v"
        flag=()
        [[ $mode == partial ]] && flag=(--partial)
        out=$WORK/hold-$v-$mode.json
        (ulimit -n 8192 && exec "$TOOL" hold --netns "$PFX-vm-$v" --conns 2000 --secs 3 "${flag[@]}") >"$out" &
        hold_pid=$!
        wait_for "$v hold" 600 grep -q opened "$out"
        sleep 0.5 # let the proxy read what was sent (a settle before sampling, not readiness)
        sample "hold_${mode}_pss_kb" "$v" "$(mem_kb Pss "${PROXY_PID[$v]}")"
        sample "hold_${mode}_rss_kb" "$v" "$(mem_kb Rss "${PROXY_PID[$v]}")"
        sample "hold_${mode}_opened" "$v" "$(field opened "$(cat "$out")")"
        log "$v $mode: $(cat "$out")"
        wait "$hold_pid"
    done
done
sleep 10
for v in "${VARIANTS[@]}"; do
    sample hold_after_pss_kb "$v" "$(mem_kb Pss "${PROXY_PID[$v]}")"
    kill "${PROXY_PID[$v]}" "${AGENT_PID[$v]}" 2>/dev/null || true
done
for v in "${VARIANTS[@]}"; do
    wait_for "$v exit" 200 gone "${PROXY_PID[$v]}" || true
    ip netns delete "$PFX-qrouter-$v"
    ip netns delete "$PFX-vm-$v"
done

# ---------------------------------------------------------------- figures 2 and 4: N namespaces
log "creating $N namespaces"
: >"$WORK/many.list"
for j in $(seq "$N"); do
    ns=$PFX-r$j
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    echo "$ns" >>"$WORK/many.list"
done
sample n_proxies haproxy "$N"
[[ $SPAWN == 1 ]] && sample n_proxies ours "$N"
mkdir -p "$WORK/hap" "$WORK/spawner"
for j in $(seq "$N"); do
    haproxy_cfg "$(rid "$j")" "$WORK/agent-many-haproxy.sock" "$WORK/hap/$(rid "$j").pid" >"$WORK/hap/$(rid "$j").conf"
done
spawner_ini "$WORK/agent-spawner.sock" "$WORK/spawner" "agent_keepalive = auto" >"$WORK/spawner.ini"
start_agent many-haproxy close
[[ $SPAWN == 1 ]] && start_agent spawner keepalive

# Records the figure 2 and 4 samples of one round.
# args: variant t0 t1 "memavail accounted" before [pids...]
many_samples() {
    local v=$1 t0=$2 t1=$3 before acc_before w after acc_after pss uss
    read -r before acc_before <<<"$4"
    shift 4
    w=$("$TOOL" wait --netns-file "$WORK/many.list" --t0-ns "$t0" --t1-ns "$t1")
    read -r after acc_after <<<"$(meminfo_kb)"
    sample spawn_all_ms "$v" "$(field all_ms "$w")"
    sample spawn_after_last_ms "$v" "$(field after_last_ms "$w")"
    # shellcheck disable=SC2046
    [[ $v == ours ]] && set -- $(pidfile_pids "$WORK"/spawner/pids/*.pid)
    pss=$(mem_kb Pss "$@")
    sample many_pss_sum_kb "$v" "$pss"
    sample many_pss_per_kb "$v" $((pss / $#))
    sample many_rss_per_kb "$v" $(($(mem_kb Rss "$@") / $#))
    uss=$(($(mem_kb Private_Clean "$@") + $(mem_kb Private_Dirty "$@")))
    sample many_uss_per_kb "$v" $((uss / $#))
    sample many_memavail_per_kb "$v" $(((before - after) / N))
    sample many_accounted_per_kb "$v" $(((acc_after - acc_before) / N))
    sample many_count "$v" $#
}

many_haproxy() {
    local j t0 t1 before p
    local -a hp
    log "haproxy x $N, started like Neutron's ProcessManager (ip netns exec ... haproxy -f), one after another"
    for j in $(seq "$N"); do ip -n "$PFX-r$j" addr replace 169.254.169.254/32 dev lo; done
    before=$(meminfo_kb)
    t0=$(date +%s%N)
    for j in $(seq "$N"); do
        ip netns exec "$PFX-r$j" env "PROCESS_TAG=haproxy-$(rid "$j")" haproxy -f "$WORK/hap/$(rid "$j").conf"
    done
    t1=$(date +%s%N)
    mapfile -t hp < <(pidfile_pids "$WORK"/hap/*.pid)
    many_samples haproxy "$t0" "$t1" "$before" "${hp[@]}"
    kill -TERM "${hp[@]}"
    for p in "${hp[@]}"; do wait_for "haproxy $p exit" 200 gone "$p"; done
    rm -f "$WORK"/hap/*.pid
    for j in $(seq "$N"); do ip -n "$PFX-r$j" addr del 169.254.169.254/32 dev lo; done
}

start_spawner() {
    "$SPAWNER" run --config-file "$WORK/spawner.ini" 2>>"$WORK/spawner.log" &
    SPAWNER_PID=$!
    PIDS+=($!)
    wait_for "spawner control socket" 200 "$SPAWNER" status --config-file "$WORK/spawner.ini" >/dev/null 2>&1
}

# args: 1 in the last round (then also figures 5 and 6)
many_ours() {
    local j t0 t1 before p w loop_pid
    log "ns-metadata-spawner: $N routers announced through the control API"
    start_spawner
    # The address is added here as for haproxy (the spawner's ensure_address then finds it),
    # so the first-address kernel cost of each namespace is outside both measurements.
    for j in $(seq "$N"); do ip -n "$PFX-r$j" addr replace 169.254.169.254/32 dev lo; done
    local sp_before
    sp_before=$(mem_kb Pss "$SPAWNER_PID")
    before=$(meminfo_kb)
    t0=$(date +%s%N)
    for j in $(seq "$N"); do
        "$SPAWNER" router add "$(rid "$j")" --netns "$PFX-r$j" --config-file "$WORK/spawner.ini" >/dev/null
    done
    t1=$(date +%s%N)
    many_samples ours "$t0" "$t1" "$before"
    sample spawner_pss_kb ours "$(mem_kb Pss "$SPAWNER_PID")"
    sample spawner_growth_per_kb ours $((($(mem_kb Pss "$SPAWNER_PID") - sp_before) / N))
    if [[ $1 == 1 ]]; then
        log "figure 5: kill -9 -> answering ($KILLS proxies, one kill each)"
        for j in $(seq "$KILLS"); do
            p=$(pidfile_pids "$WORK"/spawner/pids/*"$(rid "$j")"*.pid)
            w=$("$TOOL" kill-wait --netns "$PFX-r$j" --pid "$p")
            sample kill_answer_ms ours "$(field ms "$w")"
        done
        log "figure 6: supervisor restart under a request loop"
        head -n 20 "$WORK/many.list" >"$WORK/loop.list"
        "$TOOL" loop --netns-file "$WORK/loop.list" --secs 8 >"$WORK/loop.json" &
        loop_pid=$!
        sleep 2
        kill -TERM "$SPAWNER_PID"
        wait "$SPAWNER_PID" || true
        start_spawner
        wait "$loop_pid"
        w=$(cat "$WORK/loop.json")
        sample restart_failed ours "$(field failed "$w")"
        sample restart_total ours "$(field total "$w")"
        grep -q '"failed":0' <<<"$w" || log "figure 6 failures: $w"
    fi
    # Teardown through the product: remove every router, then stop the supervisor.
    for j in $(seq "$N"); do
        "$SPAWNER" router remove "$(rid "$j")" --config-file "$WORK/spawner.ini" >/dev/null
    done
    wait_for "spawner to stop its proxies" 400 no_pidfiles "$WORK/spawner/pids"
    kill -TERM "$SPAWNER_PID"
    wait "$SPAWNER_PID" || true
    for j in $(seq "$N"); do ip -n "$PFX-r$j" addr del 169.254.169.254/32 dev lo 2>/dev/null || true; done
}
no_pidfiles() { ! compgen -G "$1/*.pid" >/dev/null; }

for run in $(seq "$MANY_RUNS"); do
    # Alternate which side goes first: MemAvailable drifts with whatever else the machine does.
    if ((run % 2)); then
        many_haproxy
        [[ $SPAWN == 0 ]] || many_ours $((run == MANY_RUNS))
    else
        [[ $SPAWN == 0 ]] || many_ours $((run == MANY_RUNS))
        many_haproxy
    fi
done

# ---------------------------------------------------------------- figure 7: control API with 5,000 records
# Issue 13 item 13: PUT latency on a spawner that already holds PUT_FILL API records. A
# spawner of its own (own state dir, so figure 2's keeps its records.json), routers whose
# namespaces (qrouter-<id>) do not exist: they wait, as records announced ahead of their
# namespace do, and no proxy starts.
control_put() {
    local sp w last
    log "figure 7: $PUT_FILL + $PUT_MEASURE router PUTs through a spawner's control API"
    spawner_ini "$WORK/agent-spawner.sock" "$WORK/spawner-api" >"$WORK/spawner-api.ini"
    "$SPAWNER" run --config-file "$WORK/spawner-api.ini" 2>>"$WORK/spawner-api.log" &
    sp=$!
    PIDS+=($!)
    wait_for "figure 7 spawner control socket" 200 "$SPAWNER" status --config-file "$WORK/spawner-api.ini" >/dev/null 2>&1
    last=$(printf '0000%s-0000-4000-a000-%012d' "$RUN" $((PUT_FILL + PUT_MEASURE - 1)))
    if w=$("$TOOL" control-put --socket "$WORK/spawner-api/control.sock" --prefix "0000$RUN-0000-4000-a000" \
        --fill "$PUT_FILL" --measure "$PUT_MEASURE" --gap-ms 1); then
        log "figure 7: $w"
        sample put_fill_n ours "$PUT_FILL"
        sample put_records_n ours $((PUT_FILL + PUT_MEASURE))
        sample put_fill_mean_ms ours "$(field fill_mean_ms "$w")"
        sample put_p50_ms ours "$(field p50_ms "$w")"
        sample put_p99_ms ours "$(field p99_ms "$w")"
        sample put_max_ms ours "$(field max_ms "$w")"
        # The answers did not wait for the disk; the debounced save must still happen.
        wait_for "records.json with all $((PUT_FILL + PUT_MEASURE)) routers" 200 grep -q "$last" "$WORK/spawner-api/records.json" \
            || log "figure 7: records.json lacks $last"
        sample put_spawner_pss_kb ours "$(mem_kb Pss "$sp")"
    else
        log "figure 7 failed (see above); no samples"
    fi
    kill -TERM "$sp"
    wait_for "figure 7 spawner exit" 200 gone "$sp" || kill -KILL "$sp" 2>/dev/null || true
    wait "$sp" || true
}
[[ $SPAWN == 0 ]] || control_put

# ---------------------------------------------------------------- figure 8: the haproxy drop-in
# Issue 14: ns-metadata-proxy run as `haproxy -f <Neutron's config>` by Neutron 29's own
# driver code (crates/proxy/tests/neutron_driver.py, the drop-in tests' harness, unchanged),
# against the real haproxy run by the same code. Each side has its own driver process whose
# PATH starts with $WORK/bin-<side>/haproxy, a link to ns-metadata-proxy or to
# /usr/sbin/haproxy; nothing outside $WORK changes. The l3 agent's call for a router
# (`bind 0.0.0.0:9697` in the namespace, probed on 127.0.0.1:9697), in figure 2's namespaces.
DRIVER_PY=$REPO/crates/proxy/tests/neutron_driver.py
declare -A EXE
# Start Neutron's driver for side $1 with `haproxy` -> $2 first on its PATH.
neutron_start() {
    local side=$1 dir=$WORK/neutron-$1 line fd
    mkdir -p "$WORK/bin-$side" "$dir"
    ln -s "$2" "$WORK/bin-$side/haproxy"
    EXE[$side]=$(readlink -f "$2")
    mkfifo "$dir.in" "$dir.out"
    PATH="$WORK/bin-$side:$PATH" "$NEUTRON_PY" "$DRIVER_PY" "$dir" "$WORK/agent-neutron.sock" \
        <"$dir.in" >"$dir.out" 2>>"$dir.log" &
    NEUTRON_PID[$side]=$!
    PIDS+=($!)
    # Same order as the child opens them (stdin, then stdout), or both block.
    exec {fd}>"$dir.in"
    NIN[$side]=$fd
    exec {fd}<"$dir.out"
    NOUT[$side]=$fd
    IFS= read -r -t 120 -u "${NOUT[$side]}" line && [[ $line == READY ]] \
        || { log "neutron_driver.py ($side) did not start: see $dir.log"; tail -5 "$dir.log" >&2; return 1; }
}
# One request to side $1's driver; the answer in NREPLY. An error answer fails.
neutron_call() {
    local side=$1
    shift
    echo "$*" >&"${NIN[$side]}"
    IFS= read -r -t 120 -u "${NOUT[$side]}" NREPLY || { log "neutron_driver.py ($side): no answer to $*"; return 1; }
    [[ $NREPLY != *error=* ]] || { log "neutron_driver.py ($side): $* -> $NREPLY"; return 1; }
}
kv() { sed -n "s/^\(.* \)\{0,1\}$1=\([^ ]*\).*/\2/p" <<<"$2"; }
# Its proxies are destroyed by then; SIGTERM rather than waiting for the driver's monitor
# thread to wind down after stdin closes (that took over 10 s).
neutron_stop() {
    local side=$1 fd p=${NEUTRON_PID[$1]}
    fd=${NIN[$side]}
    exec {fd}>&-
    fd=${NOUT[$side]}
    exec {fd}<&-
    kill -TERM "$p" 2>/dev/null || true
    wait_for "neutron_driver.py ($side) exit" 200 gone "$p" || kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "NEUTRON_PID[$side]"
}
# Router $2 (index into figure 2's namespaces) through side $1's driver: the l3 agent's call.
# Checks that the process Neutron started is the program of that side.
dropin_spawn() {
    local p
    neutron_call "$1" "spawn driver=ml2 ns=$PFX-r$2 port=9697 router_id=$(rid "$2")"
    p=$(kv pid "$NREPLY")
    [[ $(kv active "$NREPLY") == True && $(readlink "/proc/$p/exe" 2>/dev/null) == "${EXE[$1]}" ]] \
        || { log "figure 8: $1 router $2: $NREPLY, exe $(readlink "/proc/$p/exe" 2>/dev/null), expected ${EXE[$1]}"; return 1; }
}
# Neutron's destroy (SIGTERM, pid file and config removed), then wait until the process is gone.
dropin_destroy() {
    local p
    p=$(pidfile_pids "$WORK/neutron-$1/external/pids/$(rid "$2").pid.haproxy")
    neutron_call "$1" "destroy driver=ml2 uuid=$(rid "$2") ns=$PFX-r$2"
    [[ -z $p ]] || wait_for "$1 proxy $p exit" 200 gone "$p"
}
# (a) spawn -> answering, one proxy at a time, the two sides alternating in the same
# namespace (each destroyed before the other side starts there). Arg: round.
dropin_timed() {
    local i k side t0 t1 w
    local -a sides=(dropin haproxy)
    for i in $(seq "$DROPIN_K"); do
        echo "$PFX-r$i" >"$WORK/one.list"
        for k in 0 1; do
            side=${sides[$(((i + k + $1) % 2))]}
            t0=${EPOCHREALTIME/[.,]/}000
            dropin_spawn "$side" "$i"
            t1=${EPOCHREALTIME/[.,]/}000
            w=$("$TOOL" wait --netns-file "$WORK/one.list" --addr 127.0.0.1:9697 --t0-ns "$t0" --timeout-ms 10000)
            sample dropin_spawn_call_ms "$side" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e6}')"
            sample dropin_spawn_answer_ms "$side" "$(field all_ms "$w")"
            dropin_destroy "$side" "$i"
        done
    done
}
# (b) DROPIN_N proxies of side $1 started one after another through the driver: time until
# all answer, then memory as in figure 2; then destroyed through the driver.
dropin_many() {
    local side=$1 j t0 t1 w before acc_before after acc_after pss uss p
    local -a pids
    log "figure 8: $DROPIN_N x $side through Neutron's driver"
    read -r before acc_before <<<"$(meminfo_kb)"
    t0=${EPOCHREALTIME/[.,]/}000
    for j in $(seq "$DROPIN_N"); do dropin_spawn "$side" "$j"; done
    t1=${EPOCHREALTIME/[.,]/}000
    w=$("$TOOL" wait --netns-file "$WORK/dropin.list" --addr 127.0.0.1:9697 --t0-ns "$t0" --t1-ns "$t1")
    read -r after acc_after <<<"$(meminfo_kb)"
    mapfile -t pids < <(pidfile_pids "$WORK/neutron-$side"/external/pids/*.pid.haproxy)
    for p in "${pids[@]}"; do
        [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "${EXE[$side]}" ]] || { log "figure 8: pid $p is not ${EXE[$side]}"; return 1; }
    done
    ((${#pids[@]} == DROPIN_N)) || { log "figure 8: ${#pids[@]} $side pid files, expected $DROPIN_N"; return 1; }
    sample dropin_all_ms "$side" "$(field all_ms "$w")"
    sample dropin_n "$side" "${#pids[@]}"
    pss=$(mem_kb Pss "${pids[@]}")
    sample dropin_pss_sum_kb "$side" "$pss"
    sample dropin_pss_per_kb "$side" $((pss / DROPIN_N))
    sample dropin_rss_per_kb "$side" $(($(mem_kb Rss "${pids[@]}") / DROPIN_N))
    uss=$(($(mem_kb Private_Clean "${pids[@]}") + $(mem_kb Private_Dirty "${pids[@]}")))
    sample dropin_uss_per_kb "$side" $((uss / DROPIN_N))
    sample dropin_accounted_per_kb "$side" $(((acc_after - acc_before) / DROPIN_N))
    for j in $(seq "$DROPIN_N"); do dropin_destroy "$side" "$j"; done
}
dropin_figure() {
    local run
    neutron_venv || { log "figure 8 skipped: no Neutron venv at $NEUTRON_VENV"; return 0; }
    log "figure 8: the haproxy drop-in under Neutron's driver ($DROPIN_K timed spawns per side per round, $DROPIN_N for memory)"
    start_agent neutron close
    head -n "$DROPIN_N" "$WORK/many.list" >"$WORK/dropin.list"
    # A venv whose Neutron does not import loses this figure, not the run (the cleanup
    # stops whatever did start).
    if ! neutron_start dropin "$PROXY" || ! neutron_start haproxy "$REAL_HAPROXY"; then
        log "figure 8 skipped: Neutron's driver did not start"
        return 0
    fi
    for run in $(seq "$MANY_RUNS"); do
        dropin_timed "$run"
        # Memory one side at a time (PSS divides shared pages among the processes mapping
        # them); which side goes first alternates, as in figure 2.
        if ((run % 2)); then
            dropin_many dropin
            dropin_many haproxy
        else
            dropin_many haproxy
            dropin_many dropin
        fi
    done
    neutron_stop dropin
    neutron_stop haproxy
    kill "${AGENT_PID[neutron]}"
}
# The drop-in needs a proxy built with it (its start-up line names it).
[[ $OURS == 0 ]] || ! grep -qa 'haproxy drop-in' "$PROXY" || dropin_figure

# ---------------------------------------------------------------- figures 9, 11, 12, 13 and the report
[[ $SHAPES == 0 ]] || shapes_figure
[[ $OURS == 0 ]] || metrics_figure
[[ $OVN == 0 ]] || ovn_figure
[[ $COLD == 0 ]] || cold_figure
[[ $SHARED == 0 ]] || shared_figure
write_report
