//! Retained messages are copies kept in the metadata store (`retained/<topic>`), because a
//! retained message must outlive the log segment it was published in.

use axle_engine::Message;

pub fn encode(m: &Message) -> Vec<u8> {
    m.encode_bytes()
}

pub fn decode(b: &[u8]) -> Option<Message> {
    Message::decode_bytes(b)
}
