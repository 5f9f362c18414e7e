//! Is this binary static? A FROM scratch image has no dynamic loader and no
//! C library, so a binary with an ELF interpreter (a `PT_INTERP` program
//! header) cannot start there. Reading the ELF64 header and the program
//! headers is all it takes, so no crate is needed.

use std::io::Read;
use std::path::Path;

use super::ImageError;

/// The program headers must lie in this prefix of the file (linkers put
/// them right after the 64-byte ELF header).
const MAX_HEADERS_BYTES: u64 = 64 * 1024;

const PT_INTERP: u32 = 3;
const ELF64_HEADER_BYTES: usize = 64;
const EM_X86_64: u16 = 62;

/// Fails unless `path` is an x86-64 ELF64 executable without an ELF
/// interpreter, i.e. one that runs in a FROM scratch image.
pub fn check_static_binary(path: &Path) -> Result<(), ImageError> {
    let mut prefix = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_HEADERS_BYTES).read_to_end(&mut prefix))
        .map_err(|source| ImageError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
    match has_interpreter(&prefix) {
        Ok(false) => Ok(()),
        Ok(true) => Err(ImageError::DynamicBinary {
            path: path.to_owned(),
        }),
        Err(reason) => Err(ImageError::NotElf {
            path: path.to_owned(),
            reason,
        }),
    }
}

/// Whether the ELF64 file starting with `bytes` has a `PT_INTERP` program
/// header; an error says why it is not an x86-64 ELF64 executable.
fn has_interpreter(bytes: &[u8]) -> Result<bool, &'static str> {
    if bytes.len() < ELF64_HEADER_BYTES || !bytes.starts_with(b"\x7fELF") {
        return Err("no ELF header");
    }
    // e_ident: class 2 is 64-bit, data 1 is little-endian.
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a little-endian 64-bit ELF file");
    }
    if u16_at(bytes, 18) != Some(EM_X86_64) {
        return Err("not an x86-64 binary");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64_at(bytes, 32), u16_at(bytes, 54), u16_at(bytes, 56))
    else {
        return Err("truncated ELF header");
    };
    if phnum == 0 {
        return Err("no program headers (not an executable)");
    }
    if phentsize < 4 {
        return Err("program header entries too small");
    }
    for i in 0..u64::from(phnum) {
        let entry = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|start| usize::try_from(start).ok())
            .and_then(|start| bytes.get(start..start.checked_add(usize::from(phentsize))?));
        match entry.and_then(|entry| u32_at(entry, 0)) {
            Some(PT_INTERP) => return Ok(true),
            Some(_) => {}
            None if (bytes.len() as u64) < MAX_HEADERS_BYTES => {
                return Err("the program headers are cut short (a truncated file)");
            }
            None => return Err("program headers beyond the first 64 KiB of the file"),
        }
    }
    Ok(false)
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let raw = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(raw.try_into().ok()?))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let raw = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let raw = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}
