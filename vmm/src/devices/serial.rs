//! COM1 as a guest sees enough of a 16550 to print: THR writes go to a sink, LSR always says
//! "transmitter empty", the other registers read back what was written. No interrupts, no input.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::io::PortDevice;

const THR: u16 = 0;
const IER: u16 = 1;
const IIR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;
const LCR_DLAB: u8 = 0x80;
const LSR_THRE_TEMT: u8 = 0x60;
const IIR_NO_INTERRUPT: u8 = 0x01;

#[derive(Debug, Default)]
struct Regs {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
}

/// A UART at `base..base + 8`.
pub struct Serial {
    base: u16,
    regs: Mutex<Regs>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").field("base", &self.base).finish()
    }
}

impl Serial {
    /// A UART at `base` writing its output to `out` (flushed at each newline).
    pub fn new(base: u16, out: Box<dyn Write + Send>) -> Self {
        Self {
            base,
            regs: Mutex::new(Regs::default()),
            out: Mutex::new(out),
        }
    }

    fn regs(&self) -> std::sync::MutexGuard<'_, Regs> {
        self.regs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PortDevice for Serial {
    fn read(&self, _vcpu: u32, port: u16, data: &mut [u8]) {
        let r = self.regs();
        let dlab = r.lcr & LCR_DLAB != 0;
        let v = match port.wrapping_sub(self.base) {
            THR if dlab => r.dll,
            IER if dlab => r.dlm,
            THR => 0,
            IER => r.ier,
            IIR => IIR_NO_INTERRUPT,
            LCR => r.lcr,
            MCR => r.mcr,
            LSR => LSR_THRE_TEMT,
            MSR => 0xB0, // DCD, DSR, CTS: a terminal is attached
            SCR => r.scr,
            _ => 0xFF,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&self, _vcpu: u32, port: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let mut r = self.regs();
        let dlab = r.lcr & LCR_DLAB != 0;
        match port.wrapping_sub(self.base) {
            THR if dlab => r.dll = v,
            IER if dlab => r.dlm = v,
            THR => {
                drop(r);
                let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
                // Output is best effort: a closed pipe must not stop the guest.
                let _ = out.write_all(&[v]);
                if v == b'\n' {
                    let _ = out.flush();
                }
            }
            IER => r.ier = v & 0x0F,
            LCR => r.lcr = v,
            MCR => r.mcr = v & 0x1F,
            SCR => r.scr = v,
            _ => {}
        }
    }
}

/// A cloneable in-memory sink, for capturing guest output in tests.
#[derive(Clone, Debug, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thr_writes_reach_the_sink_and_lsr_says_empty() {
        let buf = SharedBuffer::new();
        let s = Serial::new(0x3F8, Box::new(buf.clone()));
        for b in b"hi\n" {
            s.write(0, 0x3F8, &[*b]);
        }
        assert_eq!(buf.text(), "hi\n");
        let mut d = [0u8; 1];
        s.read(0, 0x3FD, &mut d);
        assert_eq!(d[0] & 0x60, 0x60);
    }

    #[test]
    fn divisor_latch_does_not_print() {
        let buf = SharedBuffer::new();
        let s = Serial::new(0x3F8, Box::new(buf.clone()));
        s.write(0, 0x3FB, &[0x83]); // DLAB on
        s.write(0, 0x3F8, &[0x01]);
        s.write(0, 0x3FB, &[0x03]); // DLAB off
        s.write(0, 0x3FF, &[0x5A]);
        let mut d = [0u8; 1];
        s.read(0, 0x3FF, &mut d);
        assert_eq!(d[0], 0x5A);
        assert_eq!(buf.text(), "");
    }
}
