//! Exit codes, documented in README.md ("Exit codes"). Scripts and kubelets
//! read them, so they are part of the interface.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Something failed at run time that is not covered below.
    Failure = 1,
    /// Bad configuration or input: a knob, a flag, a file. Nothing was changed.
    Config = 2,
    /// The Kubernetes API could not be reached or refused us.
    Api = 3,
    /// The kernel refused the rules, or reading them back did not match.
    Kernel = 4,
    /// `proxy-init --validate`: an outbound connection did not land on the proxy's port.
    Validate = 5,
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> Self {
        ExitCode::from(c as u8)
    }
}

/// An error that knows which exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: Code,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Self {
        Exit {
            code: Code::Failure,
            error: e.into(),
        }
    }
}

pub trait WithCode<T> {
    fn code(self, code: Code) -> Result<T, Exit>;
}

impl<T, E: Into<anyhow::Error>> WithCode<T> for Result<T, E> {
    fn code(self, code: Code) -> Result<T, Exit> {
        self.map_err(|e| Exit {
            code,
            error: e.into(),
        })
    }
}

/// Prints the error chain on stderr and turns the result into the process exit code.
pub fn report(result: Result<(), Exit>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit { code, error }) => {
            eprintln!("ghostwire: error: {}", chain(&error));
            code.into()
        }
    }
}

/// The error and its causes, `: `-joined, each said once. Many of the libraries' errors put
/// their source in their own message (so that a log line with `%error` has it) and also return
/// it as `source()`; anyhow's `{:#}` would then print it twice ("config x: No such file or
/// directory (os error 2): No such file or directory (os error 2)"). A cause whose text is
/// already printed is left out.
pub fn chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let io_text = io.to_string();
        // The mirror's config error shows its io::Error and returns it as source() too.
        let e = Err::<(), _>(mirror::config::ConfigError::Read {
            path: "/x.json".into(),
            source: io,
        })
        .context("starting the mirror")
        .unwrap_err();
        let text = chain(&e);
        assert_eq!(
            text,
            format!("starting the mirror: config /x.json: {io_text}")
        );
        assert_eq!(text.matches(&io_text).count(), 1, "{text}");
        // A cause not in the message above it is kept, in order.
        let e = anyhow::anyhow!("disk full").context("writing the map");
        assert_eq!(chain(&e), "writing the map: disk full");
    }
}
