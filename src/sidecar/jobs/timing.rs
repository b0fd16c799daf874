//! When a job fires, as Dapr's scheduler (`go-etcd-cron`) decides it: the schedule (six cron fields with seconds,
//! `@every <duration>`, `@daily`/`@hourly`/...), `dueTime` and `ttl` (RFC 3339, a Go duration, or an ISO 8601
//! duration, counted from now, the ttl from the due time), and `repeats`. Pure functions of a given instant, so
//! they are tested without waiting.

use std::time::Duration;

use time::OffsetDateTime;

use crate::components::bindings::cron::Schedule;

/// When a job begins and ends, fixed when it is scheduled (and stored with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Unix milliseconds: the due time, or when the job was scheduled.
    pub begin_ms: i64,
    /// `begin_ms` is a due time (the first tick), not the instant the schedule counts from.
    pub begin_is_due: bool,
    /// Unix milliseconds after which the job never fires (its ttl).
    pub expiration_ms: Option<i64>,
}

/// The timing fields of a job as the user gave them.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimingSpec<'a> {
    pub schedule: Option<&'a str>,
    pub repeats: Option<u32>,
    pub due_time: Option<&'a str>,
    pub ttl: Option<&'a str>,
}

/// Parses a job's schedule as Dapr's scheduler does: exactly six fields (seconds first) or a descriptor.
pub fn parse_schedule(spec: &str) -> Result<Schedule, String> {
    let trimmed = spec.trim();
    // A `TZ=`/`CRON_TZ=` prefix names the zone; the fields follow it.
    let fields = if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
        trimmed
            .split_once(char::is_whitespace)
            .map(|(_, r)| r.trim())
            .unwrap_or("")
    } else {
        trimmed
    };
    if !fields.starts_with('@') {
        let n = fields.split_whitespace().count();
        if n != 6 {
            return Err(format!("expected exactly 6 fields, found {n}: {fields:?}"));
        }
    }
    Schedule::parse(trimmed)
}

/// Checks a job's timing as `go-etcd-cron` does and fixes its window at `now`.
pub fn window(spec: &TimingSpec<'_>, now: OffsetDateTime) -> Result<Window, String> {
    if spec.due_time.is_none() && spec.schedule.is_none() {
        return Err("job must have either a due time or a schedule".into());
    }
    if spec.schedule.is_none() && spec.repeats.is_some_and(|r| r > 1) {
        return Err("job must have a schedule to repeat".into());
    }
    if spec.repeats == Some(0) {
        return Err("defined repeats must be greater than 0".into());
    }
    if spec.schedule.is_none() && spec.ttl.is_some() {
        return Err("job must have a schedule to have a ttl".into());
    }
    if let Some(s) = spec.schedule {
        parse_schedule(s)?;
    }
    let (begin, begin_is_due) = match spec.due_time {
        Some(d) => (point_in_time(d, now)?, true),
        None => (now, false),
    };
    let expiration = match spec.ttl {
        None => None,
        Some(t) => {
            let from = if begin_is_due { begin } else { now };
            let exp = point_in_time(t, from).map_err(|_| "ttl format not recognized".to_owned())?;
            if begin_is_due && begin > exp {
                return Err("ttl must be greater than due time".into());
            }
            Some(exp)
        }
    };
    Ok(Window {
        begin_ms: millis(begin),
        begin_is_due,
        expiration_ms: expiration.map(millis),
    })
}

/// The tick after `count` ticks, the last at `last_ms`: `None` when the job is done.
pub fn next_tick(
    schedule: Option<&Schedule>,
    repeats: Option<u32>,
    window: &Window,
    count: u32,
    last_ms: Option<i64>,
) -> Option<i64> {
    let Some(schedule) = schedule else {
        // One shot: the due time, once.
        return (count == 0).then_some(window.begin_ms);
    };
    if repeats.is_some_and(|total| count >= total) {
        return None;
    }
    let next = match last_ms {
        None if window.begin_is_due => window.begin_ms,
        None => millis(schedule.next(instant(window.begin_ms))?),
        Some(last) => millis(schedule.next(instant(last))?),
    };
    match window.expiration_ms {
        Some(exp) if next > exp => None,
        _ => Some(next),
    }
}

/// An RFC 3339 time, or a Go or ISO 8601 duration after `now`.
fn point_in_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>()
        && let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(ts.as_nanosecond())
    {
        return Ok(t);
    }
    let d = crate::resiliency::go_duration(text)
        .or_else(|| iso8601_duration(text))
        .ok_or_else(|| "due time format not recognized".to_owned())?;
    now.checked_add(time::Duration::try_from(d).map_err(|e| e.to_string())?)
        .filter(|t| t.year() < 10_000)
        .ok_or_else(|| "due time format not recognized".to_owned())
}

/// `P[nY][nM][nW][nD][T[nH][nM][nS]]`, years as 365 days and months as 30.
fn iso8601_duration(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, clock) = match rest.split_once('T') {
        Some((d, c)) if !c.is_empty() => (d, Some(c)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut secs = 0f64;
    secs += units(
        date,
        &[
            ('Y', 365.0 * 86400.0),
            ('M', 30.0 * 86400.0),
            ('W', 7.0 * 86400.0),
            ('D', 86400.0),
        ],
    )?;
    if let Some(c) = clock {
        secs += units(c, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// Sums `<number><unit>` pieces whose units come in `order`, each at most once.
fn units(mut text: &str, order: &[(char, f64)]) -> Option<f64> {
    let mut total = 0f64;
    let mut allowed = order;
    while !text.is_empty() {
        let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, after) = text.split_at(end);
        let unit = after.chars().next()?;
        let at = allowed.iter().position(|(u, _)| *u == unit)?;
        total += num.parse::<f64>().ok()? * allowed[at].1;
        allowed = &allowed[at + 1..];
        text = &after[unit.len_utf8()..];
    }
    Some(total)
}

pub fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn instant(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    /// 2026-01-01T00:00:00Z.
    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap()
    }

    fn spec<'a>(
        schedule: Option<&'a str>,
        due: Option<&'a str>,
        ttl: Option<&'a str>,
        repeats: Option<u32>,
    ) -> TimingSpec<'a> {
        TimingSpec {
            schedule,
            repeats,
            due_time: due,
            ttl,
        }
    }

    fn ticks(s: &TimingSpec<'_>, n: usize) -> Vec<i64> {
        let w = window(s, now()).unwrap();
        let sched = s.schedule.map(|x| parse_schedule(x).unwrap());
        let mut out = vec![];
        let mut last = None;
        while out.len() < n {
            match next_tick(sched.as_ref(), s.repeats, &w, out.len() as u32, last) {
                Some(t) => {
                    out.push((t - millis(now())) / 1000);
                    last = Some(t);
                }
                None => break,
            }
        }
        out
    }

    #[test]
    fn a_due_time_alone_fires_once() {
        assert_eq!(ticks(&spec(None, Some("15s"), None, None), 5), vec![15]);
        assert_eq!(ticks(&spec(None, Some("PT1M"), None, Some(1)), 5), vec![60]);
        assert_eq!(
            ticks(&spec(None, Some("2026-01-01T00:00:30Z"), None, None), 5),
            vec![30]
        );
        assert_eq!(
            ticks(&spec(None, Some("2026-01-01T01:00:30+01:00"), None, None), 5),
            vec![30]
        );
    }

    #[test]
    fn schedules_repeat_until_repeats_or_ttl() {
        assert_eq!(
            ticks(&spec(Some("@every 10s"), None, None, Some(3)), 10),
            vec![10, 20, 30]
        );
        assert_eq!(
            ticks(&spec(Some("@every 10s"), Some("5s"), None, Some(3)), 10),
            vec![5, 15, 25]
        );
        assert_eq!(
            ticks(&spec(Some("@every 10s"), None, Some("35s"), None), 10),
            vec![10, 20, 30]
        );
        // The ttl counts from the due time.
        assert_eq!(
            ticks(&spec(Some("@every 10s"), Some("10s"), Some("25s"), None), 10),
            vec![10, 20, 30]
        );
        assert_eq!(
            ticks(&spec(Some("*/20 * * * * *"), None, None, None), 4),
            vec![20, 40, 60, 80]
        );
        assert_eq!(
            ticks(&spec(Some("TZ=UTC @hourly"), None, None, Some(2)), 4),
            vec![3600, 7200]
        );
        assert_eq!(
            ticks(&spec(Some("TZ=UTC 0 0 0 * * *"), None, Some("P2D"), None), 4),
            vec![86400, 172800]
        );
    }

    #[test]
    fn bad_timings_are_refused_with_the_schedulers_words() {
        let cases = [
            (spec(None, None, None, None), "either a due time or a schedule"),
            (spec(None, Some("1s"), None, Some(2)), "must have a schedule to repeat"),
            (
                spec(Some("@daily"), None, None, Some(0)),
                "repeats must be greater than 0",
            ),
            (
                spec(None, Some("1s"), Some("5s"), None),
                "must have a schedule to have a ttl",
            ),
            (spec(Some("* * * * *"), None, None, None), "expected exactly 6 fields"),
            (spec(Some("@sometimes"), None, None, None), "unrecognized descriptor"),
            (spec(Some("61 * * * * *"), None, None, None), "61"),
            (
                spec(Some("@daily"), Some("soon"), None, None),
                "due time format not recognized",
            ),
            (
                spec(Some("@daily"), None, Some("forever"), None),
                "ttl format not recognized",
            ),
            (
                spec(Some("@daily"), Some("10s"), Some("2025-01-01T00:00:00Z"), None),
                "ttl must be greater",
            ),
            (
                spec(None, Some("999999999h"), None, None),
                "due time format not recognized",
            ),
        ];
        for (s, want) in cases {
            let err = window(&s, now()).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[test]
    fn iso8601_durations() {
        assert_eq!(iso8601_duration("PT1H30M"), Some(Duration::from_secs(5400)));
        assert_eq!(iso8601_duration("P1DT1S"), Some(Duration::from_secs(86401)));
        assert_eq!(iso8601_duration("P1W"), Some(Duration::from_secs(7 * 86400)));
        for bad in ["P", "PT", "P1S", "PT1D", "P1M1Y", "1D", "PT1H1H", "P-1D"] {
            assert_eq!(iso8601_duration(bad), None, "{bad}");
        }
    }
}
