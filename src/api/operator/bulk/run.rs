//! A run of a retry or skip over one store (see [`super`] for its contract): the count, the
//! confirmation, the chunks and their audit rows.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::super::super::error::ApiError;
use super::super::super::AppState;
use super::super::Op;
use super::Request;
use crate::auth::audit::{self, Outcome as Recorded};
use crate::model::sequence::Chunk;

/// Above this many rows, a run needs `confirm` set to its count.
pub const CONFIRM_ABOVE: u64 = 100;

/// Sequences changed per transaction.
pub const CHUNK: i64 = 500;

/// What a run did, or in a dry run would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub dry_run: bool,
    /// Rows the run counted before changing anything: what a dry run answers.
    pub would_touch: u64,
    /// Rows changed (absent in a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touched: Option<u64>,
    /// Sequences changed (or counted).
    pub sequences: u64,
    /// Rows held behind skipped heads that flow again.
    pub released: u64,
    /// A dry run's: the command that runs it for real (with `--confirm` when its count needs
    /// one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_with: Option<String>,
}

/// One store's walk, for [`run`]: a chunk after `after`, at most `budget` rows, changed or only
/// counted (see `consumer::dlq::sequence::walk` and `relay::admin::sequence::walk`).
pub(in crate::api::operator) trait Walker: Sync {
    type Id: Send + Sync;

    fn chunk<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        after: Option<&'a Self::Id>,
        budget: Option<u64>,
        apply: bool,
    ) -> BoxFuture<'a, Result<Chunk<Self::Id>, sqlx::Error>>;
}

/// Sums of the chunks so far.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    sequences: u64,
    touched: u64,
    released: u64,
}

impl Tally {
    fn add<I>(&mut self, chunk: &Chunk<I>) {
        self.sequences += chunk.sequences;
        self.touched += chunk.touched;
        self.released += chunk.released;
    }
}

/// What [`run`] runs on: a store's walk, and how it words the command line of a request.
pub(in crate::api::operator) struct Store<'a, W> {
    pub walker: &'a W,
    /// The `keel` command that sends a request ([`super::command_line`]).
    pub command: &'a (dyn Fn(&Request) -> String + Sync),
    /// The error when nothing matches a selection of one row.
    pub none: Option<ApiError>,
}

/// Runs `request` on `store`: counts, checks the confirmation, and changes chunk by chunk (see
/// the module's contract). Every outcome but a dry run's is in the audit log, under `op`.
pub(in crate::api::operator) async fn run<W: Walker>(
    state: &AppState,
    op: Op,
    request: &Request,
    store: Store<'_, W>,
) -> Result<Outcome, ApiError> {
    let mut done = Tally::default();
    let mut counted = None;
    let result = run_counted(state, &op, request, store, &mut counted, &mut done).await;
    match &result {
        Err(err) if !request.dry_run => {
            let entry = op
                .entry
                .params(params(request, counted, Some(done)))
                .outcome(Recorded::Failed, Some(err.code.to_owned()));
            if let Err(e) = audit::record_alone(state.store.pool(), &entry).await {
                tracing::error!(error = %e, action = %entry.action, "cannot record a failed operator action in the audit log");
            }
        }
        _ => {}
    }
    result
}

async fn run_counted<W: Walker>(
    state: &AppState,
    op: &Op,
    request: &Request,
    store: Store<'_, W>,
    counted: &mut Option<Tally>,
    done: &mut Tally,
) -> Result<Outcome, ApiError> {
    let Store {
        walker,
        command,
        none,
    } = store;
    let pool = state.store.pool();
    let planned = {
        let mut conn = pool.acquire().await?;
        count(&mut conn, walker, request.max_count).await?
    };
    *counted = Some(planned);
    if let (0, Some(none)) = (planned.touched, none) {
        return Err(none);
    }
    // The same run for real, confirmed when its count needs it.
    let for_real = Request {
        dry_run: false,
        confirm: (planned.touched > CONFIRM_ABOVE || request.confirm.is_some())
            .then_some(planned.touched),
        ..request.clone()
    };
    let mut outcome = Outcome {
        dry_run: request.dry_run,
        would_touch: planned.touched,
        touched: None,
        sequences: planned.sequences,
        released: planned.released,
        run_with: request.dry_run.then(|| command(&for_real)),
    };
    if request.dry_run {
        return Ok(outcome);
    }
    confirmed(planned.touched, request.confirm).map_err(|e| {
        let mut details = e.details.clone();
        details["run_with"] = json!(command(&for_real));
        e.with_details(details)
    })?;
    let mut after: Option<W::Id> = None;
    let mut first = true;
    loop {
        let mut tx = pool.begin().await?;
        let budget = planned.touched.saturating_sub(done.touched);
        let chunk = walker
            .chunk(&mut tx, after.as_ref(), Some(budget), true)
            .await?;
        let mut total = *done;
        total.add(&chunk);
        let last = chunk.next.is_none();
        if last || first {
            let recorded = if last {
                Recorded::Ok
            } else {
                Recorded::Started
            };
            let entry = op
                .entry
                .clone()
                .params(params(request, Some(planned), Some(total)))
                .outcome(recorded, None);
            audit::record(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        *done = total;
        if last {
            break;
        }
        after = chunk.next;
        first = false;
    }
    outcome.touched = Some(done.touched);
    outcome.sequences = done.sequences;
    outcome.released = done.released;
    Ok(outcome)
}

/// Walks every chunk on `conn` without changing anything: the count of a run.
async fn count<W: Walker>(
    conn: &mut PgConnection,
    walker: &W,
    budget: Option<u64>,
) -> Result<Tally, sqlx::Error> {
    let mut tally = Tally::default();
    let mut after = None;
    loop {
        let left = budget.map(|b| b.saturating_sub(tally.touched));
        let chunk = walker.chunk(conn, after.as_ref(), left, false).await?;
        tally.add(&chunk);
        match chunk.next {
            Some(next) => after = Some(next),
            None => return Ok(tally),
        }
    }
}

/// Refuses a run of `count` rows that needs a confirmation it lacks, or whose `confirm` is not
/// its count.
fn confirmed(count: u64, confirm: Option<u64>) -> Result<(), ApiError> {
    match confirm {
        Some(c) if c == count => Ok(()),
        None if count <= CONFIRM_ABOVE => Ok(()),
        _ => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "confirmation_required",
            format!(
                "this would touch {count} rows; above {CONFIRM_ABOVE} rows (or whenever confirm is \
                 given) confirm must be {count}"
            ),
        )
        .with_details(json!({
            "would_touch": count,
            "confirm_above": CONFIRM_ABOVE,
            "confirm": confirm,
        }))),
    }
}

/// The audit row's parameters: the filter, the count, what was touched, the options.
fn params(request: &Request, counted: Option<Tally>, done: Option<Tally>) -> Value {
    let mut params = json!({
        "filter": request.filter(),
        "dry_run_count": counted.map(|c| c.touched),
        "touched": done.map(|d| d.touched),
        "sequences": done.map(|d| d.sequences),
        "released": done.map(|d| d.released),
    });
    let options = [
        ("max_count", json!(request.max_count)),
        ("confirm", json!(request.confirm)),
        ("reason", json!(request.reason.as_deref().map(str::trim))),
        ("whole", json!(request.whole.then_some(true))),
    ];
    for (k, v) in options {
        if !v.is_null() {
            params[k] = v;
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn above_the_threshold_only_the_exact_count_confirms() {
        assert!(confirmed(CONFIRM_ABOVE, None).is_ok());
        assert!(confirmed(0, None).is_ok());
        let refused = confirmed(CONFIRM_ABOVE + 1, None).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (409, "confirmation_required")
        );
        assert_eq!(refused.details["would_touch"], CONFIRM_ABOVE + 1);
        assert!(confirmed(CONFIRM_ABOVE + 1, Some(CONFIRM_ABOVE + 1)).is_ok());
        assert!(confirmed(CONFIRM_ABOVE + 1, Some(CONFIRM_ABOVE + 2)).is_err());
        // A confirmation given must match, even below the threshold.
        assert!(confirmed(3, Some(4)).is_err());
    }
}
