//! The reference model of a region's replica: the rules of the apply script (`APPLY_LUA` in
//! `scripts.rs`) and its neighbours (`SNAPSHOT_LUA`, `REGION_DOWN_LUA`, the history
//! append) written again in plain Rust, over plain maps, with time passed in.
//!
//! - **Dedupe by watermark.** Per room and origin region, the last `(epoch, seq)` applied; an
//!   event at or below it (a snapshot: below it) is a duplicate.
//! - **`prev_seq` gaps.** An event that is not a snapshot applies only when the watermark is
//!   its predecessor (`prev_seq`) in the same epoch; otherwise nothing changes.
//! - **Last writer wins.** Membership and state keys carry `"<hlc>|<region>[|<by>]"` stamps,
//!   compared byte-wise as the script compares them; an older write is superseded (the
//!   watermark still moves on).
//!
//! [`ReplicaModel`] is synchronous, so the relay's deterministic simulation drives it
//! directly; [`MemoryReplica`] wraps it behind [`super::ReplicaApply`] for the conformance
//! suite ([`super::conformance`]) that the Redis implementation passes too.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use meridian_protocol::relay::{epoch_text, EventKind, Snapshot};
use meridian_protocol::{
    Hlc, JsonText, LeftReason, OriginPosition, RoomEventFrame, RoomEventKind, RoomId, StateRecord,
    UserId,
};

use super::{Applied, LocalBatch, LocalEntry, RemoteEvent, ReplicaApply, RoomSnapshot};
use crate::StoreResult;

/// One room as the scripts keep it (the `mr:{room}:*` keys).
#[derive(Debug, Default, Clone)]
struct Room {
    /// `meta.epoch` (`None` until the first append or snapshot).
    epoch: Option<String>,
    /// `meta.seq`.
    seq: u64,
    /// `meta.hw`/`meta.hl`: the room's hybrid logical clock.
    clock: Hlc,
    /// `hist`, oldest first, at most `history_len` entries.
    history: VecDeque<LocalEntry>,
    /// `cc`: local connections per user.
    local_conns: HashMap<UserId, u32>,
    /// `reg`: member -> home region.
    home: BTreeMap<UserId, String>,
    /// `mh`: member -> `"<hlc>|<region>"` of the membership's last change.
    member_stamp: HashMap<UserId, String>,
    /// `sv`: state key -> version.
    version: HashMap<String, u64>,
    /// `st`: state key -> value.
    value: BTreeMap<String, String>,
    /// `sh`: state key -> `"<hlc>|<region>|<by>"` (kept after deletes).
    state_stamp: BTreeMap<String, String>,
    /// `rw`: origin region -> `(epoch, seq)` applied from it.
    watermark: HashMap<String, (String, u64)>,
    /// Idempotency ids of publishes applied (the script keeps them for a window; the model
    /// forever).
    idempotency: BTreeSet<String>,
}

/// A region's replica state in memory: the model of the Redis scripts.
#[derive(Debug, Clone)]
pub struct ReplicaModel {
    region: String,
    history_len: usize,
    now_ms: u64,
    epochs: u64,
    rooms: HashMap<RoomId, Room>,
}

/// Byte-wise "a is newer than b", as the scripts' `newer`.
fn newer(a: &str, b: Option<&String>) -> bool {
    b.is_none_or(|b| a.as_bytes() > b.as_bytes())
}

impl ReplicaModel {
    /// An empty region `region` whose rooms keep `history_len` entries. Room epochs are
    /// drawn from `epoch_base` up (give each region its own base).
    pub fn new(region: impl Into<String>, history_len: usize, epoch_base: u64) -> Self {
        Self {
            region: region.into(),
            history_len: history_len.max(1),
            now_ms: 0,
            epochs: epoch_base.max(1),
            rooms: HashMap::new(),
        }
    }

    /// This region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Sets the wall clock the HLC ticks from (milliseconds; Redis uses `TIME`).
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    fn room(&mut self, room: &RoomId) -> &mut Room {
        self.rooms.entry(room.clone()).or_default()
    }

    fn ensure_epoch(&mut self, room: &RoomId) -> String {
        if let Some(e) = &self.room(room).epoch {
            return e.clone();
        }
        self.epochs += 1;
        let epoch = epoch_text(self.epochs);
        let r = self.room(room);
        r.epoch = Some(epoch.clone());
        r.seq = 0;
        r.history.clear();
        epoch
    }

    /// The script's `hlc_tick(rwall, rlog)`.
    fn tick(&mut self, room: &RoomId, remote: Option<Hlc>) -> Hlc {
        let now = self.now_ms;
        let r = self.room(room);
        let hw = r.clock;
        let rem = remote.unwrap_or_default();
        let mut w = now.max(hw.wall_ms).max(rem.wall_ms);
        let mut l = if w == hw.wall_ms && w == rem.wall_ms {
            hw.logical.max(rem.logical) + 1
        } else if w == hw.wall_ms {
            hw.logical + 1
        } else if w == rem.wall_ms {
            rem.logical + 1
        } else {
            0
        };
        if l > 99_999 {
            w += 1;
            l = 0;
        }
        r.clock = Hlc {
            wall_ms: w,
            logical: l,
        };
        r.clock
    }

    /// The scripts' `append(head, origin, stamp, idem)`: the next seq, one history entry.
    fn append(
        &mut self,
        room: &RoomId,
        head: &RoomEventFrame,
        origin: Option<String>,
        stamp: Option<Hlc>,
        idempotency: Option<String>,
    ) -> u64 {
        let epoch = self.ensure_epoch(room);
        let stamp = match stamp {
            Some(s) => s,
            None => self.tick(room, None),
        };
        let keep = self.history_len;
        let r = self.room(room);
        r.seq += 1;
        let seq = r.seq;
        r.history.push_back(LocalEntry {
            seq,
            stamp,
            origin,
            frame: Bytes::from(head.finish(seq, &epoch)),
            idempotency,
        });
        while r.history.len() > keep {
            r.history.pop_front();
        }
        seq
    }

    // ---- local activity (what the nodes' scripts do) -------------------------------------

    /// A user's first local connection joins the room, homed here (the node's join script).
    pub fn local_join(&mut self, room: &RoomId, user: &UserId) {
        let region = self.region.clone();
        let r = self.room(room);
        let conns = r.local_conns.entry(user.clone()).or_default();
        *conns += 1;
        if *conns > 1 && r.home.get(user) == Some(&region) {
            return;
        }
        let stamp = self.tick(room, None);
        let r = self.room(room);
        r.home.insert(user.clone(), region.clone());
        r.member_stamp
            .insert(user.clone(), format!("{stamp}|{region}"));
        let head = RoomEventFrame::joined(room, user, &region);
        self.append(room, &head, None, Some(stamp), None);
    }

    /// The user's last local connection leaves the room (the node's leave script).
    pub fn local_leave(&mut self, room: &RoomId, user: &UserId, reason: LeftReason) {
        let region = self.region.clone();
        let r = self.room(room);
        let Some(conns) = r.local_conns.get_mut(user) else {
            return;
        };
        *conns = conns.saturating_sub(1);
        if *conns > 0 {
            return;
        }
        r.local_conns.remove(user);
        if r.home.get(user) != Some(&region) {
            return;
        }
        let stamp = self.tick(room, None);
        let r = self.room(room);
        r.home.remove(user);
        r.member_stamp.remove(user);
        let head = RoomEventFrame::left(room, user, &region, reason);
        self.append(room, &head, None, Some(stamp), None);
    }

    /// A local publish; returns its seq.
    pub fn local_publish(
        &mut self,
        room: &RoomId,
        from: &UserId,
        data: &JsonText,
        idempotency: Option<String>,
    ) -> u64 {
        let head = RoomEventFrame::message(room, from, data.as_raw());
        if let Some(id) = &idempotency {
            self.room(room).idempotency.insert(id.clone());
        }
        self.append(room, &head, None, None, idempotency)
    }

    /// A local state write (`None`: delete), stamped here.
    pub fn local_set_state(
        &mut self,
        room: &RoomId,
        key: &str,
        value: Option<&JsonText>,
        by: &UserId,
    ) {
        // The node's delete script leaves a key that does not exist alone (no stamp).
        if value.is_none() && !self.room(room).version.contains_key(key) {
            return;
        }
        let stamp = self.tick(room, None);
        let region = self.region.clone();
        let r = self.room(room);
        r.state_stamp
            .insert(key.to_owned(), format!("{stamp}|{region}|{by}"));
        let version = r.version.get(key).copied().unwrap_or(0) + 1;
        match value {
            Some(v) => {
                r.version.insert(key.to_owned(), version);
                r.value.insert(key.to_owned(), v.get().to_owned());
            }
            None => {
                r.value.remove(key);
                r.version.remove(key);
            }
        }
        let head = RoomEventFrame::state_changed(room, key, value.map(JsonText::as_raw), by)
            .with_version(version);
        self.append(room, &head, None, Some(stamp), None);
    }

    // ---- the relay's side ----------------------------------------------------------------

    /// Applies one replicated event (the apply script).
    pub fn apply(&mut self, event: &RemoteEvent) -> Applied {
        let room = &event.room;
        let origin = event.origin_region.as_str();
        let oepoch = epoch_text(event.origin_epoch);
        let oseq = event.origin_seq;
        let snapshot = matches!(event.kind, EventKind::Snapshot(_));
        let mark = self.room(room).watermark.get(origin).cloned();
        if let Some((me, ms)) = &mark {
            if *me == oepoch && (oseq < *ms || (oseq == *ms && !snapshot)) {
                return Applied::Duplicate;
            }
        }
        let predecessor = mark
            .as_ref()
            .is_some_and(|(me, ms)| *me == oepoch && *ms == event.prev_seq);
        if !snapshot && !predecessor {
            return Applied::Gap;
        }
        self.room(room)
            .watermark
            .insert(origin.to_owned(), (oepoch.clone(), oseq));
        let pos = OriginPosition {
            region: origin.to_owned(),
            epoch: oepoch.clone(),
            seq: oseq,
        };
        let tag = format!("{origin} {oepoch} {oseq}");
        self.tick(room, Some(event.hlc));
        let stamp = event.hlc.to_string();
        let applied = match &event.kind {
            EventKind::Event(RoomEventKind::Joined { user }) => {
                self.remote_join(room, user, &stamp, &pos, &tag)
            }
            EventKind::Event(RoomEventKind::Left { user, reason }) => {
                self.remote_leave(room, user, *reason, &stamp, &pos, &tag)
            }
            EventKind::Event(RoomEventKind::Message {
                from,
                data,
                idempotency,
            }) => {
                let head = RoomEventFrame::message(room, from, data.as_raw()).with_origin(&pos);
                match idempotency.as_deref().filter(|k| !k.is_empty()) {
                    Some(k) => {
                        if !self.room(room).idempotency.insert(k.to_owned()) {
                            return Applied::Superseded;
                        }
                        self.append(room, &head, Some(tag), None, None);
                    }
                    None => {
                        self.append(room, &head, Some(tag), None, None);
                    }
                }
                true
            }
            EventKind::Event(RoomEventKind::StateSet { key, value, by }) => {
                let head = RoomEventFrame::state_changed(room, key, Some(value.as_raw()), by)
                    .with_origin(&pos);
                let lww = format!("{stamp}|{origin}|{by}");
                self.remote_set(room, key, Some(value.get()), &lww, &head, &tag)
            }
            EventKind::Event(RoomEventKind::StateDelete { key, by }) => {
                let head = RoomEventFrame::state_changed(room, key, None, by).with_origin(&pos);
                let lww = format!("{stamp}|{origin}|{by}");
                self.remote_set(room, key, None, &lww, &head, &tag)
            }
            EventKind::Snapshot(Snapshot { members, state }) => {
                let present: BTreeSet<&UserId> = members.iter().map(|(u, _)| u).collect();
                for (user, s) in members {
                    self.remote_join(room, user, &s.to_string(), &pos, &tag);
                }
                let gone: Vec<UserId> = self
                    .room(room)
                    .home
                    .iter()
                    .filter(|(u, home)| home.as_str() == origin && !present.contains(u))
                    .map(|(u, _)| u.clone())
                    .collect();
                for user in gone {
                    self.remote_leave(room, &user, LeftReason::Disconnect, &stamp, &pos, &tag);
                }
                for r in state {
                    let head = RoomEventFrame::state_changed(
                        room,
                        &r.key,
                        r.value.as_ref().map(JsonText::as_raw),
                        &r.by,
                    )
                    .with_origin(&pos);
                    let lww = format!("{}|{}|{}", r.hlc, r.region, r.by);
                    let value = r.value.as_ref().map(JsonText::get);
                    self.remote_set(room, &r.key, value, &lww, &head, &tag);
                }
                true
            }
        };
        if applied {
            Applied::Applied
        } else {
            Applied::Superseded
        }
    }

    fn remote_join(
        &mut self,
        room: &RoomId,
        user: &UserId,
        stamp: &str,
        pos: &OriginPosition,
        tag: &str,
    ) -> bool {
        let key = format!("{stamp}|{}", pos.region);
        let r = self.room(room);
        if !newer(&key, r.member_stamp.get(user)) {
            return false;
        }
        r.member_stamp.insert(user.clone(), key);
        if r.home.get(user) == Some(&pos.region) {
            return true;
        }
        r.home.insert(user.clone(), pos.region.clone());
        let head = RoomEventFrame::joined(room, user, &pos.region).with_origin(pos);
        self.append(room, &head, Some(tag.to_owned()), None, None);
        true
    }

    fn remote_leave(
        &mut self,
        room: &RoomId,
        user: &UserId,
        reason: LeftReason,
        stamp: &str,
        pos: &OriginPosition,
        tag: &str,
    ) -> bool {
        let region = self.region.clone();
        let r = self.room(room);
        if r.home.get(user) != Some(&pos.region) {
            return false;
        }
        if !newer(&format!("{stamp}|{}", pos.region), r.member_stamp.get(user)) {
            return false;
        }
        if r.local_conns.get(user).copied().unwrap_or(0) > 0 {
            // Still connected here: the membership comes home, announced as a local join.
            let s = self.tick(room, None);
            let r = self.room(room);
            r.home.insert(user.clone(), region.clone());
            r.member_stamp.insert(user.clone(), format!("{s}|{region}"));
            let head = RoomEventFrame::joined(room, user, &region);
            self.append(room, &head, None, Some(s), None);
            return true;
        }
        r.home.remove(user);
        r.member_stamp.remove(user);
        let head = RoomEventFrame::left(room, user, &pos.region, reason).with_origin(pos);
        self.append(room, &head, Some(tag.to_owned()), None, None);
        true
    }

    fn remote_set(
        &mut self,
        room: &RoomId,
        key: &str,
        value: Option<&str>,
        lww: &str,
        head: &RoomEventFrame,
        tag: &str,
    ) -> bool {
        let r = self.room(room);
        if !newer(lww, r.state_stamp.get(key)) {
            return false;
        }
        r.state_stamp.insert(key.to_owned(), lww.to_owned());
        let version = r.version.get(key).copied().unwrap_or(0) + 1;
        match value {
            None => {
                if r.value.remove(key).is_none() {
                    return true;
                }
                r.version.remove(key);
            }
            Some(v) => {
                r.version.insert(key.to_owned(), version);
                r.value.insert(key.to_owned(), v.to_owned());
            }
        }
        self.append(
            room,
            &head.with_version(version),
            Some(tag.to_owned()),
            None,
            None,
        );
        true
    }

    /// The last `(epoch, seq)` applied from `origin` in each room.
    pub fn watermarks(&self, origin: &str, rooms: &[RoomId]) -> Vec<Option<(String, u64)>> {
        rooms
            .iter()
            .map(|r| self.rooms.get(r)?.watermark.get(origin).cloned())
            .collect()
    }

    /// `region` was declared down: its members leave `room` with `region_down` (one
    /// connected here comes home instead). Returns the users removed.
    pub fn region_down(&mut self, room: &RoomId, gone: &str) -> usize {
        let region = self.region.clone();
        let homed: Vec<UserId> = match self.rooms.get(room) {
            Some(r) => r
                .home
                .iter()
                .filter(|(_, h)| h.as_str() == gone)
                .map(|(u, _)| u.clone())
                .collect(),
            None => return 0,
        };
        let mut removed = 0;
        for user in homed {
            if self.room(room).local_conns.get(&user).copied().unwrap_or(0) > 0 {
                let s = self.tick(room, None);
                let r = self.room(room);
                r.home.insert(user.clone(), region.clone());
                r.member_stamp.insert(user.clone(), format!("{s}|{region}"));
                let head = RoomEventFrame::joined(room, &user, &region);
                self.append(room, &head, None, Some(s), None);
            } else {
                let r = self.room(room);
                r.home.remove(&user);
                r.member_stamp.remove(&user);
                let head = RoomEventFrame::left(room, &user, gone, LeftReason::RegionDown);
                self.append(room, &head, None, None, None);
                removed += 1;
            }
        }
        removed
    }

    /// Up to `count` history entries after `after`, with the room's position.
    pub fn read_local(&self, room: &RoomId, after: u64, count: usize) -> LocalBatch {
        let Some(r) = self.rooms.get(room) else {
            return LocalBatch {
                epoch: String::new(),
                seq: 0,
                oldest: None,
                entries: Vec::new(),
            };
        };
        LocalBatch {
            epoch: r.epoch.clone().unwrap_or_default(),
            seq: r.seq,
            oldest: r.history.front().map(|e| e.seq),
            entries: r
                .history
                .iter()
                .filter(|e| e.seq > after)
                .take(count.max(1))
                .cloned()
                .collect(),
        }
    }

    /// This region's members of the room and the room's state, with the position.
    pub fn snapshot(&mut self, room: &RoomId) -> RoomSnapshot {
        let epoch = self.ensure_epoch(room);
        let stamp = self.tick(room, None);
        let region = self.region.clone();
        let r = self.room(room);
        let members = r
            .home
            .iter()
            .filter(|(_, h)| **h == region)
            .map(|(u, _)| {
                let s = r
                    .member_stamp
                    .get(u)
                    .and_then(|s| Hlc::parse(s.split('|').next().unwrap_or_default()))
                    .unwrap_or_default();
                (u.clone(), s)
            })
            .collect();
        let state = r
            .state_stamp
            .iter()
            .filter_map(|(key, lww)| {
                let mut parts = lww.splitn(3, '|');
                let hlc = Hlc::parse(parts.next()?)?;
                let region = parts.next()?.to_owned();
                let by = UserId::new(parts.next()?).ok()?;
                let value = match r.value.get(key) {
                    Some(v) => Some(JsonText::new(v.clone()).ok()?),
                    None => None,
                };
                Some(StateRecord {
                    key: key.clone(),
                    value,
                    hlc,
                    region,
                    by,
                })
            })
            .collect();
        RoomSnapshot {
            epoch,
            seq: r.seq,
            stamp,
            members,
            state,
        }
    }

    /// Every member of the room (all regions) with its home region, by user.
    pub fn members(&self, room: &RoomId) -> Vec<(UserId, String)> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.home.iter().map(|(u, h)| (u.clone(), h.clone())).collect()
        })
    }

    /// The room's state values (deleted keys absent), by key.
    pub fn state(&self, room: &RoomId) -> BTreeMap<String, String> {
        self.rooms
            .get(room)
            .map(|r| r.value.clone())
            .unwrap_or_default()
    }
}

/// [`ReplicaModel`] behind [`ReplicaApply`], on the wall clock like Redis.
#[derive(Debug)]
pub struct MemoryReplica {
    region: String,
    model: Mutex<ReplicaModel>,
}

impl MemoryReplica {
    /// An empty replica of region `region`.
    pub fn new(region: &str, history_len: usize) -> Self {
        Self {
            region: region.to_owned(),
            model: Mutex::new(ReplicaModel::new(region, history_len, 1 << 30)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ReplicaModel) -> T) -> T {
        let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        m.set_now(crate::now_ms());
        f(&mut m)
    }
}

#[async_trait]
impl ReplicaApply for MemoryReplica {
    fn region(&self) -> &str {
        &self.region
    }
    async fn apply(&self, event: &RemoteEvent) -> StoreResult<Applied> {
        Ok(self.with(|m| m.apply(event)))
    }
    async fn watermarks(
        &self,
        origin: &str,
        rooms: &[RoomId],
    ) -> StoreResult<Vec<Option<(String, u64)>>> {
        Ok(self.with(|m| m.watermarks(origin, rooms)))
    }
    async fn region_down(&self, room: &RoomId, region: &str) -> StoreResult<usize> {
        Ok(self.with(|m| m.region_down(room, region)))
    }
    async fn read_local(&self, room: &RoomId, after: u64, count: usize) -> StoreResult<LocalBatch> {
        Ok(self.with(|m| m.read_local(room, after, count)))
    }
    async fn snapshot(&self, room: &RoomId) -> StoreResult<RoomSnapshot> {
        Ok(self.with(|m| m.snapshot(room)))
    }
    async fn members(&self, room: &RoomId) -> StoreResult<Vec<(UserId, String)>> {
        Ok(self.with(|m| m.members(room)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_model_conforms() {
        super::super::conformance::run_all(&MemoryReplica::new("ap", 100)).await;
    }
}
