//! The CMOS device's snapshot record: its registers and NVRAM, and the guest's clock
//! offset.

use super::{
    Cmos, INDEX_MASK, INTERRUPT_SOURCES, NVRAM_SIZE, REG_A, REG_A_UIP, REG_C, REG_C_IRQF,
    REG_MEM_4G_HI, REG_MEM_4G_LO, REG_MEM_4G_MID, REG_MEM_16M_HI, REG_MEM_16M_LO,
};

/// The CMOS state a snapshot holds (record `CMOS`): the index register, the 128 bytes of
/// NVRAM, and how far the guest set its clock from the host's. The time registers are
/// computed from the host clock plus that offset on every read, so a restored guest's RTC
/// goes on from the host's time (wall-clock time passes while a VM is saved, as on a
/// machine that was switched off); the NVRAM bytes of the time registers matter only while
/// the guest holds SET. Register C's byte holds the interrupt flags pending at the save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmosState {
    /// The index register (0-127).
    pub index: u8,
    /// The NVRAM.
    pub data: [u8; NVRAM_SIZE],
    /// Seconds the guest's clock is ahead of the host's.
    pub offset: i64,
}

/// Bytes of CMOS NVRAM.
pub const CMOS_NVRAM_SIZE: usize = NVRAM_SIZE;

impl crate::state::StateRecord for CmosState {
    const RECORD: snapshot::RecordType = snapshot::RecordType::required(snapshot::kind::CMOS, 1);
    const NAME: &'static str = "cmos";

    fn encode(&self, enc: &mut snapshot::payload::Encoder) {
        enc.u8(self.index).bytes(&self.data).i64(self.offset);
    }

    fn decode(dec: &mut snapshot::payload::Decoder<'_>) -> Result<Self, crate::state::StateError> {
        let index = dec.u8()?;
        let data = dec.array::<NVRAM_SIZE>()?;
        let offset = dec.i64()?;
        if index & !INDEX_MASK != 0 {
            return Err(crate::state::StateError::invalid(
                Self::NAME,
                format!("index register {index:#04x} is past the 128 bytes of NVRAM"),
            ));
        }
        if data
            .get(usize::from(REG_A))
            .is_some_and(|a| a & REG_A_UIP != 0)
        {
            return Err(crate::state::StateError::invalid(
                Self::NAME,
                "register A has update-in-progress set, which this RTC never does",
            ));
        }
        Ok(CmosState {
            index,
            data,
            offset,
        })
    }
}

impl crate::state::DeviceState for Cmos {
    type State = CmosState;

    fn save_state(&self) -> Result<CmosState, crate::state::StateError> {
        Ok(CmosState {
            index: self.index,
            data: self.data,
            offset: self.offset,
        })
    }

    /// The memory-size registers must match this VM's memory: a snapshot restored into a
    /// VM of another size is refused.
    fn check_state(&self, state: &CmosState) -> Result<(), crate::state::StateError> {
        for reg in [
            REG_MEM_16M_LO,
            REG_MEM_16M_HI,
            REG_MEM_4G_LO,
            REG_MEM_4G_MID,
            REG_MEM_4G_HI,
        ] {
            let saved = state.data.get(usize::from(reg)).copied();
            if saved != Some(self.get(reg)) {
                return Err(crate::state::StateError::invalid(
                    <CmosState as crate::state::StateRecord>::NAME,
                    format!(
                        "memory-size register {reg:#04x} is {:#04x}, this VM's is {:#04x}",
                        saved.unwrap_or(0),
                        self.get(reg)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The restored guest's update cycles and periodic ticks count from now (none is owed
    /// for the time it was saved), and its timer is armed for the interrupts it enabled.
    fn apply_state(&mut self, state: CmosState) -> Result<(), crate::state::StateError> {
        self.index = state.index;
        self.data = state.data;
        self.offset = state.offset;
        // Older snapshots kept 0 here; the low bits read 0 on the chip.
        let flags = self.get(REG_C) & (REG_C_IRQF | INTERRUPT_SOURCES);
        self.set(REG_C, flags);
        self.restart_counting();
        if let Some(irq) = self.interrupt.as_mut() {
            // Whatever it was armed for belonged to the state replaced.
            irq.armed = None;
            let _ = irq.timer.clear();
        }
        self.rearm();
        Ok(())
    }
}
