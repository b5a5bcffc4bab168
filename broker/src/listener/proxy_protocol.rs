//! PROXY protocol v1 (text) and v2 (binary) headers, as HAProxy, Nginx and cloud load
//! balancers send them in front of a connection. Sans-IO: [`parse`] looks at the bytes read so
//! far and says "need more", "header of N bytes", or why the bytes are not a PROXY header.
//!
//! Of the v2 TLVs only `PP2_TYPE_SSL` (0x20) is read, and in it the `PP2_SUBTYPE_SSL_CN`
//! (0x22) sub-TLV: the client certificate's common name, trusted only when the balancer says
//! the client sent a certificate (`PP2_CLIENT_CERT_CONN` or `PP2_CLIENT_CERT_SESS`) and that
//! it verified it (`verify` = 0). Other TLVs are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// A v1 header is at most 107 bytes including its CRLF (spec section 2.1).
pub const V1_MAX_LEN: usize = 107;
/// Largest v2 header accepted: 16 fixed bytes plus a payload a balancer might fill with TLVs.
pub const V2_MAX_LEN: usize = 16 + 4096;

const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyHeader {
    /// The original client address; `None` for `UNKNOWN` (v1), `LOCAL` (v2, health checks) or
    /// address families other than TCP/UDP over IPv4/IPv6: then the socket's peer is used.
    pub source: Option<SocketAddr>,
    /// The address the client connected to at the balancer.
    pub destination: Option<SocketAddr>,
    /// The verified client certificate's common name (v2 `PP2_SUBTYPE_SSL_CN`).
    pub ssl_cn: Option<String>,
}

/// Why bytes are not a valid PROXY header. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "the connection does not start with a PROXY protocol header; the listener expects one (proxy_protocol = true)"
    )]
    Missing,
    #[error("the PROXY v1 header has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("the PROXY v1 header is malformed: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 version {0} is not supported (only 2)")]
    V2Version(u8),
    #[error("PROXY v2 command {0} is not LOCAL (0) or PROXY (1)")]
    V2Command(u8),
    #[error("the PROXY v2 header announces {0} bytes, more than the {V2_MAX_LEN} accepted")]
    V2TooLong(usize),
    #[error("the PROXY v2 address block is {have} bytes; family {family:#04x} needs {need}")]
    V2ShortAddress { family: u8, have: usize, need: usize },
    #[error("a PROXY v2 TLV runs past the end of the header")]
    V2TruncatedTlv,
    #[error("the PROXY v2 SSL client CN is not UTF-8")]
    V2BadCn,
}

/// Parses a PROXY header at the start of `buf`. `Ok(None)`: not enough bytes yet (read more
/// and call again). `Ok(Some((header, len)))`: the header is `buf[..len]`; what follows is the
/// client's own data.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let probe = buf.len().min(V2_SIGNATURE.len());
    if buf[..probe] == V2_SIGNATURE[..probe] {
        return if buf.len() < 16 { Ok(None) } else { parse_v2(buf) };
    }
    let probe = buf.len().min(6);
    if buf[..probe] == b"PROXY "[..probe] {
        return if buf.len() < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX_LEN { Err(ProxyError::V1TooLong) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&buf[6..cr]).map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let mut parts = line.split(' ');
    let proto = parts.next().ok_or(ProxyError::V1Malformed("no protocol"))?;
    let len = cr + 2;
    match proto {
        // The rest of an UNKNOWN line is to be ignored (spec section 2.1).
        "UNKNOWN" => return Ok(Some((ProxyHeader::default(), len))),
        "TCP4" | "TCP6" => {}
        _ => return Err(ProxyError::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::V1Malformed("expected source, destination and two ports"));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip: IpAddr = s.parse().map_err(|_| ProxyError::V1Malformed("bad address"))?;
        match (proto, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            _ => Err(ProxyError::V1Malformed("address family does not match the protocol")),
        }
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        if s.len() > 1 && s.starts_with('0') {
            return Err(ProxyError::V1Malformed("port has a leading zero"));
        }
        s.parse().map_err(|_| ProxyError::V1Malformed("bad port"))
    };
    let header = ProxyHeader {
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
        ssl_cn: None,
    };
    Ok(Some((header, len)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let command = ver_cmd & 0x0F;
    if command > 1 {
        return Err(ProxyError::V2Command(command));
    }
    let family = buf[13];
    let payload_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + payload_len;
    if total > V2_MAX_LEN {
        return Err(ProxyError::V2TooLong(total));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[16..total];
    // LOCAL: the balancer's own connection (health check); addresses and TLVs are ignored.
    if command == 0 {
        return Ok(Some((ProxyHeader::default(), total)));
    }
    let (addr_len, addrs) = match family >> 4 {
        0x1 => (12, true),
        0x2 => (36, true),
        0x3 => (216, false),
        _ => (0, false),
    };
    if payload.len() < addr_len {
        return Err(ProxyError::V2ShortAddress { family, have: payload.len(), need: addr_len });
    }
    let mut header = ProxyHeader::default();
    if addrs {
        let a = &payload[..addr_len];
        let (src, dst, ports) = if addr_len == 12 {
            let s = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let d = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
            (IpAddr::V4(s), IpAddr::V4(d), &a[8..12])
        } else {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&a[..16]);
            d.copy_from_slice(&a[16..32]);
            (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)), &a[32..36])
        };
        header.source = Some(SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])));
        header.destination = Some(SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])));
    }
    for (kind, value) in tlvs(&payload[addr_len..])? {
        if kind == PP2_TYPE_SSL {
            header.ssl_cn = ssl_cn(value)?;
        }
    }
    Ok(Some((header, total)))
}

/// Splits a TLV block into (type, value) pairs.
fn tlvs(mut block: &[u8]) -> Result<Vec<(u8, &[u8])>, ProxyError> {
    let mut out = Vec::new();
    while !block.is_empty() {
        if block.len() < 3 {
            return Err(ProxyError::V2TruncatedTlv);
        }
        let len = usize::from(u16::from_be_bytes([block[1], block[2]]));
        if block.len() < 3 + len {
            return Err(ProxyError::V2TruncatedTlv);
        }
        out.push((block[0], &block[3..3 + len]));
        block = &block[3 + len..];
    }
    Ok(out)
}

/// The CN inside a `PP2_TYPE_SSL` value (client flags u8, verify u32, sub-TLVs), if the client
/// sent a certificate and the balancer verified it.
fn ssl_cn(value: &[u8]) -> Result<Option<String>, ProxyError> {
    if value.len() < 5 {
        return Err(ProxyError::V2TruncatedTlv);
    }
    let client = value[0];
    let verify = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    let has_cert = client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS) != 0;
    let mut cn = None;
    for (kind, v) in tlvs(&value[5..])? {
        if kind == PP2_SUBTYPE_SSL_CN {
            cn = Some(std::str::from_utf8(v).map_err(|_| ProxyError::V2BadCn)?.to_string());
        }
    }
    Ok(cn.filter(|_| has_cert && verify == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | command);
        b.push(family);
        b.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        b.extend_from_slice(addrs);
        b.extend_from_slice(tlvs);
        b
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut b = vec![kind];
        b.extend_from_slice(&(value.len() as u16).to_be_bytes());
        b.extend_from_slice(value);
        b
    }

    fn ssl(client: u8, verify: u32, cn: &str) -> Vec<u8> {
        let mut v = vec![client];
        v.extend_from_slice(&verify.to_be_bytes());
        v.extend(tlv(0x21, b"TLSv1.3"));
        v.extend(tlv(PP2_SUBTYPE_SSL_CN, cn.as_bytes()));
        tlv(PP2_TYPE_SSL, &v)
    }

    const V4_ADDRS: [u8; 12] = [192, 0, 2, 7, 10, 0, 0, 1, 0xC3, 0x50, 0x07, 0x5B]; // :50000 -> :1883

    #[test]
    fn v1_tcp4_gives_the_source_and_the_length() {
        let buf = b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 1883\r\n\x10\x0c";
        let (h, len) = parse(buf).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.7:50000".parse().unwrap()));
        assert_eq!(h.destination, Some("10.0.0.1:1883".parse().unwrap()));
        assert_eq!(&buf[len..], b"\x10\x0c");
    }

    #[test]
    fn v1_tcp6_and_unknown_parse() {
        let (h, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1883\r\n").unwrap().unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:4000".parse().unwrap()));
        let (h, len) = parse(b"PROXY UNKNOWN ffff::1 whatever\r\n").unwrap().unwrap();
        assert_eq!((h.source, len), (None, 32));
    }

    #[test]
    fn v1_needs_more_bytes_until_the_crlf() {
        let full = b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 1883\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn v1_garbage_is_refused() {
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 50000\r\n"),
            Err(ProxyError::V1Malformed("expected source, destination and two ports"))
        );
        assert!(matches!(parse(b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"), Err(ProxyError::V1Malformed(_))));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n"), Err(ProxyError::V1Malformed(_))));
        assert!(matches!(parse(b"PROXY UDP4 1.2.3.4 5.6.7.8 1 1\r\n"), Err(ProxyError::V1Malformed(_))));
        assert_eq!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(20)), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn mqtt_without_a_header_is_refused() {
        assert_eq!(parse(&[0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T']), Err(ProxyError::Missing));
        assert_eq!(parse(b"GET /mqtt HTTP/1.1\r\n"), Err(ProxyError::Missing));
    }

    #[test]
    fn v2_tcp4_with_a_verified_ssl_cn() {
        let mut buf = v2(1, 0x11, &V4_ADDRS, &ssl(0x07, 0, "vehicle-42"));
        buf.extend_from_slice(b"\x10rest");
        let (h, len) = parse(&buf).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.7:50000".parse().unwrap()));
        assert_eq!(h.destination, Some("10.0.0.1:1883".parse().unwrap()));
        assert_eq!(h.ssl_cn.as_deref(), Some("vehicle-42"));
        assert_eq!(&buf[len..], b"\x10rest");
    }

    #[test]
    fn v2_cn_is_ignored_unless_a_certificate_was_verified() {
        let unverified = v2(1, 0x11, &V4_ADDRS, &ssl(0x07, 1, "vehicle-42"));
        assert_eq!(parse(&unverified).unwrap().unwrap().0.ssl_cn, None);
        let no_cert = v2(1, 0x11, &V4_ADDRS, &ssl(0x01, 0, "vehicle-42"));
        assert_eq!(parse(&no_cert).unwrap().unwrap().0.ssl_cn, None);
    }

    #[test]
    fn v2_tcp6_and_other_tlvs() {
        let mut addrs = [0u8; 36];
        addrs[15] = 1; // ::1
        addrs[31] = 2; // ::2
        addrs[32..34].copy_from_slice(&4000u16.to_be_bytes());
        addrs[34..36].copy_from_slice(&1883u16.to_be_bytes());
        let mut tl = tlv(0x01, b"mqtt"); // ALPN
        tl.extend(tlv(0x04, &[0; 4])); // NOOP
        let (h, _) = parse(&v2(1, 0x21, &addrs, &tl)).unwrap().unwrap();
        assert_eq!(h.source, Some("[::1]:4000".parse().unwrap()));
        assert_eq!(h.ssl_cn, None);
    }

    #[test]
    fn v2_local_and_unspec_keep_the_socket_address() {
        assert_eq!(parse(&v2(0, 0x11, &V4_ADDRS, &[])).unwrap().unwrap().0.source, None);
        assert_eq!(parse(&v2(1, 0x00, &[], &[])).unwrap().unwrap().0.source, None);
    }

    #[test]
    fn v2_truncated_headers_wait_for_more_then_parse() {
        let full = v2(1, 0x11, &V4_ADDRS, &ssl(0x07, 0, "cn"));
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        assert!(parse(&full).unwrap().is_some());
    }

    #[test]
    fn v2_malformed_headers_are_refused() {
        let mut bad_version = v2(1, 0x11, &V4_ADDRS, &[]);
        bad_version[12] = 0x31;
        assert_eq!(parse(&bad_version), Err(ProxyError::V2Version(3)));
        assert_eq!(parse(&v2(2, 0x11, &V4_ADDRS, &[])), Err(ProxyError::V2Command(2)));
        assert_eq!(
            parse(&v2(1, 0x11, &V4_ADDRS[..8], &[])),
            Err(ProxyError::V2ShortAddress { family: 0x11, have: 8, need: 12 })
        );
        let mut tl = tlv(0x01, b"mqtt");
        tl.truncate(5);
        assert_eq!(parse(&v2(1, 0x11, &V4_ADDRS, &tl)), Err(ProxyError::V2TruncatedTlv));
        let mut huge = v2(1, 0x11, &V4_ADDRS, &[]);
        huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert_eq!(parse(&huge), Err(ProxyError::V2TooLong(60016)));
        let bad_cn = v2(1, 0x11, &V4_ADDRS, &tlv(PP2_TYPE_SSL, &[7, 0, 0, 0, 0, PP2_SUBTYPE_SSL_CN, 0, 1, 0xFF]));
        assert_eq!(parse(&bad_cn), Err(ProxyError::V2BadCn));
    }
}
