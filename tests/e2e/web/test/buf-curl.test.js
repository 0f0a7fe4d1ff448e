// buf curl (from npm @bufbuild/buf) against protodrop with server reflection only — no proto files —
// over each of its protocols: gRPC, gRPC-Web and Connect. Reflection is a bidi stream, so buf curl
// speaks HTTP/2 for it, and for the call as well when --protocol is grpc.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { BUF, REPO, run, startProtodrop } from "./support.js";

let server;
before(async () => {
  server = await startProtodrop();
});
after(async () => {
  await server?.stop();
});

// The call's request content type, per protocol, as buf curl -v shows it.
const CONTENT_TYPE = {
  grpc: /^application\/grpc(\+proto)?$/,
  grpcweb: /^application\/grpc-web(\+proto)?$/,
  connect: /^application\/(connect\+)?(proto|json)$/,
};

/** From buf curl -v: the content type of the request that called `method` (not the reflection calls). */
function callContentType(verbose, method) {
  const n = verbose.match(new RegExp(`> \\(#(\\d+)\\) POST /${method.replace(".", "\\.")}\\b`))?.[1];
  assert.ok(n, `no POST /${method} in:\n${verbose}`);
  return verbose.match(new RegExp(`> \\(#${n}\\) Content-Type: (\\S+)`, "i"))?.[1];
}

function bufCurl(protocol, method, data) {
  return run(BUF, ["curl", "-v", "--protocol", protocol, "--data", JSON.stringify(data), `${server.url}/${method}`], {
    cwd: REPO,
  });
}

function parseJsonStream(text) {
  // buf curl prints each response message as pretty JSON, one after another.
  return text
    .split(/\n(?=\{)/)
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => JSON.parse(s));
}

for (const protocol of ["grpc", "grpcweb", "connect"]) {
  test(`buf curl --protocol ${protocol}: unary, with reflection only`, async () => {
    const r = await bufCurl(protocol, "hello_world.Greeter/SayHello", { name: "you" });
    assert.equal(r.code, 0, `exit ${r.code}\n${r.stderr}`);
    assert.deepEqual(JSON.parse(r.stdout), { message: "Hello, you!" });
    assert.match(callContentType(r.stderr, "hello_world.Greeter/SayHello"), CONTENT_TYPE[protocol]);
  });

  test(`buf curl --protocol ${protocol}: server streaming, with reflection only`, async () => {
    const r = await bufCurl(protocol, "hello.Hello/ListFeatures", { lo: { latitude: 1.5, longitude: 2.5 } });
    assert.equal(r.code, 0, `exit ${r.code}\n${r.stderr}`);
    const messages = parseJsonStream(r.stdout);
    assert.equal(messages.length, 10, r.stdout);
    for (const m of messages) {
      assert.deepEqual(m, { name: "Beijing-Shanghai", location: { latitude: 1.5, longitude: 2.5 } });
    }
  });
}
