//! The PC devices a stock Linux guest needs besides the in-kernel irqchip and PIT: a 16550
//! UART with interrupts (rust-vmm's vm-superio, IRQ 4 through an irqfd), the ACPI fixed
//! hardware the FADT points at (PM1a event/control blocks, PM timer, reset register), a CMOS
//! real-time clock, and a console sink that notices the kernel's "System halted".
//!
//! Power events stop the VM through [`VmControl`] with the KVM system-event kind that means the
//! same thing (`KVM_SYSTEM_EVENT_SHUTDOWN` for power-off and halt, `KVM_SYSTEM_EVENT_RESET`
//! for a reset) and are recorded in [`Power`] so the caller can tell them apart.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::acpi::{PM1A_CNT, PM1A_EVT, PM_BASE, PM_TMR, S5_SLP_TYP};
use crate::control::{StopReason, VmControl};
use crate::io::PortDevice;

/// How the guest asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// ACPI S5 through the PM1a control register.
    PowerOff,
    /// The kernel halted (`reboot: System halted` on the console): its CPUs spin in HLT with
    /// interrupts off, which the in-kernel LAPIC never reports, so the console is the signal.
    Halt,
    /// A reset: the FADT reset register, or the keyboard controller's pulse-reset command.
    Reset,
}

/// The first power event of a VM, and the stop it caused.
#[derive(Debug)]
pub struct Power {
    control: Arc<VmControl>,
    event: Mutex<Option<PowerEvent>>,
}

impl Power {
    /// Power events of the VM stopped through `control`.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self {
            control,
            event: Mutex::new(None),
        }
    }

    /// Records `event` (the first one wins) and stops the VM.
    pub fn fire(&self, vcpu: u32, event: PowerEvent) {
        self.event
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(event);
        let kind = match event {
            PowerEvent::PowerOff | PowerEvent::Halt => KVM_SYSTEM_EVENT_SHUTDOWN,
            PowerEvent::Reset => KVM_SYSTEM_EVENT_RESET,
        };
        self.control
            .request_stop(StopReason::SystemEvent { vcpu, kind });
    }

    /// The first event, if any.
    pub fn event(&self) -> Option<PowerEvent> {
        *self.event.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// PM1 control: SCI_EN (bit 0, reads 1: always in ACPI mode), SLP_TYP (12:10), SLP_EN (13,
/// write-only).
const PM1_SCI_EN: u16 = 1 << 0;
const PM1_SLP_TYP_SHIFT: u16 = 10;
const PM1_SLP_EN: u16 = 1 << 13;
/// The ACPI PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;
const PM_LEN: usize = 12;

#[derive(Debug, Default)]
struct PmRegs {
    status: u16,
    enable: u16,
    control: u16,
}

/// The ACPI fixed-hardware block at [`PM_BASE`]: PM1a status/enable, PM1a control (power-off
/// on SLP_EN with `\_S5`'s SLP_TYP) and the 32-bit PM timer.
#[derive(Debug)]
pub struct AcpiPm {
    regs: Mutex<PmRegs>,
    started: Instant,
    power: Arc<Power>,
}

impl AcpiPm {
    /// Number of ports the block spans from [`PM_BASE`].
    pub const LEN: u16 = PM_LEN as u16;

    /// A PM block that powers off through `power`.
    pub fn new(power: Arc<Power>) -> Self {
        Self {
            regs: Mutex::new(PmRegs {
                control: PM1_SCI_EN,
                ..PmRegs::default()
            }),
            started: Instant::now(),
            power,
        }
    }

    fn timer(&self) -> u32 {
        let ticks = self.started.elapsed().as_nanos() * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        ticks as u32 // the counter wraps at 32 bits (TMR_VAL_EXT)
    }

    fn image(&self, r: &PmRegs) -> [u8; PM_LEN] {
        let mut b = [0u8; PM_LEN];
        b[0..2].copy_from_slice(&r.status.to_le_bytes());
        b[2..4].copy_from_slice(&r.enable.to_le_bytes());
        b[4..6].copy_from_slice(&(r.control & !PM1_SLP_EN).to_le_bytes());
        let t = usize::from(PM_TMR - PM_BASE);
        b[t..t + 4].copy_from_slice(&self.timer().to_le_bytes());
        b
    }
}

impl PortDevice for AcpiPm {
    fn read(&self, _vcpu: u32, port: u16, data: &mut [u8]) {
        let r = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        let image = self.image(&r);
        let at = usize::from(port.wrapping_sub(PM_BASE));
        for (i, d) in data.iter_mut().enumerate() {
            *d = image.get(at + i).copied().unwrap_or(0xFF);
        }
    }

    fn write(&self, vcpu: u32, port: u16, data: &[u8]) {
        let mut r = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        let mut sleep = None;
        for (i, &byte) in data.iter().enumerate() {
            let Some(p) = port.checked_add(i as u16) else {
                break;
            };
            let shift = if (p - PM_BASE).is_multiple_of(2) {
                0
            } else {
                8
            };
            let v = u16::from(byte) << shift;
            let mask = 0xFFu16 << shift;
            match p {
                // Status bits are write-one-to-clear.
                _ if p == PM1A_EVT || p == PM1A_EVT + 1 => r.status &= !v,
                _ if p == PM1A_EVT + 2 || p == PM1A_EVT + 3 => {
                    r.enable = (r.enable & !mask) | v;
                }
                _ if p == PM1A_CNT || p == PM1A_CNT + 1 => {
                    r.control = (r.control & !mask) | v | PM1_SCI_EN;
                    sleep = Some(r.control);
                }
                _ => {} // the timer is read-only
            }
        }
        if let Some(control) = sleep {
            let typ = (control >> PM1_SLP_TYP_SHIFT) & 7;
            if control & PM1_SLP_EN != 0 && typ == u16::from(S5_SLP_TYP) {
                r.control &= !PM1_SLP_EN;
                drop(r);
                self.power.fire(vcpu, PowerEvent::PowerOff);
            }
        }
    }
}

/// The reset register ([`super::acpi::RESET_PORT`], also the PC's 0xCF9) and the keyboard
/// controller's command port (0x64, pulse-reset command 0xFE; status reads 0 so a guest
/// waiting for an empty input buffer does not spin).
#[derive(Debug)]
pub struct ResetPorts {
    power: Arc<Power>,
}

/// The keyboard controller's command/status port.
pub const KBC_PORT: u16 = 0x64;
const KBC_PULSE_RESET: u8 = 0xFE;

impl ResetPorts {
    /// Reset ports that stop the VM through `power`.
    pub fn new(power: Arc<Power>) -> Self {
        Self { power }
    }
}

impl PortDevice for ResetPorts {
    fn read(&self, _vcpu: u32, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, vcpu: u32, port: u16, data: &[u8]) {
        let v = data.first().copied().unwrap_or(0);
        let reset = match port {
            KBC_PORT => v == KBC_PULSE_RESET,
            // Bit 2 starts the reset ([`RESET_VALUE`] 0x06 is a hard reset); bit 1 alone only
            // selects the kind.
            _ => v & 0x04 != 0,
        };
        if reset {
            self.power.fire(vcpu, PowerEvent::Reset);
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// A CMOS real-time clock at 0x70/0x71 showing the host's UTC time (BCD, 24-hour), never
/// "update in progress", plus the rest of the 128-byte CMOS RAM as plain storage.
#[derive(Debug)]
pub struct Cmos {
    state: Mutex<(u8, [u8; 128])>,
}

/// The CMOS index port.
pub const CMOS_PORT: u16 = 0x70;

impl Default for Cmos {
    fn default() -> Self {
        let mut ram = [0u8; 128];
        ram[0x0A] = 0x26; // 32.768 kHz time base, 1024 Hz rate, UIP clear
        ram[0x0B] = 0x02; // 24-hour, BCD, no interrupts
        ram[0x0D] = 0x80; // valid RAM and time
        Self {
            state: Mutex::new((0, ram)),
        }
    }
}

impl Cmos {
    fn clock(reg: u8) -> Option<u8> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = (secs / 86_400) as i64;
        let t = (secs % 86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Some(match reg {
            0x00 => bcd(t % 60),
            0x02 => bcd(t / 60 % 60),
            0x04 => bcd(t / 3600),
            0x06 => bcd(((days + 4).rem_euclid(7) + 1) as u32), // 1970-01-01 was a Thursday
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd((year % 100) as u32),
            0x32 => bcd((year / 100) as u32),
            _ => return None,
        })
    }
}

impl PortDevice for Cmos {
    fn read(&self, _vcpu: u32, port: u16, data: &mut [u8]) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let v = if port == CMOS_PORT {
            s.0
        } else {
            let reg = s.0 & 0x7F;
            Self::clock(reg).unwrap_or(s.1[usize::from(reg)])
        };
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&self, _vcpu: u32, port: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if port == CMOS_PORT {
            s.0 = v; // bit 7 is the NMI mask: nothing to mask here
        } else {
            let reg = usize::from(s.0 & 0x7F);
            // Status A's UIP and status C/D are read-only.
            if !matches!(reg, 0x0C | 0x0D) {
                s.1[reg] = if reg == 0x0A { v & 0x7F } else { v };
            }
        }
    }
}

/// An ISA interrupt line driven through an irqfd (edge: one eventfd write per interrupt).
#[derive(Debug)]
pub struct IrqLine(EventFd);

impl IrqLine {
    /// A line whose eventfd the caller registers as an irqfd on the IRQ's GSI.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self(EventFd::new(libc::EFD_NONBLOCK)?))
    }

    /// The eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The guest's console: bytes go to `out`; a line reading "reboot: System halted" (the
/// kernel's last words on `halt`) fires [`PowerEvent::Halt`]. With [`ConsoleSink::timestamps`]
/// every line starts with the host's wall-clock time since the sink was made, `[+  12.345 s] `
/// (the guest's own clock is unreliable early in boot under emulation).
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    power: Arc<Power>,
    since: Option<Instant>,
    at_line_start: bool,
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSink").finish_non_exhaustive()
    }
}

const HALT_LINE: &[u8] = b"reboot: System halted";
const MAX_LINE: usize = 512;

impl ConsoleSink {
    /// A console writing to `out`.
    pub fn new(out: Box<dyn Write + Send>, power: Arc<Power>) -> Self {
        Self {
            out,
            line: Vec::new(),
            power,
            since: None,
            at_line_start: true,
        }
    }

    /// Prefixes every line with the host time elapsed since now.
    pub fn timestamps(mut self) -> Self {
        self.since = Some(Instant::now());
        self
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if self.at_line_start {
                if let Some(t) = self.since {
                    // Output is best effort: a closed pipe must not stop the guest.
                    let _ = write!(self.out, "[+{:8.3} s] ", t.elapsed().as_secs_f64());
                }
                self.at_line_start = false;
            }
            let _ = self.out.write_all(&[b]);
            if b == b'\n' {
                let text = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                if text.ends_with(HALT_LINE) {
                    self.power.fire(0, PowerEvent::Halt);
                }
                self.line.clear();
                self.at_line_start = true;
                let _ = self.out.flush();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// COM1 as a 16550A with a FIFO and interrupts (vm-superio), output only.
pub struct Uart {
    serial: Mutex<Serial<IrqLine, NoEvents, ConsoleSink>>,
    base: u16,
}

impl std::fmt::Debug for Uart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uart").field("base", &self.base).finish()
    }
}

impl Uart {
    /// A UART at `base` raising `irq` and writing to `console`.
    pub fn new(base: u16, irq: IrqLine, console: ConsoleSink) -> Self {
        Self {
            serial: Mutex::new(Serial::new(irq, console)),
            base,
        }
    }
}

impl PortDevice for Uart {
    fn read(&self, _vcpu: u32, port: u16, data: &mut [u8]) {
        let v = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(port.wrapping_sub(self.base) as u8);
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&self, _vcpu: u32, port: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        // A failed interrupt (eventfd full) only delays output; the guest's 8250 driver has a
        // timeout for a lost THRE interrupt.
        let _ = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(port.wrapping_sub(self.base) as u8, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::SharedBuffer;

    fn power() -> (Arc<VmControl>, Arc<Power>) {
        let c = Arc::new(VmControl::new(1));
        (c.clone(), Arc::new(Power::new(c)))
    }

    #[test]
    fn pm1_control_s5_powers_off_and_other_sleep_types_do_not() {
        let (c, p) = power();
        let pm = AcpiPm::new(p.clone());
        let mut d = [0u8; 2];
        pm.read(0, PM1A_CNT, &mut d);
        assert_eq!(u16::from_le_bytes(d) & PM1_SCI_EN, PM1_SCI_EN, "ACPI mode");
        pm.write(0, PM1A_CNT, &(3u16 << 10 | PM1_SLP_EN).to_le_bytes());
        assert_eq!(p.event(), None, "S3 is not declared: ignored");
        pm.write(0, PM1A_CNT, &(5u16 << 10).to_le_bytes());
        assert_eq!(p.event(), None, "SLP_TYP without SLP_EN");
        pm.write(0, PM1A_CNT, &(5u16 << 10 | PM1_SLP_EN).to_le_bytes());
        assert_eq!(p.event(), Some(PowerEvent::PowerOff));
        assert_eq!(
            c.reason(),
            Some(StopReason::SystemEvent {
                vcpu: 0,
                kind: KVM_SYSTEM_EVENT_SHUTDOWN
            })
        );
    }

    #[test]
    fn pm1_status_is_write_one_to_clear_and_enable_stores() {
        let (_, p) = power();
        let pm = AcpiPm::new(p);
        pm.regs.lock().unwrap().status = 0x8101;
        pm.write(0, PM1A_EVT, &[0x01, 0x00]);
        pm.write(0, PM1A_EVT + 2, &[0x20, 0x01]);
        let mut d = [0u8; 4];
        pm.read(0, PM1A_EVT, &mut d);
        assert_eq!(d, [0x00, 0x81, 0x20, 0x01]);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let (_, p) = power();
        let pm = AcpiPm::new(p);
        let mut a = [0u8; 4];
        pm.read(0, PM_TMR, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut b = [0u8; 4];
        pm.read(0, PM_TMR, &mut b);
        let delta = u32::from_le_bytes(b).wrapping_sub(u32::from_le_bytes(a));
        // 20 ms is 71 591 ticks; allow a slow, noisy machine up to 2 s.
        assert!((71_000..7_200_000).contains(&delta), "{delta}");
    }

    #[test]
    fn reset_register_and_keyboard_controller_reset() {
        let (_, p) = power();
        let r = ResetPorts::new(p.clone());
        r.write(0, 0xCF9, &[0x02]);
        r.write(0, KBC_PORT, &[0xD1]);
        assert_eq!(p.event(), None);
        r.write(0, 0xCF9, &[super::super::acpi::RESET_VALUE]);
        assert_eq!(p.event(), Some(PowerEvent::Reset));
        let (_, p) = power();
        ResetPorts::new(p.clone()).write(0, KBC_PORT, &[KBC_PULSE_RESET]);
        assert_eq!(p.event(), Some(PowerEvent::Reset));
    }

    #[test]
    fn civil_dates_and_bcd() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(bcd(59), 0x59);
        let cmos = Cmos::default();
        let mut d = [0u8];
        cmos.write(0, CMOS_PORT, &[0x0A]);
        cmos.read(0, CMOS_PORT + 1, &mut d);
        assert_eq!(d[0] & 0x80, 0, "never update-in-progress");
        cmos.write(0, CMOS_PORT, &[0x8B]); // NMI mask bit set, register B
        cmos.read(0, CMOS_PORT + 1, &mut d);
        assert_eq!(d[0], 0x02);
        cmos.write(0, CMOS_PORT, &[0x40]);
        cmos.write(0, CMOS_PORT + 1, &[0x77]);
        cmos.read(0, CMOS_PORT + 1, &mut d);
        assert_eq!(d[0], 0x77, "plain CMOS RAM");
    }

    #[test]
    fn console_passes_bytes_and_spots_the_halt_line() {
        let (_, p) = power();
        let buf = SharedBuffer::new();
        let mut c = ConsoleSink::new(Box::new(buf.clone()), p.clone());
        c.write_all(b"[    1.0] reboot: Restarting system\r\n")
            .unwrap();
        assert_eq!(p.event(), None);
        c.write_all(b"[   12.5] reboot: System hal").unwrap();
        c.write_all(b"ted\r\n").unwrap();
        assert_eq!(p.event(), Some(PowerEvent::Halt));
        assert!(buf.text().ends_with("System halted\r\n"));
    }

    #[test]
    fn console_timestamps_start_every_line() {
        let (_, p) = power();
        let buf = SharedBuffer::new();
        let mut c = ConsoleSink::new(Box::new(buf.clone()), p).timestamps();
        c.write_all(b"one\ntw").unwrap();
        c.write_all(b"o\n").unwrap();
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for (l, want) in lines.iter().zip(["one", "two"]) {
            assert!(
                l.starts_with("[+") && l.ends_with(&format!(" s] {want}")),
                "{l}"
            );
        }
    }

    #[test]
    fn uart_raises_its_line_when_the_transmitter_empties() {
        let (_, p) = power();
        let buf = SharedBuffer::new();
        let line = IrqLine::new().unwrap();
        let fd = line.eventfd().try_clone().unwrap();
        let uart = Uart::new(0x3F8, line, ConsoleSink::new(Box::new(buf.clone()), p));
        uart.write(0, 0x3F9, &[0x02]); // IER: THR empty interrupt
        assert_eq!(fd.read().unwrap(), 1, "enabling THRE interrupts raises one");
        let mut iir = [0u8];
        uart.read(0, 0x3FA, &mut iir);
        assert_eq!(iir[0] & 0x0F, 0x02, "THRE is the pending interrupt");
        uart.read(0, 0x3FA, &mut iir);
        assert_eq!(iir[0] & 0x0F, 0x01, "reading IIR acknowledged it");
        uart.write(0, 0x3F8, b"A");
        assert_eq!(buf.text(), "A");
        assert_eq!(
            fd.read().unwrap(),
            1,
            "the transmitter empties again: a new interrupt"
        );
    }
}
