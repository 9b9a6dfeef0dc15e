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
