//! The 16550A UART for the guest console (COM1, ports 0x3f8..=0x3ff).
//!
//! Register emulation is `vm_superio::Serial`, which is built to pass Linux's
//! 8250 autoconfig probe as a 16550A. This module owns the glue around it:
//! the interrupt and "input ready" eventfds, the host output sink (with
//! error-logging instead of panicking), input queueing and byte counters, and
//! the [`BusDevice`] adaptor.
//!
//! # Interrupts
//!
//! vm-superio signals its interrupt by calling a [`Trigger`]; ours writes 1 to
//! an `EventFd` the VMM registers as a KVM irqfd on GSI 4. That is an edge on
//! the line, which matches how the ISA COM1 IRQ is wired (edge-triggered).
//!
//! # Bus accesses
//!
//! UART registers are one byte wide and Linux only ever uses `inb`/`outb` on
//! them. Any access whose length is not 1, or whose offset is beyond the 8
//! registers, is ignored; such reads return all-ones, like a floating bus.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use log::{error, warn};
use vm_superio::Trigger;
use vm_superio::serial::{Error as UartError, SerialEvents};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Number of I/O ports the UART decodes.
pub const SERIAL_PORT_LEN: u64 = 8;

/// Errors from feeding host input to the UART.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Writing the interrupt eventfd failed, so the guest was not told about
    /// the new input (the bytes are still queued).
    #[error("failed to raise the serial interrupt: {0}")]
    Interrupt(#[source] io::Error),
}

/// `Trigger` that writes an `EventFd` (the irqfd for the UART's IRQ line).
struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> Result<(), io::Error> {
        self.0.write(1)
    }
}

/// Callbacks from vm-superio: counts traffic and wakes the VMM's input loop.
struct UartEvents {
    input_ready: EventFd,
    bytes_out: AtomicU64,
    bytes_lost: AtomicU64,
}

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {}

    fn out_byte(&self) {
        self.bytes_out.fetch_add(1, Ordering::Relaxed);
    }

    fn tx_lost_byte(&self) {
        self.bytes_lost.fetch_add(1, Ordering::Relaxed);
    }

    fn in_buffer_empty(&self) {
        // The VMM stops reading its input source while the FIFO is full; this
        // tells it there is room again. vm-superio also calls this when the
        // guest reads an already-empty RBR (Linux does at startup); a spurious
        // wake-up only costs the VMM one empty read of its input. Failing to write it only delays input
        // until the next drain, so log rather than fail the guest access.
        if let Err(e) = self.input_ready.write(1) {
            warn!("serial: failed to signal input_ready: {e}");
        }
    }
}

/// A 16550A UART; see the module documentation.
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, UartEvents, Box<dyn Write + Send>>,
    bytes_in: u64,
    /// Set after the first output error so a dead sink does not flood the log.
    output_error_logged: bool,
    /// Same for interrupt eventfd failures on guest register accesses.
    interrupt_error_logged: bool,
}

impl Serial {
    /// Creates the UART.
    ///
    /// `interrupt` is written (`EventFd::write(1)`) whenever the UART raises
    /// its interrupt line; the VMM registers it as a KVM irqfd on GSI 4.
    /// `input_ready` is written when the guest has drained the receive FIFO so
    /// the VMM can feed more input. Guest output goes to `out`, flushed after
    /// every byte; a write or flush that fails drops the byte (counted in
    /// [`Serial::bytes_lost`]). `out` must never block: the UART runs on a vCPU
    /// thread under a lock the VMM's main thread also takes, which is why the
    /// VMM gives it a [`crate::ConsoleOutput`].
    pub fn new(interrupt: EventFd, input_ready: EventFd, out: Box<dyn Write + Send>) -> Serial {
        let events = UartEvents {
            input_ready,
            bytes_out: AtomicU64::new(0),
            bytes_lost: AtomicU64::new(0),
        };
        Serial {
            uart: vm_superio::Serial::with_events(EventFdTrigger(interrupt), events, out),
            bytes_in: 0,
            output_error_logged: false,
            interrupt_error_logged: false,
        }
    }

    /// Queues host input for the guest and returns how many bytes were
    /// accepted.
    ///
    /// The receive FIFO holds 64 bytes; whatever did not fit must be offered
    /// again after `input_ready` fires. A full FIFO (or a guest that has the
    /// UART in loopback mode, where external input is disconnected) accepts 0
    /// bytes; that is not an error.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return Ok(0);
        }
        // `enqueue_raw_bytes` queues before it triggers, so on a trigger error
        // the bytes are in the FIFO; count them from the capacity change.
        let before = self.uart.fifo_capacity();
        let res = self.uart.enqueue_raw_bytes(bytes);
        // Enqueueing only shrinks the free capacity.
        let accepted = before.saturating_sub(self.uart.fifo_capacity());
        self.bytes_in = self
            .bytes_in
            .saturating_add(u64::try_from(accepted).unwrap_or(u64::MAX));
        match res {
            Ok(n) => Ok(n),
            Err(UartError::Trigger(e)) => Err(SerialError::Interrupt(e)),
            // Capacity was checked above and output errors only come from guest
            // writes, so neither can happen here; report what was queued.
            Err(UartError::FullFifo) | Err(UartError::IOError(_)) => Ok(accepted),
        }
    }

    /// Bytes the guest has written to the transmit register and that the
    /// output sink took.
    pub fn bytes_out(&self) -> u64 {
        self.uart.events().bytes_out.load(Ordering::Relaxed)
    }

    /// Bytes the guest wrote that were dropped because the sink refused them
    /// (failed, or, for a [`crate::ConsoleOutput`], was full).
    pub fn bytes_lost(&self) -> u64 {
        self.uart.events().bytes_lost.load(Ordering::Relaxed)
    }

    /// Bytes of host input accepted into the receive FIFO.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [byte]) if u64::from(off) < SERIAL_PORT_LEN => *byte = self.uart.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        if u64::from(off) >= SERIAL_PORT_LEN {
            return;
        }
        match self.uart.write(off, *value) {
            Ok(()) => {}
            Err(UartError::IOError(e)) => {
                if !self.output_error_logged {
                    self.output_error_logged = true;
                    error!("serial: console output failed, dropping guest output: {e}");
                }
            }
            Err(UartError::Trigger(e)) => {
                if !self.interrupt_error_logged {
                    self.interrupt_error_logged = true;
                    error!("serial: failed to raise interrupt: {e}");
                }
            }
            Err(UartError::FullFifo) => {}
        }
    }
}

/// The UART's registers and pending input, as a snapshot holds them (record `SERIAL`).
/// Counters and the output sink are the host's and are not saved; the interrupt line is
/// recomputed from IER and IIR (vm-superio raises it again on restore if it is pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub divisor_low: u8,
    /// Divisor latch, high byte.
    pub divisor_high: u8,
    /// Interrupt enable register (bits 0-3).
    pub ier: u8,
    /// Interrupt identification as stored: "no interrupt" (1) or the pending THR-empty (2)
    /// and received-data (4) bits; the FIFO bits are added on read.
    pub iir: u8,
    /// Line control register.
    pub lcr: u8,
    /// Line status register: data ready (1, set exactly when input is pending), THR empty
    /// (0x20), transmitter idle (0x40).
    pub lsr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Modem status register.
    pub msr: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read yet, oldest first; at most 64.
    pub input: Vec<u8>,
}

/// Bytes the receive FIFO holds.
pub const SERIAL_FIFO_SIZE: usize = 64;
const IIR_STORED_BITS: u8 = 0x07;
const IER_VALID_BITS: u8 = 0x0f;
const LSR_STORED_BITS: u8 = 0x61;
const LSR_DATA_READY: u8 = 0x01;

impl crate::state::StateRecord for SerialState {
    const RECORD: snapshot::RecordType = snapshot::RecordType::required(snapshot::kind::SERIAL, 1);
    const NAME: &'static str = "serial";

    fn encode(&self, enc: &mut snapshot::payload::Encoder) {
        enc.u8(self.divisor_low)
            .u8(self.divisor_high)
            .u8(self.ier)
            .u8(self.iir)
            .u8(self.lcr)
            .u8(self.lsr)
            .u8(self.mcr)
            .u8(self.msr)
            .u8(self.scratch)
            // At most SERIAL_FIFO_SIZE bytes (vm-superio's FIFO).
            .u8(u8::try_from(self.input.len()).unwrap_or(u8::MAX))
            .bytes(&self.input);
    }

    fn decode(dec: &mut snapshot::payload::Decoder<'_>) -> Result<Self, crate::state::StateError> {
        use crate::state::StateError;
        let [
            divisor_low,
            divisor_high,
            ier,
            iir,
            lcr,
            lsr,
            mcr,
            msr,
            scratch,
            len,
        ] = dec.array::<10>()?;
        let bad = |what: String| Err(StateError::invalid(Self::NAME, what));
        if ier & !IER_VALID_BITS != 0 {
            return bad(format!("IER {ier:#04x} has bits a 16550A does not have"));
        }
        // Stored IIR: 1 alone (no interrupt), or a non-empty set of the two pending bits.
        if iir & !IIR_STORED_BITS != 0 || (iir & 1 != 0 && iir != 1) || iir == 0 {
            return bad(format!("IIR {iir:#04x} is not a valid interrupt state"));
        }
        if lsr & !LSR_STORED_BITS != 0 {
            return bad(format!("LSR {lsr:#04x} has bits the UART never sets"));
        }
        if usize::from(len) > SERIAL_FIFO_SIZE {
            return bad(format!(
                "{len} bytes of pending input, the FIFO holds {SERIAL_FIFO_SIZE}"
            ));
        }
        let input = dec.bytes(usize::from(len))?.to_vec();
        if (lsr & LSR_DATA_READY != 0) == input.is_empty() {
            return bad(format!(
                "LSR data-ready bit does not match {} bytes of pending input",
                input.len()
            ));
        }
        Ok(SerialState {
            divisor_low,
            divisor_high,
            ier,
            iir,
            lcr,
            lsr,
            mcr,
            msr,
            scratch,
            input,
        })
    }
}

impl crate::state::DeviceState for Serial {
    type State = SerialState;

    fn save_state(&self) -> Result<SerialState, crate::state::StateError> {
        let s = self.uart.state();
        Ok(SerialState {
            divisor_low: s.baud_divisor_low,
            divisor_high: s.baud_divisor_high,
            ier: s.interrupt_enable,
            iir: s.interrupt_identification,
            lcr: s.line_control,
            lsr: s.line_status,
            mcr: s.modem_control,
            msr: s.modem_status,
            scratch: s.scratch,
            input: s.in_buffer,
        })
    }

    fn check_state(&self, _state: &SerialState) -> Result<(), crate::state::StateError> {
        // Every UART is the same model: what decoding checked is all there is.
        Ok(())
    }

    /// Rebuilds the register emulation from `state`, keeping this device's eventfds,
    /// counters and output sink; a pending interrupt is raised again.
    fn apply_state(&mut self, state: SerialState) -> Result<(), crate::state::StateError> {
        let apply_err = |e: io::Error| crate::state::StateError::Apply {
            device: "serial",
            problem: e.to_string(),
        };
        let trigger = EventFdTrigger(self.uart.interrupt_evt().0.try_clone().map_err(apply_err)?);
        let old = self.uart.events();
        let events = UartEvents {
            input_ready: old.input_ready.try_clone().map_err(apply_err)?,
            bytes_out: AtomicU64::new(old.bytes_out.load(Ordering::Relaxed)),
            bytes_lost: AtomicU64::new(old.bytes_lost.load(Ordering::Relaxed)),
        };
        let saved = vm_superio::serial::SerialState {
            baud_divisor_low: state.divisor_low,
            baud_divisor_high: state.divisor_high,
            interrupt_enable: state.ier,
            interrupt_identification: state.iir,
            line_control: state.lcr,
            line_status: state.lsr,
            modem_control: state.mcr,
            modem_status: state.msr,
            scratch: state.scratch,
            in_buffer: state.input,
        };
        let placeholder: Box<dyn Write + Send> = Box::new(io::sink());
        let uart = match vm_superio::Serial::from_state(&saved, trigger, events, placeholder) {
            Ok(uart) => uart,
            // The interrupt eventfd could not be written: the state is in place, the
            // guest just has to wait for the next interrupt. Anything else was checked.
            Err(UartError::Trigger(e)) => return Err(apply_err(e)),
            Err(e) => {
                return Err(crate::state::StateError::Apply {
                    device: "serial",
                    problem: format!("{e:?}"),
                });
            }
        };
        let old = std::mem::replace(&mut self.uart, uart);
        *self.uart.writer_mut() = old.into_writer();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    // Register offsets, as the Linux 8250 driver names them.
    const RBR_THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const MSR: u64 = 6;
    const SCR: u64 = 7;

    const IER_RDI: u8 = 0x01;
    const IER_THRI: u8 = 0x02;
    const IIR_NO_INT: u8 = 0x01;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;
    const LSR_TEMT: u8 = 0x40;

    /// Output sink whose contents the test can inspect.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct FailingSink;

    impl Write for FailingSink {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("sink gone"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Fixture {
        serial: Serial,
        interrupt: EventFd,
        input_ready: EventFd,
        out: SharedBuf,
    }

    fn fixture() -> Fixture {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let input_ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let serial = Serial::new(
            interrupt.try_clone().unwrap(),
            input_ready.try_clone().unwrap(),
            Box::new(out.clone()),
        );
        Fixture {
            serial,
            interrupt,
            input_ready,
            out,
        }
    }

    fn rd(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    fn fired(evt: &EventFd) -> bool {
        evt.read().is_ok()
    }

    #[test]
    fn guest_writes_to_thr_reach_out_and_are_counted() {
        let mut f = fixture();

        for b in b"hi\n" {
            f.serial.write(RBR_THR, &[*b]);
        }

        assert_eq!(&*f.out.0.lock().unwrap(), b"hi\n");
        assert_eq!(f.serial.bytes_out(), 3);
    }

    #[test]
    fn failing_output_drops_bytes_without_panicking() {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let input_ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(interrupt, input_ready, Box::new(FailingSink));

        serial.write(RBR_THR, b"a");
        serial.write(RBR_THR, b"b");

        assert_eq!(serial.bytes_out(), 0);
        assert_eq!(serial.bytes_lost(), 2);
        // The transmitter still looks idle so the guest keeps going.
        assert_eq!(rd(&mut serial, LSR) & LSR_THRE, LSR_THRE);
    }

    #[test]
    fn enabling_thr_empty_interrupt_fires_interrupt() {
        let mut f = fixture();
        assert!(!fired(&f.interrupt));

        f.serial.write(IER, &[IER_THRI]);

        assert!(fired(&f.interrupt));
        assert_eq!(rd(&mut f.serial, IIR) & 0x0f, 0x02, "IIR says THR empty");
    }

    #[test]
    fn enqueued_input_is_readable_from_rbr_with_data_ready() {
        let mut f = fixture();
        f.serial.write(IER, &[IER_RDI]);
        let _ = f.interrupt.read();

        let n = f.serial.enqueue_input(b"ok").unwrap();

        assert_eq!(n, 2);
        assert!(fired(&f.interrupt), "RX interrupt raised");
        assert_eq!(rd(&mut f.serial, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut f.serial, RBR_THR), b'o');
        assert_eq!(rd(&mut f.serial, RBR_THR), b'k');
        assert_eq!(rd(&mut f.serial, LSR) & LSR_DR, 0);
        assert_eq!(f.serial.bytes_in(), 2);
    }

    #[test]
    fn full_fifo_accepts_partial_count_then_zero() {
        let mut f = fixture();
        let input = [b'x'; 100];

        let first = f.serial.enqueue_input(&input).unwrap();
        let second = f.serial.enqueue_input(&input[first..]).unwrap();

        assert_eq!(first, 64);
        assert_eq!(second, 0);
        assert_eq!(f.serial.bytes_in(), 64);
    }

    #[test]
    fn input_ready_fires_after_guest_drains_fifo() {
        let mut f = fixture();
        f.serial.enqueue_input(b"abc").unwrap();

        rd(&mut f.serial, RBR_THR);
        rd(&mut f.serial, RBR_THR);
        let before_drained = fired(&f.input_ready);
        rd(&mut f.serial, RBR_THR);
        let after_drained = fired(&f.input_ready);

        assert!(!before_drained);
        assert!(after_drained);
    }

    #[test]
    fn non_byte_and_out_of_range_accesses_are_ignored() {
        let mut f = fixture();
        let mut wide = [0u8; 2];

        f.serial.read(RBR_THR, &mut wide);
        f.serial.write(RBR_THR, b"ab");
        f.serial.write(8, b"a");
        let mut past = [0u8];
        f.serial.read(8, &mut past);

        assert_eq!(wide, [0xff, 0xff]);
        assert_eq!(past, [0xff]);
        assert!(f.out.0.lock().unwrap().is_empty());
    }

    /// Replays the register sequence of Linux's `autoconfig()` /
    /// `autoconfig_16550a()` and `serial8250_do_startup()` THRE test
    /// (drivers/tty/serial/8250/8250_port.c) and checks each answer that
    /// decides the port type.
    #[test]
    fn passes_linux_8250_autoconfig_as_16550a() {
        let mut f = fixture();
        let s = &mut f.serial;

        // Existence test: IER must read back 0 after writing 0, and 0x0f
        // after writing 0x0f.
        let saved_ier = rd(s, IER);
        s.write(IER, &[0]);
        let scratch2 = rd(s, IER) & 0x0f;
        s.write(IER, &[0x0f]);
        let scratch3 = rd(s, IER) & 0x0f;
        s.write(IER, &[saved_ier]);
        assert_eq!((scratch2, scratch3), (0, 0x0f));

        // Loopback test: MCR = LOOP | OUT2 | RTS must show DCD | CTS in
        // MSR[7:4] (0x90).
        let save_mcr = rd(s, MCR);
        s.write(MCR, &[0x10 | 0x0a]);
        let status1 = rd(s, MSR) & 0xf0;
        s.write(MCR, &[save_mcr]);
        assert_eq!(status1, 0x90);

        // FIFO probe: after FCR = enable FIFO, IIR[7:6] == 3 means 16550A.
        s.write(LCR, &[0xbf]);
        s.write(IIR, &[0]); // EFR/FCR
        s.write(LCR, &[0]);
        s.write(IIR, &[0x01]); // FCR: enable FIFO
        assert_eq!(rd(s, IIR) >> 6, 3);

        // No EFR: with LCR = 0x80 and 0xbf, offset 2 must not read 0.
        s.write(LCR, &[0x80]);
        assert_ne!(rd(s, IIR), 0);
        s.write(LCR, &[0xbf]);
        assert_ne!(rd(s, IIR), 0);

        // Not a TI16750: IIR bit 5 stays clear with and without DLAB.
        s.write(LCR, &[0]);
        s.write(IIR, &[0x21]);
        let status1 = rd(s, IIR) & 0xe0;
        s.write(LCR, &[0x80]);
        s.write(IIR, &[0x21]);
        let status2 = rd(s, IIR) & 0xe0;
        s.write(LCR, &[0]);
        assert_eq!((status1, status2), (0xc0, 0xc0));

        // Not an XScale: IER bit 6 (UUE) does not stick.
        s.write(IER, &[0x40]);
        assert_eq!(rd(s, IER) & 0x40, 0);
        s.write(IER, &[0]);

        // Scratch register is plain storage.
        s.write(SCR, &[0xa5]);
        assert_eq!(rd(s, SCR), 0xa5);

        // Startup: LSR must not be 0xff, transmitter idle.
        let lsr = rd(s, LSR);
        assert_ne!(lsr, 0xff);
        assert_eq!(lsr & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);

        // THRE re-assertion test: enabling THRI asserts the interrupt, and
        // after IIR was read (clearing it) re-enabling asserts it again,
        // otherwise Linux marks UART_BUG_THRE and polls with a timer.
        s.write(IER, &[IER_THRI]);
        let iir1 = rd(s, IIR);
        s.write(IER, &[0]);
        s.write(IER, &[IER_THRI]);
        let iir2 = rd(s, IIR);
        s.write(IER, &[0]);
        assert_eq!(iir1 & IIR_NO_INT, 0);
        assert_eq!(iir2 & IIR_NO_INT, 0);
    }
}
