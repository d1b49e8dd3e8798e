//! The frame headers of an HTTP/2 connection as its bytes pass the IO, to
//! know which responses h2 still holds the end of.
//!
//! hyper hands a response body's last chunk to h2 and the request counts
//! as finished; h2 then sends it as the client's flow-control window
//! allows. Until the frame that ends the stream (`END_STREAM` on DATA or
//! HEADERS, or a `RST_STREAM` either way) has been written, the response is
//! still going out, and the connection must not be closed as idle. h2 does
//! not say so; its frames do.

/// The connection preface a client sends before its first frame.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEAD: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Splits one direction of the byte stream into frame headers, however
/// the bytes are cut into reads or writes.
#[derive(Debug, Default)]
struct Scan {
    head: [u8; FRAME_HEAD],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u32,
    /// Whether the current frame is DATA (its payload is progress).
    in_data: bool,
    /// Preface bytes still to pass before the first frame.
    preface_left: usize,
}

impl Scan {
    /// Feeds bytes; `on_head` sees each complete header. Returns how many
    /// DATA payload bytes passed.
    fn feed(&mut self, mut buf: &[u8], mut on_head: impl FnMut(Head)) -> u64 {
        let mut data = 0;
        while !buf.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(buf.len());
                self.preface_left -= n;
                buf = &buf[n..];
            } else if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(buf.len());
                self.payload_left -= n as u32;
                if self.in_data {
                    data += n as u64;
                }
                buf = &buf[n..];
            } else {
                let n = (FRAME_HEAD - self.have).min(buf.len());
                self.head[self.have..self.have + n].copy_from_slice(&buf[..n]);
                self.have += n;
                buf = &buf[n..];
                if self.have == FRAME_HEAD {
                    self.have = 0;
                    let h = &self.head;
                    let head = Head {
                        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    };
                    self.payload_left = head.len;
                    self.in_data = head.kind == DATA;
                    on_head(head);
                }
            }
        }
        data
    }
}

/// Both directions of one HTTP/2 connection, and the responses still
/// going out.
#[derive(Debug)]
pub struct H2Frames {
    out: Scan,
    incoming: Scan,
    /// Streams whose response has started and not ended on the wire.
    open: Vec<u32>,
}

impl H2Frames {
    /// `preface_left`: how many bytes of the client's preface are still to
    /// be read (24 before any byte was read).
    pub fn new(preface_left: usize) -> H2Frames {
        H2Frames {
            out: Scan::default(),
            incoming: Scan {
                preface_left,
                ..Scan::default()
            },
            open: Vec::new(),
        }
    }

    /// Bytes the server wrote; returns how many DATA payload bytes they
    /// carried.
    pub fn wrote(&mut self, buf: &[u8]) -> u64 {
        let open = &mut self.open;
        self.out.feed(buf, |h| match h.kind {
            HEADERS if h.flags & END_STREAM == 0 && h.stream != 0 && !open.contains(&h.stream) => {
                open.push(h.stream);
            }
            HEADERS if h.flags & END_STREAM == 0 => {}
            DATA | HEADERS if h.flags & END_STREAM != 0 => open.retain(|s| *s != h.stream),
            RST_STREAM => open.retain(|s| *s != h.stream),
            _ => {}
        })
    }

    /// Bytes the client sent: a `RST_STREAM` from it ends a response too.
    pub fn read(&mut self, buf: &[u8]) {
        let open = &mut self.open;
        self.incoming.feed(buf, |h| {
            if h.kind == RST_STREAM {
                open.retain(|s| *s != h.stream);
            }
        });
    }

    /// Responses h2 has not finished writing.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

/// How far a connection's first bytes match the HTTP/2 preface: the
/// protocol is decided on the whole preface or a definite mismatch, never
/// on a prefix (a lone `P` is not HTTP/2 yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Every byte so far matched; this many of them.
    Undecided(usize),
    H2,
    H1,
}

impl Sniff {
    /// The state after `new` bytes arrived.
    pub fn feed(self, new: &[u8]) -> Sniff {
        let Sniff::Undecided(seen) = self else {
            return self;
        };
        let want = &PREFACE[seen..];
        let n = want.len().min(new.len());
        if new[..n] != want[..n] {
            Sniff::H1
        } else if seen + n == PREFACE.len() {
            Sniff::H2
        } else {
            Sniff::Undecided(seen + n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let mut f = (payload as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, payload));
        f
    }

    #[test]
    fn a_response_is_open_until_its_end_stream_is_written_however_cut() {
        let mut bytes = frame(0x4, 0, 0, 6); // SETTINGS
        bytes.extend(frame(HEADERS, 0x4, 1, 10));
        bytes.extend(frame(DATA, 0, 1, 100));
        bytes.extend(frame(HEADERS, 0x4 | END_STREAM, 3, 5));
        let open_until = bytes.len();
        bytes.extend(frame(DATA, END_STREAM, 1, 7));
        for cut in [1, 2, 5, 9, 13, 64, bytes.len()] {
            let mut f = H2Frames::new(0);
            let mut data = 0;
            for chunk in bytes[..open_until].chunks(cut) {
                data += f.wrote(chunk);
            }
            assert_eq!(f.open(), 1, "cut {cut}");
            for chunk in bytes[open_until..].chunks(cut) {
                data += f.wrote(chunk);
            }
            assert_eq!(f.open(), 0, "cut {cut}");
            assert_eq!(data, 107, "cut {cut}");
        }
    }

    #[test]
    fn a_reset_from_either_side_ends_a_response() {
        let mut f = H2Frames::new(PREFACE.len());
        f.wrote(&frame(HEADERS, 0x4, 1, 3));
        f.wrote(&frame(HEADERS, 0x4, 3, 3));
        assert_eq!(f.open(), 2);
        f.wrote(&frame(RST_STREAM, 0, 1, 4));
        let mut inbound = PREFACE.to_vec();
        inbound.extend(frame(RST_STREAM, 0, 3, 4));
        f.read(&inbound);
        assert_eq!(f.open(), 0);
    }

    #[test]
    fn the_protocol_is_decided_on_the_whole_preface_or_a_mismatch() {
        assert_eq!(Sniff::Undecided(0).feed(b"P"), Sniff::Undecided(1));
        assert_eq!(Sniff::Undecided(0).feed(b"POST / HTTP/1.1"), Sniff::H1);
        assert_eq!(Sniff::Undecided(1).feed(b"OST"), Sniff::H1);
        let mut s = Sniff::Undecided(0);
        for b in PREFACE.chunks(5) {
            s = s.feed(b);
        }
        assert_eq!(s, Sniff::H2);
        assert_eq!(Sniff::Undecided(20).feed(b"\r\n\r\nmore"), Sniff::H2);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// `data` fed in pieces cut at `cuts` (positions, any order).
        fn pieces(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            at.push(0);
            at.push(data.len());
            at.sort_unstable();
            at.dedup();
            at.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
        }

        fn frames() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                (
                    prop::sample::select(vec![DATA, HEADERS, RST_STREAM, 4u8, 8u8]),
                    0u8..2,
                    0u32..6,
                    0usize..40,
                ),
                0..30,
            )
            .prop_map(|fs| {
                fs.into_iter()
                    .flat_map(|(kind, end, stream, len)| frame(kind, end * END_STREAM, stream, len))
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            #[test]
            fn any_bytes_never_panic(
                out in proptest::collection::vec(any::<u8>(), 0..400),
                inc in proptest::collection::vec(any::<u8>(), 0..400),
            ) {
                let mut f = H2Frames::new(PREFACE.len());
                f.wrote(&out);
                f.read(&inc);
                let _ = f.open();
                let _ = Sniff::Undecided(0).feed(&inc);
            }

            /// How the bytes are cut into writes changes nothing: the same
            /// DATA bytes counted, the same responses left open.
            #[test]
            fn the_scan_does_not_depend_on_how_writes_are_cut(
                data in frames(),
                cuts in proptest::collection::vec(any::<usize>(), 0..10),
            ) {
                let mut whole = H2Frames::new(0);
                let total = whole.wrote(&data);
                let mut cut = H2Frames::new(0);
                let sum: u64 = pieces(&data, &cuts).iter().map(|p| cut.wrote(p)).sum();
                prop_assert_eq!(sum, total);
                prop_assert_eq!(cut.open(), whole.open());
            }

            /// The preface in any pieces is HTTP/2; bytes that differ from
            /// it anywhere in its 24 are HTTP/1.1, however they are cut.
            #[test]
            fn sniffing_decides_on_the_whole_preface_or_a_mismatch(
                cuts in proptest::collection::vec(any::<usize>(), 0..6),
                at in 0usize..24,
                other in any::<u8>(),
            ) {
                let sniff = |data: &[u8]| {
                    pieces(data, &cuts).iter().fold(Sniff::Undecided(0), |s, p| s.feed(p))
                };
                prop_assert_eq!(sniff(PREFACE), Sniff::H2);
                prop_assume!(other != PREFACE[at]);
                let mut wrong = PREFACE.to_vec();
                wrong[at] = other;
                prop_assert_eq!(sniff(&wrong), Sniff::H1);
                prop_assert_eq!(sniff(&PREFACE[..at]), if at == 0 { Sniff::Undecided(0) } else { Sniff::Undecided(at) });
            }
        }
    }
}
