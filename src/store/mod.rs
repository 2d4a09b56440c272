//! The event store in PostgreSQL: appends with optimistic concurrency and an outbox row per event,
//! point and stream reads, and the gap-safe log that every ordered reader follows; [`sequence`]
//! is the SQL both tables of parked rows are walked with.
//!
//! Invariants (each backed by a test in `tests/api`):
//! - An aggregate's versions are 1, 2, 3... with no gap and no duplicate, under any concurrency,
//!   without a global lock: writers serialize on the aggregate's row in `streams` only.
//! - An event and its outbox row commit in the same transaction, or neither does.
//! - [`log::read_committed_after`] never skips an event, whenever its transaction commits.

pub(crate) mod append;
mod config;
mod error;
mod group_commit;
pub mod log;
mod read;
mod row;
pub mod sequence;
pub(crate) use read::EVENT_COLUMNS;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, Postgres};
use uuid::Uuid;

pub(crate) use append::{append, find_appended};
pub use config::{redact_url, DatabaseConfig};
pub use error::Error;
pub use log::{LogCursor, LogFilter, LoggedEvent};
pub use read::{get_event, read_stream, stream_version};

use crate::model::{AggregateType, AppendResult, CheckedEvent, ExpectedVersion};
use group_commit::GroupCommit;

/// Migrations embedded in the binary; `keel migrate` and start-up apply them.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How often [`Store::append`] retries an append that lost the transaction-order race
/// ([`Error::TransactionOrder`]). Each retry starts a new transaction, which gets a newer id.
const ORDER_RETRIES: usize = 5;

/// A handle on the event store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    group_commit: Option<Arc<GroupCommit>>,
    commits: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Store {
    /// Connects, creating the database if it is missing and applying pending migrations.
    ///
    /// TLS is what the URL's `sslmode` says (sqlx reads it, with `sslrootcert`, as libpq does;
    /// `PGSSLMODE` and `PGSSLROOTCERT` too): `require`, `verify-ca` and `verify-full` never fall
    /// back to plaintext, and a TLS failure says what in the URL to check.
    pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Self> {
        ensure_database(&config.url).await?;
        let options: PgConnectOptions = config
            .url
            .parse::<PgConnectOptions>()
            .context("invalid database url")?
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_with(options)
            .await
            .map_err(|e| with_tls_hint(e, "cannot connect to the database"))?;
        MIGRATOR
            .run(&pool)
            .await
            .context("cannot apply database migrations")?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool whose database is already migrated.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            group_commit: None,
            commits: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Lets concurrent [`Store::append`] calls share transactions and commits (see
    /// [`group_commit`]). `workers` connections are used for it; 0 turns it off.
    pub fn with_group_commit(mut self, workers: usize, max_events: usize) -> Self {
        self.group_commit = (workers > 0)
            .then(|| Arc::new(GroupCommit::start(self.pool.clone(), workers, max_events)));
        self
    }

    /// Appends `events` to one aggregate and commits, in a transaction of its own or shared with
    /// concurrent appends (group commit), with the same guarantees either way.
    ///
    /// On top of [`append`] this resolves the two outcomes a caller should not have to handle:
    /// a transaction-order conflict is retried in a new transaction, and a batch that was already
    /// stored (a retry after a lost reply) returns the original result with `idempotent_replay`
    /// set, writing nothing.
    ///
    /// Crate-private like [`append`]: callers go through `keel::append`, which validates first.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "append", aggregate_type = %aggregate_type, %aggregate_id, events = events.len()))]
    pub(crate) async fn append(
        &self,
        aggregate_type: &AggregateType,
        aggregate_id: Uuid,
        expected: ExpectedVersion,
        events: Arc<[CheckedEvent]>,
    ) -> Result<AppendResult, Error> {
        if events.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let request = AppendRequest {
            aggregate_type: aggregate_type.clone(),
            aggregate_id,
            expected,
            events,
        };
        let result = match &self.group_commit {
            Some(group) => group.append(request).await,
            None => append_alone(&self.pool, &request).await,
        };
        if matches!(&result, Ok(r) if !r.idempotent_replay) {
            self.commits.send_modify(|n| *n = n.wrapping_add(1));
        }
        result
    }

    /// Changes after every append this handle commits: an in-process wake-up for the relay, so
    /// it does not need a notification inside the append transaction. Appends made with
    /// [`append`] in a caller's own transaction do not signal; the relay's poll finds them.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Checks that the database answers; used by the readiness probe.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// One append, owned, as queued for group commit.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    aggregate_type: AggregateType,
    aggregate_id: Uuid,
    expected: ExpectedVersion,
    events: Arc<[CheckedEvent]>,
}

/// Runs one append in a transaction of its own, retrying transaction-order conflicts.
async fn append_alone(pool: &PgPool, r: &AppendRequest) -> Result<AppendResult, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = pool.begin().await?;
        match append(
            &mut tx,
            &r.aggregate_type,
            r.aggregate_id,
            r.expected,
            &r.events,
        )
        .await
        {
            Ok(result) => {
                tx.commit().await?;
                return Ok(result);
            }
            Err(Error::TransactionOrder) if attempt < ORDER_RETRIES => {
                tracing::debug!(
                    attempt,
                    "retrying an append that lost the transaction-order race"
                );
                tx.rollback().await?;
            }
            Err(refusal) => {
                tx.rollback().await?;
                return resolve_refusal(pool, r, refusal).await;
            }
        }
    }
}

/// What a refused append means for the caller: a refusal because the batch is already stored is
/// an idempotent replay of the original result; anything else stands.
async fn resolve_refusal(
    pool: &PgPool,
    r: &AppendRequest,
    refusal: Error,
) -> Result<AppendResult, Error> {
    match refusal {
        Error::WrongExpectedVersion { .. } | Error::DuplicateEventId { .. } => {
            match find_appended(pool, &r.aggregate_type, r.aggregate_id, &r.events).await? {
                Some(original) => Ok(original),
                None => Err(refusal),
            }
        }
        other => Err(other),
    }
}

/// Creates the database named in `url` if it does not exist. Two processes racing here is fine:
/// the loser sees `duplicate_database` and carries on.
async fn ensure_database(url: &str) -> anyhow::Result<()> {
    if Postgres::database_exists(url)
        .await
        .map_err(|e| with_tls_hint(e, "cannot reach PostgreSQL to check the database exists"))?
    {
        return Ok(());
    }
    match Postgres::create_database(url).await {
        Ok(()) => {
            tracing::info!("created the database");
            Ok(())
        }
        // Another keel created it meanwhile: `42P04` when PostgreSQL saw that, or a unique
        // violation on `pg_database` (`23505`) when both CREATEs ran at once.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {
            Ok(())
        }
        Err(e) => Err(with_tls_hint(e, "cannot create the database")),
    }
}

/// `error` with `what` as context, and with what to check in the URL when TLS (or a TLS file) is
/// why the connection failed.
fn with_tls_hint(error: sqlx::Error, what: &str) -> anyhow::Error {
    match tls_hint(&error) {
        // sqlx's message already holds its source's, which a chain would show a second time.
        Some(hint) => anyhow::anyhow!("{what} ({hint}): {error}"),
        None => anyhow::Error::new(error).context(what.to_owned()),
    }
}

/// What to check in the database URL after `error`, if it is a TLS failure.
fn tls_hint(error: &sqlx::Error) -> Option<&'static str> {
    if let Some(tls) = crate::tls::tls_error(error) {
        return Some(match tls {
            rustls::Error::InvalidCertificate(_) => {
                "TLS: the server's certificate does not verify: check that database_url's \
                 sslrootcert is the CA that signed it and that the URL's host is a name in it"
            }
            _ => "TLS: the handshake with PostgreSQL failed: check database_url's sslmode and sslrootcert",
        });
    }
    match error {
        sqlx::Error::Tls(e) if e.to_string().contains("does not support TLS") => Some(
            "TLS: database_url's sslmode requires TLS, which keel never gives up for plaintext: \
             check that the server has ssl = on",
        ),
        sqlx::Error::Tls(_) => {
            Some("TLS: check database_url's sslmode, sslrootcert, sslcert and sslkey")
        }
        // A file the connection options name: the TLS ones are the only files, apart from a
        // Unix socket.
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => Some(
            "a file database_url names cannot be read: check sslrootcert, sslcert and sslkey \
             (or PGSSLROOTCERT), or the socket directory",
        ),
        _ => None,
    }
}

/// A span PostgreSQL computed in seconds (`extract(epoch FROM now() - t)` and the like) as a
/// duration. It can be negative: a transaction fixes `now()` when it begins, and its later
/// statements see rows committed since (read committed), stamped after that. Those are 0 s, as is
/// anything not a number; an infinite span is the longest duration.
pub fn seconds(s: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(std::time::Duration::MAX)
}

#[cfg(test)]
mod seconds_tests {
    use std::time::Duration;

    #[test]
    fn a_span_from_after_the_transactions_now_is_zero_not_a_panic() {
        // The soak found it: an outbox row committed after the health sample's transaction began
        // is "-0.004 s old", and `Duration::from_secs_f64` panicked on it, ending the monitor.
        assert_eq!(super::seconds(-0.004), Duration::ZERO);
        assert_eq!(super::seconds(f64::NAN), Duration::ZERO);
        assert_eq!(super::seconds(f64::INFINITY), Duration::MAX);
        assert_eq!(super::seconds(1.5), Duration::from_millis(1500));
    }
}
