//! Access control for service invocation (Dapr's `accessControl` Configuration): which caller app may invoke
//! which operation of this app. Compiled once from the spec; [`AccessControl::check`] is the only entry point.

use std::collections::HashMap;

use crate::api::configuration::{AccessControlSpec, AppPolicy};

/// Trust domain of an identity that does not name one (Dapr's `public`).
pub const DEFAULT_TRUST_DOMAIN: &str = "public";

/// Who is calling. Today the identity the calling sidecar asserts; later the mTLS SPIFFE identity
/// `spiffe://<trust_domain>/ns/<namespace>/<app_id>`. An empty `app_id` means "unknown caller", which only the
/// global default action can allow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallerIdentity {
    pub app_id: String,
    pub namespace: String,
    /// Empty means [`DEFAULT_TRUST_DOMAIN`].
    pub trust_domain: String,
}

impl CallerIdentity {
    fn trust_domain(&self) -> &str {
        if self.trust_domain.is_empty() {
            DEFAULT_TRUST_DOMAIN
        } else {
            &self.trust_domain
        }
    }

    fn spiffe_id(&self) -> String {
        format!("spiffe://{}/ns/{}/{}", self.trust_domain(), self.namespace, self.app_id)
    }
}

/// Which level of the spec decided (Dapr reports allowed/blocked counts per level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionScope {
    /// No access control is configured.
    Unrestricted,
    /// The global `defaultAction`.
    Global,
    /// The caller's app policy (its `defaultAction` or one of its operations).
    App,
}

/// The verdict on one call, with a sentence saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    pub scope: DecisionScope,
}

/// One operation rule: the action per HTTP verb (`*` = any verb) and the action for gRPC calls.
#[derive(Debug)]
struct OperationRule {
    name: String,
    verb_actions: HashMap<String, String>,
    action: String,
}

#[derive(Debug)]
struct CompiledPolicy {
    trust_domain: String,
    namespace: String,
    default_action: String,
    rules: Vec<OperationRule>,
    /// Operation names as written (for gRPC apps).
    exact: OperationTrie,
    /// Operation names lower-cased (for HTTP apps, whose paths match case-insensitively).
    lower: OperationTrie,
}

/// The compiled `accessControl` section of a Configuration.
#[derive(Debug, Default)]
pub struct AccessControl {
    /// `None` when no access control is configured: every call is allowed.
    list: Option<AccessList>,
}

#[derive(Debug)]
struct AccessList {
    default_action: String,
    /// This app's own trust domain (`public` unless set); reported, not used for matching.
    trust_domain: String,
    /// Keyed by (appId, namespace) of the caller.
    policies: HashMap<(String, String), CompiledPolicy>,
}

impl AccessControl {
    /// Compiles the spec. An absent or empty spec allows everything; policies present without a global
    /// `defaultAction` deny by default. A policy without `appId`, `trustDomain` or `namespace` is refused,
    /// as Dapr refuses to start with it.
    pub fn new(spec: Option<&AccessControlSpec>) -> Result<AccessControl, String> {
        let Some(spec) = spec else {
            return Ok(AccessControl::default());
        };
        if spec.trust_domain.is_empty() && spec.default_action.is_empty() && spec.policies.is_empty() {
            return Ok(AccessControl::default());
        }
        // Dapr: no global default action means deny, unless an explicitly empty policy list was given; an
        // empty list cannot be told apart from an absent one here, so the safer deny applies to both.
        let default_action = if spec.default_action.is_empty() {
            "deny".to_owned()
        } else {
            spec.default_action.to_lowercase()
        };
        let trust_domain = if spec.trust_domain.is_empty() {
            DEFAULT_TRUST_DOMAIN.to_owned()
        } else {
            spec.trust_domain.clone()
        };
        validate(&spec.policies)?;
        let mut policies = HashMap::new();
        for p in &spec.policies {
            policies.insert((p.app_id.clone(), p.namespace.clone()), compile_policy(p));
        }
        Ok(AccessControl {
            list: Some(AccessList {
                default_action,
                trust_domain,
                policies,
            }),
        })
    }

    /// True when access control is configured (every call goes through [`AccessControl::check`]).
    pub fn is_configured(&self) -> bool {
        self.list.is_some()
    }

    /// This app's trust domain (`public` unless the spec sets one).
    pub fn trust_domain(&self) -> &str {
        self.list
            .as_ref()
            .map_or(DEFAULT_TRUST_DOMAIN, |l| l.trust_domain.as_str())
    }

    /// May `caller` invoke `operation` (the method, as received) with `verb` (the HTTP verb, absent for gRPC
    /// invocations)? `app_protocol_http` is whether this app speaks HTTP: then operations match case-insensitively
    /// and the verb decides; for gRPC apps the operation's action applies whatever the verb. A method that
    /// [`normalize_method`] rejects is denied here; Dapr answers it with `InvalidArgument` before the ACL, so the
    /// invocation layer should normalise first.
    pub fn check(
        &self,
        caller: &CallerIdentity,
        operation: &str,
        verb: Option<&str>,
        app_protocol_http: bool,
    ) -> Decision {
        let Some(list) = &self.list else {
            return Decision {
                allowed: true,
                reason: "no access control policy is configured".to_owned(),
                scope: DecisionScope::Unrestricted,
            };
        };
        let verb = verb
            .map(str::to_ascii_uppercase)
            .filter(|v| !v.is_empty() && v != "NONE");
        let operation = match normalize_method(operation) {
            Ok(op) => op,
            Err(e) => {
                return Decision {
                    allowed: false,
                    reason: format!("invalid method: {e}"),
                    scope: DecisionScope::Global,
                };
            }
        };
        let (action, scope, why) = decide(list, caller, &operation, verb.as_deref(), app_protocol_http);
        let allowed = action.eq_ignore_ascii_case("allow");
        let reason = if allowed {
            format!("access control policy allowed access: {why}")
        } else {
            format!(
                "access control policy has denied access to id: {} operation: {} verb: {} ({why})",
                caller.spiffe_id(),
                operation,
                verb.as_deref().unwrap_or("NONE"),
            )
        };
        Decision { allowed, reason, scope }
    }
}

fn validate(policies: &[AppPolicy]) -> Result<(), String> {
    let mut problems = vec![];
    for (i, p) in policies.iter().enumerate() {
        let who = if p.app_id.is_empty() {
            format!("policy #{}", i + 1)
        } else {
            format!("policy #{} (appId {:?})", i + 1, p.app_id)
        };
        let missing: Vec<&str> = [
            ("appId", p.app_id.is_empty()),
            ("trustDomain", p.trust_domain.is_empty()),
            ("namespace", p.namespace.is_empty()),
        ]
        .into_iter()
        .filter_map(|(field, empty)| empty.then_some(field))
        .collect();
        if !missing.is_empty() {
            problems.push(format!("{who} is missing {}", missing.join(", ")));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "invalid accessControl spec: {}; every policy needs appId, trustDomain and namespace",
            problems.join("; ")
        ))
    }
}

fn is_known_action(action: &str) -> bool {
    action.eq_ignore_ascii_case("allow") || action.eq_ignore_ascii_case("deny")
}

fn compile_policy(p: &AppPolicy) -> CompiledPolicy {
    if !p.default_action.is_empty() && !is_known_action(&p.default_action) {
        tracing::warn!(
            app_id = %p.app_id,
            "access control defaultAction {:?} is neither allow nor deny; it denies",
            p.default_action
        );
    }
    let mut rules = Vec::with_capacity(p.operations.len());
    let mut exact = OperationTrie::default();
    let mut lower = OperationTrie::default();
    for op in &p.operations {
        let name = if op.name.starts_with('/') {
            op.name.clone()
        } else {
            format!("/{}", op.name)
        };
        if !is_known_action(&op.action) {
            tracing::warn!(
                app_id = %p.app_id,
                operation = %op.name,
                "access control action {:?} is neither allow nor deny; it denies",
                op.action
            );
        }
        let mut verb_actions = HashMap::new();
        for verb in &op.http_verb {
            verb_actions.insert(verb.clone(), op.action.clone());
        }
        let index = rules.len();
        exact.insert(&name, index);
        lower.insert(&name.to_lowercase(), index);
        rules.push(OperationRule {
            name,
            verb_actions,
            action: op.action.clone(),
        });
    }
    CompiledPolicy {
        trust_domain: p.trust_domain.clone(),
        namespace: p.namespace.clone(),
        default_action: p.default_action.clone(),
        rules,
        exact,
        lower,
    }
}

/// Dapr's decision procedure; returns the action, who decided, and why.
fn decide(
    list: &AccessList,
    caller: &CallerIdentity,
    operation: &str,
    verb: Option<&str>,
    http: bool,
) -> (String, DecisionScope, String) {
    let global = |why: String| {
        (
            list.default_action.clone(),
            DecisionScope::Global,
            format!("{why}; global default action {:?} applies", list.default_action),
        )
    };
    if caller.app_id.is_empty() {
        return global("the caller's identity is unknown".to_owned());
    }
    let key = (caller.app_id.clone(), caller.namespace.clone());
    let Some(policy) = list.policies.get(&key) else {
        return global(format!(
            "no policy for app {:?} in namespace {:?}",
            caller.app_id, caller.namespace
        ));
    };
    if policy.trust_domain != caller.trust_domain() {
        return global(format!(
            "the policy for app {:?} is for trust domain {:?}, the caller is in {:?}",
            caller.app_id,
            policy.trust_domain,
            caller.trust_domain()
        ));
    }
    if policy.namespace != caller.namespace {
        return global(format!(
            "the policy for app {:?} is for namespace {:?}",
            caller.app_id, policy.namespace
        ));
    }
    let (mut action, scope, mut why) = if policy.default_action.is_empty() {
        (
            list.default_action.clone(),
            DecisionScope::Global,
            format!(
                "app {:?} has no default action; global default action {:?}",
                caller.app_id, list.default_action
            ),
        )
    } else {
        (
            policy.default_action.clone(),
            DecisionScope::App,
            format!("default action {:?} of app {:?}", policy.default_action, caller.app_id),
        )
    };
    let mut operation = if operation.starts_with('/') {
        operation.to_owned()
    } else {
        format!("/{operation}")
    };
    if http {
        operation = operation.to_lowercase();
    }
    let trie = if http { &policy.lower } else { &policy.exact };
    let Some(rule) = trie.search(&operation).map(|i| &policy.rules[i]) else {
        return (action, scope, why);
    };
    if !http {
        action = rule.action.clone();
        why = format!("operation {:?} of app {:?}", rule.name, caller.app_id);
    } else if let Some(verb) = verb {
        if let Some(a) = rule.verb_actions.get(verb) {
            action = a.clone();
            why = format!("operation {:?} verb {verb}", rule.name);
        } else if let Some(a) = rule.verb_actions.get("*") {
            action = a.clone();
            why = format!("operation {:?} verb *", rule.name);
        } else {
            why = format!("operation {:?} lists no verb {verb}; {why}", rule.name);
        }
    } else {
        // An HTTP app called without a verb: only the app's own default action can allow it.
        action = policy.default_action.clone();
        why = format!(
            "operation {:?} called without an HTTP verb; default action {:?} of app {:?}",
            rule.name, policy.default_action, caller.app_id
        );
    }
    (action, scope, why)
}

/// Dapr's method normalisation: rejects `#`, `?`, NUL and control characters, then resolves `.`/`..`
/// segments and repeated slashes the way Go's `path.Clean` does; a leading `..` cannot climb above the root.
/// The caller percent-decodes HTTP paths first.
pub fn normalize_method(method: &str) -> Result<String, String> {
    if let Some(c) = method.chars().find(|c| matches!(c, '#' | '?' | '\0')) {
        return Err(format!("method contains forbidden character {c:?}: {method:?}"));
    }
    if let Some(i) = method.bytes().position(|b| b < 0x20 || b == 0x7f) {
        return Err(format!("method contains control character at position {i}: {method:?}"));
    }
    let rooted = method.starts_with('/');
    let mut parts: Vec<&str> = vec![];
    for seg in method.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    // Rootless paths keep leading `..` in path.Clean; Dapr strips them.
    let first_real = parts.iter().position(|p| *p != "..").unwrap_or(parts.len());
    let joined = parts[first_real..].join("/");
    Ok(if rooted { format!("/{joined}") } else { joined })
}

/// Dapr's operation trie: one node per `/segment`; a segment may hold `*` wildcards (within the segment),
/// `/*` matches one final segment, `/**` any number of segments, and a rule on a node also covers every
/// path below it. The first matching child (in rule order) wins, with no backtracking — as in Dapr.
#[derive(Debug, Default)]
struct OperationTrie {
    nodes: Vec<TrieNode>,
    root_children: Vec<usize>,
}

#[derive(Debug)]
struct TrieNode {
    segment: String,
    rule: Option<usize>,
    children: Vec<usize>,
}

const ONE_LEVEL: &str = "/*";
const ANY_LEVELS: &str = "/**";

impl OperationTrie {
    fn children(&self, node: Option<usize>) -> &[usize] {
        match node {
            None => &self.root_children,
            Some(n) => &self.nodes[n].children,
        }
    }

    fn insert(&mut self, operation: &str, rule: usize) {
        let segments: Vec<String> = operation.split('/').skip(1).map(|s| format!("/{s}")).collect();
        let mut node: Option<usize> = None;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let existing = self
                .children(node)
                .iter()
                .copied()
                .find(|&c| self.nodes[c].segment == *segment);
            match existing {
                None => {
                    let id = self.nodes.len();
                    self.nodes.push(TrieNode {
                        segment: segment.clone(),
                        rule: last.then_some(rule),
                        children: vec![],
                    });
                    match node {
                        None => self.root_children.push(id),
                        Some(n) => self.nodes[n].children.push(id),
                    }
                    node = Some(id);
                }
                Some(id) => {
                    if last {
                        // The first rule for an operation wins.
                        self.nodes[id].rule.get_or_insert(rule);
                    }
                    node = Some(id);
                }
            }
        }
    }

    fn find_child(&self, node: Option<usize>, target: &str, is_end: bool) -> Option<usize> {
        for &c in self.children(node) {
            let seg = self.nodes[c].segment.as_str();
            if seg == target {
                return Some(c);
            }
            if seg == ONE_LEVEL {
                if is_end {
                    return Some(c);
                }
                continue;
            }
            if seg == ANY_LEVELS || glob_match(target.as_bytes(), seg.as_bytes()) {
                return Some(c);
            }
        }
        None
    }

    fn search(&self, operation: &str) -> Option<usize> {
        let segments: Vec<&str> = operation.split('/').skip(1).collect();
        let mut node: Option<usize> = None;
        for (i, part) in segments.iter().enumerate() {
            let is_end = i + 1 == segments.len();
            let target = format!("/{part}");
            let found = self.find_child(node, &target, is_end)?;
            node = Some(found);
            let n = &self.nodes[found];
            if let Some(rule) = n.rule {
                if !is_end && n.segment.ends_with(ONE_LEVEL) && !n.segment.ends_with(ANY_LEVELS) {
                    continue;
                }
                return Some(rule);
            } else if is_end {
                return self.find_child(node, ONE_LEVEL, true).and_then(|c| self.nodes[c].rule);
            }
        }
        None
    }
}

/// `*` matches any run of bytes (including none); every other byte matches itself.
fn glob_match(text: &[u8], pattern: &[u8]) -> bool {
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
#[path = "access_control_tests.rs"]
mod tests;
