//! Line-by-line checks of ClamAV's text database formats, so a malformed
//! line is reported with its file and line number before a canary is even
//! started (clamd itself says only "Problem parsing database at line N").
//!
//! The checks are deliberately no stricter than clamd: anything they let
//! through still has to load in the canary, which has the last word.

use std::io::BufRead;

/// How the lines of a text database are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `hash:size:name` (hdb, hsb, fp …).
    HashFirst,
    /// `size:hash:name` (mdb, msb …).
    SizeFirst,
    Body,
    Logical,
    Container,
    FileTypeMagic,
    Ignore,
    Info,
    /// Colon-separated fields, at least two (idb, pdb, wdb, cfg …).
    Fields,
}

/// Every text format, by extension: the one list that both the file-name
/// rules and the line checks read.
pub const FORMATS: &[(&str, Format)] = {
    use Format::*;
    &[
        ("hdb", HashFirst),
        ("hsb", HashFirst),
        ("hdu", HashFirst),
        ("hsu", HashFirst),
        ("fp", HashFirst),
        ("sfp", HashFirst),
        ("mdb", SizeFirst),
        ("msb", SizeFirst),
        ("mdu", SizeFirst),
        ("msu", SizeFirst),
        ("ndb", Body),
        ("ndu", Body),
        ("ldb", Logical),
        ("ldu", Logical),
        ("cdb", Container),
        ("ftm", FileTypeMagic),
        ("ign", Ignore),
        ("ign2", Ignore),
        ("info", Info),
        ("idb", Fields),
        ("pdb", Fields),
        ("gdb", Fields),
        ("wdb", Fields),
        ("crb", Fields),
        ("cat", Fields),
        ("pwdb", Fields),
        ("imp", Fields),
        ("cfg", Fields),
    ]
};

/// The text format of a file extension, if it is one.
pub fn format_of(ext: &str) -> Option<Format> {
    FORMATS.iter().find(|(e, _)| *e == ext).map(|(_, f)| *f)
}

/// A line that does not parse: 1-based line number and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub problem: String,
}

/// Checks every line of a text database; returns how many signatures
/// (non-blank, non-comment lines) it holds.
pub fn check(ext: &str, r: impl BufRead) -> Result<u64, LineError> {
    let format = format_of(ext);
    let mut count = 0;
    for (i, line) in r.split(b'\n').enumerate() {
        let line = line.map_err(|e| LineError { line: i + 1, problem: format!("read error: {e}") })?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        let err = |problem: String| LineError { line: i + 1, problem };
        let Ok(text) = std::str::from_utf8(line) else {
            // Only signature names and patterns live here; ClamAV writes ASCII.
            return Err(err("is not valid text (non-UTF-8 bytes)".into()));
        };
        if text.trim().is_empty() || text.starts_with('#') {
            continue;
        }
        if let Some(format) = format {
            check_line(format, text).map_err(err)?;
        }
        count += 1;
    }
    Ok(count)
}

fn check_line(format: Format, line: &str) -> Result<(), String> {
    match format {
        Format::HashFirst => hash_line(line, HashOrder::HashFirst),
        Format::SizeFirst => hash_line(line, HashOrder::SizeFirst),
        Format::Body => ndb_line(line),
        Format::Logical => ldb_line(line),
        Format::Container => min_fields(line, ':', 10, "VirusName:ContainerType:ContainerSize:FileNameREGEX:…"),
        Format::FileTypeMagic => min_fields(line, ':', 6, "magictype:offset:magicbytes:name:rtype:type"),
        Format::Ignore if line.contains(char::is_control) => Err("contains control characters".into()),
        Format::Ignore => Ok(()),
        Format::Info => info_line(line),
        Format::Fields => min_fields(line, ':', 2, "colon-separated fields"),
    }
}

fn min_fields(line: &str, sep: char, n: usize, shape: &str) -> Result<(), String> {
    let got = line.split(sep).count();
    if got < n { Err(format!("has {got} fields, expected at least {n} ({shape})")) } else { Ok(()) }
}

enum HashOrder {
    HashFirst,
    SizeFirst,
}

/// `hash:size:name[:flevel[:maxflevel]]` (hdb/hsb/fp) or `size:hash:name…` (mdb/msb).
fn hash_line(line: &str, order: HashOrder) -> Result<(), String> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 3 || f.len() > 5 {
        return Err(format!("has {} fields, expected hash:size:name[:flevel[:maxflevel]]", f.len()));
    }
    let (hash, size) = match order {
        HashOrder::HashFirst => (f[0], f[1]),
        HashOrder::SizeFirst => (f[1], f[0]),
    };
    if !matches!(hash.len(), 32 | 40 | 64) || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("hash {hash:?} is not an MD5, SHA1 or SHA256 in hex"));
    }
    if size != "*" && size.parse::<u64>().is_err() {
        return Err(format!("size {size:?} is not a number or *"));
    }
    name(f[2])?;
    flevels(&f[3..])
}

fn name(n: &str) -> Result<(), String> {
    if n.trim().is_empty() {
        Err("signature name is empty".into())
    } else if n.contains(char::is_control) {
        Err("signature name contains control characters".into())
    } else {
        Ok(())
    }
}

fn flevels(f: &[&str]) -> Result<(), String> {
    for v in f {
        if !v.is_empty() && v.parse::<u32>().is_err() {
            return Err(format!("functionality level {v:?} is not a number"));
        }
    }
    Ok(())
}

/// `name:target:offset:hexsig[:minflevel[:maxflevel]]`
fn ndb_line(line: &str) -> Result<(), String> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 || f.len() > 6 {
        return Err(format!("has {} fields, expected name:target:offset:hexsig[:min[:max]]", f.len()));
    }
    name(f[0])?;
    if f[1] != "*" && f[1].parse::<u32>().map_or(true, |t| t > 14) {
        return Err(format!("target type {:?} is not 0-14 or *", f[1]));
    }
    if f[2].is_empty() {
        return Err("offset is empty".into());
    }
    hex_pattern(f[3])?;
    flevels(&f[4..])
}

/// A body pattern: hex bytes with ClamAV's wildcards. Rejects characters no
/// pattern can hold, and a pattern with no static run of two bytes, which
/// clamd refuses as "too short".
fn hex_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("pattern is empty".into());
    }
    if let Some(c) = p.chars().find(|c| !(c.is_ascii_hexdigit() || "?*{}()[]|!-,~BLW".contains(*c))) {
        return Err(format!("pattern contains {c:?}, which is not hex or a wildcard"));
    }
    // Longest run of plain hex digit pairs.
    let longest = p.split(|c: char| !c.is_ascii_hexdigit()).map(|run| run.len() / 2).max().unwrap_or(0);
    if longest < 2 {
        return Err(format!("pattern {p:?} has no static part of at least 2 bytes (clamd rejects it as too short)"));
    }
    Ok(())
}

/// `name;TargetDescriptionBlock;LogicalExpression;Subsig0[;Subsig1…]`
fn ldb_line(line: &str) -> Result<(), String> {
    let f: Vec<&str> = line.split(';').collect();
    if f.len() < 4 {
        return Err(format!("has {} fields, expected name;target block;logical expression;subsig…", f.len()));
    }
    name(f[0])?;
    if !f[1].split(',').all(|kv| kv.contains(':')) {
        return Err(format!("target description block {:?} is not Key:Value,…", f[1]));
    }
    let expr = f[2];
    if let Some(c) = expr.chars().find(|c| !(c.is_ascii_digit() || "&|()=<>,".contains(*c))) {
        return Err(format!("logical expression {expr:?} contains {c:?}"));
    }
    balanced(expr)?;
    subsig_refs(expr, f.len() - 3)
}

fn balanced(expr: &str) -> Result<(), String> {
    let mut depth = 0i32;
    for c in expr.chars() {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth < 0 {
            return Err(format!("logical expression {expr:?} closes a parenthesis it never opened"));
        }
    }
    if depth != 0 {
        return Err(format!("logical expression {expr:?} is missing a closing parenthesis"));
    }
    Ok(())
}

/// Every subsignature the expression names exists. Indices are the numbers
/// not after a comparison operator (`0>2` means "subsig 0 matched more than
/// 2 times").
fn subsig_refs(expr: &str, subsigs: usize) -> Result<(), String> {
    let mut prev = ' ';
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if !c.is_ascii_digit() {
            prev = c;
            continue;
        }
        let mut end = start + 1;
        while let Some(&(i, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = i + 1;
            chars.next();
        }
        let is_count = matches!(prev, '=' | '<' | '>' | ',');
        prev = '0';
        if is_count {
            continue;
        }
        let tok = &expr[start..end];
        if tok.parse::<usize>().map_or(true, |i| i >= subsigs) {
            return Err(format!("logical expression refers to subsignature {tok}, but only {subsigs} exist"));
        }
    }
    Ok(())
}

/// `.info` files list the files of a container: a `ClamAV-VDB:` first line,
/// `name:size:sha256` lines and a closing `DSIG:` line.
fn info_line(line: &str) -> Result<(), String> {
    if line.starts_with("ClamAV-VDB:") || line.starts_with("DSIG:") {
        return Ok(());
    }
    let f: Vec<&str> = line.split(':').collect();
    if f.len() != 3 || f[1].parse::<u64>().is_err() || f[2].len() != 64 {
        return Err("expected name:size:sha256".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ext: &str, text: &str) -> Result<u64, LineError> {
        check(ext, text.as_bytes())
    }

    #[test]
    fn good_lines() {
        let cases = [
            ("hdb", "aa15bcf478d165efd2065190eb473bcb:544:Clamgate.Test.ClamExe\n", 1),
            ("hsb", "# comment\n\n0123456789abcdef0123456789abcdef01234567:*:Sha1.Any:73\n", 1),
            ("mdb", "544:aa15bcf478d165efd2065190eb473bcb:Pe.Section\r\n", 1),
            ("ndb", "Clamgate.Body:0:*:434c414d657373616765426f7841\nW:1:EP+0:4142??43{2-4}4445:51:255\n", 2),
            ("ldb", "Clamgate.Logical;Engine:51-255,Target:0;0;434c414d657373616765426f7841\n", 1),
            ("ldb", "X;Engine:51-255,Target:1;(0&1)|2>3,1;4142;4344;4546\n", 1),
            ("fp", "aa15bcf478d165efd2065190eb473bcb:544:Allow.This\n", 1),
            ("ign2", "Some.Signature.Name\n", 1),
            ("info", "ClamAV-VDB:x:1:1:1:aa:X:b\ndaily.hdb:59:0000000000000000000000000000000000000000000000000000000000000000\nDSIG:X\n", 3),
        ];
        for (ext, text, n) in cases {
            assert_eq!(run(ext, text), Ok(n), "{ext}: {text:?}");
        }
    }

    #[test]
    fn bad_lines_say_which_line_and_why() {
        let cases = [
            ("ndb", "Ok:0:*:41424344\nClamgate.Bad.Ndb:0:*:zz41zz4243\n", 2, "not hex"),
            ("ndb", "Clamgate.Short.Ndb:0:*:41\n", 1, "too short"),
            ("ndb", "Name:99:*:41424344\n", 1, "target type"),
            ("ndb", "Name:0:*\n", 1, "fields"),
            ("hdb", "aa15bcf478d165efd2065190eb473bcb:544:Fine\nnot-a-hash:size:Clamgate.Bad.Hdb\n", 2, "hash"),
            ("hdb", "aa15bcf478d165efd2065190eb473bcb:big:Name\n", 1, "size"),
            ("hdb", "aa15bcf478d165efd2065190eb473bcb:544:\n", 1, "name is empty"),
            ("ldb", "Clamgate.Bad.Ldb;Engine:51-255,Target:0;(0&1;434c414d\n", 1, "closing parenthesis"),
            ("ldb", "X;Engine:51-255,Target:0;0&1;4142\n", 1, "subsignature 1"),
            ("ldb", "X;Target:0\n", 1, "fields"),
            ("hdb", "\u{0}\u{1}:1:x\n", 1, "hash"),
            ("info", "garbage\n", 1, "name:size:sha256"),
        ];
        for (ext, text, line, want) in cases {
            let e = run(ext, text).unwrap_err();
            assert_eq!(e.line, line, "{ext}: {text:?}: {e:?}");
            assert!(e.problem.contains(want), "{ext}: {text:?}: {} lacks {want:?}", e.problem);
        }
        assert!(check("hdb", &b"\xff\xfe:1:x\n"[..]).unwrap_err().problem.contains("UTF-8"));
    }
}
