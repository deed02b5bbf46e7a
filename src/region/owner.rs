//! The owner record of a region, and how blocks reach it: allocation on the owner thread,
//! frees on the owner thread, frees from other threads, and zombie regions.
//!
//! Every region's layer stack lives in a record of its own (from the system allocator, so
//! it never depends on another region) and never moves. The page map points at the
//! record's [`Owner`] header.
//!
//! Who touches the stack:
//! - while the region is *active* (its `Region` handle alive), only its owner thread, which
//!   is the only thread that can enter it (`Region` is neither `Send` nor `Sync`);
//! - other threads never do: a block they free goes on the region's queue, an array beside
//!   the stack guarded by `lock`, which the owner drains into the stack. Nothing is ever
//!   written into the freed block itself: the program may still hold a protected reference
//!   to it while it is being freed (a `self: Box<Self>` freed inside its own method), and
//!   only the allocator's own bookkeeping may change then;
//! - once the handle is dropped with blocks still live, the region is a *zombie*: the queue
//!   says so, and any thread that frees one of its blocks puts it into the stack itself,
//!   under `lock`. The last free releases the stack and the record.
//!
//! Counters use wrapping arithmetic: an overflow panic in a debug build would unwind out of
//! the global allocator. The queue's memory comes from the system allocator directly.
//!
//! Invariants: `live` counts blocks handed out by the router and not yet put back into the
//! stack (blocks waiting in the queue still count); it is written only by the owner thread
//! while active, and only under `lock` afterwards (the owner holds the lock across the
//! switch). `pending` is set whenever the queue holds entries.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::{Cell, UnsafeCell};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::alloc::System;

use crate::Layer;
use crate::abort::{abort_with, debug_require};
use crate::layer::served_size;
use crate::layers::LeakReport;

const MAGIC: u64 = 0x5354_5241_5441_4C4C; // "STRATALL"

/// A block freed by another thread, waiting for the owner.
#[derive(Clone, Copy)]
struct Entry {
    block: NonNull<u8>,
    layout: Layout,
}

/// Frees from other threads, in an array from the system allocator; guarded by `lock`.
struct Queue {
    entries: *mut Entry,
    len: usize,
    capacity: usize,
    /// Set when the region's handle ended: frees then put into the stack directly.
    zombie: bool,
}

impl Queue {
    const EMPTY: Queue = Queue {
        entries: ptr::null_mut(),
        len: 0,
        capacity: 0,
        zombie: false,
    };

    /// Appends an entry, growing the array; aborts when the system allocator has no room
    /// (the free cannot be refused, nor lost).
    fn push(&mut self, entry: Entry) {
        if self.len == self.capacity {
            let capacity = (self.capacity * 2).max(64);
            let new = Layout::array::<Entry>(capacity).ok();
            // SAFETY: the old array (if any) came from the system allocator with
            // `layout(self.capacity)`; the new size is non-zero.
            let entries = unsafe {
                match (new, self.entries.is_null()) {
                    (Some(new), true) => System.alloc(new),
                    (Some(new), false) => {
                        System.realloc(self.entries.cast(), Self::layout(self.capacity), new.size())
                    }
                    (None, _) => ptr::null_mut(),
                }
            };
            if entries.is_null() {
                abort_with(format_args!(
                    "router: no memory to queue a free from another thread ({} waiting)",
                    self.len
                ));
            }
            self.entries = entries.cast();
            self.capacity = capacity;
        }
        // SAFETY: `len < capacity`, inside the array.
        unsafe { self.entries.add(self.len).write(entry) };
        self.len += 1;
    }

    fn layout(capacity: usize) -> Layout {
        // SAFETY: every capacity in use had a valid array layout when it was allocated.
        unsafe { Layout::array::<Entry>(capacity).unwrap_unchecked() }
    }

    /// Takes the entries out, leaving the queue empty (and without an array).
    fn take(&mut self) -> Queue {
        core::mem::replace(
            self,
            Queue {
                zombie: self.zombie,
                ..Queue::EMPTY
            },
        )
    }

    fn entries(&self) -> &[Entry] {
        if self.entries.is_null() {
            return &[];
        }
        // SAFETY: the first `len` entries are initialised.
        unsafe { core::slice::from_raw_parts(self.entries, self.len) }
    }

    /// Frees the array.
    fn free(self) {
        if !self.entries.is_null() {
            // SAFETY: allocated from the system allocator with this layout.
            unsafe { System.dealloc(self.entries.cast(), Self::layout(self.capacity)) };
        }
    }
}

/// A layer stack with its type erased, as the router drives it.
pub(crate) trait Stack {
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>>;
    /// # Safety
    /// As [`Layer::put`].
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout);
    /// # Safety
    /// As [`Layer::grow`] and [`Layer::shrink`], by the direction of the sizes.
    unsafe fn resize_in_place(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool;
    fn window(&mut self, layout: Layout) -> Option<NonNull<[u8]>>;
    fn leak_report(&self) -> Option<LeakReport>;
    fn deinit(&mut self);
}

impl<L: Layer> Stack for L {
    #[inline(always)]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        Layer::get(self, layout)
    }
    #[inline(always)]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties are `Layer::put`'s.
        unsafe { Layer::put(self, ptr, layout) }
    }
    unsafe fn resize_in_place(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        // SAFETY: the caller's duties are those of the method the sizes select.
        unsafe {
            if new.size() >= old.size() {
                Layer::grow(self, ptr, old, new)
            } else {
                Layer::shrink(self, ptr, old, new)
            }
        }
    }
    #[inline(never)]
    fn window(&mut self, layout: Layout) -> Option<NonNull<[u8]>> {
        Layer::window(self, layout)
    }
    fn leak_report(&self) -> Option<LeakReport> {
        Layer::leak_report(self)
    }
    fn deinit(&mut self) {
        Layer::deinit(self)
    }
}

/// [`Owner::driver`] while the owner thread has the stack in a call or lent out.
const BUSY: usize = 1;
/// [`Owner::driver`] once the handle has ended (a zombie), and for good when the region was
/// made during thread teardown (when there is no token to name its thread by).
const NO_DRIVER: usize = 2;

/// The header of a region's record; the page map points here.
///
/// The fields a free and a carved allocation read come first, in 48 bytes. (Aligning the
/// header to a cache line made the system allocator serve each record through
/// `posix_memalign`, which cost more in short-lived regions than the lines it saved.)
#[repr(C)]
pub(crate) struct Owner {
    magic: u64,
    /// Who may drive the stack right now: the owner thread's token while the region is
    /// active and not busy, [`BUSY`] while the owner thread has the stack in a call (in
    /// `with_stack`) or lent out by `Region::with_layer`, [`NO_DRIVER`] once it is a
    /// zombie. A busy region is never driven again until it is not (its allocations fall
    /// back to the system allocator, its frees wait in the queue), which rules out
    /// re-entering a stack through `Pipe` chains. Written by the owner thread only; other
    /// threads compare it with their own token, which it never holds, so a free asks one
    /// question: "may I drive it?". Tokens are addresses of thread states, never 1 or 2.
    driver: AtomicUsize,
    live: Cell<usize>,
    /// The stack's `WINDOW_LIMIT`: blocks whose size and alignment, or-ed, are at most this
    /// (see [`Owner::carved`]) are carved by the router from the current window and never
    /// go back into the stack; the rest go through the stack.
    window_limit: usize,
    /// The current window's free part: blocks are carved downward from `window_top`, never
    /// below `window_floor` (both null before the first window). Owner thread only.
    window_top: Cell<*mut u8>,
    window_floor: Cell<*mut u8>,
    /// The owner thread's token (see `frames::token`), or [`NO_DRIVER`].
    thread: usize,
    /// The stack in the same record.
    stack: *mut dyn Stack,
    lock: AtomicBool,
    /// Whether the queue holds entries: a hint the owner reads without the lock.
    pending: AtomicBool,
    /// Guarded by `lock`.
    queue: UnsafeCell<Queue>,
    /// Frees the record (type-erased: it knows the stack's type).
    release_record: unsafe fn(*mut Owner),
}

impl Owner {
    pub(crate) fn new(
        stack: *mut dyn Stack,
        thread: usize,
        window_limit: usize,
        release: unsafe fn(*mut Owner),
    ) -> Self {
        // During thread teardown there is no token (0, which every thread in teardown
        // shares): such a region is never driven, and its frees are queued.
        let thread = if thread == 0 { NO_DRIVER } else { thread };
        Owner {
            magic: MAGIC,
            driver: AtomicUsize::new(thread),
            live: Cell::new(0),
            window_limit,
            window_top: Cell::new(ptr::null_mut()),
            window_floor: Cell::new(ptr::null_mut()),
            thread,
            stack,
            lock: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            queue: UnsafeCell::new(Queue::EMPTY),
            release_record: release,
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    /// Marks the stack busy or not (owner thread, region active).
    #[inline(always)]
    pub(crate) fn set_busy(&self, busy: bool) {
        let driver = if busy { BUSY } else { self.thread };
        self.driver.store(driver, Ordering::Relaxed);
    }

    /// Whether the thread with token `thread` may drive the stack now: its owner, with
    /// the region active and not busy. Any thread may ask.
    #[inline(always)]
    fn drivable_by(&self, thread: usize) -> bool {
        self.driver.load(Ordering::Relaxed) == thread
    }

    /// Whether the stack is busy (owner thread, region active).
    #[inline(always)]
    pub(crate) fn busy_now(&self) -> bool {
        self.driver.load(Ordering::Relaxed) == BUSY
    }

    /// Whether blocks of `layout` are carved from windows (and so never put). Allocation
    /// and free ask with the same layout, so any test that implies "size and alignment at
    /// most the limit" is exact; or-ing the two costs one compare.
    #[inline(always)]
    fn carved(&self, layout: Layout) -> bool {
        (layout.size() | layout.align()) <= self.window_limit
    }

    /// Forgets the current window: call before anything that ends the stack's blocks.
    pub(crate) fn drop_window(&self) {
        self.window_top.set(ptr::null_mut());
        self.window_floor.set(ptr::null_mut());
    }

    /// Carves a block for `layout` from the current window, if it has room.
    #[inline(always)]
    fn carve(&self, layout: Layout) -> Option<NonNull<u8>> {
        let top = self.window_top.get();
        let start = top.addr().checked_sub(served_size(layout))? & !(layout.align() - 1);
        if start < self.window_floor.get().addr() || top.is_null() {
            return None;
        }
        let block = top.with_addr(start);
        self.window_top.set(block);
        // SAFETY: `start >= window_floor`, which is not null while a window is set.
        Some(unsafe { NonNull::new_unchecked(block) })
    }

    /// Puts a block into the stack, unless it was carved from a window.
    ///
    /// # Safety
    ///
    /// As [`Layer::put`], with exclusive access to the stack.
    #[inline(always)]
    unsafe fn put_into(&self, stack: &mut dyn Stack, ptr: NonNull<u8>, layout: Layout) {
        if !self.carved(layout) {
            // SAFETY: as the caller promises.
            unsafe { stack.put(ptr, layout) }
        }
    }

    /// The stack; dereferenced only by the owner thread while the region is active and
    /// outside any stack call, or under `lock` once it is a zombie.
    pub(crate) fn stack(&self) -> *mut dyn Stack {
        self.stack
    }

    fn lock(&self) {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
    }

    fn unlock(&self) {
        self.lock.store(false, Ordering::Release);
    }

    /// The queue.
    ///
    /// # Safety
    ///
    /// The caller holds `lock`, and the reference ends before it lets go.
    #[allow(clippy::mut_from_ref)]
    unsafe fn queue(&self) -> &mut Queue {
        // SAFETY: as the caller promises, `lock` makes this the only reference.
        unsafe { &mut *self.queue.get() }
    }
}

/// Runs one call on the stack of an active region of this thread that is not busy, marked
/// busy meanwhile.
///
/// # Safety
///
/// The owner thread, region active and not busy.
#[inline(always)]
unsafe fn with_stack<T>(owner: &Owner, f: impl FnOnce(&mut dyn Stack) -> T) -> T {
    owner.set_busy(true);
    // SAFETY: as the caller promises, no other reference to the stack exists, and being busy
    // keeps any nested router call from making one until this one ends.
    let result = f(unsafe { &mut *owner.stack });
    owner.set_busy(false);
    result
}

/// Checks that `owner` (from the page map) is a record header; aborts otherwise.
#[inline(always)]
fn checked<'a>(owner: *const Owner) -> &'a Owner {
    // SAFETY: the page map holds only pointers to record headers, which stay allocated
    // while any of their pages is claimed; the magic check catches corruption of the map.
    let owner = unsafe { &*owner };
    if owner.magic != MAGIC {
        corrupted(owner);
    }
    owner
}

/// Reports a record whose magic is wrong, and aborts.
#[cold]
#[inline(never)]
fn corrupted(owner: &Owner) -> ! {
    abort_with(format_args!(
        "router: corrupted owner record at {:p} (magic {:#x})",
        owner, owner.magic
    ))
}

/// The fast path of [`alloc_in`]: a block carved from the current window, when the region
/// is not busy, carves blocks of `layout` and its window has room. `None` means "ask
/// [`alloc_in`]", not "out of memory".
///
/// # Safety
///
/// As [`alloc_in`].
#[inline(always)]
pub(crate) unsafe fn carve_in(owner: *const Owner, layout: Layout) -> Option<NonNull<u8>> {
    // SAFETY: as the caller promises, a live record header.
    let owner = unsafe { &*owner };
    if owner.busy_now() || !owner.carved(layout) {
        return None;
    }
    let block = owner.carve(layout)?;
    owner.live.set(owner.live.get().wrapping_add(1));
    Some(block)
}

/// Allocates from the active region `owner`, which is this thread's: `Err(())` when the
/// region is busy (in a call, or lent out by `Region::with_layer`) and cannot serve,
/// `Ok(None)` when its stack is out of memory.
///
/// # Safety
///
/// `owner` is the header of an active region owned by this thread (taken from this
/// thread's frames, or checked already), so its magic is not checked again here.
#[inline(never)]
pub(crate) unsafe fn alloc_in(
    owner: *const Owner,
    layout: Layout,
) -> Result<Option<NonNull<u8>>, ()> {
    // SAFETY: as the caller promises, a live record header.
    let owner = unsafe { &*owner };
    if owner.busy_now() {
        return Err(());
    }
    let block = if owner.carved(layout) {
        match owner.carve(layout) {
            Some(block) => Some(block),
            None => refill_and_carve(owner, layout),
        }
    } else {
        catch_up(owner);
        // SAFETY: the owner thread, active, not busy.
        unsafe { with_stack(owner, |stack| stack.get(layout)) }
    };
    if block.is_some() {
        owner.live.set(owner.live.get().wrapping_add(1));
    }
    Ok(block)
}

/// Takes a new window from the stack and carves the block from it (`None`: out of memory).
#[cold]
#[inline(never)]
fn refill_and_carve(owner: &Owner, layout: Layout) -> Option<NonNull<u8>> {
    catch_up(owner);
    // SAFETY: the owner thread, active, not busy (checked by `alloc_in`).
    let window = unsafe { with_stack(owner, |stack| stack.window(layout)) }?;
    let floor = window.cast::<u8>().as_ptr();
    owner.window_floor.set(floor);
    owner.window_top.set(floor.wrapping_add(window.len()));
    let block = owner.carve(layout);
    debug_require!(
        block.is_some(),
        "router: a fresh window has no room for its block"
    );
    block
}

/// Tries to resize `ptr` in place in its region `owner`; `None` when the region cannot be
/// driven from this thread now (not ours, a zombie, or busy).
///
/// # Safety
///
/// `ptr` is a live block of `owner` got with `old`; `new` has `old`'s alignment.
pub(crate) unsafe fn resize_in_place(
    owner: *const Owner,
    thread: usize,
    ptr: NonNull<u8>,
    old: Layout,
    new: Layout,
) -> Option<bool> {
    if !drivable(owner, thread) {
        return None;
    }
    let owner = checked(owner);
    if owner.carved(old) || owner.carved(new) {
        // A carved block keeps its bytes when it shrinks and stays carved; it never grows.
        // A block that would change between carved and not must move.
        return Some(owner.carved(old) && owner.carved(new) && new.size() <= old.size());
    }
    // SAFETY: the owner thread, active, not busy; the block is live with `old`, and both
    // layouts keep the alignment.
    Some(unsafe { with_stack(owner, |stack| stack.resize_in_place(ptr, old, new)) })
}

/// Whether blocks of `owner` can be allocated and put from this thread right now.
#[inline(always)]
pub(crate) fn drivable(owner: *const Owner, thread: usize) -> bool {
    checked(owner).drivable_by(thread)
}

/// Gives a block back to its region `owner`, from any thread.
///
/// # Safety
///
/// `ptr` is a live block that the router got from `owner`'s stack with `layout`, with
/// provenance over its whole allocation (the page map's base), and is freed once.
#[inline(always)]
pub(crate) unsafe fn free_in(owner: *const Owner, thread: usize, ptr: NonNull<u8>, layout: Layout) {
    let owner_ref = checked(owner);
    if !owner_ref.drivable_by(thread) {
        // SAFETY: passed on from the caller.
        return unsafe { free_queued(owner, ptr, layout) };
    }
    if owner_ref.carved(layout) {
        // A carved block only counts: its bytes go back with its window.
        owner_ref.live.set(owner_ref.live.get().wrapping_sub(1));
    } else {
        // SAFETY: passed on from the caller; the owner thread, active, not busy.
        unsafe { put_in_stack(owner_ref, ptr, layout) }
    }
}

/// Puts a block into the stack of a region this thread drives: the out-of-line half of
/// [`free_in`], so that a carved block's free needs no stack frame.
///
/// # Safety
///
/// As [`free_in`]; `drivable(owner, this thread)` holds.
#[inline(never)]
unsafe fn put_in_stack(owner: &Owner, ptr: NonNull<u8>, layout: Layout) {
    // SAFETY: the owner thread, active, not busy; the block is live in the stack.
    unsafe { with_stack(owner, |stack| stack.put(ptr, layout)) };
    owner.live.set(owner.live.get().wrapping_sub(1));
}

/// A free from a thread that cannot drive the stack now: queue it for the owner, or, for a
/// zombie, put it into the stack under the lock.
///
/// # Safety
///
/// As [`free_in`].
#[cold]
unsafe fn free_queued(owner: *const Owner, block: NonNull<u8>, layout: Layout) {
    let owner_ref = checked(owner);
    owner_ref.lock();
    // SAFETY: the lock is held until the end of this function (or the record is gone).
    let queue = unsafe { owner_ref.queue() };
    if !queue.zombie {
        queue.push(Entry { block, layout });
        owner_ref.pending.store(true, Ordering::Release);
        owner_ref.unlock();
        return;
    }
    // A zombie: the lock gives exclusive access to its stack (the owner no longer drives
    // it), and the stack is `Send`, so any thread may.
    // SAFETY: as above; the block is live in the stack with `layout`.
    unsafe { owner_ref.put_into(&mut *owner_ref.stack, block, layout) };
    let live = owner_ref.live.get().wrapping_sub(1);
    owner_ref.live.set(live);
    if live == 0 {
        // The last block: no other free can reach the record any more.
        // SAFETY: nothing is live and the lock is ours.
        unsafe { release(owner) };
    } else {
        owner_ref.unlock();
    }
}

/// Deinitialises the stack and frees the queue and the record.
///
/// # Safety
///
/// No block of the region is live and no other thread can reach the record.
unsafe fn release(owner: *const Owner) {
    // SAFETY: exclusive access, as the caller promises.
    unsafe {
        (*(*owner).stack).deinit();
        (*(*owner).queue.get()).take().free();
        ((*owner).release_record)(owner.cast_mut());
    }
}

/// Puts the queued frees into the stack (owner thread, region active). A busy region
/// catches up later.
#[inline(always)]
pub(crate) fn catch_up(owner: &Owner) {
    if owner.pending.load(Ordering::Acquire) && !owner.busy_now() {
        drain(owner);
    }
}

/// The body of [`catch_up`], out of the allocation path.
#[cold]
#[inline(never)]
fn drain(owner: &Owner) {
    owner.lock();
    // SAFETY: the lock is held.
    let taken = unsafe { owner.queue() }.take();
    owner.pending.store(false, Ordering::Relaxed);
    owner.unlock();
    // The puts run without the lock, so that a stack that frees into another region (a
    // `Pipe`) never holds two locks.
    for entry in taken.entries() {
        // SAFETY: the owner thread, active, not busy; each entry is a live block of this
        // region, queued once.
        unsafe {
            with_stack(owner, |stack| {
                owner.put_into(stack, entry.block, entry.layout)
            })
        };
        owner.live.set(owner.live.get().wrapping_sub(1));
    }
    owner.lock();
    // SAFETY: the lock is held.
    let queue = unsafe { owner.queue() };
    if queue.entries.is_null() {
        // Keep the array for the next frees.
        *queue = Queue {
            len: 0,
            zombie: queue.zombie,
            ..taken
        };
    } else {
        taken.free();
    }
    owner.unlock();
}

/// Ends the region's handle: the region is released now if no block is live, or becomes a
/// zombie that the last free releases. Returns the number of blocks still live.
///
/// # Safety
///
/// Called once, by the owner thread, when the handle is dropped, outside any stack call.
pub(crate) unsafe fn end(owner: *const Owner) -> usize {
    let owner_ref = checked(owner);
    owner_ref.lock();
    // Under the lock from here on: frees that come later wait for it, and so see
    // everything done here.
    // SAFETY: the lock is held.
    let queue = unsafe { owner_ref.queue() };
    queue.zombie = true;
    owner_ref.drop_window();
    let taken = queue.take();
    for entry in taken.entries() {
        // SAFETY: the owner thread holds the lock of its zombie region; each entry is a
        // live block of this region, queued once.
        unsafe { owner_ref.put_into(&mut *owner_ref.stack, entry.block, entry.layout) };
        owner_ref.live.set(owner_ref.live.get().wrapping_sub(1));
    }
    taken.free();
    owner_ref.driver.store(NO_DRIVER, Ordering::Relaxed);
    let live = owner_ref.live.get();
    if live == 0 {
        // SAFETY: nothing is live, so no free can reach the record any more.
        unsafe { release(owner) };
    } else {
        owner_ref.unlock();
    }
    live
}
