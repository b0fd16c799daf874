//! The conversation kind: one trait every LLM backend implements. A request is a chat (messages by role, with
//! text, tool calls the model asked for earlier and the results of those tools), the tools the model may call and
//! a few sampling settings; the answer is one or more outputs, each with its choices, and the token usage.

pub mod echo;
pub mod openai;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::{ComponentKind, Kind};

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
