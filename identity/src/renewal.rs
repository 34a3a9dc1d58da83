//! The one renewal loop of a workload certificate (daprd's identity, the injector's serving and
//! operator certificates): the first certificate retried until it arrives, then a new one at half
//! the lifetime of the last, each published to the caller's [`Sink`], until a cancellation token
//! fires. Like linkerd2-proxy's identity client, the loop only schedules; what a certificate is
//! made from ([`Source`]) and where it goes are the caller's.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::client::retry_delay;

/// The loop wakes at least this often while waiting for a renewal, so a clock that jumps ahead
/// is noticed.
pub const MAX_NAP: Duration = Duration::from_secs(60);
/// And at most this often, so a certificate whose renewal time has already passed (a TTL shorter
/// than the clock skew) cannot make it spin.
pub const MIN_NAP: Duration = Duration::from_secs(1);

/// Where certificates come from.
pub trait Source: Send {
    /// A certificate as the caller uses it.
    type Issued: Send;

    /// One request; the certificate and when to renew it (`client::refresh_at` of its validity).
    fn fetch(&mut self) -> impl Future<Output = Result<(Self::Issued, SystemTime), Error>> + Send;

    /// A request failed, the `attempt`-th in a row; the next comes in `retry_in`. `renewing` is
    /// false while no certificate has arrived yet.
    fn failed(&mut self, error: &Error, attempt: u32, retry_in: Duration, renewing: bool);
}

/// Where renewed certificates go.
pub trait Sink<T>: Send {
    fn publish(&mut self, issued: T);
}

impl<T, F: FnMut(T) + Send> Sink<T> for F {
    fn publish(&mut self, issued: T) {
        self(issued)
    }
}

/// Requests until the first certificate arrives; returns it and when to renew it.
/// [`Error::Stopped`] when `stop` fires first.
pub async fn first<S: Source>(
    source: &mut S,
    stop: &CancellationToken,
) -> Result<(S::Issued, SystemTime), Error> {
    let mut attempt = 0;
    loop {
        let fetched = tokio::select! {
            () = stop.cancelled() => return Err(Error::Stopped),
            fetched = source.fetch() => fetched,
        };
        match fetched {
            Ok(issued) => return Ok(issued),
            Err(e) => {
                attempt += 1;
                let delay = retry_delay(attempt);
                source.failed(&e, attempt, delay, false);
                tokio::select! {
                    () = stop.cancelled() => return Err(Error::Stopped),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// How long to sleep before looking again: until `renew_at` (between [`MIN_NAP`] and
/// [`MAX_NAP`]), or the back-off after `failures` failed renewals.
pub fn nap(renew_at: SystemTime, now: SystemTime, failures: u32) -> Duration {
    if failures > 0 {
        return retry_delay(failures).max(MIN_NAP);
    }
    renew_at
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .clamp(MIN_NAP, MAX_NAP)
}

/// Renews at `renew_at` and then at half the lifetime of each new certificate, publishing each
/// to `sink`, until `stop`. A failed renewal keeps the last certificate and is retried with
/// back-off.
pub async fn keep_fresh<S: Source>(
    mut source: S,
    mut sink: impl Sink<S::Issued>,
    mut renew_at: SystemTime,
    stop: CancellationToken,
) {
    let mut failures = 0;
    loop {
        let nap = nap(renew_at, SystemTime::now(), failures);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(nap) => {}
        }
        if SystemTime::now() < renew_at {
            continue;
        }
        let fetched = tokio::select! {
            () = stop.cancelled() => return,
            fetched = source.fetch() => fetched,
        };
        match fetched {
            Ok((issued, next)) => {
                failures = 0;
                renew_at = next;
                sink.publish(issued);
            }
            Err(e) => {
                failures += 1;
                source.failed(&e, failures, retry_delay(failures), true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Every wait in these tests ends by this deadline.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Answers from a script (`Err` for `false`), recording what the loop did.
    #[derive(Clone, Default)]
    struct Scripted {
        answers: Arc<Mutex<Vec<bool>>>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Scripted {
        fn new(answers: &[bool]) -> Self {
            let mut answers = answers.to_vec();
            answers.reverse();
            Scripted {
                answers: Arc::new(Mutex::new(answers)),
                log: Arc::default(),
            }
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Source for Scripted {
        type Issued = u32;

        async fn fetch(&mut self) -> Result<(u32, SystemTime), Error> {
            let answer = self.answers.lock().unwrap().pop();
            match answer {
                Some(true) => Ok((self.log().len() as u32, SystemTime::now())),
                Some(false) => Err(Error::EmptyChain),
                None => std::future::pending().await,
            }
        }

        fn failed(&mut self, _: &Error, attempt: u32, retry_in: Duration, renewing: bool) {
            self.log.lock().unwrap().push(format!(
                "failed {attempt} retry in {}s renewing {renewing}",
                retry_in.as_secs()
            ));
        }
    }

    #[tokio::test]
    async fn the_first_certificate_is_retried_until_it_arrives_and_then_published() {
        let mut source = Scripted::new(&[false, true]);
        let stop = CancellationToken::new();
        let (issued, _) = tokio::time::timeout(DEADLINE, first(&mut source, &stop))
            .await
            .expect("within the deadline")
            .unwrap();
        assert_eq!(issued, 1, "the answer after the failure");
        assert_eq!(source.log(), ["failed 1 retry in 1s renewing false"]);
    }

    #[tokio::test]
    async fn stopping_before_the_first_certificate_ends_the_wait() {
        let mut source = Scripted::new(&[]);
        let stop = CancellationToken::new();
        stop.cancel();
        let result = tokio::time::timeout(DEADLINE, first(&mut source, &stop))
            .await
            .expect("within the deadline");
        assert!(matches!(result, Err(Error::Stopped)), "{result:?}");
    }

    #[tokio::test]
    async fn a_due_certificate_is_renewed_a_failure_is_retried_and_stop_ends_the_loop() {
        let source = Scripted::new(&[false, true]);
        let log = Arc::clone(&source.log);
        let sink = move |issued: u32| log.lock().unwrap().push(format!("published {issued}"));
        let stop = CancellationToken::new();
        let looping = tokio::spawn(keep_fresh(
            source.clone(),
            sink,
            SystemTime::now(),
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while source.log().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", source.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            source.log(),
            ["failed 1 retry in 1s renewing true", "published 1"]
        );
        // The script is done: the next request hangs, and stop still ends the loop.
        stop.cancel();
        tokio::time::timeout(DEADLINE, looping)
            .await
            .expect("the loop ends on stop")
            .unwrap();
    }

    #[test]
    fn naps_last_until_renewal_within_bounds_or_back_off_after_failures() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            nap(now + Duration::from_secs(30), now, 0),
            Duration::from_secs(30)
        );
        assert_eq!(nap(now + Duration::from_secs(3600), now, 0), MAX_NAP);
        assert_eq!(nap(now - Duration::from_secs(5), now, 0), MIN_NAP);
        assert_eq!(
            nap(now + Duration::from_secs(3600), now, 3),
            Duration::from_secs(4)
        );
    }
}
