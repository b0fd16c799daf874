//! The conversation building block (`/v1.0-alpha1|alpha2/conversation/<name>/converse`, gRPC `ConverseAlpha1`
//! and `ConverseAlpha2`): Dapr's request checks, PII scrubbing of inputs and outputs when asked, the chat handed
//! to the component, and its answer in Dapr's shape. Requests and answers are the Dapr protos; the HTTP adapter
//! maps them from and to JSON as Dapr's protojson does.

pub mod pii;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use dapr::dapr::proto::runtime::v1 as rt;
use rt::conversation_message::MessageTypes;

use crate::components::conversation::{
    Conversation, ConverseRequest, ConverseResponse, Message, Part, Role, Tool, ToolCall, Usage,
};
use crate::sidecar::components::{ComponentTable, Handle};
use crate::sidecar::error::{ApiError, ApiResult};
use crate::sidecar::metrics::Metrics;

#[derive(Clone)]
pub struct ConversationApi {
    table: Arc<ComponentTable>,
    metrics: Arc<Metrics>,
}

fn scrubbed(text: String, scrub: bool) -> String {
    if scrub { pii::scrub(&text) } else { text }
}

const TOOL_CHOICE_RULE: &str =
    "tool choice must be 'auto', 'none', 'required', or a specific tool name matching the tools available to be used";

impl ConversationApi {
    pub fn new(table: Arc<ComponentTable>, metrics: Arc<Metrics>) -> Self {
        ConversationApi { table, metrics }
    }

    fn component(&self, name: &str) -> ApiResult<Handle<dyn Conversation>> {
        self.table
            .get::<dyn Conversation>(name)
            .ok_or_else(|| ApiError::conversation_not_found(name))
    }

    /// Calls the component, recording Dapr's conversation metrics.
    async fn call(&self, component: &Handle<dyn Conversation>, req: &ConverseRequest) -> ApiResult<ConverseResponse> {
        let started = Instant::now();
        let result = component.converse(req).await;
        self.metrics
            .conversation(component.name(), result.is_ok(), started.elapsed());
        result.map_err(|e| ApiError::conversation_invoke(component.name(), &e.0))
    }

    /// `ConverseAlpha1`: one text per input; one result per output of the component (its first choice's text).
    pub async fn converse_alpha1(&self, req: rt::ConversationRequest) -> ApiResult<rt::ConversationResponse> {
        let component = self.component(&req.name)?;
        if req.inputs.is_empty() {
            return Err(ApiError::conversation_missing_inputs(&req.name));
        }
        let messages = req
            .inputs
            .iter()
            .map(|i| Message {
                role: Role::from_name(i.role.as_deref().unwrap_or_default()),
                parts: vec![Part::Text(scrubbed(i.content.clone(), i.scrub_pii == Some(true)))],
            })
            .collect();
        let request = ConverseRequest {
            messages,
            temperature: req.temperature.unwrap_or_default(),
            ..Default::default()
        };
        let resp = self.call(&component, &request).await?;
        let scrub = req.scrub_pii == Some(true);
        let outputs = resp
            .outputs
            .into_iter()
            .map(|o| rt::ConversationResult {
                result: scrubbed(
                    o.choices.into_iter().next().map(|c| c.content).unwrap_or_default(),
                    scrub,
                ),
                parameters: req.parameters.clone(),
            })
            .collect();
        Ok(rt::ConversationResponse {
            context_id: req.context_id.filter(|c| !c.is_empty()),
            outputs,
        })
    }

    /// `ConverseAlpha2`: messages by role, tools and tool calls, structured output; choices and usage back.
    pub async fn converse_alpha2(
        &self,
        req: rt::ConversationRequestAlpha2,
    ) -> ApiResult<rt::ConversationResponseAlpha2> {
        let name = req.name.clone();
        let component = self.component(&name)?;
        if req.inputs.is_empty() {
            return Err(ApiError::conversation_missing_inputs(&name));
        }
        let invalid = |detail: &str| ApiError::conversation_invalid_params(&name, detail);
        let mut messages = vec![];
        for input in &req.inputs {
            let scrub = input.scrub_pii == Some(true);
            let texts = |content: &[rt::ConversationMessageContent]| -> Vec<Part> {
                content
                    .iter()
                    .map(|c| Part::Text(scrubbed(c.text.clone(), scrub)))
                    .collect()
            };
            for message in &input.messages {
                let m = match &message.message_types {
                    None => return Err(invalid("message type cannot be nil")),
                    Some(MessageTypes::OfDeveloper(m)) => Message {
                        role: Role::User,
                        parts: texts(&m.content),
                    },
                    Some(MessageTypes::OfUser(m)) => Message {
                        role: Role::User,
                        parts: texts(&m.content),
                    },
                    Some(MessageTypes::OfSystem(m)) => Message {
                        role: Role::System,
                        parts: texts(&m.content),
                    },
                    Some(MessageTypes::OfAssistant(m)) => {
                        let mut parts = texts(&m.content);
                        for call in &m.tool_calls {
                            let Some(rt::conversation_tool_calls::ToolTypes::Function(f)) = &call.tool_types else {
                                return Err(invalid("tool types cannot be nil"));
                            };
                            parts.push(Part::ToolCall(ToolCall {
                                id: call.id.clone().unwrap_or_default(),
                                name: f.name.clone(),
                                arguments: f.arguments.clone(),
                            }));
                        }
                        Message {
                            role: Role::Assistant,
                            parts,
                        }
                    }
                    Some(MessageTypes::OfTool(m)) => Message {
                        role: Role::Tool,
                        parts: m
                            .content
                            .iter()
                            .map(|c| Part::ToolResult {
                                id: m.tool_id.clone().unwrap_or_default(),
                                name: m.name.clone(),
                                content: scrubbed(c.text.clone(), scrub),
                            })
                            .collect(),
                    },
                };
                messages.push(m);
            }
        }
        let tools: Vec<Tool> = req
            .tools
            .iter()
            .filter_map(|t| {
                let Some(rt::conversation_tools::ToolTypes::Function(f)) = &t.tool_types else {
                    return None;
                };
                Some(Tool {
                    name: f.name.clone(),
                    description: f.description.clone(),
                    parameters: Some(f.parameters.as_ref().map(struct_to_json).unwrap_or_else(empty_object)),
                })
            })
            .collect();
        let mut tool_choice = req.tool_choice.clone().unwrap_or_default();
        if tool_choice.is_empty() && !req.tools.is_empty() {
            tool_choice = "auto".into();
        }
        match tool_choice.as_str() {
            "auto" | "none" | "" => {}
            "required" if req.tools.is_empty() => return Err(invalid(TOOL_CHOICE_RULE)),
            "required" => {}
            chosen => {
                if !req.tools.is_empty() && !tools.iter().any(|t| t.name == chosen) {
                    return Err(invalid(
                        "tool choice selected was not found. Must be 'auto', 'none', 'required', or a specific tool name matching the tools available to be used",
                    ));
                }
            }
        }
        let prompt_cache_retention = match &req.prompt_cache_retention {
            None => None,
            Some(d) => Some(
                std::time::Duration::try_from(*d)
                    .map_err(|_| invalid("prompt cache retention must be a positive duration"))?,
            ),
        };
        let request = ConverseRequest {
            messages,
            tools,
            tool_choice: (!tool_choice.is_empty()).then_some(tool_choice),
            temperature: req.temperature.unwrap_or_default(),
            metadata: req
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            response_format: req.response_format.as_ref().map(|s| match struct_to_json(s) {
                serde_json::Value::Object(m) => m,
                _ => Default::default(),
            }),
            prompt_cache_retention,
        };
        let resp = self.call(&component, &request).await?;
        let scrub = req.scrub_pii == Some(true);
        let usage = resp.usage.map(usage_proto);
        let model = (!resp.model.is_empty()).then(|| resp.model.clone());
        let outputs = resp
            .outputs
            .into_iter()
            .map(|o| rt::ConversationResultAlpha2 {
                choices: o
                    .choices
                    .into_iter()
                    .map(|c| rt::ConversationResultChoices {
                        finish_reason: c.finish_reason,
                        index: c.index,
                        message: Some(rt::ConversationResultMessage {
                            content: scrubbed(c.content, scrub),
                            tool_calls: c.tool_calls.into_iter().map(tool_call_proto).collect(),
                        }),
                    })
                    .collect(),
                model: model.clone(),
                usage,
            })
            .collect();
        Ok(rt::ConversationResponseAlpha2 {
            context_id: req.context_id.filter(|c| !c.is_empty()),
            outputs,
        })
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn tool_call_proto(c: ToolCall) -> rt::ConversationToolCalls {
    rt::ConversationToolCalls {
        id: (!c.id.is_empty()).then_some(c.id),
        tool_types: Some(rt::conversation_tool_calls::ToolTypes::Function(
            rt::ConversationToolCallsOfFunction {
                name: c.name,
                arguments: c.arguments,
            },
        )),
    }
}

fn usage_proto(u: Usage) -> rt::ConversationResultAlpha2CompletionUsage {
    rt::ConversationResultAlpha2CompletionUsage {
        completion_tokens: u.completion_tokens,
        prompt_tokens: u.prompt_tokens,
        total_tokens: u.total_tokens,
        completion_tokens_details: u.completion_details.map(|d| {
            rt::ConversationResultAlpha2CompletionUsageCompletionTokensDetails {
                accepted_prediction_tokens: d.accepted_prediction_tokens,
                audio_tokens: d.audio_tokens,
                reasoning_tokens: d.reasoning_tokens,
                rejected_prediction_tokens: d.rejected_prediction_tokens,
            }
        }),
        prompt_tokens_details: u.prompt_details.map(|d| {
            rt::ConversationResultAlpha2CompletionUsagePromptTokensDetails {
                audio_tokens: d.audio_tokens,
                cached_tokens: d.cached_tokens,
            }
        }),
    }
}

/// A `google.protobuf.Struct` as the JSON object it stands for.
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn json_to_struct(m: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
    }
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}
