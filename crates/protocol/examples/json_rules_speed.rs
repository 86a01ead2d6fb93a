//! A hand measurement of `json_rules::check` next to serde_json's own raw parse of the same text
//! (what `Request::parse` already pays): `cargo run --release -p meridian-protocol --example
//! json_rules_speed`. Not a test: figures depend on the machine and its load.

use std::hint::black_box;
use std::time::Instant;

use meridian_protocol::json_rules;
use serde_json::value::RawValue;

fn main() {
    // A 60 KB SDP-like offer (escape-heavy) and a 1 KB ICE candidate.
    let line = "v=0\\r\\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\\r\\n";
    let sdp = format!(
        "{{\"kind\":\"offer\",\"sdp\":\"{}\",\"n\":[1,2.5,-3e2],\"u\":\"\\u00e9\\ud83d\\ude00\"}}",
        line.repeat(900)
    );
    let ice = format!(
        "{{\"kind\":\"ice\",\"candidate\":\"{}\"}}",
        "c".repeat(1000)
    );
    for (name, text) in [("60 KB offer", &sdp), ("1 KB candidate", &ice)] {
        if json_rules::check(text).is_err() {
            eprintln!("{name}: the sample breaks the rule");
            return;
        }
        let n = if text.len() > 10_000 { 5_000 } else { 200_000 };
        let t = Instant::now();
        for _ in 0..n {
            let _ = black_box(json_rules::check(black_box(text)));
        }
        let check = t.elapsed().as_secs_f64() / f64::from(n);
        let t = Instant::now();
        for _ in 0..n {
            let _ = black_box(serde_json::from_str::<Box<RawValue>>(black_box(text)));
        }
        let serde = t.elapsed().as_secs_f64() / f64::from(n);
        println!(
            "{name} ({} bytes): json_rules::check {:.2} µs ({:.0} MB/s); serde_json raw parse {:.2} µs",
            text.len(),
            check * 1e6,
            text.len() as f64 / check / 1e6,
            serde * 1e6
        );
    }
}
