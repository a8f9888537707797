//! The `ClamAV-VDB:` container header of `.cvd`/`.cld`/`.cud` files, and the
//! MD5 of the body it promises.
//!
//! Layout: 512 bytes of `ClamAV-VDB:build time:version:signatures:
//! functionality level:md5:digital signature:builder:build epoch`, padded
//! with spaces, then the body (a gzipped tar for `.cvd`/`.cud`, a plain tar
//! for `.cld`, which freshclam rebuilds from diffs and whose header MD5 no
//! longer describes the body, so only `.cvd`/`.cud` bodies are verified).

use std::io::Read;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

pub(crate) const HEADER_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CvdHeader {
    pub(crate) build_time: String,
    pub(crate) version: u64,
    pub(crate) signatures: u64,
    pub(crate) functionality_level: u32,
    pub md5: String,
    /// Cisco's digital signature, `X` for unsigned containers.
    pub(crate) dsig: String,
    pub(crate) builder: String,
    pub(crate) build_epoch: Option<u64>,
}

/// What is wrong with a container header, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadHeader(pub String);

impl From<String> for BadHeader {
    fn from(s: String) -> Self {
        BadHeader(s)
    }
}

impl From<&str> for BadHeader {
    fn from(s: &str) -> Self {
        BadHeader(s.to_string())
    }
}

/// Parses the 512-byte header. Never panics, whatever the bytes.
pub fn parse_header(bytes: &[u8]) -> Result<CvdHeader, BadHeader> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("truncated: {} bytes, a container header alone is {HEADER_LEN}", bytes.len()).into());
    }
    let raw = &bytes[..HEADER_LEN];
    let text = std::str::from_utf8(raw).map_err(|_| "header is not text".to_string())?;
    let text = text.trim_end_matches([' ', '\0', '\n']);
    let rest = text.strip_prefix("ClamAV-VDB:").ok_or(BadHeader::from("does not start with \"ClamAV-VDB:\""))?;
    let f: Vec<&str> = rest.split(':').collect();
    if f.len() < 7 {
        return Err(format!("header has {} fields, expected at least 7", f.len()).into());
    }
    let num = |i: usize, what: &str| -> Result<u64, String> { f[i].trim().parse::<u64>().map_err(|_| format!("{what} {:?} is not a number", f[i])) };
    let md5 = f[4].trim();
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("MD5 field {md5:?} is not 32 hex digits").into());
    }
    let functionality_level = num(3, "functionality level")?;
    Ok(CvdHeader {
        build_time: f[0].trim().to_string(),
        version: num(1, "version")?,
        signatures: num(2, "signature count")?,
        functionality_level: u32::try_from(functionality_level).map_err(|_| "functionality level too large".to_string())?,
        md5: md5.to_ascii_lowercase(),
        dsig: f[5].trim().to_string(),
        builder: f[6].trim().to_string(),
        build_epoch: f.get(7).and_then(|s| s.trim().parse().ok()),
    })
}

/// MD5 of everything after the header, streamed.
pub(crate) fn body_md5(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The body of a container opened at its start: gunzipped for
/// `.cvd`/`.cud`, as it is for `.cld`. What [`for_each_member`] reads.
pub(crate) fn body(mut file: std::fs::File, ext: &str) -> std::io::Result<Box<dyn Read>> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(HEADER_LEN as u64))?;
    let body = std::io::BufReader::new(file);
    Ok(if ext == "cld" { Box::new(body) } else { Box::new(flate2::bufread::GzDecoder::new(body)) })
}

/// Calls `each(name, contents)` for every regular file of the tar archive
/// in `r` (a container's body), in order. Stops at the end marker, at a
/// truncated header, or when `each` returns `false`; never panics.
pub(crate) fn for_each_member(mut r: impl Read, mut each: impl FnMut(&str, &mut dyn Read) -> std::io::Result<bool>) -> std::io::Result<()> {
    let mut header = [0u8; 512];
    loop {
        if read_block(&mut r, &mut header)? < 512 || header.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let size = tar_size(&header[124..136]).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "tar member size is not a number"))?;
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]).into_owned();
        let regular = matches!(header[156], b'0' | 0);
        let mut member = (&mut r).take(size);
        let go_on = if regular { each(&name, &mut member)? } else { true };
        // Whatever `each` left unread, and the padding to the next block.
        std::io::copy(&mut member, &mut std::io::sink())?;
        std::io::copy(&mut (&mut r).take(size.next_multiple_of(512) - size), &mut std::io::sink())?;
        if !go_on {
            return Ok(());
        }
    }
}

fn read_block(r: &mut impl Read, block: &mut [u8; 512]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < block.len() {
        match r.read(&mut block[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A tar size field: octal digits, space or NUL terminated.
fn tar_size(field: &[u8]) -> Option<u64> {
    let digits = std::str::from_utf8(field).ok()?.trim_matches(|c: char| c == '\0' || c == ' ');
    u64::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.resize(HEADER_LEN, b' ');
        v
    }

    #[test]
    fn parses_a_sigtool_header() {
        let h = parse_header(&header("ClamAV-VDB:23 Nov 2026 22-27 +0000:2:120:216:75970fde2a0a606a2cdd5a7b9d376fc5:X:clamgate:1795472824")).unwrap();
        assert_eq!((h.version, h.signatures, h.functionality_level), (2, 120, 216));
        assert_eq!(h.builder, "clamgate");
        assert_eq!(h.dsig, "X");
        assert_eq!(h.build_epoch, Some(1795472824));
    }

    #[test]
    fn rejects_broken_headers() {
        let cases = [
            (b"ClamAV-VDB:1".to_vec(), "truncated"),
            (header("ClamAV-VDX:a:1:1:1:00000000000000000000000000000000:X:b"), "does not start"),
            (header("ClamAV-VDB:a:1:1"), "fields"),
            (header("ClamAV-VDB:a:one:1:1:00000000000000000000000000000000:X:b"), "version"),
            (header("ClamAV-VDB:a:1:1:1:0000:X:b"), "MD5"),
            (header("ClamAV-VDB:a:1:1:99999999999:00000000000000000000000000000000:X:b"), "functionality level"),
        ];
        for (bytes, want) in cases {
            let err = parse_header(&bytes).unwrap_err();
            assert!(err.0.contains(want), "{want}: {err}");
        }
    }

    /// A tar of two members, as sigtool writes one (ustar, octal sizes).
    pub(crate) fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[156] = b'0';
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn reads_tar_members() {
        let bytes = tar(&[("daily.hdb", b"a:1:One\n"), ("COPYING", &[b'x'; 700])]);
        let mut seen = Vec::new();
        for_each_member(&bytes[..], |name, r| {
            let mut s = String::new();
            r.read_to_string(&mut s)?;
            seen.push((name.to_string(), s.len()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, [("daily.hdb".to_string(), 8), ("COPYING".to_string(), 700)]);
        // Cut anywhere: an error or fewer members, never a panic.
        for cut in [0, 100, 512, 600, 1100] {
            let _ = for_each_member(&bytes[..cut], |_, _| Ok(true));
        }
    }

    proptest! {
        #[test]
        fn tar_reading_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = for_each_member(&bytes[..], |_, r| { std::io::copy(r, &mut std::io::sink())?; Ok(true) });
        }


        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse_header(&bytes);
        }

        #[test]
        fn never_panics_on_header_like_input(fields in proptest::collection::vec("[0-9a-zA-Z :\\-]{0,40}", 0..12)) {
            let _ = parse_header(&header(&format!("ClamAV-VDB:{}", fields.join(":"))));
        }
    }
}
