// The Socket.IO peer of Meridian's benchmarks (issue 8): one Socket.IO 4 server process on the
// Redis adapter. bench/run.sh starts two of them on one redis-server, as Meridian runs two
// region nodes on one Redis. It offers what the load generator's scenarios use, the way a
// team would build signaling on Socket.IO:
//
//   connect   auth {token}: an HS256 JWT checked with the same secret as Meridian's nodes
//             (node:crypto, no extra package); the user is the token's `sub`. Every socket
//             joins the room `user:<sub>` so direct messages reach all of a user's sockets.
//   join      (room, ack)      socket.join(room); "joined" {room, user} to the room's others
//   publish   ({room, data}, ack)  "message" {room, from, data} to the whole room (sender too,
//             as Meridian); refused when not in the room
//   send      ({to, data}, ack)   "direct" {from, data} to the user's sockets
//   disconnecting                "left" {room, user, reason} to every room the socket was in
//
// Every ack is [{"ok":true}] or [{"error":code}]. Broadcasts go through @socket.io/redis-adapter
// (Redis pub/sub), so a room spread over both processes gets every event.
//
// Usage: node server.js  (env PORT=0, HOST=127.0.0.1, REDIS_URL=redis://127.0.0.1:6379,
// TOKEN_SECRET=...). Prints "listening on HOST:PORT" once it serves; SIGTERM closes it.
"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 0);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const secret = process.env.TOKEN_SECRET || "bench-secret-0123456789";

function b64url(buf) {
  return buf.toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

// HS256 JWT: header.payload.signature; checks alg, signature (constant time) and exp.
function verify(token) {
  if (typeof token !== "string" || token.length > 8192) throw new Error("token_invalid");
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("token_invalid");
  const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
  if (header.alg !== "HS256") throw new Error("token_invalid");
  const expected = Buffer.from(
    b64url(crypto.createHmac("sha256", secret).update(parts[0] + "." + parts[1]).digest()),
  );
  const got = Buffer.from(parts[2]);
  if (expected.length !== got.length || !crypto.timingSafeEqual(expected, got)) {
    throw new Error("token_invalid");
  }
  const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  if (typeof claims.sub !== "string" || typeof claims.exp !== "number") throw new Error("token_invalid");
  if (claims.exp * 1000 <= Date.now()) throw new Error("token_expired");
  return claims;
}

function covers(claims, room, publish) {
  return (claims.rooms || []).some((g) => {
    if (publish && !g.publish) return false;
    const p = g.pattern || "";
    return p.endsWith("*") ? room.startsWith(p.slice(0, -1)) : p === room;
  });
}

function reply(ack, value) {
  if (typeof ack === "function") ack(value);
}

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    adapter: createAdapter(pub, sub),
    serveClient: false,
    transports: ["websocket"],
    // Socket.IO's defaults, said explicitly: heartbeat every 25 s, 20 s to answer.
    pingInterval: 25000,
    pingTimeout: 20000,
  });

  io.use((socket, next) => {
    try {
      socket.data.claims = verify(socket.handshake.auth && socket.handshake.auth.token);
      next();
    } catch (e) {
      next(new Error(e.message));
    }
  });

  io.on("connection", (socket) => {
    const claims = socket.data.claims;
    const user = claims.sub;
    socket.join("user:" + user);

    socket.on("join", (room, ack) => {
      if (typeof room !== "string" || room.length === 0 || room.startsWith("user:")) {
        return reply(ack, { error: "invalid_id" });
      }
      if (!covers(claims, room, false)) return reply(ack, { error: "forbidden" });
      const first = !socket.rooms.has(room);
      socket.join(room);
      if (first) socket.to(room).emit("joined", { room, user });
      reply(ack, { ok: true, room });
    });

    socket.on("publish", (msg, ack) => {
      const room = msg && msg.room;
      if (typeof room !== "string" || !socket.rooms.has(room)) return reply(ack, { error: "not_joined" });
      if (!covers(claims, room, true)) return reply(ack, { error: "publish_forbidden" });
      if (msg.data === undefined || msg.data === null) return reply(ack, { error: "bad_request" });
      io.to(room).emit("message", { room, from: user, data: msg.data });
      reply(ack, { ok: true });
    });

    socket.on("send", (msg, ack) => {
      const to = msg && msg.to;
      if (typeof to !== "string" || to.length === 0) return reply(ack, { error: "invalid_id" });
      if (msg.data === undefined || msg.data === null) return reply(ack, { error: "bad_request" });
      io.to("user:" + to).emit("direct", { from: user, data: msg.data });
      reply(ack, { ok: true, to });
    });

    socket.on("disconnecting", () => {
      for (const room of socket.rooms) {
        if (room !== socket.id && !room.startsWith("user:")) {
          socket.to(room).emit("left", { room, user, reason: "disconnect" });
        }
      }
    });
  });

  httpServer.listen(port, host, () => {
    const a = httpServer.address();
    console.log(`listening on ${a.address}:${a.port}`);
  });

  const stop = () => {
    io.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
