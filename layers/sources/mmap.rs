//! `Mmap`: pages straight from the OS (anonymous `mmap`s, on Windows `VirtualAlloc`), one
//! map per block; elsewhere page-aligned zero-filled blocks of the system allocator stand
//! in for the maps.

use core::alloc::Layout;
use core::fmt;
use core::mem::{MaybeUninit, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::Layer;
use crate::abort::abort_with;
use crate::layer::{paranoid, require_grow, require_put, require_shrink, served_size};
#[cfg(feature = "std")]
use crate::region::page_map;
#[cfg(feature = "std")]
use crate::region::{Attributed, Attribution};

/// Bytes mapped by every `Mmap` layer of the process, blocks and bookkeeping together.
static PROCESS_MAPPED: AtomicUsize = AtomicUsize::new(0);

/// One anonymous map, unmapped when dropped. Its pointer comes straight from `mmap`, with
/// no reference in between: a reference to the whole map would cut the permission of every
/// block pointer handed out from it.
struct Map {
    base: *mut u8,
    len: usize,
}

#[cfg(any(unix, windows))]
impl Map {
    /// `len` fresh, zero-filled bytes of read-write pages, or `None`.
    fn new(len: usize) -> Option<Map> {
        crate::os::map(len).map(|base| Map {
            base: base.as_ptr(),
            len,
        })
    }
}

/// Off Unix and Windows (with `std`): the system allocator's zeroed blocks, page-aligned,
/// stand in.
#[cfg(not(any(unix, windows)))]
impl Map {
    /// The layout a stand-in map of `len` bytes is allocated with.
    fn layout(len: usize) -> Layout {
        // `len` is a whole number of 4096-byte pages, so the layout is valid.
        Layout::from_size_align(len, 4096).unwrap_or(Layout::new::<u8>())
    }

    /// `len` fresh, zero-filled bytes, page-aligned, or `None`.
    fn new(len: usize) -> Option<Map> {
        use std::alloc::GlobalAlloc;
        // SAFETY: a non-zero size (callers map whole pages) with a valid alignment.
        let base = unsafe { std::alloc::System.alloc_zeroed(Self::layout(len)) };
        (!base.is_null()).then_some(Map { base, len })
    }
}

impl Map {
    fn as_mut_ptr(&self) -> *mut u8 {
        self.base
    }

    fn as_ptr(&self) -> *const u8 {
        self.base
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the map is ours alone, made by `os::map` with this length, and nothing
        // uses its pages after it is dropped (every block in it was put, or the layer is
        // being deinitialised).
        #[cfg(any(unix, windows))]
        unsafe {
            crate::os::unmap(self.base, self.len)
        };
        // SAFETY: as above; the block was allocated in `new` with this layout.
        #[cfg(not(any(unix, windows)))]
        unsafe {
            std::alloc::GlobalAlloc::dealloc(&std::alloc::System, self.base, Self::layout(self.len))
        };
    }
}

/// Each `get` maps fresh anonymous pages; each `put` unmaps them; `deinit` unmaps every
/// map the layer still holds.
///
/// Blocks are page-aligned (at least 4096 bytes, [`MIN_ALIGN`](Layer::MIN_ALIGN)) and
/// zero-filled ([`ZEROED`](Layer::ZEROED)); larger alignments are served by mapping extra
/// pages and starting the block at the first aligned address. Sizes are rounded up to whole
/// pages, so `Mmap` is a source for layers that ask for large pieces (`Chunk`, `Batch`),
/// not for small objects.
///
/// The layer remembers its maps in a table that lives in a map of its own, never in the
/// global allocator, so it can serve one. In a [region](crate::region) (with `std`) it
/// claims each map's pages for the region in the page map while the map lives.
pub struct Mmap {
    /// The table: an array of `Map`, `len` of them initialised.
    table: Option<Map>,
    len: usize,
    mapped: usize,
    #[cfg(feature = "std")]
    claims: Attribution,
}

// SAFETY: an `Mmap` exclusively owns its maps; nothing in it is tied to a thread.
unsafe impl Send for Mmap {}

impl Mmap {
    /// A layer holding no maps yet.
    pub const fn new() -> Self {
        Mmap {
            table: None,
            len: 0,
            mapped: 0,
            #[cfg(feature = "std")]
            claims: Attribution::NONE,
        }
    }

    /// Bytes this layer has mapped for blocks right now (whole pages, padding included).
    pub const fn mapped_bytes(&self) -> usize {
        self.mapped
    }

    /// Bytes mapped by all `Mmap` layers of the process right now, their tables included.
    pub fn process_mapped_bytes() -> usize {
        PROCESS_MAPPED.load(Ordering::Relaxed)
    }

    /// The OS page size.
    pub fn page_size() -> usize {
        static PAGE: AtomicUsize = AtomicUsize::new(0);
        let mut page = PAGE.load(Ordering::Relaxed);
        if page == 0 {
            #[cfg(any(unix, windows))]
            let answer = crate::os::page_size();
            #[cfg(not(any(unix, windows)))]
            let answer = 4096;
            page = answer;
            PAGE.store(page, Ordering::Relaxed);
        }
        page
    }

    /// A fresh anonymous map, counted.
    fn map(len: usize) -> Option<Map> {
        let map = Map::new(len)?;
        PROCESS_MAPPED.fetch_add(map.len(), Ordering::Relaxed);
        Some(map)
    }

    /// Releases the map's pages in the page map (when they were claimed) and unmaps it.
    fn unmap(&self, map: Map) {
        #[cfg(feature = "std")]
        if self.claims.is_some() {
            page_map::unclaim(map.as_mut_ptr(), map.len());
        }
        Self::unmap_table(map);
    }

    fn unmap_table(map: Map) {
        PROCESS_MAPPED.fetch_sub(map.len(), Ordering::Relaxed);
        drop(map);
    }

    fn entries(&mut self) -> *mut Map {
        match &mut self.table {
            Some(table) => table.as_mut_ptr().cast(),
            None => core::ptr::null_mut(),
        }
    }

    fn capacity(&self) -> usize {
        self.table
            .as_ref()
            .map_or(0, |t| t.len() / size_of::<Map>())
    }

    /// Makes room for one more entry, doubling the table when it is full.
    fn reserve_one(&mut self) -> Option<()> {
        if self.len < self.capacity() {
            return Some(());
        }
        let new_capacity = (self.capacity() * 2).max(Self::page_size() / size_of::<Map>());
        let table = Self::map(new_capacity.checked_mul(size_of::<Map>())?)?;
        let old = self.entries();
        if !old.is_null() {
            // SAFETY: the first `len` entries of the old table are initialised; the new
            // table is larger, page-aligned (so aligned for `Map`) and disjoint from the
            // old one. The entries are moved bitwise; the old table is then unmapped as raw
            // bytes, so no entry is dropped twice.
            unsafe { core::ptr::copy_nonoverlapping(old, table.as_mut_ptr().cast(), self.len) };
        }
        if let Some(old_table) = self.table.replace(table) {
            Self::unmap_table(old_table);
        }
        Some(())
    }

    /// The index of the map that contains `addr`, searching newest first.
    fn find(&self, addr: usize) -> Option<usize> {
        let table = self.table.as_ref()?;
        let entries: *const MaybeUninit<Map> = table.as_ptr().cast();
        (0..self.len).rev().find(|&i| {
            // SAFETY: entries `0..len` are initialised `Map`s inside the table.
            let map = unsafe { (*entries.add(i)).assume_init_ref() };
            addr.wrapping_sub(map.as_ptr().addr()) < map.len()
        })
    }
}

impl Default for Mmap {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: each block lies inside a map of its own, which no other block shares and which
// stays mapped until the block is put or the layer is deinitialised; fresh anonymous maps
// are zero-filled and page-aligned. Moving `Mmap` moves only the table handle.
unsafe impl Layer for Mmap {
    const MIN_ALIGN: usize = 4096;
    const OWNS_EXACT: bool = true;
    const OWNS_INTERIOR: bool = true;
    const ZEROED: bool = true;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let page = Self::page_size();
        let extra = layout.align().saturating_sub(page);
        let len = served_size(layout)
            .checked_add(page - 1)?
            .checked_add(extra)?
            & !(page - 1);
        if len > isize::MAX as usize {
            return None;
        }
        self.reserve_one()?;
        let map = Self::map(len)?;
        let base = map.as_mut_ptr();
        #[cfg(feature = "std")]
        if self.claims.is_some() && !page_map::claim(base, len, self.claims.0) {
            // Outside the address range the page map covers, or no memory for the map's
            // leaf: the router could not find the block. The claim changed nothing.
            Self::unmap_table(map);
            return None;
        }
        let offset = base.addr().wrapping_neg() & (layout.align() - 1);
        // SAFETY: `offset < align <= extra + page`, and the block's size fits in the
        // remaining `len - offset` bytes by construction of `len`.
        let block = unsafe { base.add(offset) };
        self.mapped += len;
        // SAFETY: `reserve_one` made room for entry `len`, which is uninitialised.
        unsafe { self.entries().add(self.len).write(map) };
        self.len += 1;
        NonNull::new(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        let Some(index) = self.find(ptr.as_ptr().addr()) else {
            abort_with(format_args!(
                "Mmap: put of {:p} (size {}, align {}), which is not a block of this layer",
                ptr,
                layout.size(),
                layout.align()
            ))
        };
        let entries = self.entries();
        // SAFETY: `index < len`; the last initialised entry moves into its slot and the
        // count shrinks, so every entry stays initialised exactly once.
        let map = unsafe {
            let map = entries.add(index).read();
            self.len -= 1;
            if index != self.len {
                entries.add(index).write(entries.add(self.len).read());
            }
            map
        };
        self.mapped = self.mapped.wrapping_sub(map.len());
        self.unmap(map);
    }

    fn init() -> Self {
        Self::new()
    }

    fn deinit(&mut self) {
        let entries = self.entries();
        while self.len > 0 {
            self.len -= 1;
            // SAFETY: entry `len` is initialised and is read out exactly once.
            self.unmap(unsafe { entries.add(self.len).read() });
        }
        self.mapped = 0;
        if let Some(table) = self.table.take() {
            Self::unmap_table(table);
        }
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        let addr = ptr.as_ptr().addr();
        let Some(index) = self.find(addr) else {
            return false;
        };
        // SAFETY: `index < len`, an initialised entry.
        let map = unsafe { &*self.entries().add(index) };
        // The rest of the map's last page is ours already: grow into it.
        new.size() <= map.len() - (addr - map.as_ptr().addr())
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // The map stays as it is and is found by address at put: any smaller size fits.
        true
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.find(ptr.as_ptr().addr()).is_some()
    }

    fn check_invariants(&self) {
        let Some(table) = &self.table else {
            if self.len != 0 || self.mapped != 0 {
                abort_with(format_args!(
                    "Mmap invariant broken: maps counted without a table"
                ));
            }
            return;
        };
        let entries: *const Map = table.as_ptr().cast();
        // SAFETY: entries `0..len` are initialised.
        let mapped: usize = (0..self.len)
            .map(|i| unsafe { (&*entries.add(i)).len() })
            .sum();
        if self.len > self.capacity() || mapped != self.mapped {
            abort_with(format_args!(
                "Mmap invariant broken: {} maps of {mapped} bytes, {} bytes counted",
                self.len, self.mapped
            ));
        }
    }
}

// SAFETY: every block lies in a map of its own, whose pages are claimed for the region
// from the moment the map is made until just before it is unmapped (maps made before
// `attribute` are claimed by it).
#[cfg(feature = "std")]
unsafe impl Attributed for Mmap {
    fn attribute(&mut self, owner: Attribution) {
        self.claims = owner;
        let Some(table) = &self.table else {
            return;
        };
        let entries: *const Map = table.as_ptr().cast();
        for i in 0..self.len {
            // SAFETY: entries `0..len` are initialised.
            let map = unsafe { &*entries.add(i) };
            if !owner.is_some() {
                page_map::unclaim(map.as_mut_ptr(), map.len());
            } else if !page_map::claim(map.as_mut_ptr(), map.len(), owner.0) {
                abort_with(format_args!(
                    "Mmap: no memory to claim a map of {} bytes for a region",
                    map.len()
                ));
            }
        }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl fmt::Debug for Mmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mmap")
            .field("maps", &self.len)
            .field("mapped_bytes", &self.mapped)
            .finish()
    }
}
