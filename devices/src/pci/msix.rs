//! MSI-X: the capability's control bits, the vector table and the PBA.
//!
//! [`MsixConfig`] owns the guest-programmed table (message address, data and
//! per-vector mask), the pending bit array, the function-level enable and
//! mask, and one [`EventFd`] per vector. A device raises a vector with
//! [`MsixConfig::trigger`]; the eventfd is only written when the vector is
//! deliverable, otherwise the pending bit is set and the eventfd written when
//! the guest unmasks it (PCI 3.0 section 6.8.3.4). The VMM backs each eventfd
//! with a KVM irqfd routed to the vector's [`MsiMessage`], and is told of
//! every change to a message through the handler set with
//! [`MsixConfig::set_route_handler`].
//!
//! The handler hears only of changes that matter to delivery: a vector
//! becoming deliverable or masked, or a deliverable vector's message
//! changing. A guest that rewrites a masked entry byte by byte (the table
//! takes any width), or the same values over and over, costs no route
//! update; each update is a `KVM_SET_GSI_ROUTING` of the whole table on the
//! writing vCPU.

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Most vectors a function may have (11-bit table size field).
pub const MAX_MSIX_VECTORS: u16 = 2048;
/// Message control: MSI-X enable.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: per-vector mask.
const VECTOR_MASKED: u32 = 1;

/// Why MSI-X setup or delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    /// Table size outside 1..=2048.
    #[error("invalid MSI-X vector count {0}")]
    InvalidVectorCount(u16),
    /// An eventfd could not be created or written.
    #[error("MSI-X eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The message a vector sends: what KVM needs to route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (x86: 0xfeeX_XXXX).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// A change of one vector's routing, for the VMM's irqfd/GSI set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixRouteUpdate {
    /// Vector (table index).
    pub vector: u16,
    /// The message the guest programmed.
    pub message: MsiMessage,
    /// Whether the vector is currently masked (per-vector or function-wide)
    /// or MSI-X is disabled.
    pub masked: bool,
}

/// Called with every route change; see [`MsixConfig::set_route_handler`].
pub type MsixRouteHandler = Box<dyn FnMut(MsixRouteUpdate) + Send>;

#[derive(Debug, Clone, Copy)]
struct TableEntry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

impl Default for TableEntry {
    fn default() -> Self {
        // Vectors come out of reset masked (PCI 3.0 section 6.8.2.9).
        TableEntry {
            address_lo: 0,
            address_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

impl TableEntry {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (chunk, v) in
            b.chunks_exact_mut(4)
                .zip([self.address_lo, self.address_hi, self.data, self.control])
        {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8; 16]) -> TableEntry {
        let [
            a0,
            a1,
            a2,
            a3,
            h0,
            h1,
            h2,
            h3,
            d0,
            d1,
            d2,
            d3,
            c0,
            c1,
            c2,
            c3,
        ] = *b;
        TableEntry {
            // The low two address bits are reserved (dword-aligned address).
            address_lo: u32::from_le_bytes([a0, a1, a2, a3]) & !3,
            address_hi: u32::from_le_bytes([h0, h1, h2, h3]),
            data: u32::from_le_bytes([d0, d1, d2, d3]),
            // Only the mask bit is defined; the rest is reserved as zero.
            control: u32::from_le_bytes([c0, c1, c2, c3]) & VECTOR_MASKED,
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(self.address_hi) << 32) | u64::from(self.address_lo),
            data: self.data,
        }
    }
}

/// One saved MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address, low half (bits 0-1 zero).
    pub address_lo: u32,
    /// Message address, high half.
    pub address_hi: u32,
    /// Message data.
    pub data: u32,
    /// The per-vector mask bit.
    pub masked: bool,
}

/// The MSI-X state a snapshot holds: the table, the pending bits, enable and function
/// mask. The eventfds and routes are the VMM's, remade on restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixState {
    /// One entry per vector.
    pub entries: Vec<MsixEntry>,
    /// One pending bit per vector.
    pub pending: Vec<bool>,
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask.
    pub function_masked: bool,
}

/// MSI-X state of one function; see the module docs.
pub struct MsixConfig {
    table: Vec<TableEntry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    eventfds: Vec<EventFd>,
    route_handler: Option<MsixRouteHandler>,
    /// What the handler was last told of each vector: its message, or `None`
    /// while masked (`None` too before the first announcement).
    announced: Vec<Option<Option<MsiMessage>>>,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixConfig")
            .field("vectors", &self.table.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl MsixConfig {
    /// Creates a table of `vectors` masked entries, each with its eventfd.
    pub fn new(vectors: u16) -> Result<MsixConfig, MsixError> {
        if vectors == 0 || vectors > MAX_MSIX_VECTORS {
            return Err(MsixError::InvalidVectorCount(vectors));
        }
        let eventfds = (0..vectors)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MsixError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MsixConfig {
            table: vec![TableEntry::default(); usize::from(vectors)],
            pending: vec![false; usize::from(vectors)],
            enabled: false,
            function_masked: false,
            eventfds,
            route_handler: None,
            announced: vec![None; usize::from(vectors)],
        })
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        // 1..=MAX_MSIX_VECTORS (2048) by construction, so this never clamps.
        u16::try_from(self.table.len()).unwrap_or(MAX_MSIX_VECTORS)
    }

    /// Bytes of the table in its BAR.
    pub fn table_size(&self) -> u64 {
        // At most 2048 * 16: cannot saturate.
        u64::from(self.num_vectors()).saturating_mul(MSIX_TABLE_ENTRY_SIZE)
    }

    /// Bytes of the PBA in its BAR (whole qwords).
    pub fn pba_size(&self) -> u64 {
        // At most 32 * 8: cannot saturate.
        u64::from(self.num_vectors()).div_ceil(64).saturating_mul(8)
    }

    /// The capability body (after ID and next pointer) for a table at
    /// `table_offset` and a PBA at `pba_offset`, both in BAR `bar`, and the
    /// mask of guest-writable bits in it.
    pub fn capability_body(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 10] {
        // Table Size is N - 1; N >= 1 by construction.
        let control = self.num_vectors().saturating_sub(1);
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        body[2..6].copy_from_slice(&((table_offset & !7) | u32::from(bar & 7)).to_le_bytes());
        body[6..10].copy_from_slice(&((pba_offset & !7) | u32::from(bar & 7)).to_le_bytes());
        body
    }

    /// Writable bits of [`Self::capability_body`]: enable and function mask.
    pub fn capability_writable_mask() -> [u8; 2] {
        [0, ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8]
    }

    /// Installs the handler told of every change that matters to delivery
    /// (see the module docs), starting with every vector's current state.
    pub fn set_route_handler(&mut self, handler: MsixRouteHandler) {
        self.route_handler = Some(handler);
        self.announced.fill(None);
        self.announce_all();
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The message of `vector`, if it exists.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.table.get(usize::from(vector)).map(TableEntry::message)
    }

    /// Whether `vector` is masked per-vector or function-wide.
    pub fn masked(&self, vector: u16) -> bool {
        self.function_masked
            || self
                .table
                .get(usize::from(vector))
                .is_none_or(|e| e.control & VECTOR_MASKED != 0)
    }

    /// The eventfd written when `vector` fires, for the VMM's irqfd.
    pub fn eventfd(&self, vector: u16) -> Option<&EventFd> {
        self.eventfds.get(usize::from(vector))
    }

    /// Applies a guest write of the message control register.
    pub fn set_control(&mut self, control: u16) {
        let was = (self.enabled, self.function_masked);
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if was != (self.enabled, self.function_masked) {
            self.announce_all();
            self.deliver_unmasked_pending();
        }
    }

    /// Raises `vector`: delivers it, or marks it pending while masked.
    ///
    /// Does nothing for a vector outside the table or while MSI-X is
    /// disabled (the caller then uses INTx).
    pub fn trigger(&mut self, vector: u16) -> Result<(), MsixError> {
        let index = usize::from(vector);
        if !self.enabled || index >= self.table.len() {
            return Ok(());
        }
        if self.masked(vector) {
            if let Some(p) = self.pending.get_mut(index) {
                *p = true;
            }
            return Ok(());
        }
        match self.eventfds.get(index) {
            Some(fd) => fd.write(1).map_err(MsixError::EventFd),
            None => Ok(()),
        }
    }

    /// Handles a guest read of the table at `offset`, any width.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self
                .table_byte(offset.saturating_add(i as u64))
                .unwrap_or(0);
        }
    }

    fn table_byte(&self, offset: u64) -> Option<u8> {
        let index = usize::try_from(offset / MSIX_TABLE_ENTRY_SIZE).ok()?;
        let entry = self.table.get(index)?;
        entry
            .to_bytes()
            .get((offset % MSIX_TABLE_ENTRY_SIZE) as usize)
            .copied()
    }

    /// Handles a guest write of the table at `offset`, any width; bytes
    /// outside the table are dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched = Vec::new();
        for (i, &value) in data.iter().enumerate() {
            let at = offset.saturating_add(i as u64);
            let Ok(index) = usize::try_from(at / MSIX_TABLE_ENTRY_SIZE) else {
                continue;
            };
            let Some(entry) = self.table.get_mut(index) else {
                continue;
            };
            let mut bytes = entry.to_bytes();
            if let Some(b) = bytes.get_mut((at % MSIX_TABLE_ENTRY_SIZE) as usize) {
                *b = value;
            }
            *entry = TableEntry::from_bytes(&bytes);
            if !touched.contains(&index) {
                touched.push(index);
            }
        }
        // `index` < table.len() <= 2048, so every index converts.
        for index in touched.into_iter().filter_map(|i| u16::try_from(i).ok()) {
            self.announce(index);
        }
        self.deliver_unmasked_pending();
    }

    /// Handles a guest read of the PBA at `offset`; writes to it are ignored
    /// (it is read-only).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let bit0 = offset.saturating_add(i as u64).saturating_mul(8);
            *byte = (0..8u64)
                .filter(|b| {
                    usize::try_from(bit0.saturating_add(*b))
                        .ok()
                        .and_then(|v| self.pending.get(v))
                        .copied()
                        .unwrap_or(false)
                })
                .fold(0u8, |acc, b| acc | (1 << b));
        }
    }

    /// The guest-programmed state, for a snapshot.
    pub fn save_state(&self) -> MsixState {
        MsixState {
            entries: self
                .table
                .iter()
                .map(|e| MsixEntry {
                    address_lo: e.address_lo,
                    address_hi: e.address_hi,
                    data: e.data,
                    masked: e.control & VECTOR_MASKED != 0,
                })
                .collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Whether a message control value (from a saved configuration space) says what
    /// `state` says about enable and function mask.
    pub fn control_matches(control: u16, state: &MsixState) -> bool {
        (control & CONTROL_ENABLE != 0) == state.enabled
            && (control & CONTROL_FUNCTION_MASK != 0) == state.function_masked
    }

    /// Checks that `state` fits this table (same vector count); no side effects.
    pub fn check_state(&self, state: &MsixState) -> Result<(), String> {
        if state.entries.len() != self.table.len() || state.pending.len() != self.table.len() {
            return Err(format!(
                "MSI-X table has {} vectors, this device has {}",
                state.entries.len(),
                self.table.len()
            ));
        }
        Ok(())
    }

    /// Puts a checked `state` in place, tells the route handler of every vector's route
    /// and delivers what is pending and deliverable.
    pub fn apply_state(&mut self, state: &MsixState) {
        for (entry, saved) in self.table.iter_mut().zip(&state.entries) {
            *entry = TableEntry {
                address_lo: saved.address_lo & !3,
                address_hi: saved.address_hi,
                data: saved.data,
                control: if saved.masked { VECTOR_MASKED } else { 0 },
            };
        }
        for (p, &saved) in self.pending.iter_mut().zip(&state.pending) {
            *p = saved;
        }
        self.enabled = state.enabled;
        self.function_masked = state.function_masked;
        self.announced.fill(None);
        self.announce_all();
        self.deliver_unmasked_pending();
    }

    /// Fires and clears pending vectors that became deliverable.
    fn deliver_unmasked_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for index in 0..self.table.len() {
            let unmasked = self
                .table
                .get(index)
                .is_some_and(|e| e.control & VECTOR_MASKED == 0);
            if unmasked && self.pending.get(index).copied().unwrap_or(false) {
                if let Some(p) = self.pending.get_mut(index) {
                    *p = false;
                }
                if let Some(Err(e)) = self.eventfds.get(index).map(|fd| fd.write(1)) {
                    log::warn!("msix: cannot deliver pending vector {index}: {e}");
                }
            }
        }
    }

    fn announce(&mut self, vector: u16) {
        let Some(message) = self.message(vector) else {
            return;
        };
        let masked = !self.enabled || self.masked(vector);
        // While masked the message cannot be delivered, so only the masking
        // itself is news; once deliverable, the message is.
        let state = (!masked).then_some(message);
        let Some(last) = self.announced.get_mut(usize::from(vector)) else {
            return;
        };
        if *last == Some(state) {
            return;
        }
        *last = Some(state);
        if let Some(handler) = self.route_handler.as_mut() {
            handler(MsixRouteUpdate {
                vector,
                message,
                masked,
            });
        }
    }

    fn announce_all(&mut self) {
        for vector in 0..self.num_vectors() {
            self.announce(vector);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A table of `vectors` whose route updates are recorded.
    fn recorded(vectors: u16) -> (MsixConfig, Arc<Mutex<Vec<MsixRouteUpdate>>>) {
        let mut msix = MsixConfig::new(vectors).expect("msix");
        let updates = Arc::new(Mutex::new(Vec::new()));
        let sink = updates.clone();
        msix.set_route_handler(Box::new(move |u| sink.lock().expect("lock").push(u)));
        updates.lock().expect("lock").clear();
        (msix, updates)
    }

    fn entry_bytes(address: u64, data: u32, masked: bool) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&address.to_le_bytes());
        b[8..12].copy_from_slice(&data.to_le_bytes());
        b[12..16].copy_from_slice(&u32::from(masked).to_le_bytes());
        b
    }

    #[test]
    fn a_masked_entry_written_byte_by_byte_updates_no_route_until_unmasked() {
        let (mut msix, updates) = recorded(2);
        msix.set_control(CONTROL_ENABLE);
        let bytes = entry_bytes(0xfee0_0000, 0x41, true);
        for (i, b) in bytes.iter().enumerate() {
            msix.write_table(16 + i as u64, &[*b]);
        }
        assert!(updates.lock().expect("lock").is_empty());

        msix.write_table(16 + 12, &0u32.to_le_bytes());
        let got = updates.lock().expect("lock").clone();
        assert_eq!(
            got,
            vec![MsixRouteUpdate {
                vector: 1,
                message: MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                },
                masked: false
            }]
        );
    }

    #[test]
    fn rewriting_the_same_entry_or_control_updates_no_route() {
        let (mut msix, updates) = recorded(4);
        msix.write_table(0, &entry_bytes(0xfee0_0000, 0x30, false));
        msix.set_control(CONTROL_ENABLE);
        assert_eq!(
            updates.lock().expect("lock").len(),
            1,
            "vector 0 became deliverable"
        );
        for _ in 0..100 {
            msix.write_table(0, &entry_bytes(0xfee0_0000, 0x30, false));
            msix.set_control(CONTROL_ENABLE);
        }
        assert_eq!(updates.lock().expect("lock").len(), 1);
    }

    #[test]
    fn a_deliverable_vectors_new_message_and_its_masking_are_announced() {
        let (mut msix, updates) = recorded(1);
        msix.write_table(0, &entry_bytes(0xfee0_0000, 0x30, false));
        msix.set_control(CONTROL_ENABLE);
        msix.write_table(8, &0x31u32.to_le_bytes());
        msix.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        let got: Vec<(u32, bool)> = updates
            .lock()
            .expect("lock")
            .iter()
            .map(|u| (u.message.data, u.masked))
            .collect();
        assert_eq!(got, vec![(0x30, false), (0x31, false), (0x31, true)]);
    }
}
