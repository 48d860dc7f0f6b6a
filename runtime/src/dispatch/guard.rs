//! Which hosts and addresses an outgoing request may reach. Pure functions, so
//! every bypass can be tested without sending a packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `host:port` matches one of a gate's `allowed_hosts` patterns: `host`,
/// `host:port`, or `*.example.com` (any subdomain, not the apex). An empty list
/// allows any host (public addresses only, see [`is_forbidden`]).
pub fn host_allowed(host: &str, port: u16, allowed: &[String]) -> bool {
    allowed.is_empty() || allowed.iter().any(|p| pattern_matches(p, host, port))
}

/// Whether the list names this host literally (no wildcard). Only such a name opens
/// private and loopback addresses.
pub fn named_explicitly(host: &str, port: u16, allowed: &[String]) -> bool {
    allowed
        .iter()
        .any(|p| !p.starts_with("*.") && pattern_matches(p, host, port))
}

fn pattern_matches(pattern: &str, host: &str, port: u16) -> bool {
    let host = normalize_host(host);
    let (pattern_host, pattern_port) = split_host_port(pattern);
    if pattern_port.is_some_and(|p| p != port) {
        return false;
    }
    let pattern_host = normalize_host(pattern_host);
    match pattern_host.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == pattern_host,
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Splits `host:port`, `[v6]:port`, `host`, `[v6]` or a bare IPv6 address.
pub fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((h, after)) = rest.split_once(']')
    {
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (h, port);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (s, None),
        },
        _ => (s, None),
    }
}

/// Checks an `allowed_hosts` entry when a gate is configured.
pub fn valid_pattern(pattern: &str) -> bool {
    let (host, _) = split_host_port(pattern);
    let host = host.strip_prefix("*.").unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && (host.parse::<IpAddr>().is_ok()
            || host
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')))
}

/// Addresses refused unless the gate names the host explicitly: loopback, private,
/// link-local (cloud metadata lives there), CGNAT, unique-local, multicast,
/// unspecified and documentation ranges, including IPv4 hidden inside IPv6.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, CGNAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || o[0] >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254 metadata
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48, local-use NAT64
}

/// IPv4 addresses carried inside IPv6: mapped, compatible, translated,
/// NAT64 and 6to4.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail()); // deprecated IPv4-compatible
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(tail()); // NAT64
    }
    if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return Some(tail()); // IPv4-translated (SIIT), ::ffff:0:a.b.c.d
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn host_patterns() {
        let allowed = list(&[
            "api.example.com",
            "*.hooks.dev",
            "127.0.0.1:8080",
            "[::1]:9000",
        ]);
        assert!(host_allowed("api.example.com", 443, &allowed));
        assert!(host_allowed("API.example.com.", 443, &allowed));
        assert!(host_allowed("a.hooks.dev", 443, &allowed));
        assert!(host_allowed("a.b.hooks.dev", 80, &allowed));
        assert!(
            !host_allowed("hooks.dev", 443, &allowed),
            "wildcard excludes the apex"
        );
        assert!(!host_allowed("evilhooks.dev", 443, &allowed));
        assert!(host_allowed("127.0.0.1", 8080, &allowed));
        assert!(!host_allowed("127.0.0.1", 8081, &allowed));
        assert!(host_allowed("[::1]", 9000, &allowed));
        assert!(!host_allowed("example.com", 443, &allowed));
        assert!(host_allowed("anything.com", 443, &[]));
        assert!(named_explicitly("127.0.0.1", 8080, &allowed));
        assert!(
            !named_explicitly("x.hooks.dev", 443, &allowed),
            "wildcards never open private addresses"
        );
    }

    #[test]
    fn forbidden_addresses() {
        let forbidden = [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a9fe:a9fe",
            "::ffff:0:a9fe:a9fe",
            "::ffff:0:7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::",
            "ff02::1",
            "198.18.0.1",
            "192.0.0.170",
        ];
        for ip in forbidden {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip} must be refused");
        }
        let public = [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "::ffff:0:5db8:d822",
            "172.32.0.1",
            "100.128.0.1",
        ];
        for ip in public {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip} is public");
        }
    }

    /// The URL parser normalises decimal, octal and hex IPv4 spellings before the
    /// guard sees them, so none of them hides a loopback address.
    #[test]
    fn odd_spellings_normalise_to_the_real_address() {
        for spelling in [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://[::ffff:7f00:1]/",
        ] {
            let url = reqwest::Url::parse(spelling).unwrap();
            let ip = match url.host() {
                Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
                Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
                other => panic!("{spelling} parsed as {other:?}"),
            };
            assert!(is_forbidden(ip), "{spelling} → {ip}");
        }
    }
}
