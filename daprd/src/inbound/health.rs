//! App health probing (`--enable-app-health-check`): the app is probed every interval; after
//! `threshold` failures in a row it is unhealthy and invocations are answered by the sidecar
//! without reaching it, until a probe succeeds again.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use super::app_channel::AppChannel;
use crate::config::AppHealthCheck;

/// Whether the app currently counts as healthy (it does until probes say otherwise).
#[derive(Debug)]
pub struct AppHealth {
    healthy: AtomicBool,
}

impl Default for AppHealth {
    fn default() -> Self {
        AppHealth {
            healthy: AtomicBool::new(true),
        }
    }
}

impl AppHealth {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }
}

/// Counts consecutive probe failures; pure, so the threshold rule is unit-tested.
#[derive(Debug)]
pub struct Tracker {
    threshold: u32,
    failures: u32,
    healthy: bool,
}

impl Tracker {
    pub fn new(threshold: u32) -> Self {
        Tracker {
            threshold: threshold.max(1),
            failures: 0,
            healthy: true,
        }
    }

    /// Records one probe; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        let healthy = ok || (self.healthy && self.failures < self.threshold);
        (healthy != self.healthy).then(|| {
            self.healthy = healthy;
            healthy
        })
    }
}

/// Probes the app until `stop` is cancelled.
pub async fn probe_loop(
    app: &AppChannel,
    check: &AppHealthCheck,
    health: &AppHealth,
    stop: &CancellationToken,
) {
    let mut tracker = Tracker::new(check.threshold);
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ok = app.probe(&check.path, check.timeout).await;
        match tracker.record(ok) {
            Some(true) => {
                tracing::info!("App health status changed: app is healthy");
                health.set(true);
            }
            Some(false) => {
                tracing::warn!(
                    threshold = check.threshold,
                    "App health status changed: app is unhealthy; invocations are short-circuited"
                );
                health.set(false);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_turns_unhealthy_after_threshold_failures_in_a_row_and_back_on_one_success() {
        let mut t = Tracker::new(3);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the count");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(false), None, "already unhealthy");
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn a_threshold_of_one_flips_on_the_first_failure() {
        let mut t = Tracker::new(1);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), Some(true));
    }
}
