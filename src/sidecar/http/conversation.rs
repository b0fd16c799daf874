//! HTTP conversation handlers (`POST /v1.0-alpha1|alpha2/conversation/<name>/converse`): the request JSON read
//! and the answer written as Dapr's protojson does (lowerCamelCase names, proto names accepted too, unknown
//! fields ignored, 64-bit integers as strings, empty fields left out).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dapr::dapr::proto::runtime::v1 as rt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::instrument;

use super::{ApiState, DaprPath, json_response, read_json};
use crate::sidecar::conversation::json_to_struct;
use crate::sidecar::error::ApiError;

/// A protojson `double`: a number, or a string holding one.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonDouble {
    Number(f64),
    Text(String),
}

impl JsonDouble {
    fn value(self) -> Result<f64, String> {
        match self {
            JsonDouble::Number(n) => Ok(n),
            JsonDouble::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                _ => t
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid value for double field: {t:?}")),
            },
        }
    }
}

#[derive(Default, Deserialize)]
struct Alpha1Json {
    #[serde(rename = "contextID")]
    context_id: Option<String>,
    inputs: Option<Vec<Alpha1InputJson>>,
    parameters: Option<Map<String, Value>>,
    metadata: Option<HashMap<String, String>>,
    #[serde(rename = "scrubPII")]
    scrub_pii: Option<bool>,
    temperature: Option<JsonDouble>,
}

#[derive(Deserialize)]
struct Alpha1InputJson {
    content: Option<String>,
    role: Option<String>,
    #[serde(rename = "scrubPII")]
    scrub_pii: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alpha2Json {
    #[serde(alias = "context_id")]
    context_id: Option<String>,
    inputs: Option<Vec<Alpha2InputJson>>,
    parameters: Option<Map<String, Value>>,
    metadata: Option<HashMap<String, String>>,
    #[serde(alias = "scrub_pii")]
    scrub_pii: Option<bool>,
    temperature: Option<JsonDouble>,
    tools: Option<Vec<ToolJson>>,
    #[serde(alias = "tool_choice")]
    tool_choice: Option<String>,
    #[serde(alias = "response_format")]
    response_format: Option<Map<String, Value>>,
    #[serde(alias = "prompt_cache_retention")]
    prompt_cache_retention: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alpha2InputJson {
    messages: Option<Vec<MessageJson>>,
    #[serde(alias = "scrub_pii")]
    scrub_pii: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageJson {
    #[serde(alias = "of_developer")]
    of_developer: Option<NamedJson>,
    #[serde(alias = "of_system")]
    of_system: Option<NamedJson>,
    #[serde(alias = "of_user")]
    of_user: Option<NamedJson>,
    #[serde(alias = "of_assistant")]
    of_assistant: Option<AssistantJson>,
    #[serde(alias = "of_tool")]
    of_tool: Option<ToolMessageJson>,
}

#[derive(Deserialize)]
struct ContentJson {
    text: Option<String>,
}

#[derive(Deserialize)]
struct NamedJson {
    name: Option<String>,
    content: Option<Vec<ContentJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssistantJson {
    name: Option<String>,
    content: Option<Vec<ContentJson>>,
    #[serde(alias = "tool_calls")]
    tool_calls: Option<Vec<ToolCallJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolMessageJson {
    #[serde(alias = "tool_id")]
    tool_id: Option<String>,
    name: Option<String>,
    content: Option<Vec<ContentJson>>,
}

#[derive(Deserialize)]
struct ToolCallJson {
    id: Option<String>,
    function: Option<FunctionCallJson>,
}

#[derive(Deserialize)]
struct FunctionCallJson {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ToolJson {
    function: Option<ToolFunctionJson>,
}

#[derive(Deserialize)]
struct ToolFunctionJson {
    name: Option<String>,
    description: Option<String>,
    parameters: Option<Map<String, Value>>,
}

fn contents(c: Option<Vec<ContentJson>>) -> Vec<rt::ConversationMessageContent> {
    c.unwrap_or_default()
        .into_iter()
        .map(|c| rt::ConversationMessageContent {
            text: c.text.unwrap_or_default(),
        })
        .collect()
}

fn message(m: MessageJson) -> Result<rt::ConversationMessage, String> {
    use rt::conversation_message::MessageTypes as T;
    let mut set = vec![];
    if let Some(d) = m.of_developer {
        set.push(T::OfDeveloper(rt::ConversationMessageOfDeveloper {
            name: d.name,
            content: contents(d.content),
        }));
    }
    if let Some(s) = m.of_system {
        set.push(T::OfSystem(rt::ConversationMessageOfSystem {
            name: s.name,
            content: contents(s.content),
        }));
    }
    if let Some(u) = m.of_user {
        set.push(T::OfUser(rt::ConversationMessageOfUser {
            name: u.name,
            content: contents(u.content),
        }));
    }
    if let Some(a) = m.of_assistant {
        set.push(T::OfAssistant(rt::ConversationMessageOfAssistant {
            name: a.name,
            content: contents(a.content),
            tool_calls: a
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| rt::ConversationToolCalls {
                    id: c.id,
                    tool_types: c.function.map(|f| {
                        rt::conversation_tool_calls::ToolTypes::Function(rt::ConversationToolCallsOfFunction {
                            name: f.name.unwrap_or_default(),
                            arguments: f.arguments.unwrap_or_default(),
                        })
                    }),
                })
                .collect(),
        }));
    }
    if let Some(t) = m.of_tool {
        set.push(T::OfTool(rt::ConversationMessageOfTool {
            tool_id: t.tool_id,
            name: t.name.unwrap_or_default(),
            content: contents(t.content),
        }));
    }
    if set.len() > 1 {
        return Err("a message sets more than one of ofDeveloper, ofSystem, ofUser, ofAssistant, ofTool".into());
    }
    Ok(rt::ConversationMessage {
        message_types: set.pop(),
    })
}

/// A protojson `google.protobuf.Duration`: seconds with up to nine decimals and an `s` (`"86400s"`, `"1.5s"`).
fn duration(text: &str) -> Result<prost_types::Duration, String> {
    let bad = || format!("invalid google.protobuf.Duration value {:?}", crate::echo::echo(text));
    let body = text.strip_suffix('s').ok_or_else(bad)?;
    let (negative, body) = match body.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, body),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (body.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    let seconds: i64 = whole.parse().map_err(|_| bad())?;
    if seconds > 315_576_000_000 {
        return Err(bad());
    }
    let nanos: i32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    let sign = if negative { -1 } else { 1 };
    Ok(prost_types::Duration {
        seconds: sign * seconds,
        nanos: sign as i32 * nanos,
    })
}

/// Each parameter must be a `google.protobuf.Any` in JSON (an object naming its `@type`).
fn check_parameters(p: &Option<Map<String, Value>>) -> Result<(), String> {
    for (k, v) in p.iter().flatten() {
        if !v.get("@type").is_some_and(Value::is_string) {
            return Err(format!(
                "parameter {:?} is not a google.protobuf.Any (an object with \"@type\")",
                crate::echo::echo(k)
            ));
        }
    }
    Ok(())
}

fn alpha1_request(name: String, j: Alpha1Json) -> Result<rt::ConversationRequest, String> {
    check_parameters(&j.parameters)?;
    Ok(rt::ConversationRequest {
        name,
        context_id: j.context_id,
        inputs: j
            .inputs
            .unwrap_or_default()
            .into_iter()
            .map(|i| rt::ConversationInput {
                content: i.content.unwrap_or_default(),
                role: i.role,
                scrub_pii: i.scrub_pii,
            })
            .collect(),
        parameters: Default::default(),
        metadata: j.metadata.unwrap_or_default(),
        scrub_pii: j.scrub_pii,
        temperature: j.temperature.map(JsonDouble::value).transpose()?,
    })
}

fn alpha2_request(name: String, j: Alpha2Json) -> Result<rt::ConversationRequestAlpha2, String> {
    check_parameters(&j.parameters)?;
    let mut inputs = vec![];
    for i in j.inputs.unwrap_or_default() {
        inputs.push(rt::ConversationInputAlpha2 {
            messages: i
                .messages
                .unwrap_or_default()
                .into_iter()
                .map(message)
                .collect::<Result<_, _>>()?,
            scrub_pii: i.scrub_pii,
        });
    }
    Ok(rt::ConversationRequestAlpha2 {
        name,
        context_id: j.context_id,
        inputs,
        parameters: Default::default(),
        metadata: j.metadata.unwrap_or_default(),
        scrub_pii: j.scrub_pii,
        temperature: j.temperature.map(JsonDouble::value).transpose()?,
        tools: j
            .tools
            .unwrap_or_default()
            .into_iter()
            .map(|t| rt::ConversationTools {
                tool_types: t.function.map(|f| {
                    rt::conversation_tools::ToolTypes::Function(rt::ConversationToolsFunction {
                        name: f.name.unwrap_or_default(),
                        description: f.description,
                        parameters: f.parameters.as_ref().map(json_to_struct),
                    })
                }),
            })
            .collect(),
        tool_choice: j.tool_choice,
        response_format: j.response_format.as_ref().map(json_to_struct),
        prompt_cache_retention: j.prompt_cache_retention.as_deref().map(duration).transpose()?,
    })
}

/// Sets `key` when `value` is not empty (protojson leaves out unset and empty fields).
fn put(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if !empty {
        obj.insert(key.into(), value);
    }
}

/// A 64-bit integer as protojson writes it: a string, left out when zero.
fn int64(obj: &mut Map<String, Value>, key: &str, n: impl Into<i128>) {
    let n = n.into();
    if n != 0 {
        obj.insert(key.into(), json!(n.to_string()));
    }
}

fn alpha1_json(r: rt::ConversationResponse, parameters: &Option<Map<String, Value>>) -> Value {
    let mut out = Map::new();
    if let Some(c) = r.context_id {
        out.insert("contextID".into(), json!(c));
    }
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            let mut m = Map::new();
            put(&mut m, "result", json!(o.result));
            if let Some(p) = parameters.as_ref().filter(|p| !p.is_empty()) {
                m.insert("parameters".into(), Value::Object(p.clone()));
            }
            Value::Object(m)
        })
        .collect();
    put(&mut out, "outputs", Value::Array(outputs));
    Value::Object(out)
}

fn tool_call_json(c: rt::ConversationToolCalls) -> Value {
    let mut m = Map::new();
    if let Some(id) = c.id {
        m.insert("id".into(), json!(id));
    }
    if let Some(rt::conversation_tool_calls::ToolTypes::Function(f)) = c.tool_types {
        let mut fm = Map::new();
        put(&mut fm, "name", json!(f.name));
        put(&mut fm, "arguments", json!(f.arguments));
        m.insert("function".into(), Value::Object(fm));
    }
    Value::Object(m)
}

fn usage_json(u: rt::ConversationResultAlpha2CompletionUsage) -> Value {
    let mut m = Map::new();
    int64(&mut m, "completionTokens", u.completion_tokens);
    int64(&mut m, "promptTokens", u.prompt_tokens);
    int64(&mut m, "totalTokens", u.total_tokens);
    if let Some(d) = u.completion_tokens_details {
        let mut dm = Map::new();
        int64(&mut dm, "acceptedPredictionTokens", d.accepted_prediction_tokens);
        int64(&mut dm, "audioTokens", d.audio_tokens);
        int64(&mut dm, "reasoningTokens", d.reasoning_tokens);
        int64(&mut dm, "rejectedPredictionTokens", d.rejected_prediction_tokens);
        m.insert("completionTokensDetails".into(), Value::Object(dm));
    }
    if let Some(d) = u.prompt_tokens_details {
        let mut dm = Map::new();
        int64(&mut dm, "audioTokens", d.audio_tokens);
        int64(&mut dm, "cachedTokens", d.cached_tokens);
        m.insert("promptTokensDetails".into(), Value::Object(dm));
    }
    Value::Object(m)
}

fn alpha2_json(r: rt::ConversationResponseAlpha2) -> Value {
    let mut out = Map::new();
    if let Some(c) = r.context_id {
        out.insert("contextId".into(), json!(c));
    }
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            let mut m = Map::new();
            let choices = o
                .choices
                .into_iter()
                .map(|c| {
                    let mut cm = Map::new();
                    put(&mut cm, "finishReason", json!(c.finish_reason));
                    int64(&mut cm, "index", c.index);
                    if let Some(msg) = c.message {
                        let mut mm = Map::new();
                        put(&mut mm, "content", json!(msg.content));
                        let calls = msg.tool_calls.into_iter().map(tool_call_json).collect();
                        put(&mut mm, "toolCalls", Value::Array(calls));
                        cm.insert("message".into(), Value::Object(mm));
                    }
                    Value::Object(cm)
                })
                .collect();
            put(&mut m, "choices", Value::Array(choices));
            if let Some(model) = o.model {
                m.insert("model".into(), json!(model));
            }
            if let Some(u) = o.usage {
                m.insert("usage".into(), usage_json(u));
            }
            Value::Object(m)
        })
        .collect();
    put(&mut out, "outputs", Value::Array(outputs));
    Value::Object(out)
}

#[instrument(level = "debug", name = "http.conversation.alpha1", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn converse_alpha1(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let parsed: Alpha1Json = match read_json(&st, body).await {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return e.into_response(),
    };
    let parameters = parsed.parameters.clone();
    let req = match alpha1_request(path.store().to_owned(), parsed) {
        Ok(r) => r,
        Err(e) => return ApiError::malformed_request(e).into_response(),
    };
    match st.rt.conversation.converse_alpha1(req).await {
        Ok(resp) => json_response(StatusCode::OK, alpha1_json(resp, &parameters)),
        Err(e) => e.into_response(),
    }
}

#[instrument(level = "debug", name = "http.conversation.alpha2", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn converse_alpha2(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let req = match read_json::<Alpha2Json>(&st, body).await {
        Ok(None) => Ok(rt::ConversationRequestAlpha2 {
            name: path.store().to_owned(),
            ..Default::default()
        }),
        Ok(Some(p)) => alpha2_request(path.store().to_owned(), p),
        Err(e) => return e.into_response(),
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => return ApiError::malformed_request(e).into_response(),
    };
    match st.rt.conversation.converse_alpha2(req).await {
        Ok(resp) => json_response(StatusCode::OK, alpha2_json(resp)),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_protojson_writes_them() {
        assert_eq!(duration("86400s").unwrap().seconds, 86400);
        let d = duration("1.5s").unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
        assert_eq!(duration("-2s").unwrap().seconds, -2);
        for bad in ["", "s", "1", "1.s", "1m", "x1s", "1.1234567890s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_message_kinds_in_one_message_are_malformed() {
        let j: MessageJson =
            serde_json::from_value(json!({"ofUser": {"content": []}, "of_system": {"content": []}})).unwrap();
        assert!(message(j).is_err());
        let j: MessageJson = serde_json::from_value(json!({"invalidField": {}})).unwrap();
        assert_eq!(message(j).unwrap().message_types, None);
    }

    #[test]
    fn usage_counts_are_strings_and_zeroes_are_left_out() {
        let v = usage_json(rt::ConversationResultAlpha2CompletionUsage {
            completion_tokens: 8,
            prompt_tokens: 0,
            total_tokens: 16,
            ..Default::default()
        });
        assert_eq!(v, json!({"completionTokens": "8", "totalTokens": "16"}));
    }
}
