//! The `<app-id>-dapr` Service reconciler against a mocked Kubernetes API (kube-rs'
//! `tower-test` pattern): each scenario answers exactly the calls it expects and then checks
//! that no other call was made.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use dapr_kube_mock::{self as kube_mock, body_json, next, no_more_calls};
use http::{Method, StatusCode};
use injector::reconciler::{self, Context, Desired};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

fn deployment(annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "d-uid-1"},
        "spec": {
            "selector": {"matchLabels": {"app": "orders"}},
            "template": {
                "metadata": {"labels": {"app": "orders"}, "annotations": annotations},
                "spec": {"containers": [{"name": "orders", "image": "orders:1"}]}
            }
        }
    }))
    .unwrap()
}

fn statefulset(annotations: Value) -> StatefulSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "ledger", "namespace": "bank", "uid": "s-uid-1"},
        "spec": {
            "selector": {"matchLabels": {"app": "ledger", "tier": "db"}},
            "serviceName": "ledger",
            "template": {
                "metadata": {"labels": {"app": "ledger", "tier": "db"}, "annotations": annotations},
                "spec": {"containers": [{"name": "ledger", "image": "ledger:1"}]}
            }
        }
    }))
    .unwrap()
}

fn enabled(app_id: &str) -> Value {
    json!({"dapr.io/enabled": "true", "dapr.io/app-id": app_id})
}

#[tokio::test]
async fn a_deployment_that_enables_dapr_gets_a_headless_service_created() {
    let (client, mut handle) = kube_mock::client();
    let scenario = tokio::spawn(async move {
        let (get, send) = next(&mut handle).await;
        assert_eq!(get.method(), Method::GET);
        assert_eq!(
            get.uri().path(),
            "/api/v1/namespaces/shop/services/orders-dapr"
        );
        kube_mock::respond_json(
            send,
            StatusCode::NOT_FOUND,
            &kube_mock::not_found("services", "orders-dapr"),
        );

        let (post, send) = next(&mut handle).await;
        assert_eq!(post.method(), Method::POST);
        assert_eq!(post.uri().path(), "/api/v1/namespaces/shop/services");
        assert!(
            post.uri()
                .query()
                .unwrap_or_default()
                .contains("fieldManager=dapr-injector")
        );
        let created = body_json(post).await;
        kube_mock::respond_json(send, StatusCode::CREATED, &created);
        (created, handle)
    });
    let ctx = Arc::new(Context::new(client, true));
    let action = reconciler::reconcile(Arc::new(deployment(enabled("orders"))), ctx.clone())
        .await
        .expect("reconciled");
    assert_eq!(action, Action::await_change());
    drop(ctx);
    let (created, handle) = scenario.await.unwrap();
    no_more_calls(handle).await;

    assert_eq!(created["metadata"]["name"], "orders-dapr");
    assert_eq!(created["metadata"]["namespace"], "shop");
    assert_eq!(
        created["metadata"]["labels"],
        json!({"dapr.io/enabled": "true"})
    );
    assert_eq!(
        created["metadata"]["annotations"],
        json!({
            "dapr.io/app-id": "orders",
            "prometheus.io/path": "/",
            "prometheus.io/port": "9090",
            "prometheus.io/probe": "true",
            "prometheus.io/scrape": "true"
        })
    );
    assert_eq!(
        created["metadata"]["ownerReferences"],
        json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders", "uid": "d-uid-1",
                "controller": true, "blockOwnerDeletion": true}])
    );
    assert_eq!(created["spec"]["clusterIP"], "None");
    assert_eq!(created["spec"]["selector"], json!({"app": "orders"}));
    assert_eq!(
        created["spec"]["ports"],
        json!([
            {"name": "dapr-http", "port": 80, "targetPort": 3500, "protocol": "TCP", "appProtocol": "http"},
            {"name": "dapr-grpc", "port": 50001, "targetPort": 50001, "protocol": "TCP", "appProtocol": "grpc"},
            {"name": "dapr-internal", "port": 50002, "targetPort": 50002, "protocol": "TCP", "appProtocol": "tls"},
            {"name": "dapr-metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP", "appProtocol": "http"}
        ])
    );
}

#[tokio::test]
async fn an_outdated_service_is_replaced_keeping_its_resource_version_and_cluster_ips() {
    let (client, mut handle) = kube_mock::client();
    let workload = deployment(json!({
        "dapr.io/enabled": "true", "dapr.io/app-id": "orders", "dapr.io/grpc-port": "50011"
    }));
    let Desired::Service(current) = reconciler::desired_service(&workload, true) else {
        panic!("a Service is desired");
    };
    let mut existing = serde_json::to_value(&*current).unwrap();
    existing["metadata"]["resourceVersion"] = json!("42");
    existing["spec"]["ports"][1]["port"] = json!(50001);
    existing["spec"]["clusterIPs"] = json!(["None"]);
    let scenario = tokio::spawn(async move {
        let (get, send) = next(&mut handle).await;
        assert_eq!(get.method(), Method::GET);
        kube_mock::respond_json(send, StatusCode::OK, &existing);
        let (put, send) = next(&mut handle).await;
        assert_eq!(put.method(), Method::PUT);
        assert_eq!(
            put.uri().path(),
            "/api/v1/namespaces/shop/services/orders-dapr"
        );
        let replaced = body_json(put).await;
        kube_mock::respond_json(send, StatusCode::OK, &replaced);
        (replaced, handle)
    });
    let ctx = Arc::new(Context::new(client, true));
    reconciler::reconcile(Arc::new(workload), ctx.clone())
        .await
        .expect("reconciled");
    drop(ctx);
    let (replaced, handle) = scenario.await.unwrap();
    no_more_calls(handle).await;
    assert_eq!(replaced["metadata"]["resourceVersion"], "42");
    assert_eq!(replaced["spec"]["clusterIPs"], json!(["None"]));
    assert_eq!(replaced["spec"]["ports"][1]["port"], 50011);
}

#[tokio::test]
async fn an_up_to_date_service_is_left_alone() {
    let (client, mut handle) = kube_mock::client();
    let workload = deployment(enabled("orders"));
    let Desired::Service(current) = reconciler::desired_service(&workload, true) else {
        panic!("a Service is desired");
    };
    let mut existing = serde_json::to_value(&*current).unwrap();
    existing["metadata"]["resourceVersion"] = json!("7");
    let scenario = tokio::spawn(async move {
        let (_get, send) = next(&mut handle).await;
        kube_mock::respond_json(send, StatusCode::OK, &existing);
        handle
    });
    let ctx = Arc::new(Context::new(client, true));
    reconciler::reconcile(Arc::new(workload), ctx.clone())
        .await
        .expect("reconciled");
    drop(ctx);
    no_more_calls(scenario.await.unwrap()).await;
}

#[tokio::test]
async fn workloads_that_do_not_enable_dapr_or_lack_a_valid_app_id_cause_no_api_calls() {
    let (client, handle) = kube_mock::client();
    let ctx = Arc::new(Context::new(client, true));
    for annotations in [
        json!({}),
        json!({"dapr.io/enabled": "false", "dapr.io/app-id": "orders"}),
        json!({"dapr.io/enabled": "true"}),
        json!({"dapr.io/enabled": "true", "dapr.io/app-id": "Not_Valid"}),
    ] {
        let action = reconciler::reconcile(Arc::new(deployment(annotations)), ctx.clone())
            .await
            .expect("nothing to do is not an error");
        assert_eq!(action, Action::await_change());
    }
    drop(ctx);
    no_more_calls(handle).await;
}

#[tokio::test]
async fn a_statefulset_gets_the_same_service_with_grpc_on_the_internal_port_when_mtls_is_off() {
    let (client, mut handle) = kube_mock::client();
    let scenario = tokio::spawn(async move {
        let (get, send) = next(&mut handle).await;
        assert_eq!(
            get.uri().path(),
            "/api/v1/namespaces/bank/services/ledger-dapr"
        );
        kube_mock::respond_json(
            send,
            StatusCode::NOT_FOUND,
            &kube_mock::not_found("services", "ledger-dapr"),
        );
        let (post, send) = next(&mut handle).await;
        let created = body_json(post).await;
        kube_mock::respond_json(send, StatusCode::CREATED, &created);
        (created, handle)
    });
    let ctx = Arc::new(Context::new(client, false));
    let annotations = json!({
        "dapr.io/enabled": "true", "dapr.io/app-id": "ledger", "dapr.io/enable-metrics": "false",
        "dapr.io/sidecar-svc-annotations": "team=payments, dapr.io/app-id=hijack"
    });
    reconciler::reconcile(Arc::new(statefulset(annotations)), ctx.clone())
        .await
        .expect("reconciled");
    drop(ctx);
    let (created, handle) = scenario.await.unwrap();
    no_more_calls(handle).await;
    assert_eq!(
        created["metadata"]["ownerReferences"][0]["kind"],
        "StatefulSet"
    );
    assert_eq!(
        created["spec"]["selector"],
        json!({"app": "ledger", "tier": "db"})
    );
    assert_eq!(created["spec"]["ports"][2]["appProtocol"], "grpc");
    assert_eq!(
        created["metadata"]["annotations"],
        json!({"dapr.io/app-id": "ledger", "team": "payments"}),
        "extra annotations may not override the fixed ones; no prometheus ones without metrics"
    );
}

#[tokio::test]
async fn api_errors_are_retried_with_exponential_backoff_reset_by_success() {
    let (client, mut handle) = kube_mock::client();
    let scenario = tokio::spawn(async move {
        for _ in 0..2 {
            let (_get, send) = next(&mut handle).await;
            kube_mock::respond_json(
                send,
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "etcd unavailable", "reason": "InternalError", "code": 500}),
            );
        }
        let (_get, send) = next(&mut handle).await;
        kube_mock::respond_json(
            send,
            StatusCode::NOT_FOUND,
            &kube_mock::not_found("services", "orders-dapr"),
        );
        let (post, send) = next(&mut handle).await;
        let created = body_json(post).await;
        kube_mock::respond_json(send, StatusCode::CREATED, &created);
        handle
    });
    let ctx = Arc::new(Context::new(client, true));
    let workload = Arc::new(deployment(enabled("orders")));
    let mut delays = Vec::new();
    for _ in 0..2 {
        let err = reconciler::reconcile(workload.clone(), ctx.clone())
            .await
            .expect_err("the API failed");
        delays.push(reconciler::error_policy(
            workload.clone(),
            &err,
            ctx.clone(),
        ));
    }
    assert_eq!(
        delays,
        [
            Action::requeue(Duration::from_secs(1)),
            Action::requeue(Duration::from_secs(2))
        ]
    );
    reconciler::reconcile(workload.clone(), ctx.clone())
        .await
        .expect("recovered");
    // Success resets the count: the next failure starts again at 1 s.
    let err = injector::Error::Timeout("test");
    assert_eq!(
        reconciler::error_policy(workload, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    drop(ctx);
    no_more_calls(scenario.await.unwrap()).await;
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    let delays: Vec<u64> = (1..=11).map(|n| reconciler::backoff(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    assert_eq!(reconciler::backoff(u32::MAX).as_secs(), 300);
}

#[test]
fn a_workload_being_deleted_gets_no_service() {
    let mut workload = deployment(enabled("orders"));
    workload.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
    assert!(matches!(
        reconciler::desired_service(&workload, true),
        Desired::Nothing(_)
    ));
}

/// With configuration readers on, the first workload of a namespace also gets the namespace's
/// `dapr-configuration-reader` RoleBinding (the namespace's service accounts, the chart's
/// ClusterRole); the binding is looked up once per namespace.
#[tokio::test]
async fn the_first_workload_of_a_namespace_gets_the_configuration_reader_binding_once() {
    let (client, mut handle) = kube_mock::client();
    let scenario = tokio::spawn(async move {
        let (get, send) = next(&mut handle).await;
        assert_eq!(
            get.uri().path(),
            "/api/v1/namespaces/shop/services/orders-dapr"
        );
        kube_mock::respond_json(
            send,
            StatusCode::NOT_FOUND,
            &kube_mock::not_found("services", "orders-dapr"),
        );
        let (post, send) = next(&mut handle).await;
        assert_eq!(post.uri().path(), "/api/v1/namespaces/shop/services");
        let created = body_json(post).await;
        kube_mock::respond_json(send, StatusCode::CREATED, &created);

        let (get, send) = next(&mut handle).await;
        assert_eq!(get.method(), Method::GET);
        assert_eq!(
            get.uri().path(),
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/dapr-configuration-reader"
        );
        kube_mock::respond_json(
            send,
            StatusCode::NOT_FOUND,
            &kube_mock::not_found("rolebindings", "dapr-configuration-reader"),
        );
        let (post, send) = next(&mut handle).await;
        assert_eq!(post.method(), Method::POST);
        assert_eq!(
            post.uri().path(),
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings"
        );
        let binding = body_json(post).await;
        kube_mock::respond_json(send, StatusCode::CREATED, &binding);

        // The second reconcile: the Service is up to date, the binding is not asked for again.
        let (get, send) = next(&mut handle).await;
        assert_eq!(
            get.uri().path(),
            "/api/v1/namespaces/shop/services/orders-dapr"
        );
        let Desired::Service(current) =
            reconciler::desired_service(&deployment(enabled("orders")), true)
        else {
            panic!("a Service is desired");
        };
        kube_mock::respond_json(
            send,
            StatusCode::OK,
            &serde_json::to_value(&*current).unwrap(),
        );
        (binding, handle)
    });
    let ctx = Arc::new(Context::new(client, true).with_configuration_readers(true));
    for _ in 0..2 {
        reconciler::reconcile(Arc::new(deployment(enabled("orders"))), ctx.clone())
            .await
            .expect("reconciled");
    }
    drop(ctx);
    let (binding, handle) = scenario.await.unwrap();
    no_more_calls(handle).await;
    assert_eq!(binding["metadata"]["name"], "dapr-configuration-reader");
    assert_eq!(binding["metadata"]["namespace"], "shop");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
               "name": "dapr-configuration-reader"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                "name": "system:serviceaccounts:shop"}])
    );
}
