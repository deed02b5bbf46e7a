//! `Pipe`: whole pages from the enclosing region, claimed for the region that holds them.
//!
//! Invariant: every piece handed out is booked in `origins` with the region it came from (null: the
//! system allocator) and its size in pages, and its pages are claimed for this pipe's region until
//! it is put, when the claim goes back to the origin.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::ptr::{self, NonNull};

use crate::Layer;
use crate::abort::abort_with;
use crate::layer::{paranoid, require_put};
use crate::layers::Mmap;
use crate::layers::debug::live_table::{LiveTable, Slot};
use crate::region::page_map::{self, PAGE};
use crate::region::{
    Attributed, Attribution, Owner, enclosing, lend_in, lends_to, take_back_in, token,
};

/// Where a piece came from (null: the system allocator), and its layout there.
type Origin = (*const Owner, Layout);

/// Forwards requests to the enclosing region: the region below this pipe's own on the
/// thread's region stack at the moment of the request, or the system allocator when there
/// is none (the seed's `pipe` layer).
///
/// Like [`Ground`](crate::layers::Ground) it works in whole 4 KiB pages, so it belongs
/// under `Chunk`. Each piece remembers where it came from and goes back there when put,
/// even if the stack has changed since; the enclosing region counts it as live (lent)
/// meanwhile, so it cannot be released under the pipe.
///
/// A pipe takes pieces only from a region made *before* its own: two regions can then never
/// hold pieces of each other, a cycle in which neither could ever be released. When the
/// enclosing region is younger than the pipe's own (regions entered in the other order), or
/// is itself in the middle of a call (a region entered twice), the piece comes from the
/// system allocator instead.
pub struct Pipe {
    claims: Attribution,
    origins: LiveTable<Origin>,
    /// Where the booking table lives: maps that belong to no region.
    booking: Mmap,
    held: usize,
}

// SAFETY: the pieces belong to their origins, the booking to this layer; nothing is tied
// to a thread (the router sends puts from other threads through the owner's queue).
unsafe impl Send for Pipe {}

impl Pipe {
    /// A pipe that claims nothing until a region attributes it.
    pub const fn new() -> Self {
        Pipe {
            claims: Attribution::NONE,
            origins: LiveTable::new(),
            booking: Mmap::new(),
            held: 0,
        }
    }

    /// Bytes currently held from enclosing regions and the system allocator.
    pub const fn held_bytes(&self) -> usize {
        self.held
    }

    fn reserve_booking(&mut self) -> Option<()> {
        if !self.origins.is_full() {
            return Some(());
        }
        self.origins.grow_from(&mut self.booking)
    }

    /// Gives a piece back to where it came from, handing its pages' claim back first.
    ///
    /// # Safety
    ///
    /// `piece` was got from `origin` (null: the system allocator) with `pages`, is no
    /// longer booked (or is about to be forgotten), and is given back once.
    unsafe fn give_back(
        claims: Attribution,
        held: &mut usize,
        piece: NonNull<u8>,
        pages: Layout,
        origin: *const Owner,
    ) {
        if claims.is_some() {
            if origin.is_null() {
                page_map::unclaim(piece.as_ptr(), pages.size());
            } else {
                page_map::reassign(piece.as_ptr(), pages.size(), origin);
            }
        }
        *held = held.wrapping_sub(pages.size());
        if origin.is_null() {
            // SAFETY: the piece came from the system allocator with `pages`.
            unsafe { std::alloc::System.dealloc(piece.as_ptr(), pages) };
        } else {
            // SAFETY: the piece was lent by `origin` with `pages`.
            unsafe { take_back_in(origin, token(), piece, pages) };
        }
    }
}

impl Default for Pipe {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: pieces are whole pages of live blocks of the origin (disjoint while live, since
// the origin keeps the `Layer` contract) or of the system allocator; they are claimed for
// this pipe's region before they are handed out and go back exactly once.
unsafe impl Layer for Pipe {
    const MIN_ALIGN: usize = PAGE;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let pages = page_map::pages_for(layout)?;
        self.reserve_booking()?;
        let mut origin = if self.claims.is_some() {
            enclosing(self.claims.0)
        } else {
            ptr::null()
        };
        let mut piece = None;
        if !origin.is_null() && lends_to(origin, self.claims.0) {
            // SAFETY: the enclosing region is on this thread's stack, so it is this
            // thread's and active; `lend_in` refuses it (`Err`) if it is busy.
            match unsafe { lend_in(origin, pages) } {
                Ok(Some(block)) => piece = Some(block),
                Ok(None) => return None,
                Err(()) => {}
            }
        }
        let piece = match piece {
            Some(piece) => piece,
            None => {
                origin = ptr::null();
                // SAFETY: `pages` has a non-zero size.
                NonNull::new(unsafe { std::alloc::System.alloc(pages) })?
            }
        };
        self.held += pages.size();
        if self.claims.is_some() {
            if !origin.is_null() {
                // The origin's pages are claimed already: hand them over, keeping the base
                // their blocks are rebuilt from (the origin's source's).
                page_map::reassign(piece.as_ptr(), pages.size(), self.claims.0);
            } else if !page_map::claim(piece.as_ptr(), pages.size(), self.claims.0) {
                // SAFETY: just got from the system allocator with `pages`, never handed out;
                // the failed claim changed nothing.
                unsafe { std::alloc::System.dealloc(piece.as_ptr(), pages) };
                self.held -= pages.size();
                return None;
            }
        }
        let booked = Slot {
            ptr: piece.as_ptr(),
            value: (origin, pages),
        };
        if self.origins.insert(booked).is_err() {
            abort_with(format_args!(
                "Pipe: {piece:p} handed out twice by its origin"
            ));
        }
        Some(piece)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        let Some(i) = self.origins.find(ptr.as_ptr().addr()) else {
            abort_with(format_args!(
                "Pipe: put of {ptr:p} (size {}), which is not a block of this layer",
                layout.size()
            ))
        };
        let (origin, pages) = self.origins.slot(i).value;
        self.origins.remove(i);
        // SAFETY: booked until just now, so got from `origin` with `pages`.
        unsafe { Self::give_back(self.claims, &mut self.held, ptr, pages, origin) };
    }

    fn init() -> Self {
        Self::new()
    }

    fn deinit(&mut self) {
        // Every piece ends here: each goes back to where it came from.
        for slot in self.origins.iter() {
            let (origin, pages) = slot.value;
            // SAFETY: a booked piece, got from `origin` with `pages`, given back once (the
            // booking is cleared below).
            unsafe {
                let piece = NonNull::new_unchecked(slot.ptr);
                Self::give_back(self.claims, &mut self.held, piece, pages, origin);
            }
        }
        self.origins.release_to(&mut self.booking);
        self.booking.deinit();
    }

    fn check_invariants(&self) {
        if let Err(broken) = self.origins.check_invariants() {
            abort_with(format_args!("Pipe invariant broken: {broken}"));
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.deinit();
    }
}

// SAFETY: every piece's pages are claimed for `owner` from `get` until its `put`.
unsafe impl Attributed for Pipe {
    fn attribute(&mut self, owner: Attribution) {
        self.claims = owner;
    }
}

impl fmt::Debug for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipe")
            .field("pieces", &self.origins.len())
            .field("held_bytes", &self.held)
            .finish()
    }
}
