//! Mutual TLS between sidecars on their workload certificates: the certificate a sidecar presents (replaced on
//! rotation without touching open connections), the server side that requires a client certificate chaining to
//! the trust bundle, and the client side that accepts only the server it meant to call.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::identity::{SpiffeId, not_after};

/// A certificate chain and its key, as PEM.
#[derive(Clone)]
pub struct Credentials {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key_pem", &"<hidden>")
            .finish_non_exhaustive()
    }
}

/// This workload's identity: its current certificate and the trust bundle peers must chain to.
pub struct WorkloadIdentity {
    id: SpiffeId,
    current: RwLock<Current>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl WorkloadIdentity {
    /// An identity from a certificate chain (leaf first), its key and the trust bundle. The leaf must carry `id`
    /// when one is expected, and chain to the bundle.
    pub fn new(creds: &Credentials, trust_bundle_pem: &str) -> Result<Arc<Self>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(trust_bundle_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("unreadable trust bundle: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable trust anchor in the trust bundle: {e}"))?;
        }
        if roots.is_empty() {
            return Err("the trust bundle holds no certificate".into());
        }
        let current = load(creds, &provider)?;
        let id = SpiffeId::from_certificate(&current.key.cert[0])?;
        let me = WorkloadIdentity {
            id,
            current: RwLock::new(current),
            roots: Arc::new(roots),
            provider,
        };
        me.check_chains(&me.current().key)?;
        Ok(Arc::new(me))
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.current().not_after
    }

    fn current(&self) -> Current {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the certificate (rotation): new handshakes present the new one; open connections are untouched.
    /// The new certificate must carry the same identity and chain to the same bundle.
    pub fn rotate(&self, creds: &Credentials) -> Result<(), String> {
        let next = load(creds, &self.provider)?;
        let id = SpiffeId::from_certificate(&next.key.cert[0])?;
        if id != self.id {
            return Err(format!("the new certificate is for {id}, not {}", self.id));
        }
        self.check_chains(&next.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    fn check_chains(&self, key: &CertifiedKey) -> Result<(), String> {
        let leaf = ParsedCertificate::try_from(&key.cert[0]).map_err(|e| e.to_string())?;
        verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &self.roots,
            &key.cert[1..],
            UnixTime::now(),
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| format!("the workload certificate does not chain to the trust bundle: {e}"))
    }

    /// The server side of the internal port: a client certificate chaining to the trust bundle is required.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Presented(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The client side of a call to the sidecar of `expected` (namespace and app id; any trust domain the
    /// authority issued): its certificate must chain to the trust bundle and carry that identity.
    pub fn client_config(self: &Arc<Self>, namespace: &str, app_id: &str) -> Result<Arc<rustls::ClientConfig>, String> {
        let verifier = ExpectedPeer {
            roots: self.roots.clone(),
            algorithms: self.provider.signature_verification_algorithms,
            namespace: namespace.into(),
            app_id: app_id.into(),
        };
        // No ALPN here: the HTTP client offers the protocols it speaks (h2).
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(Presented(self.clone())));
        Ok(Arc::new(config))
    }
}

fn load(creds: &Credentials, provider: &CryptoProvider) -> Result<Current, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(creds.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unreadable certificate chain: {e}"))?;
    let leaf = chain.first().ok_or("the certificate chain is empty")?;
    let not_after = not_after(leaf)?;
    let key =
        PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).map_err(|e| format!("unreadable private key: {e}"))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Current {
        key: Arc::new(key),
        not_after,
    })
}

/// The peer identity of a connection whose handshake verified its certificate chain.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| SpiffeId::from_certificate(leaf).ok())
}

/// Presents the current certificate, as a server and as a client.
#[derive(Debug)]
struct Presented(Arc<WorkloadIdentity>);

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("id", &self.id.to_string())
            .finish()
    }
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key)
    }
}

impl ResolvesClientCert for Presented {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts a server certificate that chains to the trust bundle and names the app the call is for. Sidecars are
/// reached by IP address, so the SPIFFE ID, not a DNS name, is what is checked.
#[derive(Debug)]
struct ExpectedPeer {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    namespace: String,
    app_id: String,
}

impl ServerCertVerifier for ExpectedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&leaf, &self.roots, intermediates, now, self.algorithms.all)?;
        let id = SpiffeId::from_certificate(end_entity).map_err(rustls::Error::General)?;
        if id.namespace != self.namespace || id.app_id != self.app_id {
            return Err(rustls::Error::General(format!(
                "the sidecar answering is {id}, not app {:?} of namespace {:?}",
                self.app_id, self.namespace
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
