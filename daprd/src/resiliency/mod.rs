//! Resiliency policies for service invocation (pkg/resiliency/ upstream): named `timeouts`,
//! `retries` and `circuitBreakers`, applied to the apps named under `targets.apps`; apps not
//! named get the default policies (`DefaultAppRetryPolicy`, then `DefaultRetryPolicy`, and
//! the same for timeouts and circuit breakers) and the built-in service retries
//! (`DaprBuiltInServiceRetries`: 3 retries 1 s apart of calls the peer's sidecar did not take,
//! which a Resiliency may raise but not lower).
//!
//! This module is the pure core: documents in, a [`Resiliency`] out, with every name resolved
//! and every expression parsed, so a call never meets a configuration error. The invoker runs
//! calls through it (`outbound/resilient.rs`).

pub mod breaker;
pub mod retry;
pub mod trip;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breaker::{Breaker, BreakerPolicy};
use retry::{Backoff, Codes, Matching, RetryPolicy};
use trip::Trip;

use crate::resources::{Loaded, Origin};

/// The built-in policy for calls between sidecars.
pub const BUILT_IN_SERVICE_RETRIES: &str = "DaprBuiltInServiceRetries";
/// Upstream's default `circuitBreakerCacheSize` for apps.
pub const DEFAULT_BREAKER_CACHE: usize = 100;

/// A Resiliency that cannot be applied, with the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {field}: {reason}")]
pub struct PolicyError {
    pub origin: Origin,
    pub field: String,
    pub reason: String,
}

/// What applies to calls to one app.
#[derive(Debug)]
pub struct AppPolicy {
    /// The Resiliency that named it (`name` and `namespace` labels of the metrics).
    pub resiliency: String,
    pub namespace: String,
    /// Per attempt, as upstream.
    pub timeout: Option<Duration>,
    pub retry: Option<Arc<RetryPolicy>>,
    pub breakers: Option<Breakers>,
    /// Not named under `targets.apps`: the built-in service retries apply within each attempt.
    pub built_in: bool,
}

/// The breakers of one target, one per `app:method`, at most `capacity` of them (least
/// recently used dropped first, as upstream's LRU).
#[derive(Debug)]
pub struct Breakers {
    pub policy: Arc<BreakerPolicy>,
    capacity: usize,
    cache: Mutex<HashMap<String, (Arc<Breaker>, u64)>>,
    clock: std::sync::atomic::AtomicU64,
}

impl Breakers {
    fn new(policy: Arc<BreakerPolicy>, capacity: usize) -> Breakers {
        Breakers {
            policy,
            capacity: capacity.max(1),
            cache: Mutex::new(HashMap::new()),
            clock: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The breaker for `key`, made on first use.
    pub fn get(&self, key: &str, now: Instant) -> Arc<Breaker> {
        let tick = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((breaker, used)) = cache.get_mut(key) {
            *used = tick;
            return Arc::clone(breaker);
        }
        if cache.len() >= self.capacity
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        let breaker = Arc::new(Breaker::new(Arc::clone(&self.policy), now));
        cache.insert(key.to_owned(), (Arc::clone(&breaker), tick));
        breaker
    }
}

/// Every Resiliency in scope, resolved.
#[derive(Debug)]
pub struct Resiliency {
    apps: HashMap<String, Arc<AppPolicy>>,
    /// For apps not named: the defaults (if any) and the built-in retries.
    others: Arc<AppPolicy>,
    /// `DaprBuiltInServiceRetries`, possibly raised.
    pub built_in_retries: Arc<RetryPolicy>,
    /// `(name, namespace)` of each Resiliency loaded, for `dapr_resiliency_loaded`.
    pub loaded: Vec<(String, String)>,
}

impl Resiliency {
    /// Resolves `documents`; `None` when there are none (the invoker then takes its plain path).
    pub fn compile(
        documents: &[Loaded<dapr_crds::Resiliency>],
    ) -> Result<Option<Resiliency>, PolicyError> {
        if documents.is_empty() {
            return Ok(None);
        }
        // Policies are shared by name across documents, as upstream merges them.
        let mut timeouts = HashMap::new();
        let mut retries: HashMap<String, Arc<RetryPolicy>> = HashMap::new();
        let mut breakers: HashMap<String, Arc<BreakerPolicy>> = HashMap::new();
        let mut built_in = RetryPolicy {
            backoff: Backoff::Constant(Duration::from_secs(1)),
            max_retries: Some(3),
            matching: Matching::default(),
        };
        for doc in documents {
            let err = |field: String, reason: String| PolicyError {
                origin: doc.origin.clone(),
                field,
                reason,
            };
            let policies = &doc.resource.spec.spec.policies;
            for (name, text) in &policies.timeouts {
                let field = format!("spec.policies.timeouts.{name}");
                let d = dapr_crds::duration::parse(text).map_err(|r| err(field, r))?;
                timeouts.insert(name.clone(), d);
            }
            for (name, r) in &policies.retries {
                let field = format!("spec.policies.retries.{name}");
                let mut policy = retry_policy(r, &field).map_err(|(f, r)| err(f, r))?;
                if name == BUILT_IN_SERVICE_RETRIES {
                    if policy.max_retries.is_some_and(|n| n < 3) {
                        tracing::warn!(
                            "Attempted override of {name} did not meet minimum retry count, resetting to 3."
                        );
                        policy.max_retries = Some(3);
                    }
                    built_in = policy.clone();
                }
                retries.insert(name.clone(), Arc::new(policy));
            }
            for (name, cb) in &policies.circuit_breakers {
                let field = format!("spec.policies.circuitBreakers.{name}");
                let policy = breaker_policy(cb, &field).map_err(|(f, r)| err(f, r))?;
                breakers.insert(name.clone(), Arc::new(policy));
            }
        }
        let mut apps = HashMap::new();
        let mut loaded = Vec::new();
        for doc in documents {
            let name = doc.resource.metadata.name.clone().unwrap_or_default();
            let namespace = doc.resource.metadata.namespace.clone().unwrap_or_default();
            loaded.push((name.clone(), namespace.clone()));
            let targets = &doc.resource.spec.spec.targets;
            if !targets.actors.is_empty() || !targets.components.is_empty() {
                tracing::warn!(
                    origin = %doc.origin,
                    "Resiliency targets for actors and components are not applied by this sidecar"
                );
            }
            for (app, names) in &targets.apps {
                let field = |key: &str| format!("spec.targets.apps.{app}.{key}");
                let missing = |key: &str, policy: &str| PolicyError {
                    origin: doc.origin.clone(),
                    field: field(key),
                    reason: format!("no {key} policy named {policy:?}"),
                };
                // A zero timeout is none, as upstream.
                let timeout = match &names.timeout {
                    None => None,
                    Some(t) => Some(*timeouts.get(t).ok_or_else(|| missing("timeout", t))?),
                }
                .filter(|t| !t.is_zero());
                let retry = match &names.retry {
                    None => None,
                    Some(r) => Some(Arc::clone(
                        retries.get(r).ok_or_else(|| missing("retry", r))?,
                    )),
                };
                let capacity = match names.circuit_breaker_cache_size {
                    None | Some(0) => DEFAULT_BREAKER_CACHE,
                    Some(n) => usize::try_from(n).map_err(|_| PolicyError {
                        origin: doc.origin.clone(),
                        field: field("circuitBreakerCacheSize"),
                        reason: format!("{n} is not a positive size"),
                    })?,
                };
                let breakers = match &names.circuit_breaker {
                    None => None,
                    Some(b) => Some(Breakers::new(
                        Arc::clone(
                            breakers
                                .get(b)
                                .ok_or_else(|| missing("circuitBreaker", b))?,
                        ),
                        capacity,
                    )),
                };
                apps.insert(
                    app.clone(),
                    Arc::new(AppPolicy {
                        resiliency: name.clone(),
                        namespace: namespace.clone(),
                        timeout,
                        retry,
                        breakers,
                        built_in: false,
                    }),
                );
            }
        }
        let (name, namespace) = loaded.last().cloned().unwrap_or_default();
        let default_timeout = ["DefaultAppTimeoutPolicy", "DefaultTimeoutPolicy"]
            .iter()
            .find_map(|n| timeouts.get(*n).copied())
            .filter(|t| !t.is_zero());
        let default_retry = ["DefaultAppRetryPolicy", "DefaultRetryPolicy"]
            .iter()
            .find_map(|n| retries.get(*n).cloned());
        let default_breaker = [
            "DefaultAppCircuitBreakerPolicy",
            "DefaultCircuitBreakerPolicy",
        ]
        .iter()
        .find_map(|n| breakers.get(*n).cloned());
        let others = Arc::new(AppPolicy {
            resiliency: name,
            namespace,
            timeout: default_timeout,
            retry: default_retry,
            breakers: default_breaker.map(|p| Breakers::new(p, DEFAULT_BREAKER_CACHE)),
            built_in: true,
        });
        Ok(Some(Resiliency {
            apps,
            others,
            built_in_retries: Arc::new(built_in),
            loaded,
        }))
    }

    /// The policy for calls to `app_id`.
    pub fn for_app(&self, app_id: &str) -> &Arc<AppPolicy> {
        self.apps.get(app_id).unwrap_or(&self.others)
    }
}

type FieldError = (String, String);

fn retry_policy(r: &dapr_crds::resiliency::Retry, field: &str) -> Result<RetryPolicy, FieldError> {
    let at = |key: &str, reason: String| (format!("{field}.{key}"), reason);
    let backoff = match r.policy.unwrap_or_default() {
        dapr_crds::resiliency::RetryPolicy::Constant => Backoff::Constant(match &r.duration {
            None => Duration::from_secs(5),
            Some(d) => dapr_crds::duration::parse(d).map_err(|e| at("duration", e))?,
        }),
        dapr_crds::resiliency::RetryPolicy::Exponential => Backoff::Exponential {
            max_interval: match &r.max_interval {
                None => Duration::from_secs(60),
                Some(d) => dapr_crds::duration::parse(d).map_err(|e| at("maxInterval", e))?,
            },
        },
    };
    let max_retries = match r.max_retries {
        None | Some(-1) => None,
        Some(n) if n < -1 => {
            return Err(at(
                "maxRetries",
                format!("{n} is neither -1 (no bound) nor a count"),
            ));
        }
        Some(n) => Some(n.unsigned_abs()),
    };
    let mut matching = Matching::default();
    if let Some(m) = &r.matching {
        if let Some(codes) = m
            .http_status_codes
            .as_deref()
            .filter(|c| !c.trim().is_empty())
        {
            matching.http = Some(
                Codes::parse(codes, 100..=599).map_err(|e| at("matching.httpStatusCodes", e))?,
            );
        }
        if let Some(codes) = m
            .grpc_status_codes
            .as_deref()
            .filter(|c| !c.trim().is_empty())
        {
            matching.grpc =
                Some(Codes::parse(codes, 0..=16).map_err(|e| at("matching.gRPCStatusCodes", e))?);
        }
    }
    Ok(RetryPolicy {
        backoff,
        max_retries,
        matching,
    })
}

fn breaker_policy(
    cb: &dapr_crds::resiliency::CircuitBreaker,
    field: &str,
) -> Result<BreakerPolicy, FieldError> {
    let at = |key: &str, reason: String| (format!("{field}.{key}"), reason);
    let max_requests = match cb.max_requests {
        None | Some(0) => 1,
        Some(n) if n < 0 => return Err(at("maxRequests", format!("{n} is negative"))),
        Some(n) => n.unsigned_abs(),
    };
    let interval = match &cb.interval {
        None => Duration::ZERO,
        Some(d) => dapr_crds::duration::parse(d).map_err(|e| at("interval", e))?,
    };
    let timeout = match &cb.timeout {
        None => BreakerPolicy::DEFAULT_TIMEOUT,
        Some(d) => match dapr_crds::duration::parse(d).map_err(|e| at("timeout", e))? {
            d if d.is_zero() => BreakerPolicy::DEFAULT_TIMEOUT,
            d => d,
        },
    };
    let trip = match &cb.trip {
        None => Trip::default_expression(),
        Some(text) => Trip::parse(text).map_err(|e| at("trip", e))?,
    };
    Ok(BreakerPolicy {
        max_requests,
        interval,
        timeout,
        trip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<Option<Resiliency>, PolicyError> {
        let mut r = crate::resources::Resources::default();
        crate::resources::parse_file(yaml, std::path::Path::new("r.yaml"), "me", &mut r).unwrap();
        Resiliency::compile(&r.resiliencies)
    }

    const DOC: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: res}
spec:
  policies:
    timeouts: {short: 500ms, DefaultTimeoutPolicy: 9s}
    retries:
      three: {policy: constant, duration: 100ms, maxRetries: 3, matching: {httpStatusCodes: "500-599"}}
      DaprBuiltInServiceRetries: {duration: 2s, maxRetries: 1}
    circuitBreakers:
      cb: {maxRequests: 1, timeout: 2s, trip: consecutiveFailures >= 3}
  targets:
    apps:
      callee: {timeout: short, retry: three, circuitBreaker: cb, circuitBreakerCacheSize: 2}
"#;

    #[test]
    fn targets_resolve_and_others_get_defaults_and_built_ins() {
        let r = compile(DOC).unwrap().unwrap();
        let callee = r.for_app("callee");
        assert_eq!(callee.timeout, Some(Duration::from_millis(500)));
        assert_eq!(callee.retry.as_ref().unwrap().max_retries, Some(3));
        assert!(!callee.built_in);
        let other = r.for_app("someone");
        assert!(other.built_in && other.retry.is_none() && other.breakers.is_none());
        assert_eq!(other.timeout, Some(Duration::from_secs(9)));
        // The built-in retries may be raised, not lowered.
        assert_eq!(r.built_in_retries.max_retries, Some(3));
        assert_eq!(
            r.built_in_retries.backoff,
            Backoff::Constant(Duration::from_secs(2))
        );
        assert_eq!(r.loaded, [("res".to_owned(), String::new())]);
    }

    #[test]
    fn the_breaker_cache_keeps_the_most_recently_used() {
        let r = compile(DOC).unwrap().unwrap();
        let breakers = r.for_app("callee").breakers.as_ref().unwrap();
        let now = Instant::now();
        let a = breakers.get("callee:a", now);
        let _b = breakers.get("callee:b", now);
        assert!(Arc::ptr_eq(&a, &breakers.get("callee:a", now)));
        let _c = breakers.get("callee:c", now);
        assert!(Arc::ptr_eq(&a, &breakers.get("callee:a", now)));
        assert_eq!(breakers.cache.lock().unwrap().len(), 2);
    }

    #[test]
    fn errors_name_the_field() {
        let bad_trip = DOC.replace("consecutiveFailures >= 3", "consecutiveFailures >>> 3");
        let e = compile(&bad_trip).unwrap_err().to_string();
        assert!(
            e.starts_with("r.yaml: spec.policies.circuitBreakers.cb.trip: "),
            "{e}"
        );
        let bad = DOC.replace("retry: three", "retry: four");
        let e = compile(&bad).unwrap_err().to_string();
        assert!(
            e.contains("spec.targets.apps.callee.retry: no retry policy named \"four\""),
            "{e}"
        );
        let bad = DOC.replace("500ms", "5 minutes");
        let e = compile(&bad).unwrap_err().to_string();
        assert!(e.contains("spec.policies.timeouts.short"), "{e}");
        let zero = compile(&DOC.replace("500ms", "0s")).unwrap().unwrap();
        assert_eq!(zero.for_app("callee").timeout, None);
        let bad = DOC.replace("500-599", "500-700");
        let e = compile(&bad).unwrap_err().to_string();
        assert!(
            e.contains("spec.policies.retries.three.matching.httpStatusCodes"),
            "{e}"
        );
        assert!(compile("").unwrap().is_none());
    }
}
