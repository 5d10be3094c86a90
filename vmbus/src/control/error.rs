//! Why the control plane refused a guest message.

use crate::gpadl::GpadlError;
use crate::protocol::{ChannelMessageType, Version};

use super::MAX_CHANNELS;

/// Why a guest message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmbusError {
    /// The payload is shorter than its type's layout.
    #[error("{kind} of {len} bytes, needs {need}")]
    Short {
        /// The message type.
        kind: ChannelMessageType,
        /// Its length.
        len: usize,
        /// The layout's length.
        need: usize,
    },
    /// A type this host does not take from a guest.
    #[error("{0} is not handled by this host")]
    Unhandled(ChannelMessageType),
    /// A message that needs a connection arrived before INITIATE_CONTACT succeeded.
    #[error("{0} before the connection was established")]
    NotConnected(ChannelMessageType),
    /// A message on the wrong connection id for the negotiated version.
    #[error("{kind} on connection {got}; this connection takes messages on {want}")]
    WrongConnection {
        /// The message type.
        kind: ChannelMessageType,
        /// Where it arrived.
        got: u32,
        /// Where it should have.
        want: u32,
    },
    /// A VP that does not exist.
    #[error("VP {0} does not exist")]
    NoSuchVp(u32),
    /// INITIATE_CONTACT names a SINT above 15.
    #[error("INITIATE_CONTACT names SINT {0}")]
    BadSint(u8),
    /// No channel has this relid.
    #[error("no channel has relid {0}")]
    NoSuchChannel(u32),
    /// The channel is not in a state that allows the message.
    #[error("channel {relid} is {state}")]
    ChannelState {
        /// The channel.
        relid: u32,
        /// Its state.
        state: &'static str,
    },
    /// No GPADL has this id (for this channel).
    #[error("no GPADL {gpadl:#x} for channel {relid}")]
    NoSuchGpadl {
        /// The channel.
        relid: u32,
        /// The GPADL id.
        gpadl: u32,
    },
    /// A GPADL id already in use.
    #[error("GPADL {0:#x} exists already")]
    GpadlExists(u32),
    /// A GPADL message the parser refused.
    #[error("GPADL {gpadl:#x}: {error}")]
    Gpadl {
        /// The GPADL id.
        gpadl: u32,
        /// What was wrong.
        error: GpadlError,
    },
    /// A GPADL page the host refuses (not RAM, a SynIC page).
    #[error("GPADL {gpadl:#x}: {why}")]
    GpadlPages {
        /// The GPADL id.
        gpadl: u32,
        /// Why.
        why: String,
    },
    /// Too many GPADLs or GPADL pages.
    #[error("GPADL {gpadl:#x} refused: {what}")]
    GpadlBound {
        /// The GPADL id.
        gpadl: u32,
        /// Which bound.
        what: String,
    },
    /// The ring GPADL or its split cannot hold two rings.
    #[error("channel {relid}: GPADL {gpadl:#x} cannot hold the rings: {why}")]
    BadRing {
        /// The channel.
        relid: u32,
        /// The GPADL.
        gpadl: u32,
        /// Why.
        why: String,
    },
    /// The host could not take the channel over.
    #[error("channel {relid}: the host could not open it: {why}")]
    OpenFailed {
        /// The channel.
        relid: u32,
        /// Why.
        why: String,
    },
    /// MODIFYCHANNEL before protocol 4.1.
    #[error("MODIFYCHANNEL needs protocol 4.1, the connection speaks {0}")]
    ModifyUnsupported(Version),
    /// The host's channel table is full.
    #[error("the host offers {MAX_CHANNELS} channels already")]
    TooManyChannels,
}
