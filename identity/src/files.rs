//! Files that change under a running process (cert-manager renewing a serving certificate, a
//! rotated trust bundle, a JWKS): polled and published through a watch channel. Polling sees
//! Kubernetes' atomic symlink swaps of mounted Secrets and ConfigMaps, which inotify watches on
//! the file itself miss. The one file watcher of daprd, the injector and sentry.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

/// The contents of a set of files, in the order given.
pub type Contents = Vec<Vec<u8>>;

fn read_all(paths: &[PathBuf]) -> Result<Contents, String> {
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect()
}

/// Reads `paths` now and then every `interval`, sending their contents whenever any of them
/// changed. `None` until all of them could be read once; after that a read error keeps the last
/// contents. The poller stops when every receiver is gone.
pub fn watch(paths: Vec<PathBuf>, interval: Duration) -> watch::Receiver<Option<Contents>> {
    let first = read_all(&paths);
    let mut failing = first.as_ref().err().cloned();
    if let Some(e) = &failing {
        warn!(error = %e, "cannot read file; will retry");
    }
    let (tx, rx) = watch::channel(first.ok());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = tx.closed() => return,
            }
            match read_all(&paths) {
                Ok(contents) => {
                    failing = None;
                    tx.send_if_modified(|current| {
                        if current.as_ref() == Some(&contents) {
                            false
                        } else {
                            *current = Some(contents);
                            true
                        }
                    });
                }
                Err(e) => {
                    if failing.as_ref() != Some(&e) {
                        warn!(error = %e, "cannot read file; keeping the last contents");
                        failing = Some(e);
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_file_is_published_and_an_unchanged_one_is_not() {
        let dir = std::env::temp_dir().join(format!("identity-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a");
        std::fs::write(&path, "one").unwrap();
        let mut rx = watch(vec![path.clone()], Duration::from_millis(20));
        assert_eq!(rx.borrow_and_update().clone(), Some(vec![b"one".to_vec()]));
        std::fs::write(&path, "two").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("change seen within 5s")
            .unwrap();
        assert_eq!(rx.borrow_and_update().clone(), Some(vec![b"two".to_vec()]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
