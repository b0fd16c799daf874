//! Who is calling: the bearer token (a projected ServiceAccount token, audience `tandem-api`) is verified with a
//! TokenReview; the namespace comes from the authenticated `system:serviceaccount:<ns>:<sa>` user and, when the
//! app id from the pod the token is bound to (its `dapr.io/app-id` annotation, else its name, as Dapr's Sentry
//! decides). A token bound to no pod names no app and may ask for none.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use super::ApiError;
use crate::operator::workload::ANNOTATION_APP_ID;

/// The pod annotation naming the app's Configuration.
const ANNOTATION_CONFIG: &str = "dapr.io/config";

/// The TokenReview `extra` key naming the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const SA_PREFIX: &str = "system:serviceaccount:";
/// Successful reviews are reused for this long.
pub const REVIEW_TTL: Duration = Duration::from_secs(60);
const MAX_CACHED: usize = 10_000;

/// An authenticated sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to, if any.
    pub pod: Option<String>,
    /// That pod's app id: the only app id the caller may ask for.
    pub app_id: Option<String>,
    /// That pod's `dapr.io/config`: the Configuration naming its trust domain.
    pub config: Option<String>,
}

impl Caller {
    /// Refuses a request for another namespace, or for an app id other than the caller pod's.
    pub fn authorize(&self, app_id: Option<&str>, namespace: Option<&str>) -> Result<(), ApiError> {
        if let Some(ns) = namespace.filter(|ns| !ns.is_empty() && *ns != self.namespace) {
            return Err(ApiError::forbidden(format!(
                "the caller's token is for namespace {:?} but namespace {ns:?} was requested",
                self.namespace
            )));
        }
        if let Some(asked) = app_id {
            let own = self.own_app_id()?;
            if asked != own {
                return Err(ApiError::forbidden(format!(
                    "pod {}/{} runs app {own:?} and may not read the resources of app {asked:?}",
                    self.namespace,
                    self.pod.as_deref().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// The app id of the pod the token is bound to; a token bound to no pod proves no app id.
    pub fn own_app_id(&self) -> Result<&str, ApiError> {
        self.app_id.as_deref().ok_or_else(|| {
            ApiError::forbidden(format!(
                "the token of ServiceAccount {}/{} is not bound to a pod, so it proves no app id; present the \
                 projected token the kubelet mounts in the pod",
                self.namespace, self.service_account
            ))
        })
    }
}

/// Verifies tokens with the API server, caching successful reviews briefly.
pub struct Authenticator {
    client: Client,
    audience: String,
    ttl: Duration,
    reviewed: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl Authenticator {
    pub fn new(client: Client, audience: &str) -> Self {
        Authenticator {
            client,
            audience: audience.into(),
            ttl: REVIEW_TTL,
            reviewed: Mutex::default(),
        }
    }

    /// The caller behind the request's `Authorization: Bearer` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated(format!(
                    "missing 'Authorization: Bearer <token>' header; send a projected ServiceAccount token with \
                     audience {:?}",
                    self.audience
                ))
            })?;
        if let Some((caller, at)) = self.reviewed.lock().unwrap_or_else(|p| p.into_inner()).get(token)
            && at.elapsed() < self.ttl
        {
            return Ok(caller.clone());
        }
        let caller = self.review(token).await?;
        let mut reviewed = self.reviewed.lock().unwrap_or_else(|p| p.into_inner());
        if reviewed.len() >= MAX_CACHED {
            reviewed.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if reviewed.len() >= MAX_CACHED {
                reviewed.clear();
            }
        }
        reviewed.insert(token.to_owned(), (caller.clone(), Instant::now()));
        Ok(caller)
    }

    async fn review(&self, token: &str) -> Result<Caller, ApiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ApiError::internal(format!("cannot verify the token: TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ApiError::unauthenticated(format!(
                "the token was rejected: {}",
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| format!("not valid for audience {:?}", self.audience))
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, service_account) = username
            .strip_prefix(SA_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated(format!(
                    "user {username:?} is not a ServiceAccount; sidecars must present their pod's ServiceAccount token"
                ))
            })?;
        let pod = user
            .extra
            .unwrap_or_default()
            .remove(POD_NAME_EXTRA)
            .and_then(|v| v.into_iter().next());
        let (app_id, config) = match &pod {
            None => (None, None),
            Some(name) => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
                let pod = pods.get_opt(name).await.map_err(|e| {
                    ApiError::internal(format!("cannot read pod {namespace}/{name} of the caller: {e}"))
                })?;
                let pod = pod.ok_or_else(|| {
                    ApiError::unauthenticated(format!("the token's pod {namespace}/{name} no longer exists"))
                })?;
                let annotation = |key: &str| {
                    pod.annotations()
                        .get(key)
                        .map(|v| v.trim().to_owned())
                        .filter(|v| !v.is_empty())
                };
                let app_id = annotation(ANNOTATION_APP_ID).unwrap_or_else(|| name.clone());
                (Some(app_id), annotation(ANNOTATION_CONFIG))
            }
        };
        Ok(Caller {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod,
            app_id,
            config,
        })
    }
}
