// Shared by the node tests: protodrop as a child process, buf, the page bundle, a static server.

import { execFile, spawn } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const REPO = path.resolve(WEB, "../../..");
/** The binary under test, as the Python end-to-end tests take it. */
export const BIN = path.resolve(REPO, process.env.PROTODROP_BIN ?? "target/debug/protodrop");
export const BUF = path.join(WEB, "node_modules/.bin/buf");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const STARTUP_TIMEOUT_MS = 20_000;

const children = new Set();
// Last resort: no protodrop outlives the test process, whatever happens.
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/**
 * Starts `protodrop serve --protos protos --handlers handlers --listen 127.0.0.1:0 [args]` in the
 * repository and waits for its `listening on ADDR` line.
 */
export function startProtodrop(args = []) {
  const child = spawn(
    BIN,
    ["serve", "--protos", "protos", "--handlers", "handlers", "--listen", "127.0.0.1:0", ...args],
    {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...withoutProtodropVars(process.env), RUST_LOG: "info" },
    },
  );
  children.add(child);
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  exited.then(() => children.delete(child));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
  };
  return new Promise((resolve, reject) => {
    let out = "";
    const fail = (why) => {
      stop();
      reject(new Error(`protodrop did not start: ${why}\n--- stderr ---\n${stderr}`));
    };
    const timer = setTimeout(() => fail(`no listen line within ${STARTUP_TIMEOUT_MS} ms`), STARTUP_TIMEOUT_MS);
    child.once("error", (e) => fail(`cannot run ${BIN}: ${e.message}`));
    exited.then(({ code, signal }) => fail(`exited (code ${code}, signal ${signal})`));
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/^listening on (127\.0\.0\.1:\d+)\n/);
      if (m) {
        clearTimeout(timer);
        resolve({ addr: m[1], url: `http://${m[1]}`, stop, logs: () => stderr });
      }
    });
  });
}

function withoutProtodropVars(env) {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith("PROTODROP_")));
}

/** Runs a command to completion: { code, stdout, stderr } (never rejects on a non-zero exit). */
export function run(file, args, options = {}) {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 30_000, maxBuffer: 16 << 20, ...options }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
      resolve({ code, stdout, stderr, error });
    });
  });
}

/**
 * protos/ and the bundled google/api + google/rpc protos as one FileDescriptorSet (imports
 * included), by `buf build` — the page builds its services from it at run time.
 */
export async function buildDescriptors() {
  const dir = mkdtempSync(path.join(tmpdir(), "protodrop-web-"));
  try {
    cpSync(path.join(REPO, "protos"), path.join(dir, "protos"), { recursive: true });
    cpSync(path.join(REPO, "src/protos/include"), path.join(dir, "protos"), { recursive: true });
    const outFile = path.join(dir, "descriptors.binpb");
    const r = await run(BUF, [
      "build", path.join(dir, "protos"),
      "--as-file-descriptor-set", "--exclude-source-info", "-o", outFile,
    ]);
    if (r.code !== 0) throw new Error(`buf build failed (${r.code}):\n${r.stderr}`);
    return readFileSync(outFile);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The page's script, bundled for the browser. */
export async function bundlePage() {
  const esbuild = await import("esbuild");
  const result = await esbuild.build({
    entryPoints: [path.join(WEB, "page/main.js")],
    bundle: true,
    write: false,
    format: "esm",
    platform: "browser",
    target: "chrome120",
    logLevel: "silent",
  });
  return result.outputFiles[0].contents;
}

/** A static server on 127.0.0.1 (its own port: another origin than protodrop's). */
export function serveStatic(files) {
  const server = createServer((req, res) => {
    const file = files[new URL(req.url, "http://x").pathname];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": file.type, "cache-control": "no-store" }).end(file.body);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      resolve({
        origin: `http://127.0.0.1:${port}`,
        close: () => new Promise((r) => server.close(r)),
      });
    });
  });
}

/** Headless Debian Chromium through playwright-core (no browser download). */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
