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
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// With persistence: its directory (an append-only file written at every command).
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
        if binary().is_none() {
            if std::env::var_os("GRAINWIRE_REQUIRE_REDIS").is_some() {
                panic!("{test}: redis-server is not on PATH, and GRAINWIRE_REQUIRE_REDIS is set");
            }
            eprintln!(
                "\n*** SKIPPED {test}: redis-server is not on PATH (apt-get install redis-server) ***\n"
            );
            return None;
        }
        let mut r = Self { port: free_port(), child: None, dir: None };
        r.up();
        Some(r)
    }

    /// A running Redis that keeps its data across [`start_again`](Self::start_again) (an
    /// append-only file, synced at every write, in a directory of its own removed when it is
    /// dropped), or `None` as [`start`](Self::start) says.
    pub(crate) fn start_persistent(test: &str) -> Option<Self> {
        let mut r = Self::start(test)?;
        r.stop();
        let dir =
            std::env::temp_dir().join(format!("grainwire-redis-{}-{}", std::process::id(), r.port));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        r.dir = Some(dir);
        r.up();
        Some(r)
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn up(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        match &self.dir {
            Some(dir) => cmd
                .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
                .arg("--dir")
                .arg(dir),
            None => cmd.args(["--save", "", "--appendonly", "no"]),
        };
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
            let mut r = RedisServer::start(test)?;
            r.stop();
            let dir = std::env::temp_dir().join(format!(
                "grainwire-cluster-{}-{}",
                std::process::id(),
                r.port
            ));
            std::fs::create_dir_all(&dir).expect("a directory for redis-server");
            let child = Command::new("redis-server")
                .args(["--port", &r.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            r.child = Some(child);
            r.dir = Some(dir);
            let addr = SocketAddr::from(([127, 0, 0, 1], r.port));
            let start = Instant::now();
            while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
            nodes.push(r);
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
                let out = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
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
