//! Parses JSON documents with each document's allocations in a region of its own, and
//! prints per-document gauges: how many blocks parsing took, how many bytes, the peak.
//!
//! Run with `cargo run --example jsonparse FILE..` (with no file, it parses a built-in
//! sample).

use serde_json::Value;
use stratalloc::layers::{Chunk, Mmap, Stats};
use stratalloc::{Region, Router, region};

#[global_allocator]
static ROUTER: Router = Router::new();

const SAMPLE: &str = r#"{"name": "stratalloc", "layers": ["mmap", "chunk", "batch", "stats",
  "check"], "regions": {"enter": true, "escape": true, "depth": 16},
  "numbers": [1, 2.5, -3, 4e10, null, false]}"#;

/// Counts the values in a document and its nesting depth.
fn shape(value: &Value) -> (usize, usize) {
    match value {
        Value::Array(items) => items
            .iter()
            .map(shape)
            .fold((1, 1), |(n, d), (cn, cd)| (n + cn, d.max(cd + 1))),
        Value::Object(fields) => fields
            .values()
            .map(shape)
            .fold((1, 1), |(n, d), (cn, cd)| (n + cn, d.max(cd + 1))),
        _ => (1, 1),
    }
}

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let documents: Vec<(String, String)> = if files.is_empty() {
        println!("no file given: parsing a built-in sample");
        vec![("sample".into(), SAMPLE.into())]
    } else {
        files
            .into_iter()
            .map(|file| {
                let text = std::fs::read_to_string(&file)
                    .unwrap_or_else(|error| panic!("cannot read {file}: {error}"));
                (file, text)
            })
            .collect()
    };
    for (name, text) in &documents {
        let document = Region::new(Stats::new(Chunk::<_, 65536>::new(Mmap::new())));
        let outcome = region::enter(&document, || {
            serde_json::from_str::<Value>(text).map(|value| shape(&value))
        });
        match outcome {
            Ok((values, depth)) => println!(
                "{name}: {values} values, depth {depth}; region: {}",
                document.gauge()
            ),
            Err(error) => println!("{name}: not JSON ({error}); region: {}", document.gauge()),
        }
    }
}
