//! A mocked Kubernetes API for tests (kube-rs' `tower-test` pattern): [`client`] gives a
//! `kube::Client` whose every call the test receives on a [`Handle`] and answers itself.
//! [`exchange`] answers a script of expected calls in order; [`next`] and [`respond`] answer
//! one at a time; [`no_more_calls`] checks that nothing else was asked. Every wait is bounded
//! by [`DEADLINE`].
//!
//! Why a mock and not a real API server (the cluster tier runs one): a mock pins exactly which
//! calls are made, in which order, with which bodies, and what each possible answer (including
//! failures a real server gives only rarely: conflicts, forbidden) leads to.

use std::future::Future;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

/// The test's end of the mocked API: each call the client makes arrives here.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
/// Where the answer to one call goes.
pub type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// Every wait for a call, or for the code under test, ends by this deadline.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A client in namespace `default` whose calls arrive on the returned [`Handle`].
pub fn client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// Answers one call with `status` and a JSON `body`.
pub fn respond(send: Responder, status: StatusCode, body: &[u8]) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a response from a status and bytes");
    send.send_response(response);
}

/// Answers one call with `status` and `body` serialised.
pub fn respond_json(send: Responder, status: StatusCode, body: &Value) {
    let bytes = serde_json::to_vec(body).expect("JSON serialises");
    respond(send, status, &bytes);
}

/// The API server's `Status` object for a failed call.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code.as_u16()})
}

/// The API server's answer for a missing object: `<kind> "<name>" not found`, where `kind` is
/// the plural resource name (`services`, `secrets`).
pub fn not_found(kind: &str, name: &str) -> Value {
    let mut body = status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
    );
    body["details"] = json!({"name": name, "kind": kind});
    body
}

/// The next call the client makes, within [`DEADLINE`].
pub async fn next(handle: &mut Handle) -> (Request<Body>, Responder) {
    tokio::time::timeout(DEADLINE, handle.next_request())
        .await
        .expect("an API call within the deadline")
        .expect("the client is still alive")
}

/// A call's JSON body (`Null` when it has none).
pub async fn body_json(request: Request<Body>) -> Value {
    json_of(&body_bytes(request).await)
}

async fn body_bytes(request: Request<Body>) -> bytes::Bytes {
    request
        .into_body()
        .collect()
        .await
        .expect("the request body")
        .to_bytes()
}

fn json_of(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes).expect("a JSON request body")
    }
}

/// Once the client is dropped, no call may be left: fails naming the first one there is.
pub async fn no_more_calls(mut handle: Handle) {
    let rest = tokio::time::timeout(DEADLINE, handle.next_request())
        .await
        .expect("the client is dropped within the deadline");
    assert!(
        rest.is_none(),
        "unexpected API call: {:?}",
        rest.map(|(r, _)| format!("{} {}", r.method(), r.uri()))
    );
}

/// How [`exchange`] answers one expected call.
pub enum Reply {
    /// This status and JSON body.
    Json(StatusCode, Value),
    /// 200 with the request's own body, as an update that succeeded.
    Echo,
}

/// One call a script expects, in order.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub reply: Reply,
}

/// A call expected at `method path`, answered with `reply`.
pub fn call(method: Method, path: &str, reply: Reply) -> Call {
    Call {
        method,
        path: path.to_owned(),
        reply,
    }
}

/// Runs `code` while answering `calls` in order; returns its result and the JSON body of each
/// call (`Null` for a call without one). Fails on a call out of order, on an expected call that
/// never comes, and on a call beyond the script (the code under test then cannot finish).
pub async fn exchange<T>(
    handle: &mut Handle,
    calls: Vec<Call>,
    code: impl Future<Output = T>,
) -> (T, Vec<Value>) {
    let expected: Vec<String> = calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    let outcome = {
        let serve = async {
            let mut seen = Vec::new();
            let mut bodies = Vec::new();
            for (n, call) in calls.into_iter().enumerate() {
                let (request, send) = tokio::time::timeout(DEADLINE, handle.next_request())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "expected call #{n} ({} {}) was not made; calls made: {seen:?}",
                            call.method, call.path
                        )
                    })
                    .expect("the client is still alive");
                let made = format!("{} {}", request.method(), request.uri().path());
                seen.push(made.clone());
                assert_eq!(
                    made,
                    format!("{} {}", call.method, call.path),
                    "call #{n} out of script; expected {expected:?}, made so far {seen:?}"
                );
                let bytes = body_bytes(request).await;
                let body = json_of(&bytes);
                match call.reply {
                    Reply::Json(status, reply) => respond_json(send, status, &reply),
                    Reply::Echo => respond(send, StatusCode::OK, &bytes),
                }
                bodies.push(body);
            }
            bodies
        };
        tokio::join!(tokio::time::timeout(DEADLINE, code), serve)
    };
    match outcome {
        (Ok(result), bodies) => (result, bodies),
        (Err(_), _) => {
            // Ready at once if the code under test is stuck on a call nobody answers.
            let extra = tokio::time::timeout(Duration::ZERO, handle.next_request())
                .await
                .ok()
                .flatten()
                .map(|(r, _)| format!("{} {}", r.method(), r.uri().path()));
            panic!(
                "the code under test did not finish within {DEADLINE:?}; unexpected call: \
                 {extra:?} (script: {expected:?})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;

    use super::*;

    const PATH: &str = "/api/v1/namespaces/default/configmaps/settings";

    #[tokio::test]
    async fn a_script_is_answered_in_order_and_bodies_are_returned() {
        let (client, mut handle) = client();
        let api = Api::<ConfigMap>::default_namespaced(client);
        let script = vec![
            call(
                Method::GET,
                PATH,
                Reply::Json(StatusCode::NOT_FOUND, not_found("configmaps", "settings")),
            ),
            call(
                Method::POST,
                "/api/v1/namespaces/default/configmaps",
                Reply::Echo,
            ),
        ];
        let code = async {
            let missing = api.get_opt("settings").await.expect("a 404 is None");
            let mut created = ConfigMap::default();
            created.metadata.name = Some("settings".into());
            let made = api
                .create(&Default::default(), &created)
                .await
                .expect("echoed back");
            (missing, made)
        };
        let ((missing, made), bodies) = exchange(&mut handle, script, code).await;
        assert!(missing.is_none());
        assert_eq!(made.metadata.name.as_deref(), Some("settings"));
        assert_eq!(bodies[0], Value::Null, "a GET has no body");
        assert_eq!(bodies[1]["metadata"]["name"], "settings");
        drop(api);
        no_more_calls(handle).await;
    }

    #[tokio::test]
    #[should_panic(expected = "out of script")]
    async fn a_call_out_of_script_fails_the_test() {
        let (client, mut handle) = client();
        let api = Api::<ConfigMap>::default_namespaced(client);
        let script = vec![call(Method::DELETE, PATH, Reply::Echo)];
        exchange(&mut handle, script, async {
            let _ = api.get_opt("settings").await;
        })
        .await;
    }
}
