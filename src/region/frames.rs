//! This thread's region stack: the frames pushed by `enter` and `escape`, and the region
//! they make current.
//!
//! Invariants: `current` is always what `compute_current` says for the frames; frames are
//! pushed and popped only by `enter` and `escape`, through guards that pop on unwind too.
//! The thread-local is const-initialised and has no destructor, so the allocator can read
//! it at any time, thread teardown included (`try_with` then fails and the caller falls
//! back to the ground).

use core::cell::Cell;
use core::ptr;

use super::owner::Owner;

/// Deepest nesting of `enter` and `escape` frames on one thread.
pub(crate) const MAX_FRAMES: usize = 128;

/// The frame `escape` pushes: it hides the nearest region frame below it.
const ESCAPE: *const Owner = ptr::without_provenance(1);

pub(crate) struct ThreadState {
    /// The region allocations go to now, or null for the ground.
    current: Cell<*const Owner>,
    depth: Cell<usize>,
    /// One cell around the whole array, reached through [`ThreadState::frames`]: Miri then
    /// sees one interior-mutable range when the state is borrowed, not 128 of them on each
    /// allocation.
    frames: Cell<[*const Owner; MAX_FRAMES]>,
    /// Regions this thread has made: the next one's place in the thread's creation order.
    regions_made: Cell<u64>,
}

impl ThreadState {
    fn frames(&self) -> &[Cell<*const Owner>] {
        let frames: &Cell<[*const Owner]> = &self.frames;
        frames.as_slice_of_cells()
    }
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            current: Cell::new(ptr::null()),
            depth: Cell::new(0),
            frames: Cell::new([ptr::null(); MAX_FRAMES]),
            regions_made: Cell::new(0),
        }
    };
}

/// The current region of this thread (null: the ground), and a token naming the thread.
/// During thread teardown both are null / 0.
#[inline(always)]
pub(crate) fn current_and_token() -> (*const Owner, usize) {
    THREAD
        .try_with(|t| (t.current.get(), t as *const ThreadState as usize))
        .unwrap_or((ptr::null(), 0))
}

/// A token naming this thread, distinct from every live thread's (0 during teardown).
///
/// A token is the address of the thread's state, so a thread made after another exited may
/// get the same one. That is what happens to a region whose handle was forgotten
/// (`mem::forget`) by a thread that then exited: the region still names the old token as
/// its owner, and a later thread holding that token frees its blocks as the owner would,
/// driving its stack. This is sound: tokens are unique among live threads, so at most one
/// thread drives the stack at any time, and a thread's state is handed to a new thread only
/// after the old one ended, through the C library's own synchronisation (thread creation
/// and the reuse of a dead thread's stack), which orders the old owner's last use of the
/// stack before the new one's first. The region itself, forgotten, is never released.
#[inline(always)]
pub(crate) fn token() -> usize {
    THREAD
        .try_with(|t| t as *const ThreadState as usize)
        .unwrap_or(0)
}

/// The place of a region being made in this thread's creation order: a pipe takes pieces
/// only from an older region of its own thread (0 during thread teardown, when no region can
/// be entered).
pub(crate) fn next_seq() -> u64 {
    THREAD
        .try_with(|t| {
            let seq = t.regions_made.get();
            t.regions_made.set(seq.wrapping_add(1));
            seq
        })
        .unwrap_or(0)
}

/// The region current after `frames` (null for the ground): walking down, each escape
/// frame hides one more region frame.
fn compute_current(frames: &[Cell<*const Owner>]) -> *const Owner {
    let mut hidden = 0usize;
    for frame in frames.iter().rev() {
        let frame = frame.get();
        if frame == ESCAPE {
            hidden += 1;
        } else if hidden == 0 {
            return frame;
        } else {
            hidden -= 1;
        }
    }
    ptr::null()
}

/// Pops its frame when dropped, on return or unwind alike.
pub(crate) struct FrameGuard {
    depth: usize,
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        let _ = THREAD.try_with(|t| {
            debug_assert_eq!(t.depth.get(), self.depth + 1, "region frames out of order");
            t.depth.set(self.depth);
            t.current.set(compute_current(&t.frames()[..self.depth]));
        });
    }
}

/// Pushes a frame (a region, or `None` for an escape); the region it makes current comes
/// back with the guard.
///
/// # Panics
///
/// When frames nest deeper than [`MAX_FRAMES`], or during thread teardown. (This runs in
/// `enter` and `escape`, outside the allocator.)
pub(crate) fn push(region: Option<*const Owner>) -> FrameGuard {
    THREAD.with(|t| {
        let depth = t.depth.get();
        assert!(
            depth < MAX_FRAMES,
            "stratalloc: regions and escapes nested deeper than {MAX_FRAMES}"
        );
        t.frames()[depth].set(region.unwrap_or(ESCAPE));
        t.depth.set(depth + 1);
        t.current.set(compute_current(&t.frames()[..=depth]));
        FrameGuard { depth }
    })
}

/// The region below the nearest frame of `owner` on this thread's stack, as it would be
/// current there (null for the ground, and when `owner` is not on the stack).
pub(crate) fn enclosing(owner: *const Owner) -> *const Owner {
    THREAD
        .try_with(|t| {
            let frames = &t.frames()[..t.depth.get()];
            match frames.iter().rposition(|f| f.get() == owner) {
                Some(at) => compute_current(&frames[..at]),
                None => ptr::null(),
            }
        })
        .unwrap_or(ptr::null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(list: &[*const Owner]) -> std::vec::Vec<Cell<*const Owner>> {
        list.iter().map(|&f| Cell::new(f)).collect()
    }

    #[test]
    fn escapes_hide_one_region_each() {
        let (a, b, c) = (
            ptr::without_provenance::<Owner>(16),
            ptr::without_provenance::<Owner>(32),
            ptr::without_provenance::<Owner>(48),
        );
        assert_eq!(compute_current(&frames(&[])), ptr::null());
        assert_eq!(compute_current(&frames(&[a, b])), b);
        assert_eq!(compute_current(&frames(&[a, b, ESCAPE])), a);
        assert_eq!(
            compute_current(&frames(&[a, b, ESCAPE, ESCAPE])),
            ptr::null()
        );
        assert_eq!(compute_current(&frames(&[a, b, ESCAPE, c])), c);
        assert_eq!(compute_current(&frames(&[a, b, ESCAPE, c, ESCAPE])), a);
        assert_eq!(compute_current(&frames(&[a, ESCAPE, ESCAPE, b])), b);
    }
}
