//! A proptest program of enter / escape / alloc / free / realloc / free-on-another-
//! thread, at nesting depths up to 16, checked against a model that says which region every
//! get and put must reach. Zero mismatches: each region's `Stats` equals the model's count.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use stratalloc::layers::{Chunk, Mmap, Stats};
use stratalloc::{Region, region};

const REGIONS: usize = 4;
const MAX_DEPTH: usize = 16;

#[derive(Clone, Debug)]
enum Op {
    Enter(usize),
    Escape,
    Exit,
    Alloc(usize),
    Free(usize),
    /// Grow the picked vector (a realloc on this thread).
    Grow(usize),
    /// Send the picked vector to another thread, which frees it.
    SendFree(usize),
    /// Send it to another thread, which grows it (moving it out of its region) and frees it.
    SendGrowFree(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..REGIONS).prop_map(Op::Enter),
        1 => Just(Op::Escape),
        3 => Just(Op::Exit),
        6 => (1..300usize).prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
        2 => any::<usize>().prop_map(Op::Grow),
        1 => any::<usize>().prop_map(Op::SendFree),
        1 => any::<usize>().prop_map(Op::SendGrowFree),
    ]
}

/// A live vector, the region the model says owns its block (`None`: the ground), and the
/// byte it is filled with.
struct Live {
    data: Vec<u8>,
    owner: Option<usize>,
}

struct Machine<'a> {
    regions: &'a [Region<Stats<Chunk<Mmap, 4096>>>],
    /// The model of this thread's frames: `Some(region)` for enter, `None` for escape.
    frames: Vec<Option<usize>>,
    live: Vec<Live>,
    gets: [u64; REGIONS],
    puts: [u64; REGIONS],
}

/// Runs `f` at the ground, below every region, by escaping `depth` frames (each escape
/// hides at most one region, so the number of frames is always enough).
fn at_ground<R>(depth: usize, f: impl FnOnce() -> R) -> R {
    if depth == 0 {
        f()
    } else {
        region::escape(|| at_ground(depth - 1, f))
    }
}

impl Machine<'_> {
    /// The region the model says is current (escape frames hide one region each).
    fn current(&self) -> Option<usize> {
        let mut hidden = 0;
        for frame in self.frames.iter().rev() {
            match frame {
                None => hidden += 1,
                Some(r) if hidden == 0 => return Some(*r),
                Some(_) => hidden -= 1,
            }
        }
        None
    }

    fn take(&mut self, pick: usize) -> Option<Live> {
        (!self.live.is_empty()).then(|| self.live.swap_remove(pick % self.live.len()))
    }

    fn check(live: &Live) -> Result<(), TestCaseError> {
        let byte = live.data.len() as u8;
        prop_assert!(
            live.data.iter().all(|&b| b == byte),
            "a block lost its contents"
        );
        Ok(())
    }

    fn run(&mut self, ops: &[Op], pos: &mut usize) -> Result<(), TestCaseError> {
        while *pos < ops.len() {
            let op = ops[*pos].clone();
            *pos += 1;
            match op {
                Op::Enter(r) if self.frames.len() < MAX_DEPTH => {
                    self.frames.push(Some(r));
                    let regions = self.regions;
                    let result = region::enter(&regions[r], || self.run(ops, pos));
                    self.frames.pop();
                    result?;
                }
                Op::Escape if self.frames.len() < MAX_DEPTH => {
                    self.frames.push(None);
                    let result = region::escape(|| self.run(ops, pos));
                    self.frames.pop();
                    result?;
                }
                Op::Exit if !self.frames.is_empty() => return Ok(()),
                Op::Alloc(size) => {
                    let owner = self.current();
                    let data = vec![size as u8; size];
                    if let Some(r) = owner {
                        self.gets[r] += 1;
                    }
                    self.live.push(Live { data, owner });
                }
                Op::Free(pick) => {
                    if let Some(live) = self.take(pick) {
                        Self::check(&live)?;
                        if let Some(r) = live.owner {
                            self.puts[r] += 1;
                        }
                    }
                }
                Op::Grow(pick) if !self.live.is_empty() => {
                    let index = pick % self.live.len();
                    let live = &mut self.live[index];
                    Self::check(live)?;
                    // Rule 4: the block stays with its region (all regions here are this
                    // thread's), moving inside it: one get and one put there (Chunk has no
                    // in-place growth); a ground block stays with the system allocator.
                    let new_len = live.data.len() * 2 + 8;
                    live.data.reserve_exact(new_len - live.data.len());
                    live.data.resize(new_len, new_len as u8);
                    live.data.iter_mut().for_each(|b| *b = new_len as u8);
                    if let Some(r) = live.owner {
                        self.gets[r] += 1;
                        self.puts[r] += 1;
                    }
                }
                Op::SendFree(pick) => {
                    if let Some(live) = self.take(pick) {
                        Self::check(&live)?;
                        if let Some(r) = live.owner {
                            self.puts[r] += 1;
                        }
                        // Spawning allocates (thread handles, the closure): do it at the ground
                        // so that only the block under test touches the regions.
                        at_ground(self.frames.len(), || {
                            std::thread::scope(|s| {
                                s.spawn(move || drop(live.data));
                            })
                        });
                    }
                }
                Op::SendGrowFree(pick) => {
                    if let Some(live) = self.take(pick) {
                        Self::check(&live)?;
                        // Another thread's realloc moves the block to that thread's current
                        // region (its ground): the owner sees one put, remotely.
                        if let Some(r) = live.owner {
                            self.puts[r] += 1;
                        }
                        at_ground(self.frames.len(), || {
                            std::thread::scope(|s| {
                                s.spawn(move || {
                                    let mut data = live.data;
                                    data.reserve_exact(4096);
                                    data.push(1);
                                    drop(data);
                                });
                            })
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[test]
fn every_put_reaches_the_region_that_handed_the_block_out() {
    let mut runner = TestRunner::new(Config {
        cases: if cfg!(miri) { 4 } else { 64 },
        failure_persistence: None,
        rng_algorithm: crate::RNG,
        ..Config::default()
    });
    let max_ops = if cfg!(miri) { 40 } else { 200 };
    let result = runner.run(&proptest::collection::vec(op(), 1..max_ops), |ops| {
        let regions: Vec<_> = (0..REGIONS)
            .map(|_| Region::new(Stats::new(Chunk::new(Mmap::new()))))
            .collect();
        // The model's own vectors are reserved up front so that they never allocate
        // inside a region and disturb the counts.
        let mut machine = Machine {
            regions: &regions,
            frames: Vec::with_capacity(MAX_DEPTH + 1),
            live: Vec::with_capacity(ops.len()),
            gets: [0; REGIONS],
            puts: [0; REGIONS],
        };
        let mut pos = 0;
        // Run the whole program, re-entering at the top level after stray exits.
        while pos < ops.len() {
            machine.run(&ops, &mut pos)?;
        }
        for live in machine.live.drain(..) {
            Machine::check(&live)?;
            if let Some(r) = live.owner {
                machine.puts[r] += 1;
            }
        }
        for (r, region) in regions.iter().enumerate() {
            let figures = region.gauge();
            prop_assert_eq!(
                (figures.gets, figures.puts),
                (machine.gets[r], machine.puts[r]),
                "region {} got or was given back a block the model did not expect",
                r
            );
            prop_assert_eq!(figures.live, 0);
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
