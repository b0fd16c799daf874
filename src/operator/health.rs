//! The operator's health port: `/healthz` (process up), `/readyz` (informer caches synced), `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

/// Reconcile and Service metrics; the Service counters keep Dapr's names (`dapr_operator_service_*_total`).
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    services_applied: IntCounterVec,
    services_deleted: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let reconciles = counter(
            "tandem_operator_reconcile_total",
            "Reconciliations run, by controller.",
            &["controller"],
        );
        let failures = counter(
            "tandem_operator_reconcile_errors_total",
            "Reconciliations that failed, by controller.",
            &["controller"],
        );
        let services_applied = counter(
            "dapr_operator_service_updated_total",
            "The total number of dapr services created or updated.",
            &["app_id"],
        );
        let services_deleted = counter(
            "dapr_operator_service_deleted_total",
            "The total number of dapr services deleted.",
            &["app_id"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tandem_operator_reconcile_duration_seconds",
                "Time a reconciliation took, by controller.",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["controller"],
        )
        .expect("valid metric");
        registry.register(Box::new(duration.clone())).expect("unique metric");
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            services_applied,
            services_deleted,
        }
    }

    pub fn reconciled(&self, controller: &str, elapsed: Duration, ok: bool) {
        self.reconciles.with_label_values(&[controller]).inc();
        if !ok {
            self.failures.with_label_values(&[controller]).inc();
        }
        self.duration
            .with_label_values(&[controller])
            .observe(elapsed.as_secs_f64());
    }

    pub fn service_applied(&self, app_id: &str) {
        self.services_applied.with_label_values(&[app_id]).inc();
    }

    pub fn service_deleted(&self, app_id: &str) {
        self.services_deleted.with_label_values(&[app_id]).inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = vec![];
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Named readiness flags: the process is ready when every registered flag is set.
#[derive(Clone, Default)]
pub struct Readiness {
    flags: Arc<Mutex<Vec<(String, ReadyFlag)>>>,
}

impl Readiness {
    /// A new flag, initially not ready.
    pub fn register(&self, name: impl Into<String>) -> ReadyFlag {
        let flag = ReadyFlag(Arc::new(AtomicBool::new(false)));
        self.flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.into(), flag.clone()));
        flag
    }

    /// The names of the flags not yet set.
    pub fn pending(&self) -> Vec<String> {
        let flags = self.flags.lock().unwrap_or_else(|p| p.into_inner());
        flags
            .iter()
            .filter(|(_, f)| !f.is_set())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// One readiness flag.
#[derive(Clone)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct HealthState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

pub fn router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HealthState { metrics, readiness })
}

async fn readyz(State(st): State<HealthState>) -> impl IntoResponse {
    let pending = st.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ok".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for informer caches to sync: {}", pending.join(", ")),
        )
    }
}

async fn metrics_text(State(st): State<HealthState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let res = app
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_waits_for_every_cache_and_metrics_count_reconciles() {
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::default();
        let components = readiness.register("Component");
        let app = router(metrics.clone(), readiness.clone());
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("Component"), "{body}");
        components.set(true);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);

        metrics.reconciled("deployment", Duration::from_millis(3), true);
        metrics.reconciled("deployment", Duration::from_millis(3), false);
        metrics.service_deleted("app");
        let (_, text) = get(&app, "/metrics").await;
        assert!(
            text.contains(r#"tandem_operator_reconcile_total{controller="deployment"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tandem_operator_reconcile_errors_total{controller="deployment"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("tandem_operator_reconcile_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(r#"dapr_operator_service_deleted_total{app_id="app"} 1"#),
            "{text}"
        );
    }
}
