//! The `sqlite` resolver: sidecars register in a database file they all see, with upstream's
//! schema (components-contrib `nameresolution/sqlite/sqlite.go`, `sqlite_migrations.go` and the
//! migration helper in `common/component/sql/migrations/sqlite/`), so our sidecars and upstream's
//! can share one file in either start order:
//!
//! - table `hosts` (`tableName`): `registration_id TEXT NOT NULL PRIMARY KEY`, `address TEXT NOT
//!   NULL` (unique index `hosts_address_idx`), `app_id TEXT NOT NULL`, `namespace TEXT NOT NULL`
//!   (always written empty, as upstream), `last_update INTEGER NOT NULL` (unix seconds, index
//!   `hosts_last_update_idx`);
//! - table `metadata` (`metadataTableName`): `key text NOT NULL PRIMARY KEY, value text NOT NULL`,
//!   holding the migration level under `nr-migrations` (`1` once `hosts` exists) and the last
//!   garbage collection time under `nr-last-cleanup`;
//! - a registration is live while `now - last_update < updateInterval` (5 s); it is renewed every
//!   `updateInterval - timeout` (4 s); lookups match the app id only (upstream ignores
//!   namespaces here).
//!
//! A `hosts` table left by our previous schema (column `updated_at`, no metadata) is dropped by
//! the migration: registrations are refreshed every few seconds, so nothing of value is lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ResolveError;
use super::{Cache, Target};
use crate::StartError;

/// The metadata key holding the migration level (upstream's `MetadataKey`).
const MIGRATIONS_KEY: &str = "nr-migrations";
/// The metadata key holding the time of the last garbage collection.
const LAST_CLEANUP_KEY: &str = "nr-last-cleanup";
/// Migrations this version knows: 1 (create the hosts table).
const MIGRATION_LEVEL: i64 = 1;
/// Bounded retries while another sidecar holds the database lock at start.
const LOCK_RETRIES: u32 = 50;
const LOCK_RETRY_WAIT: Duration = Duration::from_millis(100);

/// The resolver's options, from `nameResolution.configuration`, with upstream's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The database file (`connectionString`; a `file:` URI is accepted).
    pub path: String,
    pub table: String,
    pub metadata_table: String,
    pub update_interval: Duration,
    pub timeout: Duration,
    pub cleanup_interval: Duration,
    pub busy_timeout: Duration,
    pub disable_wal: bool,
}

impl Options {
    /// Reads the options; an absent `connectionString` is `dapr-name-resolution.db` in the
    /// temporary directory (upstream requires one).
    pub fn from_map(options: &BTreeMap<String, String>) -> Result<Options, StartError> {
        let invalid = |reason: String| StartError::Config {
            flag: "--config",
            reason: format!("sqlite name resolution: {reason}"),
        };
        let get = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| options.get(*k))
                .map(String::as_str)
        };
        let duration = |keys: &[&str], default: Duration| -> Result<Duration, StartError> {
            match get(keys) {
                None | Some("") => Ok(default),
                // A plain number is seconds (upstream's metadata decoder does the same).
                Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => v
                    .parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|e| invalid(format!("{}: {e}", keys[0]))),
                Some(v) => {
                    dapr_crds::duration::parse(v).map_err(|e| invalid(format!("{}: {e}", keys[0])))
                }
            }
        };
        let path = get(&["connectionString", "url"])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                std::env::temp_dir()
                    .join("dapr-name-resolution.db")
                    .to_string_lossy()
                    .into_owned()
            });
        let opts = Options {
            path,
            table: get(&["tableName"]).unwrap_or("hosts").to_owned(),
            metadata_table: get(&["metadataTableName"]).unwrap_or("metadata").to_owned(),
            update_interval: duration(&["updateInterval"], Duration::from_secs(5))?,
            timeout: duration(&["timeout", "timeoutInSeconds"], Duration::from_secs(1))?,
            cleanup_interval: duration(
                &["cleanupInterval", "cleanupIntervalInSeconds"],
                Duration::from_secs(3600),
            )?,
            busy_timeout: duration(&["busyTimeout"], Duration::from_millis(800))?,
            disable_wal: get(&["disableWAL"]).is_some_and(|v| v.eq_ignore_ascii_case("true")),
        };
        for (name, value) in [
            ("tableName", &opts.table),
            ("metadataTableName", &opts.metadata_table),
        ] {
            if !valid_identifier(value) {
                return Err(invalid(format!("invalid identifier for {name}: {value}")));
            }
        }
        if opts.timeout < Duration::from_secs(1) {
            return Err(invalid("'timeout' must be at least 1s".into()));
        }
        if opts.update_interval.subsec_nanos() != 0 {
            return Err(invalid(
                "update interval must not contain fractions of seconds".into(),
            ));
        }
        if opts.update_interval < opts.timeout + Duration::from_secs(1) {
            return Err(invalid(
                "update interval must be at least 1s greater than timeout".into(),
            ));
        }
        Ok(opts)
    }

    /// How often a registration is renewed: `updateInterval - timeout`, so a renewal that takes
    /// the whole timeout still lands before the row goes stale (upstream: the same less 1ns).
    pub fn renew_every(&self) -> Duration {
        self.update_interval.saturating_sub(self.timeout)
    }
}

/// Upstream's `ValidIdentifier`: ASCII letters, digits and `_`, not empty.
fn valid_identifier(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Runs `f`, again while the database is locked by another process (bounded).
fn retry_locked<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut attempts = 0;
    loop {
        match f() {
            Err(e) if attempts < LOCK_RETRIES && is_busy(&e) => {
                attempts += 1;
                std::thread::sleep(LOCK_RETRY_WAIT);
            }
            other => return other,
        }
    }
}

/// What [`migrate`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Migrated {
    /// The schema was already at (or beyond) our level.
    UpToDate,
    /// The hosts table was created.
    Created,
    /// A hosts table of our previous schema was dropped and upstream's created.
    ReplacedPrevious,
}

/// Brings the database to upstream's schema, in one exclusive transaction as upstream does (so
/// sidecars starting together do not race): the metadata table, then each migration above the
/// stored level, then the new level.
pub fn migrate(
    db: &rusqlite::Connection,
    table: &str,
    metadata: &str,
) -> rusqlite::Result<Migrated> {
    retry_locked(|| db.execute_batch("BEGIN EXCLUSIVE TRANSACTION"))?;
    let result = migrate_in_transaction(db, table, metadata);
    match &result {
        Ok(_) => db.execute_batch("COMMIT TRANSACTION")?,
        Err(_) => {
            let _ = db.execute_batch("ROLLBACK TRANSACTION");
        }
    }
    result
}

fn migrate_in_transaction(
    db: &rusqlite::Connection,
    table: &str,
    metadata: &str,
) -> rusqlite::Result<Migrated> {
    db.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {metadata} (
            key text NOT NULL PRIMARY KEY,
            value text NOT NULL
        )"
    ))?;
    let level: Option<String> = db
        .query_row(
            &format!("SELECT value FROM {metadata} WHERE key = ?1"),
            [MIGRATIONS_KEY],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let level = match level {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|l| *l >= 0).ok_or_else(|| {
            rusqlite::Error::InvalidParameterName(format!(
                "invalid migration level found in metadata table: {v}"
            ))
        })?,
    };
    if level >= MIGRATION_LEVEL {
        return Ok(Migrated::UpToDate);
    }
    // Migration 1: the hosts table. A table of the same name from our previous schema (it had
    // `updated_at` instead of `last_update`, and no metadata table) is dropped first.
    let columns: Vec<String> = db
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let previous = columns.iter().any(|c| c == "updated_at");
    if previous {
        db.execute_batch(&format!("DROP TABLE {table}"))?;
    }
    db.execute_batch(&format!(
        "CREATE TABLE {table} (
            registration_id TEXT NOT NULL PRIMARY KEY,
            address TEXT NOT NULL,
            app_id TEXT NOT NULL,
            namespace TEXT NOT NULL,
            last_update INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX {table}_address_idx ON {table} (address);
        CREATE INDEX {table}_last_update_idx ON {table} (last_update);"
    ))?;
    db.execute(
        &format!("REPLACE INTO {metadata} (key, value) VALUES ('{MIGRATIONS_KEY}', ?1)"),
        [MIGRATION_LEVEL.to_string()],
    )?;
    Ok(if previous {
        Migrated::ReplacedPrevious
    } else {
        Migrated::Created
    })
}

/// A random version-4 UUID in its text form, as upstream's registration ids.
fn registration_id() -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

type DbCall<T> = Box<dyn FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send>;

pub struct Sqlite {
    db: Arc<Mutex<rusqlite::Connection>>,
    opts: Options,
    registration_id: Mutex<String>,
    app_id: String,
    /// `host:port` as registered (upstream's `net.JoinHostPort`).
    address: String,
    pub(super) cache: Cache,
}

impl Sqlite {
    /// Opens the database and migrates it; registration starts with [`Sqlite::run_registration`].
    pub fn open(opts: Options, app_id: &str, address: SocketAddr) -> Result<Self, ResolveError> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = rusqlite::Connection::open_with_flags(&opts.path, flags).map_err(|source| {
            ResolveError::SqliteOpen {
                path: opts.path.clone(),
                source,
            }
        })?;
        db.busy_timeout(opts.busy_timeout)?;
        let journal = if opts.disable_wal { "DELETE" } else { "WAL" };
        // Switching the journal can fail with "database is locked" without waiting on the busy
        // timeout when another sidecar initialises the same file at the same moment.
        retry_locked(|| db.execute_batch(&format!("PRAGMA journal_mode={journal}")))?;
        tracing::info!(path = %opts.path, "Configuring SQLite name resolution");
        match migrate(&db, &opts.table, &opts.metadata_table)? {
            Migrated::UpToDate => {}
            Migrated::Created => {
                tracing::info!(table = %opts.table, "created the sqlite name resolution table")
            }
            Migrated::ReplacedPrevious => tracing::warn!(
                table = %opts.table,
                "dropped a name resolution table of our previous schema and created upstream's"
            ),
        }
        Ok(Sqlite {
            db: Arc::new(Mutex::new(db)),
            opts,
            registration_id: Mutex::new(String::new()),
            app_id: app_id.to_owned(),
            address: address.to_string(),
            cache: Cache::default(),
        })
    }

    /// Runs a blocking database call off the async threads, bounded by `timeout`.
    /// (The call is boxed: a generic closure over `&Connection` would make callers' futures
    /// fail the higher-ranked `Send` check.)
    async fn with_db<T: Send + 'static>(&self, f: DbCall<T>) -> Result<T, ResolveError> {
        let db = Arc::clone(&self.db);
        let call = tokio::task::spawn_blocking(move || {
            let conn = db.lock().map_err(|_| ResolveError::SqlitePoisoned)?;
            Ok(f(&conn)?)
        });
        tokio::time::timeout(self.opts.timeout, call)
            .await
            .map_err(|_| ResolveError::SqliteTimeout(self.opts.timeout))??
    }

    pub async fn resolve(&self, target: &Target) -> Result<SocketAddr, ResolveError> {
        if let Some(addr) = self.cache.get(target) {
            return Ok(addr);
        }
        let app_id = target.app_id.clone();
        let sql = format!(
            "SELECT address FROM {} WHERE app_id = ?1 AND unixepoch(CURRENT_TIMESTAMP) - last_update < {} ORDER BY registration_id",
            self.opts.table,
            self.opts.update_interval.as_secs()
        );
        let rows: Vec<String> = self
            .with_db(Box::new(move |db| {
                let mut stmt = db.prepare_cached(&sql)?;
                let rows = stmt.query_map([app_id], |r| r.get(0))?;
                rows.collect()
            }))
            .await?;
        let addrs: Arc<[SocketAddr]> = rows.iter().filter_map(|a| a.parse().ok()).collect();
        let addr = self
            .cache
            .pick(&addrs)
            .ok_or_else(|| ResolveError::NotRegistered(target.app_id.clone()))?;
        self.cache.put(target, addrs);
        Ok(addr)
    }

    /// Takes over `address` with a fresh registration id (upstream's `REPLACE`: the address is
    /// unique, so an older registration of it is replaced).
    async fn register(&self) -> Result<(), ResolveError> {
        let id = registration_id();
        let sql = format!(
            "REPLACE INTO {} (registration_id, address, app_id, namespace, last_update) VALUES (?1, ?2, ?3, '', unixepoch(CURRENT_TIMESTAMP))",
            self.opts.table
        );
        let (rid, addr, app) = (id.clone(), self.address.clone(), self.app_id.clone());
        self.with_db(Box::new(move |db| {
            db.execute(&sql, rusqlite::params![rid, addr, app])
        }))
        .await?;
        if let Ok(mut current) = self.registration_id.lock() {
            *current = id;
        }
        Ok(())
    }

    fn current_id(&self) -> String {
        self.registration_id
            .lock()
            .map(|id| id.clone())
            .unwrap_or_default()
    }

    /// Renews this sidecar's row; `Ok(false)` when the row is gone.
    async fn renew(&self) -> Result<bool, ResolveError> {
        let sql = format!(
            "UPDATE {} SET last_update = unixepoch(CURRENT_TIMESTAMP) WHERE registration_id = ?1 AND address = ?2",
            self.opts.table
        );
        let (id, addr) = (self.current_id(), self.address.clone());
        let n = self
            .with_db(Box::new(move |db| {
                db.execute(&sql, rusqlite::params![id, addr])
            }))
            .await?;
        Ok(n > 0)
    }

    /// Deletes rows not renewed within `updateInterval`, at most once per `cleanupInterval`
    /// across every sidecar sharing the file (the `nr-last-cleanup` row decides who runs it).
    async fn collect_garbage(&self) -> Result<usize, ResolveError> {
        let claim = format!(
            "INSERT INTO {} (key, value) VALUES ('{LAST_CLEANUP_KEY}', CURRENT_TIMESTAMP)
             ON CONFLICT (key) DO UPDATE SET value = CURRENT_TIMESTAMP
             WHERE unixepoch(CURRENT_TIMESTAMP) - unixepoch(value) > ?1",
            self.opts.metadata_table
        );
        let delete = format!(
            "DELETE FROM {} WHERE unixepoch(CURRENT_TIMESTAMP) - last_update >= {}",
            self.opts.table,
            self.opts.update_interval.as_secs()
        );
        // Seconds, less one so a timer firing a little early still runs.
        let min_age = self.opts.cleanup_interval.as_secs().saturating_sub(1) as i64;
        self.with_db(Box::new(move |db| {
            if db.execute(&claim, [min_age])? == 0 {
                return Ok(0);
            }
            db.execute(&delete, [])
        }))
        .await
    }

    /// Registers, renews every `updateInterval - timeout` and collects garbage every
    /// `cleanupInterval` until `shutdown`, then deletes this sidecar's row.
    pub async fn run_registration(&self, shutdown: tokio_util::sync::CancellationToken) {
        if let Err(e) = self.register().await {
            tracing::warn!(error = %e, "cannot register in the sqlite name resolution table");
        }
        let every = self.opts.renew_every();
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let gc_every = self.opts.cleanup_interval;
        let mut gc = (!gc_every.is_zero())
            .then(|| tokio::time::interval_at(tokio::time::Instant::now() + gc_every, gc_every));
        loop {
            let gc_tick = async {
                match gc.as_mut() {
                    Some(gc) => gc.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = renew.tick() => match self.renew().await {
                    Ok(true) => {}
                    // Upstream exits the process here; registering again keeps the sidecar
                    // reachable.
                    Ok(false) => {
                        tracing::warn!("the sqlite name registration was lost; registering again");
                        if let Err(e) = self.register().await {
                            tracing::warn!(error = %e, "cannot register in the sqlite name resolution table");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the sqlite name registration"),
                },
                _ = gc_tick => match self.collect_garbage().await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "removed expired name registrations"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot remove expired name registrations"),
                },
            }
        }
        let sql = format!(
            "DELETE FROM {} WHERE registration_id = ?1 AND address = ?2",
            self.opts.table
        );
        let (id, addr) = (self.current_id(), self.address.clone());
        if let Err(e) = self
            .with_db(Box::new(move |db| {
                db.execute(&sql, rusqlite::params![id, addr])
            }))
            .await
        {
            tracing::warn!(error = %e, "cannot remove the sqlite name registration");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn opts(path: &std::path::Path) -> Options {
        let mut map = BTreeMap::new();
        map.insert(
            "connectionString".to_owned(),
            path.to_string_lossy().into_owned(),
        );
        Options::from_map(&map).unwrap()
    }

    fn orders() -> Target {
        Target {
            app_id: "orders".into(),
            namespace: "shop".into(),
        }
    }

    fn columns(db: &rusqlite::Connection, table: &str) -> Vec<(String, String, bool, bool)> {
        db.prepare(&format!(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? > 0))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    #[test]
    fn options_have_upstreams_defaults_and_checks() {
        let o = Options::from_map(&BTreeMap::new()).unwrap();
        assert_eq!(
            (o.table.as_str(), o.metadata_table.as_str()),
            ("hosts", "metadata")
        );
        assert_eq!(o.update_interval, Duration::from_secs(5));
        assert_eq!(o.timeout, Duration::from_secs(1));
        assert_eq!(o.cleanup_interval, Duration::from_secs(3600));
        assert_eq!(o.busy_timeout, Duration::from_millis(800));
        assert_eq!(o.renew_every(), Duration::from_secs(4));
        let with = |k: &str, v: &str| {
            let mut m = BTreeMap::new();
            m.insert(k.to_owned(), v.to_owned());
            Options::from_map(&m)
        };
        assert_eq!(
            with("updateInterval", "10s").unwrap().update_interval,
            Duration::from_secs(10)
        );
        assert_eq!(
            with("timeout", "2").unwrap().timeout,
            Duration::from_secs(2)
        );
        assert!(
            with("updateInterval", "1500ms").is_err(),
            "fractions of seconds"
        );
        assert!(
            with("updateInterval", "1s").is_err(),
            "not 1s above timeout"
        );
        assert!(with("timeout", "500ms").is_err());
        assert!(with("tableName", "hosts; DROP").is_err());
        assert!(with("metadataTableName", "").is_err());
    }

    #[test]
    fn the_migration_creates_upstreams_tables_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = rusqlite::Connection::open(dir.path().join("nr.db")).unwrap();
        assert_eq!(
            migrate(&db, "hosts", "metadata").unwrap(),
            Migrated::Created
        );
        assert_eq!(
            columns(&db, "hosts"),
            [
                ("registration_id".into(), "TEXT".into(), true, true),
                ("address".into(), "TEXT".into(), true, false),
                ("app_id".into(), "TEXT".into(), true, false),
                ("namespace".into(), "TEXT".into(), true, false),
                ("last_update".into(), "INTEGER".into(), true, false),
            ]
        );
        assert_eq!(
            columns(&db, "metadata"),
            [
                ("key".into(), "TEXT".into(), true, true),
                ("value".into(), "TEXT".into(), true, false),
            ]
        );
        let indexes: Vec<(String, bool)> = db
            .prepare("SELECT name, \"unique\" FROM pragma_index_list('hosts') WHERE origin = 'c' ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            indexes,
            [
                ("hosts_address_idx".into(), true),
                ("hosts_last_update_idx".into(), false)
            ]
        );
        let level: String = db
            .query_row(
                "SELECT value FROM metadata WHERE key = 'nr-migrations'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(level, "1");
        assert_eq!(
            migrate(&db, "hosts", "metadata").unwrap(),
            Migrated::UpToDate
        );
    }

    #[test]
    fn a_table_of_our_previous_schema_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = rusqlite::Connection::open(dir.path().join("nr.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE hosts (registration_id TEXT PRIMARY KEY, app_id TEXT NOT NULL,
                 namespace TEXT NOT NULL, address TEXT NOT NULL, updated_at INTEGER NOT NULL);
             CREATE INDEX hosts_app ON hosts (namespace, app_id);
             INSERT INTO hosts VALUES ('orders-1', 'orders', 'default', '127.0.0.1:1', 0);",
        )
        .unwrap();
        assert_eq!(
            migrate(&db, "hosts", "metadata").unwrap(),
            Migrated::ReplacedPrevious
        );
        assert!(columns(&db, "hosts").iter().any(|c| c.0 == "last_update"));
        let rows: i64 = db
            .query_row("SELECT count(*) FROM hosts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn a_level_beyond_ours_is_left_alone_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = rusqlite::Connection::open(dir.path().join("nr.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE metadata (key text NOT NULL PRIMARY KEY, value text NOT NULL);
             INSERT INTO metadata VALUES ('nr-migrations', '2');",
        )
        .unwrap();
        assert_eq!(
            migrate(&db, "hosts", "metadata").unwrap(),
            Migrated::UpToDate
        );
        db.execute_batch("UPDATE metadata SET value = 'x'").unwrap();
        assert!(migrate(&db, "hosts", "metadata").is_err());
    }

    #[test]
    fn registration_ids_are_version_4_uuids() {
        let id = registration_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(id, registration_id());
    }

    #[tokio::test]
    async fn registrations_resolve_by_app_id_until_removed_or_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nr.db");
        let addr: SocketAddr = "127.0.0.1:47001".parse().unwrap();
        let orders_sidecar = Sqlite::open(opts(&path), "orders", addr).unwrap();
        let caller =
            Sqlite::open(opts(&path), "checkout", "127.0.0.1:47002".parse().unwrap()).unwrap();
        assert!(
            caller.resolve(&orders()).await.is_err(),
            "nothing registered yet"
        );

        let shutdown = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { orders_sidecar.run_registration(shutdown).await }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            match caller.resolve(&orders()).await {
                Ok(found) => break found,
                Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
                Err(e) => panic!("never registered: {e}"),
            }
        };
        assert_eq!(found, addr, "any namespace: upstream ignores it");
        let row: (String, String, String) = {
            let db = caller.db.lock().unwrap();
            db.query_row("SELECT address, app_id, namespace FROM hosts", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
        };
        assert_eq!(
            row,
            ("127.0.0.1:47001".into(), "orders".into(), String::new())
        );
        shutdown.cancel();
        handle.await.unwrap();
        caller.cache.evict(&orders());
        assert!(
            caller.resolve(&orders()).await.is_err(),
            "registration removed on shutdown"
        );

        // A row older than updateInterval is not used, and garbage collection removes it.
        caller
            .db
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO hosts VALUES ('x', '127.0.0.1:47003', 'orders', '', unixepoch(CURRENT_TIMESTAMP) - 5)",
                [],
            )
            .unwrap();
        assert!(
            caller.resolve(&orders()).await.is_err(),
            "stale row ignored"
        );
        assert_eq!(caller.collect_garbage().await.unwrap(), 1);
        assert_eq!(
            caller.collect_garbage().await.unwrap(),
            0,
            "at most once per cleanup interval"
        );
    }
}
