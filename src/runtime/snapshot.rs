//! The V8 startup snapshot of everything every isolate evaluates before plugin code.
//!
//! Why: without it each isolate runs deno_core's bootstrap JavaScript (primordials, the op
//! layer, ...) and isola's web globals from source, which is most of a cold start. The build
//! script makes the snapshot once, when isola is compiled (`build.rs`, with the code in
//! [`super::snapshot_build`]), and it ships inside the binary: a process pays nothing to make
//! it, which is most of what a short-lived `isola call` used to spend.
//!
//! The build script cannot link isola's real ops, so it makes the snapshot with stand-ins of
//! the same names and kinds, in the same order. A snapshot only refers to ops by position, and
//! it is made without V8's fast calls, so the isolates that load it bind the real ops in their
//! place. Before using it the runtime checks that the ops match ([`op_manifest`]); if they ever
//! do not (an op added in the source but not in `build.rs`), it logs an error and makes a
//! snapshot at run time, as isola did before, rather than run with ops in the wrong places.

use std::sync::OnceLock;

use super::ops::{HostTable, isola_ops};
pub(crate) use super::snapshot_build::PRELUDE_GLOBAL;
use super::snapshot_build::{init_v8, make, op_manifest};
use super::wasm::isola_wasm;
use super::web::isola_web;

/// The snapshot `build.rs` made, and the ops it was made with.
static EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/isola_snapshot.bin"));
static EMBEDDED_OPS: &str = include_str!(concat!(env!("OUT_DIR"), "/isola_snapshot_ops.txt"));

/// Where the process's snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Made by the build script, shipped in the binary.
    Embedded,
    /// Made at run time, because the embedded one does not fit this build's ops.
    Runtime,
}

/// The snapshot every isolate starts from; also starts V8 the first time.
pub(crate) fn snapshot() -> &'static [u8] {
    chosen().0
}

/// Where [`snapshot`] came from (for tests and the first log line).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn origin() -> Origin {
    chosen().1
}

fn chosen() -> (&'static [u8], Origin) {
    static CHOSEN: OnceLock<(&'static [u8], Origin)> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        init_v8();
        let ours = op_manifest(&extensions());
        if ours == EMBEDDED_OPS {
            tracing::debug!("startup snapshot: the one built into the binary ({} KiB)", EMBEDDED.len() / 1024);
            return (EMBEDDED, Origin::Embedded);
        }
        tracing::error!(
            "the startup snapshot in this binary was made with other ops than isola registers \
             (build.rs's stand-ins are out of date); making one at run time instead"
        );
        (Box::leak(make(extensions(), env!("CARGO_PKG_VERSION"))), Origin::Runtime)
    })
}

/// isola's extensions, in the order both the snapshot and every isolate register them. The
/// host table is the plugin's, put in later.
pub(crate) fn extensions() -> Vec<deno_core::Extension> {
    vec![isola_ops::init(HostTable::empty()), isola_web::init(), isola_wasm::init()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when an op is added, removed, renamed or made async in the source but not among
    /// build.rs's stand-ins: the binary would then make its snapshot at run time.
    #[test]
    fn the_embedded_snapshot_fits_the_ops_isola_registers() {
        assert_eq!(op_manifest(&extensions()), EMBEDDED_OPS, "update the stand-in ops in build.rs");
        assert_eq!(origin(), Origin::Embedded);
    }
}
