//! Room membership: join and leave (connection-counted, with the node index), member pages,
//! and whether users share a room.

use meridian_protocol::{LeftReason, MemberEntry, RoomEventFrame, RoomId, UserId};

use super::{MemoryStore, RegionState};
use crate::{random_token, ConnRef, JoinOutcome, MemberPage, StoreError, StoreLimits, StoreResult};

impl RegionState {
    pub(super) fn leave(
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

pub(super) async fn join(
    store: &MemoryStore,
    room: &RoomId,
    conn: &ConnRef,
    max_members: u32,
) -> StoreResult<JoinOutcome> {
    let mut s = store.lock();
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
    r.members.insert(conn.user.clone(), store.region.clone());
    s.index.entry(conn.node.clone()).or_default().insert((
        Some(room.clone()),
        conn.conn,
        conn.user.clone(),
    ));
    let head = RoomEventFrame::joined(room, &conn.user, &store.region);
    let (epoch, seq) = s.append(room, head.head(), &store.limits);
    Ok(JoinOutcome {
        first: true,
        epoch,
        seq,
        origins: Vec::new(),
    })
}

pub(super) async fn leave(
    store: &MemoryStore,
    room: &RoomId,
    conn: &ConnRef,
    reason: LeftReason,
) -> StoreResult<bool> {
    let mut s = store.lock();
    let left = s.leave(room, conn, &store.region, reason, &store.limits);
    if let Some(idx) = s.index.get_mut(&conn.node) {
        idx.remove(&(Some(room.clone()), conn.conn, conn.user.clone()));
    }
    Ok(left)
}

pub(super) async fn members(
    store: &MemoryStore,
    room: &RoomId,
    after: Option<&UserId>,
    limit: u32,
) -> StoreResult<MemberPage> {
    let s = store.lock();
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

pub(super) async fn shares_room(
    store: &MemoryStore,
    rooms: &[RoomId],
    users: &[UserId],
) -> StoreResult<Vec<bool>> {
    let s = store.lock();
    Ok(users
        .iter()
        .map(|u| {
            rooms
                .iter()
                .any(|r| s.rooms.get(r).is_some_and(|r| r.members.contains_key(u)))
        })
        .collect())
}
