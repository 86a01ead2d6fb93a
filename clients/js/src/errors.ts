/**
 * The one error type of the SDK. `code` is the protocol's stable error code (docs/protocol.md §8)
 * or one of the client codes below; `retryable` says whether sending the same request again
 * later can succeed.
 *
 * Client codes: `timeout` (no reply within the request timeout), `connection_lost` (the
 * connection dropped while a request that is not safe to repeat was in flight), `queue_full`
 * (the offline queue is full), `closed` (the client was closed), `no_route` (no region could be
 * reached), `token_failed` (the token callback failed or its token was refused), `bad_frame`
 * (the server sent a frame the client could not use; reported as an `error` event, never thrown).
 */
export class MeridianError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  /** The request's op, when the error answers a request. */
  readonly op?: string;

  constructor(code: string, message: string, retryable?: boolean, op?: string) {
    super(message);
    this.name = "MeridianError";
    this.code = code;
    this.retryable = retryable ?? isRetryable(code);
    this.op = op;
  }
}

const RETRYABLE = new Set([
  // Protocol codes whose retry helps (ErrorCode::is_retryable).
  "rate_limited",
  "unavailable",
  "draining",
  // Client codes.
  "timeout",
  "connection_lost",
  "queue_full",
  "no_route",
]);

/** Whether a retry of the same request can help, for a protocol or client error code. Unknown
 * codes are not retryable (a server may add codes within v1). */
export function isRetryable(code: string): boolean {
  return RETRYABLE.has(code);
}
