//! What a connection may do: the token's room grants (see, publish), the `send` rule,
//! presence scoped to shared rooms, and the region-wide direct-message budgets.

use std::collections::HashMap;
use std::time::Duration;

use meridian_protocol::{ErrorCode, PresenceEntry, RoomId, UserId};
use region_state::Budget;

use super::{Failure, Session};

impl Session {
    /// The `send` rule: the target must share a room with this connection (a room it has
    /// joined, members of every region count), unless the token has the claim `dm`.
    pub(super) async fn may_message(&self, to: &UserId) -> Result<(), Failure> {
        if self.claims.dm {
            return Ok(());
        }
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        let shared = if rooms.is_empty() {
            false
        } else {
            let node = &self.node;
            node.timed(
                "shares_room",
                node.store.shares_room(&rooms, std::slice::from_ref(to)),
            )
            .await?
            .first()
            .copied()
            .unwrap_or(false)
        };
        if shared {
            Ok(())
        } else {
            Err(Failure(
                ErrorCode::Forbidden,
                format!("{to} shares no room with this connection; direct messages need a shared room or the token claim `dm`"),
            ))
        }
    }

    /// Charges one direct message of `bytes` to the sender's and the recipient's region-wide
    /// budgets (count and bytes per second); `rate_limited` names the one that is spent.
    pub(super) async fn spend_direct(&self, to: &UserId, bytes: u64) -> Result<(), Failure> {
        let l = &self.node.config.limits;
        let from = &self.conn.user;
        let names = [
            format!("dm-sent:{from}"),
            format!("dm-sent-bytes:{from}"),
            format!("dm-received:{to}"),
            format!("dm-received-bytes:{to}"),
        ];
        let all = [
            (
                l.dm_sent_per_second,
                1,
                "direct messages this user may send per second",
            ),
            (
                l.dm_sent_bytes_per_second,
                bytes,
                "direct-message bytes this user may send per second",
            ),
            (
                l.dm_received_per_second,
                1,
                "direct messages the recipient may be sent per second",
            ),
            (
                l.dm_received_bytes_per_second,
                bytes,
                "direct-message bytes the recipient may be sent per second",
            ),
        ];
        let mut budgets = Vec::with_capacity(4);
        let mut what = Vec::with_capacity(4);
        for (name, (limit, cost, text)) in names.iter().zip(all) {
            if limit > 0 {
                budgets.push(Budget { name, cost, limit });
                what.push((limit, text));
            }
        }
        let node = &self.node;
        match node
            .timed("spend", node.store.spend(&budgets, Duration::from_secs(1)))
            .await?
        {
            None => Ok(()),
            Some(i) => {
                let (limit, text) = what
                    .get(i)
                    .copied()
                    .unwrap_or((0, "a direct-message budget"));
                Err(Failure(
                    ErrorCode::RateLimited,
                    format!("over the {limit} {text}; retry later"),
                ))
            }
        }
    }

    /// `presence`, scoped: users who share no room with this connection (a room it has
    /// joined) are reported offline, whatever their state, so presence tells nothing about
    /// strangers. The asker always sees itself; a token with the claim `dm` (may contact
    /// anyone) sees everyone.
    pub(super) async fn presence(&self, users: &[UserId]) -> Result<Vec<PresenceEntry>, Failure> {
        let node = &self.node;
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        let shared = if self.claims.dm {
            vec![true; users.len()]
        } else if rooms.is_empty() {
            vec![false; users.len()]
        } else {
            node.timed("shares_room", node.store.shares_room(&rooms, users))
                .await?
        };
        let visible: Vec<UserId> = users
            .iter()
            .zip(shared.iter().chain(std::iter::repeat(&false)))
            .filter(|(u, s)| **s || **u == self.conn.user)
            .map(|(u, _)| u.clone())
            .collect();
        let found: HashMap<UserId, PresenceEntry> = if visible.is_empty() {
            HashMap::new()
        } else {
            node.timed("presence", node.store.presence(&visible))
                .await?
                .into_iter()
                .map(|e| (e.user.clone(), e))
                .collect()
        };
        Ok(users
            .iter()
            .map(|u| {
                found.get(u).cloned().unwrap_or_else(|| PresenceEntry {
                    user: u.clone(),
                    online: false,
                    connections: 0,
                    regions: Vec::new(),
                })
            })
            .collect())
    }

    pub(super) fn may_see(&self, room: &RoomId) -> Result<(), Failure> {
        if self.claims.may_join(room) {
            Ok(())
        } else {
            Err(Failure(
                ErrorCode::Forbidden,
                format!("the token does not cover room {room}"),
            ))
        }
    }

    pub(super) fn may_write(&self, room: &RoomId) -> Result<(), Failure> {
        if !self.rooms.contains_key(room) {
            return Err(not_joined(room));
        }
        if !self.claims.may_publish(room) {
            return Err(Failure(
                ErrorCode::PublishForbidden,
                format!("the token does not allow publishing in {room}"),
            ));
        }
        Ok(())
    }
}

/// The failure of a request for a room the connection has not joined.
pub(super) fn not_joined(room: &RoomId) -> Failure {
    Failure(
        ErrorCode::NotJoined,
        format!("not in room {room}; join it first"),
    )
}
