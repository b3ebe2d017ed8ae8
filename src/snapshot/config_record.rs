//! The `CONFIG` record (kind 0x0200, version 1): what the VM was built from, so that
//! `vmm run --restore` can build the same machine again without being told.
//!
//! Each device's host side is stored as the text of the option that made it (`--disk`,
//! `--net`, `--serial`, `--console`, `--vsock`), and read back through the same parsers
//! `vmm run` uses, so a restore accepts exactly what a command line would, and refuses
//! anything else with the parser's own message. Network interfaces are stored with their
//! MAC, so a restored interface keeps it whatever the VM's name. The layout:
//!
//! | size | field |
//! | --- | --- |
//! | 8 | guest RAM, bytes: a non-zero multiple of 1 MiB |
//! | 4 | vCPU count, 1 to 254 |
//! | 1 | flags: bit 0 `--rng`, bit 1 `--balloon`; others 0 |
//! | 8 | console ring, bytes (0: none) |
//! | text | `--serial` |
//! | text | `--console`, empty without one |
//! | text | `--vsock`, empty without one |
//! | 4 + n × text | the `--disk`s, in order (n ≤ 24) |
//! | 4 + n × text | the `--net`s, in order (n ≤ 4) |
//!
//! A text is a `u16` length (at most 4,096) then that many bytes of UTF-8.

use snapshot::payload::{Decoder, Encoder};
use snapshot::{RecordType, kind};

use crate::config::{MAX_DISKS, MAX_NETS, NetConfig, VmConfig, format_mac};
use crate::run_options::{
    DiskSpec, NetBackend, SerialOutput, Source, VsockSpec, parse_console, parse_disk, parse_net,
    parse_serial, parse_vsock,
};

/// The `CONFIG` record type this module writes and reads.
pub const CONFIG_RECORD: RecordType = RecordType::required(kind::CONFIG, 1);

/// Longest text field.
const MAX_TEXT: usize = 4096;

const FLAG_RNG: u8 = 1;
const FLAG_BALLOON: u8 = 2;

/// What a snapshot says the VM was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedConfig {
    pub mem_bytes: u64,
    pub cpus: u8,
    pub rng: bool,
    pub balloon: bool,
    pub console_ring_bytes: usize,
    pub serial: SerialOutput,
    pub console: Option<SerialOutput>,
    pub vsock: Option<VsockSpec>,
    pub disks: Vec<DiskSpec>,
    /// Each with its MAC.
    pub nets: Vec<NetConfig>,
}

/// Why a `CONFIG` record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigRecordError {
    #[error(transparent)]
    Record(#[from] snapshot::Error),
    #[error("the snapshot's configuration: {0}")]
    Invalid(String),
}

impl SavedConfig {
    /// What `config` built.
    pub fn of(config: &VmConfig) -> SavedConfig {
        SavedConfig {
            mem_bytes: config.mem_bytes,
            cpus: config.cpus,
            rng: config.rng,
            balloon: config.balloon,
            console_ring_bytes: config.console_ring_bytes,
            serial: config.serial.clone(),
            console: config.console.clone(),
            vsock: config.vsock.clone(),
            disks: config.disks.clone(),
            nets: config.nets.clone(),
        }
    }

    /// The record's payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut enc = Encoder::new();
        enc.u64(self.mem_bytes);
        enc.u32(u32::from(self.cpus));
        let mut flags = 0;
        if self.rng {
            flags |= FLAG_RNG;
        }
        if self.balloon {
            flags |= FLAG_BALLOON;
        }
        enc.u8(flags);
        enc.u64(u64::try_from(self.console_ring_bytes).unwrap_or(u64::MAX));
        text(&mut enc, &output_text(&self.serial));
        text(
            &mut enc,
            &self.console.as_ref().map(output_text).unwrap_or_default(),
        );
        // The descriptor of `fd=M` is this process's: a restore opens /dev/vhost-vsock
        // unless given --vsock again.
        text(
            &mut enc,
            &self
                .vsock
                .as_ref()
                .map(|v| format!("cid={}", v.cid))
                .unwrap_or_default(),
        );
        enc.u32(u32::try_from(self.disks.len()).unwrap_or(u32::MAX));
        for disk in &self.disks {
            text(&mut enc, &disk_text(disk));
        }
        enc.u32(u32::try_from(self.nets.len()).unwrap_or(u32::MAX));
        for net in &self.nets {
            text(&mut enc, &net_text(net));
        }
        enc.into_vec()
    }

    /// Reads a payload written by [`SavedConfig::encode`], checking every value as the
    /// command line would be.
    pub fn decode(mut dec: Decoder<'_>) -> Result<SavedConfig, ConfigRecordError> {
        let invalid = |what: String| ConfigRecordError::Invalid(what);
        let mem_bytes = dec.u64()?;
        if mem_bytes == 0 || mem_bytes % (1 << 20) != 0 || mem_bytes > (1 << 40) {
            return Err(dec.out_of_range("guest RAM", mem_bytes).into());
        }
        let cpus = dec.u32()?;
        let cpus = u8::try_from(cpus)
            .ok()
            .filter(|c| (1..=crate::config::MAX_CPUS_ACPI).contains(&u32::from(*c)))
            .ok_or_else(|| dec.out_of_range("vCPU count", u64::from(cpus)))?;
        let flags = dec.u8()?;
        if flags & !(FLAG_RNG | FLAG_BALLOON) != 0 {
            return Err(dec.out_of_range("flags", u64::from(flags)).into());
        }
        let ring = dec.u64()?;
        let console_ring_bytes = usize::try_from(ring)
            .ok()
            .filter(|bytes| {
                *bytes == 0
                    || (devices::ConsoleRing::MIN_CAPACITY..=devices::ConsoleRing::MAX_CAPACITY)
                        .contains(bytes)
            })
            .ok_or_else(|| dec.out_of_range("console ring", ring))?;
        let serial = parse_serial(&read_text(&mut dec)?).map_err(invalid)?;
        let console = optional(&read_text(&mut dec)?, parse_console).map_err(invalid)?;
        let vsock = optional(&read_text(&mut dec)?, parse_vsock).map_err(invalid)?;
        let disk_count = dec.count("disks", MAX_DISKS)?;
        let mut disks = Vec::with_capacity(disk_count);
        for _ in 0..disk_count {
            disks.push(parse_disk(&read_text(&mut dec)?).map_err(invalid)?);
        }
        let net_count = dec.count("network interfaces", MAX_NETS)?;
        let mut nets = Vec::with_capacity(net_count);
        for _ in 0..net_count {
            let spec = parse_net(&read_text(&mut dec)?).map_err(invalid)?;
            let mac = spec
                .mac
                .ok_or_else(|| invalid("a network interface has no MAC".into()))?;
            nets.push(NetConfig {
                backend: spec.backend,
                mac,
            });
        }
        dec.finish()?;
        Ok(SavedConfig {
            mem_bytes,
            cpus,
            rng: flags & FLAG_RNG != 0,
            balloon: flags & FLAG_BALLOON != 0,
            console_ring_bytes,
            serial,
            console,
            vsock,
            disks,
            nets,
        })
    }
}

fn optional<T>(value: &str, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

fn text(enc: &mut Encoder, value: &str) {
    // Longer texts cannot come from a command line that passed `vmm run`'s checks (paths
    // are at most PATH_MAX); cut rather than write a length that lies.
    let bytes = value.as_bytes();
    let bytes = bytes.get(..MAX_TEXT).unwrap_or(bytes);
    enc.u16(u16::try_from(bytes.len()).unwrap_or(0));
    enc.bytes(bytes);
}

fn read_text(dec: &mut Decoder<'_>) -> Result<String, ConfigRecordError> {
    let len = dec.u16()?;
    if usize::from(len) > MAX_TEXT {
        return Err(dec.out_of_range("text length", u64::from(len)).into());
    }
    let bytes = dec.bytes(usize::from(len))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ConfigRecordError::Invalid("a text field is not UTF-8".into()))
}

fn output_text(output: &SerialOutput) -> String {
    match output {
        SerialOutput::Stdio => "stdio".into(),
        SerialOutput::File(path) => format!("file={}", path.display()),
        SerialOutput::Fd(fd) => format!("fd={fd}"),
    }
}

fn disk_text(disk: &DiskSpec) -> String {
    let source = match &disk.source {
        // A path that starts with fd= was given as ./fd=...
        Source::Path(path) if path.starts_with("fd=") => format!("./{}", path.display()),
        source => source.to_string(),
    };
    if disk.read_only {
        format!("{source},ro")
    } else {
        source
    }
}

fn net_text(net: &NetConfig) -> String {
    let backend = match &net.backend {
        NetBackend::Tap(name) => format!("tap={name}"),
        NetBackend::TapFd(fd) => format!("tap-fd={fd}"),
        NetBackend::HostIp { addr, netmask } => format!("host-ip={addr},netmask={netmask}"),
    };
    format!("{backend},mac={}", format_mac(&net.mac))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn sample() -> SavedConfig {
        SavedConfig {
            mem_bytes: 256 << 20,
            cpus: 2,
            rng: true,
            balloon: false,
            console_ring_bytes: 64 << 10,
            serial: SerialOutput::File(PathBuf::from("/tmp/serial.log")),
            console: Some(SerialOutput::Fd(7)),
            vsock: Some(VsockSpec { cid: 42, fd: None }),
            disks: vec![
                DiskSpec {
                    source: Source::Path(PathBuf::from("/images/root.img")),
                    read_only: true,
                },
                DiskSpec {
                    source: Source::Fd(9),
                    read_only: false,
                },
            ],
            nets: vec![NetConfig {
                backend: NetBackend::Tap("tap0".into()),
                mac: [0x52, 0x54, 0, 1, 2, 3],
            }],
        }
    }

    fn decode(payload: &[u8]) -> Result<SavedConfig, ConfigRecordError> {
        SavedConfig::decode(Decoder::new(CONFIG_RECORD, payload))
    }

    #[test]
    fn the_record_round_trips() {
        let config = sample();
        assert_eq!(decode(&config.encode()).unwrap(), config);
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let payload = sample().encode();
        for len in 0..payload.len() {
            assert!(decode(&payload[..len]).is_err(), "cut at {len}");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let mut zero_cpus = sample().encode();
        zero_cpus[8..12].copy_from_slice(&0u32.to_le_bytes());
        let err = decode(&zero_cpus).unwrap_err().to_string();
        assert!(err.contains("vCPU count"), "{err}");
        let mut odd_ram = sample().encode();
        odd_ram[0..8].copy_from_slice(&12345u64.to_le_bytes());
        assert!(
            decode(&odd_ram)
                .unwrap_err()
                .to_string()
                .contains("guest RAM")
        );
        let mut flags = sample().encode();
        flags[12] = 0x80;
        assert!(decode(&flags).unwrap_err().to_string().contains("flags"));
    }

    #[test]
    fn a_bad_option_text_is_the_parser_s_message() {
        let mut config = sample();
        config.serial = SerialOutput::Stdio;
        let mut payload = config.encode();
        // "stdio" -> "stdiX"
        let at = payload.windows(5).position(|w| w == b"stdio").unwrap();
        payload[at + 4] = b'X';
        let err = decode(&payload).unwrap_err().to_string();
        assert!(err.contains("unknown --serial value"), "{err}");
    }
}
