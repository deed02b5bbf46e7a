//! `ClassMap<STEP, LINEAR, K, MAX>`: the size-class policy of the layers that keep blocks by
//! size (`Slab`, `SizeClasses`, `Coalesce`): linear steps, then `K` classes per doubling.
//! Each of those layers names its own instance; the requirements every instance meets are
//! on the type, checked at compile time (`ClassMap::OK`) and by `check_properties`.
//!
//! The layers name an instance rather than take one as a type parameter: their per-class
//! arrays need the class count as a constant, which a generic parameter's associated
//! constant cannot give on stable Rust.

/// A size-class policy: classes of `STEP`, `2 * STEP`, .. `LINEAR` bytes, then `K` classes
/// per doubling up to `MAX` (the classes between `2^e` and `2^(e+1)` step by `2^e / K`, the
/// last one being `2^(e+1)`), as Heap-Layers' `SegHeap` takes `getSizeClass` and talc's
/// `Binning` states its requirements.
///
/// | instance | STEP | LINEAR | K | MAX | classes |
/// |---|---|---|---|---|---|
/// | [`Slab`](crate::layers::Slab) | 16 | 128 | 8 | 32 KiB (a slab of up to 64 KiB uses those up to 8 KiB) | 72 |
/// | [`SizeClasses`](crate::layers::SizeClasses) | 16 | 128 | 4 | 32 KiB | 40 |
/// | [`Coalesce`](crate::layers::Coalesce)'s bins | 32 | 32 | 8 | 2 GiB | 209 |
///
/// # Requirements
///
/// On the parameters, checked at compile time by every look-up ([`OK`](ClassMap::OK)):
/// `STEP`, `LINEAR`, `K` and `MAX` are powers of two, `STEP <= LINEAR < MAX` and
/// `K <= LINEAR`.
///
/// What the layers rely on, which follows from those and which `check_properties`
/// (compiled for tests) checks for each instance:
/// - [`class_size`](ClassMap::class_size) is strictly increasing from `STEP` (class 0) to
///   `MAX` (class `COUNT - 1`), and every class size is a multiple of
///   [`GRAIN`](ClassMap::GRAIN);
/// - [`class_of`](ClassMap::class_of)`(size)` is the smallest class holding `size`:
///   `class_size(class_of(s)) >= s`, and the class below holds less (so it is monotone);
/// - [`class_at_most`](ClassMap::class_at_most)`(size)` is the largest class no bigger than
///   `size` (the bin a segregated fit files a free block of `size` bytes on);
/// - every look-up is O(1) bit arithmetic (a leading-zero count, shifts and masks: no loop,
///   no memory read) and inlined into its caller; [`table`](ClassMap::table) trades the
///   arithmetic for one load where a layer prefers that.
pub(crate) struct ClassMap<const STEP: usize, const LINEAR: usize, const K: usize, const MAX: usize>;

impl<const STEP: usize, const LINEAR: usize, const K: usize, const MAX: usize>
    ClassMap<STEP, LINEAR, K, MAX>
{
    /// The requirements on the parameters; every look-up evaluates it, so an instance that
    /// breaks them does not compile.
    pub(crate) const OK: () = assert!(
        STEP.is_power_of_two()
            && LINEAR.is_power_of_two()
            && K.is_power_of_two()
            && MAX.is_power_of_two()
            && STEP <= LINEAR
            && LINEAR < MAX
            && K <= LINEAR,
        "ClassMap: STEP, LINEAR, K and MAX must be powers of two, STEP <= LINEAR < MAX, K <= LINEAR"
    );

    /// Classes in the linear part (`STEP` to `LINEAR`).
    const LINEAR_CLASSES: usize = LINEAR / STEP;
    const STEP_LOG: u32 = STEP.trailing_zeros();
    const LINEAR_LOG: u32 = LINEAR.trailing_zeros();
    const K_LOG: u32 = K.trailing_zeros();

    /// The number of classes.
    pub(crate) const COUNT: usize = {
        let () = Self::OK;
        Self::LINEAR_CLASSES + K * (MAX.trailing_zeros() - Self::LINEAR_LOG) as usize
    };

    /// The largest power of two dividing every class size: `STEP`, or the step of the first
    /// doubling when that is finer.
    pub(crate) const GRAIN: usize = if LINEAR / K < STEP { LINEAR / K } else { STEP };

    /// The size of class `class` (`class < COUNT`).
    #[inline(always)]
    pub(crate) const fn class_size(class: usize) -> usize {
        let () = Self::OK;
        if class < Self::LINEAR_CLASSES {
            (class + 1) << Self::STEP_LOG
        } else {
            let i = class - Self::LINEAR_CLASSES;
            (K + 1 + i % K) << (Self::LINEAR_LOG - Self::K_LOG + (i / K) as u32)
        }
    }

    /// The smallest class whose size is at least `size` (`size <= MAX`); a zero size takes
    /// class 0.
    #[inline(always)]
    pub(crate) const fn class_of(size: usize) -> usize {
        let () = Self::OK;
        if size <= LINEAR {
            size.saturating_sub(1) >> Self::STEP_LOG
        } else {
            // The class above the largest one no bigger than `size - 1`.
            Self::doubling_class_at_most(size - 1) + 1
        }
    }

    /// The largest class whose size is at most `size` (`STEP <= size`, and `size < 2 * MAX`
    /// for the result to be a class).
    #[inline(always)]
    pub(crate) const fn class_at_most(size: usize) -> usize {
        let () = Self::OK;
        // (With a one-class linear part the test is constant, and folds away.)
        if Self::LINEAR_CLASSES > 1 && size < LINEAR {
            (size >> Self::STEP_LOG) - 1
        } else {
            Self::doubling_class_at_most(size)
        }
    }

    /// [`class_at_most`](ClassMap::class_at_most) for `size >= LINEAR`: the power of two at
    /// or below `size` picks the doubling, the `log2 K` bits below its top bit the class.
    #[inline(always)]
    const fn doubling_class_at_most(size: usize) -> usize {
        let top = usize::BITS - 1 - size.leading_zeros();
        Self::LINEAR_CLASSES - 1
            + (top - Self::LINEAR_LOG) as usize * K
            + ((size >> (top - Self::K_LOG)) & (K - 1))
    }

    /// The class of every multiple of [`GRAIN`](ClassMap::GRAIN) from 0 to `MAX`, for
    /// [`class_in`](ClassMap::class_in): `N` is `MAX / GRAIN + 1`, and the classes fit a
    /// byte (both checked at compile time, where a `static` is built with it).
    pub(crate) const fn table<const N: usize>() -> [u8; N] {
        assert!(
            N == MAX / Self::GRAIN + 1,
            "ClassMap::table: N is MAX / GRAIN + 1"
        );
        assert!(
            Self::COUNT <= 256,
            "ClassMap::table: more classes than a byte holds"
        );
        let mut table = [0; N];
        let mut step = 0;
        while step < N {
            table[step] = Self::class_of(step * Self::GRAIN) as u8;
            step += 1;
        }
        table
    }

    /// [`class_of`](ClassMap::class_of) by one load from `table` (built by
    /// [`table`](ClassMap::table)): a class size is a multiple of `GRAIN`, so the sizes
    /// rounded up to the same multiple of `GRAIN` share a class. A size past `MAX` takes
    /// the last class, with no panic path.
    #[inline(always)]
    pub(crate) fn class_in<const N: usize>(table: &[u8; N], size: usize) -> usize {
        match table.get(size.div_ceil(Self::GRAIN)) {
            Some(&class) => class as usize,
            None => Self::COUNT - 1,
        }
    }

    /// Checks the requirements on the maps (see the type's docs), for every size up to
    /// `MAX` when that is at most 64 KiB (every 97th under Miri), and around every class
    /// boundary beyond.
    #[cfg(test)]
    pub(crate) fn check_properties() {
        assert_eq!(Self::class_size(0), STEP);
        assert_eq!(Self::class_size(Self::COUNT - 1), MAX);
        for class in 0..Self::COUNT {
            let size = Self::class_size(class);
            assert!(size.is_multiple_of(Self::GRAIN), "class {class}: {size}");
            if class > 0 {
                assert!(Self::class_size(class - 1) < size, "class {class}: {size}");
            }
        }
        let check = |size: usize| {
            let class = Self::class_of(size);
            assert!(class < Self::COUNT, "size {size}");
            assert!(Self::class_size(class) >= size, "size {size} does not fit");
            assert!(
                class == 0 || Self::class_size(class - 1) < size,
                "size {size} not in the tightest class"
            );
            if size >= STEP && size < MAX {
                let below = Self::class_at_most(size);
                assert!(Self::class_size(below) <= size, "size {size}: at most");
                assert!(
                    Self::class_size(below + 1) > size,
                    "size {size}: tightest below"
                );
            }
        };
        let every = if cfg!(miri) { 97 } else { 1 };
        for size in (0..=MAX.min(1 << 16)).step_by(every) {
            check(size);
        }
        for class in 0..Self::COUNT {
            let size = Self::class_size(class);
            for size in [size - 1, size, size + 1] {
                if size <= MAX {
                    check(size);
                }
            }
        }
        check(MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::ClassMap;

    /// Instances at the edges of the requirements keep the properties too: one class per
    /// doubling, as many per doubling as the linear bound allows, one linear class.
    #[test]
    fn edge_instances_keep_the_properties() {
        ClassMap::<8, 64, 1, 4096>::check_properties();
        ClassMap::<1, 64, 64, 8192>::check_properties();
        ClassMap::<32, 32, 8, { 1 << 20 }>::check_properties();
        ClassMap::<16, 16, 2, 1024>::check_properties();
    }

    #[test]
    fn the_table_agrees_with_the_arithmetic() {
        type Map = ClassMap<16, 128, 8, 8192>;
        static TABLE: [u8; 8192 / 16 + 1] = Map::table();
        for size in 0..=8192 {
            assert_eq!(
                Map::class_in(&TABLE, size),
                Map::class_of(size),
                "size {size}"
            );
        }
        assert_eq!(Map::class_in(&TABLE, 8193), Map::COUNT - 1);
    }
}
