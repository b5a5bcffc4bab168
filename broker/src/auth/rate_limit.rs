//! Per-connection inbound PUBLISH limits (sans-IO): two token buckets, messages and bytes.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` per second. Charging may take it
//! below zero (a debt); the connection then either stops reading the socket until the debt
//! is repaid (`throttle`, as EMQX does: TCP flow control slows the client down, nothing is
//! lost) or ends the connection with 0x96 Message rate too high (`disconnect`). Time is
//! passed in.

use std::time::{Duration, Instant};

use crate::config::RateLimitSection;

/// One token bucket. `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` > 0; a `burst` of 0 means one second's worth.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let burst = if burst > 0.0 { burst } else { rate };
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens at `now`. Returns how long until the bucket is out of debt, or
    /// `None` if it still is not in debt.
    pub fn charge(&mut self, n: f64, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// The limits of one connection; no bucket for an unlimited dimension.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Limiter {
    pub fn new(cfg: &RateLimitSection, now: Instant) -> Limiter {
        Limiter {
            messages: (cfg.messages_per_sec > 0)
                .then(|| TokenBucket::new(f64::from(cfg.messages_per_sec), f64::from(cfg.messages_burst), now)),
            bytes: (cfg.bytes_per_sec > 0)
                .then(|| TokenBucket::new(cfg.bytes_per_sec as f64, cfg.bytes_burst as f64, now)),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }

    /// Charges one PUBLISH of `bytes` bytes; returns the pause needed before reading on, if
    /// the client is over its rate.
    pub fn charge(&mut self, bytes: usize, now: Instant) -> Option<Duration> {
        let m = self.messages.as_mut().and_then(|b| b.charge(1.0, now));
        let b = self.bytes.as_mut().and_then(|b| b.charge(bytes as f64, now));
        match (m, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitAction;

    fn cfg(messages_per_sec: u32, messages_burst: u32, bytes_per_sec: u64) -> RateLimitSection {
        RateLimitSection {
            messages_per_sec,
            messages_burst,
            bytes_per_sec,
            bytes_burst: 0,
            on_exceed: RateLimitAction::Throttle,
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&cfg(10, 5, 0), t0);
        for i in 0..5 {
            assert_eq!(l.charge(100, t0), None, "message {i} is within the burst");
        }
        let pause = l.charge(100, t0).expect("the sixth is over");
        assert_eq!(pause, Duration::from_millis(100), "one token at 10/s");
        // After the pause the debt is repaid and one more token has accrued 100 ms later.
        assert_eq!(l.charge(100, t0 + Duration::from_millis(200)), None);
        assert!(l.charge(100, t0 + Duration::from_millis(200)).is_some());
    }

    #[test]
    fn the_byte_limit_counts_packet_sizes() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&cfg(0, 0, 1000), t0);
        assert_eq!(l.charge(600, t0), None);
        assert_eq!(l.charge(400, t0), None);
        assert_eq!(l.charge(500, t0), Some(Duration::from_millis(500)));
        // Refill never exceeds the burst: after a long idle, one second's worth again.
        assert_eq!(l.charge(1000, t0 + Duration::from_secs(100)), None);
        assert!(l.charge(1, t0 + Duration::from_secs(100)).is_some());
    }

    #[test]
    fn the_longer_pause_of_both_limits_applies_and_zero_means_unlimited() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&cfg(1, 1, 100), t0);
        assert_eq!(l.charge(100, t0), None);
        assert_eq!(l.charge(300, t0), Some(Duration::from_secs(3)));
        let mut none = Limiter::new(&cfg(0, 0, 0), t0);
        assert!(none.is_unlimited());
        for _ in 0..10_000 {
            assert_eq!(none.charge(1 << 20, t0), None);
        }
    }
}
