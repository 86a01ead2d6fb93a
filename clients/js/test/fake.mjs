// An in-memory WebSocket for unit tests: each socket's frames go to `respond(sock, frame)`,
// which answers with `sock.push(obj)`; `refuse(url)` makes a connection attempt fail.
export function fakeNet({ respond = defaultRespond, refuse = () => false, region = "eu-central", user = "alice" } = {}) {
  const net = { sockets: [], opened: [], respond, refuse, region, user, seq: 0, node: "node-1" };
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onclose = this.onerror = this.onmessage = null;
      net.sockets.push(this);
      setTimeout(() => {
        if (net.refuse(url)) {
          this.readyState = 3;
          this.onerror?.({});
          this.onclose?.({ code: 1006, reason: "" });
          return;
        }
        this.readyState = 1;
        net.opened.push(this);
        this.onopen?.({});
      }, 1);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("not open");
      const f = JSON.parse(text);
      this.sent.push(f);
      setTimeout(() => this.readyState === 1 && net.respond(this, f, net), 0);
    }
    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason }), 0);
    }
    push(obj) {
      if (this.readyState !== 1) return;
      this.onmessage?.({ data: typeof obj === "string" || obj instanceof ArrayBuffer ? obj : JSON.stringify(obj) });
    }
    drop(code = 1006, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  net.WebSocket = FakeWS;
  return net;
}

export function defaultRespond(sock, f, net) {
  const ok = (result) => sock.push({ type: "ok", id: f.id, result });
  switch (f.op) {
    case "hello":
      return ok({ conn: 1, node: net.node, protocol: 1, region: net.region, user: net.user, resumed: (f.resume ?? []).map((r) => ({ room: r.room, status: "recovered", epoch: r.epoch, seq: r.seq, replayed: 0 })) });
    case "join":
      return ok({ epoch: "k3v9x0qa", seq: 44, first: true, room: f.room });
    case "publish":
      net.seq += 1;
      return ok({ duplicate: false, epoch: "k3v9x0qa", room: f.room, seq: 44 + net.seq });
    default:
      return ok({});
  }
}

export function waitFor(pred, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = () => {
      let v;
      try {
        v = pred();
      } catch (e) {
        return reject(e);
      }
      if (v) return resolve(v);
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

/** An HS256 JWT for the mesh's secret. */
import { createHmac } from "node:crypto";
export function mint(secret, sub, expSeconds, rooms = [{ pattern: "*", publish: true }]) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, exp: Math.floor(Date.now() / 1000) + expSeconds, rooms });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}
