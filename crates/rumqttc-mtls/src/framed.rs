//! Packets to and from the byte stream.
//!
//! Not upstream's `Framed<_, Codec>` from tokio-util: that one reserves an
//! 8 KiB read and an 8 KiB write buffer for every connection and keeps them
//! for its whole life, most of an idle connection's memory. These buffers
//! start empty, grow with the traffic (the read side adapts how much it
//! asks for at a time) and are released when they drain.
use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::mqttbytes::{self, v4::*};
use crate::{Incoming, MqttState, QoS, StateError};

/// What came off the wire.
#[derive(Debug)]
pub(crate) enum Frame {
    Packet(Incoming),
    /// A PUBLISH over the incoming limit: its header (payload left empty)
    /// and its size (remaining length). Its bytes were read and dropped, so
    /// the connection carries on (not upstream, where it is a fatal error
    /// and, with a persistent session, the broker sends it again on every
    /// reconnect and nothing behind it ever arrives).
    TooLarge(Publish, usize),
}

/// A PUBLISH over the limit, while its bytes are dropped.
#[derive(Debug)]
struct Skipping {
    publish: Publish,
    size: usize,
    /// Bytes still to drop.
    left: usize,
}

/// The smallest read we ask for: a handful of acknowledgements.
const MIN_READ: usize = 256;
/// The largest single read: bigger packets are read in several.
const MAX_READ: usize = 64 * 1024;
/// A drained buffer larger than this is given back to the allocator.
const KEEP_CAPACITY: usize = 4 * 1024;

/// Network transforms packets <-> frames efficiently.
pub struct Network {
    socket: Box<dyn AsyncReadWrite>,
    read: BytesMut,
    write: BytesMut,
    /// How much the next read asks for: doubles when a read fills all it
    /// was given, halves when one uses under a quarter.
    read_hint: usize,
    max_incoming_size: usize,
    max_outgoing_size: usize,
    /// Maximum number of packets handled per `readb`.
    max_readb_count: usize,
    /// An oversized PUBLISH being dropped.
    skipping: Option<Skipping>,
}

impl Network {
    pub fn new(
        socket: impl AsyncReadWrite + 'static,
        max_incoming_size: usize,
        max_outgoing_size: usize,
    ) -> Network {
        Network {
            socket: Box::new(socket),
            read: BytesMut::new(),
            write: BytesMut::new(),
            read_hint: MIN_READ,
            max_incoming_size,
            max_outgoing_size,
            max_readb_count: 10,
            skipping: None,
        }
    }

    /// The next whole packet in the read buffer, if there is one; `Err`
    /// with the number of bytes still missing otherwise.
    /// `skip_too_large`: a PUBLISH over the limit is dropped and reported
    /// (else it is an error).
    fn parse(&mut self, skip_too_large: bool) -> Result<Result<Frame, usize>, StateError> {
        if let Some(skipping) = &mut self.skipping {
            let dropped = skipping.left.min(self.read.len());
            self.read.advance(dropped);
            skipping.left -= dropped;
            if skipping.left > 0 {
                return Ok(Err(skipping.left));
            }
            let Some(done) = self.skipping.take() else {
                return Ok(Err(1));
            };
            if self.read.is_empty() && self.read.capacity() > KEEP_CAPACITY {
                self.read = BytesMut::new();
            }
            return Ok(Ok(Frame::TooLarge(done.publish, done.size)));
        }
        match Packet::read(&mut self.read, self.max_incoming_size) {
            Ok(packet) => {
                if self.read.is_empty() && self.read.capacity() > KEEP_CAPACITY {
                    self.read = BytesMut::new();
                }
                Ok(Ok(Frame::Packet(packet)))
            }
            Err(mqttbytes::Error::InsufficientBytes(missing)) => Ok(Err(missing)),
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) if skip_too_large => {
                self.too_large(size)
            }
            Err(e) => Err(StateError::Deserialization(e)),
        }
    }

    /// A packet of `size` (remaining length) over the limit starts the
    /// read buffer. A PUBLISH is read up to its packet id and then dropped
    /// as it arrives; any other packet that large is a broken peer.
    fn too_large(&mut self, size: usize) -> Result<Result<Frame, usize>, StateError> {
        let refused = StateError::Deserialization(mqttbytes::Error::PayloadSizeLimitExceeded(size));
        let header =
            mqttbytes::parse_fixed_header(self.read.iter()).map_err(StateError::Deserialization)?;
        let byte1 = header.byte1();
        if byte1 >> 4 != 3 {
            return Err(refused);
        }
        let qos = mqttbytes::qos((byte1 & 0b0110) >> 1).map_err(StateError::Deserialization)?;
        let start = header.fixed_header_len();
        let Some(len) = self.read.get(start..start + 2) else {
            return Ok(Err(start + 2 - self.read.len()));
        };
        let topic_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let pkid_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
        let variable = 2 + topic_len + pkid_len;
        if variable > header.remaining_len() {
            return Err(refused);
        }
        let needed = start + variable;
        if self.read.len() < needed {
            return Ok(Err(needed - self.read.len()));
        }
        let topic = std::str::from_utf8(&self.read[start + 2..start + 2 + topic_len])
            .map_err(|_| StateError::Deserialization(mqttbytes::Error::TopicNotUtf8))?
            .to_owned();
        let pkid = match pkid_len {
            0 => 0,
            _ => u16::from_be_bytes([
                self.read[start + 2 + topic_len],
                self.read[start + 3 + topic_len],
            ]),
        };
        let publish = Publish {
            dup: byte1 & 0b1000 != 0,
            qos,
            retain: byte1 & 1 != 0,
            topic,
            pkid,
            payload: Bytes::new(),
        };
        self.skipping = Some(Skipping {
            publish,
            size,
            left: start + header.remaining_len(),
        });
        self.parse(true)
    }

    /// Reads more bytes from the socket, at least one. Cancel safe: bytes
    /// read are in the buffer, none are lost.
    async fn fill(&mut self, missing: usize) -> Result<(), StateError> {
        let want = missing.max(self.read_hint).min(MAX_READ);
        let frame = self.read.len().saturating_add(missing);
        if self.skipping.is_none() && frame > MAX_READ {
            // A large packet, which starts the buffer: its payload will
            // keep this allocation alive while it is handled, so grow it
            // exactly (at most doubling what is here, never past the
            // packet), not by `reserve`'s amortized doubling, which can
            // leave a 20 MB message holding 32 MiB. Still never more than
            // twice what arrived: a declared length reserves nothing.
            if self.read.capacity() - self.read.len() < missing.min(MAX_READ) {
                let cap = frame.min(self.read.len().saturating_mul(2).max(2 * MAX_READ));
                let mut bigger = BytesMut::with_capacity(cap);
                bigger.extend_from_slice(&self.read);
                self.read = bigger;
            }
        } else {
            self.read.reserve(want);
        }
        let offered = self.read.capacity() - self.read.len();
        let n = self.socket.read_buf(&mut self.read).await?;
        if n == 0 {
            return Err(StateError::ConnectionAborted);
        }
        if n == offered {
            self.read_hint = (self.read_hint * 2).min(MAX_READ);
        } else if n < offered / 4 {
            self.read_hint = (self.read_hint / 2).max(MIN_READ);
        }
        Ok(())
    }

    /// The next frame from the network.
    pub(crate) async fn next(&mut self, skip_too_large: bool) -> Result<Frame, StateError> {
        loop {
            match self.parse(skip_too_large)? {
                Ok(frame) => return Ok(frame),
                Err(missing) => self.fill(missing).await?,
            }
        }
    }

    /// Reads and returns a single packet from network (while connecting: a
    /// PUBLISH over the limit is an error here).
    pub async fn read(&mut self) -> Result<Incoming, StateError> {
        match self.next(false).await? {
            Frame::Packet(packet) => Ok(packet),
            Frame::TooLarge(_, size) => Err(StateError::Deserialization(
                mqttbytes::Error::PayloadSizeLimitExceeded(size),
            )),
        }
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub async fn readb(&mut self, state: &mut MqttState) -> Result<(), StateError> {
        // Wait for the first packet, then take what else is already here.
        let mut frame = self.next(true).await?;
        let mut count = 1;
        loop {
            let outgoing = match frame {
                Frame::Packet(packet) => state.handle_incoming_packet(packet)?,
                Frame::TooLarge(publish, size) => {
                    state.handle_incoming_too_large(publish, size, self.max_incoming_size)?
                }
            };
            if let Some(outgoing) = outgoing {
                self.write(outgoing).await?;
            }
            if count >= self.max_readb_count {
                break;
            }
            frame = match self.parse(true)? {
                Ok(next) => next,
                // Nothing whole in the buffer: take what the socket already
                // has, without waiting (as upstream's `now_or_never`), so
                // that a burst is answered with one flush, not one each.
                Err(missing) => {
                    let polled = {
                        let fill = std::pin::pin!(self.fill(missing));
                        fill.poll(&mut Context::from_waker(Waker::noop()))
                    };
                    match polled {
                        Poll::Ready(Ok(())) => match self.parse(true)? {
                            Ok(next) => next,
                            Err(_) => break,
                        },
                        // The burst so far is delivered first; the next
                        // `readb` meets the error again and reports it.
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    }
                }
            };
            count += 1;
        }
        Ok(())
    }

    /// Serializes packet into write buffer
    pub async fn write(&mut self, packet: Packet) -> Result<(), StateError> {
        packet
            .write(&mut self.write, self.max_outgoing_size)
            .map(drop)
            .map_err(StateError::Deserialization)
    }

    pub async fn flush(&mut self) -> Result<(), crate::state::StateError> {
        if !self.write.is_empty() {
            // Advances as bytes go out, so an interrupted flush never
            // writes the same bytes twice.
            self.socket.write_all_buf(&mut self.write).await?;
            if self.write.capacity() > KEEP_CAPACITY {
                self.write = BytesMut::new();
            }
        }
        self.socket.flush().await?;
        Ok(())
    }

    /// Not upstream: ends the stream the orderly way, after the last
    /// flush: TLS close_notify and TCP FIN, then what the peer still sends
    /// is read and dropped until it closes its side (at most `timeout`).
    /// Closing a socket with unread data makes Linux reset the connection
    /// and discard what was not transmitted yet, a DISCONNECT included.
    pub async fn close(&mut self, timeout: std::time::Duration) {
        let orderly = async {
            if self.socket.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 4096];
            while let Ok(n) = self.socket.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, orderly).await;
    }
}

pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T> AsyncReadWrite for T where T: AsyncRead + AsyncWrite + Send + Unpin {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Incoming;
    use crate::mqttbytes::v4::PubAck;
    use std::pin::Pin;
    use tokio::io::{AsyncWriteExt, ReadBuf};

    /// A stream whose bytes are all there already but come out at most
    /// `chunk` at a time, like plaintext waiting in a TLS library's buffer.
    struct Chunked {
        data: Vec<u8>,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.chunk.min(self.data.len()).min(buf.remaining());
            if n == 0 {
                return Poll::Pending;
            }
            let taken: Vec<u8> = self.data.drain(..n).collect();
            buf.put_slice(&taken);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Chunked {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A burst is handled in one `readb` (so its acknowledgements go out in
    /// one flush) even when it comes out of the stream in small pieces:
    /// after the first packet, what the stream already has is taken
    /// without waiting.
    #[tokio::test]
    async fn readb_takes_a_burst_that_comes_in_pieces() {
        let ten_pingresps = [0xd0, 0x00].repeat(10);
        let mut network = Network::new(
            Chunked {
                data: ten_pingresps,
                chunk: 8,
            },
            1024,
            1024,
        );
        let mut state = MqttState::new(10, false);
        network.readb(&mut state).await.unwrap();
        assert_eq!(state.events.len(), 10, "one readb for the whole burst");
    }

    #[tokio::test]
    async fn buffers_start_empty_grow_with_a_large_packet_and_are_given_back() {
        let (ours, mut broker) = tokio::io::duplex(64 * 1024);
        let mut network = Network::new(ours, 1 << 20, 1 << 20);
        assert_eq!(network.read.capacity(), 0);
        assert_eq!(network.write.capacity(), 0);
        let mut publish = crate::Publish::new("t", crate::QoS::AtLeastOnce, vec![7u8; 100_000]);
        publish.pkid = 1;
        let mut bytes = BytesMut::new();
        Packet::Publish(publish).write(&mut bytes, 1 << 20).unwrap();
        let sender = tokio::spawn(async move {
            broker.write_all(&bytes).await.unwrap();
            broker.write_all(&[0x40, 0x02, 0x00, 0x01]).await.unwrap();
            broker
        });
        match network.read().await.unwrap() {
            Incoming::Publish(p) => assert_eq!(p.payload.len(), 100_000),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            network.read().await.unwrap(),
            Incoming::PubAck(PubAck::new(1))
        );
        assert!(
            network.read.capacity() <= KEEP_CAPACITY,
            "{}",
            network.read.capacity()
        );
        let _ = sender.await.unwrap();
    }

    /// A large packet's buffer grows to exactly its size (its payload
    /// keeps the allocation while the message is handled), never to the
    /// next power of two.
    #[tokio::test]
    async fn a_large_packet_gets_a_buffer_of_its_own_size() {
        let mut publish = crate::Publish::new("t", crate::QoS::AtLeastOnce, vec![7u8; 3_000_000]);
        publish.pkid = 1;
        let mut bytes = BytesMut::new();
        Packet::Publish(publish).write(&mut bytes, 1 << 23).unwrap();
        let frame = bytes.len();
        let mut network = Network::new(
            Chunked {
                data: bytes.to_vec(),
                chunk: 50_000,
            },
            1 << 23,
            1 << 20,
        );
        let mut largest = 0;
        let payload = loop {
            match network.parse(false).unwrap() {
                Ok(Frame::Packet(Incoming::Publish(p))) => break p.payload,
                Ok(other) => panic!("{other:?}"),
                Err(missing) => {
                    network.fill(missing).await.unwrap();
                    largest = largest.max(network.read.capacity());
                }
            }
        };
        assert_eq!(payload.len(), 3_000_000);
        assert!(largest <= frame, "{largest} for a {frame}-byte packet");
    }

    #[tokio::test]
    async fn an_oversized_incoming_packet_is_an_error_not_an_allocation() {
        // A header announcing 200 MB with a limit of 1 MiB: refused before
        // reading (or reserving) the body.
        let (ours, mut broker) = tokio::io::duplex(1024);
        let mut network = Network::new(ours, 1 << 20, 1 << 20);
        broker
            .write_all(&[0x30, 0x80, 0x80, 0x80, 0x60])
            .await
            .unwrap();
        let err = network.read().await.unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Deserialization(mqttbytes::Error::PayloadSizeLimitExceeded(_))
            ),
            "{err}"
        );
        assert!(network.read.capacity() < 64 * 1024);
    }

    /// A PUBLISH over the limit is reported with its topic, packet id and
    /// size, its bytes dropped as they come (here a few at a time), and
    /// what follows it is read as usual.
    #[tokio::test]
    async fn an_oversized_publish_is_skipped_and_reported() {
        for (qos, pkid) in [(crate::QoS::AtLeastOnce, 7), (crate::QoS::AtMostOnce, 0)] {
            let mut publish = crate::Publish::new("big/t", qos, vec![9u8; 5000]);
            publish.pkid = pkid;
            let mut bytes = BytesMut::new();
            Packet::Publish(publish).write(&mut bytes, 1 << 20).unwrap();
            let size = bytes.len() - 3; // a 2-byte remaining length
            let mut small = crate::Publish::new("small", crate::QoS::AtLeastOnce, vec![1u8; 10]);
            small.pkid = 8;
            Packet::Publish(small.clone())
                .write(&mut bytes, 1 << 20)
                .unwrap();
            let mut network = Network::new(
                Chunked {
                    data: bytes.to_vec(),
                    chunk: 100,
                },
                1024,
                1024,
            );
            match network.next(true).await.unwrap() {
                Frame::TooLarge(p, n) => {
                    assert_eq!(
                        (p.topic.as_str(), p.pkid, p.qos, n),
                        ("big/t", pkid, qos, size)
                    );
                    assert!(p.payload.is_empty());
                }
                other => panic!("{other:?}"),
            }
            assert!(network.read.capacity() <= MAX_READ);
            assert_eq!(network.read().await.unwrap(), Incoming::Publish(small));
        }
    }

    /// The event loop's view: a TooLarge event, and with automatic
    /// acknowledgements the PUBACK goes out, so the broker does not send it
    /// again.
    #[tokio::test]
    async fn an_oversized_publish_becomes_an_event() {
        let mut publish = crate::Publish::new("big/t", crate::QoS::AtLeastOnce, vec![9u8; 5000]);
        publish.pkid = 3;
        let mut bytes = BytesMut::new();
        Packet::Publish(publish).write(&mut bytes, 1 << 20).unwrap();
        let (ours, mut broker) = tokio::io::duplex(64 * 1024);
        broker.write_all(&bytes).await.unwrap();
        let mut network = Network::new(ours, 1024, 1024);
        let mut state = MqttState::new(10, false);
        network.readb(&mut state).await.unwrap();
        network.flush().await.unwrap();
        match state.events.pop_front() {
            Some(crate::Event::TooLarge { publish, size, max }) => {
                assert_eq!((publish.topic.as_str(), publish.pkid), ("big/t", 3));
                assert_eq!((size, max), (bytes.len() - 3, 1024));
            }
            other => panic!("{other:?}"),
        }
        let mut ack = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut broker, &mut ack)
            .await
            .unwrap();
        assert_eq!(ack, [0x40, 0x02, 0x00, 0x03], "PUBACK 3");
    }
}
