//! `hello` and the errors of frames that cannot run (docs/protocol.md §2, §3).

use meridian_client::protocol::{ErrorCode, Request, RequestId, RoomId, PROTOCOL_VERSION};
use meridian_client::{ClientError, Connection, Frame};

use crate::support::{self, closed, token, WAIT};

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not a server error: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// The error reply with `"id":null` (a frame whose id could not be read).
async fn anonymous_error(c: &mut Connection) -> ErrorCode {
    let r = tokio::time::timeout(
        WAIT,
        c.wait_for(|f| matches!(f, Frame::Reply(r) if r.id.is_none())),
    )
    .await
    .unwrap()
    .unwrap();
    let Frame::Reply(reply) = r.frame else {
        unreachable!()
    };
    reply.outcome.unwrap_err().code.unwrap()
}

#[tokio::test]
async fn hello_comes_first_and_once() {
    let node = support::start(|_| {}).await;
    let mut c = Connection::connect(&node.url).await.unwrap();
    // Anything before hello is refused, and the connection stays.
    assert_eq!(code(c.ping().await), ErrorCode::NotAuthenticated);
    let hello = c.hello(&token("alice"), Vec::new()).await.unwrap();
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert_eq!(hello.user.as_str(), "alice");
    assert_eq!(hello.region, support::REGION);
    assert_eq!(hello.node, node.running.node_id.as_str());
    assert!(hello.resumed.is_empty());
    assert!(c.ping().await.unwrap().pong);
    assert_eq!(
        code(c.hello(&token("alice"), Vec::new()).await),
        ErrorCode::AlreadyAuthenticated
    );
    assert!(
        c.ping().await.unwrap().pong,
        "a second hello keeps the connection"
    );
}

#[tokio::test]
async fn a_bad_or_missing_token_is_refused_with_close_1008() {
    let node = support::start(|_| {}).await;
    let mut c = Connection::connect(&node.url).await.unwrap();
    assert_eq!(
        code(c.hello("not-a-jwt", Vec::new()).await),
        ErrorCode::TokenInvalid
    );
    assert_eq!(closed(&mut c, WAIT).await, Some(1008));
    let mut c = Connection::connect(&node.url).await.unwrap();
    let missing = c
        .request(&Request::Hello {
            token: None,
            resume: Vec::new(),
        })
        .await;
    assert_eq!(code(missing), ErrorCode::TokenMissing);
    assert_eq!(closed(&mut c, WAIT).await, Some(1008));
    assert_eq!(
        c.close_info().map(|i| i.reason.as_str()),
        Some("token_missing")
    );
}

#[tokio::test]
async fn bad_frames_get_their_codes_and_the_connection_stays() {
    let node = support::start(|c| c.limits.max_frame_bytes = 1024).await;
    let mut c = support::connect(&node, "alice").await;
    c.send_text("{not json").await.unwrap();
    assert_eq!(anonymous_error(&mut c).await, ErrorCode::BadRequest);
    c.send_text(r#"{"id":1,"op":"join","room":"r","bogus":1}"#)
        .await
        .unwrap();
    assert_eq!(anonymous_error(&mut c).await, ErrorCode::BadRequest);
    c.send_text("x".repeat(2000)).await.unwrap();
    assert_eq!(anonymous_error(&mut c).await, ErrorCode::FrameTooLarge);
    // Errors found after the id was read carry it.
    c.send_text(r#"{"id":"d","op":"dance"}"#).await.unwrap();
    let unknown = c.reply(&RequestId::Str("d".into())).await;
    assert_eq!(code(unknown), ErrorCode::UnknownOp);
    c.send_text(r#"{"id":"j","op":"join","room":"a b"}"#)
        .await
        .unwrap();
    assert_eq!(
        code(c.reply(&RequestId::Str("j".into())).await),
        ErrorCode::InvalidId
    );
    c.send_text(r#"{"id":"p","op":"publish","room":"r","data":NaN}"#)
        .await
        .unwrap();
    assert_eq!(anonymous_error(&mut c).await, ErrorCode::BadRequest);
    // Requests that parse but may not run.
    let room = RoomId::new("lobby").unwrap();
    assert_eq!(code(c.publish(&room, &1, None).await), ErrorCode::NotJoined);
    assert_eq!(code(c.leave(&room).await), ErrorCode::NotJoined);
    assert_eq!(
        code(c.state_set(&room, "k", &"v", None).await),
        ErrorCode::NotJoined
    );
    assert!(c.ping().await.unwrap().pong);
}
