//! One memory budget per isolate, covering the V8 heap *and* ArrayBuffer backing stores.
//!
//! Why both: V8's heap limit only sees JS objects. `new ArrayBuffer(1 << 30)` lives outside the
//! heap, in memory the embedder's ArrayBuffer allocator hands out, so a heap limit alone lets a
//! plugin take gigabytes. isola installs its own allocator that counts backing-store bytes
//! against the same budget and, when a plugin goes over, terminates the running JS exactly as
//! the near-heap-limit callback does. Either way the call fails with `HEAP_LIMIT` and the
//! isolate is replaced.
//!
//! Why the near-heap-limit callback gives V8 room rather than holding the line: when the heap
//! is full V8 cannot fail an allocation gracefully, it aborts the whole process. A builtin can
//! ask for one object far larger than the budget (`'x'.repeat(300 << 20)` under 32 MiB), so
//! once the budget is broken the callback gives V8 room for the largest object it can make
//! ([`LARGEST_OBJECT`]) and terminates the JS; the isolate is then thrown away. The price is a
//! brief overshoot above the budget, bounded by that room plus what V8 needs to unwind
//! (measured in `tests/containment.rs`, documented in the README).

use std::ffi::c_void;
use std::sync::Arc;

use deno_core::v8;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The largest single object V8 can allocate on its heap: a string is at most 2^29 - 24
/// characters (1 GiB as two-byte), an array's backing store 2^27 elements of 8 bytes (1 GiB).
pub(crate) const LARGEST_OBJECT: usize = 1 << 30;
/// The least the heap limit grows by each further time V8 reports it full after the budget
/// broke.
const HEAP_STEP: usize = 16 << 20;

/// Shared between the isolate's thread, V8's allocator callbacks (any thread) and the
/// near-heap-limit callback.
pub(crate) struct MemoryBudget {
    /// Total budget in bytes.
    limit: usize,
    /// Bytes currently held by ArrayBuffer backing stores.
    array_buffers: AtomicUsize,
    /// Last known V8 heap use, refreshed by the isolate's thread after calls.
    heap_used: AtomicUsize,
    /// Set once the budget was broken; the isolate must then be discarded.
    exceeded: AtomicBool,
    /// Times V8 reported the heap full (see [`MemoryBudget::heap_full`]).
    heap_full_calls: AtomicUsize,
    /// How to stop the isolate's running JS from inside an allocation.
    isolate: Mutex<Option<v8::IsolateHandle>>,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            array_buffers: AtomicUsize::new(0),
            heap_used: AtomicUsize::new(0),
            exceeded: AtomicBool::new(false),
            heap_full_calls: AtomicUsize::new(0),
            isolate: Mutex::new(None),
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn set_isolate(&self, handle: v8::IsolateHandle) {
        *self.isolate.lock().unwrap() = Some(handle);
    }

    pub(crate) fn set_heap_used(&self, bytes: usize) {
        self.heap_used.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn heap_used(&self) -> usize {
        self.heap_used.load(Ordering::Relaxed)
    }

    pub(crate) fn array_buffer_bytes(&self) -> usize {
        self.array_buffers.load(Ordering::Relaxed)
    }

    /// Whether the budget was broken (by the heap or by ArrayBuffers).
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    /// Marks the budget broken and stops the running JS. Called from V8 callbacks.
    pub(crate) fn trip(&self) {
        self.exceeded.store(true, Ordering::SeqCst);
        if let Some(h) = self.isolate.lock().unwrap().as_ref() {
            h.terminate_execution();
        }
    }

    /// V8's near-heap-limit callback: the heap reached `current` bytes, its limit. Breaks the
    /// budget (the JS is terminated, the isolate will be discarded) and returns the new limit:
    /// room for one largest object the first time, then half again each time V8 still needs
    /// more while it unwinds (a builtin that does not check for termination). Never the same
    /// limit: V8 would abort the process.
    pub(crate) fn heap_full(&self, current: usize) -> usize {
        self.trip();
        let room = if self.heap_full_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            LARGEST_OBJECT
        } else {
            (current / 2).max(HEAP_STEP)
        };
        current.saturating_add(room)
    }

    /// Reserves `len` bytes for a backing store, or trips the budget.
    fn reserve(&self, len: usize) -> bool {
        let heap = self.heap_used.load(Ordering::Relaxed);
        let room = self.limit.saturating_sub(heap);
        let mut cur = self.array_buffers.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_add(len);
            if next > room {
                self.trip();
                return false;
            }
            match self.array_buffers.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    fn release(&self, len: usize) {
        self.array_buffers.fetch_sub(len, Ordering::Relaxed);
    }

    /// A V8 ArrayBuffer allocator that charges this budget.
    pub(crate) fn allocator(self: &Arc<Self>) -> v8::UniqueRef<v8::Allocator> {
        static VTABLE: v8::RustAllocatorVtable<MemoryBudget> = v8::RustAllocatorVtable {
            allocate: ab_allocate,
            allocate_uninitialized: ab_allocate_uninitialized,
            free: ab_free,
            drop: ab_drop,
        };
        // SAFETY: the raw Arc is owned by the allocator and released in `ab_drop`.
        unsafe { v8::new_rust_allocator(Arc::into_raw(self.clone()), &VTABLE) }
    }
}

/// Charges `len` bytes to the budget, then allocates with `alloc`; undoes the charge if the
/// allocation fails. NULL tells V8 the allocation failed.
fn charged(budget: &MemoryBudget, len: usize, alloc: impl FnOnce(usize) -> *mut c_void) -> *mut c_void {
    if !budget.reserve(len) {
        return std::ptr::null_mut();
    }
    // Ask for at least one byte so that NULL always means "out of memory".
    let p = alloc(len.max(1));
    if p.is_null() {
        budget.release(len);
    }
    p
}

unsafe extern "C" fn ab_allocate(budget: &MemoryBudget, len: usize) -> *mut c_void {
    // SAFETY: plain libc allocation, freed in `ab_free`.
    charged(budget, len, |n| unsafe { libc::calloc(n, 1) })
}

unsafe extern "C" fn ab_allocate_uninitialized(budget: &MemoryBudget, len: usize) -> *mut c_void {
    // SAFETY: as above.
    charged(budget, len, |n| unsafe { libc::malloc(n) })
}

unsafe extern "C" fn ab_free(budget: &MemoryBudget, data: *mut c_void, len: usize) {
    budget.release(len);
    // SAFETY: `data` came from calloc/malloc above.
    unsafe { libc::free(data) };
}

unsafe extern "C" fn ab_drop(budget: *const MemoryBudget) {
    // SAFETY: balances the Arc::into_raw in `allocator`.
    drop(unsafe { Arc::from_raw(budget) });
}
