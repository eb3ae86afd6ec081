//! Sign-in throttling, per email and per client address: after a few failures each
//! new attempt must wait longer (1 s, 2 s, 4 s ... up to a minute), and at the limit
//! the email or address is locked for a while. The state is kept in memory: a restart
//! forgets it, which only ever helps the legitimate owner.
//!
//! Unknown emails are throttled exactly like known ones, so the answers never tell
//! whether an account exists.

use std::collections::HashMap;
use std::sync::Mutex;

const MAX_DELAY_MS: u64 = 60_000;

#[derive(Default, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure_ms: u64,
    next_try_ms: u64,
    locked_until_ms: u64,
}

/// When delays start and locks begin, for one kind of key.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Failures before delays start.
    pub free: u32,
    /// Failures that start a lock.
    pub lock_after: u32,
    pub lock_for_ms: u64,
}

/// What an attempt may do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// Too soon after the last failure: wait this many seconds.
    Wait(u64),
    /// Locked: wait this many seconds.
    Locked(u64),
}

/// Failure counters for emails and client addresses.
#[derive(Default)]
pub struct Throttle {
    map: Mutex<HashMap<String, Entry>>,
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

impl Throttle {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` may try now.
    pub fn check(&self, key: &str, now_ms: u64) -> Verdict {
        let Some(e) = self.entries().get(key).copied() else {
            return Verdict::Go;
        };
        if now_ms < e.locked_until_ms {
            Verdict::Locked(secs(e.locked_until_ms - now_ms))
        } else if now_ms < e.next_try_ms {
            Verdict::Wait(secs(e.next_try_ms - now_ms))
        } else {
            Verdict::Go
        }
    }

    /// Counts a failure; says whether it started a lock. After `free` failures each
    /// try waits longer; failures older than `lock_for_ms` are forgotten.
    pub fn fail(&self, key: &str, now_ms: u64, limits: Limits) -> bool {
        let Limits {
            free,
            lock_after,
            lock_for_ms,
        } = limits;
        let mut map = self.entries();
        if map.len() > 100_000 {
            map.retain(|_, e| {
                now_ms < e.locked_until_ms || now_ms - e.last_failure_ms < lock_for_ms
            });
        }
        let e = map.entry(key.to_string()).or_default();
        if now_ms.saturating_sub(e.last_failure_ms) >= lock_for_ms && now_ms >= e.locked_until_ms {
            *e = Entry::default();
        }
        e.failures += 1;
        e.last_failure_ms = now_ms;
        if e.failures >= lock_after {
            *e = Entry {
                locked_until_ms: now_ms + lock_for_ms,
                last_failure_ms: now_ms,
                ..Entry::default()
            };
            return true;
        }
        if e.failures >= free {
            let step = (e.failures - free).min(16);
            e.next_try_ms = now_ms + (1000u64 << step).min(MAX_DELAY_MS);
        }
        false
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeed(&self, key: &str) {
        self.entries().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_a_lock_starts_and_ends() {
        let t = Throttle::default();
        let l = Limits {
            free: 3,
            lock_after: 6,
            lock_for_ms: 900_000,
        };
        let mut now = 0;
        for _ in 0..2 {
            assert!(!t.fail("k", now, l));
        }
        assert_eq!(t.check("k", now), Verdict::Go);
        assert!(!t.fail("k", now, l));
        assert_eq!(t.check("k", now), Verdict::Wait(1));
        now += 1000;
        assert!(!t.fail("k", now, l));
        assert_eq!(t.check("k", now), Verdict::Wait(2), "the delay doubled");
        now += 2000;
        assert!(!t.fail("k", now, l));
        now += 4000;
        assert!(t.fail("k", now, l), "the sixth failure locks");
        assert_eq!(t.check("k", now), Verdict::Locked(900));
        assert_eq!(t.check("k", now + 900_000), Verdict::Go);
        assert_eq!(t.check("other", now), Verdict::Go);
    }
}
