//! A minimal i8042 PS/2 controller: enough for Linux's probe, and the CPU
//! reset command.
//!
//! Inserted at port 0x60 with length 5: offset 0 is the data port (0x60),
//! offset 4 is the status (read) / command (write) port (0x64). Offsets 1..=3
//! are not decoded (reads return all-ones, writes are dropped). Port 0x61
//! (the speaker / PIT channel 2 gate) is handled inside KVM by the in-kernel
//! PIT, so guest accesses to it never reach this device.
//!
//! `vm_superio::I8042Device` handles only the reset command and reads every
//! register as 0. That makes Linux's `i8042_command()` time out waiting for
//! OBF on its first "read CTR" (0.5 s each, several times) and fail the probe
//! with an error, so we implement the controller side ourselves: the command
//! byte (CTR), self/interface tests, the output port, and 0xFE.
//!
//! No keyboard or mouse is attached and IRQ 1/12 are not wired: bytes sent to
//! the devices (data-port writes with no pending controller command, 0xD4
//! "send to mouse") get no answer, which Linux reads as "no device". The 0xD3
//! AUX loopback is internal to a real controller, so it is echoed (with the
//! mouse-data status bit). Linux then finds the AUX port but, getting no IRQ
//! 12 for the echo, gives up on it after a 250 ms wait; a kernel command line
//! with `i8042.noaux` skips that wait, and a FADT without the 8042 boot flag
//! makes Linux skip the whole probe.

use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Offset of the data port (0x60) from the device base.
pub const I8042_DATA_OFFSET: u64 = 0;
/// Offset of the status/command port (0x64) from the device base.
pub const I8042_COMMAND_OFFSET: u64 = 4;
/// Number of ports to insert the device with (0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;

// Status register bits.
const SR_OBF: u8 = 0x01; // output buffer full: data for the host at 0x60
const SR_SYS: u8 = 0x04; // system flag, mirrors CTR bit 2 (POST passed)
const SR_CMD: u8 = 0x08; // last write was to the command port
const SR_KEYLOCK: u8 = 0x10; // 1 = keyboard not inhibited by the keylock
const SR_AUXDATA: u8 = 0x20; // the byte in the output buffer is from the mouse

// Controller configuration byte (CTR) bits.
const CTR_KBDINT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPORT: u8 = 0xd0;
const CMD_WRITE_OUTPORT: u8 = 0xd1;
const CMD_KBD_LOOP: u8 = 0xd2;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_AUX_SEND: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;
/// Output port bit 0: the CPU reset line, active low.
const OUTPORT_RESET_N: u8 = 0x01;
/// Output port bit 1: A20 gate enabled (always, for a 64-bit guest).
const OUTPORT_A20: u8 = 0x02;

/// A minimal i8042; see the module documentation.
pub struct I8042 {
    reset_evt: EventFd,
    ctr: u8,
    outport: u8,
    /// Byte waiting for the host at the data port (drives OBF), and whether
    /// it comes from the AUX (mouse) side.
    out: Option<(u8, bool)>,
    /// Last byte handed out, returned again by a read with OBF clear as
    /// real controllers do.
    last_out: u8,
    /// Controller command waiting for its parameter byte on the data port.
    pending: Option<u8>,
    last_write_was_command: bool,
    resets: u64,
}

impl I8042 {
    /// Creates the controller; `reset_evt` is written when the guest asks the
    /// controller to reset the CPU.
    pub fn new(reset_evt: EventFd) -> I8042 {
        I8042 {
            reset_evt,
            // What firmware leaves behind: keyboard interrupt on, POST passed,
            // scancode translation on.
            ctr: CTR_KBDINT | CTR_SYS | CTR_XLATE,
            outport: OUTPORT_RESET_N | OUTPORT_A20,
            out: None,
            last_out: 0,
            pending: None,
            last_write_was_command: false,
            resets: 0,
        }
    }

    /// Number of CPU resets the guest has requested through this device.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    fn status(&self) -> u8 {
        let mut s = SR_KEYLOCK;
        match self.out {
            Some((_, true)) => s |= SR_OBF | SR_AUXDATA,
            Some((_, false)) => s |= SR_OBF,
            None => {}
        }
        if self.ctr & CTR_SYS != 0 {
            s |= SR_SYS;
        }
        if self.last_write_was_command {
            s |= SR_CMD;
        }
        s
    }

    fn respond(&mut self, byte: u8) {
        self.out = Some((byte, false));
    }

    fn trigger_reset(&mut self) {
        // Guest-triggered: saturate rather than wrap the statistic.
        self.resets = self.resets.saturating_add(1);
        if let Err(e) = self.reset_evt.write(1) {
            warn!("i8042: failed to signal CPU reset: {e}");
        }
    }

    fn command(&mut self, cmd: u8) {
        // A new command abandons any parameter the previous one was waiting for.
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.respond(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPORT | CMD_KBD_LOOP | CMD_AUX_LOOP | CMD_AUX_SEND => {
                self.pending = Some(cmd)
            }
            CMD_AUX_DISABLE => self.ctr |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUXDIS,
            CMD_KBD_DISABLE => self.ctr |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBDDIS,
            CMD_SELF_TEST => self.respond(SELF_TEST_OK),
            CMD_KBD_TEST | CMD_AUX_TEST => self.respond(INTERFACE_TEST_OK),
            CMD_READ_OUTPORT => self.respond(self.outport),
            CMD_RESET_CPU => self.trigger_reset(),
            _ => debug!("i8042: ignoring controller command {cmd:#04x}"),
        }
    }

    fn data(&mut self, value: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPORT) => {
                // Pulling the reset line low resets the CPU; we do not model
                // the A20 gate (a 64-bit guest never turns it off).
                self.outport = value | OUTPORT_RESET_N | OUTPORT_A20;
                if value & OUTPORT_RESET_N == 0 {
                    self.trigger_reset();
                }
            }
            // "Write keyboard output buffer": the byte comes back as if typed.
            Some(CMD_KBD_LOOP) => self.respond(value),
            // Loopback happens inside the controller: it comes back as if
            // the mouse had sent it.
            Some(CMD_AUX_LOOP) => self.out = Some((value, true)),
            // No mouse attached: the byte goes nowhere.
            Some(CMD_AUX_SEND) => {}
            // No keyboard attached either.
            _ => debug!("i8042: dropping keyboard byte {value:#04x}"),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            I8042_DATA_OFFSET => {
                if let Some((b, _)) = self.out.take() {
                    self.last_out = b;
                }
                self.last_out
            }
            I8042_COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = *data else {
            return;
        };
        match offset {
            I8042_DATA_OFFSET => {
                self.last_write_was_command = false;
                self.data(value);
            }
            I8042_COMMAND_OFFSET => {
                self.last_write_was_command = true;
                self.command(value);
            }
            _ => {}
        }
    }
}

/// The controller's state, as a snapshot holds it (record `I8042`). The reset counter is
/// a host statistic and is not saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct I8042State {
    /// The controller configuration byte.
    pub ctr: u8,
    /// The output port (bits 0 and 1, reset line and A20, always set).
    pub outport: u8,
    /// The byte waiting at the data port, and whether it is from the AUX side.
    pub out: Option<(u8, bool)>,
    /// The last byte read from the data port.
    pub last_out: u8,
    /// The command waiting for its parameter byte: 0x60, 0xd1, 0xd2, 0xd3 or 0xd4.
    pub pending: Option<u8>,
    /// The last write was to the command port (status bit 3).
    pub last_write_was_command: bool,
}

const PARAMETER_COMMANDS: [u8; 5] = [
    CMD_WRITE_CTR,
    CMD_WRITE_OUTPORT,
    CMD_KBD_LOOP,
    CMD_AUX_LOOP,
    CMD_AUX_SEND,
];

impl crate::state::StateRecord for I8042State {
    const RECORD: snapshot::RecordType = snapshot::RecordType::required(snapshot::kind::I8042, 1);
    const NAME: &'static str = "i8042";

    fn encode(&self, enc: &mut snapshot::payload::Encoder) {
        let (has_out, out, out_aux) = match self.out {
            Some((b, aux)) => (1, b, u8::from(aux)),
            None => (0, 0, 0),
        };
        enc.u8(self.ctr)
            .u8(self.outport)
            .u8(has_out)
            .u8(out)
            .u8(out_aux)
            .u8(self.last_out)
            .u8(self.pending.unwrap_or(0))
            .u8(u8::from(self.last_write_was_command));
    }

    fn decode(dec: &mut snapshot::payload::Decoder<'_>) -> Result<Self, crate::state::StateError> {
        use crate::state::{StateError, decode_bool};
        let ctr = dec.u8()?;
        let outport = dec.u8()?;
        let has_out = decode_bool(dec, Self::NAME, "output-buffer-full flag")?;
        let out = dec.u8()?;
        let out_aux = decode_bool(dec, Self::NAME, "AUX flag")?;
        let last_out = dec.u8()?;
        let pending = match dec.u8()? {
            0 => None,
            c if PARAMETER_COMMANDS.contains(&c) => Some(c),
            c => {
                return Err(StateError::invalid(
                    Self::NAME,
                    format!("pending command {c:#04x} takes no parameter"),
                ));
            }
        };
        let last_write_was_command = decode_bool(dec, Self::NAME, "last-write-was-command")?;
        if outport & (OUTPORT_RESET_N | OUTPORT_A20) != OUTPORT_RESET_N | OUTPORT_A20 {
            return Err(StateError::invalid(
                Self::NAME,
                format!("output port {outport:#04x} has the reset line or A20 low"),
            ));
        }
        if !has_out && (out != 0 || out_aux) {
            return Err(StateError::invalid(
                Self::NAME,
                "an empty output buffer holds a byte",
            ));
        }
        Ok(I8042State {
            ctr,
            outport,
            out: has_out.then_some((out, out_aux)),
            last_out,
            pending,
            last_write_was_command,
        })
    }
}

impl crate::state::DeviceState for I8042 {
    type State = I8042State;

    fn save_state(&self) -> Result<I8042State, crate::state::StateError> {
        Ok(I8042State {
            ctr: self.ctr,
            outport: self.outport,
            out: self.out,
            last_out: self.last_out,
            pending: self.pending,
            last_write_was_command: self.last_write_was_command,
        })
    }

    fn check_state(&self, _state: &I8042State) -> Result<(), crate::state::StateError> {
        Ok(())
    }

    fn apply_state(&mut self, state: I8042State) -> Result<(), crate::state::StateError> {
        self.ctr = state.ctr;
        self.outport = state.outport;
        self.out = state.out;
        self.last_out = state.last_out;
        self.pending = state.pending;
        self.last_write_was_command = state.last_write_was_command;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(evt.try_clone().unwrap()), evt)
    }

    fn rd(dev: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        dev.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_on_command_port_writes_reset_evt() {
        let (mut dev, evt) = setup();

        dev.write(I8042_COMMAND_OFFSET, &[CMD_RESET_CPU]);

        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(dev.resets(), 1);
    }

    #[test]
    fn other_commands_and_reset_byte_on_data_port_do_not_reset() {
        let (mut dev, evt) = setup();

        for cmd in [CMD_SELF_TEST, CMD_READ_CTR, 0xff, 0xfd, CMD_KBD_TEST] {
            dev.write(I8042_COMMAND_OFFSET, &[cmd]);
        }
        dev.write(I8042_DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(I8042_COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);

        assert!(evt.read().is_err(), "reset_evt must not have been written");
        assert_eq!(dev.resets(), 0);
    }

    #[test]
    fn output_port_write_with_reset_line_low_resets() {
        let (mut dev, evt) = setup();

        dev.write(I8042_COMMAND_OFFSET, &[CMD_WRITE_OUTPORT]);
        dev.write(I8042_DATA_OFFSET, &[OUTPORT_A20]);

        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn self_test_answers_0x55_with_obf() {
        let (mut dev, _evt) = setup();
        assert_eq!(rd(&mut dev, I8042_COMMAND_OFFSET) & SR_OBF, 0);

        dev.write(I8042_COMMAND_OFFSET, &[CMD_SELF_TEST]);
        let status = rd(&mut dev, I8042_COMMAND_OFFSET);
        let answer = rd(&mut dev, I8042_DATA_OFFSET);

        assert_eq!(status & SR_OBF, SR_OBF);
        assert_eq!(answer, SELF_TEST_OK);
        assert_eq!(rd(&mut dev, I8042_COMMAND_OFFSET) & SR_OBF, 0);
    }

    #[test]
    fn aux_loopback_echoes_with_aux_data_status() {
        let (mut dev, _evt) = setup();

        dev.write(I8042_COMMAND_OFFSET, &[CMD_AUX_LOOP]);
        dev.write(I8042_DATA_OFFSET, &[0x5a]);
        let status = rd(&mut dev, I8042_COMMAND_OFFSET);

        assert_eq!(status & (SR_OBF | SR_AUXDATA), SR_OBF | SR_AUXDATA);
        assert_eq!(rd(&mut dev, I8042_DATA_OFFSET), 0x5a);
    }

    #[test]
    fn aux_disable_and_enable_toggle_ctr_bit() {
        let (mut dev, _evt) = setup();

        dev.write(I8042_COMMAND_OFFSET, &[CMD_AUX_DISABLE]);
        dev.write(I8042_COMMAND_OFFSET, &[CMD_READ_CTR]);
        let disabled = rd(&mut dev, I8042_DATA_OFFSET);
        dev.write(I8042_COMMAND_OFFSET, &[CMD_AUX_ENABLE]);
        dev.write(I8042_COMMAND_OFFSET, &[CMD_READ_CTR]);
        let enabled = rd(&mut dev, I8042_DATA_OFFSET);

        assert_eq!(disabled & CTR_AUXDIS, CTR_AUXDIS);
        assert_eq!(enabled & CTR_AUXDIS, 0);
    }

    #[test]
    fn ctr_written_by_guest_reads_back() {
        let (mut dev, _evt) = setup();

        dev.write(I8042_COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(I8042_DATA_OFFSET, &[0x65]);
        dev.write(I8042_COMMAND_OFFSET, &[CMD_READ_CTR]);

        assert_eq!(rd(&mut dev, I8042_DATA_OFFSET), 0x65);
    }
}
