#!/usr/bin/env node
// A client for `isola serve`, using only Node's standard library.
//
// isola speaks JSON-RPC 2.0 (the README has the protocol), over stdin/stdout of a child
// process (one message per line) or over WebSocket (`isola serve DIR --listen ADDR`). The
// client starts with `initialize`, declaring the host functions it serves to plugins; when a
// plugin calls one, isola sends a `host` request and this client answers it from JavaScript.
//
//   node examples/node/isola_client.mjs plugins          # isola as a child process (stdio)
//   node examples/node/isola_client.mjs plugins --ws     # the same over WebSocket
//   ISOLA=target/debug/isola node examples/node/isola_client.mjs plugins
//
// WebSocket needs Node's global `WebSocket` (Node 22+, or Node 20/21 with
// `--experimental-websocket`).

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

export const PROTOCOL_VERSION = 1;

/** An error answered by isola; `code` is isola's code (TIMEOUT, JS_ERROR, ...). */
export class IsolaError extends Error {
  constructor(error) {
    super(error.message);
    this.code = error.data?.code ?? error.code;
    this.data = error.data;
  }
}

/** Throw it in a host function to give the plugin a code (`e.hostCode`) and data (`e.data`). */
export class HostError extends Error {
  constructor(message, { code, data } = {}) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

export class Isola {
  #send;
  #pending = new Map();
  #nextId = 1;
  #host = new Map();
  #closed;
  onEvent = () => {};

  /** Starts `isola serve DIR` as a child process. */
  static spawn(dir, { isola = "isola", args = [] } = {}) {
    const child = spawn(isola, ["serve", dir, ...args], { stdio: ["pipe", "pipe", "inherit"] });
    const client = new Isola((text) => child.stdin.write(text + "\n"), () => child.stdin.end());
    createInterface({ input: child.stdout }).on("line", (line) => client.#receive(line));
    client.#closed = new Promise((resolve) => child.on("exit", resolve));
    return client;
  }

  /** Connects to `isola serve DIR --listen ADDR` at `url` (`ws://127.0.0.1:7700`). */
  static async connect(url, { token } = {}) {
    const ws = new WebSocket(url);
    const client = new Isola((text) => ws.send(text), () => ws.close());
    ws.addEventListener("message", (e) => client.#receive(String(e.data)));
    client.#closed = new Promise((resolve) => ws.addEventListener("close", resolve));
    await new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener("error", () => reject(new Error(`cannot connect to ${url}`)), { once: true });
    });
    client.token = token;
    return client;
  }

  constructor(send, close) {
    this.#send = send;
    this.close = () => {
      close();
      return this.#closed;
    };
  }

  /**
   * The handshake. `host` maps names to functions served to plugins:
   * `{ lookup: fn }` or `{ lookup: [fn, { async: false, permission: "users", timeoutMs: 500 }] }`.
   */
  initialize({ host = {}, values = {}, policy = {}, name = "isola_client.mjs" } = {}) {
    const functions = [];
    for (const [fnName, entry] of Object.entries(host)) {
      const [fn, options] = Array.isArray(entry) ? entry : [entry, {}];
      this.#host.set(fnName, fn);
      functions.push({ name: fnName, ...options });
    }
    return this.request("initialize", {
      protocolVersion: PROTOCOL_VERSION,
      clientInfo: { name },
      ...(this.token ? { token: this.token } : {}),
      host: { functions, values: Object.entries(values).map(([n, value]) => ({ name: n, value })) },
      policy,
    });
  }

  request(method, params = null) {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
  }

  call(plugin, hook, ...args) {
    return this.request("call", { plugin, hook, args });
  }

  #receive(text) {
    const msg = JSON.parse(text);
    for (const m of Array.isArray(msg) ? msg : [msg]) {
      if (m.method === "host") this.#serveHost(m);
      else if (m.method === "event") this.onEvent(m.params);
      else if (m.method === undefined) this.#settle(m);
    }
  }

  #settle(msg) {
    const waiter = this.#pending.get(msg.id);
    if (!waiter) return;
    this.#pending.delete(msg.id);
    if (msg.error) waiter.reject(new IsolaError(msg.error));
    else waiter.resolve(msg.result);
  }

  async #serveHost(msg) {
    const { name, args } = msg.params;
    let reply;
    try {
      const result = await this.#host.get(name)(...args);
      reply = { jsonrpc: "2.0", id: msg.id, result: result ?? null };
    } catch (e) {
      const error = { code: e instanceof HostError && e.code !== undefined ? e.code : -32000, message: e.message };
      if (e instanceof HostError && e.data !== undefined) error.data = e.data;
      reply = { jsonrpc: "2.0", id: msg.id, error };
    }
    this.#send(JSON.stringify(reply));
  }
}

const USERS = { 1: ["Ada", "London"], 2: ["Grace", "Arlington"], 3: ["Linus", "Helsinki"] };

/** Served to plugins as the async `host.fetchUser(id)` (it needs the `users` permission). */
async function fetchUser(id) {
  if (!(id in USERS)) throw new HostError(`no user with id ${id}`, { code: "NOT_FOUND" });
  const [name, city] = USERS[id];
  return { id, name, city };
}

/** Starts `isola serve DIR --listen 127.0.0.1:0` and reads where it listens. */
function listen(dir, isola) {
  const child = spawn(isola, ["serve", dir, "--listen", "127.0.0.1:0"], { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stderr });
    lines.on("line", (line) => {
      const m = line.match(/^isola: listening on (ws:\/\/\S+)/);
      if (m) resolve({ child, url: m[1] });
    });
    child.on("exit", (code) => reject(new Error(`isola serve exited (${code})`)));
  });
}

async function main() {
  const [dir = "plugins", mode] = process.argv.slice(2);
  const isola = process.env.ISOLA ?? "isola";
  let client;
  let server;
  if (mode === "--ws") {
    server = await listen(dir, isola);
    client = await Isola.connect(server.url);
    console.log("connected to", server.url);
  } else {
    client = Isola.spawn(dir, { isola });
  }
  client.onEvent = (e) => console.log("event:", e.event, e.plugin);
  const info = await client.initialize({
    host: {
      log: [(msg) => console.log("plugin says:", msg), { async: false }],
      fetchUser: [fetchUser, { permission: "users" }],
    },
    values: { config: { app: "node-host", version: "2.0" } },
  });
  console.log("isola", info.serverInfo.version, "loaded", info.plugins.map((p) => p.id).join(", "));
  console.log(await client.call("greeter", "greet", "Ada"));
  const reports = await Promise.all([1, 2, 3].map((id) => client.call("weather", "report", id)));
  console.log(reports.map((r) => r.forecast).join("; "));
  try {
    await client.call("weather", "report", 9);
  } catch (e) {
    console.log("error:", e.code, e.message);
  }
  const chain = await client.request("dispatch", { event: "chat", payload: { user: "ada", text: "hello :)" } });
  console.log("chat payload after the chain:", chain.payload.text);
  await client.close();
  server?.child.kill();
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
