//! `bindings.postgresql` (also `bindings.postgres`, Dapr's two names): an output binding running SQL. Operations
//! as Dapr's: `exec` (answers `rows-affected`), `query` (answers the rows as a JSON array of arrays, values in
//! column order) and `close`. The statement is the `sql` metadata; `params` is a JSON array bound to `$1`, `$2`,
//! .... Every answer carries `operation`, `sql`, `start-time`, `end-time` and `duration` metadata.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use base64::Engine;
use bytes::BytesMut;
use time::OffsetDateTime;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use super::{Binding, BindingError, Directions, InvokeRequest, InvokeResponse};
use crate::components::postgres::{PgConfig, PgPool};
use crate::components::{ComponentError, Metadata};

/// Most rows a `query` answers; a bigger result is an error rather than a sidecar out of memory.
const MAX_ROWS: usize = 100_000;

pub async fn build(md: Metadata) -> Result<Arc<dyn Binding>, ComponentError> {
    let pool = PgPool::connect(PgConfig::from_metadata(&md)?).await?;
    super::directed(
        &md,
        Arc::new(PostgresBinding {
            pool,
            closed: AtomicBool::new(false),
        }),
    )
}

struct PostgresBinding {
    pool: PgPool,
    closed: AtomicBool,
}

#[async_trait]
impl Binding for PostgresBinding {
    fn directions(&self) -> Directions {
        Directions::OUTPUT
    }

    fn operations(&self) -> &[&'static str] {
        &["exec", "query", "close"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        if req.operation == "close" {
            self.closed.store(true, Ordering::Release);
            self.pool.close().await;
            return Ok(None);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(BindingError::new("component is closed"));
        }
        let sql = super::required(&req, "sql")?.to_owned();
        let params: Vec<serde_json::Value> = match req.metadata.get("params").filter(|p| !p.is_empty()) {
            None => vec![],
            Some(p) => serde_json::from_str(p).map_err(|e| {
                BindingError::new(format!(
                    "invalid metadata property params: failed to unserialize into an array: {e}"
                ))
            })?,
        };
        let started = OffsetDateTime::now_utc();
        let clock = std::time::Instant::now();
        let client = self
            .pool
            .client()
            .await
            .map_err(|e| BindingError::new(format!("error executing query: {e}")))?;
        let run = |e: tokio_postgres::Error| BindingError::new(format!("error executing query: {}", pg_error(&e)));
        let stmt = client.prepare(&sql).await.map_err(run)?;
        let bound = bind(&params, stmt.params())?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let mut metadata = BTreeMap::new();
        let data = match req.operation.as_str() {
            "exec" => {
                let n = client.execute(&stmt, &refs).await.map_err(run)?;
                metadata.insert("rows-affected".to_owned(), n.to_string());
                bytes::Bytes::new()
            }
            "query" => {
                let rows = client.query(&stmt, &refs).await.map_err(run)?;
                if rows.len() > MAX_ROWS {
                    return Err(BindingError::new(format!(
                        "the query answered {} rows; the binding answers at most {MAX_ROWS}: add a LIMIT",
                        rows.len()
                    )));
                }
                let mut out = String::from("[");
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push('[');
                    for c in 0..row.len() {
                        if c > 0 {
                            out.push(',');
                        }
                        out.push_str(&cell(row, c)?);
                    }
                    out.push(']');
                }
                out.push(']');
                out.into()
            }
            other => {
                return Err(BindingError::new(format!(
                    "invalid operation type: {other}. Expected exec, query, or close"
                )));
            }
        };
        let ended = OffsetDateTime::now_utc();
        metadata.insert("operation".to_owned(), req.operation.clone());
        metadata.insert("sql".to_owned(), sql);
        metadata.insert("start-time".to_owned(), rfc3339(started));
        metadata.insert("end-time".to_owned(), rfc3339(ended));
        metadata.insert("duration".to_owned(), go_duration(clock.elapsed()));
        Ok(Some(InvokeResponse { data, metadata }))
    }

    async fn close(&self) {
        self.pool.close().await
    }
}

/// A server error as pgx writes it: `ERROR: relation "x" does not exist (SQLSTATE 42P01)`.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// `t` as Go's RFC3339Nano: UTC, trailing zeros of the fraction dropped.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
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
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A duration as Go's `Duration.String()` writes one: `1.234567ms`, `2.5s`, `850µs`.
fn go_duration(d: std::time::Duration) -> String {
    let ns = d.as_nanos();
    let (value, unit) = match ns {
        0 => return "0s".into(),
        n if n < 1_000 => return format!("{n}ns"),
        n if n < 1_000_000 => (n as f64 / 1e3, "µs"),
        n if n < 1_000_000_000 => (n as f64 / 1e6, "ms"),
        n => (n as f64 / 1e9, "s"),
    };
    format!("{value}{unit}")
}

/// A JSON parameter as the statement's parameter type wants it.
fn bind(params: &[serde_json::Value], types: &[Type]) -> Result<Vec<Box<dyn ToSql + Sync + Send>>, BindingError> {
    use serde_json::Value;
    if params.len() != types.len() {
        return Err(BindingError::new(format!(
            "the statement takes {} parameters and params has {}",
            types.len(),
            params.len()
        )));
    }
    let mut out: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(params.len());
    for (i, (v, ty)) in params.iter().zip(types).enumerate() {
        let wrong = || BindingError::new(format!("params[{i}] ({v}) cannot be bound to ${} of type {ty}", i + 1));
        if v.is_null() {
            out.push(Box::new(Null));
            continue;
        }
        let as_f64 = || v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
        let boxed: Box<dyn ToSql + Sync + Send> = match *ty {
            Type::BOOL => Box::new(v.as_bool().ok_or_else(wrong)?),
            Type::INT2 => Box::new(as_f64().filter(|f| f.abs() < 32768.0).ok_or_else(wrong)? as i16),
            Type::INT4 => Box::new(as_f64().filter(|f| f.abs() < 2_147_483_648.0).ok_or_else(wrong)? as i32),
            Type::INT8 => Box::new(match v.as_i64() {
                Some(n) => n,
                None => as_f64().filter(|f| f.abs() < 9.2e18).ok_or_else(wrong)? as i64,
            }),
            Type::FLOAT4 => Box::new(as_f64().ok_or_else(wrong)? as f32),
            Type::FLOAT8 => Box::new(as_f64().ok_or_else(wrong)?),
            Type::JSON | Type::JSONB => Box::new(v.clone()),
            Type::UUID => Box::new(
                v.as_str()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .ok_or_else(wrong)?,
            ),
            Type::TIMESTAMPTZ => Box::new(
                v.as_str()
                    .and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
                    .ok_or_else(wrong)?,
            ),
            Type::BYTEA => Box::new(match v {
                Value::String(s) => s.clone().into_bytes(),
                _ => return Err(wrong()),
            }),
            _ => Box::new(Text(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })),
        };
        out.push(boxed);
    }
    Ok(out)
}

/// SQL NULL of any type.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(&self, _: &Type, _: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// A value sent as text, for the types whose binary form is text (text, varchar, name, char, unknown, enums);
/// for any other type the server would misread it, so those are refused with the type named.
#[derive(Debug)]
struct Text(String);

impl ToSql for Text {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let text_like = matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
        ) || matches!(ty.kind(), tokio_postgres::types::Kind::Enum(_));
        if !text_like {
            return Err(format!(
                "parameters of type {ty} are not supported yet: cast it in the statement, e.g. $1::text::{ty}"
            )
            .into());
        }
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// A `numeric` value read as its exact decimal digits.
struct Numeric(String);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(i..i + 2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "a numeric value too short".into())
        };
        let ndigits = word(0)?.max(0) as usize;
        let weight = word(2)? as i32;
        let sign = word(4)? as u16;
        let dscale = word(6)?.max(0) as usize;
        match sign {
            0xC000 => return Ok(Numeric("\"NaN\"".into())),
            0xD000 => return Ok(Numeric("\"Infinity\"".into())),
            0xF000 => return Ok(Numeric("\"-Infinity\"".into())),
            _ => {}
        }
        let digits: Vec<i16> = (0..ndigits).map(|i| word(8 + 2 * i)).collect::<Result<_, _>>()?;
        // Integer part: groups 0..=weight; fraction: the groups after, to dscale digits.
        let mut int = String::new();
        for g in 0..=weight.max(-1) {
            let d = digits.get(g as usize).copied().unwrap_or(0);
            if int.is_empty() {
                if d != 0 {
                    int = d.to_string();
                }
            } else {
                int.push_str(&format!("{d:04}"));
            }
        }
        if int.is_empty() {
            int.push('0');
        }
        let mut frac = String::new();
        let first_frac = weight + 1;
        let mut g = first_frac;
        while frac.len() < dscale {
            let d = if g < 0 {
                0
            } else {
                digits.get(g as usize).copied().unwrap_or(0)
            };
            frac.push_str(&format!("{d:04}"));
            g += 1;
        }
        frac.truncate(dscale);
        let frac = frac.trim_end_matches('0');
        let neg = if sign == 0x4000 { "-" } else { "" };
        Ok(Numeric(if frac.is_empty() {
            format!("{neg}{int}")
        } else {
            format!("{neg}{int}.{frac}")
        }))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// One value of a row as JSON text, rendered as Dapr's binding renders it.
fn cell(row: &tokio_postgres::Row, i: usize) -> Result<String, BindingError> {
    let ty = row.columns()[i].type_().clone();
    let name = row.columns()[i].name().to_owned();
    let fail = |e: tokio_postgres::Error| BindingError::new(format!("error reading result column {name}: {e}"));
    macro_rules! get {
        ($t:ty) => {
            row.try_get::<_, Option<$t>>(i).map_err(fail)?
        };
    }
    let json = |v: Option<serde_json::Value>| v.unwrap_or(serde_json::Value::Null).to_string();
    Ok(match ty {
        Type::BOOL => json(get!(bool).map(Into::into)),
        Type::INT2 => json(get!(i16).map(Into::into)),
        Type::INT4 => json(get!(i32).map(Into::into)),
        Type::INT8 => json(get!(i64).map(Into::into)),
        Type::OID => json(get!(u32).map(Into::into)),
        Type::FLOAT4 => match get!(f32) {
            Some(f) if f.is_finite() => f.to_string(),
            Some(_) => return Err(BindingError::new(format!("column {name} holds a non-finite float"))),
            None => "null".into(),
        },
        Type::FLOAT8 => match get!(f64) {
            Some(f) if f.is_finite() => serde_json::Value::from(f).to_string(),
            Some(_) => return Err(BindingError::new(format!("column {name} holds a non-finite float"))),
            None => "null".into(),
        },
        Type::NUMERIC => get!(Numeric).map(|n| n.0).unwrap_or_else(|| "null".into()),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => json(get!(String).map(Into::into)),
        Type::JSON | Type::JSONB => json(get!(serde_json::Value)),
        Type::BYTEA => json(get!(Vec<u8>).map(|b| base64::engine::general_purpose::STANDARD.encode(b).into())),
        // pgx hands a uuid over as 16 bytes, which Go writes as an array of numbers.
        Type::UUID => json(get!(uuid::Uuid).map(|u| u.as_bytes().iter().map(|b| u64::from(*b)).collect())),
        Type::TIMESTAMPTZ => json(get!(OffsetDateTime).map(|t| rfc3339(t).into())),
        Type::TIMESTAMP => json(get!(time::PrimitiveDateTime).map(|t| rfc3339(t.assume_utc()).into())),
        Type::DATE => json(get!(time::Date).map(|d| rfc3339(d.midnight().assume_utc()).into())),
        ref other if matches!(other.kind(), tokio_postgres::types::Kind::Enum(_)) => json(get!(String).map(Into::into)),
        other => {
            return Err(BindingError::new(format!(
                "column {name} is of type {other}, which the binding cannot render yet: cast it in the query, e.g. {name}::text"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_are_written_as_go_writes_them() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_714_564_810_123_456_789).unwrap();
        assert_eq!(rfc3339(t), "2024-05-01T12:00:10.123456789Z");
        assert_eq!(go_duration(std::time::Duration::from_micros(1_234)), "1.234ms");
        assert_eq!(go_duration(std::time::Duration::from_millis(2_500)), "2.5s");
        assert_eq!(go_duration(std::time::Duration::from_nanos(850)), "850ns");
    }
}
