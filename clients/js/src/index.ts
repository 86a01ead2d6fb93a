export { MeridianClient, Room, tokenExpiry } from "./client.js";
export type { ClientOptions, ClientEvents, RoomEvents, WebSocketLike, WebSocketConstructor } from "./client.js";
export { MeridianError, isRetryable } from "./errors.js";
export { RoomPosition } from "./position.js";
export type { OriginPosition, ResumeEntry, ResumedEntry, SequencedEvent } from "./position.js";
export { perfectNegotiation } from "./webrtc.js";
export type { Negotiation, NegotiationOptions } from "./webrtc.js";
export type * from "./types.js";
