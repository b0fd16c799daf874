//! Access control tests: Dapr's own unit cases (pkg/acl) and the documented scenarios.

use super::*;
use crate::api::Configuration;
use crate::api::configuration::AppOperation;

fn from_yaml(yaml: &str) -> AccessControl {
    let config: Configuration = serde_yaml::from_str(yaml).expect("test YAML parses");
    AccessControl::new(config.spec.access_control.as_ref()).expect("spec compiles")
}

fn caller(app: &str, ns: &str, td: &str) -> CallerIdentity {
    CallerIdentity {
        app_id: app.into(),
        namespace: ns.into(),
        trust_domain: td.into(),
    }
}

fn op(name: &str, verbs: &[&str], action: &str) -> AppOperation {
    AppOperation {
        name: name.into(),
        http_verb: verbs.iter().map(|v| v.to_string()).collect(),
        action: action.into(),
    }
}

fn policy(app: &str, default: &str, td: &str, ns: &str, ops: Vec<AppOperation>) -> AppPolicy {
    AppPolicy {
        app_id: app.into(),
        default_action: default.into(),
        trust_domain: td.into(),
        namespace: ns.into(),
        operations: ops,
    }
}

/// The fixture of Dapr's own ACL tests (pkg/acl/acl_test.go).
fn dapr_fixture() -> AccessControl {
    let spec = AccessControlSpec {
        default_action: "deny".into(),
        trust_domain: "abcd".into(),
        policies: vec![
            policy(
                "app1",
                "allow",
                "public",
                "ns1",
                vec![op("/op1", &["POST", "GET"], "allow"), op("/op2", &["*"], "deny")],
            ),
            policy(
                "app2",
                "deny",
                "domain1",
                "ns2",
                vec![op("/op3/a/*", &["PUT", "GET"], "allow"), op("/op4", &["POST"], "allow")],
            ),
            policy("app3", "", "domain1", "ns1", vec![op("/op5", &["POST"], "allow")]),
            policy(
                "app4",
                "deny",
                "domain1",
                "ns2",
                vec![
                    op("/op6", &[], "allow"),
                    op("/op7/a/b/*", &[], "allow"),
                    op("/op7/a/b/c/f", &[], "allow"),
                    op("/op7/a/b*", &[], "allow"),
                    op("/op7/c/**", &[], "allow"),
                ],
            ),
            policy("app1", "allow", "public", "ns4", vec![op("/op6", &["*"], "allow")]),
        ],
    };
    AccessControl::new(Some(&spec)).unwrap()
}

fn allowed(acl: &AccessControl, c: &CallerIdentity, op: &str, verb: Option<&str>, http: bool) -> bool {
    acl.check(c, op, verb, http).allowed
}

#[test]
fn no_spec_or_empty_spec_allows_everything() {
    for acl in [
        AccessControl::new(None).unwrap(),
        AccessControl::new(Some(&AccessControlSpec::default())).unwrap(),
    ] {
        assert!(!acl.is_configured());
        let d = acl.check(&caller("x", "y", ""), "anything", Some("DELETE"), true);
        assert!(d.allowed);
        assert_eq!(d.scope, DecisionScope::Unrestricted);
    }
}

#[test]
fn policies_without_a_global_default_deny_other_callers() {
    let spec = AccessControlSpec {
        trust_domain: "public".into(),
        policies: vec![policy("app1", "allow", "public", "ns1", vec![])],
        ..Default::default()
    };
    let acl = AccessControl::new(Some(&spec)).unwrap();
    assert!(!allowed(
        &acl,
        &caller("other", "ns1", "public"),
        "op",
        Some("GET"),
        true
    ));
    assert!(allowed(&acl, &caller("app1", "ns1", "public"), "op", Some("GET"), true));
    let only_default = AccessControlSpec {
        default_action: "Allow".into(),
        ..Default::default()
    };
    let acl = AccessControl::new(Some(&only_default)).unwrap();
    assert!(acl.is_configured());
    assert!(allowed(&acl, &caller("any", "ns", ""), "op", None, false));
    assert_eq!(acl.trust_domain(), "public");
}

#[test]
fn policies_missing_identity_fields_are_refused_with_names() {
    let spec = AccessControlSpec {
        default_action: "deny".into(),
        trust_domain: "public".into(),
        policies: vec![
            policy("app1", "allow", "", "ns1", vec![]),
            policy("app2", "allow", "public", "", vec![]),
            policy("", "allow", "public", "ns", vec![]),
        ],
    };
    let err = AccessControl::new(Some(&spec)).unwrap_err();
    assert!(
        err.contains("policy #1 (appId \"app1\") is missing trustDomain"),
        "{err}"
    );
    assert!(err.contains("policy #2 (appId \"app2\") is missing namespace"), "{err}");
    assert!(err.contains("policy #3 is missing appId"), "{err}");
}

#[test]
fn dapr_unit_cases_http() {
    let acl = dapr_fixture();
    let public = |app: &str, ns: &str| caller(app, ns, "public");
    let d1 = |app: &str, ns: &str| caller(app, ns, "domain1");
    // Unknown caller app, wrong trust domain, wrong namespace, unknown identity: global deny.
    assert!(!allowed(&acl, &public("appX", "ns1"), "op1", Some("POST"), true));
    assert!(!allowed(
        &acl,
        &caller("app1", "ns1", "private"),
        "op1",
        Some("POST"),
        true
    ));
    assert!(!allowed(&acl, &public("app1", "abcd"), "op1", Some("POST"), true));
    assert!(!allowed(&acl, &CallerIdentity::default(), "op1", Some("POST"), true));
    // Operation not listed: the app's default action (allow).
    assert!(allowed(&acl, &public("app1", "ns1"), "opX", Some("POST"), true));
    // HTTP matching is case-insensitive: Op2 hits /op2 (deny for every verb).
    assert!(!allowed(&acl, &public("app1", "ns1"), "Op2", Some("POST"), true));
    assert!(!allowed(&acl, &public("app1", "ns1"), "op2", Some("PUT"), true));
    // Verb not listed: the app's default action (deny), or the global one when the app has none.
    assert!(!allowed(&acl, &d1("app2", "ns2"), "op4", Some("PUT"), true));
    assert!(!allowed(&acl, &d1("app3", "ns1"), "op5", Some("PUT"), true));
    // Listed verb, with or without a leading slash, any case of verb.
    assert!(allowed(&acl, &d1("app2", "ns2"), "op4", Some("POST"), true));
    assert!(allowed(&acl, &d1("app2", "ns2"), "/op4", Some("post"), true));
    // An HTTP app called without a verb: the app's default action.
    assert!(!allowed(&acl, &d1("app2", "ns2"), "op4", None, true));
    // /op3/a/* covers /op3/a itself and one segment below, not a sibling.
    assert!(allowed(&acl, &d1("app2", "ns2"), "/op3/a", Some("PUT"), true));
    assert!(allowed(&acl, &d1("app2", "ns2"), "/op3/a/b", Some("PUT"), true));
    assert!(!allowed(&acl, &d1("app2", "ns2"), "/op3/b/b", Some("PUT"), true));
    // The same app id in another namespace has its own policy.
    assert!(allowed(&acl, &public("app1", "ns4"), "op6", Some("GET"), true));
}

#[test]
fn dapr_unit_cases_grpc() {
    let acl = dapr_fixture();
    let app2 = caller("app2", "ns2", "domain1");
    let app4 = caller("app4", "ns2", "domain1");
    // gRPC matching is case-sensitive, and the operation action applies without a verb.
    assert!(!allowed(&acl, &app2, "/OP4", None, false));
    assert!(allowed(&acl, &app2, "op4", None, false));
    assert!(allowed(&acl, &app4, "op6", None, false));
    // /op7/a/b/* matches one more segment; /op7/a/b/c/f is listed; /op7/a/b/c/d is not.
    assert!(allowed(&acl, &app4, "op7/a/b/c", None, false));
    assert!(!allowed(&acl, &app4, "op7/a/b/c/d", None, false));
    assert!(allowed(&acl, &app4, "op7/a/b/c/f", None, false));
    // `*` inside a segment.
    assert!(allowed(&acl, &app4, "op7/a/bc", None, false));
    // `**` matches any depth.
    assert!(allowed(&acl, &app4, "op7/c/d/e", None, false));
    assert!(allowed(&acl, &app4, "op7/c", None, false));
}

#[test]
fn a_rule_on_a_prefix_covers_the_paths_below_it() {
    let acl = dapr_fixture();
    let app2 = caller("app2", "ns2", "domain1");
    assert!(allowed(&acl, &app2, "/op4/deeper/still", Some("POST"), true));
    assert!(!allowed(&acl, &app2, "/op40", Some("POST"), true));
}

#[test]
fn methods_are_normalised_before_matching() {
    let acl = dapr_fixture();
    let app2 = caller("app2", "ns2", "domain1");
    // Traversal cannot escape into an allowed operation's neighbour, nor hide an allowed one.
    assert!(allowed(&acl, &app2, "/x/../op4", Some("POST"), true));
    assert!(allowed(&acl, &app2, "../../op4", Some("POST"), true));
    assert!(!allowed(&acl, &app2, "/op4/../admin", Some("POST"), true));
    let d = acl.check(&app2, "op4?x=1", Some("POST"), true);
    assert!(!d.allowed);
    assert!(d.reason.contains("invalid method"), "{}", d.reason);
    assert!(!allowed(&acl, &app2, "op4\u{1}", Some("POST"), true));
}

#[test]
fn normalize_method_follows_go_path_clean() {
    let cases = [
        ("", ""),
        (".", ""),
        ("/", "/"),
        ("a//b/./c/", "a/b/c"),
        ("/a/b/../c", "/a/c"),
        ("/../a", "/a"),
        ("../a", "a"),
        ("a/../../b", "b"),
        ("../..", ""),
        ("orders/new", "orders/new"),
    ];
    for (input, want) in cases {
        assert_eq!(normalize_method(input).unwrap(), want, "{input:?}");
    }
    assert!(normalize_method("a#b").unwrap_err().contains("forbidden character"));
    assert!(normalize_method("a\u{7f}").unwrap_err().contains("control character"));
}

#[test]
fn docs_scenario_1_only_app1_is_allowed() {
    let acl = from_yaml(
        r#"
spec:
  accessControl:
    defaultAction: deny
    trustDomain: "public"
    policies:
    - appId: app1
      defaultAction: allow
      trustDomain: 'public'
      namespace: "default"
"#,
    );
    assert!(allowed(
        &acl,
        &caller("app1", "default", "public"),
        "/any",
        Some("GET"),
        true
    ));
    assert!(allowed(&acl, &caller("app1", "default", ""), "/any", None, false));
    let d = acl.check(&caller("app2", "default", "public"), "/any", Some("GET"), true);
    assert!(!d.allowed);
    assert_eq!(d.scope, DecisionScope::Global);
    assert!(
        d.reason.contains("spiffe://public/ns/default/app2") && d.reason.contains("/any"),
        "{}",
        d.reason
    );
}

#[test]
fn docs_scenario_2_only_op1_of_app1() {
    let acl = from_yaml(
        r#"
spec:
  accessControl:
    defaultAction: deny
    trustDomain: "public"
    policies:
    - appId: app1
      defaultAction: deny
      trustDomain: 'public'
      namespace: "default"
      operations:
      - name: /op1
        httpVerb: ['*']
        action: allow
"#,
    );
    let app1 = caller("app1", "default", "public");
    assert!(allowed(&acl, &app1, "/op1", Some("DELETE"), true));
    assert!(!allowed(&acl, &app1, "/op2", Some("GET"), true));
    let d = acl.check(&app1, "/op2", Some("GET"), true);
    assert_eq!(d.scope, DecisionScope::App);
}

#[test]
fn docs_scenario_3_verbs_for_http_operation_for_grpc() {
    let acl = from_yaml(
        r#"
spec:
  accessControl:
    defaultAction: deny
    trustDomain: "public"
    policies:
    - appId: app1
      defaultAction: deny
      trustDomain: 'public'
      namespace: "default"
      operations:
      - name: /op1
        httpVerb: ['POST', 'PUT']
        action: allow
    - appId: app2
      defaultAction: deny
      trustDomain: 'myDomain'
      namespace: "ns1"
      operations:
      - name: /op2
        action: allow
"#,
    );
    let app1 = caller("app1", "default", "public");
    let app2 = caller("app2", "ns1", "myDomain");
    assert!(allowed(&acl, &app1, "/op1", Some("POST"), true));
    assert!(allowed(&acl, &app1, "/op1", Some("PUT"), true));
    assert!(!allowed(&acl, &app1, "/op1", Some("GET"), true));
    assert!(allowed(&acl, &app2, "/op2", None, false));
    // The same operation on an HTTP app needs a listed verb; app2 lists none.
    assert!(!allowed(&acl, &app2, "/op2", Some("GET"), true));
    assert!(!allowed(&acl, &app2, "/op3", None, false));
}

#[test]
fn docs_scenario_4_deny_one_subtree() {
    let acl = from_yaml(
        r#"
spec:
  accessControl:
    defaultAction: allow
    trustDomain: "public"
    policies:
    - appId: app1
      defaultAction: allow
      trustDomain: 'public'
      namespace: "default"
      operations:
      - name: /op1/*
        httpVerb: ['*']
        action: deny
"#,
    );
    let app1 = caller("app1", "default", "public");
    assert!(!allowed(&acl, &app1, "/op1/x", Some("GET"), true));
    assert!(!allowed(&acl, &app1, "/op1", Some("GET"), true));
    assert!(allowed(&acl, &app1, "/op2/x", Some("GET"), true));
    assert!(allowed(
        &acl,
        &caller("app9", "default", "public"),
        "/op1/x",
        Some("GET"),
        true
    ));
}

#[test]
fn docs_scenario_5_same_app_in_two_namespaces() {
    let acl = from_yaml(
        r#"
spec:
  accessControl:
    defaultAction: allow
    trustDomain: "public"
    policies:
    - appId: app1
      defaultAction: allow
      trustDomain: 'public'
      namespace: "ns1"
    - appId: app1
      defaultAction: deny
      trustDomain: 'public'
      namespace: "ns2"
"#,
    );
    assert!(allowed(&acl, &caller("app1", "ns1", "public"), "/m", Some("GET"), true));
    assert!(!allowed(
        &acl,
        &caller("app1", "ns2", "public"),
        "/m",
        Some("GET"),
        true
    ));
}

#[test]
fn hello_world_denies_neworder_from_pythonapp() {
    let acl = from_yaml(
        r#"
spec:
  accessControl:
    defaultAction: allow
    trustDomain: "public"
    policies:
    - appId: pythonapp
      defaultAction: allow
      trustDomain: 'myDomain'
      namespace: "default"
      operations:
      - name: /neworder
        httpVerb: ['POST']
        action: deny
"#,
    );
    let python = caller("pythonapp", "default", "myDomain");
    assert!(!allowed(&acl, &python, "neworder", Some("POST"), true));
    assert!(allowed(&acl, &python, "neworder", Some("GET"), true));
    assert!(allowed(
        &acl,
        &caller("pythonapp", "default", "public"),
        "neworder",
        Some("POST"),
        true
    ));
}

#[test]
fn first_rule_for_an_operation_wins_and_first_matching_child_is_final() {
    let spec = AccessControlSpec {
        default_action: "deny".into(),
        trust_domain: String::new(),
        policies: vec![policy(
            "a",
            "",
            "public",
            "ns",
            vec![
                op("/x", &[], "allow"),
                op("/x", &[], "deny"),
                op("/p*/y", &[], "allow"),
                op("/pq/z", &[], "allow"),
            ],
        )],
    };
    let acl = AccessControl::new(Some(&spec)).unwrap();
    let a = caller("a", "ns", "");
    assert!(allowed(&acl, &a, "/x", None, false));
    assert!(allowed(&acl, &a, "/pq/y", None, false));
    // Dapr does not backtrack: /pq descends into the earlier /p* branch, which has no /z.
    assert!(!allowed(&acl, &a, "/pq/z", None, false));
}

#[test]
fn glob_matches_like_dapr() {
    assert!(glob_match(b"/ABC", b"/A*"));
    assert!(glob_match(b"/ABC.a", b"/A*"));
    assert!(glob_match(b"/ABC", b"/*C"));
    assert!(glob_match(b"/ABC.a", b"/*a"));
    assert!(glob_match(b"/abcd", b"/a*d"));
    assert!(glob_match(b"/ABC.a", b"/AB*.a"));
    assert!(glob_match(b"/a", b"/a**"));
    assert!(!glob_match(b"/abc", b"/a*d"));
    assert!(!glob_match(b"/b", b"/a*"));
}
