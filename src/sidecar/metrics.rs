//! Prometheus metrics under Dapr's names (`dapr_http_server_*`, `dapr_grpc_io_server_*`), so existing dashboards work.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::Method;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

/// Dapr's latency buckets, in milliseconds.
const LATENCY_MS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0, 40.0, 50.0, 65.0, 80.0, 100.0, 130.0, 160.0,
    200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

pub struct Metrics {
    app_id: String,
    registry: Registry,
    http_count: IntCounterVec,
    http_latency: HistogramVec,
    grpc_completed: IntCounterVec,
    grpc_latency: HistogramVec,
    namespace: String,
    pubsub_ingress: IntCounterVec,
    pubsub_ingress_latency: HistogramVec,
    pubsub_egress: IntCounterVec,
    pubsub_egress_latency: HistogramVec,
    input_binding: IntCounterVec,
    input_binding_latency: HistogramVec,
    output_binding: IntCounterVec,
    output_binding_latency: HistogramVec,
    conversation: IntCounterVec,
    conversation_latency: HistogramVec,
    /// Topics seen as labels so far: at most [`MAX_TOPIC_LABELS`], later ones are labelled `_other`.
    topics: Mutex<HashSet<String>>,
}

/// Distinct topic label values the pub/sub metrics keep (topic names come from callers).
pub const MAX_TOPIC_LABELS: usize = 256;

impl Metrics {
    pub fn new(app_id: &str) -> Self {
        let registry = Registry::new();
        let http_labels = &["app_id", "method", "path", "status"];
        let grpc_labels = &["app_id", "grpc_server_method", "grpc_server_status"];
        let http_count = IntCounterVec::new(
            Opts::new(
                "dapr_http_server_request_count",
                "Number of HTTP requests started in server.",
            ),
            http_labels,
        )
        .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new("dapr_http_server_latency", "HTTP request end-to-end latency in server.")
                .buckets(LATENCY_MS.to_vec()),
            http_labels,
        )
        .expect("valid metric");
        let grpc_completed = IntCounterVec::new(
            Opts::new(
                "dapr_grpc_io_server_completed_rpcs",
                "Count of RPCs by method and status.",
            ),
            grpc_labels,
        )
        .expect("valid metric");
        let grpc_latency = HistogramVec::new(
            HistogramOpts::new(
                "dapr_grpc_io_server_server_latency",
                "Distribution of server latency in milliseconds.",
            )
            .buckets(LATENCY_MS.to_vec()),
            grpc_labels,
        )
        .expect("valid metric");
        let ingress_labels = &["app_id", "component", "namespace", "process_status", "topic", "status"];
        let egress_labels = &["app_id", "component", "namespace", "success", "topic"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_MS.to_vec()), labels)
                .expect("valid metric")
        };
        let pubsub_ingress = counter(
            "dapr_component_pubsub_ingress_count",
            "The number of incoming messages arriving from the pub/sub component.",
            ingress_labels,
        );
        let pubsub_ingress_latency = histogram(
            "dapr_component_pubsub_ingress_latencies",
            "The consuming app event processing latency.",
            ingress_labels,
        );
        let pubsub_egress = counter(
            "dapr_component_pubsub_egress_count",
            "The number of outgoing messages published to the pub/sub component.",
            egress_labels,
        );
        let pubsub_egress_latency = histogram(
            "dapr_component_pubsub_egress_latencies",
            "The latency of the response from the pub/sub component.",
            egress_labels,
        );
        let input_labels = &["app_id", "component", "namespace", "success"];
        let output_labels = &["app_id", "component", "namespace", "operation", "success"];
        let input_binding = counter(
            "dapr_component_input_binding_count",
            "The number of incoming events arriving from the input binding component.",
            input_labels,
        );
        let input_binding_latency = histogram(
            "dapr_component_input_binding_latencies",
            "The triggered app event processing latency.",
            input_labels,
        );
        let output_binding = counter(
            "dapr_component_output_binding_count",
            "The number of operations invoked on the output binding component.",
            output_labels,
        );
        let output_binding_latency = histogram(
            "dapr_component_output_binding_latencies",
            "The latency of the response from the output binding component.",
            output_labels,
        );
        let conversation = counter(
            "dapr_component_conversation_count",
            "The number of operations performed on the conversation component.",
            input_labels,
        );
        let conversation_latency = histogram(
            "dapr_component_conversation_latencies",
            "The latency of the response from the conversation component.",
            input_labels,
        );
        for c in [
            &http_count,
            &grpc_completed,
            &pubsub_ingress,
            &pubsub_egress,
            &input_binding,
            &output_binding,
            &conversation,
        ] {
            registry.register(Box::new(c.clone())).expect("unique metric");
        }
        for h in [
            &http_latency,
            &grpc_latency,
            &pubsub_ingress_latency,
            &pubsub_egress_latency,
            &input_binding_latency,
            &output_binding_latency,
            &conversation_latency,
        ] {
            registry.register(Box::new(h.clone())).expect("unique metric");
        }
        Metrics {
            app_id: app_id.into(),
            registry,
            http_count,
            http_latency,
            grpc_completed,
            grpc_latency,
            namespace: String::new(),
            pubsub_ingress,
            pubsub_ingress_latency,
            pubsub_egress,
            pubsub_egress_latency,
            input_binding,
            input_binding_latency,
            output_binding,
            output_binding_latency,
            conversation,
            conversation_latency,
            topics: Mutex::default(),
        }
    }

    /// The same metrics, labelled with `namespace`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// The label for `topic`: itself while fewer than [`MAX_TOPIC_LABELS`] topics were seen, else `_other`.
    fn topic_label(&self, topic: &str) -> String {
        let mut seen = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(topic) {
            return topic.to_owned();
        }
        if seen.len() < MAX_TOPIC_LABELS && topic.len() <= 256 {
            seen.insert(topic.to_owned());
            return topic.to_owned();
        }
        "_other".to_owned()
    }

    /// A message published to a component (Dapr's `pubsub_egress`).
    pub fn pubsub_egress(&self, component: &str, topic: &str, success: bool, elapsed: Duration) {
        let topic = self.topic_label(topic);
        let success = if success { "true" } else { "false" };
        let labels = [
            self.app_id.as_str(),
            component,
            self.namespace.as_str(),
            success,
            topic.as_str(),
        ];
        self.pubsub_egress.with_label_values(&labels).inc();
        self.pubsub_egress_latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64() * 1e3);
    }

    /// A message delivered to the app and how it ended (`success`, `retry`, `drop`) (Dapr's `pubsub_ingress`).
    pub fn pubsub_ingress(&self, component: &str, topic: &str, process_status: &str, elapsed: Duration) {
        let topic = self.topic_label(topic);
        let status = if process_status == "success" { "success" } else { "" };
        let labels = [
            self.app_id.as_str(),
            component,
            self.namespace.as_str(),
            process_status,
            topic.as_str(),
            status,
        ];
        self.pubsub_ingress.with_label_values(&labels).inc();
        self.pubsub_ingress_latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64() * 1e3);
    }

    /// An event an input binding delivered to the app (Dapr's `input_binding`).
    pub fn input_binding(&self, component: &str, success: bool, elapsed: Duration) {
        let labels = [
            self.app_id.as_str(),
            component,
            self.namespace.as_str(),
            if success { "true" } else { "false" },
        ];
        self.input_binding.with_label_values(&labels).inc();
        self.input_binding_latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64() * 1e3);
    }

    /// An operation invoked on an output binding (Dapr's `output_binding`). `component` and `operation` must
    /// come from a fixed set (a loaded component, one of its operations), never straight from a caller.
    pub fn output_binding(&self, component: &str, operation: &str, success: bool, elapsed: Duration) {
        let labels = [
            self.app_id.as_str(),
            component,
            self.namespace.as_str(),
            operation,
            if success { "true" } else { "false" },
        ];
        self.output_binding.with_label_values(&labels).inc();
        self.output_binding_latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64() * 1e3);
    }

    /// One call of a conversation component (Dapr's `conversation`); `component` is a loaded component's name.
    pub fn conversation(&self, component: &str, success: bool, elapsed: Duration) {
        let labels = [
            self.app_id.as_str(),
            component,
            self.namespace.as_str(),
            if success { "true" } else { "false" },
        ];
        self.conversation.with_label_values(&labels).inc();
        self.conversation_latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64() * 1e3);
    }

    /// Records one HTTP API call. `route` is the route template that served it (`/v1.0/state/{store}/{key}`),
    /// or `""` for requests no route matched and for unauthenticated ones, so the labels come from a fixed set
    /// whatever paths callers send (Dapr's default likewise labels unmatched paths `""`).
    pub fn http_request(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let method = match *method {
            Method::GET
            | Method::PUT
            | Method::POST
            | Method::PATCH
            | Method::DELETE
            | Method::HEAD
            | Method::OPTIONS => method.as_str(),
            _ => "UNKNOWN",
        };
        let status = status.to_string();
        let labels = [self.app_id.as_str(), method, route, &status];
        self.http_count.with_label_values(&labels).inc();
        self.http_latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64() * 1e3);
    }

    pub fn grpc_call(&self, method: &str, status: &str, elapsed: Duration) {
        let labels = [self.app_id.as_str(), method, status];
        self.grpc_completed.with_label_values(&labels).inc();
        self.grpc_latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64() * 1e3);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = vec![];
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec");
        out
    }
}

/// gRPC `Code` as Go's `codes.Code.String()` spells it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dapr_metric_names() {
        let m = Metrics::new("app");
        m.http_request(&Method::GET, "/v1.0/state/{store}/{key}", 204, Duration::from_millis(2));
        m.grpc_call("/dapr.proto.runtime.v1.Dapr/GetState", "OK", Duration::from_millis(1));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                r#"dapr_http_server_request_count{app_id="app",method="GET",path="/v1.0/state/{store}/{key}",status="204"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("dapr_grpc_io_server_completed_rpcs{"), "{text}");
        assert!(text.contains("dapr_http_server_latency_bucket"), "{text}");
    }

    #[test]
    fn pubsub_metrics_bound_their_topic_labels() {
        let m = Metrics::new("app").in_namespace("ns");
        for i in 0..MAX_TOPIC_LABELS + 50 {
            m.pubsub_egress("pubsub", &format!("t{i}"), true, Duration::from_millis(1));
        }
        m.pubsub_ingress("pubsub", "t0", "success", Duration::from_millis(1));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"dapr_component_pubsub_egress_count{app_id="app",component="pubsub",namespace="ns",success="true",topic="_other"} 50"#),
            "{text}"
        );
        assert!(text.contains(r#"dapr_component_pubsub_ingress_count{app_id="app",component="pubsub",namespace="ns",process_status="success",status="success",topic="t0"} 1"#), "{text}");
    }
}
