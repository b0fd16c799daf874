//! A subscription as the runtime runs it, whatever declared it (a Subscription resource, the app's
//! `/dapr/subscribe` or `ListTopicSubscriptions`, a streaming call): its topic, metadata, dead-letter topic, bulk
//! settings, and routes — CEL rules over the CloudEvent (`event.type == "x"`), tried in order, then the default.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

/// Who declared a subscription (what the metadata API reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Declarative,
    Programmatic,
    Streaming,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Declarative => "DECLARATIVE",
            Origin::Programmatic => "PROGRAMMATIC",
            Origin::Streaming => "STREAMING",
        }
    }
}

/// One routing rule; no `matcher` means it always matches (the default route).
#[derive(Clone)]
pub struct Rule {
    pub source: String,
    matcher: Option<Arc<cel::Program>>,
    pub path: String,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rule({:?} -> {:?})", self.source, self.path)
    }
}

impl Rule {
    /// A rule from its CEL source (empty: always matches).
    pub fn new(source: &str, path: &str) -> Result<Rule, String> {
        let source = source.trim();
        let matcher = if source.is_empty() {
            None
        } else {
            let program = std::panic::catch_unwind(|| cel::Program::compile(source))
                .map_err(|_| format!("{source:?} is not a valid CEL expression"))?
                .map_err(|e| format!("{source:?} is not a valid CEL expression: {e}"))?;
            Some(Arc::new(program))
        };
        Ok(Rule {
            source: source.to_owned(),
            matcher,
            path: path.to_owned(),
        })
    }

    /// Whether the event matches: a rule that cannot be evaluated against this event is an error.
    fn matches(&self, event: &cel::Value) -> Result<bool, String> {
        let Some(program) = &self.matcher else {
            return Ok(true);
        };
        static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
        let env = ENV.get_or_init(|| Arc::new(cel::Env::stdlib()));
        let mut ctx = cel::Context::with_env(env.clone());
        ctx.add_variable_from_value("event", event.clone());
        let run = std::panic::AssertUnwindSafe(|| program.execute(&ctx));
        match std::panic::catch_unwind(run) {
            Ok(Ok(cel::Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!("rule {:?} gave {other:?}, not a boolean", self.source)),
            Ok(Err(e)) => Err(format!("evaluating rule {:?}: {e}", self.source)),
            Err(_) => Err(format!("evaluating rule {:?} failed", self.source)),
        }
    }
}

/// A subscription, ready to run.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub pubsub: String,
    pub topic: String,
    pub metadata: BTreeMap<String, String>,
    pub rules: Vec<Rule>,
    pub dead_letter_topic: Option<String>,
    pub bulk: Option<Bulk>,
    pub origin: Origin,
}

/// Bulk delivery settings, bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bulk {
    pub max_messages: usize,
    pub max_await: std::time::Duration,
}

impl Bulk {
    /// Dapr's defaults (100 messages, 1000 ms), with what was asked kept within 1–10000 messages and 0–60 s.
    pub fn new(max_messages: i64, max_await_ms: i64) -> Bulk {
        let max_messages = if max_messages <= 0 {
            100
        } else {
            max_messages.min(10_000) as usize
        };
        let ms = if max_await_ms <= 0 {
            1000
        } else {
            max_await_ms.min(60_000) as u64
        };
        Bulk {
            max_messages,
            max_await: std::time::Duration::from_millis(ms),
        }
    }
}

/// Where an event goes.
#[derive(Debug, PartialEq)]
pub enum Route {
    Path(String),
    /// No rule matched and there is no default.
    NoMatch,
}

impl Subscription {
    /// The subscription's rules: `rules` in order, then `default` (when given).
    pub fn rules(rules: impl IntoIterator<Item = (String, String)>, default: &str) -> Result<Vec<Rule>, String> {
        let mut out = vec![];
        for (m, p) in rules {
            out.push(Rule::new(&m, &p)?);
        }
        if !default.is_empty() {
            out.push(Rule::new("", default)?);
        }
        Ok(out)
    }

    /// The path of the first rule the event matches.
    pub fn route(&self, event: &Map<String, Value>) -> Result<Route, String> {
        if self.rules.iter().all(|r| r.matcher.is_none()) {
            return Ok(self
                .rules
                .first()
                .map(|r| Route::Path(r.path.clone()))
                .unwrap_or(Route::NoMatch));
        }
        let value = cel::to_value(event).map_err(|e| format!("the event cannot be matched: {e}"))?;
        for rule in &self.rules {
            if rule.matches(&value)? {
                return Ok(Route::Path(rule.path.clone()));
            }
        }
        Ok(Route::NoMatch)
    }

    /// The declared subscription from a Subscription resource.
    pub fn declarative(s: &crate::api::Subscription) -> Result<Subscription, String> {
        let spec = &s.spec;
        let rules = Subscription::rules(
            spec.routes.rules.iter().map(|r| (r.match_.clone(), r.path.clone())),
            &spec.routes.default,
        )?;
        Ok(Subscription {
            pubsub: spec.pubsubname.clone(),
            topic: spec.topic.clone(),
            metadata: spec.metadata.clone(),
            rules,
            dead_letter_topic: spec.dead_letter_topic.clone().filter(|t| !t.is_empty()),
            bulk: spec.bulk_subscribe.as_ref().filter(|b| b.enabled).map(|b| {
                Bulk::new(
                    b.max_messages_count.unwrap_or(0).into(),
                    b.max_await_duration_ms.unwrap_or(0).into(),
                )
            }),
            origin: Origin::Declarative,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(rules: Vec<Rule>) -> Subscription {
        Subscription {
            pubsub: "p".into(),
            topic: "t".into(),
            metadata: BTreeMap::new(),
            rules,
            dead_letter_topic: None,
            bulk: None,
            origin: Origin::Programmatic,
        }
    }

    fn event(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn rules_in_order_then_default() {
        let rules = Subscription::rules(
            [
                (r#"event.type == "widget""#.to_owned(), "/widgets".to_owned()),
                ("event.data.price > 100".to_owned(), "/expensive".to_owned()),
            ],
            "/orders",
        )
        .unwrap();
        let s = sub(rules);
        let e = event(serde_json::json!({"type": "widget", "data": {"price": 1}}));
        assert_eq!(s.route(&e).unwrap(), Route::Path("/widgets".into()));
        let e = event(serde_json::json!({"type": "gadget", "data": {"price": 500}}));
        assert_eq!(s.route(&e).unwrap(), Route::Path("/expensive".into()));
        let e = event(serde_json::json!({"type": "gadget", "data": {"price": 5}}));
        assert_eq!(s.route(&e).unwrap(), Route::Path("/orders".into()));
    }

    #[test]
    fn no_default_means_no_match_and_bad_rules_are_refused() {
        let s = sub(Subscription::rules([(r#"event.type == "a""#.to_owned(), "/a".to_owned())], "").unwrap());
        let e = event(serde_json::json!({"type": "b"}));
        assert_eq!(s.route(&e).unwrap(), Route::NoMatch);
        assert!(Rule::new("event.type ==", "/x").is_err());
        // A rule over a field the event lacks cannot be evaluated.
        let s = sub(Subscription::rules([("event.nope.deeper == 1".to_owned(), "/a".to_owned())], "").unwrap());
        assert!(s.route(&e).is_err());
    }

    #[test]
    fn bulk_settings_are_bounded() {
        assert_eq!(Bulk::new(0, 0), Bulk::new(100, 1000));
        assert_eq!(Bulk::new(1_000_000, 10_000_000).max_messages, 10_000);
    }
}
