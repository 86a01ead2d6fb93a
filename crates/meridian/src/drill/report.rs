//! The drill report: one serialisable [`Report`] (the JSON written by `--report`), its
//! readable rendering ([`Report::text`]) and the SLO verdicts. The JSON schema is described in
//! `docs/drills.md`; fields are only ever added.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::ledger::{round3, Counts, MessageStats, Rehome};
use super::{DrillArgs, Membership, Mode, Restore, RouteWatch, TimelinePoint};

/// What the orchestrator hands over.
pub struct Inputs<'a> {
    pub args: &'a DrillArgs,
    pub run: String,
    pub started_at_ms: u64,
    pub router: String,
    pub dns: Option<SocketAddr>,
    pub local: bool,
    pub grace: Duration,
    pub placement: BTreeMap<String, usize>,
    pub rooms: usize,
    pub disrupted_at: Duration,
    pub route_away: RouteWatch,
    pub rehome: Rehome,
    pub messages: MessageStats,
    pub membership: Membership,
    pub membership_after_restore: Option<Membership>,
    pub restore: Option<Restore>,
    pub timeline: Vec<TimelinePoint>,
    pub resume_status: BTreeMap<String, u64>,
    pub request_errors: BTreeMap<String, u64>,
    pub errors: Vec<String>,
}

/// One SLO and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Slo {
    /// `route_away_s`, `rehomed_within_p95_bound`, …
    pub name: String,
    /// The limit, as text (`<= 5s`, `>= 95%`).
    pub limit: String,
    /// The measured value, as text.
    pub value: String,
    /// Whether it held.
    pub pass: bool,
}

/// The workload's shape.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Clients.
    pub clients: usize,
    /// Rooms.
    pub rooms: usize,
    /// Seconds of publishing.
    pub duration_s: f64,
    /// Mean seconds between one client's publishes.
    pub publish_every_s: f64,
    /// Mean seconds between one client's direct messages.
    pub direct_every_s: f64,
    /// Clients per natural region (the router's first choice at the start).
    pub placement: BTreeMap<String, usize>,
}

/// The whole drill, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Schema version of this report.
    pub version: u32,
    /// Run id (in user ids and room names: `drill-<run>-…`).
    pub run: String,
    /// `drain` or `kill`.
    pub mode: Mode,
    /// The drilled region.
    pub region: String,
    /// Unix milliseconds at the start.
    pub started_at_ms: u64,
    /// The router's HTTP API.
    pub router: String,
    /// The router's DNS server, when polled.
    pub dns: Option<SocketAddr>,
    /// A `meridian up` mesh (true) or a deployment.
    pub local: bool,
    /// The relays' region-down grace period the drill waited for, seconds.
    pub grace_s: f64,
    /// Workload.
    pub workload: Workload,
    /// Seconds from the workload's start to the disruption.
    pub disrupted_at_s: f64,
    /// Until the router stopped sending users to the region.
    pub route_away: RouteWatch,
    /// Re-homing of the clients that were connected to the region.
    pub rehome: Rehome,
    /// Room and direct messages, per origin region.
    pub messages: MessageStats,
    /// Members after the grace period.
    pub membership: Membership,
    /// Members in every region, the restored one included, after the restore.
    pub membership_after_restore: Option<Membership>,
    /// Undrain / restart and the return of traffic.
    pub restore: Option<Restore>,
    /// Per second: connections per region.
    pub timeline: Vec<TimelinePoint>,
    /// `resumed[].status` counts over every reconnect.
    pub resume_status: BTreeMap<String, u64>,
    /// Error replies to the workload's requests, by code.
    pub request_errors: BTreeMap<String, u64>,
    /// A sample of connection errors.
    pub errors: Vec<String>,
    /// The SLO verdicts.
    pub slos: Vec<Slo>,
    /// Every SLO held.
    pub passed: bool,
}

fn secs(d: Duration) -> f64 {
    round3(d.as_secs_f64())
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn opt(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.2}s"))
}

impl Report {
    /// Builds the report and judges the SLOs.
    pub fn new(i: Inputs<'_>) -> Report {
        let a = i.args;
        let mut slos = Vec::new();
        let mut slo = |name: &str, limit: String, value: String, pass: bool| {
            slos.push(Slo {
                name: name.into(),
                limit,
                value,
                pass,
            })
        };
        slo(
            "route_away_s",
            format!("<= {}s", secs(a.slo_route_away)),
            opt(i.route_away.s),
            i.route_away
                .s
                .is_some_and(|s| s <= a.slo_route_away.as_secs_f64()),
        );
        slo(
            "rehomed_within_p95_bound",
            format!(">= 95% within {}s", secs(a.slo_rehome_p95)),
            pct(i.rehome.within_p95_bound),
            i.rehome.within_p95_bound >= 0.95,
        );
        slo(
            "rehomed_within_p99_bound",
            format!(">= 99% within {}s", secs(a.slo_rehome_p99)),
            pct(i.rehome.within_p99_bound),
            i.rehome.within_p99_bound >= 0.99,
        );
        let rooms = &i.messages.rooms_total;
        slo(
            "lost",
            format!("<= {}", a.max_lost),
            rooms.lost.to_string(),
            rooms.lost <= a.max_lost,
        );
        slo(
            "duplicated",
            format!("<= {}", a.max_duplicated),
            rooms.duplicated.to_string(),
            rooms.duplicated <= a.max_duplicated,
        );
        slo(
            "ghosts",
            format!("<= {}", a.max_ghosts),
            i.membership.ghosts.to_string(),
            i.membership.ghosts <= a.max_ghosts && i.membership.errors.is_empty(),
        );
        if let Some(m) = &i.membership_after_restore {
            slo(
                "ghosts_after_restore",
                format!("<= {}", a.max_ghosts),
                m.ghosts.to_string(),
                m.ghosts <= a.max_ghosts && m.errors.is_empty(),
            );
        }
        if let Some(max) = a.max_missing {
            slo(
                "missing",
                format!("<= {max}"),
                i.membership.missing.to_string(),
                i.membership.missing <= max,
            );
        }
        if let Some(max) = a.max_direct_lost {
            slo(
                "direct_lost",
                format!("<= {max}"),
                i.messages.direct_total.lost.to_string(),
                i.messages.direct_total.lost <= max,
            );
        }
        let passed = slos.iter().all(|s| s.pass);
        Report {
            version: 1,
            run: i.run,
            mode: a.mode,
            region: a.region.clone(),
            started_at_ms: i.started_at_ms,
            router: i.router,
            dns: i.dns,
            local: i.local,
            grace_s: secs(i.grace),
            workload: Workload {
                clients: a.clients,
                rooms: i.rooms,
                duration_s: secs(a.duration),
                publish_every_s: secs(a.publish_every),
                direct_every_s: secs(a.direct_every),
                placement: i.placement,
            },
            disrupted_at_s: secs(i.disrupted_at),
            route_away: i.route_away,
            rehome: i.rehome,
            messages: i.messages,
            membership: i.membership,
            membership_after_restore: i.membership_after_restore,
            restore: i.restore,
            timeline: i.timeline,
            resume_status: i.resume_status,
            request_errors: i.request_errors,
            errors: i.errors,
            slos,
            passed,
        }
    }

    /// The readable report.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let mode = match self.mode {
            Mode::Drain => "drain",
            Mode::Kill => "kill",
        };
        let _ = writeln!(
            o,
            "\n=== meridian drill {}: {mode} {} ({} clients, {} rooms, {}) ===\n",
            self.run,
            self.region,
            self.workload.clients,
            self.workload.rooms,
            if self.local {
                "local mesh"
            } else {
                "deployment"
            }
        );
        let r = &self.route_away;
        let _ = writeln!(
            o,
            "route-away     HTTP {}   DNS {}   ({} polls of {})",
            opt(r.http_s),
            if r.dns_polled {
                opt(r.dns_s)
            } else {
                "not polled".into()
            },
            r.polls,
            r.probe
        );
        let h = &self.rehome;
        let _ = writeln!(
            o,
            "re-home        {} affected, {} resumed elsewhere, {} not resumed; since the \
             disruption p50 {} p99 {} max {}; destinations {:?}",
            h.affected,
            h.resumed,
            h.not_resumed,
            opt(h.since_disruption.p50_s),
            opt(h.since_disruption.p99_s),
            opt(h.since_disruption.max_s),
            h.destinations
        );
        let _ = writeln!(
            o,
            "               since each client's own loss: p50 {} p99 {} max {}",
            opt(h.since_lost.p50_s),
            opt(h.since_lost.p99_s),
            opt(h.since_lost.max_s)
        );
        for (label, m) in std::iter::once(("members     ", &self.membership)).chain(
            self.membership_after_restore
                .iter()
                .map(|m| ("  (restored) ", m)),
        ) {
            let _ = writeln!(
                o,
                "{label}   {} ghosts, {} missing, {} stale-region (checked {:.1}s after the \
                 disruption in {}; converged after {})",
                m.ghosts,
                m.missing,
                m.stale_region,
                m.checked_at_s,
                m.regions.join(", "),
                opt(m.converged_after_s)
            );
            for e in m.examples.iter().take(5) {
                let _ = writeln!(o, "               {e}");
            }
            for e in &m.errors {
                let _ = writeln!(o, "               error: {e}");
            }
        }
        if let Some(back) = &self.restore {
            let _ = writeln!(
                o,
                "restore        {} took {:.1}s; routed back: HTTP {} DNS {}; new clients from \
                 its cities landed in {:?} (first in region after {})",
                back.action,
                back.took_s,
                opt(back.route_back.http_s),
                opt(back.route_back.dns_s),
                back.probes,
                opt(back.first_in_region_s)
            );
        }
        let _ = writeln!(
            o,
            "\nroom messages by origin region (expected = publishes x other room members)"
        );
        table(
            &mut o,
            &self.messages.rooms,
            &self.messages.rooms_total,
            false,
        );
        let _ = writeln!(
            o,
            "\ndirect messages by sender region (at-most-once: an ok means a node took it)"
        );
        table(
            &mut o,
            &self.messages.direct,
            &self.messages.direct_total,
            true,
        );
        if self.messages.rooms_total.duplicated_retried > 0 {
            let _ = writeln!(
                o,
                "  {} of the duplicates are retries of a publish whose ok was lost with the \
                 region (idempotency keys are per region)",
                self.messages.rooms_total.duplicated_retried
            );
        }
        if self.messages.deduped_by_clients > 0 {
            let _ = writeln!(
                o,
                "  {} room events were offered again after a re-home and dropped by the clients' \
                 version vector as expected (not duplicates: an application never sees them)",
                self.messages.deduped_by_clients
            );
        }
        if self.messages.acks_recovered > 0 {
            let _ = writeln!(
                o,
                "  {} publishes lost their ok with the region but came back to their publisher \
                 after the resume: published, not retried",
                self.messages.acks_recovered
            );
        }
        for e in &self.messages.examples {
            let _ = writeln!(o, "  {e}");
        }
        if self.messages.unacked_delivered > 0 || self.messages.pending_at_end > 0 {
            let _ = writeln!(
                o,
                "  {} delivered messages never acked to their publisher; {} clients had a request \
                 without reply at the end",
                self.messages.unacked_delivered, self.messages.pending_at_end
            );
        }
        let _ = writeln!(
            o,
            "resume status  {:?}   request errors {:?}",
            self.resume_status, self.request_errors
        );

        let _ = writeln!(
            o,
            "\ntimeline (connected clients per region; only the seconds where something changed, \
             every second is in the JSON report)"
        );
        let regions: Vec<String> = self
            .timeline
            .first()
            .map(|p| p.regions.keys().cloned().collect())
            .unwrap_or_default();
        let mut head = format!("  {:>7}", "t");
        for r in &regions {
            let _ = write!(head, " {r:>13}");
        }
        let _ = writeln!(o, "{head} {:>6}", "moving");
        for (p, until) in timeline_changes(&self.timeline) {
            let t = if until > p.t_s {
                format!("{}-{}", p.t_s, until)
            } else {
                p.t_s.to_string()
            };
            let mut line = format!("  {t:>7}");
            for r in &regions {
                let _ = write!(line, " {:>13}", p.regions.get(r).copied().unwrap_or(0));
            }
            let _ = write!(line, " {:>6}", p.reconnecting);
            if let Some(n) = &p.note {
                let _ = write!(line, "  <- {n}");
            }
            let _ = writeln!(o, "{line}");
        }

        let _ = writeln!(o, "\nSLOs");
        for s in &self.slos {
            let _ = writeln!(
                o,
                "  {} {:<26} {:>10}   (limit {})",
                if s.pass { "PASS" } else { "FAIL" },
                s.name,
                s.value,
                s.limit
            );
        }
        let _ = writeln!(
            o,
            "\n{}",
            if self.passed {
                "drill passed: every SLO held"
            } else {
                "drill FAILED: an SLO was violated"
            }
        );
        o
    }
}

/// The timeline in runs: each point that differs from the one before it, carries a note, or
/// follows a note starts a run, which lasts until the next such point: (first point, last
/// second of the run). A noted second stands alone.
pub fn timeline_changes(timeline: &[TimelinePoint]) -> Vec<(&TimelinePoint, u64)> {
    let mut runs: Vec<(&TimelinePoint, u64)> = Vec::new();
    for p in timeline {
        match runs.last_mut() {
            Some((start, until))
                if p.note.is_none()
                    && start.note.is_none()
                    && p.regions == start.regions
                    && p.reconnecting == start.reconnecting =>
            {
                *until = p.t_s;
            }
            _ => runs.push((p, p.t_s)),
        }
    }
    runs
}

fn table(o: &mut String, rows: &BTreeMap<String, Counts>, total: &Counts, direct: bool) {
    let _ = writeln!(
        o,
        "  {:<14} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "region",
        if direct { "acked" } else { "published" },
        "expected",
        "delivered",
        "lost",
        "same",
        "cross",
        "moving",
        "dup",
        "refusd"
    );
    let line = |o: &mut String, name: &str, c: &Counts| {
        let _ = writeln!(
            o,
            "  {:<14} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            name,
            c.published,
            c.expected,
            c.delivered,
            c.lost,
            c.lost_same_region,
            c.lost_cross_region,
            c.lost_reconnecting,
            c.duplicated,
            c.refused
        );
    };
    for (name, c) in rows {
        line(o, name, c);
    }
    line(o, "total", total);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        drill: DrillArgs,
    }

    fn inputs(args: &DrillArgs) -> Inputs<'_> {
        Inputs {
            args,
            run: "t".into(),
            started_at_ms: 0,
            router: "http://r".into(),
            dns: None,
            local: true,
            grace: Duration::from_secs(3),
            placement: BTreeMap::new(),
            rooms: 1,
            disrupted_at: Duration::from_secs(3),
            route_away: RouteWatch {
                s: Some(0.8),
                http_s: Some(0.8),
                ..RouteWatch::default()
            },
            rehome: Rehome {
                affected: 2,
                resumed: 2,
                within_p95_bound: 1.0,
                within_p99_bound: 1.0,
                ..Rehome::default()
            },
            messages: MessageStats::default(),
            membership: Membership::default(),
            membership_after_restore: None,
            restore: None,
            timeline: Vec::new(),
            resume_status: BTreeMap::new(),
            request_errors: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn the_timeline_text_keeps_only_changes() {
        let point = |t_s: u64, us: usize, eu: usize, note: Option<&str>| TimelinePoint {
            t_s,
            regions: [("eu".to_owned(), eu), ("us".to_owned(), us)].into(),
            reconnecting: 0,
            note: note.map(str::to_owned),
        };
        let mut timeline: Vec<TimelinePoint> = (0..30).map(|t| point(t, 4, 4, None)).collect();
        timeline[10] = point(10, 4, 4, Some("killing eu"));
        for p in &mut timeline[11..] {
            p.regions.insert("eu".into(), 0);
            p.regions.insert("us".into(), 8);
        }
        let runs = timeline_changes(&timeline);
        let spans: Vec<(u64, u64)> = runs.iter().map(|(p, until)| (p.t_s, *until)).collect();
        assert_eq!(spans, [(0, 9), (10, 10), (11, 29)]);

        let cli = Cli::parse_from(["x", "--region", "eu", "--mode", "kill"]);
        let mut i = inputs(&cli.drill);
        i.timeline = timeline;
        let text = Report::new(i).text();
        let rows = text
            .lines()
            .skip_while(|l| !l.starts_with("timeline"))
            .skip(2)
            .take_while(|l| !l.is_empty())
            .count();
        assert_eq!(rows, 3, "{text}");
        assert!(text.contains("11-29"), "{text}");
    }

    #[test]
    fn slos_pass_and_fail_on_their_limits() {
        let cli = Cli::parse_from(["x", "--region", "eu", "--mode", "kill"]);
        let report = Report::new(inputs(&cli.drill));
        assert!(report.passed, "{:?}", report.slos);
        assert!(report.text().contains("drill passed"));

        let strict = Cli::parse_from([
            "x",
            "--region",
            "eu",
            "--mode",
            "drain",
            "--slo-route-away",
            "500ms",
        ]);
        let mut i = inputs(&strict.drill);
        i.messages.rooms_total.lost = 1;
        i.membership.ghosts = 2;
        i.rehome.within_p95_bound = 0.9;
        let report = Report::new(i);
        assert!(!report.passed);
        let failed: Vec<&str> = report
            .slos
            .iter()
            .filter(|s| !s.pass)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            failed,
            ["route_away_s", "rehomed_within_p95_bound", "lost", "ghosts"]
        );
        // A route that never moved fails too.
        let mut i = inputs(&cli.drill);
        i.route_away = RouteWatch::default();
        assert!(!Report::new(i).passed);
    }
}
