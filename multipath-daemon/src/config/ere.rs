//! POSIX extended regular expressions (what multipath-tools compiles with `regcomp`) to
//! Rust `regex` syntax.
//!
//! The two agree on most of what multipath.conf files use (`^`, `$`, `.`, `*`, `+`,
//! `?`, `|`, groups, intervals, bracket expressions with `[:class:]`). The differences
//! handled here: inside a bracket expression a backslash and `[` are literal in POSIX
//! (escaped for Rust), `&`, `~` and `-` runs that Rust reads as set operators are
//! escaped, and a `]` right after `[` or `[^` is literal. Collating elements
//! (`[.x.]`, `[=x=]`), back-references and GNU escapes other than `\w \W \s \S \b \B
//! \< \> \``, `\'` are refused with a reason. Matching semantics differ only in
//! which match is reported (leftmost-longest vs leftmost-first), never in whether one
//! exists, and the config only asks whether one exists.

/// The Rust regex for POSIX ERE `ere`, or why there is none.
pub(crate) fn translate(ere: &str) -> Result<String, String> {
    let chars: Vec<char> = ere.chars().collect();
    let mut out = String::with_capacity(ere.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err("ends with a lone backslash".into());
                };
                match n {
                    'w' | 'W' | 's' | 'S' | 'b' | 'B' => {
                        out.push('\\');
                        out.push(n);
                    }
                    '<' => out.push_str(r"\b{start}"),
                    '>' => out.push_str(r"\b{end}"),
                    '`' => out.push_str(r"\A"),
                    '\'' => out.push_str(r"\z"),
                    '1'..='9' => {
                        return Err(format!(
                            "back-reference \\{n} (a GNU extension) has no equivalent"
                        ));
                    }
                    n if n.is_ascii_alphanumeric() => {
                        return Err(format!("\\{n} is not defined in POSIX regexes"));
                    }
                    n if n.is_ascii() => {
                        out.push('\\');
                        out.push(n);
                    }
                    // A non-ASCII character escaped: just the character.
                    n => out.push(n),
                }
                i += 2;
            }
            '[' => {
                i = bracket(&chars, i, &mut out)?;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Translates the bracket expression starting at `chars[start] == '['`; returns the
/// index after its closing `]`.
fn bracket(chars: &[char], start: usize, out: &mut String) -> Result<usize, String> {
    let mut i = start + 1;
    out.push('[');
    if chars.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    if chars.get(i) == Some(&']') {
        out.push_str(r"\]");
        i += 1;
    }
    while i < chars.len() {
        let c = chars[i];
        match c {
            ']' => {
                out.push(']');
                return Ok(i + 1);
            }
            '[' => match chars.get(i + 1) {
                Some(':') => {
                    // [:class:] passes through (Rust knows the same ASCII classes).
                    let rest = &chars[i + 2..];
                    let Some(end) = rest.windows(2).position(|w| w == [':', ']']) else {
                        return Err("unterminated [: character class".into());
                    };
                    let name: String = rest[..end].iter().collect();
                    out.push_str("[:");
                    out.push_str(&name);
                    out.push_str(":]");
                    i += 2 + end + 2;
                }
                Some('.') | Some('=') => {
                    return Err(format!(
                        "collating element [{}...] has no equivalent",
                        chars[i + 1]
                    ));
                }
                _ => {
                    out.push_str(r"\[");
                    i += 1;
                }
            },
            '\\' | '&' | '~' => {
                out.push('\\');
                out.push(c);
                i += 1;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                // "--" is set difference in Rust.
                out.push_str(r"\-");
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err("unterminated bracket expression [".into())
}

/// A WWID regex from multipath.conf with its blanks made to match mpathd's WWIDs, which
/// have an underscore where the LUN's identifier has blanks (as `scsi_id -u` prints
/// them): outside a bracket expression a run of blanks (or escaped blanks) becomes one
/// `_`, and a bracket expression that accepts a blank accepts `_` too. `None` when the
/// regex has no blank.
pub(crate) fn fold_wwid_blanks(ere: &str) -> Option<String> {
    if !ere.contains(' ') {
        return None;
    }
    let chars: Vec<char> = ere.chars().collect();
    let mut out = String::with_capacity(ere.len());
    let mut i = 0;
    let mut blank_run = false;
    while i < chars.len() {
        let c = chars[i];
        let escaped_blank = c == '\\' && chars.get(i + 1) == Some(&' ');
        if c == ' ' || escaped_blank {
            if !blank_run {
                out.push('_');
            }
            blank_run = true;
            i += if escaped_blank { 2 } else { 1 };
            continue;
        }
        blank_run = false;
        match c {
            '\\' => {
                out.push(c);
                if let Some(&n) = chars.get(i + 1) {
                    out.push(n);
                }
                i += 2;
            }
            '[' => {
                // Copy the bracket expression, adding '_' when it accepts a blank.
                let start = i;
                i += 1;
                if chars.get(i) == Some(&'^') {
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    i += 1;
                }
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '[' && matches!(chars.get(i + 1), Some(':' | '.' | '=')) {
                        let kind = chars[i + 1];
                        i += 2;
                        while i + 1 < chars.len() && !(chars[i] == kind && chars[i + 1] == ']') {
                            i += 1;
                        }
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                let end = i.min(chars.len());
                let body: String = chars[start..end].iter().collect();
                out.push_str(&body);
                if body.contains(' ') && !body.contains('_') && end < chars.len() {
                    out.push('_');
                }
                if end < chars.len() {
                    out.push(']');
                }
                i = end + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{fold_wwid_blanks, translate};

    #[test]
    fn wwid_blanks_fold_like_scsi_id() {
        assert_eq!(
            fold_wwid_blanks("^1IET 00010001$").as_deref(),
            Some("^1IET_00010001$")
        );
        assert_eq!(
            fold_wwid_blanks("1DEC  \\ 3218").as_deref(),
            Some("1DEC_3218")
        );
        assert_eq!(fold_wwid_blanks("1IET[ x]0").as_deref(), Some("1IET[ x_]0"));
        assert_eq!(fold_wwid_blanks("1IET[ _]0").as_deref(), Some("1IET[ _]0"));
        assert_eq!(
            fold_wwid_blanks("[[:space:]] 1").as_deref(),
            Some("[[:space:]]_1")
        );
        assert_eq!(fold_wwid_blanks("^3600"), None);
        for s in ["[ ", "\\", "[[: ", " [", "[^] ]"] {
            let _ = fold_wwid_blanks(s);
        }
    }

    fn ok(ere: &str) -> regex::Regex {
        let t = translate(ere).unwrap_or_else(|e| panic!("{ere}: {e}"));
        regex::Regex::new(&t).unwrap_or_else(|e| panic!("{ere} -> {t}: {e}"))
    }

    #[test]
    fn common_multipath_conf_patterns() {
        let r = ok("^(ram|raw|loop|fd|md|dm-|sr|scd|st)[0-9]*");
        assert!(r.is_match("ram0") && r.is_match("dm-3") && r.is_match("sr0"));
        assert!(!r.is_match("sda"));
        let r = ok("^hd[a-z]");
        assert!(r.is_match("hda"));
        let r = ok("^sd[[:alpha:]]+$");
        assert!(r.is_match("sdab") && !r.is_match("sd1"));
        let r = ok(".*");
        assert!(r.is_match(""));
        let r = ok("^cciss!c[0-9]d[0-9]*");
        assert!(r.is_match("cciss!c0d1"));
    }

    #[test]
    fn bracket_specials_are_literal() {
        let r = ok(r"[\]");
        assert!(r.is_match("\\"));
        let r = ok("[]a]");
        assert!(r.is_match("]") && r.is_match("a"));
        let r = ok("[^]a]");
        assert!(!r.is_match("]") && r.is_match("b"));
        let r = ok("[a&&b]");
        assert!(r.is_match("&"));
        let r = ok("[[x]");
        assert!(r.is_match("[") && r.is_match("x"));
    }

    #[test]
    fn untranslatable() {
        assert!(translate(r"(a)\1").is_err());
        assert!(translate("[[.a.]]").is_err());
        assert!(translate("[abc").is_err());
        assert!(translate("abc\\").is_err());
        assert!(translate(r"\d").is_err());
    }

    #[test]
    fn never_panics() {
        for s in [
            "[", "[^", "[]", "[[:", "[[:a", "\\", "[\\", "[[", "[-", "[--]", "é[é]",
        ] {
            let _ = translate(s);
        }
    }
}
