//! How long converting and encoding one real stats document takes, without any HTTP:
//! `cargo run --release -p jvb-exporter --example convert_cost`.

use std::time::Instant;

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/colibri/2026-jvb-2.3.63-relay.json"
    );
    let body = std::fs::read(path).expect("fixture");
    let rounds = 20_000;
    let started = Instant::now();
    let mut bytes = 0;
    let mut names = jvb_exporter::convert::NameCache::default();
    for _ in 0..rounds {
        let stats = jvb_exporter::convert::Fields::parse(&body).expect("a stats object");
        let converted = jvb_exporter::convert::convert_cached(stats.iter(), true, &mut names);
        let mut out = String::with_capacity(16 * 1024);
        jvb_exporter::exposition::encode(&converted.families, &mut out);
        bytes += out.len();
    }
    let per = started.elapsed() / rounds;
    println!(
        "parse + convert + encode: {per:?} per scrape ({} bytes of text)",
        bytes / rounds as usize
    );
}
