//! Dapr resiliency: compiles Resiliency resources into policies for service invocation (per app: named targets,
//! then the `DefaultApp*Policy` / `Default*Policy` fallbacks) and for components (per component and direction,
//! then `Default<Kind>Component<Direction>*Policy`, `DefaultComponent<Direction>*Policy`,
//! `DefaultComponent*Policy`, `Default*Policy`), and runs operations under them. Component policies wrap the
//! component's trait object ([`layers`]), not code inside each backend.
//!
//! How Dapr layers it for a call to app X (and how callers should): the outer policy is
//! [`Resiliency::app_policy`]`(X)`, when there is one; inside it, each attempt that reaches the remote sidecar
//! runs under [`Resiliency::builtin_service_retry`] unless [`Resiliency::has_app_target`]`(X)`.

mod breaker;
pub mod layers;
mod policy;
mod retry;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use breaker::{BreakerSettings, BreakerState, CircuitBreaker, Counts};
pub use policy::{Policy, PolicyError, Retryable, Status, builtin_retry};
pub use retry::{Backoff, Exponential, Retry, StatusMatch};

use crate::api::resiliency::TargetPolicy;
use crate::components::Kind;

/// The retry policy name that overrides Dapr's built-in service-invocation retries.
pub const BUILTIN_SERVICE_RETRIES: &str = "DaprBuiltInServiceRetries";
/// Default-policy names Dapr looks up for apps without a target, most specific first.
const DEFAULT_APP_RETRY: [&str; 2] = ["DefaultAppRetryPolicy", "DefaultRetryPolicy"];
const DEFAULT_APP_TIMEOUT: [&str; 2] = ["DefaultAppTimeoutPolicy", "DefaultTimeoutPolicy"];
const DEFAULT_APP_BREAKER: [&str; 2] = ["DefaultAppCircuitBreakerPolicy", "DefaultCircuitBreakerPolicy"];
/// Apps without a target whose default policies (and breakers) are kept at once.
const MAX_DEFAULT_APPS: usize = 1024;
/// Breakers kept per app (one per endpoint) unless `circuitBreakerCacheSize` says otherwise.
const DEFAULT_BREAKER_CACHE: usize = 100;

/// A Resiliency resource that cannot be used, naming the resource and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Resiliency {resource:?}: {field}: {message}")]
pub struct ResiliencyError {
    pub resource: String,
    /// Path of the field within the resource, e.g. `spec.policies.retries.important.duration`.
    pub field: String,
    pub message: String,
}

/// Parses a Go duration as Dapr's Resiliency does: a bare integer is milliseconds; otherwise Go syntax
/// (`1h30m`, `1.5s`, `300ms`, `2us`), or anything [`crate::components::metadata::parse_duration`] accepts.
pub fn parse_go_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    if let Some(d) = go_duration(v) {
        return Ok(d);
    }
    if v.parse::<f64>().is_ok() {
        return Err(format!(
            "{v:?} is not a duration: a bare number means milliseconds and must be a whole number \
             below 2^64; otherwise give a unit (e.g. 1.5s, 300ms)"
        ));
    }
    crate::components::metadata::parse_duration(v)
}

/// Go's `time.ParseDuration` for non-negative values.
pub(crate) fn go_duration(v: &str) -> Option<Duration> {
    let mut rest = v.strip_prefix('+').unwrap_or(v);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += num.parse::<f64>().ok()? * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The policies for calls to one app: a timeout per attempt, a retry policy, and circuit breakers kept per
/// endpoint (Dapr keys them by `<app>:<method>`), at most `circuitBreakerCacheSize` of them, least recently used
/// dropped first.
#[derive(Debug)]
pub struct AppPolicy {
    app_id: String,
    timeout: Option<Duration>,
    retry: Option<Arc<Retry>>,
    breaker: Option<Arc<BreakerSettings>>,
    cache_size: usize,
    breakers: Mutex<BreakerCache>,
}

#[derive(Debug, Default)]
struct BreakerCache {
    tick: u64,
    entries: HashMap<String, (Arc<CircuitBreaker>, u64)>,
}

impl AppPolicy {
    fn new(
        app_id: &str,
        timeout: Option<Duration>,
        retry: Option<Arc<Retry>>,
        breaker: Option<Arc<BreakerSettings>>,
        cache_size: usize,
    ) -> AppPolicy {
        AppPolicy {
            app_id: app_id.to_owned(),
            timeout,
            retry,
            breaker,
            cache_size: cache_size.max(1),
            breakers: Mutex::default(),
        }
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn retry(&self) -> Option<&Retry> {
        self.retry.as_deref()
    }

    /// True when calls may run more than once (the caller must be able to replay the request body).
    pub fn has_retries(&self) -> bool {
        self.retry.as_ref().is_some_and(|r| r.has_retries())
    }

    /// The policy for one endpoint of the app, sharing that endpoint's circuit breaker with earlier calls.
    pub fn endpoint(&self, endpoint: &str) -> Policy {
        let breaker = self.breaker.as_ref().map(|settings| {
            let mut cache = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
            cache.tick += 1;
            let tick = cache.tick;
            if let Some((b, used)) = cache.entries.get_mut(endpoint) {
                *used = tick;
                return b.clone();
            }
            if cache.entries.len() >= self.cache_size {
                let oldest = cache
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    cache.entries.remove(&k);
                }
            }
            let b = Arc::new(CircuitBreaker::new(endpoint, settings.clone()));
            cache.entries.insert(endpoint.to_owned(), (b.clone(), tick));
            b
        });
        Policy::new(
            format!("endpoint[{}, {endpoint}]", self.app_id),
            self.timeout,
            self.retry.clone(),
            breaker,
        )
    }

    /// Runs `op` under this app's policies for `endpoint`; see [`Policy::run`].
    pub async fn run<T, E, F, Fut, C>(&self, endpoint: &str, classify: C, op: F) -> Result<T, PolicyError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable,
        C: Fn(&T) -> Option<Status>,
    {
        self.endpoint(endpoint).run(classify, op).await
    }
}

/// The policies of one component direction, resolved from their names.
#[derive(Clone, Debug)]
struct ComponentPolicy {
    timeout: Option<Duration>,
    retry: Option<Arc<Retry>>,
    /// The breaker's policy name and settings.
    breaker: Option<(String, Arc<BreakerSettings>)>,
}

/// A target's policy names, as written.
#[derive(Clone, Debug)]
struct Target {
    resource: String,
    names: TargetPolicy,
}

/// Which way a component call goes: from the app to the component, or from the component into the app
/// (pub/sub deliveries, input bindings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "Outbound",
            Direction::Inbound => "Inbound",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Every Resiliency resource for this app, compiled.
#[derive(Debug)]
pub struct Resiliency {
    timeouts: HashMap<String, Duration>,
    retries: HashMap<String, Arc<Retry>>,
    breakers: HashMap<String, Arc<BreakerSettings>>,
    apps: HashMap<String, Arc<AppPolicy>>,
    /// Component targets: the policies of each direction, resolved; a target without a direction has `None`.
    components: HashMap<String, [Option<ComponentPolicy>; 2]>,
    /// Circuit breakers of components, by (component, direction): kept when a component is rebuilt.
    component_breakers: Mutex<HashMap<(String, Direction), Arc<CircuitBreaker>>>,
    /// Policies for apps without a target, made on first use so their breakers persist.
    default_apps: Mutex<HashMap<String, Arc<AppPolicy>>>,
    builtin_service: Arc<Retry>,
}

impl Default for Resiliency {
    fn default() -> Self {
        Resiliency::compile(&[]).0
    }
}

impl Resiliency {
    /// Compiles the resources (already filtered by scope). Later resources override same-named policies and
    /// targets of earlier ones; a target may use policies of any resource. The first problem is an error.
    pub fn new(resources: &[crate::api::Resiliency]) -> Result<Resiliency, ResiliencyError> {
        let (r, mut errors) = Resiliency::compile(resources);
        if errors.is_empty() {
            Ok(r)
        } else {
            Err(errors.swap_remove(0))
        }
    }

    /// Like [`Resiliency::new`], but as daprd does: a resource with a bad policy is skipped entirely, a target
    /// naming a missing policy goes without it; the problems are returned for logging.
    pub fn new_lenient(resources: &[crate::api::Resiliency]) -> (Resiliency, Vec<ResiliencyError>) {
        Resiliency::compile(resources)
    }

    fn compile(resources: &[crate::api::Resiliency]) -> (Resiliency, Vec<ResiliencyError>) {
        let mut errors = vec![];
        let mut timeouts = HashMap::new();
        let mut retries = HashMap::new();
        let mut breakers = HashMap::new();
        let mut targets: BTreeMap<String, Target> = BTreeMap::new();
        let mut component_targets: BTreeMap<String, (String, crate::api::resiliency::ComponentTargets)> =
            BTreeMap::new();
        for res in resources {
            let name = res.metadata.name.clone().unwrap_or_default();
            let err = |field: String, message: String| ResiliencyError {
                resource: name.clone(),
                field,
                message,
            };
            let mut bad = vec![];
            let mut t = HashMap::new();
            for (k, v) in &res.spec.policies.timeouts {
                match parse_go_duration(v) {
                    Ok(d) => {
                        t.insert(k.clone(), d);
                    }
                    Err(e) => bad.push(err(format!("spec.policies.timeouts.{k}"), e)),
                }
            }
            let mut r = HashMap::new();
            for (k, v) in &res.spec.policies.retries {
                match Retry::from_spec(v) {
                    Ok(retry) => {
                        r.insert(k.clone(), Arc::new(retry));
                    }
                    Err((field, e)) => bad.push(err(format!("spec.policies.retries.{k}.{field}"), e)),
                }
            }
            let mut b = HashMap::new();
            for (k, v) in &res.spec.policies.circuit_breakers {
                match BreakerSettings::from_spec(v) {
                    Ok(s) => {
                        b.insert(k.clone(), Arc::new(s));
                    }
                    Err((field, e)) => bad.push(err(format!("spec.policies.circuitBreakers.{k}.{field}"), e)),
                }
            }
            if !bad.is_empty() {
                tracing::error!(resource = %name, "could not read resiliency policy; skipping it");
                errors.extend(bad);
                continue;
            }
            timeouts.extend(t);
            retries.extend(r);
            breakers.extend(b);
            for (component, names) in &res.spec.targets.components {
                component_targets.insert(component.clone(), (name.clone(), names.clone()));
            }
            for (app, names) in &res.spec.targets.apps {
                targets.insert(
                    app.clone(),
                    Target {
                        resource: name.clone(),
                        names: names.clone(),
                    },
                );
            }
        }
        let builtin_service = match retries.get(BUILTIN_SERVICE_RETRIES) {
            Some(r) => {
                let mut r = Retry::clone(r);
                // Dapr refuses to lower the built-in retries below 3.
                if r.max_retries.is_none_or(|n| n < 3) {
                    r.max_retries = Some(3);
                }
                Arc::new(r)
            }
            None => Arc::new(Retry::builtin_service()),
        };
        let mut this = Resiliency {
            timeouts,
            retries,
            breakers,
            apps: HashMap::new(),
            components: HashMap::new(),
            component_breakers: Mutex::default(),
            default_apps: Mutex::default(),
            builtin_service,
        };
        for (app, target) in targets {
            let policy = this.app_target(&app, &target, &mut errors);
            this.apps.insert(app, Arc::new(policy));
        }
        for (component, (resource, t)) in component_targets {
            let mut resolve = |direction: Direction, names: Option<&TargetPolicy>| {
                names.map(|names| {
                    let at = format!("spec.targets.components.{component}.{}", direction.field());
                    this.resolve_names(names, &resource, &at, &mut errors)
                })
            };
            let policies = [
                resolve(Direction::Outbound, t.outbound.as_ref()),
                resolve(Direction::Inbound, t.inbound.as_ref()),
            ];
            this.components.insert(component, policies);
        }
        (this, errors)
    }

    /// The policies `names` names, noting the ones that are not defined.
    fn resolve_names(
        &self,
        names: &TargetPolicy,
        resource: &str,
        at: &str,
        errors: &mut Vec<ResiliencyError>,
    ) -> ComponentPolicy {
        let mut missing = |kind: &str, field: &str, name: &str| {
            errors.push(ResiliencyError {
                resource: resource.to_owned(),
                field: format!("{at}.{field}"),
                message: format!("no {kind} policy named {name:?} is defined"),
            });
        };
        let named = |n: &Option<String>| n.as_deref().filter(|n| !n.is_empty()).map(str::to_owned);
        let timeout = named(&names.timeout).and_then(|n| {
            let t = self.timeouts.get(&n).copied();
            if t.is_none() {
                missing("timeout", "timeout", &n);
            }
            t
        });
        let retry = named(&names.retry).and_then(|n| {
            let r = self.retries.get(&n).cloned();
            if r.is_none() {
                missing("retry", "retry", &n);
            }
            r
        });
        let breaker = named(&names.circuit_breaker).and_then(|n| {
            let b = self.breakers.get(&n).cloned();
            if b.is_none() {
                missing("circuit breaker", "circuitBreaker", &n);
            }
            b.map(|b| (n, b))
        });
        ComponentPolicy {
            timeout: timeout.filter(|t| !t.is_zero()),
            retry,
            breaker,
        }
    }

    fn app_target(&self, app: &str, target: &Target, errors: &mut Vec<ResiliencyError>) -> AppPolicy {
        let at = format!("spec.targets.apps.{app}");
        let p = self.resolve_names(&target.names, &target.resource, &at, errors);
        let cache_size = match target.names.circuit_breaker_cache_size {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => DEFAULT_BREAKER_CACHE,
        };
        AppPolicy::new(app, p.timeout, p.retry, p.breaker.map(|(_, b)| b), cache_size)
    }

    /// True when a Resiliency target names this app (then Dapr's built-in retries do not apply to it).
    pub fn has_app_target(&self, app_id: &str) -> bool {
        self.apps.contains_key(app_id)
    }

    /// The policy for calls to `app_id`: its target's policies if it has a target (only those it names), else
    /// the default policies (`DefaultAppRetryPolicy` over `DefaultRetryPolicy`, and likewise for timeouts and
    /// circuit breakers), else `None`.
    pub fn app_policy(&self, app_id: &str) -> Option<Arc<AppPolicy>> {
        if let Some(p) = self.apps.get(app_id) {
            return Some(p.clone());
        }
        let timeout = DEFAULT_APP_TIMEOUT.iter().find_map(|n| self.timeouts.get(*n).copied());
        let retry = DEFAULT_APP_RETRY.iter().find_map(|n| self.retries.get(*n).cloned());
        let breaker = DEFAULT_APP_BREAKER.iter().find_map(|n| self.breakers.get(*n).cloned());
        if timeout.is_none() && retry.is_none() && breaker.is_none() {
            return None;
        }
        let mut defaults = self.default_apps.lock().unwrap_or_else(|p| p.into_inner());
        // Callers name the app: keep the map bounded (a dropped app's breakers start afresh).
        if defaults.len() >= MAX_DEFAULT_APPS
            && !defaults.contains_key(app_id)
            && let Some(k) = defaults.keys().next().cloned()
        {
            defaults.remove(&k);
        }
        let policy = defaults.entry(app_id.to_owned()).or_insert_with(|| {
            Arc::new(AppPolicy::new(
                app_id,
                timeout.filter(|t| !t.is_zero()),
                retry,
                breaker,
                DEFAULT_BREAKER_CACHE,
            ))
        });
        Some(policy.clone())
    }

    /// The policy for calls to component `name` (of `kind`) going `direction`: its target's policies when a
    /// target names the component (only those it names for that direction), else Dapr's default component
    /// policies, else `None`.
    pub fn component_policy(&self, name: &str, kind: Kind, direction: Direction) -> Option<Policy> {
        let slot = match direction {
            Direction::Outbound => 0,
            Direction::Inbound => 1,
        };
        let policy = match self.components.get(name) {
            Some(target) => target[slot].clone()?,
            None => self.default_component_policy(kind, direction)?,
        };
        if policy.timeout.is_none() && policy.retry.is_none() && policy.breaker.is_none() {
            return None;
        }
        let breaker = policy.breaker.map(|(_, settings)| {
            let mut cache = self.component_breakers.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .entry((name.to_owned(), direction))
                .or_insert_with(|| Arc::new(CircuitBreaker::new(format!("component[{name}]"), settings)))
                .clone()
        });
        let label = match direction {
            Direction::Outbound => "output",
            Direction::Inbound => "input",
        };
        Some(Policy::new(
            format!("component[{name}] {label}"),
            policy.timeout,
            policy.retry,
            breaker,
        ))
    }

    /// Outbound policy of component `name`: see [`Resiliency::component_policy`].
    pub fn component_outbound(&self, name: &str, kind: Kind) -> Option<Policy> {
        self.component_policy(name, kind, Direction::Outbound)
    }

    /// Dapr's default component policies, most specific first: `Default<Kind>Component<Direction><Policy>`,
    /// `DefaultComponent<Direction><Policy>`, `DefaultComponent<Policy>`, then `Default<Policy>`.
    fn default_component_policy(&self, kind: Kind, direction: Direction) -> Option<ComponentPolicy> {
        let kind_name = kind.resiliency_name()?;
        let dir = direction.as_str();
        let levels = [
            format!("{kind_name}Component{dir}"),
            format!("Component{dir}"),
            "Component".to_owned(),
            String::new(),
        ];
        let find = |policy: &'static str| levels.iter().map(move |l| format!("Default{l}{policy}Policy"));
        let timeout = find("Timeout").find_map(|n| self.timeouts.get(&n).copied());
        let retry = find("Retry").find_map(|n| self.retries.get(&n).cloned());
        let breaker = find("CircuitBreaker").find_map(|n| self.breakers.get(&n).cloned().map(|b| (n, b)));
        Some(ComponentPolicy {
            timeout: timeout.filter(|t| !t.is_zero()),
            retry,
            breaker,
        })
    }

    /// Dapr's built-in service-invocation retry (3 retries 1s apart on unreachable targets), or the
    /// `DaprBuiltInServiceRetries` retry policy that overrides it (never fewer than 3 retries).
    pub fn builtin_service_retry(&self) -> Policy {
        Policy::builtin(self.builtin_service.clone())
    }
}

#[cfg(test)]
mod executor_tests;
#[cfg(test)]
mod tests;
