"""Figure 9 of bench/run.sh: the OVN Southbound side (issue 15). Standard library only,
except `neutron`, which runs in Neutron 29's venv.

  python3 ovn_sb.py fill SB_SOCK HERE PORTS HERE_PORTS NETS CHASSIS [NETPFX]
      Fill a fresh Southbound database (ovsdb-server on the Unix socket SB_SOCK) in a few
      big JSON-RPC `transact` calls (ovsdb-client's argument cannot carry megabytes:
      one argv string is limited to 128 KiB): SB_Global, CHASSIS Chassis rows (one Encap
      and one Chassis_Private each; the first is HERE), NETS Datapath_Binding rows, and
      PORTS Port_Binding rows: one localport (Neutron's metadata port) per network, the
      rest VM ports spread over the chassis, of which HERE_PORTS bound to HERE, spread over
      the networks. Prints one JSON line. With NETPFX (4 hex digits, per run) the network ids
      are NETPFXnnnn-0000-4000-8000-… (distinct in their first 10 characters, as Neutron's
      veth names tap<id[:10]>0 need) and the addresses /28s in 10.250.0.0/16 (at most 4,096
      networks): the provisioning figure builds them for real.
  python3 ovn_sb.py relay LISTEN TARGET STATS
      A byte-counting relay: accepts on the Unix socket LISTEN, connects each client to the
      Unix socket TARGET, copies both ways and keeps STATS (JSON: bytes server->client,
      client->server, connections) up to date within 0.1 s.
  python3 ovn_sb.py launch NOTIFY_SOCK PIDFILE TIMEOUT_S -- CMD...
      Start CMD with NOTIFY_SOCKET=NOTIFY_SOCK (bound here first), its pid in PIDFILE; wait
      for READY=1; then sample /proc/PID (VmHWM, VmRSS, Pss); prints one JSON line with
      ready_ms (from just before the fork) and any X_NAME=number fields of the READY datagram.
      CMD keeps running (the caller stops it, by the pid file).
  python3 ovn_sb.py neutron-agent CONF NETS
      (Neutron's venv python, as root) Neutron 29's OVN metadata agent itself
      (neutron.agent.ovn.metadata_agent.main with CONF), with only what cannot run here
      replaced: no ovs-vswitchd, so OVS transactions do not wait for it to apply them
      (OvsVsctlTransaction.vswitchd_has_completed is true, no ofport check); privsep runs
      in-process (as root, no privsep-helper); Neutron's own metadata server
      (UnixDomainMetadataProxy) is not started: its haproxys forward to the bench's agent
      stand-in on metadata_proxy_socket, as ours do. READY=1 to $NOTIFY_SOCKET once NETS
      ovnmeta- namespaces exist (its provisioning runs on PortBindingCreateWithChassis).
  python3 ovn_sb.py neutron SB_REMOTE CHASSIS EXPECTED_PORT_BINDINGS
      (Neutron's venv python) Neutron 29's MetadataAgentOvnSbIdl with the tables and chassis
      condition MetadataAgent.start() registers, started as the agent starts it; once
      start() returns (it waits for the first update, the full replica) and the replica
      holds EXPECTED_PORT_BINDINGS rows, READY=1 to $NOTIFY_SOCKET (with X_IMPORT_MS,
      X_REPLICA_MS, X_PORT_BINDINGS); then sleeps until SIGTERM.
"""
import json
import os
import socket
import sys
import threading
import time
import uuid


def _u(kind, i):
    return str(uuid.UUID(int=(0x5B << 120) | (kind << 96) | i))


def _rpc(sock, method, params, rid):
    sock.sendall(json.dumps({"method": method, "params": params, "id": rid}).encode())
    dec = json.JSONDecoder()
    buf = ""
    raw = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise SystemExit("ovsdb-server closed the connection")
        raw += chunk
        try:
            buf = raw.decode()
        except UnicodeDecodeError:
            continue
        try:
            msg, _ = dec.raw_decode(buf.lstrip())
        except ValueError:
            continue
        if msg.get("id") == rid:
            if msg.get("error"):
                raise SystemExit(f"{method}: {msg['error']}")
            return msg["result"]
        raw = b""  # an echo or notification: dropped (none are expected)


def _transact(sock, ops, rid):
    res = _rpc(sock, "transact", ["OVN_Southbound"] + ops, rid)
    for i, r in enumerate(res):
        if isinstance(r, dict) and r.get("error"):
            raise SystemExit(f"transact op {i}: {r}")
    return res


def _net_id(n, pfx):
    return f"{pfx}{n:04x}-0000-4000-8000-{n:012x}" if pfx else _u(1, n)


def _addr(n, host, pfx):
    if pfx:  # a /28 per network in 10.250.0.0/16
        return f"10.250.{n // 16}.{(n % 16) * 16 + host}", 28
    return f"10.{n // 256 % 256}.{n % 256}.{host}", 24


def fill(sb_sock, here, ports, here_ports, nets, nchassis, pfx=None):
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX)
    s.connect(sb_sock)
    names = [here] + [f"compute-{i:05d}" for i in range(1, nchassis)]
    ops = [{"op": "insert", "table": "SB_Global", "row": {"nb_cfg": 1}}]
    for i, name in enumerate(names):
        ops.append({"op": "insert", "table": "Encap", "uuid-name": f"e{i}",
                    "row": {"type": "geneve", "ip": f"172.16.{i // 250}.{i % 250 + 1}",
                            "chassis_name": name,
                            "options": ["map", [["csum", "true"]]]}})
        ops.append({"op": "insert", "table": "Chassis", "uuid-name": f"c{i}",
                    "row": {"name": name, "hostname": name,
                            "encaps": ["named-uuid", f"e{i}"],
                            "other_config": ["map", [["datapath-type", "system"],
                                                     ["ovn-bridge-mappings", "physnet1:br-ex"]]]}})
        ops.append({"op": "insert", "table": "Chassis_Private",
                    "row": {"name": name, "chassis": ["named-uuid", f"c{i}"], "nb_cfg": 1}})
    dp_op = len(ops)
    for n in range(nets):
        ops.append({"op": "insert", "table": "Datapath_Binding",
                    "row": {"tunnel_key": n + 1,
                            "external_ids": ["map", [["name", f"neutron-{_net_id(n, pfx)}"],
                                                     ["name2", f"net-{n}"]]]}})
    res = _transact(s, ops, 1)
    chassis = [res[1 + 3 * i + 1]["uuid"][1] for i in range(nchassis)]
    dps = [res[dp_op + n]["uuid"][1] for n in range(nets)]
    txns = 1
    # Ports: index p; localport of network n first (tunnel key 1), then VM ports.
    vm = ports - nets
    step = vm // here_ports if here_ports else 0
    batch = []
    key = [1] * nets
    sent = 0

    def flush():
        nonlocal batch, txns
        if batch:
            txns += 1
            _transact(s, batch, txns)
            batch = []

    for p in range(ports):
        if p < nets:
            n = p
            row_type, chassis_ref, owner = "localport", None, "network:distributed"
            opts = []
            device = f"ovnmeta-{_net_id(n, pfx)}"
            ip, plen = _addr(n, 2, pfx)
        else:
            v = p - nets
            n = v % nets
            row_type, owner = "", "compute:nova"
            if step and v % step == 0 and v // step < here_ports:
                c = 0
            else:
                c = 1 + v % (nchassis - 1)
            chassis_ref = chassis[c]
            opts = [["mcast_flood_reports", "true"], ["requested-chassis", names[c]]]
            device = _u(3, v)
            ip, plen = _addr(n, key[n] % (13 if pfx else 250) + 3, pfx)
        key[n] += 1
        mac = f"fa:16:3e:{(p >> 16) & 255:02x}:{(p >> 8) & 255:02x}:{p & 255:02x}"
        ext = [["neutron:cidrs", f"{ip}/{plen}"], ["neutron:device_id", device],
               ["neutron:device_owner", owner],
               ["neutron:network_name", f"neutron-{_net_id(n, pfx)}"],
               ["neutron:port_name", ""], ["neutron:project_id", _u(4, n % 50).replace("-", "")],
               ["neutron:revision_number", "4"],
               ["neutron:security_group_ids", _u(5, n % 50)]]
        row = {"logical_port": _u(2, p), "tunnel_key": key[n] - 1, "datapath": ["uuid", dps[n]],
               "mac": f"{mac} {ip}", "type": row_type, "external_ids": ["map", ext],
               "options": ["map", opts],
               "up": True}
        if chassis_ref:
            row["chassis"] = ["uuid", chassis_ref]
        batch.append({"op": "insert", "table": "Port_Binding", "row": row})
        sent += 1
        if len(batch) >= 10000:
            flush()
    flush()
    s.close()
    out = {"port_bindings": sent, "here": here_ports, "localports": nets, "chassis": nchassis,
           "transactions": txns, "secs": round(time.monotonic() - t0, 2)}
    print(json.dumps(out, separators=(",", ":")))


def relay(listen, target, stats):
    counts = {"down": 0, "up": 0, "conns": 0}
    lock = threading.Lock()
    dirty = threading.Event()

    def writer():
        while True:
            dirty.wait()
            dirty.clear()
            with lock:
                text = json.dumps(counts, separators=(",", ":"))
            with open(stats + ".tmp", "w") as f:
                f.write(text)
            os.replace(stats + ".tmp", stats)
            time.sleep(0.05)

    def pipe(a, b, field):
        try:
            while True:
                d = a.recv(1 << 16)
                if not d:
                    break
                b.sendall(d)
                with lock:
                    counts[field] += len(d)
                dirty.set()
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    if os.path.exists(listen):
        os.unlink(listen)
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(listen)
    ls.listen(64)
    dirty.set()
    threading.Thread(target=writer, daemon=True).start()
    while True:
        c, _ = ls.accept()
        t = socket.socket(socket.AF_UNIX)
        t.connect(target)
        with lock:
            counts["conns"] += 1
        dirty.set()
        threading.Thread(target=pipe, args=(t, c, "down"), daemon=True).start()
        threading.Thread(target=pipe, args=(c, t, "up"), daemon=True).start()


def _status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _rollup_kb(pid, key):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def launch(notify, pidfile, timeout, cmd):
    import subprocess

    if os.path.exists(notify):
        os.unlink(notify)
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(notify)
    rx.settimeout(timeout)
    env = dict(os.environ, NOTIFY_SOCKET=notify)
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    with open(pidfile, "w") as f:
        f.write(f"{child.pid}\n")
    extra = {}
    while True:
        try:
            msg = rx.recv(4096).decode()
        except socket.timeout:
            print(json.dumps({"error": f"no READY=1 within {timeout} s", "pid": child.pid},
                             separators=(",", ":")))
            return 1
        if "READY=1" in msg.split("\n"):
            t1 = time.monotonic()
            for line in msg.split("\n"):
                k, _, v = line.partition("=")
                if k.startswith("X_"):
                    extra[k[2:].lower()] = float(v)
            break
    pid = child.pid
    out = {"pid": pid, "ready_ms": round((t1 - t0) * 1000, 1),
           "hwm_kb": _status_kb(pid, "VmHWM"), "rss_kb": _status_kb(pid, "VmRSS"),
           "pss_kb": _rollup_kb(pid, "Pss")}
    out.update(extra)
    print(json.dumps(out, separators=(",", ":")))
    sys.stdout.flush()
    os._exit(0)  # leave the child running; its pid is in PIDFILE


def neutron(remote, chassis, expected):
    t0 = time.monotonic()
    import warnings

    warnings.simplefilter("ignore")
    from oslo_config import cfg
    from neutron.conf.plugins.ml2.drivers.ovn import ovn_conf

    ovn_conf.register_opts()
    cfg.CONF([], project="neutron")
    cfg.CONF.set_override("ovn_sb_connection", [remote], group="ovn")
    from neutron.agent.ovn.metadata import ovsdb

    t1 = time.monotonic()
    # MetadataAgent.start()'s tables and chassis condition (neutron/agent/ovn/metadata/agent.py).
    tables = ("Encap", "Port_Binding", "Datapath_Binding", "SB_Global",
              "Chassis", "Chassis_Private")
    sb_idl = ovsdb.MetadataAgentOvnSbIdl(chassis=chassis, tables=tables).start()
    idl = sb_idl.idl
    while len(idl.tables["Port_Binding"].rows) < expected:
        time.sleep(0.01)
    t2 = time.monotonic()
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.sendto((f"READY=1\nX_IMPORT_MS={(t1 - t0) * 1000:.1f}\n"
               f"X_REPLICA_MS={(t2 - t1) * 1000:.1f}\n"
               f"X_PORT_BINDINGS={len(idl.tables['Port_Binding'].rows)}").encode(),
              os.environ["NOTIFY_SOCKET"])
    while True:  # until SIGTERM (default action)
        time.sleep(3600)


def neutron_agent(conf, nets):
    import warnings

    warnings.simplefilter("ignore")
    import neutron.privileged
    from neutron.agent.ovn import metadata_agent
    from neutron.agent.ovn.metadata import agent
    from neutron.conf.agent.ovn.metadata import config as ovn_meta
    from oslo_privsep import priv_context
    from ovsdbapp.schema.open_vswitch import impl_idl

    def in_process_privsep():
        for ctx in vars(neutron.privileged).values():
            if isinstance(ctx, priv_context.PrivContext):
                ctx.set_client_mode(False)

    class NoMetadataServer:
        def __init__(self, *args, **kwargs):
            pass

        def run(self):
            pass

        def wait(self):
            while True:  # until SIGTERM (default action)
                time.sleep(3600)

    ovn_meta.setup_privsep = in_process_privsep
    agent.metadata_server.UnixDomainMetadataProxy = NoMetadataServer
    impl_idl.OvsVsctlTransaction.vswitchd_has_completed = lambda self, next_cfg: True
    impl_idl.OvsVsctlTransaction.post_commit_failed_interfaces = lambda self, txn: []

    def ready():
        while True:
            have = sum(1 for n in os.listdir("/run/netns") if n.startswith("ovnmeta-"))
            if have >= nets:
                break
            time.sleep(0.02)
        tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        tx.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])

    threading.Thread(target=ready, daemon=True).start()
    sys.argv = ["neutron-ovn-metadata-agent", "--config-file", conf]
    metadata_agent.main()


def main():
    cmd = sys.argv[1]
    a = sys.argv[2:]
    if cmd == "fill":
        fill(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6] if len(a) > 6 else None)
    elif cmd == "relay":
        relay(a[0], a[1], a[2])
    elif cmd == "launch":
        sep = a.index("--")
        sys.exit(launch(a[0], a[1], float(a[2]), a[sep + 1:]))
    elif cmd == "neutron-agent":
        neutron_agent(a[0], int(a[1]))
    elif cmd == "neutron":
        neutron(a[0], a[1], int(a[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
