//! Firing due timeouts, and redriving parked instances.
//!
//! Every runner polls `saga_timeouts` for rows due by PostgreSQL's clock. Each firing is its own
//! transaction: the instance's lock is *tried* (a runner that finds it taken leaves the row to
//! whoever holds it, or to its next poll), the row is deleted only if it is still the schedule
//! that was seen and is due, and the step runs. So a timeout fires once per schedule, never early,
//! never after its instance ended (the end deleted it), and on the next start when every runner
//! was down. A parked instance's due timeouts are held in its inbox instead.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::runner::Metrics;
use super::step::{self, Ctx, Failure, Mode, Outcome};
use super::{store, Input};

/// How many due timeouts one poll takes.
const POLL_LIMIT: i64 = 1000;

/// Fires every timeout due now; returns how many this runner fired and when the next one is due
/// (relative to PostgreSQL's now), if any.
pub async fn fire_due(
    pool: &PgPool,
    ctx: &Ctx,
    metrics: &Metrics,
) -> anyhow::Result<(usize, Option<Duration>)> {
    let name = ctx.name();
    let mut due: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT instance_id, name, due_at FROM saga_timeouts
          WHERE saga = $1 AND due_at <= now() ORDER BY due_at LIMIT $2",
    )
    .bind(name)
    .bind(POLL_LIMIT)
    .fetch_all(pool)
    .await?;
    // Runners polling together start at different places in the list, so that they do not
    // all try the same instances first.
    if due.len() > 1 {
        let start = (Uuid::new_v4().as_u128() % due.len() as u128) as usize;
        due.rotate_left(start);
    }
    let mut fired = 0;
    for (instance, timer, due_at) in due {
        if fire(pool, ctx, metrics, instance, &timer, due_at).await? {
            fired += 1;
        }
    }
    let next: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(due_at) - now())::float8 FROM saga_timeouts WHERE saga = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    Ok((fired, next.map(crate::store::seconds)))
}

/// Fires one timeout if it is still due as seen and its instance is free. `Ok(false)`: someone
/// else has it, or it was cancelled or replaced meanwhile.
async fn fire(
    pool: &PgPool,
    ctx: &Ctx,
    metrics: &Metrics,
    instance: Uuid,
    timer: &str,
    seen: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let name = ctx.name();
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    // The lock before any write, as keel's append needs (see `store::append::lock_aggregates`).
    let free = crate::store::append::try_lock_aggregate(&mut tx, ctx.stream(), instance).await?;
    if !free {
        return Ok(false);
    }
    let row: Option<(Value, f64, String)> = sqlx::query_as(
        "DELETE FROM saga_timeouts t USING saga_instances i
          WHERE t.saga = $1 AND t.instance_id = $2 AND t.name = $3 AND t.due_at = $4
            AND t.due_at <= now() AND i.saga = t.saga AND i.instance_id = t.instance_id
         RETURNING t.payload, extract(epoch FROM now() - t.due_at)::float8, i.correlation",
    )
    .bind(name)
    .bind(instance)
    .bind(timer)
    .bind(seen)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((payload, late, correlation)) = row else {
        return Ok(false);
    };
    super::inputs::fault("after_timeout_delete");
    let input = Input::Timeout {
        name: timer.to_owned(),
        payload,
        due_at: seen,
    };
    let outcome = step::deliver(
        &mut tx,
        ctx,
        instance,
        &correlation,
        false,
        &input,
        Mode::Live,
    )
    .await
    .map_err(|e| match e {
        Failure::Retriable(s) | Failure::Permanent(s) => anyhow::anyhow!(s),
        Failure::Database(e) => e.into(),
    })?;
    if matches!(outcome, Outcome::Stepped(_)) {
        ctx.wake_relays(&mut tx).await?;
    }
    tx.commit().await?;
    metrics.lateness(name, late);
    metrics.step(name, "timeout", &outcome, started.elapsed());
    Ok(!matches!(outcome, Outcome::Unmatched))
}

/// Redrives every instance an operator asked to retry: its inbox, oldest first, each input as a
/// normal step, stopping at the first that fails again (which stays parked with its new reason).
pub async fn redrive(pool: &PgPool, ctx: &Ctx, metrics: &Metrics) -> anyhow::Result<usize> {
    let name = ctx.name();
    let asked: Vec<Uuid> = sqlx::query_scalar(
        "SELECT instance_id FROM saga_instances WHERE saga = $1 AND retry_requested_at IS NOT NULL
          ORDER BY retry_requested_at LIMIT 100",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    let mut done = 0;
    for instance in asked {
        let mut tx = pool.begin().await?;
        step::lock(&mut tx, ctx, &[instance]).await?;
        let Some(row) = store::load(&mut tx, name, instance).await? else {
            continue;
        };
        let inbox: Vec<(i64, Value)> = sqlx::query_as(
            "SELECT id, input FROM saga_inbox WHERE saga = $1 AND instance_id = $2 ORDER BY id",
        )
        .bind(name)
        .bind(instance)
        .fetch_all(&mut *tx)
        .await?;
        let mut failed = None;
        for (id, input) in inbox {
            let input: Input = serde_json::from_value(input)?;
            let started = std::time::Instant::now();
            match step::deliver(
                &mut tx,
                ctx,
                instance,
                &row.correlation,
                true,
                &input,
                Mode::Redrive,
            )
            .await
            {
                Ok(outcome) => {
                    metrics.step(name, "redrive", &outcome, started.elapsed());
                    sqlx::query("DELETE FROM saga_inbox WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                Err(Failure::Permanent(reason)) => {
                    failed = Some((id, reason));
                    break;
                }
                Err(e) => return Err(anyhow::anyhow!("redriving {instance}: {e}")),
            }
        }
        match failed {
            Some((id, reason)) => {
                sqlx::query("UPDATE saga_inbox SET state = 'parked', reason = $2 WHERE id = $1")
                    .bind(id)
                    .bind(&reason)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE saga_instances SET status = 'parked', error = $3, retry_requested_at = NULL,
                            resume_status = coalesce(resume_status,
                                CASE WHEN status IN ('active', 'compensating') THEN status END, 'active'),
                            updated_at = now()
                      WHERE saga = $1 AND instance_id = $2",
                )
                .bind(name)
                .bind(instance)
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
                tracing::warn!(saga = name, %instance, %reason, "a redriven saga instance failed again; it stays parked");
            }
            None => {
                // Everything held went through; an instance parked with an empty inbox (all of it
                // skipped) returns to where it was.
                sqlx::query(
                    "UPDATE saga_instances SET retry_requested_at = NULL, error = NULL,
                            status = CASE WHEN status = 'parked'
                                          THEN coalesce(nullif(resume_status, 'new'), 'active') ELSE status END,
                            resume_status = NULL, updated_at = now()
                      WHERE saga = $1 AND instance_id = $2",
                )
                .bind(name)
                .bind(instance)
                .execute(&mut *tx)
                .await?;
                done += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(done)
}

/// Keeps firing timeouts and redriving until `stop`: sleeps until the next due time, at most
/// `poll`.
pub async fn run(
    pool: PgPool,
    ctx: Arc<Ctx>,
    metrics: Arc<Metrics>,
    poll: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut failures = crate::retry::RetryPolicy::exponential(
        Duration::from_millis(100),
        poll.max(Duration::from_secs(5)),
    )
    .backoff();
    loop {
        let wait = match fire_due(&pool, &ctx, &metrics).await {
            Ok((_, next)) => {
                failures.succeeded();
                next.map_or(poll, |n| n.min(poll))
            }
            Err(e) => {
                tracing::warn!(saga = ctx.name(), error = %format!("{e:#}"), "firing saga timeouts failed; retrying");
                failures.failed()
            }
        };
        if let Err(e) = redrive(&pool, &ctx, &metrics).await {
            tracing::warn!(saga = ctx.name(), error = %format!("{e:#}"), "redriving parked saga instances failed; retrying");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
        }
    }
}
