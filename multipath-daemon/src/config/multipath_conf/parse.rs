//! multipath-tools' `multipath.conf`: a tokenizer and section parser.
//!
//! The format: one setting per line (`keyword value`), sections `name {` ... `}`,
//! comments from a `#` or `!` that starts a word to the end of the line, values in
//! double quotes when they hold blanks (`""` inside quotes is one `"`). Every error and
//! every item carries its line and column.

use crate::config::text::shorten;
use crate::config::{ConfigErrors, Diagnostic};

/// Deepest section nesting accepted (multipath.conf uses 2; `overrides { protocol {`
/// is the deepest).
pub const MAX_DEPTH: usize = 8;
/// Most errors reported before the parser gives up.
const MAX_ERRORS: usize = 100;

/// A parsed multipath.conf: its top-level sections in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfFile {
    pub sections: Vec<Section>,
}

impl ConfFile {
    /// The top-level sections named `name` (multipath-tools merges repeated ones).
    pub fn sections<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Section> + 'a {
        self.sections.iter().filter(move |s| s.name == name)
    }
}

/// `name { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub name: String,
    pub line: usize,
    pub col: usize,
    pub items: Vec<Item>,
}

impl Section {
    pub fn settings(&self) -> impl Iterator<Item = &Setting> {
        self.items.iter().filter_map(|i| match i {
            Item::Setting(s) => Some(s),
            Item::Section(_) => None,
        })
    }

    pub fn subsections(&self) -> impl Iterator<Item = &Section> {
        self.items.iter().filter_map(|i| match i {
            Item::Section(s) => Some(s),
            Item::Setting(_) => None,
        })
    }

    /// The value of the last setting `name` (later lines win, as in multipath-tools).
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings().filter(|s| s.name == name).last()
    }
}

/// What a section holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Setting(Setting),
    Section(Section),
}

/// `name value...` on one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: String,
    pub line: usize,
    pub col: usize,
    pub values: Vec<Word>,
}

impl Setting {
    /// The value words joined by one blank (`""` when there are none).
    pub fn value(&self) -> String {
        self.values
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Line and column of the value (of the keyword when there is none).
    pub fn value_pos(&self) -> (usize, usize) {
        self.values
            .first()
            .map_or((self.line, self.col), |w| (w.line, w.col))
    }
}

/// A word or quoted string.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub line: usize,
    pub col: usize,
    pub quoted: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(Word),
    Open(usize, usize),
    Close(usize, usize),
}

/// Splits `text` into tokens; errors (unterminated quotes) are collected.
fn tokenize(text: &str, origin: &str, errors: &mut Vec<Diagnostic>) -> Vec<Tok> {
    let mut toks = Vec::new();
    for (li, line) in text.lines().enumerate() {
        let lineno = li + 1;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let col = i + 1;
            if c.is_whitespace() {
                i += 1;
            } else if c == '#' || c == '!' {
                break;
            } else if c == '{' {
                toks.push(Tok::Open(lineno, col));
                i += 1;
            } else if c == '}' {
                toks.push(Tok::Close(lineno, col));
                i += 1;
            } else if c == '"' {
                let mut s = String::new();
                let mut j = i + 1;
                let mut closed = false;
                while j < chars.len() {
                    if chars[j] == '"' {
                        if chars.get(j + 1) == Some(&'"') {
                            s.push('"');
                            j += 2;
                            continue;
                        }
                        closed = true;
                        j += 1;
                        break;
                    }
                    s.push(chars[j]);
                    j += 1;
                }
                if !closed {
                    errors.push(Diagnostic::new(
                        origin,
                        lineno,
                        col,
                        "unterminated quoted string (a closing \" must be on the same line)",
                    ));
                    break;
                }
                toks.push(Tok::Word(Word {
                    text: s,
                    line: lineno,
                    col,
                    quoted: true,
                }));
                i = j;
            } else {
                let mut j = i;
                while j < chars.len()
                    && !chars[j].is_whitespace()
                    && !matches!(chars[j], '{' | '}' | '"')
                {
                    j += 1;
                }
                toks.push(Tok::Word(Word {
                    text: chars[i..j].iter().collect(),
                    line: lineno,
                    col,
                    quoted: false,
                }));
                i = j;
            }
        }
    }
    toks
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    origin: &'a str,
    errors: Vec<Diagnostic>,
    aborted: bool,
}

impl Parser<'_> {
    fn err(&mut self, (line, col): (usize, usize), msg: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors
                .push(Diagnostic::new(self.origin, line, col, msg));
        } else {
            self.aborted = true;
        }
    }

    /// Items until the matching `}` (consumed) or, at top level, the end.
    fn items(&mut self, depth: usize, opened_at: Option<(usize, usize)>) -> Vec<Item> {
        let mut items = Vec::new();
        while !self.aborted {
            let Some(tok) = self.toks.get(self.pos).cloned() else {
                if let Some(at) = opened_at {
                    self.err(
                        at,
                        "unbalanced braces: this section is never closed (missing \"}\")",
                    );
                }
                return items;
            };
            self.pos += 1;
            match tok {
                Tok::Close(l, c) => {
                    if opened_at.is_some() {
                        return items;
                    }
                    self.err((l, c), "unbalanced braces: \"}\" without a matching \"{\"");
                }
                Tok::Open(l, c) => {
                    self.err((l, c), "\"{\" without a section name before it");
                    // Parse and drop its contents so the braces stay balanced.
                    if depth + 1 >= MAX_DEPTH {
                        self.err((l, c), format!("sections nested deeper than {MAX_DEPTH}"));
                        self.aborted = true;
                        return items;
                    }
                    let _ = self.items(depth + 1, Some((l, c)));
                }
                Tok::Word(w) => {
                    if let Some(Tok::Open(l, c)) = self.toks.get(self.pos).cloned() {
                        self.pos += 1;
                        if depth + 1 >= MAX_DEPTH {
                            self.err((l, c), format!("sections nested deeper than {MAX_DEPTH}"));
                            self.aborted = true;
                            return items;
                        }
                        if depth == 0 && w.quoted {
                            self.err((w.line, w.col), "a section name cannot be quoted");
                        }
                        let sub = self.items(depth + 1, Some((w.line, w.col)));
                        items.push(Item::Section(Section {
                            name: w.text,
                            line: w.line,
                            col: w.col,
                            items: sub,
                        }));
                        continue;
                    }
                    let mut values = Vec::new();
                    while let Some(Tok::Word(v)) = self.toks.get(self.pos) {
                        if v.line != w.line {
                            break;
                        }
                        values.push(v.clone());
                        self.pos += 1;
                    }
                    if let Some(Tok::Open(l, c)) = self.toks.get(self.pos).cloned()
                        && l == w.line
                    {
                        self.err(
                            (l, c),
                            format!(
                                "\"{{\" after the value of \"{}\": a section name is one word",
                                shorten(&w.text, 40)
                            ),
                        );
                    }
                    if depth == 0 {
                        self.err(
                            (w.line, w.col),
                            format!(
                                "\"{}\" outside any section (expected a section such as defaults {{ ... }})",
                                shorten(&w.text, 40)
                            ),
                        );
                        continue;
                    }
                    items.push(Item::Setting(Setting {
                        name: w.text,
                        line: w.line,
                        col: w.col,
                        values,
                    }));
                }
            }
        }
        items
    }
}

/// Parses a multipath.conf. Syntax errors (unterminated quotes, unbalanced braces,
/// settings outside a section) are all reported, each with its line and column.
/// Unknown keywords are not errors here: [`import`] reports them.
pub fn parse(text: &str, origin: &str) -> Result<ConfFile, ConfigErrors> {
    let mut errors = Vec::new();
    let toks = tokenize(text, origin, &mut errors);
    let mut p = Parser {
        toks,
        pos: 0,
        origin,
        errors,
        aborted: false,
    };
    let items = p.items(0, None);
    if !p.errors.is_empty() {
        let mut errors = p.errors;
        errors.sort_by_key(|d| (d.line, d.col));
        return Err(ConfigErrors(errors));
    }
    let sections = items
        .into_iter()
        .filter_map(|i| match i {
            Item::Section(s) => Some(s),
            Item::Setting(_) => None,
        })
        .collect();
    Ok(ConfFile { sections })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<(usize, usize, String)> {
        match parse(text, "m.conf") {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => {
                e.0.into_iter()
                    .map(|d| (d.line, d.col, d.message))
                    .collect()
            }
        }
    }

    #[test]
    fn tokenizer_words_quotes_comments_braces() {
        let c = parse(
            "# comment\n! also a comment\ndefaults{\n  path_selector \"service-time 0\" # trailing\n  \
             features \"1 \"\"q\"\"\"\n  x cciss!c0d0 !not\n}\nblacklist { }\n",
            "m.conf",
        )
        .unwrap();
        assert_eq!(c.sections.len(), 2);
        let d = &c.sections[0];
        assert_eq!((d.name.as_str(), d.line, d.col), ("defaults", 3, 1));
        let ps = d.get("path_selector").unwrap();
        assert_eq!(ps.value(), "service-time 0");
        assert_eq!((ps.line, ps.col), (4, 3));
        assert_eq!(ps.value_pos(), (4, 17));
        assert!(ps.values[0].quoted);
        assert_eq!(d.get("features").unwrap().value(), "1 \"q\"");
        // '!' inside a word is part of it; at the start of a word it starts a comment.
        assert_eq!(d.get("x").unwrap().value(), "cciss!c0d0");
        assert_eq!(c.sections[1].name, "blacklist");
        assert!(c.sections[1].items.is_empty());
    }

    #[test]
    fn one_line_sections_and_brace_on_next_line() {
        let c = parse(
            "blacklist {\n device { vendor \"X\" }\n device {\n product \"Y\" }\n}\nmultipaths\n{\n multipath\n {\n  wwid 1\n }\n}\n",
            "m.conf",
        )
        .unwrap();
        let mut devs = c.sections[0].subsections();
        assert_eq!(devs.next().unwrap().get("vendor").unwrap().value(), "X");
        assert_eq!(devs.next().unwrap().get("product").unwrap().value(), "Y");
        let m = c.sections[1].subsections().next().unwrap();
        assert_eq!(m.get("wwid").unwrap().value(), "1");
    }

    #[test]
    fn syntax_errors_have_positions() {
        assert_eq!(
            errs("defaults {\n  alias \"abc\n}\n"),
            vec![(
                2,
                9,
                "unterminated quoted string (a closing \" must be on the same line)".into()
            )]
        );
        let e = errs("defaults {\n  x 1\n");
        assert_eq!((e[0].0, e[0].1), (1, 1));
        assert!(e[0].2.contains("never closed"), "{e:?}");
        let e = errs("defaults {\n}\n}\n");
        assert_eq!((e[0].0, e[0].1), (3, 1));
        assert!(e[0].2.contains("without a matching"));
        let e = errs("user_friendly_names yes\n");
        assert_eq!((e[0].0, e[0].1), (1, 1));
        assert!(e[0].2.contains("outside any section"));
        let e = errs("{\n}\n");
        assert!(e[0].2.contains("without a section name"));
        let e = errs("defaults {\n  device x {\n  }\n}\n");
        assert_eq!((e[0].0, e[0].1), (2, 12));
        // Several errors at once.
        let e = errs("defaults {\n a \"b\n}\n}\nx\n");
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 4, 5]);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion_blowup() {
        let text = "a {\n".repeat(100_000);
        let e = errs(&text);
        assert!(e.iter().any(|e| e.2.contains("nested deeper")), "{e:?}");
        let text = "{".repeat(100_000);
        let _ = parse(&text, "m.conf");
        let text = "}".repeat(100_000);
        assert!(errs(&text).len() <= MAX_ERRORS);
    }
}
