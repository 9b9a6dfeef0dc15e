//! Modified EUI-64 interface identifiers (RFC 4291 appendix A): the one rule both sides use.
//! The spawner gives an OVN metadata port's tap the link-local address of the port's MAC, as
//! Neutron's `ip_lib.get_ipv6_lladdr` (netaddr's `ipv6_link_local`) does; the agent reads a
//! client's MAC back out of a link-local source address to find its port.

use std::net::Ipv6Addr;

/// `fe80::` then the MAC with `ff:fe` in the middle and the universal/local bit flipped.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8] = mac[0] ^ 0x02;
    o[9] = mac[1];
    o[10] = mac[2];
    o[11] = 0xff;
    o[12] = 0xfe;
    o[13] = mac[3];
    o[14] = mac[4];
    o[15] = mac[5];
    Ipv6Addr::from(o)
}

/// The MAC inside `addr`'s interface identifier, when it is a modified EUI-64 one (`ff:fe` in
/// the middle); any prefix (link-local or a SLAAC address).
pub fn mac(addr: &Ipv6Addr) -> Option<[u8; 6]> {
    let o = addr.octets();
    if o[11] != 0xff || o[12] != 0xfe {
        return None;
    }
    Some([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_netaddr() {
        // netaddr.EUI("fa:16:3e:11:22:33").ipv6_link_local(), as ip_lib.get_ipv6_lladdr.
        let ll = link_local([0xfa, 0x16, 0x3e, 0x11, 0x22, 0x33]);
        assert_eq!(
            ll,
            "fe80::f816:3eff:fe11:2233".parse::<Ipv6Addr>().expect("ip")
        );
        let ll = link_local([0x00, 0x00, 0x5e, 0x00, 0x53, 0x01]);
        assert_eq!(
            ll,
            "fe80::200:5eff:fe00:5301".parse::<Ipv6Addr>().expect("ip")
        );
    }

    #[test]
    fn the_mac_comes_back_out() {
        let m = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0x02];
        assert_eq!(mac(&link_local(m)), Some(m));
        assert_eq!(mac(&"fe80::1".parse().expect("ip")), None);
        assert_eq!(mac(&"fe80::f816:3eff:fe00:2".parse().expect("ip")), Some(m));
    }
}
