//! `keel bench limits`: what one noisy principal over its rate limit costs a well-behaved one. A
//! paced producer's append latency is measured alone, then again while a noisy principal's
//! closed-loop producers hammer the same keel and are refused with 429; both runs in one process,
//! against one database, with authentication on.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use uuid::Uuid;

use super::append::{fresh_database, print_machine};
use super::stats::Sample;
use super::LimitsArgs;
use crate::app::Application;
use crate::auth::ApiKey;
use crate::config::{AuthMode, Config, Secret};

pub async fn run(config: &Config, args: LimitsArgs) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.database_url =
        fresh_database(&config, args.database_url.as_deref(), "keel_bench_limits").await?;
    config.listen = ([127, 0, 0, 1], 0).into();
    config.api.rate_limit.requests_per_second = args.limit;
    config.api.rate_limit.request_burst = args.limit;
    let admin = ApiKey::generate()?.expose_secret();
    let key_file = std::env::temp_dir().join(format!("keel-bench-{}.key", Uuid::new_v4().simple()));
    std::fs::write(&key_file, &admin)?;
    config.auth.mode = AuthMode::Required;
    config.auth.key_secret_file = None;
    config.auth.key_secret = Some(Secret::new(ApiKey::generate()?.expose_secret()));
    config.auth.bootstrap_key_file = Some(key_file.clone());
    let app = Application::build(&config).await?;
    std::fs::remove_file(&key_file)?;
    print_machine(app.store().pool()).await?;
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.noisy + 1)
        .build()?;
    let calm = principal(&client, &base, &admin, "bench-calm").await?;
    let noisy = principal(&client, &base, &admin, "bench-noisy").await?;
    println!(
        "rate limit {} requests/s per principal; the calm producer sends {} appends/s, the noisy one \
         {} closed-loop producers; {}s per run\n",
        args.limit, args.calm_rate, args.noisy, args.seconds
    );

    let alone = paced(&client, &base, &calm, args.calm_rate, args.seconds).await?;
    let stop = Instant::now() + Duration::from_secs(args.seconds + 1);
    let flood: Vec<_> = (0..args.noisy)
        .map(|_| tokio::spawn(hammer(client.clone(), base.clone(), noisy.clone(), stop)))
        .collect();
    let beside = paced(&client, &base, &calm, args.calm_rate, args.seconds).await?;
    let (mut accepted, mut refused) = (0u64, 0u64);
    for task in flood {
        let (a, r) = task.await??;
        accepted += a;
        refused += r;
    }
    let seconds = (args.seconds + 1) as f64;
    println!(
        "{:<28} {:>10} {:>24}",
        "calm producer", "appends/s", "p50/p99/p999 ms"
    );
    println!(
        "{:<28} {:>10.0} {:>24}",
        "alone",
        alone.events_per_sec(),
        alone.percentiles()
    );
    println!(
        "{:<28} {:>10.0} {:>24}",
        "beside the noisy one",
        beside.events_per_sec(),
        beside.percentiles()
    );
    let p99 = |s: &Sample| s.latency_us.value_at_quantile(0.99) as f64;
    println!(
        "\nnoisy principal: {:.0} accepted/s, {:.0} refused/s (429); calm p99 beside it / alone: {:.2}",
        accepted as f64 / seconds,
        refused as f64 / seconds,
        p99(&beside) / p99(&alone)
    );
    Ok(())
}

/// Creates a producer principal and returns a key of it, through the API as the admin.
async fn principal(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    name: &str,
) -> anyhow::Result<String> {
    let created = client
        .post(format!("{base}/v1/principals"))
        .bearer_auth(admin)
        .json(&json!({"name": name, "roles": ["producer"]}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status().is_success(),
        "cannot create {name}: {}",
        created.status()
    );
    let key: Value = client
        .post(format!("{base}/v1/principals/{name}/keys"))
        .bearer_auth(admin)
        .send()
        .await?
        .json()
        .await?;
    Ok(key["key"]
        .as_str()
        .context("no key in the reply")?
        .to_owned())
}

fn append(client: &reqwest::Client, base: &str, key: &str) -> reqwest::RequestBuilder {
    client
        .post(format!(
            "{base}/v1/aggregates/bench/{}/events",
            Uuid::new_v4()
        ))
        .bearer_auth(key)
        .json(&json!({"events": [{"type": "state_change",
            "payload": {"entity": "bench", "to_state": "running"}}]}))
}

/// `rate` appends a second for `seconds`, each timed; every one must succeed.
async fn paced(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Sample> {
    let mut sample = Sample {
        events: 0,
        elapsed: Duration::from_secs(seconds),
        latency_us: Sample::new_histogram(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        tick.tick().await;
        let sent = Instant::now();
        let reply = append(client, base, key).send().await?;
        anyhow::ensure!(
            reply.status().is_success(),
            "the calm producer was refused: {}",
            reply.status()
        );
        sample
            .latency_us
            .saturating_record(sent.elapsed().as_micros() as u64);
        sample.events += 1;
    }
    Ok(sample)
}

/// Appends as fast as the replies come until `stop`; (accepted, refused with 429).
async fn hammer(
    client: reqwest::Client,
    base: String,
    key: String,
    stop: Instant,
) -> anyhow::Result<(u64, u64)> {
    let (mut accepted, mut refused) = (0, 0);
    while Instant::now() < stop {
        let reply = append(&client, &base, &key).send().await?;
        match reply.status().as_u16() {
            429 => refused += 1,
            s if (200..300).contains(&s) => accepted += 1,
            other => anyhow::bail!("the noisy producer got {other}"),
        }
    }
    Ok((accepted, refused))
}
