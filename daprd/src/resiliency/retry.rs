//! Retry policies as dapr/kit's `retry` package runs them: `constant` waits `duration` between
//! attempts; `exponential` starts at 500 ms and grows by 1.5 up to `maxInterval`, each wait
//! randomized by ±50 % (cenkalti/backoff's defaults, which dapr/kit keeps), and stops after
//! 15 minutes in all; `maxRetries` bounds the retries (-1: no bound). `matching` limits which
//! answers are retried (pkg/resiliency/: comma-separated codes and ranges such as `500-599,429`).

use std::time::Duration;

/// cenkalti/backoff's `DefaultInitialInterval`.
pub const INITIAL_INTERVAL: Duration = Duration::from_millis(500);
const MULTIPLIER: f64 = 1.5;
const RANDOMIZATION: f64 = 0.5;
/// cenkalti/backoff's `DefaultMaxElapsedTime`, which dapr/kit keeps for `exponential`.
pub const MAX_ELAPSED: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    Constant(Duration),
    Exponential { max_interval: Duration },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// `None`: retry until the call succeeds (or, exponential, 15 minutes have passed).
    pub max_retries: Option<u64>,
    pub matching: Matching,
}

impl RetryPolicy {
    pub fn schedule(&self) -> Schedule<'_> {
        let current = match self.backoff {
            Backoff::Constant(d) => d,
            Backoff::Exponential { max_interval } => INITIAL_INTERVAL.min(max_interval),
        };
        Schedule {
            policy: self,
            retries: 0,
            current,
            elapsed: Duration::ZERO,
        }
    }
}

/// The waits before each retry of one call.
#[derive(Debug)]
pub struct Schedule<'a> {
    policy: &'a RetryPolicy,
    retries: u64,
    current: Duration,
    elapsed: Duration,
}

impl Schedule<'_> {
    /// The wait before the next retry, or `None` when no retry is left. `random` is in [0, 1).
    pub fn next_wait(&mut self, random: f64) -> Option<Duration> {
        if self
            .policy
            .max_retries
            .is_some_and(|max| self.retries >= max)
        {
            return None;
        }
        let wait = match self.policy.backoff {
            Backoff::Constant(d) => d,
            Backoff::Exponential { max_interval } => {
                let delta = RANDOMIZATION * self.current.as_secs_f64();
                let low = self.current.as_secs_f64() - delta;
                let wait = Duration::from_secs_f64(low + random * 2.0 * delta);
                self.current =
                    if self.current.as_secs_f64() >= max_interval.as_secs_f64() / MULTIPLIER {
                        max_interval
                    } else {
                        self.current.mul_f64(MULTIPLIER)
                    };
                if self.elapsed + wait > MAX_ELAPSED {
                    return None;
                }
                wait
            }
        };
        self.retries += 1;
        self.elapsed += wait;
        Some(wait)
    }
}

/// Which answers a retry policy retries. A list not given matches every code of its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matching {
    pub http: Option<Codes>,
    pub grpc: Option<Codes>,
}

impl Matching {
    /// Whether an HTTP app's status is retried.
    pub fn http(&self, status: u32) -> bool {
        self.http.as_ref().is_none_or(|c| c.contains(status))
    }
    /// Whether a gRPC app's code is retried.
    pub fn grpc(&self, code: u32) -> bool {
        self.grpc.as_ref().is_none_or(|c| c.contains(code))
    }
}

/// Codes and inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codes(Vec<(u32, u32)>);

impl Codes {
    /// Parses `500-599,429` with every code within `valid`.
    pub fn parse(text: &str, valid: std::ops::RangeInclusive<u32>) -> Result<Codes, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let code = |s: &str| -> Result<u32, String> {
                let n: u32 = s
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?} is not a status code"))?;
                if !valid.contains(&n) {
                    return Err(format!(
                        "{n} is not within {}-{}",
                        valid.start(),
                        valid.end()
                    ));
                }
                Ok(n)
            };
            let range = match part.split_once('-') {
                Some((low, high)) => (code(low)?, code(high)?),
                None => (code(part)?, code(part)?),
            };
            if range.0 > range.1 {
                return Err(format!("range {part:?} is empty"));
            }
            ranges.push(range);
        }
        Ok(Codes(ranges))
    }

    pub fn contains(&self, code: u32) -> bool {
        self.0
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff, max_retries: Option<u64>) -> RetryPolicy {
        RetryPolicy {
            backoff,
            max_retries,
            matching: Matching::default(),
        }
    }

    #[test]
    fn constant_waits_the_same_up_to_max_retries() {
        let p = policy(Backoff::Constant(Duration::from_millis(200)), Some(2));
        let mut s = p.schedule();
        assert_eq!(s.next_wait(0.9), Some(Duration::from_millis(200)));
        assert_eq!(s.next_wait(0.1), Some(Duration::from_millis(200)));
        assert_eq!(s.next_wait(0.5), None);
        let p = policy(Backoff::Constant(Duration::ZERO), Some(0));
        assert_eq!(p.schedule().next_wait(0.5), None);
    }

    #[test]
    fn exponential_grows_within_the_randomization_up_to_the_max_interval() {
        let p = policy(
            Backoff::Exponential {
                max_interval: Duration::from_secs(1),
            },
            None,
        );
        let mut s = p.schedule();
        // random 0.5 is the middle of the window: the interval itself.
        let waits: Vec<_> = (0..4).map(|_| s.next_wait(0.5).unwrap()).collect();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            waits.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            [500, 750, 1000, 1000]
        );
        let mut s = p.schedule();
        assert_eq!(ms(s.next_wait(0.0).unwrap()), 250);
        assert_eq!(ms(s.next_wait(0.999_999).unwrap()), 1124);
    }

    #[test]
    fn exponential_stops_after_fifteen_minutes() {
        let p = policy(
            Backoff::Exponential {
                max_interval: Duration::from_secs(60),
            },
            None,
        );
        let mut s = p.schedule();
        let mut total = Duration::ZERO;
        while let Some(wait) = s.next_wait(0.5) {
            total += wait;
        }
        assert!(total <= MAX_ELAPSED && total > MAX_ELAPSED - Duration::from_secs(60));
    }

    #[test]
    fn codes_and_ranges() {
        let c = Codes::parse("500-599, 429", 100..=599).unwrap();
        assert!(c.contains(503) && c.contains(429) && !c.contains(404));
        assert!(Codes::parse("600", 100..=599).is_err());
        assert!(Codes::parse("599-500", 100..=599).is_err());
        assert!(Codes::parse("x", 0..=16).is_err());
        let m = Matching {
            http: Some(c),
            grpc: None,
        };
        assert!(m.http(503) && !m.http(400) && m.grpc(14));
    }
}
