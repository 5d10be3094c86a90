//! Runs operations against the crate and the model side by side.

use crate::{Gp, KvmSynic, Msr, Origin, PartitionRegisters, Profile, Scope, VpRegisters};

use super::model::{timer_index, Act, Model, Via, WriteResult};
use super::op::{Op, Setup, KNOWN};

/// The crate's registers (one VP and its partition) next to the [`Model`]; every
/// [`apply`](Self::apply) compares the answers and then every register as the guest and the
/// host read it.
#[derive(Debug)]
pub struct Checker {
    model: Model,
    vp: VpRegisters,
    partition: PartitionRegisters,
    clock: u64,
}

impl Checker {
    /// Both sides at power-on for `setup`.
    pub fn new(setup: &Setup) -> Self {
        Self::with_setups(setup, setup)
    }

    /// The crate at power-on for `setup`, the model for `model_setup`: two different setups
    /// make a checker that must report a divergence (a test that the oracle can fail).
    pub fn with_setups(setup: &Setup, model_setup: &Setup) -> Self {
        let profile = if setup.kvm {
            Profile::Kvm
        } else {
            Profile::Tlfs
        };
        let mut vp =
            VpRegisters::new(profile, setup.vp_index).with_phys_addr_bits(setup.phys_addr_bits);
        match setup.act {
            Act::Off => {}
            Act::V1 => vp.activate(KvmSynic::V1),
            Act::V2 => vp.activate(KvmSynic::V2),
        }
        let partition = PartitionRegisters::new(profile).with_phys_addr_bits(setup.phys_addr_bits);
        Self {
            model: Model::new(model_setup),
            vp,
            partition,
            clock: setup.clock,
        }
    }

    /// The model's state.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Applies `op` to both sides. `Err` describes the first disagreement: a different answer
    /// to the access, or a register that reads differently afterwards.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Read { via, index, origin } => {
                let want = self.model.read(via, index, origin);
                let got = self.read(via, index, origin);
                if got != want {
                    return Err(format!("{op:?}: got {got:?}, model says {want:?}"));
                }
            }
            Op::Write {
                via,
                index,
                value,
                origin,
            } => {
                let want = self.model.write(via, index, value, origin);
                let got = self.write(via, index, value, origin);
                if got != want {
                    return Err(format!("{op:?}: got {got:?}, model says {want:?}"));
                }
            }
            Op::Activate(v) => {
                self.model.activate(match v {
                    KvmSynic::V1 => Act::V1,
                    KvmSynic::V2 => Act::V2,
                });
                self.vp.activate(v);
            }
            Op::Reset => {
                self.model.power_on();
                self.vp.reset();
                self.partition.reset();
            }
            Op::SetStimerEnabled { timer, enabled } => {
                self.model.set_stimer_enabled(timer, enabled);
                self.vp.set_stimer_enabled(timer_index(timer), enabled);
            }
            Op::SetClock(c) => {
                self.model.set_clock(c);
                self.clock = c;
            }
        }
        self.check_registers()
            .map_err(|e| format!("after {op:?}: {e}"))
    }

    /// Guest and host reads of every modelled register, and the VP's identity.
    fn check_registers(&self) -> Result<(), String> {
        for index in KNOWN {
            for origin in [Origin::Guest, Origin::Host] {
                let got = self.read(Via::Dispatch, index, origin);
                let want = self.model.read(Via::Dispatch, index, origin);
                if got != want {
                    return Err(format!(
                        "read of {index:#x} by {origin:?}: got {got:?}, model says {want:?}"
                    ));
                }
            }
        }
        if self.vp.active() != self.model.open() {
            return Err(format!("active() = {}", self.vp.active()));
        }
        let act = match self.vp.kvm_synic() {
            None => Act::Off,
            Some(KvmSynic::V1) => Act::V1,
            Some(KvmSynic::V2) => Act::V2,
        };
        if act != self.model.act() {
            return Err(format!("activation {act:?}, model {:?}", self.model.act()));
        }
        if u64::from(self.vp.vp_index()) != self.model.vp_index() {
            return Err(format!("vp_index() = {}", self.vp.vp_index()));
        }
        Ok(())
    }

    fn to_partition(via: Via, index: u32) -> bool {
        match via {
            Via::Dispatch => Msr::from_index(index).map(Msr::scope) == Some(Scope::Partition),
            Via::Vp => false,
            Via::Partition => true,
        }
    }

    fn read(&self, via: Via, index: u32, origin: Origin) -> Result<u64, Gp> {
        if Self::to_partition(via, index) {
            self.partition.rdmsr(index, origin, self.clock)
        } else {
            self.vp.rdmsr(index, origin)
        }
    }

    fn write(&mut self, via: Via, index: u32, value: u64, origin: Origin) -> WriteResult {
        let out = if Self::to_partition(via, index) {
            self.partition.wrmsr(index, value, origin)
        } else {
            self.vp.wrmsr(index, value, origin)
        };
        out.map(|o| (o.msr, o.old, o.new, o.change))
    }
}
