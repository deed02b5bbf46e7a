//! Call sites: the stack of return addresses that allocated each live block of a [`Check`]
//! or a [`Profile`], captured at allocation and interned in a table whose memory comes from
//! the layer below, with what the layer counts per site; symbolised ([`SourceFrame`]) only
//! when a report is read.
//!
//! Invariants (`check_invariants`): the first `len` stacks are distinct and each is found
//! through the index; every index entry names one of them. (What a site counts, the layer
//! that keeps the table checks.)
//!
//! [`Check`]: super::Check
//! [`Profile`]: super::Profile

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};

use crate::Layer;

/// Return addresses kept per call site, innermost first: enough for the allocator's own
/// frames (trimmed when shown) and a dozen of the caller's.
pub(crate) const CALL_SITE_DEPTH: usize = 32;

/// The return addresses of one allocation's call stack, innermost first.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stack {
    depth: usize,
    frames: [usize; CALL_SITE_DEPTH],
}

impl Stack {
    pub(crate) const EMPTY: Stack = Stack {
        depth: 0,
        frames: [0; CALL_SITE_DEPTH],
    };

    /// The return addresses, innermost first.
    pub(crate) fn frames(&self) -> &[usize] {
        &self.frames[..self.depth]
    }

    /// The stack of the caller: no allocation, no lock (it may run inside a global
    /// allocator). Where the whole program keeps frame pointers (see [`frame_records`]),
    /// from the chain of frame records; else from the unwinder. Empty without std and
    /// under Miri.
    #[inline(never)]
    pub(crate) fn capture() -> Stack {
        #[cfg(all(feature = "std", not(miri)))]
        {
            let mut stack = Stack::EMPTY;
            #[cfg(stratalloc_frame_records)]
            if frame_records::walk(&mut stack) {
                return stack;
            }
            let mut push = |frame: &backtrace::Frame| {
                stack.frames[stack.depth] = frame.ip().addr();
                stack.depth += 1;
                stack.depth < CALL_SITE_DEPTH
            };
            // SAFETY: the unsynchronised walk is safe wherever the platform's unwinder is
            // thread-safe, as libgcc's and libunwind's are (the lock of `backtrace::trace`
            // exists for Windows' dbghelp, and takes a lock this may run under).
            #[cfg(unix)]
            unsafe {
                backtrace::trace_unsynchronized(&mut push)
            };
            #[cfg(not(unix))]
            backtrace::trace(&mut push);
            stack
        }
        #[cfg(not(all(feature = "std", not(miri))))]
        Stack::EMPTY
    }

    fn hash(&self) -> u64 {
        // FxHash's step over the addresses: cheap, and the addresses differ in their low bits.
        self.frames()
            .iter()
            .fold(self.depth as u64, |hash, &frame| {
                (hash.rotate_left(5) ^ frame as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
            })
    }
}

/// Stacks from frame records, for programs built with frame pointers.
///
/// With `-C force-frame-pointers=yes` in the build's `RUSTFLAGS` (which the build script
/// sees, and which reach every crate of the build; the standard library ships with frame
/// pointers), every Rust function that calls another keeps a frame record: the caller's
/// record address and the return address, two words that the frame pointer register
/// points to. Walking that chain costs a few nanoseconds a frame, against the unwinder's
/// microseconds a stack.
///
/// Every record read must lie between the stack pointer and the top of this thread's
/// stack (both bounds of the stack asked of the thread library once per thread; the stack
/// pointer must lie between them, or the code runs on another stack, a signal handler's or
/// a coroutine's), aligned, above the one before: that span of one stack is mapped, so the
/// walk reads only memory it may read. A frame of code built without frame pointers (a C
/// library's, where it lacks them) can leave any value in the register: a value that fails
/// the checks ends the walk, one that passes them is followed, and the stack then ends in
/// frames that are not the caller's. Where the bounds are unknown, the stack pointer
/// outside them or no record could be read, the unwinder takes over.
#[cfg(stratalloc_frame_records)]
mod frame_records {
    use core::cell::Cell;
    use core::mem::MaybeUninit;

    use super::{CALL_SITE_DEPTH, Stack};

    /// Bounds of a stack not asked for yet.
    const NOT_ASKED: (usize, usize) = (0, 0);
    /// Bounds the thread library could not tell (or is being asked for: a call into the
    /// allocator from inside `pthread_getattr_np`, where `malloc` is the Rust allocator,
    /// finds this and uses the unwinder).
    const UNKNOWN: (usize, usize) = (1, 1);

    std::thread_local! {
        /// The lowest address of this thread's stack and one past its highest.
        static STACK: Cell<(usize, usize)> = const { Cell::new(NOT_ASKED) };
    }

    /// Fills `stack` from the frame records above the caller's; false (and `stack`
    /// untouched) when this thread's stack bounds are unknown, the stack pointer is outside
    /// them, or the first record is out of bounds.
    #[inline(always)]
    pub(super) fn walk(stack: &mut Stack) -> bool {
        let (low, top) = STACK
            .try_with(|bounds| {
                if bounds.get() == NOT_ASKED {
                    bounds.set(UNKNOWN);
                    bounds.set(ask_stack_bounds());
                }
                bounds.get()
            })
            .unwrap_or(UNKNOWN);
        let (sp, mut record) = stack_and_frame_pointers();
        if bounds_unknown((low, top)) || sp < low || sp >= top {
            return false;
        }
        while stack.depth < CALL_SITE_DEPTH {
            if !record.is_multiple_of(16)
                || record < sp
                || record.checked_add(16).is_none_or(|end| end > top)
            {
                break;
            }
            // SAFETY: both words lie between the stack pointer and the top of the stack
            // the stack pointer is in: mapped, readable memory.
            let (next, return_address) = unsafe { (load(record), load(record + 8)) };
            if return_address == 0 {
                break;
            }
            stack.frames[stack.depth] = return_address;
            stack.depth += 1;
            if next <= record {
                break;
            }
            record = next;
        }
        stack.depth > 0
    }

    fn bounds_unknown(bounds: (usize, usize)) -> bool {
        bounds == NOT_ASKED || bounds == UNKNOWN
    }

    /// The bounds of this thread's stack from the thread library, or `UNKNOWN`.
    #[cold]
    fn ask_stack_bounds() -> (usize, usize) {
        let mut attributes = MaybeUninit::<libc::pthread_attr_t>::uninit();
        // SAFETY: `pthread_getattr_np` initialises the attributes of the calling thread
        // (with the C library's `malloc`: for the CPU affinity, and for the main thread a
        // read of /proc/self/maps; where `malloc` is this allocator, the call back in finds
        // the bounds `UNKNOWN`); they are read once and destroyed.
        unsafe {
            if libc::pthread_getattr_np(libc::pthread_self(), attributes.as_mut_ptr()) != 0 {
                return UNKNOWN;
            }
            let (mut low, mut size) = (core::ptr::null_mut(), 0);
            let asked = libc::pthread_attr_getstack(attributes.as_ptr(), &mut low, &mut size);
            libc::pthread_attr_destroy(attributes.as_mut_ptr());
            let low = low as usize;
            match (asked, low.checked_add(size)) {
                (0, Some(top)) if low > 1 && top > low => (low, top),
                _ => UNKNOWN,
            }
        }
    }

    /// The stack pointer and the frame pointer register of the function this is inlined
    /// into.
    #[inline(always)]
    fn stack_and_frame_pointers() -> (usize, usize) {
        let (sp, record): (usize, usize);
        // SAFETY: reads two registers.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            core::arch::asm!(
                "mov {}, rsp", "mov {}, rbp", out(reg) sp, out(reg) record,
                options(nomem, nostack, preserves_flags)
            )
        };
        // SAFETY: reads two registers.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            core::arch::asm!(
                "mov {}, sp", "mov {}, x29", out(reg) sp, out(reg) record,
                options(nomem, nostack, preserves_flags)
            )
        };
        (sp, record)
    }

    /// The word at `address`, read outside the language's memory model (it belongs to
    /// another function's frame).
    ///
    /// # Safety
    ///
    /// `address` is aligned and lies in mapped, readable memory.
    #[inline(always)]
    unsafe fn load(address: usize) -> usize {
        let word: usize;
        // SAFETY: as the caller promises.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            core::arch::asm!("mov {}, [{}]", out(reg) word, in(reg) address, options(readonly, nostack, preserves_flags))
        };
        // SAFETY: as the caller promises.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            core::arch::asm!("ldr {}, [{}]", out(reg) word, in(reg) address, options(readonly, nostack, preserves_flags))
        };
        word
    }
}

/// One interned stack and what the layer counts for it (`Check`: the blocks live from it).
#[derive(Clone, Copy)]
pub(crate) struct Site<C> {
    pub(crate) stack: Stack,
    pub(crate) counts: C,
}

/// The table: an array of sites (identified by their index plus one; 0 is "no site") and
/// an open-addressing index from a stack's hash to its site, both in blocks of the layer
/// below, grown by doubling. A new site's counts start at `C::default()`.
pub(crate) struct CallSites<C> {
    sites: *mut Site<C>,
    len: usize,
    capacity: usize,
    /// Site identifiers (0 empty), `2 * capacity` of them, probed linearly.
    index: *mut u32,
}

/// Identifiers are `u32`: past this many distinct stacks, new ones are not recorded.
const MOST_SITES: usize = 1 << 24;

impl<C: Copy + Default> CallSites<C> {
    pub(crate) const fn new() -> Self {
        CallSites {
            sites: ptr::null_mut(),
            len: 0,
            capacity: 0,
            index: ptr::null_mut(),
        }
    }

    fn sites_layout(capacity: usize) -> Layout {
        Layout::array::<Site<C>>(capacity).unwrap_or(Layout::new::<Site<C>>())
    }

    fn index_layout(capacity: usize) -> Layout {
        Layout::array::<u32>(2 * capacity).unwrap_or(Layout::new::<u32>())
    }

    /// The site with identifier `id` (from [`intern`](Self::intern)), if any.
    pub(crate) fn get(&self, id: u32) -> Option<&Site<C>> {
        let i = (id as usize).checked_sub(1)?;
        // SAFETY: sites `0..len` are initialised, in the block `sites` points to.
        (i < self.len).then(|| unsafe { &*self.sites.add(i) })
    }

    /// The counts of site `id`, for changing them; `None` for site 0.
    #[inline]
    pub(crate) fn counts_mut(&mut self, id: u32) -> Option<&mut C> {
        let i = (id as usize).checked_sub(1).filter(|&i| i < self.len)?;
        // SAFETY: as in `get`, and `&mut self` is the only access.
        Some(unsafe { &mut (*self.sites.add(i)).counts })
    }

    /// The sites, in the order they were first seen.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Site<C>> + '_ {
        (1..=self.len as u32).filter_map(|id| self.get(id))
    }

    /// The counts of every site, for changing them.
    #[cfg(any(feature = "std", test))]
    pub(crate) fn counts_iter_mut(&mut self) -> impl Iterator<Item = &mut C> + '_ {
        let sites = self.sites;
        // SAFETY: sites `0..len` are initialised and distinct; `&mut self` is borrowed for
        // as long as the iterator lives.
        (0..self.len).map(move |i| unsafe { &mut (*sites.add(i)).counts })
    }

    /// The identifier of `stack`, adding it when new; 0 (no site) for an empty stack, or
    /// when `inner` has no room for a bigger table.
    pub(crate) fn intern<L: Layer>(&mut self, stack: &Stack, inner: &mut L) -> u32 {
        if stack.depth == 0 {
            return 0;
        }
        let hash = stack.hash();
        if let Some(id) = self.find(stack, hash) {
            return id;
        }
        if self.len == self.capacity && self.grow(inner).is_none() {
            return 0;
        }
        // SAFETY: `len < capacity`: the slot is inside the sites block, and free.
        unsafe {
            self.sites.add(self.len).write(Site {
                stack: *stack,
                counts: C::default(),
            })
        };
        self.len += 1;
        let id = self.len as u32;
        self.place(id, hash);
        id
    }

    fn find(&self, stack: &Stack, hash: u64) -> Option<u32> {
        if self.capacity == 0 {
            return None;
        }
        let mask = 2 * self.capacity - 1;
        let mut at = hash as usize & mask;
        loop {
            // SAFETY: `at <= mask`, inside the index block of `2 * capacity` entries.
            let id = unsafe { *self.index.add(at) };
            if id == 0 {
                return None;
            }
            if self.get(id).is_some_and(|site| site.stack == *stack) {
                return Some(id);
            }
            at = (at + 1) & mask;
        }
    }

    /// Writes `id` into the first empty index entry of `hash`'s probe (the index is never
    /// more than half full, so there is one).
    fn place(&mut self, id: u32, hash: u64) {
        let mask = 2 * self.capacity - 1;
        let mut at = hash as usize & mask;
        // SAFETY: as in `find`.
        while unsafe { *self.index.add(at) } != 0 {
            at = (at + 1) & mask;
        }
        // SAFETY: as in `find`.
        unsafe { *self.index.add(at) = id };
    }

    /// Doubles the table (from 64 sites) with two new blocks of `inner`, and gives the old
    /// ones back.
    #[cold]
    fn grow<L: Layer>(&mut self, inner: &mut L) -> Option<()> {
        let capacity = (self.capacity * 2).max(64);
        if capacity > MOST_SITES {
            return None;
        }
        let sites = inner.get(Self::sites_layout(capacity))?.cast::<Site<C>>();
        let Some(index) = inner.get(Self::index_layout(capacity)) else {
            // SAFETY: got just above with this layout.
            unsafe { inner.put(sites.cast(), Self::sites_layout(capacity)) };
            return None;
        };
        let index = index.cast::<u32>();
        // SAFETY: the new blocks hold `capacity` sites and `2 * capacity` entries; the old
        // sites block holds `len <= capacity` initialised sites; the blocks are distinct.
        unsafe {
            index.as_ptr().write_bytes(0, 2 * capacity);
            if self.len > 0 {
                ptr::copy_nonoverlapping(self.sites, sites.as_ptr(), self.len);
            }
        }
        let (old_sites, old_index, old_capacity) = (self.sites, self.index, self.capacity);
        self.sites = sites.as_ptr();
        self.index = index.as_ptr();
        self.capacity = capacity;
        for id in 1..=self.len as u32 {
            let hash = self.get(id).map_or(0, |site| site.stack.hash());
            self.place(id, hash);
        }
        if let (Some(old_sites), Some(old_index)) =
            (NonNull::new(old_sites), NonNull::new(old_index))
        {
            // SAFETY: the old blocks came from `inner` with these layouts and are not used
            // again.
            unsafe {
                inner.put(old_sites.cast(), Self::sites_layout(old_capacity));
                inner.put(old_index.cast(), Self::index_layout(old_capacity));
            }
        }
        Some(())
    }

    /// Gives the table's blocks back to `inner` and forgets every site.
    pub(crate) fn release<L: Layer>(&mut self, inner: &mut L) {
        if let (Some(sites), Some(index)) = (NonNull::new(self.sites), NonNull::new(self.index)) {
            // SAFETY: both blocks came from `inner` with these layouts and are not used again.
            unsafe {
                inner.put(sites.cast(), Self::sites_layout(self.capacity));
                inner.put(index.cast(), Self::index_layout(self.capacity));
            }
        }
        *self = Self::new();
    }

    /// The invariants at the top of this file.
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        if self.len > self.capacity {
            return Err("call sites: more sites than room");
        }
        for (i, site) in self.iter().enumerate() {
            if self.find(&site.stack, site.stack.hash()) != Some(i as u32 + 1) {
                return Err("call sites: a site is not found through the index");
            }
        }
        Ok(())
    }
}

impl<C> fmt::Debug for CallSites<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallSites")
            .field("sites", &self.len)
            .finish_non_exhaustive()
    }
}

/// One symbolised frame of a call site ([`CallSite`](super::CallSite) of a leak report,
/// or a site of a heap profile).
#[cfg(feature = "std")]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SourceFrame {
    /// The function, demangled without its hash (the address when it has no symbol).
    pub function: std::string::String,
    /// The source file, relative to the current directory when it is inside it.
    pub file: Option<std::string::String>,
    /// The line, when debug information has it.
    pub line: Option<u32>,
    /// The column, when debug information has it.
    pub column: Option<u32>,
}

#[cfg(feature = "std")]
impl SourceFrame {
    /// The stack at `addresses` (return addresses, innermost first) symbolised, innermost
    /// first, the caller's code only: the frames of the allocator (this crate), of `alloc`,
    /// `core` and `std` (and of `hashbrown`, the standard collections' tables) are left
    /// out, as are the runtime's (thread start, closure calls, the test harness). Each
    /// inlined call is a frame of its own.
    pub(crate) fn callers(addresses: &[usize]) -> std::vec::Vec<SourceFrame> {
        let mut frames: std::vec::Vec<SourceFrame> = addresses
            .iter()
            .flat_map(|&address| Self::symbols(address))
            .collect();
        frames.retain(SourceFrame::is_callers);
        frames
    }

    /// The frames at one return address: the function there and those inlined into it,
    /// innermost first.
    pub(crate) fn symbols(address: usize) -> std::vec::Vec<SourceFrame> {
        let mut frames = std::vec::Vec::new();
        backtrace::resolve(address as *mut core::ffi::c_void, |symbol| {
            frames.push(SourceFrame {
                function: symbol
                    .name()
                    .map_or_else(|| format!("{address:#x}"), |name| format!("{name:#}")),
                file: symbol.filename().map(shown_path),
                line: symbol.lineno(),
                column: symbol.colno(),
            });
        });
        frames
    }

    /// A frame of the caller's code: neither the allocator's or the standard library's
    /// nor the runtime's.
    pub(crate) fn is_callers(&self) -> bool {
        !self.is_internal() && !self.is_runtime()
    }

    /// `file:line:column in function`, or the function alone.
    pub(crate) fn place(&self) -> std::string::String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => match self.column {
                Some(column) => format!("{file}:{line}:{column} in {}", self.function),
                None => format!("{file}:{line} in {}", self.function),
            },
            _ => self.function.clone(),
        }
    }

    /// A frame of the allocator or the standard library.
    fn is_internal(&self) -> bool {
        const CRATES: [&str; 7] = [
            "stratalloc::",
            "alloc::",
            "core::",
            "std::",
            "hashbrown::",
            "backtrace::",
            "__rust",
        ];
        let name = self.function.trim_start_matches(['<', '&']);
        let name = name.strip_prefix("mut ").unwrap_or(name);
        if CRATES.iter().any(|krate| name.starts_with(krate)) || name.starts_with("0x") {
            return true;
        }
        // `<T as alloc::..>::f`: a standard trait's method on a type parameter, slice or
        // primitive (no path of its own), as in `<T as SpecFromElem>::from_elem`.
        name.split_once(" as ").is_some_and(|(own, rest)| {
            !own.contains("::") && CRATES.iter().any(|krate| rest.starts_with(krate))
        })
    }

    /// A frame of the runtime around the caller's code: thread start, `main`'s shim, the
    /// test harness, closure calls through the `Fn` traits.
    fn is_runtime(&self) -> bool {
        let name = self.function.trim_start_matches('<');
        name.starts_with("test::")
            || name.contains(" as core::ops::function::Fn")
            || name.contains("__rust_begin_short_backtrace")
            || name.starts_with("__libc_start")
            || name == "_start"
            || name == "clone3"
            || name == "start_thread"
    }
}

/// A path relative to the current directory when it lies inside it.
#[cfg(feature = "std")]
fn shown_path(path: &std::path::Path) -> std::string::String {
    std::env::current_dir()
        .ok()
        .and_then(|dir| {
            path.strip_prefix(dir)
                .ok()
                .map(std::path::Path::to_path_buf)
        })
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use core::mem::MaybeUninit;

    use super::*;
    use crate::layers::Buffer;

    /// A stack of `depth` made-up return addresses, distinct for each `seed`.
    fn stack(seed: usize, depth: usize) -> Stack {
        let mut stack = Stack::EMPTY;
        for (i, frame) in stack.frames[..depth].iter_mut().enumerate() {
            *frame = 0x1000 * (seed + 1) + i;
        }
        stack.depth = depth;
        stack
    }

    /// Interning past the first 64 sites grows the table (into blocks of the layer below);
    /// every stack keeps its identifier and counts; the table goes back whole.
    #[test]
    fn sites_are_interned_counted_and_kept_across_growth() {
        let mut memory = [MaybeUninit::uninit(); 1 << 16];
        let mut inner = Buffer::new(&mut memory);
        let mut sites = CallSites::<u64>::new();
        assert_eq!(
            sites.intern(&Stack::EMPTY, &mut inner),
            0,
            "no stack, no site"
        );
        let ids: std::vec::Vec<u32> = (0..100)
            .map(|seed| sites.intern(&stack(seed, 1 + seed % CALL_SITE_DEPTH), &mut inner))
            .collect();
        assert_eq!(ids, (1..=100).collect::<std::vec::Vec<u32>>());
        for (seed, &id) in ids.iter().enumerate() {
            assert_eq!(
                sites.intern(&stack(seed, 1 + seed % CALL_SITE_DEPTH), &mut inner),
                id
            );
            *sites.counts_mut(id).unwrap() += seed as u64;
        }
        assert!(sites.counts_mut(0).is_none() && sites.counts_mut(101).is_none());
        for counts in sites.counts_iter_mut() {
            *counts *= 2;
        }
        let counted: std::vec::Vec<u64> = sites.iter().map(|site| site.counts).collect();
        assert_eq!(
            counted,
            (0..100)
                .map(|seed| 2 * seed)
                .collect::<std::vec::Vec<u64>>()
        );
        sites.check_invariants().unwrap();
        sites.release(&mut inner);
        assert_eq!(sites.iter().count(), 0);
    }
}
