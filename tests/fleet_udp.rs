//! A client and three servers over real loopback UDP: routing by manifest and strategy, a
//! server stopping mid-run with calls continuing, and its return on the same address.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use grainwire::client::{ClientEvent, ConnectMode, RoundRobin, ServerAddr};
use grainwire::{Client, Server, ServerConfig};

mod support;
use support::until;

#[grainwire::grain]
trait Where {
    /// The id of the server that ran the call, and `n`.
    async fn at(&mut self, n: u64) -> (String, u64);
}

#[grainwire::grain]
trait Only {
    /// The id of the server that ran the call.
    async fn at(&mut self) -> String;
}

struct Here(String);

impl Where for Here {
    async fn at(&mut self, n: u64) -> (String, u64) {
        (self.0.clone(), n)
    }
}

impl Only for Here {
    async fn at(&mut self) -> String {
        self.0.clone()
    }
}

fn start(id: &str, addr: SocketAddr, only: bool) -> Server {
    let config = ServerConfig { server_id: Some(id.into()), ..ServerConfig::default() };
    let name = id.to_string();
    let b = Server::builder(config).host(Where::host(move |_| Here(name.clone())));
    let name = id.to_string();
    let b = if only { b.host(Only::host(move |_| Here(name.clone()))) } else { b };
    b.bind(addr).unwrap()
}

#[tokio::test]
async fn a_fleet_over_loopback_routes_survives_a_stop_and_takes_the_server_back() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut servers = vec![Some(start("a", any, false)), Some(start("b", any, true))];
    servers.push(Some(start("c", any, false)));
    let addrs: Vec<SocketAddr> = servers.iter().flatten().map(Server::local_addr).collect();
    let client = Client::builder()
        .servers(addrs.clone())
        .mode(ConnectMode::Multi)
        .strategy_for::<WhereRef>(RoundRobin)
        .connect()
        .await
        .unwrap();
    let mut events = client.events();
    assert_eq!(client.servers().len(), 3);
    // By manifest: only b hosts `Only`.
    for k in 0..10 {
        assert_eq!(client.grain::<OnlyRef>(k).at().await.unwrap(), "b");
    }
    // By strategy: round-robin over all three.
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for n in 0..30u64 {
        let (s, m) = client.grain::<WhereRef>(n as i64).at(n).await.unwrap();
        assert_eq!(m, n);
        *seen.entry(s).or_default() += 1;
    }
    assert_eq!(seen.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{seen:?}");

    // c stops gracefully while calls are in flight: none fails, they go to a and b.
    let caller = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for n in 0..300u64 {
                calls.push(client.grain::<WhereRef>(n as i64).at(n).await);
            }
            calls
        })
    };
    servers[2].take().unwrap().shutdown().await;
    until(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    for r in caller.await.unwrap() {
        r.unwrap();
    }
    for n in 0..20u64 {
        let (s, _) = client.grain::<WhereRef>(n as i64).at(n).await.unwrap();
        assert_ne!(s, "c");
    }

    // c returns on the same address: reconnected in the background, it takes calls again.
    servers[2] = Some(start("c", addrs[2], false));
    until(
        &mut events,
        |e| matches!(e, ClientEvent::Connected { server, .. } if server.0.as_ref() == "c"),
    )
    .await;
    let mut back = 0;
    for n in 0..30u64 {
        let (s, _) = client.grain::<WhereRef>(n as i64).at(n).await.unwrap();
        back += u32::from(s == "c");
    }
    assert_eq!(back, 10);
    client.disconnect().await;
    for s in servers.into_iter().flatten() {
        s.shutdown().await;
    }
}

/// Callers that retry in a tight loop while no server is connected yield on every failed call,
/// so the connection pool's reconnect (a task on the same thread) is not starved: the calls
/// succeed again soon after the server is back, long before the loops would end.
#[tokio::test]
async fn callers_spinning_without_a_server_do_not_starve_the_reconnect() {
    let first = start("spin", "127.0.0.1:0".parse().unwrap(), false);
    let addr = first.local_addr();
    let client = Client::builder().server(addr).connect().await.unwrap();
    let mut events = client.events();
    let r: WhereRef = client.grain(1);
    r.at(0).await.unwrap();
    first.shutdown().await;
    until(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    // The same address again (the old socket is closed by now).
    let _again = start("spin", addr, false);
    let mut callers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let r: WhereRef = client.grain(w);
        // Bounded: far more iterations than a reconnect needs when the pool gets to run.
        callers.spawn(async move {
            for i in 0..2_000_000u64 {
                if r.at(i).await.is_ok() {
                    return Some(i);
                }
            }
            None
        });
    }
    while let Some(done) = callers.join_next().await {
        assert!(done.unwrap().is_some(), "a caller never got through");
    }
}

/// Server addresses may be `host:port` names, resolved on every connect attempt (here
/// `localhost`, which the hosts file answers), at the start or added to a running client; and
/// IPv6 works as IPv4 does.
#[tokio::test]
async fn servers_given_by_name_or_over_ipv6_are_reached() {
    let a = start("a", "127.0.0.1:0".parse().unwrap(), false);
    let port = a.local_addr().port();
    let named: ServerAddr = format!("localhost:{port}").parse().unwrap();
    assert_eq!(named.to_string(), format!("localhost:{port}"));
    let client = Client::builder().server(named).connect().await.unwrap();
    assert_eq!(client.grain::<WhereRef>(1).at(1).await.unwrap(), ("a".to_string(), 1));
    assert_eq!(client.servers()[0].addr, a.local_addr(), "the name resolved to its address");

    // A second server, by name, on the running client.
    let b = start("b", "127.0.0.1:0".parse().unwrap(), true);
    let named: ServerAddr = format!("localhost:{}", b.local_addr().port()).parse().unwrap();
    let info = client.add_server(named).await.unwrap();
    assert_eq!((info.id.0.as_ref(), info.addr), ("b", b.local_addr()));
    assert_eq!(client.grain::<OnlyRef>(1).at().await.unwrap(), "b");

    // IPv6 loopback.
    let v6 = start("v6", "[::1]:0".parse().unwrap(), false);
    let client6 = Client::builder().server(v6.local_addr()).connect().await.unwrap();
    assert_eq!(client6.grain::<WhereRef>(2).at(2).await.unwrap(), ("v6".to_string(), 2));

    // What does not parse is a typed error naming it.
    for bad in ["localhost", "host:port", ":7000", "a b:1", ""] {
        assert!(bad.parse::<ServerAddr>().is_err(), "{bad:?} parsed");
    }
}
