# bench/mem.sh: memory of processes, for every bench script (sourced, not run).

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
