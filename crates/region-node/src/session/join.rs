//! Joining a room: the local subscription first (so nothing published after the join is
//! missed), the store join, the history replay of a resume, then live delivery.

use std::time::Duration;

use meridian_protocol::{ErrorCode, OriginPosition, RoomId};
use region_state::{JoinOutcome, Recovery};

use super::{Failure, Replays, Session};
use crate::fanout::{KickReason, Subscriber};

/// Where a join left the connection in the room's sequence.
pub(super) struct Joined {
    pub(super) epoch: String,
    pub(super) seq: u64,
    pub(super) first: bool,
    /// A resume asked for history the room no longer has.
    pub(super) history_lost: bool,
    /// Other regions' positions in the room as of the join (the seed of the client's
    /// version vector for a cross-region resume).
    pub(super) origins: Vec<OriginPosition>,
}

/// A resume's position in a room: epoch, seq and the client's version vector.
type ResumeFrom<'a> = (&'a str, u64, &'a [OriginPosition]);

impl Session {
    /// Joins a room: subscribe first (so nothing published after the join is missed), then
    /// the store join, then — when resuming — the history replay, then live delivery.
    pub(super) async fn join(
        &mut self,
        room: &RoomId,
        resume: Option<ResumeFrom<'_>>,
        replays: &mut Replays,
    ) -> Result<Joined, Failure> {
        self.may_see(room)?;
        if let Some(sub) = self.rooms.get(room) {
            // Already in the room (a repeated join, or a room listed twice in a resume).
            let (epoch, seq) = sub.position().unwrap_or_default();
            return Ok(Joined {
                epoch: epoch.to_string(),
                seq,
                first: false,
                history_lost: false,
                origins: Vec::new(),
            });
        }
        let node = self.node.clone();
        let limits = &node.config.limits;
        if self.rooms.len() >= limits.max_rooms_per_connection {
            return Err(Failure(
                ErrorCode::TooManyRooms,
                format!(
                    "a connection may be in at most {} rooms",
                    limits.max_rooms_per_connection
                ),
            ));
        }
        let sub = Subscriber::new(self.conn.conn, self.outbox.clone());
        node.local.add_subscriber(room, sub.clone());
        if let Err(e) = node.timed("subscribe", node.store.subscribe(room)).await {
            node.local.remove_subscriber(room, self.conn.conn);
            return Err(e.into());
        }
        if let Some((_, _, vector)) = resume.filter(|(_, _, v)| !v.is_empty()) {
            // Before the join announces interest: where a relay that starts following the
            // room here must have the other regions replay from (a client re-homed into a
            // region where the room had no members yet). Without it the replay starts at the
            // join, so the failure is logged, not refused.
            if let Err(e) = node.store.want_replay(room, vector).await {
                tracing::warn!(%room, error = %e, "cannot record the resumer's positions for the relays");
            }
        }
        let joined = node
            .timed(
                "join",
                node.store
                    .join(room, &self.conn, limits.max_members_per_room),
            )
            .await;
        let outcome = match joined {
            Ok(o) => o,
            Err(e) => {
                node.local.remove_subscriber(room, self.conn.conn);
                let _ = node.store.unsubscribe(room).await;
                return Err(e.into());
            }
        };
        node.metrics.joins.inc();
        self.rooms.insert(room.clone(), sub.clone());
        let (position, history_lost) = match resume {
            Some(from) => self.replay(room, &sub, &outcome, from, replays).await,
            None => (outcome.seq, false),
        };
        if !sub.go_live(position, &outcome.epoch) {
            // More events arrived during the join than can be held: the client must resume.
            self.outbox.kick(KickReason::Resync);
        }
        Ok(Joined {
            epoch: outcome.epoch,
            seq: position,
            first: outcome.first,
            history_lost,
            origins: outcome.origins,
        })
    }

    /// A resume's history after the join: pushes what the client missed onto `replays`, and
    /// returns the position the replay covers and whether the history was lost.
    async fn replay(
        &self,
        room: &RoomId,
        sub: &Subscriber,
        outcome: &JoinOutcome,
        (epoch, seq, vector): ResumeFrom<'_>,
        replays: &mut Replays,
    ) -> (u64, bool) {
        let node = &self.node;
        let mut position = outcome.seq;
        let mut history_lost = false;
        // A position in another region's sequence (the epoch is not this room's here)
        // with a version vector: cross-region resume.
        let cross = !vector.is_empty() && epoch != outcome.epoch;
        if cross {
            // Events the client got elsewhere may still reach this region later.
            sub.set_floor(vector);
        }
        // A slow or failing-over store gets two more tries (after 200 ms and 800 ms)
        // before the resumer is told its history is lost.
        let mut retries = 0u32;
        let read = loop {
            let attempt = if cross {
                node.timed("history", node.store.history_since(room, vector))
                    .await
            } else {
                node.timed("history", node.store.history(room, epoch, seq))
                    .await
            };
            match attempt {
                Err(e) if e.is_retryable() && retries < 2 => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(50 << (2 * retries))).await;
                }
                read => break read,
            }
        };
        match read {
            Ok(Recovery::Replay { events, .. }) => {
                for (s, frame) in events {
                    // The resumer's own `joined` is not news to it (as on a plain join).
                    if !(outcome.first && s == outcome.seq) {
                        replays.push(frame);
                    }
                    position = position.max(s);
                }
            }
            Ok(Recovery::Lost { .. }) => history_lost = true,
            Err(e) => {
                // Joined, but the replay failed: the client is live from the join and is
                // told its history could not be recovered.
                tracing::warn!(%room, error = %e, "history read failed during resume");
                history_lost = true;
            }
        }
        (position, history_lost)
    }
}
