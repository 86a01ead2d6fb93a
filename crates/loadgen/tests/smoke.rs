//! A smoke run of every WebSocket scenario and of `route`, with tiny sizes, against an
//! in-process region node on the memory store: the harness connects, speaks the protocol,
//! counts every delivery and reports no errors. Seconds, not a benchmark. Also the latency
//! floor's server and load.

use clap::Parser;
use loadgen::{BenchArgs, Report};
use region_node::NodeConfig;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "smoke-secret-0123456789";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

async fn run(args: &[&str]) -> Report {
    let mut argv = vec!["meridian-loadgen"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
    loadgen::run_async(cli.bench).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_an_in_process_node() {
    let mut config = NodeConfig::dev("smoke", SECRET);
    config.limits.requests_per_second = 100_000.0;
    config.limits.request_burst = 100_000.0;
    // The load generator sets the pace: per-user budgets off, as in bench/run.sh.
    config.limits.user_publishes_per_second = Some(0);
    config.limits.dm_sent_per_second = 0;
    config.limits.dm_sent_bytes_per_second = 0;
    config.limits.dm_received_per_second = 0;
    config.limits.dm_received_bytes_per_second = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let node = region_node::start(config, listener, shutdown.clone())
        .await
        .unwrap();
    let addr = node.addr.to_string();
    // One node stands in for both servers: the scenarios alternate between the two entries.
    let servers = format!("{addr},{addr}");
    let me = format!("loadgen={}", std::process::id());
    let common = [
        "--system",
        "meridian",
        "--server",
        &servers,
        "--secret",
        SECRET,
        "--progress-ms",
        "0",
        "--pid",
        &me,
    ];
    let with = |scenario: &str, extra: &[&'static str]| {
        let mut v: Vec<String> = vec![scenario.to_owned()];
        v.extend(common.iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    let args = with(
        "fanout",
        &[
            "--members",
            "6",
            "--rate",
            "40",
            "--seconds",
            "0.5",
            "--max-steps",
            "1",
            "--step-seconds",
            "0.3",
            "--sources",
            "none",
        ],
    );
    let r = run(&as_refs(&args)).await;
    assert_eq!(r.error_count(), 0, "{}", r.summary());
    let fixed = r.phase("fixed").unwrap();
    assert!(fixed.sent >= 15, "{}", r.summary());
    assert_eq!(Some(fixed.delivered), fixed.expected, "{}", r.summary());
    assert!(fixed.latency.p99_ms > 0.0 && fixed.latency.p99_ms < 1000.0);
    assert!(r.phase("step1").is_some());
    assert!(fixed.cpu.by_process.contains_key("loadgen"));

    let args = with(
        "pairs",
        &[
            "--pairs",
            "4",
            "--interval-ms",
            "100",
            "--seconds",
            "0.5",
            "--closed-seconds",
            "0.5",
            "--sources",
            "127.0.0.2-127.0.0.3",
        ],
    );
    let r = run(&as_refs(&args)).await;
    assert_eq!(r.error_count(), 0, "{}", r.summary());
    for name in ["paced", "closed"] {
        let p = r.phase(name).unwrap();
        assert!(p.sent > 0, "{}", r.summary());
        assert_eq!(Some(p.delivered), p.expected, "{}", r.summary());
        assert!(p.extra["bursts_completed"] > 0.0, "{}", r.summary());
    }

    let args = with(
        "joinstorm",
        &[
            "--clients",
            "40",
            "--room-size",
            "5",
            "--concurrency",
            "10",
            "--linger-seconds",
            "0",
        ],
    );
    let r = run(&as_refs(&args)).await;
    assert_eq!(r.error_count(), 0, "{}", r.summary());
    assert_eq!(r.phase("storm").unwrap().delivered, 40);

    let args = with(
        "idle",
        &[
            "--connections",
            "30",
            "--hold-seconds",
            "0.2",
            "--sources",
            "127.0.0.2-127.0.0.4",
        ],
    );
    let r = run(&as_refs(&args)).await;
    assert_eq!(r.error_count(), 0, "{}", r.summary());
    assert_eq!(r.memory.as_ref().unwrap().connections, 30);

    // Two worker processes of the real binary hold the connections; the report comes back as
    // JSON.
    let dir = std::env::temp_dir().join(format!("loadgen-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("idle.json");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian-loadgen"))
        .args(with(
            "idle",
            &[
                "--connections",
                "20",
                "--hold-seconds",
                "0.2",
                "--processes",
                "2",
            ],
        ))
        .arg("--json")
        .arg(&json)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["memory"]["connections"], 20, "{v}");
    assert_eq!(v["errors"], serde_json::json!({}), "{v}");
    let _ = std::fs::remove_dir_all(&dir);

    let r = run(&[
        "route",
        "--server",
        &addr,
        "--name",
        "node",
        "--path",
        "/healthz",
        "--connections",
        "2",
        "--seconds",
        "0.3",
        "--warmup-seconds",
        "0",
        "--progress-ms",
        "0",
    ])
    .await;
    assert_eq!(r.error_count(), 0, "{}", r.summary());
    let load = r.phase("load").unwrap();
    assert!(
        load.delivered > 10 && load.extra.contains_key("status_200"),
        "{}",
        r.summary()
    );

    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(15), node.done).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_delivers_every_line_to_every_subscriber() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || loadgen::scenario::floor::serve_on(listener));
    let r = run(&[
        "floor",
        "--server",
        &addr,
        "--members",
        "20",
        "--rate",
        "50",
        "--seconds",
        "0.5",
        "--progress-ms",
        "0",
    ])
    .await;
    let p = r.phase("fixed").unwrap();
    assert!(p.sent >= 20, "{}", r.summary());
    assert_eq!(Some(p.delivered), p.expected, "{}", r.summary());
    assert!(p.latency.count == p.delivered && p.latency.p99_ms > 0.0);
}
