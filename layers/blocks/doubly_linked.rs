//! Intrusive doubly linked lists, written once: [`Linked`] says where a node keeps its two
//! links, and [`push_front`], [`insert_after`] and [`unlink`] keep a list whose first node a
//! layer holds in a field (null for an empty list). Buddy's free lists, Coalesce's bins and
//! its arena and large-block lists, Slab's slab lists and Chunk's large-block list are such
//! lists. Invariant of a list: following `next` from the head reaches every node once and
//! ends at null; each node's `prev` is the node before it, null for the head.

use core::ptr;

/// A node of an intrusive doubly linked list: where it keeps its links.
///
/// # Safety
///
/// For a node pointer valid for reads and writes, `prev` and `next` return pointers, valid
/// as long as the node is, to two distinct words of the node's memory that nothing but the
/// list uses while the node is on one.
pub(crate) unsafe trait Linked: Sized {
    /// The link to the node before this one (null for the head).
    ///
    /// # Safety
    ///
    /// `node` is valid for reads and writes.
    unsafe fn prev(node: *mut Self) -> *mut *mut Self;

    /// The link to the node after this one (null for the last).
    ///
    /// # Safety
    ///
    /// As for [`prev`](Self::prev).
    unsafe fn next(node: *mut Self) -> *mut *mut Self;
}

/// Implements [`Linked`] for structs whose fields `prev` and `next` are the links.
macro_rules! linked_by_fields {
    ($($node:ty),+ $(,)?) => {$(
        // SAFETY: `prev` and `next` are two distinct fields of the node, reached without
        // making a reference, used by the list alone.
        unsafe impl $crate::layers::blocks::doubly_linked::Linked for $node {
            #[inline(always)]
            unsafe fn prev(node: *mut Self) -> *mut *mut Self {
                // SAFETY: the caller's duty: `node` is valid.
                unsafe { &raw mut (*node).prev }
            }

            #[inline(always)]
            unsafe fn next(node: *mut Self) -> *mut *mut Self {
                // SAFETY: as above.
                unsafe { &raw mut (*node).next }
            }
        }
    )+};
}
pub(crate) use linked_by_fields;

/// Puts `node` at the front of the list whose head is `*head`.
///
/// # Safety
///
/// `node` is valid and on no list; `*head` is the head of a list whose nodes are valid.
#[inline(always)]
pub(crate) unsafe fn push_front<T: Linked>(head: &mut *mut T, node: *mut T) {
    let first = *head;
    // SAFETY: the caller's duty: `node` and, when not null, `first` are valid nodes.
    unsafe {
        T::prev(node).write(ptr::null_mut());
        T::next(node).write(first);
        if !first.is_null() {
            T::prev(first).write(node);
        }
    }
    *head = node;
}

/// Puts `node` right after `at`.
///
/// # Safety
///
/// `node` is valid and on no list; `at` is a node on a list whose nodes are valid.
#[inline(always)]
pub(crate) unsafe fn insert_after<T: Linked>(at: *mut T, node: *mut T) {
    // SAFETY: the caller's duty: `at`, its successor when not null, and `node` are valid.
    unsafe {
        let after = T::next(at).read();
        T::prev(node).write(at);
        T::next(node).write(after);
        if !after.is_null() {
            T::prev(after).write(node);
        }
        T::next(at).write(node);
    }
}

/// Takes `node` off the list whose head is `*head`. Its links are left as they were.
///
/// # Safety
///
/// `node` is on that list, whose nodes are valid.
#[inline(always)]
pub(crate) unsafe fn unlink<T: Linked>(head: &mut *mut T, node: *mut T) {
    // SAFETY: the caller's duty: `node` and its neighbours are valid nodes of the list.
    unsafe {
        let prev = T::prev(node).read();
        let next = T::next(node).read();
        if prev.is_null() {
            *head = next;
        } else {
            T::next(prev).write(next);
        }
        if !next.is_null() {
            T::prev(next).write(prev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    struct Node {
        prev: *mut Node,
        next: *mut Node,
        value: u32,
    }

    linked_by_fields!(Node);

    /// The values from the head on, checking every `prev` on the way.
    fn walk(head: *mut Node) -> Vec<u32> {
        let mut values = Vec::new();
        let (mut node, mut before) = (head, ptr::null_mut());
        while !node.is_null() {
            // SAFETY: the test's nodes live in a vector that outlives the walk.
            unsafe {
                assert_eq!((*node).prev, before, "prev of {}", (*node).value);
                values.push((*node).value);
                before = node;
                node = (*node).next;
            }
        }
        values
    }

    #[test]
    fn pushes_inserts_and_unlinks_keep_both_directions() {
        let mut nodes: Vec<Node> = (0..4)
            .map(|value| Node {
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                value,
            })
            .collect();
        let base = nodes.as_mut_ptr();
        let at = |i: usize| base.wrapping_add(i);
        let mut head = ptr::null_mut();
        // SAFETY: every node is valid (the vector outlives them and is not touched but
        // through `base`) and, when pushed or inserted, on no list.
        unsafe {
            push_front(&mut head, at(0));
            push_front(&mut head, at(1));
            assert_eq!(walk(head), [1, 0]);
            insert_after(at(1), at(2));
            insert_after(at(0), at(3));
            assert_eq!(walk(head), [1, 2, 0, 3]);
            unlink(&mut head, at(2));
            assert_eq!(walk(head), [1, 0, 3]);
            unlink(&mut head, at(1));
            assert_eq!(walk(head), [0, 3]);
            unlink(&mut head, at(3));
            assert_eq!(walk(head), [0]);
            unlink(&mut head, at(0));
        }
        assert!(head.is_null());
    }
}
