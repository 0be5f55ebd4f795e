//! Netlink framing for nfnetlink: message headers, the `nfgenmsg` header and attributes
//! (TLVs), written and read by hand.
//!
//! Layouts from the kernel uapi: `include/uapi/linux/netlink.h` (`nlmsghdr`, `nlattr`,
//! `nlmsgerr`), `include/uapi/linux/netfilter/nfnetlink.h` (`nfgenmsg`, batch messages) and
//! `include/uapi/linux/netfilter/nf_tables.h` (message types, attributes). Netlink headers are
//! in host byte order; `nfgenmsg.res_id` and every nf_tables integer attribute are big endian.

/// `sizeof(struct nlmsghdr)`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nfgenmsg)`.
pub(crate) const NFGENMSG_LEN: usize = 4;
/// `sizeof(struct nlattr)`.
pub(crate) const NLA_HDRLEN: usize = 4;
/// Attribute type flag: the payload is a list of attributes.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
/// Attribute type flag: the payload is in network byte order.
const NLA_F_NET_BYTEORDER: u16 = 0x4000;

/// `NLMSG_ERROR`: an acknowledgement (error 0) or an error.
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub(crate) const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type and the `res_id` of
/// batch messages.
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` (`NLMSG_MIN_TYPE`).
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;

/// The netlink message type of nf_tables message `msg` (`NFT_MSG_*`).
pub(crate) fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// Rounds up to the 4-byte alignment of netlink headers and attributes.
pub(crate) fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A growing buffer of netlink messages (one datagram).
#[derive(Debug, Default, Clone)]
pub(crate) struct Writer {
    buf: Vec<u8>,
    message_start: Option<usize>,
}

impl Writer {
    /// Starts a message: `nlmsghdr` (length filled in by [`Writer::end_message`]) and
    /// `nfgenmsg`.
    pub(crate) fn begin_message(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.begin_raw(ty, flags, seq);
        self.buf.push(family);
        self.buf.push(NFNETLINK_V0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Starts a message with only an `nlmsghdr` (replies such as `NLMSG_ERROR`).
    pub(crate) fn begin_raw(&mut self, ty: u16, flags: u16, seq: u32) {
        self.message_start = Some(self.buf.len());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
    }

    /// Ends the message begun last, writing its length.
    pub(crate) fn end_message(&mut self) {
        if let Some(start) = self.message_start.take() {
            let len = (self.buf.len() - start) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// One attribute with a raw payload, padded to 4 bytes.
    pub(crate) fn put(&mut self, ty: u16, payload: &[u8]) {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    /// A big-endian `u32` attribute (`NLA_BE32`/`NLA_U32` in nf_tables).
    pub(crate) fn put_u32(&mut self, ty: u16, value: u32) {
        self.put(ty, &value.to_be_bytes());
    }

    /// A big-endian `u64` attribute.
    pub(crate) fn put_u64(&mut self, ty: u16, value: u64) {
        self.put(ty, &value.to_be_bytes());
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn put_str(&mut self, ty: u16, value: &str) {
        let len = (NLA_HDRLEN + value.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// A nested attribute whose payload `f` writes.
    pub(crate) fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Writer)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Raw bytes already laid out as attributes.
    pub(crate) fn extend(&mut self, attrs: &[u8]) {
        self.buf.extend_from_slice(attrs);
    }

    fn pad(&mut self) {
        let padded = align(self.buf.len());
        self.buf.resize(padded, 0);
    }

    /// The bytes written so far.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// One netlink message read from a datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    /// Everything after the `nlmsghdr`.
    pub(crate) payload: &'a [u8],
}

/// Splits a datagram into netlink messages.
pub(crate) fn messages(mut datagram: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    while datagram.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(word(datagram, 0)) as usize;
        if len < NLMSG_HDRLEN || len > datagram.len() {
            return Err(format!("netlink message length {len} out of bounds {}", datagram.len()));
        }
        let ty = u16::from_ne_bytes([datagram[4], datagram[5]]);
        let flags = u16::from_ne_bytes([datagram[6], datagram[7]]);
        let seq = u32::from_ne_bytes(word(datagram, 8));
        out.push(Message { ty, flags, seq, payload: &datagram[NLMSG_HDRLEN..len] });
        datagram = &datagram[align(len).min(datagram.len())..];
    }
    Ok(out)
}

/// The `error` field of an `NLMSG_ERROR` payload: 0 for an acknowledgement, else a negative
/// errno.
pub(crate) fn error_code(payload: &[u8]) -> Result<i32, String> {
    if payload.len() < 4 {
        return Err("truncated netlink error message".into());
    }
    Ok(i32::from_ne_bytes(word(payload, 0)))
}

fn word(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

/// One attribute read from a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr<'a> {
    /// The type without the nested and byte-order flags.
    pub(crate) ty: u16,
    pub(crate) payload: &'a [u8],
}

impl<'a> Attr<'a> {
    /// A NUL-terminated string payload.
    pub(crate) fn string(&self) -> Result<String, String> {
        let bytes = self.payload.split(|b| *b == 0).next().unwrap_or_default();
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("attribute {} is not UTF-8", self.ty))
    }

    /// A big-endian `u32` payload.
    pub(crate) fn u32(&self) -> Result<u32, String> {
        <[u8; 4]>::try_from(self.payload)
            .map(u32::from_be_bytes)
            .map_err(|_| format!("attribute {} is not a u32", self.ty))
    }

    /// A big-endian `u64` payload.
    pub(crate) fn u64(&self) -> Result<u64, String> {
        <[u8; 8]>::try_from(self.payload)
            .map(u64::from_be_bytes)
            .map_err(|_| format!("attribute {} is not a u64", self.ty))
    }

    /// The attributes nested in this one.
    pub(crate) fn nested(&self) -> Result<Vec<Attr<'a>>, String> {
        attrs(self.payload)
    }
}

/// Splits a buffer into attributes.
pub(crate) fn attrs(mut buf: &[u8]) -> Result<Vec<Attr<'_>>, String> {
    let mut out = Vec::new();
    while buf.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < NLA_HDRLEN || len > buf.len() {
            return Err(format!("attribute length {len} out of bounds {}", buf.len()));
        }
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
        out.push(Attr { ty, payload: &buf[NLA_HDRLEN..len] });
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

/// The attributes of an nf_tables message payload (after its `nfgenmsg`).
pub(crate) fn nft_attrs(payload: &[u8]) -> Result<Vec<Attr<'_>>, String> {
    if payload.len() < NFGENMSG_LEN {
        return Err("nf_tables message shorter than its nfgenmsg header".into());
    }
    attrs(&payload[NFGENMSG_LEN..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn string_attributes_are_nul_terminated_and_padded() {
        let mut w = Writer::default();
        w.put_str(1, "keel0");
        // len 4 + 5 + 1 = 10, padded to 12.
        assert_eq!(w.into_bytes(), [10, 0, 1, 0, b'k', b'e', b'e', b'l', b'0', 0, 0, 0]);
    }

    #[test]
    fn integer_attributes_are_big_endian() {
        let mut w = Writer::default();
        w.put_u32(3, 0x0102_0304);
        assert_eq!(w.into_bytes(), [8, 0, 3, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn nested_attributes_carry_the_nested_flag_and_total_length() {
        let mut w = Writer::default();
        w.nest(4, |w| w.put_u32(1, 4));
        assert_eq!(w.into_bytes(), [12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 4]);
    }

    #[test]
    fn attributes_round_trip_through_the_reader() {
        let mut w = Writer::default();
        w.put_str(1, "keelson");
        w.nest(2, |w| w.put_u64(1, 7));
        let bytes = w.into_bytes();
        let a = attrs(&bytes).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].string().unwrap(), "keelson");
        assert_eq!(a[1].ty, 2);
        assert_eq!(a[1].nested().unwrap()[0].u64().unwrap(), 7);
    }

    #[test]
    fn truncated_attributes_are_an_error() {
        assert!(attrs(&[20, 0, 1, 0, 0]).is_err());
        assert!(messages(&[64, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
