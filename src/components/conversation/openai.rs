//! `conversation.openai` and `conversation.ollama`: any server speaking OpenAI's chat-completions API (OpenAI,
//! Azure OpenAI, Ollama, vLLM, llama.cpp, ...). Metadata as Dapr's: `key`, `model`, `endpoint`, `cacheTTL`
//! (identical requests answered from memory for
//! that long), and for OpenAI `apiType` (`azure`) with `apiVersion`. The model is
//! `OPENAI_MODEL` / `AZURE_OPENAI_MODEL` / `OLLAMA_MODEL` from the environment, else the metadata, else Dapr's
//! default. Each choice the server answers becomes one output, as in Dapr.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};

use super::{
    Choice, CompletionTokensDetails, Conversation, ConversationError, ConverseRequest, ConverseResponse, Message,
    Output, Part, PromptTokensDetails, Role, Usage,
};
use crate::components::http_client::{HttpsClient, http_url, https_client};
use crate::components::{ComponentError, Metadata};

/// The longest an LLM may take to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest answer read from an LLM server.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

const OPENAI_ENDPOINT: &str = "https://api.openai.com/v1";
const OLLAMA_ENDPOINT: &str = "http://localhost:11434/v1";

/// The model: the environment variable, else the metadata, else the default (Dapr's order).
fn model(md: &Metadata, env: &str, default: &str) -> String {
    std::env::var(env)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| md.string("model"))
        .unwrap_or_else(|| default.to_owned())
}

fn endpoint_url(endpoint: &str) -> Result<http::Uri, ComponentError> {
    http_url("endpoint", endpoint)
}

pub async fn build(md: Metadata) -> Result<Arc<dyn Conversation>, ComponentError> {
    let key = md.string("key").ok_or_else(|| {
        ComponentError::invalid("key", "missing the OpenAI API key: set the component's key metadata")
    })?;
    let azure = md.string("apiType").is_some_and(|t| t.eq_ignore_ascii_case("azure"));
    let (model, url, auth) = if azure {
        let model = model(&md, "AZURE_OPENAI_MODEL", "gpt-4.1-nano");
        let (Some(endpoint), Some(version)) = (md.string("endpoint"), md.string("apiVersion")) else {
            return Err(ComponentError::invalid(
                "apiType",
                "endpoint and apiVersion must be provided when apiType is set to 'azure'",
            ));
        };
        endpoint_url(&endpoint)?;
        let url = format!(
            "{}/openai/deployments/{}/chat/completions?api-version={}",
            endpoint.trim_end_matches('/'),
            percent_encoding::utf8_percent_encode(&model, percent_encoding::NON_ALPHANUMERIC),
            percent_encoding::utf8_percent_encode(&version, percent_encoding::NON_ALPHANUMERIC)
        );
        (model, url, ("api-key", key))
    } else {
        let model = model(&md, "OPENAI_MODEL", "gpt-5-nano");
        let endpoint = md.string("endpoint").unwrap_or_else(|| OPENAI_ENDPOINT.into());
        endpoint_url(&endpoint)?;
        let url = format!("{}/chat/completions", endpoint.trim_end_matches('/'));
        (model, url, ("authorization", format!("Bearer {key}")))
    };
    super::with_response_cache(&md, ChatCompletions::client(model, url, auth)?)
}

/// `conversation.ollama`: Ollama's OpenAI-compatible API (`/v1`); no key needed.
pub async fn build_ollama(md: Metadata) -> Result<Arc<dyn Conversation>, ComponentError> {
    let key = md.string("key").unwrap_or_else(|| "ollama".into());
    let model = model(&md, "OLLAMA_MODEL", "llama3.2:latest");
    let endpoint = md.string("endpoint").unwrap_or_else(|| OLLAMA_ENDPOINT.into());
    endpoint_url(&endpoint)?;
    let url = format!("{}/chat/completions", endpoint.trim_end_matches('/'));
    super::with_response_cache(
        &md,
        ChatCompletions::client(model, url, ("authorization", format!("Bearer {key}")))?,
    )
}

/// A client of one chat-completions endpoint.
struct ChatCompletions {
    model: String,
    url: http::Uri,
    auth: (&'static str, HeaderValue),
    client: HttpsClient<Full<Bytes>>,
}

impl ChatCompletions {
    /// A client of `url` (the full chat-completions URL), sending `auth` with every request.
    fn client(
        model: String,
        url: String,
        (auth_header, auth_value): (&'static str, String),
    ) -> Result<Arc<dyn Conversation>, ComponentError> {
        let url = url
            .parse()
            .map_err(|e| ComponentError::invalid("endpoint", format!("{url:?} is not a URL: {e}")))?;
        let mut auth = HeaderValue::try_from(auth_value)
            .map_err(|_| ComponentError::invalid("key", "the key holds characters a header cannot carry"))?;
        auth.set_sensitive(true);
        Ok(Arc::new(ChatCompletions {
            model,
            url,
            auth: (auth_header, auth),
            client: https_client(),
        }))
    }

    async fn call(&self, body: Vec<u8>) -> Result<(http::StatusCode, Bytes), ConversationError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(self.auth.0, self.auth.1.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ConversationError(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ConversationError(format!("calling {}: {}", self.url, error_chain(&e))))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ConversationError(format!("reading the answer of {}: {e}", self.url)))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| ConversationError(format!("{} did not answer within {CALL_TIMEOUT:?}", self.url)))?
    }
}

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[async_trait]
impl Conversation for ChatCompletions {
    async fn converse(&self, req: &ConverseRequest) -> Result<ConverseResponse, ConversationError> {
        let body = request_body(&self.model, req);
        let (status, answer) = self.call(serde_json::to_vec(&body).unwrap_or_default()).await?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<Value>(&answer)
                .ok()
                .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| crate::echo::bound(String::from_utf8_lossy(&answer).into_owned(), 512));
            return Err(ConversationError(format!(
                "API returned unexpected status code: {}: {detail}",
                status.as_u16()
            )));
        }
        let parsed: CompletionJson = serde_json::from_slice(&answer)
            .map_err(|e| ConversationError(format!("the answer is not a chat completion: {e}")))?;
        let mut resp = response(parsed);
        resp.model = self.model.clone();
        if matches!(req.tool_choice.as_deref(), Some("required" | "any"))
            && !req.tools.is_empty()
            && !resp
                .outputs
                .iter()
                .flat_map(|o| &o.choices)
                .any(|c| !c.content.is_empty() || !c.tool_calls.is_empty())
        {
            return Err(ConversationError(format!(
                "LLM returned empty response with no tool calls despite {} tools being available",
                req.tools.len()
            )));
        }
        Ok(resp)
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User | Role::Generic => "user",
        Role::System => "system",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        Role::Function => "function",
    }
}

/// One message of the request as chat-completions messages (each tool result is a message of its own).
fn messages_of(m: &Message, out: &mut Vec<Value>) {
    let texts: Vec<&str> = m
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = m
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall(c) => Some(json!({
                "id": c.id,
                "type": "function",
                "function": { "name": c.name, "arguments": c.arguments },
            })),
            _ => None,
        })
        .collect();
    for p in &m.parts {
        if let Part::ToolResult { id, name, content } = p {
            let mut msg = json!({ "role": "tool", "tool_call_id": id, "content": content });
            if !name.is_empty() {
                msg["name"] = json!(name);
            }
            out.push(msg);
        }
    }
    if texts.is_empty() && calls.is_empty() {
        return;
    }
    let content = match texts.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => Value::Array(many.iter().map(|t| json!({ "type": "text", "text": t })).collect()),
    };
    let mut msg = json!({ "role": role_name(m.role), "content": content });
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    out.push(msg);
}

/// The chat-completions request for `req`.
fn request_body(model: &str, req: &ConverseRequest) -> Value {
    let mut messages = vec![];
    for m in &req.messages {
        messages_of(m, &mut messages);
    }
    let mut body = json!({ "model": model, "messages": messages });
    if req.temperature > 0.0 {
        body["temperature"] = json!(req.temperature);
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({ "name": t.name });
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                if let Some(p) = &t.parameters {
                    f["parameters"] = p.clone();
                }
                json!({ "type": "function", "function": f })
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    if let Some(choice) = &req.tool_choice {
        body["tool_choice"] = json!(if choice == "any" { "required" } else { choice.as_str() });
    }
    if let Some(schema) = &req.response_format {
        if schema.get("type").is_some_and(Value::is_string) {
            let mut inner = schema.clone();
            let name = inner
                .remove("name")
                .and_then(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .unwrap_or_else(|| "response".into());
            let description = inner.remove("description");
            let strict = inner.remove("strict").and_then(|v| v.as_bool()).unwrap_or(false);
            let mut def = json!({ "name": name, "schema": inner, "strict": strict });
            if let Some(d) = description.filter(Value::is_string) {
                def["description"] = d;
            }
            body["response_format"] = json!({ "type": "json_schema", "json_schema": def });
        } else {
            tracing::warn!("response format has no string \"type\"; the request goes on without structured output");
        }
    }
    let mut metadata: serde_json::Map<String, Value> =
        req.metadata.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    if let Some(d) = req.prompt_cache_retention {
        metadata.insert("prompt_cache_retention".into(), json!(go_duration(d)));
    }
    if !metadata.is_empty() {
        body["metadata"] = Value::Object(metadata);
    }
    body
}

/// A duration as Go prints it (`24h0m0s`, `1m30s`, `1.5s`).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 && nanos == 0 {
        return "0s".into();
    }
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}{frac}s")
    } else if m > 0 {
        format!("{m}m{s}{frac}s")
    } else {
        format!("{s}{frac}s")
    }
}

#[derive(serde::Deserialize)]
struct CompletionJson {
    #[serde(default)]
    choices: Vec<ChoiceJson>,
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(serde::Deserialize)]
struct ChoiceJson {
    #[serde(default)]
    message: Option<MessageJson>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct MessageJson {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallJson>>,
}

#[derive(serde::Deserialize)]
struct ToolCallJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionJson>,
}

#[derive(serde::Deserialize, Default)]
struct FunctionJson {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetailsJson>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetailsJson>,
}

#[derive(serde::Deserialize, Default)]
struct PromptDetailsJson {
    #[serde(default)]
    audio_tokens: u64,
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(serde::Deserialize, Default)]
struct CompletionDetailsJson {
    #[serde(default)]
    accepted_prediction_tokens: u64,
    #[serde(default)]
    audio_tokens: u64,
    #[serde(default)]
    reasoning_tokens: u64,
    #[serde(default)]
    rejected_prediction_tokens: u64,
}

/// A chat completion as outputs: one per choice, each holding that choice (index = its position).
fn response(c: CompletionJson) -> ConverseResponse {
    let outputs = c
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, ch)| {
            let msg = ch.message.unwrap_or_default();
            let tool_calls = msg
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    let f = t.function.unwrap_or_default();
                    super::ToolCall {
                        id: t.id.unwrap_or_default(),
                        name: f.name.unwrap_or_default(),
                        arguments: f.arguments.unwrap_or_default(),
                    }
                })
                .collect();
            Output {
                choices: vec![Choice {
                    finish_reason: ch
                        .finish_reason
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| "unknown".into()),
                    index: i as i64,
                    content: msg.content.unwrap_or_default(),
                    tool_calls,
                }],
            }
        })
        .collect::<Vec<_>>();
    let usage = if outputs.is_empty() {
        None
    } else {
        c.usage.map(|u| {
            let cd = u.completion_tokens_details.unwrap_or_default();
            let pd = u.prompt_tokens_details.unwrap_or_default();
            Usage {
                completion_tokens: u.completion_tokens,
                prompt_tokens: u.prompt_tokens,
                total_tokens: u.total_tokens,
                completion_details: (cd.accepted_prediction_tokens
                    + cd.audio_tokens
                    + cd.reasoning_tokens
                    + cd.rejected_prediction_tokens
                    > 0)
                .then_some(CompletionTokensDetails {
                    accepted_prediction_tokens: cd.accepted_prediction_tokens,
                    audio_tokens: cd.audio_tokens,
                    reasoning_tokens: cd.reasoning_tokens,
                    rejected_prediction_tokens: cd.rejected_prediction_tokens,
                }),
                prompt_details: (pd.audio_tokens + pd.cached_tokens > 0).then_some(PromptTokensDetails {
                    audio_tokens: pd.audio_tokens,
                    cached_tokens: pd.cached_tokens,
                }),
            }
        })
    };
    ConverseResponse {
        outputs,
        model: String::new(),
        usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::conversation::{Tool, ToolCall};

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(86400)), "24h0m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn request_carries_roles_tools_and_results() {
        let req = ConverseRequest {
            messages: vec![
                Message {
                    role: Role::System,
                    parts: vec![Part::Text("be brief".into())],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![Part::ToolCall(ToolCall {
                        id: "c1".into(),
                        name: "weather".into(),
                        arguments: "{}".into(),
                    })],
                },
                Message {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult {
                        id: "c1".into(),
                        name: "weather".into(),
                        content: "sunny".into(),
                    }],
                },
            ],
            tools: vec![Tool {
                name: "weather".into(),
                description: Some("d".into()),
                parameters: Some(json!({"type": "object"})),
            }],
            tool_choice: Some("auto".into()),
            temperature: 0.0,
            ..Default::default()
        };
        let body = request_body("m", &req);
        assert_eq!(body["model"], "m");
        assert!(body.get("temperature").is_none(), "zero temperature is not sent");
        assert_eq!(body["messages"][0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(body["messages"][1]["tool_calls"][0]["function"]["name"], "weather");
        assert_eq!(body["messages"][1]["content"], Value::Null);
        assert_eq!(body["messages"][2]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["function"]["parameters"], json!({"type": "object"}));
        assert_eq!(body["tool_choice"], "auto");
    }

    #[test]
    fn missing_finish_reason_is_unknown() {
        let c: CompletionJson =
            serde_json::from_value(json!({"choices": [{"message": {"content": "hi"}}, {"message": {"content": "ho"}, "finish_reason": "stop"}]}))
                .unwrap();
        let r = response(c);
        assert_eq!(r.outputs.len(), 2);
        assert_eq!(r.outputs[0].choices[0].finish_reason, "unknown");
        assert_eq!(r.outputs[1].choices[0].index, 1);
        assert_eq!(r.usage, None);
    }
}
