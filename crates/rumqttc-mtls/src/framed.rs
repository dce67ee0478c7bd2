//! Packets to and from the byte stream.
//!
//! Not upstream's `Framed<_, Codec>` from tokio-util: that one reserves an
//! 8 KiB read and an 8 KiB write buffer for every connection and keeps them
//! for its whole life, most of an idle connection's memory. These buffers
//! start empty, grow with the traffic (the read side adapts how much it
//! asks for at a time) and are released when they drain.
use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::mqttbytes::{self, v4::*};
use crate::{Incoming, MqttState, StateError};

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
        }
    }

    /// The next whole packet in the read buffer, if there is one; `Err`
    /// with the number of bytes still missing otherwise.
    fn parse(&mut self) -> Result<Result<Incoming, usize>, StateError> {
        match Packet::read(&mut self.read, self.max_incoming_size) {
            Ok(packet) => {
                if self.read.is_empty() && self.read.capacity() > KEEP_CAPACITY {
                    self.read = BytesMut::new();
                }
                Ok(Ok(packet))
            }
            Err(mqttbytes::Error::InsufficientBytes(missing)) => Ok(Err(missing)),
            Err(e) => Err(StateError::Deserialization(e)),
        }
    }

    /// Reads more bytes from the socket, at least one. Cancel safe: bytes
    /// read are in the buffer, none are lost.
    async fn fill(&mut self, missing: usize) -> Result<(), StateError> {
        let want = missing.max(self.read_hint).min(MAX_READ);
        self.read.reserve(want);
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

    /// Reads and returns a single packet from network
    pub async fn read(&mut self) -> Result<Incoming, StateError> {
        loop {
            match self.parse()? {
                Ok(packet) => return Ok(packet),
                Err(missing) => self.fill(missing).await?,
            }
        }
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub async fn readb(&mut self, state: &mut MqttState) -> Result<(), StateError> {
        // Wait for the first packet, then take what else is already here.
        let mut packet = self.read().await?;
        let mut count = 1;
        loop {
            if let Some(outgoing) = state.handle_incoming_packet(packet)? {
                self.write(outgoing).await?;
            }
            if count >= self.max_readb_count {
                break;
            }
            packet = match self.parse()? {
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
                        Poll::Ready(Ok(())) => match self.parse()? {
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
}
