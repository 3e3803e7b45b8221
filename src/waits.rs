//! The wait-for graph of plugin-to-plugin calls: which plugin is waiting on which.
//!
//! Why: a plugin answers one call at a time, so if A waits on B while B (through any request,
//! maybe one the host started elsewhere) waits on A, both wait until their deadlines pass. The
//! call chain a request carries catches A → B → A within one request; this graph catches the
//! cycle across requests (X → A → B while Y → B → A) and refuses the call that would close it.

use std::sync::{Arc, Mutex, Weak};

/// How long a path the cycle search follows (longer chains are refused by the call depth
/// limit anyway).
const MAX_PATH: usize = 64;

/// Plugin-to-plugin calls in progress, as (caller, callee) edges.
#[derive(Default)]
pub(crate) struct WaitGraph {
    edges: Mutex<Vec<(String, String)>>,
}

impl WaitGraph {
    /// Records that plugin `from` waits on plugin `to` until the returned guard is dropped,
    /// unless `to` already waits (directly or through others) on `from`: then the path that
    /// would deadlock (`to → … → from`) is returned instead.
    pub(crate) fn wait_on(self: &Arc<Self>, from: &str, to: &str) -> Result<WaitGuard, String> {
        let mut edges = self.edges.lock().unwrap();
        // Follow `to`'s waits; reaching `from` means a cycle.
        let mut stack = vec![vec![to.to_owned()]];
        while let Some(path) = stack.pop() {
            let last = path.last().expect("paths are never empty");
            if last == from {
                return Err(path.join(" → "));
            }
            if path.len() > MAX_PATH {
                continue;
            }
            for (_, b) in edges.iter().filter(|(a, _)| a == last) {
                let mut next = path.clone();
                next.push(b.clone());
                stack.push(next);
            }
        }
        edges.push((from.to_owned(), to.to_owned()));
        Ok(WaitGuard { graph: Arc::downgrade(self), from: from.to_owned(), to: to.to_owned() })
    }
}

/// An edge of the graph; removed when dropped.
pub(crate) struct WaitGuard {
    graph: Weak<WaitGraph>,
    from: String,
    to: String,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some(graph) = self.graph.upgrade() {
            let mut edges = graph.edges.lock().unwrap();
            if let Some(i) = edges.iter().position(|(a, b)| *a == self.from && *b == self.to) {
                edges.swap_remove(i);
            }
        }
    }
}
