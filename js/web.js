// The web platform globals every plugin gets (a WinterTC Minimum Common API subset without
// network, files or anything shared between plugins): DOMException, Event, EventTarget,
// AbortController, AbortSignal, TextEncoder, TextDecoder, atob, btoa, URL, URLSearchParams,
// structuredClone, crypto.getRandomValues / randomUUID, performance, navigator, self.
//
// Evaluated once, when the startup snapshot is built, so every isolate gets these classes by
// deserialising them: a plugin that never uses them pays almost nothing. What needs Rust
// (UTF-8 decoding, WHATWG URL parsing, the OS's random source, the clock) goes through the
// small ops in `src/runtime/web.rs`; every buffer handed to a plugin is allocated here, with
// `new Uint8Array`, so it is charged to the plugin's memory budget like any other.
//
// It leaves `globalThis.__isolaWeb` for the prelude (which deletes it): how to make and abort
// the AbortSignal behind `host.signal`, the clock, and where `reportError` reports.
(function isolaWeb(core) {
  "use strict";
  const {
    op_isola_utf8_decode,
    op_isola_utf8_length,
    op_isola_utf8_encode_into,
    op_isola_random_fill,
    op_isola_url_parse,
    op_isola_url_set,
    op_isola_form_parse,
    op_isola_form_serialize,
    op_isola_now,
    op_isola_time_origin,
    op_isola_timer_sleep,
    op_isola_timer_wake,
    op_isola_background,
    op_isola_digest,
    op_isola_hmac_sign,
    op_isola_hmac_verify,
  } = core.ops;
  const coreClone = core.structuredClone;
  const { defineProperty, freeze } = Object;

  function expose(name, value) {
    defineProperty(globalThis, name, { value, writable: true, enumerable: false, configurable: true });
  }

  // Set by the prelude: where reportError and throwing listeners report (the plugin's log).
  let reporter = (e) => {
    throw e;
  };
  function reportError(e) {
    reporter(e);
  }

  // ---- DOMException -------------------------------------------------------------------
  const legacyCodes = {
    IndexSizeError: 1, HierarchyRequestError: 3, WrongDocumentError: 4, InvalidCharacterError: 5,
    NoModificationAllowedError: 7, NotFoundError: 8, NotSupportedError: 9, InvalidStateError: 11,
    SyntaxError: 12, InvalidModificationError: 13, NamespaceError: 14, InvalidAccessError: 15,
    TypeMismatchError: 17, SecurityError: 18, NetworkError: 19, AbortError: 20, URLMismatchError: 21,
    QuotaExceededError: 22, TimeoutError: 23, InvalidNodeTypeError: 24, DataCloneError: 25,
  };
  const constantNames = {
    INDEX_SIZE_ERR: 1, DOMSTRING_SIZE_ERR: 2, HIERARCHY_REQUEST_ERR: 3, WRONG_DOCUMENT_ERR: 4,
    INVALID_CHARACTER_ERR: 5, NO_DATA_ALLOWED_ERR: 6, NO_MODIFICATION_ALLOWED_ERR: 7, NOT_FOUND_ERR: 8,
    NOT_SUPPORTED_ERR: 9, INUSE_ATTRIBUTE_ERR: 10, INVALID_STATE_ERR: 11, SYNTAX_ERR: 12,
    INVALID_MODIFICATION_ERR: 13, NAMESPACE_ERR: 14, INVALID_ACCESS_ERR: 15, VALIDATION_ERR: 16,
    TYPE_MISMATCH_ERR: 17, SECURITY_ERR: 18, NETWORK_ERR: 19, ABORT_ERR: 20, URL_MISMATCH_ERR: 21,
    QUOTA_EXCEEDED_ERR: 22, TIMEOUT_ERR: 23, INVALID_NODE_TYPE_ERR: 24, DATA_CLONE_ERR: 25,
  };
  class DOMException extends Error {
    #name;
    #code;
    constructor(message = "", name = "Error") {
      super(String(message));
      this.#name = String(name);
      this.#code = legacyCodes[this.#name] ?? 0;
    }
    get name() {
      return this.#name;
    }
    get code() {
      return this.#code;
    }
  }
  for (const [k, v] of Object.entries(constantNames)) {
    defineProperty(DOMException, k, { value: v, enumerable: true });
    defineProperty(DOMException.prototype, k, { value: v, enumerable: true });
  }

  // ---- Event, EventTarget ---------------------------------------------------------------
  let dispatching; // (event, target, phase) => void, set below
  let stoppedNow; // event => whether stopImmediatePropagation was called
  class Event {
    #type;
    #bubbles;
    #cancelable;
    #composed;
    #canceled = false;
    #target = null;
    #current = null;
    #phase = 0;
    #stopped = false;
    #stoppedNow = false;
    #inPassive = false;
    #timeStamp = op_isola_now();
    constructor(type, init = undefined) {
      if (arguments.length === 0) throw new TypeError("Event: 1 argument required, but only 0 present");
      this.#type = String(type);
      this.#bubbles = !!init?.bubbles;
      this.#cancelable = !!init?.cancelable;
      this.#composed = !!init?.composed;
    }
    get type() {
      return this.#type;
    }
    get bubbles() {
      return this.#bubbles;
    }
    get cancelable() {
      return this.#cancelable;
    }
    get composed() {
      return this.#composed;
    }
    get defaultPrevented() {
      return this.#canceled;
    }
    get returnValue() {
      return !this.#canceled;
    }
    get target() {
      return this.#target;
    }
    get srcElement() {
      return this.#target;
    }
    get currentTarget() {
      return this.#current;
    }
    get eventPhase() {
      return this.#phase;
    }
    get timeStamp() {
      return this.#timeStamp;
    }
    get isTrusted() {
      return false;
    }
    get cancelBubble() {
      return this.#stopped;
    }
    set cancelBubble(v) {
      if (v) this.#stopped = true;
    }
    preventDefault() {
      if (this.#cancelable && !this.#inPassive) this.#canceled = true;
    }
    stopPropagation() {
      this.#stopped = true;
    }
    stopImmediatePropagation() {
      this.#stopped = true;
      this.#stoppedNow = true;
    }
    composedPath() {
      return this.#current === null ? [] : [this.#current];
    }
    static {
      dispatching = (event, target, phase, passive) => {
        if (target !== undefined) {
          event.#target = target;
          event.#current = target;
        }
        if (target === null) {
          event.#current = null;
          event.#stopped = false;
          event.#stoppedNow = false;
        }
        event.#phase = phase;
        event.#inPassive = passive;
      };
      stoppedNow = (event) => event.#stoppedNow;
    }
  }
  for (const [k, v] of [["NONE", 0], ["CAPTURING_PHASE", 1], ["AT_TARGET", 2], ["BUBBLING_PHASE", 3]]) {
    defineProperty(Event, k, { value: v, enumerable: true });
    defineProperty(Event.prototype, k, { value: v, enumerable: true });
  }

  class CustomEvent extends Event {
    #detail;
    constructor(type, init = undefined) {
      super(type, init);
      this.#detail = init?.detail ?? null;
    }
    get detail() {
      return this.#detail;
    }
  }

  const inFlight = new WeakSet();
  class EventTarget {
    #listeners = new Map();
    addEventListener(type, callback, options = undefined) {
      if (callback === null || callback === undefined) return;
      type = String(type);
      const capture = typeof options === "boolean" ? options : !!options?.capture;
      const once = typeof options === "object" && !!options?.once;
      const passive = typeof options === "object" && !!options?.passive;
      const signal = typeof options === "object" ? options?.signal : undefined;
      if (signal !== undefined && !(signal instanceof AbortSignal)) {
        throw new TypeError("addEventListener: options.signal is not an AbortSignal");
      }
      if (signal?.aborted) return;
      let list = this.#listeners.get(type);
      if (list === undefined) this.#listeners.set(type, (list = []));
      if (list.some((l) => l.callback === callback && l.capture === capture)) return;
      const entry = { callback, capture, once, passive, removed: false };
      list.push(entry);
      signal?.addEventListener("abort", () => this.removeEventListener(type, callback, { capture }));
    }
    removeEventListener(type, callback, options = undefined) {
      const list = this.#listeners.get(String(type));
      if (list === undefined) return;
      const capture = typeof options === "boolean" ? options : !!options?.capture;
      const i = list.findIndex((l) => l.callback === callback && l.capture === capture);
      if (i >= 0) {
        list[i].removed = true;
        list.splice(i, 1);
      }
    }
    dispatchEvent(event) {
      if (!(event instanceof Event)) throw new TypeError("dispatchEvent: the argument is not an Event");
      if (inFlight.has(event)) throw new DOMException("The event is already being dispatched", "InvalidStateError");
      inFlight.add(event);
      dispatching(event, this, 2, false);
      try {
        const list = this.#listeners.get(event.type);
        for (const l of list === undefined ? [] : [...list]) {
          if (l.removed) continue;
          if (l.once) this.removeEventListener(event.type, l.callback, { capture: l.capture });
          dispatching(event, undefined, 2, l.passive);
          try {
            if (typeof l.callback === "function") l.callback.call(this, event);
            else if (typeof l.callback?.handleEvent === "function") l.callback.handleEvent(event);
          } catch (e) {
            reportError(e);
          }
          if (stoppedNow(event)) break;
        }
      } finally {
        dispatching(event, null, 0, false);
        inFlight.delete(event);
      }
      return !event.defaultPrevented;
    }
  }

  // ---- AbortController, AbortSignal -------------------------------------------------------
  const ILLEGAL = Symbol("illegal");
  let abortSignal; // (signal, reason) => void
  class AbortSignal extends EventTarget {
    #aborted = false;
    #reason = undefined;
    #onabort = null;
    constructor(key = undefined) {
      if (key !== ILLEGAL) throw new TypeError("Illegal constructor");
      super();
    }
    get aborted() {
      return this.#aborted;
    }
    get reason() {
      return this.#reason;
    }
    throwIfAborted() {
      if (this.#aborted) throw this.#reason;
    }
    get onabort() {
      return this.#onabort;
    }
    set onabort(f) {
      this.#onabort = typeof f === "function" ? f : null;
    }
    static abort(reason = undefined) {
      const s = new AbortSignal(ILLEGAL);
      abortSignal(s, reason);
      return s;
    }
    static any(signals) {
      const s = new AbortSignal(ILLEGAL);
      const all = [...signals];
      for (const other of all) {
        if (!(other instanceof AbortSignal)) throw new TypeError("AbortSignal.any: every item must be an AbortSignal");
        if (other.aborted) {
          abortSignal(s, other.reason);
          return s;
        }
      }
      for (const other of all) other.addEventListener("abort", () => abortSignal(s, other.reason), { once: true });
      return s;
    }
    static {
      abortSignal = (signal, reason) => {
        if (signal.#aborted) return;
        signal.#aborted = true;
        signal.#reason = reason === undefined ? new DOMException("This operation was aborted", "AbortError") : reason;
        const event = new Event("abort");
        if (signal.#onabort !== null) {
          try {
            signal.#onabort.call(signal, event);
          } catch (e) {
            reportError(e);
          }
        }
        signal.dispatchEvent(event);
      };
    }
  }

  class AbortController {
    #signal = new AbortSignal(ILLEGAL);
    get signal() {
      return this.#signal;
    }
    abort(reason = undefined) {
      abortSignal(this.#signal, reason);
    }
  }

  // ---- TextEncoder, TextDecoder -----------------------------------------------------------
  const counts = new Uint32Array(2);
  class TextEncoder {
    get encoding() {
      return "utf-8";
    }
    encode(input = "") {
      const s = String(input);
      const out = new Uint8Array(op_isola_utf8_length(s));
      op_isola_utf8_encode_into(s, out, counts);
      return out;
    }
    encodeInto(source, destination) {
      if (!(destination instanceof Uint8Array)) throw new TypeError("encodeInto: the destination is not a Uint8Array");
      op_isola_utf8_encode_into(String(source), destination, counts);
      return { read: counts[0], written: counts[1] };
    }
  }

  const utf8Labels = ["utf-8", "utf8", "unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8", "x-unicode20utf8"];
  const EMPTY = new Uint8Array(0);
  function bytesOf(input) {
    if (input instanceof ArrayBuffer || (typeof SharedArrayBuffer === "function" && input instanceof SharedArrayBuffer)) {
      return new Uint8Array(input);
    }
    if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    throw new TypeError("decode: the input must be an ArrayBuffer or an ArrayBufferView");
  }
  // Where the last complete UTF-8 sequence of `b` ends (a streaming decode keeps the rest).
  function completeLength(b) {
    const n = b.length;
    for (let i = n - 1; i >= 0 && i >= n - 4; i--) {
      const c = b[i];
      if ((c & 0xc0) === 0x80) continue;
      const need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
      return i + need > n ? i : n;
    }
    return n;
  }
  class TextDecoder {
    #fatal;
    #ignoreBOM;
    #pending = EMPTY;
    #streaming = false;
    constructor(label = "utf-8", options = undefined) {
      const l = String(label).trim().toLowerCase();
      if (!utf8Labels.includes(l)) throw new RangeError(`TextDecoder: the encoding "${label}" is not supported (isola decodes UTF-8 only)`);
      this.#fatal = !!options?.fatal;
      this.#ignoreBOM = !!options?.ignoreBOM;
    }
    get encoding() {
      return "utf-8";
    }
    get fatal() {
      return this.#fatal;
    }
    get ignoreBOM() {
      return this.#ignoreBOM;
    }
    decode(input = undefined, options = undefined) {
      let bytes = input === undefined ? EMPTY : bytesOf(input);
      const stream = !!options?.stream;
      if (this.#pending.length > 0) {
        const joined = new Uint8Array(this.#pending.length + bytes.length);
        joined.set(this.#pending);
        joined.set(bytes, this.#pending.length);
        bytes = joined;
      }
      const end = stream ? completeLength(bytes) : bytes.length;
      // A byte order mark is only looked for at the start of a stream.
      const skipBom = this.#ignoreBOM || this.#streaming;
      this.#pending = stream ? bytes.slice(end) : EMPTY;
      this.#streaming = stream && (this.#streaming || end > 0);
      return op_isola_utf8_decode(end === bytes.length ? bytes : bytes.subarray(0, end), this.#fatal, skipBom);
    }
  }

  // ---- atob, btoa -----------------------------------------------------------------------
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const B64_INDEX = new Int16Array(128).fill(-1);
  for (let i = 0; i < 64; i++) B64_INDEX[B64.charCodeAt(i)] = i;
  function btoa(data) {
    if (arguments.length === 0) throw new TypeError("btoa: 1 argument required");
    const s = String(data);
    const out = [];
    for (let i = 0; i < s.length; i += 3) {
      const a = s.charCodeAt(i);
      const b = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      const c = i + 2 < s.length ? s.charCodeAt(i + 2) : 0;
      if (a > 255 || b > 255 || c > 255) {
        throw new DOMException("btoa: the string contains characters outside of the Latin1 range", "InvalidCharacterError");
      }
      const n = (a << 16) | (b << 8) | c;
      out.push(
        B64[n >> 18] + B64[(n >> 12) & 63] + (i + 1 < s.length ? B64[(n >> 6) & 63] : "=") + (i + 2 < s.length ? B64[n & 63] : "="),
      );
    }
    return out.join("");
  }
  function atob(data) {
    if (arguments.length === 0) throw new TypeError("atob: 1 argument required");
    let s = String(data).replace(/[\t\n\f\r ]+/g, "");
    if (s.length % 4 === 0) s = s.replace(/={1,2}$/, "");
    const bad = () => new DOMException("atob: the string to be decoded is not correctly encoded", "InvalidCharacterError");
    if (s.length % 4 === 1) throw bad();
    const out = [];
    let bits = 0;
    let count = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      const v = c < 128 ? B64_INDEX[c] : -1;
      if (v < 0) throw bad();
      bits = (bits << 6) | v;
      count += 6;
      if (count >= 8) {
        count -= 8;
        out.push((bits >> count) & 0xff);
      }
    }
    let text = "";
    for (let i = 0; i < out.length; i += 8192) text += String.fromCharCode.apply(null, out.slice(i, i + 8192));
    return text;
  }

  // ---- URL, URLSearchParams ---------------------------------------------------------------
  const P = { href: 0, origin: 1, protocol: 2, username: 3, password: 4, host: 5, hostname: 6, port: 7, pathname: 8, search: 9, hash: 10 };
  let setQuery; // (url, serialized query) => void
  let reparse; // (params, query) => void
  let linked; // (url) => URLSearchParams bound to it
  function parse(url, base) {
    return base === undefined ? op_isola_url_parse(String(url), "", false) : op_isola_url_parse(String(url), String(base), true);
  }
  class URL {
    #p;
    #params = null;
    constructor(url, base = undefined) {
      if (arguments.length === 0) throw new TypeError("URL: 1 argument required, but only 0 present");
      const p = parse(url, base);
      if (p === null) throw new TypeError(`Invalid URL: '${url}'` + (base === undefined ? "" : ` with base '${base}'`));
      this.#p = p;
    }
    static canParse(url, base = undefined) {
      return parse(url, base) !== null;
    }
    static parse(url, base = undefined) {
      try {
        return new URL(url, base);
      } catch {
        return null;
      }
    }
    #set(part, value) {
      const p = op_isola_url_set(this.#p[0], part, String(value));
      if (p === null) throw new TypeError(`Invalid URL: '${value}'`);
      this.#p = p;
      if (this.#params !== null && (part === P.href || part === P.search)) reparse(this.#params, p[P.search]);
    }
    get href() {
      return this.#p[P.href];
    }
    set href(v) {
      this.#set(P.href, v);
    }
    get origin() {
      return this.#p[P.origin];
    }
    get protocol() {
      return this.#p[P.protocol];
    }
    set protocol(v) {
      this.#set(P.protocol, v);
    }
    get username() {
      return this.#p[P.username];
    }
    set username(v) {
      this.#set(P.username, v);
    }
    get password() {
      return this.#p[P.password];
    }
    set password(v) {
      this.#set(P.password, v);
    }
    get host() {
      return this.#p[P.host];
    }
    set host(v) {
      this.#set(P.host, v);
    }
    get hostname() {
      return this.#p[P.hostname];
    }
    set hostname(v) {
      this.#set(P.hostname, v);
    }
    get port() {
      return this.#p[P.port];
    }
    set port(v) {
      this.#set(P.port, v);
    }
    get pathname() {
      return this.#p[P.pathname];
    }
    set pathname(v) {
      this.#set(P.pathname, v);
    }
    get search() {
      return this.#p[P.search];
    }
    set search(v) {
      this.#set(P.search, v);
    }
    get hash() {
      return this.#p[P.hash];
    }
    set hash(v) {
      this.#set(P.hash, v);
    }
    get searchParams() {
      if (this.#params === null) this.#params = linked(this);
      return this.#params;
    }
    toString() {
      return this.#p[P.href];
    }
    toJSON() {
      return this.#p[P.href];
    }
    static {
      setQuery = (url, query) => {
        url.#p = op_isola_url_set(url.#p[0], P.search, query) ?? url.#p;
      };
    }
  }

  const LINK = Symbol("link");
  class URLSearchParams {
    #list = [];
    #url = null;
    constructor(init = "", url = undefined) {
      if (init === LINK) {
        this.#url = url;
        this.#list = op_isola_form_parse(url.search.slice(1));
        return;
      }
      if (init instanceof URLSearchParams) {
        this.#list = init.#list.map(([n, v]) => [n, v]);
      } else if (typeof init === "object" && init !== null || typeof init === "function") {
        if (typeof init[Symbol.iterator] === "function") {
          for (const pair of init) {
            const p = [...pair];
            if (p.length !== 2) throw new TypeError("URLSearchParams: each pair must be a [name, value] sequence");
            this.#list.push([String(p[0]), String(p[1])]);
          }
        } else {
          for (const k of Reflect.ownKeys(init)) {
            if (typeof k === "string" && Object.getOwnPropertyDescriptor(init, k)?.enumerable) {
              this.#list.push([k, String(init[k])]);
            }
          }
        }
      } else {
        let s = String(init);
        if (s.startsWith("?")) s = s.slice(1);
        this.#list = op_isola_form_parse(s);
      }
    }
    #update() {
      if (this.#url !== null) setQuery(this.#url, this.#list.length === 0 ? "" : this.toString());
    }
    get size() {
      return this.#list.length;
    }
    append(name, value) {
      this.#list.push([String(name), String(value)]);
      this.#update();
    }
    delete(name, value = undefined) {
      name = String(name);
      const v = value === undefined ? undefined : String(value);
      this.#list = this.#list.filter(([n, x]) => !(n === name && (v === undefined || x === v)));
      this.#update();
    }
    get(name) {
      name = String(name);
      const e = this.#list.find(([n]) => n === name);
      return e === undefined ? null : e[1];
    }
    getAll(name) {
      name = String(name);
      return this.#list.filter(([n]) => n === name).map(([, v]) => v);
    }
    has(name, value = undefined) {
      name = String(name);
      const v = value === undefined ? undefined : String(value);
      return this.#list.some(([n, x]) => n === name && (v === undefined || x === v));
    }
    set(name, value) {
      name = String(name);
      value = String(value);
      const i = this.#list.findIndex(([n]) => n === name);
      if (i < 0) this.#list.push([name, value]);
      else {
        this.#list[i] = [name, value];
        this.#list = this.#list.filter(([n], j) => j <= i || n !== name);
      }
      this.#update();
    }
    sort() {
      // Stable, by UTF-16 code units, as the standard says.
      this.#list = this.#list
        .map((e, i) => [e, i])
        .sort(([a, i], [b, j]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : i - j))
        .map(([e]) => e);
      this.#update();
    }
    toString() {
      return op_isola_form_serialize(this.#list);
    }
    forEach(callback, thisArg = undefined) {
      if (typeof callback !== "function") throw new TypeError("forEach: the callback is not a function");
      for (let i = 0; i < this.#list.length; i++) callback.call(thisArg, this.#list[i][1], this.#list[i][0], this);
    }
    *entries() {
      for (let i = 0; i < this.#list.length; i++) yield [this.#list[i][0], this.#list[i][1]];
    }
    *keys() {
      for (let i = 0; i < this.#list.length; i++) yield this.#list[i][0];
    }
    *values() {
      for (let i = 0; i < this.#list.length; i++) yield this.#list[i][1];
    }
    [Symbol.iterator]() {
      return this.entries();
    }
    static {
      reparse = (params, query) => {
        params.#list = op_isola_form_parse(query.startsWith("?") ? query.slice(1) : query);
      };
      linked = (url) => new URLSearchParams(LINK, url);
    }
  }

  // ---- structuredClone --------------------------------------------------------------------
  function structuredClone(value, options = undefined) {
    if (arguments.length === 0) throw new TypeError("structuredClone: 1 argument required, but only 0 present");
    if (options?.transfer !== undefined && [...options.transfer].length > 0) {
      throw new DOMException("structuredClone: transferring is not supported in isola", "DataCloneError");
    }
    try {
      return coreClone(value);
    } catch (e) {
      // V8's serializer says "... could not be cloned."; the standard calls that DataCloneError.
      if (e instanceof Error && !(e instanceof DOMException) && / could not be cloned\.?$/.test(e.message)) {
        throw new DOMException(e.message, "DataCloneError");
      }
      throw e;
    }
  }

  // ---- crypto -------------------------------------------------------------------------------
  function getRandomValues(array) {
    const integer =
      array instanceof Int8Array || array instanceof Uint8Array || array instanceof Uint8ClampedArray ||
      array instanceof Int16Array || array instanceof Uint16Array || array instanceof Int32Array ||
      array instanceof Uint32Array || array instanceof BigInt64Array || array instanceof BigUint64Array;
    if (!integer) throw new DOMException("getRandomValues: the argument must be an integer typed array", "TypeMismatchError");
    if (array.byteLength > 65536) {
      throw new DOMException(
        `getRandomValues: the array's byte length (${array.byteLength}) exceeds the 65536 bytes of entropy available`,
        "QuotaExceededError",
      );
    }
    op_isola_random_fill(new Uint8Array(array.buffer, array.byteOffset, array.byteLength));
    return array;
  }
  const HEX = [];
  for (let i = 0; i < 256; i++) HEX.push((i + 0x100).toString(16).slice(1));
  function randomUUID() {
    const b = new Uint8Array(16);
    op_isola_random_fill(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = (i) => HEX[b[i]];
    return `${h(0)}${h(1)}${h(2)}${h(3)}-${h(4)}${h(5)}-${h(6)}${h(7)}-${h(8)}${h(9)}-${h(10)}${h(11)}${h(12)}${h(13)}${h(14)}${h(15)}`;
  }
  // crypto.subtle: SHA digests and HMAC keys (sign, verify, import, export, generate).
  const HASHES = { "SHA-1": [20, 64], "SHA-256": [32, 64], "SHA-384": [48, 128], "SHA-512": [64, 128] };
  const notSupported = (what) => new DOMException(`${what} is not supported by isola's crypto.subtle`, "NotSupportedError");
  function algorithmName(a) {
    const name = typeof a === "string" ? a : a?.name;
    if (typeof name !== "string") throw new TypeError("the algorithm must be a name or an object with a name");
    return name.toUpperCase();
  }
  function hashName(a) {
    const n = algorithmName(a);
    if (!(n in HASHES)) throw notSupported(`the hash ${n}`);
    return n;
  }
  // A copy of a BufferSource's bytes (what the caller does with it afterwards cannot matter).
  function bytesCopy(data) {
    if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0));
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    throw new TypeError("the data must be an ArrayBuffer or an ArrayBufferView");
  }
  const keyBytes = new WeakMap();
  class CryptoKey {
    #type;
    #extractable;
    #algorithm;
    #usages;
    constructor(key = undefined, type, extractable, algorithm, usages) {
      if (key !== ILLEGAL) throw new TypeError("Illegal constructor");
      this.#type = type;
      this.#extractable = extractable;
      this.#algorithm = freeze(algorithm);
      this.#usages = freeze([...usages]);
    }
    get type() {
      return this.#type;
    }
    get extractable() {
      return this.#extractable;
    }
    get algorithm() {
      return this.#algorithm;
    }
    get usages() {
      return this.#usages;
    }
  }
  function hmacKey(bytes, hash, extractable, usages) {
    usages = [...usages];
    if (usages.length === 0) throw new DOMException("a secret key needs at least one usage", "SyntaxError");
    for (const u of usages) {
      if (u !== "sign" && u !== "verify") throw new DOMException(`an HMAC key cannot be used to ${u}`, "SyntaxError");
    }
    const key = new CryptoKey(ILLEGAL, "secret", !!extractable, { name: "HMAC", hash: { name: hash }, length: bytes.length * 8 }, usages);
    keyBytes.set(key, bytes);
    return key;
  }
  function usableFor(key, usage) {
    if (!(key instanceof CryptoKey)) throw new TypeError("the key must be a CryptoKey");
    if (!key.usages.includes(usage)) throw new DOMException(`the key may not be used to ${usage}`, "InvalidAccessError");
    return keyBytes.get(key);
  }
  const subtle = {
    async digest(algorithm, data) {
      const name = hashName(algorithm);
      const out = new Uint8Array(HASHES[name][0]);
      op_isola_digest(name, bytesCopy(data), out);
      return out.buffer;
    },
    async importKey(format, keyData, algorithm, extractable, usages) {
      if (algorithmName(algorithm) !== "HMAC") throw notSupported(`importing ${algorithmName(algorithm)} keys`);
      const hash = hashName(algorithm.hash);
      let bytes;
      if (format === "raw") bytes = bytesCopy(keyData);
      else if (format === "jwk" && keyData?.kty === "oct" && typeof keyData.k === "string") {
        bytes = Uint8Array.from(atob(keyData.k.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
      } else throw notSupported(`the key format ${format}`);
      if (bytes.length === 0) throw new DOMException("an HMAC key must not be empty", "DataError");
      return hmacKey(bytes, hash, extractable, usages);
    },
    async exportKey(format, key) {
      if (!(key instanceof CryptoKey)) throw new TypeError("the key must be a CryptoKey");
      if (!key.extractable) throw new DOMException("the key is not extractable", "InvalidAccessError");
      const bytes = keyBytes.get(key);
      if (format === "raw") return bytes.slice().buffer;
      if (format === "jwk") {
        let text = "";
        for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
        const k = btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
        return { kty: "oct", k, alg: "HS" + key.algorithm.hash.name.slice(4), ext: true, key_ops: [...key.usages] };
      }
      throw notSupported(`the key format ${format}`);
    },
    async generateKey(algorithm, extractable, usages) {
      if (algorithmName(algorithm) !== "HMAC") throw notSupported(`generating ${algorithmName(algorithm)} keys`);
      const hash = hashName(algorithm.hash);
      const bits = algorithm.length ?? HASHES[hash][1] * 8;
      if (!(bits > 0) || bits % 8 !== 0 || bits > 8192) throw new DOMException("unsupported HMAC key length", "OperationError");
      const bytes = new Uint8Array(bits / 8);
      op_isola_random_fill(bytes);
      return hmacKey(bytes, hash, extractable, usages);
    },
    async sign(algorithm, key, data) {
      if (algorithmName(algorithm) !== "HMAC") throw notSupported(`signing with ${algorithmName(algorithm)}`);
      const bytes = usableFor(key, "sign");
      const hash = key.algorithm.hash.name;
      const out = new Uint8Array(HASHES[hash][0]);
      op_isola_hmac_sign(hash, bytes, bytesCopy(data), out);
      return out.buffer;
    },
    async verify(algorithm, key, signature, data) {
      if (algorithmName(algorithm) !== "HMAC") throw notSupported(`verifying with ${algorithmName(algorithm)}`);
      const bytes = usableFor(key, "verify");
      return op_isola_hmac_verify(key.algorithm.hash.name, bytes, bytesCopy(data), bytesCopy(signature));
    },
  };
  freeze(subtle);

  class Crypto {
    constructor(key = undefined) {
      if (key !== ILLEGAL) throw new TypeError("Illegal constructor");
    }
    getRandomValues(array) {
      return getRandomValues(array);
    }
    randomUUID() {
      return randomUUID();
    }
    get subtle() {
      return subtle;
    }
  }

  // ---- timers -------------------------------------------------------------------------------
  // One table of live timers and a min-heap of (due, seq, id), entries made stale by a clear or
  // a reschedule are skipped. One async "pump" sleeps (an op) until the earliest is due, runs
  // what is due, and ends when no timer is left. During a call the call's event loop drives
  // it; between calls the plugin's thread does (see `PluginIsolate::background`), each turn
  // under the plugin's call time limit.
  const MAX_TIMERS = 10000;
  const MAX_DELAY = 2147483647;
  const timers = new Map();
  const heap = [];
  let timerSeq = 0;
  let nextTimerId = 1;
  let pumping = false;
  let armed = Infinity;
  const before = (a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
  function heapPush(e) {
    heap.push(e);
    for (let i = heap.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (!before(heap[i], heap[p])) break;
      [heap[i], heap[p]] = [heap[p], heap[i]];
      i = p;
    }
  }
  function heapPop() {
    const last = heap.pop();
    if (heap.length === 0) return;
    heap[0] = last;
    for (let i = 0; ; ) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && before(heap[l], heap[m])) m = l;
      if (r < heap.length && before(heap[r], heap[m])) m = r;
      if (m === i) break;
      [heap[i], heap[m]] = [heap[m], heap[i]];
      i = m;
    }
  }
  // The heap again from the live timers alone.
  function rebuildHeap() {
    heap.length = 0;
    for (const [id, t] of timers) heapPush([t.due, t.seq, id]);
  }
  function earliest() {
    while (heap.length > 0) {
      const [due, seq, id] = heap[0];
      const t = timers.get(id);
      if (t !== undefined && t.due === due && t.seq === seq) return heap[0];
      heapPop();
    }
    return undefined;
  }
  // Which pump is the one: a restart (after isola terminated JavaScript) retires the pump
  // there was, running or cut off, and starts another. Why a number and not a check whether
  // the old pump still lives: a termination can land anywhere, also between the sleep op
  // starting and the pump awaiting it, which leaves a sleep in flight that nothing resumes.
  let pumpGen = 0;
  // One timer per turn of the event loop: every callback waits for an op first, so other
  // work (host answers, a call's own promise) gets its turn in between, and each background
  // turn of the plugin's thread runs at most one callback under its time limit.
  async function pump(firstWait) {
    const gen = ++pumpGen;
    pumping = true;
    try {
      let atLeast = firstWait;
      for (;;) {
        const next = earliest();
        if (next === undefined) return;
        armed = next[0];
        const wait = Math.max(armed - op_isola_now(), atLeast);
        atLeast = 0;
        await op_isola_timer_sleep(wait);
        if (gen !== pumpGen) return; // retired while it slept
        const due = earliest();
        if (due === undefined || due[0] > op_isola_now()) continue; // woken early: look again
        heapPop();
        const id = due[2];
        const t = timers.get(id);
        // Rescheduled before it runs, so that an interval whose callback is cut off (past the
        // time limit) keeps its place; one slower than its period still gets a turn of its
        // own each time (every callback waits for the op above first).
        if (t.every > 0) {
          t.due = op_isola_now() + t.every;
          t.seq = timerSeq++;
          heapPush([t.due, t.seq, id]);
        } else {
          timers.delete(id);
        }
        try {
          t.f.apply(globalThis, t.args);
        } catch (e) {
          reportError(e);
        }
      }
    } finally {
      if (gen === pumpGen) {
        pumping = false;
        armed = Infinity;
      }
    }
  }
  function startPump(firstWait) {
    op_isola_background();
    pump(firstWait).catch(reportError);
  }
  function addTimer(f, ms, args, repeat) {
    if (typeof f !== "function") {
      throw new TypeError("the timer callback must be a function (isola does not evaluate code strings)");
    }
    if (timers.size >= MAX_TIMERS) {
      throw new DOMException(`a plugin may have at most ${MAX_TIMERS} timers pending`, "QuotaExceededError");
    }
    let delay = Number(ms);
    if (!(delay >= 1) || delay > MAX_DELAY) delay = 1;
    const id = nextTimerId++;
    const t = { f, args, due: op_isola_now() + delay, every: repeat ? delay : 0, seq: timerSeq++ };
    timers.set(id, t);
    heapPush([t.due, t.seq, id]);
    // Cleared timers leave entries behind: keep the heap within a small multiple of the live.
    if (heap.length > 2 * timers.size + 64) rebuildHeap();
    if (!pumping) startPump(0);
    else if (t.due < armed) op_isola_timer_wake();
    return id;
  }
  function clearTimer(id) {
    if (timers.delete(Number(id)) && timers.size === 0 && pumping) op_isola_timer_wake();
  }
  const setTimeout = (f, ms = 0, ...args) => addTimer(f, ms, args, false);
  const setInterval = (f, ms = 0, ...args) => addTimer(f, ms, args, true);
  const clearTimeout = (id = undefined) => clearTimer(id);
  const clearInterval = (id = undefined) => clearTimer(id);
  // After isola terminated JavaScript (a call or a callback past its time limit): the pump
  // may have been cut off anywhere, so it is retired (woken, if it sleeps, it ends) and a
  // new one serves the timers that are left.
  function restartTimers() {
    if (!pumping && timers.size === 0) return;
    pumpGen++;
    pumping = false;
    armed = Infinity;
    op_isola_timer_wake();
    rebuildHeap();
    // Not a callback now: isola calls this with a short limit of its own.
    if (timers.size > 0) startPump(1);
  }
  defineProperty(AbortSignal, "timeout", {
    value: function timeout(ms) {
      const s = new AbortSignal(ILLEGAL);
      addTimer(() => abortSignal(s, new DOMException("The operation timed out", "TimeoutError")), ms, [], false);
      return s;
    },
    writable: true,
    configurable: true,
  });

  // ---- performance, navigator -------------------------------------------------------------
  class Performance {
    constructor(key = undefined) {
      if (key !== ILLEGAL) throw new TypeError("Illegal constructor");
    }
    now() {
      return op_isola_now();
    }
    get timeOrigin() {
      return op_isola_time_origin();
    }
    toJSON() {
      return { timeOrigin: this.timeOrigin };
    }
  }
  class Navigator {
    constructor(key = undefined) {
      if (key !== ILLEGAL) throw new TypeError("Illegal constructor");
    }
    get userAgent() {
      return "isola/__ISOLA_VERSION__";
    }
  }

  expose("DOMException", DOMException);
  expose("Event", Event);
  expose("CustomEvent", CustomEvent);
  expose("EventTarget", EventTarget);
  expose("AbortController", AbortController);
  expose("AbortSignal", AbortSignal);
  expose("TextEncoder", TextEncoder);
  expose("TextDecoder", TextDecoder);
  expose("atob", atob);
  expose("btoa", btoa);
  expose("URL", URL);
  expose("URLSearchParams", URLSearchParams);
  expose("structuredClone", structuredClone);
  expose("reportError", reportError);
  expose("Crypto", Crypto);
  expose("CryptoKey", CryptoKey);
  expose("crypto", new Crypto(ILLEGAL));
  expose("Performance", Performance);
  expose("performance", new Performance(ILLEGAL));
  expose("Navigator", Navigator);
  expose("navigator", new Navigator(ILLEGAL));
  expose("self", globalThis);
  expose("setTimeout", setTimeout);
  expose("setInterval", setInterval);
  expose("clearTimeout", clearTimeout);
  expose("clearInterval", clearInterval);

  // For the prelude only (it deletes this global before plugin code runs).
  globalThis.__isolaWeb = freeze({
    newSignal: () => new AbortSignal(ILLEGAL),
    abort: (signal, reason) => abortSignal(signal, reason),
    now: () => op_isola_now(),
    restartTimers,
    // In parentheses so the snapshot holds it compiled (`src/runtime/snapshot_build.rs`).
    setReporter: ((f) => {
      reporter = f;
    }),
  });
})(globalThis.Deno.core);
