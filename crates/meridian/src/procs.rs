//! A small supervisor for the mesh's child processes: each child's output goes to a log file
//! in the state directory, readiness is a line the child prints (or a port that accepts), and
//! stopping is SIGTERM to every child in reverse start order, then SIGKILL to any that outlive
//! the grace period. Dropping the supervisor stops everything, so an error half-way through
//! `meridian up` leaves no process behind.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// One started child.
#[derive(Debug)]
pub struct Proc {
    /// Short name (`us-east/node-1`), used in logs and errors.
    pub name: String,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// Every child of one mesh.
#[derive(Debug)]
pub struct Supervisor {
    logs: PathBuf,
    procs: Vec<Proc>,
}

impl Supervisor {
    /// Children log into `logs`.
    pub fn new(logs: &Path) -> Result<Supervisor> {
        std::fs::create_dir_all(logs).with_context(|| format!("create {}", logs.display()))?;
        Ok(Supervisor {
            logs: logs.to_owned(),
            procs: Vec::new(),
        })
    }

    /// Starts `command` as `name`. Stdout lines are copied to the log and kept for
    /// [`Supervisor::wait_line`]; stderr goes to the log directly.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> Result<&Proc> {
        // A restart reuses the name: reap the previous process of that name first.
        if let Some(at) = self.procs.iter().position(|p| p.name == name) {
            let mut old = self.procs.remove(at);
            if matches!(old.child.try_wait(), Ok(None)) {
                let _ = old.child.kill();
            }
            let _ = old.child.wait();
        }
        let log = self.logs.join(format!("{}.log", name.replace('/', "-")));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("create {}", log.display()))?;
        let stderr = file.try_clone()?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("start {name} ({:?})", command.get_program()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut file = file;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                let _ = tx.send(line);
            }
        });
        self.procs.push(Proc {
            name: name.to_owned(),
            log,
            child,
            lines,
        });
        self.procs
            .last()
            .ok_or_else(|| anyhow!("{name}: not recorded"))
    }

    /// Waits until the child `name` prints a line starting with `prefix`; returns the rest.
    pub fn wait_line(&mut self, name: &str, prefix: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no process {name}"))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{name} did not print {prefix:?} within {within:?}; see {}",
                    proc.log.display()
                );
            }
            match proc
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = proc.child.try_wait()? {
                        bail!(
                            "{name} exited ({status}){}; see {}",
                            last_words(&proc.log),
                            proc.log.display()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = proc.child.wait()?;
                    bail!(
                        "{name} exited ({status}){}; see {}",
                        last_words(&proc.log),
                        proc.log.display()
                    );
                }
            }
        }
    }

    /// The log file of the child `name` (where it would be).
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{}.log", name.replace('/', "-")))
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to the children whose name starts with
    /// `prefix`; returns how many.
    pub fn signal(&mut self, prefix: &str, signal: &str) -> usize {
        let mut n = 0;
        for proc in self.procs.iter_mut().filter(|p| p.name.starts_with(prefix)) {
            if send_signal(proc.child.id(), signal) {
                n += 1;
            }
        }
        n
    }

    /// Every running child: name → pid.
    pub fn pids(&mut self) -> std::collections::BTreeMap<String, u32> {
        self.procs
            .iter_mut()
            .filter_map(|p| matches!(p.child.try_wait(), Ok(None)).then_some(p))
            .map(|p| (p.name.clone(), p.child.id()))
            .collect()
    }

    /// SIGTERM to every child in reverse start order, then SIGKILL after `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        for proc in self.procs.iter_mut().rev() {
            if matches!(proc.child.try_wait(), Ok(None)) {
                send_signal(proc.child.id(), "TERM");
            }
        }
        let deadline = Instant::now() + grace;
        for proc in self.procs.iter_mut().rev() {
            loop {
                match proc.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!("meridian: {} did not stop in time; killing it", proc.name);
                        let _ = proc.child.kill();
                        let _ = proc.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.procs.clear();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all(Duration::from_secs(5));
    }
}

/// `: <the log's last line>` (colour codes removed, shortened), or nothing.
fn last_words(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return String::new();
    };
    let mut plain = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let plain = plain.trim();
    let short: String = plain.chars().take(200).collect();
    format!(": {short}")
}

fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until a TCP connection to `addr` succeeds.
pub fn wait_port(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing accepts connections on {addr} after {within:?}")
}

/// A blocking HTTP GET on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    blocking_get(&format!("http://{addr}{path}"), None)
}

/// A blocking GET of `url` (reqwest; `tls`: the trust for https, None: the platform roots):
/// (status, body). For `up`'s own readiness checks, outside any async runtime.
pub fn blocking_get(url: &str, tls: Option<rustls::ClientConfig>) -> Result<(u16, String)> {
    let builder = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let builder = match tls {
        Some(config) => builder.use_preconfigured_tls(config),
        None => builder,
    };
    let response = builder
        .build()?
        .get(url)
        .send()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .with_context(|| format!("GET {url}: reading the body"))?;
    Ok((status, body))
}

/// A port that was free a moment ago on 127.0.0.1 (TCP).
pub fn free_tcp_port() -> Result<u16> {
    free_port(|| {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    })
}

/// A port that was free a moment ago on 127.0.0.1 (UDP).
pub fn free_udp_port() -> Result<u16> {
    free_port(|| {
        Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    })
}

/// Ports are picked by binding port 0 and closing, so the kernel may hand the same port out
/// twice in one run (seen: a region's HAProxy and another region's relay HTTP on one port).
/// Never return a port twice, and only one that is free for both TCP and UDP (the router's
/// DNS port takes both).
fn free_port(pick: impl Fn() -> Result<u16>) -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..100 {
        let port = pick()?;
        let both_free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        let mut handed = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if both_free && handed.insert(port) {
            return Ok(port);
        }
    }
    bail!("found no free loopback port after 100 tries")
}

/// Whether `program` is on the PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A sibling binary of this executable (`target/<profile>/<name>`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("cannot locate the directory of {}", exe.display()))?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries first (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}
