//! Where the CA's credentials live. Standalone: three files (by default in one directory).
//! Kubernetes mode will add a variant for the Secret and ConfigMap `dapr-trust-bundle`.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{CaBundle, GeneratedCredentials, generate};
use crate::Error;
use crate::config::CredentialPaths;

/// The store the CA is loaded from and, when empty, generated into.
#[derive(Debug, Clone)]
pub enum CaStore {
    Files(CredentialPaths),
}

/// How the running CA came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Loaded,
    Generated,
}

/// A CA taken from the store.
#[derive(Debug)]
pub struct LoadedCa {
    pub bundle: CaBundle,
    pub origin: Origin,
    /// [`RawCredentials::digest`] of what was loaded, for the change watcher.
    pub digest: [u8; 32],
}

/// The three credentials as stored, not yet checked.
pub struct RawCredentials {
    pub trust_anchors: Vec<u8>,
    pub issuer_chain: Vec<u8>,
    pub issuer_key: Vec<u8>,
}

impl fmt::Debug for RawCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCredentials")
            .field("trust_anchors", &self.trust_anchors.len())
            .field("issuer_chain", &self.issuer_chain.len())
            .field("issuer_key", &"<redacted>")
            .finish()
    }
}

impl RawCredentials {
    /// A fingerprint of all three, to notice a change without keeping another copy around.
    pub fn digest(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [&self.trust_anchors, &self.issuer_chain, &self.issuer_key] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    pub fn to_bundle(&self, paths: &CredentialPaths, now: SystemTime) -> Result<CaBundle, Error> {
        CaBundle::from_pem(
            &self.trust_anchors,
            &self.issuer_chain,
            &self.issuer_key,
            paths,
            now,
        )
    }
}

impl CaStore {
    pub fn paths(&self) -> &CredentialPaths {
        match self {
            CaStore::Files(paths) => paths,
        }
    }

    /// Reads the credentials: `Ok(None)` when none exist; an error naming the missing files
    /// when only some do (so a half-provisioned directory is never silently replaced).
    pub fn read(&self) -> Result<Option<RawCredentials>, Error> {
        let CaStore::Files(paths) = self;
        let anchors = read_optional(&paths.trust_anchors)?;
        let chain = read_optional(&paths.issuer_cert)?;
        let key = read_optional(&paths.issuer_key)?;
        match (anchors, chain, key) {
            (None, None, None) => Ok(None),
            (Some(trust_anchors), Some(issuer_chain), Some(issuer_key)) => {
                Ok(Some(RawCredentials {
                    trust_anchors,
                    issuer_chain,
                    issuer_key,
                }))
            }
            (a, c, k) => {
                let missing: Vec<_> = [
                    (a.is_none(), &paths.trust_anchors),
                    (c.is_none(), &paths.issuer_cert),
                    (k.is_none(), &paths.issuer_key),
                ]
                .into_iter()
                .filter(|(gone, _)| *gone)
                .map(|(_, p)| p.display().to_string())
                .collect();
                Err(Error::Credentials {
                    path: paths.dir.clone(),
                    reason: format!(
                        "missing {} while the other credential files exist; provide all three \
                         or none (sentry then generates them), it never overwrites them",
                        missing.join(", ")
                    ),
                })
            }
        }
    }

    /// Loads and checks the stored CA, or generates and stores one when the store is empty.
    pub fn load_or_generate(
        &self,
        trust_domain: &str,
        namespace: &str,
        allowed_clock_skew: Duration,
        now: SystemTime,
    ) -> Result<LoadedCa, Error> {
        let (raw, origin) = match self.read()? {
            Some(raw) => (raw, Origin::Loaded),
            None => {
                let generated = generate(trust_domain, namespace, now, allowed_clock_skew)?;
                self.store_new(&generated)?;
                let raw = RawCredentials {
                    trust_anchors: generated.trust_anchors_pem.into_bytes(),
                    issuer_chain: generated.issuer_chain_pem.into_bytes(),
                    issuer_key: generated.issuer_key.to_pkcs8_pem().into_bytes(),
                };
                (raw, Origin::Generated)
            }
        };
        Ok(LoadedCa {
            bundle: raw.to_bundle(self.paths(), now)?,
            origin,
            digest: raw.digest(),
        })
    }

    /// Writes freshly generated credentials, mode 0600, refusing to replace any existing file;
    /// on failure the files written so far are removed again.
    fn store_new(&self, generated: &GeneratedCredentials) -> Result<(), Error> {
        let CaStore::Files(paths) = self;
        let key_pem = generated.issuer_key.to_pkcs8_pem();
        let files: [(&Path, &[u8]); 3] = [
            (&paths.trust_anchors, generated.trust_anchors_pem.as_bytes()),
            (&paths.issuer_cert, generated.issuer_chain_pem.as_bytes()),
            (&paths.issuer_key, key_pem.as_bytes()),
        ];
        let mut written = Vec::new();
        for (path, contents) in files {
            if let Err(e) = write_new(path, contents) {
                for done in written {
                    let _ = std::fs::remove_file(done);
                }
                return Err(Error::Credentials {
                    path: path.to_path_buf(),
                    reason: format!("cannot write: {e}"),
                });
            }
            written.push(path);
        }
        Ok(())
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Credentials {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        }),
    }
}

fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn store(dir: &Path) -> CaStore {
        CaStore::Files(CredentialPaths {
            dir: dir.to_path_buf(),
            trust_anchors: dir.join("ca.crt"),
            issuer_cert: dir.join("issuer.crt"),
            issuer_key: dir.join("issuer.key"),
        })
    }

    #[test]
    fn an_empty_directory_gets_generated_credentials_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("creds"));
        let first = store
            .load_or_generate(
                "localhost",
                "default",
                Duration::from_secs(900),
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(first.origin, Origin::Generated);
        assert_eq!(first.bundle.key_algorithm(), "ECDSA P-256");
        for name in ["ca.crt", "issuer.crt", "issuer.key"] {
            let mode = std::fs::metadata(dir.path().join("creds").join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let again = store
            .load_or_generate(
                "localhost",
                "default",
                Duration::from_secs(900),
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(again.origin, Origin::Loaded);
        assert_eq!(again.digest, first.digest);
    }

    #[test]
    fn an_ed25519_bundle_an_earlier_sentry_wrote_is_loaded_as_it_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let old = crate::ca::generate_with(
            "localhost",
            "default",
            SystemTime::now(),
            Duration::ZERO,
            crate::ca::IssuerKey::generate_ed25519,
        )
        .unwrap();
        store.store_new(&old).unwrap();
        let key_before = std::fs::read(dir.path().join("issuer.key")).unwrap();

        let loaded = store
            .load_or_generate("localhost", "default", Duration::ZERO, SystemTime::now())
            .unwrap();
        assert_eq!(loaded.origin, Origin::Loaded);
        assert_eq!(loaded.bundle.key_algorithm(), "Ed25519");
        assert_eq!(
            std::fs::read(dir.path().join("issuer.key")).unwrap(),
            key_before
        );
    }

    #[test]
    fn a_partial_set_is_an_error_naming_the_missing_files_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), b"user data").unwrap();
        let err = store(dir.path())
            .load_or_generate("localhost", "default", Duration::ZERO, SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("issuer.crt") && err.contains("issuer.key"),
            "{err}"
        );
        assert!(!err.contains("ca.crt,"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("ca.crt")).unwrap(),
            b"user data"
        );
        assert!(!dir.path().join("issuer.key").exists());
    }

    #[test]
    fn the_digest_changes_with_any_file_and_debug_hides_the_key() {
        let raw = RawCredentials {
            trust_anchors: b"a".to_vec(),
            issuer_chain: b"b".to_vec(),
            issuer_key: b"secret-key".to_vec(),
        };
        let other = RawCredentials {
            issuer_key: b"secret-kez".to_vec(),
            ..RawCredentials {
                trust_anchors: b"a".to_vec(),
                issuer_chain: b"b".to_vec(),
                issuer_key: vec![],
            }
        };
        assert_ne!(raw.digest(), other.digest());
        assert!(!format!("{raw:?}").contains("secret"));
    }
}
