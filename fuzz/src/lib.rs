//! What the fuzz targets share: the op programs (decoded from the fuzzer's bytes with
//! `arbitrary`, and encoded back into bytes for the seed corpus), and the fill-and-verify
//! pattern every live block carries. The targets' properties are written at the top of
//! each file in `fuzz_targets/`.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use arbitrary::{Arbitrary, Unstructured};

// ---- decoding and encoding programs -------------------------------------------------------

/// The most operations a program runs: longer inputs are cut there, so that an execution
/// stays short.
pub const MAX_OPS: usize = 512;

/// Decodes `T`s until the input runs out (or `MAX_OPS`).
pub fn decode_ops<'a, T: Arbitrary<'a>>(u: &mut Unstructured<'a>) -> Vec<T> {
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match T::arbitrary(u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

/// Writes values in the byte form `arbitrary` reads them back from (little-endian integers,
/// an enum's variant as a `u32` scaled by the number of variants). The seed generator checks
/// every program it writes by decoding it again, so a change of that form fails there, not
/// silently.
#[derive(Default)]
pub struct Encoder {
    /// The bytes so far.
    pub bytes: Vec<u8>,
}

impl Encoder {
    /// A `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }
    /// A `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A `bool`.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    /// The variant `index` of an enum of `count` variants.
    pub fn variant(&mut self, index: u32, count: u32) -> &mut Self {
        // The smallest `v` with `(v * count) >> 32 == index`.
        let v = ((u64::from(index) << 32).div_ceil(u64::from(count))) as u32;
        debug_assert_eq!((u64::from(v) * u64::from(count)) >> 32, u64::from(index));
        self.u32(v)
    }
}

/// A small deterministic generator (xorshift64*) for the seed programs.
pub struct Rng(u64);

impl Rng {
    /// A generator from a fixed seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// The next number.
    pub fn word(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        self.word() % (max + 1)
    }
    /// One of `weights.len()` choices, each as likely as its weight.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let mut roll = self.word() % weights.iter().sum::<u64>();
        for (i, &w) in weights.iter().enumerate() {
            if roll < w {
                return i;
            }
            roll -= w;
        }
        unreachable!()
    }
    /// A size as the conformance suite draws them: mostly small, sometimes up to 64 KiB.
    pub fn conformance_size(&mut self) -> u16 {
        match self.weighted(&[4, 3, 1]) {
            0 => self.upto(64) as u16,
            1 => self.upto(1024) as u16,
            _ => self.upto(65535) as u16,
        }
    }
}

// ---- the pattern ------------------------------------------------------------------------

/// Fills `len` bytes at `ptr` with `byte`.
///
/// # Safety
///
/// `ptr` is valid for writes of `len` bytes.
pub unsafe fn fill(ptr: *mut u8, len: usize, byte: u8) {
    // SAFETY: the caller's duty.
    unsafe { ptr.write_bytes(byte, len) }
}

/// Panics, naming the block and the first wrong byte, unless the `len` bytes at `ptr` all
/// hold `byte`.
///
/// # Safety
///
/// `ptr` is valid for reads of `len` bytes.
pub unsafe fn verify(what: &str, ptr: *const u8, len: usize, byte: u8) {
    // SAFETY: the caller's duty.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
    // Whole chunks at a time (a `memcmp`): a byte loop under the fuzzer's comparison hooks
    // took most of a run's time.
    let pattern = [byte; 4096];
    if bytes.chunks(4096).all(|c| c == &pattern[..c.len()]) {
        return;
    }
    if let Some(at) = bytes.iter().position(|&b| b != byte) {
        panic!(
            "{what} {ptr:p} ({len} bytes) lost its pattern {byte:#04x} at byte {at}: found {:#04x}",
            bytes[at]
        );
    }
}

/// Panics unless the `len` bytes at `ptr` are zero.
///
/// # Safety
///
/// `ptr` is valid for reads of `len` bytes.
pub unsafe fn verify_zero(what: &str, ptr: *const u8, len: usize) {
    // SAFETY: the caller's duty.
    unsafe { verify(what, ptr, len, 0) }
}

/// Hands out the fill bytes of successive blocks: never 0 (so zeroed memory and a pattern
/// differ), never the same twice in a row.
#[derive(Default)]
pub struct Bytes(u8);

impl Bytes {
    /// The next fill byte.
    pub fn fresh(&mut self) -> u8 {
        self.0 = self.0.wrapping_add(1).max(1);
        self.0
    }
}

// ---- the programs -------------------------------------------------------------------------

pub mod programs;

/// Whether `FUZZ_TRACE` is set: the targets then print each operation to stderr (to read
/// a finding: `FUZZ_TRACE=1 cargo +nightly fuzz run <target> <artifact>`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}
