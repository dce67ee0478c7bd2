//! The asynchronous handle to the event loop.
use crate::mqttbytes::{QoS, v4::*};
use crate::{EventLoop, MqttOptions, Request, SessionAck, valid_filter, valid_topic};

use bytes::Bytes;
use flume::{SendError, Sender, TrySendError};

/// Client Error
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Failed to send mqtt requests to eventloop")]
    Request(Request),
    #[error("Failed to send mqtt requests to eventloop")]
    TryRequest(Request),
    /// A publish larger than the outgoing packet-size limit, refused before
    /// anything was queued. (Not upstream: rumqttc queues it, fails to write
    /// it, and replays it on every reconnect.)
    #[error(
        "a publish of {size} bytes is larger than the outgoing packet-size limit of {max} bytes"
    )]
    PacketTooLarge { size: usize, max: usize },
}

impl From<SendError<Request>> for ClientError {
    fn from(e: SendError<Request>) -> Self {
        Self::Request(e.into_inner())
    }
}

impl From<TrySendError<Request>> for ClientError {
    /// A full channel is `TryRequest` (try again later); a closed one, whose
    /// event loop is gone, is `Request`, as for the async methods (not
    /// upstream, where both are `TryRequest` and a caller retrying a full
    /// channel spins forever once the event loop is gone).
    fn from(e: TrySendError<Request>) -> Self {
        match e {
            TrySendError::Full(request) => Self::TryRequest(request),
            TrySendError::Disconnected(request) => Self::Request(request),
        }
    }
}

/// An asynchronous client, communicates with MQTT `EventLoop`.
///
/// This is cloneable and can be used to asynchronously [`publish`](`AsyncClient::publish`),
/// [`subscribe`](`AsyncClient::subscribe`) through the `EventLoop`, which is to be polled parallelly.
///
/// **NOTE**: The `EventLoop` must be regularly polled in order to send, receive and process packets
/// from the broker, i.e. move ahead.
#[derive(Clone, Debug)]
pub struct AsyncClient {
    request_tx: Sender<Request>,
    max_outgoing_packet_size: usize,
}

impl AsyncClient {
    /// Create a new `AsyncClient`.
    ///
    /// `cap` specifies the capacity of the bounded async channel.
    pub fn new(options: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
        let max_outgoing_packet_size = options.max_outgoing_packet_size();
        let eventloop = EventLoop::new(options, cap);
        let request_tx = eventloop.requests_tx.clone();

        let client = AsyncClient {
            request_tx,
            max_outgoing_packet_size,
        };

        (client, eventloop)
    }

    /// Create a new `AsyncClient` from a channel `Sender`.
    ///
    /// This is mostly useful for creating a test instance where you can
    /// listen on the corresponding receiver.
    pub fn from_senders(request_tx: Sender<Request>) -> AsyncClient {
        AsyncClient {
            request_tx,
            max_outgoing_packet_size: crate::DEFAULT_MAX_OUTGOING_PACKET_SIZE,
        }
    }

    /// Refuses a publish that could never be written (not upstream).
    fn check_size(&self, publish: &Publish) -> Result<(), ClientError> {
        let size = publish.wire_size();
        if size > self.max_outgoing_packet_size {
            return Err(ClientError::PacketTooLarge {
                size,
                max: self.max_outgoing_packet_size,
            });
        }
        Ok(())
    }

    /// Sends a MQTT Publish to the `EventLoop`.
    pub async fn publish<S, V>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: V,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        V: Into<Vec<u8>>,
    {
        let topic = topic.into();
        let mut publish = Publish::new(&topic, qos, payload);
        publish.retain = retain;
        self.check_size(&publish)?;
        let publish = Request::Publish(publish);
        if !valid_topic(&topic) {
            return Err(ClientError::Request(publish));
        }
        self.request_tx.send_async(publish).await?;
        Ok(())
    }

    /// Attempts to send a MQTT Publish to the `EventLoop`.
    pub fn try_publish<S, V>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: V,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        V: Into<Vec<u8>>,
    {
        let topic = topic.into();
        let mut publish = Publish::new(&topic, qos, payload);
        publish.retain = retain;
        self.check_size(&publish)?;
        let publish = Request::Publish(publish);
        if !valid_topic(&topic) {
            return Err(ClientError::TryRequest(publish));
        }
        self.request_tx.try_send(publish)?;
        Ok(())
    }

    /// Sends a MQTT PubAck to the `EventLoop`. Only needed in if `manual_acks` flag is set.
    pub async fn ack(&self, publish: &Publish) -> Result<(), ClientError> {
        let ack = get_ack_req(publish);

        if let Some(ack) = ack {
            self.request_tx.send_async(ack).await?;
        }
        Ok(())
    }

    /// Not upstream: [`AsyncClient::ack`] for a message that came in
    /// session `generation` ([`EventLoop::session_generation`] when
    /// [`EventLoop::poll`] handed it out): if the broker has started a new
    /// session by the time the event loop takes this from the channel, it
    /// is dropped, not written (the packet id may be another message's
    /// there).
    ///
    /// [`EventLoop::session_generation`]: crate::EventLoop::session_generation
    /// [`EventLoop::poll`]: crate::EventLoop::poll
    pub async fn ack_in(&self, publish: &Publish, generation: u64) -> Result<(), ClientError> {
        let ack = match publish.qos {
            QoS::AtMostOnce => return Ok(()),
            QoS::AtLeastOnce => SessionAck::PubAck(PubAck::new(publish.pkid)),
            QoS::ExactlyOnce => SessionAck::PubRec(PubRec::new(publish.pkid)),
        };
        self.request_tx
            .send_async(Request::AckIn { generation, ack })
            .await?;
        Ok(())
    }

    /// Attempts to send a MQTT PubAck to the `EventLoop`. Only needed in if `manual_acks` flag is set.
    pub fn try_ack(&self, publish: &Publish) -> Result<(), ClientError> {
        let ack = get_ack_req(publish);
        if let Some(ack) = ack {
            self.request_tx.try_send(ack)?;
        }
        Ok(())
    }

    /// Sends a MQTT Publish to the `EventLoop`
    pub async fn publish_bytes<S>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
    {
        let mut publish = Publish::from_bytes(topic, qos, payload);
        publish.retain = retain;
        self.check_size(&publish)?;
        let publish = Request::Publish(publish);
        self.request_tx.send_async(publish).await?;
        Ok(())
    }

    /// Attempts to send a MQTT Publish of `payload` without copying it (not
    /// upstream).
    pub fn try_publish_bytes<S>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
    {
        let topic = topic.into();
        let mut publish = Publish::from_bytes(&topic, qos, payload);
        publish.retain = retain;
        self.check_size(&publish)?;
        let publish = Request::Publish(publish);
        if !valid_topic(&topic) {
            return Err(ClientError::TryRequest(publish));
        }
        self.request_tx.try_send(publish)?;
        Ok(())
    }

    /// Sends a MQTT Subscribe to the `EventLoop`
    pub async fn subscribe<S: Into<String>>(&self, topic: S, qos: QoS) -> Result<(), ClientError> {
        let subscribe = Subscribe::new(topic, qos);
        if !subscribe_has_valid_filters(&subscribe) {
            return Err(ClientError::Request(subscribe.into()));
        }

        self.request_tx.send_async(subscribe.into()).await?;
        Ok(())
    }

    /// Attempts to send a MQTT Subscribe to the `EventLoop`
    pub fn try_subscribe<S: Into<String>>(&self, topic: S, qos: QoS) -> Result<(), ClientError> {
        let subscribe = Subscribe::new(topic, qos);
        if !subscribe_has_valid_filters(&subscribe) {
            return Err(ClientError::TryRequest(subscribe.into()));
        }

        self.request_tx.try_send(subscribe.into())?;
        Ok(())
    }

    /// Sends a MQTT Subscribe for multiple topics to the `EventLoop`
    pub async fn subscribe_many<T>(&self, topics: T) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = SubscribeFilter>,
    {
        let subscribe = Subscribe::new_many(topics);
        if !subscribe_has_valid_filters(&subscribe) {
            return Err(ClientError::Request(subscribe.into()));
        }

        self.request_tx.send_async(subscribe.into()).await?;
        Ok(())
    }

    /// Attempts to send a MQTT Subscribe for multiple topics to the `EventLoop`
    pub fn try_subscribe_many<T>(&self, topics: T) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = SubscribeFilter>,
    {
        let subscribe = Subscribe::new_many(topics);
        if !subscribe_has_valid_filters(&subscribe) {
            return Err(ClientError::TryRequest(subscribe.into()));
        }
        self.request_tx.try_send(subscribe.into())?;
        Ok(())
    }

    /// Sends a MQTT Unsubscribe to the `EventLoop`
    pub async fn unsubscribe<S: Into<String>>(&self, topic: S) -> Result<(), ClientError> {
        let unsubscribe = Unsubscribe::new(topic.into());
        let request = Request::Unsubscribe(unsubscribe);
        self.request_tx.send_async(request).await?;
        Ok(())
    }

    /// Attempts to send a MQTT Unsubscribe to the `EventLoop`
    pub fn try_unsubscribe<S: Into<String>>(&self, topic: S) -> Result<(), ClientError> {
        let unsubscribe = Unsubscribe::new(topic.into());
        let request = Request::Unsubscribe(unsubscribe);
        self.request_tx.try_send(request)?;
        Ok(())
    }

    /// Sends a MQTT disconnect to the `EventLoop`
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let request = Request::Disconnect(Disconnect);
        self.request_tx.send_async(request).await?;
        Ok(())
    }

    /// Attempts to send a MQTT disconnect to the `EventLoop`
    pub fn try_disconnect(&self) -> Result<(), ClientError> {
        let request = Request::Disconnect(Disconnect);
        self.request_tx.try_send(request)?;
        Ok(())
    }
}

fn subscribe_has_valid_filters(subscribe: &Subscribe) -> bool {
    !subscribe.filters.is_empty()
        && subscribe
            .filters
            .iter()
            .all(|filter| valid_filter(&filter.path))
}

fn get_ack_req(publish: &Publish) -> Option<Request> {
    let ack = match publish.qos {
        QoS::AtMostOnce => return None,
        QoS::AtLeastOnce => Request::PubAck(PubAck::new(publish.pkid)),
        QoS::ExactlyOnce => Request::PubRec(PubRec::new(publish.pkid)),
    };
    Some(ack)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn should_be_able_to_build_test_client_from_channel() {
        let (tx, rx) = flume::bounded(1);
        let client = AsyncClient::from_senders(tx);
        client
            .try_publish("hello/world", QoS::ExactlyOnce, false, "good bye")
            .expect("Should be able to publish");
        let _ = rx.try_recv().expect("Should have message");
    }

    #[test]
    fn a_full_channel_and_a_closed_one_are_told_apart() {
        let (tx, rx) = flume::bounded(1);
        let client = AsyncClient::from_senders(tx);
        client
            .try_publish("a", QoS::AtMostOnce, false, "1")
            .unwrap();
        assert!(matches!(
            client.try_publish("a", QoS::AtMostOnce, false, "2"),
            Err(ClientError::TryRequest(_))
        ));
        drop(rx);
        assert!(matches!(
            client.try_publish("a", QoS::AtMostOnce, false, "3"),
            Err(ClientError::Request(_))
        ));
    }

    #[test]
    fn an_oversized_publish_is_refused_before_it_is_queued() {
        let mut options = MqttOptions::new("c", "localhost", 1883);
        options.set_max_packet_size(1024, 100);
        let (client, eventloop) = AsyncClient::new(options, 10);
        let err = client
            .try_publish("a/b", QoS::AtLeastOnce, false, vec![0u8; 200])
            .unwrap_err();
        match err {
            ClientError::PacketTooLarge { size, max } => {
                // 1 type byte, 2 length bytes, topic (2 + 3), packet id 2, payload.
                assert_eq!((size, max), (1 + 2 + 2 + 3 + 2 + 200, 100));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(eventloop.requests_tx.is_empty(), "nothing queued");
        client
            .try_publish("a/b", QoS::AtLeastOnce, false, vec![0u8; 10])
            .expect("a small publish fits");
        assert_eq!(eventloop.requests_tx.len(), 1);
    }
}
