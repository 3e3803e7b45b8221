//! `isola.d.ts`: TypeScript declarations of what a plugin sees, generated from the host API.
//!
//! Why generated: `host` is whatever the embedder whitelisted, so no fixed file can type it.
//! The declarations come from the [`HostApi`] itself (with the types and docs given through
//! [`HostApi::describe`]), plus isola's own parts: `host.storage`, `host.events`,
//! `host.plugins`, `host.signal`, `console`, the web globals that exist inside a plugin (and
//! only those: no `fetch`, no `document`), and a `Plugin` type for the default export.
//!
//! The file is a global declaration file (no imports or exports), meant to be used with
//! `"lib": ["es2022"]` and no DOM library, as the `tsconfig.json` from `isola new` does.
//!
//! ```
//! let host = isola::HostApi::new().value("config", serde_json::json!({ "version": "1.2.3" }));
//! let dts = isola::typings::declarations(&host);
//! assert!(dts.contains("readonly config: { readonly version: string };"));
//! assert!(dts.contains("interface Plugin"));
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::host::{HostApi, HostItem};

/// The declarations for plugins of a host offering `host`, as the text of `isola.d.ts`.
pub fn declarations(host: &HostApi) -> String {
    let mut out = String::from(HEADER);
    out.push_str("\n/** What the host application offers this plugin, and isola's own services. */\n");
    out.push_str("declare const host: IsolaHost;\n\n");
    out.push_str("interface IsolaHost {\n");
    for (name, item) in host.items() {
        let described = host.description(name);
        let mut doc: Vec<String> = described.map(|d| d.doc.clone()).filter(|d| !d.is_empty()).into_iter().collect();
        let ts_type = match (described, item) {
            (Some(d), _) => d.ts_type.clone(),
            (None, HostItem::Sync(_)) => "(...args: any[]) => unknown".to_owned(),
            (None, HostItem::Async(_)) => "(...args: any[]) => Promise<unknown>".to_owned(),
            (None, HostItem::Value(v)) => json_type(v),
        };
        match item {
            HostItem::Async(_) => doc.push("Async: returns a promise.".into()),
            HostItem::Sync(_) => {}
            HostItem::Value(_) => doc.push("A deep-frozen copy of the host's value.".into()),
        }
        if let Some(p) = host.permission_of(name) {
            let absent = if matches!(item, HostItem::Value(_)) { "absent" } else { "a `PERMISSION_DENIED` error" };
            doc.push(format!("Needs the permission `{p}` in the plugin's manifest (without it: {absent})."));
        }
        write_doc(&mut out, "  ", &doc);
        let _ = writeln!(out, "  readonly {name}: {ts_type};");
    }
    out.push_str(HOST_SERVICES);
    out.push_str("}\n");
    out.push_str(PLATFORM);
    out
}

/// Writes `isola.d.ts` into `dir` (creating the folder if needed) and returns its path.
///
/// ```no_run
/// let path = isola::typings::write(&isola::HostApi::new(), "plugins/inventory").unwrap();
/// assert!(path.ends_with("isola.d.ts"));
/// ```
pub fn write(host: &HostApi, dir: impl AsRef<Path>) -> std::io::Result<PathBuf> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir)?;
    let path = dir.join("isola.d.ts");
    std::fs::write(&path, declarations(host))?;
    Ok(path)
}

fn write_doc(out: &mut String, indent: &str, lines: &[String]) {
    match lines {
        [] => {}
        [one] => {
            let _ = writeln!(out, "{indent}/** {} */", escape_doc(one));
        }
        many => {
            let _ = writeln!(out, "{indent}/**");
            for l in many {
                let _ = writeln!(out, "{indent} * {}", escape_doc(l));
            }
            let _ = writeln!(out, "{indent} */");
        }
    }
}

/// A doc line must not end the comment it sits in.
fn escape_doc(s: &str) -> String {
    s.replace("*/", "*\\/").replace('\n', " ")
}

/// The TypeScript type of a JSON value, as a frozen object literal type.
fn json_type(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "boolean".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(items) => {
            let mut types: Vec<String> = items.iter().map(json_type).collect();
            types.sort();
            types.dedup();
            match types.len() {
                0 => "readonly unknown[]".into(),
                1 => format!("readonly {}[]", parenthesised(&types[0])),
                _ => format!("readonly ({})[]", types.join(" | ")),
            }
        }
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Object(map) => {
            let fields: Vec<String> =
                map.iter().map(|(k, v)| format!("readonly {}: {}", property_name(k), json_type(v))).collect();
            format!("{{ {} }}", fields.join("; "))
        }
    }
}

fn parenthesised(t: &str) -> String {
    if t.contains(' ') && !t.starts_with('{') { format!("({t})") } else { t.to_owned() }
}

/// `k` as a property name: bare if it is an identifier, quoted otherwise.
fn property_name(k: &str) -> String {
    let mut chars = k.chars();
    let ident = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if ident { k.to_owned() } else { Value::String(k.to_owned()).to_string() }
}

const HEADER: &str = "\
// isola.d.ts: what an isola plugin sees, generated by `isola types` for one host application.
// Do not edit: run `isola types` again when the host's API changes. Use it with
// `\"lib\": [\"es2022\"]` and no DOM library (the tsconfig.json from `isola new` does).
// Types are for the editor: isola strips them at load and does not check them.
";

const HOST_SERVICES: &str = r#"  /**
   * This plugin's own storage: JSON values under string keys, private to the plugin and kept
   * across reloads and restarts. Needs the permission `storage`.
   */
  readonly storage: {
    /** The value under `key`, or `null` if there is none. */
    get<T = unknown>(key: string): T | null;
    /** Stores a JSON-serialisable value (within the plugin's storage quota). */
    set(key: string, value: unknown): void;
    /** Removes `key`; whether it was there. */
    delete(key: string): boolean;
    /** The keys starting with `prefix`, sorted. */
    list(prefix?: string): string[];
  };
  /** Events for other plugins. Needs the permission `events`. */
  readonly events: {
    /** Notifies every subscriber of `event` in the background; returns how many there are. */
    emit(event: string, payload?: unknown): number;
  };
  /** Other plugins' hooks. Needs the permission `call:PLUGIN` (or `call:*`). */
  readonly plugins: {
    /** Runs `hook` in plugin `plugin` with `args`, within what is left of this call's time. */
    call<T = unknown>(plugin: string, hook: string, ...args: unknown[]): Promise<T>;
  };
  /** Aborts when the call running now ends early (aborted by its caller, past its deadline, unloaded). */
  readonly signal: AbortSignal;
"#;

const PLATFORM: &str = r#"
/** The second argument of an event hook. */
interface IsolaEventContext {
  /** The event's name, e.g. `"chat"` or `"plugin:loaded"`. */
  readonly event: string;
}

/** What a hook in an event chain (`dispatch`) may return. */
type IsolaChainResult = void | undefined | { cancel: true } | { payload: unknown };

/** The payload of the lifecycle events (`plugin:loaded`, `plugin:reloaded`, `plugin:unloaded`, `plugin:errored`). */
interface IsolaLifecycleEvent {
  readonly plugin: string;
  readonly [field: string]: unknown;
}

/** An error thrown by a host function, a storage call or a plugin call: `code` is isola's error code. */
interface IsolaError extends Error {
  /** `PERMISSION_DENIED`, `TIMEOUT`, `INVALID_ARGS`, `HOST_ERROR`, `JS_ERROR`, ... */
  readonly code?: string;
  /** The host's own code, when the host gave one. */
  readonly hostCode?: unknown;
  /** The host's data about the failure, when it gave some. */
  readonly data?: unknown;
}

/**
 * A plugin's default export (`export default { ... } satisfies Plugin`): its hooks. A hook
 * gets the caller's arguments and returns a JSON value or a promise of one.
 */
interface Plugin {
  /** Runs before the first call; gets what the previous version's `onUnload` returned (`null` on a first load). */
  onLoad?(state: unknown): unknown;
  /** Runs before the plugin is replaced or unloaded; its JSON result goes to the next version's `onLoad`. */
  onUnload?(): unknown;
  [hook: string]: ((...args: any[]) => unknown) | undefined;
}

// ---- console: every line goes to the host's log ----
interface Console {
  log(...data: unknown[]): void;
  info(...data: unknown[]): void;
  debug(...data: unknown[]): void;
  trace(...data: unknown[]): void;
  warn(...data: unknown[]): void;
  error(...data: unknown[]): void;
  dir(item?: unknown): void;
  dirxml(...data: unknown[]): void;
  table(data: unknown, columns?: string[]): void;
  assert(condition?: boolean, ...data: unknown[]): void;
  count(label?: string): void;
  countReset(label?: string): void;
  group(...label: unknown[]): void;
  groupCollapsed(...label: unknown[]): void;
  groupEnd(): void;
  time(label?: string): void;
  timeLog(label?: string, ...data: unknown[]): void;
  timeEnd(label?: string): void;
}
declare var console: Console;

// ---- timers and tasks ----
declare function setTimeout(handler: (...args: any[]) => void, timeout?: number, ...args: any[]): number;
declare function setInterval(handler: (...args: any[]) => void, timeout?: number, ...args: any[]): number;
declare function clearTimeout(id: number | undefined): void;
declare function clearInterval(id: number | undefined): void;
declare function queueMicrotask(callback: () => void): void;
declare function reportError(e: unknown): void;
declare function structuredClone<T>(value: T, options?: { transfer?: never[] }): T;
declare function atob(data: string): string;
declare function btoa(data: string): string;
declare var self: typeof globalThis;

// ---- text ----
declare class TextEncoder {
  readonly encoding: "utf-8";
  encode(input?: string): Uint8Array;
  encodeInto(source: string, destination: Uint8Array): { read: number; written: number };
}
declare class TextDecoder {
  constructor(label?: string, options?: { fatal?: boolean; ignoreBOM?: boolean });
  readonly encoding: string;
  readonly fatal: boolean;
  readonly ignoreBOM: boolean;
  decode(input?: ArrayBuffer | ArrayBufferView, options?: { stream?: boolean }): string;
}

// ---- URLs ----
declare class URLSearchParams {
  constructor(init?: string | Record<string, string> | [string, string][] | URLSearchParams);
  readonly size: number;
  append(name: string, value: string): void;
  delete(name: string, value?: string): void;
  get(name: string): string | null;
  getAll(name: string): string[];
  has(name: string, value?: string): boolean;
  set(name: string, value: string): void;
  sort(): void;
  toString(): string;
  forEach(callback: (value: string, key: string, parent: URLSearchParams) => void): void;
  entries(): IterableIterator<[string, string]>;
  keys(): IterableIterator<string>;
  values(): IterableIterator<string>;
  [Symbol.iterator](): IterableIterator<[string, string]>;
}
declare class URL {
  constructor(url: string | URL, base?: string | URL);
  static canParse(url: string | URL, base?: string | URL): boolean;
  static parse(url: string | URL, base?: string | URL): URL | null;
  hash: string;
  host: string;
  hostname: string;
  href: string;
  readonly origin: string;
  password: string;
  pathname: string;
  port: string;
  protocol: string;
  search: string;
  readonly searchParams: URLSearchParams;
  username: string;
  toJSON(): string;
  toString(): string;
}

// ---- events and aborting ----
declare class Event {
  constructor(type: string, init?: { bubbles?: boolean; cancelable?: boolean; composed?: boolean });
  readonly type: string;
  readonly target: EventTarget | null;
  readonly currentTarget: EventTarget | null;
  readonly defaultPrevented: boolean;
  readonly cancelable: boolean;
  readonly timeStamp: number;
  preventDefault(): void;
  stopPropagation(): void;
  stopImmediatePropagation(): void;
}
declare class CustomEvent<T = unknown> extends Event {
  constructor(type: string, init?: { detail?: T; bubbles?: boolean; cancelable?: boolean });
  readonly detail: T;
}
type EventListenerOrObject = ((event: Event) => void) | { handleEvent(event: Event): void };
declare class EventTarget {
  addEventListener(
    type: string,
    listener: EventListenerOrObject | null,
    options?: boolean | { once?: boolean; passive?: boolean; capture?: boolean; signal?: AbortSignal },
  ): void;
  removeEventListener(type: string, listener: EventListenerOrObject | null, options?: boolean | { capture?: boolean }): void;
  dispatchEvent(event: Event): boolean;
}
declare class AbortSignal extends EventTarget {
  static abort(reason?: unknown): AbortSignal;
  static timeout(ms: number): AbortSignal;
  static any(signals: AbortSignal[]): AbortSignal;
  readonly aborted: boolean;
  readonly reason: any;
  onabort: ((event: Event) => void) | null;
  throwIfAborted(): void;
}
declare class AbortController {
  readonly signal: AbortSignal;
  abort(reason?: unknown): void;
}
declare class DOMException extends Error {
  constructor(message?: string, name?: string);
  readonly code: number;
}

// ---- crypto ----
interface CryptoKey {
  readonly type: string;
  readonly extractable: boolean;
  readonly algorithm: { name: string; [field: string]: unknown };
  readonly usages: string[];
}
declare var CryptoKey: { prototype: CryptoKey };
type IsolaBufferSource = ArrayBuffer | ArrayBufferView;
type IsolaAlgorithm = string | { name: string; [field: string]: unknown };
interface SubtleCrypto {
  digest(algorithm: IsolaAlgorithm, data: IsolaBufferSource): Promise<ArrayBuffer>;
  importKey(format: "raw" | "jwk", keyData: IsolaBufferSource | object, algorithm: IsolaAlgorithm, extractable: boolean, usages: string[]): Promise<CryptoKey>;
  exportKey(format: "raw" | "jwk", key: CryptoKey): Promise<ArrayBuffer | object>;
  generateKey(algorithm: IsolaAlgorithm, extractable: boolean, usages: string[]): Promise<CryptoKey>;
  sign(algorithm: IsolaAlgorithm, key: CryptoKey, data: IsolaBufferSource): Promise<ArrayBuffer>;
  verify(algorithm: IsolaAlgorithm, key: CryptoKey, signature: IsolaBufferSource, data: IsolaBufferSource): Promise<boolean>;
}
declare var crypto: {
  readonly subtle: SubtleCrypto;
  getRandomValues<T extends ArrayBufferView | null>(array: T): T;
  randomUUID(): `${string}-${string}-${string}-${string}-${string}`;
};

// ---- clocks and the rest ----
declare var performance: { now(): number; readonly timeOrigin: number };
declare var navigator: { readonly userAgent: string };
"#;
