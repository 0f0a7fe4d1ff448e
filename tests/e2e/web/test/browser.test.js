// A real browser calling protodrop over gRPC-Web from a page on another origin: headless Debian
// Chromium driven by playwright-core, the page using @connectrpc/connect-web (binary framing) and
// grpc-web (text framing). Checks the unary and server-streaming answers, an error status, and CORS:
// an allowed origin, the default (any origin), and a server that does not allow the page's origin.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";

import {
  WEB,
  buildDescriptors,
  bundlePage,
  launchChromium,
  serveStatic,
  startProtodrop,
} from "./support.js";

const FEATURE = { name: "Beijing-Shanghai", location: { latitude: 1.5, longitude: 2.5 } };
const SEED_000_ERROR = "Exception calling application: list index out of range";

let site, browser, page;
const servers = {};
/** Requests the page made to protodrop servers (not preflights: Chromium does not report those). */
const requests = [];
/** What the page's console said (Chromium reports CORS refusals there). */
const consoleLines = [];

before(async () => {
  const [descriptors, script] = await Promise.all([buildDescriptors(), bundlePage()]);
  site = await serveStatic({
    "/": { type: "text/html", body: readFileSync(path.join(WEB, "page/index.html")) },
    "/main.js": { type: "text/javascript", body: script },
    "/descriptors.binpb": { type: "application/octet-stream", body: descriptors },
  });
  [servers.allowed, servers.any, servers.other] = await Promise.all([
    startProtodrop(["--cors-origin", site.origin]),
    startProtodrop([]),
    startProtodrop(["--cors-origin", "http://127.0.0.1:1"]),
  ]);
  browser = await launchChromium();
  page = await browser.newPage();
  page.on("request", (r) => {
    if (!r.url().startsWith(site.origin)) {
      requests.push({ url: r.url(), method: r.method(), contentType: r.headers()["content-type"] });
    }
  });
  page.on("console", (m) => consoleLines.push(m.text()));
  await page.goto(`${site.origin}/`);
  await page.waitForFunction(() => window.pageReady === true, null, { timeout: 15_000 });
});

after(async () => {
  await browser?.close();
  await Promise.all(Object.values(servers).map((s) => s.stop()));
  await site?.close();
});

function callAll(server) {
  return page.evaluate((url) => window.callAll(url), server.url);
}

function assertAllAnswered(r, label) {
  assert.notEqual(new URL(r.origin).port, "", label);
  for (const [client, results] of Object.entries({ connectWeb: r.connectWeb, grpcWebText: r.grpcWebText })) {
    const what = `${label}, ${client}`;
    assert.deepEqual(results.unary.ok && results.unary.value.message, "Hello, you!", `${what}: ${JSON.stringify(results.unary)}`);
    assert.ok(results.stream.ok, `${what}: ${JSON.stringify(results.stream)}`);
    assert.equal(results.stream.value.length, 10, what);
    for (const f of results.stream.value) assert.deepEqual(f, FEATURE, what);
    // The error answer is trailers-only: its grpc-status/grpc-message headers must be exposed by CORS.
    assert.deepEqual(results.error, { ok: false, error: { code: 2, message: SEED_000_ERROR } }, what);
  }
}

test("a page on another origin calls protodrop over gRPC-Web (origin allowed by --cors-origin)", async () => {
  const r = await callAll(servers.allowed);
  assert.notEqual(r.origin, servers.allowed.url, "the page and protodrop are different origins");
  assertAllAnswered(r, "allowed origin");
  assert.equal(r.connectWeb.unary.value.contentType, "application/grpc-web+proto");
  const mine = requests.filter((q) => q.url.startsWith(servers.allowed.url));
  const types = new Set(mine.map((q) => `${q.method} ${q.contentType}`));
  assert.deepEqual(
    [...types].sort(),
    ["POST application/grpc-web+proto", "POST application/grpc-web-text"],
    "both framings were used",
  );
});

test("the default --cors-origin (*) lets any page call", async () => {
  assertAllAnswered(await callAll(servers.any), "any origin");
});

test("a server that does not allow the page's origin cannot be called from it", async () => {
  const r = await callAll(servers.other);
  for (const client of ["connectWeb", "grpcWebText"]) {
    for (const call of ["unary", "stream", "error"]) {
      const res = r[client][call];
      assert.equal(res.ok, false, `${client} ${call} should fail: ${JSON.stringify(res)}`);
      assert.notEqual(res.error.message, SEED_000_ERROR, `${client} ${call} must not reach the handler`);
    }
  }
  // Chromium says why: the preflight (answered 403, without access-control-allow-origin) failed.
  const refused = consoleLines.filter(
    (l) => l.includes(servers.other.url) && l.includes("blocked by CORS policy") && l.includes("preflight"),
  );
  assert.equal(refused.length, 6, `one refusal per call (fetch and XHR):\n${consoleLines.join("\n")}`);
});
