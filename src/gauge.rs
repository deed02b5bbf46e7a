//! The `Gauge` trait: a read-only view of a layer's figures (the region seed's gauge).

use core::fmt;

/// The figures a gauge reports. Counts are of blocks, sizes in bytes; sizes are the sizes
/// callers asked for (a zero-size request counts as 0 bytes), not what layers below
/// rounded them to. With the `serde` feature it implements `Serialize`, each figure under
/// its field's name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Gauges {
    /// Successful `get` calls.
    pub gets: u64,
    /// `put` calls.
    pub puts: u64,
    /// Bytes handed out by successful `get` calls.
    pub bytes_got: u64,
    /// Bytes given back by `put` calls.
    pub bytes_put: u64,
    /// Blocks currently allocated: `gets - puts`.
    pub live: u64,
    /// Bytes currently allocated: `bytes_got - bytes_put` (with in-place resizes applied).
    pub live_bytes: u64,
    /// The most bytes that were ever currently allocated at once.
    pub peak_bytes: u64,
}

impl Gauges {
    /// All counts at zero, usable in `const` contexts.
    pub const ZERO: Gauges = Gauges {
        gets: 0,
        puts: 0,
        bytes_got: 0,
        bytes_put: 0,
        live: 0,
        live_bytes: 0,
        peak_bytes: 0,
    };

    // The counters use wrapping arithmetic: they may run inside a global allocator, where
    // an overflow panic (debug builds) must not happen, whatever the caller did.

    /// Counts a successful get of `bytes`.
    #[inline(always)]
    pub(crate) fn record_get(&mut self, bytes: usize) {
        self.gets = self.gets.wrapping_add(1);
        self.live = self.live.wrapping_add(1);
        self.record_growth(bytes);
    }

    /// Counts a put of `bytes`.
    #[inline(always)]
    pub(crate) fn record_put(&mut self, bytes: usize) {
        self.puts = self.puts.wrapping_add(1);
        self.live = self.live.wrapping_sub(1);
        self.record_shrinking(bytes);
    }

    /// Counts `bytes` more in use by a live block (a get, or an in-place grow).
    #[inline(always)]
    pub(crate) fn record_growth(&mut self, bytes: usize) {
        self.bytes_got = self.bytes_got.wrapping_add(bytes as u64);
        self.live_bytes = self.live_bytes.wrapping_add(bytes as u64);
        if self.live_bytes > self.peak_bytes {
            self.peak_bytes = self.live_bytes;
        }
    }

    /// Counts `bytes` fewer in use (a put, or an in-place shrink).
    #[inline(always)]
    pub(crate) fn record_shrinking(&mut self, bytes: usize) {
        self.bytes_put = self.bytes_put.wrapping_add(bytes as u64);
        self.live_bytes = self.live_bytes.wrapping_sub(bytes as u64);
    }

    /// Counts every live block as put: `deinit` ended them.
    pub(crate) fn record_all_ended(&mut self) {
        self.puts = self.puts.wrapping_add(self.live);
        self.bytes_put = self.bytes_put.wrapping_add(self.live_bytes);
        self.live = 0;
        self.live_bytes = 0;
    }

    /// Starts counting afresh from the blocks live now: the cumulative counts restart at
    /// what is live, so that every identity between the figures keeps holding.
    pub(crate) fn restart(&mut self) {
        *self = Gauges {
            gets: self.live,
            puts: 0,
            bytes_got: self.live_bytes,
            bytes_put: 0,
            live: self.live,
            live_bytes: self.live_bytes,
            peak_bytes: self.live_bytes,
        };
    }
}

impl fmt::Display for Gauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gets {} ({} B), puts {} ({} B), live {} ({} B), peak {} B",
            self.gets,
            self.bytes_got,
            self.puts,
            self.bytes_put,
            self.live,
            self.live_bytes,
            self.peak_bytes
        )
    }
}

/// A layer that can report [`Gauges`] about the traffic through it.
///
/// [`Stats`](crate::layers::Stats) counts everything; [`Check`](crate::layers::Check)
/// reports the blocks it tracks. Reading a gauge never changes the layer.
pub trait Gauge {
    /// The layer's figures now.
    fn gauge(&self) -> Gauges;
}
