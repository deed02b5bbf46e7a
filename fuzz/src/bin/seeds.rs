//! Writes the seed corpus, `corpus/<target>/seed-N`: fixed-seed programs shaped like the
//! conformance suite's (tests/all/conformance.rs) for `heap_stacks` (two per stack) and
//! `general`, and like tests/all/blob_heap.rs and tests/all/bitmaps.rs for the other two.
//! Every program is decoded again before it is written, so the files always mean the
//! programs they were made from. Run from `fuzz/`: `cargo run --bin seeds`.

use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use stratalloc_fuzz::programs::{
    BitmapOp, BlobOp, GeneralOp, HeapOp, bitmap_program, blob_program, conformance_general_program,
    conformance_heap_program,
};
use stratalloc_fuzz::{Encoder, Rng, decode_ops};

/// `heap_stacks`' stacks (its `STACKS`).
const STACKS: u8 = 24;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;

    let dir = fresh(&root, "heap_stacks");
    for stack in 0..STACKS {
        for n in 0..2u64 {
            let ops = conformance_heap_program(&mut Rng::new(u64::from(stack) * 100 + n));
            let mut e = Encoder::default();
            e.u8(stack);
            ops.iter().for_each(|op| op.encode(&mut e));
            let mut u = Unstructured::new(&e.bytes);
            assert_eq!(u8::arbitrary(&mut u).expect("a stack"), stack);
            assert_eq!(decode_ops::<HeapOp>(&mut u), ops, "heap_stacks round trip");
            total += write(&dir, usize::from(stack) * 2 + n as usize, &e.bytes);
        }
    }

    let dir = fresh(&root, "general");
    for n in 0..12 {
        let ops = conformance_general_program(&mut Rng::new(1000 + n as u64));
        let mut e = Encoder::default();
        ops.iter().for_each(|op| op.encode(&mut e));
        let mut u = Unstructured::new(&e.bytes);
        assert_eq!(decode_ops::<GeneralOp>(&mut u), ops, "general round trip");
        total += write(&dir, n, &e.bytes);
    }

    let dir = fresh(&root, "blob_heap");
    for n in 0..16 {
        let mut rng = Rng::new(2000 + n as u64);
        // Smallest blocks of 32..1024 bytes, heaps of 1 KiB to 1 MiB, alignments 8..4096.
        let shape = [
            n as u8 % 6,
            rng.word() as u8,
            rng.word() as u8 % 10,
            n as u8,
        ];
        let ops = blob_program(&mut rng);
        let mut e = Encoder::default();
        shape.iter().for_each(|&b| {
            e.u8(b);
        });
        ops.iter().for_each(|op| op.encode(&mut e));
        let mut u = Unstructured::new(&e.bytes);
        assert_eq!(<[u8; 4]>::arbitrary(&mut u).expect("a shape"), shape);
        assert_eq!(decode_ops::<BlobOp>(&mut u), ops, "blob_heap round trip");
        total += write(&dir, n, &e.bytes);
    }

    let dir = fresh(&root, "bitmap");
    for n in 0..12 {
        let mut rng = Rng::new(3000 + n as u64);
        let attach = n % 2 == 1;
        let bits = [0u16, 1, 63, 64, 65, 127, 128, 200, 1000, 4096, 511, 3][n];
        let mut e = Encoder::default();
        // `Setup`: attach, bits, extra_words, count, bad_magic, bits_skew.
        e.bool(attach)
            .u16(bits)
            .u8(n as u8 % 3)
            .u8(0)
            .bool(false)
            .u8(0);
        let words = 3 + usize::from(bits).div_ceil(64) + n % 3;
        for _ in 0..words {
            // Attached sets start empty (their count is 0); `init` overwrites whatever is
            // there.
            let word = if attach { 0 } else { rng.word() };
            e.bytes.extend_from_slice(&word.to_le_bytes());
        }
        let ops = bitmap_program(&mut rng, bits);
        ops.iter().for_each(|op| op.encode(&mut e));
        let mut u = Unstructured::new(&e.bytes);
        let mut setup = [0u8; 7];
        u.fill_buffer(&mut setup).expect("a setup");
        for _ in 0..words {
            u64::arbitrary(&mut u).expect("a word");
        }
        assert_eq!(decode_ops::<BitmapOp>(&mut u), ops, "bitmap round trip");
        total += write(&dir, n, &e.bytes);
    }
    println!("{total} bytes of seeds written under {}", root.display());
}

/// `root/target`, emptied of earlier seeds (other corpus files are kept).
fn fresh(root: &Path, target: &str) -> PathBuf {
    let dir = root.join(target);
    fs::create_dir_all(&dir).expect("a corpus directory");
    for entry in fs::read_dir(&dir).expect("the corpus directory") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("seed-") {
            fs::remove_file(&path).expect("an old seed");
        }
    }
    dir
}

fn write(dir: &Path, n: usize, bytes: &[u8]) -> usize {
    fs::write(dir.join(format!("seed-{n}")), bytes).expect("a seed file");
    bytes.len()
}
