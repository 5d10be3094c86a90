//! The Hyper-V SynIC on KVM, for any VMM: everything between the SynIC model (`synic`) and a
//! VMM's own vCPU loop, memory manager and interrupt routing.
//!
//! It works at the value level: it never owns a `VcpuFd` or the `KVM_RUN` loop. The VMM's loop
//! calls it from a few match arms and gets plain answers (inject #GP, these registers, nothing).
//!
//! * [`Capabilities::probe`] and [`Capabilities::choose_mode`]: one probe, one mode decision
//!   ([`SynicMode::Kernel`]: KVM's in-kernel SynIC; [`SynicMode::Userspace`]: every Hyper-V MSR
//!   exits and the library owns the semantics), errors naming the missing capability.
//! * [`setup_vm`], [`setup_vcpu`], [`cpuid`]: MSR exits and the filter, SYNIC2 per vCPU, the
//!   Hyper-V CPUID leaves built from what is wired.
//! * [`VmSynicBuilder`] -> [`VmSynic`]: SINT routes (on its own table, the VMM's, or a GSI range
//!   the VMM's routing owner merges: [`VmSynicBuilder::delegate_routing`]), the partition, the
//!   timer thread, connections (channels, eventfds through
//!   `KVM_HYPERV_EVENTFD`), pause/save/resume and restore.
//! * [`VcpuSynic`]: one vCPU's exits: MSRs, the hypercall trap, `KVM_EXIT_HYPERV`, and the
//!   capture of KVM's registers for a save.
//! * [`testdev`]: QEMU's hyperv-testdev protocol.
//!
//! Generic over [`vm_memory::GuestAddressSpace`], so a VMM with memory hotplug passes its
//! `GuestMemoryAtomic`. `docs/embedding.md` and `examples/embed.rs` show a complete VMM.
//!
//! ```
//! use std::sync::Arc;
//! use kvm_ioctls::Kvm;
//! use synic::{HvMessage, MessageType, Posted, VpIndex};
//! use synic_kvm::{cpuid, Capabilities, HvFeatures, ModeRequest, VmSynicBuilder};
//! use synic_msr::index::{SCONTROL, SIMP, SINT0};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # if !synic::testing::kvm_available("synic-kvm's crate example") { return Ok(()); }
//! let kvm = Kvm::new()?;
//! let vm = Arc::new(kvm.create_vm()?);
//! vm.create_irq_chip()?;
//! let mode = Capabilities::probe(&kvm, &vm).choose_mode(ModeRequest::Auto)?;
//! synic_kvm::setup_vm(&vm, mode)?;
//! let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?);
//! // (A VMM registers the memory with KVM here.)
//! let vcpu = vm.create_vcpu(0)?;
//! let mut table = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
//! cpuid::apply(&mut table, &cpuid::hyperv_leaves(HvFeatures::SYNIC, mode, 1))?;
//! vcpu.set_cpuid2(&table)?;
//! synic_kvm::setup_vcpu(&vcpu, mode)?;
//! let synic = VmSynicBuilder::new(mode, 1).build(Arc::clone(&vm), Arc::clone(&memory))?;
//! let handler = synic.vcpu(0)?; // for vCPU 0's thread: handle_rdmsr(exit), ...
//! if mode == synic_kvm::SynicMode::Userspace {
//!     // The guest's MSR writes reach the handler as exits; here, by hand.
//!     handler.wrmsr(SCONTROL, 1)?;
//!     handler.wrmsr(SIMP, 0x5000 | 1)?;
//!     handler.wrmsr(SINT0 + 2, 0x40)?;
//!     let msg = HvMessage::new(MessageType(1), 0, b"hello")?;
//!     assert_eq!(synic.partition().post_message(VpIndex(0), 2u32, msg), Ok(Posted::Delivered));
//!     let slot_type: u32 = memory.read_obj(GuestAddress(0x5000 + 2 * 256))?;
//!     assert_eq!(slot_type, 1);
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod clock;
mod connections;
pub mod cpuid;
mod error;
mod eventfd;
pub mod hypercall;
mod kernel_state;
mod kvmclock;
mod probe;
mod routes;
mod setup;
mod stimer_hook;
pub mod testdev;
mod timers;
mod vcpu;
mod vm;

pub use clock::{host_clocksource, host_tsc, GuestTsc, TscReferenceClock, TscUnusable};
pub use connections::{GuestEvent, GuestMessage, HostEventConnection, HostMessageConnection};
pub use cpuid::HvFeatures;
pub use error::{Error, Result};
pub use eventfd::{hyperv_eventfd, EventFdConnection};
pub use kernel_state::{KernelSynicState, KERNEL_MSRS};
pub use kvmclock::KvmClock;
pub use probe::{open_kvm, Capabilities, ModeRequest, SynicMode};
pub use setup::{setup_vcpu, setup_vm, HV_FILTER_COUNT, HV_FILTER_LAST, STIMER_FILTER_COUNT};
pub use stimer_hook::{NoStimers, StimerHook, TimerSource};
pub use synic::{MsrError, SynicExit};
pub use timers::{TimerThread, TimerThreadStats};
pub use vcpu::{HypervExit, Trap, VcpuSynic};
pub use vm::{Routing, SynicRoutingTable, SynicState, SynicStats, VmSynic, VmSynicBuilder};
