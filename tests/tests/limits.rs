//! What a hostile or careless client can hold, against the real binaries on loopback: an
//! over-limit streamed upload, stalled connections (one and three thousand), a burst of calls
//! that leaves app connections behind, malformed percent-encoding. The limits are documented
//! in `docs/limits.md`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::echo_app;
use e2e::sidecar::{HttpClient, Sidecar, SidecarOptions, loopback, scratch_dir, start_sqlite_pair};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The handshake and header deadlines of every daprd server (`docs/limits.md`).
const DEADLINE: Duration = Duration::from_secs(10);

/// Open sockets of process `pid` (listeners included).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Polls `check` (every 100 ms) until it holds, at most `within`; returns whether it did.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that each of `hops` (name, pid) comes back, within 15 s, to at most the sockets it
/// had in `baseline`.
async fn assert_released(hops: &[(&str, u32)], baseline: &[usize], caller: &Sidecar) {
    for ((hop, pid), before) in hops.iter().zip(baseline) {
        let released = eventually(Duration::from_secs(15), || sockets(*pid) <= *before).await;
        assert!(
            released,
            "{hop} still holds {} sockets, {before} before; caller log:\n{}",
            sockets(*pid),
            caller.log_text()
        );
    }
}

fn pid(sidecar: &Sidecar) -> u32 {
    sidecar.child.id().expect("daprd is running")
}

/// Reads until the server closes the connection (or `within` passes: `None`), returning what
/// was read and how long it took.
async fn read_until_closed(
    stream: &mut TcpStream,
    within: Duration,
) -> Option<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| (seen, started.elapsed()))
}

/// POSTs `chunks` chunks of 64 KiB (chunked, no length) to the `orders` echo app through the
/// sidecar on `port`, then the last chunk if `finish` (else it just stops sending), reading the
/// answer as it comes; returns the raw answer once the server closes the connection or, for a
/// complete answer, once its last chunk has arrived.
async fn chunked_upload(port: u16, chunks: usize, finish: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(loopback(port)).await.expect("connect");
    let (mut reader, mut writer) = stream.split();
    let head = "POST /v1.0/invoke/orders/method/echo HTTP/1.1\r\nHost: localhost\r\n\
                Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    let upload = async {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..chunks {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        if finish {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        std::io::Result::Ok(())
    };
    let answer = async {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return seen,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if seen.ends_with(b"\r\n0\r\n\r\n") {
                return seen;
            }
        }
    };
    tokio::join!(upload, answer).1
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_limit_chunked_upload_fails_at_once_and_leaves_no_connection_open_on_any_hop() {
    let dir = scratch_dir("limits-upload").expect("scratch dir");
    let app = echo_app("http").await.expect("echo-app starts");
    let app_pid = app.child.id().expect("echo-app runs");
    let callee = SidecarOptions {
        app_port: Some(app.addr.port()),
        config: Some(e2e::sidecar::sqlite_config(&dir, "callee", "").expect("config")),
        ..Default::default()
    };
    let caller = SidecarOptions {
        config: Some(e2e::sidecar::sqlite_config(&dir, "caller", "").expect("config")),
        extra_args: vec!["--max-body-size".into(), "1Mi".into()],
        ..Default::default()
    };
    let (callee, caller) = e2e::sidecar::start_pair(&dir, ("orders", callee), ("checkout", caller))
        .await
        .expect("pair starts");
    // A normal call first, so the pooled connections on each hop are part of the baseline.
    let client = HttpClient::new();
    let echoed = client
        .send(
            Method::POST,
            &caller.url("/v1.0/invoke/orders/method/echo"),
            &[],
            Bytes::from_static(b"warm"),
        )
        .await
        .expect("a normal call");
    assert_eq!((echoed.status, &echoed.body[..]), (200, &b"warm"[..]));
    drop(client);
    // And a streamed one within the limit (a streamed body has its own connection to the peer).
    let streamed = chunked_upload(caller.http_port, 4, true).await;
    assert!(
        streamed.starts_with(b"HTTP/1.1 200") && streamed.ends_with(b"\r\n0\r\n\r\n"),
        "a streamed call within the limit: {}",
        String::from_utf8_lossy(&streamed[..streamed.len().min(200)])
    );
    let hops = [
        ("caller", pid(&caller)),
        ("callee", pid(&callee)),
        ("app", app_pid),
    ];
    let baseline: Vec<usize> = hops.iter().map(|(_, pid)| sockets(*pid)).collect();

    // 3 MiB chunked to an app that streams its answer back, past the caller's 1 MiB limit.
    let started = Instant::now();
    let seen = tokio::time::timeout(
        Duration::from_secs(30),
        chunked_upload(caller.http_port, 48, true),
    )
    .await
    .expect("the over-limit upload ends within 30 s instead of hanging");
    let text = String::from_utf8_lossy(&seen[..seen.len().min(200)]).into_owned();
    let status_ok = text.starts_with("HTTP/1.1 200");
    let complete = seen.ends_with(b"\r\n0\r\n\r\n");
    assert!(
        !(status_ok && complete),
        "an over-limit body must not end in a complete 200 (took {:?}): {text}",
        started.elapsed()
    );
    if !status_ok {
        assert!(
            text.starts_with("HTTP/1.1 413") && text.contains("ERR_BODY_TOO_LARGE"),
            "an error before the answer started is Dapr's 413: {text}"
        );
    }

    // Every hop lets go of what the call held.
    assert_released(&hops, &baseline, &caller).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_upload_that_stops_sending_is_ended_after_60_s_of_silence_on_every_hop() {
    /// How long a streamed body may go without a byte (`docs/limits.md`).
    const BODY_IDLE: Duration = Duration::from_secs(60);
    let dir = scratch_dir("limits-body-idle").expect("scratch dir");
    let app = echo_app("http").await.expect("echo-app starts");
    let app_pid = app.child.id().expect("echo-app runs");
    let (callee, caller) = start_sqlite_pair(&dir, app.addr.port(), "", &[])
        .await
        .expect("pair starts");
    let warm = chunked_upload(caller.http_port, 1, true).await;
    assert!(warm.starts_with(b"HTTP/1.1 200"), "a streamed call answers");
    let hops = [
        ("caller", pid(&caller)),
        ("callee", pid(&callee)),
        ("app", app_pid),
    ];
    let baseline: Vec<usize> = hops.iter().map(|(_, pid)| sockets(*pid)).collect();
    let started = Instant::now();
    let seen = tokio::time::timeout(
        BODY_IDLE + Duration::from_secs(20),
        chunked_upload(caller.http_port, 2, false),
    )
    .await
    .expect("a body that stops is ended instead of held");
    let took = started.elapsed();
    assert!(
        took >= BODY_IDLE - Duration::from_secs(2),
        "ended after {took:?}"
    );
    assert!(
        !seen.ends_with(b"\r\n0\r\n\r\n"),
        "an unfinished body must not end in a complete answer"
    );
    assert_released(&hops, &baseline, &caller).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_connections_are_closed_at_the_deadline_while_calls_keep_succeeding() {
    let dir = scratch_dir("limits-stall").expect("scratch dir");
    let sidecar = Sidecar::start("stall", &dir, SidecarOptions::default())
        .await
        .expect("daprd starts");
    // Half a request line on the HTTP API, half the HTTP/2 preface on the gRPC and internal
    // APIs, and nothing at all on the HTTP API.
    let stalls = [
        (sidecar.http_port, &b"GET /v1.0/healthz HT"[..]),
        (sidecar.http_port, &b""[..]),
        (sidecar.grpc_port, &b"PRI * HTTP/2.0\r\n"[..]),
        (sidecar.internal_port, &b"PRI * HTTP/2.0\r\n"[..]),
    ];
    let mut waits = Vec::new();
    for (port, sent) in stalls {
        let mut stream = TcpStream::connect(loopback(port)).await.expect("connect");
        stream.write_all(sent).await.expect("write");
        waits.push(tokio::spawn(async move {
            let closed = read_until_closed(&mut stream, DEADLINE + Duration::from_secs(10)).await;
            (port, sent, closed)
        }));
    }
    // Meanwhile the API answers as usual.
    let client = HttpClient::new();
    for _ in 0..20 {
        let reply = client
            .get(&sidecar.url("/v1.0/healthz/outbound"))
            .await
            .expect("healthz");
        assert_eq!(reply.status, 204);
    }
    for wait in waits {
        let (port, sent, closed) = wait.await.expect("join");
        let sent = String::from_utf8_lossy(sent);
        let (answer, after) = closed
            .unwrap_or_else(|| panic!("port {port} ({sent:?}) still open after the deadline"));
        assert!(
            after >= DEADLINE - Duration::from_secs(2),
            "port {port} ({sent:?}) closed after {after:?}, before the deadline"
        );
        let answer = String::from_utf8_lossy(&answer);
        // hyper closes a connection whose head does not complete without an answer; at
        // most a 408 may come first. (An HTTP/2 server sends its SETTINGS at once.)
        if port == sidecar.http_port {
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "port {port} ({sent:?}) answered {answer:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_thousand_stalled_connections_cost_bounded_memory_and_are_all_released() {
    const CONNECTIONS: usize = 3000;
    /// The documented bound on what a stalled HTTP connection costs (`docs/limits.md`: 20 KiB;
    /// about 15 KiB measured), for all of them together.
    const MAX_GROWTH_KIB: u64 = 20 * CONNECTIONS as u64;
    let dir = scratch_dir("limits-many").expect("scratch dir");
    let sidecar = Sidecar::start("many", &dir, SidecarOptions::default())
        .await
        .expect("daprd starts");
    let (daprd, port) = (pid(&sidecar), sidecar.http_port);
    let (sockets_before, rss_before) = (sockets(daprd), rss_kib(daprd));
    let started = Instant::now();
    // Opened 100 at a time, well within the deadline that will close the first of them.
    let mut streams = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS / 100 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(loopback(port)).await?;
                    stream
                        .write_all(b"GET /v1.0/healthz HTTP/1.1\r\nHo")
                        .await?;
                    std::io::Result::Ok(stream)
                })
            })
            .collect();
        for opening in batch {
            streams.push(opening.await.expect("join").expect("connect and write"));
        }
    }
    println!("opened {CONNECTIONS} in {:?}", started.elapsed());
    let all_held = eventually(Duration::from_secs(5), || sockets(daprd) >= CONNECTIONS).await;
    assert!(
        all_held,
        "daprd holds {} sockets, {sockets_before} before {CONNECTIONS} connections",
        sockets(daprd)
    );
    let growth = rss_kib(daprd).saturating_sub(rss_before);
    assert!(
        growth <= MAX_GROWTH_KIB,
        "{CONNECTIONS} stalled connections grew daprd by {growth} KiB (bound {MAX_GROWTH_KIB})"
    );
    // Every one is closed by the header deadline, and daprd holds no socket of them.
    let closing: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                read_until_closed(&mut stream, DEADLINE + Duration::from_secs(20))
                    .await
                    .is_some()
            })
        })
        .collect();
    let mut closed = 0;
    for wait in closing {
        closed += usize::from(wait.await.expect("join"));
    }
    assert_eq!(closed, CONNECTIONS, "stalled connections closed by daprd");
    let released = eventually(Duration::from_secs(10), || sockets(daprd) <= sockets_before).await;
    assert!(
        released,
        "daprd still holds {} sockets, {sockets_before} before",
        sockets(daprd)
    );
    println!("{CONNECTIONS} stalled connections: +{growth} KiB resident");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_burst_the_callee_keeps_at_most_64_idle_connections_to_its_app() {
    const CALLS: usize = 1000;
    let dir = scratch_dir("limits-pool").expect("scratch dir");
    let app = echo_app("http").await.expect("echo-app starts");
    let app_pid = app.child.id().expect("echo-app runs");
    let (_callee, caller) = start_sqlite_pair(&dir, app.addr.port(), "", &[])
        .await
        .expect("pair starts");
    let baseline = sockets(app_pid);
    let client = HttpClient::new();
    let url = caller.url("/v1.0/invoke/orders/method/hold/300");
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(&url).await.map(|r| r.status) })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("join").expect("call answers"), 200);
    }
    let stats = client
        .get(&format!("http://{}/stats", app.addr))
        .await
        .expect("stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).expect("stats JSON");
    let burst = stats["max_in_flight"].as_u64().unwrap_or(0);
    assert!(
        burst > 64,
        "the burst reached only {burst} concurrent app calls"
    );
    // What it had before, plus at most 64 pooled connections from the callee and the stats
    // call's own.
    let settled = eventually(Duration::from_secs(10), || {
        sockets(app_pid) <= baseline + 64 + 1
    })
    .await;
    assert!(
        settled,
        "the app has {} sockets after a burst of {burst}, {baseline} before",
        sockets(app_pid)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_percent_encoding_in_the_method_gets_400_with_dapr_error_json() {
    let dir = scratch_dir("limits-percent").expect("scratch dir");
    let sidecar = Sidecar::start("percent", &dir, SidecarOptions::default())
        .await
        .expect("daprd starts");
    let client = HttpClient::new();
    for method in ["%zz", "a%2", "x/%"] {
        let reply = client
            .send(
                Method::POST,
                &sidecar.url(&format!("/v1.0/invoke/percent/method/{method}")),
                &[],
                Bytes::new(),
            )
            .await
            .expect("answer");
        let body = String::from_utf8_lossy(&reply.body);
        assert_eq!(reply.status, 400, "{method}: {body}");
        assert!(
            body.contains("\"errorCode\":\"ERR_DIRECT_INVOKE\"")
                && body.contains("percent-encoding"),
            "{method}: {body}"
        );
    }
}

/// POSTs `chunks` chunks of 64 KiB (chunked, no length) to the `orders` app through the sidecar
/// on `port` with `Connection: close`, and returns the status line and the whole answer.
async fn chunked_post_then_close(port: u16, chunks: usize) -> (String, String) {
    let mut stream = TcpStream::connect(loopback(port)).await.expect("connect");
    let head = "POST /v1.0/invoke/orders/method/echo HTTP/1.1\r\nHost: localhost\r\n\
                Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..chunks {
        let sent = async {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(&chunk).await?;
            stream.write_all(b"\r\n").await
        };
        // The sidecar may answer and close before it has read everything.
        if sent.await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let (seen, _) = read_until_closed(&mut stream, Duration::from_secs(30))
        .await
        .expect("the sidecar answers and closes within 30 s");
    let text = String::from_utf8_lossy(&seen).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_body_over_the_callees_limit_is_refused_before_a_grpc_app_is_called() {
    // A gRPC app's `OnInvoke` needs the body whole, so the callee gathers what the caller
    // streams; its own --max-body-size bounds that, whatever the caller's allows.
    let dir = scratch_dir("limits-grpc-gather").expect("scratch dir");
    let app = echo_app("grpc").await.expect("echo-app starts");
    let callee = SidecarOptions {
        app_port: Some(app.addr.port()),
        config: Some(e2e::sidecar::sqlite_config(&dir, "callee", "").expect("config")),
        extra_args: ["--app-protocol", "grpc", "--max-body-size", "1Mi"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let caller = SidecarOptions {
        config: Some(e2e::sidecar::sqlite_config(&dir, "caller", "").expect("config")),
        ..Default::default()
    };
    let (_callee, caller) =
        e2e::sidecar::start_pair(&dir, ("orders", callee), ("checkout", caller))
            .await
            .expect("pair starts");
    // Within the callee's limit: the app echoes the 512 KiB back.
    let (status, answer) = chunked_post_then_close(caller.http_port, 8).await;
    assert_eq!(
        status,
        "HTTP/1.1 200 OK",
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert!(
        answer.contains(&"x".repeat(64 * 1024)),
        "the body comes back: {}",
        &answer[..answer.len().min(300)]
    );
    // 2 MiB: within the caller's default 4 MiB, over the callee's 1 MiB.
    let (status, answer) = chunked_post_then_close(caller.http_port, 32).await;
    // The peer's refusal reaches the client as any failed peer call does (upstream's words).
    let shown = &answer[..answer.len().min(400)];
    assert_eq!(status, "HTTP/1.1 500 Internal Server Error", "{shown}");
    assert!(
        answer.contains("ERR_DIRECT_INVOKE")
            && answer.contains("request body is larger than the limit of 1048576 bytes"),
        "the callee refused it, not the app: {shown}"
    );
}
