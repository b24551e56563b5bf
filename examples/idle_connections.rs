//! Memory held per idle established connection on the server side. The server runs in this
//! process; a child process (this same program, `--clients`) opens N connections to it, which
//! then stay idle with keepalives flowing. The server's heap is measured with a counting
//! allocator before the first connection and after a few idle seconds. Prints one JSON line.
//!
//! ```sh
//! cargo run --release --example idle_connections -- 1000
//! ```

// A global allocator is an `unsafe impl`; this one only forwards to `System` and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use grainwire::TransportConfig;
use grainwire::transport::{Endpoint, Event};

struct Counting;

/// Heap bytes allocated minus bytes freed, process-wide.
static NET: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments and only
// adds to an atomic counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        NET.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NET.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        NET.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

async fn clients(n: usize, addr: SocketAddr) {
    let mut held = Vec::new();
    for _ in 0..n {
        let ep = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), TransportConfig::default())
            .expect("bind");
        let c = ep.connect(addr).await.expect("connect");
        held.push((ep, c));
    }
    // Stay connected until the parent kills us.
    std::future::pending::<()>().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--clients") {
        let n = args[2].parse().expect("count");
        let addr = args[3].parse().expect("address");
        return clients(n, addr).await;
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let cfg = TransportConfig { max_connections: n + 10, ..TransportConfig::server() };
    let mut server = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), cfg).expect("bind");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = NET.load(Ordering::Relaxed);
    let mut child = Command::new(&args[0])
        .args(["--clients", &n.to_string(), &server.local_addr().to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the client process");
    let mut conns = Vec::with_capacity(n);
    let measure_own = NET.load(Ordering::Relaxed);
    while conns.len() < n {
        if let Some(Event::Connected(c)) = server.next_event().await {
            conns.push(c);
        }
    }
    // Idle, with keepalives, for a few intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while server.try_next_event().is_some() {}
    // The `conns` vector itself is the application's, not the transport's.
    let own = (conns.capacity() * std::mem::size_of::<grainwire::transport::Connection>()) as i64;
    let held = NET.load(Ordering::Relaxed) - base - own - (measure_own - base);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{{\"mode\":\"idle-memory\",\"connections\":{n},\"sessions\":{},\"server_heap_bytes\":{held},\"bytes_per_connection\":{}}}",
        server.session_count(),
        held / n as i64
    );
}
