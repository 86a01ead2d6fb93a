//! The driver of the [`ReplicationCore`]: ONE task owns the core, fed by bounded channels
//! (the links' frames and link events through [`DriverSink`], this region's Redis feed, a
//! one-second tick, and the results of the store operations it started). It executes the
//! core's outputs on the [`ReplicaStore`] and the relay's [`RelayHandle`]: frames are sent
//! in order from the task itself; store operations run concurrently (at most
//! [`MAX_IN_FLIGHT`] at a time) and come back as inputs, except the applies of one room,
//! which run one after the other (each event continues the one before it): the events a room
//! has queued while its apply ran go to Redis together, in one round trip
//! ([`ReplicaStore::apply_batch`], at most [`APPLY_BATCH`]), with the outcomes one at a time
//! would give.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meridian_protocol::relay::{Direct, Frame, Presence, RoomEvent};
use meridian_protocol::{Hlc, RoomId, UserId};
use region_state::replica::{Applied, Feed, ReplicaStore};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::core::{AppendedEntry, CoreOptions, Input, Output, ReplicationCore, StartPoint};
use super::ReplicationOptions;
use crate::link::RelayHandle;
use crate::metrics::Metrics;
use crate::sink::{EventSink, LinkEvent};

/// Capacity of the links' channel into the driver (a full channel slows the links' readers).
const INPUTS: usize = 1024;
/// Capacity of the Redis feed's channel.
const FEED: usize = 4096;
/// Store operations under way at most; more wait in a queue.
pub const MAX_IN_FLIGHT: usize = 64;
/// Peers' events waiting for their room's apply at most: above it the driver stops reading the
/// links' channel, which fills and slows the links' readers, and QUIC flow control slows the
/// sending relay (backpressure, as when the links applied inline; never an unbounded backlog).
pub const MAX_QUEUED_APPLIES: usize = 4096;
/// Events of one room applied in one round trip at most.
pub const APPLY_BATCH: usize = 128;

/// What the links hand the driver.
#[derive(Debug)]
enum FromLinks {
    Frame(String, Frame),
    Up(String),
    Down(String),
}

/// The links' [`EventSink`]: frames and link events go to the driver through a bounded
/// channel; direct messages are delivered to this region's Redis at once.
#[derive(Debug)]
pub struct DriverSink {
    tx: mpsc::Sender<FromLinks>,
    store: ReplicaStore,
}

#[async_trait]
impl EventSink for DriverSink {
    async fn room_event(&self, peer: &str, event: RoomEvent) {
        let _ = self
            .tx
            .send(FromLinks::Frame(peer.to_owned(), Frame::RoomEvent(event)))
            .await;
    }

    async fn direct(&self, peer: &str, direct: Direct) {
        match self
            .store
            .deliver_direct(&direct.to_user, &direct.payload)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(%peer, to = %direct.to_user, "direct message for a user no longer here");
            }
            Err(e) => tracing::warn!(%peer, error = %e, "cannot deliver a direct message"),
        }
    }

    async fn control(&self, peer: &str, frame: Frame) {
        let _ = self.tx.send(FromLinks::Frame(peer.to_owned(), frame)).await;
    }

    async fn link(&self, peer: &str, event: LinkEvent) {
        let item = match event {
            LinkEvent::Up { .. } => FromLinks::Up(peer.to_owned()),
            LinkEvent::Down { .. } => FromLinks::Down(peer.to_owned()),
        };
        let _ = self.tx.send(item).await;
    }
}

/// The replication driver of one relay. Create it with [`Driver::new`], start the links with
/// its sink, then [`Driver::run`] it on the links' handle.
#[derive(Debug)]
pub struct Driver {
    store: ReplicaStore,
    peers: Vec<String>,
    options: ReplicationOptions,
    rx: mpsc::Receiver<FromLinks>,
}

/// A store operation's result: the inputs it gives the core, and the room whose applies
/// finished with how many events they were (the next ones of that room may start).
type Done = (Vec<Input>, Option<(RoomId, usize)>);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Driver {
    /// The driver for the region of `store` with these peers, and the sink for the links.
    pub fn new(
        store: ReplicaStore,
        peers: Vec<String>,
        options: ReplicationOptions,
    ) -> (Self, Arc<DriverSink>) {
        let (tx, rx) = mpsc::channel(INPUTS);
        let sink = Arc::new(DriverSink {
            tx,
            store: store.clone(),
        });
        (
            Self {
                store,
                peers,
                options,
                rx,
            },
            sink,
        )
    }

    /// Runs until `shutdown`: follows this region's Redis and the links of `handle`.
    pub async fn run(self, handle: RelayHandle, shutdown: CancellationToken) {
        let start = Instant::now();
        let core = ReplicationCore::new(
            self.store.region(),
            &self.peers,
            CoreOptions::from(&self.options),
            Duration::ZERO,
        );
        let mut run = Running {
            store: self.store.clone(),
            handle,
            options: self.options.clone(),
            core,
            start,
            tasks: JoinSet::new(),
            waiting: VecDeque::new(),
            applies: HashMap::new(),
            queued_applies: 0,
            local: VecDeque::new(),
        };
        match self.store.local_interest().await {
            Ok(rooms) => {
                for room in rooms {
                    run.local.push_back(Input::LocalInterest {
                        room,
                        local_members: true,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read local interest at start; the resync retries")
            }
        }
        run.settle().await;
        let (tx, mut feed) = mpsc::channel(FEED);
        let feed_task = self.store.start_feed(tx);
        let mut rx = self.rx;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                item = rx.recv(), if run.queued_applies < MAX_QUEUED_APPLIES => match item {
                    Some(FromLinks::Frame(peer, frame)) => {
                        run.local.push_back(Input::PeerFrame { peer, frame });
                    }
                    Some(FromLinks::Up(peer)) => run.local.push_back(Input::LinkUp(peer)),
                    Some(FromLinks::Down(peer)) => run.local.push_back(Input::LinkDown(peer)),
                    None => break,
                },
                item = feed.recv() => match item {
                    Some(item) => run.on_feed(item).await,
                    None => break,
                },
                Some(done) = run.tasks.join_next(), if !run.tasks.is_empty() => {
                    if let Ok((inputs, applied)) = done {
                        run.local.extend(inputs);
                        if let Some((room, n)) = applied {
                            run.next_apply(room, n);
                        }
                    }
                }
                _ = tick.tick() => {
                    for peer in &self.peers {
                        let heard = run
                            .handle
                            .last_heard(peer)
                            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                        if heard && run.handle.is_up(peer) {
                            run.local.push_back(Input::Heard(peer.clone()));
                        }
                    }
                    run.local.push_back(Input::Tick);
                    run.report_followed();
                }
            }
            run.settle().await;
        }
        feed_task.abort();
        run.tasks.abort_all();
    }
}

struct Running {
    store: ReplicaStore,
    handle: RelayHandle,
    options: ReplicationOptions,
    core: ReplicationCore,
    start: Instant,
    tasks: JoinSet<Done>,
    /// Store operations waiting for a free slot.
    waiting: VecDeque<Op>,
    /// Applies per room: the first ones (a batch) are under way, the rest wait for them.
    applies: HashMap<RoomId, VecDeque<(String, RoomEvent)>>,
    /// Events in `applies`, all rooms together.
    queued_applies: usize,
    /// Inputs to hand the core next.
    local: VecDeque<Input>,
}

/// A store operation.
enum Op {
    Output(Output),
    /// Events of one room, from the front of its queue, in order.
    Apply(Vec<(String, RoomEvent)>),
}

impl Running {
    fn metrics(&self) -> &Metrics {
        self.handle.metrics()
    }

    /// The rooms each peer follows, as a gauge (once a tick: not per event).
    fn report_followed(&self) {
        for peer in self.handle.links().into_keys() {
            let n = self.core.followed_count(&peer);
            self.metrics()
                .followed_rooms
                .get_or_create(&crate::metrics::PeerLabels { peer })
                .set(n as i64);
        }
    }

    /// Hands the core every pending input and executes its outputs.
    async fn settle(&mut self) {
        while let Some(input) = self.local.pop_front() {
            let now = self.start.elapsed();
            for output in self.core.handle(now, input) {
                self.execute(output).await;
            }
        }
        while self.tasks.len() < MAX_IN_FLIGHT {
            let Some(op) = self.waiting.pop_front() else {
                break;
            };
            self.spawn(op);
        }
    }

    async fn on_feed(&mut self, item: Feed) {
        match item {
            Feed::Room {
                room,
                seq,
                epoch,
                frame,
                idempotency,
            } => self.local.push_back(Input::Appended {
                room,
                entry: AppendedEntry {
                    epoch,
                    seq,
                    frame,
                    idempotency,
                },
                wall: Hlc {
                    wall_ms: now_ms(),
                    logical: 0,
                },
            }),
            Feed::Interest {
                room,
                local_members,
            } => self.local.push_back(Input::LocalInterest {
                room,
                local_members,
            }),
            Feed::Presence { user, online } => {
                let (on, off) = if online {
                    (vec![user], Vec::new())
                } else {
                    (Vec::new(), vec![user])
                };
                let frame = Frame::Presence(Presence {
                    reset: false,
                    online: on,
                    offline: off,
                });
                for (peer, up) in self.handle.links() {
                    if up {
                        self.send(&peer, &frame).await;
                    }
                }
            }
            Feed::Direct { region, to, frame } => {
                #[derive(Deserialize)]
                struct From {
                    from: UserId,
                }
                let Ok(From { from }) = serde_json::from_slice::<From>(&frame) else {
                    tracing::debug!(%to, "dropping a direct frame without a valid sender");
                    return;
                };
                self.local.push_back(Input::Direct {
                    peer: region,
                    direct: Direct {
                        to_user: to,
                        from_user: from,
                        payload: frame.to_vec(),
                    },
                });
            }
            Feed::Resynced => {
                // Announcements may have been missed while the feed was down.
                match self.store.local_interest().await {
                    Ok(rooms) => {
                        let now: BTreeSet<RoomId> = rooms.into_iter().collect();
                        let had = self.core.interest().clone();
                        for room in now.difference(&had) {
                            self.local.push_back(Input::LocalInterest {
                                room: room.clone(),
                                local_members: true,
                            });
                        }
                        for room in had.difference(&now) {
                            self.local.push_back(Input::LocalInterest {
                                room: room.clone(),
                                local_members: false,
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "interest rescan failed"),
                }
                self.local.push_back(Input::Resynced);
            }
            _ => {}
        }
    }

    /// Sends a frame; a failure other than an unencodable frame is the link going down.
    async fn send(&mut self, peer: &str, frame: &Frame) {
        let result = match frame {
            Frame::RoomEvent(e) => self.handle.send_room_event(peer, e).await,
            _ => self.handle.send_control(peer, frame).await,
        };
        match result {
            Ok(()) => {}
            Err(crate::link::SendError::Frame(e)) => {
                // Too large for a relay frame: the follower sees a gap, asks again, and gets
                // a snapshot past it.
                tracing::warn!(%peer, frame = frame.name(), error = %e, "frame cannot be sent");
            }
            Err(e) => {
                tracing::debug!(%peer, frame = frame.name(), error = %e, "frame not sent");
                if !self.handle.is_up(peer) {
                    self.local.push_back(Input::LinkDown(peer.to_owned()));
                }
            }
        }
    }

    async fn execute(&mut self, output: Output) {
        match output {
            Output::Send { peer, frame } => {
                if let Frame::RoomEvent(e) = &frame {
                    if matches!(e.kind, meridian_protocol::relay::EventKind::Snapshot(_)) {
                        Metrics::peer_inc(&self.metrics().snapshots_sent, &peer);
                    }
                }
                self.send(&peer, &frame).await;
            }
            Output::Apply { peer, event } => {
                let room = event.room.clone();
                let queue = self.applies.entry(room).or_default();
                queue.push_back((peer.clone(), event.clone()));
                self.queued_applies += 1;
                if queue.len() == 1 {
                    self.waiting.push_back(Op::Apply(vec![(peer, event)]));
                }
            }
            Output::Malformed { peer, why } => {
                self.metrics().malformed(&peer);
                tracing::warn!(%peer, why, "dropping a frame from the peer");
            }
            Output::DirectsDropped { peer, count, why } => {
                self.metrics()
                    .direct_dropped
                    .get_or_create(&crate::metrics::PeerLabels { peer: peer.clone() })
                    .inc_by(count);
                tracing::warn!(region = %peer, dropped = count, why, "direct messages dropped");
            }
            other => self.waiting.push_back(Op::Output(other)),
        }
    }

    /// `n` applies of `room` finished: the next ones of the room (those queued meanwhile, up
    /// to [`APPLY_BATCH`]) may start, as one batch.
    fn next_apply(&mut self, room: RoomId, n: usize) {
        let Some(queue) = self.applies.get_mut(&room) else {
            return;
        };
        let done = n.min(queue.len());
        queue.drain(..done);
        self.queued_applies = self.queued_applies.saturating_sub(done);
        if queue.is_empty() {
            self.applies.remove(&room);
            return;
        }
        let batch: Vec<_> = queue.iter().take(APPLY_BATCH).cloned().collect();
        self.waiting.push_back(Op::Apply(batch));
    }

    fn spawn(&mut self, op: Op) {
        let store = self.store.clone();
        let handle = self.handle.clone();
        let options = self.options.clone();
        self.tasks
            .spawn(async move { run_op(store, handle, options, op).await });
    }
}

async fn run_op(
    store: ReplicaStore,
    handle: RelayHandle,
    options: ReplicationOptions,
    op: Op,
) -> Done {
    let output = match op {
        Op::Apply(batch) => {
            let Some(room) = batch.first().map(|(_, e)| e.room.clone()) else {
                return (Vec::new(), None);
            };
            let n = batch.len();
            let (peers, events): (Vec<String>, Vec<RoomEvent>) = batch.into_iter().unzip();
            let outcomes: Vec<Option<Applied>> = match store.apply_batch(&events).await {
                Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
                Err(e) => {
                    tracing::warn!(%room, events = n, error = %e, "cannot apply replicated events");
                    vec![None; n]
                }
            };
            let inputs = peers
                .into_iter()
                .zip(outcomes)
                .map(|(peer, outcome)| {
                    let label = match outcome {
                        Some(Applied::Applied) => "applied",
                        Some(Applied::Duplicate) => "duplicate",
                        Some(Applied::Superseded) => "superseded",
                        Some(Applied::Gap) => "gap",
                        None => "error",
                    };
                    handle.metrics().applied(&peer, label);
                    Input::Applied {
                        peer,
                        room: room.clone(),
                        outcome,
                    }
                })
                .collect();
            return (inputs, Some((room, n)));
        }
        Op::Output(o) => o,
    };
    let inputs = match output {
        Output::ReadHistory {
            peer,
            room,
            after,
            count,
        } => match store.read_local(&room, after, count).await {
            Ok(batch) => vec![Input::HistoryRead { peer, room, batch }],
            Err(e) => {
                // The follow is dropped; the peer asks again (gap retry, interest snapshot).
                tracing::warn!(%room, %peer, error = %e, "cannot read history");
                vec![Input::PeerFrame {
                    peer,
                    frame: Frame::Interest {
                        room,
                        interested: false,
                        since: None,
                    },
                }]
            }
        },
        Output::TakeSnapshot { peer, room, at } => match store.snapshot(&room).await {
            Ok(snapshot) => vec![Input::SnapshotTaken {
                peer,
                room,
                at,
                snapshot,
            }],
            Err(e) => {
                tracing::warn!(%peer, %room, error = %e, "cannot take a room snapshot");
                vec![Input::PeerFrame {
                    peer,
                    frame: Frame::Interest {
                        room,
                        interested: false,
                        since: None,
                    },
                }]
            }
        },
        Output::FindJoinPosition {
            peer,
            room,
            from_ms,
        } => {
            let at = match store.position_before(&room, from_ms).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(%peer, %room, error = %e, "cannot find the join position; sending a snapshot as of now");
                    None
                }
            };
            vec![Input::JoinPosition { peer, room, at }]
        }
        Output::ReadResumePoints {
            peer,
            rooms,
            purpose,
        } => match start_points(&store, &peer, &rooms).await {
            Some(points) => vec![Input::ResumePoints {
                peer,
                rooms: rooms.into_iter().zip(points).collect(),
                purpose,
            }],
            None => vec![Input::ResumeFailed { peer, purpose }],
        },
        Output::SetPresence { peer, presence } => {
            if let Err(e) = store
                .set_remote_presence(&peer, &presence.online, &presence.offline, presence.reset)
                .await
            {
                tracing::warn!(%peer, error = %e, "cannot record the peer's presence");
            }
            Vec::new()
        }
        Output::SendPresenceSnapshot { peer } => {
            match store.local_online().await {
                Ok(online) => {
                    let p = Presence {
                        reset: true,
                        online,
                        offline: Vec::new(),
                    };
                    if let Err(e) = handle.send_control(&peer, &Frame::Presence(p)).await {
                        tracing::debug!(%peer, error = %e, "presence snapshot not sent");
                    }
                }
                Err(e) => tracing::warn!(%peer, error = %e, "cannot read local presence"),
            }
            Vec::new()
        }
        Output::RenewPresence { peer, .. } => {
            // From the last packet heard at the link level (keep-alives included).
            let left = handle
                .last_heard(&peer)
                .and_then(|h| options.presence_ttl.checked_sub(h.elapsed()))
                .filter(|l| *l >= Duration::from_millis(1));
            if let Some(left) = left {
                if let Err(e) = store.renew_remote_region(&peer, left).await {
                    tracing::debug!(%peer, error = %e, "cannot renew the peer's presence lease");
                }
            }
            Vec::new()
        }
        Output::DeclareDown { peer, rooms } => {
            let ok = declare_down(&store, &handle, &options, &peer, &rooms).await;
            vec![Input::DownDeclared { peer, ok }]
        }
        Output::Withdraw { room } => match store.purge_remote(&room).await {
            Ok(Some(_)) => {
                let frame = Frame::Interest {
                    room,
                    interested: false,
                    since: None,
                };
                for (peer, up) in handle.links() {
                    if up {
                        if let Err(e) = handle.send_control(&peer, &frame).await {
                            tracing::debug!(%peer, error = %e, "interest not sent");
                        }
                    }
                }
                Vec::new()
            }
            // A member is back: interested again.
            Ok(None) => vec![Input::LocalInterest {
                room,
                local_members: true,
            }],
            Err(e) => {
                tracing::warn!(%room, error = %e, "cannot withdraw interest; retrying");
                vec![
                    Input::LocalInterest {
                        room: room.clone(),
                        local_members: true,
                    },
                    Input::LocalInterest {
                        room,
                        local_members: false,
                    },
                ]
            }
        },
        Output::SendDirects { peer, directs } => {
            let mut unsent = Vec::new();
            let mut sent = 0usize;
            for d in directs {
                if !unsent.is_empty() {
                    unsent.push(d);
                    continue;
                }
                match handle.send_direct(&peer, &d).await {
                    Ok(()) => sent += 1,
                    Err(crate::link::SendError::Frame(e)) => {
                        tracing::warn!(%peer, error = %e, "direct message cannot be sent");
                    }
                    Err(_) => unsent.push(d),
                }
            }
            if sent > 1 {
                tracing::info!(%peer, sent, "delivered direct messages held for the link");
            }
            vec![Input::DirectsDone { peer, unsent }]
        }
        // Executed by the driver itself.
        Output::Send { .. }
        | Output::Apply { .. }
        | Output::Malformed { .. }
        | Output::DirectsDropped { .. } => Vec::new(),
    };
    (inputs, None)
}

/// Where `peer` should start each of `rooms` (see [`StartPoint`]); `None` when Redis cannot
/// say (asking without a position would get a snapshot as of now and skip what lies between).
async fn start_points(
    store: &ReplicaStore,
    peer: &str,
    rooms: &[RoomId],
) -> Option<Vec<StartPoint>> {
    let marks = match store.watermarks(peer, rooms).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot read watermarks; asking later");
            return None;
        }
    };
    let mut out = Vec::with_capacity(rooms.len());
    for (room, mark) in rooms.iter().zip(marks) {
        out.push(match mark {
            Some((e, s)) => StartPoint::Applied(e, s),
            None => match store.wanted_position(room, peer).await {
                Ok(Some((e, s))) => StartPoint::Resumer(e, s),
                Ok(None) => match store.local_join_time(room).await {
                    Ok(Some(t)) => StartPoint::JoinedAt(t),
                    Ok(None) => StartPoint::Unknown,
                    Err(e) => {
                        tracing::warn!(%peer, %room, error = %e, "cannot read the room's join time; asking later");
                        return None;
                    }
                },
                Err(e) => {
                    tracing::warn!(%peer, %room, error = %e, "cannot read the resumers' positions; asking later");
                    return None;
                }
            },
        });
    }
    Some(out)
}

async fn declare_down(
    store: &ReplicaStore,
    handle: &RelayHandle,
    options: &ReplicationOptions,
    peer: &str,
    rooms: &[RoomId],
) -> bool {
    let mut removed = 0;
    for room in rooms {
        match store.region_down(room, peer).await {
            Ok(n) => removed += n,
            Err(e) => {
                tracing::warn!(%peer, %room, error = %e, "region_down failed; retrying next tick");
                return false;
            }
        }
    }
    if let Err(e) = store.drop_remote_region(peer).await {
        tracing::warn!(%peer, error = %e, "cannot drop the region's presence; retrying");
        return false;
    }
    Metrics::peer_inc(&handle.metrics().region_down, peer);
    tracing::warn!(
        %peer,
        grace_s = options.grace.as_secs_f64(),
        members_removed = removed,
        "region declared down"
    );
    true
}
