//! `meridian-loadgen`: the benchmark load generator of `bench/run.sh` (see the library docs).
//! Parses flags and hands them to [`loadgen::run_with_threads`].

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load generator for Meridian and Socket.IO (fanout, pairs, idle, joinstorm, route)",
    after_help = "Examples:
  meridian-loadgen fanout --system meridian --server 127.0.0.1:7101,127.0.0.1:7102 --json f.json
  meridian-loadgen idle --system socketio --server 127.0.0.1:9001,127.0.0.1:9002 \\
      --connections 50000 --pid node1=1234 --pid node2=1235 --pid redis=1200
  meridian-loadgen route --name geo-router --server 127.0.0.1:8053 --path '/v1/route?ip={ip}'"
)]
struct Cli {
    /// Tokio worker threads (0: one per CPU this process may run on).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    bench: loadgen::BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match loadgen::run_with_threads(cli.bench, cli.threads) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-loadgen: {e}");
            ExitCode::from(match e {
                loadgen::LoadgenError::Config(_) => 2,
                _ => 1,
            })
        }
    }
}
