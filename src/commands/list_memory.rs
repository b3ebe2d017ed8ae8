//! `vmm list-memory SOCKET [--json]`: every region registered with the VMM, paging through
//! `ListMemory` replies (each holds at most `MAX_MEMORY_LIST_ENTRIES`) until all are seen.

use std::io::{self, Write};

use vm_control::wire::{PAGE_SIZE, RegisteredRegion, Request, Response};

use super::{CommandError, Vmm, finish};
use crate::cli::ListMemoryArgs;

/// `vmm list-memory SOCKET [--json]`.
pub fn list_memory(args: &ListMemoryArgs) -> i32 {
    finish(try_list_memory(args, &mut io::stdout().lock()))
}

fn try_list_memory(args: &ListMemoryArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut vmm = Vmm::connect(&args.socket)?;
    let regions = all_regions(&mut vmm)?;
    let text = if args.json {
        regions_json(&regions)
    } else {
        regions_table(&regions)
    };
    writeln!(out, "{text}")?;
    Ok(())
}

/// Asks page after page, each from the slot after the last one listed, until a page comes
/// back empty or the VMM's total is reached.
fn all_regions(vmm: &mut Vmm) -> Result<Vec<RegisteredRegion>, CommandError> {
    let mut regions: Vec<RegisteredRegion> = Vec::new();
    let mut from_slot = 0u32;
    loop {
        let page = match vmm.request(Request::ListMemory { from_slot })? {
            Response::MemoryList(page) => page,
            other => return Err(vmm.unexpected(other)),
        };
        regions.extend_from_slice(page.as_slice());
        let next = page.as_slice().last().and_then(|r| r.slot.checked_add(1));
        match next {
            Some(slot) if page.truncated() && regions.len() < page.total as usize => {
                from_slot = slot;
            }
            _ => return Ok(regions),
        }
    }
}

fn regions_table(regions: &[RegisteredRegion]) -> String {
    if regions.is_empty() {
        return "no registered memory".to_string();
    }
    let mut lines = vec![format!(
        "{:>5}  {:>18}  {:>18}  {:>14}",
        "slot", "guest address", "pfn", "size (bytes)"
    )];
    for r in regions {
        lines.push(format!(
            "{:>5}  {:>#18x}  {:>#18x}  {:>14}",
            r.slot,
            r.guest_addr,
            r.guest_addr / PAGE_SIZE,
            r.size
        ));
    }
    lines.join("\n")
}

fn regions_json(regions: &[RegisteredRegion]) -> String {
    let entries: Vec<String> = regions
        .iter()
        .map(|r| {
            format!(
                "{{\"slot\":{},\"guest_address\":{},\"pfn\":{},\"size\":{}}}",
                r.slot,
                r.guest_addr,
                r.guest_addr / PAGE_SIZE,
                r.size
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Vec<RegisteredRegion> {
        vec![
            RegisteredRegion {
                slot: 2,
                guest_addr: 1 << 32,
                size: 4096,
            },
            RegisteredRegion {
                slot: 3,
                guest_addr: (1 << 32) + (2 << 20),
                size: 2 << 20,
            },
        ]
    }

    #[test]
    fn the_table_shows_slot_address_pfn_and_size() {
        let table = regions_table(&two());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].contains("0x100000000") && lines[1].contains("0x100000"));
        assert!(lines[2].trim_start().starts_with('3') && lines[2].ends_with("2097152"));
        assert_eq!(regions_table(&[]), "no registered memory");
    }

    #[test]
    fn the_json_is_one_array_with_every_field() {
        assert_eq!(
            regions_json(&two()[..1]),
            "[{\"slot\":2,\"guest_address\":4294967296,\"pfn\":1048576,\"size\":4096}]"
        );
        assert_eq!(regions_json(&[]), "[]");
    }
}
