//! `conversation.echo`: Dapr's test LLM. It answers one output with one choice whose content is every text of the
//! request joined by newlines (tool results as `Tool Response for tool ID '<id>' with name '<name>': <text>`), and
//! asks to call every tool of the request (arguments: the names of its parameters, sorted and comma-separated)
//! plus the tool calls already in the request, finishing with `tool_calls` then, else `stop`. Usage counts words.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Choice, Conversation, ConversationError, ConverseRequest, ConverseResponse, Output, Part, ToolCall, Usage,
};
use crate::components::{ComponentError, Metadata};

pub async fn build(_md: Metadata) -> Result<Arc<dyn Conversation>, ComponentError> {
    Ok(Arc::new(Echo))
}

struct Echo;

/// The name of a JSON value's type, for errors.
fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// The tool calls echo asks for: one per tool, its arguments the sorted names of its parameters.
fn calls_for_tools(req: &ConverseRequest) -> Result<Vec<ToolCall>, ConversationError> {
    let mut calls = Vec::with_capacity(req.tools.len());
    for (i, tool) in req.tools.iter().enumerate() {
        let mut args: Vec<&str> = vec![];
        if let Some(params) = &tool.parameters {
            let params = params.as_object().ok_or_else(|| {
                ConversationError(format!(
                    "tool function parameters must be an object, got {}",
                    type_name(params)
                ))
            })?;
            if let Some(props) = params.get("properties") {
                let props = props.as_object().ok_or_else(|| {
                    ConversationError(format!(
                        "tool function properties must be an object, got {}",
                        type_name(props)
                    ))
                })?;
                args = props.keys().map(String::as_str).collect();
                args.sort_unstable();
            }
        }
        calls.push(ToolCall {
            id: i.to_string(),
            name: tool.name.clone(),
            arguments: args.join(","),
        });
    }
    Ok(calls)
}

#[async_trait]
impl Conversation for Echo {
    async fn converse(&self, req: &ConverseRequest) -> Result<ConverseResponse, ConversationError> {
        let mut tool_calls = calls_for_tools(req)?;
        let mut texts: Vec<String> = vec![];
        for part in req.messages.iter().flat_map(|m| &m.parts) {
            match part {
                Part::Text(t) => texts.push(t.clone()),
                Part::ToolCall(call) => tool_calls.push(call.clone()),
                Part::ToolResult { id, name, content } => texts.push(format!(
                    "Tool Response for tool ID '{id}' with name '{name}': {content}"
                )),
            }
        }
        let content = texts.join("\n");
        let finish_reason = if tool_calls.is_empty() { "stop" } else { "tool_calls" };
        let words = content.split_whitespace().count() as u64;
        Ok(ConverseResponse {
            outputs: vec![Output {
                choices: vec![Choice {
                    finish_reason: finish_reason.into(),
                    index: 0,
                    content,
                    tool_calls,
                }],
            }],
            model: String::new(),
            usage: Some(Usage {
                completion_tokens: words,
                prompt_tokens: words,
                total_tokens: words * 2,
                ..Default::default()
            }),
        })
    }
}
