//! Conversation conformance: every LLM backend through the runtime's conversation API (so Dapr's checks, PII
//! scrubbing and answer shape are exercised too): `conversation.echo`, and `conversation.openai` and
//! `conversation.ollama` pointed at a chat-completions server the test runs (it answers every text it was sent,
//! and calls every tool it is offered until a tool has answered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dapr::dapr::proto::runtime::v1 as rt;
use rt::conversation_message::MessageTypes;
use serde_json::{Value, json};
use tandem::api::Component;
use tandem::components::Registry;
use tandem::sidecar::Mode;
use tandem::sidecar::components::{ComponentLoader, ComponentTable, References};
use tandem::sidecar::conversation::{ConversationApi, json_to_struct};
use tandem::sidecar::error::ApiError;
use tandem::sidecar::metrics::Metrics;

const KEY: &str = "sk-test";

/// A chat-completions server and the requests (body, authorization header) it received.
struct FakeLlm {
    url: String,
    seen: Arc<Mutex<Vec<(Value, String)>>>,
}

fn texts_of(body: &Value) -> Vec<String> {
    let mut out = vec![];
    for m in body["messages"].as_array().into_iter().flatten() {
        let content = match &m["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str().map(str::to_owned))
                .collect(),
            _ => vec![],
        };
        for c in content {
            if m["role"] == "tool" {
                out.push(format!("tool {}: {c}", m["tool_call_id"].as_str().unwrap_or_default()));
            } else {
                out.push(c);
            }
        }
    }
    out
}

async fn fake_llm() -> FakeLlm {
    use axum::http::{HeaderMap, StatusCode};
    let seen: Arc<Mutex<Vec<(Value, String)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let record = record.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                record.lock().unwrap().push((body.0.clone(), auth.clone()));
                if auth != format!("Bearer {KEY}") && auth != "Bearer ollama" {
                    let err =
                        json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}});
                    return (StatusCode::UNAUTHORIZED, axum::Json(err));
                }
                let texts = texts_of(&body);
                let words = texts.iter().map(|t| t.split_whitespace().count()).sum::<usize>();
                let tools = body["tools"].as_array().cloned().unwrap_or_default();
                let last_is_tool = body["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .is_some_and(|m| m["role"] == "tool");
                let message = if !tools.is_empty() && body["tool_choice"] != "none" && !last_is_tool {
                    let calls: Vec<Value> = tools
                        .iter()
                        .enumerate()
                        .map(|(i, t)| {
                            json!({"id": format!("call_{i}"), "type": "function",
                            "function": {"name": t["function"]["name"], "arguments": "{}"}})
                        })
                        .collect();
                    (
                        json!({"role": "assistant", "content": null, "tool_calls": calls}),
                        "tool_calls",
                    )
                } else {
                    (json!({"role": "assistant", "content": texts.join("\n")}), "stop")
                };
                let answer = json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": message.0, "finish_reason": message.1}],
                    "usage": {"prompt_tokens": words, "completion_tokens": words, "total_tokens": words * 2,
                        "prompt_tokens_details": {"cached_tokens": 1}},
                });
                (StatusCode::OK, axum::Json(answer))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeLlm {
        url: format!("http://{addr}/v1"),
        seen,
    }
}

struct Ctx {
    api: ConversationApi,
    backend: &'static str,
    llm: FakeLlm,
}

async fn load(components: &[Component]) -> Result<ConversationApi, String> {
    let table = Arc::new(ComponentTable::default());
    let references = References::new(table.clone(), "conf", "", Mode::Standalone);
    ComponentLoader::new(
        Registry::builtin(),
        table.clone(),
        references,
        Arc::default(),
        "conf",
        "",
    )
    .load_all(components)
    .await
    .map_err(|e| e.to_string())?;
    Ok(ConversationApi::new(table, Arc::new(Metrics::new("conf"))))
}

async fn ctx(backend: &'static str) -> Ctx {
    let llm = fake_llm().await;
    let component = match backend {
        "echo" => Component::new("llm", "conversation.echo", &[]),
        "openai" => Component::new(
            "llm",
            "conversation.openai",
            &[("key", KEY), ("model", "test-model"), ("endpoint", &llm.url)],
        ),
        "ollama" => Component::new(
            "llm",
            "conversation.ollama",
            &[("model", "llama-test"), ("endpoint", &llm.url)],
        ),
        other => panic!("unknown backend {other}"),
    };
    let api = load(&[component]).await.unwrap();
    Ctx { api, backend, llm }
}

fn text(t: &str) -> Vec<rt::ConversationMessageContent> {
    vec![rt::ConversationMessageContent { text: t.into() }]
}

fn user(t: &str) -> rt::ConversationMessage {
    rt::ConversationMessage {
        message_types: Some(MessageTypes::OfUser(rt::ConversationMessageOfUser {
            name: None,
            content: text(t),
        })),
    }
}

fn system(t: &str) -> rt::ConversationMessage {
    rt::ConversationMessage {
        message_types: Some(MessageTypes::OfSystem(rt::ConversationMessageOfSystem {
            name: None,
            content: text(t),
        })),
    }
}

fn input(messages: Vec<rt::ConversationMessage>, scrub: Option<bool>) -> rt::ConversationInputAlpha2 {
    rt::ConversationInputAlpha2 {
        messages,
        scrub_pii: scrub,
    }
}

fn request(inputs: Vec<rt::ConversationInputAlpha2>) -> rt::ConversationRequestAlpha2 {
    rt::ConversationRequestAlpha2 {
        name: "llm".into(),
        inputs,
        ..Default::default()
    }
}

fn weather_tool() -> rt::ConversationTools {
    let params = json!({"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string"}}});
    rt::ConversationTools {
        tool_types: Some(rt::conversation_tools::ToolTypes::Function(
            rt::ConversationToolsFunction {
                name: "get_weather".into(),
                description: Some("the weather at a place".into()),
                parameters: Some(json_to_struct(params.as_object().unwrap())),
            },
        )),
    }
}

/// The first choice of the first output.
fn first(resp: &rt::ConversationResponseAlpha2) -> &rt::ConversationResultChoices {
    &resp.outputs.first().expect("an output").choices[0]
}

fn content(resp: &rt::ConversationResponseAlpha2) -> &str {
    &first(resp).message.as_ref().expect("a message").content
}

async fn texts_come_back_with_usage(c: Ctx) {
    let mut req = request(vec![input(
        vec![system("You are a helpful assistant"), user("well hello there")],
        None,
    )]);
    req.context_id = Some("ctx-1".into());
    let resp = c.api.converse_alpha2(req).await.unwrap();
    assert_eq!(resp.context_id.as_deref(), Some("ctx-1"), "{}", c.backend);
    let got = content(&resp);
    assert!(
        got.contains("You are a helpful assistant") && got.contains("well hello there"),
        "{}: {got:?}",
        c.backend
    );
    assert_eq!(first(&resp).finish_reason, "stop", "{}", c.backend);
    let usage = resp.outputs[0].usage.expect("usage");
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens,
        "{}",
        c.backend
    );
    assert!(usage.total_tokens >= 14, "{}: {usage:?}", c.backend);
}

async fn offered_tools_are_called(c: Ctx) {
    let mut req = request(vec![input(vec![user("what is the weather in Paris?")], None)]);
    req.tools = vec![weather_tool()];
    let resp = c.api.converse_alpha2(req).await.unwrap();
    let choice = first(&resp);
    assert_eq!(choice.finish_reason, "tool_calls", "{}", c.backend);
    let call = &choice.message.as_ref().unwrap().tool_calls[0];
    assert!(
        call.id.as_ref().is_some_and(|id| !id.is_empty()),
        "{}: {call:?}",
        c.backend
    );
    let Some(rt::conversation_tool_calls::ToolTypes::Function(f)) = &call.tool_types else {
        panic!("{}: no function in {call:?}", c.backend)
    };
    assert_eq!(f.name, "get_weather", "{}", c.backend);
}

async fn tool_results_reach_the_model(c: Ctx) {
    let assistant = rt::ConversationMessage {
        message_types: Some(MessageTypes::OfAssistant(rt::ConversationMessageOfAssistant {
            name: None,
            content: vec![],
            tool_calls: vec![rt::ConversationToolCalls {
                id: Some("call_7".into()),
                tool_types: Some(rt::conversation_tool_calls::ToolTypes::Function(
                    rt::ConversationToolCallsOfFunction {
                        name: "get_weather".into(),
                        arguments: r#"{"location":"Paris"}"#.into(),
                    },
                )),
            }],
        })),
    };
    let tool = rt::ConversationMessage {
        message_types: Some(MessageTypes::OfTool(rt::ConversationMessageOfTool {
            tool_id: Some("call_7".into()),
            name: "get_weather".into(),
            content: text("sunny, 21 degrees"),
        })),
    };
    let resp = c
        .api
        .converse_alpha2(request(vec![input(
            vec![user("what is the weather in Paris?"), assistant, tool],
            None,
        )]))
        .await
        .unwrap();
    let got = content(&resp);
    assert!(
        got.contains("sunny, 21 degrees") && got.contains("call_7"),
        "{}: {got:?}",
        c.backend
    );
}

async fn alpha1_answers_one_result_per_output(c: Ctx) {
    let any = prost_types::Any {
        type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
        value: vec![10, 1, b'x'],
    };
    let req = rt::ConversationRequest {
        name: "llm".into(),
        context_id: Some("c9".into()),
        inputs: vec![rt::ConversationInput {
            content: "what is dapr".into(),
            role: Some("user".into()),
            scrub_pii: None,
        }],
        parameters: HashMap::from([("p".to_owned(), any.clone())]),
        ..Default::default()
    };
    let resp = c.api.converse_alpha1(req).await.unwrap();
    assert_eq!(resp.context_id.as_deref(), Some("c9"));
    assert_eq!(resp.outputs.len(), 1, "{}", c.backend);
    assert!(
        resp.outputs[0].result.contains("what is dapr"),
        "{}: {resp:?}",
        c.backend
    );
    assert_eq!(resp.outputs[0].parameters.get("p"), Some(&any), "{}", c.backend);
}

async fn pii_is_scrubbed_on_the_way_in_and_out(c: Ctx) {
    let msg = "mail me at someone@example.com from 10.8.9.1";
    let resp = c
        .api
        .converse_alpha2(request(vec![input(vec![user(msg)], Some(true))]))
        .await
        .unwrap();
    assert_eq!(
        content(&resp),
        "mail me at <EMAIL_ADDRESS> from <IP>",
        "{}: the model never saw the address",
        c.backend
    );
    if c.backend != "echo" {
        let sent = c.llm.seen.lock().unwrap().last().unwrap().0.clone();
        assert!(!sent.to_string().contains("someone@example.com"), "{sent}");
    }
    let mut req = request(vec![input(vec![user(msg)], None)]);
    req.scrub_pii = Some(true);
    let resp = c.api.converse_alpha2(req).await.unwrap();
    assert_eq!(content(&resp), "mail me at <EMAIL_ADDRESS> from <IP>", "{}", c.backend);
    let resp = c
        .api
        .converse_alpha2(request(vec![input(vec![user(msg)], None)]))
        .await
        .unwrap();
    assert_eq!(content(&resp), msg, "{}: nothing scrubbed unless asked", c.backend);
}

fn assert_error(e: ApiError, status: u16, code: &str, text: &str) {
    assert_eq!((e.status, e.code), (status, code), "{e}");
    assert!(e.message.contains(text), "{e}");
}

async fn dapr_checks(c: Ctx) {
    let mut missing = request(vec![input(vec![user("x")], None)]);
    missing.name = "nope".into();
    let e = c.api.converse_alpha2(missing).await.unwrap_err();
    assert_error(
        e,
        400,
        "ERR_CONVERSATION_NOT_FOUND",
        "failed finding conversation component nope",
    );
    let e = c.api.converse_alpha2(request(vec![])).await.unwrap_err();
    assert_error(e, 400, "ERR_CONVERSATION_MISSING_INPUTS", "missing inputs in request");
    let e = c
        .api
        .converse_alpha1(rt::ConversationRequest {
            name: "llm".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(e, 400, "ERR_CONVERSATION_MISSING_INPUTS", "missing inputs");
    let empty = rt::ConversationMessage { message_types: None };
    let e = c
        .api
        .converse_alpha2(request(vec![input(vec![empty], None)]))
        .await
        .unwrap_err();
    assert_error(e, 400, "ERR_CONVERSATION_INVALID_PARMS", "message type cannot be nil");
    let typeless = rt::ConversationMessage {
        message_types: Some(MessageTypes::OfAssistant(rt::ConversationMessageOfAssistant {
            tool_calls: vec![rt::ConversationToolCalls {
                id: Some("call_1".into()),
                tool_types: None,
            }],
            ..Default::default()
        })),
    };
    let e = c
        .api
        .converse_alpha2(request(vec![input(vec![typeless], None)]))
        .await
        .unwrap_err();
    assert_error(e, 400, "ERR_CONVERSATION_INVALID_PARMS", "tool types cannot be nil");
    let mut required = request(vec![input(vec![user("x")], None)]);
    required.tool_choice = Some("required".into());
    let e = c.api.converse_alpha2(required).await.unwrap_err();
    assert_error(e, 400, "ERR_CONVERSATION_INVALID_PARMS", "tool choice must be");
    let mut unknown = request(vec![input(vec![user("x")], None)]);
    unknown.tools = vec![weather_tool()];
    unknown.tool_choice = Some("get_time".into());
    let e = c.api.converse_alpha2(unknown).await.unwrap_err();
    assert_error(
        e,
        400,
        "ERR_CONVERSATION_INVALID_PARMS",
        "tool choice selected was not found",
    );
    let mut named = request(vec![input(vec![user("x")], None)]);
    named.tools = vec![weather_tool()];
    named.tool_choice = Some("get_weather".into());
    c.api.converse_alpha2(named).await.unwrap();
}

macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::ctx(stringify!($backend)).await).await;
                }
            )*
        }
    };
}

suite!(echo: texts_come_back_with_usage, offered_tools_are_called, tool_results_reach_the_model,
    alpha1_answers_one_result_per_output, pii_is_scrubbed_on_the_way_in_and_out, dapr_checks);
suite!(openai: texts_come_back_with_usage, offered_tools_are_called, tool_results_reach_the_model,
    alpha1_answers_one_result_per_output, pii_is_scrubbed_on_the_way_in_and_out, dapr_checks);
suite!(ollama: texts_come_back_with_usage, offered_tools_are_called, tool_results_reach_the_model,
    alpha1_answers_one_result_per_output, pii_is_scrubbed_on_the_way_in_and_out, dapr_checks);

/// The answer Dapr's own integration test expects of its echo component, field for field.
#[tokio::test]
async fn echo_answers_as_daprs() {
    let c = ctx("echo").await;
    let mut req = request(vec![
        input(vec![user("well hello there")], Some(false)),
        input(vec![system("You are a helpful assistant")], Some(true)),
    ]);
    let params = json!({"type": "object", "properties": {"param1": {"type": "string"}}, "required": ["param1"]});
    req.tools = vec![rt::ConversationTools {
        tool_types: Some(rt::conversation_tools::ToolTypes::Function(
            rt::ConversationToolsFunction {
                name: "test_function".into(),
                description: Some("A test function".into()),
                parameters: Some(json_to_struct(params.as_object().unwrap())),
            },
        )),
    }];
    req.tool_choice = Some("auto".into());
    let resp = c.api.converse_alpha2(req).await.unwrap();
    let want = rt::ConversationResponseAlpha2 {
        context_id: None,
        outputs: vec![rt::ConversationResultAlpha2 {
            choices: vec![rt::ConversationResultChoices {
                finish_reason: "tool_calls".into(),
                index: 0,
                message: Some(rt::ConversationResultMessage {
                    content: "well hello there\nYou are a helpful assistant".into(),
                    tool_calls: vec![rt::ConversationToolCalls {
                        id: Some("0".into()),
                        tool_types: Some(rt::conversation_tool_calls::ToolTypes::Function(
                            rt::ConversationToolCallsOfFunction {
                                name: "test_function".into(),
                                arguments: "param1".into(),
                            },
                        )),
                    }],
                }),
            }],
            model: None,
            usage: Some(rt::ConversationResultAlpha2CompletionUsage {
                completion_tokens: 8,
                prompt_tokens: 8,
                total_tokens: 16,
                ..Default::default()
            }),
        }],
    };
    assert_eq!(resp, want);
}

#[tokio::test]
async fn openai_sends_model_tools_and_settings() {
    let c = ctx("openai").await;
    let mut req = request(vec![input(vec![system("be brief"), user("hi")], None)]);
    req.tools = vec![weather_tool()];
    req.temperature = Some(0.5);
    req.metadata = HashMap::from([("trace".to_owned(), "t1".to_owned())]);
    req.response_format = Some(json_to_struct(
        json!({"type": "object", "properties": {"answer": {"type": "string"}}})
            .as_object()
            .unwrap(),
    ));
    req.prompt_cache_retention = Some(prost_types::Duration {
        seconds: 86400,
        nanos: 0,
    });
    let resp = c.api.converse_alpha2(req).await.unwrap();
    assert_eq!(resp.outputs[0].model.as_deref(), Some("test-model"));
    let details = resp.outputs[0]
        .usage
        .unwrap()
        .prompt_tokens_details
        .expect("prompt details");
    assert_eq!(details.cached_tokens, 1);
    let (body, auth) = c.llm.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(auth, format!("Bearer {KEY}"));
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["tool_choice"], "auto", "auto is the default when tools are given");
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "be brief"}));
    assert_eq!(body["messages"][1], json!({"role": "user", "content": "hi"}));
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["properties"]["location"]["type"],
        "string"
    );
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["name"], "response");
    assert_eq!(
        body["metadata"],
        json!({"trace": "t1", "prompt_cache_retention": "24h0m0s"})
    );
}

#[tokio::test]
async fn llm_server_failures_are_invoke_errors() {
    let llm = fake_llm().await;
    let wrong_key = Component::new(
        "llm",
        "conversation.openai",
        &[("key", "sk-wrong"), ("endpoint", &llm.url)],
    );
    let api = load(&[wrong_key]).await.unwrap();
    let e = api
        .converse_alpha2(request(vec![input(vec![user("hi")], None)]))
        .await
        .unwrap_err();
    assert_error(e, 500, "ERR_CONVERSATION_INVOKE", "401: Incorrect API key provided");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = Component::new(
        "llm",
        "conversation.ollama",
        &[("endpoint", &format!("http://{closed}/v1"))],
    );
    let api = load(&[down]).await.unwrap();
    let e = api
        .converse_alpha1(rt::ConversationRequest {
            name: "llm".into(),
            inputs: vec![rt::ConversationInput {
                content: "hi".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(
        e,
        500,
        "ERR_CONVERSATION_INVOKE",
        "failed conversing with component llm",
    );
}

#[tokio::test]
async fn openai_metadata_is_checked_at_load() {
    let no_key = Component::new("llm", "conversation.openai", &[("model", "m")]);
    assert!(load(&[no_key]).await.err().unwrap().contains("key"));
    let azure = Component::new(
        "llm",
        "conversation.openai",
        &[
            ("key", "k"),
            ("apiType", "azure"),
            ("endpoint", "https://x.openai.azure.com"),
        ],
    );
    assert!(load(&[azure]).await.err().unwrap().contains("apiVersion"));
    let bad_url = Component::new("llm", "conversation.ollama", &[("endpoint", "ftp://x")]);
    assert!(load(&[bad_url]).await.err().unwrap().contains("endpoint"));
}

#[tokio::test]
async fn cache_ttl_answers_repeated_requests_from_memory() {
    let llm = fake_llm().await;
    let cached = Component::new(
        "llm",
        "conversation.openai",
        &[("key", KEY), ("endpoint", &llm.url), ("cacheTTL", "10m")],
    );
    let api = load(&[cached]).await.unwrap();
    let ask = |t: &str| request(vec![input(vec![user(t)], None)]);
    let first = api.converse_alpha2(ask("same question")).await.unwrap();
    let again = api.converse_alpha2(ask("same question")).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(
        llm.seen.lock().unwrap().len(),
        1,
        "the second answer came from the cache"
    );
    api.converse_alpha2(ask("another question")).await.unwrap();
    assert_eq!(
        llm.seen.lock().unwrap().len(),
        2,
        "a different request reaches the model"
    );

    let uncached = Component::new("llm", "conversation.openai", &[("key", KEY), ("endpoint", &llm.url)]);
    let api = load(&[uncached]).await.unwrap();
    api.converse_alpha2(ask("same question")).await.unwrap();
    api.converse_alpha2(ask("same question")).await.unwrap();
    assert_eq!(
        llm.seen.lock().unwrap().len(),
        4,
        "without cacheTTL every request reaches the model"
    );
}
