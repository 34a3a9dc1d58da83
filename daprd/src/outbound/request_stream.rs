//! The request side of a streamed `CallLocalStream`: messages, or the news that the client's
//! body failed part-way. A failed body must not look complete to the peer, and nobody may be
//! left waiting on a stream that will never end: the encoder answers the failure with an
//! error, which makes the HTTP/2 client reset the stream (RST_STREAM), so the peer cancels its
//! app call and this side's response stream ends with an error too.

use dapr_proto::internals::v1::InternalInvokeRequestStream;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstEncoder;

use crate::wire::{ReceivedDecoder, ReceivedResponseStream};

/// One item of the request stream. Not boxed: nearly every item is a message, and a box would
/// cost an allocation per chunk.
#[allow(clippy::large_enum_variant)]
pub enum Outbound {
    Message(InternalInvokeRequestStream),
    /// The client's body failed; the reason ends the call.
    Failed(String),
}

/// prost's encoder for the messages, with [`Outbound::Failed`] encoded as an error; the
/// answers read in place ([`ReceivedDecoder`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct OutboundCodec;

impl Codec for OutboundCodec {
    type Encode = Outbound;
    type Decode = ReceivedResponseStream;
    type Encoder = OutboundEncoder;
    type Decoder = ReceivedDecoder<ReceivedResponseStream>;

    fn encoder(&mut self) -> Self::Encoder {
        OutboundEncoder(ProstEncoder::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ReceivedDecoder::default()
    }
}

pub struct OutboundEncoder(ProstEncoder<InternalInvokeRequestStream>);

impl Encoder for OutboundEncoder {
    type Item = Outbound;
    type Error = Status;

    fn encode(&mut self, item: Outbound, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outbound::Message(message) => self.0.encode(message, dst),
            Outbound::Failed(reason) => Err(Status::cancelled(reason)),
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
