//! The pure replication core: the relay's replication rules as a state machine in the
//! style of quinn-proto. [`ReplicationCore::handle`] takes the time and one [`Input`] and
//! returns the [`Output`]s to execute; it has no tokio, no Redis and no sockets, so
//! `tests/sim.rs` runs thousands of seeded multi-region schedules on virtual time.
//!
//! It owns the follow cursors (what each peer has been sent of each room), the interest and
//! its linger, the gap retry, the grace period and region loss, and the presence leases.
//! Reading the store and sending frames are outputs; their results come back as inputs
//! (`HistoryRead`, `SnapshotTaken`, `ResumePoints`, `Applied`, `DownDeclared`).
//!
//! It also holds direct messages while a peer's link is down (bounded in bytes and age),
//! turns join times and resumers' positions into the start point of a first follow, asks
//! every peer again for every room after a Redis resync, and sends a message appended
//! right after the cursor without a history read (the fast path, [`Input::Appended`]).
//! [`super::driver::Driver`] runs it in the relay process.
//!
//! Over the ~700-line aim (about 1,150 production lines): it is one state machine whose
//! handlers share the follow, link and direct-buffer state; splitting the direct buffer and
//! the resume logic into submodules is the next tidy-up.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use meridian_protocol::relay::{
    epoch_code, epoch_text, Direct, EventKind, Follow, Frame, Position, Presence, RoomEvent,
    Snapshot,
};
use meridian_protocol::{Hlc, RoomEventFrame, RoomEventKind, RoomId};
use region_state::replica::{Applied, LocalBatch, LocalEntry, RoomSnapshot};

/// The core's timers and sizes (a subset of [`super::ReplicationOptions`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CoreOptions {
    /// A peer whose link stays down this long is declared down.
    pub grace: Duration,
    /// How long a room stays followed after its last local member left.
    pub interest_linger: Duration,
    /// Period of the interest snapshot sent to every peer (anti-entropy).
    pub rescan: Duration,
    /// History entries per read.
    pub batch: usize,
    /// Least time between two requests for the same room after a gap.
    pub gap_retry: Duration,
    /// A peer's users count as online until this long after it was last heard.
    pub presence_ttl: Duration,
    /// Bytes of direct messages held per peer while its link is down (oldest go first).
    pub direct_buffer_bytes: usize,
    /// How long a held direct message stays worth delivering.
    pub direct_buffer_age: Duration,
    /// Clock-skew allowance subtracted from a follower's join time.
    pub join_skew: Duration,
}

impl CoreOptions {
    /// The defaults of docs/relay.md for the direct buffer (4 MiB, 30 s) and the join skew
    /// (500 ms) with these timers.
    pub fn with_timers(
        grace: Duration,
        interest_linger: Duration,
        rescan: Duration,
        batch: usize,
        gap_retry: Duration,
        presence_ttl: Duration,
    ) -> Self {
        Self {
            grace,
            interest_linger,
            rescan,
            batch,
            gap_retry,
            presence_ttl,
            direct_buffer_bytes: 4 << 20,
            direct_buffer_age: Duration::from_secs(30),
            join_skew: Duration::from_millis(500),
        }
    }
}

impl From<&super::ReplicationOptions> for CoreOptions {
    fn from(o: &super::ReplicationOptions) -> Self {
        Self {
            grace: o.grace,
            interest_linger: o.interest_linger,
            rescan: o.rescan,
            batch: o.batch,
            gap_retry: o.gap_retry,
            presence_ttl: o.presence_ttl,
            direct_buffer_bytes: o.direct_buffer_bytes,
            direct_buffer_age: o.direct_buffer_age,
            join_skew: o.join_skew,
        }
    }
}

/// Where a peer should start sending a room it has sent nothing of yet, or resume one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPoint {
    /// The last `(epoch, seq)` applied here from the peer.
    Applied(String, u64),
    /// Nothing applied yet; the oldest `(epoch, seq)` of the peer's events that a client
    /// resuming here has seen (it was re-homed and must get everything after it).
    Resumer(String, u64),
    /// Nothing applied and no resumer; the room has had local members since this wall time
    /// (ms): the peer replays from just before it.
    JoinedAt(u64),
    /// Nothing known: a snapshot as of now.
    Unknown,
}

impl From<Option<(String, u64)>> for StartPoint {
    fn from(mark: Option<(String, u64)>) -> Self {
        mark.map_or(Self::Unknown, |(e, s)| Self::Applied(e, s))
    }
}

impl StartPoint {
    /// The position to put in `Interest` / `InterestSnapshot`.
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::Applied(e, s) | Self::Resumer(e, s) => Some(Position {
                epoch: epoch_code(e),
                seq: *s,
            }),
            Self::JoinedAt(t) => Some(Position::joined_at(*t)),
            Self::Unknown => None,
        }
    }
}

/// A history entry appended here, as the room channel delivered it (the fast path).
#[derive(Debug, Clone, PartialEq)]
pub struct AppendedEntry {
    /// The room epoch.
    pub epoch: String,
    /// Its history position.
    pub seq: u64,
    /// The client frame.
    pub frame: bytes::Bytes,
    /// A publish's idempotency id.
    pub idempotency: Option<String>,
}

/// Why resume points were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFor {
    /// One `Interest` per room (a new local interest, or asking again after a gap).
    Interest,
    /// One `InterestSnapshot` with every room (link up, periodic rescan).
    Snapshot,
    /// One `Interest` per room of every room, after a Redis resync (the peer is pending
    /// until they are sent).
    Refollow,
}

/// What happened, for the core.
#[derive(Debug, Clone)]
pub enum Input {
    /// An entry was appended to `room`'s history here (local or replicated).
    LocalAppended {
        /// The room.
        room: RoomId,
    },
    /// Like [`Input::LocalAppended`], with the entry: a follower whose cursor it continues
    /// gets a message without a history read. `wall` stamps such a message (its stored
    /// stamp is not in the feed; a message's stamp only advances the receiver's clock).
    Appended {
        /// The room.
        room: RoomId,
        /// The entry.
        entry: AppendedEntry,
        /// The wall clock now.
        wall: Hlc,
    },
    /// A direct message for a user homed in `peer`.
    Direct {
        /// The peer region.
        peer: String,
        /// The message.
        direct: Direct,
    },
    /// The outcome of [`Output::SendDirects`]: those not sent (the link failed), in order.
    DirectsDone {
        /// The peer region.
        peer: String,
        /// Not sent: held again in front.
        unsent: Vec<Direct>,
    },
    /// This region's Redis feed reconnected (Redis may have lost data).
    Resynced,
    /// The answer to [`Output::FindJoinPosition`] (`None`: the store failed).
    JoinPosition {
        /// The follower.
        peer: String,
        /// The room.
        room: RoomId,
        /// The history position just before the follower's join time.
        at: Option<(String, u64)>,
    },
    /// [`Output::ReadResumePoints`] failed (Redis cannot say): nothing is sent.
    ResumeFailed {
        /// The peer.
        peer: String,
        /// Why they were asked.
        purpose: ResumeFor,
    },
    /// `room` gained its first (`true`) or lost its last (`false`) local member.
    LocalInterest {
        /// The room.
        room: RoomId,
        /// Whether it has local members now.
        local_members: bool,
    },
    /// A frame from `peer`.
    PeerFrame {
        /// The peer region.
        peer: String,
        /// The frame.
        frame: Frame,
    },
    /// The link to `peer` is up.
    LinkUp(String),
    /// The link to `peer` is down (or a send to it failed).
    LinkDown(String),
    /// Time passed (the driver ticks every second).
    Tick,
    /// `peer`'s relay was heard at the link level (a keep-alive): held direct messages may go.
    Heard(String),
    /// The answer to [`Output::ReadHistory`].
    HistoryRead {
        /// The follower.
        peer: String,
        /// The room.
        room: RoomId,
        /// What the store returned.
        batch: LocalBatch,
    },
    /// The answer to [`Output::TakeSnapshot`].
    SnapshotTaken {
        /// The follower.
        peer: String,
        /// The room.
        room: RoomId,
        /// The follower's resume point, if it had one.
        at: Option<(String, u64)>,
        /// The snapshot.
        snapshot: RoomSnapshot,
    },
    /// The answer to [`Output::ReadResumePoints`]: the watermark of each room.
    ResumePoints {
        /// The peer to ask.
        peer: String,
        /// Rooms with where the peer should start (see [`StartPoint`]).
        rooms: Vec<(RoomId, StartPoint)>,
        /// Why they were read.
        purpose: ResumeFor,
    },
    /// The outcome of [`Output::Apply`] (`None`: the store failed).
    Applied {
        /// The peer the event came from.
        peer: String,
        /// The room.
        room: RoomId,
        /// The outcome.
        outcome: Option<Applied>,
    },
    /// The outcome of [`Output::DeclareDown`].
    DownDeclared {
        /// The peer region.
        peer: String,
        /// Whether every room was done (otherwise the next tick tries again).
        ok: bool,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `frame` to `peer` (a failure comes back as [`Input::LinkDown`]).
    Send {
        /// The peer region.
        peer: String,
        /// The frame.
        frame: Frame,
    },
    /// Read `room`'s history after `after` for `peer` ([`Input::HistoryRead`]).
    ReadHistory {
        /// The follower.
        peer: String,
        /// The room.
        room: RoomId,
        /// Position to read after.
        after: u64,
        /// Entries at most.
        count: usize,
    },
    /// Take `room`'s snapshot for `peer` ([`Input::SnapshotTaken`]).
    TakeSnapshot {
        /// The follower.
        peer: String,
        /// The room.
        room: RoomId,
        /// The follower's resume point, to label the snapshot with.
        at: Option<(String, u64)>,
    },
    /// Read the watermarks of `peer` in `rooms` ([`Input::ResumePoints`]).
    ReadResumePoints {
        /// The peer.
        peer: String,
        /// The rooms.
        rooms: Vec<RoomId>,
        /// Why.
        purpose: ResumeFor,
    },
    /// Apply a replicated event ([`Input::Applied`]).
    Apply {
        /// The peer it came from.
        peer: String,
        /// The event.
        event: RoomEvent,
    },
    /// Record the users `peer` says are connected there.
    SetPresence {
        /// The peer.
        peer: String,
        /// What it said.
        presence: Presence,
    },
    /// Send `peer` this region's online users (a reset presence frame).
    SendPresenceSnapshot {
        /// The peer.
        peer: String,
    },
    /// Extend the lease of `peer`'s users here by `ttl`.
    RenewPresence {
        /// The peer.
        peer: String,
        /// For how long.
        ttl: Duration,
    },
    /// `peer` stayed down for the grace period: its members leave `rooms` with
    /// `region_down` and its users' presence goes ([`Input::DownDeclared`]).
    DeclareDown {
        /// The peer.
        peer: String,
        /// The rooms with local interest.
        rooms: Vec<RoomId>,
    },
    /// The room's last local member left `interest_linger` ago: drop its replica and tell
    /// the peers (the driver sends the `Interest { interested: false }` frames itself after
    /// the purge, since a member may be back).
    Withdraw {
        /// The room.
        room: RoomId,
    },
    /// Send these held direct messages to `peer`, in order, stopping at the first failure
    /// ([`Input::DirectsDone`]).
    SendDirects {
        /// The peer region.
        peer: String,
        /// The messages.
        directs: Vec<Direct>,
    },
    /// Direct messages for `peer` were dropped (counted, logged).
    DirectsDropped {
        /// The peer region.
        peer: String,
        /// How many.
        count: u64,
        /// Why.
        why: &'static str,
    },
    /// Find `room`'s history position just before `from_ms` for `peer`'s first follow
    /// ([`Input::JoinPosition`]).
    FindJoinPosition {
        /// The follower.
        peer: String,
        /// The room.
        room: RoomId,
        /// Wall time (ms): the follower's join time less the skew allowance.
        from_ms: u64,
    },
    /// A frame from a peer broke a rule (counted, logged, dropped).
    Malformed {
        /// The peer.
        peer: String,
        /// Why.
        why: &'static str,
    },
}

/// Where a follower is in a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    epoch: String,
    /// History position read up to.
    seq: u64,
    /// Origin seq of the last event sent (the follower's watermark).
    prev: u64,
}

#[derive(Debug, Default)]
struct Follower {
    /// `None` while the first snapshot is being taken.
    cursor: Option<Cursor>,
    /// A store read is under way; `dirty`: the history grew meanwhile.
    reading: bool,
    dirty: bool,
}

/// Direct messages held for one peer (oldest first).
#[derive(Debug, Default)]
struct DirectBuffer {
    queue: VecDeque<(Duration, Direct)>,
    bytes: usize,
    /// An [`Output::SendDirects`] is under way: new messages queue behind it.
    sending: bool,
}

fn direct_size(d: &Direct) -> usize {
    d.payload.len() + 64
}

#[derive(Debug, Default)]
struct Link {
    up: bool,
    down_since: Option<Duration>,
    declared_down: bool,
    declaring: bool,
    last_heard: Option<Duration>,
}

/// The replication state machine of one region's relay.
#[derive(Debug)]
pub struct ReplicationCore {
    region: String,
    options: CoreOptions,
    interest: BTreeSet<RoomId>,
    withdraw: BTreeMap<RoomId, Duration>,
    links: BTreeMap<String, Link>,
    follows: BTreeMap<(RoomId, String), Follower>,
    gap_asked: BTreeMap<(String, RoomId), Duration>,
    last_rescan: Duration,
    directs: BTreeMap<String, DirectBuffer>,
    /// Peers still to be asked again for every room after a Redis resync.
    refollow: BTreeSet<String>,
}

/// The relay event for a history entry of this region, `None` for one that is not this
/// region's to send (replicated from elsewhere, a member event of a user homed elsewhere, or
/// unreadable). Decoded with the protocol's decoder; the history keeps a publish's
/// idempotency id beside the frame.
pub fn outgoing_kind(entry: &LocalEntry, region: &str) -> Option<RoomEventKind> {
    if entry.origin.is_some() {
        return None;
    }
    let event = RoomEventFrame::decode(&entry.frame).ok()?;
    if event.origin.is_some() || event.region.as_deref().is_some_and(|r| r != region) {
        return None;
    }
    Some(match event.kind {
        RoomEventKind::Message { from, data, .. } => RoomEventKind::Message {
            from,
            data,
            idempotency: entry.idempotency.clone(),
        },
        kind => kind,
    })
}

impl ReplicationCore {
    /// The core of region `region` with these peers, at time `now` (every peer's link is
    /// down from `now` until it comes up).
    pub fn new(region: &str, peers: &[String], options: CoreOptions, now: Duration) -> Self {
        Self {
            region: region.to_owned(),
            options,
            interest: BTreeSet::new(),
            withdraw: BTreeMap::new(),
            links: peers
                .iter()
                .map(|p| {
                    (
                        p.clone(),
                        Link {
                            down_since: Some(now),
                            ..Link::default()
                        },
                    )
                })
                .collect(),
            follows: BTreeMap::new(),
            gap_asked: BTreeMap::new(),
            last_rescan: now,
            directs: BTreeMap::new(),
            refollow: BTreeSet::new(),
        }
    }

    /// Peers declared down and not back.
    pub fn declared_down(&self) -> BTreeSet<String> {
        self.links
            .iter()
            .filter(|(_, l)| l.declared_down)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Rooms with local interest.
    pub fn interest(&self) -> &BTreeSet<RoomId> {
        &self.interest
    }

    /// Whether `peer` follows `room` here with a cursor (its snapshot was sent).
    pub fn is_following(&self, peer: &str, room: &RoomId) -> bool {
        self.follows
            .get(&(room.clone(), peer.to_owned()))
            .is_some_and(|f| f.cursor.is_some())
    }

    /// How many rooms `peer` follows here (with or without a cursor yet).
    pub fn followed_count(&self, peer: &str) -> usize {
        self.follows.keys().filter(|(_, p)| p == peer).count()
    }

    fn up_peers(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|(_, l)| l.up)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Handles one input at `now` (time since any fixed origin) and returns what to do.
    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::LocalAppended { room } => self.on_appended(&room, &mut out),
            Input::Appended { room, entry, wall } => {
                let sent = self.fast_path(&room, &entry, wall, &mut out);
                self.read_after_append(&room, &sent, &mut out);
            }
            Input::Direct { peer, direct } => self.on_direct(now, peer, direct, &mut out),
            Input::DirectsDone { peer, unsent } => {
                let buf = self.directs.entry(peer.clone()).or_default();
                buf.sending = false;
                for d in unsent.into_iter().rev() {
                    buf.bytes += direct_size(&d);
                    buf.queue.push_front((now, d));
                }
                self.drain_directs(now, &peer, &mut out);
            }
            Input::Resynced => {
                // Redis may have lost data: every peer resends every room from what Redis
                // says was applied; the followers here re-read their history.
                self.refollow = self.links.keys().cloned().collect();
                self.ask_refollow(&mut out);
                let rooms: BTreeSet<RoomId> = self.follows.keys().map(|(r, _)| r.clone()).collect();
                for room in rooms {
                    self.on_appended(&room, &mut out);
                }
            }
            Input::JoinPosition { peer, room, at } => {
                if let Some(f) = self.follows.get(&(room.clone(), peer.clone())) {
                    if f.cursor.is_none() {
                        out.push(Output::TakeSnapshot { peer, room, at });
                    }
                }
            }
            Input::ResumeFailed { .. } => {}
            Input::LocalInterest {
                room,
                local_members: true,
            } => {
                self.withdraw.remove(&room);
                if self.interest.insert(room.clone()) {
                    for peer in self.up_peers() {
                        out.push(Output::ReadResumePoints {
                            peer,
                            rooms: vec![room.clone()],
                            purpose: ResumeFor::Interest,
                        });
                    }
                }
            }
            Input::LocalInterest {
                room,
                local_members: false,
            } => {
                if self.interest.contains(&room) {
                    self.withdraw
                        .insert(room, now + self.options.interest_linger);
                }
            }
            Input::PeerFrame { peer, frame } => self.on_frame(now, peer, frame, &mut out),
            Input::LinkUp(peer) => {
                let link = self.links.entry(peer.clone()).or_default();
                link.up = true;
                link.down_since = None;
                link.declared_down = false;
                link.last_heard = Some(now);
                // The interest snapshot below re-follows everything.
                self.refollow.remove(&peer);
                out.push(Output::ReadResumePoints {
                    peer: peer.clone(),
                    rooms: self.interest.iter().cloned().collect(),
                    purpose: ResumeFor::Snapshot,
                });
                out.push(Output::SendPresenceSnapshot { peer: peer.clone() });
                out.push(Output::RenewPresence {
                    peer: peer.clone(),
                    ttl: self.options.presence_ttl,
                });
                self.drain_directs(now, &peer, &mut out);
            }
            Input::LinkDown(peer) => {
                let link = self.links.entry(peer.clone()).or_default();
                link.up = false;
                link.down_since.get_or_insert(now);
                // The peer re-follows from its watermarks when it is back.
                self.follows.retain(|(_, p), _| *p != peer);
            }
            Input::Tick => self.on_tick(now, &mut out),
            Input::Heard(peer) => {
                if let Some(link) = self.links.get_mut(&peer).filter(|l| l.up) {
                    link.last_heard = Some(now);
                    self.drain_directs(now, &peer, &mut out);
                }
            }
            Input::HistoryRead { peer, room, batch } => {
                self.on_history(&peer, &room, batch, &mut out)
            }
            Input::SnapshotTaken {
                peer,
                room,
                at,
                snapshot,
            } => self.on_snapshot(&peer, &room, at, snapshot, &mut out),
            Input::ResumePoints {
                peer,
                rooms,
                purpose,
            } => {
                if !self.links.get(&peer).is_some_and(|l| l.up) {
                    return out;
                }
                let follows: Vec<Follow> = rooms
                    .into_iter()
                    .map(|(room, start)| Follow {
                        since: start.position(),
                        room,
                    })
                    .collect();
                match purpose {
                    ResumeFor::Snapshot => out.push(Output::Send {
                        peer,
                        frame: Frame::InterestSnapshot { rooms: follows },
                    }),
                    ResumeFor::Interest | ResumeFor::Refollow => {
                        if purpose == ResumeFor::Refollow {
                            self.refollow.remove(&peer);
                        }
                        for f in follows {
                            out.push(Output::Send {
                                peer: peer.clone(),
                                frame: Frame::Interest {
                                    room: f.room,
                                    interested: true,
                                    since: f.since,
                                },
                            });
                        }
                    }
                }
            }
            Input::Applied {
                peer,
                room,
                outcome,
            } => {
                if matches!(outcome, None | Some(Applied::Gap)) {
                    self.ask_again(now, &peer, &room, &mut out);
                }
            }
            Input::DownDeclared { peer, ok } => {
                if let Some(link) = self.links.get_mut(&peer) {
                    link.declaring = false;
                    // Declared only while still down (the link may be back meanwhile).
                    link.declared_down = ok && !link.up;
                    if link.declared_down {
                        self.drop_directs(&peer, "region declared down", &mut out);
                    }
                }
            }
        }
        out
    }

    fn on_frame(&mut self, now: Duration, peer: String, frame: Frame, out: &mut Vec<Output>) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.last_heard = Some(now);
        }
        match frame {
            Frame::RoomEvent(event) => {
                if event.origin_region != peer {
                    out.push(Output::Malformed {
                        peer,
                        why: "forwarded event: peers may only send their own region's events",
                    });
                    return;
                }
                out.push(Output::Apply { peer, event });
            }
            Frame::Interest {
                room,
                interested: true,
                since,
            } => self.follow(&peer, room, since, out),
            Frame::Interest {
                room,
                interested: false,
                ..
            } => {
                self.follows.remove(&(room, peer));
            }
            Frame::InterestSnapshot { rooms } => {
                let listed: BTreeSet<RoomId> = rooms.iter().map(|f| f.room.clone()).collect();
                self.follows
                    .retain(|(room, p), _| *p != peer || listed.contains(room));
                for f in rooms {
                    if !self.follows.contains_key(&(f.room.clone(), peer.clone())) {
                        self.follow(&peer, f.room, f.since, out);
                    }
                }
            }
            Frame::Presence(presence) => out.push(Output::SetPresence { peer, presence }),
            _ => {}
        }
    }

    /// `peer` follows `room` from `since`: a snapshot first (labelled with the resume point
    /// when the history still reaches it), then the history after it.
    fn follow(&mut self, peer: &str, room: RoomId, since: Option<Position>, out: &mut Vec<Output>) {
        if let Some(joined) = since.and_then(|p| p.join_time()) {
            // The peer has nothing of ours yet and has had members since `joined`: replay
            // from just before then (less the skew allowance), so every message published
            // here after its members joined reaches them.
            self.follows.insert(
                (room.clone(), peer.to_owned()),
                Follower {
                    cursor: None,
                    reading: true,
                    dirty: false,
                },
            );
            out.push(Output::FindJoinPosition {
                peer: peer.to_owned(),
                room,
                from_ms: joined.saturating_sub(self.options.join_skew.as_millis() as u64),
            });
            return;
        }
        let at = since
            .filter(|p| p.epoch != 0)
            .map(|p| (epoch_text(p.epoch), p.seq));
        self.follows.insert(
            (room.clone(), peer.to_owned()),
            Follower {
                cursor: None,
                reading: true,
                dirty: false,
            },
        );
        out.push(Output::TakeSnapshot {
            peer: peer.to_owned(),
            room,
            at,
        });
    }

    fn on_snapshot(
        &mut self,
        peer: &str,
        room: &RoomId,
        at: Option<(String, u64)>,
        snap: RoomSnapshot,
        out: &mut Vec<Output>,
    ) {
        let Some(f) = self.follows.get_mut(&(room.clone(), peer.to_owned())) else {
            return;
        };
        let label = match at {
            Some((epoch, seq)) if epoch == snap.epoch && seq <= snap.seq => seq,
            _ => snap.seq,
        };
        out.push(Output::Send {
            peer: peer.to_owned(),
            frame: Frame::RoomEvent(RoomEvent {
                room: room.clone(),
                origin_region: self.region.clone(),
                origin_epoch: epoch_code(&snap.epoch),
                origin_seq: label,
                prev_seq: 0,
                hlc: snap.stamp,
                kind: EventKind::Snapshot(Snapshot {
                    members: snap.members,
                    state: snap.state,
                }),
            }),
        });
        f.cursor = Some(Cursor {
            epoch: snap.epoch,
            seq: label,
            prev: label,
        });
        f.reading = true;
        f.dirty = false;
        out.push(Output::ReadHistory {
            peer: peer.to_owned(),
            room: room.clone(),
            after: label,
            count: self.options.batch,
        });
    }

    fn on_appended(&mut self, room: &RoomId, out: &mut Vec<Output>) {
        self.read_after_append(room, &BTreeSet::new(), out);
    }

    /// Starts a history read for each follower of `room` but those in `done` (up to date).
    fn read_after_append(&mut self, room: &RoomId, done: &BTreeSet<String>, out: &mut Vec<Output>) {
        let batch = self.options.batch;
        let keys: Vec<(RoomId, String)> = self
            .follows
            .range((room.clone(), String::new())..)
            .take_while(|((r, _), _)| r == room)
            .filter(|((_, p), _)| !done.contains(p))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(f) = self.follows.get_mut(&key) else {
                continue;
            };
            if f.reading {
                f.dirty = true;
                continue;
            }
            let Some(c) = &f.cursor else { continue };
            f.reading = true;
            out.push(Output::ReadHistory {
                peer: key.1.clone(),
                room: key.0.clone(),
                after: c.seq,
                count: batch,
            });
        }
    }

    fn on_history(&mut self, peer: &str, room: &RoomId, batch: LocalBatch, out: &mut Vec<Output>) {
        let region = self.region.clone();
        let count = self.options.batch;
        let Some(f) = self.follows.get_mut(&(room.clone(), peer.to_owned())) else {
            return;
        };
        let Some(cursor) = f.cursor.as_mut() else {
            return;
        };
        let trimmed = batch.oldest.is_some_and(|o| o > cursor.seq + 1) && batch.seq > cursor.seq;
        if batch.epoch != cursor.epoch || trimmed || batch.seq < cursor.seq {
            // The room restarted or the follower fell behind the history: start over.
            f.cursor = None;
            out.push(Output::TakeSnapshot {
                peer: peer.to_owned(),
                room: room.clone(),
                at: None,
            });
            return;
        }
        let full = batch.entries.len() >= count;
        for entry in &batch.entries {
            if entry.seq <= cursor.seq {
                continue;
            }
            cursor.seq = entry.seq;
            let Some(kind) = outgoing_kind(entry, &region) else {
                continue;
            };
            out.push(Output::Send {
                peer: peer.to_owned(),
                frame: Frame::RoomEvent(RoomEvent {
                    room: room.clone(),
                    origin_region: region.clone(),
                    origin_epoch: epoch_code(&batch.epoch),
                    origin_seq: entry.seq,
                    prev_seq: cursor.prev,
                    hlc: entry.stamp,
                    kind: EventKind::Event(kind),
                }),
            });
            cursor.prev = entry.seq;
        }
        if full || f.dirty {
            f.dirty = false;
            out.push(Output::ReadHistory {
                peer: peer.to_owned(),
                room: room.clone(),
                after: cursor.seq,
                count,
            });
        } else {
            f.reading = false;
        }
    }

    /// The fast path: `entry` continues a follower's cursor and is a message (or an entry
    /// replicated from elsewhere, skipped): sent without a history read. Anything else is
    /// left to the history read that [`Self::on_appended`] starts.
    /// Returns the followers brought up to date.
    fn fast_path(
        &mut self,
        room: &RoomId,
        entry: &AppendedEntry,
        wall: Hlc,
        out: &mut Vec<Output>,
    ) -> BTreeSet<String> {
        let mut done = BTreeSet::new();
        let decoded = RoomEventFrame::decode(&entry.frame).ok();
        let region = self.region.clone();
        for ((r, peer), f) in self
            .follows
            .range_mut((room.clone(), String::new())..)
            .take_while(|((r, _), _)| r == room)
        {
            if f.reading {
                continue;
            }
            let Some(c) = f.cursor.as_mut() else { continue };
            if c.epoch != entry.epoch || entry.seq != c.seq + 1 {
                continue;
            }
            let Some(decoded) = &decoded else { continue };
            if decoded.origin.is_some() {
                c.seq = entry.seq;
                done.insert(peer.clone());
                continue;
            }
            if decoded.region.as_deref().is_some_and(|x| x != region) {
                continue;
            }
            let RoomEventKind::Message { from, data, .. } = &decoded.kind else {
                continue;
            };
            c.seq = entry.seq;
            out.push(Output::Send {
                peer: peer.clone(),
                frame: Frame::RoomEvent(RoomEvent {
                    room: r.clone(),
                    origin_region: region.clone(),
                    origin_epoch: epoch_code(&entry.epoch),
                    origin_seq: entry.seq,
                    prev_seq: c.prev,
                    hlc: wall,
                    kind: EventKind::Event(RoomEventKind::Message {
                        from: from.clone(),
                        data: data.clone(),
                        idempotency: entry.idempotency.clone(),
                    }),
                }),
            });
            c.prev = entry.seq;
            done.insert(peer.clone());
        }
        done
    }

    /// Whether `peer` is up and was heard within `presence_ttl − 1 s` (a link that went
    /// quiet that long is probably dead though not yet declared so: hold, don't send).
    fn heard_recently(&self, now: Duration, peer: &str) -> bool {
        let quiet = self
            .options
            .presence_ttl
            .saturating_sub(Duration::from_secs(1));
        self.links
            .get(peer)
            .is_some_and(|l| l.up && l.last_heard.is_some_and(|h| now.saturating_sub(h) < quiet))
    }

    fn on_direct(&mut self, now: Duration, peer: String, direct: Direct, out: &mut Vec<Output>) {
        if self.links.get(&peer).is_some_and(|l| l.declared_down) {
            out.push(Output::DirectsDropped {
                peer,
                count: 1,
                why: "region down",
            });
            return;
        }
        let limit = self.options.direct_buffer_bytes;
        let buf = self.directs.entry(peer.clone()).or_default();
        buf.bytes += direct_size(&direct);
        buf.queue.push_back((now, direct));
        let mut dropped = 0;
        while buf.bytes > limit {
            let Some((_, old)) = buf.queue.pop_front() else {
                break;
            };
            buf.bytes = buf.bytes.saturating_sub(direct_size(&old));
            dropped += 1;
        }
        if dropped > 0 {
            out.push(Output::DirectsDropped {
                peer: peer.clone(),
                count: dropped,
                why: "buffer full while the link is down",
            });
        }
        self.drain_directs(now, &peer, out);
    }

    /// Sends the messages held for `peer` (in order, behind any send under way) when its
    /// link is up and heard; those held longer than `direct_buffer_age` are dropped.
    fn drain_directs(&mut self, now: Duration, peer: &str, out: &mut Vec<Output>) {
        if !self.heard_recently(now, peer) {
            return;
        }
        let age = self.options.direct_buffer_age;
        let Some(buf) = self.directs.get_mut(peer) else {
            return;
        };
        if buf.sending || buf.queue.is_empty() {
            return;
        }
        let mut expired = 0;
        let mut directs = Vec::with_capacity(buf.queue.len());
        for (at, d) in buf.queue.drain(..) {
            if now.saturating_sub(at) > age {
                expired += 1;
            } else {
                directs.push(d);
            }
        }
        buf.bytes = 0;
        if expired > 0 {
            out.push(Output::DirectsDropped {
                peer: peer.to_owned(),
                count: expired,
                why: "held longer than direct_buffer_ms",
            });
        }
        if !directs.is_empty() {
            buf.sending = true;
            out.push(Output::SendDirects {
                peer: peer.to_owned(),
                directs,
            });
        }
    }

    fn drop_directs(&mut self, peer: &str, why: &'static str, out: &mut Vec<Output>) {
        if let Some(buf) = self.directs.remove(peer) {
            if !buf.queue.is_empty() {
                out.push(Output::DirectsDropped {
                    peer: peer.to_owned(),
                    count: buf.queue.len() as u64,
                    why,
                });
            }
        }
    }

    /// Asks every peer still pending after a resync for its resume points (every tick until
    /// they are sent; a peer whose link is down re-follows everything at link-up).
    fn ask_refollow(&mut self, out: &mut Vec<Output>) {
        let up: BTreeSet<String> = self.up_peers().into_iter().collect();
        self.refollow.retain(|p| up.contains(p));
        if self.interest.is_empty() {
            self.refollow.clear();
        }
        for peer in &self.refollow {
            out.push(Output::ReadResumePoints {
                peer: peer.clone(),
                rooms: self.interest.iter().cloned().collect(),
                purpose: ResumeFor::Refollow,
            });
        }
    }

    fn ask_again(&mut self, now: Duration, peer: &str, room: &RoomId, out: &mut Vec<Output>) {
        if !self.interest.contains(room) {
            return;
        }
        let key = (peer.to_owned(), room.clone());
        if let Some(at) = self.gap_asked.get(&key) {
            if now.saturating_sub(*at) < self.options.gap_retry {
                return;
            }
        }
        self.gap_asked.insert(key, now);
        out.push(Output::ReadResumePoints {
            peer: peer.to_owned(),
            rooms: vec![room.clone()],
            purpose: ResumeFor::Interest,
        });
    }

    fn on_tick(&mut self, now: Duration, out: &mut Vec<Output>) {
        let due: Vec<RoomId> = self
            .withdraw
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for room in due {
            self.withdraw.remove(&room);
            self.interest.remove(&room);
            out.push(Output::Withdraw { room });
        }
        let ttl = self.options.presence_ttl;
        for (peer, link) in &mut self.links {
            if link.up {
                let quiet = link.last_heard.map_or(ttl, |h| now.saturating_sub(h));
                if let Some(left) = ttl.checked_sub(quiet).filter(|l| !l.is_zero()) {
                    out.push(Output::RenewPresence {
                        peer: peer.clone(),
                        ttl: left,
                    });
                }
            } else if let Some(since) = link.down_since {
                if now.saturating_sub(since) >= self.options.grace
                    && !link.declared_down
                    && !link.declaring
                {
                    link.declaring = true;
                    out.push(Output::DeclareDown {
                        peer: peer.clone(),
                        rooms: self.interest.iter().cloned().collect(),
                    });
                }
            }
        }
        self.ask_refollow(out);
        let held: Vec<String> = self
            .directs
            .iter()
            .filter(|(_, b)| !b.queue.is_empty() && !b.sending)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in held {
            self.drain_directs(now, &peer, out);
        }
        if now.saturating_sub(self.last_rescan) >= self.options.rescan {
            self.last_rescan = now;
            for peer in self.up_peers() {
                out.push(Output::ReadResumePoints {
                    peer,
                    rooms: self.interest.iter().cloned().collect(),
                    purpose: ResumeFor::Snapshot,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::Hlc;

    fn core() -> ReplicationCore {
        let options = CoreOptions {
            grace: Duration::from_secs(15),
            interest_linger: Duration::from_secs(5),
            rescan: Duration::from_secs(10),
            batch: 8,
            gap_retry: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(4),
            direct_buffer_bytes: 1_000,
            direct_buffer_age: Duration::from_secs(30),
            join_skew: Duration::from_millis(500),
        };
        ReplicationCore::new("eu", &["us".to_owned()], options, Duration::ZERO)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn room() -> RoomId {
        RoomId::new("r").unwrap()
    }

    #[test]
    fn a_peer_is_declared_down_once_after_the_grace_period() {
        let mut c = core();
        c.handle(
            secs(0),
            Input::LocalInterest {
                room: room(),
                local_members: true,
            },
        );
        let declares = |out: &[Output]| {
            out.iter()
                .filter(|o| matches!(o, Output::DeclareDown { .. }))
                .count()
        };
        assert_eq!(declares(&c.handle(secs(14), Input::Tick)), 0);
        let out = c.handle(secs(15), Input::Tick);
        assert_eq!(
            out.iter().find(|o| matches!(o, Output::DeclareDown { .. })),
            Some(&Output::DeclareDown {
                peer: "us".into(),
                rooms: vec![room()],
            })
        );
        // Pending, then done: never asked again.
        assert_eq!(declares(&c.handle(secs(16), Input::Tick)), 0);
        c.handle(
            secs(16),
            Input::DownDeclared {
                peer: "us".into(),
                ok: true,
            },
        );
        assert_eq!(c.declared_down().len(), 1);
        assert_eq!(declares(&c.handle(secs(30), Input::Tick)), 0);
        // Back: no longer down, and a failed declaration is retried on the next tick.
        c.handle(secs(31), Input::LinkUp("us".into()));
        assert!(c.declared_down().is_empty());
        c.handle(secs(32), Input::LinkDown("us".into()));
        assert_eq!(declares(&c.handle(secs(47), Input::Tick)), 1);
        c.handle(
            secs(47),
            Input::DownDeclared {
                peer: "us".into(),
                ok: false,
            },
        );
        assert_eq!(declares(&c.handle(secs(48), Input::Tick)), 1);
    }

    #[test]
    fn a_gap_asks_again_at_most_once_per_gap_retry() {
        let mut c = core();
        c.handle(
            secs(0),
            Input::LocalInterest {
                room: room(),
                local_members: true,
            },
        );
        c.handle(secs(0), Input::LinkUp("us".into()));
        let gap = || Input::Applied {
            peer: "us".into(),
            room: room(),
            outcome: Some(Applied::Gap),
        };
        let asks = |out: Vec<Output>| {
            out.into_iter()
                .filter(|o| {
                    matches!(
                        o,
                        Output::ReadResumePoints {
                            purpose: ResumeFor::Interest,
                            ..
                        }
                    )
                })
                .count()
        };
        assert_eq!(asks(c.handle(Duration::from_millis(1_000), gap())), 1);
        assert_eq!(asks(c.handle(Duration::from_millis(1_500), gap())), 0);
        assert_eq!(asks(c.handle(Duration::from_millis(2_000), gap())), 1);
        // A store error asks again too; a duplicate does not.
        let error = Input::Applied {
            peer: "us".into(),
            room: room(),
            outcome: None,
        };
        assert_eq!(asks(c.handle(secs(5), error)), 1);
        let dup = Input::Applied {
            peer: "us".into(),
            room: room(),
            outcome: Some(Applied::Duplicate),
        };
        assert_eq!(asks(c.handle(secs(9), dup)), 0);
    }

    #[test]
    fn only_the_origin_may_send_its_events() {
        let mut c = core();
        let event = RoomEvent {
            room: room(),
            origin_region: "ap".into(),
            origin_epoch: 1,
            origin_seq: 1,
            prev_seq: 0,
            hlc: Hlc::default(),
            kind: EventKind::Snapshot(Snapshot::default()),
        };
        let out = c.handle(
            secs(1),
            Input::PeerFrame {
                peer: "us".into(),
                frame: Frame::RoomEvent(event.clone()),
            },
        );
        assert!(matches!(out.as_slice(), [Output::Malformed { .. }]));
        let mut own = event;
        own.origin_region = "us".into();
        let out = c.handle(
            secs(1),
            Input::PeerFrame {
                peer: "us".into(),
                frame: Frame::RoomEvent(own.clone()),
            },
        );
        assert_eq!(
            out,
            vec![Output::Apply {
                peer: "us".into(),
                event: own
            }]
        );
    }

    #[test]
    fn a_follower_gets_a_snapshot_then_the_history_after_it() {
        let mut c = core();
        c.handle(secs(0), Input::LinkUp("us".into()));
        let since = Position {
            epoch: epoch_code("abcd0000"),
            seq: 4,
        };
        let out = c.handle(
            secs(1),
            Input::PeerFrame {
                peer: "us".into(),
                frame: Frame::Interest {
                    room: room(),
                    interested: true,
                    since: Some(since),
                },
            },
        );
        assert_eq!(
            out,
            vec![Output::TakeSnapshot {
                peer: "us".into(),
                room: room(),
                at: Some(("abcd0000".into(), 4)),
            }]
        );
        let snapshot = RoomSnapshot {
            epoch: "abcd0000".into(),
            seq: 9,
            stamp: Hlc::default(),
            members: Vec::new(),
            state: Vec::new(),
        };
        let out = c.handle(
            secs(1),
            Input::SnapshotTaken {
                peer: "us".into(),
                room: room(),
                at: Some(("abcd0000".into(), 4)),
                snapshot,
            },
        );
        assert!(
            matches!(&out[0], Output::Send { frame: Frame::RoomEvent(e), .. } if e.origin_seq == 4)
        );
        assert!(matches!(&out[1], Output::ReadHistory { after: 4, .. }));
        // The history after it: a local message is sent with its predecessor, a replicated
        // entry is skipped.
        let entry = |seq: u64, origin: Option<&str>| LocalEntry {
            seq,
            stamp: Hlc::default(),
            origin: origin.map(str::to_owned),
            frame: bytes::Bytes::from(format!(
                r#"{{"type":"message","room":"r","from":"bob","data":{seq},"seq":{seq},"epoch":"abcd0000"}}"#
            )),
            idempotency: None,
        };
        let out = c.handle(
            secs(1),
            Input::HistoryRead {
                peer: "us".into(),
                room: room(),
                batch: LocalBatch {
                    epoch: "abcd0000".into(),
                    seq: 7,
                    oldest: Some(1),
                    entries: vec![entry(5, None), entry(6, Some("ap x 3")), entry(7, None)],
                },
            },
        );
        let sent: Vec<(u64, u64)> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send {
                    frame: Frame::RoomEvent(e),
                    ..
                } => Some((e.origin_seq, e.prev_seq)),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![(5, 4), (7, 5)]);
        assert!(c.is_following("us", &room()));
        // The link goes: the follow goes with it.
        c.handle(secs(2), Input::LinkDown("us".into()));
        assert!(!c.is_following("us", &room()));
    }

    fn direct(n: u8) -> Direct {
        Direct {
            to_user: meridian_protocol::UserId::new("bob").unwrap(),
            from_user: meridian_protocol::UserId::new("ann").unwrap(),
            payload: vec![n; 100],
        }
    }

    fn sent_directs(out: &[Output]) -> Vec<u8> {
        out.iter()
            .filter_map(|o| match o {
                Output::SendDirects { directs, .. } => Some(directs.iter().map(|d| d.payload[0])),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn dropped(out: &[Output]) -> u64 {
        out.iter()
            .map(|o| match o {
                Output::DirectsDropped { count, .. } => *count,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn direct_messages_are_held_while_the_link_is_down_and_sent_in_order() {
        let mut c = core();
        let d = |n| Input::Direct {
            peer: "us".into(),
            direct: direct(n),
        };
        // Down: held; the bound (1,000 bytes, 164 a message) drops the oldest.
        for n in 1..=7 {
            let out = c.handle(secs(1), d(n));
            assert!(sent_directs(&out).is_empty());
            assert_eq!(dropped(&out), u64::from(n == 7));
        }
        let out = c.handle(secs(2), Input::LinkUp("us".into()));
        assert_eq!(sent_directs(&out), vec![2, 3, 4, 5, 6, 7]);
        // While a send is under way new ones queue behind it; the unsent come back in front.
        assert!(sent_directs(&c.handle(secs(2), d(8))).is_empty());
        let out = c.handle(
            secs(2),
            Input::DirectsDone {
                peer: "us".into(),
                unsent: vec![direct(6), direct(7)],
            },
        );
        assert_eq!(sent_directs(&out), vec![6, 7, 8]);
        c.handle(
            secs(2),
            Input::DirectsDone {
                peer: "us".into(),
                unsent: Vec::new(),
            },
        );
        // Up and heard: sent at once.
        assert_eq!(sent_directs(&c.handle(secs(3), d(9))), vec![9]);
        c.handle(
            secs(3),
            Input::DirectsDone {
                peer: "us".into(),
                unsent: Vec::new(),
            },
        );
        // Quiet for presence_ttl − 1 s: held, then expired past direct_buffer_age.
        assert!(sent_directs(&c.handle(secs(6), d(10))).is_empty());
        // Heard (a keep-alive): sent.
        assert_eq!(
            sent_directs(&c.handle(secs(7), Input::Heard("us".into()))),
            vec![10]
        );
        c.handle(
            secs(7),
            Input::DirectsDone {
                peer: "us".into(),
                unsent: Vec::new(),
            },
        );
        assert!(sent_directs(&c.handle(secs(10), d(13))).is_empty());
        c.handle(secs(40), Input::LinkDown("us".into()));
        let out = c.handle(secs(41), Input::LinkUp("us".into()));
        assert!(sent_directs(&out).is_empty());
        assert_eq!(dropped(&out), 1);
        // Declared down: what is held goes, and new ones are dropped.
        c.handle(secs(42), Input::LinkDown("us".into()));
        c.handle(secs(43), d(11));
        c.handle(secs(57), Input::Tick);
        let out = c.handle(
            secs(57),
            Input::DownDeclared {
                peer: "us".into(),
                ok: true,
            },
        );
        assert_eq!(dropped(&out), 1);
        assert_eq!(dropped(&c.handle(secs(58), d(12))), 1);
    }

    #[test]
    fn a_first_follow_starts_at_the_join_time_or_the_resumers_position() {
        let mut c = core();
        c.handle(secs(0), Input::LinkUp("us".into()));
        // Asking: the watermark, else a resumer's position, else the join time.
        let out = c.handle(
            secs(1),
            Input::ResumePoints {
                peer: "us".into(),
                rooms: vec![
                    (room(), StartPoint::JoinedAt(10_000)),
                    (
                        RoomId::new("s").unwrap(),
                        StartPoint::Resumer("abcd0000".into(), 3),
                    ),
                    (RoomId::new("t").unwrap(), StartPoint::Unknown),
                ],
                purpose: ResumeFor::Snapshot,
            },
        );
        let Some(Output::Send {
            frame: Frame::InterestSnapshot { rooms },
            ..
        }) = out.first()
        else {
            panic!("an interest snapshot: {out:?}");
        };
        let since: Vec<Option<Position>> = rooms.iter().map(|f| f.since).collect();
        assert_eq!(
            since,
            vec![
                Some(Position::joined_at(10_000)),
                Some(Position {
                    epoch: epoch_code("abcd0000"),
                    seq: 3
                }),
                None
            ]
        );
        // Followed from a join time: the position just before it, less the skew.
        let out = c.handle(
            secs(1),
            Input::PeerFrame {
                peer: "us".into(),
                frame: Frame::Interest {
                    room: room(),
                    interested: true,
                    since: Some(Position::joined_at(10_000)),
                },
            },
        );
        assert_eq!(
            out,
            vec![Output::FindJoinPosition {
                peer: "us".into(),
                room: room(),
                from_ms: 9_500,
            }]
        );
        let out = c.handle(
            secs(1),
            Input::JoinPosition {
                peer: "us".into(),
                room: room(),
                at: Some(("abcd0000".into(), 2)),
            },
        );
        assert_eq!(
            out,
            vec![Output::TakeSnapshot {
                peer: "us".into(),
                room: room(),
                at: Some(("abcd0000".into(), 2)),
            }]
        );
    }

    #[test]
    fn a_redis_resync_asks_every_peer_again_until_it_is_done() {
        let mut c = core();
        c.handle(
            secs(0),
            Input::LocalInterest {
                room: room(),
                local_members: true,
            },
        );
        c.handle(secs(0), Input::LinkUp("us".into()));
        let refollows = |out: &[Output]| {
            out.iter()
                .filter(|o| {
                    matches!(
                        o,
                        Output::ReadResumePoints {
                            purpose: ResumeFor::Refollow,
                            ..
                        }
                    )
                })
                .count()
        };
        assert_eq!(refollows(&c.handle(secs(1), Input::Resynced)), 1);
        // Redis cannot say yet: asked again on the next tick.
        c.handle(
            secs(1),
            Input::ResumeFailed {
                peer: "us".into(),
                purpose: ResumeFor::Refollow,
            },
        );
        assert_eq!(refollows(&c.handle(secs(2), Input::Tick)), 1);
        let out = c.handle(
            secs(2),
            Input::ResumePoints {
                peer: "us".into(),
                rooms: vec![(room(), StartPoint::Applied("abcd0000".into(), 7))],
                purpose: ResumeFor::Refollow,
            },
        );
        assert_eq!(
            out,
            vec![Output::Send {
                peer: "us".into(),
                frame: Frame::Interest {
                    room: room(),
                    interested: true,
                    since: Some(Position {
                        epoch: epoch_code("abcd0000"),
                        seq: 7
                    }),
                },
            }]
        );
        assert_eq!(refollows(&c.handle(secs(3), Input::Tick)), 0);
    }

    #[test]
    fn a_message_continuing_the_cursor_is_sent_without_a_history_read() {
        let mut c = core();
        c.handle(secs(0), Input::LinkUp("us".into()));
        c.handle(
            secs(0),
            Input::PeerFrame {
                peer: "us".into(),
                frame: Frame::Interest {
                    room: room(),
                    interested: true,
                    since: None,
                },
            },
        );
        let snapshot = RoomSnapshot {
            epoch: "abcd0000".into(),
            seq: 4,
            stamp: Hlc::default(),
            members: Vec::new(),
            state: Vec::new(),
        };
        c.handle(
            secs(0),
            Input::SnapshotTaken {
                peer: "us".into(),
                room: room(),
                at: None,
                snapshot,
            },
        );
        c.handle(
            secs(0),
            Input::HistoryRead {
                peer: "us".into(),
                room: room(),
                batch: LocalBatch {
                    epoch: "abcd0000".into(),
                    seq: 4,
                    oldest: Some(1),
                    entries: Vec::new(),
                },
            },
        );
        let appended = |seq: u64, frame: String| Input::Appended {
            room: room(),
            entry: AppendedEntry {
                epoch: "abcd0000".into(),
                seq,
                frame: bytes::Bytes::from(frame),
                idempotency: Some("k".into()),
            },
            wall: Hlc::default(),
        };
        let message = |seq: u64| {
            format!(
                r#"{{"type":"message","room":"r","from":"bob","data":{seq},"seq":{seq},"epoch":"abcd0000"}}"#
            )
        };
        let out = c.handle(secs(1), appended(5, message(5)));
        assert!(matches!(
            out.as_slice(),
            [Output::Send { frame: Frame::RoomEvent(e), .. }]
                if e.origin_seq == 5 && e.prev_seq == 4
                    && matches!(&e.kind, EventKind::Event(RoomEventKind::Message { idempotency: Some(k), .. }) if k == "k")
        ));
        // A gap (an entry the feed skipped): read the history instead.
        let out = c.handle(secs(1), appended(7, message(7)));
        assert!(matches!(
            out.as_slice(),
            [Output::ReadHistory { after: 5, .. }]
        ));
    }
}
