//! The timeouts every server pool follows: shared by all of them, and changed in place by a
//! reload (`SIGHUP`, `RELOAD`), so a new `checkout_timeout_ms` counts for the next checkout.
//!
//! Each is an atomic read where it is used (one relaxed load): a checkout reads
//! `checkout_timeout_ms` only when it has to wait.

use crate::config::General;
use crate::socket::Liveness;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The timeouts that govern every pool.
#[derive(Debug)]
pub struct PoolTimeouts {
    checkout_ms: AtomicU64,
    connect_ms: AtomicU64,
    /// 0: idle connections never time out.
    idle_ms: AtomicU64,
    /// 0: connections live as long as they work.
    lifetime_ms: AtomicU64,
    /// How long a server that refused a connection stays unhealthy.
    login_retry_ms: AtomicU64,
    /// How the kernel notices a server that is gone (set on each socket at connect; a change
    /// takes effect at the next start).
    pub liveness: Liveness,
}

impl PoolTimeouts {
    pub fn from_general(g: &General) -> Self {
        let t = PoolTimeouts {
            checkout_ms: AtomicU64::new(0),
            connect_ms: AtomicU64::new(0),
            idle_ms: AtomicU64::new(0),
            lifetime_ms: AtomicU64::new(0),
            login_retry_ms: AtomicU64::new(0),
            liveness: g.liveness(),
        };
        t.update(g);
        t
    }

    /// Takes the timeouts of `g` (a reload); `liveness` stays.
    pub fn update(&self, g: &General) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.checkout_ms, g.checkout_timeout_ms);
        set(&self.connect_ms, g.connect_timeout_ms);
        set(&self.idle_ms, g.idle_timeout_ms);
        set(&self.lifetime_ms, g.server_lifetime_ms);
        set(&self.login_retry_ms, g.server_login_retry_ms);
    }

    /// How long a checkout waits for a free connection (`checkout_timeout_ms`).
    pub fn checkout(&self) -> Duration {
        ms(&self.checkout_ms)
    }

    /// How long a connect and login may take (`connect_timeout_ms`).
    pub fn connect(&self) -> Duration {
        ms(&self.connect_ms)
    }

    /// `idle_timeout_ms`, if set.
    pub fn idle(&self) -> Option<Duration> {
        Some(ms(&self.idle_ms)).filter(|d| !d.is_zero())
    }

    /// `server_lifetime_ms`, if set.
    pub fn lifetime(&self) -> Option<Duration> {
        Some(ms(&self.lifetime_ms)).filter(|d| !d.is_zero())
    }

    /// `server_login_retry_ms`.
    pub fn login_retry(&self) -> Duration {
        ms(&self.login_retry_ms)
    }
}

fn ms(a: &AtomicU64) -> Duration {
    Duration::from_millis(a.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_changes_the_timeouts_in_place() {
        let mut g = General {
            idle_timeout_ms: 0,
            server_lifetime_ms: 60_000,
            ..General::default()
        };
        let t = PoolTimeouts::from_general(&g);
        assert_eq!(t.checkout(), Duration::from_millis(g.checkout_timeout_ms));
        assert_eq!(
            (t.idle(), t.lifetime()),
            (None, Some(Duration::from_secs(60)))
        );
        g.checkout_timeout_ms = 1234;
        g.idle_timeout_ms = 5000;
        g.server_lifetime_ms = 0;
        t.update(&g);
        assert_eq!(t.checkout(), Duration::from_millis(1234));
        assert_eq!(
            (t.idle(), t.lifetime()),
            (Some(Duration::from_secs(5)), None)
        );
    }
}
