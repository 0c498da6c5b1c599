//! gRPC clients built on gRPC's C core (Python's grpcio, C++, Ruby, PHP; py-spiffe) send
//! the socket path, percent-encoded, as the HTTP/2 `:authority` of every request over a
//! Unix socket. The h2 server under tonic refuses such an authority (PROTOCOL_ERROR), so
//! those clients could not talk to us; Go's gRPC and SPIRE accept it. Every Unix socket the
//! project serves (the agent's Workload API and admin sockets, the server's admin socket)
//! accepts connections through [`accept`]. This stream sits between the socket and the HTTP/2
//! server and rewrites an `:authority` that is not a valid URI authority to `localhost`,
//! as grpc-go and Kubernetes use for Unix sockets; nothing else in the request changes.
//!
//! Only the client-to-server direction is rewritten. Every header block is HPACK-decoded
//! (our decoder follows the client's dynamic table) and re-encoded as literals without
//! indexing, so the server's HPACK state is never touched by our encoding.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::{Connected, UdsConnectInfo};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HTTP/2's initial maximum frame size, which the servers behind this keep: a client may not
/// send a larger frame, so one is refused before it is buffered.
const MAX_FRAME: usize = 16_384;
/// The HPACK dynamic table size the servers behind this advertise (HTTP/2's default): a
/// client's table size update above it is refused, as the server itself would.
const MAX_TABLE: usize = 4_096;
/// A header block larger than this, compressed or decoded, is refused: gRPC requests carry a
/// few hundred bytes of headers.
const MAX_BLOCK: usize = 64 * 1024;

/// Connections accepted on `listener`, each wrapped so any client's `:authority` passes;
/// hand the stream to tonic's `serve_with_incoming`.
pub fn accept(listener: UnixListener) -> impl tokio_stream::Stream<Item = io::Result<AuthorityFixing>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|accepted| accepted.map(AuthorityFixing::new))
}

/// A Unix socket connection whose requests reach the server with a valid `:authority`.
pub struct AuthorityFixing {
    inner: UnixStream,
    /// Bytes read from the client and not yet processed.
    raw: Vec<u8>,
    /// Processed bytes waiting for the server to read them.
    ready: Vec<u8>,
    preface_seen: bool,
    /// A header block being collected: (stream id, flags of its HEADERS frame, fragments).
    block: Option<(u32, u8, Vec<u8>)>,
    decoder: loona_hpack::Decoder<'static>,
    eof: bool,
}

impl AuthorityFixing {
    /// The accepted connection, e.g. to ask the kernel about its peer.
    pub fn get_ref(&self) -> &UnixStream {
        &self.inner
    }

    pub fn new(inner: UnixStream) -> Self {
        Self {
            inner,
            raw: Vec::new(),
            ready: Vec::new(),
            preface_seen: false,
            block: None,
            decoder: {
                let mut decoder = loona_hpack::Decoder::new();
                decoder.set_max_allowed_table_size(MAX_TABLE);
                decoder
            },
            eof: false,
        }
    }

    /// Moves every complete frame from `raw` to `ready`, rewriting header blocks.
    fn process(&mut self) -> io::Result<()> {
        if !self.preface_seen {
            if self.raw.len() < PREFACE.len() {
                return Ok(());
            }
            self.ready.extend(self.raw.drain(..PREFACE.len()));
            self.preface_seen = true;
        }
        loop {
            if self.raw.len() < FRAME_HEADER {
                return Ok(());
            }
            let length = (usize::from(self.raw[0]) << 16) | (usize::from(self.raw[1]) << 8) | usize::from(self.raw[2]);
            if length > MAX_FRAME {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "frame larger than the maximum frame size"));
            }
            if self.raw.len() < FRAME_HEADER + length {
                return Ok(());
            }
            let frame: Vec<u8> = self.raw.drain(..FRAME_HEADER + length).collect();
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let payload = &frame[FRAME_HEADER..];
            match (kind, self.block.take()) {
                (HEADERS, None) => {
                    let fragment = strip_headers_payload(flags, payload)?;
                    self.block = Some((stream, flags, fragment.to_vec()));
                }
                (CONTINUATION, Some((id, first_flags, mut fragment))) if id == stream => {
                    fragment.extend_from_slice(payload);
                    if fragment.len() > MAX_BLOCK {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "header block too large"));
                    }
                    self.block = Some((id, first_flags | (flags & END_HEADERS), fragment));
                }
                (_, Some(_)) | (CONTINUATION, None) => {
                    // HTTP/2 forbids anything between HEADERS and its CONTINUATIONs; let
                    // the server see the violation and refuse it.
                    self.ready.extend_from_slice(&frame);
                    continue;
                }
                _ => {
                    self.ready.extend_from_slice(&frame);
                    continue;
                }
            }
            if let Some((id, first_flags, fragment)) = self.block.take() {
                if first_flags & END_HEADERS == 0 {
                    self.block = Some((id, first_flags, fragment));
                    continue;
                }
                let headers = self.decode(&fragment)?;
                let encoded = encode_literals(&fixed(headers));
                write_header_frames(&mut self.ready, id, first_flags & END_STREAM, &encoded);
            }
        }
    }
}

impl AuthorityFixing {
    /// Decodes one header block, refusing one that decodes to more than [`MAX_BLOCK`]
    /// bytes (indexed fields make a small block expand).
    fn decode(&mut self, block: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (mut headers, mut size, mut over) = (Vec::new(), 0usize, false);
        self.decoder
            .decode_with_cb(block, |name, value| {
                size += name.len() + value.len();
                over |= size > MAX_BLOCK;
                if !over {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("HPACK: {e:?}")))?;
        if over {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "header block too large"));
        }
        Ok(headers)
    }
}

/// The header block fragment of a HEADERS payload, without padding and priority fields.
fn strip_headers_payload(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HEADERS frame");
    let mut body = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&length, rest) = body.split_first().ok_or_else(bad)?;
        pad = usize::from(length);
        body = rest;
    }
    if flags & PRIORITY != 0 {
        body = body.get(5..).ok_or_else(bad)?;
    }
    body.get(..body.len().checked_sub(pad).ok_or_else(bad)?).ok_or_else(bad)
}

/// The headers with an invalid `:authority` replaced by `localhost`.
fn fixed(headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    headers
        .into_iter()
        .map(|(name, value)| {
            if name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                (name, b"localhost".to_vec())
            } else {
                (name, value)
            }
        })
        .collect()
}

/// HPACK literals without indexing, new names, no Huffman: no state on either side.
fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for text in [name, value] {
            out.extend(loona_hpack::encoder::encode_integer(text.len(), 7));
            out.extend_from_slice(text);
        }
    }
    out
}

/// One HEADERS frame, then CONTINUATIONs as needed, the last with END_HEADERS.
fn write_header_frames(out: &mut Vec<u8>, stream: u32, end_stream: u8, block: &[u8]) {
    let chunks: Vec<&[u8]> = if block.is_empty() { vec![&[][..]] } else { block.chunks(MAX_FRAME).collect() };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = if i == 0 { end_stream } else { 0 };
        if i == last {
            flags |= END_HEADERS;
        }
        let length = chunk.len();
        out.extend_from_slice(&[(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

impl AsyncRead for AuthorityFixing {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The client closed: pass on what is left as it is.
                    this.eof = true;
                    let rest = std::mem::take(&mut this.raw);
                    this.ready.extend(rest);
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(read.filled());
                    this.process()?;
                }
            }
        }
    }
}

impl AsyncWrite for AuthorityFixing {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for AuthorityFixing {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_are_re_encoded_with_a_valid_authority() {
        let headers = [
            (b":method".to_vec(), b"POST".to_vec()),
            (b":authority".to_vec(), b"tmp%2Fagent%2Fapi.sock".to_vec()),
            (b":path".to_vec(), b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()),
            (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
        ];
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut decoder = loona_hpack::Decoder::new();
        let fixed = fixed(decoder.decode(&block).unwrap());
        let again = loona_hpack::Decoder::new().decode(&encode_literals(&fixed)).unwrap();
        assert_eq!(again[1], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(again[3], headers[3]);
        let valid = fixed_authority(b"localhost:8080");
        assert_eq!(valid, b"localhost:8080");
    }

    fn fixed_authority(value: &[u8]) -> Vec<u8> {
        fixed(vec![(b":authority".to_vec(), value.to_vec())]).remove(0).1
    }

    #[test]
    fn padding_and_priority_are_stripped_and_long_blocks_split() {
        let payload = [&[2u8][..], &[0, 0, 0, 1, 16], b"abc", &[0, 0]].concat();
        assert_eq!(strip_headers_payload(PADDED | PRIORITY, &payload).unwrap(), b"abc");
        assert!(strip_headers_payload(PADDED, &[9, 1]).is_err());
        let mut out = Vec::new();
        write_header_frames(&mut out, 3, END_STREAM, &vec![7u8; MAX_FRAME + 10]);
        assert_eq!(out.len(), 2 * FRAME_HEADER + MAX_FRAME + 10);
        assert_eq!((out[3], out[4]), (HEADERS, END_STREAM));
        let second = FRAME_HEADER + MAX_FRAME;
        assert_eq!((out[second + 3], out[second + 4]), (CONTINUATION, END_HEADERS));
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut out = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn oversized_frames_big_tables_and_expanding_blocks_are_refused() {
        let connection = || AuthorityFixing::new(UnixStream::pair().unwrap().0);

        let mut oversized = connection();
        oversized.raw = [PREFACE, &frame(0x0, 0, 1, &vec![0; MAX_FRAME + 1])].concat();
        assert!(oversized.process().is_err(), "a frame over the maximum frame size");

        // A dynamic table size update to 256 MiB (5-bit prefix: 31, then 268435425 in 7-bit groups).
        let mut big_table = connection();
        let update = [0x3f, 0xe1, 0xff, 0xff, 0x7f];
        big_table.raw = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &update)].concat();
        assert!(big_table.process().is_err(), "a table larger than the advertised 4 KiB");

        // One 4,000-byte field put in the table, then referenced twenty times by one byte each.
        let mut expanding = connection();
        let mut block = vec![0x40, 1, b'x', 0x7f, 0xa1, 0x1e];
        block.extend(vec![b'v'; 4_000]);
        block.extend(vec![0x80 | 62; 20]);
        expanding.raw = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &block)].concat();
        let err = expanding.process().unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");

        let mut fine = connection();
        let mut block = vec![0x40, 1, b'x', 0x7f, 0xa1, 0x1e];
        block.extend(vec![b'v'; 4_000]);
        block.extend(vec![0x80 | 62; 3]);
        fine.raw = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &block)].concat();
        fine.process().unwrap();
        assert!(!fine.ready.is_empty());
    }
}
