//! A minimal KVM VMM for the SynIC library: real guests on real KVM.
//!
//! * [`Vm`] builds a VM (in-kernel irqchip, guest RAM, vCPUs with Hyper-V CPUID, MSR exits for
//!   the chosen `synic_kvm::SynicMode`); [`Vm::start`] runs one thread per vCPU and returns a
//!   [`RunningVm`] that stops cleanly on debug-exit, timeout or error.
//! * Exits reach the vCPU's SynIC (synic-kvm's `VcpuSynic`, called as any embedder calls it;
//!   [`VcpuHandlers`]) and a shared port-I/O bus of [`PortDevice`]s ([`devices`]: COM1,
//!   isa-debug-exit, fw_cfg, the hyperv-testdev, guest reports).
//! * Guests: raw 64-bit programs built with the [`guest`] toolkit, or multiboot v1 kernels
//!   ([`multiboot`]).
//! * [`synic_vm`]: the SynIC attached through synic-kvm's public API —
//!   [`synic_vm::SynicVmBuilder`] builds a VM, wires a `synic_kvm::VmSynic` to it, and gives
//!   every vCPU its `VcpuSynic`; pause, save, resume and restore.
//! * [`demo`] (the demo users run first) and [`bench`](mod@bench) (`synic-vmm bench`).
//!
//! The memory map and port assignments are in [`layout`] and `docs/vmm.md`.

#![deny(missing_docs)]

pub mod bench;
pub mod boot;
pub mod control;
pub mod cpu;
pub mod demo;
pub mod devices;
mod elf;
pub mod error;
pub mod guest;
pub mod io;
mod kick;
pub mod lapic;
pub mod layout;
pub mod linux;
pub mod memory;
pub mod msr;
pub mod multiboot;
pub mod run;
pub mod snapshot;
pub mod synic_vm;
pub mod vcpu;
pub mod vm;

pub use control::{StopReason, SynicFailure, VmControl};
pub use error::{Error, Result};
pub use io::{IoBus, PortDevice};
pub use memory::GuestMemory;
pub use msr::MsrHandler;
pub use vcpu::{ExitObserver, VcpuHandlers, VcpuStats};
pub use vm::{RunOutcome, RunningVm, Vm, VmConfig};
