//! A minimal KVM VMM for the SynIC library: real guests on real KVM.
//!
//! * [`Vm`] builds a VM (in-kernel irqchip, guest RAM, vCPUs with Hyper-V CPUID, MSR exits for
//!   the chosen [`SynicMode`]); [`Vm::start`] runs one thread per vCPU and returns a
//!   [`RunningVm`] that stops cleanly on debug-exit, timeout or error.
//! * Exits reach three per-vCPU hooks ([`MsrHandler`], [`HypercallHandler`],
//!   [`SynicExitHandler`], bundled in [`VcpuHandlers`]) and a shared port-I/O bus of
//!   [`PortDevice`]s ([`devices`]: COM1, isa-debug-exit, fw_cfg, the hyperv-testdev decoder,
//!   guest reports).
//! * Guests: raw 64-bit programs built with the [`guest`] toolkit, or multiboot v1 kernels
//!   ([`multiboot`]).
//! * [`synic_vm`]: the SynIC model attached — [`synic_vm::SynicVmBuilder`] builds a VM with the
//!   partition, SINT routes on the VM's one routing table, hypercall connections and the
//!   hyperv-testdev device, and gives every vCPU the model's handlers.
//! * [`demo`] (the demo users run first) and [`bench`](mod@bench) (`synic-vmm bench`).
//! * [`timers`]: the one thread that serves the synthetic timers of a userspace-mode VM.
//!
//! The memory map and port assignments are in [`layout`] and `docs/vmm.md`.

#![deny(missing_docs)]

pub mod bench;
pub mod boot;
pub mod control;
pub mod cpuid;
pub mod demo;
pub mod devices;
mod elf;
pub mod error;
pub mod guest;
pub mod hv;
pub mod hypercall;
pub mod io;
mod kick;
pub mod lapic;
pub mod layout;
pub mod linux;
pub mod memory;
pub mod msr;
pub mod multiboot;
pub mod probe;
pub mod synic_vm;
pub mod timers;
pub mod vcpu;
pub mod vm;

pub use control::{StopReason, VmControl};
pub use cpuid::HvFeatures;
pub use error::{Error, Result};
pub use hypercall::{Hypercall, HypercallHandler, HypercallInput};
pub use io::{IoBus, PortDevice};
pub use memory::GuestMemory;
pub use msr::MsrHandler;
pub use probe::{Capabilities, ModeRequest, SynicMode};
pub use vcpu::{SynicExit, SynicExitHandler, VcpuHandlers, VcpuStats};
pub use vm::{RunOutcome, RunningVm, Vm, VmConfig};
