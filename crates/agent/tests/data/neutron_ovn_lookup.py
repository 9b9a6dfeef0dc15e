"""Neutron 29's own OVN metadata lookup, for tests/ovn.rs: the Southbound IDL Neutron's OVN
metadata agent builds (neutron.agent.ovn.metadata.ovsdb.MetadataAgentOvnSbIdl, same tables and
conditions) and its request handler's port lookup (server_socket.MetadataProxyHandler.get_port),
run against the test's ovsdb-server.

usage: python neutron_ovn_lookup.py SB_REMOTE CHASSIS QUERIES_JSON
QUERIES_JSON: [[network_id, ip, mac_or_null], ...]
prints one JSON list: [[device_id, project_id] or null, ...] in the same order.

usage: python neutron_ovn_lookup.py SB_REMOTE agents NB_CFG
Neutron's server view of the agents (neutron_agent.AgentCache.populate, what
`openstack network agent list` shows) with NB_Global.nb_cfg = NB_CFG: prints one JSON list of
{type, id, binary, chassis, nb_cfg, alive}.
"""
import types
import json
import sys
import warnings

warnings.simplefilter("ignore")

from oslo_config import cfg  # noqa: E402

from neutron.conf.plugins.ml2.drivers.ovn import ovn_conf  # noqa: E402


def agents(nb_cfg):
    from neutron.agent.ovn.metadata import ovsdb
    from neutron.conf.agent.database import agents_db
    from neutron.plugins.ml2.drivers.ovn.agent import neutron_agent

    agents_db.register_db_agents_opts()

    # Every chassis, as the server's Southbound IDL holds them.
    sb_idl = ovsdb.MetadataAgentOvnSbIdl(
        tables=("Chassis", "Chassis_Private")).start()
    nb = types.SimpleNamespace(nb_global=types.SimpleNamespace(nb_cfg=nb_cfg))
    cache = neutron_agent.AgentCache(
        driver=types.SimpleNamespace(sb_ovn=sb_idl, nb_ovn=nb))
    cache.populate()
    out = [{"type": a.agent_type, "id": a.agent_id, "binary": a.binary,
            "chassis": a.chassis.name, "nb_cfg": a.nb_cfg, "alive": a.alive}
           for a in cache]
    out.sort(key=lambda a: (a["chassis"], a["type"]))
    print(json.dumps(out))
    sys.stdout.flush()


def main():
    remote, chassis = sys.argv[1], sys.argv[2]
    ovn_conf.register_opts()
    cfg.CONF([], project="neutron")
    cfg.CONF.set_override("ovn_sb_connection", [remote], group="ovn")
    cfg.CONF.set_override("ovsdb_connection_timeout", 30, group="ovn")
    if chassis == "agents":
        return agents(int(sys.argv[3]))
    queries = json.loads(sys.argv[3])

    from neutron.agent.ovn.metadata import ovsdb
    from neutron.agent.ovn.metadata import server_socket

    # The tables and chassis condition of MetadataAgent.start().
    tables = ("Encap", "Port_Binding", "Datapath_Binding", "SB_Global",
              "Chassis", "Chassis_Private")
    sb_idl = ovsdb.MetadataAgentOvnSbIdl(chassis=chassis, tables=tables).start()
    server_socket.MetadataProxyHandler._sb_idl = sb_idl
    handler = object.__new__(server_socket.MetadataProxyHandler)
    out = []
    for net, ip, mac in queries:
        device, project = handler.get_port(ip, network_id=net, remote_mac=mac)
        out.append(None if device is None else [device, project])
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
