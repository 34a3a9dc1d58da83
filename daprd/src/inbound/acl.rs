//! Callee-side access control from the Configuration's `accessControl` (upstream semantics).

use std::collections::HashMap;

use dapr_crds::configuration::AccessControlSpec;

/// Who is calling, as far as this sidecar can tell.
#[derive(Debug, Clone, Copy)]
pub struct CallerIdentity<'a> {
    pub trust_domain: &'a str,
    pub namespace: &'a str,
    pub app_id: &'a str,
}

struct Operation {
    /// Lower-cased path with a leading `/`; `*` matches one segment, a trailing `*` the rest.
    pattern: Vec<String>,
    verbs: Vec<String>,
    allow: bool,
}

struct Policy {
    allow: bool,
    trust_domain: String,
    operations: Vec<Operation>,
}

pub struct AccessControl {
    default_allow: bool,
    policies: HashMap<(String, String), Policy>,
}

fn is_allow(action: Option<&str>, default: bool) -> bool {
    match action.map(str::to_ascii_lowercase).as_deref() {
        Some("allow") => true,
        Some("deny") => false,
        _ => default,
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(str::to_ascii_lowercase)
        .collect()
}

impl AccessControl {
    /// `None` when the Configuration has no `accessControl`: then nothing is checked.
    pub fn from_spec(spec: Option<&AccessControlSpec>) -> Option<AccessControl> {
        let spec = spec?;
        // Upstream: a missing defaultAction denies, unless the policy list is present and empty.
        let fallback = matches!(&spec.policies, Some(p) if p.is_empty());
        let default_allow = is_allow(spec.default_action.as_deref(), fallback);
        let policies = spec
            .policies
            .iter()
            .flatten()
            .map(|p| {
                let policy = Policy {
                    allow: is_allow(p.default_action.as_deref(), default_allow),
                    trust_domain: p.trust_domain.clone(),
                    operations: p
                        .operations
                        .iter()
                        .map(|op| Operation {
                            pattern: segments(&op.name),
                            verbs: op
                                .http_verb
                                .iter()
                                .map(|v| v.to_ascii_uppercase())
                                .collect(),
                            allow: is_allow(Some(&op.action), false),
                        })
                        .collect(),
                };
                ((p.app_id.clone(), p.namespace.clone()), policy)
            })
            .collect();
        Some(AccessControl {
            default_allow,
            policies,
        })
    }

    /// Whether `caller` may call `operation` (the method path) with `verb` (HTTP apps).
    pub fn is_allowed(
        &self,
        caller: Option<CallerIdentity<'_>>,
        operation: &str,
        verb: &str,
    ) -> bool {
        let Some(caller) = caller else {
            return self.default_allow;
        };
        let Some(policy) = self
            .policies
            .get(&(caller.app_id.to_owned(), caller.namespace.to_owned()))
        else {
            return self.default_allow;
        };
        if policy.trust_domain != caller.trust_domain {
            return self.default_allow;
        }
        let path = segments(operation.split('?').next().unwrap_or_default());
        for op in &policy.operations {
            if matches(&op.pattern, &path) {
                let verb_ok = op.verbs.is_empty()
                    || op
                        .verbs
                        .iter()
                        .any(|v| v == "*" || v.eq_ignore_ascii_case(verb));
                return if verb_ok { op.allow } else { policy.allow };
            }
        }
        policy.allow
    }
}

fn matches(pattern: &[String], path: &[String]) -> bool {
    for (i, part) in pattern.iter().enumerate() {
        if part == "*" && i == pattern.len() - 1 {
            return path.len() > i;
        }
        match path.get(i) {
            Some(segment) if part == "*" || part == segment => {}
            _ => return false,
        }
    }
    pattern.len() == path.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dapr_crds::Configuration;

    fn acl(yaml_spec: &str) -> AccessControl {
        let doc = format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  accessControl:\n{yaml_spec}"
        );
        let config = Configuration::from_yaml(&doc).unwrap();
        AccessControl::from_spec(config.spec.access_control.as_ref()).unwrap()
    }

    const CHECKOUT: CallerIdentity<'static> = CallerIdentity {
        trust_domain: "public",
        namespace: "default",
        app_id: "checkout",
    };

    #[test]
    fn operations_verbs_and_defaults_decide_as_upstream() {
        let acl = acl("    defaultAction: deny
    trustDomain: public
    policies:
    - appId: checkout
      defaultAction: deny
      trustDomain: public
      namespace: default
      operations:
      - name: /orders/*
        httpVerb: [POST]
        action: allow
      - name: /admin
        httpVerb: ['*']
        action: deny
");
        assert!(acl.is_allowed(Some(CHECKOUT), "orders/1", "POST"));
        assert!(acl.is_allowed(Some(CHECKOUT), "/Orders/1/items", "POST"));
        assert!(
            !acl.is_allowed(Some(CHECKOUT), "orders/1", "GET"),
            "verb not listed: policy default"
        );
        assert!(!acl.is_allowed(Some(CHECKOUT), "admin", "GET"));
        assert!(
            !acl.is_allowed(Some(CHECKOUT), "other", "POST"),
            "no operation: policy default"
        );
        let stranger = CallerIdentity {
            app_id: "stranger",
            ..CHECKOUT
        };
        assert!(
            !acl.is_allowed(Some(stranger), "orders/1", "POST"),
            "no policy: global default"
        );
        let other_td = CallerIdentity {
            trust_domain: "evil",
            ..CHECKOUT
        };
        assert!(!acl.is_allowed(Some(other_td), "orders/1", "POST"));
        assert!(!acl.is_allowed(None, "orders/1", "POST"));
    }

    #[test]
    fn a_missing_default_action_denies_unless_policies_is_an_empty_list() {
        assert!(!acl("    trustDomain: public\n").is_allowed(Some(CHECKOUT), "x", "GET"));
        assert!(acl("    policies: []\n").is_allowed(Some(CHECKOUT), "x", "GET"));
        assert!(acl("    defaultAction: allow\n").is_allowed(Some(CHECKOUT), "x", "GET"));
    }

    #[test]
    fn no_access_control_section_means_no_checks() {
        assert!(AccessControl::from_spec(None).is_none());
    }
}
