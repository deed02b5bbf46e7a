//! The owner record of a region, and how blocks reach it: allocation on the owner thread,
//! frees on the owner thread, remote frees from other threads, and zombie regions.
//!
//! Every region's layer stack lives in a record of its own, mapped from the OS (so it
//! never depends on another region) and never moved. The page map points at the record's
//! [`Owner`] header.
//!
//! Who touches the stack:
//! - while the region is *active* (its `Region` handle alive), only its owner thread, which
//!   is the only thread that can enter it (`Region` is neither `Send` nor `Sync`);
//! - other threads never do: they push freed blocks on the lock-free `remote` list, which
//!   the owner drains into the stack;
//! - once the handle is dropped with blocks still live, the region is a *zombie*: `remote`
//!   holds the `ZOMBIE` sentinel, and any thread that frees one of its blocks takes
//!   `zombie_lock` and puts the block itself. The last free releases the stack and unmaps
//!   the record.
//!
//! Invariants: `live` counts blocks handed out by the router and not yet put back into the
//! stack (blocks waiting on `remote` still count); it is written only by the owner thread
//! while active, and only under `zombie_lock` afterwards (the owner holds the lock across
//! the switch).

use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::Layer;
use crate::abort::abort_with;
use crate::layers::LeakReport;

/// The sentinel `remote` holds once the region is a zombie.
const ZOMBIE: *mut RemoteNode = ptr::without_provenance_mut(1);
const MAGIC: u64 = 0x5354_5241_5441_4C4C; // "STRATALL"

/// A block freed by another thread, waiting for the owner: written into the block itself.
struct RemoteNode {
    next: *mut RemoteNode,
    size: usize,
    align: usize,
}

/// Router blocks are at least this big and this aligned, so that a freed one can hold a
/// [`RemoteNode`].
const MIN_SIZE: usize = size_of::<RemoteNode>();
const MIN_ALIGN: usize = align_of::<RemoteNode>();

/// The layout the router asks a region's stack for, given the program's layout.
#[inline(always)]
pub(crate) fn stack_layout(layout: Layout) -> Layout {
    // SAFETY: raising the size to 24 and the alignment to 8 keeps a valid layout valid
    // (the size stays far below `isize::MAX` rounded to any alignment that was valid).
    unsafe {
        Layout::from_size_align_unchecked(
            layout.size().max(MIN_SIZE),
            layout.align().max(MIN_ALIGN),
        )
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
    fn leak_report(&self) -> Option<LeakReport> {
        Layer::leak_report(self)
    }
    fn deinit(&mut self) {
        Layer::deinit(self)
    }
}

/// The header of a region's record; the page map points here.
pub(crate) struct Owner {
    magic: u64,
    /// The stack in the same record.
    stack: *mut dyn Stack,
    /// The owner thread's token (see `frames::token`).
    thread: usize,
    remote: AtomicPtr<RemoteNode>,
    zombie_lock: AtomicBool,
    /// Set by the owner thread when the handle is dropped; read by it only.
    zombie: Cell<bool>,
    /// Set by the owner thread while the stack is in a call (`with_stack`) or lent out by
    /// `Region::with_layer`: a busy region is never driven again until it is not (its
    /// allocations fall back to the system allocator, its frees wait on `remote`), which
    /// rules out re-entering a stack through `Pipe` chains.
    busy: Cell<bool>,
    live: Cell<usize>,
    /// Unmaps the record (type-erased: it knows the stack's type).
    release_record: unsafe fn(*mut Owner),
}

impl Owner {
    pub(crate) fn new(
        stack: *mut dyn Stack,
        thread: usize,
        release: unsafe fn(*mut Owner),
    ) -> Self {
        Owner {
            magic: MAGIC,
            stack,
            thread,
            remote: AtomicPtr::new(ptr::null_mut()),
            zombie_lock: AtomicBool::new(false),
            zombie: Cell::new(false),
            busy: Cell::new(false),
            live: Cell::new(0),
            release_record: release,
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    pub(crate) fn set_busy(&self, busy: bool) {
        self.busy.set(busy);
    }

    pub(crate) fn busy_now(&self) -> bool {
        self.busy.get()
    }

    /// The stack; dereferenced only by the owner thread while the region is active and
    /// outside any stack call, or under the zombie lock.
    pub(crate) fn stack(&self) -> *mut dyn Stack {
        self.stack
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
    owner.busy.set(true);
    // SAFETY: as the caller promises, no other reference to the stack exists, and `busy`
    // keeps any nested router call from making one until this one ends.
    let result = f(unsafe { &mut *owner.stack });
    owner.busy.set(false);
    result
}

/// Checks that `owner` (from the page map) is a record header; aborts otherwise.
#[inline(always)]
fn checked<'a>(owner: *const Owner) -> &'a Owner {
    // SAFETY: the page map holds only pointers to record headers, which stay mapped while
    // any of their pages is claimed; the magic check catches corruption of the map.
    let owner = unsafe { &*owner };
    if owner.magic != MAGIC {
        abort_with(format_args!(
            "router: corrupted owner record at {:p} (magic {:#x})",
            owner, owner.magic
        ));
    }
    owner
}

/// Allocates from the active region `owner`, which is this thread's: `Err(())` when the
/// region is lent out by `Region::with_layer` and cannot serve, `Ok(None)` when its stack
/// is out of memory.
///
/// # Safety
///
/// `owner` is the header of an active region owned by this thread, not inside a stack call.
#[inline]
pub(crate) unsafe fn alloc_in(
    owner: *const Owner,
    layout: Layout,
) -> Result<Option<NonNull<u8>>, ()> {
    let owner = checked(owner);
    if owner.busy.get() {
        return Err(());
    }
    if !owner.remote.load(Ordering::Relaxed).is_null() {
        drain(owner);
    }
    // SAFETY: the owner thread, active, not busy.
    let block = unsafe { with_stack(owner, |stack| stack.get(stack_layout(layout))) };
    if block.is_some() {
        owner.live.set(owner.live.get() + 1);
    }
    Ok(block)
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
    let owner = checked(owner);
    if owner.thread != thread || owner.zombie.get() || owner.busy.get() {
        return None;
    }
    // SAFETY: the owner thread, active, not busy; the block is live with
    // `stack_layout(old)`, and both layouts keep the alignment.
    Some(unsafe {
        with_stack(owner, |stack| {
            stack.resize_in_place(ptr, stack_layout(old), stack_layout(new))
        })
    })
}

/// Whether blocks of `owner` can be allocated and put from this thread right now.
#[inline(always)]
pub(crate) fn drivable(owner: *const Owner, thread: usize) -> bool {
    let owner = checked(owner);
    owner.thread == thread && !owner.zombie.get() && !owner.busy.get()
}

/// Gives a block back to its region `owner`, from any thread.
///
/// # Safety
///
/// `ptr` is a live block that the router got from `owner`'s stack with `layout` (the
/// program's layout), and is freed once.
#[inline]
pub(crate) unsafe fn free_in(owner: *const Owner, thread: usize, ptr: NonNull<u8>, layout: Layout) {
    let owner_ref = checked(owner);
    if owner_ref.thread == thread && !owner_ref.zombie.get() && !owner_ref.busy.get() {
        // SAFETY: the owner thread, active, not busy.
        unsafe { with_stack(owner_ref, |stack| stack.put(ptr, stack_layout(layout))) };
        owner_ref.live.set(owner_ref.live.get() - 1);
        return;
    }
    // SAFETY: passed on from the caller.
    unsafe { free_remote(owner, ptr, layout) }
}

/// A free from a thread that cannot drive the stack: push it for the owner, or, for a
/// zombie, put it under the lock.
///
/// # Safety
///
/// As [`free_in`].
#[cold]
unsafe fn free_remote(owner: *const Owner, ptr: NonNull<u8>, layout: Layout) {
    let owner_ref = checked(owner);
    let layout = stack_layout(layout);
    let node = ptr.as_ptr().cast::<RemoteNode>();
    let mut head = owner_ref.remote.load(Ordering::Acquire);
    loop {
        if head == ZOMBIE {
            // SAFETY: passed on.
            unsafe { free_zombie(owner, ptr, layout) };
            return;
        }
        // SAFETY: the block is ours now, at least 24 bytes and 8-aligned (`stack_layout`).
        unsafe {
            node.write(RemoteNode {
                next: head,
                size: layout.size(),
                align: layout.align(),
            })
        };
        match owner_ref.remote.compare_exchange_weak(
            head,
            node,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

fn lock(owner: &Owner) {
    while owner
        .zombie_lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
}

fn unlock(owner: &Owner) {
    owner.zombie_lock.store(false, Ordering::Release);
}

/// Puts a block of a zombie region, releasing the region with its last block.
///
/// # Safety
///
/// As [`free_in`], with `layout` already the stack's layout; the region is a zombie.
unsafe fn free_zombie(owner: *const Owner, ptr: NonNull<u8>, layout: Layout) {
    let owner_ref = checked(owner);
    lock(owner_ref);
    // SAFETY: the lock gives exclusive access to a zombie's stack (the owner no longer
    // drives it); the stack is `Send`, so any thread may.
    unsafe { (*owner_ref.stack).put(ptr, layout) };
    let live = owner_ref.live.get() - 1;
    owner_ref.live.set(live);
    if live == 0 {
        // The last block: nobody else can reach the record any more.
        // SAFETY: as above; the record is released once, by the thread that freed the
        // last block.
        unsafe { release(owner) };
    } else {
        unlock(owner_ref);
    }
}

/// Deinitialises the stack and unmaps the record.
///
/// # Safety
///
/// No block of the region is live and no other thread can reach the record.
unsafe fn release(owner: *const Owner) {
    // SAFETY: exclusive access, as the caller promises.
    unsafe {
        (*(*owner).stack).deinit();
        ((*owner).release_record)(owner.cast_mut());
    }
}

/// Puts every block waiting on the remote list into the stack (owner thread, active, not
/// busy; a busy region drains later).
fn drain(owner: &Owner) {
    if owner.busy.get() {
        return;
    }
    let list = owner.remote.swap(ptr::null_mut(), Ordering::AcqRel);
    // Busy while the puts run, like any stack call.
    owner.busy.set(true);
    drain_list(owner, list);
    owner.busy.set(false);
}

/// Brings the stack up to date with frees from other threads (owner thread, active region).
pub(crate) fn catch_up(owner: &Owner) {
    if !owner.remote.load(Ordering::Relaxed).is_null() {
        drain(owner);
    }
}

/// Ends the region's handle: the region is released now if no block is live, or becomes a
/// zombie that the last free releases. Returns the number of blocks still live.
///
/// # Safety
///
/// Called once, by the owner thread, when the handle is dropped, outside any stack call.
pub(crate) unsafe fn end(owner: *const Owner) -> usize {
    let owner_ref = checked(owner);
    // Under the lock from here on: frees that see the sentinel wait for it, and so see
    // everything done here.
    lock(owner_ref);
    let pending = owner_ref.remote.swap(ZOMBIE, Ordering::AcqRel);
    drain_list(owner_ref, pending);
    owner_ref.zombie.set(true);
    let live = owner_ref.live.get();
    if live == 0 {
        // SAFETY: nothing is live, so no free can reach the record any more.
        unsafe { release(owner) };
    } else {
        unlock(owner_ref);
    }
    live
}

/// Puts the blocks of a detached remote list into the stack.
fn drain_list(owner: &Owner, mut node: *mut RemoteNode) {
    while !node.is_null() && node != ZOMBIE {
        // SAFETY: nodes were written by `free_remote` into freed blocks of this region; the
        // caller drives the stack (the owner thread while active, under the lock in `end`).
        unsafe {
            let RemoteNode { next, size, align } = node.read();
            (*owner.stack).put(
                NonNull::new_unchecked(node.cast()),
                Layout::from_size_align_unchecked(size, align),
            );
            node = next;
        }
        owner.live.set(owner.live.get() - 1);
    }
}
