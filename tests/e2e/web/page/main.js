// The page's script, bundled by esbuild at test time. No generated code: the services come from a
// FileDescriptorSet of protos/ (built by `buf build` when the test starts), served beside the page.
//
// window.callAll(serverUrl) calls hello_world.Greeter/SayHello (unary), hello.Hello/ListFeatures (server
// streaming) and an error answer, with two real gRPC-Web clients:
//   * @connectrpc/connect-web's gRPC-Web transport: binary framing (application/grpc-web+proto);
//   * grpc-web (Google's runtime) in its default "text" format: base64 framing (application/grpc-web-text).
// It returns plain JSON for the test to check.

import { create, createFileRegistry, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { GrpcWebClientBase, MethodDescriptor } from "grpc-web";

const RECTANGLE = { lo: { latitude: 1.5, longitude: 2.5 }, hi: { latitude: 3, longitude: 4 } };

let registryPromise;
function registry() {
  registryPromise ??= fetch("/descriptors.binpb")
    .then((r) => {
      if (!r.ok) throw new Error(`descriptors: HTTP ${r.status}`);
      return r.arrayBuffer();
    })
    .then((b) => createFileRegistry(fromBinary(FileDescriptorSetSchema, new Uint8Array(b))));
  return registryPromise;
}

function service(reg, name) {
  const s = reg.getService(name);
  if (!s) throw new Error(`no service ${name} in the descriptors`);
  return s;
}

function method(svc, name) {
  const m = svc.methods.find((x) => x.name === name);
  if (!m) throw new Error(`no method ${name} in ${svc.typeName}`);
  return m;
}

function describeError(e) {
  if (e instanceof ConnectError) {
    return { code: e.code, message: e.rawMessage };
  }
  if (e && typeof e.code === "number") {
    return { code: e.code, message: e.message }; // grpc-web's RpcError
  }
  return { code: null, message: String(e) };
}

/** Each step on its own: a failing step is reported, the others still run. */
async function step(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    return { ok: false, error: describeError(e) };
  }
}

async function withConnectWeb(reg, serverUrl) {
  const transport = createGrpcWebTransport({ baseUrl: serverUrl, useBinaryFormat: true });
  const greeter = createClient(service(reg, "hello_world.Greeter"), transport);
  const hello = createClient(service(reg, "hello.Hello"), transport);
  const recognition = createClient(service(reg, "faceserver.Recognition"), transport);
  const featureSchema = method(service(reg, "hello.Hello"), "ListFeatures").output;
  return {
    unary: await step(async () => {
      let headers;
      const reply = await greeter.sayHello({ name: "you" }, { onHeader: (h) => (headers = h) });
      return { message: reply.message, contentType: headers?.get("content-type") ?? null };
    }),
    stream: await step(async () => {
      const out = [];
      for await (const f of hello.listFeatures(RECTANGLE)) {
        out.push(toJson(featureSchema, f));
      }
      return out;
    }),
    error: await step(() => recognition.registration({})),
  };
}

async function withGoogleGrpcWeb(reg, serverUrl) {
  const client = new GrpcWebClientBase({ format: "text" });
  const descriptor = (svc, name) => {
    const m = method(svc, name);
    return {
      m,
      md: new MethodDescriptor(
        `/${svc.typeName}/${m.name}`,
        m.methodKind === "unary" ? "unary" : "server_streaming",
        Object,
        Object,
        (req) => toBinary(m.input, req),
        (bytes) => fromBinary(m.output, bytes),
      ),
    };
  };
  const unary = (svc, name, init) => {
    const { m, md } = descriptor(svc, name);
    return client.unaryCall(`${serverUrl}/${svc.typeName}/${m.name}`, create(m.input, init), {}, md);
  };
  const stream = (svc, name, init) =>
    new Promise((resolve, reject) => {
      const { m, md } = descriptor(svc, name);
      const out = [];
      const call = client.serverStreaming(
        `${serverUrl}/${svc.typeName}/${m.name}`,
        create(m.input, init),
        {},
        md,
      );
      call.on("data", (msg) => out.push(toJson(m.output, msg)));
      call.on("error", reject);
      call.on("end", () => resolve(out));
    });
  return {
    unary: await step(async () => {
      const reply = await unary(service(reg, "hello_world.Greeter"), "SayHello", { name: "you" });
      return { message: reply.message };
    }),
    stream: await step(() => stream(service(reg, "hello.Hello"), "ListFeatures", RECTANGLE)),
    error: await step(() => unary(service(reg, "faceserver.Recognition"), "registration", {})),
  };
}

window.callAll = async (serverUrl) => {
  const reg = await registry();
  const result = {
    origin: location.origin,
    connectWeb: await withConnectWeb(reg, serverUrl),
    grpcWebText: await withGoogleGrpcWeb(reg, serverUrl),
  };
  document.getElementById("out").textContent += JSON.stringify(result, null, 2) + "\n";
  return result;
};

window.pageReady = true;
