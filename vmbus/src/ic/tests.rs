//! ICMSG framework and service messages: the host's requests answered by Linux's algorithms
//! (the simulated guest's), and hostile answers.

use zerocopy::FromZeros;

use super::*;
use crate::sim::guest::linux_negotiate;

const V3: Negotiated = Negotiated {
    framework: IcVersion::new(3, 0),
    service: IcVersion::new(3, 0),
};

/// The guest's answer, made in place as hv_utils makes it.
fn answered(mut req: Vec<u8>, f: impl FnOnce(&mut IcMsgHeader, &mut [u8])) -> Vec<u8> {
    let (mut h, _) = IcMsgHeader::read_from_prefix(&req[8..]).unwrap();
    f(&mut h, &mut req[ICMSG_HDR..]);
    h.icflags = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE;
    req[8..ICMSG_HDR].copy_from_slice(h.as_bytes());
    req
}

#[test]
fn negotiation_with_linux_picks_its_newest_common_versions() {
    for (kind, service) in [
        (IcKind::Heartbeat, IcVersion::new(3, 0)),
        (IcKind::Shutdown, IcVersion::new(3, 2)),
        (IcKind::TimeSync, IcVersion::new(4, 0)),
        (IcKind::Kvp, IcVersion::new(4, 0)),
    ] {
        let req = negotiate_request(kind, 1);
        let (h, _) = IcMsgHeader::read_from_prefix(&req[8..]).unwrap();
        assert_eq!(({ h.icmsgtype }, h.icflags), (ICMSGTYPE_NEGOTIATE, 3));
        let n = FRAMEWORK_VERSIONS.len() + kind.versions().len();
        assert_eq!(req.len(), ICMSG_HDR + 8 + 4 * n);
        let resp = answered(req, |_, d| {
            linux_negotiate(kind, d).expect("a match");
        });
        assert_eq!(
            negotiate_response(kind, &resp),
            Ok(Negotiated {
                framework: IcVersion::new(3, 0),
                service
            }),
            "{kind}"
        );
    }
}

#[test]
fn hostile_negotiation_answers_are_refused() {
    let req = negotiate_request(IcKind::Heartbeat, 1);
    // No common version: counts 0.
    let none = answered(req.clone(), |_, d| {
        d[..4].fill(0);
    });
    assert_eq!(
        negotiate_response(IcKind::Heartbeat, &none),
        Err(IcError::NoCommonVersion {
            framework: 0,
            service: 0
        })
    );
    // A version the host did not offer.
    let odd = answered(req.clone(), |_, d| {
        d[0..4].copy_from_slice(&[1, 0, 1, 0]);
        d[8..16].copy_from_slice(&[3, 0, 0, 0, 9, 0, 9, 0]);
    });
    assert!(matches!(
        negotiate_response(IcKind::Heartbeat, &odd),
        Err(IcError::NotOffered { .. })
    ));
    // Truncated, not a response, another message type.
    assert!(matches!(
        negotiate_response(IcKind::Heartbeat, &req[..20]),
        Err(IcError::Short { .. })
    ));
    assert!(matches!(
        negotiate_response(IcKind::Heartbeat, &req),
        Err(IcError::NotAResponse { .. })
    ));
    let mut hb = heartbeat_request(V3, 1, 1);
    hb[8 + 17] = ICMSGHDRFLAG_RESPONSE;
    assert!(matches!(
        negotiate_response(IcKind::Heartbeat, &hb),
        Err(IcError::NotAResponse { .. })
    ));
    let short = answered(req, |_, _| {});
    assert!(matches!(
        negotiate_response(IcKind::Heartbeat, &short[..ICMSG_HDR + 10]),
        Err(IcError::NoCommonVersion { .. }) | Err(IcError::Short { .. })
    ));
}

#[test]
fn heartbeat_answer_carries_the_sequence_plus_one() {
    let req = heartbeat_request(V3, 7, 41);
    assert_eq!(req.len(), ICMSG_HDR + 40);
    let ok = answered(req.clone(), |_, d| {
        d[..8].copy_from_slice(&42u64.to_le_bytes())
    });
    assert_eq!(heartbeat_response(&ok, 41), Ok(()));
    let same = answered(req.clone(), |_, _| {});
    assert_eq!(
        heartbeat_response(&same, 41),
        Err(IcError::Sequence { got: 41, want: 42 })
    );
    let failed = answered(req, |h, _| h.status = HV_E_FAIL);
    assert_eq!(
        heartbeat_response(&failed, 41),
        Err(IcError::Status(HV_E_FAIL))
    );
    assert!(heartbeat_response(&ok[..ICMSG_HDR + 4], 41).is_err());
}

#[test]
fn shutdown_and_timesync_layouts() {
    let req = shutdown_request(V3, 1, "bye");
    assert_eq!(
        req.len(),
        ICMSG_HDR + 2060,
        "Linux checks for the whole struct"
    );
    let (d, _) = ShutdownData::read_from_prefix(&req[ICMSG_HDR..]).unwrap();
    assert_eq!(
        ({ d.flags }, { d.reason_code }),
        (0, SHTDN_REASON_FLAG_PLANNED)
    );
    assert_eq!(&d.display_message[..8], &[b'b', 0, b'y', 0, b'e', 0, 0, 0]);
    assert_eq!(shutdown_response(&answered(req.clone(), |_, _| {})), Ok(()));
    assert_eq!(
        shutdown_response(&answered(req, |h, _| h.status = HV_E_FAIL)),
        Err(IcError::Status(HV_E_FAIL))
    );
    let v4 = Negotiated {
        framework: IcVersion::new(3, 0),
        service: IcVersion::new(4, 0),
    };
    let t = timesync_request(v4, 1, 0x1111, 0x2222, ICTIMESYNCFLAG_SAMPLE);
    assert_eq!(t.len(), ICMSG_HDR + 22);
    assert_eq!(&t[ICMSG_HDR..ICMSG_HDR + 8], &0x1111u64.to_le_bytes());
    assert_eq!(&t[ICMSG_HDR + 8..ICMSG_HDR + 16], &0x2222u64.to_le_bytes());
    assert_eq!(t[ICMSG_HDR + 16], ICTIMESYNCFLAG_SAMPLE);
    let t3 = timesync_request(V3, 1, 0x1111, 0x2222, ICTIMESYNCFLAG_SYNC);
    assert_eq!(t3.len(), ICMSG_HDR + 25);
    assert_eq!(t3[ICMSG_HDR + 24], ICTIMESYNCFLAG_SYNC);
    assert_eq!(timesync_response(&answered(t3, |_, _| {})), Ok(()));
}

#[test]
fn kvp_requests_and_answers() {
    let v = V3;
    let e = kvp_request(v, 1, KvpOperation::Enumerate, KvpPool::Auto, 5, "", "");
    assert_eq!(e.len(), ICMSG_HDR + 2580);
    assert_eq!(&e[ICMSG_HDR..ICMSG_HDR + 2], &[3, 2]);
    assert_eq!(&e[ICMSG_HDR + 4..ICMSG_HDR + 8], &5u32.to_le_bytes());
    // The guest's answer: key and value in UTF-16 with their sizes.
    let answer = answered(e.clone(), |_, d| {
        let item = &mut d[8..];
        let mut kv = KvpValue::new_zeroed();
        kv.key_size = utf16_into("FullyQualifiedDomainName", &mut kv.key) as u32;
        kv.value_size = utf16_into("guest-1234", &mut kv.value) as u32;
        item[..size_of::<KvpValue>()].copy_from_slice(kv.as_bytes());
    });
    assert_eq!(
        kvp_response(&answer, KvpOperation::Enumerate),
        Ok(Some((
            "FullyQualifiedDomainName".into(),
            "guest-1234".into()
        )))
    );
    let done = answered(e.clone(), |h, _| h.status = HV_S_CONT);
    assert_eq!(kvp_response(&done, KvpOperation::Enumerate), Ok(None));
    let failed = answered(e, |h, _| h.status = HV_E_FAIL);
    assert_eq!(
        kvp_response(&failed, KvpOperation::Enumerate),
        Err(IcError::Status(HV_E_FAIL))
    );
    // Get: the key at the start of the body.
    let g = kvp_request(v, 1, KvpOperation::Get, KvpPool::Guest, 0, "k", "");
    assert_eq!(&g[ICMSG_HDR..ICMSG_HDR + 2], &[0, 1]);
    let (kv, _) = KvpValue::read_from_prefix(&g[ICMSG_HDR + 4..]).unwrap();
    assert_eq!(({ kv.key_size }, &kv.key[..4]), (4, &[b'k', 0, 0, 0][..]));
    // A short answer.
    assert!(kvp_response(&g[..ICMSG_HDR + 100], KvpOperation::Get).is_err());
}

#[test]
fn utf16_fields_are_bounded_both_ways() {
    let mut field = [0u8; 8];
    // Three units and a NUL fit; the rest is cut.
    assert_eq!(utf16_into("abcdef", &mut field), 8);
    assert_eq!(utf16_from(&field, 8), "abc");
    // A size larger than the field, an odd size, no NUL: bounded by the field.
    let full = [b'x', 0, b'y', 0];
    assert_eq!(utf16_from(&full, u32::MAX), "xy");
    assert_eq!(utf16_from(&full, 3), "x");
    // An unpaired surrogate becomes U+FFFD.
    assert_eq!(utf16_from(&[0x00, 0xD8, b'a', 0], 4), "\u{FFFD}a");
    assert_eq!(
        IcKind::from_interface(IcKind::Kvp.interface()),
        Some(IcKind::Kvp)
    );
    assert_eq!(
        IcKind::Shutdown.interface().to_string(),
        "0e0b6031-5213-4934-818b-38d90ced39db"
    );
}
