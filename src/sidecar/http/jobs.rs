//! HTTP Jobs handlers: `POST|GET|DELETE /v1.0(-alpha1)/jobs/<name>`. A body is read as daprd reads its
//! `JobHTTPRequest` (protobuf JSON: camelCase or proto names, numbers as numbers or strings, `data` any JSON);
//! a job reads back as protobuf JSON of Dapr's `Job`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json};
use tonic::Code;
use tracing::instrument;

use super::{ApiState, DaprPath, json_response, read_body};
use crate::sidecar::error::ApiError;
use crate::sidecar::jobs::{FailurePolicy, Job, data};

/// A `POST` body: the job (named from the URL) and its `overwrite` flag; `name` is a name given in the body.
#[derive(Debug, PartialEq)]
pub struct ScheduleBody {
    pub name: String,
    pub job: Job,
    pub overwrite: bool,
}

fn field<'a>(o: &'a Map<String, Json>, camel: &str, snake: &str) -> Option<&'a Json> {
    o.get(camel).or_else(|| o.get(snake)).filter(|v| !v.is_null())
}

fn string(o: &Map<String, Json>, camel: &str, snake: &str) -> Result<Option<String>, String> {
    match field(o, camel, snake) {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("invalid value for string field {camel}: {v}")),
    }
}

/// A uint32 as protobuf JSON takes it: an integral number, or a string holding one.
fn uint32(v: &Json, name: &str) -> Result<u32, String> {
    let n = match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) if s.trim() == s => s.parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) => Ok(n as u32),
        _ => Err(format!("invalid value for uint32 field {name}: {v}")),
    }
}

/// A `google.protobuf.Duration` in protobuf JSON: `"<seconds>[.<fraction>]s"`.
fn proto_duration(v: &Json) -> Result<Duration, String> {
    let bad = || format!("invalid google.protobuf.Duration value {v}");
    let Json::String(s) = v else { return Err(bad()) };
    let secs = s.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    if whole > 315_576_000_000 {
        return Err(bad());
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(Duration::new(whole, nanos))
}

fn failure_policy(v: &Json) -> Result<FailurePolicy, String> {
    let Json::Object(o) = v else {
        return Err(format!("invalid value for message field failurePolicy: {v}"));
    };
    let drop = o.get("drop").filter(|v| !v.is_null());
    let constant = o.get("constant").filter(|v| !v.is_null());
    match (drop, constant) {
        (Some(_), Some(_)) => Err("failurePolicy: only one of drop and constant may be set".into()),
        (Some(Json::Object(_)), None) => Ok(FailurePolicy::Drop),
        (None, Some(Json::Object(c))) => {
            let interval = match c.get("interval").filter(|v| !v.is_null()) {
                Some(i) => proto_duration(i)?,
                None => Duration::ZERO,
            };
            let max_retries = field(c, "maxRetries", "max_retries")
                .map(|m| uint32(m, "maxRetries"))
                .transpose()?;
            Ok(FailurePolicy::Constant { interval, max_retries })
        }
        (None, None) => Ok(FailurePolicy::default()),
        _ => Err(format!("invalid value for failurePolicy: {v}")),
    }
}

/// Decodes a `POST` body; an empty body sets nothing.
pub fn decode(body: &[u8]) -> Result<ScheduleBody, ApiError> {
    let mut out = ScheduleBody {
        name: String::new(),
        job: Job {
            name: String::new(),
            schedule: None,
            repeats: None,
            due_time: None,
            ttl: None,
            data: None,
            failure_policy: FailurePolicy::default(),
        },
        overwrite: false,
    };
    if body.trim_ascii().is_empty() {
        return Ok(out);
    }
    let v: Json = serde_json::from_slice(body).map_err(ApiError::malformed_request)?;
    let Json::Object(o) = v else {
        return Err(ApiError::malformed_request("a request body must be a JSON object"));
    };
    let bad = ApiError::malformed_request;
    out.name = string(&o, "name", "name").map_err(bad)?.unwrap_or_default();
    out.job.schedule = string(&o, "schedule", "schedule").map_err(bad)?;
    out.job.due_time = string(&o, "dueTime", "due_time").map_err(bad)?;
    out.job.ttl = string(&o, "ttl", "ttl").map_err(bad)?;
    out.job.repeats = field(&o, "repeats", "repeats")
        .map(|r| uint32(r, "repeats"))
        .transpose()
        .map_err(bad)?;
    out.job.data = field(&o, "data", "data").map(data::from_json);
    out.overwrite = match field(&o, "overwrite", "overwrite") {
        None => false,
        Some(Json::Bool(b)) => *b,
        Some(v) => return Err(bad(format!("invalid value for bool field overwrite: {v}"))),
    };
    if let Some(p) = field(&o, "failurePolicy", "failure_policy") {
        out.job.failure_policy = failure_policy(p).map_err(bad)?;
    }
    Ok(out)
}

/// A job as daprd writes it: protobuf JSON of `Job` in its field order, unset fields left out.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobJson<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeats: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    due_time: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Json>,
    failure_policy: Json,
}

pub fn encode(job: &Job) -> JobJson<'_> {
    let failure_policy = match job.failure_policy {
        FailurePolicy::Drop => serde_json::json!({ "drop": {} }),
        FailurePolicy::Constant { interval, max_retries } => {
            let mut c = Map::new();
            c.insert("interval".into(), duration_json(interval).into());
            if let Some(m) = max_retries {
                c.insert("maxRetries".into(), m.into());
            }
            serde_json::json!({ "constant": c })
        }
    };
    JobJson {
        name: &job.name,
        schedule: job.schedule.as_deref(),
        repeats: job.repeats,
        due_time: job.due_time.as_deref(),
        ttl: job.ttl.as_deref(),
        data: job.data.as_ref().map(data::to_http_json),
        failure_policy,
    }
}

/// A duration as Go's protojson writes it: `1s`, `1.500s`, `0.000001s`.
fn duration_json(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}.{:03}s", d.as_secs(), nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}.{:06}s", d.as_secs(), nanos / 1_000)
    } else {
        format!("{}.{nanos:09}s", d.as_secs())
    }
}

#[instrument(level = "debug", name = "http.jobs.schedule", skip_all, fields(job = %crate::echo::echo(path.store())))]
pub async fn schedule(State(st): State<ApiState>, path: DaprPath, req: Body) -> Response {
    let bytes = match read_body(req, st.max_body).await {
        Ok(b) => b,
        Err(e) => return ApiError::body_read(e).into_response(),
    };
    let mut b = match decode(&bytes) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // The name belongs in the URL only.
    if !b.name.is_empty() {
        return ApiError::new(
            400,
            Code::InvalidArgument,
            "DAPR_SCHEDULER_JOB_NAME",
            "Set the job name in the url only",
        )
        .with_reason("DAPR_SCHEDULER_JOB_NAME")
        .for_app(&st.rt.app_id)
        .into_response();
    }
    b.job.name = path.store().trim().to_owned();
    match st.rt.jobs.schedule(Some(b.job), b.overwrite).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[instrument(level = "debug", name = "http.jobs.get", skip_all, fields(job = %crate::echo::echo(path.store())))]
pub async fn get(State(st): State<ApiState>, path: DaprPath) -> Response {
    match st.rt.jobs.get(path.store()).await {
        Ok(job) => json_response(StatusCode::OK, encode(&job)),
        Err(e) => e.into_response(),
    }
}

#[instrument(level = "debug", name = "http.jobs.delete", skip_all, fields(job = %crate::echo::echo(path.store())))]
pub async fn delete(State(st): State<ApiState>, path: DaprPath) -> Response {
    match st.rt.jobs.delete(path.store()).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quickstarts_body_reads_and_reads_back_as_daprs() {
        let b = decode(
            br#"{"data": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "R2-D2:Oil Change"}, "dueTime": "15s"}"#,
        )
        .unwrap();
        assert!(!b.overwrite && b.name.is_empty());
        let mut job = b.job;
        job.name = "R2-D2".into();
        assert_eq!(
            serde_json::to_string(&encode(&job)).unwrap(),
            r#"{"name":"R2-D2","dueTime":"15s","data":{"@type":"type.googleapis.com/google.protobuf.Value","value":{"@type":"type.googleapis.com/google.protobuf.StringValue","value":"R2-D2:Oil Change"}},"failurePolicy":{"constant":{"interval":"1s","maxRetries":3}}}"#
        );
    }

    #[test]
    fn every_field_in_either_spelling() {
        let b = decode(
            br#"{"schedule":"@every 1s","repeats":"3","due_time":"1s","ttl":"1h","overwrite":true,"name":"x",
                 "failure_policy":{"constant":{"interval":"2.5s","max_retries":5}}}"#,
        )
        .unwrap();
        assert_eq!(b.name, "x");
        assert!(b.overwrite);
        assert_eq!(b.job.repeats, Some(3));
        assert_eq!(b.job.due_time.as_deref(), Some("1s"));
        assert_eq!(
            b.job.failure_policy,
            FailurePolicy::Constant {
                interval: Duration::from_millis(2500),
                max_retries: Some(5)
            }
        );
        assert_eq!(
            serde_json::to_value(encode(&b.job)).unwrap()["failurePolicy"],
            serde_json::json!({"constant":{"interval":"2.500s","maxRetries":5}})
        );
        let d = decode(br#"{"failurePolicy":{"drop":{}}}"#).unwrap();
        assert_eq!(d.job.failure_policy, FailurePolicy::Drop);
        assert_eq!(
            serde_json::to_value(encode(&d.job)).unwrap()["failurePolicy"],
            serde_json::json!({"drop":{}})
        );
        assert_eq!(decode(b"").unwrap().job.schedule, None);
    }

    #[test]
    fn bad_bodies_are_malformed_requests() {
        for body in [
            "{",
            "[]",
            r#"{"repeats":-1}"#,
            r#"{"repeats":1.5}"#,
            r#"{"repeats":4294967296}"#,
            r#"{"schedule":5}"#,
            r#"{"overwrite":"yes"}"#,
            r#"{"failurePolicy":{"drop":{},"constant":{}}}"#,
            r#"{"failurePolicy":{"constant":{"interval":"5"}}}"#,
            r#"{"failurePolicy":{"constant":{"interval":"-5s"}}}"#,
            r#"{"failurePolicy":"drop"}"#,
        ] {
            let e = decode(body.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.code), (400, "ERR_MALFORMED_REQUEST"), "{body}");
        }
    }
}
