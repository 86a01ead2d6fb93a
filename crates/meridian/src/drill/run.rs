//! One drill as phases over one [`DrillRun`]: [`DrillRun::setup`] (place the clients with the
//! router, start the workload, wait until every client joined and heard every region of its
//! room), [`DrillRun::disrupt`] (drain or kill R while watching the routing move away),
//! [`DrillRun::observe`] (re-homing, then membership after the grace period, then the rest of
//! `--duration`), [`DrillRun::restore`] (undrain or restart R, watch traffic come back) and
//! [`DrillRun::report`] (stop the workload, account, print and write the report).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ledger::{self, ClientLog, ClientRecord};
use super::membership::{check_membership, Membership};
use super::restore::{restore, Restore};
use super::routing::{fmt_opt, shell, watch_route, RouteWatch};
use super::target::Target;
use super::timeline::{self, TimelinePoint};
use super::workload::{self, ClientPlan, Phase, Placed, Shared};
use super::{report, DrillArgs, Mode};

/// Everything the phases of one drill share: what it drills, the placed clients and their
/// logs, the workload's tasks and phase, the timeline and its notes.
pub(super) struct DrillRun {
    args: DrillArgs,
    target: Target,
    /// The run id (in user ids, rooms and message data).
    run: String,
    started_at_ms: u64,
    /// Every region's name, as the router lists them.
    names: Vec<String>,
    /// R's public addresses (what DNS answers for it).
    region_addresses: Vec<IpAddr>,
    /// Every region's `ws_url`.
    ws_urls: BTreeMap<String, String>,
    /// Clients per first-ranked region.
    placement: BTreeMap<String, usize>,
    /// The address whose routing is watched (one of R's demo cities).
    probe_address: IpAddr,
    rooms: Vec<String>,
    plans: Vec<Arc<ClientPlan>>,
    logs: Vec<Arc<Mutex<ClientLog>>>,
    tasks: Vec<JoinHandle<()>>,
    phase: watch::Sender<Phase>,
    shared: Arc<Shared>,
    /// When the workload started running (after setup).
    running_at: Instant,
    notes: Arc<Mutex<Vec<(Instant, String)>>>,
    timeline: Arc<Mutex<Vec<TimelinePoint>>>,
    sampler: Option<JoinHandle<()>>,
}

/// What [`DrillRun::disrupt`] did and saw.
pub(super) struct Disruption {
    /// Indices of the clients connected to R just before.
    affected: Vec<usize>,
    /// When R was drained or killed.
    at: Instant,
    /// The same, from the drill's clock origin.
    since_start: Duration,
    /// When the routing moved away from R.
    route_away: RouteWatch,
}

/// What [`DrillRun::restore`] did and saw.
pub(super) struct Restored {
    restore: Option<Restore>,
    membership: Option<Membership>,
}

/// Runs every phase; returns whether every SLO held.
pub(super) async fn drill(args: DrillArgs, target: Target) -> Result<bool> {
    let run = DrillRun::setup(args, target).await?;
    let disruption = run.disrupt().await?;
    let membership = run.observe(&disruption).await;
    let restored = run.restore(&disruption).await?;
    run.report(disruption, membership, restored).await
}

/// One synthetic address per client: `a.b.<network>.<host>` in a demo city.
fn synthetic_address(city: &mmdb_writer::demo::DemoCity, index: usize) -> IpAddr {
    let network = ((index / 250) % 16) as u8;
    let host = (1 + index % 250) as u8;
    IpAddr::V4(Ipv4Addr::new(city.v4[0], city.v4[1], network, host))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DrillRun {
    /// Setup: checks R can be drilled, places the clients with the router, starts the
    /// workload and waits until every client joined and its vector knows every region of its
    /// room; then the workload runs and the timeline is sampled every second.
    async fn setup(args: DrillArgs, target: Target) -> Result<DrillRun> {
        let started_at_ms = unix_ms();
        let run = format!(
            "{:06x}",
            (started_at_ms ^ args.seed.wrapping_mul(0x9E37)) & 0xff_ffff
        );
        let regions = target.router.regions().await?;
        let names: Vec<String> = regions.iter().map(|r| r.name.clone()).collect();
        let Some(drilled) = regions.iter().find(|r| r.name == args.region) else {
            bail!(
                "the router knows no region {:?}; it has: {}",
                args.region,
                names.join(", ")
            );
        };
        if drilled.health == "down" {
            bail!(
                "the router sees {} down already; restore it before drilling (meridian up: POST \
                 /regions/{}/restart on its control API)",
                args.region,
                args.region
            );
        }
        if drilled.control_state() != "active" {
            bail!(
                "{} is {} by a routing control; undrain it first",
                args.region,
                drilled.control_state()
            );
        }
        let region_addresses = drilled.addresses.clone();
        let ws_urls: BTreeMap<String, String> = regions
            .iter()
            .filter_map(|r| r.ws_url.clone().map(|u| (r.name.clone(), u)))
            .collect();

        // Placement: each demo city's natural region by the router.
        let mut cities_of: BTreeMap<String, Vec<&'static mmdb_writer::demo::DemoCity>> =
            BTreeMap::new();
        for city in &mmdb_writer::demo::CITIES {
            let answer = target.router.route(city.v4_address(0)).await?;
            if let Some(first) = answer.regions.first() {
                cities_of.entry(first.name.clone()).or_default().push(city);
            }
        }
        let Some(drilled_cities) = cities_of.get(&args.region).cloned() else {
            bail!(
                "no demo city is routed to {} first, so no client would be affected; is the router \
                 using the synthetic demo GeoIP database (or a real one that places the demo \
                 networks)?",
                args.region
            );
        };
        let homes: Vec<&String> = cities_of.keys().collect();
        let mut placed = Vec::with_capacity(args.clients);
        for i in 0..args.clients {
            let home = homes[i % homes.len()];
            let list = &cities_of[home];
            let city = list[(i / homes.len()) % list.len()];
            let address = synthetic_address(city, i);
            let answer = target.router.route(address).await?;
            placed.push(Placed {
                address,
                ranking: answer
                    .regions
                    .into_iter()
                    .map(|r| (r.name, r.ws_url))
                    .collect(),
            });
        }
        let (plans, rooms) = workload::assign_rooms(&run, &placed, args.rooms, false);
        let probe_address = synthetic_address(drilled_cities[0], 250 * 15 + 249);
        let mut placement: BTreeMap<String, usize> = BTreeMap::new();
        for p in &placed {
            if let Some((r, _)) = p.ranking.first() {
                *placement.entry(r.clone()).or_default() += 1;
            }
        }
        println!(
            "drill {run}: {:?} {} with {} clients in {} rooms (placed: {}); grace {:?}",
            args.mode,
            args.region,
            args.clients,
            rooms.len(),
            placement
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            target.grace
        );

        // The workload.
        let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
        let shared = Arc::new(Shared {
            run: run.clone(),
            router: target.router.clone(),
            phase: phase_rx,
            publish_every: args.publish_every,
            direct_every: args.direct_every,
            start: Instant::now(),
            seed: args.seed,
        });
        let grant = format!("drill-{run}-*:publish");
        let mut logs: Vec<Arc<Mutex<ClientLog>>> = Vec::new();
        let mut tasks = Vec::new();
        let plans: Vec<Arc<ClientPlan>> = plans.into_iter().map(Arc::new).collect();
        for plan in &plans {
            let token = crate::token::mint(
                &plan.user,
                std::slice::from_ref(&grant),
                86_400,
                &target.token_secret,
            )?;
            let log = Arc::new(Mutex::new(ClientLog::default()));
            logs.push(Arc::clone(&log));
            tasks.push(tokio::spawn(workload::run_client(
                Arc::clone(plan),
                token,
                Arc::clone(&shared),
                log,
            )));
        }
        let mut drill = DrillRun {
            args,
            target,
            run,
            started_at_ms,
            names,
            region_addresses,
            ws_urls,
            placement,
            probe_address,
            rooms,
            plans,
            logs,
            tasks,
            phase: phase_tx,
            shared,
            running_at: Instant::now(),
            notes: Arc::new(Mutex::new(Vec::new())),
            timeline: Arc::new(Mutex::new(Vec::new())),
            sampler: None,
        };
        drill.settle().await?;
        let _ = drill.phase.send(Phase::Running);
        drill.running_at = Instant::now();
        drill.sampler = Some(timeline::sample(
            drill.logs.clone(),
            Arc::clone(&drill.timeline),
            drill.names.clone(),
            drill.running_at,
        ));
        Ok(drill)
    }

    /// Every client's log as it is now.
    fn snapshot(&self) -> Vec<ClientLog> {
        self.logs
            .iter()
            .map(|l| l.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    }

    /// Prints what the drill does and keeps it for the timeline.
    fn note(&self, what: String) {
        println!("[{:>5.1}s] {what}", self.running_at.elapsed().as_secs_f64());
        self.notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Instant::now(), what));
    }

    /// Waits (30 s at most) until every client joined and its vector knows every region of
    /// its room.
    async fn settle(&self) -> Result<()> {
        let plans = &self.plans;
        let mut home_regions: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for p in plans.iter() {
            if let Some((r, _)) = p.ranking.first() {
                home_regions
                    .entry(p.room.as_str())
                    .or_default()
                    .insert(r.clone());
            }
        }
        let setup_deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.snapshot();
            let joined = now.iter().filter(|l| l.joined).count();
            let settled = plans.iter().zip(&now).all(|(p, l)| {
                l.joined
                    && home_regions
                        .get(p.room.as_str())
                        .is_none_or(|want| want.iter().all(|r| l.origins.contains(r)))
            });
            if settled {
                return Ok(());
            }
            if Instant::now() > setup_deadline {
                let _ = self.phase.send(Phase::Done);
                let errors: Vec<String> = now
                    .iter()
                    .flat_map(|l| l.errors.iter().cloned())
                    .take(5)
                    .collect();
                let unsettled: Vec<String> = plans
                    .iter()
                    .zip(&now)
                    .filter_map(|(p, l)| {
                        let want = home_regions.get(p.room.as_str())?;
                        let lacking: Vec<&String> =
                            want.iter().filter(|r| !l.origins.contains(r)).collect();
                        (!lacking.is_empty()).then(|| {
                            format!(
                                "{} in {} (connected to {}) has seen nothing from {lacking:?}",
                                p.user,
                                p.room,
                                l.region.as_deref().unwrap_or("-")
                            )
                        })
                    })
                    .take(5)
                    .collect();
                bail!(
                    "{joined} of {} clients joined, but not every one saw every region of its room \
                     within 30 s (are the relays linked? see the relay logs in the state dir): \
                     {unsettled:?}; connection errors: {errors:?}",
                    plans.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Disrupt: after a warm-up, drains or kills R while watching HTTP and DNS routing move
    /// away from it.
    async fn disrupt(&self) -> Result<Disruption> {
        let args = &self.args;
        let target = &self.target;
        let warmup = (args.duration / 4).clamp(Duration::from_secs(3), Duration::from_secs(20));
        tokio::time::sleep(warmup).await;
        let before = self.snapshot();
        let affected: Vec<usize> = before
            .iter()
            .enumerate()
            .filter(|(_, l)| l.region.as_deref() == Some(args.region.as_str()))
            .map(|(i, _)| i)
            .collect();
        let disrupted = Instant::now();
        let since_start = disrupted.saturating_duration_since(self.shared.start);
        self.note(format!(
            "{} {} ({} clients connected there)",
            match args.mode {
                Mode::Drain => "draining",
                Mode::Kill => "killing",
            },
            args.region,
            affected.len()
        ));
        let watch_away = async {
            watch_route(
                target,
                self.probe_address,
                &args.region,
                &self.region_addresses,
                true,
                Duration::from_secs(60),
            )
            .await
        };
        let run = &self.run;
        let act = async {
            match args.mode {
                Mode::Drain => {
                    let token = target.admin_token.as_deref().unwrap_or_default();
                    target
                        .admin
                        .as_ref()
                        .ok_or_else(|| anyhow!("no router admin API"))?
                        .admin(
                            token,
                            &args.region,
                            "drain",
                            &format!("meridian drill {run}"),
                        )
                        .await?;
                    if let Some(control) = &target.control {
                        control.call(&args.region, "drain").await?;
                    } else if let Some(command) = &args.drain_command {
                        shell(command).await?;
                    }
                }
                Mode::Kill => {
                    if let Some(control) = &target.control {
                        control.call(&args.region, "kill").await?;
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        };
        let (route_away, acted) = tokio::join!(watch_away, act);
        if let Err(e) = acted {
            let _ = self.phase.send(Phase::Done);
            return Err(e.context(format!("could not {:?} {}", args.mode, args.region)));
        }
        self.note(format!(
            "router stopped sending users to {}: HTTP after {}, DNS after {}",
            args.region,
            fmt_opt(route_away.http_s),
            if route_away.dns_polled {
                fmt_opt(route_away.dns_s)
            } else {
                "not polled".into()
            }
        ));
        Ok(Disruption {
            affected,
            at: disrupted,
            since_start,
            route_away,
        })
    }

    /// Observe: until every affected client resumed elsewhere (bounded by the p99 SLO), then
    /// membership after the grace period, then the workload keeps going for `--duration` in
    /// all.
    async fn observe(&self, disruption: &Disruption) -> Membership {
        let args = &self.args;
        let rehome_deadline = disruption.at + args.slo_rehome_p99 + Duration::from_secs(5);
        loop {
            let now = self.snapshot();
            let done = disruption.affected.iter().all(|&i| {
                now.get(i).is_some_and(|l| {
                    ledger::rehome_of(l, &args.region, disruption.since_start).is_some()
                })
            });
            if done || Instant::now() > rehome_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The same per-client figure as the report's re-home line (resumed elsewhere, measured
        // from the disruption), not the time this loop noticed it.
        let rehomed: Vec<f64> = {
            let now = self.snapshot();
            disruption
                .affected
                .iter()
                .filter_map(|&i| now.get(i))
                .filter_map(|l| ledger::rehome_of(l, &args.region, disruption.since_start))
                .map(|(since_disruption, ..)| since_disruption.as_secs_f64())
                .collect()
        };
        self.note(format!(
            "{}/{} affected clients re-homed{}",
            rehomed.len(),
            disruption.affected.len(),
            rehomed
                .iter()
                .copied()
                .reduce(f64::max)
                .map(|max| format!(" (the last {max:.2}s after the disruption)"))
                .unwrap_or_default()
        ));

        // Membership after the grace period (kill: link death + grace; drain: leaves propagate).
        let settle = match args.mode {
            Mode::Kill => self.target.grace + Duration::from_secs(6),
            Mode::Drain => Duration::from_secs(5),
        };
        tokio::time::sleep_until(disruption.at + settle).await;
        let live: Vec<(String, String)> = self
            .ws_urls
            .iter()
            .filter(|(name, _)| **name != args.region)
            .map(|(n, u)| (n.clone(), u.clone()))
            .collect();
        let membership = self.membership(&live, disruption).await;
        self.note(format!(
            "membership: {} ghosts, {} missing, {} listed in a stale region",
            membership.ghosts, membership.missing, membership.stale_region
        ));

        // Keep the workload going for --duration in all.
        tokio::time::sleep_until(self.running_at + args.duration).await;
        membership
    }

    /// The members listings of `regions` against the connected clients.
    async fn membership(
        &self,
        regions: &[(String, String)],
        disruption: &Disruption,
    ) -> Membership {
        check_membership(
            &self.run,
            &self.target.token_secret,
            regions,
            &self.rooms,
            &self.plans,
            &self.logs,
            disruption.at,
        )
        .await
    }

    /// Restore (unless `--no-restore`): undrain or restart R, watch the routing and new
    /// clients come back, and check membership in every region, R included.
    async fn restore(&self, disruption: &Disruption) -> Result<Restored> {
        let args = &self.args;
        if args.no_restore {
            return Ok(Restored {
                restore: None,
                membership: None,
            });
        }
        self.note(format!("restoring {}", args.region));
        let r = restore(
            args,
            &self.target,
            self.probe_address,
            &self.region_addresses,
        )
        .await?;
        self.note(format!(
            "{} routed to {} again after {}; new clients: {:?}",
            args.region,
            args.region,
            fmt_opt(r.route_back.s),
            r.probes
        ));
        // Every region again, R included: its listing must match too.
        let all: Vec<(String, String)> = self
            .ws_urls
            .iter()
            .map(|(n, u)| (n.clone(), u.clone()))
            .collect();
        let m = self.membership(&all, disruption).await;
        self.note(format!(
            "membership after the restore: {} ghosts, {} missing, {} listed in a stale region",
            m.ghosts, m.missing, m.stale_region
        ));
        Ok(Restored {
            restore: Some(r),
            membership: Some(m),
        })
    }

    /// Report: stops the workload (no new publishes, in-flight deliveries land, close),
    /// accounts for every message, prints the report and writes its JSON; whether every SLO
    /// held.
    async fn report(
        mut self,
        disruption: Disruption,
        membership: Membership,
        restored: Restored,
    ) -> Result<bool> {
        let _ = self.phase.send(Phase::Stopping);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = self.phase.send(Phase::Done);
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Some(sampler) = self.sampler.take() {
            sampler.abort();
        }

        // Accounting.
        let args = &self.args;
        let end = self.snapshot();
        let records: Vec<ClientRecord> = self
            .plans
            .iter()
            .zip(&end)
            .map(|(p, l)| ClientRecord {
                user: p.user.clone(),
                room: p.room.clone(),
                partner: p.partner.clone(),
                log: l.clone(),
            })
            .collect();
        let messages = ledger::account(&records);
        let affected_logs: Vec<&ClientLog> = disruption
            .affected
            .iter()
            .filter_map(|&i| end.get(i))
            .collect();
        let rehome = ledger::rehome(
            &affected_logs,
            &args.region,
            disruption.since_start,
            args.slo_rehome_p95,
            args.slo_rehome_p99,
        );
        let timeline = timeline::annotated(&self.timeline, &self.notes, self.running_at);
        let mut resume_status: BTreeMap<String, u64> = BTreeMap::new();
        let mut request_errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut errors: Vec<String> = Vec::new();
        for l in &end {
            for (k, v) in &l.resume_status {
                *resume_status.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &l.request_errors {
                *request_errors.entry(k.clone()).or_default() += v;
            }
            for e in &l.errors {
                if errors.len() < 10 {
                    errors.push(e.clone());
                }
            }
        }
        let report = report::Report::new(report::Inputs {
            args,
            run: self.run.clone(),
            started_at_ms: self.started_at_ms,
            router: self.target.router.base(),
            dns: self.target.dns,
            local: self.target.local,
            grace: self.target.grace,
            placement: self.placement.clone(),
            rooms: self.rooms.len(),
            disrupted_at: disruption.since_start,
            route_away: disruption.route_away,
            rehome,
            messages,
            membership,
            membership_after_restore: restored.membership,
            restore: restored.restore,
            timeline,
            resume_status,
            request_errors,
            errors,
        });
        print!("{}", report.text());
        let path = args.report.clone().or_else(|| {
            self.target
                .report_dir
                .as_ref()
                .map(|dir| dir.join(format!("drill-{}.json", self.run)))
        });
        if let Some(path) = &path {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing the report to {}", path.display()))?;
            println!(
                "JSON report (every second of the timeline): {}",
                path.display()
            );
        }
        Ok(report.passed)
    }
}
