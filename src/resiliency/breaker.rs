//! Circuit breakers with Dapr's (sony/gobreaker) state machine: closed → open when the `trip` CEL expression
//! holds after a failure; open → half-open after `timeout`; half-open admits `maxRequests` calls and closes after
//! that many successes, or reopens on the first failure.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::resiliency::CircuitBreakerPolicy;

/// The counters `trip` is evaluated over; reset on every state change and, when closed, every `interval`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u32,
    pub total_successes: u32,
    pub total_failures: u32,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Dapr's name for the state (used in logs and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// The CEL variables `trip` may use.
const TRIP_VARIABLES: [&str; 5] = [
    "requests",
    "totalSuccesses",
    "totalFailures",
    "consecutiveSuccesses",
    "consecutiveFailures",
];

/// When a breaker opens.
enum Trip {
    /// No `trip` given: more than 5 consecutive failures.
    Default,
    Cel {
        source: String,
        program: cel::Program,
    },
}

impl std::fmt::Debug for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trip::Default => f.write_str("consecutiveFailures > 5"),
            Trip::Cel { source, .. } => f.write_str(source),
        }
    }
}

impl Trip {
    fn compile(source: &str) -> Result<Trip, String> {
        let source = source.trim();
        if source.is_empty() {
            return Ok(Trip::Default);
        }
        let program =
            cel::Program::compile(source).map_err(|e| format!("{source:?} is not a valid CEL expression: {e}"))?;
        let references = program.references();
        let mut unknown: Vec<&str> = references
            .variables()
            .into_iter()
            .filter(|v| !TRIP_VARIABLES.contains(v))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(format!(
                "{source:?} uses unknown variable(s) {}; available: {}",
                unknown.join(", "),
                TRIP_VARIABLES.join(", ")
            ));
        }
        Ok(Trip::Cel {
            source: source.to_owned(),
            program,
        })
    }

    /// Evaluation errors and non-boolean results do not trip, as in Dapr.
    fn holds(&self, c: &Counts) -> bool {
        match self {
            Trip::Default => c.consecutive_failures > 5,
            Trip::Cel { program, .. } => {
                static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
                let env = ENV.get_or_init(|| Arc::new(cel::Env::stdlib()));
                let mut ctx = cel::Context::with_env(env.clone());
                let vars = [
                    c.requests,
                    c.total_successes,
                    c.total_failures,
                    c.consecutive_successes,
                    c.consecutive_failures,
                ];
                for (name, value) in TRIP_VARIABLES.iter().zip(vars) {
                    ctx.add_variable_from_value(*name, i64::from(value));
                }
                let run = std::panic::AssertUnwindSafe(|| program.execute(&ctx));
                matches!(std::panic::catch_unwind(run), Ok(Ok(cel::Value::Bool(true))))
            }
        }
    }
}

/// A compiled `circuitBreakers` entry: the template every breaker instance is made from.
#[derive(Debug)]
pub struct BreakerSettings {
    /// Calls admitted while half-open, and successes needed there to close (`maxRequests`, default 1).
    pub max_requests: u32,
    /// How often closed counts reset (`interval`); `None` (0, the default) never resets them.
    pub interval: Option<Duration>,
    /// How long the breaker stays open before trying again (`timeout`, default 60s).
    pub timeout: Duration,
    trip: Trip,
}

impl BreakerSettings {
    /// Compiles a Resiliency `circuitBreakers` entry; the error names the field that is wrong.
    pub fn from_spec(spec: &CircuitBreakerPolicy) -> Result<BreakerSettings, (&'static str, String)> {
        let duration = |value: &str, field: &'static str| {
            if value.is_empty() {
                Ok(Duration::ZERO)
            } else {
                super::parse_go_duration(value).map_err(|e| (field, e))
            }
        };
        let interval = duration(&spec.interval, "interval")?;
        let timeout = duration(&spec.timeout, "timeout")?;
        Ok(BreakerSettings {
            max_requests: spec.max_requests.filter(|n| *n > 0).unwrap_or(1),
            interval: (!interval.is_zero()).then_some(interval),
            timeout: if timeout.is_zero() {
                Duration::from_secs(60)
            } else {
                timeout
            },
            trip: Trip::compile(&spec.trip).map_err(|e| ("trip", e))?,
        })
    }

    /// The `trip` expression in effect.
    pub fn trip(&self) -> String {
        format!("{:?}", self.trip)
    }
}

/// Why a breaker refused a call without running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    Open,
    TooManyRequests,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    generation: u64,
    counts: Counts,
    /// Closed: when counts reset (none without an interval). Open: when the breaker turns half-open.
    expiry: Option<Instant>,
}

/// One live circuit breaker (per app and endpoint, as in Dapr).
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    settings: Arc<BreakerSettings>,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, settings: Arc<BreakerSettings>) -> CircuitBreaker {
        let mut inner = Inner {
            state: BreakerState::Closed,
            generation: 0,
            counts: Counts::default(),
            expiry: None,
        };
        new_generation(&mut inner, &settings, Instant::now());
        CircuitBreaker {
            name: name.into(),
            settings,
            inner: Mutex::new(inner),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state (an expired open breaker reports half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        inner.state
    }

    /// The current counts.
    pub fn counts(&self) -> Counts {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        inner.counts
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a call, or says why not. The returned ticket must be settled with [`Ticket::settle`]; dropping it
    /// unsettled (the call was cancelled) counts as a failure.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Ticket, Rejection> {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        match inner.state {
            BreakerState::Open => return Err(Rejection::Open),
            BreakerState::HalfOpen if inner.counts.requests >= self.settings.max_requests => {
                return Err(Rejection::TooManyRequests);
            }
            _ => {}
        }
        inner.counts.requests = inner.counts.requests.saturating_add(1);
        Ok(Ticket {
            breaker: Some(self.clone()),
            generation: inner.generation,
        })
    }

    fn record(&self, generation: u64, success: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        if inner.generation != generation {
            return;
        }
        let c = &mut inner.counts;
        if success {
            c.total_successes = c.total_successes.saturating_add(1);
            c.consecutive_successes = c.consecutive_successes.saturating_add(1);
            c.consecutive_failures = 0;
            if inner.state == BreakerState::HalfOpen && inner.counts.consecutive_successes >= self.settings.max_requests
            {
                self.set_state(&mut inner, BreakerState::Closed, now);
            }
        } else {
            c.total_failures = c.total_failures.saturating_add(1);
            c.consecutive_failures = c.consecutive_failures.saturating_add(1);
            c.consecutive_successes = 0;
            let trip = match inner.state {
                BreakerState::Closed => self.settings.trip.holds(&inner.counts),
                BreakerState::HalfOpen => true,
                BreakerState::Open => false,
            };
            if trip {
                self.set_state(&mut inner, BreakerState::Open, now);
            }
        }
    }

    /// Applies the passage of time: resets closed counts each interval, turns an expired open breaker half-open.
    fn refresh(&self, inner: &mut Inner, now: Instant) {
        match inner.state {
            BreakerState::Closed => {
                if inner.expiry.is_some_and(|e| e < now) {
                    new_generation(inner, &self.settings, now);
                }
            }
            BreakerState::Open => {
                if inner.expiry.is_some_and(|e| e < now) {
                    self.set_state(inner, BreakerState::HalfOpen, now);
                }
            }
            BreakerState::HalfOpen => {}
        }
    }

    fn set_state(&self, inner: &mut Inner, state: BreakerState, now: Instant) {
        if inner.state == state {
            return;
        }
        let from = inner.state;
        inner.state = state;
        new_generation(inner, &self.settings, now);
        tracing::info!(
            breaker = %self.name,
            "circuit breaker {:?} changed state from {} to {}",
            self.name,
            from.as_str(),
            state.as_str()
        );
    }
}

fn new_generation(inner: &mut Inner, settings: &BreakerSettings, now: Instant) {
    inner.generation = inner.generation.wrapping_add(1);
    inner.counts = Counts::default();
    inner.expiry = match inner.state {
        BreakerState::Closed => settings.interval.map(|i| now + i),
        BreakerState::Open => Some(now + settings.timeout),
        BreakerState::HalfOpen => None,
    };
}

/// An admitted call's claim on a breaker.
#[derive(Debug)]
pub(crate) struct Ticket {
    breaker: Option<Arc<CircuitBreaker>>,
    generation: u64,
}

impl Ticket {
    pub(crate) fn settle(mut self, success: bool) {
        if let Some(b) = self.breaker.take() {
            b.record(self.generation, success);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.record(self.generation, false);
        }
    }
}
