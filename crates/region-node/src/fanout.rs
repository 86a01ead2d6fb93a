//! The node's only state: which local connections are in which rooms, and which connections
//! belong to which user. Room events arrive once from the store and are handed, as the same
//! shared bytes, to every local subscriber's bounded queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use meridian_protocol::{OriginPosition, RoomEventFrame, RoomId, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most events buffered for one subscriber while its join or resume is in flight.
const MAX_BUFFERED: usize = 4096;

/// Why a connection is being told to reconnect elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Its send queue filled: the client reads too slowly.
    SlowConsumer,
    /// The node lost events it cannot replay (join buffer overflow, unrecoverable pub/sub gap):
    /// the client must resume to learn what it missed.
    Resync,
    /// The node could not renew its lease in time and may have been reaped: its memberships
    /// cannot be trusted, so every client resumes (on any node).
    LeaseLost,
    /// The application's backend disconnected the user (server API `disconnect`): the client
    /// gets an `error` event with the backend's reason instead of `reconnect`.
    Disconnected,
}

impl KickReason {
    /// The `reason` of the `reconnect` event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow_consumer",
            Self::Resync => "resync",
            Self::LeaseLost => "lease_lost",
            Self::Disconnected => "disconnected",
        }
    }
}

/// The sending side of one connection: a bounded queue and the signal to drop it.
#[derive(Clone, Debug)]
pub struct Outbox {
    /// Frames for the connection's socket.
    pub tx: mpsc::Sender<Utf8Bytes>,
    /// Cancelled when the connection must go: the session sends `reconnect` and closes.
    pub kicked: CancellationToken,
    reason: Arc<std::sync::OnceLock<KickReason>>,
    /// The backend's words with [`KickReason::Disconnected`].
    note: Arc<std::sync::OnceLock<Box<str>>>,
}

impl Outbox {
    /// An outbox over `tx`.
    pub fn new(tx: mpsc::Sender<Utf8Bytes>) -> Self {
        Self {
            tx,
            kicked: CancellationToken::new(),
            reason: Arc::default(),
            note: Arc::default(),
        }
    }

    /// Queues a frame without waiting; a full queue marks the connection a slow consumer.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        if self.is_kicked() {
            return false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(_) => {
                self.kick(KickReason::SlowConsumer);
                false
            }
        }
    }

    /// Queues a direct message while the queue is less than half full; otherwise drops it and
    /// returns false. Direct messages are sent by other users, so they must never make a
    /// connection a slow consumer: a flood aimed at a user is shed, the user stays (room
    /// events keep the other half of the queue).
    pub fn offer_direct(&self, frame: Utf8Bytes) -> bool {
        if self.is_kicked() || self.tx.capacity() * 2 <= self.tx.max_capacity() {
            return false;
        }
        self.tx.try_send(frame).is_ok()
    }

    /// Tells the session to send `reconnect` and close; the first reason given wins.
    pub fn kick(&self, reason: KickReason) {
        let _ = self.reason.set(reason);
        self.kicked.cancel();
    }

    /// Disconnects the connection for the backend, with its `reason` for the client.
    pub fn disconnect(&self, reason: &str) {
        let _ = self.note.set(reason.into());
        self.kick(KickReason::Disconnected);
    }

    /// The backend's reason, once [`Outbox::disconnect`] was called.
    pub fn disconnect_note(&self) -> Option<&str> {
        self.note.get().map(|n| &**n)
    }

    /// Whether it was kicked: one atomic load (the token's own `is_cancelled` takes a mutex).
    pub fn is_kicked(&self) -> bool {
        self.reason.get().is_some()
    }

    /// Why the connection was kicked, once it was.
    pub fn kick_reason(&self) -> Option<KickReason> {
        self.reason.get().copied()
    }
}

/// Where a subscriber is in its room's sequence.
#[derive(Debug)]
enum Cursor {
    /// Join or resume in flight: events are held until the join's position is known.
    Buffering {
        events: Vec<(u64, Utf8Bytes)>,
        overflow: bool,
    },
    /// Delivering events after `last` of the room's history `epoch`.
    Live { last: u64, epoch: Arc<str> },
}

/// One connection's membership of one room.
#[derive(Debug)]
pub struct Subscriber {
    /// Node-local connection number.
    pub conn: u64,
    outbox: Outbox,
    cursor: Mutex<Cursor>,
    /// After a cross-region resume: per origin region, the last of its events the client
    /// already received elsewhere. Replicated events at or below it are not delivered again
    /// (this region may receive them after the client arrived).
    floor: std::sync::OnceLock<HashMap<String, (String, u64)>>,
}

/// The `origin` of a replicated room event frame, if it has one: the frame's own top-level
/// field, decoded (a client can put `"origin":{...}` anywhere inside its `data`).
fn origin_of(frame: &str) -> Option<OriginPosition> {
    RoomEventFrame::origin_of(frame.as_bytes())
}

impl Subscriber {
    /// A subscriber that buffers until [`Subscriber::go_live`].
    pub fn new(conn: u64, outbox: Outbox) -> Arc<Self> {
        Arc::new(Self {
            conn,
            outbox,
            cursor: Mutex::new(Cursor::Buffering {
                events: Vec::new(),
                overflow: false,
            }),
            floor: std::sync::OnceLock::new(),
        })
    }

    /// Sets the cross-region resume floor (once, before [`Subscriber::go_live`]).
    pub fn set_floor(&self, vector: &[OriginPosition]) {
        let floor = vector
            .iter()
            .map(|o| (o.region.clone(), (o.epoch.clone(), o.seq)))
            .collect();
        let _ = self.floor.set(floor);
    }

    /// Whether the client already received this replicated event in another region.
    fn seen_elsewhere(&self, frame: &str) -> bool {
        let Some(floor) = self.floor.get() else {
            return false;
        };
        let Some(origin) = origin_of(frame) else {
            return false;
        };
        floor
            .get(&origin.region)
            .is_some_and(|(epoch, seq)| *epoch == origin.epoch && origin.seq <= *seq)
    }

    fn cursor(&self) -> MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers an event unless the subscriber has seen its sequence number already. An event
    /// of another epoch (the room's history restarted) resets the position. Returns whether it
    /// was queued.
    pub fn offer(&self, seq: u64, epoch: &Arc<str>, frame: &Utf8Bytes) -> bool {
        let mut cursor = self.cursor();
        match &mut *cursor {
            Cursor::Buffering { events, overflow } => {
                if events.len() < MAX_BUFFERED {
                    events.push((seq, frame.clone()));
                } else {
                    *overflow = true;
                }
                false
            }
            Cursor::Live {
                last,
                epoch: current,
            } => {
                if current != epoch {
                    *current = epoch.clone();
                } else if seq <= *last {
                    return false;
                }
                *last = seq;
                if self.seen_elsewhere(frame) {
                    return false;
                }
                self.outbox.push(frame.clone())
            }
        }
    }

    /// Switches to live delivery after position `seq` of `epoch` (everything up to it was
    /// delivered or is not for this subscriber), flushing buffered events after it in order.
    /// Returns false when the buffer overflowed, i.e. events were lost and the client must
    /// resync.
    pub fn go_live(&self, seq: u64, epoch: &str) -> bool {
        let mut cursor = self.cursor();
        let epoch: Arc<str> = epoch.into();
        let live = Cursor::Live {
            last: seq,
            epoch: epoch.clone(),
        };
        let (events, overflow) = match std::mem::replace(&mut *cursor, live) {
            Cursor::Buffering { events, overflow } => (events, overflow),
            Cursor::Live { last, .. } => {
                *cursor = Cursor::Live {
                    last: last.max(seq),
                    epoch,
                };
                return true;
            }
        };
        let mut last = seq;
        for (s, frame) in events {
            if s > last {
                last = s;
                if !self.seen_elsewhere(&frame) {
                    self.outbox.push(frame);
                }
            }
        }
        *cursor = Cursor::Live { last, epoch };
        !overflow
    }

    /// The epoch and last sequence number delivered; `None` while buffering.
    pub fn position(&self) -> Option<(Arc<str>, u64)> {
        match &*self.cursor() {
            Cursor::Live { last, epoch } => Some((epoch.clone(), *last)),
            Cursor::Buffering { .. } => None,
        }
    }
}

/// Local rooms and users of this node.
#[derive(Debug, Default)]
pub struct LocalIndex {
    /// Copy-on-write member lists: a delivery takes a reference count, not a copy of the list
    /// (a join or leave while a delivery holds it copies the list once).
    rooms: Mutex<HashMap<RoomId, Arc<Vec<Arc<Subscriber>>>>>,
    users: Mutex<HashMap<UserId, Vec<(u64, Outbox)>>>,
}

impl LocalIndex {
    /// Adds a subscriber to a room.
    pub fn add_subscriber(&self, room: &RoomId, sub: Arc<Subscriber>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        Arc::make_mut(rooms.entry(room.clone()).or_default()).push(sub);
    }

    /// Removes a connection's subscriber from a room.
    pub fn remove_subscriber(&self, room: &RoomId, conn: u64) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = rooms.get_mut(room) {
            Arc::make_mut(subs).retain(|s| s.conn != conn);
            if subs.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Hands a room event to every local subscriber of the room. Returns deliveries made.
    pub fn deliver_room(
        &self,
        room: &RoomId,
        seq: u64,
        epoch: &Arc<str>,
        frame: &Utf8Bytes,
    ) -> usize {
        // Take the list out so the room map is not locked while subscribers are visited.
        let subs = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            match rooms.get(room) {
                Some(s) => Arc::clone(s),
                None => return 0,
            }
        };
        subs.iter().filter(|s| s.offer(seq, epoch, frame)).count()
    }

    /// The local rooms and, for each, the lowest position a live subscriber has reached: what
    /// a catch-up after a pub/sub outage must replay from.
    pub fn room_positions(&self) -> Vec<(RoomId, Arc<str>, u64)> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .iter()
            .filter_map(|(room, subs)| {
                let (epoch, last) = subs
                    .iter()
                    .filter_map(|s| s.position())
                    .min_by_key(|(_, l)| *l)?;
                Some((room.clone(), epoch, last))
            })
            .collect()
    }

    /// Sends every connection in `room` `reconnect`: each resumes and learns whether the room's
    /// history still covers its gap.
    pub fn force_resync(&self, room: &RoomId) {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        for sub in rooms.get(room).into_iter().flat_map(|subs| subs.iter()) {
            sub.outbox.kick(KickReason::Resync);
        }
    }

    /// Sends every authenticated connection of this node `reconnect`. Returns how many.
    pub fn kick_all(&self, reason: KickReason) -> usize {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for (_, outbox) in users.values().flatten() {
            outbox.kick(reason);
            n += 1;
        }
        n
    }

    /// Every authenticated local connection: its user, number, and the rooms it is live in
    /// (joins still in progress are left out: their own store calls write them). What a node
    /// re-asserts after its lease expired.
    pub fn connections(&self) -> Vec<(UserId, u64, Vec<RoomId>)> {
        let mut rooms_of: HashMap<u64, Vec<RoomId>> = HashMap::new();
        {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            for (room, subs) in rooms.iter() {
                for sub in subs.iter().filter(|s| s.position().is_some()) {
                    rooms_of.entry(sub.conn).or_default().push(room.clone());
                }
            }
        }
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (user, conns) in users.iter() {
            for (conn, _) in conns {
                let rooms = rooms_of.remove(conn).unwrap_or_default();
                out.push((user.clone(), *conn, rooms));
            }
        }
        out
    }

    /// Whether connection `conn` is still open here.
    pub fn has_conn(&self, conn: u64) -> bool {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.values().flatten().any(|(c, _)| *c == conn)
    }

    /// Whether connection `conn` is (still) in `room` here.
    pub fn has_subscriber(&self, room: &RoomId, conn: u64) -> bool {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .get(room)
            .is_some_and(|subs| subs.iter().any(|s| s.conn == conn))
    }

    /// Registers a connection of a user for direct messages.
    pub fn add_user_conn(&self, user: &UserId, conn: u64, outbox: Outbox) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.entry(user.clone()).or_default().push((conn, outbox));
    }

    /// Unregisters a connection of a user.
    pub fn remove_user_conn(&self, user: &UserId, conn: u64) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = users.get_mut(user) {
            conns.retain(|(c, _)| *c != conn);
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Disconnects every local connection of `user` with `reason`; returns how many.
    pub fn disconnect_user(&self, user: &UserId, reason: &str) -> usize {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let conns = users.get(user).map(Vec::as_slice).unwrap_or_default();
        for (_, outbox) in conns {
            outbox.disconnect(reason);
        }
        conns.len()
    }

    /// Hands a direct message to every local connection of `user` whose queue has room for it
    /// (see [`Outbox::offer_direct`]); returns how many took it.
    pub fn deliver_direct(&self, user: &UserId, frame: &Utf8Bytes) -> usize {
        let outboxes: Vec<Outbox> = {
            let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
            users
                .get(user)
                .map(|c| c.iter().map(|(_, o)| o.clone()).collect())
                .unwrap_or_default()
        };
        outboxes
            .iter()
            .filter(|o| o.offer_direct(frame.clone()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(cap: usize) -> (Outbox, mpsc::Receiver<Utf8Bytes>) {
        let (tx, rx) = mpsc::channel(cap);
        (Outbox::new(tx), rx)
    }

    #[test]
    fn a_direct_message_flood_is_shed_without_kicking_the_recipient() {
        let (o, mut rx) = outbox(8);
        let index = LocalIndex::default();
        let user = UserId::new("victim").unwrap();
        index.add_user_conn(&user, 1, o.clone());
        let taken: usize = (0..100)
            .map(|i| index.deliver_direct(&user, &Utf8Bytes::from(format!("{i}"))))
            .sum();
        assert_eq!(taken, 4, "half the queue");
        assert!(
            !o.is_kicked(),
            "a flood never makes the recipient a slow consumer"
        );
        // Room events still have the other half.
        for _ in 0..4 {
            assert!(o.push(Utf8Bytes::from("room")));
        }
        assert!(!o.is_kicked());
        // Once the client reads, direct messages flow again.
        while rx.try_recv().is_ok() {}
        assert_eq!(index.deliver_direct(&user, &Utf8Bytes::from("x")), 1);
    }

    #[test]
    fn buffered_events_flush_in_order_without_duplicates() {
        let (o, mut rx) = outbox(16);
        let sub = Subscriber::new(1, o);
        let e: Arc<str> = "e".into();
        for s in [5u64, 6, 7] {
            assert!(!sub.offer(s, &e, &Utf8Bytes::from(format!("{s}"))));
        }
        assert!(sub.go_live(5, "e"));
        assert!(!sub.offer(6, &e, &Utf8Bytes::from("dup")));
        assert!(sub.offer(8, &e, &Utf8Bytes::from("8")));
        // The room's history restarted: a new epoch starts from its own sequence.
        let fresh: Arc<str> = "f".into();
        assert!(sub.offer(1, &fresh, &Utf8Bytes::from("f1")));
        assert!(!sub.offer(1, &fresh, &Utf8Bytes::from("dup")));
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|f| f.to_string())
            .collect();
        assert_eq!(got, vec!["6", "7", "8", "f1"]);
    }

    #[test]
    fn a_cross_region_resume_floor_drops_events_seen_elsewhere() {
        let (o, mut rx) = outbox(16);
        let sub = Subscriber::new(1, o);
        sub.set_floor(&[OriginPosition {
            region: "eu".into(),
            epoch: "p0".into(),
            seq: 18,
        }]);
        let e: Arc<str> = "e".into();
        let replicated = |seq: u64| {
            Utf8Bytes::from(format!(
                r#"{{"type":"message","room":"r","from":"b","data":{{}},"origin":{{"region":"eu","epoch":"p0","seq":{seq}}},"seq":1,"epoch":"e"}}"#
            ))
        };
        // Buffered during the resume: the one at the floor is dropped on going live.
        assert!(!sub.offer(11, &e, &replicated(18)));
        assert!(sub.go_live(10, "e"));
        assert!(!sub.offer(12, &e, &replicated(17)), "seen elsewhere");
        assert!(sub.offer(13, &e, &replicated(19)));
        assert!(sub.offer(14, &e, &Utf8Bytes::from(r#"{"type":"message","seq":14}"#)));
        let other = Utf8Bytes::from(
            r#"{"type":"message","origin":{"region":"us","epoch":"x","seq":1},"seq":15}"#,
        );
        assert!(
            sub.offer(15, &e, &other),
            "an origin not in the floor is delivered"
        );
        let got = std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(got, 3);
        assert_eq!(origin_of("{}"), None);
        assert_eq!(origin_of(r#"{"origin":{"region":1}}"#), None);
    }

    #[test]
    fn an_origin_planted_in_client_data_is_not_the_events_origin() {
        let (o, mut rx) = outbox(16);
        let sub = Subscriber::new(1, o);
        sub.set_floor(&[OriginPosition {
            region: "eu".into(),
            epoch: "p0".into(),
            seq: 18,
        }]);
        let e: Arc<str> = "e".into();
        assert!(sub.go_live(10, "e"));
        // A local message whose data imitates a replicated event the client has seen.
        let planted = Utf8Bytes::from(
            r#"{"type":"message","room":"r","from":"mallory","data":{"origin":{"region":"eu","epoch":"p0","seq":1}},"seq":11,"epoch":"e"}"#,
        );
        assert!(
            sub.offer(11, &e, &planted),
            "a local event is never seen elsewhere"
        );
        // A replicated event the client has not seen, with a planted origin before the real one.
        let replicated = Utf8Bytes::from(
            r#"{"type":"message","room":"r","from":"mallory","data":{"x":{"origin":{"region":"eu","epoch":"p0","seq":2}}},"origin":{"region":"eu","epoch":"p0","seq":19},"seq":12,"epoch":"e"}"#,
        );
        assert!(sub.offer(12, &e, &replicated), "decided by its own origin");
        assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 2);
        assert_eq!(
            origin_of(r#"{"data":{"origin":{"region":"eu","epoch":"p0","seq":1}}}"#),
            None
        );
    }

    fn o_reason(sub: &Subscriber) -> Option<KickReason> {
        sub.outbox.kick_reason()
    }

    #[test]
    fn full_queue_marks_slow_consumer() {
        let (o, _rx) = outbox(1);
        let flag = o.kicked.clone();
        let sub = Subscriber::new(1, o);
        let e: Arc<str> = "e".into();
        sub.go_live(0, "e");
        assert!(sub.offer(1, &e, &Utf8Bytes::from("a")));
        assert!(!sub.offer(2, &e, &Utf8Bytes::from("b")));
        assert!(flag.is_cancelled());
        assert_eq!(o_reason(&sub), Some(KickReason::SlowConsumer));
        assert!(
            !sub.offer(3, &e, &Utf8Bytes::from("c")),
            "nothing more is queued once overflowed"
        );
    }
}
