//! A circuit breaker with sony/gobreaker's semantics, as upstream wraps it
//! (pkg/resiliency/breaker/): closed counts outcomes (cleared every `interval` when set) and
//! opens when the trip expression holds; open rejects every call until `timeout` has passed;
//! half-open lets `maxRequests` calls through, closes after that many consecutive successes and
//! opens again on any failure. Time is passed in, so the state machine is tested without
//! waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::trip::{Counts, Trip};

/// A breaker's settings, shared by every breaker made from one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    pub max_requests: u64,
    /// Zero: counts are never cleared while closed.
    pub interval: Duration,
    pub timeout: Duration,
    pub trip: Trip,
}

impl BreakerPolicy {
    /// gobreaker's defaults for fields left out: 1 request, no interval, 60 s, more than 5
    /// consecutive failures.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// The value of upstream's `dapr_resiliency_cb_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }

    /// The `status` label upstream gives a breaker's state.
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half-open",
            State::Open => "open",
        }
    }
}

/// Why a call was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// gobreaker's `ErrOpenState`.
    #[error("circuit breaker is open")]
    Open,
    /// gobreaker's `ErrTooManyRequests`: half-open and `maxRequests` calls already in flight.
    #[error("too many requests")]
    TooManyRequests,
}

/// A call let through: report its outcome with [`Breaker::after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Ticket {
    generation: u64,
}

#[derive(Debug)]
struct Inner {
    state: State,
    generation: u64,
    counts: Counts,
    /// When the closed generation ends or the open state turns half-open.
    expiry: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    policy: std::sync::Arc<BreakerPolicy>,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(policy: std::sync::Arc<BreakerPolicy>, now: Instant) -> Breaker {
        let expiry = (!policy.interval.is_zero()).then(|| now + policy.interval);
        Breaker {
            policy,
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                counts: Counts::default(),
                expiry,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is plain data that every step leaves consistent: a panic elsewhere while
        // holding the lock does not poison its meaning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state at `now` (an elapsed timeout makes an open breaker half-open), without
    /// moving to it: the next call does, and reports the change.
    pub fn state(&self, now: Instant) -> State {
        let inner = self.lock();
        match (inner.state, inner.expiry) {
            (State::Open, Some(expiry)) if expiry <= now => State::HalfOpen,
            (state, _) => state,
        }
    }

    /// Asks to make a call at `now`; returns the state change it caused, if any.
    pub fn before(&self, now: Instant) -> (Result<Ticket, Rejected>, Option<State>) {
        let mut inner = self.lock();
        let changed = self.current(&mut inner, now);
        let result = match inner.state {
            State::Open => Err(Rejected::Open),
            State::HalfOpen if inner.counts.requests >= self.policy.max_requests => {
                Err(Rejected::TooManyRequests)
            }
            _ => {
                inner.counts.on_request();
                Ok(Ticket {
                    generation: inner.generation,
                })
            }
        };
        (result, changed)
    }

    /// Records the outcome of a call; returns the new state if it changed.
    pub fn after(&self, ticket: Ticket, success: bool, now: Instant) -> Option<State> {
        let mut inner = self.lock();
        let mut changed = self.current(&mut inner, now);
        if inner.generation != ticket.generation {
            return changed;
        }
        match (inner.state, success) {
            (State::Closed, true) => inner.counts.on_success(),
            (State::Closed, false) => {
                inner.counts.on_failure();
                if self.policy.trip.eval(&inner.counts) {
                    changed = self.set(&mut inner, State::Open, now);
                }
            }
            (State::HalfOpen, true) => {
                inner.counts.on_success();
                if inner.counts.consecutive_successes >= self.policy.max_requests {
                    changed = self.set(&mut inner, State::Closed, now);
                }
            }
            (State::HalfOpen, false) => changed = self.set(&mut inner, State::Open, now),
            (State::Open, _) => {}
        }
        changed
    }

    /// Moves to the state that `now` implies.
    fn current(&self, inner: &mut Inner, now: Instant) -> Option<State> {
        match (inner.state, inner.expiry) {
            (State::Closed, Some(expiry)) if expiry <= now => {
                self.new_generation(inner, now);
                None
            }
            (State::Open, Some(expiry)) if expiry <= now => self.set(inner, State::HalfOpen, now),
            _ => None,
        }
    }

    fn set(&self, inner: &mut Inner, state: State, now: Instant) -> Option<State> {
        if inner.state == state {
            return None;
        }
        inner.state = state;
        self.new_generation(inner, now);
        Some(state)
    }

    fn new_generation(&self, inner: &mut Inner, now: Instant) {
        inner.generation += 1;
        inner.counts = Counts::default();
        inner.expiry = match inner.state {
            State::Closed if self.policy.interval.is_zero() => None,
            State::Closed => Some(now + self.policy.interval),
            State::Open => Some(now + self.policy.timeout),
            State::HalfOpen => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn breaker(trip: &str, max_requests: u64, interval: u64) -> (Breaker, Instant) {
        let now = Instant::now();
        let policy = BreakerPolicy {
            max_requests,
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(10),
            trip: Trip::parse(trip).unwrap(),
        };
        (Breaker::new(Arc::new(policy), now), now)
    }

    fn call(b: &Breaker, now: Instant, success: bool) -> Result<Option<State>, Rejected> {
        let (ticket, _) = b.before(now);
        Ok(b.after(ticket?, success, now))
    }

    #[test]
    fn opens_on_the_trip_and_half_opens_after_the_timeout() {
        let (b, t0) = breaker("consecutiveFailures >= 2", 1, 0);
        assert_eq!(call(&b, t0, false), Ok(None));
        assert_eq!(call(&b, t0, false), Ok(Some(State::Open)));
        assert_eq!(call(&b, t0, true), Err(Rejected::Open));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.state(later), State::HalfOpen);
        // Half-open: one call through; a second one while it is in flight is refused.
        let (first, _) = b.before(later);
        assert_eq!(b.before(later).0, Err(Rejected::TooManyRequests));
        assert_eq!(b.after(first.unwrap(), true, later), Some(State::Closed));
        assert_eq!(call(&b, later, true), Ok(None));
    }

    #[test]
    fn a_failure_while_half_open_opens_again() {
        let (b, t0) = breaker("consecutiveFailures > 0", 2, 0);
        assert_eq!(call(&b, t0, false), Ok(Some(State::Open)));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(call(&b, later, true), Ok(None));
        assert_eq!(call(&b, later, false), Ok(Some(State::Open)));
        assert_eq!(call(&b, later, true), Err(Rejected::Open));
    }

    #[test]
    fn the_interval_clears_counts_while_closed() {
        let (b, t0) = breaker("totalFailures >= 2", 1, 5);
        assert_eq!(call(&b, t0, false), Ok(None));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(call(&b, later, false), Ok(None));
        assert_eq!(call(&b, later, false), Ok(Some(State::Open)));
    }

    #[test]
    fn outcomes_of_an_old_generation_are_ignored() {
        let (b, t0) = breaker("consecutiveFailures > 0", 1, 0);
        let (stale, _) = b.before(t0);
        assert_eq!(call(&b, t0, false), Ok(Some(State::Open)));
        assert_eq!(b.after(stale.unwrap(), true, t0), None);
        assert_eq!(b.state(t0), State::Open);
    }
}
