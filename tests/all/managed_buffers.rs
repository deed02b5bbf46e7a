//! Managed buffers (`stratalloc::managed`) and the `Adopted` source: fill, regions, hooks
//! firing once with their identifiers when the last clone goes, deferred release, adopted
//! memory given back as its origin requires, overlapping adoption refused with both ranges
//! named, typed views with their checks.

use std::alloc::Layout;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use stratalloc::layers::{AdoptRefusal, Adopted, AdoptedMemory, Mmap, Origin, Stats, System};
use stratalloc::managed::{BufferError, BufferInfo, BufferManager, ViewError};
use stratalloc::{Gauge, Layer, check_leaks};

type Counted = Stats<System>;

fn manager() -> BufferManager<Counted> {
    BufferManager::new(Stats::new(System::new()))
}

/// Blocks of the stack still out.
fn live(manager: &BufferManager<Counted>) -> u64 {
    manager.with_heap(|heap| heap.gauge().live)
}

/// Identifiers of released buffers, in the order their hooks ran.
type Log = Arc<Mutex<Vec<u64>>>;
type Hook = Box<dyn FnOnce(&BufferInfo, &[u8]) + Send>;

/// A log, and a maker of hooks that write released buffers' identifiers into it.
fn recorder() -> (Log, impl Fn() -> Hook) {
    let log = Log::default();
    let for_hooks = Arc::clone(&log);
    let make = move || {
        let log = Arc::clone(&for_hooks);
        Box::new(move |info: &BufferInfo, _: &[u8]| log.lock().unwrap().push(info.id)) as Hook
    };
    (log, make)
}

#[test]
fn buffers_are_filled_and_describe_themselves() {
    let manager = manager();
    let zeroed = manager.allocate(40, 1).unwrap();
    assert!(zeroed.as_bytes().iter().all(|&b| b == 0));
    let filled = manager.options(5, 4).fill(b'A').allocate().unwrap();
    assert_eq!(filled.as_bytes(), &[b'A'; 20]);
    assert_eq!(
        (filled.size(), filled.element_size(), filled.count()),
        (20, 4, 5)
    );
    assert_eq!(filled.address(), filled.as_bytes().as_ptr().addr());
    assert_eq!(filled.address() % 16, 0, "aligned to 16 by default");
    assert_ne!(zeroed.id(), filled.id());
    let aligned = manager.options(3, 1).align(4096).allocate().unwrap();
    assert_eq!(aligned.address() % 4096, 0);
    // A stack that hands out zeroes is trusted for the zero fill, and filled otherwise.
    let mapped = BufferManager::new(Mmap::new());
    assert!(
        mapped
            .allocate(4096, 2)
            .unwrap()
            .as_bytes()
            .iter()
            .all(|&b| b == 0)
    );
    let dirty = mapped.options(100, 1).fill(0xD7).allocate().unwrap();
    assert!(dirty.as_bytes().iter().all(|&b| b == 0xD7));
}

#[test]
fn bad_requests_are_errors_naming_the_request() {
    let manager = manager();
    let too_large = manager.allocate(usize::MAX, 2).unwrap_err();
    assert_eq!(
        too_large,
        BufferError::TooLarge {
            count: usize::MAX,
            element_size: 2
        }
    );
    assert_eq!(
        too_large.to_string(),
        format!(
            "a buffer of {} elements of 2 bytes is too large",
            usize::MAX
        )
    );
    let bad_align = manager.options(4, 1).align(24).allocate().unwrap_err();
    assert_eq!(bad_align.to_string(), "alignment 24 is not a power of two");
    let small = BufferManager::new(Adopted::<1>::new());
    assert_eq!(
        small.allocate(8, 1).unwrap_err().to_string(),
        "the stack has no memory for a buffer of 8 bytes aligned to 16"
    );
}

#[test]
fn regions_are_the_bytes_asked_for_or_none() {
    let manager = manager();
    let mut buffer = manager.allocate(20, 1).unwrap();
    for (i, byte) in buffer.get_mut().unwrap().iter_mut().enumerate() {
        *byte = i as u8;
    }
    assert_eq!(buffer.region(5, 10), Some(&[5, 6, 7, 8, 9][..]));
    assert_eq!(buffer.region(0, 20).map(<[u8]>::len), Some(20));
    assert_eq!(buffer.region(20, 20), Some(&[][..]));
    assert_eq!(buffer.region(0, 21), None, "overruns the buffer");
    assert_eq!(buffer.region(6, 5), None, "start after end");
    assert_eq!(buffer.region(usize::MAX, usize::MAX), None);
}

#[test]
fn the_hook_runs_once_when_the_last_clone_goes_and_memory_goes_back() {
    let manager = manager();
    let (log, hook) = recorder();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_hook = Arc::clone(&seen);
    let first = manager
        .options(20, 1)
        .fill(b'D')
        .on_release(move |info, bytes| {
            seen_by_hook
                .lock()
                .unwrap()
                .push((info.clone(), bytes.to_vec()));
        })
        .allocate()
        .unwrap();
    let second = manager.options(8, 8).on_release(hook()).allocate().unwrap();
    let copy = first.clone();
    assert_eq!((first.handles(), copy.address()), (2, first.address()));
    let info = first.info().clone();
    drop(first);
    assert!(seen.lock().unwrap().is_empty(), "a clone keeps the buffer");
    assert_eq!(live(&manager), 2);
    drop(copy);
    assert_eq!(*seen.lock().unwrap(), [(info, vec![b'D'; 20])]);
    assert_eq!(live(&manager), 1);
    let second_id = second.id();
    drop(second);
    assert_eq!(*log.lock().unwrap(), [second_id]);
    assert_eq!(live(&manager), 0);
    assert_eq!(manager.held(), 0);
}

#[test]
fn deferred_buffers_wait_until_collect() {
    let manager = manager();
    let (log, hook) = recorder();
    let at_once = manager
        .options(20, 1)
        .on_release(hook())
        .allocate()
        .unwrap();
    let later = manager
        .options(20, 1)
        .on_release(hook())
        .deferred()
        .allocate()
        .unwrap();
    let later_too = manager.options(4, 4).deferred().allocate().unwrap();
    let (at_once_id, later_id, later_too_id) = (at_once.id(), later.id(), later_too.id());
    drop(at_once);
    drop(later);
    drop(later_too);
    assert_eq!(
        *log.lock().unwrap(),
        [at_once_id],
        "deferred hooks wait too"
    );
    let waiting: Vec<u64> = manager.waiting().iter().map(|info| info.id).collect();
    assert_eq!(waiting, [later_id, later_too_id]);
    assert_eq!((manager.held(), live(&manager)), (2, 2));
    assert_eq!(manager.collect(), 2);
    assert_eq!(*log.lock().unwrap(), [at_once_id, later_id]);
    assert_eq!((manager.held(), live(&manager)), (0, 0));
    assert!(manager.waiting().is_empty());
    assert_eq!(manager.collect(), 0);
}

#[test]
fn the_manager_s_drop_releases_the_waiting_and_later_buffers_release_at_once() {
    let (log, hook) = recorder();
    let manager = manager();
    let waiting = manager
        .options(8, 1)
        .on_release(hook())
        .deferred()
        .allocate()
        .unwrap();
    let outliving = manager
        .options(8, 1)
        .on_release(hook())
        .deferred()
        .allocate()
        .unwrap();
    let (waiting_id, outliving_id) = (waiting.id(), outliving.id());
    drop(waiting);
    drop(manager);
    assert_eq!(*log.lock().unwrap(), [waiting_id]);
    assert_eq!(
        outliving.as_bytes(),
        &[0; 8],
        "still usable after its manager's handle"
    );
    drop(outliving);
    assert_eq!(
        *log.lock().unwrap(),
        [waiting_id, outliving_id],
        "no collect left to wait for"
    );
}

#[test]
fn a_panicking_hook_still_gives_the_memory_back() {
    let manager = manager();
    let buffer = manager
        .options(64, 1)
        .on_release(|_, _| panic!("hook failed"))
        .allocate()
        .unwrap();
    let panic = catch_unwind(AssertUnwindSafe(|| drop(buffer))).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"hook failed"));
    assert_eq!((manager.held(), live(&manager)), (0, 0));
    // The manager goes on working.
    drop(manager.allocate(8, 1).unwrap());
    assert_eq!(live(&manager), 0);
}

/// A deferred buffer's hook that panics in `collect`, or in the manager's drop, does not
/// keep the buffers waiting beside it from being released with their hooks.
#[test]
fn a_panicking_hook_does_not_strand_the_other_waiting_buffers() {
    let (log, hook) = recorder();
    let manager = manager();
    let deferred = |panics: bool| {
        let options = manager.options(16, 1).deferred();
        let options = if panics {
            options.on_release(|_, _| panic!("hook failed"))
        } else {
            options.on_release(hook())
        };
        options.allocate().unwrap()
    };
    let (before, failing, after) = (deferred(false), deferred(true), deferred(false));
    let ids = [before.id(), after.id()];
    drop((before, failing, after));
    assert_eq!(manager.waiting().len(), 3);
    let panic = catch_unwind(AssertUnwindSafe(|| manager.collect())).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"hook failed"));
    assert_eq!(*log.lock().unwrap(), ids);
    assert_eq!(
        (manager.waiting().len(), manager.held(), live(&manager)),
        (0, 0, 0)
    );

    // The same when the manager's drop releases them.
    let (failing, last) = (deferred(true), deferred(false));
    let last_id = last.id();
    drop((failing, last));
    let panic = catch_unwind(AssertUnwindSafe(|| drop(manager))).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"hook failed"));
    assert_eq!(log.lock().unwrap().last(), Some(&last_id));
}

#[test]
fn a_hook_may_use_its_manager() {
    let manager = Arc::new(manager());
    let from_hook = Arc::clone(&manager);
    let buffer = manager
        .options(8, 1)
        .on_release(move |_, _| {
            // Runs outside the manager's lock: allocating here does not deadlock.
            let inner = from_hook.allocate(4, 1).unwrap();
            assert_eq!(inner.as_bytes(), &[0; 4]);
        })
        .allocate()
        .unwrap();
    drop(buffer);
    assert_eq!(manager.held(), 0);
}

#[test]
fn buffers_cross_threads() {
    let manager = manager();
    let (log, hook) = recorder();
    let buffers: Vec<_> = (0..8)
        .map(|i| {
            manager
                .options(16, 1)
                .fill(i)
                .on_release(hook())
                .allocate()
                .unwrap()
        })
        .collect();
    std::thread::scope(|scope| {
        for chunk in buffers.chunks(2) {
            let clones: Vec<_> = chunk.to_vec();
            scope.spawn(move || {
                for buffer in clones {
                    assert!(buffer.as_bytes().iter().all(|&b| b == buffer.as_bytes()[0]));
                }
            });
        }
    });
    drop(buffers);
    assert_eq!(log.lock().unwrap().len(), 8);
    assert_eq!(live(&manager), 0);
}

#[test]
fn typed_views_check_size_and_alignment() {
    let manager = manager();
    let mut words = manager.options(4, 4).allocate().unwrap();
    words
        .view_mut::<u32>()
        .unwrap()
        .copy_from_slice(&[1, 2, 3, 0xFFFF_FFFF]);
    assert_eq!(words.view::<u32>().unwrap(), [1, 2, 3, 0xFFFF_FFFF]);
    assert_eq!(words.view::<[u8; 4]>().unwrap()[1], 2u32.to_ne_bytes());
    let wrong = words.view::<u64>().unwrap_err();
    assert_eq!(
        wrong.to_string(),
        "cannot view elements of 4 bytes as u64 (8 bytes)"
    );
    let copy = words.clone();
    assert_eq!(
        words.view_mut::<u32>().unwrap_err(),
        ViewError::Shared { handles: 2 }
    );
    drop(copy);
    assert!(words.get_mut().is_some());

    // No elements: an empty view; elements of no size: refused, not a panic.
    assert!(
        manager
            .allocate(0, 4)
            .unwrap()
            .view::<u32>()
            .unwrap()
            .is_empty()
    );
    let unit = manager
        .allocate(3, 0)
        .unwrap()
        .view::<()>()
        .map(<[()]>::len);
    assert!(matches!(
        unit,
        Err(ViewError::ElementSize { type_size: 0, .. })
    ));

    // A buffer at an odd address (adopted from inside a vector) cannot be seen as u32s.
    let mut bytes = vec![0u8; 17];
    let odd = NonNull::new(bytes.as_mut_ptr().wrapping_add(1)).unwrap();
    // SAFETY: 16 initialised bytes of `bytes`, which outlives the buffer and is not used
    // while it lives.
    let memory = unsafe { AdoptedMemory::from_raw_parts(odd, 16) };
    let adopted = manager.options(4, 4).adopt(memory).unwrap();
    assert_eq!(
        adopted.view::<u32>().unwrap_err().to_string(),
        format!(
            "cannot view the buffer at {:#x} as u32: it needs alignment 4",
            odd.as_ptr().addr()
        )
    );
    drop(adopted);
    drop(bytes);
}

#[cfg(feature = "ndarray")]
#[test]
fn an_ndarray_view_has_the_shape_asked_for() {
    let manager = manager();
    let mut buffer = manager.options(6, 8).allocate().unwrap();
    for (i, value) in buffer.view_mut::<f64>().unwrap().iter_mut().enumerate() {
        *value = i as f64;
    }
    let matrix = buffer.array::<f64, _>((2, 3)).unwrap();
    assert_eq!(matrix[[1, 2]], 5.0);
    assert_eq!(matrix.sum(), 15.0);
    assert_eq!(
        buffer.array::<f64, _>((4, 2)).unwrap_err(),
        ViewError::Shape {
            shape: vec![4, 2],
            count: 6
        }
    );
}

#[test]
fn adopted_memory_is_served_and_given_back_to_its_origin() {
    // Boxes and vectors go back to the global allocator: nothing leaks (the manager is made
    // inside too, for its own bookkeeping).
    let report = check_leaks(|| {
        let manager = manager();
        let boxed = vec![7u8; 32].into_boxed_slice();
        let buffer = manager
            .options(8, 4)
            .adopt(AdoptedMemory::from_box(boxed))
            .unwrap();
        assert_eq!(buffer.as_bytes(), &[7; 32]);
        assert_eq!(buffer.info().adopted, Some(Origin::Boxed));
        let mut vector = Vec::with_capacity(100);
        vector.extend_from_slice(b"hello");
        let buffer = manager
            .options(5, 1)
            .adopt(AdoptedMemory::from_vec(vector))
            .unwrap();
        assert_eq!(buffer.as_bytes(), b"hello");
        assert_eq!(
            live(&manager),
            0,
            "adopted memory never comes from the stack"
        );
    });
    assert!(report.is_ok(), "{report:?}");

    let manager = manager();
    // A static slice is not freed: its bytes are readable after the buffer's release.
    let leaked: *mut [u8] = Box::into_raw(vec![3u8; 16].into_boxed_slice());
    // SAFETY: a leaked box: valid for ever, and only this borrow uses it until the buffer
    // made of it is released.
    let stat: &'static mut [u8] = unsafe { &mut *leaked };
    let buffer = manager
        .options(2, 8)
        .adopt(AdoptedMemory::from_static(stat))
        .unwrap();
    assert_eq!(buffer.info().adopted, Some(Origin::Static));
    drop(buffer);
    // SAFETY: the leaked box is still allocated (nothing freed it), and the static borrow
    // ended with the buffer.
    assert_eq!(unsafe { &*leaked }, &[3; 16]);
    // SAFETY: the box leaked above, unused since; freed here only so that Miri's leak
    // check passes.
    drop(unsafe { Box::from_raw(leaked) });

    let refused = manager
        .options(10, 4)
        .adopt(AdoptedMemory::from_vec(vec![1; 39]))
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "adopting refused: 39 bytes cannot hold 10 elements of 4 bytes (Vec memory)"
    );
    assert_eq!(
        refused.into_memory().len(),
        39,
        "the memory comes back whole"
    );
}

#[test]
fn adopting_memory_that_overlaps_a_buffer_is_refused_naming_both_ranges() {
    let manager = manager();
    let live_buffer = manager.allocate(64, 1).unwrap();
    let start = live_buffer.address();
    // The seed's example 6: a live buffer's address adopted again.
    // SAFETY: the range is a live buffer's; the adoption is refused before a byte of it is
    // touched (the contract's exception).
    let again = unsafe {
        AdoptedMemory::from_raw_parts(NonNull::new(live_buffer.as_mut_ptr().add(16)).unwrap(), 100)
    };
    let error = manager.options(100, 1).adopt(again).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "adopting {:#x}..{:#x} refused: it overlaps buffer #{} at {:#x}..{:#x} (Raw memory)",
            start + 16,
            start + 116,
            live_buffer.id(),
            start,
            start + 64
        )
    );
    // An adopted buffer is overlapped as well; a waiting (deferred) one too.
    let mut backing = vec![0u8; 256];
    let base = NonNull::new(backing.as_mut_ptr()).unwrap();
    // SAFETY: `backing`'s bytes, unused while the buffers live.
    let first = unsafe { AdoptedMemory::from_raw_parts(base, 128) };
    let first = manager.options(128, 1).deferred().adopt(first).unwrap();
    drop(first);
    assert_eq!(manager.waiting().len(), 1);
    // SAFETY: as above; refused before use.
    let second = unsafe { AdoptedMemory::from_raw_parts(base.add(64), 128) };
    let refusal = manager.options(128, 1).adopt(second).unwrap_err();
    assert!(matches!(
        refusal.refusal(),
        AdoptRefusal::Overlaps {
            existing_id: Some(_),
            ..
        }
    ));
    // Adjacent is fine.
    // SAFETY: the second half of `backing`, unused elsewhere.
    let adjacent = unsafe { AdoptedMemory::from_raw_parts(base.add(128), 128) };
    let adjacent = manager.options(16, 1).adopt(adjacent).unwrap();
    // A buffer showing fewer bytes than its memory holds the whole memory all the same.
    // SAFETY: refused before use.
    let past_its_bytes = unsafe { AdoptedMemory::from_raw_parts(base.add(160), 96) };
    let refusal = manager.options(16, 1).adopt(past_its_bytes).unwrap_err();
    assert!(matches!(
        refusal.refusal(),
        AdoptRefusal::Overlaps { existing, .. } if existing.end == base.as_ptr().addr() + 256
    ));
    drop(adjacent);
    manager.collect();
    drop(live_buffer);
    drop(backing);
    assert_eq!((manager.held(), live(&manager)), (0, 0));
}

#[test]
fn the_adopted_source_serves_its_ranges_and_refuses_overlaps() {
    let mut adopted = Adopted::<2>::new();
    let layout = Layout::from_size_align(64, 8).unwrap();
    assert!(adopted.get(layout).is_none(), "no memory yet");
    let mut backing = vec![0u8; 200];
    let base = NonNull::new(backing.as_mut_ptr()).unwrap();
    // SAFETY: `backing`'s first 100 bytes, unused while the layer holds them.
    adopted
        .adopt(unsafe { AdoptedMemory::from_raw_parts(base, 100) })
        .unwrap();
    // SAFETY: overlaps the range above: refused before use.
    let overlapping = unsafe { AdoptedMemory::from_raw_parts(base.add(50), 100) };
    let error = adopted.adopt(overlapping).unwrap_err();
    let start = base.as_ptr().addr();
    assert_eq!(
        error.to_string(),
        format!(
            "adopting {:#x}..{:#x} refused: it overlaps an adopted range at {:#x}..{:#x} (Raw memory)",
            start + 50,
            start + 150,
            start,
            start + 100
        )
    );
    adopted
        .adopt(AdoptedMemory::from_vec(vec![0; 128]))
        .unwrap();
    let full = adopted
        .adopt(AdoptedMemory::from_vec(vec![0; 8]))
        .unwrap_err();
    assert_eq!(full.refusal(), &AdoptRefusal::Full { ranges: 2 });
    let origins: Vec<Origin> = adopted.ranges().map(|(_, origin)| origin).collect();
    assert_eq!(origins, [Origin::Raw, Origin::Vec]);

    // The first range holds one 64-byte block; the next comes from the second range.
    let a = adopted.get(layout).unwrap();
    let b = adopted.get(layout).unwrap();
    assert!((start..start + 100).contains(&a.as_ptr().addr()));
    assert!(!(start..start + 200).contains(&b.as_ptr().addr()));
    assert!(adopted.owns(a) && adopted.owns(b));
    // SAFETY: both got above with `layout`, each put once.
    unsafe {
        adopted.put(b, layout);
        adopted.put(a, layout);
    }
    adopted.check_invariants();
    // `give_back` (and the drop) gives every range back: the vector to the global allocator.
    let report = check_leaks(|| {
        let mut layer = Adopted::<1>::new();
        layer.adopt(AdoptedMemory::from_vec(vec![1; 64])).unwrap();
        layer.deinit();
        assert_eq!(layer.ranges().count(), 1, "deinit keeps the ranges");
        assert!(layer.get(layout).is_some());
        layer.give_back();
        assert_eq!(layer.ranges().count(), 0);
        assert!(layer.get(layout).is_none());
    });
    assert!(report.is_ok(), "{report:?}");
    adopted.deinit();
    drop(backing);
}

/// `AdoptedMemory::from_raw_parts` promises that memory overlapping what the same `Adopted`
/// already holds is refused. A vector's allocation is held whole (it is freed whole, with
/// its capacity, when given back), but the overlap check looks only at `0..len`: a raw range
/// in the vector's spare capacity is accepted, and would be served after the vector's
/// allocation is freed by `give_back`.
#[test]
fn adopting_raw_memory_inside_an_adopted_vector_s_capacity_is_refused() {
    use stratalloc::layers::{AdoptRefusal, Adopted, AdoptedMemory};
    let mut vector = Vec::<u8>::with_capacity(4096);
    vector.extend_from_slice(&[1; 16]);
    for byte in vector.spare_capacity_mut() {
        byte.write(0);
    }
    let spare = std::ptr::NonNull::new(vector.as_mut_ptr().wrapping_add(1024)).unwrap();
    let mut adopted = Adopted::<4>::new();
    adopted
        .adopt(AdoptedMemory::from_vec(vector))
        .expect("the first range");
    // SAFETY: initialised bytes, valid while the vector's allocation lives; the overlap with
    // the vector adopted above is what `adopt` promises to refuse.
    let raw = unsafe { AdoptedMemory::from_raw_parts(spare, 64) };
    let refused = adopted.adopt(raw);
    assert!(
        matches!(
            refused.as_ref().map_err(|e| e.refusal()),
            Err(AdoptRefusal::Overlaps { .. })
        ),
        "a range inside the adopted vector's capacity was accepted"
    );
}

/// A zero-size buffer at the largest alignment (2^63): the manager asks its stack for
/// `Layout { size: 0, align: 2^63 }`, and `System` sent that layout as it was to
/// `GlobalAlloc::alloc`, whose contract forbids a zero size (undefined behaviour; under
/// Miri, which models `posix_memalign`, the call is reached: run this test there). The
/// request must be refused as out of memory, without that call.
#[test]
fn a_zero_size_buffer_at_the_largest_alignment_is_refused() {
    let manager = BufferManager::new(System::new());
    let result = manager
        .options(0, 1)
        .align(1 << (usize::BITS - 1))
        .allocate();
    assert!(
        matches!(result, Err(BufferError::OutOfMemory { size: 0, .. })),
        "{result:?}"
    );
    assert_eq!(manager.held(), 0);
}

/// A buffer whose hook panics, dropped while its thread already unwinds from another panic
/// (a failed `assert!` in a test that holds the buffer): the docs promise that the hook's
/// panic "goes on" after the memory is back, but a second panic out of a `Drop` during
/// unwinding aborts the process. The first panic must go on instead (the test below fails,
/// it does not abort). The same holds for a deferred buffer released by the manager's drop.
#[cfg(feature = "os")]
#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_hook_that_panics_while_its_thread_unwinds_does_not_abort() {
    const TEST: &str =
        "managed_buffers::a_hook_that_panics_while_its_thread_unwinds_does_not_abort";
    match crate::child_scenario().as_deref() {
        Some("handle") => {
            let manager = manager();
            let _buffer = manager
                .options(8, 1)
                .on_release(|_, _| panic!("hook failed"))
                .allocate()
                .unwrap();
            panic!("the first panic");
        }
        Some("manager") => {
            let manager = manager();
            drop(
                manager
                    .options(8, 1)
                    .deferred()
                    .on_release(|_, _| panic!("hook failed"))
                    .allocate()
                    .unwrap(),
            );
            let _manager = manager;
            panic!("the first panic");
        }
        _ => {
            for scenario in ["handle", "manager"] {
                let output = crate::run_child(TEST, scenario);
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert_eq!(
                    output.status.code(),
                    Some(101),
                    "{scenario}: the child did not fail as a test: {:?}\n{stderr}",
                    output.status
                );
                assert!(stderr.contains("the first panic"), "{scenario}: {stderr}");
            }
        }
    }
}
