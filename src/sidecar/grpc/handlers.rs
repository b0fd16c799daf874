//! The gRPC methods tandem implements: decode, call the runtime, encode.

use std::collections::HashMap;
use tracing::instrument;

use dapr::dapr::proto::runtime::v1 as rt;
use tonic::{Request, Response, Status};

use super::DaprApi;
use super::convert;
use crate::echo::echo;
use crate::sidecar::error::ApiError;
use crate::sidecar::state::{DeleteItem, TxOp, bulk_parallelism, item_metadata};

pub use super::crypto::{
    subtle_decrypt_alpha1, subtle_encrypt_alpha1, subtle_get_key_alpha1, subtle_sign_alpha1, subtle_unwrap_key_alpha1,
    subtle_verify_alpha1, subtle_wrap_key_alpha1,
};

pub(super) type Reply<T> = Result<Response<T>, Status>;

pub use super::jobs::{
    delete_job, delete_job_alpha1, delete_jobs_by_prefix, delete_jobs_by_prefix_alpha1, get_job, get_job_alpha1,
    list_jobs, list_jobs_alpha1, schedule_job, schedule_job_alpha1,
};

#[instrument(level = "debug", name = "grpc.get_state", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn get_state(api: &DaprApi, req: Request<rt::GetStateRequest>) -> Reply<rt::GetStateResponse> {
    let r = req.into_inner();
    let item = api.rt.state.get(&r.store_name, &r.key).await?;
    Ok(Response::new(match item {
        None => rt::GetStateResponse::default(),
        Some(item) => rt::GetStateResponse {
            metadata: item_metadata(&item).into_iter().collect(),
            etag: item.etag.unwrap_or_default(),
            data: item.data.to_vec(),
        },
    }))
}

#[instrument(level = "debug", name = "grpc.get_bulk_state", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn get_bulk_state(api: &DaprApi, req: Request<rt::GetBulkStateRequest>) -> Reply<rt::GetBulkStateResponse> {
    let r = req.into_inner();
    if r.keys.is_empty() {
        api.rt.state.store(&r.store_name)?;
        return Ok(Response::new(rt::GetBulkStateResponse::default()));
    }
    let parallelism = bulk_parallelism(i64::from(r.parallelism));
    let items = api.rt.state.bulk_get(&r.store_name, &r.keys, parallelism).await?;
    let items = items
        .into_iter()
        .map(|b| match b.item {
            Some(item) => rt::BulkStateItem {
                key: b.key,
                metadata: item_metadata(&item).into_iter().collect(),
                etag: item.etag.unwrap_or_default(),
                data: item.data.to_vec(),
                error: b.error.unwrap_or_default(),
            },
            None => rt::BulkStateItem {
                key: b.key,
                error: b.error.unwrap_or_default(),
                ..Default::default()
            },
        })
        .collect();
    Ok(Response::new(rt::GetBulkStateResponse { items }))
}

#[instrument(level = "debug", name = "grpc.save_state", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn save_state(api: &DaprApi, req: Request<rt::SaveStateRequest>) -> Reply<()> {
    let r = req.into_inner();
    api.rt.state.store(&r.store_name)?;
    if r.states.is_empty() {
        return Ok(Response::new(()));
    }
    let items = r
        .states
        .into_iter()
        .map(convert::save_item)
        .collect::<Result<Vec<_>, _>>()?;
    api.rt.state.save(&r.store_name, &items).await?;
    Ok(Response::new(()))
}

#[instrument(level = "debug", name = "grpc.delete_state", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn delete_state(api: &DaprApi, req: Request<rt::DeleteStateRequest>) -> Reply<()> {
    let r = req.into_inner();
    let item = DeleteItem {
        concurrency: convert::concurrency(r.options.as_ref()),
        key: r.key,
        etag: r.etag.map(|e| e.value),
        metadata: convert::metadata(r.metadata),
    };
    api.rt.state.delete(&r.store_name, &item).await?;
    Ok(Response::new(()))
}

#[instrument(level = "debug", name = "grpc.delete_bulk_state", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn delete_bulk_state(api: &DaprApi, req: Request<rt::DeleteBulkStateRequest>) -> Reply<()> {
    let r = req.into_inner();
    let items: Vec<_> = r.states.into_iter().map(convert::delete_item).collect();
    api.rt.state.bulk_delete(&r.store_name, &items).await?;
    Ok(Response::new(()))
}

#[instrument(level = "debug", name = "grpc.execute_state_transaction", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn execute_state_transaction(api: &DaprApi, req: Request<rt::ExecuteStateTransactionRequest>) -> Reply<()> {
    let r = req.into_inner();
    api.rt.state.store(&r.store_name)?;
    let mut ops = Vec::with_capacity(r.operations.len());
    for op in r.operations {
        let mut item = op.request.unwrap_or_default();
        for (k, v) in &r.metadata {
            item.metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
        ops.push(match op.operation_type.as_str() {
            "upsert" => TxOp::Upsert(convert::save_item(item)?),
            "delete" => TxOp::Delete(convert::delete_item(item)),
            other => {
                return Err(ApiError::unsupported_operation(other).into());
            }
        });
    }
    api.rt.state.transact(&r.store_name, &ops).await?;
    Ok(Response::new(()))
}

#[instrument(level = "debug", name = "grpc.query_state_alpha1", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn query_state_alpha1(api: &DaprApi, req: Request<rt::QueryStateRequest>) -> Reply<rt::QueryStateResponse> {
    let r = req.into_inner();
    let resp = api.rt.state.query(&r.store_name, r.query.as_bytes()).await?;
    Ok(Response::new(rt::QueryStateResponse {
        results: resp
            .results
            .into_iter()
            .map(|i| rt::QueryStateItem {
                key: i.key,
                data: i.data.to_vec(),
                etag: i.etag.unwrap_or_default(),
                error: String::new(),
            })
            .collect(),
        token: resp.token.unwrap_or_default(),
        metadata: HashMap::new(),
    }))
}

#[instrument(level = "debug", name = "grpc.get_secret", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn get_secret(api: &DaprApi, req: Request<rt::GetSecretRequest>) -> Reply<rt::GetSecretResponse> {
    let r = req.into_inner();
    let secret = api
        .rt
        .secrets
        .get(&r.store_name, &r.key, &convert::metadata(r.metadata))
        .await?;
    Ok(Response::new(rt::GetSecretResponse {
        data: secret.into_iter().collect(),
    }))
}

#[instrument(level = "debug", name = "grpc.get_bulk_secret", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn get_bulk_secret(
    api: &DaprApi,
    req: Request<rt::GetBulkSecretRequest>,
) -> Reply<rt::GetBulkSecretResponse> {
    let r = req.into_inner();
    let all = api
        .rt
        .secrets
        .bulk(&r.store_name, &convert::metadata(r.metadata))
        .await?;
    let data = all
        .into_iter()
        .map(|(name, secret)| {
            (
                name,
                rt::SecretResponse {
                    secrets: secret.into_iter().collect(),
                },
            )
        })
        .collect();
    Ok(Response::new(rt::GetBulkSecretResponse { data }))
}

#[instrument(level = "debug", name = "grpc.get_metadata", skip_all)]
pub async fn get_metadata(api: &DaprApi, _req: Request<rt::GetMetadataRequest>) -> Reply<rt::GetMetadataResponse> {
    Ok(Response::new(convert::metadata_response(api.rt.metadata.snapshot())))
}

#[instrument(level = "debug", name = "grpc.set_metadata", skip_all)]
pub async fn set_metadata(api: &DaprApi, req: Request<rt::SetMetadataRequest>) -> Reply<()> {
    let r = req.into_inner();
    api.rt.metadata.set(&r.key, &r.value).map_err(ApiError::metadata_set)?;
    Ok(Response::new(()))
}

#[instrument(level = "debug", name = "grpc.invoke_service", skip_all, fields(app_id = %echo(&req.get_ref().id)))]
pub async fn invoke_service(
    api: &DaprApi,
    req: Request<rt::InvokeServiceRequest>,
) -> Reply<dapr::dapr::proto::common::v1::InvokeResponse> {
    let r = req.into_inner();
    let message = r
        .message
        .ok_or_else(|| ApiError::bad_request("InvokeServiceRequest.message is required"))?;
    let resp = super::invoke::invoke_service(&api.rt.invoker, &r.id, message, api.max_body).await?;
    Ok(Response::new(resp))
}

#[instrument(level = "debug", name = "grpc.shutdown", skip_all)]
pub async fn shutdown(api: &DaprApi, _req: Request<rt::ShutdownRequest>) -> Reply<()> {
    api.rt.shutdown.cancel();
    Ok(Response::new(()))
}

/// The caller's trace context from gRPC metadata, or a new one.
fn trace_of(md: &tonic::metadata::MetadataMap) -> (String, String) {
    let mut headers = axum::http::HeaderMap::new();
    for k in ["traceparent", "tracestate"] {
        if let Some(v) = md.get(k).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
            headers.insert(k, v);
        }
    }
    crate::sidecar::http::trace_context(&headers)
}

#[instrument(level = "debug", name = "grpc.publish_event", skip_all, fields(pubsub = %echo(&req.get_ref().pubsub_name)))]
pub async fn publish_event(api: &DaprApi, req: Request<rt::PublishEventRequest>) -> Reply<()> {
    let (traceparent, tracestate) = trace_of(req.metadata());
    let r = req.into_inner();
    api.rt
        .pubsub
        .publish(crate::sidecar::pubsub::PublishRequest {
            pubsub: r.pubsub_name,
            topic: r.topic,
            data: r.data.into(),
            content_type: r.data_content_type,
            metadata: convert::metadata(r.metadata),
            traceparent,
            tracestate,
        })
        .await?;
    Ok(Response::new(()))
}

#[instrument(level = "debug", name = "grpc.bulk_publish_event", skip_all, fields(pubsub = %echo(&req.get_ref().pubsub_name)))]
pub async fn bulk_publish_event(api: &DaprApi, req: Request<rt::BulkPublishRequest>) -> Reply<rt::BulkPublishResponse> {
    let (traceparent, _) = trace_of(req.metadata());
    let r = req.into_inner();
    let entries = r
        .entries
        .into_iter()
        .map(|e| crate::sidecar::pubsub::BulkPublishEntry {
            entry_id: e.entry_id,
            event: e.event.into(),
            content_type: e.content_type,
            metadata: convert::metadata(e.metadata),
        })
        .collect();
    let failed = api
        .rt
        .pubsub
        .bulk_publish(
            &r.pubsub_name,
            &r.topic,
            entries,
            convert::metadata(r.metadata),
            &traceparent,
        )
        .await?;
    Ok(Response::new(rt::BulkPublishResponse {
        failed_entries: failed
            .into_iter()
            .map(|f| rt::BulkPublishResponseFailedEntry {
                entry_id: f.entry_id,
                error: f.error,
            })
            .collect(),
    }))
}

pub async fn bulk_publish_event_alpha1(
    api: &DaprApi,
    req: Request<rt::BulkPublishRequest>,
) -> Reply<rt::BulkPublishResponse> {
    bulk_publish_event(api, req).await
}

type EventStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<rt::SubscribeTopicEventsResponseAlpha1, Status>> + Send + 'static>,
>;

#[instrument(level = "debug", name = "grpc.subscribe_topic_events_alpha1", skip_all)]
pub async fn subscribe_topic_events_alpha1(
    api: &DaprApi,
    req: Request<tonic::Streaming<rt::SubscribeTopicEventsRequestAlpha1>>,
) -> Reply<EventStream> {
    let stream = crate::sidecar::pubsub::streaming::open(api.rt.subscriber.clone(), req.into_inner()).await?;
    Ok(Response::new(Box::pin(stream)))
}

/// `metadata.<key>` headers for a binding's answer metadata, as Dapr sets them on the call (keys gRPC cannot
/// carry are left out).
fn binding_headers(target: &mut tonic::metadata::MetadataMap, md: &std::collections::BTreeMap<String, String>) {
    for (k, v) in md {
        let key = format!("metadata.{}", k.to_ascii_lowercase());
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(v.as_str()),
        ) {
            target.insert(key, value);
        }
    }
}

#[instrument(level = "debug", name = "grpc.invoke_binding", skip_all, fields(binding = %echo(&req.get_ref().name)))]
pub async fn invoke_binding(api: &DaprApi, req: Request<rt::InvokeBindingRequest>) -> Reply<rt::InvokeBindingResponse> {
    let (traceparent, tracestate) = trace_of(req.metadata());
    let r = req.into_inner();
    let mut metadata = convert::metadata(r.metadata);
    metadata.entry("traceparent".into()).or_insert(traceparent);
    if !tracestate.is_empty() {
        metadata.entry("tracestate".into()).or_insert(tracestate);
    }
    let invoked = api
        .rt
        .bindings
        .invoke(
            &r.name,
            crate::components::bindings::InvokeRequest {
                operation: r.operation,
                data: r.data.into(),
                metadata,
            },
        )
        .await;
    match invoked {
        Ok(answer) => {
            let answer = answer.unwrap_or_default();
            let mut resp = Response::new(rt::InvokeBindingResponse {
                data: answer.data.to_vec(),
                metadata: answer.metadata.clone().into_iter().collect(),
            });
            binding_headers(resp.metadata_mut(), &answer.metadata);
            Ok(resp)
        }
        Err(failure) => {
            let mut status = Status::from(failure.error);
            binding_headers(status.metadata_mut(), &failure.metadata);
            Err(status)
        }
    }
}

#[instrument(level = "debug", name = "grpc.get_configuration", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn get_configuration(
    api: &DaprApi,
    req: Request<rt::GetConfigurationRequest>,
) -> Reply<rt::GetConfigurationResponse> {
    let r = req.into_inner();
    let items = api
        .rt
        .configuration
        .get(&r.store_name, &r.keys, &convert::metadata(r.metadata))
        .await
        .map_err(ApiError::with_own_reason)?;
    Ok(Response::new(rt::GetConfigurationResponse {
        items: convert::configuration_items(items),
    }))
}

pub async fn get_configuration_alpha1(
    api: &DaprApi,
    req: Request<rt::GetConfigurationRequest>,
) -> Reply<rt::GetConfigurationResponse> {
    get_configuration(api, req).await
}

type ConfigurationStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<rt::SubscribeConfigurationResponse, Status>> + Send + 'static>,
>;

/// A server stream: the subscription id first, then each change; it ends on unsubscribe, when the store goes
/// away, or at shutdown, and the subscription ends when the client goes away.
#[instrument(level = "debug", name = "grpc.subscribe_configuration", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn subscribe_configuration(
    api: &DaprApi,
    req: Request<rt::SubscribeConfigurationRequest>,
) -> Reply<ConfigurationStream> {
    let r = req.into_inner();
    let mut keys = r.keys;
    keys.sort();
    let sub = crate::components::configuration::SubscribeRequest {
        keys,
        metadata: convert::metadata(r.metadata),
    };
    let stream = api
        .rt
        .configuration
        .subscribe_stream(&r.store_name, sub)
        .await
        .map_err(ApiError::with_own_reason)?;
    let stream = futures::StreamExt::map(stream, |e| {
        Ok(rt::SubscribeConfigurationResponse {
            id: e.id,
            items: convert::configuration_items(e.items),
        })
    });
    Ok(Response::new(Box::pin(stream)))
}

pub async fn subscribe_configuration_alpha1(
    api: &DaprApi,
    req: Request<rt::SubscribeConfigurationRequest>,
) -> Reply<ConfigurationStream> {
    subscribe_configuration(api, req).await
}

/// Dapr's deprecated unsubscribe: ends the gRPC subscription of that id (the store name is not looked at).
#[instrument(level = "debug", name = "grpc.unsubscribe_configuration", skip_all)]
pub async fn unsubscribe_configuration(
    api: &DaprApi,
    req: Request<rt::UnsubscribeConfigurationRequest>,
) -> Reply<rt::UnsubscribeConfigurationResponse> {
    let id = req.into_inner().id;
    Ok(Response::new(if api.rt.configuration.unsubscribe_stream(&id) {
        rt::UnsubscribeConfigurationResponse {
            ok: true,
            message: String::new(),
        }
    } else {
        rt::UnsubscribeConfigurationResponse {
            ok: false,
            message: format!(
                "failed to unsubscribe to configuration request {}: subscription does not exist",
                echo(&id)
            ),
        }
    }))
}

pub async fn unsubscribe_configuration_alpha1(
    api: &DaprApi,
    req: Request<rt::UnsubscribeConfigurationRequest>,
) -> Reply<rt::UnsubscribeConfigurationResponse> {
    unsubscribe_configuration(api, req).await
}

#[instrument(level = "debug", name = "grpc.try_lock_alpha1", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn try_lock_alpha1(api: &DaprApi, req: Request<rt::TryLockRequest>) -> Reply<rt::TryLockResponse> {
    let r = req.into_inner();
    let success = api
        .rt
        .locks
        .try_lock(&r.store_name, &r.resource_id, &r.lock_owner, r.expiry_in_seconds)
        .await?;
    Ok(Response::new(rt::TryLockResponse { success }))
}

#[instrument(level = "debug", name = "grpc.unlock_alpha1", skip_all, fields(store = %echo(&req.get_ref().store_name)))]
pub async fn unlock_alpha1(api: &DaprApi, req: Request<rt::UnlockRequest>) -> Reply<rt::UnlockResponse> {
    let r = req.into_inner();
    let status = api
        .rt
        .locks
        .unlock(&r.store_name, &r.resource_id, &r.lock_owner)
        .await?;
    Ok(Response::new(rt::UnlockResponse { status: status as i32 }))
}

#[instrument(level = "debug", name = "grpc.converse_alpha1", skip_all, fields(component = %echo(&req.get_ref().name)))]
pub async fn converse_alpha1(api: &DaprApi, req: Request<rt::ConversationRequest>) -> Reply<rt::ConversationResponse> {
    Ok(Response::new(
        api.rt.conversation.converse_alpha1(req.into_inner()).await?,
    ))
}

#[instrument(level = "debug", name = "grpc.converse_alpha2", skip_all, fields(component = %echo(&req.get_ref().name)))]
pub async fn converse_alpha2(
    api: &DaprApi,
    req: Request<rt::ConversationRequestAlpha2>,
) -> Reply<rt::ConversationResponseAlpha2> {
    Ok(Response::new(
        api.rt.conversation.converse_alpha2(req.into_inner()).await?,
    ))
}

#[instrument(level = "debug", name = "grpc.encrypt_alpha1", skip_all)]
pub async fn encrypt_alpha1(
    api: &DaprApi,
    req: Request<tonic::Streaming<rt::EncryptRequest>>,
) -> Reply<super::crypto::AnswerStream<rt::EncryptResponse>> {
    Ok(Response::new(
        super::crypto::encrypt(&api.rt.crypto, req.into_inner()).await?,
    ))
}

#[instrument(level = "debug", name = "grpc.decrypt_alpha1", skip_all)]
pub async fn decrypt_alpha1(
    api: &DaprApi,
    req: Request<tonic::Streaming<rt::DecryptRequest>>,
) -> Reply<super::crypto::AnswerStream<rt::DecryptResponse>> {
    Ok(Response::new(
        super::crypto::decrypt(&api.rt.crypto, req.into_inner()).await?,
    ))
}
