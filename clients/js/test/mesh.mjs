// Starts a real `meridian up --auto-ports` mesh (built binaries in target/debug) for the SDK's
// end-to-end tests, and stops it.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const repo = fileURLToPath(new URL("../../../", import.meta.url));

export async function startMesh() {
  const bin = join(repo, "target/debug/meridian");
  if (!existsSync(bin)) throw new Error(`${bin} missing: run \`cargo build --bins\` first`);
  const state = mkdtempSync(join(tmpdir(), "meridian-sdk-"));
  const child = spawn(
    bin,
    ["up", "--auto-ports", "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0", "--state-dir", state, "--relay-grace", "5s"],
    { cwd: repo, stdio: ["ignore", "pipe", "pipe"] },
  );
  const log = createWriteStream(join(state, "up.log"));
  let out = "";
  child.stdout.on("data", (d) => {
    out += d;
    log.write(d);
  });
  child.stderr.on("data", (d) => log.write(d));
  const exited = new Promise((r) => child.on("exit", r));
  const deadline = Date.now() + 90_000;
  while (!out.includes("Ctrl-C stops everything")) {
    if (child.exitCode !== null) throw new Error(`meridian up exited (${child.exitCode}); see ${state}/up.log`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`meridian up not ready in 90 s; see ${state}/up.log`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const endpoints = JSON.parse(readFileSync(join(state, "endpoints.json"), "utf8"));
  const control = async (path) => {
    const res = await fetch(`http://${endpoints.control}${path}`, { method: "POST" });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`control ${path}: ${res.status} ${text}`);
    return text;
  };
  return {
    state,
    endpoints,
    router: `http://${endpoints.router.http}`,
    region: (name) => endpoints.regions.find((r) => r.name === name),
    kill: (region) => control(`/regions/${region}/kill`),
    drain: (region) => control(`/regions/${region}/drain`),
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Demo IPs (synthetic GeoIP database): where the router sends each user. */
export const IP = { singapore: "103.20.1.7", berlin: "81.20.1.7", newYork: "23.10.1.7" };
