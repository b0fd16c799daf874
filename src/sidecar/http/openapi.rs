//! The published contract: the OpenAPI 3.1 document of this HTTP API (`openapi/tandem-http.yaml`), built into the
//! binary and served at `GET /v1.0/openapi.yaml`. A test holds it to the router: a route served but not
//! documented, or documented but not served, fails it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The OpenAPI document, as checked in.
pub const DOCUMENT: &str = include_str!("../../../openapi/tandem-http.yaml");

/// Where the sidecar serves [`DOCUMENT`] (on the API port, behind the API token like every other non-health route).
pub const PATH: &str = "/v1.0/openapi.yaml";

#[tracing::instrument(level = "debug", name = "http.openapi.document", skip_all)]
pub async fn document() -> Response {
    let mut resp = (StatusCode::OK, DOCUMENT).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

    type Operations = BTreeMap<String, BTreeSet<String>>;

    /// The text from an opening `(` (at `open`) to its matching `)`.
    fn balanced(src: &str, open: usize) -> &str {
        let mut depth = 0usize;
        for (i, c) in src[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return &src[open + 1..open + i];
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced parentheses after byte {open} of the router source");
    }

    /// Every `.route("path", method_router)` in `src`: the path and the HTTP methods its method router names
    /// (`get(..)`, `.put(..)`, `axum::routing::any(..)`; `any` is every method).
    fn routes_in(src: &str) -> Operations {
        let mut out = Operations::new();
        for (at, _) in src.match_indices(".route(") {
            let args = balanced(src, at + ".route".len());
            let path = args
                .split('"')
                .nth(1)
                .expect("a route's first argument is a string literal");
            let methods = out.entry(path.to_owned()).or_default();
            for (i, _) in args.match_indices('(') {
                let name = args[..i]
                    .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default();
                if name == "any" {
                    methods.extend(METHODS.iter().map(|m| m.to_string()));
                } else if METHODS.contains(&name) {
                    methods.insert(name.to_owned());
                }
            }
        }
        out
    }

    /// The text of top-level `fn name` in `src`, up to its closing brace.
    fn fn_body<'a>(src: &'a str, name: &str) -> &'a str {
        let start = src.find(&format!("fn {name}(")).expect("the function exists");
        let rest = &src[start..];
        &rest[..rest.find("\n}\n").expect("a top-level fn ends with `}` in column 0")]
    }

    /// The router's `{*rest}` capture is documented as the shape Dapr's reference gives it.
    fn documented_path(route: &str) -> String {
        match route {
            "/v1.0/invoke/{*rest}" => "/v1.0/invoke/{appId}/method/{method}".to_owned(),
            other => other.replace("{*topic}", "{topic}"),
        }
    }

    fn document() -> serde_yaml::Value {
        serde_yaml::from_str(DOCUMENT).expect("openapi/tandem-http.yaml is YAML")
    }

    /// (path -> methods) the document describes, and the subset marked as served on the public port too.
    fn documented(doc: &serde_yaml::Value) -> (Operations, Operations) {
        let (mut all, mut public) = (Operations::new(), Operations::new());
        let paths = doc["paths"].as_mapping().expect("paths is a map");
        for (path, item) in paths {
            let path = path.as_str().expect("paths are strings");
            for m in METHODS {
                if let Some(op) = item.get(m) {
                    all.entry(path.to_owned()).or_default().insert(m.to_owned());
                    if op.get("x-tandem-public-port").and_then(serde_yaml::Value::as_bool) == Some(true) {
                        public.entry(path.to_owned()).or_default().insert(m.to_owned());
                    }
                }
            }
        }
        (all, public)
    }

    fn router_source() -> &'static str {
        include_str!("mod.rs")
    }

    fn served() -> Operations {
        routes_in(router_source())
            .into_iter()
            .map(|(p, m)| (documented_path(&p), m))
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_served() {
        let (doc, _) = documented(&document());
        let served = served();
        assert!(served.contains_key(PATH), "the router serves the document: {served:?}");
        assert_eq!(
            served, doc,
            "the router (src/sidecar/http/mod.rs) and openapi/tandem-http.yaml disagree: update the document"
        );
    }

    #[test]
    fn the_public_port_routes_are_marked_in_the_document() {
        let (_, public) = documented(&document());
        let src = router_source();
        assert!(fn_body(src, "public_router").contains(".merge(health_routes())"));
        assert_eq!(
            routes_in(fn_body(src, "public_router")).len(),
            0,
            "the public router serves only health_routes()"
        );
        assert_eq!(routes_in(fn_body(src, "health_routes")), public);
    }

    #[test]
    fn the_route_scanner_sees_every_method_of_a_route() {
        let src = r#"
            Router::new()
                .route("/a/{x}", get(h::get).delete(h::delete))
                .route(
                    "/b",
                    post(h::save)
                        .put(h::save),
                )
                .route("/c/{*rest}", axum::routing::any(h::invoke))
                .route("/d", axum::routing::put(metadata::put_metadata))
        "#;
        let r = routes_in(src);
        let set = |ms: &[&str]| ms.iter().map(|m| m.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(r["/a/{x}"], set(&["get", "delete"]));
        assert_eq!(r["/b"], set(&["post", "put"]));
        assert_eq!(r["/c/{*rest}"], set(&METHODS));
        assert_eq!(r["/d"], set(&["put"]));
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_daprs_error_body_and_token() {
        let doc = document();
        assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
        let scheme = &doc["components"]["securitySchemes"]["daprApiToken"];
        assert_eq!(
            (scheme["type"].as_str(), scheme["in"].as_str(), scheme["name"].as_str()),
            (Some("apiKey"), Some("header"), Some("dapr-api-token"))
        );
        let error = &doc["components"]["schemas"]["DaprError"];
        let required: Vec<_> = error["required"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str())
            .collect();
        assert_eq!(required, [Some("errorCode"), Some("message")]);
        // Every error response of a Dapr API route (the app's own answers to invocation aside) is either Dapr's
        // error body or the token middleware's plain-text 401.
        for (path, item) in doc["paths"].as_mapping().unwrap() {
            if path.as_str().unwrap().starts_with("/v1.0/invoke/") {
                continue;
            }
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                for (status, resp) in op["responses"].as_mapping().unwrap() {
                    let status = status.as_str().unwrap();
                    assert!(
                        status.len() == 3 && status.parse::<u16>().is_ok(),
                        "{path:?} {m} {status}"
                    );
                    if status.starts_with('2') {
                        continue;
                    }
                    let text = serde_yaml::to_string(resp).unwrap();
                    assert!(
                        text.contains("#/components/schemas/Error")
                            || text.contains("#/components/responses/Unauthorized"),
                        "{path:?} {m} {status} is not Dapr's error body: {text}"
                    );
                }
            }
        }
    }
}
