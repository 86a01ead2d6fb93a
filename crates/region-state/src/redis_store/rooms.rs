//! Room membership: join (with the node index written first) and leave, member pages, and
//! whether users share a room.

use meridian_protocol::{LeftReason, MemberEntry, OriginPosition, RoomEventFrame, RoomId, UserId};
use redis::AsyncCommands;

use super::keys::{index_key, index_room_entry};
use super::RedisStore;
use crate::scripts::{k, RoomKeys};
use crate::{ConnRef, JoinOutcome, MemberPage, StoreError, StoreResult};

/// `mr:{room}:rw` entries (origin region → `"<epoch> <seq>"`) as positions, by region.
fn parse_watermarks<'a>(
    marks: impl Iterator<Item = (&'a String, &'a String)>,
) -> Vec<OriginPosition> {
    let mut out: Vec<OriginPosition> = marks
        .filter_map(|(region, mark)| {
            let (epoch, seq) = mark.split_once(' ')?;
            Some(OriginPosition {
                region: region.clone(),
                epoch: epoch.to_owned(),
                seq: seq.parse().ok()?,
            })
        })
        .collect();
    out.sort_by(|a, b| a.region.cmp(&b.region));
    out
}

/// Removes one connection from a room (the script emits `left` for the user's last one); the
/// node index is the caller's. The reaper uses it for a dead node's memberships.
pub(super) async fn leave_token(
    store: &RedisStore,
    room: &RoomId,
    conn: &ConnRef,
    reason: LeftReason,
) -> StoreResult<bool> {
    let keys = RoomKeys::new(room);
    let head = RoomEventFrame::left(room, &conn.user, &store.config.region, reason);
    let mut inv = store.room_script(&store.scripts.leave, &keys);
    inv.arg(conn.room_token())
        .arg(conn.user.as_str())
        .arg(head.head());
    let left: i64 = inv.invoke_async(&mut store.conn()).await?;
    Ok(left == 1)
}

pub(super) async fn join(
    store: &RedisStore,
    room: &RoomId,
    conn: &ConnRef,
    max_members: u32,
) -> StoreResult<JoinOutcome> {
    let keys = RoomKeys::new(room);
    let index_entry = index_room_entry(room, conn);
    let mut c = store.conn();
    // Index first: a crash after this leaves an entry whose reaping is a no-op.
    let _: () = c.sadd(index_key(&conn.node), &index_entry).await?;
    let head = RoomEventFrame::joined(room, &conn.user, &store.config.region);
    let mut inv = store.room_script(&store.scripts.join, &keys);
    inv.arg(conn.room_token())
        .arg(conn.user.as_str())
        .arg(max_members)
        .arg(head.head());
    let (status, epoch, seq, marks): (i64, String, u64, Vec<String>) =
        inv.invoke_async(&mut c).await?;
    if status < 0 {
        let _: () = c.srem(index_key(&conn.node), &index_entry).await?;
        return Err(StoreError::RoomFull { max: max_members });
    }
    Ok(JoinOutcome {
        first: status == 1,
        epoch,
        seq,
        origins: parse_watermarks(marks.chunks_exact(2).map(|c| (&c[0], &c[1]))),
    })
}

pub(super) async fn leave(
    store: &RedisStore,
    room: &RoomId,
    conn: &ConnRef,
    reason: LeftReason,
) -> StoreResult<bool> {
    let left = leave_token(store, room, conn, reason).await?;
    let _: () = store
        .conn()
        .srem(index_key(&conn.node), index_room_entry(room, conn))
        .await?;
    Ok(left)
}

pub(super) async fn members(
    store: &RedisStore,
    room: &RoomId,
    after: Option<&UserId>,
    limit: u32,
) -> StoreResult<MemberPage> {
    let keys = RoomKeys::new(room);
    let min = after.map_or_else(|| "-".to_owned(), |u| format!("({u}"));
    let limit = limit.max(1);
    let mut c = store.conn();
    let users: Vec<String> = redis::cmd("ZRANGEBYLEX")
        .arg(&keys.keys[k::MEM])
        .arg(min)
        .arg("+")
        .arg("LIMIT")
        .arg(0)
        .arg(limit + 1)
        .query_async(&mut c)
        .await?;
    let has_more = users.len() > limit as usize;
    let users: Vec<String> = users.into_iter().take(limit as usize).collect();
    let regions: Vec<Option<String>> = if users.is_empty() {
        Vec::new()
    } else {
        redis::cmd("HMGET")
            .arg(&keys.keys[k::REG])
            .arg(&users)
            .query_async(&mut c)
            .await?
    };
    let members = users
        .into_iter()
        .zip(regions)
        .filter_map(|(u, r)| {
            Some(MemberEntry {
                user: UserId::new(u).ok()?,
                region: r.unwrap_or_default(),
            })
        })
        .collect::<Vec<_>>();
    let next = if has_more {
        members.last().map(|m| m.user.clone())
    } else {
        None
    };
    Ok(MemberPage { members, next })
}

pub(super) async fn shares_room(
    store: &RedisStore,
    rooms: &[RoomId],
    users: &[UserId],
) -> StoreResult<Vec<bool>> {
    let mut shared = vec![false; users.len()];
    if rooms.is_empty() || users.is_empty() {
        return Ok(shared);
    }
    let mut pipe = redis::pipe();
    for room in rooms {
        pipe.cmd("ZMSCORE")
            .arg(&RoomKeys::new(room).keys[k::MEM])
            .arg(users.iter().map(UserId::as_str).collect::<Vec<_>>());
    }
    let scores: Vec<Vec<Option<f64>>> = pipe.query_async(&mut store.conn()).await?;
    for per_room in scores {
        for (s, score) in shared.iter_mut().zip(per_room) {
            *s |= score.is_some();
        }
    }
    Ok(shared)
}
