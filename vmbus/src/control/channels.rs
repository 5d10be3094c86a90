//! OPENCHANNEL, CLOSECHANNEL, RELID_RELEASED and MODIFYCHANNEL.

use synic::VpIndex;
use zerocopy::IntoBytes;

use super::{
    parse, ChannelHooks, ChannelOpen, ChannelState, Connection, ControlPlane, GpadlEntry, Reply,
    Step, VmbusError, STATUS_UNSUCCESSFUL,
};
use crate::protocol::{
    ChannelMessageHeader, ChannelMessageType, CloseChannel, ModifyChannel, ModifyChannelResponse,
    OpenChannel, OpenResult,
};

impl ControlPlane {
    pub(super) fn open_result(c: Connection, relid: u32, openid: u32, status: u32) -> Reply {
        let msg = OpenResult {
            header: ChannelMessageHeader::new(ChannelMessageType::OPEN_CHANNEL_RESULT),
            child_relid: relid,
            openid,
            status,
        };
        Reply {
            vp: c.vp,
            sint: c.sint,
            payload: msg.as_bytes().to_vec(),
            summary: if status == 0 {
                format!("OPENCHANNEL_RESULT channel {relid}: open")
            } else {
                format!("OPENCHANNEL_RESULT channel {relid}: refused ({status:#x})")
            },
        }
    }

    pub(super) fn open_channel(
        &mut self,
        c: Connection,
        payload: &[u8],
        hooks: &mut dyn ChannelHooks,
    ) -> Step {
        let m: OpenChannel = parse(ChannelMessageType::OPEN_CHANNEL, payload)
            .map_err(|e| ("OPENCHANNEL".into(), e, vec![]))?;
        let (relid, openid, id, vp, split) = (
            m.child_relid,
            m.openid,
            m.ringbuffer_gpadlhandle,
            m.target_vp,
            m.downstream_ringbuffer_pageoffset,
        );
        let what = format!(
            "OPENCHANNEL channel {relid} on GPADL {id:#x} (host-to-guest ring at page {split}), \
             target VP {vp}"
        );
        let Some(ch) = self.channels.get(&relid) else {
            return Err((what, VmbusError::NoSuchChannel(relid), vec![]));
        };
        let fail = |e| {
            Err((
                what.clone(),
                e,
                vec![Self::open_result(c, relid, openid, STATUS_UNSUCCESSFUL)],
            ))
        };
        if ch.state != ChannelState::Offered {
            return fail(VmbusError::ChannelState {
                relid,
                state: ch.state.name(),
            });
        }
        let vp = VpIndex(vp);
        if !self.vps.contains(&vp) {
            return fail(VmbusError::NoSuchVp(vp.0));
        }
        let pfns = match self.gpadls.get(&id) {
            Some(GpadlEntry::Created(g)) if g.relid == relid => {
                g.whole_pages().map(<[u64]>::to_vec)
            }
            _ => return fail(VmbusError::NoSuchGpadl { relid, gpadl: id }),
        };
        let bad_ring = |why: String| VmbusError::BadRing {
            relid,
            gpadl: id,
            why,
        };
        let Some(pfns) = pfns else {
            return fail(bad_ring("not one whole-page range".into()));
        };
        let split = split as usize;
        // Each ring needs its header page and at least one data page.
        if split < 2 || split + 2 > pfns.len() {
            return fail(bad_ring(format!(
                "a split at page {split} of {} leaves a ring without a data page",
                pfns.len()
            )));
        }
        // The SynIC pages may have moved onto the GPADL since it was created.
        if let Err(why) = hooks.check_pages(&mut pfns.iter().copied()) {
            return fail(VmbusError::GpadlPages { gpadl: id, why });
        }
        let open = ChannelOpen {
            relid,
            connection_id: Self::channel_connection_id(relid),
            interface: ch.spec.interface,
            vp,
            sint: c.sint,
            guest_to_host: pfns[..split].to_vec(),
            host_to_guest: pfns[split..].to_vec(),
        };
        if let Err(why) = hooks.open(&open) {
            return fail(VmbusError::OpenFailed { relid, why });
        }
        if let Some(ch) = self.channels.get_mut(&relid) {
            ch.state = ChannelState::Open {
                gpadl: id,
                vp,
                host_closed: false,
            };
        }
        Ok((what, vec![Self::open_result(c, relid, openid, 0)]))
    }

    pub(super) fn close_channel(&mut self, payload: &[u8], hooks: &mut dyn ChannelHooks) -> Step {
        let m: CloseChannel = parse(ChannelMessageType::CLOSE_CHANNEL, payload)
            .map_err(|e| ("CLOSECHANNEL".into(), e, vec![]))?;
        let relid = m.child_relid;
        let what = format!("CLOSECHANNEL channel {relid}");
        let Some(ch) = self.channels.get_mut(&relid) else {
            return Err((what, VmbusError::NoSuchChannel(relid), vec![]));
        };
        match ch.state {
            ChannelState::Open { host_closed, .. } => {
                ch.state = ChannelState::Offered;
                if !host_closed {
                    hooks.close(relid, "closed by the guest");
                }
                Ok((what, vec![]))
            }
            // A rescinded channel's rings were dropped at the rescind; Linux still closes it.
            ChannelState::Rescinded => Ok((format!("{what} (rescinded)"), vec![])),
            s => Err((
                what,
                VmbusError::ChannelState {
                    relid,
                    state: s.name(),
                },
                vec![],
            )),
        }
    }

    pub(super) fn relid_released(&mut self, payload: &[u8]) -> Step {
        let m: CloseChannel = parse(ChannelMessageType::RELID_RELEASED, payload)
            .map_err(|e| ("RELID_RELEASED".into(), e, vec![]))?;
        let relid = m.child_relid;
        let what = format!("RELID_RELEASED channel {relid}");
        match self.channels.get(&relid).map(|ch| ch.state) {
            None => Err((what, VmbusError::NoSuchChannel(relid), vec![])),
            Some(ChannelState::Rescinded) => {
                self.channels.remove(&relid);
                // A rescinded channel's GPADLs go with it (Linux does not tear them down).
                let before = self.gpadls.len();
                self.gpadls.retain(|_, g| g.relid() != relid);
                let dropped = before - self.gpadls.len();
                Ok((
                    format!("{what} (relid free; {dropped} GPADLs dropped)"),
                    vec![],
                ))
            }
            Some(s) => Err((
                what,
                VmbusError::ChannelState {
                    relid,
                    state: s.name(),
                },
                vec![],
            )),
        }
    }

    pub(super) fn modify_channel(
        &mut self,
        c: Connection,
        payload: &[u8],
        hooks: &mut dyn ChannelHooks,
    ) -> Step {
        let m: ModifyChannel = parse(ChannelMessageType::MODIFY_CHANNEL, payload)
            .map_err(|e| ("MODIFYCHANNEL".into(), e, vec![]))?;
        let (relid, vp) = (m.child_relid, m.target_vp);
        let what = format!("MODIFYCHANNEL channel {relid} to VP {vp}");
        let respond = |status: u32| {
            if !c.version.has_modify_channel_response() {
                return vec![];
            }
            let msg = ModifyChannelResponse {
                header: ChannelMessageHeader::new(ChannelMessageType::MODIFY_CHANNEL_RESPONSE),
                child_relid: relid,
                status,
            };
            vec![Reply {
                vp: c.vp,
                sint: c.sint,
                payload: msg.as_bytes().to_vec(),
                summary: if status == 0 {
                    format!("MODIFYCHANNEL_RESPONSE channel {relid}: done")
                } else {
                    format!("MODIFYCHANNEL_RESPONSE channel {relid}: refused ({status:#x})")
                },
            }]
        };
        if !c.version.has_modify_channel() {
            return Err((what, VmbusError::ModifyUnsupported(c.version), vec![]));
        }
        let Some(ch) = self.channels.get_mut(&relid) else {
            return Err((
                what,
                VmbusError::NoSuchChannel(relid),
                respond(STATUS_UNSUCCESSFUL),
            ));
        };
        let target = VpIndex(vp);
        let ChannelState::Open {
            vp: ref mut current,
            host_closed,
            ..
        } = ch.state
        else {
            let state = ch.state.name();
            return Err((
                what,
                VmbusError::ChannelState { relid, state },
                respond(STATUS_UNSUCCESSFUL),
            ));
        };
        if !self.vps.contains(&target) {
            return Err((what, VmbusError::NoSuchVp(vp), respond(STATUS_UNSUCCESSFUL)));
        }
        *current = target;
        if !host_closed {
            hooks.retarget(relid, target);
        }
        Ok((what, respond(0)))
    }
}
