//! Call sites: the stack of return addresses that allocated each live block of a [`Check`],
//! captured at allocation and interned in a table whose memory comes from the layer below;
//! symbolised only when a report is read.
//!
//! Invariants (`check_invariants`): the first `len` stacks are distinct and each is found
//! through the index; every index entry names one of them; a stack's live counts are the
//! blocks (and their bytes) whose slot in `Check`'s table names it.
//!
//! [`Check`]: super::Check

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

    /// The stack of the caller, from the unwinder: no allocation, no lock (it may run inside
    /// a global allocator). Empty without std and under Miri.
    #[inline(never)]
    pub(crate) fn capture() -> Stack {
        #[cfg(all(feature = "std", not(miri)))]
        {
            let mut stack = Stack::EMPTY;
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

/// One interned stack and what is live from it now.
#[derive(Clone, Copy)]
pub(crate) struct Site {
    pub(crate) stack: Stack,
    pub(crate) live_blocks: u64,
    pub(crate) live_bytes: u64,
}

/// The table: an array of sites (identified by their index plus one; 0 is "no site") and
/// an open-addressing index from a stack's hash to its site, both in blocks of the layer
/// below, grown by doubling.
pub(crate) struct CallSites {
    sites: *mut Site,
    len: usize,
    capacity: usize,
    /// Site identifiers (0 empty), `2 * capacity` of them, probed linearly.
    index: *mut u32,
}

/// Identifiers are `u32`: past this many distinct stacks, new ones are not recorded.
const MOST_SITES: usize = 1 << 24;

impl CallSites {
    pub(crate) const fn new() -> Self {
        CallSites {
            sites: ptr::null_mut(),
            len: 0,
            capacity: 0,
            index: ptr::null_mut(),
        }
    }

    fn sites_layout(capacity: usize) -> Layout {
        Layout::array::<Site>(capacity).unwrap_or(Layout::new::<Site>())
    }

    fn index_layout(capacity: usize) -> Layout {
        Layout::array::<u32>(2 * capacity).unwrap_or(Layout::new::<u32>())
    }

    /// The site with identifier `id` (from [`intern`](Self::intern)), if any.
    pub(crate) fn get(&self, id: u32) -> Option<&Site> {
        let i = (id as usize).checked_sub(1)?;
        // SAFETY: sites `0..len` are initialised, in the block `sites` points to.
        (i < self.len).then(|| unsafe { &*self.sites.add(i) })
    }

    /// Adds `bytes` (and a block when `block`) to the live counts of site `id`, or takes
    /// them away; nothing for site 0.
    pub(crate) fn count(&mut self, id: u32, block: i64, bytes: i64) {
        let Some(i) = (id as usize).checked_sub(1).filter(|&i| i < self.len) else {
            return;
        };
        // SAFETY: as in `get`, and `&mut self` is the only access.
        let site = unsafe { &mut *self.sites.add(i) };
        site.live_blocks = site.live_blocks.wrapping_add_signed(block);
        site.live_bytes = site.live_bytes.wrapping_add_signed(bytes);
    }

    /// The sites, in the order they were first seen.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Site> + '_ {
        (1..=self.len as u32).filter_map(|id| self.get(id))
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
                live_blocks: 0,
                live_bytes: 0,
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
        let sites = inner.get(Self::sites_layout(capacity))?.cast::<Site>();
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

    /// The invariants at the top of this file, but the live counts (which `Check` checks
    /// against its table).
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

impl fmt::Debug for CallSites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallSites")
            .field("sites", &self.len)
            .finish_non_exhaustive()
    }
}
