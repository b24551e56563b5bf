//! Options from files: every option round-trips through TOML and JSON, the sample files in
//! `config/` load (and state the defaults), unknown fields are refused by name, durations are
//! human-readable, and a connection string covers the common case.

use std::time::Duration;

use grainwire::client::{ConnectMode, RetryPolicy, ServerAddr, StrategyName};
use grainwire::config::{ConfigFile, ConfigFileError};
use grainwire::error::CallErrorKind;
use grainwire::server::{AuthConfig, DirectoryConfig, KeyFile, MetaValue};
use grainwire::topology::redis::MembershipConfig;
use grainwire::topology::{Backoff, DiscoveryConfig};
use grainwire::{ClientConfig, ServerConfig, TransportConfig};

/// A transport config with every field away from its default (no `..default()`: a new
/// option must be added here).
fn odd_transport() -> TransportConfig {
    let d = TransportConfig::default();
    let ms = Duration::from_millis;
    TransportConfig {
        max_datagram_size: d.max_datagram_size - 100,
        initial_rtt: ms(77),
        min_rto: ms(31),
        max_rto: ms(2900),
        max_ack_delay: ms(11),
        ack_frequency: d.ack_frequency + 1,
        send_buffer: d.send_buffer / 2,
        receive_window: d.receive_window / 2,
        stream_window: d.stream_window / 2,
        max_message_size: d.max_message_size / 2,
        keepalive_interval: ms(1500),
        idle_timeout: ms(15_000),
        stall_timeout: ms(12_000),
        handshake_timeout: ms(2500),
        handshake_retry: ms(300),
        close_linger: ms(700),
        max_connections: d.max_connections + 1,
        max_connections_per_ip: d.max_connections_per_ip + 1,
        handshake_rate_per_ip: d.handshake_rate_per_ip + 1,
        initial_window_packets: d.initial_window_packets + 1,
        min_window_packets: d.min_window_packets + 1,
        max_window: d.max_window / 2,
        cookie_lifetime: ms(9000),
        accept_incoming: !d.accept_incoming,
        max_datagrams_per_poll: d.max_datagrams_per_poll + 1,
        batched_io: !d.batched_io,
        gso_segments: d.gso_segments + 7,
        event_backlog: d.event_backlog + 1,
        socket_buffer_size: d.socket_buffer_size + 1,
        max_receive_buffered: d.max_receive_buffered / 2,
        seed: Some(42),
    }
}

fn odd_client() -> ClientConfig {
    let ms = Duration::from_millis;
    ClientConfig {
        servers: vec!["10.0.0.1:7777".parse().unwrap(), "eu-1.example.net:7777".parse().unwrap()],
        cluster_id: "eu-prod".into(),
        service_id: "racing".into(),
        transport: odd_transport(),
        default_timeout: ms(1234),
        connect_timeout: ms(2345),
        max_pending_calls: 77,
        grain_stream_window: 99,
        mode: ConnectMode::OnDemand,
        reconnect_min: ms(150),
        reconnect_max: ms(9000),
        health_timeout: ms(4500),
        latency_decay: ms(20_000),
        seed: Some(7),
        discovery: DiscoveryConfig {
            seeds: vec!["eu-2.example.net:7777".parse().unwrap()],
            redis: Vec::new(),
            interval: ms(2500),
            timeout: ms(750),
            max_attempts: 4,
            backoff: Backoff { initial: ms(50), max: ms(3000), factor: 1.5, jitter: 0.25 },
            refresh_on: vec![CallErrorKind::Timeout, CallErrorKind::Disconnected],
            min_refresh_interval: ms(300),
        },
        retry: RetryPolicy {
            max_attempts: 4,
            backoff: Backoff { initial: ms(20), max: ms(800), factor: 3.0, jitter: 0.5 },
            retry_on: vec![CallErrorKind::Overloaded],
            idempotent_after_loss: false,
        },
        retry_methods: [("Player.hit".to_string(), RetryPolicy::never())].into(),
        strategy: Some(StrategyName::TieredRoundRobin),
        strategies: [("Player".to_string(), StrategyName::LowestLatency)].into(),
        location_cache: 77,
    }
}

fn odd_server() -> ServerConfig {
    let d = ServerConfig::default();
    let ms = Duration::from_millis;
    ServerConfig {
        server_id: Some("eu-1".into()),
        cluster_id: "eu-prod".into(),
        service_id: "racing".into(),
        weight: 3,
        priority: 2,
        metadata: [
            ("datacenter".into(), MetaValue::from("eu-west")),
            ("build".into(), MetaValue::from(1042i64)),
            ("canary".into(), MetaValue::from(true)),
        ]
        .into(),
        transport: TransportConfig { accept_incoming: true, ..odd_transport() },
        idle_deactivation: ms(60_000),
        max_pending_per_connection: d.max_pending_per_connection + 1,
        max_pending_bytes_per_connection: d.max_pending_bytes_per_connection + 1,
        max_pending_calls: d.max_pending_calls + 1,
        max_pending_bytes: d.max_pending_bytes + 1,
        max_queued_answer_bytes: d.max_queued_answer_bytes + 1,
        max_activations: d.max_activations + 1,
        max_activation_bytes: d.max_activation_bytes + 1,
        max_activations_per_connection: d.max_activations_per_connection + 1,
        observer_grace: ms(2500),
        max_observers_per_session: d.max_observers_per_session + 1,
        max_observer_calls_per_session: d.max_observer_calls_per_session + 1,
        max_watches_per_session: d.max_watches_per_session + 1,
        max_grain_streams_per_session: d.max_grain_streams_per_session + 1,
        max_grain_stream_window: d.max_grain_stream_window + 1,
        default_deadline: ms(3000),
        shutdown_timeout: ms(4000),
        advertise: Some("game-eu-1.example.net:7777".parse().unwrap()),
        peers: vec!["10.0.0.2:7777".parse().unwrap()],
        membership: MembershipConfig {
            redis: Some("redis://127.0.0.1:6380/2".into()),
            ttl: ms(9000),
            heartbeat: ms(1500),
        },
        directory: DirectoryConfig {
            enabled: Some(false),
            lease: ms(12_000),
            timeout: ms(900),
            remembered_redirects: 5,
        },
        auth: AuthConfig::Tokens {
            keys: vec![
                KeyFile { id: 2, file: "/etc/grainwire/key-2.hex".into() },
                KeyFile { id: 3, file: "/etc/grainwire/key-3.hex".into() },
            ],
            tokens_remembered: 1000,
        },
    }
}

#[test]
fn every_option_round_trips_through_toml_and_json() {
    assert_ne!(odd_transport(), TransportConfig::default());
    let c = odd_client();
    assert_eq!(ClientConfig::from_toml(&c.to_toml()).unwrap(), c);
    assert_eq!(ClientConfig::from_json(&c.to_json()).unwrap(), c);
    let s = odd_server();
    assert_eq!(ServerConfig::from_toml(&s.to_toml()).unwrap(), s);
    assert_eq!(ServerConfig::from_json(&s.to_json()).unwrap(), s);
    // Durations are written as people read them.
    assert!(c.to_toml().contains("default_timeout = \"1234ms\""), "{}", c.to_toml());
    assert!(s.to_json().contains("\"shutdown_timeout\": \"4s\""), "{}", s.to_json());
}

#[test]
fn the_sample_files_load_and_state_the_defaults() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    assert_eq!(ClientConfig::load(format!("{dir}/client.toml")).unwrap(), ClientConfig::default());
    assert_eq!(ServerConfig::load(format!("{dir}/server.toml")).unwrap(), ServerConfig::default());
    assert_eq!(ClientConfig::load(format!("{dir}/client.json")).unwrap(), ClientConfig::default());
}

/// Writes the sample files from the defaults (run by hand after an option changes:
/// `cargo test --test config_files -- --ignored`).
#[test]
#[ignore = "writes files; run by hand to refresh the samples"]
fn write_sample_files() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let head = "# Every option with its default (grainwire::config::ConfigFile loads this file).\n\
                # Durations: \"250ms\", \"5s\", \"2m\" (units ns, us, ms, s, m, h) or a number of ms.\n\
                # Leave out what you do not change; unknown fields are an error.\n\n";
    std::fs::write(
        format!("{dir}/client.toml"),
        format!("{head}{}", ClientConfig::default().to_toml()),
    )
    .unwrap();
    std::fs::write(
        format!("{dir}/server.toml"),
        format!("{head}{}", ServerConfig::default().to_toml()),
    )
    .unwrap();
    std::fs::write(format!("{dir}/client.json"), ClientConfig::default().to_json() + "\n").unwrap();
}

#[test]
fn what_is_wrong_is_named() {
    let e = ClientConfig::from_toml("defualt_timeout = \"5s\"").unwrap_err();
    assert!(matches!(e, ConfigFileError::Invalid { .. }));
    assert!(e.to_string().contains("defualt_timeout"), "{e}");
    let e = ServerConfig::from_json(r#"{"transport": {"max_rto": "soon"}}"#).unwrap_err();
    assert!(e.to_string().contains("not a duration"), "{e}");
    let e = ClientConfig::from_toml("servers = [\"no port\"]").unwrap_err();
    assert!(e.to_string().contains("not a server address"), "{e}");
    // Partial files keep the defaults for the rest; a bare number is milliseconds.
    let c = ClientConfig::from_toml("connect_timeout = 2500\nmode = \"single\"").unwrap();
    assert_eq!((c.connect_timeout, c.mode), (Duration::from_millis(2500), ConnectMode::Single));
    assert_eq!(c.default_timeout, ClientConfig::default().default_timeout);
    let missing = ClientConfig::load("/nonexistent/client.toml").unwrap_err();
    assert!(matches!(missing, ConfigFileError::Io { .. }), "{missing}");
    let format =
        ClientConfig::load(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap_err();
    assert!(matches!(format, ConfigFileError::Format(_)), "{format}");
}

#[test]
fn a_connection_string_covers_the_common_case() {
    let c = ClientConfig::from_connection_string(
        "eu-1.example.net:7777, 10.0.0.2:7777;mode=multi;cluster=eu-prod;service=racing;timeout=2s;connect_timeout=500ms;seed=9",
    )
    .unwrap();
    let want: Vec<ServerAddr> =
        vec!["eu-1.example.net:7777".parse().unwrap(), "10.0.0.2:7777".parse().unwrap()];
    assert_eq!(c.servers, want);
    assert_eq!(
        (c.mode, c.cluster_id.as_str(), c.service_id.as_str()),
        (ConnectMode::Multi, "eu-prod", "racing")
    );
    assert_eq!(
        (c.default_timeout, c.connect_timeout, c.seed),
        (Duration::from_secs(2), Duration::from_millis(500), Some(9))
    );
    for bad in
        ["", ";mode=multi", "a:1;mode=sometimes", "a:1;colour=blue", "a:1;timeout=soon", "a:1;mode"]
    {
        assert!(ClientConfig::from_connection_string(bad).is_err(), "{bad:?}");
    }
}
