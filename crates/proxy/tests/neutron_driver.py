"""Neutron 29's own metadata proxy driver code (from $NS_NEUTRON_VENV), driven by
crates/proxy/tests/dropin_neutron.rs: MetadataDriver.spawn_monitored_metadata_proxy and
destroy_monitored_metadata_proxy of the ML2 driver (l3 and dhcp agents) and of the OVN driver,
with a ProcessManager and a ProcessMonitor, as root without sudo: `[AGENT] root_helper = ''`
and Neutron's privsep contexts in in-process mode. Neutron runs `haproxy` from PATH, which the
test sets with the drop-in first.

Usage: python neutron_driver.py STATE_PATH AGENT_SOCKET
Then one request per line on stdin, `OP key=value ...`, and one answer per line on stdout,
`key=value ...` or `error=...` ("READY" first):
  spawn driver=ml2|ovn ns=NS port=P router_id=ID|network_id=ID [bind_address=A]
        [bind_address_v6=A6 bind_interface=IF] [timeout_server=S]
        [rate_ip_versions=4|6 base=N/S burst=N/S]
      -> pid=PID active=True|False cfg=PATH pid_file=PATH
  render ...as spawn... pid_file=PATH out=PATH   (writes the config text Neutron renders)
      -> ok=True
  state driver=D uuid=ID ns=NS -> pid=PID active=BOOL
  destroy driver=D uuid=ID ns=NS -> active=BOOL pid_file_exists=BOOL cfg_exists=BOOL
"""
import os
import sys

from oslo_config import cfg
from oslo_log import log as logging

from neutron.agent.linux import external_process
from neutron.agent.metadata import driver as ml2_driver
from neutron.agent.ovn.metadata import driver as ovn_driver
from neutron.conf.agent import common as agent_conf
from neutron.conf.agent.metadata import config as meta_conf
from neutron.conf import common as common_conf
import neutron.privileged
from oslo_privsep import priv_context

DRIVERS = {"ml2": ml2_driver.MetadataDriver, "ovn": ovn_driver.MetadataDriver}


def setup(state_path, socket):
    conf = cfg.CONF
    logging.register_options(conf)
    conf.register_opts(common_conf.core_opts)
    conf.register_cli_opts(common_conf.core_cli_opts)
    agent_conf.register_root_helper(conf)
    agent_conf.register_process_monitor_opts(conf)
    meta_conf.register_meta_conf_opts(meta_conf.SHARED_OPTS, conf)
    meta_conf.register_meta_conf_opts(
        meta_conf.METADATA_RATE_LIMITING_OPTS, conf,
        group=meta_conf.RATE_LIMITING_GROUP)
    meta_conf.register_meta_conf_opts(
        meta_conf.METADATA_HAPROXY_OPTS, conf, group=meta_conf.HAPROXY_GROUP)
    conf([], project="neutron", default_config_files=[])
    conf.set_override("state_path", state_path)
    conf.set_override("external_pids", os.path.join(state_path, "external", "pids"))
    conf.set_override("metadata_proxy_socket", socket)
    conf.set_override("root_helper", "", group="AGENT")
    conf.set_override("check_child_processes_interval", 1, group="AGENT")
    # Neutron's privileged code in this process, as root, instead of a privsep daemon.
    for ctx in vars(neutron.privileged).values():
        if isinstance(ctx, priv_context.PrivContext):
            ctx.set_client_mode(False)
    logging.setup(conf, "neutron-dropin-test")
    return conf


def apply(conf, req):
    group = meta_conf.RATE_LIMITING_GROUP
    rate = "rate_ip_versions" in req
    conf.set_override("rate_limit_enabled", rate, group=group)
    if rate:
        conf.set_override("ip_versions", [int(req["rate_ip_versions"])], group=group)
        for which in ("base", "burst"):
            n, s = req[which].split("/")
            conf.set_override(which + "_query_rate_limit", int(n), group=group)
            conf.set_override(which + "_window_duration", int(s), group=group)
    conf.set_override("timeout_server", int(req.get("timeout_server", 32)),
                      group=meta_conf.HAPROXY_GROUP)


def ids(req):
    return {k: req[k] for k in ("router_id", "network_id") if req.get(k)}


def binds(req):
    out = {"bind_address": req.get("bind_address", "0.0.0.0")}
    for k in ("bind_address_v6", "bind_interface"):
        if req.get(k):
            out[k] = req[k]
    return out


def manager(driver, conf, uuid, ns):
    return driver._get_metadata_proxy_process_manager(uuid, conf, ns_name=ns)


def handle(conf, monitor, op, req):
    driver = DRIVERS[req["driver"]]
    if op in ("spawn", "render"):
        apply(conf, req)
        uuid = req.get("router_id") or req.get("network_id")
        if op == "render":
            c = driver._get_haproxy_configurator(
                port=int(req["port"]), conf=conf, pid_file=req["pid_file"],
                **binds(req), **ids(req))
            with open(req["out"], "w") as f:
                f.write(c.haproxy_cfg)
            return {"ok": True}
        driver.spawn_monitored_metadata_proxy(
            monitor, req["ns"], int(req["port"]), conf, **binds(req), **ids(req))
        pm = manager(driver, conf, uuid, req["ns"])
        cfg_path = os.path.join(
            driver.haproxy_configurator().get_config_path(conf.state_path),
            uuid + ".conf")
        return {"pid": pm.pid, "active": pm.active, "cfg": cfg_path,
                "pid_file": pm.get_pid_file_name()}
    pm = manager(driver, conf, req["uuid"], req["ns"])
    if op == "state":
        return {"pid": pm.pid, "active": pm.active}
    if op == "destroy":
        pid_file = pm.get_pid_file_name()
        driver.destroy_monitored_metadata_proxy(monitor, req["uuid"], conf, req["ns"])
        cfg_path = os.path.join(
            driver.haproxy_configurator().get_config_path(conf.state_path),
            req["uuid"] + ".conf")
        return {"active": pm.active, "pid_file_exists": os.path.exists(pid_file),
                "cfg_exists": os.path.exists(cfg_path)}
    raise ValueError("unknown op %r" % op)


def main():
    state_path, socket = sys.argv[1:3]
    # The answers get their own copy of stdout; anything else written there (oslo.log's
    # default handler, the ProcessMonitor's lines) goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    conf = setup(state_path, socket)
    monitor = external_process.ProcessMonitor(config=conf, resource_type="router")
    print("READY", file=answers, flush=True)
    for line in sys.stdin:
        op, *pairs = line.split()
        try:
            answer = handle(conf, monitor, op, dict(p.split("=", 1) for p in pairs))
        except Exception as e:  # the test shows it
            answer = {"error": ("%s: %s" % (type(e).__name__, e)).replace(" ", "_")}
        print(" ".join("%s=%s" % kv for kv in answer.items()), file=answers, flush=True)
    monitor.stop()


if __name__ == "__main__":
    main()
