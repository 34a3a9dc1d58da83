use clap::Parser;

use super::*;

#[test]
fn the_flag_definitions_are_consistent() {
    use clap::CommandFactory;
    Flags::command().debug_assert();
}

#[test]
fn upstream_flags_for_parts_we_lack_are_accepted_and_reported() {
    let c = config(&[
        "--app-id",
        "x",
        "--control-plane-address",
        "dapr-api.dapr-system.svc.cluster.local:443",
        "--placement-host-address",
        "",
        "--scheduler-host-address",
        "s:50006",
        "--read-buffer-size",
        "4Ki",
        "--enable-profiling",
    ])
    .unwrap();
    assert_eq!(
        c.ignored_flags,
        vec![
            "--control-plane-address",
            "--placement-host-address",
            "--scheduler-host-address",
            "--enable-profiling",
            "--read-buffer-size"
        ]
    );
}

#[test]
fn unix_domain_sockets_take_upstreams_names_and_must_fit_a_socket_address() {
    let c = config(&[
        "--app-id",
        "orders",
        "--unix-domain-socket",
        "/var/run/dapr-sockets",
    ])
    .unwrap();
    assert_eq!(
        c.api_sockets,
        Some(ApiSockets {
            http: "/var/run/dapr-sockets/dapr-orders-http.socket".into(),
            grpc: "/var/run/dapr-sockets/dapr-orders-grpc.socket".into(),
        })
    );
    assert_eq!(config(&["--app-id", "orders"]).unwrap().api_sockets, None);
    let deep = format!("/{}", "d".repeat(90));
    let e = config(&["--app-id", "orders", "--unix-domain-socket", &deep]).unwrap_err();
    assert!(
        e.to_string().contains("--unix-domain-socket") && e.to_string().contains("107 bytes"),
        "{e}"
    );
}

#[test]
fn the_operator_is_asked_only_in_kubernetes_mode_with_mtls_and_an_address() {
    let address = "dapr-api.dapr-system.svc.cluster.local:443";
    let with = |args: &[&str]| {
        let mut argv = vec!["daprd", "--app-id", "x", "--sentry-address", "s:443"];
        argv.extend_from_slice(args);
        Config::from_flags(
            Flags::try_parse_from(argv).expect("flags parse"),
            Env {
                trust_anchors: Some("-----BEGIN CERTIFICATE-----\n".into()),
                ..Env::default()
            },
        )
        .expect("config")
    };
    let c = with(&[
        "--mode",
        "kubernetes",
        "--enable-mtls",
        "--control-plane-address",
        address,
    ]);
    assert_eq!(c.operator_address.as_deref(), Some(address));
    assert!(!c.ignored_flags.contains(&"--control-plane-address"));
    for args in [
        &["--mode", "kubernetes", "--control-plane-address", address][..],
        &["--enable-mtls", "--control-plane-address", address][..],
        &["--mode", "kubernetes", "--enable-mtls"][..],
    ] {
        let c = with(args);
        assert_eq!(c.operator_address, None, "{args:?}");
    }
    let c = with(&["--mode", "kubernetes", "--control-plane-address", address]);
    assert!(c.ignored_flags.contains(&"--control-plane-address"));
}

fn config(args: &[&str]) -> Result<Config, StartError> {
    let mut argv = vec!["daprd"];
    argv.extend_from_slice(args);
    Config::from_flags(
        Flags::try_parse_from(argv).expect("flags parse"),
        Env::default(),
    )
}

#[test]
fn defaults_match_upstream() {
    let c = config(&["--app-id", "orders"]).unwrap();
    assert_eq!(c.mode, Mode::Standalone);
    assert_eq!((c.http_port, c.grpc_port), (3500, 50001));
    assert_eq!(c.app_protocol, AppProtocol::Http);
    assert_eq!(c.app_channel_address, "127.0.0.1");
    assert_eq!(c.app_port, None);
    assert_eq!(c.app_max_concurrency, None);
    assert_eq!(c.max_body_size, 4 << 20);
    assert_eq!(c.graceful_shutdown, Duration::from_secs(5));
    assert_eq!(c.namespace, "default");
    assert_eq!(c.metrics, Some((IpAddr::from([0, 0, 0, 0]), 9090)));
    assert_eq!(c.internal_grpc_port, derived_internal_port("orders"));
    assert_eq!(c.hostname, "localhost", "no host name known");
}

#[test]
fn kubernetes_mode_names_a_configuration_to_read_and_refuses_names_kubernetes_would() {
    let c = config(&[
        "--app-id",
        "a",
        "--mode",
        "kubernetes",
        "--config",
        "appconfig",
    ])
    .unwrap();
    assert_eq!(c.configuration_name.as_deref(), Some("appconfig"));
    assert_eq!(c.configuration.spec, Configuration::default().spec);
    for none in [vec![], vec!["--config", ""]] {
        let mut args = vec!["--app-id", "a", "--mode", "kubernetes"];
        args.extend(none);
        assert_eq!(config(&args).unwrap().configuration_name, None);
    }
    for bad in ["App_Config", "x-", "a..b", "x/y", &"a".repeat(254)] {
        let err = config(&["--app-id", "a", "--mode", "kubernetes", "--config", bad])
            .expect_err(bad)
            .to_string();
        assert!(
            err.contains("--config") && err.contains("object name"),
            "{err}"
        );
    }
    // Standalone mode reads a file, never the API.
    assert_eq!(config(&["--app-id", "a"]).unwrap().configuration_name, None);
}

#[test]
fn the_derived_internal_port_is_stable_and_in_upstreams_range() {
    let port = derived_internal_port("orders");
    assert_eq!(port, derived_internal_port("orders"));
    assert!((47300..48300).contains(&port));
    assert_ne!(port, derived_internal_port("checkout"));
}

#[test]
fn invalid_values_name_the_flag() {
    for (args, flag) in [
        (vec!["--app-id", "a.b"], "--app-id"),
        (vec!["--app-id", ""], "--app-id"),
        (vec!["--app-id", "a", "--app-port", "70000"], "--app-port"),
        (vec!["--app-id", "a", "--app-port", "3500"], "--app-port"),
        (
            vec!["--app-id", "a", "--max-body-size", "4Xi"],
            "--max-body-size",
        ),
        (
            vec!["--app-id", "a", "--dapr-listen-addresses", "nope"],
            "--dapr-listen-addresses",
        ),
        (
            vec!["--app-id", "a", "--config", "/does/not/exist.yaml"],
            "--config",
        ),
    ] {
        let err = config(&args).unwrap_err().to_string();
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn unknown_modes_and_protocols_are_usage_errors_naming_the_flag_and_its_values() {
    for (args, flag, values) in [
        (["--mode", "cloud"], "--mode", "standalone, kubernetes"),
        (
            ["--app-protocol", "ftp"],
            "--app-protocol",
            "http, https, grpc, grpcs, h2c",
        ),
    ] {
        let err = Flags::try_parse_from(["daprd", "--app-id", "a"].into_iter().chain(args))
            .expect_err("not a value");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue, "{args:?}");
        let text = err.to_string();
        assert!(text.contains(flag) && text.contains(values), "{text}");
    }
    assert_eq!(
        config(&["--app-id", "a", "--mode", "kubernetes"])
            .unwrap()
            .mode,
        Mode::Kubernetes
    );
    for protocol in ["http", "https", "grpc", "grpcs", "h2c"] {
        let c = config(&["--app-id", "a", "--app-protocol", protocol]).unwrap();
        assert_eq!(c.app_protocol.as_str(), protocol);
    }
}

#[test]
fn log_as_json_is_a_go_bool_flag() {
    for (args, json) in [
        (&[][..], false),
        (&["--log-as-json"][..], true),
        (&["--log-as-json=true"][..], true),
        (&["--log-as-json=false"][..], false),
    ] {
        let mut argv = vec!["--app-id", "a"];
        argv.extend_from_slice(args);
        assert_eq!(config(&argv).unwrap().log.log_as_json, json, "{args:?}");
    }
}

#[test]
fn protocols_are_case_insensitive_and_app_ssl_upgrades_them() {
    assert_eq!(
        config(&["--app-id", "a", "--app-protocol", "GRPC"])
            .unwrap()
            .app_protocol,
        AppProtocol::Grpc
    );
    assert_eq!(
        config(&["--app-id", "a", "--app-ssl"])
            .unwrap()
            .app_protocol,
        AppProtocol::Https
    );
    assert_eq!(
        config(&["--app-id", "a", "--app-ssl", "--app-protocol", "grpc"])
            .unwrap()
            .app_protocol,
        AppProtocol::Grpcs
    );
}

#[test]
fn quantities_parse_like_kubernetes() {
    assert_eq!(parse_quantity("16Mi"), Some(16 << 20));
    assert_eq!(parse_quantity("2M"), Some(2_000_000));
    assert_eq!(parse_quantity("1024"), Some(1024));
    assert_eq!(parse_quantity("Mi"), None);
    assert_eq!(parse_quantity("-1"), None);
}

#[test]
fn the_legacy_body_size_flag_applies_only_when_the_new_one_is_default() {
    let c = config(&["--app-id", "a", "--dapr-http-max-request-size", "16"]).unwrap();
    assert_eq!(c.max_body_size, 16 << 20);
    let c = config(&[
        "--app-id",
        "a",
        "--dapr-http-max-request-size",
        "16",
        "--max-body-size",
        "1Mi",
    ])
    .unwrap();
    assert_eq!(c.max_body_size, 1 << 20);
}
