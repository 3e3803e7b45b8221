// Runs once in every isolate, before any plugin code. It builds the plugin's whole world:
// `host` (exactly the embedder's whitelisted API), `console` (routed to the host's logs), and
// then removes deno_core's `Deno` / `__bootstrap` globals so that no op, built-in or ours, is
// reachable except through the functions created here.
//
// The startup snapshot stores this function as `globalThis.__isolaPrelude`; each isolate then
// runs `__isolaPrelude(spec)`, where `spec` lists the host items:
//   [{ name, kind: "sync" | "async", id }, { name, kind: "value", value }]
// and keeps what it returns: two helpers for isola's Rust side (see the end).
(function isolaPrelude(spec) {
  "use strict";
  const core = globalThis.Deno.core;
  const {
    op_isola_host_sync,
    op_isola_host_async,
    op_isola_log,
    op_isola_storage,
    op_isola_call,
    op_isola_emit,
    op_isola_call_epoch,
    op_isola_background,
  } = core.ops;
  const { stringify } = JSON;
  const parse = JSON.parse;
  const { freeze, defineProperty, getOwnPropertyNames, getOwnPropertyDescriptor } = Object;
  // Built-ins are captured now, before any plugin code could replace them.
  const uncurry = Function.prototype.bind.bind(Function.prototype.call);
  const weakMapGet = uncurry(WeakMap.prototype.get);
  const weakMapSet = uncurry(WeakMap.prototype.set);
  const promiseThen = uncurry(Promise.prototype.then);
  const isWellFormed = uncurry(String.prototype.isWellFormed);
  const charCodeAt = uncurry(String.prototype.charCodeAt);
  const stringSlice = uncurry(String.prototype.slice);
  const ErrorCtor = Error;
  const TypeErrorCtor = TypeError;

  // Errors isola itself threw into this plugin (a refused permission, a broken quota, a
  // refused plugin call), with their code. A hook that lets one escape gives the host that
  // code instead of JS_ERROR. Kept here, out of the plugin's reach, so that a plugin cannot
  // make its own errors pass for isola's by setting a `code` property.
  const issued = new WeakMap();
  function mark(e) {
    if (e !== null && typeof e === "object") {
      const d = getOwnPropertyDescriptor(e, "code");
      if (d !== undefined && typeof d.value === "string") weakMapSet(issued, e, d.value);
      // A host's `HostError` data arrives as JSON text; the plugin gets the value as `e.data`.
      const h = getOwnPropertyDescriptor(e, "hostData");
      if (h !== undefined && typeof h.value === "string") {
        delete e.hostData;
        defineProperty(e, "data", { __proto__: null, value: parse(h.value), writable: true, enumerable: false, configurable: true });
      }
    }
    return e;
  }

  // What an async op resolved with: its answer's JSON text, or, after a NUL, the error it
  // failed with as [class, message, [[key, value], ...]], made and thrown here. Why not a
  // rejection: deno_core makes a rejection's error by entering JS from its event loop, where
  // V8 acts on a pending termination (a deadline) that the event loop then drops; a hook
  // awaiting failures in a loop ran on past its deadline. Here a termination lands as in any
  // other plugin code.
  function answer(r) {
    if (charCodeAt(r, 0) !== 0) return parse(r);
    const f = parse(stringSlice(r, 1));
    const e = f[0] === "TypeError" ? new TypeErrorCtor(f[1]) : new ErrorCtor(f[1]);
    const props = f[2];
    for (let i = 0; i < props.length; i++) {
      defineProperty(e, props[i][0], { __proto__: null, value: props[i][1], writable: true, enumerable: true, configurable: true });
    }
    throw mark(e);
  }

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

  // Whether every argument is a plain primitive, which the sync host op takes as it is (no
  // JSON text): numbers, well-formed strings, booleans, null and undefined. Anything else
  // goes through `encode`, so that its rules and errors stay those of JSON.stringify.
  function plain(args) {
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      switch (typeof a) {
        case "number":
        case "boolean":
        case "undefined":
          break;
        case "string":
          if (!isWellFormed(a)) return false;
          break;
        default:
          if (a !== null) return false;
      }
    }
    return true;
  }

  // The web platform globals (`js/web.js`, in the snapshot) leave these for the prelude.
  const web = globalThis.__isolaWeb;

  // `host.signal`: the AbortSignal of the call running now. It aborts when the call ends
  // early (its caller aborted it, its deadline passed, the plugin is being unloaded), so an
  // async hook can stop what it started. A standard AbortSignal that only isola can abort;
  // made on first use, one per call.
  let signal = null;
  let signalEpoch = -1;
  function currentSignal() {
    const epoch = op_isola_call_epoch();
    if (signal === null || signalEpoch !== epoch) {
      signal = web.newSignal();
      signalEpoch = epoch;
    }
    return signal;
  }
  function abortCall(code, message) {
    if (signal === null || signalEpoch !== op_isola_call_epoch()) return;
    const reason = new Error(message);
    reason.name = code === "TIMEOUT" ? "TimeoutError" : "AbortError";
    reason.code = code;
    web.abort(signal, mark(reason));
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
          const text = encode("events.emit", payload) ?? "null";
          try {
            return op_isola_emit(String(event), text);
          } catch (e) {
            throw mark(e);
          }
        },
      });
    } else if (item.kind === "plugins") {
      host.plugins = freeze({
        async call(plugin, hook, ...args) {
          const text = encode("plugins.call", args);
          let r;
          op_isola_background();
          try {
            r = await op_isola_call(String(plugin), String(hook), text);
          } catch (e) {
            throw mark(e);
          }
          return answer(r);
        },
      });
    } else if (item.kind === "sync") {
      // An object literal method gets the right `.name` for stack traces.
      host[name] = {
        [name](...args) {
          const text = plain(args) ? undefined : encode(name, args);
          try {
            return text === undefined ? op_isola_host_sync(id, undefined, ...args) : op_isola_host_sync(id, text);
          } catch (e) {
            throw mark(e);
          }
        },
      }[name];
    } else {
      host[name] = {
        async [name](...args) {
          const text = encode(name, args);
          let r;
          op_isola_background();
          try {
            r = await op_isola_host_async(id, text);
          } catch (e) {
            throw mark(e);
          }
          return answer(r);
        },
      }[name];
    }
  }
  defineProperty(host, "signal", { get: currentSignal, enumerable: false });
  freeze(host);

  // `host.storage`: JSON values under string keys, private to this plugin.
  function makeStorage() {
    const key = (k) => {
      if (typeof k !== "string") throw new TypeError("storage keys must be strings");
      // A lone surrogate has no UTF-8 form: converting it would turn "\ud800" and "\udc00"
      // into the same key, so such keys are refused rather than merged.
      if (!isWellFormed(k)) throw new TypeError("storage keys must be well-formed Unicode (no lone surrogates)");
      return k;
    };
    const storageOp = (op, k, text) => {
      try {
        return op_isola_storage(op, k, text);
      } catch (e) {
        throw mark(e);
      }
    };
    return freeze({
      get(k) {
        return parse(storageOp(0, key(k), ""));
      },
      set(k, value) {
        k = key(k);
        const text = encode("storage.set", value);
        if (text === undefined) throw new TypeError("host.storage.set: the value must be JSON-serialisable (not undefined)");
        storageOp(1, k, text);
      },
      delete(k) {
        return parse(storageOp(2, key(k), ""));
      },
      list(prefix = "") {
        return parse(storageOp(3, key(prefix), ""));
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
  // The whole console API, every line to the host's log at the level its method names.
  let indent = "";
  const emit = (level, text) => op_isola_log(level, indent === "" ? text : indent + text.replaceAll("\n", "\n" + indent));
  // In parentheses so the snapshot holds it compiled (`src/runtime/snapshot_build.rs`).
  const log = ((level) => (...args) => emit(level, format(args)));
  const counters = new Map();
  const timers = new Map();
  const label = (l) => (l === undefined ? "default" : String(l));
  const elapsed = (l) => `${l}: ${(web.now() - timers.get(l)).toFixed(3)} ms`;
  function table(data, columns) {
    if (data === null || typeof data !== "object") return emit(2, format([data]));
    const rows = Object.keys(data);
    const cols = [];
    for (const r of rows) {
      const v = data[r];
      if (v !== null && typeof v === "object") for (const k of Object.keys(v)) if (!cols.includes(k)) cols.push(k);
    }
    const shown = Array.isArray(columns) ? columns.map(String) : cols;
    const hasValues = rows.some((r) => data[r] === null || typeof data[r] !== "object");
    const header = ["(index)", ...shown, ...(hasValues ? ["Values"] : [])];
    const cell = (v) => (v === undefined ? "" : typeof v === "string" ? v : format([v]));
    const body = rows.map((r) => {
      const v = data[r];
      const obj = v !== null && typeof v === "object";
      return [r, ...shown.map((k) => (obj ? cell(v[k]) : "")), ...(hasValues ? [obj ? "" : cell(v)] : [])];
    });
    const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
    const line = (row) => "│ " + row.map((c, i) => c.padEnd(widths[i])).join(" │ ") + " │";
    const rule = (l, m, r) => l + widths.map((w) => "─".repeat(w + 2)).join(m) + r;
    emit(2, [rule("┌", "┬", "┐"), line(header), rule("├", "┼", "┤"), ...body.map(line), rule("└", "┴", "┘")].join("\n"));
  }
  const console = freeze({
    trace: log(0),
    debug: log(1),
    log: log(2),
    info: log(2),
    dir: (v) => emit(2, format([v])),
    dirxml: log(2),
    table,
    warn: log(3),
    error: log(4),
    assert(condition, ...args) {
      if (!condition) emit(4, "Assertion failed" + (args.length === 0 ? "" : ": " + format(args)));
    },
    count(l) {
      l = label(l);
      const n = (counters.get(l) ?? 0) + 1;
      counters.set(l, n);
      emit(2, `${l}: ${n}`);
    },
    countReset(l) {
      counters.delete(label(l));
    },
    group(...args) {
      if (args.length > 0) emit(2, format(args));
      indent += "  ";
    },
    groupCollapsed(...args) {
      if (args.length > 0) emit(2, format(args));
      indent += "  ";
    },
    groupEnd() {
      indent = indent.slice(2);
    },
    time(l) {
      l = label(l);
      if (timers.has(l)) return emit(3, `Timer '${l}' already exists`);
      timers.set(l, web.now());
    },
    timeLog(l, ...args) {
      l = label(l);
      if (!timers.has(l)) return emit(3, `Timer '${l}' does not exist`);
      emit(2, elapsed(l) + (args.length === 0 ? "" : " " + format(args)));
    },
    timeEnd(l) {
      l = label(l);
      if (!timers.has(l)) return emit(3, `Timer '${l}' does not exist`);
      emit(2, elapsed(l));
      timers.delete(l);
    },
  });
  // `reportError`, and listeners that throw, report to the plugin's log.
  web.setReporter((e) => console.error("uncaught error:", e));

  // A promise a hook dropped on the floor that later rejects is the plugin's bug, not the
  // next caller's: log it with the plugin's console instead of failing whichever call happens
  // to drive the event loop next.
  core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
    console.error("unhandled promise rejection:", reason);
    return true;
  });

  delete globalThis.__isolaPrelude;
  delete globalThis.__isolaWeb;
  globalThis.__isolaWasm(core);
  delete globalThis.__isolaWasm;
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
  defineProperty(globalThis, "host", { value: host, enumerable: false, writable: false, configurable: false });
  defineProperty(globalThis, "console", { value: console, enumerable: false, writable: true, configurable: true });

  // For isola's Rust side only (never reachable from the plugin):
  // - codeOf(e): the code of an error isola issued, or undefined;
  // - settle(p): a promise that always fulfils, with [true, value] or [false, reason], so the
  //   Rust side gets a rejected hook's thrown value itself (to read its code) instead of a
  //   converted copy;
  // - abortCall(code, message): aborts the running call's `host.signal`, if it was made.
  return freeze({
    codeOf: (e) => weakMapGet(issued, e),
    settle: (p) => promiseThen(p, (v) => [true, v], (e) => [false, e]),
    abortCall,
    restartTimers: web.restartTimers,
  });
})
