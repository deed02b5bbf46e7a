//! A scoped heap profile: the parsing of a few JSON documents, and nothing else of the
//! program, profiled with `region::profile`; written as a DHAT file (open it in DHAT's
//! viewer, `dh_view.html`) and as a flame graph of the bytes allocated.
//!
//! ```text
//! cargo run --release --example profile --features flamegraph [-- OUTPUT_DIRECTORY]
//! ```
//!
//! The files go to `OUTPUT_DIRECTORY` (`target/profile` by default): `dhat-heap.json` and
//! `flame-graph.svg`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::PathBuf;

use serde_json::Value;
use stratalloc::{Router, region};

#[global_allocator]
static ROUTER: Router = Router::new();

/// A catalogue of `items` products, as a shop's API might send it.
fn catalogue(items: usize) -> String {
    let products: Vec<String> = (0..items)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"product {i}","price":{}.{:02},"tags":["tag{}","tag{}"],"stock":{{"warehouse":"w{}","count":{}}}}}"#,
                i % 97,
                i % 100,
                i % 7,
                i % 11,
                i % 3,
                i * 13 % 50
            )
        })
        .collect();
    format!(r#"{{"products":[{}]}}"#, products.join(","))
}

/// Parses the documents and indexes their products by tag: the work being profiled.
fn index_by_tag(documents: &[String]) -> HashMap<String, Vec<u64>> {
    let mut by_tag: HashMap<String, Vec<u64>> = HashMap::new();
    for document in documents {
        let parsed: Value = serde_json::from_str(document).expect("a valid document");
        for product in parsed["products"].as_array().into_iter().flatten() {
            let id = product["id"].as_u64().unwrap_or_default();
            for tag in product["tags"].as_array().into_iter().flatten() {
                let tag = tag.as_str().unwrap_or_default();
                by_tag.entry(tag.to_owned()).or_default().push(id);
            }
        }
    }
    by_tag
}

fn main() -> std::io::Result<()> {
    let directory = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/profile"), PathBuf::from);
    fs::create_dir_all(&directory)?;
    // Made outside the profile: only the parsing and indexing below are in it.
    let documents: Vec<String> = [200, 1_000, 3_000].map(catalogue).to_vec();

    let (index, profile) = region::profile(|| index_by_tag(&documents));

    println!("{} tags indexed", index.len());
    println!("{profile}");
    let dhat = directory.join("dhat-heap.json");
    profile.write_dhat(BufWriter::new(File::create(&dhat)?))?;
    let flame_graph = directory.join("flame-graph.svg");
    profile.write_flame_graph(
        "Bytes allocated while parsing and indexing",
        BufWriter::new(File::create(&flame_graph)?),
    )?;
    println!(
        "wrote {} (open it in DHAT's viewer, dh_view.html) and {}",
        dhat.display(),
        flame_graph.display()
    );
    Ok(())
}
