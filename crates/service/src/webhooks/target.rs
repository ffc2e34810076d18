//! Where a webhook may go: http(s) URLs whose host does not resolve to this machine or its
//! private networks (SSRF), unless the operator allows them (`--webhook-allow-private`).

use std::net::{IpAddr, SocketAddr};

/// Parses a webhook URL: http or https, with a host.
pub fn parse(url: &str) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("invalid webhook URL {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "invalid webhook URL {url:?}: give an http or https URL with a host"
        ));
    }
    Ok(parsed)
}

/// Resolves `url`'s host and refuses it when any of its addresses is not public (unless
/// `allow_private`); the addresses to connect to, so the check and the connection see the same
/// ones (a name that resolves differently a moment later cannot slip through).
pub async fn resolve(url: &reqwest::Url, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    if !allow_private && let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, a loopback, private or link-local address; webhooks go \
             only to public addresses unless the service runs with --webhook-allow-private",
            a.ip()
        ));
    }
    Ok(addrs)
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7 and link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_addresses_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://100.64.0.1/",
            "http://localhost:9/",
        ] {
            let parsed = parse(url).expect(url);
            let e = resolve(&parsed, false).await.expect_err(url);
            assert!(e.contains("--webhook-allow-private"), "{url}: {e}");
            assert!(resolve(&parsed, true).await.is_ok(), "{url}");
        }
        let public = parse("https://93.184.216.34/hook").expect("parse");
        assert_eq!(resolve(&public, false).await.expect("public").len(), 1);
        assert!(parse("ftp://example.com/").is_err());
        assert!(parse("not a url").is_err());
    }
}
