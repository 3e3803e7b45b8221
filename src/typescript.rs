//! TypeScript plugins: type stripping at load, with a source map, cached by content.
//!
//! Why strip rather than compile: checking types is the editor's job (and `tsc --noEmit`'s);
//! at load isola only needs JavaScript V8 can run, fast. oxc removes the types, turns `enum`s
//! and parameter properties into plain JavaScript, drops imports that are only used as types,
//! and writes a source map, so that errors, stacks and the debugger point at the `.ts` lines.
//!
//! Why a process-wide cache keyed by content: a reload of an unchanged file, a restart after
//! `HEAP_LIMIT`, a stateless plugin's fresh instance and every plugin sharing a file all ask for
//! the same output; they get it without parsing again. The key covers the file's URL too
//! (the source map names it).
//!
//! ```
//! let out = isola::typescript::transpile("file:///p/main.ts", "const n: number = 1; export default { n };").unwrap();
//! assert!(out.code.contains("const n = 1"));
//! assert!(!out.code.contains("number"));
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use oxc_allocator::Allocator;
use oxc_codegen::{Codegen, CodegenOptions};
use oxc_diagnostics::{OxcDiagnostic, Severity};
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;
use oxc_transformer::{TransformOptions, Transformer};
use sha2::{Digest, Sha256};

/// What the cache may hold (code plus maps) before it forgets the oldest entries.
const CACHE_BYTES: usize = 64 << 20;

/// A TypeScript file as JavaScript.
#[derive(Debug)]
pub struct Transpiled {
    /// The JavaScript V8 runs.
    pub code: Arc<str>,
    /// Its source map (JSON, version 3), with the `.ts` text embedded as `sourcesContent`.
    pub map: Arc<str>,
}

/// A TypeScript syntax error: what and where (1-based line and column in the `.ts` file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// The parser's message, e.g. `Expected a semicolon or an implicit semicolon after a statement`.
    pub message: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
}

/// Whether `path` is a TypeScript module isola transpiles (`.ts`, `.mts`, `.cts`; not `.d.ts`,
/// which holds only types, nor `.tsx`: plugins have no JSX).
pub fn is_typescript(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    matches!(ext, "ts" | "mts" | "cts") && !name.ends_with(".d.ts") && !name.ends_with(".d.mts")
}

/// How often the cache answered and how often a file was transpiled, for the life of the
/// process (the figure to watch when asking whether reloads pay for unchanged files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Files parsed and transpiled.
    pub transpiled: u64,
    /// Requests answered from the cache.
    pub hits: u64,
}

/// The cache's counters so far.
pub fn cache_stats() -> CacheStats {
    CacheStats { transpiled: TRANSPILED.load(Ordering::Relaxed), hits: HITS.load(Ordering::Relaxed) }
}

static TRANSPILED: AtomicU64 = AtomicU64::new(0);
static HITS: AtomicU64 = AtomicU64::new(0);

type Key = [u8; 32];

#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Arc<Transpiled>>,
    /// Insertion order, for forgetting the oldest first.
    order: VecDeque<Key>,
    bytes: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Transpiles the TypeScript module at `url` (its `file:` URL, which the source map names)
/// whose text is `text`, or returns it from the cache.
pub fn transpile(url: &str, text: &str) -> Result<Arc<Transpiled>, SyntaxError> {
    let key: Key = Sha256::new().chain_update(url).chain_update([0]).chain_update(text).finalize().into();
    if let Some(hit) = cache().lock().unwrap().entries.get(&key).cloned() {
        HITS.fetch_add(1, Ordering::Relaxed);
        return Ok(hit);
    }
    // A bug in the transpiler must not take the plugin's thread down with it (oxc asserts on
    // inputs it does not expect): it becomes a load error like any other.
    let stripped = std::panic::catch_unwind(|| strip(url, text)).unwrap_or_else(|panic| {
        let why = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied());
        Err(SyntaxError {
            message: format!("the TypeScript transpiler failed on this file: {}", why.unwrap_or("no reason given")),
            line: 1,
            column: 1,
        })
    });
    let out = Arc::new(stripped?);
    TRANSPILED.fetch_add(1, Ordering::Relaxed);
    let mut c = cache().lock().unwrap();
    let size = out.code.len() + out.map.len();
    if c.entries.insert(key, out.clone()).is_none() {
        c.order.push_back(key);
        c.bytes += size;
    }
    while c.bytes > CACHE_BYTES {
        let Some(old) = c.order.pop_front() else { break };
        if let Some(gone) = c.entries.remove(&old) {
            c.bytes -= gone.code.len() + gone.map.len();
        }
    }
    Ok(out)
}

fn strip(url: &str, text: &str) -> Result<Transpiled, SyntaxError> {
    let allocator = Allocator::default();
    // `.mts`/`.cts` are modules too; what matters to the parser is "TypeScript, module, no JSX".
    let source_type = SourceType::ts();
    let parsed = Parser::new(&allocator, text, source_type).parse();
    if let Some(d) = parsed.diagnostics.iter().find(|d| d.severity == Severity::Error) {
        return Err(syntax_error(text, d));
    }
    if parsed.panicked {
        return Err(SyntaxError { message: "the file could not be parsed".into(), line: 1, column: 1 });
    }
    let mut program = parsed.program;
    let scoping = SemanticBuilder::new().with_enum_eval(true).build(&program).semantic.into_scoping();
    let path = Path::new(url);
    let options = TransformOptions::default();
    let transformed = Transformer::new(&allocator, path, &options).build_with_scoping(scoping, &mut program);
    if let Some(d) = transformed.diagnostics.iter().find(|d| d.severity == Severity::Error) {
        return Err(syntax_error(text, d));
    }
    let out = Codegen::new()
        .with_options(CodegenOptions { source_map_path: Some(path.to_path_buf()), ..CodegenOptions::default() })
        .build(&program);
    let map = out.map.map(|m| m.to_json_string()).unwrap_or_default();
    Ok(Transpiled { code: out.code.into(), map: map.into() })
}

fn syntax_error(text: &str, d: &OxcDiagnostic) -> SyntaxError {
    let offset = d.labels.first().map_or(0, |l| l.offset() as usize).min(text.len());
    let (line, column) = line_column(text, offset);
    let mut message = d.message.to_string();
    if let Some(help) = &d.help {
        message = format!("{message} ({help})");
    }
    SyntaxError { message, line, column }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[start..].chars().count() + 1;
    (line as u32, column as u32)
}
