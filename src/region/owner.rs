//! The owner record of a region, and how blocks reach it: allocation on the owner thread,
//! frees on the owner thread, frees from other threads, and zombie regions.
//!
//! Entry points: [`Owner`], the record's header, and the router's calls on it:
//! [`alloc_in`], [`free_in`], [`resize_in_place`], [`end`].
//!
//! Every region's layer stack lives in a record of its own (from the system allocator, so
//! it never depends on another region) and never moves. The page map points at the
//! record's [`Owner`] header.
//!
//! Who touches the stack:
//! - while the region is *active* (its `Region` handle alive), only its owner thread, which
//!   is the only thread that can enter it (`Region` is neither `Send` nor `Sync`);
//! - other threads never do: a block they free goes on the region's queue, an array beside
//!   the stack behind its own lock (`queue`), which the owner drains into the stack;
//! - once the handle is dropped with blocks still live, the region is a *zombie*: its frees
//!   are queued too, and one thread at a time (the *driver*, marked by `driving`) puts them
//!   into the stack, outside the lock; the last one releases the stack and the record.
//!
//! Two rules shape every path (the router's rule 5):
//! - **No stack code runs while an owner's lock is held.** The lock guards only the queue
//!   and the zombie's flags; puts happen after it is let go. Stack code may free into
//!   another region (a `Pipe` giving a piece back), which takes that region's lock: with
//!   no stack code under a lock, no two locks are ever held at once.
//! - **A block's memory is not touched, nor released, during its own free.** The program
//!   may free a `Box` it received by value, whose memory the language still protects until
//!   the function it was passed to returns (Stacked and Tree Borrows: an access through the
//!   source's pointer would be undefined behaviour). So a free that needs the stack is
//!   never put there inside the `dealloc` call that frees it: on the owner thread it waits
//!   in `deferred`, put at the next allocation the stack serves (or when `deferred` is
//!   full, or at a region operation); a zombie's waits in its queue until the next region
//!   operation of any thread services the zombies (see [`service_zombies`]). Nothing is
//!   ever written into a freed block by this module.
//!
//! Pieces a [`Pipe`](crate::layers::Pipe) region takes from its enclosing region are *lent*
//! and counted apart (`lent`), so that a region whose only live blocks are pieces lent to
//! other regions' pipes does not report an escape. A pipe takes pieces only from a region
//! made before its own (`seq`), so lending never forms a cycle and every zombie chain ends.
//!
//! Counters use wrapping arithmetic: an overflow panic in a debug build would unwind out of
//! the global allocator. The queue's memory comes from the system allocator directly. Every
//! call into the stack goes through [`Stack`], whose methods abort with one line if the
//! layer code unwinds.
//!
//! `fork` in a multi-threaded program: the router registers no fork handlers. A region's
//! lock (or `Ground`'s piece cache) that another thread holds at the moment of the fork
//! stays held in the child, and a free into that region there would wait for good. POSIX
//! allows the child of a multi-threaded program only async-signal-safe calls until it
//! calls `exec`, which rules out allocating and freeing; `fork` is an `unsafe` call in
//! Rust for that reason, and `std::process::Command` allocates nothing between its `fork`
//! and `exec`. A single-threaded program forks with no lock held (each is let go before the
//! call that took it returns). The locks are held only for a few stores each (no layer code
//! runs under them), so programs that ignore the rule rarely meet it, but the router does
//! not promise to survive it.
//!
//! Invariants: `live` counts blocks handed out by the router and not yet put back into the
//! stack (deferred and queued frees still count), `lent` those of them lent to pipes; both
//! are written only by the owner thread while active, and by the zombie's driver under
//! the queue's lock afterwards. `pending` is set whenever the queue of an active region
//! holds entries. A zombie is on the service list (`listed`) only while its queue holds
//! entries and no thread drives it. While an active region is busy its window is parked
//! (empty, see `Owner::window_top`) and it knows no page (`known_page`), so the router's
//! quick paths, which do not read `driver`, neither carve from it nor count its frees.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::alloc::System;

use crate::Layer;
use crate::abort::{abort_with, call, debug_require, no_unwind};
use crate::layer::served_size;
use crate::layers::LeakReport;
use crate::region::frames;
use crate::region::page_map::PAGE_BITS;
use crate::spin::SpinLock;

const MAGIC: u64 = 0x5354_5241_5441_4C4C; // "STRATALL"

/// Frees the owner thread makes that wait for the next allocation to be put into the stack.
const DEFERRED: usize = 16;

// ---- queued frees ------------------------------------------------------------------------

/// A block freed but not yet put into the stack.
#[derive(Clone, Copy)]
struct Entry {
    block: NonNull<u8>,
    layout: Layout,
    /// A piece lent to a pipe, coming back.
    lent: bool,
}

impl Entry {
    #[inline(always)]
    fn freed(block: NonNull<u8>, layout: Layout, lent: bool) -> Entry {
        Entry {
            block,
            layout,
            lent,
        }
    }
}

/// Frees waiting behind the owner's lock, in an array from the system allocator, with the
/// region's state as other threads see it.
struct Queue {
    entries: *mut Entry,
    len: usize,
    capacity: usize,
    /// Set when the region's handle ended.
    zombie: bool,
    /// A zombie whose stack a thread is putting frees into, outside the lock.
    driving: bool,
    /// A zombie on the service list.
    listed: bool,
}

impl Queue {
    const EMPTY: Queue = Queue {
        entries: ptr::null_mut(),
        len: 0,
        capacity: 0,
        zombie: false,
        driving: false,
        listed: false,
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
                    "router: no memory to queue a free ({} waiting)",
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

    /// Takes the entries out, leaving the queue empty (without an array) and its flags
    /// as they were.
    fn take(&mut self) -> Queue {
        let flags = Queue {
            zombie: self.zombie,
            driving: self.driving,
            listed: self.listed,
            ..Queue::EMPTY
        };
        core::mem::replace(self, flags)
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

// ---- the type-erased stack ---------------------------------------------------------------

/// A layer stack with its type erased, as the router drives it. Each method aborts with
/// one line naming the layer if the layer's code unwinds (the router may be inside a
/// global allocator, which must not unwind).
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
        no_unwind::<L, { call::GET }, _>(|| Layer::get(self, layout))
    }
    #[inline(always)]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties are `Layer::put`'s.
        no_unwind::<L, { call::PUT }, _>(|| unsafe { Layer::put(self, ptr, layout) })
    }
    unsafe fn resize_in_place(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        // SAFETY: the caller's duties are those of the method the sizes select.
        no_unwind::<L, { call::RESIZE }, _>(|| unsafe {
            if new.size() >= old.size() {
                Layer::grow(self, ptr, old, new)
            } else {
                Layer::shrink(self, ptr, old, new)
            }
        })
    }
    #[inline(never)]
    fn window(&mut self, layout: Layout) -> Option<NonNull<[u8]>> {
        no_unwind::<L, { call::WINDOW }, _>(|| Layer::window(self, layout))
    }
    fn leak_report(&self) -> Option<LeakReport> {
        no_unwind::<L, { call::LEAK_REPORT }, _>(|| Layer::leak_report(self))
    }
    fn deinit(&mut self) {
        no_unwind::<L, { call::DEINIT }, _>(|| Layer::deinit(self))
    }
}

// ---- the owner record --------------------------------------------------------------------

/// [`Owner::driver`] while the owner thread has the stack in a call or lent out.
const BUSY: usize = 1;
/// [`Owner::driver`] once the handle has ended (a zombie), and for good when the region was
/// made during thread teardown (when there is no token to name its thread by).
const NO_DRIVER: usize = 2;

/// `window_floor` while the window is parked: above every address, so nothing is carved.
const BUSY_FLOOR: *mut u8 = ptr::without_provenance_mut(usize::MAX);

/// `known_page` when no page is known (page numbers are addresses shifted right by
/// [`PAGE_BITS`], far below it).
const NO_PAGE: usize = usize::MAX;

/// Zombies whose queues hold frees that no thread is putting: a stack linked through
/// [`Owner::service_next`], pushed under each zombie's lock, taken whole by
/// [`service_zombies`].
static ZOMBIES: AtomicPtr<Owner> = AtomicPtr::new(ptr::null_mut());

/// The header of a region's record; the page map points here.
///
/// The fields a free and a carved allocation read come first. (Aligning the header to a
/// cache line made the system allocator serve each record through `posix_memalign`, which
/// cost more in short-lived regions than the lines it saved.)
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
    ///
    /// While the region is busy the window is *parked*: its floor and end are set aside in
    /// `parked` and replaced by [`BUSY_FLOOR`] and `window_top`, so the window is empty for
    /// carving and for the free in [`in_current_window`]. The carving and the quick frees
    /// therefore need no check of `driver` (the current region of a thread is never a
    /// zombie, nor another thread's, so its only undrivable state is busy).
    window_top: Cell<*mut u8>,
    window_floor: Cell<*mut u8>,
    /// The end of the window's carved part that holds this region's blocks alone: every
    /// address in `window_top..window_end` is inside a block carved from the window for the
    /// program (a piece lent to a pipe from the window moves it down to below the piece).
    /// A free there needs no page map ([`in_current_window`]). Null with no window.
    window_end: Cell<*mut u8>,
    /// A page (its number, address >> 12) that the page map gave to this region while it
    /// was drivable, with no stack call, window change or loan since: a page leaves a
    /// region only inside those (pages may join it elsewhere, a pipe giving a piece back),
    /// so the page is still this region's, and a free of a carved block that starts on it
    /// needs no page map ([`in_known_page`]). [`NO_PAGE`] when none, and while busy (being
    /// marked busy forgets it). Owner thread only.
    known_page: Cell<usize>,
    /// The owner thread's token (see `frames::token`), or [`NO_DRIVER`].
    thread: usize,
    /// The stack in the same record.
    stack: *mut dyn Stack,
    /// Of the `live` blocks, the pieces lent to pipes.
    lent: Cell<usize>,
    /// Frees made by the owner thread, waiting to be put (owner thread only).
    deferred: [Cell<MaybeUninit<Entry>>; DEFERRED],
    deferred_len: Cell<usize>,
    /// The window's floor and end while it is parked (busy), restored when the region is
    /// not busy any more.
    parked: Cell<(*mut u8, *mut u8)>,
    /// The region's place in its thread's creation order ([`frames::next_seq`]).
    seq: u64,
    /// Whether the queue of an active region holds entries: a hint the owner reads without
    /// the lock.
    pending: AtomicBool,
    queue: SpinLock<Queue>,
    /// The next zombie on the service list: written by the thread that lists this one
    /// (before it publishes it), read by the thread that takes the list.
    service_next: Cell<*mut Owner>,
    /// Frees the record (type-erased: it knows the stack's type).
    free_record: unsafe fn(*mut Owner),
}

impl Owner {
    /// Writes a new header at `at`, field by field: built in place, the header costs no
    /// copy, and the slots of `deferred` stay unwritten until a free parks there (a region
    /// per request or per tree makes one for each).
    ///
    /// # Safety
    ///
    /// `at` is valid for writes of an `Owner` and aligned for it; whatever it held before is
    /// overwritten without being dropped.
    pub(crate) unsafe fn write_at(
        at: *mut Owner,
        stack: *mut dyn Stack,
        thread: usize,
        window_limit: usize,
        free_record: unsafe fn(*mut Owner),
    ) {
        // During thread teardown there is no token (0, which every thread in teardown
        // shares): such a region is never driven, and its frees are queued.
        let thread = if thread == 0 { NO_DRIVER } else { thread };
        // Every field is listed here, so that a field added to `Owner` fails to compile
        // until it is written below too.
        let _every_field = |owner: Owner| {
            let Owner {
                magic: _,
                driver: _,
                live: _,
                window_limit: _,
                window_top: _,
                window_floor: _,
                window_end: _,
                known_page: _,
                thread: _,
                stack: _,
                lent: _,
                deferred: _,
                deferred_len: _,
                parked: _,
                seq: _,
                pending: _,
                queue: _,
                service_next: _,
                free_record: _,
            } = owner;
        };
        // SAFETY: as the caller promises; every field but `deferred` (whose slots need no
        // initial value) is written.
        unsafe {
            (&raw mut (*at).magic).write(MAGIC);
            (&raw mut (*at).driver).write(AtomicUsize::new(thread));
            (&raw mut (*at).live).write(Cell::new(0));
            (&raw mut (*at).window_limit).write(window_limit);
            (&raw mut (*at).window_top).write(Cell::new(ptr::null_mut()));
            (&raw mut (*at).window_floor).write(Cell::new(ptr::null_mut()));
            (&raw mut (*at).window_end).write(Cell::new(ptr::null_mut()));
            (&raw mut (*at).known_page).write(Cell::new(NO_PAGE));
            (&raw mut (*at).thread).write(thread);
            (&raw mut (*at).stack).write(stack);
            (&raw mut (*at).lent).write(Cell::new(0));
            (&raw mut (*at).deferred_len).write(Cell::new(0));
            (&raw mut (*at).parked).write(Cell::new((ptr::null_mut(), ptr::null_mut())));
            (&raw mut (*at).seq).write(frames::next_seq());
            (&raw mut (*at).pending).write(AtomicBool::new(false));
            (&raw mut (*at).queue).write(SpinLock::new(Queue::EMPTY));
            (&raw mut (*at).service_next).write(Cell::new(ptr::null_mut()));
            (&raw mut (*at).free_record).write(free_record);
        }
    }

    /// Blocks handed out and not yet back in the stack, lent pieces included.
    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    /// Of those, the ones the program holds: all but the pieces lent to pipes.
    pub(crate) fn held_by_the_program(&self) -> usize {
        self.live.get().wrapping_sub(self.lent.get())
    }

    /// Marks the stack busy or not (owner thread, region active), parking the window or
    /// restoring it (see `window_top`).
    #[inline(always)]
    pub(crate) fn set_busy(&self, busy: bool) {
        if busy == self.busy_now() {
            return;
        }
        if busy {
            // A stack call may give pages away (see `known_page`).
            self.known_page.set(NO_PAGE);
            self.parked
                .set((self.window_floor.get(), self.window_end.get()));
            self.window_floor.set(BUSY_FLOOR);
            self.window_end.set(self.window_top.get());
        } else {
            let (floor, end) = self.parked.get();
            self.window_floor.set(floor);
            self.window_end.set(end);
        }
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

    /// Forgets the current window, parked or not: call before anything that ends the
    /// stack's blocks.
    pub(crate) fn drop_window(&self) {
        self.window_top.set(ptr::null_mut());
        self.window_end.set(ptr::null_mut());
        let floor = if self.busy_now() {
            BUSY_FLOOR
        } else {
            ptr::null_mut()
        };
        self.window_floor.set(floor);
        self.parked.set((ptr::null_mut(), ptr::null_mut()));
        self.known_page.set(NO_PAGE);
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

    /// Puts a freed block into the stack, unless it was carved from a window.
    ///
    /// # Safety
    ///
    /// As [`Layer::put`], with exclusive access to the stack.
    #[inline(always)]
    unsafe fn put_into(&self, stack: &mut dyn Stack, entry: Entry) {
        if !self.carved(entry.layout) {
            // SAFETY: as the caller promises.
            unsafe { stack.put(entry.block, entry.layout) }
        }
    }

    /// Counts a freed carved block: it only counts, as its bytes go back with its window.
    #[inline(always)]
    fn count_carved_free(&self) {
        self.live.set(self.live.get().wrapping_sub(1));
    }

    /// Counts `blocks` freed blocks, `lent` of them pieces lent to pipes, as back in the
    /// stack.
    fn count_back(&self, blocks: usize, lent: usize) {
        self.live.set(self.live.get().wrapping_sub(blocks));
        self.lent.set(self.lent.get().wrapping_sub(lent));
    }

    /// The stack; dereferenced only by the owner thread while the region is active and
    /// outside any stack call, or by a zombie's driver.
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

// ---- allocation and resizing on the owner thread -----------------------------------------

/// The fast path of [`alloc_in`]: a block carved from the current window, when the region
/// carves blocks of `layout` and its window has room (a busy region's window is parked, so
/// it has none). `None` means "ask [`alloc_in`]", not "out of memory".
///
/// # Safety
///
/// As [`alloc_in`].
#[inline(always)]
pub(crate) unsafe fn carve_in(owner: *const Owner, layout: Layout) -> Option<NonNull<u8>> {
    // SAFETY: as the caller promises, a live record header.
    let owner = unsafe { &*owner };
    if !owner.carved(layout) {
        return None;
    }
    let block = owner.carve(layout)?;
    owner.live.set(owner.live.get().wrapping_add(1));
    Some(block)
}

/// Allocates from the active region `owner`, which is this thread's: `Err(())` when the
/// region cannot serve (busy: in a call, or lent out by `Region::with_layer`; or the thread
/// is panicking, whose allocations are the panic machinery's and go to the ground), and
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
    if owner.busy_now() || std::thread::panicking() {
        return Err(());
    }
    service_zombies();
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

/// [`alloc_in`] for a piece that a pipe region takes from `owner`, its enclosing region:
/// counted as lent, so that `owner` ending does not report it as an escape.
///
/// # Safety
///
/// As [`alloc_in`].
pub(crate) unsafe fn lend_in(
    owner: *const Owner,
    layout: Layout,
) -> Result<Option<NonNull<u8>>, ()> {
    // SAFETY: passed on from the caller.
    let block = unsafe { alloc_in(owner, layout) };
    if let Ok(Some(_)) = block {
        // SAFETY: as above, a live record header of this thread's active region.
        let owner = unsafe { &*owner };
        owner.lent.set(owner.lent.get().wrapping_add(1));
        // The piece's pages go to the pipe.
        owner.known_page.set(NO_PAGE);
        if owner.carved(layout) {
            // The piece was carved from the window, and will be the pipe's: the part of
            // the window whose frees skip the page map ends below it.
            owner.window_end.set(owner.window_top.get());
        }
    }
    block
}

/// Whether a pipe in region `borrower` may take pieces from region `lender`: only from a
/// region made before it, so that no two regions ever hold pieces of each other (a cycle
/// that no free could end). Both are regions of this thread's frames (the pipe asks with
/// its own region and the one below it there), so both were made by this thread (a
/// `Region` never leaves its thread), and its creation order (`seq`) orders them.
pub(crate) fn lends_to(lender: *const Owner, borrower: *const Owner) -> bool {
    checked(lender).seq < checked(borrower).seq
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
    owner.window_end.set(floor.wrapping_add(window.len()));
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

// ---- frees -------------------------------------------------------------------------------

/// Whether `ptr` lies in the part of the current window of `current`, this thread's current
/// region, that holds the region's own carved blocks: then it is a carved block of
/// `current`, and a free needs no page map ([`count_carved_free`]). The region is drivable
/// by this thread whenever the window is not empty: the current region is this thread's and
/// active, and while it is busy its window is parked (empty).
///
/// # Safety
///
/// `current` is this thread's current region (from its frames).
#[inline(always)]
pub(crate) unsafe fn in_current_window(current: *const Owner, ptr: *mut u8) -> bool {
    // SAFETY: the current region of this thread is live and active (its frame is on this
    // thread's stack).
    let owner = unsafe { &*current };
    let top = owner.window_top.get().addr();
    let span = owner.window_end.get().addr().wrapping_sub(top);
    ptr.addr().wrapping_sub(top) < span
}

/// Whether `ptr`, freed with `layout`, is a carved block on the page of `current` (this
/// thread's current region) that a free through the page map last found to be the
/// region's: then the free only counts ([`count_carved_free`]), as [`free_in`] would.
/// Binary trees and lists freed after their window was retired go through their pages in
/// order, one page-map look-up a page. The region is drivable by this thread whenever a
/// page is known (being marked busy forgets it).
///
/// # Safety
///
/// As [`in_current_window`].
#[inline(always)]
pub(crate) unsafe fn in_known_page(current: *const Owner, ptr: *mut u8, layout: Layout) -> bool {
    // SAFETY: as in `in_current_window`.
    let owner = unsafe { &*current };
    ptr.addr() >> PAGE_BITS == owner.known_page.get() && owner.carved(layout)
}

/// Remembers the page of `ptr`, which the page map says `current` (this thread's current
/// region) owns, for [`in_known_page`], when the region is drivable now (a busy region's
/// stack may be giving pages away).
///
/// # Safety
///
/// As [`in_current_window`], with `thread` this thread's token; the page map gave `current`
/// for `ptr` just now, on this thread.
#[inline(always)]
pub(crate) unsafe fn remember_page(current: *const Owner, thread: usize, ptr: *mut u8) {
    // SAFETY: as in `in_current_window`.
    let owner = unsafe { &*current };
    if owner.drivable_by(thread) {
        owner.known_page.set(ptr.addr() >> PAGE_BITS);
    }
}

/// Counts the free of a carved block of `current`, as [`free_in`] does.
///
/// # Safety
///
/// As [`in_current_window`], which (or [`in_known_page`]) said `true` for the block,
/// freed once.
#[inline(always)]
pub(crate) unsafe fn count_carved_free(current: *const Owner) {
    // SAFETY: as in `in_current_window`.
    unsafe { &*current }.count_carved_free();
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
        return unsafe { free_queued(owner, Entry::freed(ptr, layout, false)) };
    }
    if owner_ref.carved(layout) {
        owner_ref.count_carved_free();
    } else {
        // SAFETY: passed on from the caller; the owner thread, active, not busy.
        unsafe { defer(owner_ref, Entry::freed(ptr, layout, false)) }
    }
}

/// Gives back a piece that a pipe took from `owner` with [`lend_in`], from any thread.
///
/// # Safety
///
/// As [`free_in`], for a piece got with `lend_in`.
pub(crate) unsafe fn take_back_in(
    owner: *const Owner,
    thread: usize,
    ptr: NonNull<u8>,
    layout: Layout,
) {
    let entry = Entry::freed(ptr, layout, true);
    let owner_ref = checked(owner);
    if !owner_ref.drivable_by(thread) {
        // SAFETY: passed on from the caller.
        unsafe { free_queued(owner, entry) }
    } else if owner_ref.carved(layout) {
        owner_ref.count_back(1, 1);
    } else {
        // SAFETY: passed on from the caller; the owner thread, active, not busy.
        unsafe { defer(owner_ref, entry) }
    }
}

/// Parks a free of the owner thread until the stack's next allocation: the out-of-line
/// half of [`free_in`], so that a carved block's free needs no stack frame. When the
/// parking place is full, the frees parked earlier are put first; the block being freed
/// never is.
///
/// # Safety
///
/// As [`free_in`]; `drivable(owner, this thread)` holds.
#[inline(never)]
unsafe fn defer(owner: &Owner, entry: Entry) {
    if owner.deferred_len.get() == DEFERRED {
        // SAFETY: the owner thread, active, not busy (the caller's duty).
        unsafe { put_deferred(owner) };
    }
    let len = owner.deferred_len.get();
    // (`len < DEFERRED` after the flush above; `get` keeps even a broken count in bounds.)
    if let Some(slot) = owner.deferred.get(len) {
        slot.set(MaybeUninit::new(entry));
        owner.deferred_len.set(len + 1);
    }
}

/// Puts the owner thread's parked frees into the stack.
///
/// # Safety
///
/// The owner thread, region active and not busy.
#[cold]
unsafe fn put_deferred(owner: &Owner) {
    let count = owner.deferred_len.replace(0);
    let mut lent = 0;
    // SAFETY: as the caller promises; each parked entry is a live block of this region,
    // freed once.
    unsafe {
        with_stack(owner, |stack| {
            for slot in owner.deferred.iter().take(count) {
                // SAFETY: `defer` wrote the slots below `deferred_len` (`count`).
                let entry = slot.get().assume_init();
                lent += usize::from(entry.lent);
                stack.put(entry.block, entry.layout);
            }
        })
    };
    owner.count_back(count, lent);
}

/// A free from a thread that cannot drive the stack now: queued for the owner, or, for a
/// zombie, for its driver (and the zombie listed for service when no thread drives it).
/// Runs no stack code.
///
/// # Safety
///
/// As [`free_in`].
#[cold]
unsafe fn free_queued(owner: *const Owner, entry: Entry) {
    let owner_ref = checked(owner);
    let mut queue = owner_ref.queue.lock();
    queue.push(entry);
    if !queue.zombie {
        owner_ref.pending.store(true, Ordering::Release);
    } else if !queue.driving && !queue.listed {
        queue.listed = true;
        list_zombie(owner.cast_mut());
    }
}

// ---- zombies -----------------------------------------------------------------------------

/// Pushes a zombie on the service list (its lock held by the caller).
fn list_zombie(owner: *mut Owner) {
    // SAFETY: a live record header; `service_next` is ours to write until the push below
    // publishes it, and it is read only by the thread that takes the list.
    let next = unsafe { &(*owner).service_next };
    let mut head = ZOMBIES.load(Ordering::Relaxed);
    loop {
        next.set(head);
        match ZOMBIES.compare_exchange_weak(head, owner, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// Puts the queued frees of every listed zombie into its stack, releasing each zombie
/// whose last block that was. Called where no block is being freed: at allocations that
/// reach a stack and at region operations, on any thread.
#[inline(always)]
pub(crate) fn service_zombies() {
    if !ZOMBIES.load(Ordering::Relaxed).is_null() {
        service_listed();
    }
}

/// The body of [`service_zombies`].
#[cold]
#[inline(never)]
fn service_listed() {
    loop {
        let mut zombie = ZOMBIES.swap(ptr::null_mut(), Ordering::Acquire);
        if zombie.is_null() {
            return;
        }
        while !zombie.is_null() {
            let owner = checked(zombie);
            // Read before the zombie is driven (and perhaps released).
            let next = owner.service_next.get();
            // The guard ends with its scope (see `drive`): once it lets go, the zombie's
            // driver may release the record.
            let ours = {
                let mut queue = owner.queue.lock();
                queue.listed = false;
                // When a thread drives it already, its driver sees the queue before it lets go.
                !core::mem::replace(&mut queue.driving, true)
            };
            // SAFETY: a zombie whose `driving` we set under its lock.
            if ours && unsafe { drive(zombie) } {
                // SAFETY: `drive` found it dead, and let go of its lock.
                unsafe { dispose(zombie) };
            }
            zombie = next;
        }
    }
}

/// Puts a zombie's queued frees into its stack, taking its lock only around each take of
/// the queue (the puts run without it), until the queue is empty. Returns with the lock let
/// go, and whether the region is dead: none of its blocks is live and nothing is queued, so
/// no free can reach the record any more, and it is on no list (a listed zombie has
/// entries). The caller then releases it.
///
/// Once this call lets go of the lock with blocks still live, another thread may free the
/// last of them, drive the zombie to its end and free the record while this call is still
/// returning. So no reference into the record may be protected across that point (Stacked
/// and Tree Borrows protect a function's reference arguments, even those inside a struct
/// passed by value, until it returns, and freeing memory under one is undefined behaviour,
/// as in rust-lang/rust#55005): the header comes as a raw pointer, and the lock is held by
/// guards of this function's own that end with their scope, never passed to a function.
///
/// # Safety
///
/// `owner` is a zombie whose `driving` the caller set under its lock (and let go of).
#[inline(never)]
unsafe fn drive(owner: *const Owner) -> bool {
    // SAFETY: the record lives while this thread drives it (`driving`); this reference is a
    // local one, not protected, and not used after the lock is let go for the last time.
    let owner = unsafe { &*owner };
    // The blocks the previous batch put (and how many were lent pieces), counted back under
    // the lock.
    let mut back = (0, 0);
    loop {
        let (taken, dead) = {
            let mut queue = owner.queue.lock();
            owner.count_back(back.0, back.1);
            let taken = queue.take();
            let dead = (taken.len == 0).then(|| {
                queue.driving = false;
                owner.live.get() == 0
            });
            (taken, dead)
        };
        if let Some(dead) = dead {
            taken.free();
            return dead;
        }
        // The puts run without the lock: no stack code runs under an owner's lock.
        let mut lent = 0;
        for &entry in taken.entries() {
            lent += usize::from(entry.lent);
            // SAFETY: the driver alone touches a zombie's stack (`driving`), and the stack is
            // `Send`; each entry is a live block of this region, queued once.
            unsafe { owner.put_into(&mut *owner.stack, entry) };
        }
        back = (taken.len, lent);
        taken.free();
    }
}

/// Deinitialises the stack and frees the queue and the record.
///
/// # Safety
///
/// No block of the region is live and no other thread can reach the record.
unsafe fn dispose(owner: *const Owner) {
    // SAFETY: exclusive access, as the caller promises.
    unsafe {
        (*(*owner).stack).deinit();
        (*owner.cast_mut()).queue.get_mut().take().free();
        ((*owner).free_record)(owner.cast_mut());
    }
}

// ---- catching up, and the handle's end ---------------------------------------------------

/// Puts the owner thread's parked frees and the frees other threads queued into the stack
/// (owner thread, region active). A busy region catches up later.
#[inline(always)]
pub(crate) fn catch_up(owner: &Owner) {
    if owner.busy_now() {
        return;
    }
    if owner.deferred_len.get() != 0 {
        // SAFETY: the owner thread (the caller's duty), active, not busy.
        unsafe { put_deferred(owner) };
    }
    if owner.pending.load(Ordering::Acquire) {
        drain(owner);
    }
}

/// Puts the queued frees of an active region into its stack (owner thread).
#[cold]
#[inline(never)]
fn drain(owner: &Owner) {
    let taken = {
        let mut queue = owner.queue.lock();
        let taken = queue.take();
        owner.pending.store(false, Ordering::Relaxed);
        taken
    };
    // The puts run without the lock (no stack code runs under one).
    let mut lent = 0;
    for &entry in taken.entries() {
        lent += usize::from(entry.lent);
        // SAFETY: the owner thread, active, not busy; each entry is a live block of this
        // region, queued once.
        unsafe { with_stack(owner, |stack| owner.put_into(stack, entry)) };
    }
    owner.count_back(taken.len, lent);
    let mut queue = owner.queue.lock();
    if queue.entries.is_null() {
        // Keep the array for the next frees.
        queue.entries = taken.entries;
        queue.capacity = taken.capacity;
    } else {
        taken.free();
    }
}

/// Ends the region's handle: the region is released now if no block is live, or becomes a
/// zombie that the last free releases (through the service of zombies). Returns the number
/// of blocks the program still holds (lent pieces not counted).
///
/// # Safety
///
/// Called once, by the owner thread, when the handle is dropped, outside any stack call.
pub(crate) unsafe fn end(owner: *const Owner) -> usize {
    let owner_ref = checked(owner);
    catch_up(owner_ref);
    owner_ref.drop_window();
    let (held, dead) = {
        let mut queue = owner_ref.queue.lock();
        // From here on frees from other threads are a zombie's; this thread drives it until
        // its queue is empty.
        queue.zombie = true;
        owner_ref.pending.store(false, Ordering::Relaxed);
        owner_ref.driver.store(NO_DRIVER, Ordering::Relaxed);
        // Nothing queued and no block live (the usual end): no free can reach the record
        // any more, and it is on no list, as `drive` would find at once.
        let dead = queue.len == 0 && owner_ref.live() == 0;
        queue.driving = !dead;
        (owner_ref.held_by_the_program(), dead)
    };
    // SAFETY: unless found dead above, a zombie now, `driving` set by us under its lock.
    if dead || unsafe { drive(owner) } {
        // SAFETY: found dead (above, or by `drive`), its lock let go.
        unsafe { dispose(owner) };
    }
    held
}
