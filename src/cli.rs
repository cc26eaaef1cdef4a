//! What the two binaries share in reading their command lines.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// A refused value longer than this is not echoed whole: the error names
/// its length and its start instead of filling the terminal with it.
pub const ECHO_BYTES_MAX: usize = 80;

/// Prints clap's error and exits as clap does (status 2 for usage errors,
/// 0 for `--help` and `--version`), but with a refused value that is longer
/// than [`ECHO_BYTES_MAX`] cut to its start and length.
pub fn exit_with(e: clap::Error) -> ! {
    if e.kind() == ErrorKind::ValueValidation {
        if let (Some(ContextValue::String(value)), Some(ContextValue::String(arg))) = (
            e.get(ContextKind::InvalidValue),
            e.get(ContextKind::InvalidArg),
        ) {
            if value.len() > ECHO_BYTES_MAX {
                let mut end = ECHO_BYTES_MAX;
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                let why = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                eprintln!(
                    "error: invalid value '{}…' ({} bytes) for '{arg}'{why}\n\nFor more information, try '--help'.",
                    value[..end].escape_debug(),
                    value.len()
                );
                std::process::exit(2);
            }
        }
    }
    e.exit()
}

/// Writes one line to stdout, and ignores a reader that went away: a
/// summary piped into `head` must not end the run in a panic ("failed
/// printing to stdout") half-way through writing its report.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
}

/// `println!` for the command-line tools' output: see [`out_line`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::out_line(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::cli::out_line(format_args!($($t)*))
    };
}
