//! Port checks for `meridian up`: before anything starts, every address the mesh will listen on
//! is tried, and each one that is taken is named with its owner (from `/proc/net/{tcp,udp}*` and
//! `/proc/*/fd`) in one line.

use std::net::SocketAddr;
use std::path::Path;

/// One address the mesh needs.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// What listens there (`us-east/node-1`, `geo-router DNS`).
    pub what: String,
    /// The address.
    pub addr: SocketAddr,
    /// UDP (else TCP).
    pub udp: bool,
}

impl Wanted {
    /// A TCP address.
    pub fn tcp(what: impl Into<String>, addr: SocketAddr) -> Wanted {
        Wanted {
            what: what.into(),
            addr,
            udp: false,
        }
    }

    /// A UDP address.
    pub fn udp(what: impl Into<String>, addr: SocketAddr) -> Wanted {
        Wanted {
            what: what.into(),
            addr,
            udp: true,
        }
    }
}

/// One line per wanted address that cannot be bound now (empty: all free). Port 0 is skipped.
pub fn clashes(wanted: &[Wanted]) -> Vec<String> {
    let mut lines = Vec::new();
    for w in wanted.iter().filter(|w| w.addr.port() != 0) {
        let result = if w.udp {
            std::net::UdpSocket::bind(w.addr).map(drop)
        } else {
            std::net::TcpListener::bind(w.addr).map(drop)
        };
        if let Err(e) = result {
            let proto = if w.udp { "UDP" } else { "TCP" };
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => match owner(w.addr.port(), w.udp) {
                    Some(owner) => format!("is in use by {owner}"),
                    None => "is in use (owner not visible: another user's process?)".to_owned(),
                },
                std::io::ErrorKind::AddrNotAvailable => {
                    "is not an address of this machine".to_owned()
                }
                _ => format!("cannot be bound: {e}"),
            };
            lines.push(format!("{proto} {} (for {}) {why}", w.addr, w.what));
        }
    }
    lines
}

/// `pid 1234 (redis-server *:6403)`: the process holding a listening socket on `port`.
pub fn owner(port: u16, udp: bool) -> Option<String> {
    let tables: &[&str] = if udp {
        &["/proc/net/udp", "/proc/net/udp6"]
    } else {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    };
    let mut inodes = Vec::new();
    for table in tables {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(socket_inodes(&text, port, udp));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if targets.iter().any(|t| Path::new(t) == link) {
                return Some(format!("pid {pid} ({})", command_line(pid)));
            }
        }
    }
    Some(format!(
        "a process this user cannot see (socket inode {})",
        inodes[0]
    ))
}

/// The inodes of sockets on `port` in one `/proc/net/*` table: listening ones for TCP
/// (state 0A), bound ones for UDP.
fn socket_inodes(table: &str, port: u16, udp: bool) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let hex_port = local.rsplit(':').next()?;
            let p = u16::from_str_radix(hex_port, 16).ok()?;
            (p == port && (udp || *state == "0A") && inode != 0).then_some(inode)
        })
        .collect()
}

/// A process's command line, shortened.
fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    let mut line = text.join(" ");
    if line.is_empty() {
        line = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".into());
    }
    if line.chars().count() > 100 {
        line = line.chars().take(97).collect::<String>() + "...";
    }
    line
}

/// The pid a Redis server at `addr` reports (`INFO server` → `process_id`), if it answers.
pub fn redis_pid(addr: SocketAddr) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(rest) = text.split("process_id:").nth(1) {
            if let Some(line) = rest.split("\r\n").next().filter(|_| rest.contains("\r\n")) {
                return line.trim().parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_named_with_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = clashes(&[
            Wanted::tcp("us-east/node-1", addr),
            Wanted::tcp("never", SocketAddr::from(([127, 0, 0, 1], 0))),
        ]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(
            line.contains(&addr.to_string()) && line.contains("us-east/node-1"),
            "{line}"
        );
        assert!(
            line.contains(&format!("pid {}", std::process::id())),
            "the owner is this test process: {line}"
        );
        drop(listener);
        assert!(clashes(&[Wanted::tcp("free now", addr)]).is_empty());
    }

    #[test]
    fn proc_net_tables_parse() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1903 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0\n   \
            1: 0100007F:1903 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0\n";
        assert_eq!(socket_inodes(table, 0x1903, false), [4242]);
        assert_eq!(socket_inodes(table, 0x1904, false), Vec::<u64>::new());
        assert_eq!(socket_inodes(table, 0x1903, true), [4242, 4343]);
    }
}
