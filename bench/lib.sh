# bench/lib.sh: what every bench script shares (sourced, not run).

# A smaps_rollup field (Pss, Rss, Private_Dirty, ...) in kB summed over pids; a pid that is
# gone counts 0.
mem_kb() { # field pid...
    local field=$1 p sum=0 v
    shift
    for p in "$@"; do
        v=$(awk -v f="$field:" '$1 == f {print $2}' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# A spawner configuration on stdout: the agent socket, proxy_binary = $PROXY, the state dir,
# router_interface = lo, then each further line as given ([spawner] keys).
spawner_ini() { # agent-socket state-dir [line...]
    printf '[DEFAULT]\nmetadata_proxy_socket = %s\n\n[spawner]\nproxy_binary = %s\nstate_dir = %s\n' "$1" "$PROXY" "$2"
    printf '%s\n' "router_interface = lo" "${@:3}"
}

# Poll a condition with a timeout (never a fixed sleep for readiness): `wait_for WHAT TRIES
# CMD...` runs CMD every 50 ms, at most TRIES times; says what timed out on stderr.
wait_for() {
    local what=$1 tries=$2
    shift 2
    for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.05; done
    echo "$(basename "$0"): timed out waiting for $what" >&2
    return 1
}

# An ovsdb-server of a fresh database DIR/NAME.db (from SCHEMA) on the Unix socket
# DIR/NAME.sock (control DIR/NAME.ctl, log DIR/NAME.log); its pid appended to PIDS and left
# in OVSDB_PID. Needs OVS_ENV (the environment the OVS tools run with).
ovsdb_start() { # dir name schema
    local d=$1 n=$2
    rm -f "$d/$n.db"
    "${OVS_ENV[@]}" ovsdb-tool create "$d/$n.db" "$3" >&2
    "${OVS_ENV[@]}" ovsdb-server "$d/$n.db" --remote="punix:$d/$n.sock" --unixctl="$d/$n.ctl" \
        --log-file="$d/$n.log" --no-chdir </dev/null >/dev/null 2>>"$d/$n.err" &
    PIDS+=($!)
    OVSDB_PID=$!
    wait_for "ovsdb-server $n" 200 test -S "$d/$n.sock"
}
