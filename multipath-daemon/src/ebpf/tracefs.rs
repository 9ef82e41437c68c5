//! Tracepoint record layouts, read from tracefs at run time.
//!
//! Field offsets of classic tracepoints change between kernels (6.1 in the lab, 6.18 on
//! the host), and aya has no CO-RE relocation for them, so the daemon reads the `format`
//! file and hands the offsets to the programs.

use std::path::{Path, PathBuf};

/// Where tracefs is usually mounted, newest first.
const TRACEFS_ROOTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TraceFormatError {
    #[error(
        "tracepoint {category}:{name} not found under {searched}: is tracefs mounted? \
         Try `mount -t tracefs nodev /sys/kernel/tracing`; if it is, this kernel lacks the tracepoint"
    )]
    NotFound {
        category: String,
        name: String,
        searched: String,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: no field named `{field}` (fields: {fields}); this kernel's tracepoint differs from what mpathd knows"
    )]
    NoField {
        path: PathBuf,
        field: String,
        fields: String,
    },
    #[error(
        "{path}: field `{field}` is {size} bytes at offset {offset}; mpathd reads {want} bytes \
         of it within the {len} bytes from offset {start}: this kernel's layout is not supported yet"
    )]
    Layout {
        path: PathBuf,
        field: String,
        offset: u32,
        size: u32,
        want: u32,
        start: u32,
        len: usize,
    },
    #[error("{path}:{line}: cannot parse field line {text:?}: {what}")]
    Parse {
        path: PathBuf,
        line: usize,
        text: String,
        what: &'static str,
    },
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceField {
    /// The declaration as the kernel prints it, for example `dev_t dev` or `char rwbs[8]`.
    pub decl: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The parsed `format` file of one tracepoint.
#[derive(Clone, Debug)]
pub struct TraceFormat {
    path: PathBuf,
    fields: Vec<TraceField>,
}

impl TraceFormat {
    /// Reads the layout of `category:name` from the mounted tracefs.
    pub fn read(category: &str, name: &str) -> Result<Self, TraceFormatError> {
        for root in TRACEFS_ROOTS {
            let path = Path::new(root)
                .join("events")
                .join(category)
                .join(name)
                .join("format");
            match std::fs::read_to_string(&path) {
                Ok(text) => return Self::parse(&path, &text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(TraceFormatError::Io { path, source }),
            }
        }
        Err(TraceFormatError::NotFound {
            category: category.to_owned(),
            name: name.to_owned(),
            searched: TRACEFS_ROOTS.join(", "),
        })
    }

    /// Parses the text of a `format` file; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, TraceFormatError> {
        let mut fields = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_t = line.trim();
            if !line_t.starts_with("field:") {
                continue;
            }
            let err = |what| TraceFormatError::Parse {
                path: path.to_owned(),
                line: i + 1,
                text: line.to_owned(),
                what,
            };
            // `field:dev_t dev;	offset:8;	size:4;	signed:0;`
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line_t.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("field:") {
                    decl = Some(v.trim().to_owned());
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = Some(
                        v.parse::<u32>()
                            .map_err(|_| err("offset is not a number"))?,
                    );
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = Some(v.parse::<u32>().map_err(|_| err("size is not a number"))?);
                }
            }
            let decl = decl.ok_or_else(|| err("no field declaration"))?;
            let name = field_name(&decl).ok_or_else(|| err("no field name in declaration"))?;
            fields.push(TraceField {
                name,
                decl,
                offset: offset.ok_or_else(|| err("no offset"))?,
                size: size.ok_or_else(|| err("no size"))?,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            fields,
        })
    }

    pub fn fields(&self) -> &[TraceField] {
        &self.fields
    }

    pub fn field(&self, name: &str) -> Result<&TraceField, TraceFormatError> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TraceFormatError::NoField {
                path: self.path.clone(),
                field: name.to_owned(),
                fields: self
                    .fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn offset_of(&self, name: &str) -> Result<u32, TraceFormatError> {
        self.field(name).map(|f| f.offset)
    }

    /// The offset of `name`, checked to be at least `size` bytes wide (the programs read
    /// the first `size`; `rwbs` grew from 8 to 10 bytes in 6.x) and to lie within the
    /// `len` bytes the programs copy from offset `start`.
    pub fn offset_in_span(
        &self,
        name: &str,
        size: u32,
        start: u32,
        len: usize,
    ) -> Result<u32, TraceFormatError> {
        let f = self.field(name)?;
        let end = (f.offset as usize).saturating_add(size as usize);
        if f.size < size || f.offset < start || end - start as usize > len {
            return Err(TraceFormatError::Layout {
                path: self.path.clone(),
                field: name.to_owned(),
                offset: f.offset,
                size: f.size,
                want: size,
                start,
                len,
            });
        }
        Ok(f.offset)
    }
}

/// The identifier at the end of a C declaration, without any array suffix:
/// `char rwbs[8]` -> `rwbs`, `__data_loc char[] cmd` -> `cmd`.
fn field_name(decl: &str) -> Option<String> {
    let last = decl.split_whitespace().last()?;
    let name = last.split('[').next()?;
    let name = name.trim_start_matches('*');
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from Debian's 6.1 kernel (the lab guest).
    const RQ_COMPLETE_6_1: &str = "name: block_rq_complete
ID: 1151
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:int error;\toffset:28;\tsize:4;\tsigned:1;
\tfield:char rwbs[8];\toffset:32;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] cmd;\toffset:40;\tsize:4;\tsigned:0;

print fmt: \"%d,%d %s (%s) %llu + %u [%d]\", ...
";

    #[test]
    fn parses_block_rq_complete() {
        let f = TraceFormat::parse(Path::new("format"), RQ_COMPLETE_6_1).unwrap();
        assert_eq!(f.offset_of("dev").unwrap(), 8);
        assert_eq!(f.offset_of("nr_sector").unwrap(), 24);
        assert_eq!(f.offset_of("error").unwrap(), 28);
        let rwbs = f.field("rwbs").unwrap();
        assert_eq!((rwbs.offset, rwbs.size), (32, 8));
        assert_eq!(f.field("cmd").unwrap().decl, "__data_loc char[] cmd");
        assert_eq!(f.fields().len(), 10);
    }

    #[test]
    fn missing_field_names_the_file_and_lists_fields() {
        let f = TraceFormat::parse(Path::new("/x/format"), RQ_COMPLETE_6_1).unwrap();
        let e = f.offset_of("bytes").unwrap_err().to_string();
        assert!(e.contains("/x/format"), "{e}");
        assert!(e.contains("no field named `bytes`"), "{e}");
        assert!(e.contains("nr_sector"), "{e}");
    }

    #[test]
    fn layout_is_checked_against_what_the_programs_copy() {
        let f = TraceFormat::parse(Path::new("format"), RQ_COMPLETE_6_1).unwrap();
        assert_eq!(f.offset_in_span("rwbs", 8, 16, 32).unwrap(), 32);
        let e = f.offset_in_span("rwbs", 8, 16, 20).unwrap_err().to_string();
        assert!(e.contains("`rwbs` is 8 bytes at offset 32"), "{e}");
        let e = f.offset_in_span("dev", 8, 0, 64).unwrap_err().to_string();
        assert!(e.contains("reads 8 bytes"), "{e}");
        let e = f.offset_in_span("dev", 4, 16, 32).unwrap_err().to_string();
        assert!(e.contains("from offset 16"), "{e}");
    }

    #[test]
    fn bad_offset_is_reported_with_line() {
        let text = "format:\n\tfield:dev_t dev;\toffset:x;\tsize:4;\tsigned:0;\n";
        let e = TraceFormat::parse(Path::new("f"), text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f:2:"), "{e}");
        assert!(e.contains("offset is not a number"), "{e}");
    }

    #[test]
    fn reads_the_running_kernel_when_tracefs_is_mounted() {
        // Not a capability check: the host and lab kernels both have this tracepoint.
        match TraceFormat::read("block", "block_rq_complete") {
            Ok(f) => assert!(f.offset_of("dev").unwrap() >= 8),
            Err(TraceFormatError::NotFound { .. }) => {
                eprintln!("skipped: tracefs not mounted here")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
