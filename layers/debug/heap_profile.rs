//! `HeapProfile`: what a [`Profile`] recorded, symbolised, with its writers: DHAT's JSON
//! file format, folded stacks and (with the `flamegraph` feature) a flame graph SVG.
//!
//! [`Profile`]: super::Profile

use core::fmt;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::string::String;
use std::time::Duration;
use std::vec::Vec;

use super::call_sites::SourceFrame;

/// What a profile counts for one call site while it runs (lifetimes in ticks of the
/// profile's clock, turned into nanoseconds at the report). The summed lifetimes saturate:
/// at 3 GHz a `u64` of ticks holds 194 years, which a million blocks live for two hours
/// each reach.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct SiteFigures {
    pub(crate) blocks: u64,
    pub(crate) bytes: u64,
    pub(crate) frees: u64,
    pub(crate) lifetimes: u64,
    pub(crate) live_blocks: u64,
    pub(crate) live_bytes: u64,
    pub(crate) max_bytes: u64,
    pub(crate) max_blocks: u64,
    pub(crate) peak_bytes: u64,
    pub(crate) peak_blocks: u64,
}

impl SiteFigures {
    #[inline]
    pub(crate) fn allocated(&mut self, size: u64) {
        self.blocks += 1;
        self.live_blocks += 1;
        self.grown(size);
    }

    #[inline]
    pub(crate) fn grown(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.live_bytes += bytes;
        if self.live_bytes > self.max_bytes {
            self.max_bytes = self.live_bytes;
            self.max_blocks = self.live_blocks;
        }
    }

    #[inline]
    pub(crate) fn freed(&mut self, size: u64, lifetime: u64) {
        self.frees += 1;
        self.lifetimes = self.lifetimes.saturating_add(lifetime);
        self.live_blocks -= 1;
        self.live_bytes -= size;
    }

    #[inline]
    pub(crate) fn shrunk(&mut self, bytes: u64) {
        self.live_bytes -= bytes;
    }

    /// The live figures become the figures at the peak.
    pub(crate) fn take_peak(&mut self) {
        self.peak_bytes = self.live_bytes;
        self.peak_blocks = self.live_blocks;
    }

    /// Adds another site's figures (sites whose stacks read the same once symbolised). The
    /// maxima add up too, which gives an upper bound of the merged site's maximum.
    fn merge(&mut self, other: &SiteFigures) {
        self.blocks += other.blocks;
        self.bytes += other.bytes;
        self.frees += other.frees;
        self.lifetimes = self.lifetimes.saturating_add(other.lifetimes);
        self.live_blocks += other.live_blocks;
        self.live_bytes += other.live_bytes;
        self.max_bytes += other.max_bytes;
        self.max_blocks += other.max_blocks;
        self.peak_bytes += other.peak_bytes;
        self.peak_blocks += other.peak_blocks;
    }
}

/// One call site of a [`HeapProfile`]: where blocks were allocated and what became of them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SiteProfile {
    /// The stack, innermost first, the caller's code only (as in a leak report's
    /// [`CallSite::frames`](super::CallSite::frames)); empty when no frame was known (no
    /// unwinder, as under Miri, or only the runtime's frames).
    pub frames: Vec<SourceFrame>,
    /// Blocks allocated here.
    pub blocks: u64,
    /// Their bytes (with growth in place).
    pub bytes: u64,
    /// How many of the blocks were freed.
    pub frees: u64,
    /// The sum of the blocks' lifetimes; a block still live counts until the report.
    pub total_lifetime: Duration,
    /// The most bytes live at once from this site (for sites merged by symbolisation, the
    /// sum of their maxima), and the blocks live then.
    pub max_live_bytes: u64,
    /// The blocks live when `max_live_bytes` were.
    pub max_live_blocks: u64,
    /// Bytes live from this site when the profile's live bytes peaked.
    pub bytes_at_peak: u64,
    /// Blocks live from this site when the profile's live bytes peaked.
    pub blocks_at_peak: u64,
    /// Bytes still live at the report.
    pub live_bytes: u64,
    /// Blocks still live at the report.
    pub live_blocks: u64,
}

impl SiteProfile {
    /// `file:line:column in function` of the innermost frame, or a note that none is known.
    pub fn place(&self) -> String {
        self.frames
            .first()
            .map_or_else(|| String::from(UNKNOWN_PLACE), SourceFrame::place)
    }
}

/// What stands for a site with no known frame in the writers' output.
const UNKNOWN_PLACE: &str = "[unknown: no frame outside the allocator]";

/// What a [`Profile`](super::Profile) recorded, per call site, symbolised: made by
/// [`Profile::report`](super::Profile::report) (or [`region::profile`]).
///
/// Write it for DHAT's viewer with [`write_dhat`](Self::write_dhat) (open `dh_view.html`,
/// which Valgrind ships, in a browser and load the file), as folded stacks for flame graph
/// tools with [`folded_stacks`](Self::folded_stacks), or, with the `flamegraph` feature,
/// as a flame graph SVG of the bytes allocated with
/// [`write_flame_graph`](Self::write_flame_graph). `Display` shows a summary and the sites
/// that allocated the most.
///
/// [`region::profile`]: crate::region::profile
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HeapProfile {
    /// The call sites, the most bytes allocated first.
    pub sites: Vec<SiteProfile>,
    /// Blocks allocated.
    pub blocks: u64,
    /// Bytes allocated (with growth in place).
    pub bytes: u64,
    /// Blocks freed.
    pub frees: u64,
    /// The most bytes live at once.
    pub peak_bytes: u64,
    /// The blocks live then.
    pub peak_blocks: u64,
    /// When the peak was reached, from the start of the profile.
    pub peak_at: Duration,
    /// How long the profile ran, to the report.
    pub duration: Duration,
    /// Bytes still live at the report.
    pub live_bytes: u64,
    /// Blocks still live at the report.
    pub live_blocks: u64,
}

impl HeapProfile {
    /// Symbolises the sites' stacks, merges the sites whose stacks then read the same and
    /// adds up the totals.
    pub(crate) fn new(
        stacks: Vec<(Vec<usize>, SiteFigures)>,
        unknown: SiteFigures,
        peak_at: Duration,
        duration: Duration,
    ) -> HeapProfile {
        let mut symbols: HashMap<usize, Vec<SourceFrame>> = HashMap::new();
        let mut merged: HashMap<Vec<SourceFrame>, SiteFigures> = HashMap::new();
        for (addresses, figures) in stacks.iter().chain([&(Vec::new(), unknown)]) {
            if figures.blocks == 0 {
                continue;
            }
            let mut frames = Vec::new();
            for &address in addresses {
                frames.extend(
                    symbols
                        .entry(address)
                        .or_insert_with(|| SourceFrame::symbols(address))
                        .iter()
                        .cloned(),
                );
            }
            frames.retain(SourceFrame::is_callers);
            merged.entry(frames).or_default().merge(figures);
        }
        let mut sites: Vec<SiteProfile> = merged
            .into_iter()
            .map(|(frames, figures)| SiteProfile {
                frames,
                blocks: figures.blocks,
                bytes: figures.bytes,
                frees: figures.frees,
                total_lifetime: Duration::from_nanos(figures.lifetimes),
                max_live_bytes: figures.max_bytes,
                max_live_blocks: figures.max_blocks,
                bytes_at_peak: figures.peak_bytes,
                blocks_at_peak: figures.peak_blocks,
                live_bytes: figures.live_bytes,
                live_blocks: figures.live_blocks,
            })
            .collect();
        sites.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.frames.cmp(&b.frames)));
        let sum = |figure: fn(&SiteProfile) -> u64| sites.iter().map(figure).sum::<u64>();
        HeapProfile {
            blocks: sum(|site| site.blocks),
            bytes: sum(|site| site.bytes),
            frees: sum(|site| site.frees),
            peak_bytes: sum(|site| site.bytes_at_peak),
            peak_blocks: sum(|site| site.blocks_at_peak),
            live_bytes: sum(|site| site.live_bytes),
            live_blocks: sum(|site| site.live_blocks),
            peak_at,
            duration,
            sites,
        }
    }

    /// Writes the profile in DHAT's JSON file format, version 2 (as Valgrind's DHAT and the
    /// `dhat` crate write it), in mode `rust-heap` with lifetimes and no access counts, times
    /// in microseconds. Each site is a program point of the frame table; a site with no
    /// known frame has the one frame `[unknown: no frame outside the allocator]`. The
    /// command is this process's command line.
    pub fn write_dhat(&self, mut out: impl io::Write) -> io::Result<()> {
        let micros = |time: Duration| time.as_micros();
        let mut frames: Vec<String> = vec![String::from("[root]")];
        let mut indices: HashMap<String, usize> = HashMap::new();
        let mut index_of = |frame: String| {
            *indices.entry(frame).or_insert_with_key(|frame| {
                frames.push(frame.clone());
                frames.len() - 1
            })
        };
        let site_frames: Vec<Vec<usize>> = self
            .sites
            .iter()
            .map(|site| match site.frames.is_empty() {
                true => vec![index_of(String::from(UNKNOWN_PLACE))],
                false => site
                    .frames
                    .iter()
                    .map(|frame| index_of(frame.place()))
                    .collect(),
            })
            .collect();
        let command: Vec<String> = std::env::args().collect();
        write!(
            out,
            "{{\"dhatFileVersion\":2,\"mode\":\"rust-heap\",\"verb\":\"Allocated\","
        )?;
        write!(
            out,
            "\"bklt\":true,\"bkacc\":false,\"tu\":\"µs\",\"Mtu\":\"s\",\"tuth\":10,"
        )?;
        write!(out, "\"cmd\":")?;
        write_json_string(&mut out, &command.join(" "))?;
        write!(
            out,
            ",\"pid\":{},\"tg\":{},\"te\":{},\"pps\":[",
            std::process::id(),
            micros(self.peak_at),
            micros(self.duration)
        )?;
        for (i, (site, fs)) in self.sites.iter().zip(&site_frames).enumerate() {
            if i > 0 {
                write!(out, ",")?;
            }
            write!(
                out,
                "\n{{\"tb\":{},\"tbk\":{},\"tl\":{},\"mb\":{},\"mbk\":{},\"gb\":{},\"gbk\":{},\
                 \"eb\":{},\"ebk\":{},\"fs\":[",
                site.bytes,
                site.blocks,
                micros(site.total_lifetime),
                site.max_live_bytes,
                site.max_live_blocks,
                site.bytes_at_peak,
                site.blocks_at_peak,
                site.live_bytes,
                site.live_blocks
            )?;
            for (j, frame) in fs.iter().enumerate() {
                write!(out, "{}{frame}", if j > 0 { "," } else { "" })?;
            }
            write!(out, "]}}")?;
        }
        write!(out, "\n],\"ftbl\":[")?;
        for (i, frame) in frames.iter().enumerate() {
            writeln!(out, "{}", if i > 0 { "," } else { "" })?;
            write_json_string(&mut out, frame)?;
        }
        writeln!(out, "\n]}}")
    }

    /// The bytes allocated per stack in the folded format of flame graph tools (Brendan
    /// Gregg's `flamegraph.pl`, `inferno-flamegraph`): one line per distinct stack,
    /// `outermost;...;innermost bytes`, functions by name (`;` in a name becomes `:`), the
    /// lines sorted. A site with no known frame is `[unknown: no frame outside the
    /// allocator]`.
    pub fn folded_stacks(&self) -> String {
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        for site in &self.sites {
            let stack = match site.frames.is_empty() {
                true => String::from(UNKNOWN_PLACE),
                false => site
                    .frames
                    .iter()
                    .rev()
                    .map(|frame| frame.function.replace(';', ":"))
                    .collect::<Vec<_>>()
                    .join(";"),
            };
            *lines.entry(stack).or_default() += site.bytes;
        }
        lines
            .iter()
            .filter(|&(_, &bytes)| bytes > 0)
            .map(|(stack, bytes)| format!("{stack} {bytes}\n"))
            .collect()
    }

    /// Writes a flame graph (an SVG, made by `inferno`) of the bytes allocated per stack:
    /// [`folded_stacks`](Self::folded_stacks) drawn, titled `title`. A profile that holds no
    /// allocated byte has nothing to draw: an error of kind `InvalidInput` saying so.
    #[cfg(feature = "flamegraph")]
    pub fn write_flame_graph(&self, title: &str, out: impl io::Write) -> io::Result<()> {
        let folded = self.folded_stacks();
        if folded.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the profile holds no allocated byte: there is no flame graph to draw",
            ));
        }
        let mut options = inferno::flamegraph::Options::default();
        options.title = title.into();
        options.count_name = "bytes".into();
        options.name_type = "Function:".into();
        inferno::flamegraph::from_lines(&mut options, folded.lines(), out)
    }
}

/// Writes `text` as a JSON string, escaped.
fn write_json_string(out: &mut impl io::Write, text: &str) -> io::Result<()> {
    write!(out, "\"")?;
    for c in text.chars() {
        match c {
            '"' => write!(out, "\\\"")?,
            '\\' => write!(out, "\\\\")?,
            '\n' => write!(out, "\\n")?,
            c if u32::from(c) < 0x20 => write!(out, "\\u{:04x}", u32::from(c))?,
            c => write!(out, "{c}")?,
        }
    }
    write!(out, "\"")
}

/// Most sites `Display` shows.
const SHOWN_SITES: usize = 8;

/// `1,204 blocks, 96,512 bytes allocated in 12.3ms; peak 40,960 bytes (310 blocks) live at
/// 8.1ms; 2 blocks, 64 bytes live at the end`, then the sites that allocated the most bytes,
/// eight at most, one a line: `512 blocks, 40,960 bytes (312 freed, average life 1.2µs) at
/// src/parse.rs:42:17 in my_crate::parse`.
impl fmt::Display for HeapProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} allocated in {:.1?}; peak {} ({}) live at {:.1?}; {}, {} live at the end",
            Count(self.blocks, "block"),
            Count(self.bytes, "byte"),
            self.duration,
            Count(self.peak_bytes, "byte"),
            Count(self.peak_blocks, "block"),
            self.peak_at,
            Count(self.live_blocks, "block"),
            Count(self.live_bytes, "byte"),
        )?;
        for site in self.sites.iter().take(SHOWN_SITES) {
            let average = site
                .total_lifetime
                .checked_div(site.blocks.try_into().unwrap_or(u32::MAX))
                .unwrap_or_default();
            write!(
                f,
                "\n{}, {} ({} freed, average life {:.1?}) at {}",
                Count(site.blocks, "block"),
                Count(site.bytes, "byte"),
                Count(site.frees, ""),
                average,
                site.place()
            )?;
        }
        if self.sites.len() > SHOWN_SITES {
            let rest = &self.sites[SHOWN_SITES..];
            write!(
                f,
                "\nand {}: {}, {}",
                Count(rest.len() as u64, "more site"),
                Count(rest.iter().map(|site| site.blocks).sum(), "block"),
                Count(rest.iter().map(|site| site.bytes).sum(), "byte")
            )?;
        }
        Ok(())
    }
}

/// A count with a comma between groups of three digits, and its noun (if any) after it,
/// plural unless the count is 1.
struct Count(u64, &'static str);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                write!(f, ",")?;
            }
            write!(f, "{digit}")?;
        }
        match (self.1, self.0) {
            ("", _) => Ok(()),
            (noun, 1) => write!(f, " {noun}"),
            (noun, _) => write!(f, " {noun}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SiteFigures;

    #[test]
    fn summed_lifetimes_saturate_instead_of_overflowing() {
        let mut figures = SiteFigures::default();
        figures.allocated(8);
        figures.allocated(8);
        figures.freed(8, u64::MAX - 1);
        figures.freed(8, 5);
        assert_eq!(figures.lifetimes, u64::MAX);
        let mut merged = figures;
        merged.merge(&figures);
        assert_eq!((merged.lifetimes, merged.frees), (u64::MAX, 4));
    }
}
