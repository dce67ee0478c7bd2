//! Packets to and from the byte stream.
//!
//! Not upstream's `Framed<_, Codec>` from tokio-util: that one reserves an
//! 8 KiB read and an 8 KiB write buffer for every connection and keeps them
//! for its whole life, most of an idle connection's memory. These buffers
//! start empty, grow with the traffic (the read side adapts how much it
//! asks for at a time) and are released when they drain.
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
            match self.parse()? {
                Ok(next) => packet = next,
                Err(_) => break,
            }
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
