//! Failover without failed calls: four servers sharing a grain directory, sixteen callers
//! calling sixty-four grains, one server dies (its socket gone at once, as with SIGKILL). Only
//! calls that were pending on it may fail; its grains are served elsewhere once its peers
//! found it dead (a quorum of two votes: each finds it silent for its health timeout); calls
//! made meanwhile wait for that, within their deadlines, instead of failing
//! `ServerUnavailable`. A single server that finds a live peer unreachable takes nothing from
//! it. Over the simulated network, on virtual time.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::directory::{GrainDirectory, MemoryDirectory};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, GrainId, Server, ServerConfig};
use support::{paused, server_addr};

#[grainwire::grain]
trait Tally {
    /// Adds `n`: not idempotent.
    async fn add(&mut self, n: u64) -> u64;
}

#[derive(Default)]
struct TallyState {
    sum: u64,
}

impl Tally for TallyState {
    async fn add(&mut self, n: u64) -> u64 {
        self.sum += n;
        self.sum
    }
}

fn fleet(net: &SimNetwork, directory: &Arc<dyn GrainDirectory>, n: usize) -> Vec<Server> {
    let peers: Vec<_> = (0..n).map(|i| server_addr(i).into()).collect();
    (0..n)
        .map(|i| {
            let config = ServerConfig {
                server_id: Some(format!("s{i}")),
                peers: peers.clone(),
                ..ServerConfig::default()
            };
            Server::builder(config)
                .directory(directory.clone())
                .host(Tally::host(|_: &GrainId| TallyState::default()))
                .bind_sim(net, server_addr(i))
                .unwrap()
        })
        .collect()
}

/// What the callers saw: calls ok, failures by kind, the longest any caller waited between two
/// answered calls.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    failed: BTreeMap<String, u64>,
    longest_gap: Duration,
}

#[test]
fn a_dead_servers_grains_come_back_and_only_its_pending_calls_fail() {
    paused(async {
        let net = SimNetwork::new(
            7,
            SimConfig { delay: Duration::from_millis(1), ..SimConfig::default() },
        );
        let directory: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
        let mut servers = fleet(&net, &directory, 4);
        let c = support::fleet_client(&net, "10.0.1.1:5000", 4).await;
        // Every grain activated once, spread over the four.
        for k in 0..64i64 {
            c.grain::<TallyRef>(k).add(0).await.unwrap();
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut callers = Vec::new();
        for i in 0..16i64 {
            let (c, seen, stop) = (c.clone(), seen.clone(), stop.clone());
            callers.push(tokio::spawn(async move {
                let mut last = tokio::time::Instant::now();
                let mut n = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let g: TallyRef = c.grain((i * 4 + n % 4) % 64);
                    n += 1;
                    let r = g.add(1).await;
                    {
                        let mut s = seen.lock().unwrap();
                        match r {
                            Ok(_) => {
                                s.ok += 1;
                                let now = tokio::time::Instant::now();
                                s.longest_gap = s.longest_gap.max(now - last);
                                last = now;
                            }
                            Err(e) => *s.failed.entry(format!("{:?}", e.kind())).or_default() += 1,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // s2 dies: its socket is gone at once and its process does nothing more.
        let dead = servers.remove(2);
        let pending_on_it =
            c.servers().iter().find(|s| s.id.0.as_ref() == "s2").map_or(0, |s| s.pending);
        net.kill(server_addr(2));
        std::mem::forget(dead);
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in callers {
            t.await.unwrap();
        }
        let s = std::mem::take(&mut *seen.lock().unwrap());
        let failed: u64 = s.failed.values().sum();
        eprintln!("{s:?}; pending on the dead server when it died: {pending_on_it}");
        assert!(s.ok > 1_000, "calls went on: {s:?}");
        assert!(!s.failed.contains_key("ServerUnavailable"), "{s:?}");
        // Each caller has one call in flight: at most one each failed with it.
        assert!(failed <= 16, "only calls pending on the dead server fail: {s:?}");
        // Its grains were served again within the health timeout (3 s) and a few round trips.
        assert!(s.longest_gap <= Duration::from_millis(3_500), "{s:?}");
        // Every grain is served again, by the three left.
        for k in 0..64i64 {
            assert!(c.grain::<TallyRef>(k).add(0).await.is_ok(), "grain {k}");
        }
    });
}

/// One server that cannot reach a live peer (its link cut) does not take that peer's grains:
/// its vote alone is no quorum, so calls through it are redirected to the owner, as before.
#[test]
fn one_server_alone_declares_nobody_dead() {
    paused(async {
        let net = SimNetwork::new(
            8,
            SimConfig { delay: Duration::from_millis(1), ..SimConfig::default() },
        );
        let directory: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
        let servers = fleet(&net, &directory, 3);
        let c = support::fleet_client(&net, "10.0.1.1:5000", 3).await;
        let on0 = c.grain::<TallyRef>(1).require(servers[0].server_id());
        assert_eq!(on0.add(1).await.unwrap(), 1);
        // s1 cannot hear s0: every link from s0's host to s1's is cut (the servers' ports and
        // their fleet clients', which the simulated network numbers from 40000), so s1's fleet
        // client finds s0 unreachable.
        let cut = SimConfig { loss: 1.0, ..SimConfig::default() };
        let ports = || std::iter::once(7000).chain(40000..40024);
        for from in ports() {
            for to in ports() {
                let from = std::net::SocketAddr::new(server_addr(0).ip(), from);
                net.set_link(from, std::net::SocketAddr::new(server_addr(1).ip(), to), cut.clone());
            }
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        // A call for the grain through s1: redirected to s0, still its owner.
        let via1 = c.grain::<TallyRef>(1).require(servers[1].server_id());
        match via1.add(1).await {
            Ok(n) => assert_eq!(n, 2, "served by its owner after the redirect"),
            Err(CallError::RedirectLoop) | Err(CallError::ServerUnavailable(_)) => {}
            Err(e) => panic!("{e}"),
        }
        assert_eq!(on0.add(0).await.unwrap(), 2, "s0 still owns it, with its state");
        assert_eq!(servers[1].activation_count(), 0, "s1 took nothing");
    });
}
