//! The in-process [`StateStore`]: every node of a region holds a [`MemoryStore`] on one shared
//! [`MemoryRegion`]. It implements the same semantics as the Redis schema (and passes the same
//! conformance suite) for a single-process dev region and fast tests; nothing survives the
//! process.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use meridian_protocol::{
    LeftReason, MemberEntry, OriginPosition, PresenceEntry, RoomEventFrame, RoomId, StateEntry,
    UserId,
};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::{
    random_token, Budget, ConnRef, Inbound, JoinOutcome, MemberPage, NodeId, PublishItem,
    Published, ReapedNode, Recovery, StateStore, StoreError, StoreLimits, StoreResult,
};

/// Decides what a resume from `(epoch, seq)` gets, given the room's current epoch and sequence,
/// the oldest sequence still in history, and the history entries after `seq` (at most
/// `max_replay + 1` of them). Shared by both stores so they cannot disagree.
/// Cross-region resume over a room's whole retained history (`entries`: local seq, origin
/// tag `"<region> <epoch> <seq>"` for replicated entries, frame). An entry is replayed when
/// its origin is in `vector` with the same epoch and a lower seq; entries of origins the
/// client does not list were not part of what it followed, and entries of another epoch of
/// a listed origin are not comparable with its position (both skipped). Lost when more than
/// `max_replay` events would be needed, or when the history was trimmed and does not reach
/// back to a listed origin's position.
pub(crate) fn decide_vector_recovery(
    region: &str,
    cur_epoch: &str,
    cur_seq: u64,
    vector: &[OriginPosition],
    max_replay: u32,
    entries: Vec<(u64, Option<String>, Bytes)>,
) -> Recovery {
    let lost = || Recovery::Lost {
        epoch: cur_epoch.to_owned(),
        seq: cur_seq,
    };
    let trimmed = entries.first().is_some_and(|(s, _, _)| *s > 1);
    let want: HashMap<&str, (&str, u64)> = vector
        .iter()
        .map(|o| (o.region.as_str(), (o.epoch.as_str(), o.seq)))
        .collect();
    // Per listed origin: whether the retained history reaches back to the client's position.
    let mut reaches: HashMap<&str, bool> = HashMap::new();
    let mut events = Vec::new();
    for (seq, tag, frame) in &entries {
        let (o_region, o_epoch, o_seq) = match tag {
            Some(t) => {
                let mut p = t.splitn(3, ' ');
                match (
                    p.next(),
                    p.next(),
                    p.next().and_then(|s| s.parse::<u64>().ok()),
                ) {
                    (Some(r), Some(e), Some(s)) => (r, e, s),
                    _ => continue,
                }
            }
            None => (region, cur_epoch, *seq),
        };
        let Some((w_epoch, w_seq)) = want.get(o_region) else {
            continue;
        };
        if *w_epoch != o_epoch {
            // Another run of that region's room sequence (it restarted): not comparable.
            continue;
        }
        reaches.entry(o_region).or_insert(o_seq <= *w_seq);
        if o_seq > *w_seq {
            events.push((*seq, frame.clone()));
        }
    }
    if trimmed && reaches.values().any(|r| !r) {
        return lost();
    }
    if events.len() > max_replay as usize {
        return lost();
    }
    Recovery::Replay {
        epoch: cur_epoch.to_owned(),
        events,
    }
}

pub(crate) fn decide_recovery(
    cur_epoch: &str,
    cur_seq: u64,
    oldest: Option<u64>,
    epoch: &str,
    seq: u64,
    max_replay: u32,
    events: Vec<(u64, Bytes)>,
) -> Recovery {
    let lost = || Recovery::Lost {
        epoch: cur_epoch.to_owned(),
        seq: cur_seq,
    };
    let fresh = epoch.is_empty() && seq == 0;
    if cur_epoch.is_empty() {
        // The room has no history at all (never used, or expired).
        return if fresh {
            Recovery::Replay {
                epoch: String::new(),
                events: Vec::new(),
            }
        } else {
            lost()
        };
    }
    if epoch != cur_epoch && !fresh {
        return lost();
    }
    if seq > cur_seq || cur_seq - seq > u64::from(max_replay) {
        return lost();
    }
    if seq == cur_seq {
        return Recovery::Replay {
            epoch: cur_epoch.to_owned(),
            events: Vec::new(),
        };
    }
    match oldest {
        Some(oldest) if oldest <= seq + 1 => Recovery::Replay {
            epoch: cur_epoch.to_owned(),
            events: events.into_iter().filter(|(s, _)| *s > seq).collect(),
        },
        _ => lost(),
    }
}

#[derive(Default)]
struct Room {
    epoch: String,
    seq: u64,
    history: VecDeque<(u64, Bytes)>,
    conns: HashSet<(NodeId, u64, UserId)>,
    conn_counts: HashMap<UserId, usize>,
    members: BTreeMap<UserId, String>,
    state: BTreeMap<String, (u64, String)>,
}

#[derive(Default)]
struct NodeLink {
    inbound: Option<mpsc::Sender<Inbound>>,
    subscriptions: HashMap<RoomId, usize>,
}

#[derive(Default)]
struct RegionState {
    leases: HashMap<NodeId, Instant>,
    nodes: HashMap<NodeId, NodeLink>,
    /// Per node: (room or None for presence, conn, user).
    index: HashMap<NodeId, HashSet<(Option<RoomId>, u64, UserId)>>,
    presence: HashMap<UserId, HashMap<(NodeId, u64), String>>,
    rooms: HashMap<RoomId, Room>,
    idempotency: HashMap<(RoomId, UserId, String), (u64, Instant)>,
    /// Fixed-window budgets: name → (window index, spent).
    budgets: HashMap<String, (u64, u64)>,
}

impl RegionState {
    fn lease_alive(&self, node: &NodeId) -> bool {
        self.leases.get(node).is_some_and(|t| *t > Instant::now())
    }

    /// Sequences, stores and fans out one room event (the `append` of the Lua scripts).
    fn append(&mut self, room: &RoomId, head: &str, limits: &StoreLimits) -> (String, u64) {
        let r = self.rooms.entry(room.clone()).or_default();
        if r.epoch.is_empty() {
            r.epoch = random_token(8);
        }
        r.seq += 1;
        let frame = Bytes::from(RoomEventFrame::close(head, r.seq, &r.epoch));
        r.history.push_back((r.seq, frame.clone()));
        while r.history.len() > limits.history_len.max(1) as usize {
            r.history.pop_front();
        }
        let out = (r.epoch.clone(), r.seq);
        let epoch: Arc<str> = r.epoch.as_str().into();
        for link in self.nodes.values() {
            if link.subscriptions.contains_key(room) {
                if let Some(tx) = &link.inbound {
                    if tx
                        .try_send(Inbound::Room {
                            room: room.clone(),
                            seq: out.1,
                            epoch: epoch.clone(),
                            frame: frame.clone(),
                        })
                        .is_err()
                    {
                        tracing::warn!(%room, "memory store: node inbound queue full, event dropped");
                    }
                }
            }
        }
        out
    }

    fn leave(
        &mut self,
        room: &RoomId,
        conn: &ConnRef,
        region: &str,
        reason: LeftReason,
        limits: &StoreLimits,
    ) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        if !r
            .conns
            .remove(&(conn.node.clone(), conn.conn, conn.user.clone()))
        {
            return false;
        }
        let count = r.conn_counts.entry(conn.user.clone()).or_insert(1);
        *count -= 1;
        if *count > 0 {
            return false;
        }
        r.conn_counts.remove(&conn.user);
        r.members.remove(&conn.user);
        let head = RoomEventFrame::left(room, &conn.user, region, reason);
        self.append(room, head.head(), limits);
        true
    }
}

/// The shared state of one in-process region.
#[derive(Clone, Default)]
pub struct MemoryRegion {
    state: Arc<Mutex<RegionState>>,
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryRegion")
    }
}

impl MemoryRegion {
    /// An empty region.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store for one node of this region, delivering its events to `inbound`.
    pub fn store(
        &self,
        region: &str,
        node: NodeId,
        limits: StoreLimits,
        inbound: mpsc::Sender<Inbound>,
    ) -> MemoryStore {
        self.lock().nodes.entry(node.clone()).or_default().inbound = Some(inbound);
        MemoryStore {
            region_state: self.clone(),
            region: region.to_owned(),
            node,
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegionState> {
        // A poisoned lock means a panic elsewhere already; the state itself is still whole
        // because every mutation completes before it returns.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One node's view of a [`MemoryRegion`].
pub struct MemoryStore {
    region_state: MemoryRegion,
    region: String,
    node: NodeId,
    limits: StoreLimits,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("node", &self.node)
            .finish()
    }
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, RegionState> {
        self.region_state.lock()
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn region(&self) -> &str {
        &self.region
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn renew_lease(&self) -> StoreResult<()> {
        let expiry = Instant::now() + self.limits.lease_ttl;
        self.lock().leases.insert(self.node.clone(), expiry);
        Ok(())
    }

    async fn release_lease(&self) -> StoreResult<()> {
        let mut s = self.lock();
        s.leases.remove(&self.node);
        s.index.remove(&self.node);
        Ok(())
    }

    async fn reap_dead_nodes(&self) -> StoreResult<Vec<ReapedNode>> {
        let mut s = self.lock();
        let dead: Vec<NodeId> = s
            .index
            .keys()
            // Like the Redis schema's node set: only nodes that held a lease can expire.
            .filter(|n| **n != self.node && s.leases.contains_key(*n) && !s.lease_alive(n))
            .cloned()
            .collect();
        let mut reaped = Vec::new();
        for node in dead {
            let entries = s.index.remove(&node).unwrap_or_default();
            s.leases.remove(&node);
            let mut report = ReapedNode {
                node: node.clone(),
                memberships: 0,
                left_events: 0,
            };
            for (room, conn_no, user) in entries {
                let conn = ConnRef {
                    node: node.clone(),
                    conn: conn_no,
                    user,
                };
                match room {
                    Some(room) => {
                        report.memberships += 1;
                        if s.leave(
                            &room,
                            &conn,
                            &self.region,
                            LeftReason::NodeLost,
                            &self.limits,
                        ) {
                            report.left_events += 1;
                        }
                    }
                    None => {
                        if let Some(p) = s.presence.get_mut(&conn.user) {
                            p.remove(&(node.clone(), conn_no));
                            if p.is_empty() {
                                s.presence.remove(&conn.user);
                            }
                        }
                    }
                }
            }
            reaped.push(report);
        }
        Ok(reaped)
    }

    async fn connect(&self, conn: &ConnRef) -> StoreResult<()> {
        let mut s = self.lock();
        s.index
            .entry(conn.node.clone())
            .or_default()
            .insert((None, conn.conn, conn.user.clone()));
        s.presence
            .entry(conn.user.clone())
            .or_default()
            .insert((conn.node.clone(), conn.conn), self.region.clone());
        Ok(())
    }

    async fn disconnect(&self, conn: &ConnRef) -> StoreResult<()> {
        let mut s = self.lock();
        if let Some(p) = s.presence.get_mut(&conn.user) {
            p.remove(&(conn.node.clone(), conn.conn));
            if p.is_empty() {
                s.presence.remove(&conn.user);
            }
        }
        if let Some(idx) = s.index.get_mut(&conn.node) {
            idx.remove(&(None, conn.conn, conn.user.clone()));
        }
        Ok(())
    }

    async fn presence(&self, users: &[UserId]) -> StoreResult<Vec<PresenceEntry>> {
        let s = self.lock();
        Ok(users
            .iter()
            .map(|user| {
                let mut connections = 0;
                let mut regions = BTreeSet::new();
                for ((node, _), region) in s.presence.get(user).into_iter().flatten() {
                    if s.lease_alive(node) {
                        connections += 1;
                        regions.insert(region.clone());
                    }
                }
                PresenceEntry {
                    user: user.clone(),
                    online: connections > 0,
                    connections,
                    regions: regions.into_iter().collect(),
                }
            })
            .collect())
    }

    async fn join(
        &self,
        room: &RoomId,
        conn: &ConnRef,
        max_members: u32,
    ) -> StoreResult<JoinOutcome> {
        let mut s = self.lock();
        let r = s.rooms.entry(room.clone()).or_default();
        if r.epoch.is_empty() {
            r.epoch = random_token(8);
        }
        let key = (conn.node.clone(), conn.conn, conn.user.clone());
        let first_for_user = !r.conn_counts.contains_key(&conn.user);
        if r.conns.contains(&key) || !first_for_user {
            if r.conns.insert(key) {
                *r.conn_counts.entry(conn.user.clone()).or_insert(0) += 1;
            }
            let out = JoinOutcome {
                first: false,
                epoch: r.epoch.clone(),
                seq: r.seq,
                origins: Vec::new(),
            };
            s.index.entry(conn.node.clone()).or_default().insert((
                Some(room.clone()),
                conn.conn,
                conn.user.clone(),
            ));
            return Ok(out);
        }
        if max_members > 0 && r.members.len() >= max_members as usize {
            return Err(StoreError::RoomFull { max: max_members });
        }
        r.conns.insert(key);
        r.conn_counts.insert(conn.user.clone(), 1);
        r.members.insert(conn.user.clone(), self.region.clone());
        s.index.entry(conn.node.clone()).or_default().insert((
            Some(room.clone()),
            conn.conn,
            conn.user.clone(),
        ));
        let head = RoomEventFrame::joined(room, &conn.user, &self.region);
        let (epoch, seq) = s.append(room, head.head(), &self.limits);
        Ok(JoinOutcome {
            first: true,
            epoch,
            seq,
            origins: Vec::new(),
        })
    }

    async fn leave(&self, room: &RoomId, conn: &ConnRef, reason: LeftReason) -> StoreResult<bool> {
        let mut s = self.lock();
        let left = s.leave(room, conn, &self.region, reason, &self.limits);
        if let Some(idx) = s.index.get_mut(&conn.node) {
            idx.remove(&(Some(room.clone()), conn.conn, conn.user.clone()));
        }
        Ok(left)
    }

    async fn members(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: u32,
    ) -> StoreResult<MemberPage> {
        let s = self.lock();
        let limit = limit.max(1) as usize;
        let Some(r) = s.rooms.get(room) else {
            return Ok(MemberPage {
                members: Vec::new(),
                next: None,
            });
        };
        let range = match after {
            Some(a) => r
                .members
                .range::<UserId, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => r.members.range::<UserId, _>(..),
        };
        let mut page: Vec<MemberEntry> = range
            .take(limit + 1)
            .map(|(u, region)| MemberEntry {
                user: u.clone(),
                region: region.clone(),
            })
            .collect();
        let has_more = page.len() > limit;
        page.truncate(limit);
        let next = if has_more {
            page.last().map(|m| m.user.clone())
        } else {
            None
        };
        Ok(MemberPage {
            members: page,
            next,
        })
    }

    async fn publish_many(
        &self,
        room: &RoomId,
        items: &[PublishItem<'_>],
    ) -> StoreResult<Vec<Published>> {
        let mut s = self.lock();
        let now = Instant::now();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some((user, key)) = item.idempotency {
                let k = (room.clone(), user.clone(), key.to_owned());
                if let Some(&(seq, expiry)) = s.idempotency.get(&k) {
                    if expiry > now {
                        let epoch = s
                            .rooms
                            .get(room)
                            .map(|r| r.epoch.clone())
                            .unwrap_or_default();
                        out.push(Published {
                            seq,
                            epoch,
                            duplicate: true,
                        });
                        continue;
                    }
                }
            }
            let (epoch, seq) = s.append(room, item.frame.head(), &self.limits);
            if let Some((user, key)) = item.idempotency {
                s.idempotency.retain(|_, (_, expiry)| *expiry > now);
                s.idempotency.insert(
                    (room.clone(), user.clone(), key.to_owned()),
                    (seq, now + self.limits.idempotency_window),
                );
            }
            out.push(Published {
                seq,
                epoch,
                duplicate: false,
            });
        }
        Ok(out)
    }

    async fn history(&self, room: &RoomId, epoch: &str, seq: u64) -> StoreResult<Recovery> {
        let s = self.lock();
        let Some(r) = s.rooms.get(room) else {
            return Ok(decide_recovery(
                "",
                0,
                None,
                epoch,
                seq,
                self.limits.max_replay,
                Vec::new(),
            ));
        };
        let events: Vec<(u64, Bytes)> = r
            .history
            .iter()
            .filter(|(s, _)| *s > seq)
            .take(self.limits.max_replay as usize + 1)
            .cloned()
            .collect();
        Ok(decide_recovery(
            &r.epoch,
            r.seq,
            r.history.front().map(|(s, _)| *s),
            epoch,
            seq,
            self.limits.max_replay,
            events,
        ))
    }

    async fn shares_room(&self, rooms: &[RoomId], users: &[UserId]) -> StoreResult<Vec<bool>> {
        let s = self.lock();
        Ok(users
            .iter()
            .map(|u| {
                rooms
                    .iter()
                    .any(|r| s.rooms.get(r).is_some_and(|r| r.members.contains_key(u)))
            })
            .collect())
    }

    async fn spend(&self, budgets: &[Budget<'_>], window: Duration) -> StoreResult<Option<usize>> {
        let mut s = self.lock();
        let slot = crate::now_ms() / (window.as_millis() as u64).max(1);
        let spent = |s: &RegionState, name: &str| match s.budgets.get(name) {
            Some((w, n)) if *w == slot => *n,
            _ => 0,
        };
        if let Some(i) = budgets
            .iter()
            .position(|b| spent(&s, b.name).saturating_add(b.cost) > b.limit)
        {
            return Ok(Some(i));
        }
        for b in budgets {
            let n = spent(&s, b.name) + b.cost;
            s.budgets.insert(b.name.to_owned(), (slot, n));
        }
        // Forget finished windows now and then, so the map stays as large as the active users.
        if s.budgets.len() > 10_000 {
            s.budgets.retain(|_, (w, _)| *w == slot);
        }
        Ok(None)
    }

    async fn send_direct(&self, to: &UserId, frame: &str) -> StoreResult<bool> {
        let s = self.lock();
        let nodes: BTreeSet<&NodeId> = s
            .presence
            .get(to)
            .into_iter()
            .flatten()
            .map(|((n, _), _)| n)
            .collect();
        let frame = Bytes::copy_from_slice(frame.as_bytes());
        let mut delivered = false;
        for node in nodes {
            if let Some(tx) = s.nodes.get(node).and_then(|l| l.inbound.as_ref()) {
                delivered |= tx
                    .try_send(Inbound::Direct {
                        user: to.clone(),
                        frame: frame.clone(),
                    })
                    .is_ok();
            }
        }
        Ok(delivered)
    }

    async fn state_set(
        &self,
        room: &RoomId,
        key: &str,
        value: &RawValue,
        if_version: Option<u64>,
        by: &UserId,
    ) -> StoreResult<u64> {
        let mut s = self.lock();
        let r = s.rooms.entry(room.clone()).or_default();
        let current = r.state.get(key).map_or(0, |(v, _)| *v);
        if if_version.is_some_and(|want| want != current) {
            return Err(StoreError::VersionConflict { current });
        }
        let version = current + 1;
        r.state
            .insert(key.to_owned(), (version, value.get().to_owned()));
        let head = RoomEventFrame::state_changed(room, key, Some(value), by).with_version(version);
        s.append(room, head.head(), &self.limits);
        Ok(version)
    }

    async fn state_get(&self, room: &RoomId, key: Option<&str>) -> StoreResult<Vec<StateEntry>> {
        let s = self.lock();
        let Some(r) = s.rooms.get(room) else {
            return Ok(Vec::new());
        };
        let entry = |k: &String, (version, value): &(u64, String)| {
            RawValue::from_string(value.clone())
                .map(|value| StateEntry {
                    key: k.clone(),
                    value,
                    version: *version,
                })
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        match key {
            Some(k) => r
                .state
                .get_key_value(k)
                .map(|(k, v)| entry(k, v))
                .into_iter()
                .collect(),
            None => r.state.iter().map(|(k, v)| entry(k, v)).collect(),
        }
    }

    async fn state_delete(
        &self,
        room: &RoomId,
        key: &str,
        if_version: Option<u64>,
        by: &UserId,
    ) -> StoreResult<bool> {
        let mut s = self.lock();
        let r = s.rooms.entry(room.clone()).or_default();
        let current = r.state.get(key).map_or(0, |(v, _)| *v);
        if if_version.is_some_and(|want| want != current) {
            return Err(StoreError::VersionConflict { current });
        }
        if current == 0 {
            return Ok(false);
        }
        r.state.remove(key);
        let head = RoomEventFrame::state_changed(room, key, None, by).with_version(current + 1);
        s.append(room, head.head(), &self.limits);
        Ok(true)
    }

    async fn subscribe(&self, room: &RoomId) -> StoreResult<()> {
        *self
            .lock()
            .nodes
            .entry(self.node.clone())
            .or_default()
            .subscriptions
            .entry(room.clone())
            .or_insert(0) += 1;
        Ok(())
    }

    async fn unsubscribe(&self, room: &RoomId) -> StoreResult<()> {
        let mut s = self.lock();
        if let Some(link) = s.nodes.get_mut(&self.node) {
            if let Some(c) = link.subscriptions.get_mut(room) {
                *c -= 1;
                if *c == 0 {
                    link.subscriptions.remove(room);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod vector_tests {
    use super::*;

    fn pos(region: &str, epoch: &str, seq: u64) -> OriginPosition {
        OriginPosition {
            region: region.into(),
            epoch: epoch.into(),
            seq,
        }
    }

    /// `ap` history: 1 local, 2 from eu (eu seq 5), 3 local, 4 from eu (eu seq 9), 5 local.
    fn history(from: u64) -> Vec<(u64, Option<String>, Bytes)> {
        let all = vec![
            (1, None, Bytes::from_static(b"a1")),
            (2, Some("eu e1 5".to_owned()), Bytes::from_static(b"eu5")),
            (3, None, Bytes::from_static(b"a3")),
            (4, Some("eu e1 9".to_owned()), Bytes::from_static(b"eu9")),
            (5, None, Bytes::from_static(b"a5")),
        ];
        all.into_iter().filter(|(s, _, _)| *s >= from).collect()
    }

    fn replayed(r: Recovery) -> Vec<u64> {
        match r {
            Recovery::Replay { events, .. } => events.into_iter().map(|(s, _)| s).collect(),
            Recovery::Lost { .. } => panic!("lost"),
        }
    }

    #[test]
    fn replays_exactly_what_each_origin_had_not_delivered() {
        // Saw ap's events up to ap seq 1 (through eu) and eu's up to eu seq 5.
        let v = [pos("ap", "a0", 1), pos("eu", "e1", 5)];
        let r = decide_vector_recovery("ap", "a0", 5, &v, 100, history(1));
        assert_eq!(replayed(r), vec![3, 4, 5]);
        // An origin the client never followed contributes nothing.
        let r = decide_vector_recovery("ap", "a0", 5, &[pos("eu", "e1", 5)], 100, history(1));
        assert_eq!(replayed(r), vec![4]);
        // Another epoch of an origin is not comparable: skipped.
        let r = decide_vector_recovery("ap", "a0", 5, &[pos("eu", "e0", 1)], 100, history(1));
        assert_eq!(replayed(r), Vec::<u64>::new());
    }

    #[test]
    fn trimmed_history_or_too_much_to_replay_is_lost() {
        // The history starts at 3: eu's first kept entry (eu 9) is past the client's eu 5.
        let v = [pos("ap", "a0", 3), pos("eu", "e1", 5)];
        let r = decide_vector_recovery("ap", "a0", 5, &v, 100, history(3));
        assert!(matches!(r, Recovery::Lost { .. }));
        // ... but a client already at eu 9 is covered.
        let v = [pos("ap", "a0", 3), pos("eu", "e1", 9)];
        let r = decide_vector_recovery("ap", "a0", 5, &v, 100, history(3));
        assert_eq!(replayed(r), vec![5]);
        // More than max_replay events.
        let v = [pos("ap", "a0", 0), pos("eu", "e1", 0)];
        let r = decide_vector_recovery("ap", "a0", 5, &v, 2, history(1));
        assert!(matches!(r, Recovery::Lost { .. }));
    }
}
