//! The webhook's serving certificate: read from PEM files and re-read when they change (cert-manager, a
//! mounted Secret), or made at start by the injector itself (its own CA, ECDSA P-256, which every API server
//! accepts) for `<service>.<namespace>.svc`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("generating the injector's certificate: {0}")]
    Generate(String),
}

/// The crypto provider the webhook's TLS uses, independent of any process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate the server presents, swappable while it serves.
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
        })
    }

    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration presenting `certs`' current certificate, offering HTTP/2 and HTTP/1.1.
pub fn server_config(certs: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Reads a PEM certificate chain and its private key, checking that they belong together.
pub fn load_pem_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// What identifies the content of the certificate files: modification time, size and inode of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesStamp(Vec<Option<(SystemTime, u64, u64)>>);

pub fn stamp(files: &[&Path]) -> FilesStamp {
    FilesStamp(
        files
            .iter()
            .map(|f| {
                let m = std::fs::metadata(f).ok()?;
                #[cfg(unix)]
                let inode = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let inode = 0;
                Some((m.modified().ok()?, m.len(), inode))
            })
            .collect(),
    )
}

/// Checks the files every `interval` and swaps the served certificate when they changed and load cleanly.
/// A half-written pair (new certificate, old key) is retried at the next check; the old certificate stays.
pub fn spawn_reloader(
    store: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
    loaded: FilesStamp,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("tls_reloader", cert = %cert.display());
    let task = async move {
        let mut served = loaded;
        let mut failed: Option<FilesStamp> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let now = stamp(&[&cert, &key]);
            if now == served || failed.as_ref() == Some(&now) {
                continue;
            }
            match load_pem_files(&cert, &key) {
                Ok(k) => {
                    store.set(k);
                    served = now;
                    failed = None;
                    tracing::info!("serving the renewed certificate");
                }
                Err(e) => {
                    tracing::warn!(
                        "certificate files changed but cannot be loaded yet; still serving the previous certificate: {e}"
                    );
                    failed = Some(now);
                }
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(task, span))
}

/// The DNS names the API server may use for the injector's Service.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A CA the injector made for itself and the serving certificate it signed.
pub struct SelfSigned {
    /// The CA certificate: what goes into the webhook's `caBundle`.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub certified: CertifiedKey,
}

/// A new CA and serving certificate for `dns_names`, valid from an hour ago for ten years.
pub fn bootstrap(dns_names: &[String]) -> Result<SelfSigned, TlsError> {
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).expect("a timestamp near now");
    let (not_before, not_after) = (at(now - 3600), at(now + 10 * 365 * 24 * 3600));

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "tandem-sidecar-injector-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(dns_names.to_vec()).map_err(err)?;
    leaf.distinguished_name = DistinguishedName::new();
    if let Some(first) = dns_names.first() {
        leaf.distinguished_name.push(DnType::CommonName, first.as_str());
    }
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;

    let private = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let certified = CertifiedKey::from_der(vec![cert.der().clone()], private, &provider())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(SelfSigned {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        certified,
    })
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    #[test]
    fn bootstrapped_certificate_verifies_against_its_ca_for_the_service_names() {
        let names = dns_names("tandem-sidecar-injector", "tandem-system");
        let ss = bootstrap(&names).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ss.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let leaf = &ss.certified.cert[0];
        for name in &names {
            let server_name = rustls::pki_types::ServerName::try_from(name.as_str()).unwrap();
            verifier
                .verify_server_cert(leaf, &[], &server_name, &[], rustls::pki_types::UnixTime::now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(leaf, &[], &other, &[], rustls::pki_types::UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn pem_files_load_and_mismatched_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = bootstrap(&["a.svc".into()]).unwrap();
        let b = bootstrap(&["b.svc".into()]).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &a.cert_pem).unwrap();
        std::fs::write(&key, &a.key_pem).unwrap();
        let loaded = load_pem_files(&cert, &key).unwrap();
        assert_eq!(loaded.cert, a.certified.cert);

        std::fs::write(&key, &b.key_pem).unwrap();
        let e = load_pem_files(&cert, &key).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(load_pem_files(&cert, &key).unwrap_err(), TlsError::Key { .. }));
        assert!(matches!(
            load_pem_files(&dir.path().join("missing"), &key).unwrap_err(),
            TlsError::Read { .. }
        ));
    }
}
