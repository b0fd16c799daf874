//! Retry policies: Dapr's constant and exponential back-off (cenkalti/backoff semantics), retry limits, and the
//! status codes a policy retries on.

use std::time::Duration;

use tokio::time::Instant;

use super::Status;
use crate::api::resiliency::{RetryMatching, RetryPolicy as RetrySpec};

/// How long to wait before each retry.
#[derive(Clone, Debug, PartialEq)]
pub enum Backoff {
    /// The same delay every time (`policy: constant`, `duration`, default 5s).
    Constant(Duration),
    /// Growing delays (`policy: exponential`).
    Exponential(Exponential),
}

/// Exponential back-off as Dapr runs it: only `maxInterval` is configurable in a Resiliency; the rest are
/// cenkalti/backoff's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Exponential {
    /// First delay, before jitter (500ms).
    pub initial_interval: Duration,
    /// Each delay is drawn uniformly from `interval * (1 ± factor)` (0.5).
    pub randomization_factor: f64,
    /// Growth per retry (1.5).
    pub multiplier: f64,
    /// Cap on the interval before jitter (`maxInterval`, default 60s).
    pub max_interval: Duration,
    /// Retrying stops once this much time has passed since the first attempt (15m); `None` = never.
    pub max_elapsed: Option<Duration>,
}

impl Default for Exponential {
    fn default() -> Self {
        Exponential {
            initial_interval: Duration::from_millis(500),
            randomization_factor: 0.5,
            multiplier: 1.5,
            max_interval: Duration::from_secs(60),
            max_elapsed: Some(Duration::from_secs(15 * 60)),
        }
    }
}

/// An inclusive range of status codes, e.g. `500-599`.
type CodeRange = (i32, i32);

const HTTP_CODES: CodeRange = (100, 599);
const GRPC_CODES: CodeRange = (0, 16);

/// Which failed statuses a policy retries (`matching`). An unset list retries every code of its kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusMatch {
    http: Option<Vec<CodeRange>>,
    grpc: Option<Vec<CodeRange>>,
}

impl StatusMatch {
    /// Parses `matching.httpStatusCodes` / `gRPCStatusCodes`: comma-separated codes and `start-end` ranges.
    pub fn parse(matching: Option<&RetryMatching>) -> Result<StatusMatch, (&'static str, String)> {
        let Some(m) = matching else {
            return Ok(StatusMatch::default());
        };
        let http = parse_codes(&m.http_status_codes, HTTP_CODES).map_err(|e| ("matching.httpStatusCodes", e))?;
        let grpc = parse_codes(&m.grpc_status_codes, GRPC_CODES).map_err(|e| ("matching.gRPCStatusCodes", e))?;
        Ok(StatusMatch { http, grpc })
    }

    /// Whether a failure with this status is retried.
    pub fn retries(&self, status: Status) -> bool {
        let (code, list, valid) = match status {
            Status::Http(c) => (i32::from(c), &self.http, HTTP_CODES),
            Status::Grpc(c) => (c as i32, &self.grpc, GRPC_CODES),
            Status::Failed => return true,
        };
        if code < valid.0 || code > valid.1 {
            return false;
        }
        match list {
            None => true,
            Some(ranges) => ranges.iter().any(|(lo, hi)| *lo <= code && code <= *hi),
        }
    }
}

fn parse_codes(patterns: &str, valid: CodeRange) -> Result<Option<Vec<CodeRange>>, String> {
    if patterns.trim().is_empty() {
        return Ok(None);
    }
    let mut out = vec![];
    for pattern in patterns.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parts: Vec<&str> = pattern.split('-').map(str::trim).collect();
        if parts.len() > 2 {
            return Err(format!("{pattern:?} has more than one '-'"));
        }
        let parse = |s: &str| {
            s.parse::<i32>()
                .map_err(|_| format!("{s:?} in {pattern:?} is not a status code"))
        };
        let start = parse(parts[0])?;
        let end = match parts.get(1) {
            Some(e) => parse(e)?,
            None => start,
        };
        for code in [start, end] {
            if code < valid.0 || code > valid.1 {
                return Err(format!("code {code} in {pattern:?} is outside {}-{}", valid.0, valid.1));
            }
        }
        if end < start {
            return Err(format!("range {pattern:?} ends before it starts"));
        }
        out.push((start, end));
    }
    Ok(Some(out))
}

/// A compiled retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub backoff: Backoff,
    /// Retries after the first attempt; `None` retries forever (`maxRetries: -1`, the default).
    pub max_retries: Option<u64>,
    pub matching: StatusMatch,
}

impl Retry {
    /// Dapr's built-in service-invocation retry: 3 retries, 1s apart.
    pub fn builtin_service() -> Retry {
        Retry {
            backoff: Backoff::Constant(Duration::from_secs(1)),
            max_retries: Some(3),
            matching: StatusMatch::default(),
        }
    }

    /// Compiles a Resiliency `retries` entry; the error names the field that is wrong.
    pub fn from_spec(spec: &RetrySpec) -> Result<Retry, (&'static str, String)> {
        let parse = |value: &str, field: &'static str| {
            if value.is_empty() {
                Ok(None)
            } else {
                super::parse_go_duration(value).map(Some).map_err(|e| (field, e))
            }
        };
        // Both are validated, though `duration` only applies to constant policies and `maxInterval` only to
        // exponential ones, as in Dapr.
        let duration = parse(&spec.duration, "duration")?;
        let max_interval = parse(&spec.max_interval, "maxInterval")?;
        let policy = spec.policy.trim();
        let backoff = if policy.is_empty() || policy.eq_ignore_ascii_case("constant") {
            Backoff::Constant(duration.unwrap_or(Duration::from_secs(5)))
        } else if policy.eq_ignore_ascii_case("exponential") {
            let mut e = Exponential::default();
            if let Some(max) = max_interval {
                e.max_interval = max;
            }
            Backoff::Exponential(e)
        } else {
            return Err((
                "policy",
                format!("unknown retry policy {policy:?}; use constant or exponential"),
            ));
        };
        let max_retries = match spec.max_retries {
            None => None,
            Some(n) if n < 0 => None,
            Some(n) => Some(n as u64),
        };
        Ok(Retry {
            backoff,
            max_retries,
            matching: StatusMatch::parse(spec.matching.as_ref())?,
        })
    }

    /// True when the policy can retry at all (the caller must then be able to replay the request body).
    pub fn has_retries(&self) -> bool {
        self.max_retries != Some(0)
    }

    pub(crate) fn start(&self) -> BackoffState {
        let current = match &self.backoff {
            Backoff::Constant(d) => *d,
            Backoff::Exponential(e) => e.initial_interval,
        };
        BackoffState {
            retries: 0,
            current,
            started: Instant::now(),
        }
    }

    /// The delay before the next retry, or `None` when retrying is over. `random` in [0, 1) draws the jitter.
    pub(crate) fn next_delay(&self, state: &mut BackoffState, random: f64) -> Option<Duration> {
        if self.max_retries.is_some_and(|max| state.retries >= max) {
            return None;
        }
        state.retries += 1;
        match &self.backoff {
            Backoff::Constant(d) => Some(*d),
            Backoff::Exponential(e) => {
                let elapsed = state.started.elapsed();
                let next = jitter(state.current, e.randomization_factor, random);
                state.current = if state.current.as_secs_f64() >= e.max_interval.as_secs_f64() / e.multiplier {
                    e.max_interval
                } else {
                    state.current.mul_f64(e.multiplier)
                };
                match e.max_elapsed {
                    Some(max) if elapsed + next > max => None,
                    _ => Some(next),
                }
            }
        }
    }
}

fn jitter(interval: Duration, factor: f64, random: f64) -> Duration {
    if factor <= 0.0 {
        return interval;
    }
    let base = interval.as_secs_f64();
    let delta = factor * base;
    let secs = (base - delta) + random.clamp(0.0, 1.0) * (2.0 * delta);
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(interval)
}

/// Progress of one run through a retry policy.
#[derive(Debug)]
pub(crate) struct BackoffState {
    retries: u64,
    current: Duration,
    started: Instant,
}

impl BackoffState {
    /// Retries done so far.
    pub(crate) fn retries(&self) -> u64 {
        self.retries
    }
}
