# bench/mountns.sh: what the figures run.sh runs in a mount namespace of their own share
# (cold.sh: figure 11, shared.sh: figure 14). Sourced, not run. The script sets SCRIPT (its
# name, for the log), TAG (the letter its router ids start with) and defines run_pids (every
# pid of a process it may have started that is running now), then calls private_netns.
: "${WORK:?}" "${RUN:?}" "${RAW:?}" "${SCRIPT:?}" "${TAG:?}"

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # mem_kb, spawner_ini
log() { printf '%s %s: %s\n' "$(date -u +%T)" "$SCRIPT" "$*" >&2; }
# One sample; a value the measurement did not produce is logged, not written.
sample() {
    if [[ -z $3 ]]; then log "no value for $1 $2"; return 0; fi
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"
}
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
gone() { [[ ! -r /proc/$1/stat ]] || [[ $(sed 's/.*) //' /proc/"$1"/stat | cut -c1) == Z ]]; }
rid() { printf '%s%s-0000-4000-8000-%012d' "$TAG" "$RUN" "$1"; } # the run id in every router id
# N namespaces qrouter-<id>, lo up (the l3 agent does that when it builds the router), their
# names in DIR/ns.list for the waiter, and Neutron's haproxy configuration for each in
# DIR/hap/<id>.conf from TEMPLATE (@ID@ and @PIDFILE@ filled in).
make_ns() { # n dir template
    local n=$1 dir=$2 tmpl=$3 j id
    : >"$dir/batch"
    : >"$dir/ns.list"
    for j in $(seq "$n"); do
        id=$(rid "$j")
        echo "netns add qrouter-$id" >>"$dir/batch"
        echo "qrouter-$id" >>"$dir/ns.list"
        sed -e "s|@ID@|$id|g" -e "s|@PIDFILE@|$dir/hap/$id.pid|g" "$tmpl" >"$dir/hap/$id.conf"
    done
    ip -batch "$dir/batch"
    ip -all netns exec ip link set lo up >/dev/null
}
# A process this run started (its argv names the run directory or a router id of this run).
ours() { { tr '\0' ' ' </proc/"$1"/cmdline; } 2>/dev/null | grep -q -e "$WORK" -e "$TAG$RUN-"; }
pids_in() { local f p _; for f in "$@"; do [[ -s $f ]] && read -r p _ <"$f" && echo "$p"; done 2>/dev/null || true; }
# Signal every process of this run still alive (run_pids, each checked to be ours), then wait.
stop_all() {
    local p
    for p in $(run_pids); do
        ours "$p" && kill -"$1" "$p" 2>/dev/null || true
    done
    for _ in $(seq 200); do
        local alive=0
        for p in $(run_pids); do
            ours "$p" && ! gone "$p" && alive=1
        done
        ((alive)) || return 0
        sleep 0.05
    done
    return 1
}
cleanup() {
    local rc=$?
    trap - EXIT
    set +e
    jobs -p | xargs -r kill 2>/dev/null
    stop_all TERM || stop_all KILL
    ip -all netns delete 2>/dev/null
    umount -l /run/netns 2>/dev/null
    exit "$rc"
}
# /run/netns here is a private tmpfs (the caller runs in `unshare --mount --propagation
# private`): the spawner's auto_enable_routers sees only the namespaces made here (never
# another engineer's qrouter-*), and nothing made here is visible outside or outlives the run.
private_netns() { # tmpfs name
    mkdir -p /run/netns
    mount -t tmpfs -o mode=0755 "$1" /run/netns
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}
# The spawner's configuration for these figures: every qrouter- namespace auto-enabled, the
# address on lo, the agent at $1, state in $2; further lines ($3...) appended.
# haproxy started as Neutron's l3 agent starts it, for namespaces 1..N one after another, from
# DIR/hap/<id>.conf (make_ns wrote them); the address added with it (Neutron adds an iptables
# redirect per router instead: also one command per namespace).
start_haproxies() { # n dir
    local j id
    for j in $(seq "$1"); do
        id=$(rid "$j")
        ip -n "qrouter-$id" addr replace 169.254.169.254/32 dev lo
        ip netns exec "qrouter-$id" env "PROCESS_TAG=haproxy-$id" haproxy -f "$2/hap/$id.conf"
    done
}
