//! This sidecar's workload identity for mTLS (`--enable-mtls`): a certificate from the operator (the certificate
//! authority in Kubernetes), renewed before it expires, or one given in Dapr's environment variables
//! (`DAPR_CERT_CHAIN`, `DAPR_CERT_KEY`, `DAPR_TRUST_ANCHORS`, PEM).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::control_plane::identity::{SpiffeId, key_and_csr};
use crate::control_plane::mtls::{Credentials, WorkloadIdentity};
use crate::control_plane::operator_client::OperatorClient;

pub const ENV_CERT_CHAIN: &str = "DAPR_CERT_CHAIN";
pub const ENV_CERT_KEY: &str = "DAPR_CERT_KEY";
pub const ENV_TRUST_ANCHORS: &str = "DAPR_TRUST_ANCHORS";

/// Renew once this share of a certificate's lifetime has passed.
const RENEW_AT: f64 = 0.7;
/// The shortest and longest wait before retrying a failed renewal.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The identity `expected` must have: from the environment when the three variables are set, else from the
/// operator (then renewed in the background until `shutdown`).
pub async fn obtain(
    expected: &SpiffeId,
    operator: Option<&OperatorClient>,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<WorkloadIdentity>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let (Some(chain_pem), Some(key_pem), Some(anchors)) =
        (env(ENV_CERT_CHAIN), env(ENV_CERT_KEY), env(ENV_TRUST_ANCHORS))
    {
        let identity = WorkloadIdentity::new(&Credentials { chain_pem, key_pem }, &anchors)
            .map_err(|e| anyhow::anyhow!("{ENV_CERT_CHAIN}/{ENV_CERT_KEY}/{ENV_TRUST_ANCHORS}: {e}"))?;
        check_identity(identity.id(), expected)?;
        return Ok(identity);
    }
    let Some(operator) = operator else {
        anyhow::bail!(
            "--enable-mtls needs a certificate: run in kubernetes mode with the operator (--control-plane-address) \
             as certificate authority, or set {ENV_CERT_CHAIN}, {ENV_CERT_KEY} and {ENV_TRUST_ANCHORS} (PEM)"
        );
    };
    let (identity, lifetime) = request(expected, operator).await?;
    tracing::info!(id = %identity.id(), valid_for = ?lifetime, "workload certificate issued");
    tokio::spawn(renew(
        identity.clone(),
        expected.clone(),
        operator.clone(),
        lifetime,
        shutdown,
    ));
    Ok(identity)
}

/// The app id and namespace are the pod's, decided by the authority; the trust domain is the Configuration's.
fn check_identity(got: &SpiffeId, expected: &SpiffeId) -> anyhow::Result<()> {
    if got.app_id != expected.app_id || got.namespace != expected.namespace {
        anyhow::bail!(
            "the workload certificate is for {got}, but this sidecar runs app {:?} in namespace {:?}",
            expected.app_id,
            expected.namespace
        );
    }
    Ok(())
}

/// Asks the operator to sign a new key, and how long the certificate is valid.
async fn sign(expected: &SpiffeId, operator: &OperatorClient) -> anyhow::Result<(Credentials, String)> {
    let (key, csr) = key_and_csr(expected).map_err(anyhow::Error::msg)?;
    let signed = operator
        .certificate(&csr)
        .await
        .map_err(|e| anyhow::anyhow!("requesting a workload certificate from the operator: {e}"))?;
    let creds = Credentials {
        chain_pem: signed.certificate_chain,
        key_pem: key.serialize_pem(),
    };
    Ok((creds, signed.trust_bundle))
}

fn remaining(identity: &WorkloadIdentity) -> Duration {
    identity
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

async fn request(expected: &SpiffeId, operator: &OperatorClient) -> anyhow::Result<(Arc<WorkloadIdentity>, Duration)> {
    let (creds, bundle) = sign(expected, operator).await?;
    let identity = WorkloadIdentity::new(&creds, &bundle).map_err(anyhow::Error::msg)?;
    check_identity(identity.id(), expected)?;
    let lifetime = remaining(&identity);
    Ok((identity, lifetime))
}

/// Renews the certificate at 70% of its lifetime, retrying failures with backoff while the old one is valid.
async fn renew(
    identity: Arc<WorkloadIdentity>,
    expected: SpiffeId,
    operator: OperatorClient,
    mut lifetime: Duration,
    shutdown: CancellationToken,
) {
    let mut wait = lifetime.mul_f64(RENEW_AT);
    let mut retry = RETRY_MIN;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match rotate(&identity, &expected, &operator).await {
            Ok(next) => {
                lifetime = next;
                wait = lifetime.mul_f64(RENEW_AT);
                retry = RETRY_MIN;
                tracing::info!(id = %identity.id(), valid_for = ?lifetime, "workload certificate renewed");
            }
            Err(e) => {
                let left = remaining(&identity);
                tracing::warn!(error = %e, expires_in = ?left, "renewing the workload certificate failed; retrying");
                wait = retry.min(left / 4).max(Duration::from_millis(200));
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn rotate(
    identity: &WorkloadIdentity,
    expected: &SpiffeId,
    operator: &OperatorClient,
) -> anyhow::Result<Duration> {
    let (creds, _) = sign(expected, operator).await?;
    identity.rotate(&creds).map_err(anyhow::Error::msg)?;
    Ok(remaining(identity))
}
