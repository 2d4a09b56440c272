//! One retry policy for every loop that tries again after a failure: the relay's rounds, the
//! consumer's handler and database calls, the projection runner's batches and offset reads.
//!
//! The wait after the `n`th failed attempt is `initial × multiplier^(n-1)`, capped at `max`.
//! With `max_attempts` set, no attempt follows the last one; without it, attempts go on until
//! the caller stops them (shutdown, a revoked partition). Waits are tokio timers, so they end
//! early when the task is cancelled.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

/// How often, and how long apart, a failed operation is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub initial: Duration,
    /// Each further wait is the previous one times this.
    pub multiplier: u32,
    /// No wait is longer.
    pub max: Duration,
    /// Attempts in all, the first included; `None` for no limit.
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// Doubling waits from `initial` up to `max`, with no limit on attempts.
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            multiplier: 2,
            max,
            max_attempts: None,
        }
    }

    /// The same policy, giving up after `attempts` attempts in all.
    pub const fn with_max_attempts(self, attempts: u32) -> Self {
        Self {
            max_attempts: Some(attempts),
            ..self
        }
    }

    /// The wait after failed attempt `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .checked_pow(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max)
    }

    /// Whether another attempt follows failed attempt `attempt`.
    pub fn retries_after(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt < max)
    }

    /// A counter of consecutive failures under this policy, for loops that keep their own state.
    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            failures: 0,
        }
    }

    /// Calls `call` until it succeeds, waiting between attempts. After each failure `on_error`
    /// sees the error and the attempt's number, and may stop the retries with
    /// [`ControlFlow::Break`]; the policy's `max_attempts` stops them too. Returns the last error
    /// when stopped.
    pub async fn retry<T, E, F, Fut>(
        &self,
        call: F,
        on_error: impl FnMut(&E, u32) -> ControlFlow<()>,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.retry_sleeping(call, on_error, tokio::time::sleep)
            .await
    }

    /// [`Self::retry`] with the wait given: tests pass one that records each wait and returns at
    /// once, to see the waits themselves; one test runs the real `retry` on a paused clock.
    async fn retry_sleeping<T, E, F, Fut, S, Slept>(
        &self,
        mut call: F,
        mut on_error: impl FnMut(&E, u32) -> ControlFlow<()>,
        mut sleep: S,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        S: FnMut(Duration) -> Slept,
        Slept: Future<Output = ()>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if on_error(&e, attempt).is_break() || !self.retries_after(attempt) {
                        return Err(e);
                    }
                }
            }
            sleep(self.delay(attempt)).await;
            attempt += 1;
        }
    }
}

/// Consecutive failures of a loop under a [`RetryPolicy`]: each failure lengthens the next wait,
/// a success starts again from the policy's first wait.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
}

impl Backoff {
    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.delay(self.failures)
    }

    /// Counts a success: the next failure waits the policy's first wait again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_from_the_initial_one_up_to_the_cap() {
        let policy = RetryPolicy::exponential(100 * MS, 1000 * MS);
        let waits: Vec<Duration> = (1..=6).map(|n| policy.delay(n)).collect();
        assert_eq!(
            waits,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
    }

    #[test]
    fn a_multiplier_other_than_two_is_honoured() {
        let policy = RetryPolicy {
            multiplier: 3,
            ..RetryPolicy::exponential(10 * MS, 1000 * MS)
        };
        assert_eq!(policy.delay(3), 90 * MS);
    }

    #[test]
    fn a_very_late_attempt_waits_the_cap_instead_of_overflowing() {
        let policy = RetryPolicy::exponential(100 * MS, Duration::from_secs(30));
        assert_eq!(policy.delay(1_000), Duration::from_secs(30));
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn max_attempts_counts_the_first_attempt() {
        let policy = RetryPolicy::exponential(MS, MS).with_max_attempts(3);
        assert!(policy.retries_after(1));
        assert!(policy.retries_after(2));
        assert!(!policy.retries_after(3));
        assert!(RetryPolicy::exponential(MS, MS).retries_after(u32::MAX - 1));
    }

    #[test]
    fn a_backoff_grows_with_each_failure_and_starts_over_after_a_success() {
        let mut backoff = RetryPolicy::exponential(100 * MS, 300 * MS).backoff();
        assert_eq!(backoff.failed(), 100 * MS);
        assert_eq!(backoff.failed(), 200 * MS);
        assert_eq!(backoff.failed(), 300 * MS);
        assert_eq!(backoff.failures(), 3);
        backoff.succeeded();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.failed(), 100 * MS);
    }

    /// Runs `policy.retry` on a call that fails `failures` times with its attempt number, then
    /// succeeds; returns the result, the attempts `on_error` saw and the waits, none of them slept.
    async fn run(
        policy: RetryPolicy,
        failures: u32,
        break_at: Option<u32>,
    ) -> (Result<u32, u32>, Vec<u32>, Vec<Duration>) {
        let calls = Cell::new(0);
        let seen = RefCell::new(Vec::new());
        let waits = RefCell::new(Vec::new());
        let result = policy
            .retry_sleeping(
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n <= failures {
                            Err(n)
                        } else {
                            Ok(n)
                        }
                    }
                },
                |e, attempt| {
                    assert_eq!(*e, attempt, "the attempt number matches the call");
                    seen.borrow_mut().push(attempt);
                    if break_at == Some(attempt) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
                |wait| {
                    waits.borrow_mut().push(wait);
                    std::future::ready(())
                },
            )
            .await;
        (result, seen.into_inner(), waits.into_inner())
    }

    /// The real `retry`, on tokio's paused clock: the virtual time that passes is exactly the sum
    /// of the policy's delays, and nothing sleeps for real.
    #[tokio::test(start_paused = true)]
    async fn retry_sleeps_the_policys_delays_on_tokios_clock() {
        let policy = RetryPolicy::exponential(100 * MS, 300 * MS);
        let (virtual_start, real_start) = (tokio::time::Instant::now(), std::time::Instant::now());
        let calls = Cell::new(0);
        let result: Result<u32, u32> = policy
            .retry(
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n <= 3 {
                            Err(n)
                        } else {
                            Ok(n)
                        }
                    }
                },
                |_, _| ControlFlow::Continue(()),
            )
            .await;
        assert_eq!(result, Ok(4));
        let waited = virtual_start.elapsed();
        assert!(
            (600 * MS..601 * MS).contains(&waited),
            "waited {waited:?} of virtual time, not 100 + 200 + 300 ms"
        );
        assert!(real_start.elapsed() < 300 * MS, "the test slept for real");
    }

    #[tokio::test]
    async fn retry_waits_the_policys_delays_between_attempts_and_returns_the_success() {
        let policy = RetryPolicy::exponential(100 * MS, 300 * MS);
        let (result, seen, waits) = run(policy, 3, None).await;
        assert_eq!(result, Ok(4));
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(waits, [100 * MS, 200 * MS, 300 * MS]);
    }

    #[tokio::test]
    async fn retry_gives_up_after_max_attempts_with_the_last_error_and_no_last_wait() {
        let policy = RetryPolicy::exponential(100 * MS, 10_000 * MS).with_max_attempts(3);
        let (result, seen, waits) = run(policy, 10, None).await;
        assert_eq!(result, Err(3));
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(waits, [100 * MS, 200 * MS]);
    }

    #[tokio::test]
    async fn retry_stops_at_once_when_the_caller_breaks() {
        let policy = RetryPolicy::exponential(100 * MS, 10_000 * MS);
        let (result, seen, waits) = run(policy, 10, Some(2)).await;
        assert_eq!(result, Err(2));
        assert_eq!(seen, [1, 2]);
        assert_eq!(waits, [100 * MS]);
    }

    #[tokio::test]
    async fn a_first_success_neither_waits_nor_reports() {
        let (result, seen, waits) = run(RetryPolicy::exponential(MS, MS), 0, None).await;
        assert_eq!(result, Ok(1));
        assert!(seen.is_empty() && waits.is_empty());
    }
}
