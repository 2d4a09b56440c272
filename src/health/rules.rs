//! The stall rules, without IO: given what was sampled over time, is a stage ok, degraded or
//! unhealthy, and why. The [`super::Monitor`] feeds them; the tests here pin each rule.
//!
//! A stage that follows another (a relay sink after the outbox, a group or a projection after
//! its partitions' ends) is judged on three things:
//! 1. **Liveness**: the freshest heartbeat of any process running it. Older than the threshold:
//!    unhealthy, even with nothing to do (its process is frozen or gone).
//! 2. **Progress against upstream**: work waits for it (`waiting > 0`) and its position has not
//!    moved for the threshold: unhealthy (stuck). Its position is compared with the stage
//!    upstream, so a frozen stage cannot read as caught up.
//! 3. **Falling behind but moving**: the oldest work waiting for it is older than the threshold
//!    ([`Behind`]), or it is being rebuilt: degraded.

use std::time::{Duration, Instant};

use super::Status;

/// What the monitor remembers of one following stage between samples.
#[derive(Debug, Clone)]
pub struct Tracker {
    position: Option<i64>,
    moved_at: Instant,
    behind: Behind,
}

/// One sample of a following stage.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub now: Instant,
    /// Where the stage stands, in the upstream's units (offsets, sequence numbers), so that
    /// `position + waiting` is where the upstream stood. A sum over partitions is fine.
    pub position: i64,
    /// Work waiting for it upstream: messages or rows it has not passed.
    pub waiting: i64,
    /// How long the oldest waiting item has waited, where the upstream knows (the outbox does);
    /// then `position` need only move when the stage does.
    pub oldest_waiting: Option<Duration>,
    /// `waiting` was counted only up to a cap (the outbox's): it is a lower bound.
    pub waiting_capped: bool,
}

/// How long a stage has been without progress, as of the last sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Since the position last moved (or since it last had nothing to do).
    pub still_for: Duration,
    /// How far behind in time: the age of the oldest work waiting for it.
    pub behind_for: Duration,
}

/// Lag in time: how long ago the upstream stood where the stage stands now. A stage that keeps
/// up under steady load always has a little waiting at each sample, but passes each sample's
/// upstream end within moments; one that falls behind passes them later and later.
#[derive(Debug, Clone, Default)]
pub struct Behind {
    /// (when, where the upstream ended then), oldest first.
    ends: std::collections::VecDeque<(Instant, i64)>,
}

impl Behind {
    /// Takes a sample of the stage's position and the upstream's end; returns how long ago the
    /// upstream ended at or before `position` (zero when caught up).
    pub fn observe(&mut self, now: Instant, position: i64, upstream: i64) -> Duration {
        if position >= upstream {
            self.ends.clear();
            return Duration::ZERO;
        }
        self.ends.push_back((now, upstream));
        // The newest sample whose end the stage has passed; older ones say nothing more.
        match self.ends.iter().rposition(|&(_, end)| end <= position) {
            Some(i) => {
                self.ends.drain(..i);
                now.saturating_duration_since(self.ends[0].0)
            }
            // Behind every end sampled: at least as old as the oldest.
            None => now.saturating_duration_since(self.ends[0].0),
        }
    }
}

impl Tracker {
    pub fn new(now: Instant) -> Self {
        Self {
            position: None,
            moved_at: now,
            behind: Behind::default(),
        }
    }

    /// Takes a sample and says how long the stage has been still and behind.
    pub fn observe(&mut self, s: Sample) -> Progress {
        if self.position != Some(s.position) {
            self.position = Some(s.position);
            self.moved_at = s.now;
        }
        if s.waiting <= 0 {
            // Nothing to do is not standing still.
            self.moved_at = s.now;
        }
        let behind_for = match s.oldest_waiting {
            Some(age) => age,
            None => self
                .behind
                .observe(s.now, s.position, s.position + s.waiting.max(0)),
        };
        Progress {
            still_for: s.now.saturating_duration_since(self.moved_at),
            behind_for,
        }
    }
}

/// Everything the rules weigh for one following stage.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// What runs the stage, for reasons: "relay", "runner", "member".
    pub runner: &'a str,
    /// Age of the freshest heartbeat, and which process sent it; `None` if no process has ever
    /// reported running the stage (or all stopped cleanly).
    pub heartbeat: Option<(Duration, &'a str)>,
    /// Instances whose heartbeat is older than the threshold while another is fresh.
    pub stale_instances: usize,
    pub sample: Sample,
    pub progress: Progress,
    /// A rebuild is running.
    pub rebuilding: bool,
    /// Rows or records parked for an operator.
    pub parked: i64,
}

/// The verdict on one following stage.
pub fn judge(stall_after: Duration, f: &Facts<'_>) -> (Status, String) {
    let secs = |d: Duration| format!("{:.0} s", d.as_secs_f64());
    let waiting = f.sample.waiting;
    let many = match f.sample.waiting_capped {
        true => format!("at least {waiting}"),
        false => waiting.to_string(),
    };
    let stuck = waiting > 0
        && f.progress.still_for >= stall_after
        && f.sample.oldest_waiting.is_none_or(|age| age >= stall_after);
    match f.heartbeat {
        Some((age, process)) if age >= stall_after => {
            return (
                Status::Unhealthy,
                format!(
                    "no {} has reported for {} (last: {process}); {many} waiting",
                    f.runner,
                    secs(age)
                ),
            )
        }
        None if stuck => {
            return (
                Status::Unhealthy,
                format!(
                    "no {} is running and {many} have waited for {}",
                    f.runner,
                    secs(f.progress.still_for)
                ),
            )
        }
        _ => {}
    }
    // A rebuild pauses the live runner while it swaps in its result, and applies what waits:
    // standing still then is the rebuild's doing. A runner that stopped beating is still dead.
    if f.rebuilding {
        return (Status::Degraded, "rebuilding".into());
    }
    if stuck {
        return (
            Status::Unhealthy,
            format!(
                "stalled: {many} waiting and its position has not moved for {}",
                secs(f.progress.still_for)
            ),
        );
    }
    if f.parked > 0 {
        return (
            Status::Degraded,
            format!("{} parked, waiting for an operator", f.parked),
        );
    }
    if f.heartbeat.is_none() {
        return (Status::Degraded, format!("no {} is running", f.runner));
    }
    if waiting > 0 && f.progress.behind_for >= stall_after {
        return (
            Status::Degraded,
            format!(
                "catching up: {many} waiting, {} behind",
                secs(f.progress.behind_for)
            ),
        );
    }
    if f.stale_instances > 0 {
        return (
            Status::Degraded,
            format!(
                "{} of its {}s stopped reporting; another carries on",
                f.stale_instances, f.runner
            ),
        );
    }
    (Status::Ok, "ok".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    fn facts(heartbeat: Option<Duration>, sample: Sample, progress: Progress) -> Facts<'static> {
        Facts {
            runner: "relay",
            heartbeat: heartbeat.map(|a| (a, "host:1")),
            stale_instances: 0,
            sample,
            progress,
            rebuilding: false,
            parked: 0,
        }
    }

    fn sample(now: Instant, position: i64, waiting: i64) -> Sample {
        Sample {
            now,
            position,
            waiting,
            oldest_waiting: None,
            waiting_capped: false,
        }
    }

    #[test]
    fn a_stage_whose_position_stands_still_while_work_waits_is_unhealthy() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        let beat = Some(Duration::from_secs(1));
        let p = t.observe(sample(t0, 10, 5));
        assert_eq!(
            judge(STALL, &facts(beat, sample(t0, 10, 5), p)).0,
            Status::Ok
        );
        let later = t0 + STALL;
        let s = sample(later, 10, 9);
        let p = t.observe(s);
        let (status, reason) = judge(STALL, &facts(beat, s, p));
        assert_eq!(status, Status::Unhealthy, "{reason}");
        assert!(reason.contains("not moved"), "{reason}");
    }

    #[test]
    fn an_idle_stage_is_never_stalled_however_long_it_stands_still() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        for minutes in 0..30 {
            let s = sample(t0 + Duration::from_secs(60 * minutes), 10, 0);
            let p = t.observe(s);
            let (status, reason) = judge(STALL, &facts(Some(Duration::from_secs(2)), s, p));
            assert_eq!(status, Status::Ok, "{reason}");
        }
    }

    #[test]
    fn a_stage_that_moves_but_stays_behind_is_degraded_not_unhealthy() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        let mut last = (Status::Ok, String::new());
        for i in 0..10 {
            let s = sample(t0 + Duration::from_secs(10 * i), 100 * i as i64, 1000);
            let p = t.observe(s);
            last = judge(STALL, &facts(Some(Duration::from_secs(1)), s, p));
            assert_ne!(last.0, Status::Unhealthy, "{}", last.1);
        }
        assert_eq!(last.0, Status::Degraded, "{}", last.1);
        assert!(last.1.contains("catching up"), "{}", last.1);
    }

    #[test]
    fn an_old_heartbeat_is_unhealthy_even_with_nothing_to_do() {
        let t0 = Instant::now();
        let s = sample(t0, 10, 0);
        let p = Tracker::new(t0).observe(s);
        let (status, reason) = judge(STALL, &facts(Some(STALL), s, p));
        assert_eq!(status, Status::Unhealthy);
        assert!(reason.contains("host:1"), "{reason}");
        assert_eq!(
            judge(STALL, &facts(Some(STALL - Duration::from_secs(1)), s, p)).0,
            Status::Ok
        );
    }

    #[test]
    fn the_outbox_age_decides_whether_a_still_relay_is_stuck_yet() {
        // The position has not moved for the threshold, but the oldest row waiting is young:
        // the relay has not yet had the threshold's time to pass it.
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        t.observe(sample(t0, 10, 1));
        let mut s = sample(t0 + STALL, 10, 1);
        s.oldest_waiting = Some(Duration::from_secs(3));
        let p = t.observe(s);
        assert_ne!(
            judge(STALL, &facts(Some(Duration::from_secs(1)), s, p)).0,
            Status::Unhealthy
        );
        s.oldest_waiting = Some(STALL);
        assert_eq!(
            judge(STALL, &facts(Some(Duration::from_secs(1)), s, p)).0,
            Status::Unhealthy
        );
    }

    #[test]
    fn a_capped_count_is_reported_as_a_lower_bound() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        t.observe(sample(t0, 10, 1600));
        let mut s = sample(t0 + STALL, 10, 1600);
        s.waiting_capped = true;
        let p = t.observe(s);
        let (status, reason) = judge(STALL, &facts(Some(Duration::from_secs(1)), s, p));
        assert_eq!(status, Status::Unhealthy);
        assert!(reason.contains("at least 1600 waiting"), "{reason}");
    }

    #[test]
    fn a_stage_that_keeps_up_under_steady_load_is_never_behind() {
        // Every sample finds 50 waiting, but each sample's end is passed by the next.
        let t0 = Instant::now();
        let mut b = Behind::default();
        for i in 0..100i64 {
            let now = t0 + Duration::from_secs(i as u64);
            let behind = b.observe(now, i * 100, i * 100 + 50);
            assert!(behind <= Duration::from_secs(1), "{behind:?} at {i}");
        }
        // Falling behind: it passes each end later and later.
        let mut b = Behind::default();
        let mut last = Duration::ZERO;
        for i in 0..100i64 {
            let now = t0 + Duration::from_secs(i as u64);
            last = b.observe(now, i * 50, i * 100 + 50);
        }
        assert!(last >= Duration::from_secs(45), "{last:?}");
    }

    #[test]
    fn a_rebuild_and_parked_rows_are_degraded() {
        let t0 = Instant::now();
        let s = sample(t0, 10, 0);
        let p = Tracker::new(t0).observe(s);
        let mut f = facts(Some(Duration::from_secs(1)), s, p);
        f.rebuilding = true;
        assert_eq!(judge(STALL, &f), (Status::Degraded, "rebuilding".into()));
        // Paused by the rebuild's swap with records waiting: still only degraded.
        let mut t = Tracker::new(t0);
        t.observe(sample(t0, 10, 5));
        let still = sample(t0 + STALL, 10, 5);
        f.sample = still;
        f.progress = t.observe(still);
        assert_eq!(judge(STALL, &f).0, Status::Degraded);
        // Dead is dead, rebuild or not.
        f.heartbeat = Some((STALL, "host:1"));
        assert_eq!(judge(STALL, &f).0, Status::Unhealthy);
        let mut f = facts(Some(Duration::from_secs(1)), s, p);
        f.parked = 2;
        assert_eq!(judge(STALL, &f).0, Status::Degraded);
    }

    #[test]
    fn no_runner_with_work_waiting_past_the_threshold_is_unhealthy() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        t.observe(sample(t0, 0, 4));
        let s = sample(t0 + STALL, 0, 4);
        let p = t.observe(s);
        let (status, reason) = judge(STALL, &facts(None, s, p));
        assert_eq!(status, Status::Unhealthy, "{reason}");
        let idle = sample(t0 + STALL, 0, 0);
        let p = t.observe(idle);
        assert_eq!(judge(STALL, &facts(None, idle, p)).0, Status::Degraded);
    }
}
