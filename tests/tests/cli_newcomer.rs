//! End-to-end tests of what a newcomer meets first: the terminal client (`meridian chat` and the
//! one-shot `members`, `presence`, `send`, `state`), `meridian up`'s port check, and the README's
//! own commands run as written against a `meridian up --auto-ports` mesh. Real `redis-server`,
//! `region-node` and `meridian` processes on loopback; every child is killed on drop.
//!
//! Every direct message and presence question here is between users who share a room, so the
//! tests hold whether or not the server scopes `send` and `presence` to shared rooms.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meridian_e2e::up::{workspace_root, Up};
use meridian_e2e::{
    bin_path, ok, token, token_with, Client, NodeProcess, RedisServer, TempDir, SECRET,
};
use serde_json::{json, Value};

/// A `meridian` child with its stdout and stderr collected as they come.
struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// What a finished `meridian` printed and its exit code.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn collect(from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut t = sink
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

impl Cli {
    /// Starts `meridian ARGS` with a stdin pipe that stays open until written or closed.
    fn start<I, S>(args: I) -> Result<Cli>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(bin_path("meridian")?);
        command.args(args);
        Cli::spawn(&mut command)
    }

    /// Starts `command` with piped stdin, stdout and stderr.
    fn spawn(command: &mut Command) -> Result<Cli> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start meridian")?;
        let stdout = collect(child.stdout.take().context("stdout")?);
        let stderr = collect(child.stderr.take().context("stderr")?);
        let stdin = child.stdin.take();
        Ok(Cli {
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn write_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Polls until `check(stdout, stderr)` holds.
    fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        check: impl Fn(&str, &str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if check(&self.stdout(), &self.stderr()) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                // Let the reader threads catch up once more (their EOF is no signal: the
                // CLI's own children may hold the pipes).
                std::thread::sleep(Duration::from_millis(100));
                if check(&self.stdout(), &self.stderr()) {
                    return Ok(());
                }
                bail!(
                    "meridian exited ({status}) before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what} within {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (killing the child after `within`: a hang fails the test).
    fn finish(mut self, within: Duration) -> Result<Output> {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "meridian still running after {within:?} (killed)\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader threads end at EOF, shortly after the exit (not awaited: the CLI's
        // children may hold the pipes open).
        std::thread::sleep(Duration::from_millis(100));
        Ok(Output {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `meridian ARGS` to its end with stdin closed at once.
fn run<I, S>(args: I, within: Duration) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cli = Cli::start(args)?;
    cli.close_stdin();
    cli.finish(within)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// A Redis and one node.
fn one_node() -> Result<(RedisServer, NodeProcess)> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start("test-region", &redis.url(), "")?;
    Ok((redis, node))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

#[test]
fn chat_exits_3_with_the_reason_in_words_when_the_token_is_refused() -> Result<()> {
    let (_redis, node) = one_node()?;
    let url = node.ws_url();
    let expired = token_with("alice", -60, &[("*", true)], SECRET);
    for (token, code_name) in [
        ("bogus", "token_invalid"),
        (expired.as_str(), "token_expired"),
    ] {
        // stdin stays open: the refusal alone must end the chat.
        let cli = Cli::start(["chat", "--url", &url, "--token", token, "--room", "lobby"])?;
        let out = cli.finish(Duration::from_secs(15))?;
        assert_eq!(out.code, Some(3), "{out:?}");
        assert!(out.stderr.contains(code_name), "{out:?}");
        assert!(out.stderr.contains("refused"), "{out:?}");
        assert!(
            !out.stderr.contains("CloseFrame") && !out.stderr.contains("Utf8Bytes"),
            "no Rust debug output: {out:?}"
        );
    }
    // A room the token does not cover: refused too.
    let narrow = token_with("alice", 3600, &[("stage", true)], SECRET);
    let out = run(
        ["chat", "--url", &url, "--token", &narrow, "--room", "lobby"],
        Duration::from_secs(15),
    )?;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("forbidden"), "{out:?}");
    // Nothing listening: exit 1, the cause said once.
    let dead = format!("ws://127.0.0.1:{}/v1/ws", free_port()?);
    let out = run(
        [
            "chat",
            "--url",
            &dead,
            "--token",
            &token("alice"),
            "--room",
            "lobby",
        ],
        Duration::from_secs(15),
    )?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.matches("refused").count(), 1, "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_exits_0_at_the_end_of_input_once_its_lines_are_acknowledged() -> Result<()> {
    let (_redis, node) = one_node()?;
    let url = node.ws_url();
    let (mut bob, _) = Client::hello(&url, &token("bob"), json!([])).await?;
    ok(bob.request(json!({"op": "join", "room": "lobby"})).await?)?;

    let chat_url = url.clone();
    let out = blocking(move || {
        let mut cli = Cli::start([
            "chat",
            "--url",
            &chat_url,
            "--token",
            &token("alice"),
            "--room",
            "lobby",
        ])?;
        cli.write_line("one")?;
        cli.write_line("two")?;
        cli.close_stdin();
        cli.finish(Duration::from_secs(20))
    })
    .await?;
    assert_eq!(out.code, Some(0), "{out:?}");
    let acks = json_lines(&out.stdout)
        .into_iter()
        .filter(|f| {
            f["type"] == "ok" && f["result"]["seq"].is_u64() && f["result"]["duplicate"] == false
        })
        .count();
    assert_eq!(
        acks, 2,
        "both publishes acknowledged before the exit: {out:?}"
    );
    for text in ["one", "two"] {
        let m = bob.event("message").await?;
        assert_eq!(m["from"], "alice");
        assert_eq!(m["data"]["text"], text);
    }

    // An empty input: the chat still joins (and is answered) before it ends.
    let out = blocking(move || {
        run(
            [
                "chat",
                "--url",
                &url,
                "--token",
                &token("carol"),
                "--room",
                "lobby",
            ],
            Duration::from_secs(15),
        )
    })
    .await?;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        json_lines(&out.stdout)
            .iter()
            .any(|f| f["id"] == "join" && f["type"] == "ok"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn chat_exits_1_when_the_server_goes_away() -> Result<()> {
    let (redis, mut node) = one_node()?;
    let url = node.ws_url();
    // --no-reconnect: the drain's `reconnect` ends it, with the reason.
    let mut strict = Cli::start([
        "chat",
        "--url",
        &url,
        "--token",
        &token("alice"),
        "--room",
        "lobby",
        "--no-reconnect",
    ])?;
    strict.wait_for("the join reply", Duration::from_secs(10), |out, _| {
        out.contains(r#""id":"join""#)
    })?;
    node.signal("TERM")?;
    let out = strict.finish(Duration::from_secs(15))?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("reconnect (draining)"), "{out:?}");
    node.wait_exit(Duration::from_secs(15))?;

    // Following reconnect, but the node is killed and nothing comes back: it gives up, exit 1.
    let node = NodeProcess::start("test-region", &redis.url(), "")?;
    let url = node.ws_url();
    let mut follower = Cli::start([
        "chat",
        "--url",
        &url,
        "--token",
        &token("bob"),
        "--room",
        "lobby",
    ])?;
    follower.wait_for("the join reply", Duration::from_secs(10), |out, _| {
        out.contains(r#""id":"join""#)
    })?;
    node.signal("KILL")?;
    let out = follower.finish(Duration::from_secs(40))?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("reconnecting"), "{out:?}");
    assert!(out.stderr.contains("cannot connect"), "{out:?}");
    drop(node);
    Ok(())
}

/// A TCP forwarder whose upstream can be switched: a stand-in for a region's balancer.
async fn balancer(upstream: Arc<Mutex<SocketAddr>>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = *upstream
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_follows_reconnect_and_resumes_in_the_room() -> Result<()> {
    let redis = RedisServer::start()?;
    let mut a = NodeProcess::start("test-region", &redis.url(), "")?;
    let b = NodeProcess::start("test-region", &redis.url(), "")?;
    let upstream = Arc::new(Mutex::new(a.addr));
    let front = balancer(Arc::clone(&upstream)).await?;
    let (mut bob, _) = Client::hello(&b.ws_url(), &token("bob"), json!([])).await?;
    ok(bob.request(json!({"op": "join", "room": "lobby"})).await?)?;

    let url = format!("ws://{front}/v1/ws");
    let mut alice = blocking(move || {
        let mut cli = Cli::start([
            "chat",
            "--url",
            &url,
            "--token",
            &token("alice"),
            "--room",
            "lobby",
        ])?;
        cli.wait_for("the join reply", Duration::from_secs(10), |out, _| {
            out.contains(r#""id":"join""#)
        })?;
        Ok(cli)
    })
    .await?;
    // The balancer now sends new connections to b; a drains.
    *upstream
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = b.addr;
    a.signal("TERM")?;
    alice = blocking(move || {
        alice.wait_for(
            "the resumed connection",
            Duration::from_secs(15),
            |_, err| err.contains("asks to reconnect (draining)") && err.contains("(resumed)"),
        )?;
        Ok(alice)
    })
    .await?;
    ok(bob
        .request(json!({"op": "publish", "room": "lobby", "data": {"text": "still there?"}}))
        .await?)?;
    alice = blocking(move || {
        alice.wait_for(
            "bob's message after the move",
            Duration::from_secs(10),
            |out, _| out.contains("still there?"),
        )?;
        alice.write_line("yes, on the other node")?;
        alice.close_stdin();
        Ok(alice)
    })
    .await?;
    // bob's own message comes back to him first.
    let mut m = bob.event("message").await?;
    if m["from"] == "bob" {
        m = bob.event("message").await?;
    }
    assert_eq!(m["from"], "alice");
    assert_eq!(m["data"]["text"], "yes, on the other node");
    let out = blocking(move || alice.finish(Duration::from_secs(15))).await?;
    assert_eq!(out.code, Some(0), "{out:?}");
    a.wait_exit(Duration::from_secs(15))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_presence_send_and_state_answer_in_json_and_in_words() -> Result<()> {
    let (_redis, node) = one_node()?;
    let url = node.ws_url();
    let (mut alice, _) = Client::hello(&url, &token("alice"), json!([])).await?;
    ok(alice
        .request(json!({"op": "join", "room": "lobby"}))
        .await?)?;
    let (mut bob, _) = Client::hello(&url, &token("bob"), json!([])).await?;
    ok(bob.request(json!({"op": "join", "room": "lobby"})).await?)?;

    let u = url.clone();
    let (members_json, members_text) = blocking(move || {
        let carol = token("carol");
        let json = run(
            [
                "members", "--url", &u, "--token", &carol, "--room", "lobby", "--json",
            ],
            Duration::from_secs(15),
        )?;
        let text = run(
            ["members", "--url", &u, "--token", &carol, "--room", "lobby"],
            Duration::from_secs(15),
        )?;
        Ok((json, text))
    })
    .await?;
    assert_eq!(members_json.code, Some(0), "{members_json:?}");
    let v: Value = serde_json::from_str(members_json.stdout.trim())?;
    let users: Vec<&str> = v["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert_eq!(users, ["alice", "bob"], "{v}");
    assert_eq!(v["members"][0]["region"], "test-region");
    assert_eq!(members_text.code, Some(0));
    assert!(
        members_text.stdout.contains("2 members in lobby"),
        "{members_text:?}"
    );

    // alice (a second connection, in the room bob is in) sends bob a direct message.
    let u = url.clone();
    let sent = blocking(move || {
        run(
            [
                "send",
                "--url",
                &u,
                "--token",
                &token("alice"),
                "--room",
                "lobby",
                "bob",
                "hello",
                "bob",
                "--json",
            ],
            Duration::from_secs(15),
        )
    })
    .await?;
    assert_eq!(sent.code, Some(0), "{sent:?}");
    let v: Value = serde_json::from_str(sent.stdout.trim())?;
    assert_eq!(v["to"], "bob");
    let direct = bob.event("direct").await?;
    assert_eq!(direct["from"], "alice");
    assert_eq!(direct["data"], json!({"text": "hello bob"}));

    let u = url.clone();
    let (offer, presence, set, get, nobody) = blocking(move || {
        let alice = token("alice");
        let offer = run(
            [
                "send",
                "--url",
                &u,
                "--token",
                &alice,
                "--room",
                "lobby",
                "bob",
                "--data",
                r#"{"kind":"offer","sdp":"v=0"}"#,
            ],
            Duration::from_secs(15),
        )?;
        let presence = run(
            [
                "presence", "--url", &u, "--token", &alice, "--room", "lobby", "bob", "--json",
            ],
            Duration::from_secs(15),
        )?;
        let set = run(
            [
                "state", "--url", &u, "--token", &alice, "--room", "lobby", "topic", "--set",
                "launch", "--json",
            ],
            Duration::from_secs(15),
        )?;
        let get = run(
            [
                "state", "--url", &u, "--token", &alice, "--room", "lobby", "--json",
            ],
            Duration::from_secs(15),
        )?;
        let nobody = run(
            [
                "send", "--url", &u, "--token", &alice, "--room", "lobby", "nobody", "hi",
            ],
            Duration::from_secs(15),
        )?;
        Ok((offer, presence, set, get, nobody))
    })
    .await?;
    assert_eq!(offer.code, Some(0), "{offer:?}");
    assert_eq!(offer.stdout.trim(), "sent to bob");
    let direct = bob.event("direct").await?;
    assert_eq!(direct["data"], json!({"kind": "offer", "sdp": "v=0"}));

    assert_eq!(presence.code, Some(0), "{presence:?}");
    let v: Value = serde_json::from_str(presence.stdout.trim())?;
    assert_eq!(v["users"][0]["user"], "bob");
    assert_eq!(v["users"][0]["online"], true, "{v}");

    assert_eq!(set.code, Some(0), "{set:?}");
    let v: Value = serde_json::from_str(set.stdout.trim())?;
    assert_eq!(v["version"], 1, "{v}");
    let changed = alice.event("state_changed").await?;
    assert_eq!(changed["value"], "launch");
    assert_eq!(get.code, Some(0), "{get:?}");
    let v: Value = serde_json::from_str(get.stdout.trim())?;
    assert_eq!(v["entries"][0]["key"], "topic", "{v}");
    assert_eq!(v["entries"][0]["value"], "launch", "{v}");

    // A direct message nobody can take is refused: exit 3, the code in words.
    assert_eq!(nobody.code, Some(3), "{nobody:?}");
    assert!(
        nobody.stderr.contains("user_offline") || nobody.stderr.contains("forbidden"),
        "{nobody:?}"
    );
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn up_names_a_taken_port_and_its_owner_and_starts_nothing() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let dir = TempDir::new("up-clash")?;
    let state = dir.0.join("state");
    let started = Instant::now();
    let mut cli = Cli::spawn(
        Command::new(bin_path("meridian")?)
            .args(["up", "--auto-ports", "--dns", "127.0.0.1:0", "--http"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(&state)
            .current_dir(workspace_root()),
    )?;
    cli.close_stdin();
    let out = cli.finish(Duration::from_secs(30))?;
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = format!(
        "TCP 127.0.0.1:{port} (for geo-router HTTP) is in use by pid {}",
        std::process::id()
    );
    assert!(out.stderr.contains(&line), "expected {line:?} in {out:?}");
    assert!(out.stderr.contains("--auto-ports"), "{out:?}");
    assert!(
        !state.join("logs").exists(),
        "nothing may start before the ports are checked"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the check is quick"
    );
    drop(taken);
    Ok(())
}

/// The `meridian …` commands of the README's `sh` blocks that need no terminal of their own
/// and use the local mesh (`--state-dir /tmp/mesh`): everything except `up` and `drill`.
fn readme_commands(readme: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        // Strip a trailing comment (two spaces and #), keep continuation lines together.
        let code = match line.find("  #") {
            Some(at) => &line[..at],
            None => line,
        };
        let code = code.trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let full = std::mem::take(&mut pending).trim().to_owned();
        let first = full.split_whitespace().next().unwrap_or("");
        let second = full.split_whitespace().nth(1).unwrap_or("");
        if first == "meridian"
            && full.contains("--state-dir /tmp/mesh")
            && !matches!(second, "up" | "drill")
        {
            commands.push(full);
        }
    }
    commands
}

#[test]
fn readme_state_dir_is_the_same_everywhere_and_its_commands_are_found() -> Result<()> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    // The first code block is the two commands.
    let first_block: Vec<&str> = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .map(|b| b.lines().collect())
        .unwrap_or_default();
    ensure!(first_block.len() == 2, "first block: {first_block:?}");
    ensure!(
        first_block[0].starts_with("scripts/up.sh"),
        "{first_block:?}"
    );
    ensure!(
        first_block[1].starts_with("scripts/test.sh"),
        "{first_block:?}"
    );
    for line in readme.lines().filter(|l| l.contains("--state-dir ")) {
        ensure!(
            line.contains("--state-dir /tmp/mesh")
                || line.contains("--state-dir`")
                || line.contains("--state-dir DIR"),
            "every README command uses --state-dir /tmp/mesh: {line}"
        );
    }
    let commands = readme_commands(&readme);
    for sub in ["route", "chat", "members", "send", "presence", "state"] {
        ensure!(
            commands
                .iter()
                .any(|c| c.split_whitespace().nth(1) == Some(sub)),
            "the README shows `meridian {sub}`: {commands:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_run_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    let commands = readme_commands(&readme);
    ensure!(commands.len() >= 6, "README commands: {commands:?}");
    let up = blocking(|| Up::start("newcomer-up", &[])).await?;
    let state = up.dir.0.join("state");
    // Terminals 2 and 3 of the README: alice and bob stay in the lobby meanwhile.
    let secret = up.endpoints["token_secret"]
        .as_str()
        .context("secret")?
        .to_owned();
    let (mut alice, _) = Client::hello(
        &up.ws_url("ap-southeast")?,
        &token_with("alice", 3600, &[("*", true)], &secret),
        json!([]),
    )
    .await?;
    ok(alice
        .request(json!({"op": "join", "room": "lobby"}))
        .await?)?;
    let (mut bob, _) = Client::hello(
        &up.ws_url("eu-central")?,
        &token_with("bob", 3600, &[("*", true)], &secret),
        json!([]),
    )
    .await?;
    ok(bob.request(json!({"op": "join", "room": "lobby"})).await?)?;
    // bob's membership reaches ap-southeast through the relays.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = ok(alice
            .request(json!({"op": "members", "room": "lobby"}))
            .await?)?;
        if m["members"].as_array().is_some_and(|l| l.len() == 2) {
            break;
        }
        ensure!(Instant::now() < deadline, "members never listed both: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let bin_dir = bin_path("meridian")?
        .parent()
        .map(Path::to_path_buf)
        .context("bin dir")?;
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let state_text = state.display().to_string();
    let results = blocking(move || {
        let mut results = Vec::new();
        for command in &commands {
            let line = command.replace("/tmp/mesh", &state_text);
            let output = Command::new("bash")
                .arg("-c")
                .arg(format!("timeout 30 {line}"))
                .env("PATH", &path)
                .current_dir(workspace_root())
                .stdin(Stdio::null())
                .output()?;
            results.push((
                command.clone(),
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        Ok(results)
    })
    .await?;
    for (command, code, stdout, stderr) in &results {
        assert_eq!(
            *code,
            Some(0),
            "README command failed: {command}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // What the README promises: bob gets alice's direct message; presence says alice is online.
    let direct = bob.event("direct").await?;
    assert_eq!(direct["from"], "alice");
    let (_, _, presence, _) = results
        .iter()
        .find(|(c, ..)| c.starts_with("meridian presence"))
        .context("presence command")?;
    let v: Value = serde_json::from_str(presence.trim())?;
    assert_eq!(v["users"][0]["online"], true, "{v}");
    // The mesh's log files are plain text: no colour codes.
    let mut logs = 0;
    for entry in std::fs::read_dir(up.dir.0.join("state").join("logs"))? {
        let path = entry?.path();
        let text = std::fs::read(&path)?;
        assert!(!text.contains(&0x1b), "colour codes in {}", path.display());
        logs += 1;
    }
    ensure!(logs >= 10, "only {logs} log files");
    drop(up);
    Ok(())
}

#[test]
fn up_with_tls_serves_wss_that_clients_trust_through_the_dev_ca() -> Result<()> {
    let up = Up::start("newcomer-up", &["--tls"])?;
    let state = up.dir.0.join("state");
    let url = up.ws_url("eu-central")?;
    ensure!(url.starts_with("wss://"), "{url}");
    let ca = up.endpoints["tls_ca"]
        .as_str()
        .context("tls_ca in endpoints.json")?;
    ensure!(Path::new(ca).is_file(), "{ca}");
    ensure!(
        up.log().contains("--cacert"),
        "up says how to trust the CA: {}",
        up.log()
    );
    let secret = up.endpoints["token_secret"].as_str().context("secret")?;
    let carol = token_with("carol", 3600, &[("*", true)], secret);

    // With --state-dir the CA is trusted.
    let state_text = state.display().to_string();
    let out = run(
        [
            "members",
            "--state-dir",
            &state_text,
            "--region",
            "eu-central",
            "--user",
            "carol",
            "--room",
            "lobby",
            "--json",
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(out.code, Some(0), "{out:?}");
    // With --url and --ca.
    let out = run(
        [
            "members", "--url", &url, "--token", &carol, "--ca", ca, "--room", "lobby",
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(out.code, Some(0), "{out:?}");
    // Without the CA the certificate is refused, and said so.
    let out = run(
        [
            "members", "--url", &url, "--token", &carol, "--room", "lobby",
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.to_lowercase().contains("certificate"), "{out:?}");
    // A chat over wss publishes and ends at the end of input.
    let mut chat = Cli::start([
        "chat",
        "--state-dir",
        &state_text,
        "--region",
        "us-east",
        "--user",
        "dave",
        "--room",
        "lobby",
    ])?;
    chat.write_line("over tls")?;
    chat.close_stdin();
    let out = chat.finish(Duration::from_secs(20))?;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        json_lines(&out.stdout)
            .iter()
            .any(|f| f["type"] == "ok" && f["result"]["seq"].is_u64()),
        "{out:?}"
    );
    drop(up);

    // `--smoke` checks every balancer over TLS and stops by itself.
    let dir = TempDir::new("tls-smoke")?;
    let mut smoke = Cli::spawn(
        Command::new(bin_path("meridian")?)
            .args([
                "up",
                "--tls",
                "--smoke",
                "--auto-ports",
                "--dns",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(dir.0.join("state"))
            .current_dir(workspace_root()),
    )?;
    smoke.close_stdin();
    let out = smoke.finish(Duration::from_secs(90))?;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("smoke check passed"), "{out:?}");
    assert!(
        !out.stdout.contains("Ctrl-C"),
        "a smoke run stops by itself: {out:?}"
    );
    Ok(())
}
