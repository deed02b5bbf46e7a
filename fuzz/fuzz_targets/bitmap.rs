//! Fuzz target: `Bitmap` (the Dragon seed's `BitSet`, src/bitmap.rs) made in, or attached
//! to, memory that the input fills (header included), driven by op programs and compared
//! with a model (the bits as a `Vec<bool>`, the header's count, the padding).
//!
//! Property: `attach` accepts exactly the memory whose header holds up (magic, size, count
//! not above the bits) and `init` touches only the words it needs; every index or range
//! outside the set is an error naming it; get/set/reset, the ranges, `clear`, the searches
//! and `zeroes_to_right` agree with the model, bit for bit, padding bits never found;
//! `len` follows the header's count as the methods keep it; `check` fails exactly when the
//! count or the padding is wrong; `dump` never panics; a stray write between detach and
//! attach is either refused by `attach` or read back as the model says.
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ptr::NonNull;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use stratalloc::{Bitmap, BitmapError};
use stratalloc_fuzz::decode_ops;
use stratalloc_fuzz::programs::BitmapOp;

const MAGIC: u64 = u64::from_le_bytes(*b"BitSet01");
const HEADER_WORDS: usize = 3;
/// The most bits a set has here.
const MAX_BITS: u16 = 4096;

/// How the memory is laid out before the program runs.
#[derive(Arbitrary, Debug)]
struct Setup {
    /// Attach to the memory as the input fills it, or `init` a set in it.
    attach: bool,
    bits: u16,
    /// Words past what the set needs.
    extra_words: u8,
    /// The header's count, for `attach`.
    count: u8,
    /// The header's magic word is wrong, for `attach`.
    bad_magic: bool,
    /// The header's bit count is off by this much, for `attach`.
    bits_skew: i8,
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let num_bits = usize::from(setup.bits % (MAX_BITS + 1));
    let words = Bitmap::words_for(num_bits) + usize::from(setup.extra_words % 3);
    let mut memory: Vec<u64> = (0..words)
        .map(|_| u64::arbitrary(&mut u).unwrap_or(0))
        .collect();
    let ops: Vec<BitmapOp> = decode_ops(&mut u);
    if stratalloc_fuzz::tracing() {
        eprintln!("{setup:?}: {ops:#?}");
    }
    if setup.attach {
        memory[0] = if setup.bad_magic { !MAGIC } else { MAGIC };
        memory[1] = (num_bits as i64 + i64::from(setup.bits_skew)) as u64;
        memory[2] = u64::from(setup.count);
    }
    run(&setup, num_bits, &mut memory, &ops);
});

/// The model: the set's bit words (padding included) and its header's count.
struct Model {
    num_bits: usize,
    words: Vec<u64>,
    count: u64,
}

impl Model {
    /// Reads the set `memory` holds, once `attach` took it.
    fn read(memory: &[u64]) -> Model {
        let num_bits = memory[1] as usize;
        Model {
            num_bits,
            words: memory[HEADER_WORDS..HEADER_WORDS + num_bits.div_ceil(64)].to_vec(),
            count: memory[2],
        }
    }

    fn get(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    fn put(&mut self, i: usize, value: bool) {
        let mask = 1u64 << (i % 64);
        if value {
            self.words[i / 64] |= mask;
        } else {
            self.words[i / 64] &= !mask;
        }
    }

    fn find(&self, start: usize, end: usize, value: bool) -> Option<usize> {
        (start..end.min(self.num_bits)).find(|&i| self.get(i) == value)
    }

    fn out_of_range(&self, index: usize) -> BitmapError {
        BitmapError::OutOfRange {
            index,
            len: self.num_bits,
        }
    }

    fn range_error(&self, start: usize, count: usize) -> Option<BitmapError> {
        (start + count > self.num_bits).then_some(BitmapError::RangeOutOfRange {
            start,
            end: start + count,
            len: self.num_bits,
        })
    }

    /// What `check` finds.
    fn consistent(&self) -> bool {
        let ones: u64 = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        let padding_clear = self.num_bits.is_multiple_of(64)
            || self
                .words
                .last()
                .is_none_or(|w| w >> (self.num_bits % 64) == 0);
        ones == self.count && padding_clear
    }
}

/// What `attach` must answer for `memory`.
fn expected_attach(memory: &[u64]) -> Result<(), &'static str> {
    if memory[0] != MAGIC {
        return Err("NotABitmap");
    }
    let Ok(bits) = usize::try_from(memory[1]) else {
        return Err("Corrupt");
    };
    if memory.len() < HEADER_WORDS.saturating_add(bits.div_ceil(64)) {
        return Err("MemoryTooSmall");
    }
    if memory[2] > bits as u64 {
        return Err("Corrupt");
    }
    Ok(())
}

fn attach<'a>(ptr: NonNull<u64>, memory_len: usize, memory: &[u64]) -> Option<Bitmap<'a>> {
    let expected = expected_attach(memory);
    // SAFETY: `ptr` is the fuzz input's `memory`, `memory_len` words, which outlive the
    // handle; nothing else touches them while it is used (the model reads copies).
    let got = unsafe { Bitmap::attach_raw(ptr, memory_len) };
    match (&got, expected) {
        (Ok(_), Ok(())) => {}
        (Err(e), Err(name)) => assert!(format!("{e:?}").starts_with(name), "{e:?}, not {name}"),
        (got, expected) => panic!("attach: {got:?}, expected {expected:?}"),
    }
    got.ok()
}

fn run(setup: &Setup, num_bits: usize, memory: &mut [u64], ops: &[BitmapOp]) {
    let words = memory.len();
    let ptr = NonNull::new(memory.as_mut_ptr()).expect("a slice's pointer");
    let snapshot = |ptr: NonNull<u64>| {
        // SAFETY: the `words` words of `memory`, read while no handle is used.
        unsafe { std::slice::from_raw_parts(ptr.as_ptr(), words) }.to_vec()
    };
    let mut set = if setup.attach {
        let Some(set) = attach(ptr, words, &snapshot(ptr)) else {
            return;
        };
        set
    } else {
        let before = snapshot(ptr);
        // SAFETY: as in `attach`.
        let set = unsafe { Bitmap::init_raw(ptr, words, num_bits) }.expect("init");
        let after = snapshot(ptr);
        let needed = Bitmap::words_for(num_bits);
        assert_eq!(
            before[needed..],
            after[needed..],
            "init wrote past its words"
        );
        set
    };
    let mut model = Model::read(&snapshot(ptr));
    assert_eq!(set.num_bits(), model.num_bits);
    for op in ops {
        match *op {
            BitmapOp::Set { index } | BitmapOp::Reset { index } => {
                let i = usize::from(index);
                let value = matches!(op, BitmapOp::Set { .. });
                let got = if value { set.set(i) } else { set.reset(i) };
                if i >= model.num_bits {
                    assert_eq!(got, Err(model.out_of_range(i)));
                    continue;
                }
                let was = model.get(i);
                assert_eq!(got, Ok(was), "{op:?}");
                if was != value {
                    model.count = if value {
                        model.count.wrapping_add(1)
                    } else {
                        model.count.wrapping_sub(1)
                    };
                }
                model.put(i, value);
            }
            BitmapOp::Get { index } => {
                let i = usize::from(index);
                let expected = if i < model.num_bits {
                    Ok(model.get(i))
                } else {
                    Err(model.out_of_range(i))
                };
                assert_eq!(set.get(i), expected);
            }
            BitmapOp::SetRange { start, count } | BitmapOp::ResetRange { start, count } => {
                let (start, count) = (usize::from(start), usize::from(count));
                let value = matches!(op, BitmapOp::SetRange { .. });
                let got = if value {
                    set.set_range(start, count)
                } else {
                    set.reset_range(start, count)
                };
                if let Some(e) = model.range_error(start, count) {
                    assert_eq!(got, Err(e));
                    continue;
                }
                assert_eq!(got, Ok(()));
                for i in start..start + count {
                    if model.get(i) != value {
                        model.count = if value {
                            model.count.wrapping_add(1)
                        } else {
                            model.count.wrapping_sub(1)
                        };
                    }
                    model.put(i, value);
                }
            }
            BitmapOp::Clear => {
                set.clear();
                model.words.fill(0);
                model.count = 0;
            }
            BitmapOp::FindSet { start, end } | BitmapOp::FindClear { start, end } => {
                let (start, end) = (usize::from(start), usize::from(end));
                let value = matches!(op, BitmapOp::FindSet { .. });
                let got = if value {
                    set.find_set(start..end)
                } else {
                    set.find_clear(start..end)
                };
                assert_eq!(got, model.find(start, end, value), "{op:?}");
            }
            BitmapOp::NextSet { from } => {
                let from = usize::from(from);
                assert_eq!(set.next_set(from), model.find(from, model.num_bits, true));
            }
            BitmapOp::NextClear { from } => {
                let from = usize::from(from);
                assert_eq!(
                    set.next_clear(from),
                    model.find(from, model.num_bits, false)
                );
            }
            BitmapOp::FirstSet => {
                assert_eq!(set.first_set(), model.find(0, model.num_bits, true));
            }
            BitmapOp::ZeroesToRight { index } => {
                let i = usize::from(index);
                let expected = if i < model.num_bits {
                    let next = model.find(i + 1, model.num_bits, true);
                    Ok(next.unwrap_or(model.num_bits) - i - 1)
                } else {
                    Err(model.out_of_range(i))
                };
                assert_eq!(set.zeroes_to_right(i), expected);
            }
            BitmapOp::Check => {
                assert_eq!(set.len(), model.count as usize);
                assert_eq!(set.is_empty(), model.count == 0);
                let got = set.check();
                assert_eq!(got.is_ok(), model.consistent(), "check: {got:?}");
                if let Err(e) = got {
                    assert!(matches!(e, BitmapError::Corrupt { .. }), "{e:?}");
                }
            }
            BitmapOp::Dump => {
                let dump = set.dump_to_string("fuzz", "  ");
                assert!(dump.starts_with("  fuzz\n"), "{dump}");
            }
            BitmapOp::Reattach { at, flip } => {
                let used = set.detach().len();
                assert_eq!(used, Bitmap::words_for(model.num_bits));
                let byte = usize::from(at) % (used * 8);
                // SAFETY: a byte of `memory`, which no handle uses now (the set was
                // detached).
                unsafe {
                    ptr.as_ptr()
                        .cast::<u8>()
                        .add(byte)
                        .write(ptr.as_ptr().cast::<u8>().add(byte).read() ^ flip)
                };
                let memory = snapshot(ptr);
                let Some(again) = attach(ptr, words, &memory) else {
                    return;
                };
                set = again;
                let stale = Model::read(&memory);
                if byte >= HEADER_WORDS * 8 && byte < used * 8 {
                    // A bit flipped: the model follows.
                    let bit = (byte - HEADER_WORDS * 8) * 8;
                    for k in 0..8 {
                        if flip >> k & 1 == 1 {
                            let i = bit + k;
                            model.words[i / 64] ^= 1 << (i % 64);
                        }
                    }
                    assert_eq!(stale.words, model.words, "the bits read back");
                }
                model = stale;
            }
        }
    }
    let used = set.detach().len();
    assert_eq!(used, Bitmap::words_for(model.num_bits));
}
