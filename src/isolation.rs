//! [`Isolation`]: where a plugin's isolate runs. A leaf of its own so that both the engine (the
//! host's default) and the manifest (what a plugin asks for) can name it.

use serde::{Deserialize, Serialize};

/// Where a plugin's isolate runs.
///
/// - [`Thread`](Isolation::Thread) (the default): on its own thread in the host process. Cheap
///   (about a millisecond to start, microseconds per call), and every limit isola enforces
///   holds; but a fault V8 treats as fatal, or a bug in V8 or native host code, ends the host.
/// - [`Process`](Isolation::Process): in a child process of its own (the `isola` binary, or the
///   embedder's own binary, see [`process`](crate::process)), behind the same
///   [`PluginHandle`](crate::PluginHandle). Host functions and storage stay in the host; a
///   plugin that crashes its process costs only itself a restart.
///
/// The host sets it per engine; a manifest may ask for `"isolation": "process"`, never for less
/// than the host requires.
///
/// ```
/// use isola::engine::Isolation;
/// assert!(Isolation::Process > Isolation::Thread);
/// assert_eq!(isola::Engine::default().isolation(), Isolation::Thread);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A thread in the host process.
    #[default]
    Thread,
    /// A child process.
    Process,
}
