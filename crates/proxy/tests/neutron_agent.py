"""Run the real neutron-metadata-agent socket handler (neutron 29.0.0) with its RPC port
lookup faked, for the proxy's tests; Nova is nova_echo.py, a separate process.

Usage: python neutron_agent.py SOCKET_PATH NOVA_PORT
Prints "READY" once the agent socket listens. Only loopback is used.

Fake inventory: router r-neutron-1 has network net-1; on net-1 the address 127.0.0.1
belongs to instance inst-1 of project proj-1. Anything else: no port (Neutron's 404).
"""
import logging
import os
import sys

from oslo_config import cfg

from neutron.agent.metadata import agent
from neutron.agent.metadata import proxy_base
from neutron.conf.agent.metadata import config as meta_config

SECRET = "s3cret"
ROUTER, NETWORK, IP = "r-neutron-1", "net-1", "127.0.0.1"
INSTANCE, PROJECT = "inst-1", "proj-1"


class Handler(agent.MetadataProxyHandler):
    def __init__(self, request, client_address, server):
        # Skip MetadataPluginAPI (needs a message bus); everything else is Neutron's.
        super(agent.MetadataProxyHandler, self).__init__(
            self._conf, has_cache=False, request=request,
            client_address=client_address, server=server)

    def _get_ports_from_server(self, router_id=None, ip_address=None,
                               networks=None, mac_address=None):
        # The faked RPC get_ports.
        if router_id:
            return [{"network_id": NETWORK}] if router_id == ROUTER else []
        if networks and NETWORK in networks and ip_address == IP:
            return [{"device_id": INSTANCE, "project_id": PROJECT,
                     "network_id": NETWORK}]
        return []


def main():
    sock = sys.argv[1]
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if os.environ.get("NS_TEST_DEBUG") else logging.WARNING)
    meta_config.register_meta_conf_opts(meta_config.SHARED_OPTS)
    meta_config.register_meta_conf_opts(
        meta_config.METADATA_PROXY_HANDLER_OPTS)
    meta_config.register_meta_conf_opts(
        meta_config.UNIX_DOMAIN_METADATA_PROXY_OPTS)
    cfg.CONF([], project="neutron", default_config_files=[])
    cfg.CONF.set_override("metadata_proxy_shared_secret", SECRET)
    cfg.CONF.set_override("nova_metadata_host", "127.0.0.1")
    cfg.CONF.set_override("nova_metadata_port", int(sys.argv[2]))
    cfg.CONF.set_override("metadata_proxy_socket", sock)
    Handler._conf = cfg.CONF
    server = proxy_base.MetadataProxyServer(2, sock, Handler)
    print("READY", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
