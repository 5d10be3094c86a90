//! GPADL_HEADER, GPADL_BODY and GPADL_TEARDOWN.

use zerocopy::IntoBytes;

use super::{
    parse, ChannelHooks, ChannelState, Connection, ControlPlane, GpadlEntry, Reply, Step,
    VmbusError, MAX_GPADLS, MAX_GPADL_TOTAL_PAGES, STATUS_UNSUCCESSFUL,
};
use crate::gpadl::GpadlBuilder;
use crate::protocol::{
    ChannelMessageHeader, ChannelMessageType, GpadlBody, GpadlCreated, GpadlHeader, GpadlTeardown,
    GpadlTorndown,
};

impl ControlPlane {
    pub(super) fn gpadl_created(c: Connection, relid: u32, gpadl: u32, status: u32) -> Reply {
        let msg = GpadlCreated {
            header: ChannelMessageHeader::new(ChannelMessageType::GPADL_CREATED),
            child_relid: relid,
            gpadl,
            creation_status: status,
        };
        Reply {
            vp: c.vp,
            sint: c.sint,
            payload: msg.as_bytes().to_vec(),
            summary: if status == 0 {
                format!("GPADL_CREATED {gpadl:#x} for channel {relid}")
            } else {
                format!("GPADL_CREATED {gpadl:#x} for channel {relid}: refused ({status:#x})")
            },
        }
    }

    /// A finished GPADL: checked against the host's pages, then kept.
    pub(super) fn complete_gpadl(
        &mut self,
        c: Connection,
        builder: GpadlBuilder,
        hooks: &mut dyn ChannelHooks,
    ) -> Result<Reply, (VmbusError, Reply)> {
        let (id, relid) = (builder.id(), builder.relid());
        let fail = |e| (e, Self::gpadl_created(c, relid, id, STATUS_UNSUCCESSFUL));
        let g = builder
            .finish()
            .map_err(|error| fail(VmbusError::Gpadl { gpadl: id, error }))?;
        hooks
            .check_pages(&mut g.pfns())
            .map_err(|why| fail(VmbusError::GpadlPages { gpadl: id, why }))?;
        self.gpadls.insert(id, GpadlEntry::Created(g));
        Ok(Self::gpadl_created(c, relid, id, 0))
    }

    pub(super) fn gpadl_header(
        &mut self,
        c: Connection,
        payload: &[u8],
        hooks: &mut dyn ChannelHooks,
    ) -> Step {
        let kind = ChannelMessageType::GPADL_HEADER;
        let head: GpadlHeader =
            parse(kind, payload).map_err(|e| ("GPADL_HEADER".into(), e, vec![]))?;
        let (relid, id) = (head.child_relid, head.gpadl);
        let what = format!("GPADL_HEADER {id:#x} for channel {relid}");
        let fail = |e| {
            Err((
                what.clone(),
                e,
                vec![Self::gpadl_created(c, relid, id, STATUS_UNSUCCESSFUL)],
            ))
        };
        match self.channels.get(&relid).map(|ch| ch.state) {
            None => return fail(VmbusError::NoSuchChannel(relid)),
            Some(s @ (ChannelState::Unoffered | ChannelState::Rescinded)) => {
                return fail(VmbusError::ChannelState {
                    relid,
                    state: s.name(),
                })
            }
            Some(_) => {}
        }
        if self.gpadls.contains_key(&id) {
            // Not answered: a GPADL_CREATED failure would be taken for the existing GPADL's.
            return Err((what, VmbusError::GpadlExists(id), vec![]));
        }
        let builder = match GpadlBuilder::from_header(payload) {
            Ok((_, b)) => b,
            Err(error) => return fail(VmbusError::Gpadl { gpadl: id, error }),
        };
        let (count, pages) = self.gpadl_usage();
        if count >= MAX_GPADLS {
            return fail(VmbusError::GpadlBound {
                gpadl: id,
                what: format!("{MAX_GPADLS} GPADLs exist already"),
            });
        }
        if pages + builder.announced_pages() > MAX_GPADL_TOTAL_PAGES {
            return fail(VmbusError::GpadlBound {
                gpadl: id,
                what: format!(
                    "{} more pages on top of {pages} exceed the {MAX_GPADL_TOTAL_PAGES}-page bound",
                    builder.announced_pages()
                ),
            });
        }
        let what = format!("{what} ({} pages)", builder.announced_pages());
        if !builder.is_complete() {
            self.gpadls.insert(id, GpadlEntry::Building(builder));
            return Ok((format!("{what}, bodies follow"), vec![]));
        }
        match self.complete_gpadl(c, builder, hooks) {
            Ok(r) => Ok((what, vec![r])),
            Err((e, r)) => Err((what, e, vec![r])),
        }
    }

    pub(super) fn gpadl_body(
        &mut self,
        c: Connection,
        payload: &[u8],
        hooks: &mut dyn ChannelHooks,
    ) -> Step {
        let body: GpadlBody = parse(ChannelMessageType::GPADL_BODY, payload)
            .map_err(|e| ("GPADL_BODY".into(), e, vec![]))?;
        let id = body.gpadl;
        let what = format!("GPADL_BODY for {id:#x}");
        match self.gpadls.remove(&id) {
            None => Err((
                what,
                VmbusError::NoSuchGpadl {
                    relid: 0,
                    gpadl: id,
                },
                vec![],
            )),
            Some(created @ GpadlEntry::Created(_)) => {
                let relid = created.relid();
                self.gpadls.insert(id, created);
                Err((
                    what,
                    VmbusError::ChannelState {
                        relid,
                        state: "holding this GPADL complete already",
                    },
                    vec![],
                ))
            }
            Some(GpadlEntry::Building(mut b)) => {
                let relid = b.relid();
                if let Err(error) = b.add_body(payload) {
                    // The partial GPADL is dropped; the guest hears the failure.
                    return Err((
                        what,
                        VmbusError::Gpadl { gpadl: id, error },
                        vec![Self::gpadl_created(c, relid, id, STATUS_UNSUCCESSFUL)],
                    ));
                }
                if !b.is_complete() {
                    self.gpadls.insert(id, GpadlEntry::Building(b));
                    return Ok((what, vec![]));
                }
                match self.complete_gpadl(c, b, hooks) {
                    Ok(r) => Ok((format!("{what} (complete)"), vec![r])),
                    Err((e, r)) => Err((what, e, vec![r])),
                }
            }
        }
    }

    /// The open channel whose rings live in GPADL `id`, if any.
    pub(super) fn ring_user(&self, id: u32) -> Option<u32> {
        self.channels
            .iter()
            .find_map(|(&relid, ch)| match ch.state {
                ChannelState::Open { gpadl, .. } if gpadl == id => Some(relid),
                _ => None,
            })
    }

    pub(super) fn gpadl_teardown(
        &mut self,
        c: Connection,
        payload: &[u8],
        hooks: &mut dyn ChannelHooks,
    ) -> Step {
        let t: GpadlTeardown = parse(ChannelMessageType::GPADL_TEARDOWN, payload)
            .map_err(|e| ("GPADL_TEARDOWN".into(), e, vec![]))?;
        let (relid, id) = (t.child_relid, t.gpadl);
        let what = format!("GPADL_TEARDOWN {id:#x} of channel {relid}");
        if self.gpadls.get(&id).map(GpadlEntry::relid) != Some(relid) {
            return Err((what, VmbusError::NoSuchGpadl { relid, gpadl: id }, vec![]));
        }
        let mut what = what;
        if let Some(user) = self.ring_user(id) {
            // The guest takes back pages the host is still using as rings: stop using them
            // first. The channel stays open for the guest until it closes it.
            self.host_close(user, "its ring GPADL was torn down while open", hooks);
            what.push_str(" (the channel's rings, still open: closed by the host)");
        }
        self.gpadls.remove(&id);
        let msg = GpadlTorndown {
            header: ChannelMessageHeader::new(ChannelMessageType::GPADL_TORNDOWN),
            gpadl: id,
        };
        Ok((
            what,
            vec![Reply {
                vp: c.vp,
                sint: c.sint,
                payload: msg.as_bytes().to_vec(),
                summary: format!("GPADL_TORNDOWN {id:#x}"),
            }],
        ))
    }
}
