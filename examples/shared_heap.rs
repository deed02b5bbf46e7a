//! Two processes share one heap in a file: the writer puts messages into blocks and sends
//! their offsets down a pipe; the reader (this program run again) maps the same file,
//! reads each message through its own mapping, and frees the block. The writer then dumps
//! the heap, empty again.
//!
//! `cargo run --example shared_heap [MESSAGES]`

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use stratalloc::blob_heap::{BlobGeometry, BlobHeap};

fn map(path: &str) -> memmap2::MmapMut {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("opening the heap file");
    // SAFETY: the file belongs to this example; both processes touch it only through heap
    // handles and the blocks the heap hands out.
    unsafe { memmap2::MmapMut::map_mut(&file) }.expect("mapping the heap file")
}

/// The reader: attaches, then for each offset on stdin reads the message and frees it.
fn reader(path: &str) {
    let mut blob = map(path);
    // SAFETY: the writer made the heap in this file with `init`, and both processes change
    // it only through heap handles.
    let heap = unsafe { BlobHeap::attach(&mut blob) }.expect("attaching to the heap");
    let pid = std::process::id();
    for line in std::io::stdin().lock().lines() {
        let offset: u64 = line
            .expect("reading stdin")
            .trim()
            .parse()
            .expect("an offset");
        let block = heap.block(offset).expect("a live block");
        // SAFETY: the writer filled the block before sending its offset, and no one else
        // touches it until we free it. The message is its bytes up to the first zero.
        let bytes = unsafe { block.as_ptr().as_ref() };
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let message = String::from_utf8_lossy(&bytes[..len]);
        println!(
            "reader {pid}: {message:?} from offset {offset:#x} ({} B block)",
            block.size
        );
        heap.free(offset).expect("freeing the block");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--reader") {
        return reader(&args[2]);
    }
    let messages: usize = args
        .get(1)
        .map_or(8, |n| n.parse().expect("a number of messages"));

    // A 1 MiB heap of blocks from 64 bytes, page-aligned data, in a file.
    let geometry = BlobGeometry::new(20, 6, 4096).expect("a valid geometry");
    let path = std::env::temp_dir().join(format!("stratalloc-shared-heap-{}", std::process::id()));
    let file = std::fs::File::create(&path).expect("creating the heap file");
    file.set_len(geometry.required_size() as u64)
        .expect("sizing the heap file");
    let path = path.to_str().expect("a UTF-8 temp path").to_owned();
    let mut blob = map(&path);
    let heap = BlobHeap::init(&mut blob, geometry).expect("making the heap");
    println!(
        "writer {}: heap of {} bytes in {} ({} bytes with its metadata)",
        std::process::id(),
        geometry.heap_bytes(),
        path,
        geometry.required_size()
    );

    let mut child = Command::new(std::env::current_exe().expect("this program's path"))
        .args(["--reader", &path])
        .stdin(Stdio::piped())
        .spawn()
        .expect("starting the reader");
    let mut pipe = child.stdin.take().expect("the reader's stdin");
    for i in 0..messages {
        let message = format!(
            "message {i}: {}",
            "hello from the writer ".repeat(i % 5 + 1)
        );
        let block = heap
            .alloc(message.len() + 1)
            .expect("a block for the message");
        // SAFETY: a fresh block of at least `message.len() + 1` bytes, ours until the
        // reader frees it.
        unsafe {
            let ptr = block.as_ptr().cast::<u8>().as_ptr();
            ptr.copy_from_nonoverlapping(message.as_ptr(), message.len());
            ptr.add(message.len()).write(0);
        }
        writeln!(pipe, "{}", block.offset).expect("writing to the reader");
    }
    drop(pipe);
    let status = child.wait().expect("waiting for the reader");
    assert!(status.success(), "the reader failed: {status}");

    print!(
        "{}",
        heap.dump_to_string("The heap after the reader freed every block:")
    );
    let stats = heap.stats();
    assert_eq!(stats.live_blocks, 0, "the reader freed every message");
    drop(heap);
    std::fs::remove_file(&path).expect("removing the heap file");
}
