"""The real neutron-metadata-agent (neutron 29.0.0, from $NS_NEUTRON_VENV) for the tests: Neutron's
own socket server and request handler (neutron.agent.metadata.agent), with only the RPC port
lookup (get_ports, normally answered by neutron-server over a message bus) answered from the
test's inventory file. Nova is the test's stand-in on 127.0.0.1. Used by the proxy's tests
(a tiny inventory) and the end-to-end tests (their full inventory); ns_testkit::neutron finds it.

Usage: python neutron_agent.py SOCKET INVENTORY_JSON NOVA_PORT SHARED_SECRET
Prints "READY" once the socket listens. Talks only to the socket and 127.0.0.1.
NS_TEST_DEBUG=1 logs Neutron's debug lines to stderr.
"""
import json
import logging
import os
import sys

from oslo_config import cfg

from neutron.agent.metadata import agent
from neutron.agent.metadata import proxy_base
from neutron.conf.agent.metadata import config as meta_config

ROUTER_OWNERS = ("network:router_interface",
                 "network:ha_router_replicated_interface",
                 "network:router_interface_distributed")


class InventoryHandler(agent.MetadataProxyHandler):
    """Neutron's handler; get_ports comes from the inventory instead of neutron-server."""

    _conf = None
    ports = []

    def __init__(self, request, client_address, server):
        # Skip MetadataProxyHandler.__init__ (it builds the RPC client); keep the base's.
        super(agent.MetadataProxyHandler, self).__init__(
            self._conf, has_cache=False, request=request,
            client_address=client_address, server=server)

    def _get_ports_from_server(self, router_id=None, ip_address=None,
                               networks=None, mac_address=None):
        # The filters of MetadataProxyHandler._get_port_filters, applied to the inventory.
        def wanted(p):
            if router_id and (p["device_id"] != router_id
                              or p["device_owner"] not in ROUTER_OWNERS):
                return False
            if mac_address:
                if p.get("mac_address") != mac_address:
                    return False
            elif ip_address and not any(ip["ip_address"] == ip_address
                                        for ip in p["fixed_ips"]):
                return False
            return not networks or p["network_id"] in networks
        return [p for p in self.ports if wanted(p)]


def main():
    sock, inventory, nova_port, secret = sys.argv[1:5]
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if os.environ.get("NS_TEST_DEBUG") else logging.WARNING)
    for opts in (meta_config.SHARED_OPTS, meta_config.METADATA_PROXY_HANDLER_OPTS,
                 meta_config.UNIX_DOMAIN_METADATA_PROXY_OPTS):
        meta_config.register_meta_conf_opts(opts)
    cfg.CONF([], project="neutron", default_config_files=[])
    cfg.CONF.set_override("metadata_proxy_shared_secret", secret)
    cfg.CONF.set_override("nova_metadata_host", "127.0.0.1")
    cfg.CONF.set_override("nova_metadata_port", int(nova_port))
    cfg.CONF.set_override("metadata_proxy_socket", sock)
    with open(inventory) as f:
        InventoryHandler.ports = json.load(f)["ports"]
    InventoryHandler._conf = cfg.CONF
    server = proxy_base.MetadataProxyServer(2, sock, InventoryHandler)
    print("READY", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
