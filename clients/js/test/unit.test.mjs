// SDK behaviour against an in-memory fake server and the shared wire vectors
// (crates/protocol/tests/vectors/). Fast: no mesh needed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { MeridianClient, MeridianError, RoomPosition, isRetryable } from "../dist/index.js";
import { fakeNet, defaultRespond, waitFor } from "./fake.mjs";

const vectors = (name) =>
  JSON.parse(readFileSync(new URL(`../../../crates/protocol/tests/vectors/${name}`, import.meta.url), "utf8"));

function client(net, extra = {}) {
  return new MeridianClient({ url: "ws://fake/v1/ws", token: "t", WebSocket: net.WebSocket, backoffBaseMs: 5, backoffCapMs: 20, ...extra });
}

async function connected(c) {
  await waitFor(() => c.state === "connected", 3000, "connected");
}

test("vectors: every SDK call sends the frame the node parses", async () => {
  const net = fakeNet();
  const c = client(net);
  await connected(c);
  const room = await c.join("lobby");
  for (const v of vectors("requests.json").valid) {
    const { method, args = [] } = v.sdk;
    if (method === "hello") continue; // the hello frame is covered by the resume scenarios
    const sock = net.opened.at(-1);
    const before = sock.sent.length;
    const target = v.sdk.room ? room : c;
    const fn = method.split(".").reduce((o, k) => o[k], target);
    const owner = method.includes(".") ? target.state : target;
    if (method === "join") await c.join("lobby-2").catch(() => {});
    else await fn.apply(owner, args).catch(() => {});
    const sent = sock.sent.slice(before).map(({ id, ...rest }) => rest);
    const expected = method === "join" ? { ...v.frame, room: "lobby-2" } : v.frame;
    assert.deepEqual(sent[0], expected, method);
  }
  c.close();
});

test("vectors: room events are delivered as sent, other events as client events", async () => {
  const net = fakeNet();
  const c = client(net);
  await connected(c);
  const room = await c.join("lobby");
  const got = [];
  room.on("event", (e) => got.push(e));
  const ev = vectors("events.json");
  const frames = ev.room_events.map((v) => v.frame).sort((a, b) => JSON.parse(a).seq - JSON.parse(b).seq);
  const sock = net.opened.at(-1);
  for (const f of frames) sock.push(f);
  assert.deepEqual(got, frames.map((f) => JSON.parse(f)));
  const direct = [];
  const hints = [];
  const errors = [];
  c.on("direct", (d) => direct.push(d));
  c.on("reconnect", (h) => hints.push(h));
  c.on("error", (e) => errors.push(e));
  for (const v of ev.other_events) sock.push(v.frame);
  assert.deepEqual(direct, [{ from: "alice", data: { kind: "offer", sdp: "v=0" } }]);
  assert.equal(hints.length, 2);
  assert.equal(hints[1].url, "ws://127.0.0.1:7200/v1/ws");
  assert.equal(hints[1].region, "eu-central");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "not_authenticated");
  c.close();
});

test("vectors: error replies give MeridianError with the protocol code and retryable", async () => {
  const replies = vectors("errors.json").replies;
  for (const v of replies) assert.equal(isRetryable(v.code), v.retryable, v.code);
  const next = [];
  const net = fakeNet({
    respond: (sock, f, n) => {
      if (f.op !== "ping") return defaultRespond(sock, f, n);
      const v = next.shift();
      sock.push(v.frame.replace(/"id":\d+/, `"id":${f.id}`));
    },
  });
  const c = client(net);
  await connected(c);
  for (const v of replies.filter((r) => !r.retryable)) {
    next.push(v);
    await assert.rejects(c.ping(), (e) => e instanceof MeridianError && e.code === v.code && e.retryable === false);
  }
  c.close();
});

test("vectors: resume scenarios (cursor, vector, merge by maximum after the replay)", () => {
  for (const s of vectors("resume.json").scenarios) {
    const pos = new RoomPosition();
    let region = "";
    for (const step of s.steps) {
      if (step.join) {
        region = step.join.region;
        pos.seedFromJoin(region, step.join.epoch, step.join.seq, step.join.origins);
      } else if (step.event) {
        assert.equal(pos.accept(region, step.event), step.deliver, `${s.name}: ${JSON.stringify(step.event)}`);
      } else if (step.resume) {
        assert.deepEqual(pos.resumeEntry(s.room), step.resume, s.name);
      } else if (step.resumed) {
        region = step.resumed.region;
        assert.equal(pos.applyResumed(region, step.resumed.entry), step.outcome, s.name);
      }
    }
  }
});

test("routing: ranked regions from /v1/route, falls back down the list", async () => {
  const seen = [];
  const fetch = async (url) => {
    seen.push(url);
    return new Response(
      JSON.stringify({ regions: [{ name: "dead", ws_url: "ws://dead/v1/ws" }, { name: "good", ws_url: "ws://good/v1/ws" }] }),
      { status: 200 },
    );
  };
  const net = fakeNet({ refuse: (url) => url.includes("dead") });
  const c = new MeridianClient({ router: "http://router:8053/", routeQuery: { ip: "81.20.1.7" }, token: "t", WebSocket: net.WebSocket, fetch });
  const connecting = [];
  c.on("connecting", (e) => connecting.push(e.region));
  const info = await new Promise((r) => c.once("connected", r));
  assert.equal(seen[0], "http://router:8053/v1/route?ip=81.20.1.7");
  assert.deepEqual(connecting, ["dead", "good"]);
  assert.equal(info.url, "ws://good/v1/ws");
  c.close();
});

test("state machine: full-jitter backoff under the cap, close() stops everything", async () => {
  const net = fakeNet({ refuse: () => true });
  const c = new MeridianClient({ url: "ws://x/v1/ws", token: "t", WebSocket: net.WebSocket, backoffBaseMs: 4, backoffCapMs: 30, autoConnect: false });
  const states = [];
  const delays = [];
  c.on("state", (s) => states.push(s));
  c.on("reconnecting", (e) => delays.push(e));
  c.connect();
  await waitFor(() => delays.length >= 8, 5000, "8 reconnect attempts");
  for (const d of delays) assert.ok(d.delayMs >= 0 && d.delayMs <= 30, `delay ${d.delayMs}`);
  assert.deepEqual(delays.slice(0, 3).map((d) => d.attempt), [1, 2, 3]);
  const pending = c.ping();
  c.close();
  await assert.rejects(pending, (e) => e.code === "closed" && e.retryable === false);
  const sockets = net.sockets.length;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(net.sockets.length, sockets, "no attempt after close()");
  assert.equal(states.at(-1), "closed");
  assert.ok(states.includes("connecting") && states.includes("reconnecting"));
  await assert.rejects(c.ping(), (e) => e.code === "closed");
});

test("requests: bounded offline queue fails clearly, every request times out", async () => {
  const net = fakeNet({ refuse: () => true });
  const c = new MeridianClient({ url: "ws://x/v1/ws", token: "t", WebSocket: net.WebSocket, offlineQueueLimit: 2, requestTimeoutMs: 150 });
  const a = c.ping();
  const b = c.ping();
  await assert.rejects(c.ping(), (e) => e instanceof MeridianError && e.code === "queue_full" && e.retryable);
  await assert.rejects(a, (e) => e.code === "timeout" && e.retryable);
  await assert.rejects(b, (e) => e.code === "timeout");
  c.close();
  // A silent server: the request times out too.
  const mute = fakeNet({ respond: (s, f, n) => (f.op === "hello" ? defaultRespond(s, f, n) : undefined) });
  const d = client(mute, { requestTimeoutMs: 100 });
  await connected(d);
  await assert.rejects(d.ping(), (e) => e.code === "timeout");
  d.close();
});

test("publish: in flight during a reconnect, re-sent once with the same idempotency key", async () => {
  let dropped = false;
  const net = fakeNet({
    respond: (sock, f, n) => {
      if (f.op === "send") return; // in flight when the connection drops
      if (f.op === "publish" && !dropped) {
        dropped = true;
        return sock.drop(1006);
      }
      defaultRespond(sock, f, n);
    },
  });
  const c = client(net);
  await connected(c);
  const room = await c.join("lobby");
  const sendP = c.send("bob", { x: 1 }).catch((e) => e);
  const r = await room.publish({ n: 1 });
  const sendErr = await sendP;
  assert.ok(sendErr instanceof MeridianError && sendErr.code === "connection_lost" && sendErr.retryable);
  const publishes = net.sockets.flatMap((s) => s.sent).filter((f) => f.op === "publish");
  assert.equal(publishes.length, 2);
  assert.equal(publishes[0].idempotency_key, publishes[1].idempotency_key);
  assert.equal(r.duplicate, false);
  // The room was resumed on the new connection, not joined again.
  const hello = net.opened.at(-1).sent[0];
  assert.equal(hello.op, "hello");
  assert.equal(hello.resume[0].room, "lobby");
  c.close();
});

test("publish while offline is queued and sent after connecting; rate_limited is retried", async () => {
  let limited = 0;
  const net = fakeNet({
    respond: (sock, f, n) => {
      if (f.op === "publish" && limited < 2) {
        limited += 1;
        return sock.push({ type: "error", id: f.id, code: "rate_limited", message: "slow down" });
      }
      defaultRespond(sock, f, n);
    },
  });
  const c = client(net, { autoConnect: false });
  const joining = c.join("lobby");
  c.connect();
  const room = await joining;
  const r = await room.publish("hi", { idempotencyKey: "k1" });
  assert.equal(limited, 2);
  assert.equal(typeof r.seq, "number");
  const keys = net.opened[0].sent.filter((f) => f.op === "publish").map((f) => f.idempotency_key);
  assert.deepEqual(keys, ["k1", "k1", "k1"]);
  c.close();
});

test("tokens: refreshed before expiry, and after a token error at hello", async () => {
  const jwt = (expS) =>
    `x.${Buffer.from(JSON.stringify({ sub: "alice", exp: Math.floor(Date.now() / 1000) + expS })).toString("base64url")}.y`;
  let calls = 0;
  const tokens = [];
  const net = fakeNet({
    respond: (sock, f, n) => {
      if (f.op === "hello") {
        tokens.push(f.token);
        if (tokens.length === 1) {
          sock.push({ type: "error", id: f.id, code: "token_expired", message: "expired" });
          return sock.drop(1008, "token_expired");
        }
      }
      defaultRespond(sock, f, n);
    },
  });
  const c = new MeridianClient({
    url: "ws://x/v1/ws",
    WebSocket: net.WebSocket,
    getToken: () => {
      calls += 1;
      return jwt(3);
    },
    tokenRefreshMarginMs: 1000,
  });
  await connected(c);
  assert.equal(calls, 2, "once at start, once after token_expired");
  assert.equal(tokens.length, 2);
  // The 3 s token is refreshed ~1 s before it expires, while connected.
  const refreshed = await new Promise((r) => c.once("token", r));
  assert.ok(refreshed.expiresAt > Date.now() + 1500);
  assert.equal(calls, 3);
  c.close();

  // A fixed token that is refused: the client stops with the error.
  const bad = fakeNet({
    respond: (sock, f) => sock.push({ type: "error", id: f.id, code: "token_invalid", message: "bad" }),
  });
  const d = client(bad);
  const closed = await new Promise((r) => d.once("closed", r));
  assert.equal(d.state, "closed");
  assert.equal(closed.reason, "closed");
});

test("reconnect events are honoured (after_ms, url), close 1013 backs off and reconnects", async () => {
  const net = fakeNet();
  const c = new MeridianClient({ url: ["ws://a/v1/ws", "ws://b/v1/ws"], token: "t", WebSocket: net.WebSocket });
  await connected(c);
  assert.equal(c.connection.url, "ws://a/v1/ws");
  const at = Date.now();
  net.opened.at(-1).push({ type: "reconnect", after_ms: 200, reason: "draining", url: "ws://b/v1/ws", region: "eu-central" });
  assert.equal(c.state, "connected", "a draining node keeps the connection until after_ms");
  const info = await new Promise((r) => c.once("connected", r));
  assert.ok(Date.now() - at >= 190, `reconnected after ${Date.now() - at} ms`);
  assert.equal(info.url, "ws://b/v1/ws");
  // overloaded: reconnect event then close 1013.
  const t0 = Date.now();
  const sock = net.opened.at(-1);
  sock.push({ type: "reconnect", after_ms: 150, reason: "overloaded" });
  sock.drop(1013, "overloaded");
  const again = await new Promise((r) => c.once("connected", r));
  assert.ok(Date.now() - t0 >= 140);
  assert.equal(again.url, "ws://a/v1/ws");
  // 1013 without a hint: back off, then reconnect.
  const disc = new Promise((r) => c.once("disconnected", r));
  net.opened.at(-1).drop(1013, "try again later");
  assert.equal((await disc).code, 1013);
  await connected(c);
  c.close();
});

test("garbage and unexpected frames never throw out of the event loop", async () => {
  const net = fakeNet();
  const c = client(net);
  await connected(c);
  const room = await c.join("lobby");
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  const got = [];
  room.on("message", (m) => got.push(m.seq));
  room.on("message", () => {
    throw new Error("an app bug in a listener");
  });
  const uncaught = [];
  const onUncaught = (e) => uncaught.push(e);
  process.on("uncaughtException", onUncaught);
  const sock = net.opened.at(-1);
  const deep = "[".repeat(100000) + "]".repeat(100000);
  for (const g of [
    "not json",
    "",
    "[1,2]",
    "null",
    "42",
    '"str"',
    deep,
    "{\"type\":\"message\"}",
    "{\"type\":\"message\",\"room\":\"lobby\",\"seq\":\"x\",\"epoch\":\"e\"}",
    "{\"type\":\"message\",\"room\":\"lobby\",\"seq\":50,\"epoch\":\"k3v9x0qa\",\"origin\":\"nope\"}",
    "{\"type\":\"message\",\"room\":\"other\",\"seq\":50,\"epoch\":\"k3v9x0qa\",\"from\":\"x\",\"data\":1}",
    "{\"type\":\"ok\",\"id\":999999,\"result\":{}}",
    "{\"type\":\"ok\",\"id\":\"weird\"}",
    "{\"type\":\"error\",\"id\":null}",
    "{\"type\":\"error\"}",
    "{\"type\":\"direct\"}",
    "{\"type\":\"teleported\",\"to\":\"mars\"}",
    "{\"type\":{\"nested\":1}}",
    "{\"__proto__\":{\"polluted\":1},\"type\":\"direct\",\"from\":\"x\"}",
    new ArrayBuffer(8),
  ]) {
    sock.push(g);
  }
  sock.push({ type: "message", room: "lobby", from: "bob", data: 1, seq: 45, epoch: "k3v9x0qa" });
  assert.deepEqual(got, [45]);
  assert.equal(c.state, "connected");
  assert.deepEqual(await c.ping(), {});
  assert.ok(errors.includes("bad_frame"));
  assert.equal({}.polluted, undefined);
  process.off("uncaughtException", onUncaught);
  assert.deepEqual(uncaught, []);
  c.close();
});

test("room events as async iterators, in order, ending at close()", async () => {
  const net = fakeNet();
  const c = client(net);
  await connected(c);
  const room = await c.join("lobby");
  const seen = [];
  const loop = (async () => {
    for await (const m of room.iterate("message")) seen.push(m.data);
  })();
  const sock = net.opened.at(-1);
  for (let i = 0; i < 5; i++) sock.push({ type: "message", room: "lobby", from: "bob", data: i, seq: 45 + i, epoch: "k3v9x0qa" });
  await waitFor(() => seen.length === 5);
  c.close();
  await loop;
  assert.deepEqual(seen, [0, 1, 2, 3, 4]);
});

test("RTT: measured to each region's probe_url and reported to /v1/rtt with the router's token", async () => {
  const reports = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const base = `http://127.0.0.1:${server.address().port}`;
      if (req.url.startsWith("/v1/route")) {
        res.setHeader("content-type", "application/json");
        res.end(
          JSON.stringify({
            regions: [{ name: "eu-central", ws_url: "ws://fake/v1/ws" }],
            rtt_report: {
              token: "signed-token",
              expires_in_s: 600,
              regions: [
                { name: "eu-central", probe_url: `${base}/probe/eu` },
                { name: "us-east", probe_url: `${base}/probe/us` },
              ],
            },
          }),
        );
      } else if (req.url === "/v1/rtt" && req.method === "POST") {
        reports.push(JSON.parse(body));
        res.statusCode = 204;
        res.end();
      } else {
        res.end("ok");
      }
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const net = fakeNet();
  const c = new MeridianClient({ router: `http://127.0.0.1:${server.address().port}`, token: "t", WebSocket: net.WebSocket, reportRtt: true });
  const ev = await new Promise((r) => c.once("rtt", r));
  assert.equal(ev.reported, true);
  assert.equal(reports.length, 1);
  assert.equal(reports[0].token, "signed-token");
  assert.deepEqual(reports[0].rtts.map((r) => r.region).sort(), ["eu-central", "us-east"]);
  for (const r of reports[0].rtts) assert.ok(r.rtt_ms > 0 && r.rtt_ms < 2000);
  c.close();
  server.close();
});

test("Node: the real WebSocket path (ws) survives binary and garbage frames", async () => {
  const { WebSocketServer } = await import("ws");
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => wss.on("listening", r));
  wss.on("connection", (ws) => {
    ws.on("message", (data) => {
      const f = JSON.parse(String(data));
      ws.send(Buffer.from([0, 1, 2]));
      ws.send("}{ garbage");
      ws.send(JSON.stringify({ type: "ok", id: f.id, result: f.op === "hello" ? { region: "r", node: "n", user: "u", conn: 1, resumed: [] } : { pong: true } }));
    });
  });
  const c = new MeridianClient({ url: `ws://127.0.0.1:${wss.address().port}/v1/ws`, token: "t" });
  await connected(c);
  assert.deepEqual(await c.ping(), { pong: true });
  c.close();
  wss.close();
});

test("an event right behind the join reply (same read) is delivered, not dropped", async () => {
  const net = fakeNet({
    respond: (sock, f, n) => {
      defaultRespond(sock, f, n);
      // Synchronously after the reply, as when both frames arrive in one TCP read.
      if (f.op === "join") sock.push({ type: "message", room: f.room, from: "bob", data: "first", seq: 45, epoch: "k3v9x0qa" });
    },
  });
  const c = client(net);
  await connected(c);
  const got = [];
  c.on("error", (e) => got.push(`error ${e.code}`));
  const joining = c.join("lobby");
  // Listen before the join resolves: the room's events are buffered into it.
  await waitFor(() => c.room("lobby"));
  c.room("lobby").on("message", (m) => got.push(m.data));
  await joining;
  assert.deepEqual(got, ["first"]);
  c.close();
});

test("resume through the client: cross-region replay after the hello reply, late copy dropped; history_lost and resume errors surfaced", async () => {
  let hellos = 0;
  const net = fakeNet({
    respond: (sock, f, n) => {
      if (f.op !== "hello") return defaultRespond(sock, f, n);
      hellos += 1;
      const ok = (region, resumed) => sock.push({ type: "ok", id: f.id, result: { conn: hellos, node: `n${hellos}`, protocol: 1, region, user: "bob", resumed } });
      if (hellos === 1) return ok("eu-central", []);
      if (hellos === 2) {
        // Moved to ap-southeast: the vector the client sent decides the replay.
        const lobby = f.resume.find((r) => r.room === "lobby");
        assert.deepEqual(lobby.origins, [
          { region: "ap-southeast", epoch: "a0000001", seq: 7 },
          { region: "eu-central", epoch: "k3v9x0qa", seq: 44 },
        ]);
        ok("ap-southeast", [
          { room: "lobby", status: "recovered", epoch: "a0000001", seq: 9, replayed: 2, origins: [{ region: "eu-central", epoch: "k3v9x0qa", seq: 44 }] },
          { room: "stage", status: "history_lost", epoch: "a0000002", seq: 3 },
          { room: "secret", status: "error", code: "forbidden", message: "no grant" },
        ]);
        const m = (seq, data, origin) => sock.push({ type: "message", room: "lobby", from: "alice", data, seq, epoch: "a0000001", ...(origin ? { origin } : {}) });
        m(8, "a8");
        m(9, "a9");
        m(10, "a10"); // live, after the replay
        return;
      }
      return ok("ap-southeast", []);
    },
  });
  const c = client(net);
  await connected(c);
  const lobby = await c.join("lobby");
  const stage = await c.join("stage");
  const secret = await c.join("secret");
  const got = [];
  lobby.on("message", (m) => got.push(m.data));
  const lost = [];
  stage.on("history_lost", (e) => lost.push(e));
  const errors = [];
  secret.on("error", (e) => errors.push(e.code));
  const s1 = net.opened.at(-1);
  s1.push({ type: "message", room: "lobby", from: "alice", data: "a7", seq: 45, epoch: "k3v9x0qa", origin: { region: "ap-southeast", epoch: "a0000001", seq: 7 } });
  s1.drop(1006);
  await waitFor(() => hellos === 2 && got.length >= 3, 3000, "replay");
  // A late copy of an event the client already has (ap-southeast 7, received in eu-central).
  net.opened.at(-1).push({ type: "message", room: "lobby", from: "alice", data: "a7-again", seq: 11, epoch: "a0000001", origin: { region: "ap-southeast", epoch: "a0000001", seq: 7 } });
  assert.deepEqual(got, ["a7", "a8", "a9", "a10"]);
  assert.deepEqual(lost, [{ room: "stage", epoch: "a0000002", seq: 3 }]);
  assert.deepEqual(errors, ["forbidden"]);
  assert.equal(c.room("secret"), undefined, "a room the token no longer covers is dropped");
  assert.deepEqual(lobby.resumePosition, {
    epoch: "a0000001",
    seq: 11,
    origins: [
      { region: "ap-southeast", epoch: "a0000001", seq: 10 },
      { region: "eu-central", epoch: "k3v9x0qa", seq: 44 },
    ],
  });
  c.close();
});
