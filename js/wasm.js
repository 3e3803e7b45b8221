// WebAssembly inside the plugin's memory budget: wrappers around V8's `WebAssembly` that make
// every memory a plugin can have visible to isola, which counts it (`src/runtime/wasm.rs`
// says why and how; `src/runtime/memory.rs` does the counting).
//
// - `new WebAssembly.Module(bytes)`, `compile` and `instantiate` compile the module isola
//   prepared from the bytes: each memory the module defines is exported under a hidden name
//   (and its maximum capped at the budget), its start function too;
// - `new WebAssembly.Instance` counts the instance's memories, takes the hidden exports out of
//   `instance.exports`, then runs the start function;
// - `new WebAssembly.Memory` caps the maximum at the budget and counts the memory.
// - Shared memories are refused (a plugin runs on one thread); `compileStreaming` and
//   `instantiateStreaming` are absent (there is no `fetch`, no `Response`).
//
// The originals stay out of reach: each prototype's `constructor` points at the wrapper, and
// everything used here is captured before plugin code runs.
//
// The snapshot holds this function as `globalThis.__isolaWasm`; the prelude runs it in each
// isolate (and deletes it). Not run while the snapshot is built: V8 adds `WebAssembly` to a
// context only when it is made from the snapshot. The parentheses around this function and
// `install` are for speed: they make V8 compile them while the snapshot is made, not in every
// plugin load (`src/runtime/snapshot_build.rs` says more).
globalThis.__isolaWasm = (function isolaWasm(core) {
  "use strict";
  const W = globalThis.WebAssembly;
  if (W === undefined) return;
  const { op_isola_wasm_prepare, op_isola_wasm_take, op_isola_wasm_page_limit, op_isola_wasm_track } = core.ops;
  const { Module: OrigModule, Instance: OrigInstance, Memory: OrigMemory, CompileError } = W;
  const { construct, apply } = Reflect;
  const { keys, create, freeze, defineProperty, getOwnPropertyDescriptor } = Object;
  const exportsOf = getOwnPropertyDescriptor(OrigInstance.prototype, "exports").get;
  const moduleExports = OrigModule.exports;
  const startsWith = String.prototype.startsWith;
  const isView = ArrayBuffer.isView;
  const promiseThen = Promise.prototype.then;
  const resolved = Promise.resolve(undefined);
  const HIDDEN = "\0isola:";
  const START = "\0isola:start";
  const DESCRIPTOR_KEYS = freeze(["address", "index", "initial", "minimum", "maximum", "shared", "pageSize"]);

  const hidden = (name) => apply(startsWith, name, [HIDDEN]);

  // The bytes V8 compiles: the plugin's, or isola's rewrite of them.
  function prepare(what, bytes) {
    if (!isView(bytes) && !(bytes instanceof ArrayBuffer)) {
      throw new TypeError(`${what}: Argument 0 must be a buffer source`);
    }
    let n;
    try {
      n = op_isola_wasm_prepare(bytes);
    } catch (e) {
      throw new CompileError(`${what}: ${e.message}`);
    }
    if (n === 0) return bytes;
    const out = new Uint8Array(n);
    op_isola_wasm_take(out);
    return out;
  }

  // Counts a new instance's memories, hides isola's exports, runs the start function.
  function adopt(instance) {
    const raw = apply(exportsOf, instance, []);
    const names = keys(raw);
    let start;
    let any = false;
    for (let i = 0; i < names.length; i++) {
      const value = raw[names[i]];
      if (value instanceof OrigMemory) op_isola_wasm_track(value);
      if (hidden(names[i])) {
        any = true;
        if (names[i] === START) start = value;
      }
    }
    if (any) {
      const visible = create(null);
      for (let i = 0; i < names.length; i++) {
        if (!hidden(names[i])) visible[names[i]] = raw[names[i]];
      }
      defineProperty(instance, "exports", { __proto__: null, value: freeze(visible), writable: false, enumerable: false, configurable: false });
    }
    if (start !== undefined) start();
    return instance;
  }

  function Module(bytes) {
    if (new.target === undefined) throw new TypeError("WebAssembly.Module must be invoked with 'new'");
    return construct(OrigModule, [prepare("WebAssembly.Module()", bytes)], new.target);
  }

  function Instance(module, importObject = undefined) {
    if (new.target === undefined) throw new TypeError("WebAssembly.Instance must be invoked with 'new'");
    return adopt(construct(OrigInstance, [module, importObject], new.target));
  }

  function Memory(descriptor) {
    if (new.target === undefined) throw new TypeError("WebAssembly.Memory must be invoked with 'new'");
    if (descriptor === null || (typeof descriptor !== "object" && typeof descriptor !== "function")) {
      throw new TypeError("WebAssembly.Memory(): Argument 0 must be a memory descriptor");
    }
    const d = {};
    for (let i = 0; i < DESCRIPTOR_KEYS.length; i++) {
      const v = descriptor[DESCRIPTOR_KEYS[i]];
      if (v !== undefined) d[DESCRIPTOR_KEYS[i]] = v;
    }
    if (d.shared) {
      throw new TypeError("WebAssembly.Memory(): shared memories are not available: a plugin runs on one thread");
    }
    const first = d.initial !== undefined ? d.initial : d.minimum;
    if (typeof first === "number" || typeof first === "bigint") {
      const pages = op_isola_wasm_page_limit();
      const cap = typeof first === "bigint" ? BigInt(pages) : pages;
      if (d.maximum === undefined || d.maximum > cap) d.maximum = first > cap ? first : cap;
    }
    const memory = construct(OrigMemory, [d], new.target);
    op_isola_wasm_track(memory);
    return memory;
  }

  // Asynchronous in name: the work runs in a microtask on the plugin's thread, so that its
  // failures are rejections, as in a browser.
  const later = (f) => apply(promiseThen, resolved, [f]);

  const statics = {
    compile(bytes) {
      return later(() => new Module(bytes));
    },
    instantiate(source, importObject = undefined) {
      return later(() => {
        if (source instanceof OrigModule) return new Instance(source, importObject);
        const module = new Module(source);
        return { module, instance: new Instance(module, importObject) };
      });
    },
  };

  const moduleStatics = {
    exports(module) {
      const all = moduleExports(module);
      const out = [];
      for (let i = 0; i < all.length; i++) {
        if (!hidden(all[i].name)) out[out.length] = all[i];
      }
      return out;
    },
  };

  const install = (function install(target, name, value) {
    defineProperty(target, name, { value, writable: true, enumerable: false, configurable: true });
  });
  for (const [wrapper, orig] of [[Module, OrigModule], [Instance, OrigInstance], [Memory, OrigMemory]]) {
    defineProperty(wrapper, "prototype", { value: orig.prototype, writable: false, enumerable: false, configurable: false });
    install(orig.prototype, "constructor", wrapper);
    install(W, orig.name, wrapper);
  }
  install(Module, "exports", moduleStatics.exports);
  install(Module, "imports", OrigModule.imports);
  install(Module, "customSections", OrigModule.customSections);
  install(W, "compile", statics.compile);
  install(W, "instantiate", statics.instantiate);
  delete W.compileStreaming;
  delete W.instantiateStreaming;
});
