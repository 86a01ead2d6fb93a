import type { OriginPosition } from "./position.js";

/** Fields every sequenced room event carries (docs/protocol.md §5, §6). */
export interface RoomEventBase {
  room: string;
  seq: number;
  epoch: string;
  /** Present when the event happened in another region: its position there. */
  origin?: OriginPosition;
}
export interface MessageEvent extends RoomEventBase {
  type: "message";
  from: string;
  data: unknown;
}
export interface JoinedEvent extends RoomEventBase {
  type: "joined";
  user: string;
  region: string;
}
export interface LeftEvent extends RoomEventBase {
  type: "left";
  user: string;
  region: string;
  reason: "leave" | "disconnect" | "node_lost" | "region_down" | string;
}
export interface StateChangedEvent extends RoomEventBase {
  type: "state_changed";
  key: string;
  /** `null`: the key was deleted. */
  value: unknown;
  by: string;
  version: number;
}
export type RoomEvent = MessageEvent | JoinedEvent | LeftEvent | StateChangedEvent;

/** The room's history could not be replayed after a reconnect: resync (members, state). */
export interface HistoryLostEvent {
  room: string;
  epoch: string;
  seq: number;
}

export interface DirectEvent {
  from: string;
  data: unknown;
}

export interface ReconnectHint {
  afterMs: number;
  reason: string;
  url?: string;
  region?: string;
}

export interface PublishResult {
  room: string;
  seq: number;
  epoch: string;
  duplicate: boolean;
}
export interface Member {
  user: string;
  region: string;
}
export interface MembersPage {
  room: string;
  members: Member[];
  next: string | null;
}
export interface PresenceEntry {
  user: string;
  online: boolean;
  connections?: number;
  regions?: string[];
}
export interface StateEntry {
  key: string;
  value: unknown;
  version: number;
}

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

/** A region of a `/v1/route` answer. */
export interface RouteRegion {
  name: string;
  ws_url: string;
  estimated_rtt_ms?: number | null;
  reason?: string;
}
