//! Header rules of service invocation: hop-by-hop stripping, the caller/callee identity headers, and the
//! internal headers of tandem's sidecar-to-sidecar protocol (which never reach an app).

use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

pub use crate::sidecar::net::{get, strip_hop_by_hop};

pub const CALLER_APP_ID: &str = "dapr-caller-app-id";
pub const CALLER_NAMESPACE: &str = "dapr-caller-namespace";
pub const CALLEE_APP_ID: &str = "dapr-callee-app-id";
/// Internal: `http` (an HTTP-style invocation) or `grpc` (a proxied gRPC call, forwarded as it is).
pub const MODE: &str = "tandem-invoke";
/// Internal: the caller's trust domain (its Configuration's `accessControl.trustDomain`), until mTLS proves it.
pub const CALLER_TRUST_DOMAIN: &str = "tandem-caller-trust-domain";
/// Internal: the namespace the caller asked for.
pub const CALLEE_NAMESPACE: &str = "tandem-callee-namespace";

/// What the caller sidecar adds before sending an invocation to another sidecar: identity headers (caller-supplied
/// copies are replaced) and forwarding headers.
pub fn prepare_outgoing(
    h: &mut HeaderMap,
    caller: (&str, &str, &str),
    callee: (&str, &str),
    mode: &'static str,
    client: Option<SocketAddr>,
) {
    strip_hop_by_hop(h);
    let host = h.remove("host");
    for name in [
        CALLER_APP_ID,
        CALLER_NAMESPACE,
        CALLEE_APP_ID,
        MODE,
        CALLEE_NAMESPACE,
        CALLER_TRUST_DOMAIN,
        "dapr-api-token",
    ] {
        h.remove(name);
    }
    set(h, CALLER_APP_ID, caller.0);
    set(h, CALLER_NAMESPACE, caller.1);
    set(h, CALLER_TRUST_DOMAIN, caller.2);
    set(h, CALLEE_APP_ID, callee.0);
    set(h, CALLEE_NAMESPACE, callee.1);
    h.insert(MODE, HeaderValue::from_static(mode));
    if let Some(addr) = client {
        let ip = addr.ip().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.clone(),
        };
        set(h, "x-forwarded-for", &xff);
        let mut forwarded = format!("for={ip}");
        if let Some(host) = host.as_ref().and_then(|v| v.to_str().ok()) {
            set(h, "x-forwarded-host", host);
            forwarded.push_str(&format!(";host={host}"));
        }
        set(h, "forwarded", &forwarded);
    }
}

/// Replaces the caller identity headers with a proven identity.
pub fn set_caller(h: &mut HeaderMap, app_id: &str, namespace: &str) {
    h.remove(CALLER_APP_ID);
    h.remove(CALLER_NAMESPACE);
    set(h, CALLER_APP_ID, app_id);
    set(h, CALLER_NAMESPACE, namespace);
}

/// Removes the internal protocol headers before a request reaches the app.
pub fn strip_internal(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
    h.remove(MODE);
    h.remove(CALLEE_NAMESPACE);
    h.remove(CALLER_TRUST_DOMAIN);
    h.remove("host");
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_headers_replace_spoofed_identity_and_drop_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("dapr-caller-app-id", "spoofed".parse().unwrap());
        h.insert("host", "localhost:3500".parse().unwrap());
        h.insert("traceparent", "00-abc-def-01".parse().unwrap());
        prepare_outgoing(
            &mut h,
            ("web", "default", "public"),
            ("orders", "prod"),
            "http",
            Some("127.0.0.9:1".parse().unwrap()),
        );
        assert_eq!(get(&h, CALLER_APP_ID), Some("web"));
        assert_eq!(get(&h, CALLEE_APP_ID), Some("orders"));
        assert_eq!(get(&h, CALLEE_NAMESPACE), Some("prod"));
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none() && h.get("host").is_none());
        assert_eq!(get(&h, "x-forwarded-for"), Some("127.0.0.9"));
        assert_eq!(get(&h, "x-forwarded-host"), Some("localhost:3500"));
        assert_eq!(get(&h, "traceparent"), Some("00-abc-def-01"));
        strip_internal(&mut h);
        assert!(h.get(MODE).is_none() && h.get(CALLEE_NAMESPACE).is_none());
        assert_eq!(get(&h, CALLER_APP_ID), Some("web"));
    }
}
