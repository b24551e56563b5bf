//! `#[interleave]`: a `&self` method so marked runs while its grain awaits in another `&self`
//! call (a call back along the chain, or any caller's), instead of waiting behind it or failing
//! as a deadlock; a `&mut self` call still runs alone; interleaved calls are cut short by their
//! deadlines and a panic among them replaces the instance once they are done. Over the
//! simulated network, in virtual time.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use grainwire::server::context;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, GrainId, Server, ServerConfig};
use support::{paused, server_addr};

#[grainwire::grain]
trait Desk {
    /// Asks `other` to look at this desk (other -> this desk's `peek`), from a `&self` call.
    async fn ask(&self, other: DeskRef) -> Result<u32, String>;
    /// The same from a `&mut self` call.
    async fn ask_mut(&mut self, other: DeskRef) -> Result<u32, String>;
    /// The same, the other calling back `look` (not interleaving).
    async fn ask_look(&self, other: DeskRef) -> Result<u32, String>;
    /// Calls `desk.peek()` (or `look`).
    async fn visit(&self, desk: DeskRef, interleave: bool) -> Result<u32, String>;
    /// Interleaves: the count, bumped.
    #[interleave]
    async fn peek(&self) -> u32;
    /// Does not interleave.
    async fn look(&self) -> u32;
    /// Waits `ms`, then answers the count.
    async fn slow(&self, ms: u64) -> u32;
    /// Interleaves: waits `ms`, then answers.
    #[interleave]
    async fn slow_peek(&self, ms: u64) -> u32;
    /// Interleaves: panics.
    #[interleave]
    async fn boom(&self) -> u32;
    /// Exclusive: sets the count.
    async fn set(&mut self, n: u32);
}

struct DeskState {
    count: AtomicU32,
}

impl Desk for DeskState {
    async fn ask(&self, other: DeskRef) -> Result<u32, String> {
        let me: DeskRef = context().unwrap().this().unwrap();
        flat(other.visit(me, true).await)
    }

    async fn ask_mut(&mut self, other: DeskRef) -> Result<u32, String> {
        let me: DeskRef = context().unwrap().this().unwrap();
        flat(other.visit(me, true).await)
    }

    async fn ask_look(&self, other: DeskRef) -> Result<u32, String> {
        let me: DeskRef = context().unwrap().this().unwrap();
        flat(other.visit(me, false).await)
    }

    async fn visit(&self, desk: DeskRef, interleave: bool) -> Result<u32, String> {
        let r = if interleave { desk.peek().await } else { desk.look().await };
        r.map_err(|e| format!("{e:?}"))
    }

    async fn peek(&self) -> u32 {
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn look(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }

    async fn slow(&self, ms: u64) -> u32 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.count.load(Ordering::SeqCst)
    }

    async fn slow_peek(&self, ms: u64) -> u32 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.count.load(Ordering::SeqCst)
    }

    async fn boom(&self) -> u32 {
        panic!("boom")
    }

    async fn set(&mut self, n: u32) {
        *self.count.get_mut() = n;
    }
}

/// A call's application error as is, any other error as its debug form.
fn flat(r: Result<u32, CallError<String>>) -> Result<u32, String> {
    match r {
        Ok(n) => Ok(n),
        Err(CallError::Application(e)) => Err(e),
        Err(e) => Err(format!("{e:?}")),
    }
}

fn fleet(net: &SimNetwork, n: usize) -> Vec<Server> {
    (0..n)
        .map(|i| {
            let config = ServerConfig {
                server_id: Some(format!("s{i}")),
                peers: (0..n).filter(|j| *j != i).map(|j| server_addr(j).into()).collect(),
                ..ServerConfig::default()
            };
            Server::builder(config)
                .host(Desk::host(|_: &GrainId| DeskState { count: AtomicU32::new(0) }))
                .bind_sim(net, server_addr(i))
                .unwrap()
        })
        .collect()
}

fn run(test: impl AsyncFnOnce(Client) + 'static) {
    paused(async {
        let net = SimNetwork::new(
            31,
            SimConfig {
                delay: Duration::from_millis(3),
                loss: 0.03,
                duplicate: 0.02,
                reorder: 0.03,
                reorder_delay: Duration::from_millis(5),
                ..SimConfig::default()
            },
        );
        let servers = fleet(&net, 2);
        let client = Client::builder()
            .config(ClientConfig {
                default_timeout: Duration::from_secs(20),
                ..ClientConfig::default()
            })
            .servers([server_addr(0), server_addr(1)])
            .connect_sim(&net, "10.0.1.1:0".parse().unwrap())
            .await
            .unwrap();
        test(client.clone()).await;
        client.disconnect().await;
        for s in servers {
            s.shutdown().await;
        }
    });
}

fn is_deadlock(e: &str) -> bool {
    e.starts_with("Deadlock")
}

#[test]
fn a_call_back_interleaves_with_a_shared_call_and_not_with_an_exclusive_one() {
    run(async |c| {
        let (a, b): (DeskRef, DeskRef) = (c.grain(1), c.grain(2));
        // a.ask (&self) -> b.visit -> a.peek (#[interleave]): runs beside ask.
        assert_eq!(a.ask(b.clone()).await.unwrap(), 1);
        assert_eq!(a.ask(b.clone()).await.unwrap(), 2);
        // a.ask_look (&self) -> b.visit -> a.look (no #[interleave]): a deadlock, at once.
        let start = tokio::time::Instant::now();
        let Err(CallError::Application(e)) = a.ask_look(b.clone()).await else { panic!() };
        assert!(is_deadlock(&e), "{e}");
        assert!(start.elapsed() < Duration::from_secs(1));
        // a.ask_mut (&mut self) -> b.visit -> a.peek: the grain is held exclusively.
        let Err(CallError::Application(e)) = a.ask_mut(b.clone()).await else { panic!() };
        assert!(is_deadlock(&e), "{e}");
        assert_eq!(a.look().await.unwrap(), 2, "the refused calls did not run");
    });
}

#[test]
fn an_interleaving_call_joins_a_running_shared_call() {
    run(async |c| {
        let a: DeskRef = c.grain(7);
        a.set(10).await.unwrap();
        let start = tokio::time::Instant::now();
        let slow = tokio::spawn({
            let a = a.clone();
            async move { a.slow(2_000).await }
        });
        // Let the slow call start, then peek: it does not wait the 2 s.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.peek().await.unwrap(), 11);
        assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
        // A non-interleaving `&self` call waits behind it, as does an exclusive one.
        assert_eq!(a.look().await.unwrap(), 11);
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert_eq!(slow.await.unwrap().unwrap(), 11);
    });
}

#[test]
fn interleaved_calls_meet_their_deadlines_and_panics_replace_the_instance_after() {
    run(async |c| {
        let a: DeskRef = c.grain(9);
        a.set(5).await.unwrap();
        let start = tokio::time::Instant::now();
        let slow = tokio::spawn({
            let a = a.clone();
            async move { a.slow(1_000).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Joins the slow call, then is cut short by its deadline.
        let short = a.with_timeout(Duration::from_millis(200)).slow_peek(60_000).await;
        assert!(
            matches!(short, Err(CallError::Timeout | CallError::DeadlineExceeded)),
            "{short:?}"
        );
        // Joins, panics: only this call fails; the slow one finishes on the old instance.
        assert!(matches!(a.boom().await, Err(CallError::HandlerPanicked)));
        assert!(start.elapsed() < Duration::from_millis(900), "beside: {:?}", start.elapsed());
        assert_eq!(slow.await.unwrap().unwrap(), 5);
        // The instance was replaced after the shared turn: a fresh count.
        assert_eq!(a.look().await.unwrap(), 0);
    });
}
