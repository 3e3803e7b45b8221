// Runs once in every isolate, before any plugin code. It builds the plugin's whole world:
// `host` (exactly the embedder's whitelisted API), `console` (routed to the host's logs), and
// then removes deno_core's `Deno` / `__bootstrap` globals so that no op, built-in or ours, is
// reachable except through the functions created here.
//
// The startup snapshot stores this function as `globalThis.__isolaPrelude`; each isolate then
// runs `__isolaPrelude(spec)`, where `spec` lists the host items:
//   [{ name, kind: "sync" | "async", id }, { name, kind: "value", value }]
(function isolaPrelude(spec) {
  "use strict";
  const core = globalThis.Deno.core;
  const { op_isola_host_sync, op_isola_host_async, op_isola_log, op_isola_storage, op_isola_call, op_isola_emit } =
    core.ops;
  const { stringify } = JSON;
  const parse = JSON.parse;
  const { freeze, defineProperty, getOwnPropertyNames } = Object;

  function deepFreeze(v) {
    if (v !== null && typeof v === "object") {
      for (const k of getOwnPropertyNames(v)) deepFreeze(v[k]);
      freeze(v);
    }
    return v;
  }

  // `(...args) => JSON` keeps Rust's view simple: a JSON array of positional arguments.
  function encode(name, args) {
    try {
      return stringify(args);
    } catch (e) {
      throw new TypeError(`host.${name}: arguments must be JSON-serialisable (${e.message})`);
    }
  }

  const host = { __proto__: null };
  for (const item of spec) {
    const { name, id } = item;
    if (item.kind === "value") {
      host[name] = deepFreeze(item.value);
    } else if (item.kind === "storage") {
      host.storage = makeStorage();
    } else if (item.kind === "events") {
      host.events = freeze({
        emit(event, payload = null) {
          return op_isola_emit(String(event), encode("events.emit", payload) ?? "null");
        },
      });
    } else if (item.kind === "plugins") {
      host.plugins = freeze({
        async call(plugin, hook, ...args) {
          return parse(await op_isola_call(String(plugin), String(hook), encode("plugins.call", args)));
        },
      });
    } else if (item.kind === "sync") {
      // An object literal method gets the right `.name` for stack traces.
      host[name] = {
        [name](...args) {
          return parse(op_isola_host_sync(id, encode(name, args)));
        },
      }[name];
    } else {
      host[name] = {
        async [name](...args) {
          return parse(await op_isola_host_async(id, encode(name, args)));
        },
      }[name];
    }
  }
  freeze(host);

  // `host.storage`: JSON values under string keys, private to this plugin.
  function makeStorage() {
    const key = (k) => {
      if (typeof k !== "string") throw new TypeError("storage keys must be strings");
      return k;
    };
    return freeze({
      get(k) {
        return parse(op_isola_storage(0, key(k), ""));
      },
      set(k, value) {
        const text = encode("storage.set", value);
        if (text === undefined) throw new TypeError("host.storage.set: the value must be JSON-serialisable (not undefined)");
        op_isola_storage(1, key(k), text);
      },
      delete(k) {
        return parse(op_isola_storage(2, key(k), ""));
      },
      list(prefix = "") {
        return parse(op_isola_storage(3, key(prefix), ""));
      },
    });
  }

  function format(args) {
    let out = "";
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      let s;
      if (typeof a === "string") s = a;
      else if (a instanceof Error) s = a.stack || String(a);
      else if (typeof a === "function" || typeof a === "symbol" || typeof a === "bigint" || a === undefined) s = String(a);
      else {
        try {
          s = stringify(a);
        } catch {
          s = String(a);
        }
      }
      out += i === 0 ? s : " " + s;
    }
    return out;
  }
  const log = (level) => (...args) => op_isola_log(level, format(args));
  const console = freeze({
    trace: log(0),
    debug: log(1),
    log: log(2),
    info: log(2),
    warn: log(3),
    error: log(4),
  });

  // A promise a hook dropped on the floor that later rejects is the plugin's bug, not the
  // next caller's: log it with the plugin's console instead of failing whichever call happens
  // to drive the event loop next.
  core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
    console.error("unhandled promise rejection:", reason);
    return true;
  });

  delete globalThis.__isolaPrelude;
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
  // WebAssembly memory is allocated outside the ArrayBuffer allocator that enforces the
  // memory budget, so it is not offered.
  delete globalThis.WebAssembly;
  defineProperty(globalThis, "host", { value: host, enumerable: false, writable: false, configurable: false });
  defineProperty(globalThis, "console", { value: console, enumerable: false, writable: true, configurable: true });
})
