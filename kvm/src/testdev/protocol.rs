//! The protocol of QEMU's hyperv-testdev (port 0x3000 in QEMU): one 32-bit write
//! `conn_id << 24 | cmd << 16 | vp_index << 8 | sint`, decoded into a [`TestDevCommand`].

use synic_msr::SintIndex;

/// One decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestDevCommand {
    /// cmd 1: create a SINT route to `vp_index`/`sint`.
    SintRouteCreate {
        /// Target VP.
        vp_index: u32,
        /// Target SINT.
        sint: SintIndex,
    },
    /// cmd 2: destroy that SINT route.
    SintRouteDestroy {
        /// Target VP.
        vp_index: u32,
        /// Target SINT.
        sint: SintIndex,
    },
    /// cmd 3: raise the SINT through its route.
    SintRouteSet {
        /// Target VP.
        vp_index: u32,
        /// Target SINT.
        sint: SintIndex,
    },
    /// cmd 4: create message connection `conn_id`; every message posted to it is posted back
    /// to `vp_index`/`sint`.
    MsgConnCreate {
        /// Connection id.
        conn_id: u32,
        /// Target VP.
        vp_index: u32,
        /// Target SINT.
        sint: SintIndex,
    },
    /// cmd 5: destroy message connection `conn_id`.
    MsgConnDestroy {
        /// Connection id.
        conn_id: u32,
    },
    /// cmd 6: create event connection `conn_id`; a signal sets event flag `conn_id` of
    /// `vp_index`/`sint`.
    EvtConnCreate {
        /// Connection id, also the flag number.
        conn_id: u32,
        /// Target VP.
        vp_index: u32,
        /// Target SINT.
        sint: SintIndex,
    },
    /// cmd 7: destroy event connection `conn_id`.
    EvtConnDestroy {
        /// Connection id.
        conn_id: u32,
    },
}

/// Why a write was not a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TestDevError {
    /// The access was not 4 bytes wide.
    #[error("hyperv-testdev takes 32-bit writes, got {0} bytes")]
    Width(usize),
    /// Unknown command number.
    #[error("unknown hyperv-testdev command {0}")]
    UnknownCommand(u8),
    /// SINT number above 15.
    #[error("SINT {0} is not 0..=15")]
    BadSint(u8),
}

impl TestDevCommand {
    /// Decodes one 32-bit write.
    pub fn decode(value: u32) -> Result<TestDevCommand, TestDevError> {
        let [sint, vp, cmd, conn] = value.to_le_bytes();
        let vp_index = u32::from(vp);
        let conn_id = u32::from(conn);
        let sint = || SintIndex::new(u32::from(sint)).ok_or(TestDevError::BadSint(sint));
        Ok(match cmd {
            1 => Self::SintRouteCreate {
                vp_index,
                sint: sint()?,
            },
            2 => Self::SintRouteDestroy {
                vp_index,
                sint: sint()?,
            },
            3 => Self::SintRouteSet {
                vp_index,
                sint: sint()?,
            },
            4 => Self::MsgConnCreate {
                conn_id,
                vp_index,
                sint: sint()?,
            },
            5 => Self::MsgConnDestroy { conn_id },
            6 => Self::EvtConnCreate {
                conn_id,
                vp_index,
                sint: sint()?,
            },
            7 => Self::EvtConnDestroy { conn_id },
            other => return Err(TestDevError::UnknownCommand(other)),
        })
    }

    /// The 32-bit write that encodes this command (the inverse of [`TestDevCommand::decode`]
    /// for ids below 256).
    pub fn encode(&self) -> u32 {
        let pack = |conn: u32, cmd: u32, vp: u32, sint: SintIndex| {
            (conn & 0xFF) << 24 | cmd << 16 | (vp & 0xFF) << 8 | u32::from(sint.get())
        };
        let s0 = SintIndex::ALL[0];
        match *self {
            Self::SintRouteCreate { vp_index, sint } => pack(0, 1, vp_index, sint),
            Self::SintRouteDestroy { vp_index, sint } => pack(0, 2, vp_index, sint),
            Self::SintRouteSet { vp_index, sint } => pack(0, 3, vp_index, sint),
            Self::MsgConnCreate {
                conn_id,
                vp_index,
                sint,
            } => pack(conn_id, 4, vp_index, sint),
            Self::MsgConnDestroy { conn_id } => pack(conn_id, 5, 0, s0),
            Self::EvtConnCreate {
                conn_id,
                vp_index,
                sint,
            } => pack(conn_id, 6, vp_index, sint),
            Self::EvtConnDestroy { conn_id } => pack(conn_id, 7, 0, s0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u32) -> SintIndex {
        SintIndex::new(n).unwrap()
    }

    #[test]
    fn decodes_every_command_like_qemu() {
        use TestDevCommand::*;
        let cases = [
            (
                0x0001_0102,
                SintRouteCreate {
                    vp_index: 1,
                    sint: s(2),
                },
            ),
            (
                0x0002_0003,
                SintRouteDestroy {
                    vp_index: 0,
                    sint: s(3),
                },
            ),
            (
                0x0003_020F,
                SintRouteSet {
                    vp_index: 2,
                    sint: s(15),
                },
            ),
            (
                0x2A04_0105,
                MsgConnCreate {
                    conn_id: 42,
                    vp_index: 1,
                    sint: s(5),
                },
            ),
            (0x2A05_0000, MsgConnDestroy { conn_id: 42 }),
            (
                0x0706_0306,
                EvtConnCreate {
                    conn_id: 7,
                    vp_index: 3,
                    sint: s(6),
                },
            ),
            (0xFF07_0000, EvtConnDestroy { conn_id: 255 }),
        ];
        for (raw, cmd) in cases {
            assert_eq!(TestDevCommand::decode(raw), Ok(cmd), "{raw:#x}");
            assert_eq!(
                cmd.encode(),
                raw & if matches!(cmd, MsgConnDestroy { .. } | EvtConnDestroy { .. }) {
                    0xFFFF_0000
                } else {
                    !0
                }
            );
        }
    }

    #[test]
    fn destroy_commands_ignore_vp_and_sint_bytes() {
        // QEMU's destroy paths look only at the connection id.
        assert_eq!(
            TestDevCommand::decode(0x0905_FFFF),
            Ok(TestDevCommand::MsgConnDestroy { conn_id: 9 })
        );
    }

    #[test]
    fn bad_commands_are_typed_errors() {
        assert_eq!(
            TestDevCommand::decode(0x0000_0000),
            Err(TestDevError::UnknownCommand(0))
        );
        assert_eq!(
            TestDevCommand::decode(0x0008_0000),
            Err(TestDevError::UnknownCommand(8))
        );
        assert_eq!(
            TestDevCommand::decode(0x0001_0010),
            Err(TestDevError::BadSint(16))
        );
        assert_eq!(
            TestDevCommand::decode(0x0004_00FF),
            Err(TestDevError::BadSint(255))
        );
    }
}
