import type { MeridianClient } from "./client.js";

/**
 * WebRTC "perfect negotiation" over Meridian direct messages
 * (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example). Each side calls
 * `perfectNegotiation(client, otherUser)`; the peer with the greater user id is polite (it
 * yields on an offer collision), so the two never need to agree on who calls whom. Signaling
 * frames are `send`s of `{"mrtc": 1, "description": ...}` / `{"mrtc": 1, "candidate": ...}`
 * (the two users must share a room, see docs/protocol.md `send`).
 *
 * When the client re-homes (its signaling connection moves to another node or region) and the
 * peer connection is not connected, or an offer/answer was in flight, the helper restarts ICE
 * so that candidates lost during the move are gathered and exchanged again. A connected
 * DataChannel or media stream is peer to peer and stays up while signaling moves.
 */
export interface NegotiationOptions {
  /** RTCConfiguration: iceServers (STUN/TURN, see README), etc. */
  rtcConfig?: RTCConfiguration;
  /** Override the polite role (default: our user id > peer's). */
  polite?: boolean;
  /** RTCPeerConnection implementation (default: the global one). */
  RTCPeerConnection?: typeof RTCPeerConnection;
  /** `auto` (default): restart ICE after a re-home when not connected; `always`; `never`. */
  restartIceOnMove?: "auto" | "always" | "never";
  /**
   * Which local ICE candidates are signaled to the peer (default: all). E.g. keep only
   * loopback candidates in tests on one machine: `(c) => /^(127\.|::1$)/.test(c.address ?? "")`.
   */
  candidateFilter?: (candidate: RTCIceCandidate) => boolean;
}

export interface Negotiation {
  pc: RTCPeerConnection;
  polite: boolean;
  /** Restart ICE now (e.g. after a network change). */
  restartIce(): void;
  /** Stops listening and closes the peer connection. */
  close(): void;
}

export function perfectNegotiation(client: MeridianClient, peer: string, options: NegotiationOptions = {}): Negotiation {
  const Ctor = options.RTCPeerConnection ?? (globalThis as any).RTCPeerConnection;
  if (typeof Ctor !== "function") throw new Error("no RTCPeerConnection in this environment");
  const pc: RTCPeerConnection = new Ctor(options.rtcConfig ?? {});
  const me = () => client.connection?.user ?? "";
  const polite = () => options.polite ?? me() > peer;
  let makingOffer = false;
  let ignoreOffer = false;
  let isSettingRemoteAnswerPending = false;
  let lastNode = "";

  const signal = (data: Record<string, unknown>) => {
    client.send(peer, { mrtc: 1, ...data }).catch(() => {
      // Lost while signaling moved, or the peer is offline: an ICE restart after the move
      // (or the peer's next offer) negotiates again.
    });
  };

  pc.onnegotiationneeded = async () => {
    try {
      makingOffer = true;
      await pc.setLocalDescription();
      signal({ description: pc.localDescription?.toJSON() });
    } catch (e) {
      console.error("meridian-client: negotiation failed", e);
    } finally {
      makingOffer = false;
    }
  };
  pc.onicecandidate = ({ candidate }) => {
    if (candidate && (options.candidateFilter?.(candidate) ?? true)) signal({ candidate: candidate.toJSON() });
  };
  pc.oniceconnectionstatechange = () => {
    if (pc.iceConnectionState === "failed") pc.restartIce();
  };

  const offDirect = client.on("direct", async ({ from, data }) => {
    if (from !== peer || typeof data !== "object" || data === null || (data as any).mrtc !== 1) return;
    const { description, candidate } = data as { description?: RTCSessionDescriptionInit; candidate?: RTCIceCandidateInit };
    try {
      if (description && typeof description.type === "string") {
        const readyForOffer = !makingOffer && (pc.signalingState === "stable" || isSettingRemoteAnswerPending);
        const offerCollision = description.type === "offer" && !readyForOffer;
        ignoreOffer = !polite() && offerCollision;
        if (ignoreOffer) return;
        isSettingRemoteAnswerPending = description.type === "answer";
        await pc.setRemoteDescription(description);
        isSettingRemoteAnswerPending = false;
        if (description.type === "offer") {
          await pc.setLocalDescription();
          signal({ description: pc.localDescription?.toJSON() });
        }
      } else if (candidate) {
        try {
          await pc.addIceCandidate(candidate);
        } catch (e) {
          if (!ignoreOffer) throw e;
        }
      }
    } catch (e) {
      console.error("meridian-client: signaling message failed", e);
    }
  });

  const offConnected = client.on("connected", ({ node }) => {
    const moved = lastNode !== "" && node !== lastNode;
    lastNode = node;
    if (!moved) return;
    const mode = options.restartIceOnMove ?? "auto";
    const healthy =
      (pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed") && pc.signalingState === "stable";
    if (mode === "always" || (mode === "auto" && !healthy)) pc.restartIce();
  });
  lastNode = client.connection?.node ?? "";

  return {
    pc,
    get polite() {
      return polite();
    },
    restartIce: () => pc.restartIce(),
    close: () => {
      offDirect();
      offConnected();
      pc.close();
    },
  };
}
