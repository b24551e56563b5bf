//! Every routing decision is visible in `tracing` at debug level: which server, why, by which
//! strategy, among how many. (Its own test binary: the subscriber is the only one in the
//! process, so no other test's callsite cache interferes.)

use std::sync::{Arc, Mutex};

use grainwire::client::{Client, ConnectMode};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{Server, ServerConfig, ServerId};

mod support;
use support::addr;

#[grainwire::grain]
trait Echo {
    /// The server's id.
    async fn at(&mut self) -> String;
}

#[grainwire::grain]
trait Lobby {
    /// The server's id.
    async fn at(&mut self) -> String;
}

struct Here(String);

impl Echo for Here {
    async fn at(&mut self) -> String {
        self.0.clone()
    }
}

impl Lobby for Here {
    async fn at(&mut self) -> String {
        self.0.clone()
    }
}

/// Records events' fields as `name=value` text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::DEBUG
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut f = Fields(String::new());
        e.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn every_routing_decision_is_traced_with_its_reason() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build();
    rt.unwrap().block_on(async {
        let net = SimNetwork::new(1, SimConfig::default());
        let host = |id: &str, lobby: bool| {
            let config = ServerConfig { server_id: Some(id.into()), ..ServerConfig::default() };
            let name = id.to_string();
            let b = Server::builder(config).host(Echo::host(move |_| Here(name.clone())));
            let name = id.to_string();
            let b = if lobby { b.host(Lobby::host(move |_| Here(name.clone()))) } else { b };
            b.bind_sim(&net, addr(if lobby { "10.0.0.2:7000" } else { "10.0.0.1:7000" })).unwrap()
        };
        let _servers = (host("s0", false), host("s1", true));
        let client = Client::builder()
            .servers([addr("10.0.0.1:7000"), addr("10.0.0.2:7000")])
            .mode(ConnectMode::Multi)
            .connect_sim(&net, addr("10.0.1.1:0"))
            .await
            .unwrap();
        client.grain::<EchoRef>(1).at().await.unwrap();
        client.grain::<LobbyRef>(1).at().await.unwrap();
        let s0 = ServerId::new("s0");
        assert_eq!(client.grain::<EchoRef>(2).prefer(&s0).at().await.unwrap(), "s0");
    });
    let lines = capture.0.lock().unwrap().clone();
    let routed: Vec<&String> = lines.iter().filter(|l| l.contains("message=routed")).collect();
    assert_eq!(routed.len(), 3, "{lines:#?}");
    let (a, b, c) = (routed[0], routed[1], routed[2]);
    assert!(a.contains("reason=Strategy") && a.contains("strategy=\"consistent-hash\""), "{a}");
    assert!(a.contains("candidates=2"), "{a}");
    assert!(b.contains("server=s1") && b.contains("reason=Only"), "{b}");
    assert!(c.contains("server=s0") && c.contains("reason=Preferred"), "{c}");
}
