//! Struct and union layouts read from an object's DWARF, so that a diff that changes a type
//! the running kernel already holds instances of is refused, also when the type is defined
//! inside the `.c` file (no header changes).

use std::collections::BTreeMap;

use gimli::{AttributeValue, EndianSlice, LittleEndian};

use crate::model::Elf;

/// One member: its name, byte offset and a short description of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub ty: String,
}

/// The layout of a named struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub members: Vec<Member>,
}

type R<'a> = EndianSlice<'a, LittleEndian>;

/// The named struct and union layouts (`struct foo`, `union bar`) the object's DWARF
/// defines; empty when it has none. Names defined twice with different layouts are left out.
pub fn layouts(e: &Elf) -> BTreeMap<String, Layout> {
    let sections = relocated_debug_sections(e);
    let load = |id: gimli::SectionId| -> Result<R<'_>, gimli::Error> {
        Ok(EndianSlice::new(
            sections.get(id.name()).map(Vec::as_slice).unwrap_or(&[]),
            LittleEndian,
        ))
    };
    let Ok(dwarf) = gimli::Dwarf::load(load) else {
        return BTreeMap::new();
    };
    let mut out: BTreeMap<String, Option<Layout>> = BTreeMap::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let Ok(mut tree) = unit.entries_tree(None) else {
            continue;
        };
        let Ok(root) = tree.root() else { continue };
        let mut children = root.children();
        while let Ok(Some(child)) = children.next() {
            let entry = child.entry();
            let kind = match entry.tag() {
                gimli::DW_TAG_structure_type => "struct",
                gimli::DW_TAG_union_type => "union",
                _ => continue,
            };
            if entry.attr_value(gimli::DW_AT_declaration).is_some() {
                continue;
            }
            let Some(name) = name_of(&dwarf, &unit, entry) else {
                continue;
            };
            let Some(layout) = layout_of(&dwarf, &unit, entry.offset()) else {
                continue;
            };
            let key = format!("{kind} {name}");
            match out.get(&key) {
                None => {
                    out.insert(key, Some(layout));
                }
                Some(Some(l)) if *l != layout => {
                    out.insert(key, None);
                }
                Some(_) => {}
            }
        }
    }
    out.into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// Every type both objects define whose layout differs, described for a person: the first
/// difference of each.
pub fn changed_layouts(orig: &Elf, patched: &Elf) -> Vec<String> {
    let o = layouts(orig);
    let p = layouts(patched);
    let mut out = Vec::new();
    for (name, ol) in &o {
        let Some(pl) = p.get(name) else { continue };
        if ol == pl {
            continue;
        }
        out.push(describe(name, ol, pl));
    }
    out
}

fn describe(name: &str, o: &Layout, p: &Layout) -> String {
    if o.size != p.size {
        return format!("{name}: {} -> {} bytes", o.size, p.size);
    }
    for m in &p.members {
        match o.members.iter().find(|x| x.name == m.name) {
            None => return format!("{name}: member {} added at offset {}", m.name, m.offset),
            Some(x) if x.offset != m.offset => {
                return format!(
                    "{name}: member {} moved from offset {} to {}",
                    m.name, x.offset, m.offset
                );
            }
            Some(x) if x.ty != m.ty => {
                return format!(
                    "{name}: member {} changed type from {} to {}",
                    m.name, x.ty, m.ty
                );
            }
            Some(_) => {}
        }
    }
    match o
        .members
        .iter()
        .find(|x| !p.members.iter().any(|m| m.name == x.name))
    {
        Some(x) => format!("{name}: member {} removed", x.name),
        None => format!("{name}: members reordered"),
    }
}

fn layout_of(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    at: gimli::UnitOffset,
) -> Option<Layout> {
    let mut tree = unit.entries_tree(Some(at)).ok()?;
    let node = tree.root().ok()?;
    let size = match node.entry().attr_value(gimli::DW_AT_byte_size) {
        Some(v) => v.udata_value()?,
        None => return None,
    };
    let mut members = Vec::new();
    let mut children = node.children();
    while let Ok(Some(child)) = children.next() {
        let e = child.entry();
        if e.tag() != gimli::DW_TAG_member {
            continue;
        }
        let name = name_of(dwarf, unit, e).unwrap_or_default();
        let offset = match e.attr_value(gimli::DW_AT_data_member_location) {
            Some(v) => v.udata_value().unwrap_or(0),
            None => e
                .attr_value(gimli::DW_AT_data_bit_offset)
                .and_then(|v| v.udata_value())
                .map_or(0, |bits| bits / 8),
        };
        let bits = e
            .attr_value(gimli::DW_AT_bit_size)
            .and_then(|v| v.udata_value())
            .map(|b| format!(":{b}"))
            .unwrap_or_default();
        let ty = match e.attr_value(gimli::DW_AT_type) {
            Some(AttributeValue::UnitRef(t)) => type_name(dwarf, unit, t, 0),
            _ => "?".into(),
        } + &bits;
        members.push(Member { name, offset, ty });
    }
    Some(Layout { size, members })
}

/// A short name of the type at `at`: `int`, `struct foo *`, `char[16]`.
fn type_name(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    at: gimli::UnitOffset,
    depth: u32,
) -> String {
    if depth > 8 {
        return "...".into();
    }
    let Ok(e) = unit.entry(at) else {
        return "?".into();
    };
    let inner = |e: &gimli::DebuggingInformationEntry<R<'_>>| match e.attr_value(gimli::DW_AT_type)
    {
        Some(AttributeValue::UnitRef(t)) => type_name(dwarf, unit, t, depth + 1),
        _ => "void".into(),
    };
    let name = name_of(dwarf, unit, &e);
    match e.tag() {
        gimli::DW_TAG_pointer_type => format!("{} *", inner(&e)),
        gimli::DW_TAG_const_type | gimli::DW_TAG_volatile_type => inner(&e),
        gimli::DW_TAG_array_type => {
            let mut dims = String::new();
            if let Ok(mut tree) = unit.entries_tree(Some(at))
                && let Ok(root) = tree.root()
            {
                let mut ch = root.children();
                while let Ok(Some(c)) = ch.next() {
                    let n = c
                        .entry()
                        .attr_value(gimli::DW_AT_upper_bound)
                        .and_then(|v| v.udata_value())
                        .map_or(String::new(), |u| (u + 1).to_string());
                    dims += &format!("[{n}]");
                }
            }
            format!("{}{dims}", inner(&e))
        }
        gimli::DW_TAG_structure_type => {
            format!("struct {}", name.unwrap_or_else(|| "{...}".into()))
        }
        gimli::DW_TAG_union_type => format!("union {}", name.unwrap_or_else(|| "{...}".into())),
        gimli::DW_TAG_enumeration_type => {
            format!("enum {}", name.unwrap_or_else(|| "{...}".into()))
        }
        gimli::DW_TAG_subroutine_type => "fn".into(),
        _ => name.unwrap_or_else(|| "?".into()),
    }
}

fn name_of(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    e: &gimli::DebuggingInformationEntry<R<'_>>,
) -> Option<String> {
    let v = e.attr_value(gimli::DW_AT_name)?;
    let s = dwarf.attr_string(unit, v).ok()?;
    Some(s.to_string_lossy().into_owned())
}

/// The `.debug_*` sections with their relocations applied (in a relocatable object the
/// string and abbreviation offsets are in the relocation addends, not the bytes).
fn relocated_debug_sections(e: &Elf) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (_, s) in e.sections() {
        if !s.name.starts_with(".debug_") || s.rela_base.is_some() {
            continue;
        }
        let mut data = s.data.clone();
        for r in &s.relocs {
            let base = r.sym.and_then(|i| e.sym(i)).map_or(0, |s| s.value as i64);
            let value = base.wrapping_add(r.addend);
            let at = r.offset as usize;
            match r.r_type {
                // R_X86_64_64
                1 if at + 8 <= data.len() => {
                    data[at..at + 8].copy_from_slice(&(value as u64).to_le_bytes())
                }
                // R_X86_64_32, R_X86_64_32S
                10 | 11 if at + 4 <= data.len() => {
                    data[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes())
                }
                _ => {}
            }
        }
        out.insert(s.name.clone(), data);
    }
    out
}
