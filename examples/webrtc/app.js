// The demo: two users, routed by the front door, meet in one room; presence tells each that
// the other is there; perfect negotiation over Meridian `send` sets up an RTCPeerConnection;
// the chat itself goes over its DataChannel (peer to peer, not through Meridian).
import { MeridianClient, perfectNegotiation } from "./meridian-client.js";

const params = new URLSearchParams(location.search);
const me = params.get("user") ?? "alice";
const peer = params.get("peer") ?? (me === "alice" ? "bob" : "alice");
const roomName = params.get("room") ?? "webrtc-demo";
const $ = (id) => document.getElementById(id);
const demo = (window.demo = { me, peer, state: "idle", region: "", node: "", peerOnline: false, dcState: "new", messages: [], moves: 0, log: [] });

function log(text, cls = "sys") {
  const line = document.createElement("div");
  line.className = cls;
  line.textContent = text;
  $("log").append(line);
  $("log").scrollTop = $("log").scrollHeight;
  demo.log.push(text);
}

const config = await (await fetch("./config.json")).json();
const token = params.get("token") ?? config.tokens?.[me];
$("me").textContent = `${me} (talking to ${peer})`;

const client = new MeridianClient({
  router: config.router,
  // The demo router accepts ?ip= (allow_debug_ip), so one machine can play two continents.
  routeQuery: params.get("ip") ? { ip: params.get("ip") } : {},
  token,
});
const showConn = () => {
  const c = client.connection;
  $("conn").textContent = c ? `${client.state}: ${c.region} (node ${c.node})` : client.state;
};
client.on("state", (s) => {
  demo.state = s;
  showConn();
});
client.on("connected", (c) => {
  if (demo.region && (c.region !== demo.region || c.node !== demo.node)) {
    demo.moves += 1;
    log(`signaling re-homed: ${demo.region} → ${c.region}`);
  }
  demo.region = c.region;
  demo.node = c.node;
  showConn();
});
client.on("disconnected", (d) => log(`signaling connection lost (${d.code ?? ""} ${d.reason}); reconnecting…`));

// The negotiation listens from the start, so the peer's offer is never missed.
// `?loopback=1` signals only loopback candidates (tests on one machine; Chromium gathers them
// with --allow-loopback-in-peer-connection), so peer-to-peer traffic never leaves 127.0.0.1.
const loopbackOnly = params.get("loopback") === "1";
const neg = (demo.negotiation = perfectNegotiation(client, peer, {
  rtcConfig: { iceServers: JSON.parse(params.get("ice") ?? "[]") },
  candidateFilter: loopbackOnly ? (c) => /^(127\.|::1$)/.test(c.address ?? "") : undefined,
}));
// The addresses of the candidate pair in use (tests check they are loopback).
demo.selectedPair = async () => {
  const stats = await neg.pc.getStats();
  for (const s of stats.values()) {
    if (s.type !== "candidate-pair" || s.state !== "succeeded" || !s.nominated) continue;
    const local = stats.get(s.localCandidateId);
    const remote = stats.get(s.remoteCandidateId);
    return { local: local?.address ?? local?.ip, remote: remote?.address ?? remote?.ip };
  }
  return null;
};
const pc = neg.pc;
let channel = null;
pc.onconnectionstatechange = () => log(`peer connection: ${pc.connectionState}`);

function openChannel() {
  if (channel) return;
  // Negotiated on both sides with the same id: no ondatachannel asymmetry.
  channel = pc.createDataChannel("chat", { negotiated: true, id: 0 });
  const show = () => {
    demo.dcState = channel.readyState;
    $("dc").textContent = channel.readyState;
    $("send").disabled = channel.readyState !== "open";
  };
  channel.onopen = () => {
    show();
    log("data channel open: chat is peer to peer now");
  };
  channel.onclose = show;
  channel.onmessage = (e) => {
    demo.messages.push({ from: peer, text: String(e.data) });
    log(`${peer}: ${e.data}`, "peer");
  };
  show();
  // An offer lost while the peer was not there yet: ask again.
  setTimeout(() => channel.readyState !== "open" && neg.restartIce(), 8000);
}

function setPeer(online) {
  demo.peerOnline = online;
  $("peer").textContent = `${peer}: ${online ? "online" : "offline"}`;
  if (online) openChannel();
}

const room = await client.join(roomName);
log(`joined ${roomName} in ${client.connection?.region}`);
room.on("joined", (e) => e.user === peer && setPeer(true));
room.on("left", (e) => e.user === peer && log(`${peer} left (${e.reason})`));
async function checkPresence() {
  try {
    const [p] = await client.presence([peer]);
    setPeer(Boolean(p?.online));
  } catch (e) {
    log(`presence: ${e.code}`);
  }
}
await checkPresence();
setInterval(checkPresence, 3000);

demo.send = (text) => {
  if (!channel || channel.readyState !== "open") return false;
  channel.send(text);
  demo.messages.push({ from: me, text });
  log(`${me}: ${text}`, "me");
  return true;
};
demo.signal = (data) => client.send(peer, data);
// For the browser test: an ICE restart negotiated through wherever signaling is now.
demo.restartIce = () => neg.restartIce();
demo.ice = () => ({
  ufrag: /a=ice-ufrag:(\S+)/.exec(pc.localDescription?.sdp ?? "")?.[1] ?? "",
  remoteUfrag: /a=ice-ufrag:(\S+)/.exec(pc.remoteDescription?.sdp ?? "")?.[1] ?? "",
  signaling: pc.signalingState,
  connection: pc.connectionState,
});
client.on("direct", ({ from, data }) => {
  if (from === peer && data?.demo) demo.messages.push({ from, text: `signal:${data.demo}` });
});
$("chat").onsubmit = (e) => {
  e.preventDefault();
  if (demo.send($("text").value)) $("text").value = "";
};
