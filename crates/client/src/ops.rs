//! One typed method per op of protocol v1 (`docs/protocol.md` §4): a request built from the
//! protocol's [`Request`], a reply decoded into the protocol's result type.

use meridian_protocol::{
    HelloResult, JoinResult, LeaveResult, MembersResult, PingResult, PresenceResult, PublishResult,
    Request, ResumePoint, RoomId, SendResult, StateDeleteResult, StateGetResult, StateSetResult,
    UserId,
};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::{ClientError, Connection};

/// `data` or `value` as JSON for a request.
fn to_json(value: &impl Serialize) -> Result<Box<RawValue>, ClientError> {
    serde_json::value::to_raw_value(value).map_err(ClientError::Encode)
}

impl Connection {
    /// Says `hello` with `token`, resuming the rooms of `resume` (each with the client's
    /// version vector in `origins`, `docs/protocol.md` §7). The replayed events of resumed
    /// rooms follow as events, before live ones.
    pub async fn hello(
        &mut self,
        token: &str,
        resume: Vec<ResumePoint>,
    ) -> Result<HelloResult, ClientError> {
        self.call(&Request::Hello {
            token: Some(token.to_owned()),
            resume,
        })
        .await
    }

    /// Joins `room`.
    pub async fn join(&mut self, room: &RoomId) -> Result<JoinResult, ClientError> {
        self.call(&Request::Join { room: room.clone() }).await
    }

    /// Leaves `room`.
    pub async fn leave(&mut self, room: &RoomId) -> Result<LeaveResult, ClientError> {
        self.call(&Request::Leave { room: room.clone() }).await
    }

    /// Publishes `data` to `room`; a retry with the same `idempotency_key` publishes once.
    pub async fn publish(
        &mut self,
        room: &RoomId,
        data: &impl Serialize,
        idempotency_key: Option<&str>,
    ) -> Result<PublishResult, ClientError> {
        self.call(&Request::Publish {
            room: room.clone(),
            data: to_json(data)?,
            idempotency_key: idempotency_key.map(str::to_owned),
        })
        .await
    }

    /// Sends `data` to every connection of user `to`.
    pub async fn send_direct(
        &mut self,
        to: &UserId,
        data: &impl Serialize,
    ) -> Result<SendResult, ClientError> {
        self.call(&Request::Send {
            to: to.clone(),
            data: to_json(data)?,
        })
        .await
    }

    /// One page of `room`'s members, after `after`.
    pub async fn members(
        &mut self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: Option<u32>,
    ) -> Result<MembersResult, ClientError> {
        self.call(&Request::Members {
            room: room.clone(),
            after: after.cloned(),
            limit,
        })
        .await
    }

    /// The online status of `users` (at most 100).
    pub async fn presence(&mut self, users: &[UserId]) -> Result<PresenceResult, ClientError> {
        self.call(&Request::Presence {
            users: users.to_vec(),
        })
        .await
    }

    /// Sets `key` in `room` to `value` (compare-and-set with `if_version`).
    pub async fn state_set(
        &mut self,
        room: &RoomId,
        key: &str,
        value: &impl Serialize,
        if_version: Option<u64>,
    ) -> Result<StateSetResult, ClientError> {
        self.call(&Request::StateSet {
            room: room.clone(),
            key: key.to_owned(),
            value: to_json(value)?,
            if_version,
        })
        .await
    }

    /// Reads `key` of `room`, or every key.
    pub async fn state_get(
        &mut self,
        room: &RoomId,
        key: Option<&str>,
    ) -> Result<StateGetResult, ClientError> {
        self.call(&Request::StateGet {
            room: room.clone(),
            key: key.map(str::to_owned),
        })
        .await
    }

    /// Deletes `key` of `room` (compare-and-set with `if_version`).
    pub async fn state_delete(
        &mut self,
        room: &RoomId,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<StateDeleteResult, ClientError> {
        self.call(&Request::StateDelete {
            room: room.clone(),
            key: key.to_owned(),
            if_version,
        })
        .await
    }

    /// The protocol-level liveness check.
    pub async fn ping(&mut self) -> Result<PingResult, ClientError> {
        self.call(&Request::Ping).await
    }
}
