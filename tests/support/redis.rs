//! A throwaway `redis-server` for one test: started on a free loopback port with no
//! persistence (or with an append-only file: `start_persistent`), stopped (killed) when
//! dropped, restartable on the same port (empty, as a crashed Redis without persistence comes
//! back; or with its data).
//!
//! Tests that need Redis call [`RedisServer::start`]. Without `redis-server` on PATH it says
//! loudly that the test is skipped and returns `None`, unless `GRAINWIRE_REQUIRE_REDIS` is set
//! (`.ci/run` sets it, and installs Redis): then a missing server fails the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// A replica of the Redis on this port.
    replica_of: Option<u16>,
    /// A node of a Redis Cluster (its state file in `dir`).
    cluster: bool,
    /// Its own directory, removed when it is dropped: for a node that is not a cluster's,
    /// persistence (an append-only file written at every command).
    dir: Option<std::path::PathBuf>,
}

/// A loopback port free now and never handed to another Redis of this test process: the
/// kernel may give a port that was just probed and released to the next probe, and two tests
/// starting their servers at once on one port would share (and kill) one Redis.
fn free_port() -> u16 {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Bounded: a handful of probes always finds a port no earlier test of ours took.
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
    panic!("no free loopback port for redis-server");
}

fn binary() -> Option<String> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| "redis-server".to_string())
}

impl RedisServer {
    /// A running Redis, or `None` (skipped, said loudly) when `redis-server` is missing.
    pub(crate) fn start(test: &str) -> Option<Self> {
        Self::configured(test, |_| {})
    }

    /// A Redis on a free port, set up by `setup` before it starts, or `None` as
    /// [`start`](Self::start) says.
    fn configured(test: &str, setup: impl FnOnce(&mut Self)) -> Option<Self> {
        if binary().is_none() {
            if std::env::var_os("GRAINWIRE_REQUIRE_REDIS").is_some() {
                panic!("{test}: redis-server is not on PATH, and GRAINWIRE_REQUIRE_REDIS is set");
            }
            eprintln!(
                "\n*** SKIPPED {test}: redis-server is not on PATH (apt-get install redis-server) ***\n"
            );
            return None;
        }
        let mut r =
            Self { port: free_port(), child: None, replica_of: None, cluster: false, dir: None };
        setup(&mut r);
        r.up();
        Some(r)
    }

    /// Gives it a directory of its own (removed when it is dropped).
    fn own_dir(&mut self) {
        let dir = std::env::temp_dir().join(format!(
            "grainwire-redis-{}-{}",
            std::process::id(),
            self.port
        ));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        self.dir = Some(dir);
    }

    /// A running Redis that keeps its data across [`start_again`](Self::start_again) (an
    /// append-only file, synced at every write, in a directory of its own removed when it is
    /// dropped), or `None` as [`start`](Self::start) says.
    pub(crate) fn start_persistent(test: &str) -> Option<Self> {
        Self::configured(test, Self::own_dir)
    }

    /// A replica of the Redis on loopback port `primary` (no persistence), in sync with it, or
    /// `None` as [`start`](Self::start) says.
    pub(crate) fn start_replica_of(test: &str, primary: u16) -> Option<Self> {
        let r = Self::configured(test, |r| r.replica_of = Some(primary))?;
        // In sync once its link to the primary is up (bounded: 10 s).
        let start = Instant::now();
        while !r.cli(&["info", "replication"]).contains("master_link_status:up") {
            assert!(start.elapsed() < Duration::from_secs(10), "the replica never synced");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(r)
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// What `redis-cli` prints for `args` sent to it.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (it comes with redis-server)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How far it has replicated (a replica) or written (a primary): `INFO replication`'s
    /// offset.
    pub(crate) fn replication_offset(&self) -> u64 {
        let info = self.cli(&["info", "replication"]);
        let field =
            if self.replica_of.is_some() { "slave_repl_offset:" } else { "master_repl_offset:" };
        info.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// What a failover does to a replica: it becomes a primary (`REPLICAOF NO ONE`), or
    /// follows another (`REPLICAOF`).
    pub(crate) fn follow(&mut self, primary: Option<&RedisServer>) {
        let port = primary.map(|p| p.port.to_string());
        let out = match &port {
            Some(p) => self.cli(&["replicaof", "127.0.0.1", p]),
            None => self.cli(&["replicaof", "no", "one"]),
        };
        assert!(out.starts_with("OK"), "REPLICAOF: {out}");
        self.replica_of = primary.map(|p| p.port);
    }

    fn up(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        match &self.dir {
            Some(dir) if self.cluster => cmd
                .args(["--cluster-enabled", "yes", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir),
            Some(dir) => cmd
                .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
                .arg("--dir")
                .arg(dir),
            None => cmd.args(["--save", "", "--appendonly", "no"]),
        };
        if let Some(primary) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = cmd
            .args(["--protected-mode", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        // Ready once it accepts connections (bounded: a redis-server that does not come up
        // within 10 s fails the test).
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it (its data is gone).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port: empty, or with what it had written if it was started
    /// persistent.
    pub(crate) fn start_again(&mut self) {
        self.stop();
        self.up();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A TCP proxy on a free loopback port in front of a Redis: what a failover's clients see
/// (HAProxy or DNS in front of Sentinel), or a replication link that can fall behind.
/// [`switch`](Self::switch) sends new connections to another Redis and cuts the open ones;
/// [`stall`](Self::stall) stops passing on what the Redis sends (it stays unread, and is
/// lost when the connection is cut). Runs on the test's runtime (a multi-threaded one, if the
/// test blocks); stopped when dropped.
pub(crate) struct Proxy {
    port: u16,
    backend: Arc<AtomicU16>,
    stalled: tokio::sync::watch::Sender<bool>,
    pipes: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the Redis on loopback port `backend`.
    pub(crate) async fn start(backend: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let to = Arc::new(AtomicU16::new(backend));
        let pipes = Arc::new(Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let (stalled, _) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn({
            let (to, pipes, stalled) = (to.clone(), pipes.clone(), stalled.clone());
            async move {
                while let Ok((down, _)) = listener.accept().await {
                    let backend = to.load(Ordering::SeqCst);
                    let stalled = stalled.subscribe();
                    let pipe = tokio::spawn(async move {
                        let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                        else {
                            return;
                        };
                        let ((down_r, down_w), (up_r, up_w)) = (down.into_split(), up.into_split());
                        let never = tokio::sync::watch::channel(false).1;
                        tokio::select! {
                            () = pump(down_r, up_w, never) => {}
                            () = pump(up_r, down_w, stalled) => {}
                        }
                    });
                    let mut pipes = pipes.lock().unwrap();
                    pipes.retain(|p| !p.is_finished());
                    pipes.push(pipe.abort_handle());
                }
            }
        });
        Self { port, backend: to, stalled, pipes, accept }
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// New connections go to the Redis on `backend`; open ones are cut.
    pub(crate) fn switch(&self, backend: u16) {
        self.backend.store(backend, Ordering::SeqCst);
        for p in self.pipes.lock().unwrap().drain(..) {
            p.abort();
        }
    }

    /// From now on, nothing the Redis sends is passed on.
    pub(crate) fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

/// Copies `from` to `to` until either ends, reading nothing while `stalled` says so.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 16 * 1024];
    loop {
        if *stalled.borrow_and_update() {
            if stalled.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = stalled.changed() => {}
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for p in self.pipes.lock().unwrap().drain(..) {
            p.abort();
        }
    }
}

/// A throwaway Redis Cluster: three `redis-server --cluster-enabled yes` on free loopback
/// ports (each with its own directory, removed when dropped), joined with `redis-cli
/// --cluster create` (no replicas), ready once every node says `cluster_state:ok`.
pub(crate) struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// A running cluster, or `None` (skipped, said loudly) as [`RedisServer::start`] says.
    pub(crate) fn start(test: &str) -> Option<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::configured(test, |r| {
                r.cluster = true;
                r.own_dir();
            })?);
        }
        let hosts: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&hosts)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (it comes with redis-server)");
        assert!(created.success(), "redis-cli --cluster create failed");
        // Ready once every node sees every slot served (bounded: 20 s).
        let start = Instant::now();
        for n in &nodes {
            loop {
                if n.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "the cluster never formed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(Self { nodes })
    }

    /// Its URL: every node.
    pub(crate) fn url(&self) -> String {
        let nodes: Vec<String> =
            self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://{}/", nodes.join(","))
    }
}
