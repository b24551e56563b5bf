//! A tiny flag parser for the examples (`--name value` pairs and positional words).

use std::collections::HashMap;

/// Parsed command line.
#[derive(Debug, Default)]
pub(crate) struct Args {
    flags: HashMap<String, Vec<String>>,
    /// Words that are not flags or their values.
    pub(crate) positional: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`; every `--flag` takes the next word as its value.
    pub(crate) fn parse(usage: &str) -> Self {
        let mut a = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(w) = it.next() {
            if w == "-h" || w == "--help" {
                println!("usage: {usage}");
                std::process::exit(0);
            }
            if let Some(name) = w.strip_prefix("--") {
                let v =
                    it.next().unwrap_or_else(|| fail(usage, &format!("--{name} needs a value")));
                a.flags.entry(name.to_string()).or_default().push(v);
            } else {
                a.positional.push(w);
            }
        }
        a
    }

    /// The last value of `--name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.flags.get(name).and_then(|v| v.last()).map(String::as_str)
    }

    /// Every value of `--name`, in order.
    #[allow(dead_code)] // not every example repeats a flag
    pub(crate) fn all(&self, name: &str) -> &[String] {
        self.flags.get(name).map_or(&[], Vec::as_slice)
    }

    /// `--name` parsed, or `default`.
    pub(crate) fn num<T: std::str::FromStr>(&self, usage: &str, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => {
                v.parse().unwrap_or_else(|_| fail(usage, &format!("--{name}: not a number: {v}")))
            }
        }
    }
}

/// Prints the problem and the usage, exits 2.
pub(crate) fn fail(usage: &str, problem: &str) -> ! {
    eprintln!("{problem}\nusage: {usage}");
    std::process::exit(2)
}
