//! The six examples of Perl's Task::MemManager documentation, in Rust: managed buffers with fill bytes,
//! release hooks, regions, shared copies, deferred release, and adopted memory with the
//! overlap check. Run with `cargo run --example buffers`.

use std::ptr::NonNull;

use stratalloc::Gauge;
use stratalloc::layers::{AdoptedMemory, Stats, System};
use stratalloc::managed::{BufferInfo, BufferManager, ManagedBuffer};

type Stack = Stats<System>;

/// Task::MemManager's death stub: says which buffer dies.
fn killing(label: &'static str) -> impl FnOnce(&BufferInfo, &[u8]) + Send + 'static {
    move |info, _bytes| println!("Killing {label} #{} at {:#x}", info.id, info.address)
}

/// The examples' `print_hex_values`: the bytes in hex, `per_line` to a line.
fn print_hex(bytes: &[u8], per_line: usize) {
    for line in bytes.chunks(per_line) {
        let hex: Vec<String> = line.iter().map(|byte| format!("{byte:02X}")).collect();
        println!("{}", hex.join(" "));
    }
}

fn show(name: &str, buffer: &ManagedBuffer<Stack>) {
    println!("{name:>10} object is {buffer:?}");
}

fn main() {
    let manager = BufferManager::new(Stats::new(System::new()));

    println!("== Example 1: allocating buffers and killing them");
    let memdeath = manager
        .options(40, 1)
        .on_release(killing("memdeath"))
        .allocate()
        .expect("40 bytes");
    let mut mem = manager
        .options(20, 1)
        .fill(b'A')
        .on_release(killing("mem"))
        .allocate()
        .expect("20 bytes");
    show("mem", &mem);
    // Assigning a new buffer releases the old one at once: its hook fires here.
    mem = manager
        .options(20, 1)
        .fill(b'A')
        .on_release(killing("mem"))
        .allocate()
        .expect("20 bytes");
    show("memdeath", &memdeath);
    show("mem", &mem);
    // Killing a buffer at once: drop it.
    drop(memdeath);
    // A constant buffer: shared handles cannot write (Task::MemManager needed Readonly for this).
    let constant = manager
        .options(20, 1)
        .fill(b'D')
        .allocate()
        .expect("20 bytes");
    let mut other_handle = constant.clone();
    println!(
        "a second handle may write? {}",
        if other_handle.get_mut().is_some() {
            "yes"
        } else {
            "no: the buffer is shared"
        }
    );
    drop((constant, other_handle));

    println!("\n== Example 2: extracting and inspecting a region of the buffer");
    mem.get_mut().expect("the only handle")[5..10].copy_from_slice(b"Hello");
    print_hex(mem.region(5, 10).expect("inside the buffer"), 8);
    println!(
        "region(15, 25): {:?} (overruns the buffer)",
        mem.region(15, 25)
    );

    println!("\n== Example 3: a shallow copy defers the buffer's release");
    let mut mem_cp = mem.clone();
    show("mem_cp", &mem_cp);
    println!(
        "Buffer {:>10} with buffer address {:#x}",
        "Alpha",
        mem.address()
    );
    println!(
        "Buffer {:>10} with buffer address {:#x}",
        "Alpha_copy",
        mem_cp.address()
    );
    // Killing the original handle; the copy keeps the buffer.
    let mut mem = Some(mem);
    mem.take();
    println!(
        "mem : {}",
        mem.as_ref()
            .map_or("does not exist anymore".to_string(), |m| format!(
                "{:#x}",
                m.address()
            ))
    );
    println!(
        "Buffer {:>10} with buffer address {:#x}",
        "Alpha_copy",
        mem_cp.address()
    );
    print_hex(mem_cp.as_bytes(), 10);

    println!("\n== Example 4: replacing a buffer releases the old one");
    mem_cp = manager
        .options(20, 1)
        .fill(b'D')
        .on_release(killing("mem_cp"))
        .allocate()
        .expect("20 bytes");
    show("mem_cp", &mem_cp);
    println!(
        "Buffer {:>10} with buffer address {:#x}",
        "Alpha_copy after modification",
        mem_cp.address()
    );
    print_hex(mem_cp.as_bytes(), 10);

    println!("\n== Example 5: fine control over the release");
    let mem_cp2 = manager
        .options(20, 1)
        .fill(b'D')
        .on_release(killing("mem_cp2 (deferred)"))
        .deferred()
        .allocate()
        .expect("20 bytes");
    let deferred_id = mem_cp2.id();
    println!("Dropping a buffer with deferred release does not release it!");
    drop(mem_cp2);
    let waiting: Vec<String> = manager
        .waiting()
        .iter()
        .map(|info| format!("#{} at {:#x}", info.id, info.address))
        .collect();
    println!("Objects with deferred release: {}", waiting.join(", "));
    assert_eq!(manager.waiting()[0].id, deferred_id);
    println!("collect() releases them now, at a time of the program's choosing:");
    let collected = manager.collect();
    println!("collected {collected}");

    println!("\n== Example 6: adopting buffers and refusing overlaps");
    let pointer: Vec<u8> = vec![0; 1024];
    let mem_pointer = manager
        .options(100, 1)
        .on_release(killing("the re-adoptable"))
        .adopt(AdoptedMemory::from_vec(pointer))
        .expect("1024 bytes hold 100");
    println!("Memory address is {:#x}", mem_pointer.address());
    let consumable = vec![0u8; 1000].into_boxed_slice();
    let mem_consumable = manager
        .options(1000, 1)
        .on_release(killing("the consumable"))
        .adopt(AdoptedMemory::from_box(consumable))
        .expect("1000 bytes");
    let consumable2 = vec![0u8; 100].into_boxed_slice();
    let mem_consumable2 = manager
        .options(100, 1)
        .on_release(killing("the consumable2"))
        .adopt(AdoptedMemory::from_box(consumable2))
        .expect("100 bytes");
    // Adopting the first buffer's bytes a second time, by address: refused, naming both
    // ranges, instead of a double free at the end.
    // SAFETY: the range is a live buffer's; the manager refuses it before touching a byte.
    let reconsumable = unsafe {
        AdoptedMemory::from_raw_parts(
            NonNull::new(mem_pointer.as_mut_ptr()).expect("a buffer"),
            100,
        )
    };
    match manager.options(100, 1).adopt(reconsumable) {
        Ok(_) => unreachable!("the overlap is caught"),
        Err(error) => println!("{error}"),
    }
    drop(mem_consumable2);

    println!("\n== End of the program: every buffer goes");
    drop((mem_cp, mem_pointer, mem_consumable));
    let gauges = manager.with_heap(|heap| heap.gauge());
    drop(manager);
    println!(
        "stack: {} buffers got, {} put back, {} live",
        gauges.gets, gauges.puts, gauges.live
    );
}
