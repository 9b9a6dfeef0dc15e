#!/usr/bin/env bash
# ns-metadata quickstart: build, start the agent and the spawner, build a small demo cloud out
# of network namespaces, let two "VMs" fetch their metadata, and clean everything up on exit.
#
#   ./examples/quickstart.sh            # runs until Ctrl-C
#   ./examples/quickstart.sh --once     # run, print, clean up, exit 0
#   ./examples/quickstart.sh --once --bin-dir target/debug   # skip the release build
#
# Needs: root (not root, it re-runs itself with sudo), Linux with network namespaces,
# iproute2 (ip) and curl (installed with apt-get when missing); Rust (cargo) unless --bin-dir
# points at already built binaries (the first release build takes about five minutes on two
# cores). The demo matches examples/inventory.json, with the router, network, subnet and port
# ids given a per-run suffix so nothing it creates can collide with what is already there:
#
#   vm1 (10.250.1.10) --veth-- qrouter-<router>   router mode: proxy on 169.254.169.254 in the router
#   vm2 (10.250.2.10) --veth-- qdhcp-<network>    isolated network: proxy on the DHCP port, vm2
#                                                 reaches it by the route DHCP option 121 would push
#
# Everything it creates is removed on exit, on Ctrl-C and on error: namespaces (and with them
# the veths), the processes it started (by pid) and its temporary directory.
#
# The programs it runs, for .ci/check-programs (the end-to-end test runs this script):
# ci-programs: bash ip curl python3 sed awk grep getent runuser
#
# Functions here run from traps and through wait_for, which shellcheck cannot follow:
# shellcheck disable=SC2317

# -E: the ERR trap also fires for a failure inside a function.
set -Eeuo pipefail

usage() {
  cat <<'EOF'
usage: ./examples/quickstart.sh [--once] [--bin-dir DIR]

Needs root; run as another user, it re-runs itself with sudo.

  --once          run the demo, print what the VMs got, clean up and exit 0
                  (default: keep the demo running until Ctrl-C, then clean up)
  --bin-dir DIR   use ns-metadata-{agent,spawner,proxy} from DIR instead of building them
                  with `cargo build --release --workspace --bins` (e.g. target/debug;
                  the end-to-end test uses this to reuse its debug build). Without it the
                  first run builds for about five minutes on two cores
  -h, --help      this text
EOF
}

ARGS=("$@")   # kept for the re-run through sudo
ONCE=0
BIN_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --once) ONCE=1 ;;
    --bin-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; BIN_DIR=$2; shift ;;
    --bin-dir=*) BIN_DIR=${1#--bin-dir=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quickstart: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# ---- root: run as root, or re-run through sudo -------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
  SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
  if command -v sudo >/dev/null 2>&1; then
    echo "quickstart: needs root to create network namespaces; re-running with sudo" >&2
    # `env` carries CARGO_TARGET_DIR through sudo's environment reset; the build itself runs
    # as you again (see "Building" below), so target/ stays yours.
    exec sudo -- env ${CARGO_TARGET_DIR:+"CARGO_TARGET_DIR=$CARGO_TARGET_DIR"} \
      bash "$SELF" "${ARGS[@]}"
  fi
  echo "quickstart: needs root to create network namespaces, and sudo is not installed." >&2
  echo "  run it as root, e.g.: su -c '$SELF${ARGS[*]:+ ${ARGS[*]}}'" >&2
  exit 1
fi

# ---- presentation ---------------------------------------------------------------------------
if [ -t 1 ]; then BOLD=$'\033[1m'; DIM=$'\033[2m'; GREEN=$'\033[32m'; RED=$'\033[31m'; OFF=$'\033[0m'
else BOLD=""; DIM=""; GREEN=""; RED=""; OFF=""; fi
STEP=0
step() { STEP=$((STEP + 1)); printf '\n%s==> %d. %s%s\n' "$BOLD" "$STEP" "$*" "$OFF"; }
info() { printf '    %s\n' "$*"; }
cmd()  { printf '    %s$ %s%s\n' "$DIM" "$*" "$OFF"; }
# The original stderr and stdout, so die() and cleanup are seen even when they run from
# inside a silenced readiness check.
exec 3>&2 4>&1
die()  { printf '%squickstart: %s%s\n' "$RED" "$*" "$OFF" >&3; exit 1; }

# Poll until a command succeeds (readiness is a handshake, never a fixed sleep).
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
    sleep 0.1
  done
}

# ---- the demo's names (ids come from examples/inventory.json) -------------------------------
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVENTORY_SRC=$REPO/examples/inventory.json
# A per-run suffix (12 hex digits) for every id that names something on this machine (the
# router's and the network's namespaces): a leftover of another run, or anybody else's
# namespace, can never collide with this run's. Instance ids stay as in the inventory.
RUNHEX=$(printf '%06x%06x' "$(( $$ & 0xffffff ))" "$(( (RANDOM << 15 | RANDOM) & 0xffffff ))")
run_id() { printf '%s' "${1%-*}-$RUNHEX"; } # de0a1000-0000-4000-8000-000000000001 -> ...-<RUNHEX>
ROUTER=$(run_id de0a1000-0000-4000-8000-000000000001)
NET_ISOLATED=$(run_id de0b2000-0000-4000-8000-000000000001)
SUBNET_ISOLATED=$(run_id de0c2000-0000-4000-8000-000000000001)
DHCP_PORT=$(run_id de0d3000-0000-4000-8000-000000000001)
VM2_PORT=$(run_id de0d4000-0000-4000-8000-000000000001)
VM1_ID=de0e1000-0000-4000-8000-000000000001
VM2_ID=de0e2000-0000-4000-8000-000000000001
QROUTER=qrouter-$ROUTER
QDHCP=qdhcp-$NET_ISOLATED
QR_IF=qr-${ROUTER:0:11}        # Neutron's names: qr-/tap + the port id's first 11 characters
TAP=tap${DHCP_PORT:0:11}
# The VM namespaces carry the same per-run tag.
RUN=qs$RUNHEX
VM1=$RUN-vm1
VM2=$RUN-vm2

# ---- cleanup (runs on every exit: success, error, Ctrl-C) ------------------------------------
WORK=""
AGENT_PID=""
SPAWNER_PID=""
CREATED_NS=()
SPAWNER=()

stop_pid() { # SIGTERM, wait up to 5 s, then SIGKILL; only pids this script started
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP ERR
  set +e
  exec 1>&4 2>&3
  printf '\n%s==> cleaning up%s\n' "$BOLD" "$OFF"
  if [ "$rc" -ne 0 ] && [ -n "$WORK" ]; then
    for log in "$WORK"/agent.log "$WORK"/spawner.log; do
      [ -s "$log" ] && { printf '    --- last lines of %s\n' "$log"; tail -n 15 "$log" | sed 's/\x1b\[[0-9;]*m//g; s/^/    /'; }
    done
  fi
  if [ -n "$SPAWNER_PID" ] && kill -0 "$SPAWNER_PID" 2>/dev/null; then
    # Withdraw the records: the spawner stops the proxies and removes 169.254.169.254.
    "${SPAWNER[@]}" network remove "$NET_ISOLATED" >/dev/null 2>&1
    "${SPAWNER[@]}" router remove "$ROUTER" >/dev/null 2>&1
    # Wait (bounded) until the spawner reports no proxy left, then stop it.
    for _ in $(seq 100); do
      { "${SPAWNER[@]}" status 2>/dev/null || true; } | grep -q -e "$ROUTER" -e "$NET_ISOLATED" || break
      sleep 0.1
    done
  fi
  stop_pid "$SPAWNER_PID" && [ -n "$SPAWNER_PID" ] && info "stopped ns-metadata-spawner (pid $SPAWNER_PID)"
  # Proxies run in their own session (they survive a spawner restart by design); stop any the
  # spawner did not, by the pids in its state directory, after checking they are ours.
  if [ -n "$WORK" ] && [ -d "$WORK/state/pids" ]; then
    for f in "$WORK"/state/pids/*.pid; do
      [ -f "$f" ] || continue
      local pid id
      # The first field: the spawner's pid files hold `pid starttime netns-inode interface`.
      pid='' id=$(basename "$f" .pid)
      read -r pid _ <"$f" 2>/dev/null || true
      if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "ns-metadata-proxy.*$id"; then
        stop_pid "$pid"; info "stopped ns-metadata-proxy for $id (pid $pid)"
      fi
    done
  fi
  stop_pid "$AGENT_PID" && [ -n "$AGENT_PID" ] && info "stopped ns-metadata-agent (pid $AGENT_PID)"
  for ns in "${CREATED_NS[@]}"; do
    ip netns del "$ns" 2>/dev/null && info "deleted namespace $ns"
  done
  [ -n "$WORK" ] && rm -rf "$WORK" && info "removed $WORK"
  if [ "$rc" -eq 0 ]; then printf '%sdone.%s\n' "$GREEN" "$OFF"; fi
  exit "$rc"
}
trap cleanup EXIT
# Ctrl-C (or a TERM from a service manager) is the normal way to end the demo: clean exit.
trap 'printf "\n"; exit 0' INT TERM HUP
# With set -E this also names a failure inside a function (the line is the function's).
# (Subshells inherit the trap; only the main shell reports, once.)
trap '[ "$BASH_SUBSHELL" -gt 0 ] || printf "%squickstart: failed at line %s: %s%s\n" "$RED" "$LINENO" "$BASH_COMMAND" "$OFF" >&3' ERR

# ---- preflight -------------------------------------------------------------------------------
# A fresh Debian machine with only Rust lacks iproute2 and curl: install them (root already).
missing_pkgs=()
command -v ip >/dev/null || missing_pkgs+=(iproute2)
command -v curl >/dev/null || missing_pkgs+=(curl)
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "${missing_pkgs[*]} not installed and no apt-get: install them first"
  printf 'installing %s with apt-get\n' "${missing_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
fi
for tool in ip curl; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install iproute2 curl)"
done

printf '%sns-metadata quickstart%s: a metadata service for namespace networks, end to end\n' "$BOLD" "$OFF"

# ---- 1. build ---------------------------------------------------------------------------------
if [ -z "$BIN_DIR" ]; then
  step "Building the three binaries (release)"
  # Under sudo, build as the invoking user with their rustup install (sudo resets PATH, and
  # target/ should not become root-owned); otherwise as root with the cargo in PATH.
  BUILD_USER=${SUDO_USER:-root}
  BUILD_HOME=$(getent passwd "$BUILD_USER" | cut -d: -f6)
  if [ "$BUILD_USER" != root ] && [ -x "$BUILD_HOME/.cargo/bin/cargo" ]; then
    CARGO=$BUILD_HOME/.cargo/bin/cargo
  else
    BUILD_USER=root
    CARGO=$(command -v cargo || true)
    [ -n "$CARGO" ] || [ ! -x /root/.cargo/bin/cargo ] || CARGO=/root/.cargo/bin/cargo
  fi
  [ -n "$CARGO" ] || die "cargo not found (install Rust: https://rustup.rs) or pass --bin-dir"
  TARGET=${CARGO_TARGET_DIR:-$REPO/target}
  cmd "cargo build --release --workspace --bins"
  TARGET_PARENT=$TARGET; [ -e "$TARGET" ] || TARGET_PARENT=$(dirname "$TARGET")
  build_failed="cargo build failed (its errors are above); fix the build, or pass --bin-dir DIR"
  if [ "$BUILD_USER" != root ] && runuser -u "$BUILD_USER" -- test -w "$TARGET_PARENT"; then
    runuser -u "$BUILD_USER" -- env HOME="$BUILD_HOME" PATH="$(dirname "$CARGO"):$PATH" \
      CARGO_TARGET_DIR="$TARGET" "$CARGO" build --release --workspace --bins \
      --manifest-path "$REPO/Cargo.toml" || die "$build_failed"
  else
    CARGO_TARGET_DIR="$TARGET" "$CARGO" build --release --workspace --bins \
      --manifest-path "$REPO/Cargo.toml" || die "$build_failed"
  fi
  BIN_DIR=$TARGET/release
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
for b in ns-metadata-agent ns-metadata-spawner ns-metadata-proxy; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b not found (build with: cargo build --workspace --bins)"
done

WORK=$(mktemp -d /tmp/ns-metadata-quickstart.XXXXXX)
info "binaries: $BIN_DIR"
info "work dir: $WORK (configuration, logs, state; removed on exit)"
# The inventory with this run's ids (router, networks, subnets, ports; not the instances).
INVENTORY=$WORK/inventory.json
sed -E "s/(de0[a-d][0-9a-f]{4}-0000-4000-8000-)000000000001/\1$RUNHEX/g" "$INVENTORY_SRC" >"$INVENTORY"
if ! grep -q "$ROUTER" "$INVENTORY" || ! grep -q "$NET_ISOLATED" "$INVENTORY"; then
  die "could not give $INVENTORY_SRC this run's ids (did its ids change?)"
fi
info "run id: $RUNHEX (suffix of this run's router, network and port ids)"

# ---- 2. the agent -----------------------------------------------------------------------------
step "Starting ns-metadata-agent (no Nova configured: it answers itself from the inventory)"
SOCKET=$WORK/metadata_proxy
cat >"$WORK/metadata_agent.ini" <<EOF
[DEFAULT]
# Where the proxies reach the agent (a Unix socket on the host, reachable from any namespace).
metadata_proxy_socket = $SOCKET
# No nova_metadata_host: the built-in responder serves the OpenStack and EC2 trees.
inventory_file = $INVENTORY
# Let proxies reuse their connections to the agent (they see X-NS-Metadata-Keepalive).
keepalive = true
EOF
cmd "ns-metadata-agent --config-file $WORK/metadata_agent.ini"
"$BIN_DIR/ns-metadata-agent" --config-file "$WORK/metadata_agent.ini" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
agent_ready() {
  kill -0 "$AGENT_PID" || die "ns-metadata-agent exited; its log:$(printf '\n'; cat "$WORK/agent.log")"
  curl -s -o /dev/null --max-time 2 --unix-socket "$SOCKET" http://169.254.169.254/
}
wait_for 20 "the agent's socket $SOCKET" agent_ready
info "pid $AGENT_PID, listening on $SOCKET, inventory $INVENTORY_SRC (this run's ids)"

# ---- 3. the spawner ---------------------------------------------------------------------------
step "Starting ns-metadata-spawner (decides where proxies run, starts and watches them)"
cat >"$WORK/spawner.ini" <<EOF
[DEFAULT]
metadata_proxy_socket = $SOCKET
# Serve networks that have no router (the DHCP namespace answers for them).
enable_isolated_metadata = true

[spawner]
proxy_binary = $BIN_DIR/ns-metadata-proxy
state_dir = $WORK/state
agent_keepalive = on
EOF
SPAWNER=("$BIN_DIR/ns-metadata-spawner" --config-file "$WORK/spawner.ini")
cmd "ns-metadata-spawner run --config-file $WORK/spawner.ini"
"$BIN_DIR/ns-metadata-spawner" run --config-file "$WORK/spawner.ini" >"$WORK/spawner.log" 2>&1 &
SPAWNER_PID=$!
spawner_ready() {
  kill -0 "$SPAWNER_PID" || die "ns-metadata-spawner exited; its log:$(printf '\n'; cat "$WORK/spawner.log")"
  # 0: every proxy runs; 3: the control socket answers but a proxy is not running yet.
  local rc=0
  "${SPAWNER[@]}" status >/dev/null 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ]
}
wait_for 20 "the spawner's control socket" spawner_ready
info "pid $SPAWNER_PID, control socket $WORK/state/control.sock"

# ---- 4. the demo network -----------------------------------------------------------------------
step "Creating the demo network out of namespaces"
# Checked here, after the build that may have taken minutes, not only at the start. The names
# are this run's own, so one that exists was made by someone else meanwhile: leave it alone.
for ns in "$QROUTER" "$QDHCP" "$VM1" "$VM2"; do
  [ ! -e "/run/netns/$ns" ] || die "namespace $ns already exists, though its name is unique to \
this run; it is not ours, so it is left alone. Run the demo again (new names), or, if you know \
it is a leftover, remove it with: ip netns del $ns"
done
# Leftovers of earlier runs that were killed before they could clean up (kill -9, power off):
# harmless to this run, but worth a line.
leftovers=$(ip netns list 2>/dev/null | awk '{print $1}' \
  | grep -E '^(qrouter-de0a1000-|qdhcp-de0b2000-|qs[0-9a-f]{12}-vm[12]$)' | tr '\n' ' ' || true)
[ -z "$leftovers" ] || info "note: namespaces of earlier demo runs exist (not touched): \
$leftovers- remove them with: ip netns del NAME"
mkns() {
  local err
  err=$(ip netns add "$1" 2>&1) || die "cannot create namespace $1: ${err:-ip netns add failed}"
  CREATED_NS+=("$1")
  ip -n "$1" link set lo up
}
mkveth() { # mkveth NS_A IF_A CIDR_A NS_B IF_B CIDR_B: a veth created directly in both namespaces
  ip link add name "$2" netns "$1" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"; ip -n "$1" link set "$2" up
  ip -n "$4" addr add "$6" dev "$5"; ip -n "$4" link set "$5" up
}
mkns "$QROUTER"; mkns "$VM1"
mkveth "$QROUTER" "$QR_IF" 10.250.1.1/24 "$VM1" eth0 10.250.1.10/24
ip -n "$VM1" route add default via 10.250.1.1
info "router   $QROUTER   $QR_IF 10.250.1.1/24 (network 'private')"
info "vm1      $VM1   eth0 10.250.1.10/24, default route via the router 10.250.1.1"
mkns "$QDHCP"; mkns "$VM2"
mkveth "$QDHCP" "$TAP" 10.250.2.2/24 "$VM2" eth0 10.250.2.10/24
info "dhcp     $QDHCP   $TAP 10.250.2.2/24 (the DHCP port of network 'isolated', no router)"
info "vm2      $VM2   eth0 10.250.2.10/24, no default route"

# ---- 5. announce them ----------------------------------------------------------------------------
step "Announcing the router and the network to the spawner (what Neutron's l3/dhcp agents would do)"
cmd "ns-metadata-spawner --config-file spawner.ini router add $ROUTER --netns $QROUTER"
"${SPAWNER[@]}" router add "$ROUTER" --netns "$QROUTER" | sed 's/^/      /'
cat >"$WORK/network.json" <<EOF
{"id": "$NET_ISOLATED", "netns": "$QDHCP", "interface": "$TAP",
 "subnets": [{"id": "$SUBNET_ISOLATED", "cidr": "10.250.2.0/24", "gateway_ip": "10.250.2.1",
              "enable_dhcp": true, "ip_version": 4}],
 "ports": [{"id": "$DHCP_PORT", "device_owner": "network:dhcp", "device_id": "dhcp-$NET_ISOLATED",
            "fixed_ips": [{"subnet_id": "$SUBNET_ISOLATED", "ip_address": "10.250.2.2"}]},
           {"id": "$VM2_PORT", "device_owner": "compute:nova", "device_id": "$VM2_ID",
            "fixed_ips": [{"subnet_id": "$SUBNET_ISOLATED", "ip_address": "10.250.2.10"}]}]}
EOF
cmd "ns-metadata-spawner --config-file spawner.ini network put network.json"
"${SPAWNER[@]}" network put "$WORK/network.json" | sed 's/^/      /'
cmd "ns-metadata-spawner --config-file spawner.ini host-routes $NET_ISOLATED"
ROUTES=$("${SPAWNER[@]}" host-routes "$NET_ISOLATED")
printf '%s\n' "$ROUTES" | sed 's/^/      /'
# The next hop for 169.254.169.254/32 (lines look like "  169.254.169.254/32 via 10.250.2.2").
HOP=$(printf '%s\n' "$ROUTES" | awk '$1 ~ /^169\.254\.169\.254/ && $2 == "via" { print $3; exit }')
[ -n "$HOP" ] || die "no 169.254.169.254 route in the host-routes output"
ip -n "$VM2" route add 169.254.169.254/32 via "$HOP"
info "vm2: route 169.254.169.254/32 via $HOP (what DHCP option 121 would push)"

# ---- 6. ask from inside the VMs ------------------------------------------------------------------
step "Asking 169.254.169.254 from inside each VM (curl in the vm's namespace)"
answers() { ip netns exec "$1" curl -s -o /dev/null --max-time 2 -w '%{http_code}' http://169.254.169.254/openstack | grep -q 200; }
wait_for 20 "the proxy in $QROUTER to answer vm1" answers "$VM1"
wait_for 20 "the proxy in $QDHCP to answer vm2" answers "$VM2"
# Indent JSON for reading (and shorten the 512-byte random_seed); anything else as it came.
pretty() {
  local body; body=$(cat)
  if command -v python3 >/dev/null && printf '%s' "$body" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if isinstance(d, dict) and len(str(d.get("random_seed", ""))) > 40:
    d["random_seed"] = d["random_seed"][:32] + "... (shortened for display)"
print(json.dumps(d, indent=2, sort_keys=True))' 2>/dev/null; then
    return 0
  fi
  printf '%s\n' "$body"
}
ask() { # ask VM_NAME NS PATH
  printf '\n    %s%s asks GET http://169.254.169.254%s%s\n' "$BOLD" "$1" "$3" "$OFF"
  ip netns exec "$2" curl -sS --fail --max-time 5 "http://169.254.169.254$3" | pretty | sed 's/^/      /'
}
ask vm1 "$VM1" /openstack/latest/meta_data.json
ask vm1 "$VM1" /latest/meta-data/instance-id
ask vm2 "$VM2" /openstack/latest/meta_data.json
ask vm2 "$VM2" /latest/meta-data/instance-id
info "(vm1 is $VM1_ID and vm2 is $VM2_ID in examples/inventory.json)"

step "ns-metadata-spawner status"
# Exit 3 would mean a proxy is not running: shown in the table, not fatal for the demo.
{ "${SPAWNER[@]}" status || true; } | sed 's/^/    /'

if [ "$ONCE" -eq 1 ]; then
  exit 0
fi

printf '\n%sThe demo is running.%s Try, in another shell (as root, or with sudo):\n' "$BOLD" "$OFF"
info "ip netns exec $VM1 curl http://169.254.169.254/openstack/latest/user_data"
info "ip netns exec $VM2 curl http://169.254.169.254/latest/meta-data/public-keys/0/openssh-key"
info "$BIN_DIR/ns-metadata-spawner --config-file $WORK/spawner.ini status"
info "logs: $WORK/agent.log $WORK/spawner.log"
printf '%sPress Ctrl-C to stop and clean up.%s\n' "$BOLD" "$OFF"
# Returns when a signal arrives (the trap cleans up) or when the spawner dies.
wait "$SPAWNER_PID" || true
die "ns-metadata-spawner exited unexpectedly; see the log above"
