//! Who may trigger injection: the workload controllers (so bare pods made by users are not
//! injected, as upstream), accounts listed in `ALLOWED_SERVICE_ACCOUNTS`, their UIDs, and
//! `system:masters`.

use std::collections::HashSet;

/// Controllers that create pods on behalf of workloads, as `namespace:name`.
pub const BUILT_IN: &[&str] = &[
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

/// A `namespace:name` entry; each side is a glob (`*`, `?`, `[...]`, as Go's `path.Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPattern {
    pub namespace: String,
    pub name: String,
}

impl AccountPattern {
    /// Parses one entry; exactly one `:` and valid globs on both sides.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let mut parts = entry.split(':');
        let (Some(namespace), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "{entry:?} must have the form <namespace>:<name> with exactly one ':'"
            ));
        };
        for side in [namespace, name] {
            if side.is_empty() || glob_match(side, "").is_none() {
                return Err(format!("{entry:?}: {side:?} is not a valid pattern"));
            }
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Comma-separated entries, blanks ignored.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(Self::parse)
            .collect()
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        glob_match(&self.namespace, namespace) == Some(true)
            && glob_match(&self.name, name) == Some(true)
    }

    fn is_exact(&self) -> bool {
        !format!("{}{}", self.namespace, self.name).contains(['*', '?', '[', '\\'])
    }
}

/// The requester of an admission review, from `request.userInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// Decides whether a requester may have pods injected.
#[derive(Debug, Clone)]
pub struct Authorizer {
    patterns: Vec<AccountPattern>,
    /// Entries of `ALLOWED_SERVICE_ACCOUNTS` (and the built-ins) whose UIDs are looked up.
    exact: Vec<AccountPattern>,
    uids: HashSet<String>,
}

impl Authorizer {
    /// The built-in controllers plus `allowed` (exact names also by UID once resolved) and
    /// `prefixes` (the deprecated `ALLOWED_SERVICE_ACCOUNTS_PREFIX_NAMES`: names only).
    pub fn new(allowed: Vec<AccountPattern>, prefixes: Vec<AccountPattern>) -> Self {
        let built_in = BUILT_IN
            .iter()
            .filter_map(|e| AccountPattern::parse(e).ok());
        let exact: Vec<_> = built_in
            .clone()
            .chain(allowed.iter().filter(|p| p.is_exact()).cloned())
            .collect();
        let patterns = built_in.chain(allowed).chain(prefixes).collect();
        Self {
            patterns,
            exact,
            uids: HashSet::new(),
        }
    }

    /// Accounts whose UIDs should be resolved at start-up (`namespace`, `name`).
    pub fn accounts_to_resolve(&self) -> &[AccountPattern] {
        &self.exact
    }

    /// Accepts the UIDs found for [`Self::accounts_to_resolve`].
    pub fn with_uids(mut self, uids: impl IntoIterator<Item = String>) -> Self {
        self.uids.extend(uids);
        self
    }

    pub fn allows(&self, requester: &Requester) -> bool {
        if requester.groups.iter().any(|g| g == MASTERS_GROUP) {
            return true;
        }
        if !requester.uid.is_empty() && self.uids.contains(&requester.uid) {
            return true;
        }
        let Some(account) = requester.username.strip_prefix(SERVICE_ACCOUNT_PREFIX) else {
            return false;
        };
        let Some((namespace, name)) = account.split_once(':') else {
            return false;
        };
        self.patterns.iter().any(|p| p.matches(namespace, name))
    }
}

/// Go's `path.Match` on strings without `/`: `*`, `?`, `[...]`/`[^...]` with ranges, `\`
/// escapes. `None` for a malformed pattern.
pub fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Validate the whole pattern first so a malformed tail is an error even on early mismatch.
    validate(&p).ok()?;
    Some(match_from(&p, &n))
}

fn validate(p: &[char]) -> Result<(), ()> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return Err(());
                }
                i += 2;
            }
            '[' => i = class_end(p, i)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Index just past the `]` closing the class that starts at `start`.
fn class_end(p: &[char], start: usize) -> Result<usize, ()> {
    let mut i = start + 1;
    if p.get(i) == Some(&'^') {
        i += 1;
    }
    let mut first = true;
    loop {
        match p.get(i) {
            None => return Err(()),
            Some(']') if !first => return Ok(i + 1),
            Some(_) => {
                i = class_char(p, i)?.1;
                if p.get(i) == Some(&'-') {
                    i = class_char(p, i + 1)?.1;
                }
            }
        }
        first = false;
    }
}

/// One (possibly escaped) character inside a class: the char and the index after it.
fn class_char(p: &[char], i: usize) -> Result<(char, usize), ()> {
    match p.get(i) {
        Some('\\') => p.get(i + 1).map(|c| (*c, i + 2)).ok_or(()),
        Some('-') | Some(']') | None => Err(()),
        Some(c) => Ok((*c, i + 1)),
    }
}

fn class_matches(p: &[char], start: usize, c: char) -> bool {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&pc) = p.get(i) {
        if pc == ']' && !first {
            break;
        }
        first = false;
        let Ok((lo, next)) = class_char(p, i) else {
            return false;
        };
        i = next;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            let Ok((h, next)) = class_char(p, i + 1) else {
                return false;
            };
            hi = h;
            i = next;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    matched != negated
}

fn match_from(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|skip| match_from(&p[1..], &n[skip..])),
        Some('?') => !n.is_empty() && match_from(&p[1..], &n[1..]),
        Some('\\') => p.len() > 1 && n.first() == Some(&p[1]) && match_from(&p[2..], &n[1..]),
        Some('[') => {
            let Ok(end) = class_end(p, 0) else {
                return false;
            };
            match n.first() {
                Some(&c) if class_matches(p, 0, c) => match_from(&p[end..], &n[1..]),
                _ => false,
            }
        }
        Some(c) => n.first() == Some(c) && match_from(&p[1..], &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(ns: &str, name: &str) -> Requester {
        Requester {
            username: format!("system:serviceaccount:{ns}:{name}"),
            ..Requester::default()
        }
    }

    #[test]
    fn workload_controllers_may_trigger_injection_and_users_may_not() {
        let authz = Authorizer::new(vec![], vec![]);
        assert!(authz.allows(&sa("kube-system", "replicaset-controller")));
        assert!(authz.allows(&sa("tekton-pipelines", "tekton-pipelines-controller")));
        assert!(!authz.allows(&sa("default", "default")));
        assert!(!authz.allows(&Requester {
            username: "alice".into(),
            ..Requester::default()
        }));
    }

    #[test]
    fn members_of_system_masters_may_trigger_injection() {
        let authz = Authorizer::new(vec![], vec![]);
        assert!(authz.allows(&Requester {
            username: "kubernetes-admin".into(),
            groups: vec!["system:authenticated".into(), "system:masters".into()],
            ..Requester::default()
        }));
    }

    #[test]
    fn allowed_service_accounts_match_as_globs_on_each_side() {
        let allowed = AccountPattern::parse_list("argo-*:argo-[a-c]?, ci:builder").unwrap();
        let authz = Authorizer::new(allowed, vec![]);
        assert!(authz.allows(&sa("argo-prod", "argo-ab")));
        assert!(!authz.allows(&sa("argo-prod", "argo-d1")));
        assert!(authz.allows(&sa("ci", "builder")));
        assert!(!authz.allows(&sa("ci", "builder2")));
    }

    #[test]
    fn resolved_uids_are_allowed_whatever_the_username() {
        let authz = Authorizer::new(vec![], vec![]).with_uids(["uid-1".to_owned()]);
        assert!(authz.allows(&Requester {
            username: "system:serviceaccount:elsewhere:someone".into(),
            uid: "uid-1".into(),
            groups: vec![],
        }));
    }

    #[test]
    fn only_exact_entries_are_resolved_by_uid() {
        let allowed = AccountPattern::parse_list("ci:builder,argo-*:argo").unwrap();
        let authz = Authorizer::new(allowed, vec![]);
        let names: Vec<_> = authz
            .accounts_to_resolve()
            .iter()
            .map(|p| format!("{}:{}", p.namespace, p.name))
            .collect();
        assert!(names.contains(&"ci:builder".to_owned()));
        assert!(!names.iter().any(|n| n.contains('*')));
        assert_eq!(names.len(), BUILT_IN.len() + 1);
    }

    #[test]
    fn malformed_entries_are_rejected_with_the_rule() {
        for bad in ["nocolon", "a:b:c", ":b", "a:[x", "a:x\\"] {
            let err = AccountPattern::parse(bad).unwrap_err();
            assert!(err.contains(bad) || err.contains("pattern"), "{err}");
        }
    }

    #[test]
    fn globs_behave_as_gos_path_match() {
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("[\\]]", "]", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob_match(p, n), Some(want), "{p} {n}");
        }
        assert_eq!(glob_match("[", "a"), None);
        assert_eq!(glob_match("[]", "a"), None);
    }
}
