//! [`Keyed`]: one token bucket per key, as GCRA (the generic cell rate algorithm), over a sharded
//! map whose size has a hard cap.
//!
//! A key's whole state is one number, its *theoretical arrival time* (TAT): when its bucket will
//! be full again. A cost of `n` tokens is allowed when `max(tat, now) + n·T − now ≤ burst·T`
//! (`T` is the time one token takes to come back), and moves the TAT to `max(tat, now) + n·T`.
//!
//! Memory: a key whose TAT has passed is in the same state as a key never seen, so dropping it
//! loses nothing. Each shard drops those every [`SWEEP_EVERY`], and before it would grow past its
//! share of the cap. When a shard is full of keys that are all still refilling (a flood of
//! distinct keys, all spending), it drops at least the eighth of them closest to full: those keys
//! start again with a full bucket, so the cap can cost accuracy under attack, never memory.
//!
//! Written here rather than taken from `governor`: its keyed limiter keeps every key until the
//! caller runs `retain_recent`, has no cap on the number of keys, and is one more dependency for
//! about a hundred lines.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Shards of the map, each behind its own lock, so that concurrent requests of different keys
/// rarely wait for each other.
const SHARDS: usize = 16;

/// How often a shard drops its idle keys, at the latest.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Token buckets of `burst` tokens, refilled at one token per `interval`, one per key, for at
/// most `max_keys` keys at a time.
pub struct Keyed<K> {
    /// Time one token takes to come back (`T`), in nanoseconds; at least 1.
    interval: u64,
    burst: u64,
    shard_capacity: usize,
    epoch: Instant,
    hasher: RandomState,
    shards: Box<[Mutex<Shard<K>>]>,
}

struct Shard<K> {
    /// Each key's TAT, in nanoseconds since the epoch.
    tats: HashMap<K, u64>,
    next_sweep: u64,
}

impl<K: Hash + Eq> Keyed<K> {
    /// `rate` tokens per `period`, up to `burst` at once; both must be positive.
    pub fn new(rate: u32, period: Duration, burst: u32, max_keys: usize) -> Self {
        assert!(rate > 0 && burst > 0, "a limit needs a rate and a burst");
        let interval = (period.as_nanos() / u128::from(rate)).max(1);
        let shard_capacity = max_keys.div_ceil(SHARDS).max(1);
        Self {
            interval: u64::try_from(interval).unwrap_or(u64::MAX),
            burst: u64::from(burst),
            shard_capacity,
            epoch: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        tats: HashMap::new(),
                        next_sweep: 0,
                    })
                })
                .collect(),
        }
    }

    /// Now, on the limiter's clock (tokio's, so that a test can pause it).
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes `cost` tokens from `key`'s bucket, or says how long until they are there. A cost
    /// larger than the burst is allowed from a full bucket only, and leaves the bucket that much
    /// in debt, so that the long-run rate holds.
    pub fn check<Q>(&self, key: &Q, cost: u32, now: u64) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut shard = self.shard(key, now);
        let tat = shard.tats.get(key).copied();
        let new_tat = self.admit(tat, cost, now)?;
        match shard.tats.get_mut(key) {
            Some(tat) => *tat = new_tat,
            None => {
                if shard.tats.len() >= self.shard_capacity {
                    shard.make_room(now, self.shard_capacity);
                }
                shard.tats.insert(key.to_owned(), new_tat);
            }
        }
        Ok(())
    }

    /// Whether `cost` tokens are in `key`'s bucket now, taking none.
    pub fn peek<Q>(&self, key: &Q, cost: u32, now: u64) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard(key, now);
        self.admit(shard.tats.get(key).copied(), cost, now)
            .map(drop)
    }

    /// The key's TAT after spending `cost` at `now`, or the wait until that would be allowed.
    fn admit(&self, tat: Option<u64>, cost: u32, now: u64) -> Result<u64, Duration> {
        let start = tat.unwrap_or(now).max(now);
        let cost = u64::from(cost);
        let new_tat = start.saturating_add(cost.saturating_mul(self.interval));
        let allowance = self.burst.max(cost).saturating_mul(self.interval);
        let ahead = new_tat - now;
        if ahead > allowance {
            return Err(Duration::from_nanos(ahead - allowance));
        }
        Ok(new_tat)
    }

    /// `key`'s shard, locked, and swept if its time has come.
    fn shard<Q: Hash + ?Sized>(&self, key: &Q, now: u64) -> std::sync::MutexGuard<'_, Shard<K>> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // A panic while the lock was held can only have left a consistent map (every write is a
        // single insert, update or retain): the state is still good, so take it back.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if now >= shard.next_sweep {
            shard.tats.retain(|_, tat| *tat > now);
            shard.next_sweep = now.saturating_add(SWEEP_EVERY.as_nanos() as u64);
        }
        shard
    }

    /// Keys tracked, over all shards.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().tats.len())
            .sum()
    }
}

impl<K: Hash + Eq> Shard<K> {
    /// Drops idle keys, and if the shard is still full, the eighth of the keys nearest to a full
    /// bucket (the smallest TATs; more when TATs tie). Dropping many at once keeps the cost of
    /// this scan, over the inserts that follow it, constant per insert.
    fn make_room(&mut self, now: u64, capacity: usize) {
        self.tats.retain(|_, tat| *tat > now);
        if self.tats.len() < capacity {
            return;
        }
        let mut tats: Vec<u64> = self.tats.values().copied().collect();
        let cut = (tats.len() / 8).max(1) - 1;
        let (_, threshold, _) = tats.select_nth_unstable(cut);
        let threshold = *threshold;
        self.tats.retain(|_, tat| *tat > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    /// 10 tokens a second, 5 at once.
    fn ten_a_second() -> Keyed<String> {
        Keyed::new(10, Duration::from_secs(1), 5, 1_000)
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_one_interval_per_token() {
        let limiter = ten_a_second();
        for _ in 0..5 {
            limiter.check("a", 1, 0).unwrap();
        }
        assert_eq!(limiter.check("a", 1, 0), Err(Duration::from_millis(100)));
        assert_eq!(
            limiter.check("a", 1, 40_000_000),
            Err(Duration::from_millis(60)),
            "the wait shrinks as time passes"
        );
        limiter.check("a", 1, SEC / 10).unwrap();
        assert!(limiter.check("a", 1, SEC / 10).is_err());
        // Half a second refills the whole burst, and not more.
        let later = SEC / 10 + SEC / 2;
        for _ in 0..5 {
            limiter.check("a", 1, later).unwrap();
        }
        assert!(limiter.check("a", 1, later).is_err());
    }

    #[test]
    fn costs_are_charged_whole_and_a_refusal_takes_nothing() {
        let limiter = ten_a_second();
        limiter.check("a", 3, 0).unwrap();
        assert_eq!(
            limiter.check("a", 3, 0),
            Err(Duration::from_millis(100)),
            "two tokens left, three asked: one more interval"
        );
        limiter.check("a", 2, 0).unwrap();
        assert!(limiter.peek("a", 1, 0).is_err());
    }

    #[test]
    fn a_cost_over_the_burst_passes_only_from_a_full_bucket_and_leaves_a_debt() {
        let limiter = ten_a_second();
        limiter.check("a", 1, 0).unwrap();
        assert_eq!(
            limiter.check("a", 20, 0),
            Err(Duration::from_millis(100)),
            "allowed once the bucket is full again"
        );
        limiter.check("a", 20, SEC / 10).unwrap();
        // 20 tokens at 10 a second: the next one is 1.5 s away (2 s minus the 5 of the burst).
        assert_eq!(
            limiter.check("a", 1, SEC / 10),
            Err(Duration::from_millis(1_600))
        );
    }

    #[test]
    fn keys_are_independent() {
        let limiter = ten_a_second();
        limiter.check("a", 5, 0).unwrap();
        assert!(limiter.check("a", 1, 0).is_err());
        limiter.check("b", 5, 0).unwrap();
    }

    #[test]
    fn peek_takes_nothing() {
        let limiter = ten_a_second();
        for _ in 0..10 {
            limiter.peek("a", 5, 0).unwrap();
        }
        limiter.check("a", 5, 0).unwrap();
        assert_eq!(limiter.peek("a", 1, 0), Err(Duration::from_millis(100)));
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_under_the_cap_and_the_most_indebted_are_kept() {
        let limiter: Keyed<u32> = Keyed::new(1, Duration::from_secs(60), 1, 160);
        // 10,000 keys, each spending its one token, a millisecond apart: later keys are further
        // from a full bucket.
        for key in 0..10_000u32 {
            limiter.check(&key, 1, u64::from(key) * 1_000_000).unwrap();
            assert!(
                limiter.len() <= 160,
                "{} keys after key {key}",
                limiter.len()
            );
        }
        let now = 10_000 * 1_000_000;
        // The newest keys are still limited; the oldest were dropped and start over.
        assert!(limiter.peek(&9_999, 1, now).is_err());
        assert!(limiter.peek(&9_990, 1, now).is_err());
        assert!(limiter.peek(&0, 1, now).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_dropped_at_the_next_sweep() {
        let limiter = ten_a_second();
        for key in 0..100 {
            limiter.check(&key.to_string(), 1, limiter.now()).unwrap();
        }
        assert_eq!(limiter.len(), 100);
        tokio::time::advance(SWEEP_EVERY + Duration::from_secs(1)).await;
        // Touching a shard sweeps it; touch them all.
        for key in 0..1_000 {
            limiter.peek(&key.to_string(), 1, limiter.now()).unwrap();
        }
        assert_eq!(limiter.len(), 0);
    }
}
