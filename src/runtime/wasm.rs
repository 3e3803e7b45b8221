//! WebAssembly inside the memory budget: what isola changes in a module before V8 compiles
//! it, and the ops behind the `WebAssembly` wrappers at the end of `js/web.js`.
//!
//! Why a module is rewritten: V8 allocates a wasm memory itself, outside the ArrayBuffer
//! allocator that charges budgets, and grows it from inside wasm code (`memory.grow`) where
//! no JavaScript can watch. isola counts every memory by holding its backing store, whose
//! length V8 keeps current as it grows (see [`MemoryBudget::track_wasm`]); to hold it, isola
//! must see the memory. A module's own memory is visible only if the module exports it, so
//! isola exports every memory the module defines under a hidden name, which the wrappers
//! take out of `instance.exports` again. Three more changes keep the count whole:
//! - each defined memory's maximum is capped at the plugin's budget, so no single memory can
//!   ever grow past it (V8 also reserves less address space);
//! - the start function is not run by V8 during instantiation but by the wrapper right after
//!   it has counted the new memories: otherwise a start function could fill memory nobody
//!   counts yet;
//! - shared memories are refused: a plugin has one thread, and a shared memory is a buffer
//!   that could outlive its isolate.
//!
//! Everything else in the module is copied byte for byte; V8 validates and compiles it.

use std::cell::RefCell;
use std::sync::Arc;

use deno_core::{OpState, op2, v8};
use deno_error::JsErrorBox;
use wasm_encoder::{ExportKind, ExportSection, MemorySection, MemoryType, RawSection, Section};
use wasmparser::{BinaryReader, ExportSectionReader, ExternalKind, ImportSectionReader, MemorySectionReader, TypeRef};

use super::memory::{MemoryBudget, WASM_POLL};
use super::throw::throw;
use super::watchdog::look_again_within;

/// The largest module isola compiles. Why a cap: V8 compiles a module on the plugin's thread
/// in one step that termination does not interrupt, so a module's size bounds how long a
/// compile can run past a call's deadline (and the copy isola makes while rewriting it).
pub(crate) const MAX_MODULE_BYTES: usize = 32 << 20;

/// Prefix of the names under which isola exports what it needs from a module (its memories,
/// its start function). A NUL cannot be typed into an identifier, so no toolchain picks it.
pub(crate) const HIDDEN_PREFIX: &str = "\0isola:";

/// Section ids (the WebAssembly core spec, 5.5.2).
const CUSTOM: u8 = 0;
const IMPORT: u8 = 2;
const MEMORY: u8 = 5;
const EXPORT: u8 = 7;
const START: u8 = 8;

/// Where a section would stand in a module, by id: the export section goes before the first
/// section ranked after it (start, element, data count, code, data).
fn rank(id: u8) -> u8 {
    match id {
        1..=5 => id,
        13 => 6, // tag, between memory and global
        6 => 7,
        7 => 8,
        8 => 9,
        9 => 10,
        12 => 11, // data count, before code
        10 => 12,
        11 => 13,
        _ => 0,
    }
}

/// The result of [`prepare`]: the module isola compiles instead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// Nothing to change: compile the bytes as given.
    AsIs,
    /// Compile these bytes.
    Rewritten(Vec<u8>),
}

/// Rewrites a module so that each memory it defines is capped at `max_bytes`, exported, and
/// counted before its start function runs (see the file's header). Errors name what is
/// wrong; the wrapper turns them into a `WebAssembly.CompileError`.
pub(crate) fn prepare(bytes: &[u8], max_bytes: u64) -> Result<Prepared, String> {
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(format!(
            "the module is {} MiB; isola compiles modules of at most {} MiB",
            bytes.len() >> 20,
            MAX_MODULE_BYTES >> 20
        ));
    }
    let sections = split(bytes)?;
    let mut imported_memories = 0u32;
    let mut memories: Vec<MemoryType> = Vec::new();
    let mut exports: Vec<(String, ExportKind, u32)> = Vec::new();
    let mut start: Option<u32> = None;
    let mut capped = false;
    for s in &sections {
        let reader = BinaryReader::new(s.content, s.offset);
        match s.id {
            IMPORT => {
                for import in ImportSectionReader::new(reader).map_err(|e| e.to_string())?.into_imports() {
                    if let TypeRef::Memory(m) = import.map_err(|e| e.to_string())?.ty {
                        if m.shared {
                            return Err(shared_refused());
                        }
                        imported_memories += 1;
                    }
                }
            }
            MEMORY => {
                for m in MemorySectionReader::new(reader).map_err(|e| e.to_string())? {
                    let m = m.map_err(|e| e.to_string())?;
                    if m.shared {
                        return Err(shared_refused());
                    }
                    let cap = (max_bytes >> m.page_size_log2()).max(m.initial);
                    if m.maximum.is_none_or(|max| max > cap) {
                        capped = true;
                    }
                    memories.push(MemoryType {
                        minimum: m.initial,
                        maximum: Some(m.maximum.map_or(cap, |max| max.min(cap))),
                        memory64: m.memory64,
                        shared: false,
                        page_size_log2: m.page_size_log2,
                    });
                }
            }
            EXPORT => {
                for e in ExportSectionReader::new(reader).map_err(|e| e.to_string())? {
                    let e = e.map_err(|e| e.to_string())?;
                    exports.push((e.name.to_owned(), export_kind(e.kind), e.index));
                }
            }
            START => {
                start = Some(BinaryReader::new(s.content, s.offset).read_var_u32().map_err(|e| e.to_string())?);
            }
            _ => {}
        }
    }
    let mut hidden = Vec::new();
    for i in 0..memories.len() as u32 {
        let index = imported_memories + i;
        if !exports.iter().any(|(_, kind, at)| *kind == ExportKind::Memory && *at == index) {
            hidden.push((format!("{HIDDEN_PREFIX}memory:{index}"), ExportKind::Memory, index));
        }
    }
    if let Some(f) = start {
        hidden.push((format!("{HIDDEN_PREFIX}start"), ExportKind::Func, f));
    }
    if !capped && hidden.is_empty() {
        return Ok(Prepared::AsIs);
    }
    exports.retain(|(name, _, _)| !name.starts_with(HIDDEN_PREFIX));
    exports.extend(hidden);
    let mut export_section = ExportSection::new();
    for (name, kind, index) in &exports {
        export_section.export(name, *kind, *index);
    }
    let mut memory_section = MemorySection::new();
    for m in &memories {
        memory_section.memory(*m);
    }

    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.extend_from_slice(&bytes[..8]);
    let mut exports_written = false;
    for s in &sections {
        if !exports_written && s.id != CUSTOM && rank(s.id) > rank(EXPORT) {
            write_section(&mut out, &export_section);
            exports_written = true;
        }
        match s.id {
            MEMORY => write_section(&mut out, &memory_section),
            EXPORT => {
                write_section(&mut out, &export_section);
                exports_written = true;
            }
            START => {} // the wrapper calls it
            id => write_section(&mut out, &RawSection { id, data: s.content }),
        }
    }
    if !exports_written {
        write_section(&mut out, &export_section);
    }
    Ok(Prepared::Rewritten(out))
}

fn shared_refused() -> String {
    "shared memories are not available: a plugin runs on one thread".to_owned()
}

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

fn write_section(out: &mut Vec<u8>, section: &impl Section) {
    out.push(section.id());
    wasm_encoder::Encode::encode(section, out);
}

/// One section of a module: its id and contents (`offset`: where they start, for errors).
struct RawPart<'a> {
    id: u8,
    content: &'a [u8],
    offset: u64,
}

/// Splits a module into its sections (only the framing is read here).
fn split(bytes: &[u8]) -> Result<Vec<RawPart<'_>>, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly module (it does not start with \\0asm)".to_owned());
    }
    if bytes[4..8] != [1, 0, 0, 0] {
        return Err("not a WebAssembly core module of version 1".to_owned());
    }
    let mut parts = Vec::new();
    let mut reader = BinaryReader::new(&bytes[8..], 8);
    while !reader.eof() {
        let id = reader.read_u8().map_err(|e| e.to_string())?;
        let len = reader.read_var_u32().map_err(|e| e.to_string())? as usize;
        let offset = reader.original_position();
        let content = reader.read_bytes(len).map_err(|e| format!("section {id} at byte {offset}: {e}"))?;
        parts.push(RawPart { id, content, offset });
    }
    Ok(parts)
}

/// What `op_isola_wasm_prepare` produced, until `op_isola_wasm_take` copies it into a buffer
/// the plugin's budget pays for.
#[derive(Default)]
struct PreparedBytes(Vec<u8>);

/// The memory budget, for the ops below (put into the op state when the isolate is made).
pub(crate) struct WasmBudget(pub Arc<MemoryBudget>);

/// The weak handles whose finalizers stop counting a memory once it is garbage.
#[derive(Default)]
struct Watched(RefCell<Vec<v8::Weak<v8::WasmMemoryObject>>>);

fn budget(state: &OpState) -> Result<Arc<MemoryBudget>, JsErrorBox> {
    state
        .try_borrow::<WasmBudget>()
        .map(|b| b.0.clone())
        .ok_or_else(|| JsErrorBox::generic("WebAssembly is not available while the snapshot is built"))
}

/// Prepares a module for compiling: 0 means "compile the bytes as given"; otherwise the length
/// of the rewritten module, which `op_isola_wasm_take` then copies out.
/// Its errors (a module that does not parse, say) are thrown by [`throw`], which keeps a
/// termination under way.
#[op2]
fn op_isola_wasm_prepare<'s>(scope: &mut v8::PinScope<'s, '_>, #[anybuffer] bytes: &[u8]) -> v8::Local<'s, v8::Value> {
    let state = deno_core::JsRuntime::op_state_from(scope);
    let prepared = budget(&state.borrow()).and_then(|b| prepare(bytes, b.limit() as u64).map_err(JsErrorBox::generic));
    let len = match prepared {
        Ok(Prepared::AsIs) => 0,
        Ok(Prepared::Rewritten(out)) => {
            let len = out.len() as u32;
            state.borrow_mut().borrow_mut::<PreparedBytes>().0 = out;
            len
        }
        Err(e) => return throw(scope, &e),
    };
    v8::Integer::new_from_unsigned(scope, len).into()
}

/// Copies the module `op_isola_wasm_prepare` rewrote into `out` (which has its length).
#[op2(fast)]
fn op_isola_wasm_take(state: &mut OpState, #[buffer] out: &mut [u8]) {
    let bytes = std::mem::take(&mut state.borrow_mut::<PreparedBytes>().0);
    if bytes.len() == out.len() {
        out.copy_from_slice(&bytes);
    }
}

/// The largest memory a plugin may have, in 64 KiB pages: its whole budget.
#[op2(fast)]
fn op_isola_wasm_page_limit(state: &mut OpState) -> Result<f64, JsErrorBox> {
    Ok((budget(state)?.limit() >> 16) as f64)
}

/// Starts counting `value` against the budget if it is a wasm memory (anything else is
/// ignored, so the wrappers need not tell memories apart themselves). A memory that takes the
/// plugin over its budget stops the plugin (`HEAP_LIMIT`), after a full GC has had its say.
// Not a fast call: it may collect garbage, which V8 forbids inside one.
#[op2(nofast)]
fn op_isola_wasm_track(scope: &mut v8::PinScope, value: v8::Local<v8::Value>) -> Result<(), JsErrorBox> {
    let Ok(memory) = v8::Local::<v8::WasmMemoryObject>::try_from(value) else {
        return Ok(());
    };
    let state = deno_core::JsRuntime::op_state_from(scope);
    let budget = budget(&state.borrow())?;
    let store = memory.buffer().get_backing_store();
    if let Some(id) = budget.track_wasm(store) {
        let owner = Arc::downgrade(&budget);
        let weak = v8::Weak::with_finalizer(
            scope,
            memory,
            Box::new(move |_| {
                if let Some(b) = owner.upgrade() {
                    b.untrack_wasm(id);
                }
            }),
        );
        let state = state.borrow();
        let watched = state.try_borrow::<Watched>();
        if let Some(w) = watched {
            let mut list = w.0.borrow_mut();
            list.retain(|w| !w.is_empty());
            list.push(weak);
        }
    }
    budget.settle_wasm(scope);
    // The watchdog may be asleep until the call's deadline: have it start reading now.
    look_again_within(WASM_POLL);
    Ok(())
}

deno_core::extension!(
    isola_wasm,
    ops = [op_isola_wasm_prepare, op_isola_wasm_take, op_isola_wasm_page_limit, op_isola_wasm_track],
    state = |state| {
        state.put(Watched::default());
        state.put(PreparedBytes::default());
    },
);

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    fn parsed_exports(bytes: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for s in split(bytes).unwrap() {
            if s.id == EXPORT {
                for e in ExportSectionReader::new(BinaryReader::new(s.content, s.offset)).unwrap() {
                    names.push(e.unwrap().name.to_owned());
                }
            }
        }
        names
    }

    #[test]
    fn a_module_without_memory_or_start_is_compiled_as_given() {
        let m = wat(r#"(module (func (export "f") (result i32) i32.const 1))"#);
        assert_eq!(prepare(&m, 1 << 20).unwrap(), Prepared::AsIs);
    }

    #[test]
    fn internal_memories_and_the_start_function_are_exported_and_maxima_capped() {
        let m = wat(r#"(module (memory 1) (func $s) (start $s) (func (export "f")))"#);
        let Prepared::Rewritten(out) = prepare(&m, 4 << 16).unwrap() else { panic!("not rewritten") };
        assert_eq!(parsed_exports(&out), ["f", "\0isola:memory:0", "\0isola:start"]);
        let mem = split(&out).unwrap().into_iter().find(|s| s.id == MEMORY).unwrap();
        let m =
            MemorySectionReader::new(BinaryReader::new(mem.content, 0)).unwrap().into_iter().next().unwrap().unwrap();
        assert_eq!((m.initial, m.maximum), (1, Some(4)));
        assert!(split(&out).unwrap().iter().all(|s| s.id != START));
    }

    #[test]
    fn shared_memories_and_oversized_modules_are_refused() {
        let m = wat(r#"(module (memory 1 2 shared))"#);
        assert!(prepare(&m, 1 << 30).unwrap_err().contains("shared"));
        let big = vec![0u8; MAX_MODULE_BYTES + 1];
        assert!(prepare(&big, 1 << 30).unwrap_err().contains("MiB"));
        assert!(prepare(b"\0asm\x02\0\0\0", 1 << 30).unwrap_err().contains("version 1"));
    }
}
