//! Checked reading and writing of the MQTT data representations: integers, variable byte
//! integers, UTF-8 strings and binary data. Reads never panic; they fail with [`DecodeError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};

/// The largest value a variable byte integer (and so a remaining length) can hold.
pub const MAX_VARINT: u32 = 268_435_455;

/// A cursor over the bytes of one packet body.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer of at most four bytes.
    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for shift in [0u32, 7, 14, 21] {
            let byte = self.u8(field)?;
            value |= u32::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarIntTooLong { field })
    }

    /// The next `len` bytes, without copying.
    pub(crate) fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        Ok(self.buf.split_to(len))
    }

    /// Binary data: a two-byte length followed by that many bytes.
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.bytes(usize::from(len), field)
    }

    /// A UTF-8 encoded string: well-formed, without U+0000.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.binary(field)?;
        let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8 { field })?;
        if text.contains('\0') {
            return Err(DecodeError::NullCharacter { field });
        }
        Ok(text.to_owned())
    }

    /// Everything left, without copying.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless every byte has been consumed.
    pub(crate) fn finish(self, packet: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { packet, count: self.buf.len() })
        }
    }
}

/// A packet identifier where one is required: 0 is a protocol error.
pub(crate) fn read_packet_id(r: &mut Reader, packet: &'static str) -> Result<u16, DecodeError> {
    match r.u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketId { packet }),
        id => Ok(id),
    }
}

/// Where encoded bytes go: a real buffer, or a counter that only measures.
pub(crate) trait Sink {
    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_slice(&mut self, bytes: &[u8]);
}

impl Sink for BytesMut {
    fn put_u8(&mut self, value: u8) {
        BufMut::put_u8(self, value);
    }
    fn put_u16(&mut self, value: u16) {
        BufMut::put_u16(self, value);
    }
    fn put_u32(&mut self, value: u32) {
        BufMut::put_u32(self, value);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        BufMut::put_slice(self, bytes);
    }
}

/// A sink that counts bytes instead of storing them.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub(crate) len: usize,
}

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.len = self.len.saturating_add(1);
    }
    fn put_u16(&mut self, _: u16) {
        self.len = self.len.saturating_add(2);
    }
    fn put_u32(&mut self, _: u32) {
        self.len = self.len.saturating_add(4);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.len = self.len.saturating_add(bytes.len());
    }
}

/// Number of bytes the variable byte integer encoding of `value` takes.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint<S: Sink>(s: &mut S, value: usize, field: &'static str) -> Result<(), EncodeError> {
    let mut rest = match u32::try_from(value) {
        Ok(v) if v <= MAX_VARINT => v,
        _ => return Err(EncodeError::VarIntTooLarge { field, value: value as u64 }),
    };
    loop {
        let low = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest == 0 {
            s.put_u8(low);
            return Ok(());
        }
        s.put_u8(low | 0x80);
    }
}

pub(crate) fn put_binary<S: Sink>(s: &mut S, bytes: &[u8], field: &'static str) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong { field, len: bytes.len() })?;
    s.put_u16(len);
    s.put_slice(bytes);
    Ok(())
}

pub(crate) fn put_string<S: Sink>(s: &mut S, text: &str, field: &'static str) -> Result<(), EncodeError> {
    if text.contains('\0') {
        return Err(EncodeError::NullCharacter { field });
    }
    put_binary(s, text.as_bytes(), field)
}

/// Writes a packet identifier that must be present and non-zero.
pub(crate) fn put_packet_id<S: Sink>(s: &mut S, id: u16, packet: &'static str) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::MissingPacketId { packet });
    }
    s.put_u16(id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> Reader {
        Reader::new(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn varints_use_the_fewest_bytes_and_read_back() {
        for value in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value, "test").expect("in range");
            assert_eq!(buf.len(), varint_len(value));
            let mut r = reader(&buf);
            assert_eq!(r.varint("test").map(|v| v as usize), Ok(value));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn varint_above_four_bytes_is_rejected_both_ways() {
        let mut buf = BytesMut::new();
        assert!(matches!(put_varint(&mut buf, 268_435_456, "x"), Err(EncodeError::VarIntTooLarge { .. })));
        let mut r = reader(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(r.varint("x"), Err(DecodeError::VarIntTooLong { field: "x" }));
    }

    #[test]
    fn short_fields_report_unexpected_end() {
        assert!(matches!(reader(&[0x00]).u16("f"), Err(DecodeError::UnexpectedEnd { .. })));
        assert!(matches!(reader(&[0x00, 0x03, b'a']).string("f"), Err(DecodeError::UnexpectedEnd { .. })));
        assert!(matches!(reader(&[0x80]).varint("f"), Err(DecodeError::UnexpectedEnd { .. })));
    }

    #[test]
    fn strings_reject_bad_utf8_surrogates_and_nul() {
        // 0xED 0xA0 0x80 is the UTF-8 style encoding of the surrogate U+D800.
        assert_eq!(reader(&[0x00, 0x03, 0xED, 0xA0, 0x80]).string("f"), Err(DecodeError::InvalidUtf8 { field: "f" }));
        assert_eq!(reader(&[0x00, 0x01, 0xFF]).string("f"), Err(DecodeError::InvalidUtf8 { field: "f" }));
        assert_eq!(reader(&[0x00, 0x02, b'a', 0x00]).string("f"), Err(DecodeError::NullCharacter { field: "f" }));
        assert_eq!(reader(&[0x00, 0x02, b'h', b'i']).string("f"), Ok("hi".to_owned()));
    }

    #[test]
    fn strings_longer_than_65535_bytes_cannot_be_encoded() {
        let long = "a".repeat(65_536);
        let mut buf = BytesMut::new();
        assert!(matches!(put_string(&mut buf, &long, "f"), Err(EncodeError::FieldTooLong { .. })));
        assert!(matches!(put_string(&mut buf, "a\0", "f"), Err(EncodeError::NullCharacter { .. })));
    }
}
