// The Node peer of the benchmark: @grpc/grpc-js with the protos loaded at run time by
// @grpc/proto-loader, no codegen (the common dynamic peer of protodrop).
//
// Usage: node server.js --protos DIR [--listen 127.0.0.1:0]
// Loads every *.proto under DIR, implements bench/protos' methods (helloworld.Greeter/SayHello,
// complex.Greeter/SayHello, bench.Stream/Fetch and Echo) and answers every other method it finds
// with an empty message (scenario 5's large tree). Prints `listening on ADDR` once bound.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

function protoFiles(dir, root = dir, out = []) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) protoFiles(full, root, out);
    else if (entry.name.endsWith('.proto')) out.push(path.relative(root, full));
  }
  return out.sort();
}

const FETCH_COUNT = 1000;

// The bench methods, by service name.
const implementations = {
  'helloworld.Greeter': {
    SayHello(call, callback) {
      callback(null, { message: 'Hello ' + call.request.name });
    },
  },
  'complex.Greeter': {
    SayHello(call, callback) {
      callback(null, { response: call.request.request });
    },
  },
  'bench.Stream': {
    Fetch(call) {
      const name = call.request.name;
      // index 0 is left out, as proto3 encoders do for a default value (protobufjs would write it)
      for (let index = 0; index < FETCH_COUNT; index++) call.write(index ? { index, name } : { name });
      call.end();
    },
    Echo(call) {
      call.on('data', (item) => call.write(item));
      call.on('end', () => call.end());
    },
  },
};

// Any other method: an empty reply (unary, client streaming) or an empty stream.
function emptyHandlers(service) {
  const handlers = {};
  for (const [name, method] of Object.entries(service)) {
    if (method.responseStream) {
      handlers[name] = (call) => {
        if (method.requestStream) call.on('data', () => {});
        call.end();
      };
    } else if (method.requestStream) {
      handlers[name] = (call, callback) => {
        call.on('data', () => {});
        call.on('end', () => callback(null, {}));
      };
    } else {
      handlers[name] = (call, callback) => callback(null, {});
    }
  }
  return handlers;
}

function main() {
  const dir = path.resolve(arg('--protos', 'protos'));
  const listen = arg('--listen', '127.0.0.1:50051');
  const definition = protoLoader.loadSync(protoFiles(dir), {
    includeDirs: [dir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: false,
  });
  const server = new grpc.Server();
  for (const [name, entry] of Object.entries(definition)) {
    // Services are the entries whose values are method maps (messages have a `format` field).
    if (entry.format !== undefined || typeof entry !== 'object') continue;
    server.addService(entry, implementations[name] || emptyHandlers(entry));
  }
  server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(err);
      process.exit(1);
    }
    const host = listen.slice(0, listen.lastIndexOf(':'));
    process.stdout.write(`listening on ${host}:${port}\n`);
  });
}

main();
