//! The retry policy, against servers the test plays (`support::ScriptedServer`), in virtual
//! time: which answers are retried, to which server, after which backoff, with what remains
//! of the deadline; the attempt limit; per-method overrides (builder and config); retries
//! counted client-wide and per server; options that would retry a call that may have run are
//! refused.

use std::collections::BTreeMap;
use std::time::Duration;

use grainwire::client::{ClientError, RetryPolicy};
use grainwire::error::CallErrorKind;
use grainwire::proto::wire::rpc::Status;
use grainwire::topology::Backoff;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, ServerId};
use tokio::time::Instant;

mod support;
use support::{ScriptedServer, addr, answer};

#[grainwire::grain]
trait Counter {
    /// Adds `n`; returns the total.
    async fn add(&mut self, n: u64) -> u64;
    /// The same, with its own retry policy in some tests.
    async fn bump(&mut self, n: u64) -> u64;
}

const A: &str = "10.0.0.1:7000";
const B: &str = "10.0.0.2:7000";

fn net() -> SimNetwork {
    SimNetwork::new(4, SimConfig { delay: Duration::from_millis(1), ..SimConfig::default() })
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.0,
        },
        retry_on: vec![CallErrorKind::ShuttingDown, CallErrorKind::Overloaded],
        idempotent_after_loss: true,
    }
}

async fn client(net: &SimNetwork, config: ClientConfig) -> Client {
    Client::builder()
        .config(ClientConfig { seed: Some(1), default_timeout: Duration::from_secs(1), ..config })
        .servers([addr(A), addr(B)])
        .connect_sim(net, addr("10.0.1.1:1"))
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn refused_calls_go_elsewhere_after_the_backoff_with_what_remains_of_the_deadline() {
    let net = net();
    let mut a = ScriptedServer::start(&net, A, "a", &[CounterRef::info()]);
    let mut b = ScriptedServer::start(&net, B, "b", &[CounterRef::info()]);
    let c = client(&net, ClientConfig { retry: policy(3), ..ClientConfig::default() }).await;
    let r: CounterRef = c.grain(1);
    let r = r.prefer(&ServerId::new("a"));
    let call = tokio::spawn(async move { r.add(5).await });

    let (conn, id, head, _) = a.request().await;
    let t0 = Instant::now();
    assert_eq!(head.deadline_ms, Some(1000));
    tokio::time::sleep(Duration::from_millis(100)).await;
    answer(&conn, id, Status::Overloaded, &());
    // 50 ms later (the first backoff) it reaches b, with what remains of its deadline.
    let (conn, id, head, _) = b.request().await;
    let waited = t0.elapsed().as_millis();
    assert!((150..=155).contains(&waited), "reached b after {waited} ms");
    let left = head.deadline_ms.unwrap();
    assert!((840..=850).contains(&left), "the retry carries the remaining deadline: {left} ms");
    answer(&conn, id, Status::ShuttingDown, &());
    // The second backoff is 100 ms; it goes to another server than the last: a.
    let (conn, id, head, _) = a.request().await;
    let waited = t0.elapsed().as_millis();
    assert!((252..=260).contains(&waited), "back on a after {waited} ms");
    assert!(head.deadline_ms.unwrap() < left - 95);
    // The third attempt was the last.
    answer(&conn, id, Status::Overloaded, &());
    assert!(matches!(call.await.unwrap(), Err(CallError::Overloaded)));
    assert!(a.next_within(Duration::from_millis(500)).await.is_none(), "no fourth attempt");
    assert_eq!(c.stats().retries, 2);
    let per: BTreeMap<String, u64> =
        c.servers().iter().map(|s| (s.id.to_string(), s.calls.retries)).collect();
    assert_eq!(per, [("a".to_string(), 1), ("b".to_string(), 1)].into());
}

#[tokio::test(start_paused = true)]
async fn answers_that_may_have_run_and_methods_with_their_own_policy_are_not_retried() {
    let net = net();
    let mut a = ScriptedServer::start(&net, A, "a", &[CounterRef::info()]);
    let mut b = ScriptedServer::start(&net, B, "b", &[CounterRef::info()]);
    // `bump` never retries (by the config's method table); `add` does, by the client policy.
    let config = ClientConfig {
        retry: policy(3),
        retry_methods: [("Counter.bump".to_string(), RetryPolicy::never())].into(),
        ..ClientConfig::default()
    };
    let c = client(&net, config).await;
    let r: CounterRef = c.grain(1);
    let r = r.prefer(&ServerId::new("a"));
    let call = {
        let r = r.clone();
        tokio::spawn(async move { r.bump(1).await })
    };
    let (conn, id, _, _) = a.request().await;
    answer(&conn, id, Status::ShuttingDown, &());
    assert!(matches!(call.await.unwrap(), Err(CallError::ShuttingDown)));
    // A panicked handler ran: never retried.
    let call = {
        let r = r.clone();
        tokio::spawn(async move { r.add(1).await })
    };
    let (conn, id, _, _) = a.request().await;
    answer(&conn, id, Status::HandlerPanicked, &());
    assert!(matches!(call.await.unwrap(), Err(CallError::HandlerPanicked)));
    assert!(b.next_within(Duration::from_millis(300)).await.is_none(), "nothing went to b");
    assert_eq!(c.stats().retries, 0);

    // The builder's override replaces the config's for `bump`: retried now.
    let c = Client::builder()
        .config(ClientConfig {
            seed: Some(1),
            retry_methods: BTreeMap::new(),
            ..ClientConfig::default()
        })
        .retry(RetryPolicy::never())
        .retry_for::<CounterRef>("bump", policy(2))
        .servers([addr(A), addr(B)])
        .connect_sim(&net, addr("10.0.1.2:1"))
        .await
        .unwrap();
    let r: CounterRef = c.grain(1);
    let r = r.prefer(&ServerId::new("a"));
    let call = tokio::spawn(async move { r.bump(2).await });
    let (conn, id, _, _) = a.request().await;
    answer(&conn, id, Status::Overloaded, &());
    let (conn, id, _, _) = b.request().await;
    answer(&conn, id, Status::Ok, &7u64);
    assert_eq!(call.await.unwrap().unwrap(), 7);
    assert_eq!(c.stats().retries, 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_would_outlive_the_deadline_is_not_sent() {
    let net = net();
    let mut a = ScriptedServer::start(&net, A, "a", &[CounterRef::info()]);
    let mut b = ScriptedServer::start(&net, B, "b", &[CounterRef::info()]);
    let slow = RetryPolicy {
        backoff: Backoff { initial: Duration::from_millis(900), ..policy(3).backoff },
        ..policy(3)
    };
    let c = client(&net, ClientConfig { retry: slow, ..ClientConfig::default() }).await;
    let r: CounterRef = c.grain(1);
    let r = r.prefer(&ServerId::new("a"));
    let call = tokio::spawn(async move { r.add(1).await });
    let (conn, id, _, _) = a.request().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    answer(&conn, id, Status::Overloaded, &());
    // 800 ms remain, the backoff is 900: the call fails with the server's answer, at once.
    assert!(matches!(call.await.unwrap(), Err(CallError::Overloaded)));
    assert!(b.next_within(Duration::from_millis(1000)).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_policy_that_would_retry_a_call_that_may_have_run_is_refused() {
    let net = net();
    let _a = ScriptedServer::start(&net, A, "a", &[CounterRef::info()]);
    for bad in [
        RetryPolicy { retry_on: vec![CallErrorKind::Timeout], ..RetryPolicy::default() },
        RetryPolicy { retry_on: vec![CallErrorKind::Disconnected], ..RetryPolicy::default() },
        RetryPolicy { max_attempts: 0, ..RetryPolicy::default() },
    ] {
        let err = Client::builder()
            .retry(bad)
            .server(addr(A))
            .connect_sim(&net, addr("10.0.1.1:1"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Config { field: "retry", .. }), "{err:?}");
    }
    let err = Client::builder()
        .retry_for::<CounterRef>("nope", RetryPolicy::never())
        .server(addr(A))
        .connect_sim(&net, addr("10.0.1.1:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Config { field: "retry_for", .. }), "{err:?}");
}
