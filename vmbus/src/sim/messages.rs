//! The channel messages a guest sends, built the way Linux's `hv_vmbus` builds them.

use zerocopy::IntoBytes;

use crate::protocol::{
    header_only, ChannelMessageHeader, ChannelMessageType, CloseChannel, GpaRange, GpadlBody,
    GpadlHeader, GpadlTeardown, InitiateContact, ModifyChannel, OpenChannel, Version,
    MAX_USER_DEFINED_BYTES,
};

/// INITIATE_CONTACT at `version`, targeting `vp`, naming `sint` (5.0+).
pub fn contact(version: Version, vp: u32, sint: u8) -> Vec<u8> {
    InitiateContact {
        header: ChannelMessageHeader::new(ChannelMessageType::INITIATE_CONTACT),
        vmbus_version_requested: version.0,
        target_vcpu: vp,
        interrupt_page_or_sint: if version.names_sint_and_connection() {
            u64::from(sint)
        } else {
            0x7000
        },
        monitor_page1: 0x8000,
        monitor_page2: 0x9000,
    }
    .as_bytes()
    .to_vec()
}

/// A header-only message.
pub fn header(t: ChannelMessageType) -> Vec<u8> {
    header_only(t).to_vec()
}

/// GPADL_HEADER and GPADL_BODY messages for one whole-page range, split as Linux's
/// `create_gpadl_header` splits them (26 page numbers in the header, 28 per body).
pub fn gpadl(relid: u32, id: u32, pfns: &[u64]) -> Vec<Vec<u8>> {
    let first = pfns.len().min(26);
    let mut head = GpadlHeader {
        header: ChannelMessageHeader::new(ChannelMessageType::GPADL_HEADER),
        child_relid: relid,
        gpadl: id,
        range_buflen: (8 + 8 * pfns.len()) as u16,
        rangecount: 1,
    }
    .as_bytes()
    .to_vec();
    head.extend_from_slice(
        GpaRange {
            byte_count: (pfns.len() * 4096) as u32,
            byte_offset: 0,
        }
        .as_bytes(),
    );
    for p in &pfns[..first] {
        head.extend_from_slice(&p.to_le_bytes());
    }
    let mut out = vec![head];
    for chunk in pfns[first..].chunks(28) {
        let mut body = GpadlBody {
            header: ChannelMessageHeader::new(ChannelMessageType::GPADL_BODY),
            msgnumber: 0,
            gpadl: id,
        }
        .as_bytes()
        .to_vec();
        for p in chunk {
            body.extend_from_slice(&p.to_le_bytes());
        }
        out.push(body);
    }
    out
}

/// OPENCHANNEL of `relid` on ring GPADL `gpadl`, the host-to-guest ring at page `split`.
pub fn open(relid: u32, gpadl: u32, vp: u32, split: u32) -> Vec<u8> {
    OpenChannel {
        header: ChannelMessageHeader::new(ChannelMessageType::OPEN_CHANNEL),
        child_relid: relid,
        openid: relid,
        ringbuffer_gpadlhandle: gpadl,
        target_vp: vp,
        downstream_ringbuffer_pageoffset: split,
        userdata: [0; MAX_USER_DEFINED_BYTES],
    }
    .as_bytes()
    .to_vec()
}

/// A message that is a header and a relid (CLOSECHANNEL, RELID_RELEASED).
pub fn relid_message(t: ChannelMessageType, relid: u32) -> Vec<u8> {
    CloseChannel {
        header: ChannelMessageHeader::new(t),
        child_relid: relid,
    }
    .as_bytes()
    .to_vec()
}

/// GPADL_TEARDOWN.
pub fn teardown(relid: u32, gpadl: u32) -> Vec<u8> {
    GpadlTeardown {
        header: ChannelMessageHeader::new(ChannelMessageType::GPADL_TEARDOWN),
        child_relid: relid,
        gpadl,
    }
    .as_bytes()
    .to_vec()
}

/// MODIFYCHANNEL.
pub fn modify(relid: u32, vp: u32) -> Vec<u8> {
    ModifyChannel {
        header: ChannelMessageHeader::new(ChannelMessageType::MODIFY_CHANNEL),
        child_relid: relid,
        target_vp: vp,
    }
    .as_bytes()
    .to_vec()
}
