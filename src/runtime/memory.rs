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
//!
//! WebAssembly memories are the third part of the budget. V8 allocates them itself, not
//! through the allocator, and grows them from inside wasm code; isola holds each one's backing
//! store (see `src/runtime/wasm.rs` for how every memory is found) and reads its length, which
//! V8 keeps current as the memory grows in place: when a memory is made, when a call ends, and
//! every [`WASM_POLL`] from the watchdog while a call of a plugin with memories runs.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deno_core::v8;

use crate::memory_guard::{Consumer, MemoryGuard};

/// The largest single object V8 can allocate on its heap: a string is at most 2^29 - 24
/// characters (1 GiB as two-byte), an array's backing store 2^27 elements of 8 bytes (1 GiB).
pub(crate) const LARGEST_OBJECT: usize = 1 << 30;
/// The least the heap limit grows by each further time V8 reports it full after the budget
/// broke.
const HEAP_STEP: usize = 16 << 20;
/// How many times in a row V8 asks for a backing store the budget has no room for before the
/// budget is broken. V8 answers a refused backing store by collecting garbage and asking again
/// (after two full GCs, then after a last-resort one: four asks in all), so buffers that are
/// already garbage are freed before a plugin is stopped for them.
const AB_ASKS: u32 = 4;
/// Backing stores at least this large read the live heap figure before they are charged (a
/// microsecond, small next to allocating and zeroing them); smaller ones use the last GC's.
const LIVE_HEAP_FROM: usize = 64 << 10;

/// How often the watchdog reads the wasm memories of a plugin whose call is running. A memory
/// grows in one step but costs memory only as its pages are written: in this time a plugin can
/// write a few MiB past its budget before it is stopped (measured in `tests/wasm.rs`).
pub(crate) const WASM_POLL: Duration = Duration::from_millis(2);

/// One wasm memory being counted.
struct WasmMemory {
    id: u64,
    store: Store,
}

/// A wasm memory's backing store, read from the watchdog's thread.
struct Store(v8::SharedRef<v8::BackingStore>);

// SAFETY: off the isolate's thread only `byte_length` is read (V8 keeps it in an atomic, for
// memories that grow while other threads read them) and the reference count is changed
// (std::shared_ptr's is atomic); V8 frees backing stores from any thread.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

/// The isolate a budget belongs to, and the thread it runs on.
struct Home {
    thread: std::thread::ThreadId,
    isolate: v8::UnsafeRawIsolatePtr,
}

// SAFETY: the pointer is only dereferenced on `thread`, the isolate's own, while it lives.
unsafe impl Send for Home {}
unsafe impl Sync for Home {}

/// Why a budget was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Breach {
    /// The plugin went over its own budget.
    Own,
    /// The engine's total limit (bytes) was reached and this plugin held the most (bytes).
    Total { limit: usize, usage: usize },
}

/// Shared between the isolate's thread, V8's allocator callbacks (any thread), V8's GC and
/// near-heap-limit callbacks, and the engine's memory guard.
pub(crate) struct MemoryBudget {
    /// Total budget in bytes.
    limit: usize,
    /// Bytes currently held by ArrayBuffer backing stores.
    array_buffers: AtomicUsize,
    /// The wasm memories being counted, and their bytes as last read.
    wasm: Mutex<Vec<WasmMemory>>,
    wasm_bytes: AtomicUsize,
    /// How many memories `wasm` holds (read without its lock).
    wasm_count: AtomicUsize,
    next_wasm_id: AtomicU64,
    /// The watchdog asked the isolate to check its memories (see [`MemoryBudget::poll_wasm`]).
    wasm_check_pending: AtomicBool,
    /// V8 heap in use as of the last GC (or the last explicit refresh).
    heap_used: AtomicUsize,
    /// Set once the budget was broken; the isolate must then be discarded.
    exceeded: AtomicBool,
    breach: Mutex<Option<Breach>>,
    /// Times V8 reported the heap full (see [`MemoryBudget::heap_full`]).
    heap_full_calls: AtomicUsize,
    /// Backing stores refused in a row (see [`AB_ASKS`]).
    refused: AtomicU32,
    /// A full GC was asked for and has not happened yet.
    full_gc_pending: AtomicBool,
    /// How to stop the isolate's running JS from inside an allocation.
    isolate: Mutex<Option<v8::IsolateHandle>>,
    /// The isolate and its thread, for reading the live heap figure from inside an allocation
    /// made on that thread.
    home: OnceLock<Home>,
    /// Tells the plugin's thread to discard a broken isolate that is not running (set by the
    /// thread; called when the guard stops an idle plugin).
    waker: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    guard: Arc<MemoryGuard>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, counted by `guard` with every other plugin's.
    pub(crate) fn new(limit: usize, guard: &Arc<MemoryGuard>) -> Arc<Self> {
        let budget = Arc::new(MemoryBudget {
            limit,
            array_buffers: AtomicUsize::new(0),
            wasm: Mutex::new(Vec::new()),
            wasm_bytes: AtomicUsize::new(0),
            wasm_count: AtomicUsize::new(0),
            next_wasm_id: AtomicU64::new(1),
            wasm_check_pending: AtomicBool::new(false),
            heap_used: AtomicUsize::new(0),
            exceeded: AtomicBool::new(false),
            breach: Mutex::new(None),
            heap_full_calls: AtomicUsize::new(0),
            refused: AtomicU32::new(0),
            full_gc_pending: AtomicBool::new(false),
            isolate: Mutex::new(None),
            home: OnceLock::new(),
            waker: Mutex::new(None),
            guard: guard.clone(),
        });
        let weak = Arc::downgrade(&budget);
        guard.register(weak);
        budget
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn set_isolate(&self, handle: v8::IsolateHandle) {
        *self.isolate.lock().unwrap() = Some(handle);
    }

    /// What the plugin's thread wants done when the budget breaks while no JS runs.
    pub(crate) fn set_waker(&self, waker: Box<dyn Fn() + Send + Sync>) {
        *self.waker.lock().unwrap() = Some(waker);
    }

    /// Records the V8 heap's use, reports the change to the guard and breaks the budget if
    /// heap and ArrayBuffers together are over it (`checked`: only when the figure is exact
    /// enough, after a full GC, so that garbage never stops a plugin).
    pub(crate) fn set_heap_used(&self, bytes: usize, checked: bool) {
        let old = self.heap_used.swap(bytes, Ordering::Relaxed);
        if bytes > old {
            if self.guard.grow(bytes - old) {
                self.guard.enforce(self.addr());
            }
        } else {
            self.guard.shrink(old - bytes);
        }
        if checked && bytes.saturating_add(self.array_buffer_bytes()) > self.limit {
            self.trip(Breach::Own);
        }
    }

    pub(crate) fn heap_used(&self) -> usize {
        self.heap_used.load(Ordering::Relaxed)
    }

    pub(crate) fn array_buffer_bytes(&self) -> usize {
        self.array_buffers.load(Ordering::Relaxed)
    }

    /// Bytes of wasm memory, as last read.
    pub(crate) fn wasm_bytes(&self) -> usize {
        self.wasm_bytes.load(Ordering::Relaxed)
    }

    /// Starts counting a wasm memory's backing store; `None` if it is counted already (a
    /// memory one instance exports and another imports). Read its length with
    /// [`settle_wasm`](Self::settle_wasm).
    pub(crate) fn track_wasm(&self, store: v8::SharedRef<v8::BackingStore>) -> Option<u64> {
        let mut list = self.wasm.lock().unwrap();
        let data = store.data();
        if list.iter().any(|m| m.store.0.data() == data) {
            return None;
        }
        let id = self.next_wasm_id.fetch_add(1, Ordering::Relaxed);
        list.push(WasmMemory { id, store: Store(store) });
        self.wasm_count.store(list.len(), Ordering::Relaxed);
        Some(id)
    }

    /// Stops counting a memory that was collected.
    pub(crate) fn untrack_wasm(&self, id: u64) {
        let mut list = self.wasm.lock().unwrap();
        list.retain(|m| m.id != id);
        self.wasm_count.store(list.len(), Ordering::Relaxed);
        drop(list);
        self.sample_wasm();
    }

    /// Lets go of every memory (the isolate is being dropped: its stores go with it).
    pub(crate) fn forget_wasm(&self) {
        self.wasm.lock().unwrap().clear();
        self.wasm_count.store(0, Ordering::Relaxed);
        self.sample_wasm();
    }

    /// Reads the memories' lengths now and reports the change to the guard.
    fn sample_wasm(&self) -> usize {
        let bytes = self.wasm.lock().unwrap().iter().map(|m| m.store.0.byte_length()).sum::<usize>();
        let old = self.wasm_bytes.swap(bytes, Ordering::Relaxed);
        if bytes > old {
            if self.guard.grow(bytes - old) {
                self.guard.enforce(self.addr());
            }
        } else {
            self.guard.shrink(old - bytes);
        }
        bytes
    }

    /// Whether heap, ArrayBuffers and wasm memories together are over the budget.
    fn over(&self) -> bool {
        self.heap_used().saturating_add(self.array_buffer_bytes()).saturating_add(self.wasm_bytes()) > self.limit
    }

    /// On the isolate's thread: reads the wasm memories and, if they take the plugin over
    /// its budget, collects garbage (memories that are garbage stop being counted) and breaks
    /// the budget if it still is. Costs one atomic load for a plugin without memories.
    pub(crate) fn settle_wasm(&self, isolate: &mut v8::Isolate) {
        if self.wasm_count.load(Ordering::Relaxed) == 0 && self.wasm_bytes() == 0 {
            return;
        }
        self.sample_wasm();
        if !self.over() || self.exceeded() {
            return;
        }
        // A full GC on this thread, now; its weak callbacks run before it returns.
        isolate.memory_pressure_notification(v8::MemoryPressureLevel::Critical);
        self.sample_wasm();
        if self.over() {
            self.trip(Breach::Own);
        }
    }

    /// From the watchdog, while a call runs: reads the wasm memories and, when they take the
    /// plugin over its budget, asks the isolate to [`settle_wasm`](Self::settle_wasm) at its
    /// next interrupt check (a wasm loop checks at every iteration). Returns whether the
    /// plugin has memories to watch.
    pub(crate) fn poll_wasm(&self) -> bool {
        if self.wasm_count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.sample_wasm();
        if self.over() && !self.exceeded() && !self.wasm_check_pending.swap(true, Ordering::SeqCst) {
            let data = self as *const MemoryBudget as *mut c_void;
            if let Some(h) = self.isolate.lock().unwrap().as_ref() {
                h.request_interrupt(check_wasm, data);
            }
        }
        true
    }

    /// Whether the budget was broken (by the heap or by ArrayBuffers).
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    /// How the budget was broken, if it was.
    pub(crate) fn breach(&self) -> Option<Breach> {
        *self.breach.lock().unwrap()
    }

    /// Marks the budget broken and stops the running JS. Called from V8 callbacks and from
    /// the guard (any thread). The first breach is the one reported.
    pub(crate) fn trip(&self, why: Breach) {
        self.breach.lock().unwrap().get_or_insert(why);
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
        self.trip(Breach::Own);
        let room = if self.heap_full_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            LARGEST_OBJECT
        } else {
            (current / 2).max(HEAP_STEP)
        };
        current.saturating_add(room)
    }

    /// After a GC: records the heap's use. A minor GC's figure still counts old garbage, so
    /// when it says the budget is broken, a full GC is asked for at the next safe point
    /// (returns true) and only its figure may break the budget.
    fn after_gc(&self, heap_used: usize, full: bool) -> bool {
        if full {
            self.full_gc_pending.store(false, Ordering::Relaxed);
        }
        self.set_heap_used(heap_used, full);
        !full
            && heap_used.saturating_add(self.array_buffer_bytes()) > self.limit
            && !self.exceeded()
            && !self.full_gc_pending.swap(true, Ordering::Relaxed)
    }

    /// Reserves `len` bytes for a backing store. Refuses when the budget has no room (V8 then
    /// collects garbage and asks again; the budget breaks after [`AB_ASKS`] refusals in a row,
    /// or at once for a buffer larger than the whole budget), and when the engine's total
    /// limit is reached and this plugin is the largest consumer.
    fn reserve(&self, len: usize) -> bool {
        if len > self.limit {
            self.trip(Breach::Own);
            return false;
        }
        let heap = self.live_heap(len).unwrap_or_else(|| self.heap_used());
        let room = self.limit.saturating_sub(heap).saturating_sub(self.wasm_bytes());
        let mut cur = self.array_buffers.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_add(len);
            if next > room {
                if self.refused.fetch_add(1, Ordering::Relaxed) + 1 >= AB_ASKS {
                    self.trip(Breach::Own);
                }
                return false;
            }
            match self.array_buffers.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.refused.store(0, Ordering::Relaxed);
        if self.guard.grow(len) && self.guard.enforce(self.addr()) {
            self.release(len);
            return false;
        }
        true
    }

    /// The V8 heap's use right now, for a backing store of `len` bytes being made on the
    /// isolate's own thread; `None` for small ones or from another thread.
    fn live_heap(&self, len: usize) -> Option<usize> {
        if len < LIVE_HEAP_FROM {
            return None;
        }
        let home = self.home.get().filter(|h| h.thread == std::thread::current().id())?;
        let mut ptr = home.isolate;
        // SAFETY: on the isolate's thread, inside one of its allocations: the isolate lives and
        // no GC runs (V8 calls the allocator outside GCs).
        let isolate = unsafe { v8::Isolate::ref_from_raw_isolate_ptr_mut(&mut ptr) };
        let used = isolate.get_heap_statistics().used_heap_size();
        self.set_heap_used(used, false);
        Some(used)
    }

    fn release(&self, len: usize) {
        self.array_buffers.fetch_sub(len, Ordering::Relaxed);
        self.guard.shrink(len);
    }

    fn addr(&self) -> *const () {
        self as *const MemoryBudget as *const ()
    }

    /// Installs the GC callback that keeps [`heap_used`](Self::heap_used) current and checks
    /// heap and ArrayBuffers together. `self` must outlive the isolate (the isolate is dropped
    /// before its budget).
    pub(crate) fn watch_gc(self: &Arc<Self>, isolate: &mut v8::Isolate) {
        let data = Arc::as_ptr(self) as *mut c_void;
        isolate.add_gc_epilogue_callback(gc_epilogue, data, v8::GCType::kGCTypeAll);
        // SAFETY: only read back on this thread while the isolate lives (see `live_heap`).
        let raw = unsafe { isolate.as_raw_isolate_ptr() };
        let _ = self.home.set(Home { thread: std::thread::current().id(), isolate: raw });
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

impl Consumer for MemoryBudget {
    fn usage(&self) -> usize {
        self.heap_used().saturating_add(self.array_buffer_bytes()).saturating_add(self.wasm_bytes())
    }

    fn stopping(&self) -> bool {
        self.exceeded()
    }

    fn stop_for_total(&self, limit: usize, usage: usize) {
        self.trip(Breach::Total { limit, usage });
        // If no JS runs, nothing notices the termination: have the thread discard it now.
        if let Some(wake) = self.waker.lock().unwrap().as_ref() {
            wake();
        }
    }
}

impl Drop for MemoryBudget {
    fn drop(&mut self) {
        // The isolate (and with it every backing store) is gone: give back what was reported.
        self.guard.shrink(self.usage());
    }
}

unsafe extern "C" fn gc_epilogue(
    isolate: v8::UnsafeRawIsolatePtr,
    kind: v8::GCType,
    _flags: v8::GCCallbackFlags,
    data: *mut c_void,
) {
    // SAFETY: `data` is the budget `watch_gc` was called on, which outlives the isolate.
    let budget = unsafe { &*(data as *const MemoryBudget) };
    let mut ptr = isolate;
    // SAFETY: V8 calls this on the isolate's own thread with a live isolate.
    let isolate = unsafe { v8::Isolate::ref_from_raw_isolate_ptr_mut(&mut ptr) };
    let used = isolate.get_heap_statistics().used_heap_size();
    let full = kind == v8::GCType::kGCTypeMarkSweepCompact;
    if budget.after_gc(used, full) {
        // No GC may start inside a GC callback: ask for one where V8 handles interrupts.
        isolate.thread_safe_handle().request_interrupt(collect_garbage, data);
    }
}

unsafe extern "C" fn check_wasm(isolate: v8::UnsafeRawIsolatePtr, data: *mut c_void) {
    // SAFETY: `data` is the budget that asked (see `poll_wasm`), which outlives the isolate.
    let budget = unsafe { &*(data as *const MemoryBudget) };
    let mut ptr = isolate;
    // SAFETY: V8 runs interrupts on the isolate's thread with a live isolate.
    let isolate = unsafe { v8::Isolate::ref_from_raw_isolate_ptr_mut(&mut ptr) };
    budget.wasm_check_pending.store(false, Ordering::SeqCst);
    budget.settle_wasm(isolate);
}

unsafe extern "C" fn collect_garbage(isolate: v8::UnsafeRawIsolatePtr, _data: *mut c_void) {
    let mut ptr = isolate;
    // SAFETY: V8 runs interrupts on the isolate's thread with a live isolate.
    let isolate = unsafe { v8::Isolate::ref_from_raw_isolate_ptr_mut(&mut ptr) };
    // On the isolate's own thread this collects at once (a full GC), which runs `gc_epilogue`.
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::Critical);
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
