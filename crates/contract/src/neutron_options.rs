//! Neutron's own option names, so a binary pointed at Neutron's files (`neutron.conf`,
//! `dhcp_agent.ini`, `l3_agent.ini`, `metadata_agent.ini`) stays quiet about the keys it
//! does not read and still warns about a typo of one it does (`ns_ini::Schema::ignored`,
//! `foreign_sections`).
//!
//! Source: Neutron 29.0.0, `oslo-config-generator` namespaces of
//! `etc/oslo-config-generator/{neutron.conf,dhcp_agent.ini,l3_agent.ini,metadata_agent.ini}`
//! (`oslo_config.generator._list_opts`), plus what `neutron.agent.dhcp_agent.register_options`
//! and `neutron.agent.l3_agent.register_opts` register at run time (`cfg.CONF._opts`);
//! deprecated names included, command-line-only options left out. Each key is listed once,
//! under the first table that holds it; every table is sorted.

/// `[DEFAULT]` options of the oslo libraries every Neutron process registers: oslo.log,
/// oslo.messaging, oslo.service (service, periodic_task, wsgi) and oslo.config's `config_source`.
pub const OSLO: &[&str] = &[
    "api_paste_config",
    "backdoor_port",
    "backdoor_socket",
    "client_socket_timeout",
    "config_source",
    "control_exchange",
    "debug",
    "default_log_levels",
    "executor_thread_pool_size",
    "fatal_deprecations",
    "graceful_shutdown_timeout",
    "instance_format",
    "instance_uuid_format",
    "log_color",
    "log_config",
    "log_config_append",
    "log_date_format",
    "log_dir",
    "log_file",
    "log_options",
    "log_rotate_interval",
    "log_rotate_interval_type",
    "log_rotation_type",
    "logdir",
    "logfile",
    "logging_context_format_string",
    "logging_debug_format_suffix",
    "logging_default_format_string",
    "logging_exception_prefix",
    "logging_user_identity_format",
    "max_header_line",
    "max_logfile_count",
    "max_logfile_size_mb",
    "publish_errors",
    "rate_limit_burst",
    "rate_limit_except_level",
    "rate_limit_interval",
    "rpc_ping_enabled",
    "rpc_response_timeout",
    "rpc_thread_pool_size",
    "run_external_periodic_tasks",
    "syslog_log_facility",
    "tcp_keepidle",
    "transport_url",
    "use_journal",
    "use_json",
    "use_stderr",
    "use_syslog",
    "wsgi_default_pool_size",
    "wsgi_keep_alive",
    "wsgi_log_format",
    "wsgi_server_debug",
];

/// `[DEFAULT]` options of neutron.conf that every agent registers (namespaces `neutron`,
/// `neutron.agent`, `neutron.base.agent`: core options, `interface_driver`, `metadata_proxy_*`).
pub const NEUTRON: &[&str] = &[
    "allow_bulk",
    "api_extensions_path",
    "auth_strategy",
    "base_mac",
    "core_plugin",
    "default_availability_zones",
    "dhcp_agent_notification",
    "dhcp_lease_duration",
    "dns_domain",
    "enable_traditional_dhcp",
    "external_dns_driver",
    "filter_validation",
    "global_physnet_mtu",
    "host",
    "http_retries",
    "interface_driver",
    "ipam_driver",
    "ipv6_pd_enabled",
    "max_dns_nameservers",
    "max_subnet_host_routes",
    "metadata_proxy_group",
    "metadata_proxy_socket",
    "metadata_proxy_user",
    "my_ip",
    "my_ipv6",
    "network_link_prefix",
    "notify_nova_on_port_data_changes",
    "notify_nova_on_port_status_changes",
    "ovs_use_veth",
    "pagination_max_limit",
    "periodic_fuzzy_delay",
    "periodic_interval",
    "rpc_response_max_timeout",
    "rpc_state_report_workers",
    "rpc_workers",
    "send_events_interval",
    "service_plugins",
    "setproctitle",
    "state_path",
    "vlan_qinq",
    "vlan_transparent",
];

/// `[DEFAULT]` options of neutron.conf only the server reads (`neutron.db`, `neutron.extensions`).
pub const NEUTRON_SERVER: &[&str] = &[
    "agent_down_time",
    "allow_automatic_dhcp_failover",
    "allow_automatic_l3agent_failover",
    "allowed_conntrack_helpers",
    "dhcp_agents_per_network",
    "dhcp_load_type",
    "dvr_base_mac",
    "enable_default_route_bfd",
    "enable_default_route_ecmp",
    "enable_dvr",
    "enable_new_agents",
    "enable_services_on_agents_with_admin_state_down",
    "enable_snat_by_default",
    "host_dvr_for_dhcp",
    "l3_ha",
    "l3_ha_net_cidr",
    "l3_ha_network_physical_name",
    "l3_ha_network_type",
    "max_allowed_address_pair",
    "max_l3_agents_per_router",
    "max_routes",
    "network_auto_schedule",
    "network_scheduler_driver",
    "router_auto_schedule",
    "router_distributed",
    "router_scheduler_driver",
    "rpc_resources_processing_step",
];

/// dhcp_agent.ini's own `[DEFAULT]` options (`neutron.dhcp.agent`, plus `dhcp_renewal_time`
/// and `dhcp_rebinding_time`, registered at run time).
pub const DHCP_AGENT: &[&str] = &[
    "bulk_reload_interval",
    "dhcp_broadcast_reply",
    "dhcp_confs",
    "dhcp_driver",
    "dhcp_rebinding_time",
    "dhcp_renewal_time",
    "dnsmasq_base_log_dir",
    "dnsmasq_config_file",
    "dnsmasq_dns_servers",
    "dnsmasq_enable_addr6_list",
    "dnsmasq_lease_max",
    "dnsmasq_local_resolv",
    "dnsmasq_txt_record",
    "enable_isolated_metadata",
    "enable_metadata_network",
    "force_metadata",
    "num_sync_threads",
    "resync_interval",
    "resync_throttle",
];

/// l3_agent.ini's own `[DEFAULT]` options (`neutron.l3.agent`, plus `external_pids`, registered
/// at run time).
pub const L3_AGENT: &[&str] = &[
    "agent_mode",
    "cleanup_on_shutdown",
    "enable_metadata_proxy",
    "external_ingress_mark",
    "external_pids",
    "ha_confs_path",
    "ha_conntrackd_enabled",
    "ha_conntrackd_group",
    "ha_conntrackd_hashlimit",
    "ha_conntrackd_hashsize",
    "ha_conntrackd_ipv4_mcast_addr",
    "ha_conntrackd_rcvsocketbuffer",
    "ha_conntrackd_sndsocketbuffer",
    "ha_conntrackd_socketbuffersize",
    "ha_conntrackd_socketbuffersize_max_grown",
    "ha_conntrackd_unix_backlog",
    "ha_vrrp_advert_int",
    "ha_vrrp_auth_password",
    "ha_vrrp_auth_type",
    "ha_vrrp_health_check_interval",
    "handle_internal_only_routers",
    "ipv6_gateway",
    "max_rtr_adv_interval",
    "metadata_access_mark",
    "metadata_port",
    "min_rtr_adv_interval",
    "per_router_log_files",
    "ra_confs",
    "radvd_user",
    "router_log_files_in_ha_confs",
];

/// metadata_agent.ini's own `[DEFAULT]` options (`neutron.metadata.agent`).
pub const METADATA_AGENT: &[&str] = &[
    "auth_ca_cert",
    "metadata_backlog",
    "metadata_proxy_shared_secret",
    "metadata_proxy_socket_mode",
    "metadata_workers",
    "nova_client_cert",
    "nova_client_priv_key",
    "nova_metadata_host",
    "nova_metadata_insecure",
    "nova_metadata_port",
    "nova_metadata_protocol",
];

/// Every other section of those files, lower case (sections match ignoring case: `[AGENT]`,
/// `[OVS]`), and of neutron_ovn_metadata_agent.ini (`[ovn]`, `[ovn_nb_global]`).
pub const SECTIONS: &[&str] = &[
    "agent",
    "cache",
    "cli_script",
    "cors",
    "database",
    "designate",
    "experimental",
    "healthcheck",
    "ironic",
    "keystone_authtoken",
    "metadata_haproxy",
    "metadata_rate_limiting",
    "network_log",
    "nova",
    "oslo_concurrency",
    "oslo_messaging_kafka",
    "oslo_messaging_metrics",
    "oslo_messaging_notifications",
    "oslo_messaging_rabbit",
    "oslo_messaging_tracing",
    "oslo_middleware",
    "oslo_policy",
    "oslo_reports",
    "oslo_versionedobjects",
    "ovn",
    "ovn_nb_global",
    "ovs",
    "placement",
    "privsep",
    "privsep_conntrack",
    "privsep_dhcp_release",
    "privsep_link",
    "privsep_namespace",
    "privsep_ovs_vsctl",
    "profiler",
    "profiler_jaeger",
    "profiler_otlp",
    "quotas",
    "service_providers",
];

/// `[ovn]` keys of Neutron 29's OVN metadata agent (`neutron.conf.plugins.ml2.drivers.ovn`)
/// that our agent accepts without reading them (it reads `ovn_sb_*` and
/// `ovsdb_probe_interval`).
pub const OVN_METADATA_AGENT_OVN: &[&str] = &[
    "bfd_min_rx",
    "bfd_min_tx",
    "bfd_mult",
    "broadcast_arps_to_all_routers",
    "dhcp_default_lease_time",
    "disable_ovn_dhcp_for_baremetal_ports",
    "dns_records_ovn_owned",
    "dns_servers",
    "enable_distributed_floating_ip",
    "fdb_age_threshold",
    "ha_failover_strategy",
    "live_migration_activation_strategy",
    "localnet_learn_fdb",
    "logical_switch_per_vlan_segment",
    "mac_binding_age_threshold",
    "neutron_sync_mode",
    "ovn_dhcp4_global_options",
    "ovn_dhcp6_global_options",
    "ovn_l3_scheduler",
    "ovn_metadata_enabled",
    "ovn_nb_ca_cert",
    "ovn_nb_certificate",
    "ovn_nb_connection",
    "ovn_nb_private_key",
    "ovn_router_indirect_snat",
    "ovs_create_tap",
    "ovsdb_connection_timeout",
    "ovsdb_log_level",
    "ovsdb_retry_max_interval",
    "stateless_nat_enabled",
    "vhost_sock_dir",
];

/// `[ovs]` keys of the OVN metadata agent accepted without being read (ours reads
/// `ovsdb_connection`).
pub const OVN_METADATA_AGENT_OVS: &[&str] = &["ovsdb_connection_timeout"];

/// `[ovs]` keys of Neutron 29's l3 and dhcp agents (neutron/conf/agent/ovs_conf.py,
/// neutron/conf/agent/ovsdb_api.py), accepted without being read by a program that also reads
/// `[ovs] ovsdb_connection` (the spawner's OVN source) and is passed those agents' files.
pub const AGENT_OVS: &[&str] = &[
    "bridge_mac_table_size",
    "igmp_flood",
    "igmp_flood_reports",
    "igmp_flood_unregistered",
    "igmp_snooping_enable",
    "integration_bridge",
    "ovsdb_connection_timeout",
    "ovsdb_debug",
    "ovsdb_timeout",
    "ssl_ca_cert_file",
    "ssl_cert_file",
    "ssl_key_file",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_each_key_has_one_home() {
        let keys = [
            OSLO,
            NEUTRON,
            NEUTRON_SERVER,
            DHCP_AGENT,
            L3_AGENT,
            METADATA_AGENT,
        ];
        let mut all: Vec<&str> = Vec::new();
        for t in keys.iter().chain([&SECTIONS]) {
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
        }
        for t in keys {
            all.extend(t.iter());
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a key in two tables");
        assert!(SECTIONS.iter().all(|s| *s == s.to_ascii_lowercase()));
    }
}
