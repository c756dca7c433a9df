//! Karma's rules for the provider URLs an integrator enters (pure: no I/O). Karma accepts
//! `https://` only, and refuses a URL whose host resolves to a loopback, private (RFC 1918,
//! fc00::/7), link-local (169.254.0.0/16, fe80::/10) or unspecified address, or an
//! IPv4-mapped IPv6 form of one. This module builds the nine URLs of a tenant, checks a
//! URL's shape, and judges one address; resolving names is the caller's (`setup_cli`).

use std::net::{IpAddr, Ipv4Addr};

/// Every call Karma makes to a provider, by the names replay fixtures use: the nine
/// provider calls, then the webhook receiver.
pub const CALLS: [&str; 10] = [
    "voucher.check",
    "voucher.commit",
    "voucher.reactivate",
    "loyalty.lookup",
    "loyalty.enroll",
    "loyalty.award",
    "loyalty.account",
    "loyalty.rewards",
    "loyalty.redeem",
    "webhook",
];

/// The nine provider calls Karma makes (the replay call names without `webhook`), each
/// with its absolute URL under `base` (this service's public root, e.g.
/// `https://provider.example.com`) for `tenant`.
pub fn provider_urls(base: &str, tenant: &str) -> Vec<(&'static str, String)> {
    let base = base.trim_end_matches('/');
    CALLS
        .iter()
        .filter_map(|call| {
            let (area, op) = call.split_once('.')?;
            Some((*call, format!("{base}/v1/{tenant}/{area}/{op}")))
        })
        .collect()
}

/// Check `--base-url` before the URLs are built from it: this service's public root, with
/// no query or fragment and without the `/v1/{tenant}` the URLs add.
pub fn check_base(base: &str, tenant: &str) -> Result<(), String> {
    if base.contains(['?', '#']) {
        return Err(format!(
            "--base-url {base} has a query or fragment: give the service's public root, e.g. https://provider.example.com"
        ));
    }
    let tail = format!("/v1/{tenant}");
    if base.trim_end_matches('/').ends_with(&tail) {
        return Err(format!(
            "--base-url {base} already ends with {tail}: give the service's public root; the URLs add {tail}/…"
        ));
    }
    Ok(())
}

/// Where a URL points: its host as written (brackets removed) and its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The host as an IP address when it is a literal one.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `localhost` and its subdomains always mean loopback (RFC 6761): refused without
    /// asking a resolver.
    pub fn is_localhost_name(&self) -> bool {
        let h = self.host.trim_end_matches('.').to_ascii_lowercase();
        h == "localhost" || h.ends_with(".localhost")
    }
}

/// Check a URL's shape (absolute, `https`, with a host); `Err` says what to do.
pub fn parse_https(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a valid absolute URL ({e}); give https://host/…"))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => {}
        Some(s) => {
            return Err(format!(
                "{url} uses {s}://; Karma accepts https:// only: serve this service behind TLS and give its https:// address"
            ))
        }
        None => return Err(format!("{url} is not absolute; give https://host/…")),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{url} has no host; give https://host/…"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Target {
        host,
        port: uri.port_u16().unwrap_or(443),
    })
}

fn v4_rule(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback (127.0.0.0/8)")
    } else if ip.is_private() {
        Some("private (RFC 1918)")
    } else if ip.is_link_local() {
        Some("link-local (169.254.0.0/16)")
    } else if ip.is_unspecified() {
        Some("unspecified (0.0.0.0)")
    } else {
        None
    }
}

/// Why Karma refuses this address, or `None` when it is acceptable.
pub fn refused(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_rule(v4).map(str::to_owned),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_rule(v4).map(|r| format!("an IPv4-mapped form of a {r} address"));
            }
            let r = if v6.is_loopback() {
                "loopback (::1)"
            } else if v6.is_unspecified() {
                "unspecified (::)"
            } else if v6.is_unique_local() {
                "private (fc00::/7)"
            } else if v6.is_unicast_link_local() {
                "link-local (fe80::/10)"
            } else {
                return None;
            };
            Some(r.to_owned())
        }
    }
}

/// The verdict on a name from every address it resolved to: refused when any one is
/// (Karma may connect to any of them); otherwise the addresses, listed.
pub fn resolved_verdict(host: &str, addrs: &[IpAddr]) -> Result<String, String> {
    let bad: Vec<String> = addrs
        .iter()
        .filter_map(|a| refused(*a).map(|why| format!("{a} is {why}")))
        .collect();
    if !bad.is_empty() {
        return Err(format!(
            "host {host} resolves to an address Karma refuses ({}): give a name that resolves only to public addresses",
            bad.join("; ")
        ));
    }
    Ok(addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refused_addresses_name_their_rule() {
        for (a, rule) in [
            ("127.0.0.1", "loopback (127.0.0.0/8)"),
            ("127.255.0.9", "loopback (127.0.0.0/8)"),
            ("10.0.0.1", "private (RFC 1918)"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("169.254.169.254", "link-local (169.254.0.0/16)"),
            ("0.0.0.0", "unspecified (0.0.0.0)"),
            ("::1", "loopback (::1)"),
            ("::", "unspecified (::)"),
            ("fc00::1", "private (fc00::/7)"),
            ("fd12:3456::1", "private (fc00::/7)"),
            ("fe80::1", "link-local (fe80::/10)"),
            (
                "::ffff:127.0.0.1",
                "an IPv4-mapped form of a loopback (127.0.0.0/8) address",
            ),
            (
                "::ffff:10.1.2.3",
                "an IPv4-mapped form of a private (RFC 1918) address",
            ),
            (
                "::ffff:169.254.1.1",
                "an IPv4-mapped form of a link-local (169.254.0.0/16) address",
            ),
            (
                "::ffff:0.0.0.0",
                "an IPv4-mapped form of a unspecified (0.0.0.0) address",
            ),
        ] {
            assert_eq!(refused(ip(a)).as_deref(), Some(rule), "{a}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "8.8.8.8",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:93.184.216.34",
        ] {
            assert_eq!(refused(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn url_shape() {
        assert_eq!(
            parse_https("https://93.184.216.34/v1/a/voucher/check"),
            Ok(Target {
                host: "93.184.216.34".into(),
                port: 443
            })
        );
        let t = parse_https("HTTPS://[::ffff:127.0.0.1]:8443/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::ffff:127.0.0.1", 8443));
        assert_eq!(t.literal_ip(), Some(ip("::ffff:127.0.0.1")));
        let e = parse_https("http://93.184.216.34/x").unwrap_err();
        assert!(
            e.contains("uses http://; Karma accepts https:// only"),
            "{e}"
        );
        assert!(parse_https("/v1/a/voucher/check")
            .unwrap_err()
            .contains("not absolute"));
        assert!(parse_https("https://exa mple.com/")
            .unwrap_err()
            .contains("not a valid absolute URL"));
        for h in ["localhost", "LOCALHOST.", "api.localhost"] {
            let t = parse_https(&format!("https://{h}/")).unwrap();
            assert!(t.is_localhost_name(), "{h}");
        }
        assert!(!parse_https("https://localhost.example.com/")
            .unwrap()
            .is_localhost_name());
    }

    #[test]
    fn every_resolved_address_counts() {
        let public = [
            ip("93.184.216.34"),
            ip("2606:2800:220:1:248:1893:25c8:1946"),
        ];
        assert_eq!(
            resolved_verdict("p.example.com", &public),
            Ok("93.184.216.34, 2606:2800:220:1:248:1893:25c8:1946".into())
        );
        let mixed = [
            ip("93.184.216.34"),
            ip("10.0.0.7"),
            ip("::ffff:192.168.0.1"),
        ];
        assert_eq!(
            resolved_verdict("p.example.com", &mixed),
            Err("host p.example.com resolves to an address Karma refuses (10.0.0.7 is private (RFC 1918); ::ffff:192.168.0.1 is an IPv4-mapped form of a private (RFC 1918) address): give a name that resolves only to public addresses".into())
        );
    }

    #[test]
    fn base_url_is_the_public_root() {
        assert_eq!(check_base("https://p.example.com/kp/", "acme"), Ok(()));
        assert!(check_base("https://p.example.com/?x=1", "acme")
            .unwrap_err()
            .contains("has a query or fragment"));
        assert!(check_base("https://p.example.com/#top", "acme")
            .unwrap_err()
            .contains("has a query or fragment"));
        assert!(check_base("https://p.example.com/v1/acme/", "acme")
            .unwrap_err()
            .contains("already ends with /v1/acme"));
    }

    #[test]
    fn nine_urls_with_the_replay_call_names() {
        let u = provider_urls("https://p.example.com/", "acme");
        assert_eq!(u.len(), 9);
        assert_eq!(
            u[0],
            (
                "voucher.check",
                "https://p.example.com/v1/acme/voucher/check".to_string()
            )
        );
        assert_eq!(
            u[8],
            (
                "loyalty.redeem",
                "https://p.example.com/v1/acme/loyalty/redeem".to_string()
            )
        );
    }
}
