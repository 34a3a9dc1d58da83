//! What the API servers share: config, the invoker, readiness, the shutdown signal and the
//! metrics registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbound::endpoint::Endpoints;
use crate::outbound::invoker::Invoker;

/// Readiness as upstream reports it: outbound (servers up) before app (app port reachable).
#[derive(Default)]
pub struct Health {
    outbound: AtomicBool,
    app: AtomicBool,
}

impl Health {
    pub fn set_outbound_ready(&self) {
        self.outbound.store(true, Ordering::Release);
    }
    pub fn set_app_ready(&self, ready: bool) {
        self.app.store(ready, Ordering::Release);
    }
    pub fn outbound_ready(&self) -> bool {
        self.outbound.load(Ordering::Acquire)
    }
    pub fn app_ready(&self) -> bool {
        self.app.load(Ordering::Acquire)
    }
}

/// How a shutdown was asked for.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop accepting, drain in-flight calls within the grace period.
    pub graceful: CancellationToken,
    /// Stop now (`dapr-force-shutdown: true`).
    pub force: CancellationToken,
}

pub struct Shared {
    pub config: Arc<Config>,
    pub invoker: Invoker,
    /// HTTPEndpoints in scope for this app (loaded at start), and URL targets.
    pub endpoints: Endpoints,
    pub health: Health,
    pub resolver_name: &'static str,
    pub extended: Mutex<BTreeMap<String, String>>,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    /// Spans of invocations, when `Configuration.spec.tracing` asks for them.
    pub tracer: Arc<crate::trace::Tracer>,
}

impl Shared {
    pub fn extended_metadata(&self) -> BTreeMap<String, String> {
        let mut map = self.extended.lock().map(|m| m.clone()).unwrap_or_default();
        map.insert("daprRuntimeVersion".into(), crate::VERSION.into());
        map
    }
}
