//! HTTP(S) clients for components and the sidecar alike: the public web roots or a given root CA, an optional
//! client certificate, plain `http://` too, HTTP/1.1 and HTTP/2 by ALPN.

use std::sync::Arc;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpsClient<B> = Client<hyper_rustls::HttpsConnector<HttpConnector>, B>;

/// Metadata `field`'s `value` as an `http://` or `https://` URL.
pub fn http_url(field: &str, value: &str) -> Result<http::Uri, super::ComponentError> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| super::ComponentError::invalid(field, format!("{value:?} is not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(super::ComponentError::invalid(
            field,
            format!("{value:?} is not an http:// or https:// URL"),
        ));
    }
    Ok(uri)
}

/// PEM documents of a client's TLS (an HTTPEndpoint's `clientTLS`, a binding's mTLS metadata).
#[derive(Clone, Debug, Default)]
pub struct ClientTlsPem {
    pub root_ca: Option<String>,
    pub certificate: Option<String>,
    pub private_key: Option<String>,
}

/// A client trusting `root_ca` (instead of the public roots) and presenting the client certificate, if given.
pub fn tls_client<B>(tls: &ClientTlsPem) -> Result<HttpsClient<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &tls.root_ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("clientTLS.rootCA is not PEM certificates: {e}"))?;
                roots.add(cert).map_err(|e| format!("clientTLS.rootCA: {e}"))?;
            }
            if roots.is_empty() {
                return Err("clientTLS.rootCA holds no certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.certificate, &tls.private_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("clientTLS.certificate is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("clientTLS.privateKey is not a PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("clientTLS certificate/key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("clientTLS needs both certificate and privateKey, or neither".into()),
    };
    Ok(https_client_with(config))
}

/// The shared client for URLs and HTTPEndpoints without `clientTLS`: the public web roots, HTTP/1.1 and HTTP/2.
pub fn https_client<B>() -> HttpsClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    tls_client(&ClientTlsPem::default()).expect("the public roots make a valid TLS configuration")
}

/// An HTTP(S) client over `config`: plain `http://` too, HTTP/1.1 and HTTP/2 by ALPN.
fn https_client_with<B>(config: rustls::ClientConfig) -> HttpsClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}
