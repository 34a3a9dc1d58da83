//! Picks up a new issuer (or root) without a restart: the credential files are read every
//! second and, once a changed content has stayed the same for one more read, loaded, checked
//! and swapped in. An invalid set is logged once and the running CA keeps serving.
//!
//! Polling rather than inotify: Kubernetes updates a mounted Secret by swapping a `..data`
//! symlink, users copy files one by one, and some directories are bind or network mounts;
//! comparing content every second handles all of these alike, waits out half-written
//! multi-file updates, costs three small reads a second and needs no extra dependency.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::Error;
use crate::ca::store::{CaStore, RawCredentials};
use crate::metrics::Metrics;
use crate::server::Authority;

/// How often the credentials are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

type Digest = [u8; 32];

/// What to do after a read of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Same as what is serving, or a state already refused.
    Unchanged,
    /// Different from the last read: wait one more interval for the writer to finish.
    Settling,
    /// Changed and stable: load it.
    Reload,
}

/// Decides when a changed store is stable enough to load (pure, so it is unit-tested).
#[derive(Debug)]
pub struct ChangeDetector {
    serving: Digest,
    last_seen: Digest,
    refused: Option<Digest>,
}

impl ChangeDetector {
    pub fn new(serving: Digest) -> Self {
        ChangeDetector {
            serving,
            last_seen: serving,
            refused: None,
        }
    }

    pub fn observe(&mut self, seen: Digest) -> Decision {
        let previous = std::mem::replace(&mut self.last_seen, seen);
        if seen == self.serving || Some(seen) == self.refused {
            Decision::Unchanged
        } else if seen != previous {
            Decision::Settling
        } else {
            Decision::Reload
        }
    }

    pub fn loaded(&mut self, digest: Digest) {
        self.serving = digest;
        self.refused = None;
    }

    pub fn refused(&mut self, digest: Digest) {
        self.refused = Some(digest);
    }
}

/// What an empty credentials directory means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenEmpty {
    /// Standalone: the files sentry loaded or generated were deleted; reported once.
    Gone,
    /// Kubernetes mode: the directory is the mounted `dapr-trust-bundle` Secret, which the chart
    /// creates empty and the kubelet refreshes only a while after sentry stored its generated CA
    /// through the API; until then there is nothing to compare.
    NotSyncedYet,
}

/// One read of the store, as the change detector sees it.
#[derive(Debug)]
enum Reading {
    /// Nothing to judge yet (kubernetes mode, the Secret not yet in the mount).
    Pending,
    /// The content's digest and what it loads as.
    Seen(Digest, Result<RawCredentials, String>),
}

fn reading(read: Result<Option<RawCredentials>, Error>, when_empty: WhenEmpty) -> Reading {
    match read {
        Ok(Some(raw)) => Reading::Seen(raw.digest(), Ok(raw)),
        Ok(None) if when_empty == WhenEmpty::NotSyncedYet => Reading::Pending,
        Ok(None) => Reading::Seen(
            digest_of("missing"),
            Err("all credential files are gone".to_owned()),
        ),
        Err(e) => Reading::Seen(digest_of(&e.to_string()), Err(e.to_string())),
    }
}

/// Runs forever (until the task is dropped): reloads the CA on change and renews sentry's
/// serving certificate when due.
pub async fn watch(
    store: CaStore,
    when_empty: WhenEmpty,
    authority: Arc<Authority>,
    metrics: Arc<Metrics>,
    serving: Digest,
    interval: Duration,
) {
    let mut detector = ChangeDetector::new(serving);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut said_pending = false;
    loop {
        ticker.tick().await;
        let reader = store.clone();
        let read = match tokio::task::spawn_blocking(move || reader.read()).await {
            Ok(read) => read,
            Err(e) => {
                tracing::error!("credential reader task failed: {e}");
                continue;
            }
        };
        let (digest, outcome) = match reading(read, when_empty) {
            Reading::Seen(digest, outcome) => {
                said_pending = false;
                (digest, outcome)
            }
            Reading::Pending => {
                if !said_pending {
                    said_pending = true;
                    tracing::info!(
                        dir = %store.paths().dir.display(),
                        "the mounted trust bundle is still empty (the kubelet has not synced the Secret yet); issuer changes are picked up once it is there"
                    );
                }
                authority.renew_server_cert_if_due(SystemTime::now());
                continue;
            }
        };
        if detector.observe(digest) == Decision::Reload {
            let now = SystemTime::now();
            let installed = outcome.and_then(|raw| {
                let bundle = raw
                    .to_bundle(store.paths(), now)
                    .map_err(|e| e.to_string())?;
                let (algorithm, not_after) = (bundle.key_algorithm(), bundle.issuer_not_after());
                authority.install(bundle, now).map_err(|e| e.to_string())?;
                Ok((algorithm, not_after))
            });
            match installed {
                Ok((algorithm, not_after)) => {
                    detector.loaded(digest);
                    metrics.issuer_changed();
                    tracing::info!(
                        algorithm,
                        issuer_expiry = %crate::ca::rfc3339(not_after),
                        "issuer credentials changed: now signing with the new issuer"
                    );
                }
                Err(e) => {
                    detector.refused(digest);
                    tracing::error!(
                        "new issuer credentials rejected, still serving the previous ones: {e}"
                    );
                }
            }
        }
        authority.renew_server_cert_if_due(SystemTime::now());
    }
}

fn digest_of(text: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_loaded_only_after_it_stayed_the_same_for_one_more_read() {
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let mut d = ChangeDetector::new(a);
        assert_eq!(d.observe(a), Decision::Unchanged);
        assert_eq!(d.observe(b), Decision::Settling);
        assert_eq!(d.observe(c), Decision::Settling, "still being written");
        assert_eq!(d.observe(c), Decision::Reload);
        d.loaded(c);
        assert_eq!(d.observe(c), Decision::Unchanged);
    }

    #[test]
    fn a_refused_state_is_reported_once_and_a_later_fix_is_loaded() {
        let (a, bad, good) = ([1; 32], [2; 32], [3; 32]);
        let mut d = ChangeDetector::new(a);
        assert_eq!(d.observe(bad), Decision::Settling);
        assert_eq!(d.observe(bad), Decision::Reload);
        d.refused(bad);
        for _ in 0..3 {
            assert_eq!(d.observe(bad), Decision::Unchanged);
        }
        assert_eq!(d.observe(good), Decision::Settling);
        assert_eq!(d.observe(good), Decision::Reload);
    }

    #[test]
    fn an_empty_mount_is_pending_in_kubernetes_mode_and_gone_in_standalone() {
        assert!(matches!(
            reading(Ok(None), WhenEmpty::NotSyncedYet),
            Reading::Pending
        ));
        match reading(Ok(None), WhenEmpty::Gone) {
            Reading::Seen(_, Err(e)) => assert!(e.contains("gone"), "{e}"),
            other => panic!("{other:?}"),
        }
        let raw = RawCredentials {
            trust_anchors: b"ROOT".to_vec(),
            issuer_chain: b"ISSUER".to_vec(),
            issuer_key: b"KEY".to_vec(),
        };
        let digest = raw.digest();
        match reading(Ok(Some(raw)), WhenEmpty::NotSyncedYet) {
            Reading::Seen(seen, Ok(_)) => assert_eq!(seen, digest),
            other => panic!("{other:?}"),
        }
        let broken = Error::Credentials {
            path: "/creds".into(),
            reason: "missing issuer.key".into(),
        };
        assert!(matches!(
            reading(Err(broken), WhenEmpty::NotSyncedYet),
            Reading::Seen(_, Err(_))
        ));
    }

    #[test]
    fn going_back_to_the_serving_content_needs_no_reload() {
        let (a, b) = ([1; 32], [2; 32]);
        let mut d = ChangeDetector::new(a);
        assert_eq!(d.observe(b), Decision::Settling);
        assert_eq!(d.observe(a), Decision::Unchanged);
        assert_eq!(d.observe(a), Decision::Unchanged);
    }
}
