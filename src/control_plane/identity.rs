//! Workload identity: the SPIFFE ID `spiffe://<trustDomain>/ns/<namespace>/<appId>` that a sidecar's X.509
//! certificate carries (as Dapr's Sentry issues them), read back from a peer's certificate, and the key pair and
//! certificate signing request a sidecar sends to the certificate authority.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The longest segment accepted in a SPIFFE ID (trust domains and Kubernetes names are far shorter).
const MAX_SEGMENT: usize = 255;

/// Who a workload is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub app_id: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, app_id: &str) -> Result<Self, String> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_ascii_lowercase(),
            namespace: namespace.into(),
            app_id: app_id.into(),
        };
        id.validate()?;
        Ok(id)
    }

    fn validate(&self) -> Result<(), String> {
        let td = &self.trust_domain;
        if td.is_empty()
            || td.len() > MAX_SEGMENT
            || !td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(format!(
                "trust domain {:?} is not valid: use lowercase letters, digits, '.', '-' and '_'",
                bounded(td)
            ));
        }
        for (what, v) in [("namespace", &self.namespace), ("app id", &self.app_id)] {
            if v.is_empty()
                || v.len() > MAX_SEGMENT
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(format!(
                    "{what} {:?} cannot be part of a SPIFFE ID: use letters, digits, '.', '-' and '_'",
                    bounded(v)
                ));
            }
        }
        Ok(())
    }

    /// Parses `spiffe://<td>/ns/<namespace>/<appId>`.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("{:?} is not a spiffe:// URI", bounded(uri)))?;
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(td), Some("ns"), Some(ns), Some(app), None) => SpiffeId::new(td, ns, app),
            _ => Err(format!(
                "{:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/<app-id>",
                bounded(uri)
            )),
        }
    }

    /// The identity in a certificate: its one `spiffe://` URI subject alternative name.
    pub fn from_certificate(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("unreadable subject alternative names: {e}"))?
            .ok_or("the certificate has no subject alternative names")?;
        let mut uris = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        });
        match (uris.next(), uris.next()) {
            (Some(u), None) => SpiffeId::parse(u),
            (None, _) => Err("the certificate carries no SPIFFE ID".into()),
            (Some(_), Some(_)) => Err("the certificate carries more than one SPIFFE ID".into()),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

/// When a certificate stops being valid.
pub fn not_after(der: &[u8]) -> Result<SystemTime, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// A fresh P-256 key and a certificate signing request for `id` (the authority decides what the certificate
/// finally says; the request only proves possession of the key).
pub fn key_and_csr(id: &SpiffeId) -> Result<(KeyPair, String), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.app_id.as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    let pem = csr.pem().map_err(|e| e.to_string())?;
    Ok((key, pem))
}

/// At most the first 128 characters of user input, for error messages.
fn bounded(s: &str) -> &str {
    match s.char_indices().nth(128) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_and_print_as_dapr_writes_them() {
        let id = SpiffeId::parse("spiffe://public/ns/default/orders").unwrap();
        assert_eq!(
            (id.trust_domain.as_str(), id.namespace.as_str(), id.app_id.as_str()),
            ("public", "default", "orders")
        );
        assert_eq!(id.to_string(), "spiffe://public/ns/default/orders");
        for bad in [
            "http://public/ns/default/orders",
            "spiffe://public/default/orders",
            "spiffe://public/ns/default/orders/extra",
            "spiffe:///ns/default/orders",
            "spiffe://public/ns//orders",
            "spiffe://pub lic/ns/default/orders",
            "spiffe://public/ns/default/ord?ers",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} parsed");
        }
        let long = format!("spiffe://public/ns/default/{}", "a".repeat(100_000));
        let err = SpiffeId::parse(&long).unwrap_err();
        assert!(err.len() < 400, "the error echoes the whole input: {} bytes", err.len());
    }
}
