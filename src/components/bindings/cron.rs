//! `bindings.cron`: an input binding that fires on a schedule. The schedule is written as Dapr's (robfig/cron with
//! optional seconds): five or six fields (`*/15 * * * * *`, `0 30 * * * *`), names for months and weekdays,
//! `?` for `*`, and the descriptors `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`
//! and `@every <duration>`. The first tick comes one interval after reading starts. Each tick reaches the app as
//! an event with no body and the metadata `timeZone` and `readTimeUTC`; a tick the app failed is not repeated.
//! Schedules are evaluated in UTC; a `TZ=`/`CRON_TZ=` prefix other than UTC is refused at start rather than
//! silently read as UTC.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Binding, BindingError, Directions, Event, Handler};
use crate::components::{ComponentError, Metadata};

/// Ticks that may be with the app at once; a tick that finds them all busy is skipped (and logged).
const MAX_IN_FLIGHT: usize = 64;

pub async fn build(md: Metadata) -> Result<Arc<dyn Binding>, ComponentError> {
    let spec = md
        .string("schedule")
        .ok_or_else(|| ComponentError::invalid("schedule", "schedule not set"))?;
    let schedule = Schedule::parse(&spec)
        .map_err(|e| ComponentError::invalid("schedule", format!("invalid schedule format '{spec}': {e}")))?;
    super::directed(
        &md,
        Arc::new(Cron {
            name: md.name.clone(),
            schedule,
        }),
    )
}

struct Cron {
    name: String,
    schedule: Schedule,
}

#[async_trait]
impl Binding for Cron {
    fn directions(&self) -> Directions {
        Directions::INPUT
    }

    async fn read(&self, handler: Handler, stop: CancellationToken) -> Result<(), BindingError> {
        let schedule = self.schedule.clone();
        let name = self.name.clone();
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tokio::spawn(async move {
            let mut last = OffsetDateTime::now_utc();
            loop {
                let Some(next) = schedule.next(last) else {
                    tracing::warn!(binding = %name, "the schedule never fires again");
                    return;
                };
                let wait = (next - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
                let wait = Duration::try_from(wait).unwrap_or_default();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                last = next;
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(binding = %name, "{MAX_IN_FLIGHT} ticks are still with the app; skipping this one");
                    continue;
                };
                let event = Event {
                    data: bytes::Bytes::new(),
                    metadata: [
                        ("timeZone".to_owned(), "Local".to_owned()),
                        ("readTimeUTC".to_owned(), go_time_string(OffsetDateTime::now_utc())),
                    ]
                    .into(),
                };
                let delivery = handler(event);
                let name = name.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = delivery.await {
                        tracing::debug!(binding = %name, "the app did not take the tick: {e}");
                    }
                });
            }
        });
        Ok(())
    }
}

/// `t` as Go's `time.Time.String()` writes a UTC time: `2024-05-01 12:00:10.123456789 +0000 UTC`.
fn go_time_string(t: OffsetDateTime) -> String {
    let mut frac = format!("{:09}", t.nanosecond());
    while frac.ends_with('0') {
        frac.pop();
    }
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `@every <duration>`: a fixed delay after each tick.
    Every(Duration),
    Fields(Fields),
}

/// The six fields as bit sets (bit n set: value n matches). `dom_star`/`dow_star`: the field was `*` or `?`
/// (then a day matches when both day fields match; otherwise when either does, as in Vixie cron).
#[derive(Clone, Debug, PartialEq)]
pub struct Fields {
    second: u64,
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let mut spec = spec.trim();
        for prefix in ["TZ=", "CRON_TZ="] {
            if let Some(rest) = spec.strip_prefix(prefix) {
                let (zone, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                if !matches!(zone, "UTC" | "Etc/UTC" | "Etc/GMT" | "GMT" | "Zulu" | "Etc/Zulu") {
                    return Err(format!(
                        "time zone {zone}: tandem evaluates schedules in UTC only; write the schedule in UTC"
                    ));
                }
                spec = rest.trim();
            }
        }
        if let Some(descriptor) = spec.strip_prefix('@') {
            let fields = match descriptor {
                "yearly" | "annually" => "0 0 0 1 1 *",
                "monthly" => "0 0 0 1 * *",
                "weekly" => "0 0 0 * * 0",
                "daily" | "midnight" => "0 0 0 * * *",
                "hourly" => "0 0 * * * *",
                _ => {
                    let every = descriptor
                        .strip_prefix("every ")
                        .ok_or_else(|| format!("unrecognized descriptor: {spec}"))?;
                    let d = humantime::parse_duration(every.trim())
                        .map_err(|e| format!("failed to parse duration {spec}: {e}"))?;
                    if d.is_zero() {
                        return Err(format!(
                            "failed to parse duration {spec}: the interval must be above zero"
                        ));
                    }
                    return Ok(Schedule::Every(d));
                }
            };
            return Schedule::parse(fields);
        }
        let parts: Vec<&str> = spec.split_whitespace().collect();
        let parts: Vec<&str> = match parts.len() {
            5 => std::iter::once("0").chain(parts).collect(),
            6 => parts,
            n => return Err(format!("expected 5 to 6 fields, found {n}: {parts:?}")),
        };
        let (dom, dom_star) = field(parts[3], 1, 31, &[])?;
        let (dow, dow_star) = field(parts[5], 0, 6, &DAYS)?;
        Ok(Schedule::Fields(Fields {
            second: field(parts[0], 0, 59, &[])?.0,
            minute: field(parts[1], 0, 59, &[])?.0,
            hour: field(parts[2], 0, 23, &[])?.0,
            dom,
            month: field(parts[4], 1, 12, &MONTHS)?.0,
            dow,
            dom_star,
            dow_star,
        }))
    }

    /// The first time strictly after `after` the schedule fires, `None` if not within five years.
    pub fn next(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Schedule::Every(d) => Some(after + *d),
            Schedule::Fields(f) => f.next(after),
        }
    }
}

impl Fields {
    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().number_days_from_sunday()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    fn next(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let after = after.to_offset(time::UtcOffset::UTC);
        // The next whole second.
        let start = after.replace_nanosecond(0).ok()? + time::Duration::SECOND;
        let mut t = PrimitiveDateTime::new(start.date(), start.time());
        let limit = t.year() + 5;
        'search: while t.year() <= limit {
            while self.month & (1 << u8::from(t.month())) == 0 {
                let (y, m) = match t.month() {
                    Month::December => (t.year() + 1, Month::January),
                    m => (t.year(), m.next()),
                };
                t = PrimitiveDateTime::new(Date::from_calendar_date(y, m, 1).ok()?, Time::MIDNIGHT);
                if t.year() > limit {
                    return None;
                }
            }
            while !self.day_matches(t.date()) {
                let month = t.month();
                t = PrimitiveDateTime::new(t.date().next_day()?, Time::MIDNIGHT);
                if t.month() != month {
                    continue 'search;
                }
            }
            while self.hour & (1 << t.hour()) == 0 {
                let day = t.date();
                t = t.replace_minute(0).ok()?.replace_second(0).ok()? + time::Duration::HOUR;
                if t.date() != day {
                    continue 'search;
                }
            }
            while self.minute & (1 << t.minute()) == 0 {
                let hour = (t.date(), t.hour());
                t = t.replace_second(0).ok()? + time::Duration::MINUTE;
                if (t.date(), t.hour()) != hour {
                    continue 'search;
                }
            }
            while self.second & (1 << t.second()) == 0 {
                let minute = (t.date(), t.hour(), t.minute());
                t += time::Duration::SECOND;
                if (t.date(), t.hour(), t.minute()) != minute {
                    continue 'search;
                }
            }
            return Some(t.assume_utc());
        }
        None
    }
}

/// One field: a comma list of `*`, `?`, `N`, `A-B`, each with an optional `/step`. Answers the bits and whether
/// the field was a bare `*`/`?`.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("failed to parse int from {s}"))?;
                if step == 0 {
                    return Err(format!("step of range should be a positive number: {part}"));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            if step.is_none() {
                star = true;
            }
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, min)?, value(b, names, min)?)
        } else {
            let v = value(range, names, min)?;
            (v, if step.is_some() { max } else { v })
        };
        if lo < min || hi > max {
            return Err(format!("{part}: values must be within {min}-{max}"));
        }
        if lo > hi {
            return Err(format!("beginning of range ({lo}) beyond end of range ({hi}): {part}"));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

fn value(text: &str, names: &[&str], min: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as u32 + min);
    }
    text.parse().map_err(|_| format!("failed to parse int from {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> OffsetDateTime {
        PrimitiveDateTime::new(
            Date::from_calendar_date(y, Month::try_from(mo).unwrap(), d).unwrap(),
            Time::from_hms(h, mi, s).unwrap(),
        )
        .assume_utc()
    }

    fn next(spec: &str, from: OffsetDateTime) -> OffsetDateTime {
        Schedule::parse(spec).unwrap().next(from).unwrap()
    }

    #[test]
    fn six_fields_start_with_seconds_and_five_fire_on_the_minute() {
        let t = at(2026, 12, 5, 10, 0, 7);
        assert_eq!(next("*/15 * * * * *", t), at(2026, 12, 5, 10, 0, 15));
        assert_eq!(next("*/15 * * * *", t), at(2026, 12, 5, 10, 15, 0));
        assert_eq!(next("0 30 * * * *", t), at(2026, 12, 5, 10, 30, 0));
        assert_eq!(next("0 0 */6 ? * *", t), at(2026, 12, 5, 12, 0, 0));
    }

    #[test]
    fn descriptors_and_names() {
        let t = at(2026, 12, 5, 10, 0, 7);
        assert_eq!(next("@hourly", t), at(2026, 12, 5, 11, 0, 0));
        assert_eq!(next("@daily", t), at(2026, 12, 6, 0, 0, 0));
        assert_eq!(next("@monthly", t), at(2027, 1, 1, 0, 0, 0));
        assert_eq!(next("@yearly", t), at(2027, 1, 1, 0, 0, 0));
        // 2026-12-05 is a Saturday.
        assert_eq!(next("@weekly", t), at(2026, 12, 6, 0, 0, 0));
        assert_eq!(next("0 0 9 * * MON-FRI", t), at(2026, 12, 7, 9, 0, 0));
        assert_eq!(next("0 0 0 29 FEB *", t), at(2028, 2, 29, 0, 0, 0));
        assert_eq!(next("@every 10s", t), t + Duration::from_secs(10));
        assert_eq!(next("TZ=UTC 0 0 0 * * *", t), at(2026, 12, 6, 0, 0, 0));
    }

    #[test]
    fn day_of_month_or_weekday_when_both_are_restricted() {
        // The 1st, or any Monday.
        let t = at(2026, 12, 5, 10, 0, 7);
        assert_eq!(next("0 0 0 1 * MON", t), at(2026, 12, 7, 0, 0, 0));
        assert_eq!(next("0 0 0 1 * *", t), at(2027, 1, 1, 0, 0, 0));
    }

    #[test]
    fn bad_schedules_are_refused_with_the_reason() {
        for (spec, want) in [
            ("INVALID_SCHEDULE", "expected 5 to 6 fields"),
            ("* * * *", "expected 5 to 6 fields"),
            ("60 * * * * *", "within 0-59"),
            ("* * * * * 7", "within 0-6"),
            ("*/0 * * * * *", "positive"),
            ("5-1 * * * * *", "beyond end"),
            ("@often", "unrecognized descriptor"),
            ("@every soon", "failed to parse duration"),
            ("@every 0s", "above zero"),
            ("TZ=Europe/Paris * * * * *", "UTC only"),
        ] {
            let err = Schedule::parse(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
        assert_eq!(
            Schedule::parse("0 0 0 31 2 *").unwrap().next(at(2026, 1, 1, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn read_time_is_written_as_go_writes_it() {
        let t = at(2024, 5, 1, 12, 0, 10).replace_nanosecond(123_456_000).unwrap();
        assert_eq!(go_time_string(t), "2024-05-01 12:00:10.123456 +0000 UTC");
        assert_eq!(
            go_time_string(at(2024, 5, 1, 12, 0, 10)),
            "2024-05-01 12:00:10 +0000 UTC"
        );
    }

    #[tokio::test]
    async fn ticks_reach_the_handler_until_stopped() {
        let md = Metadata::new("cron", "app", "", [("schedule".to_owned(), "@every 50ms".to_owned())]);
        let b = build(md).await.unwrap();
        assert_eq!(b.directions(), Directions::INPUT);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handler: Handler = Arc::new(move |e: Event| {
            let _ = tx.send(e);
            Box::pin(async { Ok(bytes::Bytes::new()) })
        });
        let stop = CancellationToken::new();
        b.read(handler, stop.clone()).await.unwrap();
        for _ in 0..3 {
            let e = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(e.data.is_empty());
            assert_eq!(e.metadata["timeZone"], "Local");
            assert!(e.metadata["readTimeUTC"].ends_with("+0000 UTC"));
        }
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(120)).await;
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err(), "no tick after stop");
    }
}
