//! Requests after `hello`: each frame is admitted (size, rate) and parsed, consecutive
//! publishes to one room are sequenced as one batch, and every other op is executed here into
//! its typed `result`.

use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use meridian_protocol::{
    ErrorCode, Event, JoinResult, LeaveResult, LeftReason, MembersResult, PingResult,
    PresenceResult, PublishResult, Request, RequestId, RoomEventFrame, RoomId, SendResult,
    StateDeleteResult, StateGetResult, StateSetResult, UserId,
};
use region_state::PublishItem;
use serde_json::value::RawValue;

use super::access::not_joined;
use super::socket::{error_reply, ok_reply};
use super::{answer, Failure, Outcome, Session};

/// Most frames answered together: what one read of the socket brought, as far as it goes.
pub(super) const MAX_PIPELINED: usize = 64;
/// Most bytes of frames held for answering together (one largest frame's worth by default):
/// pipelining must not let a client park megabytes per connection in the node.
pub(super) const MAX_PIPELINED_BYTES: usize = 64 * 1024;

/// Token bucket for requests per connection.
pub(super) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            rate,
            burst,
            last: Instant::now(),
        }
    }
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Consecutive publishes of one client to one room, sequenced with one store call.
struct PublishBatch {
    room: RoomId,
    items: Vec<PendingPublish>,
}

/// One publish of a batch, authorised and built, and where its reply goes.
struct PendingPublish {
    slot: usize,
    id: RequestId,
    frame: RoomEventFrame,
    key: Option<String>,
}

impl Session {
    /// Checks the size and rate of one frame and parses it; `Err` is the reply for a frame
    /// refused before it is executed.
    fn admit(&mut self, text: &str) -> Result<(RequestId, Request), String> {
        let node = &self.node;
        if text.len() > node.config.limits.max_frame_bytes {
            node.metrics.error(ErrorCode::FrameTooLarge);
            let m = format!(
                "frame is {} bytes; the limit is {}",
                text.len(),
                node.config.limits.max_frame_bytes
            );
            return Err(error_reply(None, ErrorCode::FrameTooLarge, &m));
        }
        // Every frame costs a token, parsable or not, so garbage cannot flood past the limit.
        let allowed = self.bucket.take();
        let (id, request) = match Request::parse(text) {
            Ok(r) => r,
            Err(e) if allowed => {
                node.metrics.error(e.code);
                return Err(error_reply(e.id.as_ref(), e.code, &e.message));
            }
            Err(e) => {
                node.metrics.error(ErrorCode::RateLimited);
                return Err(error_reply(
                    e.id.as_ref(),
                    ErrorCode::RateLimited,
                    "too many requests; slow down",
                ));
            }
        };
        if !allowed {
            node.metrics.error(ErrorCode::RateLimited);
            return Err(error_reply(
                Some(&id),
                ErrorCode::RateLimited,
                "too many requests; slow down",
            ));
        }
        Ok((id, request))
    }

    fn reply(&self, id: &RequestId, outcome: Outcome) -> String {
        match outcome {
            Ok(result) => ok_reply(id, result),
            Err(Failure(code, message)) => {
                self.node.metrics.error(code);
                error_reply(Some(id), code, &message)
            }
        }
    }

    /// Answers the frames one read of the socket brought (a client may pipeline requests),
    /// in order; returns one reply per frame, in order. Consecutive publishes to one room go
    /// to the store as one batch (one round trip and one script, sequenced in the order
    /// sent); any other request first waits for the publishes before it.
    pub(super) async fn handle_many(&mut self, texts: &[Utf8Bytes]) -> Vec<String> {
        let mut replies = Vec::with_capacity(texts.len());
        let mut batch: Option<PublishBatch> = None;
        for text in texts {
            let (id, request) = match self.admit(text) {
                Ok(r) => r,
                Err(reply) => {
                    replies.push(reply);
                    continue;
                }
            };
            let request = match request {
                Request::Publish {
                    room,
                    data,
                    idempotency_key,
                } => {
                    if let Err(f) = self.may_write(&room) {
                        replies.push(self.reply(&id, Err(f)));
                        continue;
                    }
                    if batch.as_ref().is_some_and(|b| b.room != room) {
                        self.publish(batch.take(), &mut replies).await;
                    }
                    let frame = RoomEventFrame::message(&room, &self.conn.user, &data);
                    let b = batch.get_or_insert_with(|| PublishBatch {
                        room,
                        items: Vec::new(),
                    });
                    b.items.push(PendingPublish {
                        slot: replies.len(),
                        id,
                        frame,
                        key: idempotency_key,
                    });
                    replies.push(String::new());
                    continue;
                }
                other => other,
            };
            self.publish(batch.take(), &mut replies).await;
            let outcome = self.execute(request).await;
            replies.push(self.reply(&id, outcome));
        }
        self.publish(batch.take(), &mut replies).await;
        replies
    }

    /// Sequences a batch of publishes (if there is one) with one store call and writes their
    /// replies into their slots.
    async fn publish(&self, batch: Option<PublishBatch>, replies: &mut [String]) {
        let Some(batch) = batch else { return };
        let node = &self.node;
        let items: Vec<PublishItem<'_>> = batch
            .items
            .iter()
            .map(|p| PublishItem {
                frame: &p.frame,
                idempotency: p.key.as_deref().map(|k| (&self.conn.user, k)),
            })
            .collect();
        // Charged to the user's region-wide budget (`limits.user_publishes_per_second`),
        // which all its connections on every node share, in the same store call.
        let budget_name = format!("pub:{}", self.conn.user);
        let budget = node
            .config
            .limits
            .user_publish_budget()
            .map(|limit| (budget_name.as_str(), limit));
        let result = node
            .timed(
                "publish",
                node.store
                    .publish_budgeted(&batch.room, &items, budget, Duration::from_secs(1)),
            )
            .await;
        match result {
            Ok(published) => {
                for (p, done) in batch.items.iter().zip(published) {
                    let result = PublishResult {
                        room: batch.room.clone(),
                        seq: done.seq,
                        epoch: done.epoch,
                        duplicate: done.duplicate,
                    };
                    replies[p.slot] = ok_reply(&p.id, result);
                }
            }
            Err(e) => {
                let failure = Failure::from(e);
                for p in &batch.items {
                    replies[p.slot] = self.reply(&p.id, Err(failure.clone()));
                }
            }
        }
    }

    /// Executes one request other than a publish (`handle_many` batches those) into its
    /// typed result. The match names every op: a new one does not compile until it is
    /// handled here.
    async fn execute(&mut self, request: Request) -> Outcome {
        let node = self.node.clone();
        let store = &node.store;
        #[cfg(test)]
        if let Request::StateGet { key: Some(key), .. } = &request {
            // The forced failure of `tests::a_failing_session_gives_back_its_slot_and_rooms`.
            assert!(key != super::FAULT_KEY, "fault injected by a test");
        }
        match request {
            Request::Hello { .. } => Err(Failure(
                ErrorCode::AlreadyAuthenticated,
                "hello was already sent".into(),
            )),
            Request::Ping => answer(PingResult { pong: true }),
            Request::Join { room } => {
                let j = self.join(&room, None, &mut Vec::new()).await?;
                answer(JoinResult {
                    epoch: j.epoch,
                    first: j.first,
                    origins: j.origins,
                    room,
                    seq: j.seq,
                })
            }
            Request::Leave { room } => answer(self.leave(room).await?),
            // `handle_many` batches every publish; none reaches here.
            Request::Publish { .. } => Err(Failure(
                ErrorCode::Internal,
                "publish outside a batch".into(),
            )),
            Request::Send { to, data } => answer(self.send(to, &data).await?),
            Request::Members { room, after, limit } => {
                self.may_see(&room)?;
                let max = node.config.limits.members_page_max;
                let limit = limit.unwrap_or(max).clamp(1, max);
                let page = node
                    .timed("members", store.members(&room, after.as_ref(), limit))
                    .await?;
                answer(MembersResult {
                    members: page.members,
                    next: page.next,
                    room,
                })
            }
            Request::Presence { users } => {
                let entries = self.presence(&users).await?;
                answer(PresenceResult { users: entries })
            }
            Request::StateSet {
                room,
                key,
                value,
                if_version,
            } => {
                self.may_write(&room)?;
                let version = node
                    .timed(
                        "state_set",
                        store.state_set(&room, &key, &value, if_version, &self.conn.user),
                    )
                    .await?;
                answer(StateSetResult { key, room, version })
            }
            Request::StateGet { room, key } => {
                self.may_see(&room)?;
                let entries = node
                    .timed("state_get", store.state_get(&room, key.as_deref()))
                    .await?;
                answer(StateGetResult { room, entries })
            }
            Request::StateDelete {
                room,
                key,
                if_version,
            } => {
                self.may_write(&room)?;
                let deleted = node
                    .timed(
                        "state_delete",
                        store.state_delete(&room, &key, if_version, &self.conn.user),
                    )
                    .await?;
                answer(StateDeleteResult { deleted, key, room })
            }
        }
    }

    /// `leave`: the store leave, then the local subscription goes.
    async fn leave(&mut self, room: RoomId) -> Result<LeaveResult, Failure> {
        let node = self.node.clone();
        let store = &node.store;
        let Some(_) = self.rooms.get(&room) else {
            return Err(not_joined(&room));
        };
        let left = node
            .timed("leave", store.leave(&room, &self.conn, LeftReason::Leave))
            .await?;
        self.rooms.remove(&room);
        node.local.remove_subscriber(&room, self.conn.conn);
        let _ = store.unsubscribe(&room).await;
        Ok(LeaveResult { left, room })
    }

    /// `send`: a direct message to every connection of `to`, if the rules and budgets allow.
    async fn send(&self, to: UserId, data: &RawValue) -> Result<SendResult, Failure> {
        let node = &self.node;
        self.may_message(&to).await?;
        let frame = Event::Direct {
            from: &self.conn.user,
            data,
        }
        .encode();
        self.spend_direct(&to, frame.len() as u64).await?;
        if node
            .timed("send_direct", node.store.send_direct(&to, &frame))
            .await?
        {
            Ok(SendResult { to })
        } else {
            Err(Failure(
                ErrorCode::UserOffline,
                format!("{to} has no live connection"),
            ))
        }
    }
}
