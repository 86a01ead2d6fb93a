// The WebRTC demo (examples/webrtc, served by `meridian up`) in Debian's Chromium driven by
// playwright-core: alice in Singapore (ap-southeast) and bob in Berlin (eu-central) open a
// DataChannel through Meridian's signaling and chat over it; eu-central is killed: the
// DataChannel stays open (peer to peer) and bob's signaling re-homes.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startMesh, IP } from "./mesh.mjs";

const artifacts = new URL("../test-artifacts/", import.meta.url).pathname;
let mesh;
let browser;

before(async () => {
  mesh = await startMesh();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // Plain host candidates (no mDNS .local names, which this sandbox cannot resolve).
      "--disable-features=WebRtcHideLocalIpsWithMdns",
    ],
  });
});
after(async () => {
  await browser?.close();
  await mesh?.stop();
});

const demo = (page, expr) => page.evaluate(expr);
async function until(page, expr, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await page.evaluate(expr).catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}; page log: ${JSON.stringify(await page.evaluate("window.demo?.log").catch(() => null))}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("two pages in two regions: DataChannel chat, region killed, channel stays open, signaling re-homes", { timeout: 120_000 }, async () => {
  assert.ok(mesh.endpoints.demo, "meridian up serves the demo");
  const open = async (user, ip) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error(`[${user}] page error:`, e.message));
    await page.goto(`${mesh.endpoints.demo}?user=${user}&ip=${ip}`);
    return page;
  };
  const alice = await open("alice", IP.singapore);
  const bob = await open("bob", IP.berlin);
  await until(alice, "window.demo?.region === 'ap-southeast'", 20_000, "alice routed to ap-southeast");
  await until(bob, "window.demo?.region === 'eu-central'", 20_000, "bob routed to eu-central");
  await until(alice, "window.demo.peerOnline", 20_000, "alice sees bob's presence");
  await until(bob, "window.demo.peerOnline", 20_000, "bob sees alice's presence");
  await until(alice, "window.demo.dcState === 'open'", 30_000, "alice's DataChannel open");
  await until(bob, "window.demo.dcState === 'open'", 30_000, "bob's DataChannel open");

  // Chromium never gathers loopback candidates, so test.sh runs this file in a private network
  // namespace whose one address is BROWSER_NETNS_ADDR: peer-to-peer traffic stays inside it.
  const pair = await until(alice, "window.demo.selectedPair()", 10_000, "alice's selected candidate pair");
  if (process.env.BROWSER_NETNS_ADDR) {
    assert.equal(pair.remote, process.env.BROWSER_NETNS_ADDR, `candidate pair ${JSON.stringify(pair)}`);
  }
  assert.equal(await demo(alice, "window.demo.send('hello bob, peer to peer')"), true);
  await until(bob, "window.demo.messages.some(m => m.from === 'alice' && m.text === 'hello bob, peer to peer')", 10_000, "bob gets alice's message");

  // Kill bob's region: the DataChannel does not go through Meridian and stays open; bob's
  // signaling connection re-homes through the router.
  await mesh.kill("eu-central");
  await until(bob, "window.demo.moves >= 1 && window.demo.state === 'connected' && window.demo.region !== 'eu-central'", 30_000, "bob's signaling re-homed");
  assert.equal(await demo(bob, "window.demo.dcState"), "open");
  assert.equal(await demo(alice, "window.demo.dcState"), "open");
  assert.equal(await demo(bob, "window.demo.send('still here after my region died')"), true);
  await until(alice, "window.demo.messages.some(m => m.text === 'still here after my region died')", 10_000, "alice gets bob's message after the kill");
  // Signaling works from the new region too: a direct message reaches bob there.
  await until(alice, "window.demo.signal({demo: 'after-move'}).then(() => true, () => false)", 15_000, "alice's signal accepted");
  await until(bob, "window.demo.messages.some(m => m.text === 'signal:after-move')", 10_000, "bob gets signaling in his new region");

  // An ICE restart negotiated through bob's new region: new credentials on both sides, the
  // peer connection back to stable/connected, the channel still open.
  const before = await demo(bob, "window.demo.ice()");
  await demo(bob, "window.demo.restartIce()");
  await until(
    bob,
    `(() => { const i = window.demo.ice(); return i.ufrag !== ${JSON.stringify(before.ufrag)} && i.remoteUfrag !== ${JSON.stringify(before.remoteUfrag)} && i.signaling === 'stable' && i.connection === 'connected'; })()`,
    20_000,
    "ICE restart through the new region",
  );
  assert.equal(await demo(bob, "window.demo.dcState"), "open");
  assert.equal(await demo(alice, "window.demo.send('after the ICE restart')"), true);
  await until(bob, "window.demo.messages.some(m => m.text === 'after the ICE restart')", 10_000, "bob gets a message after the ICE restart");

  mkdirSync(artifacts, { recursive: true });
  await alice.screenshot({ path: join(artifacts, "webrtc-alice.png") });
  await bob.screenshot({ path: join(artifacts, "webrtc-bob.png") });
});
