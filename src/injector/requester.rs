//! Whose pods get a sidecar (Dapr's `pkg/injector/service/handler.go` `isAuthorizedUser`): pods created by the
//! built-in workload controllers, by service accounts matching `--allowed-service-accounts`
//! (`namespace:name` glob patterns), or by members of `system:masters`. Other requesters' pods are allowed
//! unchanged, so an ordinary user cannot obtain a sidecar identity by creating a bare Pod.

use k8s_openapi::api::authentication::v1::UserInfo;

/// The controllers Dapr always allows.
pub const BUILTIN_CONTROLLERS: &[&str] = &[
    "kube-system:replicaset-controller",
    "kube-system:replication-controller",
    "kube-system:deployment-controller",
    "kube-system:cronjob-controller",
    "kube-system:job-controller",
    "kube-system:statefulset-controller",
    "kube-system:daemon-set-controller",
    "openshift-operator-lifecycle-manager:olm-operator-serviceaccount",
    "tekton-pipelines:tekton-pipelines-controller",
    "mirrord:mirrord-operator",
];

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
const MASTERS_GROUP: &str = "system:masters";

/// Compiled `namespace:name` patterns.
#[derive(Clone, Debug)]
pub struct AllowedRequesters {
    patterns: Vec<(String, String)>,
}

impl AllowedRequesters {
    /// The built-in controllers plus `extra` patterns (`*`, `?` and `[...]` globs on each side of the `:`).
    pub fn new<S: AsRef<str>>(extra: &[S]) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for p in BUILTIN_CONTROLLERS
            .iter()
            .copied()
            .chain(extra.iter().map(AsRef::as_ref))
        {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let Some((ns, name)) = p.split_once(':').filter(|(_, n)| !n.contains(':')) else {
                return Err(format!(
                    "allowed service account {p:?} must contain exactly one ':' separating namespace and name"
                ));
            };
            let (ns, name) = (ns.trim(), name.trim());
            if ns.is_empty() && name.is_empty() {
                return Err(format!(
                    "allowed service account {p:?}: namespace and name cannot both be empty"
                ));
            }
            for part in [ns, name] {
                if !valid_glob(part) {
                    return Err(format!(
                        "allowed service account {p:?}: {part:?} is not a valid glob pattern"
                    ));
                }
            }
            patterns.push((ns.to_owned(), name.to_owned()));
        }
        Ok(Self { patterns })
    }

    /// Whether pods created by `user` get a sidecar.
    pub fn allows(&self, user: &UserInfo) -> bool {
        if user.groups.iter().flatten().any(|g| g == MASTERS_GROUP) {
            return true;
        }
        let Some((ns, name)) = user
            .username
            .as_deref()
            .and_then(|u| u.strip_prefix(SERVICE_ACCOUNT_PREFIX))
            .and_then(|rest| rest.split_once(':'))
        else {
            return false;
        };
        self.patterns.iter().any(|(pn, pa)| glob(pn, ns) && glob(pa, name))
    }
}

/// Go's `path.Match` for names without `/`: `*` any run, `?` one character, `[a-z]`/`[^a-z]` classes, `\` escapes.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| glob_at(&p[1..], &t[i..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => match (class(&p[1..]), t.first()) {
            (Some((matches, len)), Some(c)) => matches(*c) && glob_at(&p[1 + len..], &t[1..]),
            _ => false,
        },
        Some('\\') => p.len() > 1 && t.first() == Some(&p[1]) && glob_at(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob_at(&p[1..], &t[1..]),
    }
}

type ClassMatcher = Box<dyn Fn(char) -> bool>;

/// Parses a class after its `[`: returns the matcher and the characters consumed including the `]`.
fn class(p: &[char]) -> Option<(ClassMatcher, usize)> {
    let mut i = 0;
    let negated = p.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *p.get(i)?;
        if c == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = if c == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            c
        };
        i += 1;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
            i += 1;
            let h = if p[i] == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                p[i]
            };
            i += 1;
            h
        } else {
            lo
        };
        if hi < lo {
            return None;
        }
        ranges.push((lo, hi));
    }
    let matcher = move |c: char| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != negated;
    Some((Box::new(matcher), i))
}

fn valid_glob(pattern: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' if i + 1 >= p.len() => return false,
            '\\' => i += 2,
            '[' => match class(&p[i + 1..]) {
                Some((_, len)) => i += 1 + len,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn builtin_controllers_and_masters_are_allowed() {
        let a = AllowedRequesters::new::<&str>(&[]).unwrap();
        assert!(a.allows(&user("system:serviceaccount:kube-system:replicaset-controller", &[])));
        assert!(a.allows(&user("kubernetes-admin", &["system:masters", "system:authenticated"])));
        assert!(!a.allows(&user("alice", &["system:authenticated"])));
        assert!(!a.allows(&user("system:serviceaccount:default:default", &[])));
    }

    #[test]
    fn extra_patterns_are_globs() {
        let a = AllowedRequesters::new(&["argo*:argo-[a-c]?-sa", " ci:* "]).unwrap();
        assert!(a.allows(&user("system:serviceaccount:argocd:argo-b1-sa", &[])));
        assert!(!a.allows(&user("system:serviceaccount:argocd:argo-d1-sa", &[])));
        assert!(a.allows(&user("system:serviceaccount:ci:anything", &[])));
        assert!(!a.allows(&user("system:serviceaccount:cix:anything", &[])));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert!(AllowedRequesters::new(&["no-colon"]).is_err());
        assert!(AllowedRequesters::new(&["a:b:c"]).is_err());
        assert!(AllowedRequesters::new(&["ns:[abc"]).is_err());
        assert!(AllowedRequesters::new(&[":"]).is_err());
        assert!(AllowedRequesters::new(&["", "ns:sa"]).is_ok());
    }

    #[test]
    fn glob_semantics() {
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a*", "a"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("[^x]y", "zy"));
        assert!(!glob("[^x]y", "xy"));
        assert!(glob("\\*", "*"));
        assert!(!glob("\\*", "a"));
        assert!(glob("", ""));
    }
}
