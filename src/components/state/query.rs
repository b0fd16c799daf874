//! Dapr's state query language (filter, sort, page), parsed once and evaluated over JSON values in Rust.
//! Backends without a native query engine (in-memory, sqlite) scan their rows and call [`Query::run`].

use std::cmp::Ordering;

use bytes::Bytes;
use serde_json::Value;

use crate::echo::echo;

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Eq(String, Value),
    Neq(String, Value),
    Gt(String, Value),
    Gte(String, Value),
    Lt(String, Value),
    Lte(String, Value),
    In(String, Vec<Value>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sort {
    pub key: String,
    pub descending: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort: Vec<Sort>,
    /// Page size; 0 means everything.
    pub limit: usize,
    /// Continuation token from a previous page: the offset of its first result. It is checked when the query
    /// runs, as Dapr's stores do.
    pub token: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueryItem {
    pub key: String,
    pub data: Bytes,
    pub etag: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResponse {
    pub results: Vec<QueryItem>,
    pub token: Option<String>,
}

impl Query {
    /// Parses the JSON body of a query request.
    pub fn parse(v: &Value) -> Result<Query, String> {
        let obj = v.as_object().ok_or("query must be a JSON object")?;
        let filter = match obj.get("filter") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(f) => Some(parse_filter(f)?),
        };
        let mut sort = vec![];
        if let Some(s) = obj.get("sort").filter(|s| !s.is_null()) {
            for entry in s.as_array().ok_or("\"sort\" must be an array")? {
                let key = entry
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or("every sort entry needs a string \"key\"")?;
                let descending = match entry.get("order").and_then(Value::as_str).unwrap_or("ASC") {
                    o if o.eq_ignore_ascii_case("ASC") => false,
                    o if o.eq_ignore_ascii_case("DESC") => true,
                    o => return Err(format!("sort order {:?} must be ASC or DESC", echo(o))),
                };
                sort.push(Sort {
                    key: key.into(),
                    descending,
                });
            }
        }
        let (mut limit, mut token) = (0, None);
        if let Some(p) = obj.get("page").filter(|p| !p.is_null()) {
            if let Some(l) = p.get("limit").filter(|l| !l.is_null()) {
                // Dapr reads the limit as a Go int and pages only when it is positive: 0 and negative limits
                // return everything. A limit that is not a 64-bit integer fails to parse, as in Dapr.
                let l = l.as_i64().ok_or("\"page.limit\" must be an integer")?;
                limit = usize::try_from(l.max(0)).unwrap_or(usize::MAX);
            }
            token = p
                .get("token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
        }
        Ok(Query {
            filter,
            sort,
            limit,
            token,
        })
    }

    /// Filters, sorts and pages `rows` (key without prefix, raw value, etag). Non-JSON values never match a filter.
    pub fn run(&self, rows: impl IntoIterator<Item = QueryItem>) -> Result<QueryResponse, String> {
        let mut matched: Vec<(Value, QueryItem)> = rows
            .into_iter()
            .filter_map(|item| {
                let v: Value = serde_json::from_slice(&item.data).unwrap_or(Value::Null);
                match &self.filter {
                    Some(f) if !f.matches(&v) => None,
                    _ => Some((v, item)),
                }
            })
            .collect();
        matched.sort_by(|(a, ka), (b, kb)| {
            for s in &self.sort {
                let ord = compare(lookup(a, &s.key), lookup(b, &s.key));
                let ord = if s.descending { ord.reverse() } else { ord };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            ka.key.cmp(&kb.key)
        });
        let start = match &self.token {
            None => 0,
            Some(t) => t.parse::<usize>().map_err(|_| {
                format!(
                    "invalid page token {:?}: must be an offset from a previous page",
                    echo(t)
                )
            })?,
        };
        let total = matched.len();
        let end = if self.limit == 0 {
            total
        } else {
            start.saturating_add(self.limit).min(total)
        };
        let results = matched
            .into_iter()
            .skip(start)
            .take(end.saturating_sub(start))
            .map(|(_, i)| i)
            .collect();
        let token = (self.limit > 0 && end < total).then(|| end.to_string());
        Ok(QueryResponse { results, token })
    }
}

fn parse_filter(v: &Value) -> Result<Filter, String> {
    let obj = v
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or("a filter must be an object with exactly one operator")?;
    let (op, arg) = obj.iter().next().expect("one entry");
    let field = |arg: &Value| -> Result<(String, Value), String> {
        let m = arg
            .as_object()
            .filter(|m| m.len() == 1)
            .ok_or(format!("{op} takes an object with one field"))?;
        let (k, v) = m.iter().next().expect("one entry");
        Ok((k.clone(), v.clone()))
    };
    let list = |arg: &Value| -> Result<Vec<Filter>, String> {
        let items = arg.as_array().ok_or(format!("{op} takes an array of filters"))?;
        if items.len() < 2 {
            return Err(format!("{op} needs at least two filters"));
        }
        items.iter().map(parse_filter).collect()
    };
    Ok(match op.to_ascii_uppercase().as_str() {
        "EQ" => field(arg).map(|(k, v)| Filter::Eq(k, v))?,
        "NEQ" => field(arg).map(|(k, v)| Filter::Neq(k, v))?,
        "GT" => field(arg).map(|(k, v)| Filter::Gt(k, v))?,
        "GTE" => field(arg).map(|(k, v)| Filter::Gte(k, v))?,
        "LT" => field(arg).map(|(k, v)| Filter::Lt(k, v))?,
        "LTE" => field(arg).map(|(k, v)| Filter::Lte(k, v))?,
        "IN" => {
            let (k, v) = field(arg)?;
            let Value::Array(values) = v else {
                return Err("IN takes an array of values".into());
            };
            Filter::In(k, values)
        }
        "AND" => Filter::And(list(arg)?),
        "OR" => Filter::Or(list(arg)?),
        other => {
            return Err(format!(
                "unsupported filter operator {:?} (EQ, NEQ, GT, GTE, LT, LTE, IN, AND, OR)",
                echo(other)
            ));
        }
    })
}

impl Filter {
    fn matches(&self, doc: &Value) -> bool {
        let cmp = |k: &str, v: &Value| lookup(doc, k).map(|d| compare(Some(d), Some(v)));
        match self {
            Filter::Eq(k, v) => cmp(k, v) == Some(Ordering::Equal),
            Filter::Neq(k, v) => cmp(k, v) != Some(Ordering::Equal),
            Filter::Gt(k, v) => cmp(k, v) == Some(Ordering::Greater),
            Filter::Gte(k, v) => matches!(cmp(k, v), Some(Ordering::Greater | Ordering::Equal)),
            Filter::Lt(k, v) => cmp(k, v) == Some(Ordering::Less),
            Filter::Lte(k, v) => matches!(cmp(k, v), Some(Ordering::Less | Ordering::Equal)),
            Filter::In(k, vs) => vs.iter().any(|v| cmp(k, v) == Some(Ordering::Equal)),
            Filter::And(fs) => fs.iter().all(|f| f.matches(doc)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(doc)),
        }
    }
}

/// Follows a dotted path (`person.org`) into a JSON document; a leading `value.` is accepted too.
fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let walk = |p: &str| p.split('.').try_fold(doc, |v, seg| v.get(seg));
    walk(path).or_else(|| path.strip_prefix("value.").and_then(walk))
}

/// Orders JSON scalars: missing < null < bool < number < string < others (by text).
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None => 0,
            Some(Value::Null) => 1,
            Some(Value::Bool(_)) => 2,
            Some(Value::Number(_)) => 3,
            Some(Value::String(_)) => 4,
            Some(_) => 5,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(x), Some(y)) if rank(a) == rank(b) => x.to_string().cmp(&y.to_string()),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows() -> Vec<QueryItem> {
        [
            ("1", json!({"person": {"org": "Dev Ops", "id": 1036}, "state": "CA"})),
            ("2", json!({"person": {"org": "Hardware", "id": 1028}, "state": "WA"})),
            ("3", json!({"person": {"org": "Finance", "id": 1071}, "state": "NY"})),
            ("4", json!({"person": {"org": "Dev Ops", "id": 1042}, "state": "WA"})),
        ]
        .into_iter()
        .map(|(k, v)| QueryItem {
            key: k.into(),
            data: Bytes::from(v.to_string()),
            etag: None,
        })
        .collect()
    }

    fn keys(r: &QueryResponse) -> Vec<&str> {
        r.results.iter().map(|i| i.key.as_str()).collect()
    }

    #[test]
    fn filter_sort_and_page() {
        let q = Query::parse(&json!({
            "filter": {"OR": [{"EQ": {"person.org": "Dev Ops"}}, {"IN": {"state": ["NY"]}}]},
            "sort": [{"key": "person.id", "order": "DESC"}],
            "page": {"limit": 2}
        }))
        .unwrap();
        let first = q.run(rows()).unwrap();
        assert_eq!(keys(&first), ["3", "4"]);
        assert_eq!(first.token.as_deref(), Some("2"));
        let next = Query {
            token: first.token.clone(),
            ..q
        }
        .run(rows())
        .unwrap();
        assert_eq!(keys(&next), ["1"]);
        assert_eq!(next.token, None);
    }

    #[test]
    fn comparisons_and_empty_query() {
        let q = Query::parse(&json!({"filter": {"GT": {"person.id": 1040}}})).unwrap();
        assert_eq!(keys(&q.run(rows()).unwrap()), ["3", "4"]);
        assert_eq!(Query::parse(&json!({})).unwrap().run(rows()).unwrap().results.len(), 4);
    }

    #[test]
    fn page_limits_and_tokens_at_their_extremes() {
        // Dapr pages only with a positive limit: zero and negative limits return everything.
        for limit in [0, -1, i64::MIN] {
            let q = Query::parse(&json!({"page": {"limit": limit}})).unwrap();
            let all = q.run(rows()).unwrap();
            assert_eq!((all.results.len(), all.token), (4, None), "limit {limit}");
        }
        // The largest limit and offsets past the end page without overflowing.
        let q = Query::parse(&json!({"page": {"limit": i64::MAX, "token": usize::MAX.to_string()}})).unwrap();
        let past = q.run(rows()).unwrap();
        assert_eq!((past.results.len(), past.token), (0, None));
        let q = Query::parse(&json!({"page": {"limit": 3, "token": "3"}})).unwrap();
        assert_eq!(keys(&q.run(rows()).unwrap()), ["4"]);
        // Limits that are not 64-bit integers, and tokens that are not offsets, are errors.
        for limit in [json!(1.5), json!("2"), json!(u64::MAX), json!(1e30)] {
            assert!(Query::parse(&json!({"page": {"limit": limit}})).is_err(), "{limit}");
        }
        for token in ["-1", "x", "99999999999999999999999"] {
            let q = Query::parse(&json!({"page": {"limit": 1, "token": token}})).unwrap();
            assert!(q.run(rows()).unwrap_err().contains("invalid page token"), "{token}");
        }
        let huge = "9".repeat(1 << 20);
        let q = Query::parse(&json!({"page": {"limit": 1, "token": huge}})).unwrap();
        assert!(
            q.run(rows()).unwrap_err().len() < 1024,
            "the error echoes a bounded prefix of the token"
        );
    }

    #[test]
    fn malformed_queries_are_rejected() {
        assert!(Query::parse(&json!({"filter": {"LIKE": {"a": 1}}})).is_err());
        assert!(Query::parse(&json!({"filter": {"AND": [{"EQ": {"a": 1}}]}})).is_err());
        assert!(Query::parse(&json!({"sort": [{"key": "a", "order": "UP"}]})).is_err());
        assert!(Query::parse(&json!([1])).is_err());
    }

    #[test]
    fn the_largest_page_limit_past_the_first_page_is_the_rest() {
        let q = Query::parse(&json!({"page": {"limit": i64::MAX, "token": "1"}})).unwrap();
        let r = q.run(rows()).unwrap();
        assert_eq!(keys(&r), ["2", "3", "4"]);
        assert_eq!(r.token, None);
    }
}
