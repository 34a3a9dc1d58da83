//! The real `injector` binary under a seeded run of mutated AdmissionReviews (see
//! `common/mutated.rs`): its peak resident memory stays under a bound well below the chart's
//! 256 Mi limit, every request gets an HTTP answer, bodies over the limit get 413, and a valid
//! review still gets its patch afterwards.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::mutated::{self, Mutation};
use common::process::{Injector, client_config, https_with, mutate_as, new_pki, start, stop};
use serde_json::Value;

/// The run: fixed so that a failure reproduces.
const SEED: u64 = 0x5EED_1A7E;
const CASES: u64 = 2500;
/// Senders at once, as a busy API server might have in flight.
const CONCURRENCY: usize = 32;
/// One request, including a wait behind the injector's own limit.
const REQUEST_BOUND: Duration = Duration::from_secs(30);
/// The whole run.
const RUN_BOUND: Duration = Duration::from_secs(420);
/// Bodies the generator makes near and over the limit.
const LIMIT: usize = injector::webhook::MAX_BODY;
/// Peak RSS allowed, KiB. Idle is about 25 MiB (debug build); at worst each of the
/// `MAX_IN_FLIGHT` (4) reviews holds a 4 MiB body and 16 MiB of decoded pod, about 105 MiB in
/// all. This run measures 73-78 MiB (2.2 GiB before reviews were bounded); the bound is half the
/// chart's 256 Mi limit.
const PEAK_BOUND_KIB: u64 = 128 * 1024;

/// `VmHWM` (peak resident set) and `VmRSS` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// 200 with a patch.
    Patched,
    /// 200, allowed without a patch.
    Allowed,
    /// 200, not allowed.
    Refused,
    /// Another status.
    Status(u16),
}

fn outcome(status: http::StatusCode, body: &[u8]) -> Outcome {
    if status != 200 {
        return Outcome::Status(status.as_u16());
    }
    let answer: Value = serde_json::from_slice(body).unwrap();
    match (
        answer["response"]["allowed"].as_bool(),
        answer["response"]["patch"].is_string(),
    ) {
        (Some(true), true) => Outcome::Patched,
        (Some(true), false) => Outcome::Allowed,
        _ => Outcome::Refused,
    }
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<(Mutation, Outcome), u64>,
    failures: Vec<String>,
    slowest: Duration,
    bytes: usize,
}

async fn send_all(injector: &Injector, config: Arc<rustls::ClientConfig>) -> Tally {
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (next, tally, config, webhook) = (
            next.clone(),
            tally.clone(),
            config.clone(),
            injector.webhook,
        );
        senders.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= CASES {
                    return;
                }
                let case = mutated::case(SEED, index, LIMIT);
                let size = case.body.len();
                let request = mutate_as(case.content_type, case.body);
                let sent = Instant::now();
                let answered = tokio::time::timeout(
                    REQUEST_BOUND,
                    https_with(webhook, config.clone(), request),
                )
                .await;
                let took = sent.elapsed();
                let mut tally = tally.lock().unwrap();
                tally.slowest = tally.slowest.max(took);
                tally.bytes += size;
                match answered {
                    Ok(Ok((status, body))) => {
                        *tally
                            .outcomes
                            .entry((case.mutation, outcome(status, &body)))
                            .or_default() += 1;
                    }
                    Ok(Err(e)) => tally
                        .failures
                        .push(format!("case {index} {:?}: {e}", case.mutation)),
                    Err(_) => tally.failures.push(format!(
                        "case {index} {:?}: no answer in {REQUEST_BOUND:?}",
                        case.mutation
                    )),
                }
            }
        });
    }
    tokio::time::timeout(RUN_BOUND, async {
        while let Some(joined) = senders.join_next().await {
            joined.unwrap();
        }
    })
    .await
    .expect("the run finishes within its bound");
    Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_mutated_reviews_keep_the_injector_under_its_memory_bound_and_all_get_answers()
{
    let pki = new_pki("hostile reviews CA");
    let mut injector = start(common::scratch("hostile-reviews"), &pki).await;
    let pid = injector.child.id().unwrap();
    let config = client_config(&pki.ca_der);
    let (idle_peak, _) = memory_kib(pid);

    let started = Instant::now();
    let tally = send_all(&injector, config.clone()).await;
    let elapsed = started.elapsed();
    let (peak, rss) = memory_kib(pid);
    eprintln!(
        "{CASES} mutated reviews ({} MiB) in {elapsed:.1?} (slowest answer {:.1?}): VmHWM \
         {idle_peak} KiB idle, {peak} KiB after the run; VmRSS {rss} KiB",
        tally.bytes / (1024 * 1024),
        tally.slowest
    );
    for ((mutation, outcome), count) in &tally.outcomes {
        eprintln!("  {mutation:?} {outcome:?}: {count}");
    }
    assert!(
        tally.failures.is_empty(),
        "requests without an HTTP answer: {:#?}",
        tally.failures
    );
    assert!(
        peak < PEAK_BOUND_KIB,
        "peak RSS {peak} KiB over the bound of {PEAK_BOUND_KIB} KiB"
    );
    for ((mutation, outcome), count) in &tally.outcomes {
        let expected = match mutation {
            // Bodies declared over the limit are refused without waiting for a turn.
            Mutation::OverLimit => *outcome == Outcome::Status(413),
            // A review that waited out its deadline for a turn (a starved machine) gets 503.
            _ if *outcome == Outcome::Status(503) => true,
            Mutation::Valid | Mutation::NearLimit => *outcome == Outcome::Patched,
            Mutation::EmptyBody => *outcome == Outcome::Status(400),
            Mutation::WrongContentType => *outcome == Outcome::Status(415),
            _ => !matches!(outcome, Outcome::Status(_)),
        };
        assert!(expected, "{count} × {mutation:?} answered {outcome:?}");
    }
    let over_limit: u64 = tally
        .outcomes
        .iter()
        .filter(|((mutation, _), _)| *mutation == Mutation::OverLimit)
        .map(|(_, count)| count)
        .sum();
    assert!(over_limit > 0, "the run has bodies over the limit");
    assert_eq!(
        injector.log_lines_with("over the limit").len() as u64,
        over_limit,
        "one log line for each body over the limit"
    );

    let mut rng = fastrand::Rng::with_seed(SEED);
    let review = serde_json::to_vec(&mutated::review(&mut rng, CASES)).unwrap();
    let (status, body) = https_with(
        injector.webhook,
        config,
        mutate_as("application/json", review),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    assert!(
        ops.iter()
            .any(|op| op["path"] == "/spec/containers/-" && op["value"]["name"] == "daprd")
    );

    stop(&mut injector).await;
}

#[test]
fn the_generator_gives_the_same_case_for_the_same_seed_and_index_and_sizes_near_the_limit() {
    let mut near_and_over = (0, 0);
    for index in 0..300 {
        let a = mutated::case(SEED, index, LIMIT);
        let b = mutated::case(SEED, index, LIMIT);
        assert_eq!((a.mutation, &a.body), (b.mutation, &b.body), "case {index}");
        match a.mutation {
            Mutation::NearLimit => {
                assert!(a.body.len() <= LIMIT && a.body.len() > LIMIT - 4096);
                near_and_over.0 += 1;
            }
            Mutation::OverLimit => {
                assert!(a.body.len() > LIMIT && a.body.len() <= LIMIT + 64 * 1024);
                near_and_over.1 += 1;
            }
            _ => {}
        }
    }
    assert!(
        near_and_over.0 > 0 && near_and_over.1 > 0,
        "{near_and_over:?}"
    );
    let other_seed: Vec<Vec<u8>> = (0..20)
        .map(|i| mutated::case(SEED + 1, i, LIMIT).body)
        .collect();
    let this_seed: Vec<Vec<u8>> = (0..20)
        .map(|i| mutated::case(SEED, i, LIMIT).body)
        .collect();
    assert_ne!(other_seed, this_seed);
}
