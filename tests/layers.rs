//! The crate's dependency rules, checked on its sources: which modules each layer may name
//! through `crate::`. The README's architecture section states the same rules.
//!
//! * `proto` (the sans-IO core) names nothing outside itself;
//! * `sync` and `arena` (small utilities) name nothing in the crate;
//! * `config`, `error` and `interface` name only `proto` (and each other);
//! * `transport` names `proto`, `config`, `error`, `sync`;
//! * `topology` (source traits, Redis membership) names `proto`, `config`, `error`, `sync`;
//! * `rpc` (the role-neutral half of RPC: references, calls, dispatch, the encoders) names
//!   `proto`, `config`, `error`, `sync`, `arena`, `interface`, `transport`; never `client` or
//!   `server`;
//! * `client` and `server` name those, `rpc`, `topology` (and `server` `directory`); `client`
//!   never names `server`, and `server` names `client` in one module only, `server/grains.rs`
//!   (a server is a client of its fleet: how its grains call grains);
//! * `grain` (the public face) and `__private` (the facade of generated code) are named by
//!   nothing in the crate.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source names as `crate::<module>`, outside comments.
fn named(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in source.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: every first segment inside the braces.
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                for item in inner.split(',') {
                    let first = item.trim().split("::").next().unwrap_or("").trim();
                    if !first.is_empty() {
                        names.insert(first.to_string());
                    }
                }
            } else {
                let end =
                    rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                names.insert(rest[..end].to_string());
            }
        }
    }
    names
}

/// The layer a source file belongs to: its top-level module.
fn layer(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

fn allowed(layer: &str) -> Option<&'static [&'static str]> {
    Some(match layer {
        "proto" => &["proto"],
        "sync" | "arena" => &[],
        "config" | "error" | "interface" => &["proto", "config", "error"],
        // A facade: the token API, and the security types of the layers that use them.
        "auth" => &["proto", "config", "error", "auth", "server", "transport"],
        "transport" => &["proto", "config", "error", "sync", "transport"],
        "redis_conn" => &[],
        "topology" => &["proto", "config", "error", "sync", "redis_conn", "topology"],
        "directory" => &["proto", "config", "error", "sync", "redis_conn", "directory"],
        "persistence" => {
            &["proto", "config", "error", "sync", "redis_conn", "directory", "persistence"]
        }
        "rpc" => &["proto", "config", "error", "sync", "arena", "interface", "transport", "rpc"],
        "client" => &[
            "proto",
            "config",
            "error",
            "sync",
            "arena",
            "interface",
            "transport",
            "topology",
            "rpc",
            "client",
        ],
        "server" => &[
            "proto",
            "config",
            "error",
            "sync",
            "arena",
            "interface",
            "transport",
            "topology",
            "directory",
            "persistence",
            "rpc",
            "server",
        ],
        "grain" => &["proto", "interface", "client", "error", "rpc"],
        // The crate root, the generated code's facade and the test-only helpers may name
        // anything.
        "lib" | "private" | "testing" | "fuzz" => return None,
        other => panic!("a new top-level module `{other}`: give it a rule here and in the README"),
    })
}

#[test]
fn every_module_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 30, "read the sources: {} files", files.len());
    let mut broken = Vec::new();
    for file in &files {
        let layer = layer(&src, file);
        let text = fs::read_to_string(file).unwrap();
        for name in named(&text) {
            // Every module's unit tests share the crate root's test clock.
            if name == "test_epoch" {
                continue;
            }
            if name == "grain" || name == "__private" {
                broken.push(format!(
                    "{}: names `crate::{name}`, which nothing imports",
                    file.display()
                ));
                continue;
            }
            // A server's grains call grains through its own client of the fleet.
            let fleet_client = layer == "server"
                && name == "client"
                && file.ends_with(Path::new("server").join("grains.rs"));
            if let Some(ok) = allowed(&layer)
                && !ok.contains(&name.as_str())
                && !fleet_client
            {
                broken.push(format!("{} ({layer}): names `crate::{name}`", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "layer rules broken:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_sees_what_it_must() {
    let names =
        named("use crate::{proto::ids, sync};\nlet x = crate::client::X; // crate::server\n");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["client", "proto", "sync"]);
}

/// Only the modules that implement something over Redis name the `redis` crate (the one
/// connection and script runner in `redis_conn.rs`, the membership and the source in
/// `topology/redis.rs`, the grain directory in `directory/redis.rs`, grain state in
/// `persistence/redis.rs`, reminders in `persistence/reminders.rs`), laminar stays in
/// `transport/laminar`, and `quinn_udp` (batched datagram I/O) in `transport/io.rs`.
#[test]
fn redis_and_laminar_are_named_only_where_they_are_implemented() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let text = fs::read_to_string(file).unwrap();
        let code: String = text
            .lines()
            .map(|l| l.find("//").map_or(l, |i| &l[..i]))
            .collect::<Vec<_>>()
            .join("\n");
        let over_redis = [
            "redis_conn.rs",
            "topology/redis.rs",
            "directory/redis.rs",
            "persistence/redis.rs",
            "persistence/reminders.rs",
        ];
        if names_crate(&code, "redis") && !over_redis.contains(&rel.as_str()) {
            broken.push(format!("{rel} names the redis crate"));
        }
        if names_crate(&code, "laminar") && !rel.starts_with("transport/laminar/") {
            broken.push(format!("{rel} names laminar"));
        }
        if names_crate(&code, "quinn_udp") && rel != "transport/io.rs" {
            broken.push(format!("{rel} names quinn_udp"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// Whether `code` has a path starting with `krate::` (not `our::module::krate::`).
fn names_crate(code: &str, krate: &str) -> bool {
    let needle = format!("{krate}::");
    code.match_indices(&needle).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        !before.is_some_and(|c| c == ':' || c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn the_crate_name_check_sees_what_it_must() {
    assert!(names_crate("let c = redis::Client::open(u);", "redis"));
    assert!(names_crate("use redis::aio;", "redis"));
    assert!(!names_crate("use crate::topology::redis::X;", "redis"));
    assert!(!names_crate("let my_redis::x;", "redis"));
}
