import { Emitter } from "./emitter.js";
import { MeridianError } from "./errors.js";
import { RoomPosition, type OriginPosition, type ResumedEntry } from "./position.js";
import type {
  ConnectionState,
  DirectEvent,
  HistoryLostEvent,
  JoinedEvent,
  LeftEvent,
  MembersPage,
  MessageEvent,
  PresenceEntry,
  PublishResult,
  ReconnectHint,
  RoomEvent,
  RouteRegion,
  StateChangedEvent,
  StateEntry,
} from "./types.js";

/** The subset of the WHATWG WebSocket the client uses (browsers, Node ≥ 22, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** The geo-router's HTTP base URL (`http://127.0.0.1:8053`): regions come from `/v1/route`. */
  router?: string;
  /** Fixed WebSocket URL(s) instead of the router: tried in order. */
  url?: string | string[];
  /** Extra query parameters for `/v1/route` (e.g. `{ip: "81.20.1.7"}` on a router with `allow_debug_ip`). */
  routeQuery?: Record<string, string>;
  /** A fixed token (for tests and short sessions). */
  token?: string;
  /** Returns a fresh token; called before the current one expires and after a token error. */
  getToken?: () => string | Promise<string>;
  /** Refresh the token this long before its `exp` (default 30 s, at most a fifth of its lifetime). */
  tokenRefreshMarginMs?: number;
  /** Full-jitter backoff: wait a random time in [0, min(cap, base × 2^attempt)]. Defaults 100 ms / 3 s. */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** Every request fails with `timeout` this long after it was made (default 10 s). */
  requestTimeoutMs?: number;
  /** Opening a WebSocket and its `hello` must finish within this (default 5 s). */
  connectTimeoutMs?: number;
  /** Requests waiting for a connection at most (default 1000); beyond: `queue_full`. */
  offlineQueueLimit?: number;
  /** Measure RTT to each region the router lists in `rtt_report` and report it (default false). */
  reportRtt?: boolean;
  /** WebSocket implementation (default: the global one, else the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** fetch implementation (default: the global one). */
  fetch?: typeof fetch;
  /** Start connecting at construction (default true); else call `connect()`. */
  autoConnect?: boolean;
}

export interface ClientEvents {
  state: ConnectionState;
  connecting: { url: string; region?: string; attempt: number };
  connected: { url: string; region: string; node: string; user: string; conn: number };
  disconnected: { reason: string; code?: number };
  reconnecting: { attempt: number; delayMs: number };
  closed: { reason: string; error?: MeridianError };
  direct: DirectEvent;
  /** A `reconnect` event from the server (the client follows it by itself). */
  reconnect: ReconnectHint;
  /** Something went wrong that is not the answer to a request (a bad frame, a failed resume). */
  error: MeridianError;
  /** A new token was obtained from `getToken`. */
  token: { expiresAt?: number };
  /** RTTs measured and reported to the router. */
  rtt: { rtts: { region: string; rtt_ms: number }[]; reported: boolean };
}

export interface RoomEvents {
  message: MessageEvent;
  joined: JoinedEvent;
  left: LeftEvent;
  state_changed: StateChangedEvent;
  /** Every room event above, in order. */
  event: RoomEvent;
  history_lost: HistoryLostEvent;
  error: MeridianError;
}

type Retry = "resend" | "fail";
interface Pending {
  op: string;
  fields: Record<string, unknown>;
  retry: Retry;
  resolve: (v: any) => void;
  reject: (e: MeridianError) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  id?: number;
  /** For `leave`: resolved as done when the connection is lost (the new one will not rejoin). */
  onLost?: () => void;
  /** Runs synchronously with a successful reply, before the next frame; a throw rejects. */
  onOk?: (result: any) => void;
}


function sleep(ms: number, signal: { cancelled: boolean; wake?: () => void }): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.wake = () => {
      clearTimeout(t);
      resolve();
    };
  });
}

function isObj(v: unknown): v is Record<string, any> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isOrigin(v: unknown): v is OriginPosition {
  return isObj(v) && typeof v.region === "string" && typeof v.epoch === "string" && typeof v.seq === "number";
}

/** The `exp` of a JWT in ms, or undefined. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split(".")[1];
    if (!part) return undefined;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = typeof atob === "function" ? atob(b64) : "";
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

let keySeq = 0;
function randomKey(): string {
  const c = (globalThis as any).crypto;
  if (c?.randomUUID) return c.randomUUID();
  keySeq += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${keySeq}`;
}

/** A Meridian connection: routing, reconnects, resume, requests. See README.md. */
export class MeridianClient extends Emitter<ClientEvents> {
  private opts: Required<
    Pick<
      ClientOptions,
      "tokenRefreshMarginMs" | "backoffBaseMs" | "backoffCapMs" | "requestTimeoutMs" | "connectTimeoutMs" | "offlineQueueLimit"
    >
  > &
    ClientOptions;
  private _state: ConnectionState = "idle";
  private ws: WebSocketLike | null = null;
  private nextId = 1;
  private inflight = new Map<number, Pending>();
  private queue: Pending[] = [];
  private rooms = new Map<string, Room>();
  private token: string | undefined;
  private tokenTimer: ReturnType<typeof setTimeout> | undefined;
  private hint: (ReconnectHint & { at: number }) | null = null;
  private hintTimer: ReturnType<typeof setTimeout> | undefined;
  private waiter = { cancelled: false, wake: undefined as (() => void) | undefined };
  private routeCache: RouteRegion[] = [];
  private rttReported = 0;
  private running = false;
  private connectedInfo: ClientEvents["connected"] | null = null;

  constructor(options: ClientOptions) {
    super();
    if (!options.router && !options.url) throw new MeridianError("bad_options", "give `router` or `url`", false);
    if (!options.token && !options.getToken) throw new MeridianError("bad_options", "give `token` or `getToken`", false);
    this.opts = {
      tokenRefreshMarginMs: 30_000,
      backoffBaseMs: 100,
      backoffCapMs: 3_000,
      requestTimeoutMs: 10_000,
      connectTimeoutMs: 5_000,
      offlineQueueLimit: 1000,
      ...options,
    };
    this.token = options.token;
    if (options.autoConnect !== false) this.connect();
  }

  private isClosed(): boolean {
    return this._state === "closed";
  }

  /** `idle`, `connecting`, `connected`, `reconnecting` or `closed`. */
  get state(): ConnectionState {
    return this._state;
  }
  /** The region, node and user of the current connection (null while not connected). */
  get connection(): ClientEvents["connected"] | null {
    return this._state === "connected" ? this.connectedInfo : null;
  }

  /** Starts connecting (done by the constructor unless `autoConnect: false`). */
  connect(): void {
    if (this.running || this.isClosed()) return;
    this.running = true;
    void this.loop();
  }

  /** Stops everything: the connection, reconnects, timers; pending requests fail with `closed`. */
  close(): void {
    if (this.isClosed()) return;
    this.setState("closed");
    this.waiter.cancelled = true;
    this.waiter.wake?.();
    clearTimeout(this.tokenTimer);
    clearTimeout(this.hintTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        /* already closed */
      }
    }
    const err = new MeridianError("closed", "the client was closed", false);
    for (const p of [...this.inflight.values(), ...this.queue]) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.inflight.clear();
    this.queue = [];
    this.emit("closed", { reason: "closed" });
    for (const room of this.rooms.values()) room.end();
    this.endIterators();
  }

  /** Drops the current connection and reconnects at once (e.g. after a network change);
   * rooms are resumed and queued requests re-sent as after any reconnect. */
  reconnect(): void {
    const ws = this.ws;
    if (!ws || this.isClosed()) return;
    this.hint = { afterMs: 0, reason: "client", at: Date.now() };
    try {
      ws.close(1000, "reconnect");
    } catch {
      /* closed */
    }
  }

  // ---------------------------------------------------------------- requests

  /** Joins `room` (resumed after every reconnect until `leave`). */
  async join(name: string): Promise<Room> {
    let room = this.rooms.get(name);
    if (room) {
      await room.joinedPromise;
      return room;
    }
    room = new Room(this, name);
    this.rooms.set(name, room);
    room.joinedPromise = this.sendJoin(room).then(() => undefined);
    room.joinedPromise.catch(() => {
      if (this.rooms.get(name) === room) this.rooms.delete(name);
    });
    await room.joinedPromise;
    return room;
  }

  /** A joined room's handle, if joined. */
  room(name: string): Room | undefined {
    return this.rooms.get(name);
  }

  /** Direct message to every connection of `user` (needs a shared room, see docs/protocol.md). */
  send(user: string, data: unknown): Promise<{ to: string }> {
    return this.request("send", { to: user, data }, "fail");
  }

  /** Presence of up to 100 users. */
  async presence(users: string[]): Promise<PresenceEntry[]> {
    const r = await this.request("presence", { users }, "resend");
    return Array.isArray(r?.users) ? r.users : [];
  }

  /** A protocol-level ping (`{pong: true}`). */
  ping(): Promise<{ pong: boolean }> {
    return this.request("ping", {}, "resend");
  }

  /** @internal */
  sendJoin(room: Room): Promise<unknown> {
    // The position is seeded synchronously with the reply, before any later frame of the same
    // read (events of the room may follow the reply in one chunk) is dispatched.
    const seed = (r: any) => {
      if (!isObj(r) || typeof r.epoch !== "string" || typeof r.seq !== "number") {
        throw new MeridianError("bad_frame", "join reply without epoch/seq", false, "join");
      }
      const had = room.position !== null;
      const origins = Array.isArray(r.origins) ? r.origins.filter(isOrigin) : [];
      const pos = room.position ?? new RoomPosition();
      pos.seedFromJoin(this.connectedInfo?.region ?? "", r.epoch, r.seq, origins);
      room.position = pos;
      if (had) room.emitLost({ room: room.name, epoch: r.epoch, seq: r.seq });
    };
    return this.request("join", { room: room.name }, "resend", undefined, seed);
  }

  /** @internal */
  leaveRoom(room: Room): Promise<{ left: boolean }> {
    this.rooms.delete(room.name);
    const p = this.request("leave", { room: room.name }, "fail", () => ({ left: false })).catch((e) => {
      // Sent after a reconnect that did not resume the room: it is left already.
      if (e instanceof MeridianError && e.code === "not_joined") return { left: false };
      throw e;
    });
    return p.finally(() => room.end());
  }

  /**
   * Sends one request (queued while not connected). `retry`: `resend` — re-sent after a
   * reconnect and after `rate_limited` / `unavailable` replies (safe: idempotent, or a publish
   * with its idempotency key); `fail` — fails with `connection_lost` if the connection drops
   * while in flight (not safe to repeat), re-sent only after `rate_limited` (not executed).
   * @internal
   */
  request(
    op: string,
    fields: Record<string, unknown>,
    retry: Retry,
    onLost?: () => unknown,
    onOk?: (result: any) => void,
  ): Promise<any> {
    if (this.isClosed()) return Promise.reject(new MeridianError("closed", "the client was closed", false, op));
    return new Promise((resolve, reject) => {
      const p: Pending = { op, fields, retry, resolve, reject, timer: undefined, onOk };
      if (onLost) p.onLost = () => resolve(onLost());
      p.timer = setTimeout(() => {
        p.timer = undefined;
        this.drop(p);
        reject(new MeridianError("timeout", `${op}: no reply within ${this.opts.requestTimeoutMs} ms`, true, op));
      }, this.opts.requestTimeoutMs);
      if (this._state === "connected" && this.ws) {
        this.transmit(p);
      } else if (this.queue.length >= this.opts.offlineQueueLimit) {
        clearTimeout(p.timer);
        reject(new MeridianError("queue_full", `${op}: ${this.queue.length} requests already wait for a connection`, true, op));
      } else {
        this.queue.push(p);
      }
    });
  }

  private drop(p: Pending): void {
    if (p.id !== undefined) this.inflight.delete(p.id);
    const i = this.queue.indexOf(p);
    if (i >= 0) this.queue.splice(i, 1);
  }

  private transmit(p: Pending): void {
    const ws = this.ws;
    if (!ws) {
      this.queue.push(p);
      return;
    }
    if (p.id !== undefined) this.inflight.delete(p.id);
    p.id = this.nextId++;
    this.inflight.set(p.id, p);
    try {
      ws.send(JSON.stringify({ id: p.id, op: p.op, ...p.fields }));
    } catch {
      // The socket is closing: onclose moves it back to the queue.
    }
  }

  private settle(p: Pending, frame: Record<string, any>): void {
    if (p.id !== undefined) this.inflight.delete(p.id);
    if (frame.type === "ok") {
      clearTimeout(p.timer);
      p.timer = undefined;
      const result = isObj(frame.result) ? frame.result : {};
      try {
        p.onOk?.(result);
      } catch (e) {
        p.reject(e instanceof MeridianError ? e : new MeridianError("bad_frame", String(e), false, p.op));
        return;
      }
      p.resolve(result);
      return;
    }
    const code = typeof frame.code === "string" ? frame.code : "internal";
    const message = typeof frame.message === "string" ? frame.message : code;
    const again = code === "rate_limited" || (code === "unavailable" && p.retry === "resend");
    if (again) {
      // Not executed (rate_limited) or safe to repeat: again after a short random wait.
      const delay = 50 + Math.random() * 250;
      p.id = undefined;
      setTimeout(() => {
        if (this.isClosed() || !p.timer) return;
        if (this._state === "connected") this.transmit(p);
        else this.queue.push(p);
      }, delay);
      return;
    }
    clearTimeout(p.timer);
    p.timer = undefined;
    p.reject(new MeridianError(code, message, undefined, p.op));
  }

  // ------------------------------------------------------------- connection

  private setState(s: ConnectionState): void {
    if (this._state === s || this.isClosed()) return;
    this._state = s;
    this.emit("state", s);
  }

  private backoff(attempt: number): number {
    const ceiling = Math.min(this.opts.backoffCapMs, this.opts.backoffBaseMs * 2 ** Math.min(attempt, 30));
    return Math.random() * ceiling;
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    let retry = 0;
    let first = true;
    while (this._state !== "closed") {
      if (!first || this.hint) {
        const hint = this.hint;
        const delay = hint ? Math.max(0, hint.at - Date.now()) : this.backoff(attempt);
        this.setState("reconnecting");
        retry += 1;
        this.emit("reconnecting", { attempt: retry, delayMs: Math.round(delay) });
        await sleep(delay, this.waiter);
        if (this.isClosed()) return;
      } else {
        this.setState("connecting");
      }
      first = false;
      let candidates: { url: string; region?: string }[];
      try {
        candidates = await this.candidates();
      } catch (e) {
        this.emit("error", e instanceof MeridianError ? e : new MeridianError("no_route", String(e)));
        attempt += 1;
        continue;
      }
      this.hint = null;
      let session: Promise<{ reason: string; code?: number }> | null = null;
      for (const c of candidates) {
        if (this.isClosed()) return;
        this.emit("connecting", { url: c.url, region: c.region, attempt: attempt + 1 });
        const outcome = await this.open(c.url);
        if (outcome.ok) {
          session = outcome.ended;
          break;
        }
        if (outcome.fatal) {
          this.fail(outcome.fatal);
          return;
        }
      }
      if (!session) {
        attempt += 1;
        continue;
      }
      attempt = 0;
      retry = 0;
      const ended = await session;
      if (this.isClosed()) return;
      this.emit("disconnected", ended);
    }
  }

  private fail(error: MeridianError): void {
    this.emit("error", error);
    this.close();
  }

  /** Where to connect, best first. */
  private async candidates(): Promise<{ url: string; region?: string }[]> {
    const hint = this.hint;
    let list: { url: string; region?: string }[];
    if (this.opts.url) {
      list = (Array.isArray(this.opts.url) ? this.opts.url : [this.opts.url]).map((url) => ({ url }));
    } else {
      let regions: RouteRegion[];
      try {
        regions = await this.route();
        this.routeCache = regions;
      } catch (e) {
        if (this.routeCache.length === 0) throw e;
        regions = this.routeCache;
      }
      list = regions.map((r) => ({ url: r.ws_url, region: r.name }));
      if (hint?.region) {
        const i = list.findIndex((c) => c.region === hint.region);
        if (i > 0) list.unshift(...list.splice(i, 1));
      }
    }
    if (hint?.url) list = [{ url: hint.url, region: hint.region }, ...list.filter((c) => c.url !== hint.url)];
    return list;
  }

  private async route(): Promise<RouteRegion[]> {
    const f = this.opts.fetch ?? globalThis.fetch;
    const base = (this.opts.router ?? "").replace(/\/+$/, "");
    const q = new URLSearchParams(this.opts.routeQuery ?? {}).toString();
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), this.opts.connectTimeoutMs);
    let body: any;
    try {
      const res = await f(`${base}/v1/route${q ? `?${q}` : ""}`, { signal: ctl.signal, headers: { accept: "application/json" } });
      body = await res.json();
      if (!res.ok) {
        throw new MeridianError("no_route", `router answered ${res.status}: ${body?.error?.code ?? ""}`);
      }
    } catch (e) {
      if (e instanceof MeridianError) throw e;
      throw new MeridianError("no_route", `router ${base} unreachable: ${String(e)}`);
    } finally {
      clearTimeout(t);
    }
    const regions = Array.isArray(body?.regions)
      ? body.regions.filter((r: any) => isObj(r) && typeof r.ws_url === "string" && typeof r.name === "string")
      : [];
    if (regions.length === 0) throw new MeridianError("no_route", "the router listed no region");
    if (this.opts.reportRtt && isObj(body.rtt_report)) void this.measureRtt(body.rtt_report);
    return regions;
  }

  /** Times each region's probe URL (best of 3) and posts the RTTs to the router's `/v1/rtt`. */
  private async measureRtt(report: any): Promise<void> {
    if (typeof report.token !== "string" || !Array.isArray(report.regions)) return;
    const expiresMs = (typeof report.expires_in_s === "number" ? report.expires_in_s : 600) * 1000;
    if (Date.now() - this.rttReported < expiresMs / 2) return;
    this.rttReported = Date.now();
    const f = this.opts.fetch ?? globalThis.fetch;
    const browser = typeof (globalThis as any).document !== "undefined";
    const rtts: { region: string; rtt_ms: number }[] = [];
    for (const r of report.regions.slice(0, 16)) {
      if (!isObj(r) || typeof r.name !== "string" || typeof r.probe_url !== "string") continue;
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const ctl = new AbortController();
        const t = setTimeout(() => ctl.abort(), 2000);
        const start = performance.now();
        try {
          const res = await f(r.probe_url, { signal: ctl.signal, cache: "no-store", ...(browser ? { mode: "no-cors" } : {}) } as RequestInit);
          await res.arrayBuffer().catch(() => undefined);
          best = Math.min(best, performance.now() - start);
        } catch {
          /* unreachable: no sample */
        } finally {
          clearTimeout(t);
        }
      }
      if (Number.isFinite(best) && best > 0) rtts.push({ region: r.name, rtt_ms: Math.round(best * 10) / 10 });
    }
    if (rtts.length === 0) return;
    let reported = false;
    try {
      const base = (this.opts.router ?? "").replace(/\/+$/, "");
      const res = await f(`${base}/v1/rtt`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: report.token, rtts }),
      });
      reported = res.status === 204;
    } catch {
      /* the router is unreachable: the next route answer tries again */
    }
    this.emit("rtt", { rtts, reported });
  }

  private async currentToken(force: boolean): Promise<string> {
    const get = this.opts.getToken;
    if (get) {
      const exp = this.token ? tokenExpiry(this.token) : undefined;
      if (force || !this.token || (exp !== undefined && exp - Date.now() < 1000)) await this.refreshToken();
    }
    if (!this.token) throw new MeridianError("token_failed", "no token", false);
    return this.token;
  }

  private async refreshToken(): Promise<void> {
    const get = this.opts.getToken;
    if (!get) return;
    clearTimeout(this.tokenTimer);
    let token: string;
    try {
      token = await get();
    } catch (e) {
      this.scheduleTokenRefresh(5_000);
      throw new MeridianError("token_failed", `getToken failed: ${String(e)}`, true);
    }
    if (typeof token !== "string" || token.length === 0) throw new MeridianError("token_failed", "getToken returned no token", false);
    this.token = token;
    const exp = tokenExpiry(token);
    this.emit("token", { expiresAt: exp });
    if (exp !== undefined) {
      const life = exp - Date.now();
      const margin = Math.min(this.opts.tokenRefreshMarginMs, Math.max(0, life / 5));
      this.scheduleTokenRefresh(Math.max(1000, life - margin));
    }
  }

  private scheduleTokenRefresh(ms: number): void {
    clearTimeout(this.tokenTimer);
    if (this.isClosed()) return;
    this.tokenTimer = setTimeout(() => {
      this.refreshToken().catch((e) => this.emit("error", e));
    }, Math.min(ms, 2 ** 31 - 1));
  }

  private async wsConstructor(): Promise<WebSocketConstructor> {
    if (this.opts.WebSocket) return this.opts.WebSocket;
    const g = (globalThis as any).WebSocket;
    if (typeof g === "function") return g;
    const name = "ws";
    const mod: any = await import(/* @vite-ignore */ name);
    return mod.WebSocket ?? mod.default;
  }

  /**
   * Opens one WebSocket and says hello. ok: the session runs, `ended` resolves when it closes.
   * Not ok: try the next candidate; `fatal`: stop (a token the app cannot replace).
   */
  private async open(
    url: string,
  ): Promise<{ ok: true; ended: Promise<{ reason: string; code?: number }> } | { ok: false; fatal?: MeridianError }> {
    let Ctor: WebSocketConstructor;
    try {
      Ctor = await this.wsConstructor();
    } catch (e) {
      return { ok: false, fatal: new MeridianError("no_websocket", `no WebSocket implementation: ${String(e)}`, false) };
    }
    for (let tokenTry = 0; tokenTry < 2; tokenTry++) {
      let token: string;
      try {
        token = await this.currentToken(tokenTry > 0);
      } catch (e) {
        const err = e instanceof MeridianError ? e : new MeridianError("token_failed", String(e), true);
        if (!err.retryable) return { ok: false, fatal: err };
        this.emit("error", err);
        return { ok: false };
      }
      const r = await this.hello(Ctor, url, token);
      if (r.ok) return r;
      if (r.tokenError) {
        if (!this.opts.getToken || tokenTry > 0) {
          return { ok: false, fatal: new MeridianError(r.tokenError, `the token was refused (${r.tokenError})`, false) };
        }
        continue; // once more with a fresh token
      }
      return { ok: false };
    }
    return { ok: false };
  }

  private hello(
    Ctor: WebSocketConstructor,
    url: string,
    token: string,
  ): Promise<{ ok: true; ended: Promise<{ reason: string; code?: number }> } | { ok: false; tokenError?: string }> {
    return new Promise((resolve) => {
      let ws: WebSocketLike;
      try {
        ws = new Ctor(url);
      } catch {
        resolve({ ok: false });
        return;
      }
      let settled = false;
      let endSession: (v: { reason: string; code?: number }) => void = () => {};
      const ended = new Promise<{ reason: string; code?: number }>((r) => (endSession = r));
      const timer = setTimeout(() => finish({ ok: false }), this.opts.connectTimeoutMs);
      const finish = (r: { ok: true; ended: typeof ended } | { ok: false; tokenError?: string }) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!r.ok) {
          ws.onmessage = null;
          ws.onclose = null;
          try {
            ws.close();
          } catch {
            /* closed */
          }
        }
        resolve(r);
      };
      const helloId = this.nextId++;
      ws.onopen = () => {
        const resume = [...this.rooms.values()]
          .filter((r) => r.position !== null)
          .slice(0, 64)
          .map((r) => (r.position as RoomPosition).resumeEntry(r.name));
        try {
          ws.send(JSON.stringify({ id: helloId, op: "hello", token, ...(resume.length ? { resume } : {}) }));
        } catch {
          finish({ ok: false });
        }
      };
      ws.onerror = () => {
        /* onclose follows */
      };
      ws.onclose = (ev) => {
        if (!settled) {
          finish({ ok: false });
          return;
        }
        if (this.ws === ws) this.lost(ev?.code, ev?.reason);
        endSession({ reason: ev?.reason || "closed", code: ev?.code });
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data !== "string") return; // binary frames are not part of the protocol
        if (settled) {
          if (this.ws === ws) this.onFrame(ev.data);
          return;
        }
        let frame: any;
        try {
          frame = JSON.parse(ev.data);
        } catch {
          this.badFrame("hello reply is not JSON");
          return;
        }
        if (!isObj(frame)) return;
        if (frame.type === "reconnect") {
          this.onReconnectHint(frame);
          return;
        }
        if (frame.id !== helloId) {
          if (frame.type === "error" && !("id" in frame) && frame.code === "draining") finish({ ok: false });
          return;
        }
        if (frame.type === "error") {
          const code = String(frame.code);
          finish({ ok: false, tokenError: code.startsWith("token_") ? code : undefined });
          return;
        }
        const r = frame.result;
        if (frame.type !== "ok" || !isObj(r) || typeof r.region !== "string") {
          this.badFrame("hello reply without a result");
          finish({ ok: false });
          return;
        }
        this.ws = ws;
        this.connectedInfo = {
          url,
          region: r.region,
          node: typeof r.node === "string" ? r.node : "",
          user: typeof r.user === "string" ? r.user : "",
          conn: typeof r.conn === "number" ? r.conn : 0,
        };
        this.applyResumed(Array.isArray(r.resumed) ? r.resumed : []);
        finish({ ok: true, ended });
        this.setState("connected");
        this.emit("connected", this.connectedInfo);
        // Queued requests, in the order they were made.
        const queued = this.queue;
        this.queue = [];
        for (const p of queued) this.transmit(p);
      };
    });
  }

  private applyResumed(list: ResumedEntry[]): void {
    const region = this.connectedInfo?.region ?? "";
    const seen = new Set<string>();
    for (const r of list) {
      if (!isObj(r) || typeof r.room !== "string") continue;
      const room = this.rooms.get(r.room);
      if (!room || !room.position) continue;
      seen.add(r.room);
      const outcome = room.position.applyResumed(region, {
        ...r,
        origins: Array.isArray(r.origins) ? r.origins.filter(isOrigin) : undefined,
      });
      if (outcome === "lost") {
        room.emitLost({ room: r.room, epoch: room.position.epoch, seq: room.position.seq });
      } else if (outcome === "error") {
        const err = new MeridianError(typeof r.code === "string" ? r.code : "internal", `resume of ${r.room} failed: ${r.message ?? ""}`, undefined, "join");
        room.emitError(err);
        if (err.retryable) this.rejoin(room);
        else {
          this.rooms.delete(r.room);
          room.end();
        }
      }
    }
    // Rooms the node did not report (beyond the resume limit): join again.
    for (const room of this.rooms.values()) {
      if (room.position && !seen.has(room.name)) this.rejoin(room);
    }
  }

  private rejoin(room: Room): void {
    this.sendJoin(room).catch((e) => room.emitError(e instanceof MeridianError ? e : new MeridianError("internal", String(e))));
  }

  /** The connection is gone: in-flight requests go back to the queue or fail. */
  private lost(code?: number, reason?: string): void {
    this.ws = null;
    clearTimeout(this.hintTimer);
    if (this._state !== "closed") this.setState("reconnecting");
    const inflight = [...this.inflight.values()].sort((a, b) => (a.id ?? 0) - (b.id ?? 0));
    this.inflight.clear();
    const resend: Pending[] = [];
    for (const p of inflight) {
      p.id = undefined;
      if (p.onLost) {
        clearTimeout(p.timer);
        p.onLost();
      } else if (p.retry === "resend") resend.push(p);
      else {
        clearTimeout(p.timer);
        p.reject(new MeridianError("connection_lost", `${p.op}: the connection was lost before the reply (code ${code ?? "?"} ${reason ?? ""})`, true, p.op));
      }
    }
    this.queue = [...resend, ...this.queue];
    if (code === 1013 && !this.hint) {
      // Try again later: back off (the loop's backoff applies).
    }
  }

  private onReconnectHint(frame: Record<string, any>): void {
    const afterMs = typeof frame.after_ms === "number" && frame.after_ms >= 0 ? Math.min(frame.after_ms, 60_000) : 0;
    const hint: ReconnectHint = {
      afterMs,
      reason: typeof frame.reason === "string" ? frame.reason : "",
      url: typeof frame.url === "string" ? frame.url : undefined,
      region: typeof frame.region === "string" ? frame.region : undefined,
    };
    this.hint = { ...hint, at: Date.now() + afterMs };
    this.emit("reconnect", hint);
    // A draining node keeps the connection open: leave it when the wait is over.
    clearTimeout(this.hintTimer);
    const ws = this.ws;
    this.hintTimer = setTimeout(() => {
      if (ws && this.ws === ws) {
        try {
          ws.close(1000, "reconnect");
        } catch {
          /* closed */
        }
      }
    }, afterMs);
  }

  private badFrame(what: string): void {
    this.emit("error", new MeridianError("bad_frame", `ignored a server frame: ${what}`, false));
  }

  /** One text frame of an established connection. Never throws. */
  private onFrame(text: string): void {
    let frame: unknown;
    try {
      frame = JSON.parse(text);
    } catch {
      this.badFrame("not JSON");
      return;
    }
    try {
      this.dispatch(frame);
    } catch (e) {
      this.badFrame(`could not be handled (${String(e)})`);
    }
  }

  private dispatch(frame: unknown): void {
    if (!isObj(frame)) {
      this.badFrame("not an object");
      return;
    }
    const type = frame.type;
    if (type === "ok" || (type === "error" && "id" in frame)) {
      const p = typeof frame.id === "number" ? this.inflight.get(frame.id) : undefined;
      if (p) this.settle(p, frame);
      else if (frame.id === null && type === "error") {
        this.emit("error", new MeridianError(String(frame.code), String(frame.message ?? "")));
      }
      return;
    }
    switch (type) {
      case "error":
        this.emit("error", new MeridianError(typeof frame.code === "string" ? frame.code : "internal", String(frame.message ?? "")));
        return;
      case "reconnect":
        this.onReconnectHint(frame);
        return;
      case "direct":
        if (typeof frame.from === "string") this.emit("direct", { from: frame.from, data: frame.data });
        else this.badFrame("direct without from");
        return;
      case "joined":
      case "left":
      case "message":
      case "state_changed": {
        if (typeof frame.room !== "string" || typeof frame.seq !== "number" || typeof frame.epoch !== "string") {
          this.badFrame(`${type} without room/seq/epoch`);
          return;
        }
        if (frame.origin !== undefined && !isOrigin(frame.origin)) {
          this.badFrame(`${type} with a malformed origin`);
          return;
        }
        const room = this.rooms.get(frame.room);
        if (!room || !room.position) return; // left meanwhile
        if (room.position.accept(this.connectedInfo?.region ?? "", frame as any)) room.deliver(frame as unknown as RoomEvent);
        return;
      }
      default:
      // Unknown event types are ignored (docs/protocol.md §12).
    }
  }
}

/** A joined room. Events as callbacks (`on`) or async iterators (`iterate`). */
export class Room extends Emitter<RoomEvents> {
  /** @internal */
  position: RoomPosition | null = null;
  /** @internal */
  joinedPromise: Promise<void> = Promise.resolve();
  private ended = false;

  /** @internal */
  constructor(
    private readonly client: MeridianClient,
    readonly name: string,
  ) {
    super();
  }

  /**
   * Publishes `data` (any JSON value but null). Exactly once: the request carries an
   * idempotency key (yours, or a random one) and is re-sent with it after a reconnect or an
   * `unavailable`, until a reply or the request timeout.
   */
  publish(data: unknown, options: { idempotencyKey?: string } = {}): Promise<PublishResult> {
    const key = options.idempotencyKey ?? randomKey();
    return this.client.request("publish", { room: this.name, data, idempotency_key: key }, "resend");
  }

  /** Leaves the room: no more events, no resume. */
  leave(): Promise<{ left: boolean }> {
    return this.client.leaveRoom(this);
  }

  /** One page of members (`after`: the previous page's `next`). */
  members(options: { after?: string; limit?: number } = {}): Promise<MembersPage> {
    return this.client.request("members", { room: this.name, ...options }, "resend");
  }

  /** Room state: get, compare-and-set, delete. `ifVersion` 0 means "must not exist". */
  readonly state = {
    get: async (key?: string): Promise<StateEntry[]> => {
      const r = await this.client.request("state_get", { room: this.name, ...(key !== undefined ? { key } : {}) }, "resend");
      return Array.isArray(r?.entries) ? r.entries : [];
    },
    set: (key: string, value: unknown, options: { ifVersion?: number } = {}): Promise<{ key: string; version: number }> =>
      this.client.request(
        "state_set",
        { room: this.name, key, value, ...(options.ifVersion !== undefined ? { if_version: options.ifVersion } : {}) },
        "fail",
      ),
    delete: (key: string, options: { ifVersion?: number } = {}): Promise<{ key: string; deleted: boolean }> =>
      this.client.request(
        "state_delete",
        { room: this.name, key, ...(options.ifVersion !== undefined ? { if_version: options.ifVersion } : {}) },
        "fail",
      ),
  };

  /** The resume position: cursor in the connected region and the per-origin vector. */
  get resumePosition(): { epoch: string; seq: number; origins: OriginPosition[] } | null {
    if (!this.position) return null;
    const e = this.position.resumeEntry(this.name);
    return { epoch: e.epoch, seq: e.seq, origins: e.origins ?? [] };
  }

  /** @internal */
  deliver(ev: RoomEvent): void {
    if (this.ended) return;
    this.emit(ev.type, ev as never);
    this.emit("event", ev);
  }
  /** @internal */
  emitLost(ev: HistoryLostEvent): void {
    this.emit("history_lost", ev);
  }
  /** @internal */
  emitError(e: MeridianError): void {
    this.emit("error", e);
  }
  /** @internal */
  end(): void {
    this.ended = true;
    this.endIterators();
  }
}
