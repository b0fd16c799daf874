//! The certificate authority: a root (the trust bundle) and an issuer that signs short-lived workload
//! certificates carrying SPIFFE IDs, as Dapr's Sentry does. Kubernetes-free: the caller decides who may have
//! which identity.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::control_plane::identity::SpiffeId;

/// How long a generated root and issuer are valid (Dapr's default is a year too).
pub const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A CSR larger than this is refused before parsing.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// The PEM files of a trust bundle, under Dapr's `dapr-trust-bundle` Secret keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// `ca.crt`: the root(s) every workload trusts.
    pub ca_crt: String,
    /// `issuer.crt`: the certificate that signs workload certificates (chains to `ca.crt`).
    pub issuer_crt: String,
    /// `issuer.key`: its private key.
    pub issuer_key: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("issuer_key", &"<hidden>")
            .finish_non_exhaustive()
    }
}

/// A signed workload certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf first, then the issuer when it is not the root itself.
    pub chain_pem: String,
    pub trust_bundle_pem: String,
    pub not_after: SystemTime,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The issuer's certificate, sent after the leaf unless it is a root in the bundle.
    intermediate_pem: Option<String>,
    trust_bundle_pem: String,
    issuer_not_after: SystemTime,
}

impl Authority {
    /// A new root and an issuer signed by it.
    pub fn generate(trust_domain: &str) -> Result<(Authority, Bundle), String> {
        let now = time::OffsetDateTime::now_utc();
        let until = now + CA_VALIDITY;
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut root = CertificateParams::default();
        root.distinguished_name = name(&format!("tandem root CA ({trust_domain})"));
        root.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root.not_before = now - Duration::from_secs(3600);
        root.not_after = until;
        let root_cert = root.self_signed(&root_key).map_err(|e| e.to_string())?;
        let root_issuer = Issuer::new(root, root_key);

        let issuer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut issuer = CertificateParams::default();
        issuer.distinguished_name = name("tandem issuer");
        issuer.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        issuer.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        issuer.not_before = now - Duration::from_secs(3600);
        issuer.not_after = until;
        let issuer_cert = issuer.signed_by(&issuer_key, &root_issuer).map_err(|e| e.to_string())?;
        let bundle = Bundle {
            ca_crt: root_cert.pem(),
            issuer_crt: issuer_cert.pem(),
            issuer_key: issuer_key.serialize_pem(),
        };
        Ok((Authority::from_bundle(&bundle)?, bundle))
    }

    /// The authority of an existing bundle (generated earlier, or given by the user).
    pub fn from_bundle(bundle: &Bundle) -> Result<Authority, String> {
        let key = KeyPair::from_pem(&bundle.issuer_key).map_err(|e| format!("issuer.key is not usable: {e}"))?;
        let issuer_der = pem_certificates(&bundle.issuer_crt)?
            .into_iter()
            .next()
            .ok_or("issuer.crt holds no certificate")?;
        if !public_key_matches(&issuer_der, &key) {
            return Err("issuer.key is not the key of issuer.crt".into());
        }
        let issuer_not_after =
            crate::control_plane::identity::not_after(&issuer_der).map_err(|e| format!("issuer.crt: {e}"))?;
        let issuer = Issuer::from_ca_cert_der(&issuer_der.clone().into(), key)
            .map_err(|e| format!("issuer.crt is not usable: {e}"))?;
        let roots = pem_certificates(&bundle.ca_crt)?;
        if roots.is_empty() {
            return Err("ca.crt holds no certificate".into());
        }
        let intermediate_pem = (!roots.contains(&issuer_der)).then(|| bundle.issuer_crt.trim().to_owned() + "\n");
        Ok(Authority {
            issuer,
            intermediate_pem,
            trust_bundle_pem: bundle.ca_crt.clone(),
            issuer_not_after,
        })
    }

    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// Signs a certificate for `id` with the public key of `csr_pem`. Only the key is taken from the request:
    /// what the certificate says is decided here. Valid from `skew` ago for `ttl`, never past the issuer's own
    /// expiry.
    pub fn sign(&self, csr_pem: &str, id: &SpiffeId, ttl: Duration, skew: Duration) -> Result<Issued, String> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(format!(
                "the certificate signing request is larger than {MAX_CSR_BYTES} bytes"
            ));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("the certificate signing request is not valid: {e}"))?;
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.issuer_not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&id.app_id);
        params.subject_alt_names = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|e| format!("SPIFFE ID not encodable: {e:?}"))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = (now - skew).into();
        params.not_after = not_after.into();
        params.serial_number = Some(rand::random::<[u8; 16]>().map(|b| b & 0x7f).to_vec().into());
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| format!("cannot sign: {e}"))?;
        let mut chain_pem = cert.pem();
        if let Some(intermediate) = &self.intermediate_pem {
            chain_pem.push_str(intermediate);
        }
        Ok(Issued {
            chain_pem,
            trust_bundle_pem: self.trust_bundle_pem.clone(),
            not_after,
        })
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tandem");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| {
            c.map(|c| c.to_vec())
                .map_err(|e| format!("unreadable PEM certificate: {e}"))
        })
        .collect()
}

fn public_key_matches(cert_der: &[u8], key: &KeyPair) -> bool {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert_der)
        .map(|(_, c)| c.public_key().raw == key.subject_public_key_info().as_slice())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::identity::key_and_csr;
    use crate::control_plane::mtls::{Credentials, WorkloadIdentity};

    fn issue(ca: &Authority, id: &SpiffeId, ttl: Duration) -> (Issued, Credentials) {
        let (key, csr) = key_and_csr(id).unwrap();
        let issued = ca.sign(&csr, id, ttl, Duration::from_secs(60)).unwrap();
        let creds = Credentials {
            chain_pem: issued.chain_pem.clone(),
            key_pem: key.serialize_pem(),
        };
        (issued, creds)
    }

    #[test]
    fn a_signed_certificate_carries_the_identity_and_chains_to_the_bundle() {
        let (ca, bundle) = Authority::generate("public").unwrap();
        let id = SpiffeId::new("public", "shop", "orders").unwrap();
        let (issued, creds) = issue(&ca, &id, Duration::from_secs(3600));
        let wi = WorkloadIdentity::new(&creds, &issued.trust_bundle_pem).unwrap();
        assert_eq!(wi.id(), &id);
        let left = wi.not_after().duration_since(SystemTime::now()).unwrap();
        assert!(
            left <= Duration::from_secs(3600) && left > Duration::from_secs(3500),
            "{left:?}"
        );
        // The same bundle reloaded signs certificates the first one trusts.
        let again = Authority::from_bundle(&bundle).unwrap();
        let other = SpiffeId::new("public", "shop", "cart").unwrap();
        let (_, creds) = issue(&again, &other, Duration::from_secs(60));
        assert!(WorkloadIdentity::new(&creds, &issued.trust_bundle_pem).is_ok());
        // Rotation keeps the identity and refuses another one.
        let (_, same) = issue(&ca, &id, Duration::from_secs(60));
        wi.rotate(&same).unwrap();
        assert!(
            wi.rotate(&creds)
                .unwrap_err()
                .contains("not spiffe://public/ns/shop/orders")
        );
    }

    #[test]
    fn a_certificate_of_another_authority_is_not_trusted() {
        let (ca, _) = Authority::generate("public").unwrap();
        let (other, _) = Authority::generate("public").unwrap();
        let id = SpiffeId::new("public", "default", "a").unwrap();
        let (_, creds) = issue(&other, &id, Duration::from_secs(60));
        let err = WorkloadIdentity::new(&creds, ca.trust_bundle_pem()).unwrap_err();
        assert!(err.contains("does not chain"), "{err}");
    }

    #[test]
    fn the_request_decides_only_the_key() {
        let (ca, _) = Authority::generate("public").unwrap();
        // The CSR asks for an admin identity; the certificate says what the authority decided.
        let asked = SpiffeId::new("public", "kube-system", "admin").unwrap();
        let (key, csr) = key_and_csr(&asked).unwrap();
        let granted = SpiffeId::new("public", "default", "web").unwrap();
        let issued = ca
            .sign(&csr, &granted, Duration::from_secs(60), Duration::ZERO)
            .unwrap();
        let creds = Credentials {
            chain_pem: issued.chain_pem,
            key_pem: key.serialize_pem(),
        };
        assert_eq!(
            WorkloadIdentity::new(&creds, ca.trust_bundle_pem()).unwrap().id(),
            &granted
        );
        assert!(
            ca.sign(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &granted,
                Duration::from_secs(1),
                Duration::ZERO
            )
            .is_err()
        );
        assert!(
            ca.sign(
                &"x".repeat(MAX_CSR_BYTES + 1),
                &granted,
                Duration::from_secs(1),
                Duration::ZERO
            )
            .is_err()
        );
    }

    #[test]
    fn a_bundle_whose_key_does_not_match_is_refused() {
        let (_, a) = Authority::generate("public").unwrap();
        let (_, b) = Authority::generate("public").unwrap();
        let mixed = Bundle {
            issuer_key: b.issuer_key,
            ..a
        };
        assert!(Authority::from_bundle(&mixed).unwrap_err().contains("not the key"));
    }
}
