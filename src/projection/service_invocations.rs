//! `service_invocations`: per service and method, the call count, the error count (any status
//! but `OK`) and execution-time percentiles, from `l12.service_invoked` (read as v2).
//!
//! Percentiles come from a log-scale histogram, 8 buckets per doubling (each bucket's upper bound
//! is within 9.1% of its lower one), so they are exact up to the bucket: p50/p95/p99 report the
//! upper bound of the bucket holding that rank, capped at the largest time seen.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::{ApplyContext, Fold, Projection};
use crate::model::RecordedEvent;
use crate::model::VersionSpec;

pub struct ServiceInvocations;

/// The histogram bucket of an execution time in milliseconds: `ceil(8 * log2(ms))`, with times
/// at or below 1 µs in one bucket.
pub fn bucket_of(ms: f64) -> i32 {
    if ms.is_nan() || ms <= 0.001 {
        return -80;
    }
    ((ms.log2() * 8.0).ceil() as i32).clamp(-80, 400)
}

/// The upper bound of a bucket, in milliseconds.
pub fn bucket_upper(bucket: i32) -> f64 {
    (bucket as f64 / 8.0).exp2()
}

#[async_trait]
impl Projection for ServiceInvocations {
    fn name(&self) -> &'static str {
        "service_invocations"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["l12.service_invoked"]
    }

    fn reader(&self) -> VersionSpec {
        VersionSpec::Number(2)
    }

    fn ddl(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS service_invocations (
             service         text        NOT NULL,
             method          text        NOT NULL,
             calls           bigint      NOT NULL,
             errors          bigint      NOT NULL,
             total_ms        float8      NOT NULL,
             max_ms          float8      NOT NULL,
             last_called_at  timestamptz NOT NULL,
             PRIMARY KEY (service, method)
         );
         CREATE TABLE IF NOT EXISTS service_invocation_latency (
             service text    NOT NULL,
             method  text    NOT NULL,
             bucket  integer NOT NULL,
             calls   bigint  NOT NULL,
             PRIMARY KEY (service, method, bucket)
         );"
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
        _ctx: ApplyContext,
    ) -> anyhow::Result<()> {
        let mut fold = Invocations::default();
        fold.add(events)?;
        fold.write(tx).await
    }

    fn fold(&self) -> Option<Box<dyn Fold>> {
        Some(Box::<Invocations>::default())
    }
}

/// What some events add to the tables: per method, the counters and the histogram's buckets.
#[derive(Default)]
struct Invocations {
    /// Per service, per method: nested so that adding to a method seen before needs no owned key.
    methods: HashMap<String, HashMap<String, Method>>,
    /// Buckets held, over all methods.
    buckets: usize,
}

#[derive(Default)]
struct Method {
    calls: i64,
    errors: i64,
    total: f64,
    max: f64,
    last: Option<DateTime<Utc>>,
    buckets: HashMap<i32, i64>,
}

#[async_trait]
impl Fold for Invocations {
    fn add(&mut self, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for e in events {
            let p = &e.payload;
            let field = |name: &str| {
                p.get(name)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| anyhow::anyhow!("event {} has no {name}", e.id))
            };
            let (service, method) = (field("service_name")?, field("method")?);
            let ms = p
                .get("execution_time")
                .and_then(|v| v.as_f64())
                .ok_or_else(|| anyhow::anyhow!("event {} has no execution_time", e.id))?;
            let failed = field("status")? != "OK";
            let of_service = match self.methods.get_mut(service) {
                Some(of_service) => of_service,
                None => self.methods.entry(service.to_owned()).or_default(),
            };
            let m = match of_service.get_mut(method) {
                Some(m) => m,
                None => of_service.entry(method.to_owned()).or_default(),
            };
            m.calls += 1;
            m.errors += i64::from(failed);
            m.total += ms;
            m.max = m.max.max(ms);
            m.last = m.last.max(Some(e.created_at));
            let n = m.buckets.entry(bucket_of(ms)).or_insert(0);
            if *n == 0 {
                self.buckets += 1;
            }
            *n += 1;
        }
        Ok(())
    }

    fn rows(&self) -> usize {
        self.methods.values().map(HashMap::len).sum::<usize>() + self.buckets
    }

    async fn write(&mut self, tx: &mut PgConnection) -> anyhow::Result<()> {
        if self.methods.is_empty() {
            return Ok(());
        }
        let mut c: (
            Vec<String>,
            Vec<String>,
            Vec<i64>,
            Vec<i64>,
            Vec<f64>,
            Vec<f64>,
            Vec<DateTime<Utc>>,
        ) = Default::default();
        let mut b: (Vec<String>, Vec<String>, Vec<i32>, Vec<i64>) = Default::default();
        for (service, of_service) in std::mem::take(&mut self.methods) {
            for (method, m) in of_service {
                for (bucket, n) in m.buckets {
                    b.0.push(service.clone());
                    b.1.push(method.clone());
                    b.2.push(bucket);
                    b.3.push(n);
                }
                c.0.push(service.clone());
                c.1.push(method);
                c.2.push(m.calls);
                c.3.push(m.errors);
                c.4.push(m.total);
                c.5.push(m.max);
                c.6.push(m.last.unwrap_or_default());
            }
        }
        self.buckets = 0;
        sqlx::query(
            "INSERT INTO service_invocations AS s
                 (service, method, calls, errors, total_ms, max_ms, last_called_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                                  $5::float8[], $6::float8[], $7::timestamptz[])
             ON CONFLICT (service, method) DO UPDATE SET
                 calls = s.calls + EXCLUDED.calls, errors = s.errors + EXCLUDED.errors,
                 total_ms = s.total_ms + EXCLUDED.total_ms,
                 max_ms = greatest(s.max_ms, EXCLUDED.max_ms),
                 last_called_at = greatest(s.last_called_at, EXCLUDED.last_called_at)",
        )
        .bind(&c.0)
        .bind(&c.1)
        .bind(&c.2)
        .bind(&c.3)
        .bind(&c.4)
        .bind(&c.5)
        .bind(&c.6)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO service_invocation_latency AS l (service, method, bucket, calls)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[])
             ON CONFLICT (service, method, bucket) DO UPDATE SET calls = l.calls + EXCLUDED.calls",
        )
        .bind(&b.0)
        .bind(&b.1)
        .bind(&b.2)
        .bind(&b.3)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// One service method, as `/v1/projections/service_invocations/methods` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodStats {
    pub service: String,
    pub method: String,
    pub calls: i64,
    pub errors: i64,
    pub mean_ms: f64,
    pub max_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub last_called_at: DateTime<Utc>,
}

/// Every method (of one service, if given), ordered by service and method.
pub async fn list(
    conn: &mut PgConnection,
    service: Option<&str>,
) -> sqlx::Result<Vec<MethodStats>> {
    type Row = (String, String, i64, i64, f64, f64, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT service, method, calls, errors, total_ms, max_ms, last_called_at
           FROM keel_proj_service_invocations.service_invocations
          WHERE $1::text IS NULL OR service = $1 ORDER BY service, method",
    )
    .bind(service)
    .fetch_all(&mut *conn)
    .await?;
    let hist: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "SELECT service, method, bucket, calls
           FROM keel_proj_service_invocations.service_invocation_latency
          WHERE $1::text IS NULL OR service = $1 ORDER BY service, method, bucket",
    )
    .bind(service)
    .fetch_all(conn)
    .await?;
    let mut by_method: HashMap<(String, String), Vec<(i32, i64)>> = HashMap::new();
    for (s, m, b, n) in hist {
        by_method.entry((s, m)).or_default().push((b, n));
    }
    Ok(rows
        .into_iter()
        .map(|(service, method, calls, errors, total, max, last)| {
            let hist = by_method
                .remove(&(service.clone(), method.clone()))
                .unwrap_or_default();
            let pct = |q: f64| percentile(&hist, calls, q).min(max);
            MethodStats {
                mean_ms: if calls > 0 { total / calls as f64 } else { 0.0 },
                p50_ms: pct(0.50),
                p95_ms: pct(0.95),
                p99_ms: pct(0.99),
                service,
                method,
                calls,
                errors,
                max_ms: max,
                last_called_at: last,
            }
        })
        .collect())
}

/// The upper bound of the bucket holding rank `ceil(q * calls)`; `hist` sorted by bucket.
pub fn percentile(hist: &[(i32, i64)], calls: i64, q: f64) -> f64 {
    let rank = ((q * calls as f64).ceil() as i64).max(1);
    let mut seen = 0;
    for (bucket, n) in hist {
        seen += n;
        if seen >= rank {
            return bucket_upper(*bucket);
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_a_tenth_and_percentiles_pick_the_ranked_bucket() {
        for ms in [0.01, 0.5, 1.0, 3.7, 12.5, 250.0, 99_999.0] {
            let upper = bucket_upper(bucket_of(ms));
            assert!(upper >= ms && upper < ms * 1.091, "{ms} -> {upper}");
        }
        assert_eq!(bucket_of(0.0), -80);
        assert_eq!(bucket_of(f64::NAN), -80);
        let hist = [(0, 50), (8, 45), (16, 5)];
        assert_eq!(percentile(&hist, 100, 0.5), 1.0);
        assert_eq!(percentile(&hist, 100, 0.95), 2.0);
        assert_eq!(percentile(&hist, 100, 0.99), 4.0);
    }
}
