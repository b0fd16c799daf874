//! Where an invocation goes: parses `/v1.0/invoke/<target>/method/<method>` and the `dapr-app-id` header forms,
//! and classifies the target as an app (with namespace), an HTTPEndpoint name or an external URL.

use axum::http::HeaderMap;
use base64::Engine;

/// The parsed destination of an invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Dapr app, in a namespace (empty: the caller's own).
    App { app_id: String, namespace: String },
    /// A full `http://` or `https://` base URL.
    Url(String),
    /// A name that may be an HTTPEndpoint resource (resolved against the loaded ones by the caller).
    Name(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("failed getting app id either from the URL path or the header dapr-app-id")]
    NoAppId,
    #[error("invalid app id {0}: an app id may have at most one '.', separating the app from its namespace")]
    TooManyDots(String),
    #[error("method name is missing: call /v1.0/invoke/<app-id>/method/<method>")]
    NoMethod,
}

/// The target and method of an HTTP call to the Dapr API: from the `dapr-app-id` header (or Basic auth user
/// `dapr-app-id`), where the whole path is the method, else from `/v1.0/invoke/<target>/method/<method>`.
/// Removes the header so it is not forwarded.
pub fn from_http(path: &str, headers: &mut HeaderMap) -> Result<(String, String), TargetError> {
    if let Some(id) = headers
        .remove("dapr-app-id")
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        && !id.is_empty()
    {
        return Ok((id, clean(path).trim_start_matches('/').to_owned()));
    }
    if let Some(id) = basic_auth_app_id(headers) {
        return Ok((id, clean(path).trim_start_matches('/').to_owned()));
    }
    let rest = path.strip_prefix("/v1.0/invoke/").ok_or(TargetError::NoAppId)?;
    let idx = rest.find("/method/").filter(|i| *i > 0);
    let Some(idx) = idx else {
        return if rest.ends_with("/method") || rest.trim_end_matches('/').find('/').is_none() {
            Err(TargetError::NoMethod)
        } else {
            Err(TargetError::NoAppId)
        };
    };
    let raw_target = &rest[..idx];
    let target = percent_encoding::percent_decode_str(raw_target)
        .decode_utf8()
        .map(|s| s.into_owned())
        .unwrap_or_else(|_| raw_target.to_owned());
    let method = clean(&rest[idx + "/method/".len()..]);
    let method = method.trim_start_matches('/');
    if method.is_empty() || method == "." {
        return Err(TargetError::NoMethod);
    }
    Ok((target, method.to_owned()))
}

fn basic_auth_app_id(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, id) = text.split_once(':')?;
    (user.eq_ignore_ascii_case("dapr-app-id") && !id.is_empty()).then(|| id.to_owned())
}

/// Like Go's `path.Clean` for what matters here: collapses `//`, resolves `.` and `..` segments.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = vec![];
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if path.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Classifies a target string: URL, app (`app` or `app.namespace`), or a bare name that may be an HTTPEndpoint.
pub fn classify(target: &str) -> Result<Target, TargetError> {
    if target.starts_with("http://") || target.starts_with("https://") {
        return Ok(Target::Url(target.trim_end_matches('/').to_owned()));
    }
    // Paths collapsed by proxies turn `http://x` into `http:/x`.
    for scheme in ["http:/", "https:/"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return Ok(Target::Url(format!("{scheme}/{}", rest.trim_end_matches('/'))));
        }
    }
    let parts: Vec<&str> = target.split('.').collect();
    match parts.as_slice() {
        [id] if !id.is_empty() => Ok(Target::Name((*id).to_owned())),
        [id, ns] if !id.is_empty() && !ns.is_empty() => Ok(Target::App {
            app_id: (*id).to_owned(),
            namespace: (*ns).to_owned(),
        }),
        [""] => Err(TargetError::NoAppId),
        _ => Err(TargetError::TooManyDots(target.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str) -> Result<(String, String), TargetError> {
        from_http(path, &mut HeaderMap::new())
    }

    #[test]
    fn path_form() {
        assert_eq!(
            parse("/v1.0/invoke/orders/method/api/v1/add").unwrap(),
            ("orders".into(), "api/v1/add".into())
        );
        assert_eq!(
            parse("/v1.0/invoke/orders.prod/method/add").unwrap(),
            ("orders.prod".into(), "add".into())
        );
        assert_eq!(
            parse("/v1.0/invoke/http://example.com/method/add").unwrap(),
            ("http://example.com".into(), "add".into())
        );
        assert_eq!(
            parse("/v1.0/invoke/http%3A%2F%2Fexample.com/method/add").unwrap(),
            ("http://example.com".into(), "add".into())
        );
        assert_eq!(parse("/v1.0/invoke/orders/method/"), Err(TargetError::NoMethod));
        assert_eq!(parse("/v1.0/invoke/orders"), Err(TargetError::NoMethod));
        assert_eq!(parse("/v1.0/foo"), Err(TargetError::NoAppId));
        assert_eq!(parse("/v1.0/invoke/a/method/x/../y").unwrap().1, "y");
    }

    #[test]
    fn header_forms_take_the_whole_path_and_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("dapr-app-id", "orders".parse().unwrap());
        assert_eq!(
            from_http("/api/add", &mut h).unwrap(),
            ("orders".into(), "api/add".into())
        );
        assert!(h.get("dapr-app-id").is_none());
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode("dapr-app-id:billing");
        h.insert("authorization", format!("Basic {token}").parse().unwrap());
        assert_eq!(
            from_http("/charge", &mut h).unwrap(),
            ("billing".into(), "charge".into())
        );
    }

    #[test]
    fn classification() {
        assert_eq!(classify("orders").unwrap(), Target::Name("orders".into()));
        assert_eq!(
            classify("orders.prod").unwrap(),
            Target::App {
                app_id: "orders".into(),
                namespace: "prod".into()
            }
        );
        assert_eq!(classify("https://x.io/").unwrap(), Target::Url("https://x.io".into()));
        assert_eq!(classify("http:/x.io").unwrap(), Target::Url("http://x.io".into()));
        assert_eq!(classify("a.b.c"), Err(TargetError::TooManyDots("a.b.c".into())));
    }
}
