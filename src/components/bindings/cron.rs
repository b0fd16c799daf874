//! `bindings.cron`: an input binding that fires on a schedule. The schedule is written as Dapr's (robfig/cron with
//! optional seconds): five or six fields (`*/15 * * * * *`, `0 30 * * * *`), names for months and weekdays,
//! `?` for `*`, and the descriptors `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`
//! and `@every <duration>`. The first tick comes one interval after reading starts. Each tick reaches the app as
//! an event with no body and the metadata `timeZone` and `readTimeUTC`; a tick the app failed is not repeated.
//! Schedules are evaluated in the machine's local time zone (the `TZ` variable, else `/etc/localtime`), as Dapr
//! evaluates them in Go's `time.Local`, or in the zone a `TZ=`/`CRON_TZ=` prefix names (`CRON_TZ=Europe/Paris
//! 0 9 * * *`), read from the system's tz database. A wall-clock time that a daylight-saving change skips does not
//! fire that day; one it repeats fires once, at its first occurrence.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::tz::{AmbiguousOffset, TimeZone};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
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
/// (then a day matches when both day fields match; otherwise when either does, as in Vixie cron). `zone`: where
/// the fields are read.
#[derive(Clone, Debug, PartialEq)]
pub struct Fields {
    zone: TimeZone,
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
    /// `spec` read in the machine's local time zone unless it names one.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        Schedule::parse_in(spec, TimeZone::system())
    }

    /// `spec` read in `zone` unless it names one.
    pub fn parse_in(spec: &str, zone: TimeZone) -> Result<Schedule, String> {
        let mut spec = spec.trim();
        let mut zone = zone;
        for prefix in ["TZ=", "CRON_TZ="] {
            if let Some(rest) = spec.strip_prefix(prefix) {
                let (name, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                zone = TimeZone::get(name).map_err(|e| format!("provided bad location {name}: {e}"))?;
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
            return Schedule::parse_in(fields, zone);
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
            zone,
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

    /// The first instant after `after` whose wall-clock time in the zone matches: wall-clock times are searched
    /// from the one after `after`'s, and each match is kept if the zone has an instant for it after `after`.
    fn next(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let offset = self
            .zone
            .to_offset(jiff::Timestamp::from_second(after.unix_timestamp()).ok()?);
        let local = after.to_offset(UtcOffset::from_whole_seconds(offset.seconds()).ok()?);
        let mut from = PrimitiveDateTime::new(local.date(), local.time());
        let limit = from.year() + 5;
        while from.year() <= limit {
            let t = self.next_wall_clock(from, limit)?;
            if let Some(at) = self.instant(t, after) {
                return Some(at);
            }
            from = t;
        }
        None
    }

    /// The first instant after `after` at which the zone's clocks show `t`: none when a daylight-saving change
    /// skips `t`, the first of two when it repeats `t`.
    fn instant(&self, t: PrimitiveDateTime, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let civil = jiff::civil::DateTime::new(
            t.year().try_into().ok()?,
            u8::from(t.month()) as i8,
            t.day() as i8,
            t.hour() as i8,
            t.minute() as i8,
            t.second() as i8,
            0,
        )
        .ok()?;
        let offsets = match self.zone.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => vec![offset],
            AmbiguousOffset::Gap { .. } => vec![],
            AmbiguousOffset::Fold { before, after } => vec![before, after],
        };
        offsets
            .into_iter()
            .filter_map(|o| {
                Some(
                    t.assume_offset(UtcOffset::from_whole_seconds(o.seconds()).ok()?)
                        .to_offset(UtcOffset::UTC),
                )
            })
            .find(|at| *at > after)
    }

    /// The first wall-clock time after `from` (ignoring its fraction) that the fields match, up to year `limit`.
    fn next_wall_clock(&self, from: PrimitiveDateTime, limit: i32) -> Option<PrimitiveDateTime> {
        // The next whole second.
        let mut t = from.replace_nanosecond(0).ok()? + time::Duration::SECOND;
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
            return Some(t);
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

    /// `spec` read in UTC unless it names a zone (the tests must not depend on the machine's zone).
    fn parse_utc(spec: &str) -> Result<Schedule, String> {
        Schedule::parse_in(spec, TimeZone::UTC)
    }

    fn next(spec: &str, from: OffsetDateTime) -> OffsetDateTime {
        parse_utc(spec).unwrap().next(from).unwrap()
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
    fn a_named_zone_reads_the_fields_on_its_clocks() {
        // Paris is UTC+1 in winter and UTC+2 in summer.
        assert_eq!(
            next("CRON_TZ=Europe/Paris 0 0 9 * * *", at(2026, 12, 6, 0, 0, 0)),
            at(2026, 12, 6, 8, 0, 0)
        );
        assert_eq!(
            next("TZ=Europe/Paris 0 9 * * *", at(2026, 7, 1, 0, 0, 0)),
            at(2026, 7, 1, 7, 0, 0)
        );
        assert_eq!(
            next("CRON_TZ=Asia/Tokyo @daily", at(2026, 12, 6, 16, 0, 0)),
            at(2026, 12, 7, 15, 0, 0)
        );
        // Without a prefix, the zone the schedule is read in (the machine's, in production).
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let s = Schedule::parse_in("0 0 9 * * *", tokyo).unwrap();
        assert_eq!(s.next(at(2026, 12, 6, 0, 0, 0)), Some(at(2026, 12, 7, 0, 0, 0)));
    }

    #[test]
    fn daylight_saving_changes_skip_or_fire_once() {
        let s = parse_utc("CRON_TZ=Europe/Paris 0 30 2 * * *").unwrap();
        // 29 March 2026: clocks go from 02:00 to 03:00, so 02:30 does not happen that day.
        assert_eq!(s.next(at(2026, 3, 28, 12, 0, 0)), Some(at(2026, 3, 30, 0, 30, 0)));
        // 25 October 2026: clocks go from 03:00 back to 02:00, so 02:30 happens twice; it fires at the first.
        let first = s.next(at(2026, 10, 24, 12, 0, 0)).unwrap();
        assert_eq!(first, at(2026, 10, 25, 0, 30, 0));
        assert_eq!(s.next(first), Some(at(2026, 10, 26, 1, 30, 0)));
        // An hourly schedule goes on through the changes.
        let hourly = parse_utc("CRON_TZ=Europe/Paris 0 0 * * * *").unwrap();
        assert_eq!(hourly.next(at(2026, 3, 29, 0, 30, 0)), Some(at(2026, 3, 29, 1, 0, 0)));
        assert_eq!(hourly.next(at(2026, 3, 29, 1, 0, 0)), Some(at(2026, 3, 29, 2, 0, 0)));
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
            (
                "TZ=Mars/Olympus_Mons * * * * *",
                "provided bad location Mars/Olympus_Mons",
            ),
        ] {
            let err = parse_utc(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
        assert_eq!(parse_utc("0 0 0 31 2 *").unwrap().next(at(2026, 1, 1, 0, 0, 0)), None);
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
