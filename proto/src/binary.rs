//! What the controller and the agent both read from an agent binary before one replaces
//! another: the version it will report and the CPU architecture it was built for.
//!
//! The agent keeps its version in a marker ([`version_marker!`]) that it reads at run
//! time, so the version a binary reports is the one written in its bytes: the controller
//! reads it from the file it serves without running it, and a test derives a second
//! version of one build by rewriting the marker (same length).

/// What precedes the version in an agent binary (and ends with `\n`).
pub const VERSION_PREFIX: &[u8] = b"\0MEZZANINE-AGENT-VERSION:";

/// The marker string, built from the crate version at compile time.
#[macro_export]
macro_rules! version_marker {
    () => {
        concat!(
            "\0MEZZANINE-AGENT-VERSION:",
            env!("CARGO_PKG_VERSION"),
            "\n"
        )
    };
}

/// The version carried by `bytes` (an agent binary): the first marker whose value is a
/// plausible version (at most 64 of `[0-9A-Za-z.+-]`, then `\n`).
pub fn version_of(bytes: &[u8]) -> Option<String> {
    let mut from = 0;
    while let Some(at) = find(&bytes[from..], VERSION_PREFIX) {
        let start = from + at + VERSION_PREFIX.len();
        let tail = &bytes[start..bytes.len().min(start + 65)];
        if let Some(end) = tail.iter().position(|b| *b == b'\n') {
            let v = &tail[..end];
            if !v.is_empty()
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'))
            {
                return Some(String::from_utf8_lossy(v).into_owned());
            }
        }
        from = start;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        // The prefix starts with NUL, common in binaries; skip to the next candidate fast.
        match hay[i..].iter().position(|b| *b == first) {
            Some(p) => i += p,
            None => return None,
        }
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The architecture (as Rust and `uname -m` name it) an ELF executable is for, from its
/// header; `None` when `bytes` is not a little-endian 64-bit ELF file of a known machine.
pub fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    // e_ident: magic, class 2 (64-bit), data 1 (little-endian); e_machine at offset 18.
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        62 => Some("x86_64"),
        183 => Some("aarch64"),
        243 => Some("riscv64"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_its_marker() {
        let mut bin = b"\x7fELF junk \0MEZZANINE-AGENT-VERSION:garbage with spaces\n".to_vec();
        bin.extend_from_slice(b"more\0MEZZANINE-AGENT-VERSION:");
        bin.extend_from_slice(b"1.2.3-rc.1\nrest");
        assert_eq!(version_of(&bin).as_deref(), Some("1.2.3-rc.1"));
        assert_eq!(version_of(b"no marker here"), None);
        assert_eq!(version_of(b"\0MEZZANINE-AGENT-VERSION:1.0"), None, "no end");
        assert_eq!(
            version_of(version_marker!().as_bytes()).as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn elf_headers_name_their_machine() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18] = 62;
        assert_eq!(elf_arch(&h), Some("x86_64"));
        h[18] = 183;
        assert_eq!(elf_arch(&h), Some("aarch64"));
        h[4] = 1;
        assert_eq!(elf_arch(&h), None, "32-bit");
        assert_eq!(elf_arch(b"#!/bin/sh\nexit 0\n"), None);
    }
}
