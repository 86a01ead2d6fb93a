// Receive-path benchmark (not a test): message frames decoded and dispatched per second by the
// SDK in Node on one core (run under `taskset -c 0`). Frames enter through the WebSocket's
// onmessage exactly as from a socket: JSON.parse, frame checks, the resume position's
// duplicate check and vector update, and a listener call. Network I/O is not included.
import { MeridianClient } from "../dist/index.js";
import { fakeNet, waitFor } from "../test/fake.mjs";

const N = Number(process.env.N ?? 300_000);
const net = fakeNet();
const client = new MeridianClient({ url: "ws://bench/v1/ws", token: "t", WebSocket: net.WebSocket });
await waitFor(() => client.state === "connected");
const room = await client.join("lobby");
const sock = net.opened.at(-1);
let received = 0;
room.on("message", () => (received += 1));
const body = JSON.stringify({ text: "x".repeat(64), n: 1 });
const frames = new Array(N);
for (let i = 0; i < N; i++) {
  const origin = i % 2 ? `,"origin":{"region":"ap-southeast","epoch":"p0x8d2rt","seq":${i}}` : "";
  frames[i] = `{"type":"message","room":"lobby","from":"alice","data":${body}${origin},"seq":${45 + i},"epoch":"k3v9x0qa"}`;
}
const runs = [];
let next = 0;
for (let r = 0; r < 5; r++) {
  const batch = frames.slice(next, next + N / 5);
  next += N / 5;
  const t0 = process.hrtime.bigint();
  for (const f of batch) sock.onmessage({ data: f });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  runs.push(batch.length / s);
}
if (received !== N) throw new Error(`received ${received} of ${N}`);
runs.sort((a, b) => a - b);
console.log(`receive path: ${Math.round(runs[2]).toLocaleString("en")} messages/s (median of 5 runs of ${N / 5}; min ${Math.round(runs[0]).toLocaleString("en")}, max ${Math.round(runs[4]).toLocaleString("en")}); frame ${frames[1].length} bytes`);
// The floor: JSON.parse of the same frames and nothing else.
const t1 = process.hrtime.bigint();
let sink = 0;
for (let i = 0; i < N / 5; i++) sink += JSON.parse(frames[i]).seq;
const parseRate = N / 5 / (Number(process.hrtime.bigint() - t1) / 1e9);
console.log(`JSON.parse alone: ${Math.round(parseRate).toLocaleString("en")} frames/s (${sink > 0 ? "floor" : ""})`);
client.close();
