//! The one error type of the Dapr API: an error code, a message, and the HTTP and gRPC status Dapr gives it.
//! It meets the wire in exactly two places: `IntoResponse` (http/mod.rs) and `From<ApiError> for Status` (grpc/mod.rs).

use tonic::Code;

use crate::components::secretstores::SecretError;
use crate::components::state::StateError;
use crate::echo::{bound, echo};

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    pub grpc: Code,
    /// Dapr's error code, e.g. `ERR_STATE_STORE_NOT_FOUND`.
    pub code: &'static str,
    pub message: String,
    /// `google.rpc.ErrorInfo` reason sent as error details (gRPC status details, HTTP `details`), as Dapr does
    /// for its structured errors; SDKs read it as the error code.
    pub reason: Option<&'static str>,
    /// More structured details some of Dapr's errors carry.
    pub extras: Option<Box<ErrorExtras>>,
}

/// `google.rpc` details beyond ErrorInfo: who asked, which resource, which field was bad.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorExtras {
    /// `appID` in the ErrorInfo metadata (HTTP only, as Dapr does).
    pub app_id: Option<String>,
    /// ResourceInfo: (resource type, resource name), e.g. ("state", "statestore").
    pub resource: Option<(&'static str, String)>,
    /// BadRequest field violation: (field, description).
    pub bad_field: Option<(String, String)>,
    /// More ErrorInfo metadata (gRPC), e.g. the `http.code` of an authentication failure.
    pub info: Vec<(String, String)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

/// The longest message an error carries (HTTP body, gRPC `grpc-message`), whatever a store put in it.
pub const MESSAGE_LIMIT: usize = 4096;

impl ApiError {
    /// An error; a message longer than [`MESSAGE_LIMIT`] is cut (each piece of user input in it is already
    /// bounded by [`echo`], this bounds what a store's own error text adds).
    pub fn new(status: u16, grpc: Code, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            grpc,
            code,
            message: bound(message.into(), MESSAGE_LIMIT),
            reason: None,
            extras: None,
        }
    }

    fn extras_mut(&mut self) -> &mut ErrorExtras {
        self.extras.get_or_insert_with(Default::default)
    }

    /// Names the app the error happened in (ErrorInfo metadata `appID` on HTTP).
    pub fn for_app(mut self, app_id: &str) -> Self {
        self.extras_mut().app_id = Some(app_id.to_owned());
        self
    }

    /// Names the resource the error is about (ResourceInfo).
    pub fn on_resource(mut self, kind: &'static str, name: &str) -> Self {
        self.extras_mut().resource = Some((kind, echo(name).into()));
        self
    }

    /// Adds the ErrorInfo reason Dapr attaches to this error.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    // Authentication (gRPC; the HTTP API answers a plain-text 401).
    /// Dapr's answer to a missing or wrong `dapr-api-token` on the gRPC API.
    pub fn unauthenticated(detail: &str) -> Self {
        let mut e =
            Self::new(401, Code::Unauthenticated, "ERR_UNAUTHENTICATED", "Unauthorized").with_reason("Unauthorized");
        e.extras_mut().info = vec![
            ("http.code".to_owned(), "401".to_owned()),
            ("http.error_message".to_owned(), detail.to_owned()),
        ];
        e
    }

    /// A bug in tandem: a request whose handling panicked (the panic is logged).
    pub fn internal_bug() -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_INTERNAL",
            "tandem hit a bug while serving this request (it is in the sidecar's log); other requests are unaffected",
        )
    }

    // Generic.
    pub fn malformed_request(detail: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_MALFORMED_REQUEST",
            format!("failed deserializing HTTP body: {}", echo(&detail.to_string())),
        )
    }
    pub fn bad_request(detail: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_BAD_REQUEST",
            format!("invalid request: {}", echo(&detail.to_string())),
        )
    }
    pub fn body_read(detail: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_BODY_READ",
            format!("failed to read request body: {}", echo(&detail.to_string())),
        )
    }
    /// Dapr answers unmatched routes from its service-invocation fallback.
    pub fn no_app_id() -> Self {
        Self::new(
            404,
            Code::NotFound,
            "ERR_DIRECT_INVOKE",
            "failed getting app id either from the URL path or the header dapr-app-id",
        )
    }
    pub fn unimplemented(what: &str) -> Self {
        Self::new(
            501,
            Code::Unimplemented,
            "ERR_API_UNIMPLEMENTED",
            format!("{what} is not implemented by tandem yet"),
        )
    }

    // Service invocation.
    pub fn direct_invoke(id: &str, err: &str) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_DIRECT_INVOKE",
            format!("failed to invoke, id: {}, err: {err}", echo(id)),
        )
    }
    /// A gRPC call on the sidecar's port that names no app to proxy it to.
    pub fn proxy_no_app_id() -> Self {
        Self::new(
            404,
            Code::Unknown,
            "ERR_DIRECT_INVOKE",
            "failed to proxy request: required metadata dapr-callee-app-id or dapr-app-id not found",
        )
    }
    pub fn invoke_no_method() -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_DIRECT_INVOKE",
            "method name is missing: call /v1.0/invoke/<app-id>/method/<method>",
        )
    }
    pub fn permission_denied(id: &str, detail: &str) -> Self {
        Self::new(
            403,
            Code::PermissionDenied,
            "ERR_DIRECT_INVOKE",
            format!(
                "failed to invoke, id: {}, err: rpc error: code = PermissionDenied desc = {detail}",
                echo(id)
            ),
        )
    }

    // Health.
    pub fn not_ready(why: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_HEALTH_NOT_READY",
            format!("dapr is not ready: {why}"),
        )
    }
    pub fn outbound_not_ready() -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_OUTBOUND_HEALTH_NOT_READY",
            "dapr outbound is not ready",
        )
    }
    pub fn app_id_mismatch() -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_HEALTH_APPID_NOT_MATCH",
            "dapr app-id does not match",
        )
    }

    // State.
    pub fn state_stores_not_configured(name: &str) -> Self {
        Self::new(
            500,
            Code::FailedPrecondition,
            "ERR_STATE_STORE_NOT_CONFIGURED",
            format!("state store {} is not configured", echo(name)),
        )
        .with_reason("DAPR_STATE_NOT_CONFIGURED")
    }
    pub fn state_store_not_found(name: &str) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_STATE_STORE_NOT_FOUND",
            format!("state store {} is not found", echo(name)),
        )
        .with_reason("DAPR_STATE_NOT_FOUND")
    }
    pub fn illegal_key(key: &str) -> Self {
        let message = format!("input key/keyPrefix '{}' can't contain '||'", echo(key));
        let mut e = Self::new(400, Code::InvalidArgument, "ERR_MALFORMED_REQUEST", message.clone())
            .with_reason("DAPR_STATE_ILLEGAL_KEY");
        e.extras_mut().bad_field = Some((echo(key).into(), message));
        e
    }
    pub fn state_get(key: &str, store: &str, e: &StateError) -> Self {
        Self::from_state(
            e,
            "ERR_STATE_GET",
            format!("fail to get {} from state store {}: {e}", echo(key), echo(store)),
        )
    }
    pub fn state_save(store: &str, e: &StateError) -> Self {
        Self::from_state(
            e,
            "ERR_STATE_SAVE",
            format!("failed saving state in state store {}: {e}", echo(store)),
        )
    }
    pub fn state_delete(key: &str, e: &StateError) -> Self {
        Self::from_state(
            e,
            "ERR_STATE_DELETE",
            format!("failed deleting state with key {}: {e}", echo(key)),
        )
    }
    pub fn state_bulk_delete(store: &str, e: &StateError) -> Self {
        Self::from_state(
            e,
            "ERR_STATE_BULK_DELETE",
            format!("failed deleting state in state store {}: {e}", echo(store)),
        )
    }
    pub fn state_bulk_get(e: &StateError) -> Self {
        Self::new(500, Code::Internal, "ERR_STATE_BULK_GET", e.to_string()).with_reason("ERR_STATE_BULK_GET")
    }
    pub fn empty_key_http() -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_MALFORMED_REQUEST",
            "\"key\" is a required field",
        )
    }
    pub fn empty_key_grpc() -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_STATE_SAVE",
            "state key cannot be empty",
        )
        .with_reason("ERR_STATE_SAVE")
    }
    /// Dapr reports every failed transaction, etag conflicts included, as a 500.
    pub fn state_transaction(e: &StateError) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_STATE_TRANSACTION",
            format!("error while executing state transaction: {e}"),
        )
        .with_reason("ERR_STATE_TRANSACTION")
    }
    pub fn state_query(store: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_STATE_QUERY",
            format!("state store {} query failed: {e}", echo(store)),
        )
        .with_reason("DAPR_STATE_QUERY_FAILED")
    }
    pub fn unsupported_operation(op: &str) -> Self {
        Self::new(
            400,
            Code::Unimplemented,
            "ERR_NOT_SUPPORTED_STATE_OPERATION",
            format!("operation type {} not supported", echo(op)),
        )
    }
    pub fn transactions_not_supported(store: &str) -> Self {
        Self::new(
            500,
            Code::Unimplemented,
            "ERR_STATE_STORE_NOT_SUPPORTED",
            format!("state store {} doesn't support transactions", echo(store)),
        )
        .with_reason("DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED")
    }
    pub fn query_not_supported() -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_STATE_STORE_NOT_SUPPORTED",
            "state store does not support querying",
        )
        .with_reason("DAPR_STATE_QUERYING_NOT_SUPPORTED")
    }

    /// Etag failures keep their own status (409 / 400) whatever the operation.
    fn from_state(e: &StateError, code: &'static str, message: String) -> Self {
        match e {
            StateError::EtagMismatch(_) => Self::new(409, Code::Aborted, code, message),
            StateError::EtagInvalid(_) => Self::new(400, Code::InvalidArgument, code, message),
            _ => Self::new(500, Code::Internal, code, message),
        }
        .with_reason(code)
    }

    // Cryptography.
    pub fn crypto_providers_not_configured() -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED",
            "crypto providers not configured",
        )
    }
    pub fn crypto_provider_not_found(name: &str) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_CRYPTO_PROVIDER_NOT_FOUND",
            format!("crypto provider {} not found", echo(name)),
        )
    }
    /// A key that could not be retrieved (`SubtleGetKeyAlpha1`).
    pub fn crypto_key(name: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_CRYPTO_KEY",
            format!("failed to retrieve key {}: {e}", echo(name)),
        )
    }
    pub fn crypto_operation(e: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_CRYPTO",
            format!("failed to perform operation: {e}"),
        )
    }

    // Secrets.
    pub fn secret_stores_not_configured() -> Self {
        Self::new(
            500,
            Code::FailedPrecondition,
            "ERR_SECRET_STORES_NOT_CONFIGURED",
            "secret store is not configured",
        )
    }
    pub fn secret_store_not_found(name: &str) -> Self {
        Self::new(
            401,
            Code::InvalidArgument,
            "ERR_SECRET_STORE_NOT_FOUND",
            format!("failed finding secret store with key {}", echo(name)),
        )
    }
    pub fn secret_denied(key: &str, store: &str) -> Self {
        Self::new(
            403,
            Code::PermissionDenied,
            "ERR_PERMISSION_DENIED",
            format!("access denied by policy to get {:?} from {:?}", echo(key), echo(store)),
        )
    }
    pub fn secret_get(key: &str, store: &str, e: &SecretError) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_SECRET_GET",
            format!(
                "failed getting secret with key {} from secret store {}: {e}",
                echo(key),
                echo(store)
            ),
        )
    }
    pub fn bulk_secret_get(store: &str, e: &SecretError) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_SECRET_GET",
            format!("failed getting secrets from secret store {}: {e}", echo(store)),
        )
    }

    // Pub/sub.
    // Bindings.
    /// Every failure of an output binding invocation, as Dapr answers them all (not found, no operation, an
    /// unsupported operation, the binding's own error): 500, gRPC Internal.
    pub fn invoke_output_binding(name: &str, detail: &str) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_INVOKE_OUTPUT_BINDING",
            format!("error invoking output binding {}: {detail}", echo(name)),
        )
        .with_reason("ERR_INVOKE_OUTPUT_BINDING")
    }

    // Conversation.
    pub fn conversation_not_found(name: &str) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_CONVERSATION_NOT_FOUND",
            format!("failed finding conversation component {}", echo(name)),
        )
    }
    pub fn conversation_missing_inputs(name: &str) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_CONVERSATION_MISSING_INPUTS",
            format!(
                "failed conversing with component {}: missing inputs in request",
                echo(name)
            ),
        )
    }
    pub fn conversation_invalid_params(name: &str, detail: &str) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_CONVERSATION_INVALID_PARMS",
            format!(
                "failed conversing with component {}: invalid params: {detail}",
                echo(name)
            ),
        )
    }
    /// The component failed (the LLM server's error, a timeout, ...): 500, gRPC Internal.
    pub fn conversation_invoke(name: &str, detail: &str) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_CONVERSATION_INVOKE",
            format!("failed conversing with component {}: {detail}", echo(name)),
        )
    }

    pub fn pubsub_name_empty() -> Self {
        Self::new(404, Code::InvalidArgument, "ERR_PUBSUB_EMPTY", "pubsub name is empty")
            .with_reason("DAPR_PUBSUB_NAME_EMPTY")
    }
    pub fn pubsub_not_found(name: &str) -> Self {
        Self::new(
            404,
            Code::InvalidArgument,
            "ERR_PUBSUB_NOT_FOUND",
            format!("pubsub {} is not found", echo(name)),
        )
        .with_reason("DAPR_PUBSUB_NOT_FOUND")
    }
    pub fn topic_empty(name: &str) -> Self {
        Self::new(
            404,
            Code::InvalidArgument,
            "ERR_TOPIC_NAME_EMPTY",
            format!("topic is empty in pubsub {}", echo(name)),
        )
        .with_reason("DAPR_PUBSUB_TOPIC_NAME_EMPTY")
        .on_resource("pubsub", name)
    }
    pub fn pubsub_forbidden(name: &str, topic: &str, app_id: &str) -> Self {
        Self::new(
            403,
            Code::PermissionDenied,
            "ERR_PUBSUB_FORBIDDEN",
            format!("topic {} is not allowed for app id {}", echo(topic), echo(app_id)),
        )
        .with_reason("DAPR_PUBSUB_FORBIDDEN")
        .on_resource("pubsub", name)
    }
    pub fn pubsub_publish(name: &str, topic: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            format!(
                "error when publishing to topic {} in pubsub {}: {e}",
                echo(topic),
                echo(name)
            ),
        )
        .with_reason("DAPR_PUBSUB_PUBLISH_MESSAGE")
        .on_resource("pubsub", name)
    }
    pub fn pubsub_metadata(name: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_PUBSUB_REQUEST_METADATA",
            format!("failed deserializing metadata. Error: {e}"),
        )
        .with_reason("DAPR_PUBSUB_METADATA_DESERIALIZATION")
        .on_resource("pubsub", name)
    }
    /// Dapr answers 500 here; the cause is always the request (data that claims to be a CloudEvent and is not
    /// a JSON object), so tandem answers 400.
    pub fn pubsub_cloudevent(name: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
            format!("cannot create cloudevent: {e}"),
        )
        .with_reason("DAPR_PUBSUB_CLOUD_EVENT_CREATION")
        .on_resource("pubsub", name)
    }
    pub fn pubsub_unmarshal_events(name: &str, topic: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_PUBSUB_EVENTS_SER",
            format!(
                "error when unmarshaling the request for topic {} pubsub {}: {e}",
                echo(topic),
                echo(name)
            ),
        )
        .with_reason("DAPR_PUBSUB_UNMARSHAL_EVENTS")
        .on_resource("pubsub", name)
    }
    pub fn pubsub_marshal_events(name: &str, topic: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_PUBSUB_EVENTS_SER",
            format!(
                "error marshaling events to bytes for topic {} pubsub {}. error: {e}",
                echo(topic),
                echo(name)
            ),
        )
        .with_reason("DAPR_PUBSUB_MARSHAL_EVENTS")
        .on_resource("pubsub", name)
    }

    // Distributed lock (`[D] pkg/messages/predefined.go`).
    pub fn lock_stores_not_configured() -> Self {
        Self::new(
            500,
            Code::FailedPrecondition,
            "ERR_LOCK_STORE_NOT_CONFIGURED",
            "lock store is not configured",
        )
    }
    pub fn lock_store_not_found(store: &str) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_LOCK_STORE_NOT_FOUND",
            format!("lock store {} not found", echo(store)),
        )
    }
    /// A required field of a lock request is empty or not positive (`ResourceId`, `LockOwner`, `ExpiryInSeconds`).
    pub fn lock_field(store: &str, problem: &str) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_MALFORMED_REQUEST",
            format!("{problem} in lock store {}", echo(store)),
        )
    }
    /// The store failed to take the lock.
    pub fn try_lock(detail: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_TRY_LOCK",
            format!("failed to try acquiring lock: {detail}"),
        )
    }
    /// The store failed to release the lock.
    pub fn unlock(detail: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_UNLOCK",
            format!("failed to release lock: {detail}"),
        )
    }
    /// A resource id holding the key separator `||`: Dapr's code and message for the operation, but 400 and
    /// InvalidArgument (Dapr answers 500, though the request is at fault).
    pub fn illegal_lock_key(self) -> Self {
        ApiError {
            status: 400,
            grpc: Code::InvalidArgument,
            ..self
        }
    }

    // Metadata.
    pub fn metadata_set(e: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_METADATA_SET",
            format!("failed setting metadata: {}", echo(&e.to_string())),
        )
    }

    // Configuration. HTTP errors carry no details, as Dapr's; the gRPC adapter adds the ErrorInfo reason
    // (`ApiError::with_own_reason`) that Dapr's gRPC API sends.
    pub fn configuration_stores_not_configured() -> Self {
        Self::new(
            500,
            Code::FailedPrecondition,
            "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
            "configuration stores not configured",
        )
    }
    pub fn configuration_store_not_found(name: &str) -> Self {
        Self::new(
            400,
            Code::InvalidArgument,
            "ERR_CONFIGURATION_STORE_NOT_FOUND",
            format!("configuration store {} not found", echo(name)),
        )
    }
    /// `keys` as Go prints a `[]string` (`[a b]`), as Dapr's configuration errors name them.
    fn go_keys(keys: &[String]) -> String {
        let keys: Vec<String> = keys.iter().take(32).map(|k| echo(k).to_string()).collect();
        format!("[{}]", keys.join(" "))
    }
    pub fn configuration_get(keys: &[String], store: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_CONFIGURATION_GET",
            format!(
                "failed to get {} from Configuration store {}: {e}",
                Self::go_keys(keys),
                echo(store)
            ),
        )
    }
    pub fn configuration_subscribe(keys: &[String], store: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::InvalidArgument,
            "ERR_CONFIGURATION_SUBSCRIBE",
            format!(
                "failed to subscribe {} from Configuration store {}: {e}",
                Self::go_keys(keys),
                echo(store)
            ),
        )
    }
    pub fn configuration_unsubscribe(id: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_CONFIGURATION_UNSUBSCRIBE",
            format!("failed to unsubscribe to configuration request {}: {e}", echo(id)),
        )
    }
    /// A subscription that must deliver to the app, without an app.
    pub fn app_channel_nil(what: &str) -> Self {
        Self::new(
            500,
            Code::Internal,
            "ERR_APP_CHANNEL_NIL",
            format!("app channel is not initialized. {what}"),
        )
    }
    /// The error with its own code as ErrorInfo reason (what Dapr's `apierrors.Basic` sends on gRPC).
    pub fn with_own_reason(self) -> Self {
        let code = self.code;
        self.with_reason(code)
    }
}
