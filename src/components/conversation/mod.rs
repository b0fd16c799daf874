//! The conversation kind: one trait every LLM backend implements. A request is a chat (messages by role, with
//! text, tool calls the model asked for earlier and the results of those tools), the tools the model may call and
//! a few sampling settings; the answer is one or more outputs, each with its choices, and the token usage.

pub mod echo;
pub mod openai;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::{ComponentError, ComponentKind, Kind, Metadata};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    System,
    Assistant,
    Tool,
    Function,
    Generic,
}

impl Role {
    /// A role named in an alpha1 input (`user`, `human`, `system`, `assistant`, `ai`, ...); anything else is
    /// the user, as in Dapr.
    pub fn from_name(name: &str) -> Role {
        match name {
            "system" => Role::System,
            "assistant" | "ai" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            "generic" => Role::Generic,
            _ => Role::User,
        }
    }
}

/// A call of a tool, asked for by the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

/// One piece of a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    /// A tool call the model asked for in an earlier turn (on assistant messages).
    ToolCall(ToolCall),
    /// What a tool answered (on tool messages).
    ToolResult {
        id: String,
        name: String,
        content: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// A function the model may call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments (an object), if given.
    pub parameters: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConverseRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    /// `auto`, `none`, `required` or a tool's name.
    pub tool_choice: Option<String>,
    /// Sent when above zero.
    pub temperature: f64,
    pub metadata: BTreeMap<String, String>,
    /// A JSON Schema the answer must follow (structured output).
    pub response_format: Option<serde_json::Map<String, serde_json::Value>>,
    pub prompt_cache_retention: Option<Duration>,
}

/// One choice of an output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Choice {
    /// `stop`, `length`, `tool_calls`, `content_filter`, or `unknown` when the model gave none.
    pub finish_reason: String,
    pub index: i64,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub choices: Vec<Choice>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompletionTokensDetails {
    pub accepted_prediction_tokens: u64,
    pub audio_tokens: u64,
    pub reasoning_tokens: u64,
    pub rejected_prediction_tokens: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PromptTokensDetails {
    pub audio_tokens: u64,
    pub cached_tokens: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub completion_tokens: u64,
    pub prompt_tokens: u64,
    pub total_tokens: u64,
    pub completion_details: Option<CompletionTokensDetails>,
    pub prompt_details: Option<PromptTokensDetails>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConverseResponse {
    pub outputs: Vec<Output>,
    /// The model the component is configured with (empty for backends without one).
    pub model: String,
    pub usage: Option<Usage>,
}

/// Why a conversation failed (the message reaches the caller inside `ERR_CONVERSATION_INVOKE`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConversationError(pub String);

/// An LLM backend.
#[async_trait]
pub trait Conversation: Send + Sync {
    async fn converse(&self, req: &ConverseRequest) -> Result<ConverseResponse, ConversationError>;

    async fn close(&self) {}
}

impl ComponentKind for dyn Conversation {
    const KIND: Kind = Kind::Conversation;

    fn close(component: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { component.close().await })
    }
}

/// The most answers a response cache keeps.
const CACHE_ENTRIES: usize = 1024;

/// `component` answering identical requests from memory for the `cacheTTL` (alias `responseCacheTTL`) metadata's
/// duration, as Dapr's langchain-based components do; `component` itself when it is unset or zero.
pub fn with_response_cache(
    md: &Metadata,
    component: Arc<dyn Conversation>,
) -> Result<Arc<dyn Conversation>, ComponentError> {
    let ttl = match md.duration("cacheTTL")? {
        Some(d) => Some(d),
        None => md.duration("responseCacheTTL")?,
    };
    Ok(match ttl.filter(|d| !d.is_zero()) {
        None => component,
        Some(ttl) => Arc::new(Cached {
            inner: component,
            ttl,
            answers: Mutex::default(),
        }),
    })
}

struct Cached {
    inner: Arc<dyn Conversation>,
    ttl: Duration,
    /// Request (its debug rendering) -> when it was answered, and the answer.
    answers: Mutex<HashMap<String, (Instant, ConverseResponse)>>,
}

impl Cached {
    fn lookup(&self, key: &str) -> Option<ConverseResponse> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, r)| r.clone())
    }

    fn store(&self, key: String, resp: ConverseResponse) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers.retain(|_, (at, _)| at.elapsed() < self.ttl);
        if answers.len() >= CACHE_ENTRIES
            && let Some(oldest) = answers.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone())
        {
            answers.remove(&oldest);
        }
        answers.insert(key, (Instant::now(), resp));
    }
}

#[async_trait]
impl Conversation for Cached {
    async fn converse(&self, req: &ConverseRequest) -> Result<ConverseResponse, ConversationError> {
        let key = format!("{req:?}");
        if let Some(hit) = self.lookup(&key) {
            return Ok(hit);
        }
        let resp = self.inner.converse(req).await?;
        self.store(key, resp.clone());
        Ok(resp)
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
